//! Unit tests of single decisions; `server/tests/sim.rs` drives whole clusters.

use super::*;
use wire::cluster::Member;

const MS: u64 = 1000;

fn t(ms: u64) -> Time {
    Time(ms * MS)
}

fn member(id: &str) -> Member {
    Member { id: id.into(), addr: format!("{id}:1"), incarnation: 1, data_id: 1 }
}

fn view(num: u64, term: u64, primary: &str, backups: &[&str], candidates: &[&str]) -> View {
    View {
        group: 0,
        num,
        term,
        primary: Some(member(primary)),
        backups: backups.iter().map(|b| member(b)).collect(),
        candidates: candidates.iter().map(|c| member(c)).collect(),
        waiting: String::new(),
    }
}

fn replica(id: &str, last_lsn: u64, terms: &[(u64, u64)]) -> Replica {
    let cfg = Config { id: id.into(), addr: format!("{id}:1"), ..Config::default() };
    let meta = Meta { terms: Terms::from_entries(terms).unwrap(), data_id: 1, installing: false };
    Replica::new(cfg, meta, 1, last_lsn, Time::ZERO)
}

fn drain(r: &mut Replica) -> Vec<Output> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn reply(last_lsn: u64, last_term: u64) -> HelloReply {
    HelloReply { last_lsn, last_term, incarnation: 1, data_id: 1, ..HelloReply::default() }
}

/// Brings `peer` to streaming: connected, handshake answered.
fn stream(r: &mut Replica, now: Time, peer: &str, last_lsn: u64, last_term: u64) -> Vec<Output> {
    r.handle_peer_connected(now, peer, 7);
    r.handle_hello_reply(now, peer, Status::OK, &reply(last_lsn, last_term));
    drain(r)
}

#[test]
fn a_new_primary_records_its_term_then_waits_out_the_old_lease() {
    let mut r = replica("s2", 10, &[(1, 1)]);
    // As a backup it granted the old primary a lease at 1000 ms.
    r.handle_view(t(0), view(1, 1, "s1", &["s2"], &[]));
    let verdict =
        r.handle_hello(t(0), 5, "s1", &Hello { view: view(1, 1, "s1", &["s2"], &[]), ..Hello::default() }, 1);
    assert_eq!(verdict.status, Status::OK);
    assert!(r.handle_beacon(t(1000), 5, 999 * MS));
    drain(&mut r);
    r.handle_view(t(1100), view(2, 2, "s2", &[], &[]));
    let out = drain(&mut r);
    assert!(out.contains(&Output::CloseConn(5)), "drops the old primary's stream: {out:?}");
    let persisted = out.iter().find_map(|o| match o {
        Output::Persist(m) => Some(m.terms.entries().to_vec()),
        _ => None,
    });
    assert_eq!(persisted, Some(vec![(1, 1), (2, 11)]), "term 2 starts after the last record");
    let wait = r.config().takeover_wait();
    assert!(wait > r.config().lease);
    assert!(matches!(r.can_serve(t(1100)), Err(NotServing::Unavailable(_))));
    assert!(r.can_serve(t(1000) + wait - Duration::from_micros(10)).is_err());
    assert_eq!(r.can_serve(t(1000) + wait), Ok(()), "alone in the view, no lease is needed after the wait");
}

#[test]
fn a_primary_serves_only_while_every_backup_grants() {
    let mut r = replica("s1", 0, &[]);
    r.handle_view(t(0), view(1, 1, "s1", &["s2", "s3"], &[]));
    r.handle_tick(t(0));
    let out = drain(&mut r);
    assert!(out.iter().any(|o| matches!(o, Output::Connect { peer, .. } if peer == "s2")));
    stream(&mut r, t(1), "s2", 0, 0);
    stream(&mut r, t(1), "s3", 0, 0);
    let ready = t(0) + r.config().takeover_wait();
    assert!(r.can_serve(ready).is_err(), "no grants yet");
    r.handle_ack(ready, "s2", 0, ready.0, 1);
    assert!(r.can_serve(ready).is_err(), "s3 has not granted");
    r.handle_ack(ready, "s3", 0, ready.0, 1);
    assert_eq!(r.can_serve(ready), Ok(()));
    assert!(r.can_serve(ready + r.config().lease).is_err(), "the lease runs out without new grants");
}

