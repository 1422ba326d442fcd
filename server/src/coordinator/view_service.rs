//! The view service as a sans-IO state machine: heartbeats in, views out.
//!
//! It never reads a clock, touches a socket or writes a file. The driver feeds it heartbeats
//! ([`ViewService::handle_heartbeat`]) and ticks ([`ViewService::handle_tick`]), persists
//! [`ViewService::persisted`] whenever [`ViewService::needs_persist`] says so *before* sending
//! any reply, and sends each heartbeat's reply to the address it came from.
//!
//! The rules, and why they are safe, are in `docs/replication.md`; in short:
//!
//! - Views are numbered upward. A view lists a primary and up to R-1 backups, each recorded
//!   with the incarnation and data id it had when it joined. Every member held every
//!   acknowledged write when the view was made, and the primary acknowledges a write only once
//!   every member (and every learner it reported synced) has it.
//! - Membership changes (a dead backup out, a synced learner in) wait until the primary has
//!   acknowledged the current view (its heartbeat carries the view number).
//! - A primary that is dead (no heartbeat for `dead_pings` intervals), restarted (a new
//!   incarnation) or whose data started over is replaced without waiting for its
//!   acknowledgement, by the member with the most complete log among those that are alive
//!   with the data they had when they joined. Any such member holds every acknowledged write.
//!   If none is, the service waits and says why.
//! - A restarted server loses its place in the view (it comes back as a learner), unless no
//!   member that did not restart can take over: after a restart of the whole group the most
//!   complete log among the members wins.

use std::collections::BTreeMap;
use std::time::Duration;

use wire::cluster::{Heartbeat, Member, View, HB_INSTALLING, HB_PRIMARY_SILENT};

use crate::time::Time;

/// How the view service decides.
#[derive(Debug, Clone)]
pub struct Config {
    /// The replica group this service manages.
    pub group: u32,
    /// Servers per view (primary + backups). At least 1.
    pub replicas: usize,
    /// How often servers heartbeat.
    pub ping_interval: Duration,
    /// A server is dead after this many intervals without a heartbeat.
    pub dead_pings: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config { group: 0, replicas: 3, ping_interval: Duration::from_millis(100), dead_pings: 5 }
    }
}

impl Config {
    /// Silence after which a server counts as dead.
    pub fn dead_after(&self) -> Duration {
        self.ping_interval * self.dead_pings.max(1)
    }
}

/// What the service knows of one server.
#[derive(Debug, Clone)]
struct ServerInfo {
    /// Its latest heartbeat.
    hb: Heartbeat,
    /// Sequence number of the latest datagram accepted.
    seq: u64,
    /// When that arrived.
    last_heard: Time,
}

/// Why a datagram was not acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// It is for another replica group.
    OtherGroup(u32),
    /// Not newer than one already seen from that server (a replay or a reordering).
    Stale {
        /// The datagram's sequence number.
        seq: u64,
        /// The newest seen.
        newest: u64,
    },
    /// From an older run of a server than one already heard.
    OldIncarnation,
}

/// The view service of one replica group.
#[derive(Debug)]
pub struct ViewService {
    cfg: Config,
    /// The current view; `candidates` and `waiting` are recomputed, not persisted.
    view: View,
    /// The primary of the current view has heartbeated with its number.
    acked: bool,
    servers: BTreeMap<String, ServerInfo>,
    /// When this service started (or restarted): nobody unheard counts as dead before
    /// `started + dead_after`.
    started: Time,
    /// When the first heartbeat of a new cluster arrived (view 0 only).
    first_heard: Option<Time>,
    /// When the current primary was found gone; members reporting after this have their
    /// final log positions.
    primary_failed_at: Option<Time>,
    dirty: bool,
}

impl ViewService {
    /// A service with no view yet (a new cluster).
    pub fn new(cfg: Config, now: Time) -> ViewService {
        let view = View { group: cfg.group, ..View::default() };
        Self::restore(cfg, view, now)
    }

