//! `tandem-cluster`: a coordinator and a replica group on loopback, for trying Tandem out.
//!
//! It starts every process as a child of its own executable (`tandem-cluster coordinator
//! ...` / `tandem-cluster server ...` run the same code as `tandem-coordinator` and
//! `tandem-server`), with fresh data directories, waits until the group has formed, prints the
//! addresses and process ids, and stops them all on Ctrl-C. Kill a server (`kill -9 PID`) to
//! watch a failover; the launcher reports it and carries on.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use wire::cluster::{decode_view_reply, encode_get_view, View};

/// Starts a local Tandem cluster: one coordinator and a replica group of servers on loopback,
/// each with a fresh data directory. Ctrl-C stops them all.
///
/// Then, from another terminal:
///   tandem-cli --coordinator 127.0.0.1:7100 put greeting hello
///   tandem-cli --coordinator 127.0.0.1:7100 view
///   kill -9 <pid of the primary>     (and watch another server take over)
#[derive(Debug, Parser)]
#[command(name = "tandem-cluster", version, verbatim_doc_comment)]
struct Args {
    /// Servers in the group (one primary, the rest backups up to --replicas).
    #[arg(long, default_value_t = 3, value_name = "N")]
    servers: usize,

    /// Servers per view (primary + backups).
    #[arg(long, default_value_t = 3, value_name = "R")]
    replicas: usize,

    /// The coordinator's UDP address.
    #[arg(long, default_value = "127.0.0.1:7100", value_name = "ADDR")]
    coordinator: SocketAddr,

    /// The first server listens on this port, the next on the one after, and so on.
    #[arg(long, default_value_t = 7071, value_name = "PORT")]
    base_port: u16,

    /// Keep the data here (created; reused if it exists) instead of a fresh temporary
    /// directory that is removed on exit.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,

    /// `--fsync` mode of every server.
    #[arg(long, default_value = "never", value_name = "always|interval:MS|never")]
    fsync: String,
}

struct Proc {
    name: String,
    addr: String,
    child: Child,
    log: PathBuf,
    exited: bool,
}

/// `tandem-cluster`'s entry point. `tandem-cluster server ARGS` and `tandem-cluster
/// coordinator ARGS` run one process of the cluster (the launcher starts itself that way).
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("server") => return super::server::main(args[1..].iter().cloned()),
        Some("coordinator") => return super::coordinator::main(args[1..].iter().cloned()),
        _ => {}
    }
    let args = Args::parse_from(args);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-cluster: {e}");
            ExitCode::FAILURE
        }
    }
}

fn spawn(exe: &Path, role: &str, args: &[String], log: &Path) -> Result<(Child, String), String> {
    let log_file = std::fs::File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let mut child = Command::new(exe)
        .arg(role)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start {role}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => {
            let addr = line.rsplit(' ').next().unwrap_or_default().to_string();
            Ok((child, addr))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            Err(format!("{role} did not start: {}", tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")))
        }
    }
}

fn get_view(coordinator: SocketAddr) -> Option<View> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
    let mut req = Vec::new();
    encode_get_view(1, 0, &mut req);
    sock.send_to(&req, coordinator).ok()?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    decode_view_reply(&buf[..n]).ok().map(|(_, v)| v)
}

fn describe(view: &View) -> String {
    let primary = view.primary.as_ref().map_or("none".to_string(), |p| format!("{} at {}", p.id, p.addr));
    let backups: Vec<&str> = view.backups.iter().map(|b| b.id.as_str()).collect();
    let mut s = format!("view {}: primary {primary}, backups [{}]", view.num, backups.join(", "));
    if !view.waiting.is_empty() {
        s.push_str(&format!(" (waiting: {})", view.waiting));
    }
    s
}

