//! `--metrics ADDR`: every STATS counter in the Prometheus text format at `GET /metrics`.
//!
//! The event loop renders its STATS text into a shared snapshot every [`REFRESH`] (a few
//! microseconds of work; an idle loop wakes at least once a second); a thread of its own answers
//! HTTP requests from that snapshot, so a scrape (or a slow or hostile HTTP client) never blocks
//! the loop. A scrape therefore sees figures at most about a second old.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the loop refreshes the snapshot.
pub const REFRESH: Duration = Duration::from_millis(500);

/// The STATS text the HTTP thread serves, refreshed by the loop.
#[derive(Debug, Default, Clone)]
pub struct Snapshot(Arc<Mutex<String>>);

impl Snapshot {
    /// Replaces the snapshot with `stats` (STATS's `name:value` lines).
    pub fn set(&self, stats: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.clear();
            s.push_str(stats);
        }
    }

    fn get(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Serves `GET /metrics` on `listener` (bound beforehand, so that a taken address fails the
/// start before anything else is created) from `snapshot`, on a thread of its own. Returns the
/// bound address.
///
/// # Errors
/// If the address cannot be read or the thread cannot start.
pub fn spawn(listener: TcpListener, snapshot: Snapshot) -> io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => {
                    if let Err(e) = serve(stream, &snapshot) {
                        log::debug!("metrics request failed: {e}");
                    }
                }
                Err(e) => {
                    log::warn!("metrics: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })?;
    Ok(bound)
}

fn serve(mut stream: TcpStream, snapshot: &Snapshot) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        if request.len() > 8192 {
            break;
        }
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let (status, content_type, body) =
        if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics\r") {
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", prometheus(&snapshot.get()))
        } else {
            ("404 Not Found", "text/plain; charset=utf-8", "only GET /metrics is served here\n".to_string())
        };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// Which STATS figures are counters (only ever grow), and a help text for each figure.
fn describe(name: &str) -> (&'static str, &'static str) {
    const COUNTER: &str = "counter";
    const GAUGE: &str = "gauge";
    if name.starts_with("ops_") {
        return (COUNTER, "Requests executed, by command.");
    }
    match name {
        "uptime_s" => (GAUGE, "Seconds since the server started."),
        "connections" => (GAUGE, "Client connections open now."),
        "connections_total" => (COUNTER, "Client connections accepted since start."),
        "connections_refused" => (COUNTER, "Connections refused at the --max-connections limit."),
        "connections_timed_out" => (COUNTER, "Connections closed by the idle timeout."),
        "get_hits" => (COUNTER, "GETs that found their key."),
        "get_misses" => (COUNTER, "GETs that did not find their key."),
        "bad_frames" => {
            (COUNTER, "Frames refused before execution (checksum, sizes, flags, command, rules).")
        }
        "auth_failures" => (COUNTER, "Requests refused for want of AUTH or with a wrong token."),
        "storage_errors" => (COUNTER, "Writes that failed in storage."),
        "bytes_in" => (COUNTER, "Bytes read from clients."),
        "bytes_out" => (COUNTER, "Bytes written to clients."),
        "syncs" => (COUNTER, "Group commits (--fsync always)."),
        "keys" => (GAUGE, "Keys with a value."),
        "storage_live_bytes" => (GAUGE, "Bytes of records the index points at."),
        "storage_dead_bytes" => (GAUGE, "Bytes of overwritten or deleted records not yet compacted."),
        "storage_disk_bytes" => (GAUGE, "Bytes of segment files on disk."),
        "storage_segments" => (GAUGE, "Segment files."),
        "storage_compactions" => (COUNTER, "Compactions completed since start."),
        "storage_background_flushes" => (COUNTER, "Background flushes (--fsync interval) completed."),
        "storage_bytes_written" => (COUNTER, "Record bytes appended to the log by writes since start."),
        "storage_compaction_bytes_copied" => {
            (COUNTER, "Record bytes compaction copied since start; over storage_bytes_written, its write amplification.")
        }
        "last_lsn" => (GAUGE, "Highest log sequence number written."),
        "durable_lsn" => (GAUGE, "Highest log sequence number known flushed to the device."),
        "loop_iterations" => (COUNTER, "Event-loop iterations."),
        "loop_busy_us_p50" => (GAUGE, "Median time an event-loop iteration worked, microseconds."),
        "loop_busy_us_p99" => (GAUGE, "99th percentile of an event-loop iteration's work, microseconds."),
        "loop_busy_us_max" => (GAUGE, "Longest event-loop iteration, microseconds."),
        "at_most_once_clients" => (GAUGE, "Clients in the at-most-once table."),
        "retries_answered" => (COUNTER, "Retried writes answered from the at-most-once table."),
        "stale_requests" => (COUNTER, "Writes refused as older than their client's newest."),
        "wrong_server" => (COUNTER, "Requests answered WRONG_SERVER."),
        "unavailable" => (COUNTER, "Requests answered UNAVAILABLE."),
        "cluster" => (GAUGE, "1 in a cluster, 0 standalone."),
        "view" => (GAUGE, "The view number this server knows."),
        "term" => (GAUGE, "The term of the log's last record (the primary's term on a primary)."),
        "committed_lsn" => (GAUGE, "The primary's commit point."),
        "serving" => (GAUGE, "1 while this server serves as primary (it holds a lease)."),
        "lease_left_ms" => (GAUGE, "Milliseconds of lease left (primary)."),
        "backup_lag_max" => (GAUGE, "How many LSNs the furthest-behind waited-for peer lags (primary)."),
        "peers" => (GAUGE, "Peers the primary streams to."),
        "repl_records_in" => (COUNTER, "Replicated records applied (backups)."),
        "repl_records_out" => (COUNTER, "Records sent to peers (primary)."),
        "repl_snapshots_in" => (COUNTER, "Snapshots installed from a primary."),
        "repl_snapshots_out" => (COUNTER, "Snapshots sent to peers."),
        "auth_rejected" => (COUNTER, "Cluster messages dropped for a bad MAC or a replayed sequence number."),
        _ => (GAUGE, "See STATS."),
    }
}

fn metric_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 7);
    out.push_str("tandem_");
    for c in name.chars() {
        out.push(if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' });
    }
    out
}

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', " ")
}

