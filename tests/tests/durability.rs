//! Restarts and crashes of the real binary: nothing acknowledged may be lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::ClientError;
use harness::{temp_dir, Client, ServerProcess};

#[test]
fn data_survives_a_graceful_restart() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &[]);
    let mut c = server.client();
    for i in 0..500 {
        c.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes()).unwrap();
    }
    c.delete(b"k7").unwrap();
    c.append(b"k8", b"+").unwrap();
    drop(c);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
    let server = ServerProcess::start(&data, &[]);
    let mut c = server.client();
    assert_eq!(c.get(b"k7").unwrap(), None, "a delete survives restart");
    assert_eq!(c.get(b"k8").unwrap().unwrap().data, b"v8+");
    for i in (0..500).filter(|&i| i != 7 && i != 8) {
        assert_eq!(c.get(format!("k{i}").as_bytes()).unwrap().unwrap().data, format!("v{i}").as_bytes());
    }
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let _first = ServerProcess::start(&data, &[]);
    let (status, log) = match ServerProcess::try_start(&data, &[]) {
        Err(failure) => failure,
        Ok(_) => panic!("two servers opened one data directory"),
    };
    assert!(!status.contains("exit status: 0"), "{status}");
    assert!(log.contains("in use by another process"), "the refusal says why: {log}");
}

/// Writers hammer the server; the test SIGKILLs it mid-load, restarts it, and checks that
/// every write the server acknowledged is there with its last acknowledged value.
fn kill_during_writes_loses_nothing_acknowledged(fsync: &str) {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &["--fsync", fsync]);
    for round in 0..3 {
        let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (acked, stop, addr) = (acked.clone(), stop.clone(), server.addr);
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr, Duration::from_secs(5)).unwrap();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("r{round}w{w}k{}", n % 200);
                        let value = format!("{key}@{n}").into_bytes();
                        match c.put(key.as_bytes(), &value) {
                            Ok(_) => {
                                acked.lock().unwrap().insert(key, value);
                            }
                            // The kill: the outcome of this last write is unknown, so it is
                            // not counted as acknowledged.
                            Err(ClientError::Closed | ClientError::Io(_) | ClientError::Timeout) => return n,
                            Err(e) => panic!("unexpected error under load: {e}"),
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        // Let the load run until a good number of writes were acknowledged.
        while acked.lock().unwrap().len() < 400 {
            std::thread::sleep(Duration::from_millis(5));
        }
        server = server.restart_after_kill();
        stop.store(true, Ordering::Relaxed);
        let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        let acked = acked.lock().unwrap();
        assert!(written >= acked.len() as u64);
        let mut c = server.client();
        for (key, value) in acked.iter() {
            let got = c.get(key.as_bytes()).unwrap();
            // A later, unacknowledged write of the same key may also have landed; it must
            // then be a newer value of that key, never an older one or nothing.
            let got = got.unwrap_or_else(|| panic!("round {round}: acknowledged {key} lost after SIGKILL"));
            if got.data != *value {
                let seq =
                    |v: &[u8]| String::from_utf8_lossy(v).rsplit('@').next().unwrap().parse::<u64>().unwrap();
                assert!(seq(&got.data) > seq(value), "round {round}: {key} went back in time");
            }
        }
    }
}

#[test]
fn sigkill_during_writes_loses_nothing_acknowledged_fsync_never() {
    kill_during_writes_loses_nothing_acknowledged("never");
}

#[test]
fn sigkill_during_writes_loses_nothing_acknowledged_fsync_always() {
    kill_during_writes_loses_nothing_acknowledged("always");
}

