//! `tandem-cli`: one-shot commands, an interactive prompt, latency, bulk-load and session modes,
//! against one server or, with `--coordinator`, a cluster's primary.
//!
//! Exit codes: 0 found / OK, 1 not found, 2 error.

use std::ffi::OsString;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use client::{Client, ClientError, Framing, Op, Options, Outcome, View};
use serde_json::{json, Value as Json};

/// Command-line client for a Tandem server or cluster.
///
/// With a command, runs it and exits: 0 = OK/found, 1 = not found, 2 = error. Without one,
/// opens an interactive prompt (type `help`) if stdin is a terminal, else runs the commands
/// stdin holds, one per line (see below).
#[derive(Debug, Parser)]
// Options are global, so they may come after the command too (`tandem-cli get KEY --json`);
// negative numbers are read as values, so `-i -1` is refused as a bad value, not as a flag.
#[command(name = "tandem-cli", version, allow_negative_numbers = true, after_help = AFTER_HELP)]
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

    /// Coordinator address(es), comma-separated: commands go to the primary of the cluster's
    /// current view instead of --server, and are retried across failovers until --timeout.
    #[arg(long, global = true, env = "TANDEM_COORDINATOR", value_name = "ADDR[,ADDR...]")]
    coordinator: Option<String>,

    /// Print results as JSON, one object per result.
    #[arg(long, global = true)]
    json: bool,

    /// Write values exactly as stored (no escaping, no newline), e.g. to redirect to a file.
    /// Without it a value is escaped on a terminal, and written as stored plus a newline
    /// when stdout is not a terminal.
    #[arg(long, global = true)]
    raw: bool,

    /// Milliseconds (or `500ms`, `2s`). With --coordinator: the deadline of each operation,
    /// retries included (each attempt waits at most 1 s). Otherwise: the wait for the
    /// connection and for each reply.
    #[arg(long, global = true, default_value = "5000", value_name = "MS", value_parser = millis)]
    timeout: Duration,

    /// File holding the token to AUTH with.
    #[arg(long, global = true, value_name = "FILE")]
    auth_token: Option<PathBuf>,

    /// How frames are laid out on every connection: `fixed` (4096-byte frames, the
    /// protocol's default) or `compact` (no padding: asked for with HELLO on each new
    /// connection; a server that predates HELLO keeps fixed frames). Applies to every mode,
    /// --coordinator included.
    #[arg(
        long,
        global = true,
        default_value = "fixed",
        value_name = "fixed|compact",
        value_parser = framing_arg
    )]
    framing: Framing,

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
    /// and send them pipelined. A bad line (unknown, malformed, or too large for a frame) is
    /// skipped and named on stderr with its line number; the summary counts it and the exit
    /// code is 2 if any line failed.
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
    /// Set KEY to VALUE (`-` reads the value from stdin; on the command line only).
    #[command(alias = "set")]
    Put {
        #[arg(allow_hyphen_values = true)]
        key: OsString,
        #[arg(allow_hyphen_values = true)]
        value: OsString,
    },
    /// Delete KEY (prints the version of the delete).
    #[command(alias = "delete")]
    Del {
        #[arg(allow_hyphen_values = true)]
        key: OsString,
    },
    /// Append VALUE to KEY's value (`-` reads it from stdin; on the command line only).
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
    /// Print the coordinator's current view: primary, backups, and why it waits if it does
    /// (asks --coordinator, default 127.0.0.1:7100).
    View,
    /// Print one server's own idea of its role, view and log position (asks --server).
    Status,
    /// For programs: read JSON requests from stdin, one per line, and write one JSON reply
    /// per line to stdout, in order.
    #[command(long_about = SESSION_HELP)]
    Session {
        /// The client id the session's writes carry (at-most-once execution of retries);
        /// random if not given. Reuse one only in a later session, never in two at once.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        client_id: Option<u64>,
    },
}

