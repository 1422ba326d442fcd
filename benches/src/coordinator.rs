//! `--coordinator`: asks Tandem's view service for the current view, once, before the run,
//! and names the primary to load.
//!
//! The view service answers `GET_VIEW` datagrams over UDP (`wire::cluster`). UDP may lose a
//! request or its answer, and a cluster that is starting may not have chosen a primary yet, so
//! the request goes to every coordinator given, again and again with a growing wait, until a
//! view with a primary arrives or [`LOOKUP_BUDGET`] has passed. A failure is reported before
//! the run starts rather than as a run of connection errors.
//!
//! The run does not follow later view changes: after a failover its requests fail against the
//! old primary and are counted as errors, which is what a benchmark should show.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use wire::cluster::{self, Member, View};

/// How long the lookup keeps trying.
pub const LOOKUP_BUDGET: Duration = Duration::from_secs(5);
/// The wait for answers after the first round of requests; it doubles up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_secs(1);
/// Largest datagram accepted (a view with the most members is well under this).
const MAX_DATAGRAM: usize = 64 * 1024;

/// The primary that a coordinator named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The coordinator that answered.
    pub coordinator: SocketAddr,
    /// The view's number.
    pub view: u64,
    /// The primary.
    pub primary: Member,
}

/// Why no primary was found.
#[derive(Debug)]
pub enum LookupError {
    /// No coordinator answered with a view in time.
    NoAnswer {
        /// The coordinators asked.
        coordinators: Vec<SocketAddr>,
        /// Rounds of requests sent.
        rounds: u32,
        /// The last datagram that came back but was not a view reply, if any.
        last_bad: Option<String>,
        /// How long the lookup tried.
        waited: Duration,
    },
    /// The newest view any coordinator gave has no primary.
    NoPrimary {
        /// Who said so.
        coordinator: SocketAddr,
        /// The view's number.
        view: u64,
        /// Why the view service is waiting, as it says.
        waiting: String,
        /// How long the lookup tried.
        waited: Duration,
    },
    /// No UDP socket could be opened or polled.
    Socket(io::Error),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::NoAnswer { coordinators, rounds, last_bad, waited } => {
                let list: Vec<String> = coordinators.iter().map(ToString::to_string).collect();
                let who = if list.len() == 1 { "coordinator" } else { "coordinators" };
                write!(
                    f,
                    "no view from {who} {} in {:.1} s ({rounds} GET_VIEW requests each)",
                    list.join(", "),
                    waited.as_secs_f64()
                )?;
                match last_bad {
                    Some(why) => write!(f, "; a reply was not a view: {why}"),
                    None => f.write_str("; is a tandem-coordinator listening there (UDP)?"),
                }
            }
            LookupError::NoPrimary { coordinator, view, waiting, waited } => {
                let waiting = if waiting.is_empty() { "no reason given" } else { waiting.as_str() };
                // View 0 is the service's "no view decided yet".
                let what = if *view == 0 { "no view yet".to_string() } else { format!("view {view}") };
                write!(
                    f,
                    "coordinator {coordinator}: {what}, no primary after {:.1} s: {waiting}",
                    waited.as_secs_f64()
                )
            }
            LookupError::Socket(e) => write!(f, "cannot ask the coordinator: {e}"),
        }
    }
}

impl std::error::Error for LookupError {}

