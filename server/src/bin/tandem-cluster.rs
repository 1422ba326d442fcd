//! The `tandem-cluster` binary; see [`server::cli::cluster`].

fn main() -> std::process::ExitCode {
    server::cli::cluster::main(std::env::args_os())
}
