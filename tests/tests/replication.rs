//! A replicated cluster of real processes (a coordinator and three servers behind
//! fault-injecting proxies): failovers, crashes, partitions and forged heartbeats must never
//! lose an acknowledged write, apply a write twice, or let two primaries answer at once.
//!
//! Timing: servers heartbeat every 100 ms, are dead after 5 silent pings, and a primary's
//! lease lasts 400 ms, so a failover takes about a second. Every wait below polls with a
//! deadline; a panic prints the cluster's view, each server's STATS and the tails of the logs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::cluster::{describe, random_u64, Cluster, ClusterClient, ClusterOptions};
use harness::proxy::poll_until;
use harness::{RawConn, Reply};
use wire::cluster::{self as wc, Heartbeat, View};
use wire::{Command, Frame, Status};

const FAILOVER: Duration = Duration::from_secs(10);

fn ok_get(c: &mut ClusterClient, key: &str) -> Option<String> {
    c.get(key.as_bytes())
        .unwrap_or_else(|e| panic!("GET {key}: {e}"))
        .map(|(v, _)| String::from_utf8(v).expect("utf-8 value"))
}

/// Waits for a view whose primary is someone other than `old` (and newer than `after`).
fn wait_new_primary(cluster: &Cluster, old: usize, after: u64) -> (usize, View) {
    let old_id = cluster.id(old).to_string();
    let v = cluster.wait_for(|v| v.num > after && v.primary_id().is_some_and(|p| p != old_id), FAILOVER);
    (cluster.index(v.primary_id().expect("primary")), v)
}

#[test]
fn basic_operations_work_before_and_after_a_failover() {
    let mut cluster = Cluster::start(3);
    let mut c = cluster.client();
    let v1 = c.put(b"fruit", b"apple").unwrap();
    assert!(c.append(b"log", b"a").unwrap() > v1, "versions increase");
    c.append(b"log", b"b").unwrap();
    c.put(b"doomed", b"x").unwrap();
    let deleted = c.delete(b"doomed").unwrap();
    assert!(deleted.is_some());
    assert_eq!(c.delete(b"never-there").unwrap(), None);
    let (_, fruit_version) = c.get(b"fruit").unwrap().unwrap();
    assert_eq!(fruit_version, v1);
    assert_eq!(ok_get(&mut c, "log").as_deref(), Some("ab"));
    assert_eq!(ok_get(&mut c, "doomed"), None);

    let before = cluster.view();
    let (p, _) = cluster.primary();
    cluster.kill(p);
    let (q, after) = wait_new_primary(&cluster, p, before.num);
    assert_ne!(q, p);
    assert_eq!(after.term, after.num, "a new primary starts a new term");

    // Everything is there at the new primary, versions included.
    assert_eq!(ok_get(&mut c, "fruit").as_deref(), Some("apple"));
    assert_eq!(c.answered_by, Some(cluster.addr(q)), "the client followed the failover");
    assert_eq!(ok_get(&mut c, "log").as_deref(), Some("ab"));
    assert_eq!(ok_get(&mut c, "doomed"), None);
    let r = c.put_if(b"fruit", b"pear", fruit_version).unwrap();
    assert_eq!(r.status, Status::OK, "a conditional write on the replicated version succeeds: {r}");
    assert!(r.version > deleted.unwrap(), "versions keep increasing across the failover: {r}");
    let stale = c.put_if(b"fruit", b"plum", fruit_version).unwrap();
    assert_eq!((stale.status, stale.version), (Status::CONFLICT, r.version));

    // And writes of every kind go on.
    c.append(b"log", b"c").unwrap();
    c.put(b"new", b"after").unwrap();
    assert_eq!(c.delete(b"fruit").unwrap().map(|v| v > r.version), Some(true));
    assert_eq!(ok_get(&mut c, "log").as_deref(), Some("abc"));
    assert_eq!(ok_get(&mut c, "new").as_deref(), Some("after"));
    assert_eq!(ok_get(&mut c, "fruit"), None);
    // The old primary's address no longer serves anything: it is dead.
    assert!(RawConn::try_connect(cluster.direct_addr(p), Duration::from_millis(500)).is_err());
}

/// The sequence number a writer put at the end of a value (`key@n`).
fn seq_of(value: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(value);
    text.rsplit('@')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a writer's value: {text:?}"))
}

/// Checks that every acknowledged key holds its last acknowledged value or a later one of the
/// same writer (a write whose outcome was unknown may have landed after it).
fn check_acknowledged(c: &mut ClusterClient, acked: &HashMap<String, Vec<u8>>, when: &str) {
    for (key, value) in acked {
        let got = c.get(key.as_bytes()).unwrap_or_else(|e| panic!("{when}: GET {key}: {e}"));
        let (got, _) = got.unwrap_or_else(|| panic!("{when}: acknowledged {key} is lost"));
        assert!(
            got == *value || seq_of(&got) > seq_of(value),
            "{when}: {key} went back in time: acknowledged {:?}, found {:?}",
            String::from_utf8_lossy(value),
            String::from_utf8_lossy(&got)
        );
    }
}

