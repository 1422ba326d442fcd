//! Deterministic simulation of a replica group: the real view service and replica state
//! machines, a simulated network (loss, delay, reordering of datagrams, partitions, resets),
//! simulated stores, crashes and restarts of servers and of the coordinator, drifting clocks,
//! and clients writing and reading. After every simulated millisecond it checks:
//!
//! - at most one server may serve as primary;
//! - every acknowledged write (and every write a read returned) is held, unchanged, by every
//!   member of the coordinator's current view that still has the data it joined with;
//! - no read returns a value older than a write acknowledged before the read was sent, or a
//!   value never written.
//!
//! After the faults stop it heals everything and checks the group serves again with a full
//! view. A failing run prints its seed; `SIM_SEED=n cargo test -p tandem-server --test sim
//! -- --nocapture` replays it exactly, `SIM_SEEDS=n` runs more seeds.

use server::coordinator::view_service::{Config as VsConfig, ViewService};
use server::replica::{Config as ReplicaConfig, ConnId, Meta, Output, Replica};
use server::time::Time;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use wire::cluster::{Heartbeat, Hello, HelloReply, View};
use wire::Status;

const MS: u64 = 1000;

/// SplitMix64: small, fast, and the same on every platform and version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// One record of a simulated log. `value` is unique per write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    lsn: u64,
    term: u64,
    key: u8,
    value: u64,
}

/// A simulated store: a snapshot base (after an install) plus a gap-free log after it. Writes
/// survive a process crash (as the real store's do, in the shared mapping).
#[derive(Debug, Default, Clone)]
struct Store {
    snap_upto: u64,
    snap: BTreeMap<u8, Rec>,
    log: Vec<Rec>,
    /// An install under way: lost if the process dies before it finishes.
    installing: Option<BTreeMap<u8, Rec>>,
}

impl Store {
    fn last_lsn(&self) -> u64 {
        self.log.last().map_or(self.snap_upto, |r| r.lsn)
    }
    fn record(&self, lsn: u64) -> Option<Rec> {
        if lsn <= self.snap_upto {
            return None;
        }
        self.log.get((lsn - self.snap_upto - 1) as usize).copied()
    }
    fn get(&self, key: u8) -> Option<Rec> {
        self.log.iter().rev().find(|r| r.key == key).copied().or_else(|| self.snap.get(&key).copied())
    }
    fn state(&self) -> BTreeMap<u8, Rec> {
        let mut s = self.snap.clone();
        for r in &self.log {
            s.insert(r.key, *r);
        }
        s
    }
    fn append(&mut self, r: Rec) {
        assert_eq!(r.lsn, self.last_lsn() + 1, "a gap in the log");
        self.log.push(r);
    }
    fn wipe(&mut self) {
        *self = Store { installing: Some(BTreeMap::new()), ..Store::default() };
    }
    fn crash(&mut self) {
        self.installing = None;
    }
}

/// A clock that runs at its own rate from its own origin.
#[derive(Debug, Clone, Copy)]
struct Clock {
    offset: u64,
    rate: f64,
}

impl Clock {
    fn local(&self, global: u64) -> Time {
        Time(self.offset + (global as f64 * self.rate) as u64)
    }
}

#[derive(Debug, Clone)]
enum Msg {
    Hello(Hello),
    HelloReply(Status, HelloReply),
    Position { lsn: u64, term: u64 },
    Rec(Rec),
    SnapBegin { upto: u64, terms: Vec<(u64, u64)> },
    SnapPut(Rec),
    SnapEnd { upto: u64 },
    Beacon { time: u64 },
    Ack { lsn: u64, grant: u64, data_id: u64 },
}

/// A replication connection, primary side `from`, backup side `to`.
#[derive(Debug)]
struct Conn {
    from: usize,
    to: usize,
    /// Connected (both ends know); before that the connect is in flight.
    up: bool,
    closed: bool,
    connect_at: u64,
    to_backup: VecDeque<(u64, Msg)>,
    to_primary: VecDeque<(u64, Msg)>,
    /// Primary side: what to stream.
    stream: Option<Stream>,
    /// Backup side: the newest beacon granted, echoed with the next ack.
    grant: u64,
    ack_due: bool,
}

#[derive(Debug, Clone, Copy)]
struct Stream {
    next: u64,
    last_term: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Put(u8, u64),
    Get(u8),
}

/// A client request held until the commit point covers it.
#[derive(Debug, Clone, Copy)]
struct Held {
    client: usize,
    needs: u64,
    /// For a PUT: the term it was written in.
    term: u64,
    op: Op,
    /// For a GET: what was read.
    read: Option<Rec>,
}

struct Node {
    id: String,
    alive: bool,
    clock: Clock,
    replica: Option<Replica>,
    store: Store,
    meta: Meta,
    incarnation: u64,
    /// Primary side: peer id -> connection.
    out: BTreeMap<String, ConnId>,
    held: Vec<Held>,
    restart_at: u64,
}

