//! `tandem-cli`: one-shot commands, an interactive prompt, latency and bulk-load modes.
//!
//! Exit codes: 0 found / OK, 1 not found, 2 error.

use std::ffi::OsString;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use client::{Client, ClientError, Op, Options};
use serde_json::{json, Value as Json};

/// Command-line client for a Tandem server.
///
/// With a command, runs it and exits: 0 = OK/found, 1 = not found, 2 = error. Without one,
/// opens an interactive prompt (type `help`).
#[derive(Debug, Parser)]
// Options are global, so they may come after the command too (`tandem-cli get KEY --json`);
// negative numbers are read as values, so `-i -1` is refused as a bad value, not as a flag.
#[command(name = "tandem-cli", version, allow_negative_numbers = true)]
struct Args {
    /// Server address.
    #[arg(
        short,
        long,
        global = true,
        default_value = "127.0.0.1:7070",
        env = "TANDEM_SERVER",
        value_name = "ADDR"
    )]
    server: String,

    /// Print results as JSON, one object per result.
    #[arg(long, global = true)]
    json: bool,

    /// Write values exactly as stored (no escaping, no newline), e.g. to redirect to a file.
    #[arg(long, global = true)]
    raw: bool,

    /// Seconds to wait for the connection and for each reply.
    #[arg(long, global = true, default_value_t = 5.0, value_name = "SECS", value_parser = seconds)]
    timeout: f64,

    /// File holding the token to AUTH with.
    #[arg(long, global = true, value_name = "FILE")]
    auth_token: Option<PathBuf>,

    /// Run the command N times (with --latency: take N samples).
    #[arg(
        short = 'r',
        long = "repeat",
        global = true,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    repeat: Option<u64>,

    /// Seconds between repetitions (default 0; with --latency 0.01).
    #[arg(short = 'i', long = "interval", global = true, value_name = "SECS", value_parser = seconds)]
    interval: Option<f64>,

    /// Measure round-trip latency with repeated PINGs until interrupted (or -r N samples),
    /// then print min/avg/max and percentiles.
    #[arg(long, global = true, conflicts_with = "pipe")]
    latency: bool,

    /// Bulk-load: read `put KEY VALUE` (also `del KEY`, `append KEY VALUE`) lines from stdin
    /// and send them pipelined.
    #[arg(long, global = true)]
    pipe: bool,

    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Clone, Subcommand)]
enum Cmd {
    /// Print the value of KEY.
    Get {
        #[arg(allow_hyphen_values = true)]
        key: OsString,
    },
    /// Set KEY to VALUE (`-` reads the value from stdin).
    #[command(alias = "set")]
    Put {
        #[arg(allow_hyphen_values = true)]
        key: OsString,
        #[arg(allow_hyphen_values = true)]
        value: OsString,
    },
    /// Delete KEY.
    #[command(alias = "delete")]
    Del {
        #[arg(allow_hyphen_values = true)]
        key: OsString,
    },
    /// Append VALUE to KEY's value (`-` reads it from stdin).
    Append {
        #[arg(allow_hyphen_values = true)]
        key: OsString,
        #[arg(allow_hyphen_values = true)]
        value: OsString,
    },
    /// Check the server answers.
    Ping,
    /// Print the server's counters.
    Stats,
}

/// What a command ended as; maps to the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok = 0,
    NotFound = 1,
    Error = 2,
}

struct Cli {
    args: Args,
    /// The `--auth-token` file's contents, read once at start.
    token: Option<Vec<u8>>,
    client: Option<Client>,
}