    /// A service carrying on from a persisted view (after a coordinator restart). Nobody has
    /// been heard yet; nobody is declared dead before `dead_pings` intervals have passed.
    pub fn restore(cfg: Config, mut view: View, now: Time) -> ViewService {
        view.candidates.clear();
        view.waiting.clear();
        ViewService {
            cfg,
            view,
            acked: false,
            servers: BTreeMap::new(),
            started: now,
            first_heard: None,
            primary_failed_at: None,
            dirty: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current view, with the learners the primary should bring up to date and, when the
    /// service is waiting, why.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Whether the primary has acknowledged the current view.
    pub fn acked(&self) -> bool {
        self.acked
    }

    /// Whether the view changed since the last [`ViewService::mark_persisted`]: persist
    /// [`ViewService::persisted`] before sending any reply.
    pub fn needs_persist(&self) -> bool {
        self.dirty
    }

    /// What to persist: the view without candidates and reason.
    pub fn persisted(&self) -> View {
        View { candidates: Vec::new(), waiting: String::new(), ..self.view.clone() }
    }

    /// The driver has persisted the view.
    pub fn mark_persisted(&mut self) {
        self.dirty = false;
    }

    /// A server's heartbeat, carried by a datagram with sequence number `seq`. Returns the
    /// view to answer with, or why the datagram was ignored (the driver logs it).
    ///
    /// # Errors
    /// [`Rejected`]: nothing was changed.
    pub fn handle_heartbeat(&mut self, now: Time, seq: u64, hb: Heartbeat) -> Result<&View, Rejected> {
        if hb.group != self.cfg.group {
            return Err(Rejected::OtherGroup(hb.group));
        }
        if let Some(info) = self.servers.get(&hb.id) {
            if seq <= info.seq {
                return Err(Rejected::Stale { seq, newest: info.seq });
            }
            if hb.incarnation < info.hb.incarnation {
                return Err(Rejected::OldIncarnation);
            }
        }
        if self.first_heard.is_none() {
            self.first_heard = Some(now);
        }
        let from_primary = self.view.primary_id() == Some(hb.id.as_str());
        if from_primary && hb.view == self.view.num && self.primary_member_matches(&hb) {
            if !self.acked {
                log::info!("view={} acknowledged by primary {}", self.view.num, hb.id);
            }
            self.acked = true;
        }
        if let Some(old) = self.servers.get(&hb.id) {
            if old.hb.incarnation != hb.incarnation {
                log::info!(
                    "server {} restarted (incarnation {} -> {})",
                    hb.id,
                    old.hb.incarnation,
                    hb.incarnation
                );
            }
        } else {
            log::info!("server {} at {} heard for the first time", hb.id, hb.addr);
        }
        self.servers.insert(hb.id.clone(), ServerInfo { hb, seq, last_heard: now });
        self.decide(now);
        Ok(&self.view)
    }

    /// Time passes: finds dead servers and changes the view if needed.
    pub fn handle_tick(&mut self, now: Time) {
        self.decide(now);
    }

    /// When [`ViewService::handle_tick`] should next run.
    pub fn next_deadline(&self) -> Time {
        // Deaths are noticed within a ping interval; cheap enough to just tick at that rate.
        let mut next = self.servers.values().map(|s| s.last_heard + self.cfg.dead_after()).min();
        if let Some(t) = self.first_heard {
            if self.view.num == 0 {
                next = Some(next.map_or(t + self.cfg.dead_after(), |n| n.min(t + self.cfg.dead_after())));
            }
        }
        next.unwrap_or(self.started + self.cfg.dead_after()).max(self.started)
    }

    /// The latest heartbeat of a server, with when it arrived.
    pub fn server(&self, id: &str) -> Option<(&Heartbeat, Time)> {
        self.servers.get(id).map(|s| (&s.hb, s.last_heard))
    }

    fn primary_member_matches(&self, hb: &Heartbeat) -> bool {
        self.view.primary.as_ref().is_some_and(|p| p.incarnation == hb.incarnation && p.data_id == hb.data_id)
    }

    fn alive(&self, id: &str, now: Time) -> bool {
        self.servers.get(id).is_some_and(|s| now < s.last_heard + self.cfg.dead_after())
    }

    /// Dead for sure: silent for the dead interval, and the service has been up that long.
    fn known_dead(&self, id: &str, now: Time) -> bool {
        !self.alive(id, now) && now >= self.started + self.cfg.dead_after()
    }

    /// Still holds the data it had when it joined (a restart with the same data is fine).
    fn intact(&self, m: &Member) -> bool {
        self.servers.get(&m.id).is_some_and(|s| s.hb.data_id == m.data_id && s.hb.flags & HB_INSTALLING == 0)
    }

    fn restarted(&self, m: &Member) -> bool {
        self.servers.get(&m.id).is_some_and(|s| s.hb.incarnation != m.incarnation)
    }

    fn healthy(&self, m: &Member, now: Time) -> bool {
        self.alive(&m.id, now) && self.intact(m) && !self.restarted(m)
    }

    fn member_now(&self, id: &str) -> Option<Member> {
        self.servers.get(id).map(|s| Member {
            id: id.to_string(),
            addr: s.hb.addr.clone(),
            incarnation: s.hb.incarnation,
            data_id: s.hb.data_id,
        })
    }

    fn position(&self, id: &str) -> (u64, u64) {
        self.servers.get(id).map_or((0, 0), |s| (s.hb.last_term, s.hb.last_lsn))
    }

    fn install(&mut self, next: View, why: &str) {
        log::info!(
            "view={} term={} primary={} backups=[{}]: {why}",
            next.num,
            next.term,
            next.primary_id().unwrap_or("-"),
            next.backups.iter().map(|b| b.id.as_str()).collect::<Vec<_>>().join(",")
        );
        self.view = next;
        self.acked = false;
        self.dirty = true;
    }

    fn decide(&mut self, now: Time) {
        self.view.waiting.clear();
        if self.view.num == 0 {
            self.first_view(now);
        } else if self.view.primary.is_none() {
            // Only a view persisted by a broken coordinator could look like this.
            self.view.waiting = "the view has no primary".into();
        } else if let Some(reason) = self.primary_gone(now) {
            self.replace_primary(now, &reason);
        } else {
            self.primary_failed_at = None;
            self.maintain(now);
        }
        self.refresh_candidates(now);
    }

    /// View 0: wait briefly for the group to show up, then make the most complete log the
    /// primary. Servers with empty logs beside an empty primary join at once as backups.
    fn first_view(&mut self, now: Time) {
        let alive: Vec<&ServerInfo> = self
            .servers
            .values()
            .filter(|s| now < s.last_heard + self.cfg.dead_after() && s.hb.flags & HB_INSTALLING == 0)
            .collect();
        if alive.is_empty() {
            self.view.waiting = "no server has sent a heartbeat yet".into();
            return;
        }
        let settled = self.first_heard.is_some_and(|t| now >= t + self.cfg.dead_after());
        if alive.len() < self.cfg.replicas && !settled {
            self.view.waiting =
                format!("waiting for more servers to start ({} of {} heard)", alive.len(), self.cfg.replicas);
            return;
        }
        let Some(best) = alive.iter().max_by(|a, b| {
            (a.hb.last_term, a.hb.last_lsn).cmp(&(b.hb.last_term, b.hb.last_lsn)).then(b.hb.id.cmp(&a.hb.id))
        }) else {
            return;
        };
        let primary_id = best.hb.id.clone();
        let empty = best.hb.last_lsn == 0;
        let backups: Vec<Member> = if empty {
            alive
                .iter()
                .filter(|s| s.hb.id != primary_id && s.hb.last_lsn == 0)
                .take(self.cfg.replicas.saturating_sub(1))
                .filter_map(|s| self.member_now(&s.hb.id))
                .collect()
        } else {
            Vec::new()
        };
        // Start above every view and term the servers report: after a coordinator lost its
        // directory (or a cluster restored from a server's backup), servers ignore views older
        // than the one they know, and a primary must take a term newer than its log's.
        let num = alive.iter().map(|s| s.hb.view.max(s.hb.last_term)).max().unwrap_or(0) + 1;
        let next = View {
            group: self.cfg.group,
            num,
            term: num,
            primary: self.member_now(&primary_id),
            backups,
            candidates: Vec::new(),
            waiting: String::new(),
        };
        self.install(next, "first view");
    }

    /// Why the primary cannot go on, if it cannot.
    fn primary_gone(&self, now: Time) -> Option<String> {
        let p = self.view.primary.as_ref()?;
        if self.known_dead(&p.id, now) {
            return Some(format!("primary {} is not heartbeating", p.id));
        }
        if self.restarted(p) {
            return Some(format!("primary {} restarted", p.id));
        }
        if self.servers.contains_key(&p.id) && !self.intact(p) {
            return Some(format!("primary {} lost its data", p.id));
        }
        None
    }

    /// The primary is gone: promote the member with the most complete log among those that
    /// certainly hold every acknowledged write, preferring members that did not restart.
    fn replace_primary(&mut self, now: Time, reason: &str) {
        let failed_at = *self.primary_failed_at.get_or_insert(now);
        let members: Vec<Member> =
            self.view.primary.iter().chain(self.view.backups.iter()).cloned().collect();
        let candidates: Vec<&Member> =
            members.iter().filter(|m| self.alive(&m.id, now) && self.intact(m)).collect();
        let names = members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(", ");
        if candidates.is_empty() {
            self.view.waiting = format!(
                "{reason}; no other member of view {} ({names}) that holds every acknowledged write is \
                 available: waiting for one of them to come back",
                self.view.num
            );
            return;
        }
        // Members that may still report their final position: wait for them, at most until
        // they would count as dead anyway.
        let pending: Vec<&str> = members
            .iter()
            .filter(|m| {
                let heard_since = self.servers.get(&m.id).is_some_and(|s| s.last_heard >= failed_at);
                !heard_since && !self.known_dead(&m.id, now)
            })
            .map(|m| m.id.as_str())
            .collect();
        if !pending.is_empty() && now < failed_at + self.cfg.dead_after() {
            self.view.waiting =
                format!("{reason}; choosing a successor: waiting for {} to report", pending.join(", "));
            return;
        }
        let Some(best) = candidates
            .iter()
            .max_by(|a, b| {
                let key = |m: &Member| (!self.restarted(m), self.position(&m.id));
                key(a).cmp(&key(b)).then(b.id.cmp(&a.id))
            })
            .map(|m| m.id.clone())
        else {
            return;
        };
        let backups: Vec<Member> = members
            .iter()
            .filter(|m| m.id != best && self.healthy(m, now))
            .take(self.cfg.replicas.saturating_sub(1))
            .cloned()
            .collect();
        let num = self.view.num + 1;
        let next = View {
            group: self.cfg.group,
            num,
            term: num,
            primary: self.member_now(&best),
            backups,
            candidates: Vec::new(),
            waiting: String::new(),
        };
        self.primary_failed_at = None;
        self.install(next, &format!("{reason}; {best} takes over"));
    }

    /// The primary is fine: drop backups that are gone, admit learners it has synced.
    fn maintain(&mut self, now: Time) {
        let Some(primary) = self.view.primary.clone() else { return };
        let Some(phb) = self.servers.get(&primary.id).map(|s| s.hb.clone()) else {
            self.view.waiting = format!("waiting for primary {} to report", primary.id);
            return;
        };
        let mut removed: Vec<(String, &'static str)> = Vec::new();
        let mut keep: Vec<Member> = Vec::new();
        for b in &self.view.backups {
            let why = if self.known_dead(&b.id, now) {
                Some("dead")
            } else if self.restarted(b) {
                Some("restarted")
            } else if self.servers.contains_key(&b.id) && !self.intact(b) {
                Some("lost its data")
            } else if self.acked && phb.unreachable.contains(&b.id) {
                Some("unreachable from the primary")
            } else if self.servers.get(&b.id).is_some_and(|s| s.hb.flags & HB_PRIMARY_SILENT != 0)
                && self.acked
            {
                Some("cannot hear the primary")
            } else {
                None
            };
            match why {
                Some(why) => removed.push((b.id.clone(), why)),
                None => keep.push(b.clone()),
            }
        }
        // Learners the primary reported synced in this view: they hold every acknowledged
        // write, and the primary waits for them on every write until it learns a newer view.
        let mut added: Vec<String> = Vec::new();
        let mut released = false;
        if self.acked && phb.view == self.view.num {
            for s in &phb.synced {
                if keep.iter().any(|b| b.id == s.id) || s.id == primary.id {
                    continue;
                }
                let fits = keep.len() + 1 < self.cfg.replicas;
                let same = self.servers.get(&s.id).is_some_and(|i| {
                    i.hb.incarnation == s.incarnation
                        && i.hb.data_id == s.data_id
                        && i.hb.flags & HB_INSTALLING == 0
                        && now < i.last_heard + self.cfg.dead_after()
                });
                if fits && same {
                    if let Some(m) = self.member_now(&s.id) {
                        keep.push(m);
                        added.push(s.id.clone());
                        continue;
                    }
                }
                // Not admitted: a new view releases the primary from waiting for it.
                released = true;
            }
        }
        if removed.is_empty() && added.is_empty() && !released {
            return;
        }
        if !self.acked {
            self.view.waiting = format!(
                "waiting for primary {} to acknowledge view {} before changing it",
                primary.id, self.view.num
            );
            return;
        }
        let mut why: Vec<String> = removed.iter().map(|(id, w)| format!("{id} out ({w})")).collect();
        why.extend(added.iter().map(|id| format!("{id} in (synced)")));
        if why.is_empty() {
            why.push("releasing learners that cannot join".into());
        }
        let next = View {
            group: self.cfg.group,
            num: self.view.num + 1,
            term: self.view.term,
            primary: Some(primary),
            backups: keep,
            candidates: Vec::new(),
            waiting: String::new(),
        };
        self.install(next, &why.join(", "));
    }

    /// Alive servers outside the view that the primary should bring up to date, up to the room
    /// left in the view, the most complete logs first.
    fn refresh_candidates(&mut self, now: Time) {
        self.view.candidates.clear();
        if self.view.primary.is_none() || !self.view.waiting.is_empty() && self.primary_failed_at.is_some() {
            return;
        }
        let room = self.cfg.replicas.saturating_sub(1 + self.view.backups.len());
        let mut outside: Vec<&ServerInfo> = self
            .servers
            .values()
            .filter(|s| !self.view.is_member(&s.hb.id) && now < s.last_heard + self.cfg.dead_after())
            .collect();
        outside.sort_by(|a, b| {
            (b.hb.last_term, b.hb.last_lsn).cmp(&(a.hb.last_term, a.hb.last_lsn)).then(a.hb.id.cmp(&b.hb.id))
        });
        let ids: Vec<String> = outside.iter().take(room).map(|s| s.hb.id.clone()).collect();
        self.view.candidates = ids.iter().filter_map(|id| self.member_now(id)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::cluster::Role;

    const MS: u64 = 1000;

    fn hb(id: &str, view: u64, lsn: u64) -> Heartbeat {
        Heartbeat {
            group: 0,
            id: id.into(),
            addr: format!("127.0.0.1:{}", 7000 + id.len()),
            incarnation: 1,
            view,
            role: Role::Idle,
            data_id: 100 + id.as_bytes()[1] as u64,
            last_lsn: lsn,
            last_term: 0,
            ..Heartbeat::default()
        }
    }

    struct Harness {
        vs: ViewService,
        now: Time,
        seq: u64,
    }

    impl Harness {
        fn new(replicas: usize) -> Harness {
            let cfg = Config { replicas, ..Config::default() };
            Harness { vs: ViewService::new(cfg, Time::ZERO), now: Time::ZERO, seq: 0 }
        }
        fn ping(&mut self, hb: Heartbeat) -> View {
            self.seq += 1;
            let v = self.vs.handle_heartbeat(self.now, self.seq, hb).expect("accepted").clone();
            if self.vs.needs_persist() {
                self.vs.mark_persisted();
            }
            v
        }
        fn advance(&mut self, ms: u64) {
            self.now = Time(self.now.0 + ms * MS);
            self.vs.handle_tick(self.now);
        }
        /// Everyone in `ids` heartbeats with the view they are told, for `rounds` intervals.
        fn run(&mut self, ids: &[&str], rounds: usize, lsn: u64) -> View {
            let mut view = self.vs.view().clone();
            for _ in 0..rounds {
                for id in ids {
                    let mut h = hb(id, view.num, lsn);
                    if view.primary_id() == Some(*id) {
                        h.role = Role::Primary;
                    }
                    view = self.ping(h);
                }
                self.advance(100);
            }
            view
        }
    }

    fn ids(members: &[Member]) -> Vec<&str> {
        members.iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn fresh_servers_form_a_full_view_at_once() {
        let mut h = Harness::new(3);
        let v = h.ping(hb("s1", 0, 0));
        assert_eq!(v.num, 0, "waits for the others a moment");
        assert!(v.waiting.contains("1 of 3"), "{}", v.waiting);
        h.ping(hb("s2", 0, 0));
        let v = h.ping(hb("s3", 0, 0));
        assert_eq!(v.num, 1);
        assert_eq!(v.primary_id(), Some("s1"));
        assert_eq!(ids(&v.backups), ["s2", "s3"]);
        assert!(h.vs.needs_persist() || v.num == 1);
    }

    #[test]
    fn a_lone_server_becomes_primary_after_the_settle_time() {
        let mut h = Harness::new(3);
        h.ping(hb("s1", 0, 0));
        h.advance(600);
        let v = h.ping(hb("s1", 0, 0));
        assert_eq!((v.num, v.primary_id()), (1, Some("s1")));
    }

    #[test]
    fn the_first_view_goes_to_the_most_complete_log() {
        let mut h = Harness::new(3);
        h.ping(hb("s1", 0, 10));
        h.ping(hb("s2", 0, 30));
        let v = h.ping(hb("s3", 0, 20));
        assert_eq!(v.primary_id(), Some("s2"));
        assert!(v.backups.is_empty(), "servers holding data join as learners, not blindly");
        assert_eq!(ids(&v.candidates), ["s3", "s1"], "most complete first");
    }

    #[test]
    fn a_new_cluster_over_old_data_numbers_its_views_past_the_old_ones() {
        // The coordinator lost its directory; the servers remember view 12 and term 9.
        let mut h = Harness::new(1);
        let mut old = hb("s1", 12, 40);
        old.last_term = 9;
        h.ping(old);
        h.advance(600);
        let mut again = hb("s1", 12, 40);
        again.last_term = 9;
        let v = h.ping(again);
        assert_eq!((v.num, v.term, v.primary_id()), (13, 13, Some("s1")));
    }

    #[test]
    fn changes_wait_for_the_primary_to_acknowledge() {
        let mut h = Harness::new(3);
        h.ping(hb("s1", 0, 0));
        h.ping(hb("s2", 0, 0));
        h.ping(hb("s3", 0, 0));
        // s3 dies before the primary acknowledged view 1 (s1 still reports view 0).
        for _ in 0..6 {
            h.ping(hb("s1", 0, 0));
            h.ping(hb("s2", 1, 0));
            h.advance(100);
        }
        assert_eq!(h.vs.view().num, 1, "no change before the primary acknowledged");
        assert!(h.vs.view().waiting.contains("acknowledge"), "{}", h.vs.view().waiting);
        let mut p = hb("s1", 1, 0);
        p.role = Role::Primary;
        let v = h.ping(p);
        assert_eq!(v.num, 2);
        assert_eq!(ids(&v.backups), ["s2"]);
    }

    #[test]
    fn a_dead_primary_is_replaced_by_the_most_complete_backup() {
        let mut h = Harness::new(3);
        let v = h.run(&["s1", "s2", "s3"], 2, 0);
        assert_eq!(v.num, 1);
        // s1 dies; s3 got further than s2.
        for _ in 0..4 {
            h.ping(hb("s2", 1, 40));
            h.ping(hb("s3", 1, 42));
            h.advance(100);
        }
        assert_eq!(h.vs.view().num, 1, "not dead yet");
        h.advance(200);
        h.ping(hb("s2", 1, 40));
        let v = h.ping(hb("s3", 1, 42));
        assert_eq!((v.num, v.term), (2, 2));
        assert_eq!(v.primary_id(), Some("s3"));
        assert_eq!(ids(&v.backups), ["s2"]);
    }

    #[test]
    fn a_restarted_primary_loses_its_place_to_a_backup() {
        let mut h = Harness::new(3);
        h.run(&["s1", "s2", "s3"], 2, 0);
        let mut again = hb("s1", 0, 9);
        again.incarnation = 2;
        h.ping(again);
        h.ping(hb("s2", 1, 5));
        let v = h.ping(hb("s3", 1, 5));
        assert_eq!(v.num, 2);
        assert_ne!(v.primary_id(), Some("s1"));
        assert!(!v.is_member("s1"));
        assert!(v.candidates.iter().any(|c| c.id == "s1"), "it comes back as a learner");
    }

    #[test]
    fn after_a_whole_group_restart_the_most_complete_log_wins() {
        let mut h = Harness::new(3);
        h.run(&["s1", "s2", "s3"], 2, 0);
        for (id, lsn) in [("s1", 7), ("s2", 9), ("s3", 8)] {
            let mut again = hb(id, 0, lsn);
            again.incarnation = 2;
            h.ping(again);
        }
        let v = h.vs.view().clone();
        assert_eq!(v.num, 2);
        assert_eq!(v.primary_id(), Some("s2"));
        assert!(v.backups.is_empty(), "restarted members rejoin as learners");
    }

    #[test]
    fn no_successor_without_a_member_holding_the_data() {
        let mut h = Harness::new(3);
        h.run(&["s1", "s2", "s3"], 2, 0);
        // Every member is gone; s4 is alive but never was a member.
        for _ in 0..10 {
            h.ping(hb("s4", 0, 0));
            h.advance(100);
        }
        let v = h.vs.view();
        assert_eq!(v.num, 1);
        assert!(v.waiting.contains("waiting for one of them"), "{}", v.waiting);
        assert!(v.candidates.is_empty(), "no learners while there is no primary to teach them");
        // A member that lost its data does not count either.
        let mut wiped = hb("s2", 0, 0);
        wiped.incarnation = 2;
        wiped.data_id = 999;
        h.ping(wiped);
        assert_eq!(h.vs.view().num, 1);
        // One with its data does.
        let mut back = hb("s3", 0, 5);
        back.incarnation = 2;
        h.advance(100);
        let v = h.ping(back);
        assert_eq!((v.num, v.primary_id()), (2, Some("s3")));
    }

    #[test]
    fn synced_learners_join_and_unjoinable_ones_are_released() {
        let mut h = Harness::new(3);
        h.ping(hb("s1", 0, 3));
        h.advance(600);
        let v = h.run(&["s1", "s2", "s3"], 1, 3);
        assert_eq!(v.num, 1);
        assert_eq!(ids(&v.candidates), ["s2", "s3"]);
        let mut p = hb("s1", 1, 3);
        p.role = Role::Primary;
        p.synced =
            vec![wire::cluster::Synced { id: "s2".into(), incarnation: 1, data_id: hb("s2", 0, 0).data_id }];
        let v = h.ping(p.clone());
        assert_eq!(v.num, 2);
        assert_eq!(ids(&v.backups), ["s2"]);
        // s3 reported synced, then dies before it could be admitted: view 3 releases it.
        p.view = 2;
        p.synced =
            vec![wire::cluster::Synced { id: "s3".into(), incarnation: 1, data_id: hb("s3", 0, 0).data_id }];
        let mut alive = p.clone();
        alive.synced.clear();
        for _ in 0..6 {
            h.ping(alive.clone());
            h.ping(hb("s2", 2, 3));
            h.advance(100);
        }
        let v = h.ping(p);
        assert_eq!(v.num, 3);
        assert_eq!(ids(&v.backups), ["s2"]);
    }

    #[test]
    fn replays_and_old_incarnations_are_ignored() {
        let mut h = Harness::new(1);
        h.seq = 10;
        h.ping(hb("s1", 0, 0));
        assert!(matches!(h.vs.handle_heartbeat(h.now, 5, hb("s1", 0, 0)), Err(Rejected::Stale { .. })));
        let mut newer = hb("s1", 0, 0);
        newer.incarnation = 3;
        h.ping(newer);
        assert_eq!(h.vs.handle_heartbeat(h.now, 99, hb("s1", 0, 0)).err(), Some(Rejected::OldIncarnation));
        let mut other = hb("s1", 0, 0);
        other.group = 4;
        assert_eq!(h.vs.handle_heartbeat(h.now, 100, other).err(), Some(Rejected::OtherGroup(4)));
    }

    #[test]
    fn a_restarted_coordinator_does_not_declare_anyone_dead_at_once() {
        let mut h = Harness::new(3);
        let v = h.run(&["s1", "s2", "s3"], 2, 0);
        let mut vs = ViewService::restore(h.vs.config().clone(), h.vs.persisted(), Time(10_000 * MS));
        vs.handle_tick(Time(10_100 * MS));
        assert_eq!(vs.view().num, v.num);
        assert!(!vs.needs_persist());
        vs.handle_tick(Time(10_600 * MS));
        assert_eq!(vs.view().num, v.num, "nobody heard, so nobody can take over either");
        assert!(vs.view().waiting.contains("waiting"), "{}", vs.view().waiting);
    }
}
