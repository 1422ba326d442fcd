//! One server's part in a replica group, as a sans-IO state machine: roles, views, leases,
//! peers' progress and the commit point. It never reads a clock, touches a socket or writes a
//! file; the driver (`node`) feeds it inputs (`handle_*`, each with the current [`Time`]) and
//! carries out its [`Output`]s in order.
//!
//! It decides; the driver moves the bytes. Records never pass through here: the primary's
//! driver streams them from the store to each peer from where [`Output::Stream`] says, and a
//! backup's driver applies them to its store when [`Replica::accepts_records`] allows, then
//! reports positions back ([`Replica::handle_log`], [`Replica::handle_ack`]).
//!
//! The rules and the argument for their safety are in `docs/replication.md`. The parts that
//! live here:
//!
//! - **Commit.** The primary waits, for every write, on every backup of the view it knows and
//!   on every learner it has declared synced; the commit point is the lowest LSN they all
//!   acknowledged (and the local durable LSN with `--fsync always`). Replies and reads are
//!   released by it.
//! - **Leases.** The primary beacons its peers; each backup grants the beacon while the primary
//!   is the primary of the view it knows. The primary serves only while every peer it waits on
//!   has granted a beacon sent less than `lease` ago (with none to wait on it needs no lease: no
//!   one else could be made primary). A new primary serves only once every grant it gave
//!   before, and any lease those could have extended, has certainly run out:
//!   `lease * (1 + drift) / (1 - drift)` after its last grant (or its own start).
//! - **Learners.** A learner becomes synced once it holds every write that may have been
//!   acknowledged (everything the primary had when it took office, and everything committed
//!   since); from then on the primary waits for it on every write until a newer view says
//!   whether it joined. Synced learners are reported in heartbeats; the coordinator admits them.
//! - **Terms.** A primary records the term it writes in before its first write; a backup
//!   records a term when the stream announces it ([`terms::Terms`]).

pub mod terms;

use std::collections::VecDeque;
use std::time::Duration;

use wire::cluster::{
    Heartbeat, Hello, HelloReply, Role, Synced, View, HB_INSTALLING, HB_PRIMARY_SILENT, HB_SERVING,
};
use wire::Status;

pub use terms::{Terms, TermsError};

use crate::time::Time;

/// A replication connection accepted on the backup side, named by the driver.
pub type ConnId = u64;

/// Timing and identity of one replica.
#[derive(Debug, Clone)]
pub struct Config {
    /// The replica group.
    pub group: u32,
    /// This server's stable id.
    pub id: String,
    /// The address peers and clients dial.
    pub addr: String,
    /// How often to heartbeat the coordinator.
    pub ping_interval: Duration,
    /// How long a granted beacon lets the primary serve.
    pub lease: Duration,
    /// A backup that has not heard its primary for this long says so in its heartbeats, and a
    /// primary reports members it has not heard from for this long. At least `lease`.
    pub grace: Duration,
    /// How often the primary beacons its peers.
    pub beacon_interval: Duration,
    /// Bound on how far any server's clock rate may differ from real time (0.01 = 1%).
    pub max_drift: f64,
    /// Wait before reconnecting to a peer after a failure.
    pub reconnect_after: Duration,
    /// Give up on a connection attempt or handshake after this long.
    pub connect_timeout: Duration,
    /// Largest key this server stores: a primary with larger limits is refused.
    pub max_key_len: u32,
    /// Largest value this server stores.
    pub max_value_len: u32,
    /// A learner this close to the primary's last LSN is waited for (so it can catch up even
    /// under a steady stream of writes).
    pub sync_slack: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            group: 0,
            id: String::new(),
            addr: String::new(),
            ping_interval: Duration::from_millis(100),
            lease: Duration::from_millis(400),
            grace: Duration::from_millis(800),
            beacon_interval: Duration::from_millis(50),
            max_drift: 0.01,
            reconnect_after: Duration::from_millis(100),
            connect_timeout: Duration::from_millis(1000),
            max_key_len: wire::MAX_KEY_LEN as u32,
            max_value_len: wire::MAX_PAYLOAD_LEN as u32,
            sync_slack: 256,
        }
    }
}

impl Config {
    /// How long a new primary waits after its last grant: the longest a lease it granted could
    /// still run on another server's drifting clock, measured on its own drifting clock.
    pub fn takeover_wait(&self) -> Duration {
        let d = self.max_drift.clamp(0.0, 0.5);
        self.lease.mul_f64((1.0 + d) / (1.0 - d)) + Duration::from_millis(1)
    }
}

/// What survives a restart besides the store; the driver writes it (durably, before going on)
/// when told to by [`Output::Persist`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Which term wrote which part of the log.
    pub terms: Terms,
    /// Which copy of the data the store holds; a new one whenever it starts over.
    pub data_id: u64,
    /// A snapshot install began and has not finished: the store holds nothing to count on.
    pub installing: bool,
}