const AFTER_HELP: &str = "\
Output: `get` escapes a value on a terminal and writes it as stored, plus a newline, when stdout
is not a terminal (--raw: exactly as stored, no newline). `put`, `append` and `del` print
`OK (version N)`; a missing key prints `(not found)` on stderr and exits 1. With --json every
result, errors included, is one JSON object on stdout; an error the server answered carries its
status: {\"error\":\"...\",\"status\":\"BAD_REQUEST\"}, and a write whose outcome is unknown has
\"outcome\":\"unknown\". With --server, a read whose connection broke is tried once more on a new
connection; a write is not: it may have been applied, and the error says its outcome is unknown.

Without a command, on a terminal: a prompt with history (~/.tandem_cli_history), Tab completion
of command names and hints of their arguments. The prompt shows `(disconnected)` when the
connection is known to be down (say the server restarted or closed it when idle); the next
command connects again first. `-` is not stdin at the prompt: type the value (a dash: '-').

Without a command, stdin not a terminal: one command per line, as at the prompt
(`printf 'put a 1\\nget a\\n' | tandem-cli`): one result per non-empty line (with --json one
JSON object per line, errors included), no history, and the exit code is the worst of all
(2 > 1 > 0).

Cluster: with --coordinator (or TANDEM_COORDINATOR) commands go to the primary of the
coordinator's current view; `view` prints that view, `status --server ADDR` one server's own idea
of its role.

Framing: with --framing compact every connection (in every mode, cluster included) starts with
HELLO and then uses frames without padding if the server agrees; a server that predates HELLO
keeps fixed frames, silently. `status --framing compact` adds a `framing:` line (with --json a
\"framing\" field) saying which framing the connection got.

Session mode, for programs: one JSON request per line on stdin, one JSON reply per line on stdout.
  $ echo '{\"op\":\"put\",\"key\":\"k\",\"value\":\"v\"}' | tandem-cli session
  {\"outcome\":\"ok\",\"value\":null,\"version\":1}
`tandem-cli session --help` describes the fields.";

const SESSION_HELP: &str = "\
For programs: read JSON requests from stdin, one per line, and write one JSON reply per line to
stdout, in order, flushed after each. Runs until stdin ends, then exits 0.

Requests: {\"op\":\"get\"|\"put\"|\"append\"|\"delete\",\"key\":\"K\"} plus \"value\":\"V\" for put and
append, and an optional \"version\":N making a put, append or delete conditional (done only if
the key's current version is N).

Replies: {\"outcome\":\"ok\"|\"fail\"|\"unknown\",\"value\":\"V\"|null,\"version\":N,\"error\":\"...\"}
  ok       done. A get's value (null: the key is absent) and version; a write's new version; a
           delete's version (0: the key was absent).
  fail     certainly not applied: refused (e.g. a version conflict, whose version is then the
           key's current one), or it could not be done in time. Reads are never unknown.
  unknown  a write that may or may not have been applied (its deadline passed after it was
           sent); read the key to find out.
  \"error\" is there only when the outcome is not ok. A value that is not UTF-8 comes as
  lossy text plus \"value_hex\". A line that is not a valid request gets
  {\"outcome\":\"fail\",\"error\":\"...\"} and the session goes on.

The session keeps one client id (--client-id, or random) and increasing request ids, so with
--coordinator every write is retried across failovers without being applied twice; --timeout
is each request's deadline.

Example:
  $ printf '%s\\n' '{\"op\":\"put\",\"key\":\"k\",\"value\":\"v\"}' '{\"op\":\"get\",\"key\":\"k\"}' \\
      | tandem-cli --coordinator 127.0.0.1:7100 session
  {\"outcome\":\"ok\",\"value\":null,\"version\":1}
  {\"outcome\":\"ok\",\"value\":\"v\",\"version\":1}";

/// The coordinator `view` asks when none is given.
const DEFAULT_COORDINATOR: &str = "127.0.0.1:7100";

/// In cluster mode, the longest one attempt waits to connect or for a reply, so that a
/// primary that hangs is given up on and the view asked again well before the deadline.
const CLUSTER_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a command ended as; maps to the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Exit {
    Ok = 0,
    NotFound = 1,
    Error = 2,
}

struct Cli {
    args: Args,
    /// The `--auth-token` file's contents, read once at start.
    token: Option<Vec<u8>>,
    client: Option<Client>,
    /// The client's connection failed: reconnect it (keeping its client id) before next use.
    reconnect: bool,
    /// The client id to use (`session --client-id`); random if `None`.
    client_id: Option<u64>,
    /// Commands come from the prompt or from stdin lines: `-` is a value like any other then,
    /// never "read stdin".
    repl: bool,
    /// Whether stdout is a terminal: values are escaped there, written as they are elsewhere.
    stdout_tty: bool,
    /// The value `-` read from stdin, read once (`-r N` sends it N times).
    stdin_value: Option<Vec<u8>>,
}

/// A duration in milliseconds (`1500`, `1500ms`) or seconds (`1.5s`): finite, more than zero,
/// at most a year.
fn millis(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, ms_per_unit) = match t.strip_suffix("ms") {
        Some(n) => (n, 1.0),
        None => t.strip_suffix('s').map_or((t, 1.0), |n| (n, 1000.0)),
    };
    let ms = number
        .trim()
        .parse::<f64>()
        .map_err(|_| "expected milliseconds, e.g. 500, 500ms or 2s".to_string())?
        * ms_per_unit;
    if ms.is_finite() && ms > 0.0 && ms <= 365.0 * 86400.0 * 1000.0 {
        Ok(Duration::from_secs_f64(ms / 1000.0))
    } else {
        Err("must be more than 0 and at most a year".into())
    }
}

/// A `--framing` value.
fn framing_arg(text: &str) -> Result<Framing, String> {
    match text.trim() {
        "fixed" => Ok(Framing::Fixed),
        "compact" => Ok(Framing::Compact),
        _ => Err("expected `fixed` or `compact`".into()),
    }
}

/// The `--framing` word for a framing.
fn framing_name(framing: Framing) -> &'static str {
    match framing {
        Framing::Fixed => "fixed",
        Framing::Compact => "compact",
    }
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
    Ok(split_marked_words(line)?.into_iter().map(|(word, _)| word).collect())
}

/// [`split_words`], saying of each word whether it was quoted.
fn split_marked_words(line: &str) -> Result<Vec<(Vec<u8>, bool)>, String> {
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
        words.push((word, first == '"' || first == '\''));
    }
}

impl Cli {
    /// The client for data commands: the cluster's when --coordinator is given, else
    /// --server's. Made once and reconnected after failures, so it keeps one client id.
    fn connect(&mut self) -> Result<&mut Client, ClientError> {
        // A one-server connection the server closed since (a restart, its idle timeout) is
        // replaced before use rather than found out by a failed command. (A cluster client
        // connects again by itself.)
        let stale =
            self.reconnect || self.client.as_mut().is_some_and(|c| !c.is_cluster() && !c.is_connected());
        match self.client.as_mut() {
            Some(client) if stale => {
                client.reconnect()?;
                if let (Some(token), false) = (&self.token, client.is_cluster()) {
                    client.auth(token)?;
                }
                self.reconnect = false;
            }
            Some(_) => {}
            None => {
                let client = match self.args.coordinator.clone() {
                    Some(list) => {
                        let attempt = self.args.timeout.min(CLUSTER_ATTEMPT_TIMEOUT);
                        let options = Options {
                            op_timeout: self.args.timeout,
                            connect_timeout: attempt,
                            io_timeout: Some(attempt),
                            client_id: self.client_id,
                            framing: self.args.framing,
                            ..Options::default()
                        };
                        let mut client = Client::connect_cluster(&resolve_all(&list)?, options)?;
                        if let Some(token) = &self.token {
                            client.auth(token)?;
                        }
                        client
                    }
                    None => self.connect_server()?,
                };
                self.client = Some(client);
            }
        }
        // Just set above if it was missing.
        self.client.as_mut().ok_or(ClientError::Broken)
    }

    /// A client for the one server --server names, authenticated if a token was given.
    fn connect_server(&self) -> Result<Client, ClientError> {
        let timeout = self.args.timeout;
        let options = Options {
            connect_timeout: timeout,
            io_timeout: Some(timeout),
            client_id: self.client_id,
            framing: self.args.framing,
            ..Options::default()
        };
        let mut client = Client::connect_with(self.args.server.as_str(), options)?;
        if let Some(token) = &self.token {
            client.auth(token)?;
        }
        Ok(client)
    }

    /// Notes a failure that leaves a one-server connection unusable.
    fn note_failure(&mut self, e: &ClientError) {
        if matches!(e, ClientError::Broken | ClientError::Closed | ClientError::Timeout | ClientError::Io(_))
        {
            self.reconnect = true;
        }
    }

    /// Whether a put's or append's value is `-`, to be read from stdin: on the command line
    /// only, never at the prompt or in commands read from stdin.
    fn reads_stdin(&self, value: &OsString) -> bool {
        !self.repl && value == "-"
    }

    /// The bytes of a put's or append's value (stdin's, read by [`Cli::run`], for `-`).
    fn value_arg(&self, value: &OsString) -> Vec<u8> {
        match &self.stdin_value {
            Some(data) if self.reads_stdin(value) => data.clone(),
            _ => bytes(value),
        }
    }

    /// Runs one command and prints its result.
    fn run(&mut self, cmd: &Cmd) -> Exit {
        if let Cmd::Put { value, .. } | Cmd::Append { value, .. } = cmd {
            if self.reads_stdin(value) && self.stdin_value.is_none() {
                let mut data = Vec::new();
                if let Err(e) = io::stdin().read_to_end(&mut data) {
                    self.print_error(&format!("reading the value from stdin: {e}"), None, false);
                    return Exit::Error;
                }
                self.stdin_value = Some(data);
            }
        }
        let mut result = self.execute(cmd);
        if let Err(e) = &result {
            self.note_failure(e);
            // The connection broke under a read (the server restarted or closed it just
            // before): a read has no effect, so it is tried once more on a new connection.
            // A write is not: it may have been applied.
            let broken = matches!(e, ClientError::Closed | ClientError::Io(_) | ClientError::Broken);
            if broken && cmd.is_read() && self.args.coordinator.is_none() {
                result = self.execute(cmd);
                if let Err(e) = &result {
                    self.note_failure(e);
                }
            }
        }
        match result {
            Ok(exit) => exit,
            Err(e) => {
                // A write sent and not answered may or may not have been applied.
                let unknown = cmd.is_write() && e.outcome() == Outcome::Unknown;
                let message = if unknown && !matches!(e, ClientError::Unknown { .. }) {
                    format!("outcome unknown, the write may or may not have been applied: {e}")
                } else {
                    e.to_string()
                };
                self.print_error(&message, error_status(&e), unknown);
                Exit::Error
            }
        }
    }

    /// One error line: on stderr, or with --json an object on stdout with the server's status
    /// when it gave one, and `"outcome":"unknown"` for a write that may have been applied.
    fn print_error(&self, message: &str, status: Option<String>, unknown: bool) {
        if self.args.json {
            let mut obj = json!({ "error": message });
            if let Some(status) = status {
                obj["status"] = json!(status);
            }
            if unknown {
                obj["outcome"] = json!("unknown");
            }
            println!("{obj}");
            let _ = io::stdout().flush();
        } else {
            eprintln!("error: {message}");
        }
    }

    fn execute(&mut self, cmd: &Cmd) -> Result<Exit, ClientError> {
        match cmd {
            Cmd::View => return self.view(),
            Cmd::Status => return self.status(),
            _ => {}
        }
        let (json, raw, escaped) = (self.args.json, self.args.raw, self.stdout_tty);
        let value = match cmd {
            Cmd::Put { value, .. } | Cmd::Append { value, .. } => self.value_arg(value),
            _ => Vec::new(),
        };
        let client = self.connect()?;
        let mut stdout = io::stdout().lock();
        let exit = match cmd {
            Cmd::Get { key } => match client.get(&bytes(key))? {
                Some(v) => {
                    if json {
                        let mut obj = json_value(&v.data);
                        obj["found"] = json!(true);
                        obj["version"] = json!(v.version);
                        let _ = writeln!(stdout, "{obj}");
                    } else if raw {
                        let _ = stdout.write_all(&v.data);
                    } else if escaped {
                        let _ = writeln!(stdout, "{}", escape(&v.data));
                    } else {
                        // Not a terminal: the bytes as stored, as redis-cli does.
                        let _ = stdout.write_all(&v.data);
                        let _ = stdout.write_all(b"\n");
                    }
                    Exit::Ok
                }
                None => {
                    if json {
                        let _ = writeln!(stdout, "{}", json!({ "found": false }));
                    } else {
                        eprintln!("(not found)");
                    }
                    Exit::NotFound
                }
            },
            Cmd::Put { key, .. } | Cmd::Append { key, .. } => {
                let version = if matches!(cmd, Cmd::Put { .. }) {
                    client.put(&bytes(key), &value)?
                } else {
                    client.append(&bytes(key), &value)?
                };
                if json {
                    let _ = writeln!(stdout, "{}", json!({ "status": "OK", "version": version }));
                } else {
                    let _ = writeln!(stdout, "OK (version {version})");
                }
                Exit::Ok
            }
            Cmd::Del { key } => {
                let deleted = client.delete_if(&bytes(key), 0)?;
                if json {
                    let version = deleted.unwrap_or(0);
                    let _ =
                        writeln!(stdout, "{}", json!({ "deleted": deleted.is_some(), "version": version }));
                } else if let Some(version) = deleted {
                    let _ = writeln!(stdout, "OK (version {version})");
                } else {
                    eprintln!("(not found)");
                }
                if deleted.is_some() {
                    Exit::Ok
                } else {
                    Exit::NotFound
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
                Exit::Ok
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
                Exit::Ok
            }
            // Dispatched before connecting.
            Cmd::View | Cmd::Status | Cmd::Session { .. } => Exit::Error,
        };
        let _ = stdout.flush();
        Ok(exit)
    }

    /// `view`: the coordinator's current view.
    fn view(&mut self) -> Result<Exit, ClientError> {
        let list = self.args.coordinator.as_deref().unwrap_or(DEFAULT_COORDINATOR);
        let view = client::fetch_view(&resolve_all(list)?, self.args.timeout)?;
        if self.args.json {
            println!("{}", view_json(&view));
        } else {
            print!("{}", view_text(&view));
        }
        let _ = io::stdout().flush();
        Ok(Exit::Ok)
    }

    /// `status`: what one server says about itself in its STATS.
    fn status(&mut self) -> Result<Exit, ClientError> {
        let mut client = self.connect_server()?;
        let mut status = ServerStatus::from_stats(&self.args.server, &client.stats()?);
        // Asked for compact framing: say whether this server agreed.
        if self.args.framing != Framing::Fixed {
            status.framing = Some(client.framing());
        }
        if self.args.json {
            println!("{}", status.json());
        } else {
            print!("{}", status.text());
        }
        let _ = io::stdout().flush();
        Ok(Exit::Ok)
    }

    /// `session`: JSON requests in, JSON replies out, until stdin ends.
    fn session(&mut self) -> Exit {
        let mut stdout = io::stdout().lock();
        for line in io::stdin().lock().split(b'\n') {
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    eprintln!("error: reading stdin: {e}");
                    return Exit::Error;
                }
            };
            let reply = self.session_request(&line);
            if let Err(e) = writeln!(stdout, "{reply}").and_then(|()| stdout.flush()) {
                eprintln!("error: writing stdout: {e}");
                return Exit::Error;
            }
        }
        Exit::Ok
    }

    /// Executes one session line and returns its reply line.
    fn session_request(&mut self, line: &[u8]) -> String {
        let request = match std::str::from_utf8(line) {
            Ok(text) => SessionRequest::parse(text.trim_end_matches('\r')),
            Err(_) => Err("the line is not UTF-8".into()),
        };
        let request = match request {
            Ok(request) => request,
            Err(why) => return format!("{{\"outcome\":\"fail\",\"error\":{}}}", Json::from(why)),
        };
        let result = self.connect().and_then(|client| request.execute(client));
        match result {
            Ok((value, version)) => session_reply("ok", value.as_deref(), version, None),
            Err(e) => {
                self.note_failure(&e);
                // A read has no effect, so whatever went wrong it certainly did nothing.
                let unknown = request.op != SessionOp::Get && e.outcome() == Outcome::Unknown;
                let version = if let ClientError::Conflict { current } = e { current } else { 0 };
                session_reply(if unknown { "unknown" } else { "fail" }, None, version, Some(&e.to_string()))
            }
        }
    }

    fn repeat(&mut self, cmd: &Cmd) -> Exit {
        let times = self.args.repeat.unwrap_or(1).max(1);
        let interval = Duration::from_secs_f64(self.args.interval.unwrap_or(0.0).max(0.0));
        let mut worst = Exit::Ok;
        for i in 0..times {
            if i > 0 && !interval.is_zero() {
                std::thread::sleep(interval);
            }
            worst = worst.max(self.run(cmd));
        }
        worst
    }

    fn latency(&mut self) -> Exit {
        let interrupted = Arc::new(AtomicBool::new(false));
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone()) {
            eprintln!("error: cannot watch for Ctrl-C: {e}");
            return Exit::Error;
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
                    return Exit::Error;
                }
            };
            let started = Instant::now();
            if let Err(e) = client.ping() {
                eprintln!("error: {e}");
                return Exit::Error;
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
            return Exit::Error;
        }
        if self.args.json {
            println!("{}", latency_json(&mut samples));
        } else {
            println!("{}", latency_summary(&mut samples));
        }
        Exit::Ok
    }

    fn pipe(&mut self) -> Exit {
        let stdin = io::stdin().lock();
        let mut lines: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        let mut bad_lines = 0u64;
        let (mut sent, mut ok, mut errors) = (0u64, 0u64, 0u64);
        let mut report_bad = |n: usize, why: &str| {
            bad_lines += 1;
            if bad_lines <= PIPE_SHOWN {
                eprintln!("line {n}: {why}");
            }
        };
        let mut flush = |cli: &mut Cli, lines: &mut Vec<(usize, Vec<Vec<u8>>)>| -> Result<(), ClientError> {
            if lines.is_empty() {
                return Ok(());
            }
            let ops: Vec<Op<'_>> = lines.iter().map(|(_, w)| pipe_op(w)).collect();
            let replies = cli.connect()?.pipeline(&ops)?;
            sent += replies.len() as u64;
            for ((n, _), reply) in lines.iter().zip(&replies) {
                if reply.status.is_error() {
                    errors += 1;
                    if errors <= PIPE_SHOWN {
                        eprintln!("line {n}: {} {}", reply.status, String::from_utf8_lossy(&reply.value));
                    }
                } else {
                    ok += 1;
                }
            }
            lines.clear();
            Ok(())
        };
        let (mut fatal, mut read_failed) = (None, false);
        for (i, line) in stdin.split(b'\n').enumerate() {
            let n = i + 1;
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    eprintln!("error: reading stdin: {e}");
                    read_failed = true;
                    break;
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
            // One that cannot be sent (too large for a frame) is a bad line: the batch
            // would refuse it and every line with it.
            if let Err(e) = pipe_op(&words).check() {
                report_bad(n, &e.to_string());
                continue;
            }
            lines.push((n, words));
            if lines.len() >= 1024 {
                let first = lines[0].0;
                if let Err(e) = flush(self, &mut lines) {
                    fatal = Some(format!("{e} (lines from {first} on may or may not have been written)"));
                    break;
                }
            }
        }
        // The last lines (also those read before stdin failed), unless a batch failed.
        if fatal.is_none() {
            let first = lines.first().map_or(0, |(n, _)| *n);
            if let Err(e) = flush(self, &mut lines) {
                fatal = Some(format!("{e} (lines from {first} on may or may not have been written)"));
            }
        }
        for (count, what) in [(bad_lines, "bad lines"), (errors, "errors")] {
            if count > PIPE_SHOWN {
                eprintln!("({} more {what} not shown)", count - PIPE_SHOWN);
            }
        }
        if let Some(e) = &fatal {
            eprintln!("error: {e}");
        }
        if self.args.json {
            println!("{}", json!({ "sent": sent, "ok": ok, "errors": errors, "bad_lines": bad_lines }));
        } else {
            println!("sent {sent}, ok {ok}, errors {errors}, bad lines {bad_lines}");
        }
        if errors > 0 || bad_lines > 0 || fatal.is_some() || read_failed {
            Exit::Error
        } else {
            Exit::Ok
        }
    }

    /// Without a command: the prompt on a terminal, else the commands stdin holds.
    fn interactive(&mut self) -> Exit {
        self.repl = true;
        if io::stdin().is_terminal() {
            self.prompt_loop()
        } else {
            self.stdin_commands()
        }
    }

    /// Commands read from stdin (not a terminal), one per line: one result per line (with
    /// --json one object, errors included), no history, the worst outcome as exit code.
    fn stdin_commands(&mut self) -> Exit {
        let mut worst = Exit::Ok;
        for line in io::stdin().lock().split(b'\n') {
            let step = match line {
                Ok(line) => match std::str::from_utf8(&line) {
                    Ok(text) => self.repl_line(text),
                    Err(_) => Step::Ran(
                        self.usage_error("the line is not UTF-8 (write bytes as \\xHH in double quotes)"),
                    ),
                },
                Err(e) => {
                    eprintln!("error: reading stdin: {e}");
                    return Exit::Error;
                }
            };
            match step {
                Step::Quit => break,
                Step::Skip => {}
                Step::Ran(exit) => worst = worst.max(exit),
            }
        }
        worst
    }

    /// The interactive prompt, with history, completion and hints; the prompt says when the
    /// connection is known to be down.
    fn prompt_loop(&mut self) -> Exit {
        let mut editor = match rustyline::Editor::<ReplHelper, rustyline::history::DefaultHistory>::new() {
            Ok(e) => e,
            Err(e) => {
                eprintln!("error: cannot start the prompt: {e}");
                return Exit::Error;
            }
        };
        editor.set_helper(Some(ReplHelper));
        let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".tandem_cli_history"));
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        // Connect now, so the first prompt tells the truth.
        if let Err(e) = self.connect() {
            self.note_failure(&e);
            eprintln!("not connected: {e} (the next command tries again)");
        }
        let target = self.args.coordinator.clone().unwrap_or_else(|| self.args.server.clone());
        let mut last = Exit::Ok;
        loop {
            let connected = !self.reconnect && self.client.as_mut().is_some_and(Client::is_connected);
            let line = match editor.readline(&prompt(&target, connected)) {
                Ok(line) => line,
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(rustyline::error::ReadlineError::Eof) => break,
                Err(e) => {
                    eprintln!("error: reading the prompt: {e}");
                    last = Exit::Error;
                    break;
                }
            };
            if !line.trim().is_empty() {
                let _ = editor.add_history_entry(line.trim());
            }
            match self.repl_line(&line) {
                Step::Quit => break,
                Step::Skip => {}
                Step::Ran(exit) => last = exit,
            }
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
        last
    }

    /// Executes one line typed at the prompt or read from stdin.
    fn repl_line(&mut self, line: &str) -> Step {
        let line = line.trim();
        if line.is_empty() {
            return Step::Skip;
        }
        let parsed = split_marked_words(line).and_then(|words| parse_repl(&words));
        match parsed {
            Ok(ReplAction::Quit) => Step::Quit,
            Ok(ReplAction::Help) => {
                if self.args.json {
                    println!("{}", json!({ "help": INTERACTIVE_HELP }));
                } else {
                    println!("{INTERACTIVE_HELP}");
                }
                let _ = io::stdout().flush();
                Step::Ran(Exit::Ok)
            }
            Ok(ReplAction::Run(cmd)) => Step::Ran(self.run(&cmd)),
            Err(why) => Step::Ran(self.usage_error(&why)),
        }
    }

    /// A line that is not a command: said like any other error, and an error outcome.
    fn usage_error(&self, why: &str) -> Exit {
        self.print_error(why, None, false);
        Exit::Error
    }
}

/// Most bad lines, and most refused lines, `--pipe` names one by one on stderr.
const PIPE_SHOWN: u64 = 10;

/// The op of a checked `--pipe` line.
fn pipe_op(words: &[Vec<u8>]) -> Op<'_> {
    match words[0].as_slice() {
        b"del" | b"delete" => Op::Delete(&words[1]),
        b"append" => Op::Append(&words[1], &words[2]),
        _ => Op::Put(&words[1], &words[2]),
    }
}

/// What one line at the prompt (or from stdin) came to.
enum Step {
    /// `quit`, `exit`.
    Quit,
    /// An empty line.
    Skip,
    /// Something was done, with this outcome.
    Ran(Exit),
}

/// What a line at the prompt asks for.
#[derive(Debug)]
enum ReplAction {
    Quit,
    Help,
    Run(Cmd),
}

/// The commands at the prompt and their arguments, for parsing, Tab completion and hints.
const REPL_COMMANDS: &[(&str, &[&str])] = &[
    ("get", &["KEY"]),
    ("put", &["KEY", "VALUE"]),
    ("set", &["KEY", "VALUE"]),
    ("del", &["KEY"]),
    ("delete", &["KEY"]),
    ("append", &["KEY", "VALUE"]),
    ("ping", &[]),
    ("stats", &[]),
    ("view", &[]),
    ("status", &[]),
    ("help", &[]),
    ("quit", &[]),
    ("exit", &[]),
];

/// Parses the words of a line typed at the prompt (each with whether it was quoted).
fn parse_repl(words: &[(Vec<u8>, bool)]) -> Result<ReplAction, String> {
    let os = |i: usize| -> OsString {
        use std::os::unix::ffi::OsStringExt;
        OsString::from_vec(words[i].0.clone())
    };
    let Some((name, _)) = words.first() else { return Err("empty line".into()) };
    let name = name.to_ascii_lowercase();
    let takes_value = matches!(name.as_slice(), b"put" | b"set" | b"append");
    if takes_value && words.len() == 3 && words[2] == (b"-".to_vec(), false) {
        return Err("`-` reads the value from stdin only on the command line (`tandem-cli put KEY -`); \
                    here, type the value (a literal dash: '-')"
            .into());
    }
    Ok(match (name.as_slice(), words.len()) {
        (b"quit" | b"exit", _) => ReplAction::Quit,
        (b"help" | b"?", _) => ReplAction::Help,
        (b"get", 2) => ReplAction::Run(Cmd::Get { key: os(1) }),
        (b"put" | b"set", 3) => ReplAction::Run(Cmd::Put { key: os(1), value: os(2) }),
        (b"del" | b"delete", 2) => ReplAction::Run(Cmd::Del { key: os(1) }),
        (b"append", 3) => ReplAction::Run(Cmd::Append { key: os(1), value: os(2) }),
        (b"ping", 1) => ReplAction::Run(Cmd::Ping),
        (b"stats", 1) => ReplAction::Run(Cmd::Stats),
        (b"view", 1) => ReplAction::Run(Cmd::View),
        (b"status", 1) => ReplAction::Run(Cmd::Status),
        _ => {
            let usage = REPL_COMMANDS.iter().find(|(n, _)| n.as_bytes() == name.as_slice());
            return Err(match usage {
                Some((n, args)) => format!("usage: {}", [&[*n], *args].concat().join(" ")),
                None => "unknown command (type `help`)".into(),
            });
        }
    })
}

/// The prompt: the address, and whether the connection is known to be down.
fn prompt(target: &str, connected: bool) -> String {
    if connected {
        format!("tandem {target}> ")
    } else {
        format!("tandem {target} (disconnected)> ")
    }
}

/// The command names that complete the word under the cursor, if it is the first word, and
/// where that word starts.
fn complete_command(line: &str, pos: usize) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before.len() - before.trim_start().len();
    let word = &before[start..];
    if word.contains(char::is_whitespace) {
        return (pos, Vec::new());
    }
    let word = word.to_ascii_lowercase();
    let names =
        REPL_COMMANDS.iter().filter(|(name, _)| name.starts_with(&word)).map(|(name, _)| format!("{name} "));
    (start, names.collect())
}