#[test]
fn commit_waits_for_every_member_and_the_local_durable_lsn() {
    let mut r = replica("s1", 0, &[]);
    r.handle_view(t(0), view(1, 1, "s1", &["s2", "s3"], &[]));
    stream(&mut r, t(1), "s2", 0, 0);
    stream(&mut r, t(1), "s3", 0, 0);
    r.handle_log(10, 10);
    assert_eq!(r.committed(), 0);
    r.handle_ack(t(2), "s2", 10, 0, 1);
    assert_eq!(r.committed(), 0);
    r.handle_ack(t(2), "s3", 7, 0, 1);
    assert_eq!(r.committed(), 7);
    r.handle_log(12, 9);
    r.handle_ack(t(3), "s3", 12, 0, 1);
    r.handle_ack(t(3), "s2", 12, 0, 1);
    assert_eq!(r.committed(), 9, "not beyond what is durable here");
}

#[test]
fn returning_servers_get_the_log_or_a_snapshot() {
    let mut r = replica("s1", 100, &[(1, 1), (4, 50)]);
    r.handle_view(t(0), view(5, 4, "s1", &[], &["a", "b", "c", "d"]));
    drain(&mut r);
    let out = stream(&mut r, t(1), "a", 40, 1);
    assert!(out.contains(&Output::Stream { peer: "a".into(), from: 41 }), "{out:?}");
    let out = stream(&mut r, t(1), "b", 60, 1);
    assert!(out.contains(&Output::Snapshot { peer: "b".into() }), "went on in term 1 past its end: {out:?}");
    let out = stream(&mut r, t(1), "c", 0, 0);
    assert!(out.contains(&Output::Stream { peer: "c".into(), from: 1 }), "{out:?}");
    r.handle_peer_connected(t(1), "d", 7);
    r.handle_hello_reply(t(1), "d", Status::OK, &HelloReply { installing: true, ..reply(80, 4) });
    assert!(
        drain(&mut r).contains(&Output::Snapshot { peer: "d".into() }),
        "an interrupted install starts over"
    );
}