/// A number of seconds: finite, not negative, at most a year.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.0..=365.0 * 86400.0).contains(&secs) => Ok(secs),
        Ok(_) => Err("must be between 0 and 31536000 seconds".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn bytes(s: &OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    s.as_bytes().to_vec()
}

/// Shows bytes safely on a terminal: printable ASCII as is, the rest as escapes.
fn escape(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len());
    for &b in data {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

fn json_value(data: &[u8]) -> Json {
    match std::str::from_utf8(data) {
        Ok(text) => json!({ "value": text }),
        Err(_) => json!({ "value_hex": data.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    }
}

/// Splits an interactive or `--pipe` line into words: whitespace separates, double quotes
/// group and understand `\n \t \\ \" \xHH`, single quotes group literally.
fn split_words(line: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(&first) = chars.peek() else { return Ok(words) };
        let mut word = Vec::new();
        if first == '"' || first == '\'' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quote".into()),
                    Some(c) if c == first => break,
                    Some('\\') if first == '"' => match chars.next() {
                        Some('n') => word.push(b'\n'),
                        Some('t') => word.push(b'\t'),
                        Some('r') => word.push(b'\r'),
                        Some('x') => {
                            let hex: String = chars.by_ref().take(2).collect();
                            let b =
                                u8::from_str_radix(&hex, 16).map_err(|_| format!("bad escape \\x{hex}"))?;
                            word.push(b);
                        }
                        Some(c) => word.extend_from_slice(c.to_string().as_bytes()),
                        None => return Err("unterminated quote".into()),
                    },
                    Some(c) => word.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
        words.push(word);
    }
}

impl Cli {
    fn connect(&mut self) -> Result<&mut Client, ClientError> {
        if self.client.is_none() {
            let timeout = Duration::from_secs_f64(self.args.timeout.max(0.001));
            let options =
                Options { connect_timeout: timeout, io_timeout: Some(timeout), ..Options::default() };
            let mut client = Client::connect_with(self.args.server.as_str(), options)?;
            if let Some(token) = &self.token {
                client.auth(token)?;
            }
            self.client = Some(client);
        }
        // Just set above if it was missing.
        self.client.as_mut().ok_or(ClientError::Broken)
    }

    fn value_arg(value: &OsString) -> io::Result<Vec<u8>> {
        if value == "-" {
            let mut data = Vec::new();
            io::stdin().read_to_end(&mut data)?;
            Ok(data)
        } else {
            Ok(bytes(value))
        }
    }

    /// Runs one command and prints its result.
    fn run(&mut self, cmd: &Cmd) -> Outcome {
        match self.execute(cmd) {
            Ok(outcome) => outcome,
            Err(e) => {
                if matches!(
                    e,
                    ClientError::Broken | ClientError::Closed | ClientError::Timeout | ClientError::Io(_)
                ) {
                    self.client = None; // reconnect next time
                }
                if self.args.json {
                    println!("{}", json!({ "error": e.to_string() }));
                } else {
                    eprintln!("error: {e}");
                }
                Outcome::Error
            }
        }
    }

    fn execute(&mut self, cmd: &Cmd) -> Result<Outcome, ClientError> {
        let (json, raw) = (self.args.json, self.args.raw);
        let client = self.connect()?;
        let mut stdout = io::stdout().lock();
        let outcome = match cmd {
            Cmd::Get { key } => match client.get(&bytes(key))? {
                Some(v) => {
                    if json {
                        let mut obj = json_value(&v.data);
                        obj["found"] = json!(true);
                        obj["version"] = json!(v.version);
                        let _ = writeln!(stdout, "{obj}");
                    } else if raw {
                        let _ = stdout.write_all(&v.data);
                    } else {
                        let _ = writeln!(stdout, "{}", escape(&v.data));
                    }
                    Outcome::Ok
                }
                None => {
                    if json {
                        let _ = writeln!(stdout, "{}", json!({ "found": false }));
                    } else {
                        eprintln!("(not found)");
                    }
                    Outcome::NotFound
                }
            },
            Cmd::Put { key, value } | Cmd::Append { key, value } => {
                let data = Cli::value_arg(value).map_err(ClientError::Io)?;
                let version = if matches!(cmd, Cmd::Put { .. }) {
                    client.put(&bytes(key), &data)?
                } else {
                    client.append(&bytes(key), &data)?
                };
                if json {
                    let _ = writeln!(stdout, "{}", json!({ "status": "OK", "version": version }));
                } else {
                    let _ = writeln!(stdout, "OK (version {version})");
                }
                Outcome::Ok
            }
            Cmd::Del { key } => {
                let existed = client.delete(&bytes(key))?;
                if json {
                    let _ = writeln!(stdout, "{}", json!({ "deleted": existed }));
                } else if existed {
                    let _ = writeln!(stdout, "OK");
                } else {
                    eprintln!("(not found)");
                }
                if existed {
                    Outcome::Ok
                } else {
                    Outcome::NotFound
                }
            }
            Cmd::Ping => {
                let started = Instant::now();
                client.ping()?;
                let us = started.elapsed().as_micros();
                if json {
                    let _ = writeln!(stdout, "{}", json!({ "status": "PONG", "rtt_us": us }));
                } else {
                    let _ = writeln!(stdout, "PONG ({us} us)");
                }
                Outcome::Ok
            }
            Cmd::Stats => {
                let stats = client.stats()?;
                if json {
                    let obj: serde_json::Map<String, Json> = stats
                        .into_iter()
                        .map(|(k, v)| {
                            let v = v.parse::<u64>().map_or_else(|_| json!(v), |n| json!(n));
                            (k, v)
                        })
                        .collect();
                    let _ = writeln!(stdout, "{}", Json::Object(obj));
                } else {
                    for (k, v) in stats {
                        let _ = writeln!(stdout, "{k}:{v}");
                    }
                }
                Outcome::Ok
            }
        };
        let _ = stdout.flush();
        Ok(outcome)
    }

    fn repeat(&mut self, cmd: &Cmd) -> Outcome {
        let times = self.args.repeat.unwrap_or(1).max(1);
        let interval = Duration::from_secs_f64(self.args.interval.unwrap_or(0.0).max(0.0));
        let mut worst = Outcome::Ok;
        for i in 0..times {
            if i > 0 && !interval.is_zero() {
                std::thread::sleep(interval);
            }
            worst = worst.max(self.run(cmd));
        }
        worst
    }

    fn latency(&mut self) -> Outcome {
        let interrupted = Arc::new(AtomicBool::new(false));
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone()) {
            eprintln!("error: cannot watch for Ctrl-C: {e}");
            return Outcome::Error;
        }
        let interval = Duration::from_secs_f64(self.args.interval.unwrap_or(0.01).max(0.0));
        let limit = self.args.repeat;
        let live = limit.is_none() && io::stderr().is_terminal();
        let mut samples: Vec<u64> = Vec::new();
        let mut last_print = Instant::now();
        while limit.is_none_or(|n| (samples.len() as u64) < n) && !interrupted.load(Ordering::Relaxed) {
            let client = match self.connect() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Outcome::Error;
                }
            };
            let started = Instant::now();
            if let Err(e) = client.ping() {
                eprintln!("error: {e}");
                return Outcome::Error;
            }
            samples.push(started.elapsed().as_micros() as u64);
            if live && last_print.elapsed() >= Duration::from_secs(1) {
                eprint!("\r{}", latency_summary(&mut samples.clone()));
                last_print = Instant::now();
            }
            if !interval.is_zero() {
                std::thread::sleep(interval);
            }
        }
        if live {
            eprintln!();
        }
        if samples.is_empty() {
            eprintln!("error: no samples taken");
            return Outcome::Error;
        }
        if self.args.json {
            println!("{}", latency_json(&mut samples));
        } else {
            println!("{}", latency_summary(&mut samples));
        }
        Outcome::Ok
    }

    fn pipe(&mut self) -> Outcome {
        let stdin = io::stdin().lock();
        let mut lines: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        let mut bad_lines = 0u64;
        let (mut sent, mut ok, mut errors) = (0u64, 0u64, 0u64);
        let mut report_bad = |n: usize, why: &str| {
            bad_lines += 1;
            if bad_lines <= 10 {
                eprintln!("line {n}: {why}");
            }
        };
        let mut flush = |cli: &mut Cli, lines: &mut Vec<(usize, Vec<Vec<u8>>)>| -> Result<(), ClientError> {
            if lines.is_empty() {
                return Ok(());
            }
            let ops: Vec<Op<'_>> = lines
                .iter()
                .map(|(_, w)| match w[0].as_slice() {
                    b"del" | b"delete" => Op::Delete(&w[1]),
                    b"append" => Op::Append(&w[1], &w[2]),
                    _ => Op::Put(&w[1], &w[2]),
                })
                .collect();
            let replies = cli.connect()?.pipeline(&ops)?;
            sent += replies.len() as u64;
            for ((n, _), reply) in lines.iter().zip(&replies) {
                if reply.status.is_error() {
                    errors += 1;
                    if errors <= 10 {
                        eprintln!("line {n}: {} {}", reply.status, String::from_utf8_lossy(&reply.value));
                    }
                } else {
                    ok += 1;
                }
            }
            lines.clear();
            Ok(())
        };
        for (i, line) in stdin.split(b'\n').enumerate() {
            let n = i + 1;
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    eprintln!("error: reading stdin: {e}");
                    return Outcome::Error;
                }
            };
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let words = match split_words(text) {
                Ok(w) => w,
                Err(why) => {
                    report_bad(n, &why);
                    continue;
                }
            };
            let arity_ok = match words[0].as_slice() {
                b"put" | b"set" | b"append" => words.len() == 3,
                b"del" | b"delete" => words.len() == 2,
                _ => {
                    report_bad(n, "expected `put KEY VALUE`, `append KEY VALUE` or `del KEY`");
                    continue;
                }
            };
            if !arity_ok {
                report_bad(n, "wrong number of words (quote values that contain spaces)");
                continue;
            }
            lines.push((n, words));
            if lines.len() >= 1024 {
                if let Err(e) = flush(self, &mut lines) {
                    eprintln!("error: {e}");
                    return Outcome::Error;
                }
            }
        }
        if let Err(e) = flush(self, &mut lines) {
            eprintln!("error: {e}");
            return Outcome::Error;
        }
        if self.args.json {
            println!("{}", json!({ "sent": sent, "ok": ok, "errors": errors, "bad_lines": bad_lines }));
        } else {
            println!("sent {sent}, ok {ok}, errors {errors}, bad lines {bad_lines}");
        }
        if errors > 0 || bad_lines > 0 {
            Outcome::Error
        } else {
            Outcome::Ok
        }
    }

    fn interactive(&mut self) -> Outcome {
        let mut editor = match rustyline::DefaultEditor::new() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: cannot start the prompt: {e}");
                return Outcome::Error;
            }
        };
        let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".tandem_cli_history"));
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        let prompt = format!("tandem {}> ", self.args.server);
        let mut last = Outcome::Ok;
        loop {
            let line = match editor.readline(&prompt) {
                Ok(line) => line,
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(_) => break, // EOF (Ctrl-D) or a closed terminal
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let _ = editor.add_history_entry(line);
            let words = match split_words(line) {
                Ok(w) => w,
                Err(why) => {
                    eprintln!("error: {why}");
                    continue;
                }
            };
            let os = |w: &Vec<u8>| -> OsString {
                use std::os::unix::ffi::OsStringExt;
                OsString::from_vec(w.clone())
            };
            let cmd = match (words[0].to_ascii_lowercase().as_slice(), words.len()) {
                (b"quit" | b"exit", _) => break,
                (b"help" | b"?", _) => {
                    println!("{INTERACTIVE_HELP}");
                    continue;
                }
                (b"get", 2) => Cmd::Get { key: os(&words[1]) },
                (b"put" | b"set", 3) => Cmd::Put { key: os(&words[1]), value: os(&words[2]) },
                (b"del" | b"delete", 2) => Cmd::Del { key: os(&words[1]) },
                (b"append", 3) => Cmd::Append { key: os(&words[1]), value: os(&words[2]) },
                (b"ping", 1) => Cmd::Ping,
                (b"stats", 1) => Cmd::Stats,
                _ => {
                    eprintln!("error: unknown command or wrong number of arguments (type `help`)");
                    continue;
                }
            };
            last = self.run(&cmd);
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
        last
    }
}

