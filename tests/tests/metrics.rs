//! `--metrics ADDR`: STATS in the Prometheus text format, served off the event loop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::{temp_dir, ServerProcess};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn metrics_are_served_in_the_prometheus_format_and_follow_the_counters() {
    let dir = temp_dir();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let server = ServerProcess::start(&dir.path().join("data"), &["--metrics", &addr]);
    let first = scrape(port);
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    assert!(first.contains("# TYPE tandem_ops_total counter"), "{first}");
    assert!(first.contains("tandem_info{"), "{first}");
    let mut c = server.client();
    for i in 0..25 {
        c.put(format!("k{i}").as_bytes(), b"v").unwrap();
    }
    // The snapshot is refreshed by the loop at least once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = scrape(port);
        if body.contains("tandem_ops_total{command=\"put\"} 25") && body.contains("tandem_keys 25") {
            break;
        }
        assert!(Instant::now() < deadline, "the scrape never showed the 25 PUTs:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_on_a_non_loopback_address_need_insecure() {
    let dir = temp_dir();
    let result = ServerProcess::try_start(&dir.path().join("data"), &["--metrics", "0.0.0.0:0"]);
    let Err((status, log)) = result else { panic!("started with exposed metrics") };
    assert!(!status.contains("exit status: 0"), "{status}");
    assert!(log.contains("--insecure"), "{log}");
}
