//! Security by default: loopback unless told otherwise, tokens when exposed.

use harness::{temp_dir, ServerProcess};
use wire::{Command, Frame, Status};

#[test]
fn non_loopback_without_token_is_refused_at_start() {
    let dir = temp_dir();
    let data = dir.path().join("data");
    let (status, log) = match ServerProcess::try_start(&data, &["--listen", "0.0.0.0:0"]) {
        Err(failure) => failure,
        Ok(_) => panic!("an exposed server started without a token"),
    };
    assert!(status.contains("exit status: 1"), "{status}");
    assert!(log.contains("--auth-token") && log.contains("--insecure"), "{log}");
    // With explicit consent it starts.
    let server = ServerProcess::start(&data, &["--listen", "0.0.0.0:0", "--insecure"]);
    assert!(server.addr.ip().is_unspecified());
}

#[test]
fn a_token_is_required_before_anything_else() {
    let dir = temp_dir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let server =
        ServerProcess::start(&dir.path().join("data"), &["--auth-token", token_file.to_str().unwrap()]);

    let mut raw = server.raw();
    raw.send_frame(Frame::request(1, Command::PUT, b"k", b"v"));
    let reply = raw.recv().unwrap();
    assert_eq!(Frame::decode(&reply).unwrap().status(), Status::UNAUTHORIZED);
    raw.send_frame(Frame::request(2, Command::AUTH, b"", b"s3cret-token"));
    assert_eq!(Frame::decode(&raw.recv().unwrap()).unwrap().status(), Status::OK);
    raw.send_frame(Frame::request(3, Command::PUT, b"k", b"v"));
    assert_eq!(Frame::decode(&raw.recv().unwrap()).unwrap().status(), Status::OK);

    let mut wrong = server.raw();
    wrong.send_frame(Frame::request(1, Command::AUTH, b"", b"guess"));
    assert_eq!(Frame::decode(&wrong.recv().unwrap()).unwrap().status(), Status::UNAUTHORIZED);
    assert!(wrong.is_closed_by_server(), "a wrong token closes the connection");

    let mut c = server.client();
    c.auth(b"s3cret-token").unwrap();
    assert_eq!(c.get(b"k").unwrap().unwrap().data, b"v");
}

/// Regression (issue #10): AUTH with a wrong token on a connection that had already
/// authenticated answered OK and the connection stayed open.
#[test]
fn a_wrong_token_closes_an_authenticated_connection_too() {
    let dir = temp_dir();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let server =
        ServerProcess::start(&dir.path().join("data"), &["--auth-token", token_file.to_str().unwrap()]);
    let mut raw = server.raw();
    raw.send_frame(Frame::request(1, Command::AUTH, b"", b"s3cret-token"));
    assert_eq!(Frame::decode(&raw.recv().unwrap()).unwrap().status(), Status::OK);
    raw.send_frame(Frame::request(2, Command::AUTH, b"", b"guess"));
    let reply = raw.recv().unwrap();
    assert_eq!(Frame::decode(&reply).unwrap().status(), Status::UNAUTHORIZED);
    assert!(raw.is_closed_by_server(), "a wrong token closes the connection");
    // A server without a token accepts any AUTH.
    let open = ServerProcess::start(&dir.path().join("data2"), &[]);
    let mut raw = open.raw();
    raw.send_frame(Frame::request(1, Command::AUTH, b"", b"anything"));
    assert_eq!(Frame::decode(&raw.recv().unwrap()).unwrap().status(), Status::OK);
}