/// Something for the driver to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this heartbeat to the coordinator(s).
    Heartbeat(Heartbeat),
    /// Write this durably before acting on anything that follows.
    Persist(Meta),
    /// Primary: open a replication connection to `peer` at `addr`; report the outcome with
    /// [`Replica::handle_peer_connected`] or [`Replica::handle_peer_closed`].
    Connect {
        /// Peer id.
        peer: String,
        /// Where it listens.
        addr: String,
    },
    /// Primary: close the connection to `peer` (and forget its stream).
    Disconnect {
        /// Peer id.
        peer: String,
    },
    /// Primary: send the handshake on `peer`'s new connection.
    Hello {
        /// Peer id.
        peer: String,
        /// The handshake.
        hello: Hello,
    },
    /// Primary: stream the log to `peer` from LSN `from` on, announcing terms as they change.
    Stream {
        /// Peer id.
        peer: String,
        /// First LSN to send.
        from: u64,
    },
    /// Primary: send `peer` a snapshot, then the log after it.
    Snapshot {
        /// Peer id.
        peer: String,
    },
    /// Primary: send `peer` a lease beacon stamped `time`, with the commit point.
    Beacon {
        /// Peer id.
        peer: String,
        /// This server's clock now; the grant echoes it.
        time: Time,
        /// The commit point.
        commit: u64,
    },
    /// Backup: close this replication connection.
    CloseConn(ConnId),
    /// Backup: empty the store; a snapshot follows (the install marker was persisted first).
    Wipe,
    /// The primary stepped down: replies it holds can no longer be given (their writes may or
    /// may not survive).
    StepDown,
    /// The role changed.
    RoleChanged(Role),
}

/// Why a request cannot be served here now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotServing {
    /// This server is not the primary; the address of the one it believes is (WRONG_SERVER).
    NotPrimary(Option<String>),
    /// It is the primary but may not answer now (UNAVAILABLE), and why.
    Unavailable(&'static str),
}

/// Why a replication message from a primary was refused (the driver closes the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplError {
    /// The connection is not (any longer) this server's primary's.
    NotUpstream,
    /// The term history cannot take what the stream says.
    Terms(TermsError),
    /// A message arrived where it makes no sense (e.g. records in the middle of a snapshot).
    Unexpected(&'static str),
}

impl std::fmt::Display for ReplError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplError::NotUpstream => f.write_str("not the primary's connection"),
            ReplError::Terms(e) => write!(f, "term history: {e}"),
            ReplError::Unexpected(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for ReplError {}

/// The backup's verdict on a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloVerdict {
    /// OK to accept; otherwise the refusal status.
    pub status: Status,
    /// The reply to send either way.
    pub reply: HelloReply,
}

/// A primary's view of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down { retry_at: Time },
    Connecting { since: Time },
    Handshaking { since: Time },
    Streaming,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncState {
    /// A learner still catching up: not waited for.
    No,
    /// Close enough to be waited for, so that it can finish catching up.
    Pinned,
    /// Holds every write that may have been acknowledged; `reported` once a heartbeat said so.
    Synced { reported: bool },
}

#[derive(Debug, Clone)]
struct Peer {
    id: String,
    addr: String,
    /// A backup of the view (otherwise a learner).
    member: bool,
    sync: SyncState,
    link: Link,
    /// Highest LSN it acknowledged.
    acked: u64,
    /// Send time (our clock) of the newest beacon it granted.
    grant: Option<Time>,
    last_heard: Time,
    incarnation: u64,
    data_id: u64,
}

impl Peer {
    fn new(id: &str, addr: &str, member: bool, now: Time) -> Peer {
        Peer {
            id: id.to_string(),
            addr: addr.to_string(),
            member,
            sync: SyncState::No,
            link: Link::Down { retry_at: now },
            acked: 0,
            grant: None,
            last_heard: now,
            incarnation: 0,
            data_id: 0,
        }
    }

    /// The primary waits for it on every write.
    fn waited_for(&self) -> bool {
        self.member || self.sync != SyncState::No
    }
}

#[derive(Debug)]
struct PrimaryState {
    term: u64,
    /// Not before this (the lease of the previous primary).
    serve_after: Time,
    /// Everything at or below this may have been acknowledged before this term.
    floor: u64,
    committed: u64,
    peers: Vec<Peer>,
    next_beacon: Time,
    /// A peer knows a newer view or term: stop serving until the coordinator says more.
    superseded: bool,
}

#[derive(Debug)]
struct Upstream {
    conn: ConnId,
    primary: String,
    last_heard: Time,
    /// A snapshot is being installed from this connection, complete up to this LSN.
    snapshot: Option<(u64, Terms)>,
}

/// A primary's view of one peer, for STATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its id.
    pub id: String,
    /// A backup of the view (else a learner).
    pub member: bool,
    /// `no`, `pinned`, `synced` or `reported`.
    pub sync: &'static str,
    /// `down`, `connecting`, `handshaking` or `streaming`.
    pub link: &'static str,
    /// The highest LSN it acknowledged.
    pub acked: u64,
}

