//! What the Tandem server under test did during a test, from its STATS: read on a connection of
//! its own before the run and after each test, so that a report can say how much its storage
//! wrote and how much compaction copied meanwhile (issue #11: write amplification beside ops/s).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

/// A server's numeric STATS counters by name.
pub type Counters = HashMap<String, u64>;

/// Reads STATS from the Tandem server at `addr` through [`client::Client`], within `timeout`.
/// `None` if it does not answer OK (not a Tandem server, AUTH required, gone): the report then
/// has no storage figures, and the run goes on.
pub fn fetch(addr: SocketAddr, timeout: Duration) -> Option<Counters> {
    let options =
        client::Options { connect_timeout: timeout, op_timeout: timeout, ..client::Options::default() };
    let stats = client::Client::connect_with(addr, options).ok()?.stats().ok()?;
    Some(stats.into_iter().filter_map(|(name, value)| Some((name, value.trim().parse().ok()?))).collect())
}

/// What the server's storage did between two STATS readings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageReport {
    /// Record bytes the server's log took from writes (STATS `storage_bytes_written`).
    pub bytes_written: u64,
    /// Record bytes compaction copied (STATS `storage_compaction_bytes_copied`).
    pub compaction_bytes_copied: u64,
    /// `compaction_bytes_copied / bytes_written`; `null` when nothing was written.
    pub write_amplification: Option<f64>,
    /// Compactions completed.
    pub compactions: u64,
}

impl StorageReport {
    /// From the readings before and after; `None` if either lacks a counter (an older server).
    pub fn between(before: &Counters, after: &Counters) -> Option<StorageReport> {
        let delta = |name: &str| Some(after.get(name)?.saturating_sub(*before.get(name)?));
        let bytes_written = delta("storage_bytes_written")?;
        let compaction_bytes_copied = delta("storage_compaction_bytes_copied")?;
        Some(StorageReport {
            bytes_written,
            compaction_bytes_copied,
            write_amplification: (bytes_written > 0)
                .then(|| compaction_bytes_copied as f64 / bytes_written as f64),
            compactions: delta("storage_compactions")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Counters {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .filter_map(|(name, value)| Some((name.to_string(), value.parse().ok()?)))
            .collect()
    }

    #[test]
    fn the_report_is_the_difference_of_two_readings() {
        let before = parse("storage_bytes_written:1000\nstorage_compaction_bytes_copied:100\nstorage_compactions:1\nrole:primary\n");
        let after =
            parse("storage_bytes_written:5000\nstorage_compaction_bytes_copied:900\nstorage_compactions:3\n");
        assert!(!before.contains_key("role"), "only numeric counters");
        let r = StorageReport::between(&before, &after).unwrap();
        assert_eq!((r.bytes_written, r.compaction_bytes_copied, r.compactions), (4000, 800, 2));
        assert_eq!(r.write_amplification, Some(0.2));
        assert_eq!(StorageReport::between(&after, &after).unwrap().write_amplification, None);
        // A server without the counters: no report.
        assert_eq!(StorageReport::between(&parse("keys:3\n"), &parse("keys:4\n")), None);
    }
}