#[test]
fn killing_the_primary_under_concurrent_writers_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3);
    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let unknown = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop, count, unknown) = (acked.clone(), stop.clone(), count.clone(), unknown.clone());
            let mut c = cluster.client();
            c.op_timeout = Duration::from_secs(8);
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}k{}", n % 60);
                    let value = format!("{key}@{n}").into_bytes();
                    match c.put(key.as_bytes(), &value) {
                        Ok(_) => {
                            acked.lock().unwrap().insert(key, value);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        // The outcome is unknown: not counted either way.
                        Err(e) if e.contains("no answer within") => {
                            unknown.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                    n += 1;
                }
            })
        })
        .collect();
    let wait_count = |n: usize, what: &str| {
        assert!(
            poll_until(Duration::from_secs(20), || count.load(Ordering::Relaxed) >= n),
            "only {} writes acknowledged ({what})",
            count.load(Ordering::Relaxed)
        );
    };
    wait_count(300, "before the kill");
    let before = cluster.view();
    let (p, _) = cluster.primary();
    cluster.kill(p);
    let at_kill = count.load(Ordering::Relaxed);
    let (q, _) = wait_new_primary(&cluster, p, before.num);
    // Keep writing through the new primary for a while.
    wait_count(at_kill + 300, "after the failover");
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer panicked");
    }
    let acked = acked.lock().unwrap();
    assert!(acked.len() >= 200, "{} keys", acked.len());
    let mut c = cluster.client();
    check_acknowledged(&mut c, &acked, "after the failover");
    assert_eq!(c.answered_by, Some(cluster.addr(q)));
    eprintln!(
        "{} writes acknowledged ({} keys), {} with unknown outcome",
        count.load(Ordering::Relaxed),
        acked.len(),
        unknown.load(Ordering::Relaxed)
    );
}

/// Writes `n` keys `{prefix}{i}` = `{prefix}{i}@{i}`; returns them.
fn write_keys(c: &mut ClusterClient, prefix: &str, n: usize) -> HashMap<String, Vec<u8>> {
    (0..n)
        .map(|i| {
            let key = format!("{prefix}{i}");
            let value = format!("{key}@{i}").into_bytes();
            c.put(key.as_bytes(), &value).unwrap_or_else(|e| panic!("PUT {key}: {e}"));
            (key, value)
        })
        .collect()
}

#[test]
fn the_survivor_of_a_primary_and_a_backup_killed_together_serves_everything() {
    let mut cluster = Cluster::start(3);
    let mut c = cluster.client();
    let mut acked = write_keys(&mut c, "k", 200);
    c.append(b"k7", b"+more").unwrap();
    acked.insert("k7".into(), b"k7@7+more".to_vec());
    c.delete(b"k8").unwrap();
    acked.remove("k8");
    let before = cluster.view();
    let (p, _) = cluster.primary();
    let b = cluster.backups()[0];
    let survivor = (0..3).find(|&i| i != p && i != b).unwrap();
    cluster.kill(p);
    cluster.kill(b);
    let after = cluster.wait_for(
        |v| v.num > before.num && v.primary_id() == Some(cluster.id(survivor)) && v.backups.is_empty(),
        FAILOVER,
    );
    assert!(after.waiting.is_empty(), "{}", describe(&after));
    check_acknowledged(&mut c, &acked, "on the survivor");
    assert_eq!(c.answered_by, Some(cluster.addr(survivor)));
    assert_eq!(ok_get(&mut c, "k8"), None, "the delete survived too");
    // Alone, it still takes writes (no backup to wait for).
    c.put(b"alone", b"yes").unwrap();
    assert_eq!(ok_get(&mut c, "alone").as_deref(), Some("yes"));
}