#[test]
fn sigterm_answers_in_flight_requests_then_exits_zero() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &["--fsync", "always"]);
    let mut c = server.client();
    let keys: Vec<String> = (0..2000).map(|i| format!("s{i}")).collect();
    let ops: Vec<client::Op<'_>> = keys.iter().map(|k| client::Op::Put(k.as_bytes(), b"v")).collect();
    let addr = server.addr;
    let batch = std::thread::spawn(move || {
        let mut c = Client::connect(addr, Duration::from_secs(5)).unwrap();
        let keys: Vec<String> = (0..2000).map(|i| format!("t{i}")).collect();
        let ops: Vec<client::Op<'_>> = keys.iter().map(|k| client::Op::Put(k.as_bytes(), b"v")).collect();
        c.pipeline(&ops).map(|r| r.len())
    });
    let replies = c.pipeline(&ops).unwrap();
    assert_eq!(replies.len(), 2000);
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    // The concurrent batch either completed or saw the connection close: whatever it was
    // told is OK must be on disk.
    let concurrent_done = matches!(batch.join().unwrap(), Ok(2000));
    let server = ServerProcess::start(&data, &[]);
    let mut c = server.client();
    for k in &keys {
        assert!(c.get(k.as_bytes()).unwrap().is_some(), "{k} lost");
    }
    if concurrent_done {
        for i in 0..2000 {
            assert!(c.get(format!("t{i}").as_bytes()).unwrap().is_some(), "acknowledged t{i} lost");
        }
    }
    assert!(!server.log().contains("panicked"));
}

#[test]
fn sigkill_during_writes_loses_nothing_acknowledged_fsync_interval() {
    kill_during_writes_loses_nothing_acknowledged("interval:5");
}

fn stat(c: &mut Client, name: &str) -> u64 {
    let stats: HashMap<String, String> = c.stats().unwrap().into_iter().collect();
    stats[name].parse().unwrap()
}

#[test]
fn fsync_always_commits_pipelined_writes_as_a_group() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &["--fsync", "always"]);
    let mut c = server.client();
    // Sequential writes: each waits for its own sync before the reply.
    for i in 0..20 {
        c.put(format!("seq{i}").as_bytes(), b"v").unwrap();
    }
    let after_sequential = stat(&mut c, "syncs");
    assert!(after_sequential >= 20, "each acknowledged write was synced first: {after_sequential} syncs");
    assert_eq!(stat(&mut c, "durable_lsn"), stat(&mut c, "last_lsn"));
    // 2000 pipelined writes share far fewer syncs than writes.
    let keys: Vec<String> = (0..2000).map(|i| format!("pipe{i}")).collect();
    let ops: Vec<client::Op<'_>> = keys.iter().map(|k| client::Op::Put(k.as_bytes(), b"v")).collect();
    c.pipeline(&ops).unwrap();
    let group = stat(&mut c, "syncs") - after_sequential;
    assert!(group > 0 && group < 1000, "2000 pipelined writes took {group} syncs");

    let never = ServerProcess::start(&dir.path().join("never"), &["--fsync", "never"]);
    let mut c = never.client();
    c.put(b"k", b"v").unwrap();
    assert_eq!(stat(&mut c, "syncs"), 0, "--fsync never does not sync on the request path");
    assert_eq!(stat(&mut c, "storage_background_flushes"), 0);
}

#[test]
fn fsync_interval_flushes_in_the_background_and_counts_it() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &["--fsync", "interval:5"]);
    let mut c = server.client();
    c.put(b"k", b"v").unwrap();
    // Wait (bounded) for the flush the interval promises; the STATS counters show it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stat(&mut c, "durable_lsn") < stat(&mut c, "last_lsn") {
        assert!(std::time::Instant::now() < deadline, "no background flush within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(stat(&mut c, "storage_background_flushes") >= 1);
    assert_eq!(stat(&mut c, "syncs"), 0, "nothing synced on the request path");
}

/// Blocks allocated to the files of `dir`, as `du` counts them.
fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().blocks() * 512).sum()
}

/// Runs `tandem-server --repair --data DIR`: (exit code, stdout, stderr).
fn repair(data: &std::path::Path) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(harness::bin("tandem-server"))
        .arg("--repair")
        .arg("--data")
        .arg(data)
        .output()
        .expect("run tandem-server --repair");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Issue #10: an emptied segment used to be deleted at startup with its keys. Now the server
