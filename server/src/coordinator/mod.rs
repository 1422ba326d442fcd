//! The coordinator (view service): decides, view by view, which server of a replica group is
//! primary and which are backups, from the heartbeats the servers send it over UDP.
//!
//! - [`view_service`]: the decisions, as a sans-IO state machine.
//! - [`driver`]: the UDP socket, persistence of the view, the `tandem-coordinator` loop.
//! - [`datagram`]: sealing and opening authenticated cluster messages.

pub mod datagram;
pub mod driver;
pub mod view_service;
