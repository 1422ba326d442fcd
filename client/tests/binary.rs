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