fn run(args: Args) -> Result<(), String> {
    if args.servers == 0 || args.replicas == 0 {
        return Err("--servers and --replicas must be at least 1".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own executable: {e}"))?;
    let (root, temporary) = match &args.data {
        Some(dir) => (dir.clone(), false),
        None => {
            let dir = std::env::temp_dir().join(format!("tandem-cluster-{}", std::process::id()));
            (dir, true)
        }
    };
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("installing signal handlers: {e}"))?;
    }
    let mut procs: Vec<Proc> = Vec::new();
    let result = start_all(&args, &exe, &root, &mut procs).and_then(|()| supervise(&args, &mut procs, &stop));
    for p in procs.iter_mut().rev() {
        if !p.exited {
            // SIGTERM: each answers what is in flight, syncs and exits.
            if let Some(pid) = rustix::process::Pid::from_raw(p.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
    }
    for p in procs.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !p.exited && Instant::now() < deadline {
            if let Ok(Some(_)) = p.child.try_wait() {
                p.exited = true;
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if !p.exited {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        println!("data kept in {}", root.display());
    }
    result
}

fn start_all(args: &Args, exe: &Path, root: &Path, procs: &mut Vec<Proc>) -> Result<(), String> {
    let coord_dir = root.join("coordinator");
    let log = root.join("coordinator.log");
    let coord_args: Vec<String> = vec![
        "--listen".into(),
        args.coordinator.to_string(),
        "--data".into(),
        coord_dir.display().to_string(),
        "--replicas".into(),
        args.replicas.to_string(),
    ];
    let (child, addr) = spawn(exe, "coordinator", &coord_args, &log)?;
    procs.push(Proc { name: "coordinator".into(), addr, child, log, exited: false });
    for i in 0..args.servers {
        let id = format!("s{}", i + 1);
        let port = args.base_port as usize + i;
        if port > u16::MAX as usize {
            return Err("--base-port leaves no room for every server".into());
        }
        let log = root.join(format!("{id}.log"));
        let server_args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data".into(),
            root.join(&id).display().to_string(),
            "--coordinator".into(),
            args.coordinator.to_string(),
            "--id".into(),
            id.clone(),
            "--fsync".into(),
            args.fsync.clone(),
        ];
        let (child, addr) = spawn(exe, "server", &server_args, &log)?;
        procs.push(Proc { name: id, addr, child, log, exited: false });
    }
    Ok(())
}

fn supervise(args: &Args, procs: &mut [Proc], stop: &AtomicBool) -> Result<(), String> {
    let mut out = std::io::stdout();
    let want = args.replicas.min(args.servers);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut view = None;
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        if let Some(v) = get_view(args.coordinator) {
            if v.primary.is_some() && v.backups.len() + 1 == want {
                view = Some(v);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = writeln!(
        out,
        "tandem-cluster: data in {}",
        procs[0].log.parent().map_or(String::new(), |d| d.display().to_string())
    );
    for p in procs.iter() {
        let _ =
            writeln!(out, "  {:<12} {:<22} pid {:<8} log {}", p.name, p.addr, p.child.id(), p.log.display());
    }
    match &view {
        Some(v) => {
            let _ = writeln!(out, "ready: {}", describe(v));
        }
        None => {
            let _ = writeln!(
                out,
                "the group has not formed yet: {}",
                get_view(args.coordinator).map_or("no view".into(), |v| describe(&v))
            );
        }
    }
    let _ = writeln!(
        out,
        "try:   tandem-cli --coordinator {} put greeting hello   (Ctrl-C stops everything)",
        args.coordinator
    );
    let _ = out.flush();
    let mut last_view = view.map(|v| v.num).unwrap_or(0);
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        for p in procs.iter_mut().filter(|p| !p.exited) {
            if let Ok(Some(status)) = p.child.try_wait() {
                p.exited = true;
                let _ = writeln!(out, "{} ({}) exited: {status}", p.name, p.addr);
            }
        }
        if let Some(v) = get_view(args.coordinator) {
            if v.num != last_view {
                last_view = v.num;
                let _ = writeln!(out, "{}", describe(&v));
            }
        }
        let _ = out.flush();
    }
    let _ = writeln!(out, "stopping");
    Ok(())
}
