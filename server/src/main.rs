//! The `tandem-server` binary; see [`server::cli::server`].

fn main() -> std::process::ExitCode {
    server::cli::server::main(std::env::args_os())
}