/// The hint shown after the cursor at the end of the line: the arguments still to type, or
/// the rest of the only command name that begins what was typed. `true`: the hint is text
/// that the right arrow may insert (a command name), not a placeholder.
fn hint_for(line: &str, pos: usize) -> Option<(String, bool)> {
    if pos < line.len() {
        return None;
    }
    let words = split_words(line).ok()?;
    let first = String::from_utf8_lossy(words.first()?).to_ascii_lowercase();
    let ended = line.ends_with(char::is_whitespace);
    let known = REPL_COMMANDS.iter().find(|(name, _)| *name == first);
    let Some((_, args)) = known else {
        if words.len() > 1 || ended {
            return None;
        }
        let mut matching = REPL_COMMANDS.iter().filter(|(name, _)| name.starts_with(&first));
        let (name, _) = matching.next()?;
        return matching.next().is_none().then(|| (name[first.len()..].to_string(), true));
    };
    let rest = args.get(words.len() - 1..).filter(|rest| !rest.is_empty())?.join(" ");
    Some((if ended { rest } else { format!(" {rest}") }, false))
}

/// A hint at the prompt.
struct ReplHint {
    text: String,
    insertable: bool,
}

impl rustyline::hint::Hint for ReplHint {
    fn display(&self) -> &str {
        &self.text
    }

