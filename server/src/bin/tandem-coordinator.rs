//! The `tandem-coordinator` binary; see [`server::cli::coordinator`].

fn main() -> std::process::ExitCode {
    server::cli::coordinator::main(std::env::args_os())
}