const INTERACTIVE_HELP: &str = "\
commands:
  get KEY              print the value of KEY
  put KEY VALUE        set KEY (alias: set)
  del KEY              delete KEY
  append KEY VALUE     append VALUE to KEY's value
  ping                 check the server answers
  stats                print the server's counters
  help                 this text
  quit                 leave (or Ctrl-D)
Quote words with spaces: put greeting \"hello world\"; escapes in double quotes: \\n \\t \\xHH";

fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn latency_json(samples: &mut [u64]) -> Json {
    samples.sort_unstable();
    let avg = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
    json!({
        "samples": samples.len(),
        "min_us": samples[0],
        "avg_us": (avg * 10.0).round() / 10.0,
        "p50_us": percentile(samples, 0.5),
        "p90_us": percentile(samples, 0.9),
        "p99_us": percentile(samples, 0.99),
        "p999_us": percentile(samples, 0.999),
        "max_us": samples[samples.len() - 1],
    })
}

fn latency_summary(samples: &mut [u64]) -> String {
    let j = latency_json(samples);
    format!(
        "min {} us, avg {} us, max {} us, p50 {} us, p90 {} us, p99 {} us, p99.9 {} us ({} samples)",
        j["min_us"],
        j["avg_us"],
        j["max_us"],
        j["p50_us"],
        j["p90_us"],
        j["p99_us"],
        j["p999_us"],
        j["samples"]
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    let command = args.command.clone();
    if (args.latency || args.pipe) && command.is_some() {
        eprintln!("tandem-cli: --latency and --pipe take no command");
        return ExitCode::from(Outcome::Error as u8);
    }
    let token = match &args.auth_token {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => Some(bytes.trim_ascii().to_vec()),
            Err(e) => {
                eprintln!("tandem-cli: cannot read --auth-token {}: {e}", path.display());
                return ExitCode::from(Outcome::Error as u8);
            }
        },
        None => None,
    };
    let (latency, pipe) = (args.latency, args.pipe);
    let mut cli = Cli { args, token, client: None };
    let outcome = if latency {
        cli.latency()
    } else if pipe {
        cli.pipe()
    } else if let Some(cmd) = command {
        cli.repeat(&cmd)
    } else {
        cli.interactive()
    };
    ExitCode::from(outcome as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn words_split_with_quotes_and_escapes() {
        let w = split_words(r#"put "a key" 'it''s' "x\x00y\n""#).unwrap();
        assert_eq!(
            w,
            vec![b"put".to_vec(), b"a key".to_vec(), b"it".to_vec(), b"s".to_vec(), b"x\0y\n".to_vec()]
        );
        assert!(split_words("put \"open").is_err());
        assert_eq!(split_words("  ").unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn escape_keeps_text_and_shows_bytes() {
        assert_eq!(escape(b"plain text"), "plain text");
        assert_eq!(escape(b"a\0\xff\n\\"), "a\\x00\\xff\\n\\\\");
    }

    #[test]
    fn percentiles_of_sorted_samples() {
        let mut s: Vec<u64> = (1..=100).rev().collect();
        let j = latency_json(&mut s);
        assert_eq!(
            (j["min_us"].as_u64(), j["p50_us"].as_u64(), j["p99_us"].as_u64()),
            (Some(1), Some(50), Some(99))
        );
        assert_eq!(j["max_us"].as_u64(), Some(100));
    }
}