    fn completion(&self) -> Option<&str> {
        self.insertable.then_some(self.text.as_str())
    }
}

/// Tab completion of command names and hints of their arguments at the prompt.
struct ReplHelper;

impl rustyline::completion::Completer for ReplHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(complete_command(line, pos))
    }
}

impl rustyline::hint::Hinter for ReplHelper {
    type Hint = ReplHint;

    fn hint(&self, line: &str, pos: usize, _ctx: &rustyline::Context<'_>) -> Option<ReplHint> {
        hint_for(line, pos).map(|(text, insertable)| ReplHint { text, insertable })
    }
}

impl rustyline::highlight::Highlighter for ReplHelper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> std::borrow::Cow<'h, str> {
        // Dim, so that it does not look typed.
        std::borrow::Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
    }
}

impl rustyline::validate::Validator for ReplHelper {}

impl rustyline::Helper for ReplHelper {}

const INTERACTIVE_HELP: &str = "\
commands:
  get KEY              print the value of KEY
  put KEY VALUE        set KEY (alias: set)
  del KEY              delete KEY
  append KEY VALUE     append VALUE to KEY's value
  ping                 check the server answers
  stats                print the server's counters
  view                 print the coordinator's current view
  status               print the --server's own role, view and log position
  help                 this text
  quit                 leave (or Ctrl-D)