/// Asks `coordinators` for the view until one names a primary, for at most `budget`.
///
/// Of the views received in a round, the newest (highest number) with a primary wins, so that
/// a coordinator behind the others does not send the load to a former primary.
///
/// # Errors
/// [`LookupError`] when no view with a primary arrived in time.
pub fn find_primary(coordinators: &[SocketAddr], budget: Duration) -> Result<Found, LookupError> {
    let started = Instant::now();
    let deadline = started + budget;
    let mut poll = Poll::new().map_err(LookupError::Socket)?;
    // One socket per address family in the list, so IPv4 and IPv6 coordinators can be mixed.
    let mut sockets: Vec<UdpSocket> = Vec::new();
    for want_v6 in [false, true] {
        if coordinators.iter().any(|c| c.is_ipv6() == want_v6) {
            let local: SocketAddr =
                if want_v6 { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() } else { ([0, 0, 0, 0], 0).into() };
            let mut socket = UdpSocket::bind(local).map_err(LookupError::Socket)?;
            poll.registry()
                .register(&mut socket, Token(sockets.len()), Interest::READABLE)
                .map_err(LookupError::Socket)?;
            sockets.push(socket);
        }
    }
    let socket_for = |addr: &SocketAddr| usize::from(addr.is_ipv6() && sockets.len() == 2);
    // Ids of this lookup's requests: a random base, one more per round, so that a stray
    // datagram is not taken for an answer.
    let base: u64 = rand::random::<u64>() >> 1;
    let mut events = Events::with_capacity(8);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut request = Vec::new();
    let mut wait = FIRST_WAIT;
    let mut rounds = 0u32;
    let mut last_bad = None;
    // The newest view without a primary, for the error message.
    let mut no_primary: Option<(SocketAddr, View)> = None;
    loop {
        request.clear();
        cluster::encode_get_view(base + u64::from(rounds), 0, &mut request);
        rounds += 1;
        for coordinator in coordinators {
            if let Err(e) = sockets[socket_for(coordinator)].send_to(&request, *coordinator) {
                log::debug!("GET_VIEW to {coordinator}: {e}");
            }
        }
        let round_end = (Instant::now() + wait).min(deadline);
        let mut best: Option<Found> = None;
        let mut answered: Vec<SocketAddr> = Vec::new();
        while let Some(left) = round_end.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            if let Err(e) = poll.poll(&mut events, Some(left)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(LookupError::Socket(e));
                }
            }
            for socket in &sockets {
                loop {
                    let (len, from) = match socket.recv_from(&mut buf) {
                        Ok(got) => got,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // E.g. an ICMP "port unreachable" reported on the socket.
                            log::debug!("GET_VIEW reply: {e}");
                            break;
                        }
                    };
                    let (id, view) = match cluster::decode_view_reply(&buf[..len]) {
                        Ok(reply) => reply,
                        Err(e) => {
                            log::debug!("a datagram from {from} is not a view reply: {e}");
                            last_bad = Some(format!("{from}: {e}"));
                            continue;
                        }
                    };
                    if !(base..base + u64::from(rounds)).contains(&id) {
                        log::debug!("a view reply from {from} with an id that is not ours ({id})");
                        continue;
                    }
                    if !answered.contains(&from) {
                        answered.push(from);
                    }
                    match view.primary.clone() {
                        Some(primary) if best.as_ref().is_none_or(|b| view.num > b.view) => {
                            best = Some(Found { coordinator: from, view: view.num, primary });
                        }
                        Some(_) => {}
                        None if no_primary.as_ref().is_none_or(|(_, v)| view.num >= v.num) => {
                            no_primary = Some((from, view));
                        }
                        None => {}
                    }
                }
            }
            // Every coordinator has had its say: no need to wait out the round.
            if best.is_some() && coordinators.iter().all(|c| answered.contains(c)) {
                break;
            }
        }
        if let Some(found) = best {
            log::info!(
                "coordinator {}: view {}, primary {} at {}",
                found.coordinator,
                found.view,
                found.primary.id,
                found.primary.addr
            );
            return Ok(found);
        }
        if Instant::now() >= deadline {
            break;
        }
        wait = (wait * 2).min(MAX_WAIT);
    }
    let waited = started.elapsed();
    Err(match no_primary {
        Some((coordinator, view)) => {
            LookupError::NoPrimary { coordinator, view: view.num, waiting: view.waiting, waited }
        }
        None => LookupError::NoAnswer { coordinators: coordinators.to_vec(), rounds, last_bad, waited },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket as StdUdpSocket;
    use wire::cluster::GET_VIEW;
    use wire::{Frame, Status};

    /// A coordinator on a thread that answers its first `answers` requests with `view`,
    /// after ignoring the first `drop` (lost datagrams).
    fn fake(view: View, drop: usize, answers: usize) -> SocketAddr {
        let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = socket.local_addr().expect("addr");
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            for i in 0..drop + answers {
                let Ok((len, from)) = socket.recv_from(&mut buf) else { return };
                let Ok(Some((frame, _))) = Frame::decode_compact(&buf[..len]) else { continue };
                assert_eq!(frame.command, GET_VIEW);
                if i < drop {
                    continue;
                }
                let mut out = Vec::new();
                Frame::reply_to(frame.id, GET_VIEW, Status::OK, view.encode(0).as_slice())
                    .encode_compact_to(&mut out)
                    .expect("fits");
                let _ = socket.send_to(&out, from);
            }
        });
        addr
    }

    fn member(id: &str, addr: &str) -> Member {
        Member { id: id.into(), addr: addr.into(), ..Member::default() }
    }

    #[test]
    fn a_lost_request_is_retried() {
        let view = View { num: 4, primary: Some(member("s1", "127.0.0.1:7071")), ..View::default() };
        let coordinator = fake(view, 2, 1);
        let found = find_primary(&[coordinator], LOOKUP_BUDGET).expect("found");
        assert_eq!((found.coordinator, found.view, found.primary.id.as_str()), (coordinator, 4, "s1"));
    }

    #[test]
    fn the_newest_view_wins() {
        let old = View { num: 3, primary: Some(member("s1", "127.0.0.1:1")), ..View::default() };
        let new = View { num: 5, primary: Some(member("s2", "127.0.0.1:2")), ..View::default() };
        let coordinators = [fake(old, 0, 10), fake(new, 0, 10)];
        let found = find_primary(&coordinators, LOOKUP_BUDGET).expect("found");
        assert_eq!((found.view, found.primary.addr.as_str()), (5, "127.0.0.1:2"));
    }

    #[test]
    fn no_primary_and_no_answer_are_told_apart() {
        let waiting =
            View { num: 2, waiting: "waiting for s1 to acknowledge view 2".into(), ..View::default() };
        let coordinator = fake(waiting, 0, 100);
        let err = find_primary(&[coordinator], Duration::from_millis(300)).expect_err("no primary");
        let text = err.to_string();
        assert!(
            text.contains(": view 2, no primary after 0.3 s: waiting for")
                && text.contains("acknowledge view 2"),
            "{text}"
        );
        // Bound but silent: nothing answers.
        let silent = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr");
        let err = find_primary(&[addr], Duration::from_millis(300)).expect_err("silence");
        assert!(matches!(err, LookupError::NoAnswer { rounds: 2.., .. }), "{err:?}");
        assert!(err.to_string().starts_with(&format!("no view from coordinator {addr} in ")), "{err}");
    }
}
