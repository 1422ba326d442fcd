//! `tandem-echo`: the ceiling for any Tandem server on this machine. A bare
//! single-threaded mio server that returns every whole 4096-byte frame unchanged, and
//! compact frames after a HELLO asking for them (see [`benches::echo`]).
//! Load it with `tandem-bench --protocol echo --server ADDR [--framing compact]`.

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use clap::Parser;

/// Echo frames back unchanged (4096 bytes each, or compact after a HELLO asking for it): the
/// ceiling for a Tandem server.
#[derive(Debug, Parser)]
#[command(name = "tandem-echo", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7071")]
    listen: String,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let listener = match TcpListener::bind(&args.listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("tandem-echo: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("tandem-echo listening on {addr}"),
        Err(e) => {
            eprintln!("tandem-echo: {e}");
            return ExitCode::from(2);
        }
    }
    let stop = AtomicBool::new(false);
    match benches::echo::serve(listener, &stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-echo: {e}");
            ExitCode::FAILURE
        }
    }
}