Quote words with spaces: put greeting \"hello world\"; escapes in double quotes: \\n \\t \\xHH.
`-` is not stdin here: type the value (a literal dash: '-'). Tab completes command names.";

impl Cmd {
    /// Whether it only reads (so it can be tried again without any risk).
    fn is_read(&self) -> bool {
        matches!(self, Cmd::Get { .. } | Cmd::Ping | Cmd::Stats)
    }

    /// Whether it writes (so a failure after sending it leaves its outcome unknown).
    fn is_write(&self) -> bool {
        matches!(self, Cmd::Put { .. } | Cmd::Append { .. } | Cmd::Del { .. })
    }
}

/// The name of the status a server refused a request with, if it did.
fn error_status(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Server { status, .. } => Some(status.to_string()),
        ClientError::Conflict { .. } => Some(wire::Status::CONFLICT.to_string()),
        _ => None,
    }
}

/// Every address of a comma-separated list of `host:port`s.
fn resolve_all(list: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let mut addrs = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let found =
            name.to_socket_addrs().map_err(|source| ClientError::Connect { addr: name.into(), source })?;
        addrs.extend(found);
    }
    if addrs.is_empty() {
        let source = io::Error::new(io::ErrorKind::InvalidInput, "no address given");
        return Err(ClientError::Connect { addr: list.into(), source });
    }
    Ok(addrs)
}

