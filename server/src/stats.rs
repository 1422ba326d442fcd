//! Server counters reported by STATS. Plain integers owned by the event loop thread.

use std::fmt::Write as _;
use std::time::Duration;

use wire::Command;

use crate::replica::ReplicaStatus;

/// Power-of-two latency buckets: cheap enough to record every loop iteration.
#[derive(Debug, Clone)]
pub struct Log2Histogram {
    buckets: [u64; 64],
    count: u64,
    max: u64,
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Log2Histogram { buckets: [0; 64], count: 0, max: 0 }
    }
}

impl Log2Histogram {
    /// Records one sample.
    pub fn record(&mut self, value: u64) {
        self.buckets[(64 - value.leading_zeros()) as usize & 63] += 1;
        self.count += 1;
        self.max = self.max.max(value);
    }

    /// An upper bound of the `q` quantile (0..=1): the top of the bucket that holds it.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let top = if i == 0 { 0 } else { (1u64 << i) - 1 };
                return top.min(self.max);
            }
        }
        self.max
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest sample.
    pub fn max(&self) -> u64 {
        self.max
    }
}

/// Everything STATS reports that the loop counts itself.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Requests executed, by command (index = opcode, client range only).
    pub ops: [u64; 16],
    /// Frames refused before execution (bad checksum, sizes, flags, command, rules).
    pub bad_frames: u64,
    /// Requests refused for want of AUTH or with a wrong token.
    pub auth_failures: u64,
    /// Writes that failed in storage.
    pub storage_errors: u64,
    /// GETs that found their key.
    pub get_hits: u64,
    /// GETs that did not.
    pub get_misses: u64,
    /// Connections open now.
    pub connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections refused at the limit.
    pub connections_refused: u64,
    /// Connections closed by the idle timeout.
    pub connections_timed_out: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Group commits (storage syncs before replying, `--fsync always`) done; the flushes of
    /// `--fsync interval:MS` are the storage's `background_flushes`.
    pub syncs: u64,
    /// Time each loop iteration spent working (from poll's return to the next poll), µs.
    pub loop_busy_us: Log2Histogram,
    /// Requests answered WRONG_SERVER (this server is not the primary).
    pub wrong_server: u64,
    /// Requests answered UNAVAILABLE (a primary without a lease, or taking over).
    pub unavailable: u64,
    /// Retried writes answered from the at-most-once table instead of being applied again.
    pub retries_answered: u64,
    /// Writes refused because a newer request of the same client was already executed.
    pub stale_requests: u64,
    /// Replication: records applied from the primary (backups).
    pub repl_records_in: u64,
    /// Replication: records sent to peers (primary).
    pub repl_records_out: u64,
    /// Replication: snapshots sent to peers.
    pub repl_snapshots_out: u64,
    /// Replication: snapshots installed from the primary.
    pub repl_snapshots_in: u64,
    /// Cluster messages dropped for a bad MAC or a replayed sequence number.
    pub auth_rejected: u64,
}

impl Stats {
    /// Counts one executed request.
    pub fn count_op(&mut self, command: Command) {
        if let Some(n) = self.ops.get_mut(command.0 as usize) {
            *n += 1;
        }
    }

    /// Requests executed of one kind.
    pub fn op(&self, command: Command) -> u64 {
        self.ops.get(command.0 as usize).copied().unwrap_or(0)
    }

    /// Renders the counters, plus the storage figures and (in a cluster) the replica's state,
    /// as `name:value` lines.
    pub fn render(
        &self,
        out: &mut String,
        uptime: Duration,
        store: &storage::Stats,
        clients: usize,
        replica: Option<(&str, &ReplicaStatus)>,
    ) {
        out.clear();
        let mut line = |name: &str, value: &dyn std::fmt::Display| {
            let _ = writeln!(out, "{name}:{value}");
        };
        line("version", &env!("CARGO_PKG_VERSION"));
        line("uptime_s", &uptime.as_secs());
        line("connections", &self.connections);
        line("connections_total", &self.connections_total);
        line("connections_refused", &self.connections_refused);
        line("connections_timed_out", &self.connections_timed_out);
        for command in Command::CLIENT {
            let name = command.name().unwrap_or("?").to_ascii_lowercase();
            line(&format!("ops_{name}"), &self.op(command));
        }
        line("get_hits", &self.get_hits);
        line("get_misses", &self.get_misses);
        line("bad_frames", &self.bad_frames);
        line("auth_failures", &self.auth_failures);
        line("storage_errors", &self.storage_errors);
        line("bytes_in", &self.bytes_in);
        line("bytes_out", &self.bytes_out);
        line("syncs", &self.syncs);
        line("keys", &store.keys);
        line("storage_live_bytes", &store.live_bytes);
        line("storage_dead_bytes", &store.dead_bytes);
        line("storage_disk_bytes", &store.disk_bytes);
        line("storage_segments", &store.segments);
        line("storage_compactions", &store.compactions);
        line("storage_background_flushes", &store.background_flushes);
        line("storage_bytes_written", &store.bytes_written);
        line("storage_compaction_bytes_copied", &store.compaction_bytes_copied);
        line("last_lsn", &store.last_lsn.0);
        line("durable_lsn", &store.durable_lsn.0);
        line("loop_iterations", &self.loop_busy_us.count());
        line("loop_busy_us_p50", &self.loop_busy_us.quantile(0.5));
        line("loop_busy_us_p99", &self.loop_busy_us.quantile(0.99));
        line("loop_busy_us_max", &self.loop_busy_us.max());
        line("at_most_once_clients", &clients);
        line("retries_answered", &self.retries_answered);
        line("stale_requests", &self.stale_requests);
        line("wrong_server", &self.wrong_server);
        line("unavailable", &self.unavailable);
        match replica {
            None => {
                line("cluster", &0);
                line("role", &"standalone");
            }
            Some((id, r)) => {
                line("cluster", &1);
                line("server_id", &id);
                line("role", &r.role.name());
                line("view", &r.view);
                line("term", &r.last_term);
                line("committed_lsn", &r.committed);
                line("serving", &u8::from(r.serving));
                line("lease_left_ms", &(r.lease_left_us / 1000));
                line("backup_lag_max", &r.max_lag);
                line("peers", &r.peers.len());
                for p in &r.peers {
                    let what = if p.member { "backup" } else { "learner" };
                    line(
                        &format!("peer_{}", p.id),
                        &format_args!("{what},{},{},acked={}", p.link, p.sync, p.acked),
                    );
                }
                line("repl_records_in", &self.repl_records_in);
                line("repl_records_out", &self.repl_records_out);
                line("repl_snapshots_in", &self.repl_snapshots_in);
                line("repl_snapshots_out", &self.repl_snapshots_out);
                line("auth_rejected", &self.auth_rejected);
                line("coordinator_waiting", &r.waiting.replace('\n', " "));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut h = Log2Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for v in [1, 2, 3, 100, 1000] {
            h.record(v);
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.quantile(0.5), 3); // 3 lies in [2, 4)
        assert_eq!(h.quantile(0.8), 127); // 100 lies in [64, 128)
        assert_eq!(h.quantile(1.0), 1000); // capped at the max seen
        h.record(0);
        assert_eq!(h.quantile(0.0), 0);
    }
}