/// STATS text → Prometheus text exposition format.
pub fn prometheus(stats: &str) -> String {
    let mut out = String::with_capacity(stats.len() * 3);
    let mut info: Vec<(String, String)> = Vec::new();
    let mut ops_done = false;
    let mut peers_done = false;
    for line in stats.lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        if let Some(cmd) = name.strip_prefix("ops_") {
            if !ops_done {
                let _ = writeln!(out, "# HELP tandem_ops_total Requests executed, by command.");
                let _ = writeln!(out, "# TYPE tandem_ops_total counter");
                ops_done = true;
            }
            let _ = writeln!(out, "tandem_ops_total{{command=\"{}\"}} {value}", label(cmd));
            continue;
        }
        if let Some(peer) = name.strip_prefix("peer_") {
            // `backup,streaming,no,acked=N`
            let parts: Vec<&str> = value.split(',').collect();
            if let [kind, link, sync, acked] = parts.as_slice() {
                if !peers_done {
                    let _ = writeln!(
                        out,
                        "# HELP tandem_peer_acked_lsn Highest LSN each peer acknowledged (primary)."
                    );
                    let _ = writeln!(out, "# TYPE tandem_peer_acked_lsn gauge");
                    peers_done = true;
                }
                let acked = acked.trim_start_matches("acked=");
                let _ = writeln!(
                    out,
                    "tandem_peer_acked_lsn{{peer=\"{}\",kind=\"{}\",link=\"{}\",sync=\"{}\"}} {acked}",
                    label(peer),
                    label(kind),
                    label(link),
                    label(sync)
                );
            }
            continue;
        }
        match name {
            "version" | "server_id" | "role" => info.push((name.to_string(), value.to_string())),
            "coordinator_waiting" => {
                let _ = writeln!(out, "# HELP tandem_coordinator_waiting 1 when the coordinator says the service is waiting (why: the `reason` label).");
                let _ = writeln!(out, "# TYPE tandem_coordinator_waiting gauge");
                let waiting = u8::from(!value.is_empty());
                let _ = writeln!(out, "tandem_coordinator_waiting{{reason=\"{}\"}} {waiting}", label(value));
            }
            _ => {
                if value.parse::<f64>().is_err() {
                    continue;
                }
                let (kind, help) = describe(name);
                let metric = metric_name(name);
                let _ = writeln!(out, "# HELP {metric} {help}");
                let _ = writeln!(out, "# TYPE {metric} {kind}");
                let _ = writeln!(out, "{metric} {value}");
            }
        }
    }
    if !info.is_empty() {
        let labels: Vec<String> = info.iter().map(|(n, v)| format!("{n}=\"{}\"", label(v))).collect();
        let _ = writeln!(out, "# HELP tandem_info Version, server id and role, as labels.");
        let _ = writeln!(out, "# TYPE tandem_info gauge");
        let _ = writeln!(out, "tandem_info{{{}}} 1", labels.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_become_prometheus_text() {
        let text =
            "version:0.1.0\nuptime_s:3\nconnections:2\nops_get:5\nops_put:7\nrole:primary\nserver_id:s1\n\
                    peer_s2:backup,streaming,no,acked=12\ncoordinator_waiting:\nkeys:4\n";
        let p = prometheus(text);
        assert!(p.contains("# TYPE tandem_connections gauge\ntandem_connections 2\n"), "{p}");
        assert!(p.contains("tandem_ops_total{command=\"get\"} 5\n"));
        assert!(p.contains("tandem_ops_total{command=\"put\"} 7\n"));
        assert_eq!(p.matches("# TYPE tandem_ops_total counter").count(), 1);
        assert!(p.contains(
            "tandem_peer_acked_lsn{peer=\"s2\",kind=\"backup\",link=\"streaming\",sync=\"no\"} 12\n"
        ));
        assert!(p.contains("tandem_info{version=\"0.1.0\",role=\"primary\",server_id=\"s1\"} 1\n"));
        assert!(p.contains("tandem_coordinator_waiting{reason=\"\"} 0\n"));
        // Every sample line's metric has HELP and TYPE lines.
        for line in p.lines().filter(|l| !l.starts_with('#')) {
            let metric = line.split(['{', ' ']).next().unwrap();
            assert!(p.contains(&format!("# TYPE {metric} ")), "no TYPE for {metric}");
            assert!(p.contains(&format!("# HELP {metric} ")), "no HELP for {metric}");
        }
    }

    #[test]
    fn the_http_thread_serves_the_snapshot_and_nothing_else() {
        let snapshot = Snapshot::default();
        snapshot.set("connections:3\n");
        let addr = spawn(TcpListener::bind("127.0.0.1:0").unwrap(), snapshot.clone()).unwrap();
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            body
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("tandem_connections 3"));
        snapshot.set("connections:4\n");
        assert!(get("/metrics").contains("tandem_connections 4"));
        assert!(get("/").starts_with("HTTP/1.1 404"));
    }
}
