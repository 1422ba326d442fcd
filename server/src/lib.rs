//! `tandem-server`: a key-value server on one mio event loop over the storage engine.
//!
//! # Layout
//! - [`config`]: every knob, its default, and the checks run before binding.
//! - [`event_loop`]: the mio loop: accept, read, execute, group commit, write back.
//! - [`conn`]: one connection's socket, buffers and session.
//! - [`handler`]: request → storage → reply; knows frames, not sockets.
//! - [`stats`]: the counters STATS reports.
//!
//! ```no_run
//! let server = server::Server::bind(server::Config::default())?;
//! println!("listening on {}", server.local_addr());
//! server.run()?;
//! # Ok::<(), server::ServerError>(())
//! ```

pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod coordinator;
pub mod event_loop;
pub mod handler;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod replica;
pub mod secret;
pub mod stats;
pub mod time;

pub use config::{Config, ConfigError};
pub use event_loop::{Server, ServerError, ShutdownHandle};
