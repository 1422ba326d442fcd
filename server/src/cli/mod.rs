//! The command lines of the binaries, kept in the library so that `tandem-cluster` can run a
//! coordinator and servers as child processes of its own executable (one build target is all
//! `cargo run --bin tandem-cluster` needs).

pub mod cluster;
pub mod coordinator;
pub mod server;