/// Counters and state for STATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The role.
    pub role: Role,
    /// The view number known.
    pub view: u64,
    /// The term of the last record.
    pub last_term: u64,
    /// Primary: the commit point.
    pub committed: u64,
    /// Primary: serving now.
    pub serving: bool,
    /// Primary: microseconds of lease left (0 without one).
    pub lease_left_us: u64,
    /// Primary: the largest number of LSNs a waited-for peer is behind.
    pub max_lag: u64,
    /// Primary: peers waited for / peers known.
    pub peers_waited: usize,
    /// Primary: each peer.
    pub peers: Vec<PeerStatus>,
    /// Why the coordinator is waiting, if it is.
    pub waiting: String,
}

/// One server's replica state machine for one group.
#[derive(Debug)]
pub struct Replica {
    cfg: Config,
    incarnation: u64,
    started: Time,
    meta: Meta,
    last_lsn: u64,
    /// The local LSN replies may rely on: durable with `--fsync always`, else the last.
    ready_lsn: u64,
    view: View,
    role: Role,
    next_heartbeat: Time,
    /// When this server last heard its primary, or became a backup (for the silence check).
    primary_heard: Time,
    upstream: Option<Upstream>,
    /// The newest lease grant this server gave any primary.
    last_grant: Option<Time>,
    primary: Option<PrimaryState>,
    outputs: VecDeque<Output>,
    /// The latest time an input carried, for decisions made by inputs that carry none.
    now: Time,
}

