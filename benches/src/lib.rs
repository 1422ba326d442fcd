//! Tandem's load tool and baselines.
//!
//! `tandem-bench` loads a Tandem server, a Redis server (`--protocol resp`, so that both are
//! measured by the same client) or the bare echo ceiling, in closed loop (each connection
//! keeps `-P` requests in flight) or open loop (`--rate`: requests sent on a schedule,
//! latency counted from the intended send time). It reports HDR-histogram percentiles per
//! command, throughput, errors by kind, bytes per operation each way and a per-second
//! series. Tandem frames are fixed (4096 bytes) or compact (`--framing compact`, negotiated
//! per connection with a HELLO). `tandem-echo` is the ceiling: a bare mio server returning
//! frames unchanged (4096-byte ones, or compact ones after a HELLO).
//!
//! The measuring client is lean on purpose: one mio event loop per thread, buffers reused,
//! every new request of a connection written in one write, every reply that arrived parsed
//! per read, nothing allocated per request.
//!
//! # Layout
//!
//! - [`config`]: flags ([`config::Args`]) and the resolved, serialisable [`config::Config`].
//! - [`coordinator`]: `--coordinator`: the primary, from Tandem's view service, before the run.
//! - [`workload`]: seeded (command, key) generator: uniform, sequential, Zipfian keys; no I/O.
//! - [`proto`]: Tandem frames (through `wire`) and RESP: encode requests, classify replies
//!   and HELLO answers.
//! - [`conn`]: one connection: its HELLO, requests in flight, write batching, reply matching,
//!   verify.
//! - [`driver`]: the probe, the worker threads and their mio loops, phase by phase.
//! - [`ratelimit`]: the open-loop send schedule.
//! - [`stats`]: histograms, error counts, per-second series; merging threads.
//! - [`report`]: human summary, CSV, JSON lines, HdrHistogram files, progress line.
//! - [`echo`]: the echo server behind `tandem-echo` and `--baseline echo`.
//! - [`server_stats`]: the Tandem server's STATS before and after each test: what its storage
//!   wrote, and compaction's write amplification.
#![deny(missing_docs)]

pub mod config;
pub mod conn;
pub mod coordinator;
pub mod driver;
pub mod echo;
pub mod proto;
pub mod ratelimit;
pub mod report;
pub mod server_stats;
pub mod stats;
mod timer;
pub mod workload;

pub use config::{Args, Config, ConfigError};
pub use driver::{PhaseResult, RunEvent, Runner, StartError};