#[test]
fn a_learner_is_synced_only_with_every_write_that_may_have_been_acknowledged() {
    // Promoted with 100 records, some of which the previous primary may have acknowledged.
    let mut r = replica("s1", 100, &[(1, 1)]);
    r.handle_view(t(0), view(2, 2, "s1", &[], &["s4"]));
    drain(&mut r);
    stream(&mut r, t(1), "s4", 30, 1);
    r.handle_tick(t(1));
    let hb = drain(&mut r).into_iter().find_map(|o| match o {
        Output::Heartbeat(hb) => Some(hb),
        _ => None,
    });
    assert!(hb.unwrap().synced.is_empty(), "30 of 100 is not synced, though nothing is committed yet");
    r.handle_ack(t(2), "s4", 100, 0, 1);
    r.handle_tick(t(200));
    let hb = drain(&mut r).into_iter().find_map(|o| match o {
        Output::Heartbeat(hb) => Some(hb),
        _ => None,
    });
    assert_eq!(hb.unwrap().synced.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s4"]);
    // Reported: it is waited for on every write from now on...
    r.handle_log(105, 105);
    assert_eq!(r.committed(), 100);
    // ...even if its connection drops, until a newer view says whether it joined.
    r.handle_peer_closed(t(3), "s4");
    r.handle_log(106, 106);
    assert_eq!(r.committed(), 100);
    r.handle_view(t(4), view(3, 2, "s1", &[], &[]));
    assert_eq!(r.committed(), 106, "view 3 did not admit it: released");
}

#[test]
fn a_backup_refuses_stale_or_inconsistent_primaries_and_grants_only_its_own() {
    let mut r = replica("s2", 0, &[]);
    r.handle_view(t(0), view(4, 3, "s1", &["s2"], &[]));
    let old = Hello { view: view(3, 3, "s9", &["s2"], &[]), ..Hello::default() };
    assert_eq!(r.handle_hello(t(1), 1, "s9", &old, 0).status, Status::WRONG_SERVER);
    let liar = Hello { view: view(4, 3, "s1", &["s2"], &[]), ..Hello::default() };
    assert_eq!(r.handle_hello(t(1), 2, "s7", &liar, 0).status, Status::BAD_REQUEST);
    let big = Hello { view: view(4, 3, "s1", &["s2"], &[]), max_value_len: 1 << 20, ..Hello::default() };
    assert_eq!(r.handle_hello(t(1), 3, "s1", &big, 0).status, Status::UNSUPPORTED);
    let good = Hello { view: view(4, 3, "s1", &["s2"], &[]), ..Hello::default() };
    assert_eq!(r.handle_hello(t(1), 4, "s1", &good, 0).status, Status::OK);
    assert_eq!(r.role(), Role::Backup);
    assert!(r.accepts_records(4));
    assert!(!r.accepts_records(3));
    assert!(r.handle_beacon(t(2), 4, 5));
    // A newer view with another primary: the old stream is cut and nothing more is granted.
    r.handle_view(t(3), view(5, 5, "s3", &["s2"], &[]));
    assert!(drain(&mut r).contains(&Output::CloseConn(4)));
    assert!(!r.handle_beacon(t(4), 4, 6));
    assert!(!r.accepts_records(4));
}

#[test]
fn a_backup_that_hears_nothing_says_so() {
    let mut r = replica("s2", 0, &[]);
    r.handle_view(t(0), view(1, 1, "s1", &["s2"], &[]));
    r.handle_tick(t(100));
    r.handle_tick(t(1000));
    let flags: Vec<u8> = drain(&mut r)
        .into_iter()
        .filter_map(|o| match o {
            Output::Heartbeat(hb) => Some(hb.flags),
            _ => None,
        })
        .collect();
    assert_eq!(flags.first().map(|f| f & HB_PRIMARY_SILENT), Some(0));
    assert_eq!(flags.last().map(|f| f & HB_PRIMARY_SILENT), Some(HB_PRIMARY_SILENT));
}

#[test]
fn positions_record_new_terms_before_their_records() {
    let mut r = replica("s2", 9, &[(1, 1)]);
    let hello = Hello { view: view(3, 3, "s1", &["s2"], &[]), ..Hello::default() };
    assert_eq!(r.handle_hello(t(0), 1, "s1", &hello, 0).status, Status::OK);
    drain(&mut r);
    assert_eq!(r.handle_position(1, 10, 1), Ok(()));
    assert!(drain(&mut r).is_empty());
    assert_eq!(r.handle_position(1, 12, 3), Ok(()));
    assert!(
        matches!(drain(&mut r).as_slice(), [Output::Persist(m)] if m.terms.entries() == [(1, 1), (3, 12)])
    );
    assert!(matches!(r.handle_position(1, 13, 2), Err(ReplError::Terms(_))));
    assert_eq!(r.handle_position(2, 13, 3), Err(ReplError::NotUpstream));
}

#[test]
fn a_snapshot_replaces_the_data_and_the_history() {
    let mut r = replica("s2", 50, &[(1, 1), (2, 40)]);
    let hello = Hello { view: view(5, 4, "s1", &[], &[]), ..Hello::default() };
    assert_eq!(r.handle_hello(t(0), 1, "s1", &hello, 0).status, Status::OK);
    assert_eq!(r.role(), Role::Learner);
    drain(&mut r);
    r.handle_snapshot_begin(1, 70, &[(1, 1), (4, 45)], 99).unwrap();
    let out = drain(&mut r);
    assert!(matches!(&out[..], [Output::Persist(m), Output::Wipe] if m.installing && m.data_id == 99));
    assert!(!r.accepts_records(1));
    assert!(r.accepts_snapshot(1));
    r.handle_snapshot_end(1, 70).unwrap();
    assert!(
        matches!(drain(&mut r).as_slice(), [Output::Persist(m)] if !m.installing && m.terms.last_term() == 4)
    );
    assert!(r.accepts_records(1));
    assert_eq!(r.hello_reply(0).last_term, 4);
}