#[test]
fn all_three_killed_and_restarted_keep_every_acknowledged_write() {
    let mut cluster = Cluster::start(3);
    let mut c = cluster.client();
    let acked = write_keys(&mut c, "k", 300);
    let before = cluster.view();
    let (p, _) = cluster.primary();
    // Backups first, the primary last: the coordinator sees them all go.
    for i in (0..3).filter(|&i| i != p).chain([p]) {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    let after = cluster.wait_for(|v| v.num > before.num && v.primary.is_some(), FAILOVER);
    check_acknowledged(&mut c, &acked, "after restarting everything");
    c.put(b"later", b"v").unwrap();
    assert_eq!(ok_get(&mut c, "later").as_deref(), Some("v"));
    // The other two come back as backups, and the group survives losing the primary again.
    let full = cluster.wait_for_shape(2, FAILOVER);
    let (p, _) = cluster.primary();
    cluster.kill(p);
    wait_new_primary(&cluster, p, full.num);
    check_acknowledged(&mut c, &acked, "after the next failover");
    assert_eq!(ok_get(&mut c, "later").as_deref(), Some("v"));
    eprintln!("restarted into {}, then {}", describe(&after), describe(&full));
}

/// `--fsync always` in a cluster: group commit ends on a storage thread after the records
/// arrived, and a backup acknowledges when it does. Every acknowledged write is then durable on
/// all three replicas (their STATS say so), and all of it survives killing all three at once.
#[test]
fn with_fsync_always_every_replica_made_each_acknowledged_write_durable() {
    let mut cluster = Cluster::start_with(ClusterOptions {
        server_args: vec!["--fsync".into(), "always".into()],
        ..ClusterOptions::default()
    });
    let mut c = cluster.client();
    let acked = write_keys(&mut c, "k", 200);
    let (p, _) = cluster.primary();
    let stat = |i: usize, name: &str| -> u64 {
        let stats = harness::cluster::stats_of(cluster.addr(i)).expect("STATS");
        stats[name].parse().unwrap()
    };
    let written = stat(p, "last_lsn");
    assert!(written >= 200, "the primary's log ends at {written}");
    for i in 0..3 {
        let durable = stat(i, "durable_lsn");
        assert!(durable >= written, "s{}: durable to {durable}, {written} acknowledged", i + 1);
    }
    let before = cluster.view();
    for i in (0..3).filter(|&i| i != p).chain([p]) {
        cluster.kill(i);
    }
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.wait_for(|v| v.num > before.num && v.primary.is_some(), FAILOVER);
    check_acknowledged(&mut c, &acked, "after restarting all three");
}

/// A client pipelining large writes to a primary fills its reply queue with replies held for the
/// backups' acknowledgements, so the primary stops reading it (backpressure). The acknowledgements
/// release the replies later, from another iteration: reading must resume then, though no new
/// readable edge will say so (the requests are in the socket already).
#[test]
fn pipelined_writes_held_for_acknowledgements_resume_after_backpressure() {
    let cluster = Cluster::start(3);
    let options = client::Options { op_timeout: Duration::from_secs(10), ..client::Options::default() };
    let mut c = client::Client::connect_cluster(&[cluster.coordinator.addr], options).unwrap();
    let value = vec![b'v'; 4000];
    let keys: Vec<String> = (0..2000).map(|i| format!("pipe{i}")).collect();
    let ops: Vec<client::Op<'_>> = keys.iter().map(|k| client::Op::Put(k.as_bytes(), &value)).collect();
    let started = Instant::now();
    let replies = c.pipeline(&ops).expect("every pipelined write answered");
    assert!(replies.iter().all(|r| r.status == Status::OK));
    eprintln!("2000 pipelined 4000-byte writes through three replicas in {:?}", started.elapsed());
    let mut cc = cluster.client();
    assert_eq!(ok_get(&mut cc, "pipe1999").map(|v| v.len()), Some(4000));
}

/// Kill a backup, write more, bring it back (on its data, or empty), wait until it is a
/// backup again, then kill the other two: it alone must serve everything.
fn a_returning_backup_is_brought_up_to_date(empty: bool) {
    let mut cluster = Cluster::start(3);
    let mut c = cluster.client();
    let mut acked = write_keys(&mut c, "early", 150);
    let before = cluster.view();
    let b = cluster.backups()[0];
    let b_id = cluster.id(b).to_string();
    cluster.kill(b);
    // Writes stall until the coordinator drops it, then go on without it.
    acked.extend(write_keys(&mut c, "while-down", 150));
    c.append(b"early3", b"+x").unwrap();
    acked.insert("early3".into(), b"early3@3+x".to_vec());
    let dropped = cluster.wait_for(|v| v.num > before.num && !v.is_member(&b_id), FAILOVER);
    if empty {
        cluster.restart_empty(b);
    } else {
        cluster.restart(b);
    }
    let back = cluster.wait_for(|v| v.num > dropped.num && v.backups.iter().any(|m| m.id == b_id), FAILOVER);
    // Writes after it rejoined reach it too.
    acked.extend(write_keys(&mut c, "after", 50));
    let others: Vec<usize> = (0..3).filter(|&i| i != b).collect();
    for i in others {
        cluster.kill(i);
    }
    let alone = cluster.wait_for(|v| v.num > back.num && v.primary_id() == Some(b_id.as_str()), FAILOVER);
    check_acknowledged(
        &mut c,
        &acked,
        if empty { "on the backup restarted empty" } else { "on the returned backup" },
    );
    assert_eq!(c.answered_by, Some(cluster.addr(b)));
    eprintln!("{b_id} rejoined in {}; alone in {}", describe(&back), describe(&alone));
}

#[test]
fn a_backup_restarted_on_its_data_is_brought_up_to_date() {
    a_returning_backup_is_brought_up_to_date(false);
}

#[test]
fn a_backup_restarted_empty_is_brought_up_to_date() {
    a_returning_backup_is_brought_up_to_date(true);
}

/// Issue #11: a backup stores records of 1 KB or more with their checksum derived from the
/// verified replication frame's instead of computed over the value (a debug build, as tests run,
/// recomputes each one and would crash on a mismatch). Restarted on its data, the backup's
/// recovery verifies every record it stored; left alone, it serves them all.
#[test]
fn large_records_a_backup_stored_with_derived_checksums_pass_its_recovery() {
    let mut cluster = Cluster::start(3);
    let mut c = cluster.client();
    let (big, half, long_key) = (vec![b'x'; 4000], vec![b'y'; 1500], vec![b'k'; 1024]);
    c.put(b"big", &big).unwrap();
    c.put(b"grow", &half).unwrap();
    c.append(b"grow", &half).unwrap();
    c.put(&long_key, b"v").unwrap();
    assert!(c.delete(&long_key).unwrap().is_some());
    let before = cluster.view();
    let b = cluster.backups()[0];
    let b_id = cluster.id(b).to_string();
    cluster.kill(b);
    let dropped = cluster.wait_for(|v| v.num > before.num && !v.is_member(&b_id), FAILOVER);
    cluster.restart(b);
    let back = cluster.wait_for(|v| v.num > dropped.num && v.backups.iter().any(|m| m.id == b_id), FAILOVER);
    for i in (0..3).filter(|&i| i != b) {
        cluster.kill(i);
    }
    cluster.wait_for(|v| v.num > back.num && v.primary_id() == Some(b_id.as_str()), FAILOVER);
    assert_eq!(c.get(b"big").unwrap().map(|(v, _)| v), Some(big));
    assert_eq!(c.get(b"grow").unwrap().map(|(v, _)| v), Some([&half[..], &half].concat()));
    assert_eq!(c.get(&long_key).unwrap(), None);
    assert_eq!(c.answered_by, Some(cluster.addr(b)));
}

#[test]
fn a_retried_append_whose_reply_was_lost_is_applied_once_at_the_new_primary() {
    let mut cluster = Cluster::start(3);
    let mut c = cluster.client();
    c.put(b"log", b"base").unwrap();
    let (p, paddr) = cluster.primary();
    let backups = cluster.backups();
    let before = cluster.view();
    let lsn_before = cluster.stat(p, "last_lsn").unwrap();

    // The APPEND goes through the primary's proxy, which drops the reply.
    let (client_id, request_id) = (random_u64(), 77);
    let mut conn = RawConn::try_connect(paddr, Duration::from_secs(2)).unwrap();
    cluster.nodes[p].tcp.drop_replies_to(conn.local_addr());
    conn.send_frame(Frame::request(request_id, Command::APPEND, b"log", b"+x").with_param(client_id));
    // Applied, replicated to both backups and committed (so its reply went out, and was lost).
    let target = lsn_before + 1;
    let replicated = poll_until(Duration::from_secs(5), || {
        cluster.stat(p, "committed_lsn").is_some_and(|l| l >= target)
            && backups.iter().all(|&b| cluster.stat(b, "last_lsn").is_some_and(|l| l >= target))
    });
    assert!(replicated, "the APPEND (LSN {target}) did not reach both backups");
    conn.stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    assert!(conn.try_recv().is_err(), "the proxy should have dropped the reply");
    let (value, version) = c.get(b"log").unwrap().unwrap();
    assert_eq!(value, b"base+x");

    cluster.kill(p);
    let (q, _) = wait_new_primary(&cluster, p, before.num);
    // The client retries: same client id, same request id, at the new primary.
    let r = c.request_as(Command::APPEND, b"log", b"+x", 0, client_id, request_id).unwrap();
    assert_eq!(c.answered_by, Some(cluster.addr(q)));
    assert_eq!((r.status, r.version), (Status::OK, version), "the retry gets the original reply: {r}");
    assert_eq!(c.get(b"log").unwrap().unwrap(), (b"base+x".to_vec(), version), "applied once");
    assert!(cluster.stat(q, "retries_answered").unwrap() >= 1);
    // A new request of the same client is applied; an older one is refused.
    let r = c.request_as(Command::APPEND, b"log", b"+y", 0, client_id, request_id + 1).unwrap();
    assert_eq!(r.status, Status::OK, "{r}");
    let r = c.request_as(Command::APPEND, b"log", b"+z", 0, client_id, request_id).unwrap();
    assert_eq!(r.status, Status::BAD_REQUEST, "a request older than the client's newest is refused: {r}");
    assert_eq!(ok_get(&mut c, "log").as_deref(), Some("base+x+y"));
}

/// One GET sent by the reader: when it left, and what came back.
#[derive(Debug, Clone)]
struct Read {
    sent: Instant,
    outcome: Result<Reply, String>,
}

/// Cut the primary from the coordinator (and, if `isolate`, from its backups too) while a
/// reader keeps asking it for a key, and write a new value through the primary that replaces
/// it: once that write is acknowledged, the old primary must not answer the read with the old
/// value, and it must stop answering OK within about a lease of losing its backups' grants.
fn an_old_primary_stops_answering_before_another_takes_writes(isolate: bool) {
    let cluster = Cluster::start(3);
    let mut c = cluster.client();
    c.put(b"k", b"old").unwrap();
    let (p, _) = cluster.primary();
    let p_direct = cluster.direct_addr(p);
    let before = cluster.view();

    // A reader keeps asking the old primary for k.
    let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (reads, stop) = (reads.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut conn: Option<RawConn> = None;
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let sent = Instant::now();
                let outcome = match &mut conn {
                    Some(c) => c.call(Frame::request(id, Command::GET, b"k", b"")).map_err(|e| e.to_string()),
                    None => match RawConn::try_connect(p_direct, Duration::from_secs(1)) {
                        Ok(c) => {
                            conn = Some(c);
                            continue;
                        }
                        Err(e) => Err(e.to_string()),
                    },
                };
                if outcome.is_err() {
                    conn = None;
                }
                reads.lock().unwrap().push(Read { sent, outcome });
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let served_old = |r: &Read| r.outcome.as_ref().is_ok_and(|r| r.is_ok() && r.value == b"old");
    assert!(
        poll_until(Duration::from_secs(5), || reads.lock().unwrap().iter().any(served_old)),
        "the primary never served the read before the cut: {:?}",
        reads.lock().unwrap().last()
    );

    let p_id = cluster.id(p).to_string();
    let backups = cluster.backups();
    cluster.nodes[p].udp.cut();
    if isolate {
        // Its beacons no longer reach the backups: no grant extends its lease from here.
        for &b in &backups {
            cluster.nodes[b].tcp.block_from(&p_id);
        }
    }
    let cut_at = Instant::now();
    let (q, new_view) = wait_new_primary(&cluster, p, before.num);
    let view_seen = Instant::now();
    // Write through the new primary (retrying while it takes over), same ids each time.
    let mut w = ClusterClient::new(cluster.coordinator.addr);
    let (client_id, request_id) = (w.client_id, w.next_request_id());
    let mut conn = RawConn::try_connect(cluster.addr(q), Duration::from_secs(2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (ack, acked_at) = loop {
        let r = conn
            .call(Frame::request(request_id, Command::PUT, b"k", b"new").with_param(client_id))
            .expect("the new primary answers");
        if r.is_ok() {
            break (r, Instant::now());
        }
        // Until it hears of the view it still points at the old primary; then it waits out
        // the old primary's lease.
        assert!(
            matches!(r.status, Status::UNAVAILABLE | Status::WRONG_SERVER),
            "the new primary refuses the write: {r}"
        );
        assert!(Instant::now() < deadline, "the new primary never took the write: {r}");
        std::thread::sleep(Duration::from_millis(5));
    };
    // Let the reader go on for a while after the acknowledgement.
    assert!(poll_until(Duration::from_secs(5), || reads
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.sent > acked_at)
        .count()
        >= 20));
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let reads = reads.lock().unwrap();

    let ms = |a: Instant, b: Instant| a.saturating_duration_since(b).as_millis();
    for r in reads.iter().filter(|r| r.sent > acked_at) {
        match &r.outcome {
            Ok(reply) => assert!(
                matches!(reply.status, Status::UNAVAILABLE | Status::WRONG_SERVER),
                "a read sent {} ms after the new primary acknowledged {ack} was answered {reply} by the old primary",
                ms(r.sent, acked_at)
            ),
            Err(e) => panic!("the old primary did not answer a read: {e}"),
        }
    }
    // When the last OK read left: the server answered it after that, and before its lease
    // ran out.
    let last_ok = reads.iter().filter(|r| served_old(r)).map(|r| r.sent).max().unwrap();
    eprintln!(
        "cut at 0 ms; new view ({}) seen at {} ms; old primary's last OK read sent at {} ms; new \
         primary acknowledged the write at {} ms; {} reads",
        describe(&new_view),
        ms(view_seen, cut_at),
        ms(last_ok, cut_at),
        ms(acked_at, cut_at),
        reads.len()
    );
    if isolate {
        // No beacon sent after the cut is granted, and a lease runs 400 ms from its beacon.
        assert!(
            ms(last_ok, cut_at) <= 400 + 50,
            "the isolated primary answered OK {} ms after it was cut off",
            ms(last_ok, cut_at)
        );
    } else {
        // The backups stop confirming the old primary once they know the new view (within a
        // ping of its installation, which came before we saw it); its lease then runs out.
        assert!(
            ms(last_ok, view_seen) <= 500 + 250,
            "the old primary answered OK {} ms after the new view was seen",
            ms(last_ok, view_seen)
        );
    }

    // Healed, the old primary learns the new view and comes back as a backup.
    cluster.nodes[p].udp.heal();
    for &b in &backups {
        cluster.nodes[b].tcp.unblock_from(&p_id);
    }
    cluster.wait_for(|v| v.backups.iter().any(|b| b.id == p_id), FAILOVER);
    let mut conn = RawConn::try_connect(p_direct, Duration::from_secs(2)).unwrap();
    let r = conn.call(Frame::request(1, Command::GET, b"k", b"")).unwrap();
    assert_eq!(r.status, Status::WRONG_SERVER, "{r}");
    assert_eq!(r.text(), cluster.addr(q).to_string(), "it points at the new primary");
    assert_eq!(ok_get(&mut c, "k").as_deref(), Some("new"));
}

#[test]
fn a_primary_cut_from_the_coordinator_stops_answering_before_another_takes_writes() {
    an_old_primary_stops_answering_before_another_takes_writes(false);
}

#[test]
fn an_isolated_primary_stops_answering_within_its_lease() {
    an_old_primary_stops_answering_before_another_takes_writes(true);
}

#[test]
fn the_group_serves_without_its_coordinator_which_carries_on_from_its_view_after_a_restart() {
    let mut cluster = Cluster::start(3);
    let mut c = cluster.client();
    let mut acked = write_keys(&mut c, "k", 50);
    // A failover first, so the view number is past 1.
    let first = cluster.view();
    let (p, _) = cluster.primary();
    cluster.kill(p);
    wait_new_primary(&cluster, p, first.num);
    cluster.restart(p);
    let before = cluster.wait_for_shape(2, FAILOVER);
    assert!(before.num >= 3, "{}", describe(&before));
    let (primary, _) = cluster.primary();

    cluster.kill_coordinator();
    let down_at = Instant::now();
    // Longer than the coordinator's death timeout (500 ms) and several leases: the group goes
    // on serving reads and writes in its view; the client keeps using the primary it knows.
    let mut n = 0;
    while down_at.elapsed() < Duration::from_millis(1500) {
        let key = format!("during{n}");
        let value = format!("{key}@{n}").into_bytes();
        c.put(key.as_bytes(), &value)
            .unwrap_or_else(|e| panic!("a write while the coordinator is down: {e}"));
        assert_eq!(c.answered_by, Some(cluster.addr(primary)));
        assert_eq!(c.get(key.as_bytes()).unwrap().map(|(v, _)| v), Some(value.clone()));
        acked.insert(key, value);
        n += 1;
    }
    assert!(n >= 10, "only {n} writes in 1.5 s");
    assert!(cluster.try_view(Duration::from_millis(200)).is_err(), "the coordinator is down");

    cluster.restart_coordinator();
    let after = cluster.wait_for(|v| v.primary.is_some(), FAILOVER);
    assert!(
        after.num >= before.num,
        "the view number went back: {} after {}",
        describe(&after),
        describe(&before)
    );
    assert_eq!(after.primary_id(), before.primary_id(), "{}", describe(&after));
    let log = cluster.coordinator.log();
    assert!(log.contains(&format!("carrying on from view={}", before.num)), "{log}");

    // Failover still works, and nothing was lost.
    let settled = cluster.wait_for_shape(2, FAILOVER);
    let (p, _) = cluster.primary();
    cluster.kill(p);
    let (_, next) = wait_new_primary(&cluster, p, settled.num);
    assert!(next.num > settled.num);
    check_acknowledged(&mut c, &acked, "after the coordinator restart and a failover");
    c.put(b"last", b"v").unwrap();
}

/// A heartbeat datagram claiming `hb`, with sequence number `seq`; with `mac`, the body says
/// it is sealed and ends in those 32 bytes (which the forger cannot compute).
fn forge(hb: &Heartbeat, seq: u64, mac: Option<&[u8]>) -> Vec<u8> {
    let mut body = hb.encode(if mac.is_some() { wc::BODY_MAC } else { 0 }).into_vec();
    if let Some(mac) = mac {
        body.extend_from_slice(mac);
    }
    let mut out = Vec::new();
    Frame::request(seq, wc::HEARTBEAT, hb.id.as_bytes(), &body).encode_compact_to(&mut out).unwrap();
    out
}

/// A real heartbeat of server `i` as its relay last saw it: the decoded heartbeat, its
/// sequence number and its MAC trailer (if sealed).
fn captured_heartbeat(cluster: &Cluster, i: usize) -> (Heartbeat, u64, Option<Vec<u8>>) {
    let mut got = None;
    assert!(poll_until(Duration::from_secs(5), || {
        got = cluster.nodes[i].udp.last_from_server();
        got.is_some()
    }));
    let bytes = got.unwrap();
    let (frame, used) = Frame::decode_compact(&bytes).unwrap().expect("a whole frame");
    assert_eq!((used, frame.command), (bytes.len(), wc::HEARTBEAT));
    let (fields, mac) = wc::split_mac(frame.value).unwrap();
    (Heartbeat::decode(frame.key, fields).unwrap(), frame.id, mac.map(|m| m.to_vec()))
}

/// Forged heartbeats: each of `real` (captured heartbeats with their sequence numbers)
/// restarted (a new incarnation), and a new server with the longest log; each unsealed and,
/// when `mac` is given, also "sealed" with it.
fn forgeries(real: &[(Heartbeat, u64)], round: u64, mac: Option<&[u8]>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (hb, seq) in real {
        let hb = Heartbeat { incarnation: hb.incarnation + 1 + round, ..hb.clone() };
        out.push(forge(&hb, seq + 1000 + 2 * round, None));
        if let Some(mac) = mac {
            out.push(forge(&hb, seq + 1001 + 2 * round, Some(mac)));
        }
    }
    let stranger = Heartbeat {
        id: "s9".into(),
        addr: "127.0.0.1:9".into(),
        incarnation: 1,
        data_id: 99,
        last_lsn: 1 << 40,
        last_term: 1 << 20,
        ..Heartbeat::default()
    };
    out.push(forge(&stranger, 1 + 2 * round, None));
    if let Some(mac) = mac {
        out.push(forge(&stranger, 2 + 2 * round, Some(mac)));
    }
    out
}

/// Sends forgeries claiming that the primary and a backup restarted and that a new server
/// arrived, every 50 ms for `period`; returns how many replies came back.
fn send_forgeries(cluster: &Cluster, period: Duration, mac: Option<&[u8]>) -> usize {
    let (p, _) = cluster.primary();
    let b = cluster.backups()[0];
    let real: Vec<(Heartbeat, u64)> = [p, b]
        .into_iter()
        .map(|i| {
            let (hb, seq, _) = captured_heartbeat(cluster, i);
            (hb, seq)
        })
        .collect();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let start = Instant::now();
    let mut replies = 0;
    let mut buf = vec![0u8; 65536];
    let mut round = 0;
    while start.elapsed() < period {
        for d in forgeries(&real, round, mac) {
            sock.send_to(&d, cluster.coordinator.addr).unwrap();
        }
        round += 1;
        let pace = Instant::now() + Duration::from_millis(50);
        while Instant::now() < pace {
            if sock.recv_from(&mut buf).is_ok() {
                replies += 1;
            }
        }
    }
    replies
}

#[test]
fn heartbeats_without_the_cluster_secret_change_nothing() {
    let cluster = Cluster::start_with(ClusterOptions { secret: true, ..ClusterOptions::default() });
    let before = cluster.view();
    let (p, _) = cluster.primary();
    let (_, _, mac) = captured_heartbeat(&cluster, p);
    let mut mac = mac.expect("with a secret, heartbeats are sealed");
    mac[0] ^= 1;
    // Longer than the time the coordinator takes to act on a restart or a death.
    let replies = send_forgeries(&cluster, Duration::from_millis(800), Some(&mac));
    assert_eq!(replies, 0, "the coordinator answered a forged heartbeat");
    let after = cluster.view();
    assert_eq!(
        after,
        before,
        "forged heartbeats changed the view: {} -> {}",
        describe(&before),
        describe(&after)
    );
    let log = cluster.coordinator.log();
    assert!(log.contains("dropping a heartbeat from"), "{log}");
    assert!(log.contains("unauthenticated message, but this cluster has a secret"), "{log}");
    assert!(log.contains("wrong MAC"), "{log}");
    assert!(!log.contains("s9"), "the stranger was never heard: {log}");
    assert!(!log.contains("restarted (incarnation"), "{log}");
    // The real servers are still heard and served.
    let mut c = cluster.client();
    c.put(b"k", b"v").unwrap();
    let changed = cluster.try_wait_for(|v| *v != before, Duration::from_millis(300));
    assert!(changed.is_err(), "the view changed: {}", describe(&changed.unwrap()));
}

/// The control for the test above: without a secret the same forgeries are accepted (so the
/// forged datagrams are well-formed and would matter).
#[test]
fn control_without_a_secret_the_same_forgeries_are_accepted() {
    let cluster = Cluster::start(3);
    let before = cluster.view();
    let replies = send_forgeries(&cluster, Duration::from_millis(200), None);
    assert!(replies > 0, "the coordinator ignored well-formed heartbeats");
    let after = cluster.wait_for(|v| v.num > before.num, FAILOVER);
    assert!(cluster.coordinator.log().contains("server s9 at 127.0.0.1:9 heard for the first time"));
    assert_ne!(
        after.primary_id(),
        before.primary_id(),
        "a forged restart deposed the primary: {}",
        describe(&after)
    );
}

/// One backup's replication connections from the primary are held (a partition that leaves
/// the TCP connection open, as real ones do): writes may stall until the coordinator drops the
/// backup, then must go on; healed, the backup is brought up to date and admitted again.
///
/// Fails as of this writing: once the view drops the backup, the primary keeps it as a
/// candidate learner, pins it (its acked LSN is within `sync_slack`) over the still-open,
/// silent connection, and then waits for its grants and acks forever (UNAVAILABLE "no lease").
#[test]
fn a_backup_cut_from_the_primary_is_dropped_then_comes_back() {
    let mut cluster = Cluster::start(3);
    let mut c = cluster.client();
    let mut acked = write_keys(&mut c, "k", 50);
    let before = cluster.view();
    let (p, _) = cluster.primary();
    let p_id = cluster.id(p).to_string();
    let b = cluster.backups()[0];
    let b_id = cluster.id(b).to_string();
    // Writes may stall until the coordinator drops b (about a second), not much longer.
    c.op_timeout = Duration::from_secs(5);

    // A watcher notes when the coordinator's view first leaves b out.
    let dropped_seen: Arc<Mutex<Option<(Instant, View)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop, coord, b_id) =
            (dropped_seen.clone(), stop.clone(), cluster.coordinator.addr, b_id.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && seen.lock().unwrap().is_none() {
                if let Ok(v) = harness::get_view(coord, Duration::from_millis(200)) {
                    if !v.is_member(&b_id) {
                        *seen.lock().unwrap() = Some((Instant::now(), v));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // From here on nothing moves between the primary and b, either way.
    cluster.nodes[b].tcp.block_from(&p_id);
    let blocked_at = Instant::now();
    let mut first_ack = None;
    let mut n = 0;
    while dropped_seen.lock().unwrap().is_none() || n < 20 {
        assert!(blocked_at.elapsed() < Duration::from_secs(10), "b was never dropped");
        let key = format!("during{n}");
        let value = format!("{key}@{n}").into_bytes();
        c.put(key.as_bytes(), &value).unwrap_or_else(|e| panic!("a write with a backup cut off: {e}"));
        let at = Instant::now();
        first_ack.get_or_insert(at);
        // b cannot have this write: the view must already have dropped it.
        let v = cluster.view();
        assert!(
            !v.is_member(&b_id),
            "a write was acknowledged {} ms after the cut while the cut-off {b_id} is still a member: {}",
            at.duration_since(blocked_at).as_millis(),
            describe(&v)
        );
        acked.insert(key, value);
        n += 1;
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let (seen_at, dropped) = dropped_seen.lock().unwrap().clone().unwrap();
    let first_ack = first_ack.unwrap();
    assert_eq!(dropped.primary_id(), Some(p_id.as_str()), "the primary stays: {}", describe(&dropped));
    assert!(dropped.num > before.num);
    eprintln!(
        "cut at 0 ms; view without {b_id} seen at {} ms; first write acknowledged at {} ms",
        seen_at.duration_since(blocked_at).as_millis(),
        first_ack.duration_since(blocked_at).as_millis()
    );
    // The stalled write went on as soon as the primary heard of the new view.
    assert!(
        first_ack.saturating_duration_since(seen_at) < Duration::from_millis(600),
        "the write stalled {} ms past the view that dropped {b_id}",
        first_ack.saturating_duration_since(seen_at).as_millis()
    );

    // Healed, b is brought up to date and admitted again.
    cluster.nodes[b].tcp.unblock_from(&p_id);
    let back = cluster.wait_for(|v| v.backups.iter().any(|m| m.id == b_id), FAILOVER);
    assert_eq!(back.primary_id(), Some(p_id.as_str()));
    acked.extend(write_keys(&mut c, "after", 20));
    // It holds everything: kill the other two and read it all from b.
    let others: Vec<usize> = (0..3).filter(|&i| i != b).collect();
    for i in others {
        cluster.kill(i);
    }
    cluster.wait_for(|v| v.primary_id() == Some(b_id.as_str()), FAILOVER);
    check_acknowledged(&mut c, &acked, "on the backup that was cut off");
}

/// A coordinator that lost its data directory starts a new cluster over servers that hold
/// data and remember later views and terms: its first view must number past them (servers
/// ignore older views, and a primary must take a term newer than its log's), and nothing
/// acknowledged may be lost. (It picks the most complete log, which here is every member's.)
#[test]
fn a_coordinator_started_on_an_empty_directory_takes_the_cluster_over_past_its_old_views() {
    let mut cluster = Cluster::start(3);
    let mut c = cluster.client();
    let mut acked = write_keys(&mut c, "k", 40);
    let first = cluster.view();
    let (p, _) = cluster.primary();
    cluster.kill(p);
    wait_new_primary(&cluster, p, first.num);
    cluster.restart(p);
    let before = cluster.wait_for_shape(2, FAILOVER);
    acked.extend(write_keys(&mut c, "m", 20));

    cluster.kill_coordinator();
    let dir = cluster.coordinator.data_dir.clone();
    std::fs::remove_dir_all(&dir).unwrap();
    cluster.restart_coordinator();
    let after = cluster.wait_for(|v| v.primary.is_some(), Duration::from_secs(10));
    assert!(after.num > before.num, "views went back: {} after {}", describe(&after), describe(&before));
    let mut c = cluster.client();
    c.put(b"after", b"x")
        .unwrap_or_else(|e| panic!("no write after the new coordinator: {e}\n{}", cluster.diagnostics()));
    check_acknowledged(&mut c, &acked, "after a coordinator restarted on an empty directory");
}