/// A JSON string (escaped, quoted). The replies of `view`, `status` and `session` are written
/// by hand because their keys must come in a fixed order, which `serde_json`'s map does not
/// keep.
fn quoted(text: &str) -> String {
    Json::from(text).to_string()
}

fn member_json(m: &client::Member) -> String {
    format!("{{\"id\":{},\"addr\":{}}}", quoted(&m.id), quoted(&m.addr))
}

fn view_json(view: &View) -> String {
    let primary = view.primary.as_ref().map_or("null".to_string(), member_json);
    let backups: Vec<String> = view.backups.iter().map(member_json).collect();
    let waiting = if view.waiting.is_empty() { "null".to_string() } else { quoted(&view.waiting) };
    format!(
        "{{\"view\":{},\"primary\":{primary},\"backups\":[{}],\"waiting\":{waiting}}}",
        view.num,
        backups.join(",")
    )
}

fn view_text(view: &View) -> String {
    let member = |m: &client::Member| format!("{}@{}", m.id, m.addr);
    let mut text = if view.num == 0 {
        "view 0 (none decided yet)\n".to_string()
    } else {
        format!("view {} (term {})\n", view.num, view.term)
    };
    text += &format!("primary: {}\n", view.primary.as_ref().map_or("none".to_string(), member));
    let backups: Vec<String> = view.backups.iter().map(member).collect();
    text +=
        &format!("backups: {}\n", if backups.is_empty() { "none".to_string() } else { backups.join(", ") });
    if !view.waiting.is_empty() {
        text += &format!("waiting: {}\n", view.waiting);
    }
    text
}

/// A server's own account of its place in the cluster, from its STATS lines.
#[derive(Debug, PartialEq, Eq)]
struct ServerStatus {
    server: String,
    /// `None` for a standalone server.
    id: Option<String>,
    role: String,
    view: u64,
    term: u64,
    last_lsn: u64,
    committed_lsn: u64,
    serving: bool,
    lease_left_ms: Option<u64>,
    coordinator_waiting: String,
    /// The framing the connection got, shown only when `--framing compact` asked for one.
    framing: Option<Framing>,
}

impl ServerStatus {
    fn from_stats(server: &str, stats: &[(String, String)]) -> ServerStatus {
        let get = |name: &str| stats.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim());
        let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        let cluster = get("cluster") == Some("1");
        let last_lsn = number("last_lsn").unwrap_or(0);
        ServerStatus {
            server: server.to_string(),
            id: get("server_id").filter(|id| cluster && !id.is_empty()).map(str::to_string),
            role: get("role").filter(|r| !r.is_empty()).unwrap_or("standalone").to_string(),
            view: number("view").unwrap_or(0),
            term: number("term").unwrap_or(0),
            last_lsn,
            // Alone, a server has no one to wait for: all it holds is committed.
            committed_lsn: number("committed_lsn").unwrap_or(if cluster { 0 } else { last_lsn }),
            serving: get("serving").map_or(!cluster, |v| v == "1"),
            lease_left_ms: number("lease_left_ms"),
            coordinator_waiting: get("coordinator_waiting").unwrap_or("").to_string(),
            framing: None,
        }
    }

    fn json(&self) -> String {
        let framing =
            self.framing.map_or(String::new(), |f| format!(",\"framing\":{}", quoted(framing_name(f))));
        format!(
            "{{\"server\":{},\"id\":{},\"role\":{},\"view\":{},\"term\":{},\"last_lsn\":{},\"committed_lsn\":{},\"serving\":{}{framing}}}",
            quoted(&self.server),
            self.id.as_deref().map_or("null".to_string(), quoted),
            quoted(&self.role),
            self.view,
            self.term,
            self.last_lsn,
            self.committed_lsn,
            self.serving
        )
    }

    fn text(&self) -> String {
        let mut text = format!("server: {}\n", self.server);
        if let Some(id) = &self.id {
            text += &format!("id: {id}\n");
        }
        text += &format!("role: {}\n", self.role);
        if self.id.is_some() {
            text += &format!("view: {} (term {})\n", self.view, self.term);
        }
        text += &format!("log: last_lsn {}, committed_lsn {}\n", self.last_lsn, self.committed_lsn);
        text += &format!("serving: {}\n", if self.serving { "yes" } else { "no" });
        if let Some(ms) = self.lease_left_ms {
            text += &format!("lease_left_ms: {ms}\n");
        }
        if !self.coordinator_waiting.is_empty() {
            text += &format!("coordinator_waiting: {}\n", self.coordinator_waiting);
        }
        if let Some(framing) = self.framing {
            text += &format!("framing: {}\n", framing_name(framing));
        }
        text
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionOp {
    Get,
    Put,
    Append,
    Delete,
}

/// One `session` request line.
#[derive(Debug, PartialEq, Eq)]
struct SessionRequest {
    op: SessionOp,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Expected version of a conditional write; 0 = unconditional.
    version: u64,
}

impl SessionRequest {
    /// Parses and checks a line; the error says what is wrong with it.
    fn parse(line: &str) -> Result<SessionRequest, String> {
        let json: Json = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let Json::Object(fields) = json else { return Err("a request is a JSON object".into()) };
        // A misspelt field (say "verison") must not silently make a conditional write blind.
        if let Some(unknown) =
            fields.keys().find(|k| !matches!(k.as_str(), "op" | "key" | "value" | "version"))
        {
            return Err(format!("unknown field {}", quoted(unknown)));
        }
        let text = |name: &str| match fields.get(name) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("\"{name}\" must be a string")),
        };
        let op = match text("op")? {
            Some("get") => SessionOp::Get,
            Some("put") => SessionOp::Put,
            Some("append") => SessionOp::Append,
            Some("delete") => SessionOp::Delete,
            Some(other) => return Err(format!("unknown op {}: get, put, append or delete", quoted(other))),
            None => return Err("\"op\" is missing".into()),
        };
        let key = text("key")?.filter(|k| !k.is_empty()).ok_or("\"key\" is missing or empty")?;
        let value = text("value")?;
        let takes_value = matches!(op, SessionOp::Put | SessionOp::Append);
        if takes_value && value.is_none() {
            return Err("\"value\" is missing".into());
        }
        if !takes_value && value.is_some() {
            return Err("only put and append take a \"value\"".into());
        }
        let version = match fields.get("version") {
            None => 0,
            Some(_) if op == SessionOp::Get => return Err("get takes no \"version\"".into()),
            Some(v) => v.as_u64().ok_or("\"version\" must be a whole number from 0")?,
        };
        Ok(SessionRequest {
            op,
            key: key.as_bytes().to_vec(),
            value: value.unwrap_or("").as_bytes().to_vec(),
            version,
        })
    }

    /// Runs it: the value read (gets) and the version read or written (0 when none).
    fn execute(&self, client: &mut Client) -> Result<(Option<Vec<u8>>, u64), ClientError> {
        let (key, value, version) = (&self.key[..], &self.value[..], self.version);
        Ok(match self.op {
            SessionOp::Get => client.get(key)?.map_or((None, 0), |v| (Some(v.data), v.version)),
            SessionOp::Put => (None, client.put_if(key, value, version)?),
            SessionOp::Append => (None, client.append_if(key, value, version)?),
            SessionOp::Delete => (None, client.delete_if(key, version)?.unwrap_or(0)),
        })
    }
}

