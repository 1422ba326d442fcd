//! Many frames on one connection, many connections at once.

use std::io::Write;
use std::time::Duration;

use client::Op;
use harness::{temp_dir, Client, ServerProcess};
use wire::{Command, Frame, Status, FRAME_LEN};

#[test]
fn thousands_of_pipelined_frames_come_back_in_order() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut raw = server.raw();
    const N: u64 = 5000;
    let mut writer = raw.stream.try_clone().unwrap();
    // Send everything from another thread while this one reads: neither side may need the
    // other to stop writing first.
    let sender = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(64 * FRAME_LEN);
        for id in 1..=N {
            let key = format!("key{}", id / 2);
            let frame = if id % 2 == 0 {
                Frame::request(id, Command::PUT, key.as_bytes(), key.as_bytes())
            } else {
                Frame::request(id, Command::GET, key.as_bytes(), b"")
            };
            frame.encode_to(&mut batch).unwrap();
            if batch.len() >= 64 * FRAME_LEN {
                writer.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        writer.write_all(&batch).unwrap();
    });
    for id in 1..=N {
        let bytes = raw.recv().unwrap_or_else(|| panic!("closed after {} replies", id - 1));
        let reply = Frame::decode(&bytes).unwrap();
        assert_eq!(reply.id, id, "replies in request order");
        let key = format!("key{}", id / 2);
        if id % 2 == 0 {
            assert_eq!(reply.status(), Status::OK);
        } else if id / 2 == 0 {
            assert_eq!(reply.status(), Status::NOT_FOUND);
        } else {
            // GET key{n} comes after PUT key{n} (id 2n) in the same stream.
            assert_eq!((reply.status(), reply.value), (Status::OK, key.as_bytes()), "id {id}");
        }
    }
    sender.join().unwrap();
}

#[test]
fn client_pipeline_batches_match_their_requests() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let mut c = server.client();
    let keys: Vec<String> = (0..3000).map(|i| format!("p{i}")).collect();
    let puts: Vec<Op<'_>> = keys.iter().map(|k| Op::Put(k.as_bytes(), k.as_bytes())).collect();
    let replies = c.pipeline(&puts).unwrap();
    assert_eq!(replies.len(), keys.len());
    assert!(replies.iter().all(|r| r.status == Status::OK));
    let gets: Vec<Op<'_>> = keys.iter().map(|k| Op::Get(k.as_bytes())).collect();
    for (key, reply) in keys.iter().zip(c.pipeline(&gets).unwrap()) {
        assert_eq!(reply.value, key.as_bytes());
    }
}

#[test]
fn hundreds_of_concurrent_connections_each_see_their_own_writes() {
    let dir = temp_dir();
    let server = ServerProcess::start(&dir.path().join("data"), &[]);
    let addr = server.addr;
    const THREADS: usize = 20;
    const CONNS_PER_THREAD: usize = 15;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut clients: Vec<Client> = (0..CONNS_PER_THREAD)
                    .map(|_| Client::connect(addr, Duration::from_secs(5)).expect("connect"))
                    .collect();
                for round in 0..20 {
                    for (i, c) in clients.iter_mut().enumerate() {
                        let key = format!("t{t}c{i}");
                        let value = format!("{key}r{round}");
                        c.put(key.as_bytes(), value.as_bytes()).unwrap();
                        assert_eq!(c.get(key.as_bytes()).unwrap().unwrap().data, value.as_bytes());
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let stats: std::collections::HashMap<_, _> = server.client().stats().unwrap().into_iter().collect();
    assert_eq!(stats["keys"], (THREADS * CONNS_PER_THREAD).to_string());
    assert!(stats["connections_total"].parse::<usize>().unwrap() > THREADS * CONNS_PER_THREAD);
}
