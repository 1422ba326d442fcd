//! [`Node`]: what one server is: its store, its counters, and (in a cluster) its replica state.
//!
//! The event loop owns one node and lends it to the request handler (`handler`), the
//! replication driver (`cluster`) and the storage ticks. Everything that decides when a reply
//! may leave goes through [`Node::committed`].

use std::time::Instant;

use storage::{Durability, StorageError, Store};

use crate::replica::Replica;
use crate::stats::Stats;
use crate::time::Clock;

/// One server's state, owned by the event loop thread.
pub struct Node {
    /// The storage engine.
    pub store: Store,
    /// Counters for STATS.
    pub stats: Stats,
    /// The replica state machine, in a cluster; `None` standalone.
    pub replica: Option<Replica>,
    /// The clock the replica is driven with.
    pub clock: Clock,
    /// The durability mode.
    pub durability: Durability,
    pub(crate) auth_token: Option<Vec<u8>>,
    pub(crate) started: Instant,
    /// Writes applied since the last [`Node::sync`].
    pub(crate) unsynced_writes: u64,
    /// Reused for STATS and error texts, so replies never allocate after warm-up.
    pub(crate) text: String,
    /// Set when the node cannot go on safely (its metadata could not be persisted).
    pub(crate) fatal: Option<String>,
}

impl Node {
    /// A node over an open store; standalone until a replica is attached.
    pub fn new(store: Store, durability: Durability, auth_token: Option<Vec<u8>>) -> Node {
        Node {
            store,
            stats: Stats::default(),
            replica: None,
            clock: Clock::new(),
            durability,
            auth_token,
            started: Instant::now(),
            unsynced_writes: 0,
            text: String::new(),
            fatal: None,
        }
    }

    /// The LSN this server may rely on locally: durable with `--fsync always`, else the last.
    pub fn ready_lsn(&self) -> u64 {
        match self.durability {
            Durability::Always => self.store.durable_lsn().0,
            _ => self.store.last_lsn().0,
        }
    }

    /// The LSN up to which replies may leave. Standalone: what is ready locally. In a cluster:
    /// the primary's commit point (everything its backups acknowledged, and ready here); 0
    /// elsewhere, since only a primary answers requests that read or write data.
    #[inline]
    pub fn committed(&self) -> u64 {
        match &self.replica {
            None => self.ready_lsn(),
            Some(r) => r.committed(),
        }
    }

    /// Tells the replica where the store is after writes or a sync.
    pub fn log_moved(&mut self) {
        let (last, ready) = (self.store.last_lsn().0, self.ready_lsn());
        if let Some(r) = self.replica.as_mut() {
            r.handle_log(last, ready);
        }
    }

    /// Makes every applied write durable (one msync for the batch: group commit).
    ///
    /// # Errors
    /// The storage error; the store then refuses writes until reopened.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.unsynced_writes > 0 {
            self.store.sync()?;
            self.stats.syncs += 1;
            self.unsynced_writes = 0;
            self.log_moved();
        }
        Ok(())
    }

    /// Renders what STATS reports (`name:value` lines) into `out`.
    pub fn render_stats(&self, out: &mut String) {
        let now = self.clock.now();
        let status = self.replica.as_ref().map(|r| r.status(now));
        let id = self.replica.as_ref().map(|r| r.config().id.as_str());
        self.stats.render(
            out,
            self.started.elapsed(),
            &self.store.stats(),
            self.store.client_count(),
            id.zip(status.as_ref()),
        );
    }

    /// Writes applied but not yet synced.
    pub fn unsynced_writes(&self) -> u64 {
        self.unsynced_writes
    }
}