impl Replica {
    /// A replica starting up: idle, knowing no view, with the persisted `meta` and the store's
    /// last LSN.
    pub fn new(cfg: Config, meta: Meta, incarnation: u64, last_lsn: u64, now: Time) -> Replica {
        Replica {
            cfg,
            incarnation,
            started: now,
            meta,
            last_lsn,
            ready_lsn: last_lsn,
            view: View::default(),
            role: Role::Idle,
            next_heartbeat: now,
            primary_heard: now,
            upstream: None,
            last_grant: None,
            primary: None,
            outputs: VecDeque::new(),
            now,
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Replica::handle_tick`] next has work.
    pub fn next_deadline(&self) -> Time {
        let mut next = self.next_heartbeat;
        if let Some(p) = &self.primary {
            next = next.min(p.next_beacon);
            for peer in &p.peers {
                match peer.link {
                    Link::Down { retry_at } => next = next.min(retry_at),
                    Link::Connecting { since } | Link::Handshaking { since } => {
                        next = next.min(since + self.cfg.connect_timeout)
                    }
                    Link::Streaming => {}
                }
            }
            if p.serve_after > Time::ZERO {
                // Heartbeats say "serving" from then; nothing else to do at that instant.
            }
        }
        next
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// This process's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The persisted state.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The term history.
    pub fn terms(&self) -> &Terms {
        &self.meta.terms
    }

    /// The newest view known.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether this server is the primary of the view it knows.
    pub fn is_primary(&self) -> bool {
        self.primary.is_some()
    }

    /// Primary: the lowest position (acknowledged LSN + 1) of the peers it knows that hold
    /// something, whose log compaction should keep; `None` if there are none. (A peer that
    /// holds nothing gets a snapshot if the log no longer starts at 1; pinning the whole log
    /// for it could hold compaction back indefinitely.)
    pub fn lowest_peer_position(&self) -> Option<u64> {
        self.primary.as_ref()?.peers.iter().filter(|x| x.acked > 0).map(|x| x.acked + 1).min()
    }

    /// Primary: the commit point (0 otherwise).
    pub fn committed(&self) -> u64 {
        self.primary.as_ref().map_or(0, |p| p.committed)
    }

    /// Whether a client request may be executed now.
    ///
    /// # Errors
    /// [`NotServing`] saying what to answer.
    pub fn can_serve(&self, now: Time) -> Result<(), NotServing> {
        let Some(p) = &self.primary else {
            return Err(match &self.view.primary {
                // The view names this server, as recorded for an earlier run: pointing the
                // client here again would send it round in a circle.
                Some(m) if m.id == self.cfg.id => NotServing::Unavailable(
                    "this server restarted; waiting for the coordinator to decide its place",
                ),
                other => NotServing::NotPrimary(other.as_ref().map(|m| m.addr.clone())),
            });
        };
        if p.superseded {
            return Err(NotServing::Unavailable("a newer view exists; waiting for the coordinator"));
        }
        if now < p.serve_after {
            return Err(NotServing::Unavailable(
                "taking over: waiting for the previous primary's lease to end",
            ));
        }
        match self.lease_until() {
            None => Ok(()),
            Some(Some(until)) if now < until => Ok(()),
            Some(_) => {
                Err(NotServing::Unavailable("no lease: backups have not confirmed this primary recently"))
            }
        }
    }

    /// `None` when no lease is needed (nobody waited for); `Some(None)` when some waited-for
    /// peer never granted.
    fn lease_until(&self) -> Option<Option<Time>> {
        let p = self.primary.as_ref()?;
        let mut until: Option<Option<Time>> = None;
        for peer in p.peers.iter().filter(|x| x.waited_for()) {
            let t = peer.grant.map(|g| g + self.cfg.lease);
            until = Some(match (until, t) {
                (None, t) => t,
                (Some(Some(a)), Some(b)) => Some(a.min(b)),
                _ => None,
            });
        }
        until
    }

    /// Whether records arriving on `conn` may be applied: it is the accepted connection of
    /// this server's primary, outside a snapshot.
    pub fn accepts_records(&self, conn: ConnId) -> bool {
        self.primary.is_none()
            && self.upstream.as_ref().is_some_and(|u| u.conn == conn && u.snapshot.is_none())
    }

    /// Whether snapshot records arriving on `conn` may be installed.
    pub fn accepts_snapshot(&self, conn: ConnId) -> bool {
        self.upstream.as_ref().is_some_and(|u| u.conn == conn && u.snapshot.is_some())
    }

    /// The accepted primary connection, if any.
    pub fn upstream(&self) -> Option<ConnId> {
        self.upstream.as_ref().map(|u| u.conn)
    }

    /// State for STATS and `status`.
    pub fn status(&self, now: Time) -> ReplicaStatus {
        let mut s = ReplicaStatus {
            role: self.role,
            view: self.view.num,
            last_term: self.primary.as_ref().map_or(self.meta.terms.term_at(self.last_lsn), |p| p.term),
            waiting: self.view.waiting.clone(),
            ..ReplicaStatus::default()
        };
        if let Some(p) = &self.primary {
            s.committed = p.committed;
            s.serving = self.can_serve(now).is_ok();
            s.lease_left_us = match self.lease_until() {
                Some(Some(until)) => until.0.saturating_sub(now.0),
                _ => 0,
            };
            s.peers = p
                .peers
                .iter()
                .map(|x| PeerStatus {
                    id: x.id.clone(),
                    member: x.member,
                    sync: match x.sync {
                        SyncState::No => "no",
                        SyncState::Pinned => "pinned",
                        SyncState::Synced { reported: false } => "synced",
                        SyncState::Synced { reported: true } => "reported",
                    },
                    link: match x.link {
                        Link::Down { .. } => "down",
                        Link::Connecting { .. } => "connecting",
                        Link::Handshaking { .. } => "handshaking",
                        Link::Streaming => "streaming",
                    },
                    acked: x.acked,
                })
                .collect();
            s.peers_waited = p.peers.iter().filter(|x| x.waited_for()).count();
            s.max_lag = p
                .peers
                .iter()
                .filter(|x| x.waited_for())
                .map(|x| self.last_lsn.saturating_sub(x.acked))
                .max()
                .unwrap_or(0);
        }
        s
    }

    /// The store's positions after the driver wrote or synced: its last LSN, and the LSN
    /// replies may rely on locally (the durable one with `--fsync always`).
    pub fn handle_log(&mut self, last_lsn: u64, ready_lsn: u64) {
        self.last_lsn = last_lsn;
        self.ready_lsn = ready_lsn.min(last_lsn);
        self.advance_commit();
        self.check_learners();
    }

    /// Time passes: heartbeats, beacons, reconnects.
    pub fn handle_tick(&mut self, now: Time) {
        self.now = self.now.max(now);
        if now >= self.next_heartbeat {
            let hb = self.heartbeat(now);
            self.outputs.push_back(Output::Heartbeat(hb));
            self.next_heartbeat = now + self.cfg.ping_interval;
        }
        let cfg = &self.cfg;
        let Some(p) = &mut self.primary else { return };
        for peer in &mut p.peers {
            match peer.link {
                Link::Down { retry_at } if now >= retry_at => {
                    peer.link = Link::Connecting { since: now };
                    self.outputs
                        .push_back(Output::Connect { peer: peer.id.clone(), addr: peer.addr.clone() });
                }
                Link::Connecting { since } | Link::Handshaking { since }
                    if now >= since + cfg.connect_timeout =>
                {
                    log::debug!("replication connection to {} timed out", peer.id);
                    peer.link = Link::Down { retry_at: now + cfg.reconnect_after };
                    self.outputs.push_back(Output::Disconnect { peer: peer.id.clone() });
                }
                // A stream that acknowledges nothing, not even beacons, for the grace period is
                // dead even if TCP has not noticed (a partition): start over. A learner nobody
                // was told about is let go at once; a member stays waited for until the
                // coordinator drops it (it is reported unreachable).
                Link::Streaming if now.since(peer.last_heard) > cfg.grace => {
                    log::info!(
                        "{} has acknowledged nothing for {:?}; reconnecting",
                        peer.id,
                        now.since(peer.last_heard)
                    );
                    peer.link = Link::Down { retry_at: now + cfg.reconnect_after };
                    if matches!(peer.sync, SyncState::Pinned | SyncState::Synced { reported: false }) {
                        peer.sync = SyncState::No;
                    }
                    self.outputs.push_back(Output::Disconnect { peer: peer.id.clone() });
                }
                _ => {}
            }
        }
        if now >= p.next_beacon {
            for peer in p.peers.iter().filter(|x| x.link == Link::Streaming) {
                self.outputs.push_back(Output::Beacon {
                    peer: peer.id.clone(),
                    time: now,
                    commit: p.committed,
                });
            }
            p.next_beacon = now + cfg.beacon_interval;
        }
    }

    fn heartbeat(&mut self, now: Time) -> Heartbeat {
        let mut flags = 0;
        if self.meta.installing {
            flags |= HB_INSTALLING;
        }
        if self.primary.is_some() && self.can_serve(now).is_ok() {
            flags |= HB_SERVING;
        }
        if self.role == Role::Backup && now.since(self.primary_heard) > self.cfg.grace {
            flags |= HB_PRIMARY_SILENT;
        }
        let mut synced = Vec::new();
        let mut unreachable = Vec::new();
        let mut committed = 0;
        if let Some(p) = &mut self.primary {
            committed = p.committed;
            for peer in &mut p.peers {
                if let SyncState::Synced { reported } = &mut peer.sync {
                    if !peer.member {
                        *reported = true;
                        synced.push(Synced {
                            id: peer.id.clone(),
                            incarnation: peer.incarnation,
                            data_id: peer.data_id,
                        });
                    }
                }
                let reported = matches!(peer.sync, SyncState::Synced { reported: true });
                if (peer.member || reported) && now.since(peer.last_heard) > self.cfg.grace {
                    unreachable.push(peer.id.clone());
                }
            }
        }
        Heartbeat {
            group: self.cfg.group,
            id: self.cfg.id.clone(),
            addr: self.cfg.addr.clone(),
            incarnation: self.incarnation,
            view: self.view.num,
            role: self.role,
            data_id: self.meta.data_id,
            last_lsn: self.last_lsn,
            last_term: self.meta.terms.term_at(self.last_lsn),
            committed_lsn: committed,
            flags,
            synced,
            unreachable,
        }
    }

    /// A view from the coordinator (or from a primary's handshake). Older views are ignored;
    /// the same view refreshes the learners to bring up to date.
    pub fn handle_view(&mut self, now: Time, view: View) {
        self.now = self.now.max(now);
        if view.group != self.cfg.group || view.num < self.view.num {
            return;
        }
        if view.num == self.view.num {
            self.view.candidates = view.candidates;
            self.view.waiting = view.waiting;
            if self.primary.is_some() {
                self.reconcile_peers(now, false);
            }
            return;
        }
        log::info!(
            "view={} term={} primary={} (was view {})",
            view.num,
            view.term,
            view.primary_id().unwrap_or("-"),
            self.view.num
        );
        self.view = view;
        let me_primary = self.view.primary.as_ref().is_some_and(|m| self.is_me(m));
        if me_primary {
            let same_term = self.primary.as_ref().is_some_and(|p| p.term == self.view.term);
            if same_term {
                if let Some(p) = &mut self.primary {
                    p.superseded = false;
                }
                self.reconcile_peers(now, true);
            } else {
                self.step_down();
                self.become_primary(now);
            }
            return;
        }
        self.step_down();
        if let Some(u) = &self.upstream {
            if self.view.primary_id() != Some(u.primary.as_str()) {
                let conn = u.conn;
                log::info!("dropping the replication connection from {}: no longer the primary", u.primary);
                self.upstream = None;
                self.outputs.push_back(Output::CloseConn(conn));
            }
        }
        self.update_follower_role(now);
    }

    /// Whether a view's entry names this run of this server with this data: an entry recorded
    /// for an earlier run (before a restart, or before the data started over) is not a place
    /// this process may take; it waits for the coordinator to record it anew.
    fn is_me(&self, m: &wire::cluster::Member) -> bool {
        m.id == self.cfg.id && m.incarnation == self.incarnation && m.data_id == self.meta.data_id
    }

    fn update_follower_role(&mut self, now: Time) {
        let role = if self.view.backups.iter().any(|b| self.is_me(b)) {
            Role::Backup
        } else if self.upstream.is_some() {
            Role::Learner
        } else {
            Role::Idle
        };
        if role == Role::Backup && self.role != Role::Backup {
            self.primary_heard = now;
        }
        self.set_role(role);
    }

    fn set_role(&mut self, role: Role) {
        if role != self.role {
            log::info!("role {} -> {}", self.role.name(), role.name());
            self.role = role;
            self.outputs.push_back(Output::RoleChanged(role));
        }
    }

    fn step_down(&mut self) {
        if let Some(p) = self.primary.take() {
            log::info!("stepping down as primary of term {}", p.term);
            for peer in p.peers {
                self.outputs.push_back(Output::Disconnect { peer: peer.id });
            }
            self.outputs.push_back(Output::StepDown);
        }
    }

    fn become_primary(&mut self, now: Time) {
        let term = self.view.term;
        let my_term = self.meta.terms.last_term();
        if my_term > term {
            log::error!(
                "view {} makes this server primary of term {term}, but its log has term {my_term}",
                self.view.num
            );
        }
        match self.meta.terms.push(term, self.last_lsn + 1) {
            Ok(true) => self.outputs.push_back(Output::Persist(self.meta.clone())),
            Ok(false) => {}
            Err(e) => log::error!("cannot record term {term}: {e}"),
        }
        if let Some(u) = self.upstream.take() {
            self.outputs.push_back(Output::CloseConn(u.conn));
        }
        let since = self.last_grant.unwrap_or(Time::ZERO).max(self.started);
        let serve_after = since + self.cfg.takeover_wait();
        log::info!(
            "primary of view {} term {term}: serving from {} (now {now}), last LSN {}",
            self.view.num,
            serve_after,
            self.last_lsn
        );
        self.primary = Some(PrimaryState {
            term,
            serve_after,
            floor: self.last_lsn,
            committed: 0,
            peers: Vec::new(),
            next_beacon: now,
            superseded: my_term > term,
        });
        self.set_role(Role::Primary);
        self.reconcile_peers(now, true);
        self.advance_commit();
    }

    /// Brings the peer set in line with the view: backups are waited for; candidates are
    /// brought up to date; learners synced but not admitted by a newer view are let go.
    fn reconcile_peers(&mut self, now: Time, newer_view: bool) {
        let Some(p) = &mut self.primary else { return };
        let view = &self.view;
        let mut kept = Vec::with_capacity(p.peers.len());
        for mut peer in std::mem::take(&mut p.peers) {
            let member = view.backups.iter().any(|b| b.id == peer.id);
            let candidate = view.candidates.iter().any(|c| c.id == peer.id);
            peer.member = member;
            if !member && newer_view && matches!(peer.sync, SyncState::Synced { reported: true }) {
                // The coordinator decided on a newer view without it: stop waiting for it.
                log::info!("learner {} was not admitted to view {}; no longer waited for", peer.id, view.num);
                peer.sync = SyncState::No;
            }
            if member || candidate || peer.sync != SyncState::No {
                kept.push(peer);
            } else {
                self.outputs.push_back(Output::Disconnect { peer: peer.id });
            }
        }
        for m in view.backups.iter().map(|m| (m, true)).chain(view.candidates.iter().map(|m| (m, false))) {
            if m.0.id != self.cfg.id && !kept.iter().any(|x| x.id == m.0.id) {
                kept.push(Peer::new(&m.0.id, &m.0.addr, m.1, now));
            }
        }
        p.peers = kept;
        self.advance_commit();
    }

    /// Primary: the connection to `peer` is up; the handshake goes out.
    pub fn handle_peer_connected(&mut self, now: Time, peer: &str, nonce: u64) {
        self.now = self.now.max(now);
        let hello = Hello {
            group: self.cfg.group,
            view: View { candidates: Vec::new(), waiting: String::new(), ..self.view.clone() },
            incarnation: self.incarnation,
            max_key_len: self.cfg.max_key_len,
            max_value_len: self.cfg.max_value_len,
            nonce,
        };
        let Some(p) = &mut self.primary else { return };
        let Some(x) = p.peers.iter_mut().find(|x| x.id == peer) else { return };
        x.link = Link::Handshaking { since: now };
        x.last_heard = x.last_heard.max(now);
        self.outputs.push_back(Output::Hello { peer: peer.to_string(), hello });
    }

    /// Primary: the connection to `peer` failed or closed.
    pub fn handle_peer_closed(&mut self, now: Time, peer: &str) {
        self.now = self.now.max(now);
        let retry = now + self.cfg.reconnect_after;
        let Some(p) = &mut self.primary else { return };
        let Some(x) = p.peers.iter_mut().find(|x| x.id == peer) else { return };
        x.link = Link::Down { retry_at: retry };
        if x.sync == SyncState::Pinned || x.sync == (SyncState::Synced { reported: false }) {
            // Nobody was told it is synced: letting it go cannot mislead the coordinator.
            x.sync = SyncState::No;
        }
        self.advance_commit();
    }

    /// Primary: `peer` answered the handshake. Decides whether it gets the log from where it
    /// is (its log is a prefix of ours and we still have what it lacks) or a snapshot.
    pub fn handle_hello_reply(&mut self, now: Time, peer: &str, status: Status, reply: &HelloReply) {
        self.now = self.now.max(now);
        let retry = now + self.cfg.reconnect_after;
        let my_view = self.view.num;
        let (last_lsn, terms) = (self.last_lsn, &self.meta.terms);
        let Some(p) = &mut self.primary else { return };
        let Some(x) = p.peers.iter_mut().find(|x| x.id == peer) else { return };
        x.last_heard = now;
        if status != Status::OK {
            log::info!("{peer} refused the replication handshake: {status} (it knows view {})", reply.view);
            if reply.view > my_view {
                p.superseded = true;
            }
            x.link = Link::Down { retry_at: retry };
            self.outputs.push_back(Output::Disconnect { peer: peer.to_string() });
            return;
        }
        if reply.last_term > p.term {
            log::error!(
                "{peer} holds term {} beyond ours ({}): stepping aside until a newer view",
                reply.last_term,
                p.term
            );
            p.superseded = true;
            x.link = Link::Down { retry_at: retry };
            self.outputs.push_back(Output::Disconnect { peer: peer.to_string() });
            return;
        }
        x.incarnation = reply.incarnation;
        x.data_id = reply.data_id;
        x.link = Link::Streaming;
        let prefix = !reply.installing && terms.has_prefix(reply.last_term, reply.last_lsn, last_lsn);
        if prefix {
            x.acked = reply.last_lsn;
            log::info!(
                "{peer}: log is a prefix (term {} LSN {}); streaming from {}",
                reply.last_term,
                reply.last_lsn,
                reply.last_lsn + 1
            );
            self.outputs.push_back(Output::Stream { peer: peer.to_string(), from: reply.last_lsn + 1 });
        } else {
            x.acked = 0;
            log::info!(
                "{peer}: log diverges or is incomplete (term {} LSN {}, installing {}); sending a snapshot",
                reply.last_term,
                reply.last_lsn,
                reply.installing
            );
            self.outputs.push_back(Output::Snapshot { peer: peer.to_string() });
        }
        self.advance_commit();
        self.check_learners();
    }

    /// Primary: the driver cannot stream the log to `peer` from where it asked (compaction
    /// took that part): send a snapshot instead.
    pub fn handle_stream_gap(&mut self, peer: &str) {
        let Some(p) = &mut self.primary else { return };
        if let Some(x) = p.peers.iter_mut().find(|x| x.id == peer) {
            x.acked = 0;
            self.outputs.push_back(Output::Snapshot { peer: peer.to_string() });
        }
    }

    /// Primary: `peer`, holding the data copy `data_id`, acknowledged everything up to `lsn`
    /// and, if `grant` is not zero, granted the beacon sent at `grant`.
    pub fn handle_ack(&mut self, now: Time, peer: &str, lsn: u64, grant: u64, data_id: u64) {
        self.now = self.now.max(now);
        let Some(p) = &mut self.primary else { return };
        let Some(x) = p.peers.iter_mut().find(|x| x.id == peer) else { return };
        x.last_heard = now;
        if x.data_id != data_id {
            // It installed a snapshot since the handshake: a new copy of the data, synced only
            // once it holds what it must. (If it was already reported, the coordinator sees the
            // mismatch and the next view lets it go.)
            x.data_id = data_id;
            if x.sync != (SyncState::Synced { reported: true }) {
                x.sync = SyncState::No;
            }
        }
        x.acked = x.acked.max(lsn);
        if grant > 0 && grant <= now.0 {
            x.grant = Some(x.grant.map_or(Time(grant), |g| g.max(Time(grant))));
        }
        self.advance_commit();
        self.check_learners();
    }

    fn advance_commit(&mut self) {
        let ready = self.ready_lsn;
        let Some(p) = &mut self.primary else { return };
        let low = p.peers.iter().filter(|x| x.waited_for()).map(|x| x.acked).min().unwrap_or(u64::MAX);
        let candidate = ready.min(low);
        if candidate > p.committed {
            p.committed = candidate;
        }
    }

    /// Learners: pinned once close enough, synced once they hold every write that may have
    /// been acknowledged.
    fn check_learners(&mut self) {
        let last = self.last_lsn;
        let slack = self.cfg.sync_slack;
        let (now, lease) = (self.now, self.cfg.lease);
        let Some(p) = &mut self.primary else { return };
        let needed = p.committed.max(p.floor);
        let mut changed = false;
        // Only learners heard from recently: waiting for one whose stream went silent would
        // stall every write.
        for x in p
            .peers
            .iter_mut()
            .filter(|x| !x.member && x.link == Link::Streaming && now.since(x.last_heard) < lease)
        {
            match x.sync {
                SyncState::Synced { .. } => {}
                _ if x.acked >= needed => {
                    log::info!("learner {} is synced at LSN {} (needed {needed})", x.id, x.acked);
                    x.sync = SyncState::Synced { reported: false };
                    changed = true;
                }
                SyncState::No if x.acked + slack >= last => {
                    x.sync = SyncState::Pinned;
                    changed = true;
                }
                _ => {}
            }
        }
        if changed {
            self.advance_commit();
        }
    }

    // ---- backup side ----

    /// Backup: a primary's handshake on connection `conn`. Accepts it when it comes from the
    /// primary of a view at least as new as ours, with limits we can store.
    pub fn handle_hello(
        &mut self,
        now: Time,
        conn: ConnId,
        from: &str,
        hello: &Hello,
        nonce: u64,
    ) -> HelloVerdict {
        let status = if hello.group != self.cfg.group {
            Status::BAD_REQUEST
        } else if hello.view.num < self.view.num {
            Status::WRONG_SERVER
        } else if hello.view.primary_id() != Some(from) || from == self.cfg.id {
            Status::BAD_REQUEST
        } else if hello.view.num == self.view.num && self.view.primary_id() != Some(from) {
            Status::WRONG_SERVER
        } else if hello.max_key_len > self.cfg.max_key_len || hello.max_value_len > self.cfg.max_value_len {
            Status::UNSUPPORTED
        } else {
            Status::OK
        };
        if status == Status::OK {
            if hello.view.num > self.view.num {
                let mut view = hello.view.clone();
                view.candidates.clear();
                self.handle_view(now, view);
            }
            if let Some(old) = self.upstream.take() {
                if old.conn != conn {
                    self.outputs.push_back(Output::CloseConn(old.conn));
                }
            }
            log::info!("accepted replication from primary {from} (view {})", hello.view.num);
            self.upstream =
                Some(Upstream { conn, primary: from.to_string(), last_heard: now, snapshot: None });
            self.primary_heard = now;
            self.update_follower_role(now);
        }
        HelloVerdict { status, reply: self.hello_reply(nonce) }
    }

    fn hello_reply(&self, nonce: u64) -> HelloReply {
        HelloReply {
            group: self.cfg.group,
            incarnation: self.incarnation,
            data_id: self.meta.data_id,
            last_lsn: self.last_lsn,
            last_term: self.meta.terms.term_at(self.last_lsn),
            installing: self.meta.installing,
            view: self.view.num,
            nonce,
        }
    }

    fn upstream_mut(&mut self, conn: ConnId) -> Result<&mut Upstream, ReplError> {
        if self.primary.is_some() {
            return Err(ReplError::NotUpstream);
        }
        self.upstream.as_mut().filter(|u| u.conn == conn).ok_or(ReplError::NotUpstream)
    }

    /// Backup: the stream says the next record (LSN `lsn`, which the driver checked follows
    /// the store's last) was written in `term`. A new term is persisted before any of its
    /// records is applied.
    ///
    /// # Errors
    /// [`ReplError`]: the driver closes the connection.
    pub fn handle_position(&mut self, conn: ConnId, lsn: u64, term: u64) -> Result<(), ReplError> {
        let u = self.upstream_mut(conn)?;
        if u.snapshot.is_some() {
            return Err(ReplError::Unexpected("a log position inside a snapshot"));
        }
        match self.meta.terms.push(term, lsn) {
            Ok(true) => {
                self.outputs.push_back(Output::Persist(self.meta.clone()));
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(ReplError::Terms(e)),
        }
    }

    /// Backup: a lease beacon stamped `time` on `conn`. Returns whether it is granted: only
    /// while the sender is the primary of the view this server knows.
    pub fn handle_beacon(&mut self, now: Time, conn: ConnId, time: u64) -> bool {
        let view_primary = self.view.primary_id().map(str::to_string);
        let Ok(u) = self.upstream_mut(conn) else { return false };
        u.last_heard = now;
        let ours = view_primary.as_deref() == Some(u.primary.as_str());
        self.primary_heard = now;
        if !ours || time == 0 {
            return false;
        }
        self.last_grant = Some(now);
        true
    }

    /// Backup: a snapshot complete up to `upto` begins on `conn`, with the primary's term
    /// history. The store is to be wiped ([`Output::Wipe`]) after the install marker and a new
    /// data id (`data_id`, fresh and random) are persisted.
    ///
    /// # Errors
    /// [`ReplError`]: the driver closes the connection.
    pub fn handle_snapshot_begin(
        &mut self,
        conn: ConnId,
        upto: u64,
        terms: &[(u64, u64)],
        data_id: u64,
    ) -> Result<(), ReplError> {
        let terms = Terms::from_entries(terms).map_err(ReplError::Terms)?;
        let u = self.upstream_mut(conn)?;
        u.snapshot = Some((upto, terms));
        self.meta.installing = true;
        self.meta.data_id = data_id;
        self.meta.terms = Terms::default();
        self.last_lsn = 0;
        self.ready_lsn = 0;
        self.outputs.push_back(Output::Persist(self.meta.clone()));
        self.outputs.push_back(Output::Wipe);
        Ok(())
    }

    /// Backup: the snapshot is installed and durable up to `upto` (the driver finished the
    /// install first).
    ///
    /// # Errors
    /// [`ReplError`]: the driver closes the connection.
    pub fn handle_snapshot_end(&mut self, conn: ConnId, upto: u64) -> Result<(), ReplError> {
        let u = self.upstream_mut(conn)?;
        let Some((begun, terms)) = u.snapshot.take() else {
            return Err(ReplError::Unexpected("a snapshot end without its beginning"));
        };
        if begun != upto {
            return Err(ReplError::Unexpected("the snapshot's end does not match its beginning"));
        }
        self.meta.terms = terms;
        self.meta.installing = false;
        self.last_lsn = upto;
        self.ready_lsn = upto;
        self.outputs.push_back(Output::Persist(self.meta.clone()));
        Ok(())
    }

    /// Backup: replication connection `conn` closed.
    pub fn handle_conn_closed(&mut self, now: Time, conn: ConnId) {
        if self.upstream.as_ref().is_some_and(|u| u.conn == conn) {
            self.upstream = None;
            if self.primary.is_none() {
                self.update_follower_role(now);
            }
        }
    }
}

#[cfg(test)]
mod tests;