#[derive(Debug, Clone, Copy)]
enum ClientState {
    Idle { next_at: u64 },
    Waiting { node: usize, sent_at: u64, deadline: u64 },
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    coord: Option<ViewService>,
    coord_clock: Clock,
    coord_view: View,
    coord_restart_at: u64,
    seq: u64,
    datagrams: Vec<(u64, Option<usize>, Datagram)>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    /// Pairs that cannot talk (i, j) with i < j; usize::MAX stands for the coordinator.
    cuts: BTreeSet<(usize, usize)>,
    heal_at: u64,
    clients: Vec<ClientState>,
    next_value: u64,
    /// Every write any primary executed: (term, lsn) -> (key, value).
    written: BTreeMap<(u64, u64), (u8, u64)>,
    /// Writes that must survive: acknowledged, or returned by a read. lsn -> (record, since).
    acked: BTreeMap<u64, (Rec, u64)>,
    /// Per key: (since, lsn) of the writes in `acked`, in the order they were added.
    acked_by_key: BTreeMap<u8, Vec<(u64, u64)>>,
    /// Per server: the data id and LSN up to which its log was checked against `acked`.
    verified: Vec<(u64, u64)>,
    acks: u64,
    reads: u64,
    faults: bool,
    log: Vec<String>,
    replicas: usize,
}

#[derive(Debug, Clone)]
enum Datagram {
    Heartbeat(u64, Heartbeat),
    View(View),
}

const COORD: usize = usize::MAX;

impl Sim {
    fn new(seed: u64, nodes: usize, replicas: usize) -> Sim {
        let mut rng = Rng(seed);
        let mut ns = Vec::new();
        for i in 0..nodes {
            let drift = (rng.below(1800) as f64 - 900.0) / 100_000.0; // within +-0.9%, inside the 1% bound
            ns.push(Node {
                id: format!("s{}", i + 1),
                alive: true,
                clock: Clock { offset: rng.below(5_000_000), rate: 1.0 + drift },
                replica: None,
                store: Store::default(),
                meta: Meta { data_id: rng.next() | 1, ..Meta::default() },
                incarnation: 1,
                out: BTreeMap::new(),
                held: Vec::new(),
                restart_at: 0,
            });
        }
        let drift = (rng.below(1800) as f64 - 900.0) / 100_000.0;
        let coord_clock = Clock { offset: rng.below(5_000_000), rate: 1.0 + drift };
        let cfg = VsConfig { replicas, ..VsConfig::default() };
        let coord = ViewService::new(cfg, coord_clock.local(0));
        let mut sim = Sim {
            rng,
            now: 0,
            nodes: ns,
            coord: Some(coord),
            coord_clock,
            coord_view: View::default(),
            coord_restart_at: 0,
            seq: 0,
            datagrams: Vec::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            cuts: BTreeSet::new(),
            heal_at: 0,
            clients: (0..3).map(|_| ClientState::Idle { next_at: 0 }).collect(),
            next_value: 1,
            written: BTreeMap::new(),
            acked: BTreeMap::new(),
            acked_by_key: BTreeMap::new(),
            verified: vec![(0, 0); nodes],
            acks: 0,
            reads: 0,
            faults: true,
            log: Vec::new(),
            replicas,
        };
        for i in 0..nodes {
            sim.start_node(i);
        }
        sim
    }

    fn note(&mut self, s: String) {
        self.log.push(format!("[{:>8.3}s] {s}", self.now as f64 / 1e6));
    }

    fn local(&self, i: usize) -> Time {
        self.nodes[i].clock.local(self.now)
    }

    fn replica_config(id: &str) -> ReplicaConfig {
        ReplicaConfig { id: id.to_string(), addr: id.to_string(), ..ReplicaConfig::default() }
    }

    fn start_node(&mut self, i: usize) {
        let now = self.local(i);
        let n = &mut self.nodes[i];
        n.alive = true;
        n.incarnation += 1;
        let cfg = Self::replica_config(&n.id);
        n.replica = Some(Replica::new(cfg, n.meta.clone(), n.incarnation, n.store.last_lsn(), now));
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        self.cuts.contains(&(a.min(b), a.max(b)))
    }

    fn latency(&mut self) -> u64 {
        if self.rng.chance(0.02) {
            self.rng.range(5 * MS, 40 * MS)
        } else {
            self.rng.range(100, 2 * MS)
        }
    }

    fn send_datagram(&mut self, from: usize, to: Option<usize>, d: Datagram) {
        let peer = to.unwrap_or(COORD);
        if self.cut(from, peer) || self.rng.chance(0.05) {
            return;
        }
        let at = self.now + self.latency();
        self.datagrams.push((at, to, d));
    }

