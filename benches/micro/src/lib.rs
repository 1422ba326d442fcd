//! Criterion micro-benchmarks for the Tandem crates. Run `cargo bench -p tandem-microbench`.
//! This crate is not a default workspace member, so `cargo test` does not build criterion.
