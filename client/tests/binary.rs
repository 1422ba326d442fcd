//! The `tandem-cli` binary's command line without a server. (With a server it is tested
//! from `tests/`, which also relies on `cargo test` building this binary.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tandem-cli");

#[test]
fn help_lists_the_commands_and_modes() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "get",
        "put",
        "del",
        "append",
        "ping",
        "stats",
        "view",
        "status",
        "session",
        "--json",
        "--raw",
        "--latency",
        "--pipe",
        "--server",
        "--coordinator",
        "--timeout",
        "--framing",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(BIN).args(["get"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage errors exit 2");
}

#[test]
fn a_bad_framing_is_a_usage_error_before_connecting() {
    // Nothing listens on port 1: a usage error must come before any attempt to connect.
    for args in [
        &["--framing", "tiny", "ping"][..],
        &["ping", "--framing", ""],
        &["--framing", "COMPACT", "get", "k"],
    ] {
        let out = Command::new(BIN).args(["--server", "127.0.0.1:1"]).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().next().unwrap_or_default();
        assert!(first.contains("--framing") && first.contains("`fixed` or `compact`"), "{args:?}: {err}");
        assert!(!err.contains("cannot connect"), "{args:?}: {err}");
    }
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--framing <fixed|compact>") && help.contains("[default: fixed]"), "{help}");
}

#[test]
fn help_describes_the_prompt_and_commands_from_stdin() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for words in [
        "plus a newline, when stdout",
        "(disconnected)",
        "Tab completion",
        "`-` is not stdin at the prompt",
        "stdin not a terminal",
        "the exit code is the worst",
        "\"status\":\"BAD_REQUEST\"",
        "skipped and named on stderr with its line number",
    ] {
        assert!(help.contains(words), "--help lacks {words:?}");
    }
}