/// refuses to start and says how to repair; `--repair` drops the damage, says what it dropped,
/// and the server then starts and serves everything else.
#[test]
fn a_damaged_data_directory_is_refused_until_repaired() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let mut server = ServerProcess::start(&data, &["--segment-mib", "1"]);
    let value = |i: usize| format!("{i:06}:").repeat(50).into_bytes();
    let keys: Vec<String> = (0..6000).map(|i| format!("key{i:05}")).collect();
    let values: Vec<Vec<u8>> = (0..6000).map(value).collect();
    let ops: Vec<client::Op<'_>> =
        keys.iter().zip(&values).map(|(k, v)| client::Op::Put(k.as_bytes(), v)).collect();
    let mut c = server.client();
    for chunk in ops.chunks(500) {
        c.pipeline(chunk).unwrap();
    }
    drop(c);
    // A store in use cannot be repaired: exit 1, saying why.
    let (code, _, stderr) = repair(&data);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(server.terminate().success());

    let mut segs: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    let oldest = &segs[0];
    std::fs::OpenOptions::new().write(true).open(oldest).unwrap().set_len(0).unwrap();

    let (status, log) = match ServerProcess::try_start(&data, &[]) {
        Err(failure) => failure,
        Ok(_) => panic!("the server started on a damaged data directory"),
    };
    assert!(!status.contains("exit status: 0"), "{status}");
    let command = format!("tandem-server --repair --data {}", data.display());
    assert!(log.contains(&command) && log.contains(&oldest.display().to_string()), "{log}");

    let (code, stdout, stderr) = repair(&data);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let line = format!("dropped {} offset=0 length=0: ", oldest.display());
    assert!(stdout.contains(&line), "{stdout}");
    assert!(stdout.contains("the store opens"), "{stdout}");

    let server = ServerProcess::start(&data, &[]);
    let mut c = server.client();
    let mut lost = 0;
    for (i, k) in keys.iter().enumerate() {
        match c.get(k.as_bytes()).unwrap() {
            Some(v) => assert_eq!(v.data, value(i), "{k}"),
            // The oldest segment held the first keys written, and only those.
            None => {
                assert_eq!(lost, i, "{k} lost, but an earlier key was not");
                lost += 1;
            }
        }
    }
    assert!(lost > 0 && lost < 3000, "{lost} keys lost");
    c.put(b"after", b"repair").unwrap();
    assert_eq!(c.get(b"after").unwrap().unwrap().data, b"repair");
    drop(c);
    drop(server);
    // A healthy directory needs nothing.
    let (code, stdout, _) = repair(&data);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("nothing dropped"), "{stdout}");
}

/// Starts a server with `flag` set to an address another socket holds: the start must fail,
/// name the address, and leave no data directory behind.
fn a_start_with_a_taken_address_leaves_no_data_directory(flag: &str) {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, log) = match ServerProcess::try_start(&data, &[flag, &addr]) {
        Err(failure) => failure,
        Ok(_) => panic!("the server started with {flag} {addr} taken"),
    };
    assert!(!status.contains("exit status: 0"), "{status}: {log}");
    assert!(log.contains(&addr), "the error names the address: {log}");
    assert!(!data.exists(), "a failed start left {}", data.display());
}

/// Issue #10: a start that failed because the port was taken left a 65 MiB data directory.
#[test]
fn a_start_on_a_taken_port_leaves_no_data_directory() {
    a_start_with_a_taken_address_leaves_no_data_directory("--listen");
}

/// The same for `--metrics`: it is bound before the store is opened.
#[test]
fn a_start_with_the_metrics_address_taken_leaves_no_data_directory() {
    a_start_with_a_taken_address_leaves_no_data_directory("--metrics");
}

/// Issue #10: an empty store took a whole 64 MiB segment on disk before its first write.
#[test]
fn a_new_data_directory_is_small() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let server = ServerProcess::start(&data, &[]);
    let mut c = server.client();
    c.put(b"k", b"v").unwrap();
    let used = disk_usage(&data);
    assert!(used <= 2 << 20, "a new store takes {used} bytes on disk");
}