    fn send(&mut self, conn: ConnId, to_backup: bool, msg: Msg) {
        let lat = self.rng.range(50, MS);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.closed {
            return;
        }
        let q = if to_backup { &mut c.to_backup } else { &mut c.to_primary };
        let at = q.back().map_or(0, |m| m.0).max(self.now + lat);
        q.push_back((at, msg));
    }

    fn close_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.closed {
            return;
        }
        c.closed = true;
        let (from, to) = (c.from, c.to);
        // Both ends learn it (the sides that are alive).
        if self.nodes[from].alive {
            let peer = self.nodes[to].id.clone();
            if self.nodes[from].out.get(&peer) == Some(&conn) {
                self.nodes[from].out.remove(&peer);
                let now = self.local(from);
                if let Some(r) = self.nodes[from].replica.as_mut() {
                    r.handle_peer_closed(now, &peer);
                }
            }
        }
        if self.nodes[to].alive {
            let now = self.local(to);
            if let Some(r) = self.nodes[to].replica.as_mut() {
                r.handle_conn_closed(now, conn);
            }
        }
    }

    fn crash(&mut self, i: usize, down_for: u64) {
        self.note(format!("crash {}", self.nodes[i].id));
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closed && (c.from == i || c.to == i))
            .map(|(k, _)| *k)
            .collect();
        let n = &mut self.nodes[i];
        n.alive = false;
        n.replica = None;
        n.out.clear();
        n.held.clear();
        n.store.crash();
        n.restart_at = self.now + down_for;
        for c in conns {
            self.close_conn(c);
        }
        for c in &mut self.clients {
            if let ClientState::Waiting { node, .. } = c {
                if *node == i {
                    // The reply is lost; the client will time out.
                }
            }
        }
    }

    fn drain_outputs(&mut self, i: usize) {
        loop {
            let Some(out) = self.nodes[i].replica.as_mut().and_then(|r| r.poll_output()) else { return };
            self.execute(i, out);
        }
    }

    fn execute(&mut self, i: usize, out: Output) {
        match out {
            Output::Heartbeat(hb) => {
                self.seq += 1;
                let seq = self.seq;
                self.send_datagram(i, None, Datagram::Heartbeat(seq, hb));
            }
            Output::Persist(meta) => self.nodes[i].meta = meta,
            Output::Connect { peer, .. } => {
                if let Some(old) = self.nodes[i].out.remove(&peer) {
                    self.close_conn(old);
                }
                let Some(to) = self.nodes.iter().position(|n| n.id == peer) else { return };
                let id = self.next_conn;
                self.next_conn += 1;
                let at = self.now + self.latency();
                self.conns.insert(
                    id,
                    Conn {
                        from: i,
                        to,
                        up: false,
                        closed: false,
                        connect_at: at,
                        to_backup: VecDeque::new(),
                        to_primary: VecDeque::new(),
                        stream: None,
                        grant: 0,
                        ack_due: false,
                    },
                );
                self.nodes[i].out.insert(peer, id);
            }
            Output::Disconnect { peer } => {
                if let Some(c) = self.nodes[i].out.remove(&peer) {
                    self.close_conn(c);
                }
            }
            Output::Hello { peer, hello } => {
                if let Some(&c) = self.nodes[i].out.get(&peer) {
                    self.send(c, true, Msg::Hello(hello));
                }
            }
            Output::Stream { peer, from } => {
                if let Some(&c) = self.nodes[i].out.get(&peer) {
                    if let Some(conn) = self.conns.get_mut(&c) {
                        conn.stream = Some(Stream { next: from, last_term: None });
                    }
                }
            }
            Output::Snapshot { peer } => {
                if let Some(&c) = self.nodes[i].out.get(&peer) {
                    let store = &self.nodes[i].store;
                    let upto = store.last_lsn();
                    let state = store.state();
                    let terms = self.nodes[i].meta.terms.entries().to_vec();
                    self.send(c, true, Msg::SnapBegin { upto, terms });
                    for r in state.values() {
                        self.send(c, true, Msg::SnapPut(*r));
                    }
                    self.send(c, true, Msg::SnapEnd { upto });
                    if let Some(conn) = self.conns.get_mut(&c) {
                        conn.stream = Some(Stream { next: upto + 1, last_term: None });
                    }
                }
            }
            Output::Beacon { peer, time, .. } => {
                if let Some(&c) = self.nodes[i].out.get(&peer) {
                    self.send(c, true, Msg::Beacon { time: time.0 });
                }
            }
            Output::CloseConn(c) => self.close_conn(c),
            Output::Wipe => self.nodes[i].store.wipe(),
            Output::StepDown => self.nodes[i].held.clear(),
            Output::RoleChanged(_) => {}
        }
    }

    /// Sends new records to every streaming peer of primary `i`.
    fn pump(&mut self, i: usize) {
        let conns: Vec<ConnId> = self.nodes[i].out.values().copied().collect();
        for c in conns {
            // Links have a bandwidth: some records per millisecond, so that catching up takes
            // a while and the checks see servers that lag.
            let mut budget = 4 + (c % 4) * 8;
            loop {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                let Some(conn) = self.conns.get(&c) else { break };
                let Some(mut s) = conn.stream else { break };
                if !conn.up || conn.closed {
                    break;
                }
                let store = &self.nodes[i].store;
                if s.next > store.last_lsn() {
                    break;
                }
                let Some(rec) = store.record(s.next) else {
                    // Before our own log starts (we installed a snapshot): ask for one.
                    let peer = self.nodes[conn.to].id.clone();
                    if let Some(conn) = self.conns.get_mut(&c) {
                        conn.stream = None;
                    }
                    if let Some(r) = self.nodes[i].replica.as_mut() {
                        r.handle_stream_gap(&peer);
                    }
                    self.drain_outputs(i);
                    break;
                };
                let term = self.nodes[i].meta.terms.term_at(s.next);
                assert_eq!(term, rec.term, "seed log: the term history disagrees with the log at {}", s.next);
                if s.last_term != Some(term) {
                    self.send(c, true, Msg::Position { lsn: s.next, term });
                    s.last_term = Some(term);
                }
                self.send(c, true, Msg::Rec(rec));
                s.next += 1;
                if let Some(conn) = self.conns.get_mut(&c) {
                    conn.stream = Some(s);
                }
            }
        }
    }

    fn deliver(&mut self) {
        // Datagrams.
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.datagrams).into_iter().partition(|d| d.0 <= now);
        self.datagrams = rest;
        for (_, to, d) in due {
            match (to, d) {
                (None, Datagram::Heartbeat(seq, hb)) => {
                    if std::env::var("SIM_TRACE").is_ok() && self.now > 20_000 * MS && !hb.synced.is_empty() {
                        eprintln!("{} hb from {} view {} synced {:?}", self.now, hb.id, hb.view, hb.synced);
                    }
                    let from = self.nodes.iter().position(|n| n.id == hb.id).expect("known node");
                    let cnow = self.coord_clock.local(self.now);
                    let Some(vs) = self.coord.as_mut() else { continue };
                    let Ok(view) = vs.handle_heartbeat(cnow, seq, hb) else { continue };
                    let view = view.clone();
                    if vs.needs_persist() {
                        self.coord_view = vs.persisted();
                        vs.mark_persisted();
                    }
                    self.send_datagram(COORD, Some(from), Datagram::View(view));
                }
                (Some(i), Datagram::View(view)) => {
                    if !self.nodes[i].alive {
                        continue;
                    }
                    let now = self.local(i);
                    if std::env::var("SIM_TRACE").is_ok() && self.now > 20_000 * MS {
                        eprintln!(
                            "{} {} gets view {} primary {:?} backups {:?} cands {:?}",
                            self.now,
                            self.nodes[i].id,
                            view.num,
                            view.primary_id(),
                            view.backups.iter().map(|b| &b.id).collect::<Vec<_>>(),
                            view.candidates.iter().map(|b| &b.id).collect::<Vec<_>>()
                        );
                    }
                    if let Some(r) = self.nodes[i].replica.as_mut() {
                        r.handle_view(now, view);
                    }
                    self.drain_outputs(i);
                }
                _ => {}
            }
        }
        // Connections.
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.deliver_conn(id);
        }
        self.conns.retain(|_, c| !c.closed);
    }

    fn deliver_conn(&mut self, id: ConnId) {
        let (from, to, up, connect_at, closed) = {
            let c = &self.conns[&id];
            (c.from, c.to, c.up, c.connect_at, c.closed)
        };
        if closed {
            return;
        }
        if !up {
            if self.now < connect_at {
                return;
            }
            if !self.nodes[to].alive || self.cut(from, to) {
                self.close_conn(id);
                return;
            }
            self.conns.get_mut(&id).expect("conn").up = true;
            let peer = self.nodes[to].id.clone();
            let now = self.local(from);
            let nonce = self.rng.next();
            if let Some(r) = self.nodes[from].replica.as_mut() {
                r.handle_peer_connected(now, &peer, nonce);
            }
            self.drain_outputs(from);
            return;
        }
        if self.cut(from, to) {
            // Partitioned: TCP holds everything until the network heals (or someone gives up).
            return;
        }
        while let Some(msg) = self.pop_due(id, true) {
            self.at_backup(id, to, from, msg);
            if self.conns.get(&id).is_none_or(|c| c.closed) {
                return;
            }
        }
        let ack =
            self.conns.get_mut(&id).map(|c| (std::mem::take(&mut c.ack_due), std::mem::take(&mut c.grant)));
        if let Some((true, grant)) = ack {
            let lsn = self.nodes[to].store.last_lsn();
            let data_id = self.nodes[to].meta.data_id;
            self.send(id, false, Msg::Ack { lsn, grant, data_id });
        }
        while let Some(msg) = self.pop_due(id, false) {
            self.at_primary(id, from, to, msg);
            if self.conns.get(&id).is_none_or(|c| c.closed) {
                return;
            }
        }
    }

    fn pop_due(&mut self, id: ConnId, to_backup: bool) -> Option<Msg> {
        let now = self.now;
        let c = self.conns.get_mut(&id)?;
        let q = if to_backup { &mut c.to_backup } else { &mut c.to_primary };
        if q.front().is_some_and(|m| m.0 <= now) {
            q.pop_front().map(|m| m.1)
        } else {
            None
        }
    }

    fn at_backup(&mut self, id: ConnId, b: usize, p: usize, msg: Msg) {
        if std::env::var("SIM_TRACE").is_ok() && self.now > 19_000 * MS {
            eprintln!(
                "{} conn {id} -> {}: {:?} (last {})",
                self.now,
                self.nodes[b].id,
                msg,
                self.nodes[b].store.last_lsn()
            );
        }
        if !self.nodes[b].alive {
            return;
        }
        let now = self.local(b);
        let primary_id = self.nodes[p].id.clone();
        let nonce = self.rng.next();
        let data_id = self.rng.next() | 1;
        let node = &mut self.nodes[b];
        let Some(r) = node.replica.as_mut() else { return };
        let mut fail: Option<String> = None;
        match msg {
            Msg::Hello(hello) => {
                let v = r.handle_hello(now, id, &primary_id, &hello, nonce);
                self.drain_outputs(b);
                self.send(id, false, Msg::HelloReply(v.status, v.reply));
                return;
            }
            Msg::Position { lsn, term } => {
                if !r.accepts_records(id) || lsn != node.store.last_lsn() + 1 {
                    fail = Some(format!("position {lsn} at last {}", node.store.last_lsn()));
                } else if let Err(e) = r.handle_position(id, lsn, term) {
                    fail = Some(format!("position: {e}"));
                }
            }
            Msg::Rec(rec) => {
                if !r.accepts_records(id) || rec.lsn != node.store.last_lsn() + 1 {
                    fail = Some(format!("record {} at last {}", rec.lsn, node.store.last_lsn()));
                } else {
                    node.store.append(rec);
                    let last = node.store.last_lsn();
                    r.handle_log(last, last);
                    self.conns.get_mut(&id).expect("conn").ack_due = true;
                }
            }
            Msg::SnapBegin { upto, terms } => {
                if let Err(e) = r.handle_snapshot_begin(id, upto, &terms, data_id) {
                    fail = Some(format!("snapshot: {e}"));
                }
            }
            Msg::SnapPut(rec) => {
                if r.accepts_snapshot(id) {
                    if let Some(m) = node.store.installing.as_mut() {
                        m.insert(rec.key, rec);
                    }
                } else {
                    fail = Some("snapshot record outside a snapshot".into());
                }
            }
            Msg::SnapEnd { upto } => {
                if !r.accepts_snapshot(id) {
                    fail = Some("snapshot end outside a snapshot".into());
                } else {
                    let snap = node.store.installing.take().unwrap_or_default();
                    node.store = Store { snap_upto: upto, snap, log: Vec::new(), installing: None };
                    match r.handle_snapshot_end(id, upto) {
                        Ok(()) => {
                            r.handle_log(upto, upto);
                            self.conns.get_mut(&id).expect("conn").ack_due = true;
                        }
                        Err(e) => fail = Some(format!("snapshot end: {e}")),
                    }
                }
            }
            Msg::Beacon { time } => {
                if r.handle_beacon(now, id, time) {
                    let c = self.conns.get_mut(&id).expect("conn");
                    c.grant = time;
                    c.ack_due = true;
                }
            }
            Msg::HelloReply(..) | Msg::Ack { .. } => fail = Some("primary message at a backup".into()),
        }
        self.drain_outputs(b);
        if let Some(why) = fail {
            let bid = self.nodes[b].id.clone();
            self.note(format!("{bid} closes stream from {primary_id}: {why}"));
            self.close_conn(id);
        }
    }

    fn at_primary(&mut self, id: ConnId, p: usize, b: usize, msg: Msg) {
        if !self.nodes[p].alive {
            return;
        }
        let now = self.local(p);
        let peer = self.nodes[b].id.clone();
        if self.nodes[p].out.get(&peer) != Some(&id) {
            return;
        }
        let Some(r) = self.nodes[p].replica.as_mut() else { return };
        match msg {
            Msg::HelloReply(status, reply) => r.handle_hello_reply(now, &peer, status, &reply),
            Msg::Ack { lsn, grant, data_id } => r.handle_ack(now, &peer, lsn, grant, data_id),
            _ => {}
        }
        self.drain_outputs(p);
    }

    fn tick_nodes(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            let now = self.local(i);
            if let Some(r) = self.nodes[i].replica.as_mut() {
                if now >= r.next_deadline() {
                    r.handle_tick(now);
                }
            }
            self.drain_outputs(i);
            self.pump(i);
            self.release(i);
        }
        if let Some(vs) = self.coord.as_mut() {
            let cnow = self.coord_clock.local(self.now);
            if cnow >= vs.next_deadline() {
                vs.handle_tick(cnow);
                if vs.needs_persist() {
                    self.coord_view = vs.persisted();
                    vs.mark_persisted();
                }
            }
        }
    }

    /// Releases client replies the commit point now covers.
    fn release(&mut self, i: usize) {
        let Some(committed) = self.nodes[i].replica.as_ref().map(|r| r.committed()) else { return };
        let (done, keep): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.nodes[i].held).into_iter().partition(|h| h.needs <= committed);
        self.nodes[i].held = keep;
        for h in done {
            let ClientState::Waiting { node, sent_at, .. } = self.clients[h.client] else { continue };
            if node != i {
                continue;
            }
            match h.op {
                Op::Put(key, value) => {
                    let rec = Rec { lsn: h.needs, term: h.term, key, value };
                    self.must_survive(rec, "acknowledged write");
                    self.acks += 1;
                }
                Op::Get(key) => {
                    self.reads += 1;
                    self.check_read(key, h.read, sent_at, &self.nodes[i].id.clone());
                }
            }
            self.clients[h.client] = ClientState::Idle { next_at: self.now + self.rng.range(0, 3 * MS) };
        }
    }

    fn must_survive(&mut self, rec: Rec, what: &str) {
        match self.acked.get(&rec.lsn) {
            Some((old, _)) if *old != rec => {
                panic!("an {what} changed LSN {}: {old:?} before, {rec:?} now", rec.lsn)
            }
            Some(_) => {}
            None => {
                self.acked.insert(rec.lsn, (rec, self.now));
                self.acked_by_key.entry(rec.key).or_default().push((self.now, rec.lsn));
                // Servers already checked past this LSN are checked for it now.
                for i in 0..self.nodes.len() {
                    if self.verified[i].1 >= rec.lsn {
                        if let Some(have) = self.nodes[i].store.record(rec.lsn) {
                            if self.is_intact_member(i) {
                                assert_eq!(
                                    have, rec,
                                    "{} holds another record at LSN {}",
                                    self.nodes[i].id, rec.lsn
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn is_intact_member(&self, i: usize) -> bool {
        let view = &self.coord_view;
        let n = &self.nodes[i];
        view.primary.iter().chain(view.backups.iter()).any(|m| m.id == n.id && m.data_id == n.meta.data_id)
            && !n.meta.installing
    }

    fn check_read(&mut self, key: u8, read: Option<Rec>, sent_at: u64, from: &str) {
        let floor = self
            .acked_by_key
            .get(&key)
            .map(|v| {
                v.iter().take_while(|(since, _)| *since < sent_at).map(|(_, lsn)| *lsn).max().unwrap_or(0)
            })
            .unwrap_or(0);
        match read {
            None if floor > 0 => {
                panic!("stale read from {from}: key {key} absent, but LSN {floor} was acknowledged before")
            }
            None => {}
            Some(r) => {
                assert!(
                    r.lsn >= floor,
                    "stale read from {from}: key {key} at LSN {}, LSN {floor} acknowledged before",
                    r.lsn
                );
                assert_eq!(
                    self.written.get(&(r.term, r.lsn)),
                    Some(&(r.key, r.value)),
                    "read from {from} returned a value never written: {r:?}"
                );
                self.must_survive(r, "value a read returned");
            }
        }
    }

    fn clients_act(&mut self) {
        let primary =
            self.coord_view.primary.as_ref().and_then(|p| self.nodes.iter().position(|n| n.id == p.id));
        for c in 0..self.clients.len() {
            match self.clients[c] {
                ClientState::Waiting { deadline, .. } if self.now >= deadline => {
                    // Unknown outcome: neither acknowledged nor refused.
                    self.clients[c] = ClientState::Idle { next_at: self.now + MS };
                }
                ClientState::Idle { next_at } if self.now >= next_at => {
                    // Usually the coordinator's primary; sometimes any server (stale clients).
                    let target = match primary {
                        Some(p) if !self.rng.chance(0.2) => p,
                        _ => self.rng.below(self.nodes.len() as u64) as usize,
                    };
                    let key = self.rng.below(4) as u8;
                    let op = if self.rng.chance(0.6) {
                        self.next_value += 1;
                        Op::Put(key, self.next_value)
                    } else {
                        Op::Get(key)
                    };
                    self.request(c, target, op);
                }
                _ => {}
            }
        }
    }

    fn request(&mut self, c: usize, i: usize, op: Op) {
        let retry = ClientState::Idle { next_at: self.now + self.rng.range(MS, 10 * MS) };
        if !self.nodes[i].alive {
            self.clients[c] = retry;
            return;
        }
        let now = self.local(i);
        let node = &mut self.nodes[i];
        let Some(r) = node.replica.as_mut() else { return };
        if r.can_serve(now).is_err() {
            self.clients[c] = retry;
            return;
        }
        let store = &mut node.store;
        let held = match op {
            Op::Put(key, value) => {
                let lsn = store.last_lsn() + 1;
                let term = r.terms().last_term();
                store.append(Rec { lsn, term, key, value });
                assert!(
                    self.written.insert((term, lsn), (key, value)).is_none(),
                    "two writes at term {term} LSN {lsn}: two primaries in one term"
                );
                let last = store.last_lsn();
                r.handle_log(last, last);
                Held { client: c, needs: lsn, term, op, read: None }
            }
            Op::Get(key) => Held { client: c, needs: store.last_lsn(), term: 0, op, read: store.get(key) },
        };
        node.held.push(held);
        self.clients[c] = ClientState::Waiting { node: i, sent_at: self.now, deadline: self.now + 500 * MS };
        self.drain_outputs(i);
    }

    fn faults(&mut self) {
        if !self.faults {
            return;
        }
        let n = self.nodes.len();
        // Crashes: about one every two seconds somewhere; restarts after 0.1-3 s.
        if self.rng.chance(1.0 / 2000.0) {
            let i = self.rng.below(n as u64) as usize;
            if self.nodes[i].alive {
                let down = self.rng.range(100 * MS, 3000 * MS);
                self.crash(i, down);
            }
        }
        for i in 0..n {
            if !self.nodes[i].alive && self.now >= self.nodes[i].restart_at {
                // Restarted on an empty data directory, same id: only while another member of
                // the view still holds the data (otherwise the group rightly waits forever).
                let others_hold = {
                    let view = &self.coord_view;
                    view.primary.iter().chain(view.backups.iter()).any(|m| {
                        m.id != self.nodes[i].id
                            && self
                                .nodes
                                .iter()
                                .any(|n| n.id == m.id && n.meta.data_id == m.data_id && !n.meta.installing)
                    })
                };
                let wipe = others_hold && self.rng.chance(0.1);
                if wipe {
                    self.nodes[i].store = Store::default();
                    self.nodes[i].meta = Meta { data_id: self.rng.next() | 1, ..Meta::default() };
                }
                self.note(format!("restart {}{}", self.nodes[i].id, if wipe { " (empty data)" } else { "" }));
                self.start_node(i);
            }
        }
        // Partitions: a server cut from everyone, or from the coordinator only, or two servers
        // cut from each other.
        if self.cuts.is_empty() && self.rng.chance(1.0 / 3000.0) {
            let i = self.rng.below(n as u64) as usize;
            let kind = self.rng.below(3);
            match kind {
                0 => {
                    for j in (0..n).filter(|&j| j != i).chain([COORD]) {
                        self.cuts.insert((i.min(j), i.max(j)));
                    }
                }
                1 => {
                    self.cuts.insert((i, COORD));
                }
                _ => {
                    let j = (i + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                    self.cuts.insert((i.min(j), i.max(j)));
                }
            }
            self.heal_at = self.now + self.rng.range(200 * MS, 3000 * MS);
            let cuts = self.cuts.clone();
            self.note(format!("partition {cuts:?}"));
        }
        if !self.cuts.is_empty() && self.now >= self.heal_at {
            self.note("heal".into());
            self.cuts.clear();
        }
        // Connection resets.
        if self.rng.chance(1.0 / 1500.0) {
            let open: Vec<ConnId> = self.conns.iter().filter(|(_, c)| !c.closed).map(|(k, _)| *k).collect();
            if !open.is_empty() {
                let id = open[self.rng.below(open.len() as u64) as usize];
                self.note(format!("reset connection {id}"));
                self.close_conn(id);
            }
        }
        // The coordinator crashes now and then and comes back from its persisted view.
        if self.coord.is_some() && self.rng.chance(1.0 / 8000.0) {
            self.note("coordinator crash".into());
            self.coord = None;
            self.coord_restart_at = self.now + self.rng.range(100 * MS, 2000 * MS);
        }
        if self.coord.is_none() && self.now >= self.coord_restart_at {
            self.restart_coordinator();
        }
    }

    fn restart_coordinator(&mut self) {
        self.note("coordinator restart".into());
        let cfg = VsConfig { replicas: self.replicas, ..VsConfig::default() };
        let cnow = self.coord_clock.local(self.now);
        self.coord = Some(if self.coord_view.num == 0 {
            ViewService::new(cfg, cnow)
        } else {
            ViewService::restore(cfg, self.coord_view.clone(), cnow)
        });
    }

    fn check(&mut self) {
        let serving: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| {
                n.alive && n.replica.as_ref().is_some_and(|r| r.can_serve(n.clock.local(self.now)).is_ok())
            })
            .map(|n| n.id.as_str())
            .collect();
        assert!(serving.len() <= 1, "two servers serve as primary at once: {serving:?}");
        let max = self.acked.keys().next_back().copied().unwrap_or(0);
        for i in 0..self.nodes.len() {
            if !self.is_intact_member(i) {
                continue;
            }
            let n = &self.nodes[i];
            assert!(
                n.store.last_lsn() >= max,
                "{} (member of view {}) lacks acknowledged LSN {max} (has up to {})",
                n.id,
                self.coord_view.num,
                n.store.last_lsn()
            );
            if self.verified[i].0 != n.meta.data_id {
                self.verified[i] = (n.meta.data_id, 0);
            }
            for (lsn, (rec, _)) in self.acked.range(self.verified[i].1 + 1..) {
                if let Some(have) = n.store.record(*lsn) {
                    assert_eq!(
                        have, *rec,
                        "{} (member of view {}) holds another record at an acknowledged LSN",
                        n.id, self.coord_view.num
                    );
                }
            }
            self.verified[i].1 = max;
        }
    }

    fn step(&mut self) {
        self.now += MS;
        self.deliver();
        self.tick_nodes();
        self.clients_act();
        self.faults();
        self.check();
    }

    fn describe(&self) -> String {
        let mut out = format!("coordinator view: {:?}\n", self.coord.as_ref().map(|c| c.view().clone()));
        for (i, n) in self.nodes.iter().enumerate() {
            let now = self.local(i);
            let st = n.replica.as_ref().map(|r| r.status(now));
            let hb = self
                .coord
                .as_ref()
                .and_then(|c| c.server(&n.id))
                .map(|(hb, at)| (hb.incarnation, hb.data_id, hb.view, hb.role, hb.flags, at));
            out.push_str(&format!(
                "  {} alive={} inc={} data={} last={} installing={} terms={:?} status={:?} coord_knows={:?}\n",
                n.id, n.alive, n.incarnation, n.meta.data_id, n.store.last_lsn(), n.meta.installing,
                n.meta.terms.entries(), st, hb
            ));
        }
        out
    }

    fn heal_all(&mut self) {
        self.faults = false;
        self.cuts.clear();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                self.start_node(i);
            }
        }
        if self.coord.is_none() {
            self.restart_coordinator();
        }
        self.note("faults stop; everything healed".into());
    }
}

fn run(seed: u64, nodes: usize, replicas: usize, fault_secs: u64) -> Result<(u64, u64), String> {
    let mut sim = Sim::new(seed, nodes, replicas);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..fault_secs * 1000 {
            sim.step();
        }
        sim.heal_all();
        // Quiet period: the group must come back to a full view and serve again.
        let acks_before = sim.acks;
        for _ in 0..6000 {
            sim.step();
        }
        let view = sim.coord_view.clone();
        assert!(sim.acks > acks_before, "no write was acknowledged in the 6 s after healing (view {view:?})");
        assert_eq!(
            view.backups.len() + 1,
            replicas.min(nodes),
            "the view is not full again 6 s after healing: {view:?}"
        );
        (sim.acks, sim.reads)
    }));
    result.map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let tail: Vec<&String> = sim.log.iter().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().map(|s| s.as_str()).collect();
        format!(
            "seed {seed} ({nodes} servers, {replicas} replicas) failed at {:.3}s: {msg}\nlast events:\n{}\n{}",
            sim.now as f64 / 1e6,
            tail.join("\n"),
            sim.describe()
        )
    })
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return vec![s.parse().expect("SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    (1..=n).collect()
}

fn run_all(nodes: usize, replicas: usize) {
    let mut failures = Vec::new();
    let (mut acks, mut reads) = (0, 0);
    for seed in seeds() {
        match run(seed, nodes, replicas, 20) {
            Ok((a, r)) => {
                acks += a;
                reads += r;
            }
            Err(e) => failures.push(e),
        }
    }
    eprintln!("{nodes} servers / {replicas} replicas: {acks} writes acknowledged, {reads} reads checked");
    assert!(failures.is_empty(), "{} seeds failed:\n{}", failures.len(), failures.join("\n\n"));
    assert!(acks > 0 && reads > 0, "the simulation did nothing");
}

#[test]
fn three_servers_three_replicas() {
    run_all(3, 3);
}

#[test]
fn four_servers_three_replicas() {
    run_all(4, 3);
}

#[test]
fn two_servers_one_replica() {
    run_all(2, 1);
}
