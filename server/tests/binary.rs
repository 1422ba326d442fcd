//! The `tandem-server` binary's command line: help and refusals. (Its behaviour as a server
//! is tested from `tests/`, which also relies on `cargo test` building this binary.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tandem-server");

#[test]
fn help_explains_every_public_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in
        ["--listen", "--data", "--fsync", "--max-connections", "--idle-timeout", "--auth-token", "--insecure"]
    {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn bad_flags_exit_non_zero_with_one_clear_line() {
    let out = Command::new(BIN).args(["--fsync", "sometimes"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sometimes"));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--auth-token"])
        .arg(dir.path().join("missing-token"))
        .arg("--data")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("tandem-server: cannot read --auth-token"), "{err}");
}