/// One `session` reply line, keys in the documented order.
fn session_reply(outcome: &str, value: Option<&[u8]>, version: u64, error: Option<&str>) -> String {
    let mut line = format!("{{\"outcome\":{}", quoted(outcome));
    match value.map(|v| (v, std::str::from_utf8(v))) {
        None => line += ",\"value\":null",
        Some((_, Ok(text))) => line += &format!(",\"value\":{}", quoted(text)),
        Some((bytes, Err(_))) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            line +=
                &format!(",\"value\":{},\"value_hex\":\"{hex}\"", quoted(&String::from_utf8_lossy(bytes)));
        }
    }
    line += &format!(",\"version\":{version}");
    if let Some(error) = error {
        line += &format!(",\"error\":{}", quoted(error));
    }
    line.push('}');
    line
}

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
    let mut args = Args::parse();
    // An empty TANDEM_COORDINATOR means "not a cluster", as if it were unset.
    args.coordinator = args.coordinator.filter(|list| !list.trim().is_empty());
    let command = args.command.clone();
    if (args.latency || args.pipe) && command.is_some() {
        eprintln!("tandem-cli: --latency and --pipe take no command");
        return ExitCode::from(Exit::Error as u8);
    }
    let token = match &args.auth_token {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => Some(bytes.trim_ascii().to_vec()),
            Err(e) => {
                eprintln!("tandem-cli: cannot read --auth-token {}: {e}", path.display());
                return ExitCode::from(Exit::Error as u8);
            }
        },
        None => None,
    };
    if matches!(command, Some(Cmd::Session { .. })) && (args.repeat.is_some() || args.interval.is_some()) {
        eprintln!("tandem-cli: session takes no --repeat or --interval");
        return ExitCode::from(Exit::Error as u8);
    }
    let (latency, pipe) = (args.latency, args.pipe);
    let client_id = match command {
        Some(Cmd::Session { client_id }) => client_id,
        _ => None,
    };
    let stdout_tty = io::stdout().is_terminal();
    let mut cli = Cli {
        args,
        token,
        client: None,
        reconnect: false,
        client_id,
        repl: false,
        stdout_tty,
        stdin_value: None,
    };
    let exit = if latency {
        cli.latency()
    } else if pipe {
        cli.pipe()
    } else if let Some(Cmd::Session { .. }) = command {
        cli.session()
    } else if let Some(cmd) = command {
        cli.repeat(&cmd)
    } else {
        cli.interactive()
    };
    ExitCode::from(exit as u8)
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
    fn timeouts_are_milliseconds_or_suffixed() {
        assert_eq!(millis("5000"), Ok(Duration::from_secs(5)));
        assert_eq!(millis("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(millis("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(millis("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["0", "-1", "0ms", "inf", "NaN", "infs", "", "ms", "5 minutes", "1e30"] {
            assert!(millis(bad).is_err(), "{bad:?} was accepted");
        }
        let args = Args::try_parse_from(["tandem-cli", "--timeout", "250ms", "ping"]).unwrap();
        assert_eq!(args.timeout, Duration::from_millis(250));
        let args = Args::try_parse_from(["tandem-cli", "ping"]).unwrap();
        assert_eq!(args.timeout, Duration::from_secs(5), "the default is 5000 ms");
    }

    #[test]
    fn session_requests_parse_and_refuse_what_is_wrong() {
        let put = SessionRequest::parse(r#"{"op":"put","key":"k","value":"v","version":3}"#).unwrap();
        assert_eq!(
            put,
            SessionRequest { op: SessionOp::Put, key: b"k".to_vec(), value: b"v".to_vec(), version: 3 }
        );
        let get = SessionRequest::parse(r#"{"op":"get","key":"k"}"#).unwrap();
        assert_eq!((get.op, get.version), (SessionOp::Get, 0));
        assert_eq!(SessionRequest::parse(r#"{"op":"delete","key":"k"}"#).unwrap().op, SessionOp::Delete);
        for (bad, why) in [
            ("", "not JSON"),
            ("[1]", "object"),
            (r#"{"key":"k"}"#, "op"),
            (r#"{"op":"frob","key":"k"}"#, "unknown op"),
            (r#"{"op":"get"}"#, "key"),
            (r#"{"op":"get","key":""}"#, "key"),
            (r#"{"op":"put","key":"k"}"#, "value"),
            (r#"{"op":"get","key":"k","value":"v"}"#, "value"),
            (r#"{"op":"get","key":"k","version":1}"#, "version"),
            (r#"{"op":"put","key":"k","value":"v","version":-1}"#, "version"),
            (r#"{"op":"put","key":"k","value":"v","verison":1}"#, "unknown field"),
            (r#"{"op":"put","key":1,"value":"v"}"#, "string"),
        ] {
            let err = SessionRequest::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn session_replies_keep_their_key_order() {
        assert_eq!(session_reply("ok", Some(b"v"), 4, None), r#"{"outcome":"ok","value":"v","version":4}"#);
        assert_eq!(session_reply("ok", None, 0, None), r#"{"outcome":"ok","value":null,"version":0}"#);
        assert_eq!(
            session_reply("unknown", None, 0, Some("deadline \"passed\"")),
            r#"{"outcome":"unknown","value":null,"version":0,"error":"deadline \"passed\""}"#
        );
        assert_eq!(
            session_reply("ok", Some(b"a\xff"), 1, None),
            "{\"outcome\":\"ok\",\"value\":\"a\u{fffd}\",\"value_hex\":\"61ff\",\"version\":1}"
        );
    }

    #[test]
    fn view_json_has_the_documented_shape() {
        let member = |id: &str, port: u16| client::Member {
            id: id.into(),
            addr: format!("127.0.0.1:{port}"),
            ..client::Member::default()
        };
        let view = View {
            num: 7,
            term: 5,
            primary: Some(member("s1", 7071)),
            backups: vec![member("s2", 7072)],
            ..View::default()
        };
        assert_eq!(
            view_json(&view),
            r#"{"view":7,"primary":{"id":"s1","addr":"127.0.0.1:7071"},"backups":[{"id":"s2","addr":"127.0.0.1:7072"}],"waiting":null}"#
        );
        let waiting = View { num: 8, waiting: "no server has reported yet".into(), ..View::default() };
        assert_eq!(
            view_json(&waiting),
            r#"{"view":8,"primary":null,"backups":[],"waiting":"no server has reported yet"}"#
        );
        let text = view_text(&view);
        assert!(text.contains("primary: s1@127.0.0.1:7071") && text.contains("backups: s2@127.0.0.1:7072"));
        assert!(view_text(&waiting).contains("waiting: no server has reported yet"));
    }

    #[test]
    fn status_reads_the_cluster_lines_of_stats() {
        let stats = |lines: &str| -> Vec<(String, String)> {
            lines.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.into(), v.into())).collect()
        };
        let primary = ServerStatus::from_stats(
            "127.0.0.1:7071",
            &stats("keys:3\ncluster:1\nserver_id:s1\nrole:primary\nview:7\nterm:5\nlast_lsn:123\ncommitted_lsn:120\nserving:1\nlease_left_ms:800\ncoordinator_waiting:"),
        );
        assert_eq!(
            primary.json(),
            r#"{"server":"127.0.0.1:7071","id":"s1","role":"primary","view":7,"term":5,"last_lsn":123,"committed_lsn":120,"serving":true}"#
        );
        let alone = ServerStatus::from_stats(
            "127.0.0.1:7070",
            &stats("keys:3\nlast_lsn:9\ncluster:0\nrole:standalone"),
        );
        assert_eq!(
            alone.json(),
            r#"{"server":"127.0.0.1:7070","id":null,"role":"standalone","view":0,"term":0,"last_lsn":9,"committed_lsn":9,"serving":true}"#
        );
        assert!(alone.text().contains("role: standalone"));
        assert!(!alone.text().contains("framing"), "only when --framing compact asked");
        let asked = ServerStatus { framing: Some(Framing::Compact), ..alone };
        assert!(asked.json().ends_with(r#","serving":true,"framing":"compact"}"#), "{}", asked.json());
        assert!(asked.text().ends_with("serving: yes\nframing: compact\n"), "{}", asked.text());
    }

    #[test]
    fn framing_is_fixed_unless_compact_is_asked_for() {
        assert_eq!(Args::try_parse_from(["tandem-cli", "ping"]).unwrap().framing, Framing::Fixed);
        let args = Args::try_parse_from(["tandem-cli", "ping", "--framing", "compact"]).unwrap();
        assert_eq!(args.framing, Framing::Compact, "a global flag, also after the command");
        assert_eq!(framing_arg("fixed"), Ok(Framing::Fixed));
        for bad in ["", "Compact", "padded", "1"] {
            assert!(framing_arg(bad).is_err(), "{bad:?}");
        }
        assert_eq!(framing_name(Framing::Compact), "compact");
    }

    #[test]
    fn escape_keeps_text_and_shows_bytes() {
        assert_eq!(escape(b"plain text"), "plain text");
        assert_eq!(escape(b"a\0\xff\n\\"), "a\\x00\\xff\\n\\\\");
    }

    fn repl(line: &str) -> Result<ReplAction, String> {
        split_marked_words(line).and_then(|words| parse_repl(&words))
    }

    #[test]
    fn a_dash_at_the_prompt_is_refused_unless_quoted() {
        for line in ["put k -", "set k -", "append k -", "PUT k -"] {
            let err = repl(line).unwrap_err();
            assert!(err.contains("stdin only on the command line"), "{line}: {err}");
        }
        for line in ["put k '-'", "put k \"-\""] {
            match repl(line) {
                Ok(ReplAction::Run(Cmd::Put { value, .. })) => assert_eq!(value, "-", "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        assert!(matches!(repl("get -"), Ok(ReplAction::Run(Cmd::Get { .. }))), "a key may be a dash");
        assert!(repl("frobnicate").unwrap_err().contains("unknown command"));
        assert_eq!(repl("put k").unwrap_err(), "usage: put KEY VALUE");
        assert!(matches!(repl("quit"), Ok(ReplAction::Quit)));
    }

    #[test]
    fn the_prompt_says_when_it_is_disconnected() {
        assert_eq!(prompt("127.0.0.1:7070", true), "tandem 127.0.0.1:7070> ");
        assert_eq!(prompt("127.0.0.1:7070", false), "tandem 127.0.0.1:7070 (disconnected)> ");
    }

    #[test]
    fn tab_completes_command_names_only() {
        assert_eq!(complete_command("pi", 2), (0, vec!["ping ".to_string()]));
        assert_eq!(complete_command("  AP", 4), (2, vec!["append ".to_string()]));
        let (start, names) = complete_command("st", 2);
        assert_eq!((start, names), (0, vec!["stats ".to_string(), "status ".to_string()]));
        assert_eq!(complete_command("get pi", 6), (6, vec![]), "keys are not completed");
        assert_eq!(complete_command("", 0).1.len(), REPL_COMMANDS.len());
    }

    #[test]
    fn hints_name_the_arguments_still_to_type() {
        let hint = |line: &str| hint_for(line, line.len());
        assert_eq!(hint("put"), Some((" KEY VALUE".to_string(), false)));
        assert_eq!(hint("put "), Some(("KEY VALUE".to_string(), false)));
        assert_eq!(hint("put k"), Some((" VALUE".to_string(), false)));
        assert_eq!(hint("put k "), Some(("VALUE".to_string(), false)));
        assert_eq!(hint("put k v"), None);
        assert_eq!(hint("get \"a key\" "), None);
        assert_eq!(hint("ping"), None);
        assert_eq!(hint("pi"), Some(("ng".to_string(), true)), "the only command it can begin");
        assert_eq!(hint("st"), None, "stats or status");
        assert_eq!(hint("frob "), None);
        assert_eq!(hint_for("put", 1), None, "only at the end of the line");
    }

    #[test]
    fn json_errors_carry_the_servers_status() {
        let refused = ClientError::Server { status: wire::Status::BAD_REQUEST, message: "empty key".into() };
        assert_eq!(error_status(&refused).as_deref(), Some("BAD_REQUEST"));
        assert_eq!(error_status(&ClientError::Conflict { current: 3 }).as_deref(), Some("CONFLICT"));
        assert_eq!(error_status(&ClientError::Closed), None);
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
