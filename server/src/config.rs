//! Server configuration: every knob with its default, and the checks run before binding.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use storage::Durability;

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on for clients.
    pub listen: SocketAddr,
    /// Directory holding the storage engine's files.
    pub data_dir: PathBuf,
    /// When writes reach the disk: `always` (group commit before replying), `interval`, `never`.
    pub durability: Durability,
    /// Connections beyond this are answered `BUSY` and closed.
    pub max_connections: usize,
    /// Close connections that complete no frame for this long; `None` keeps them forever.
    pub idle_timeout: Option<Duration>,
    /// The token clients must present with AUTH before anything else, if any.
    pub auth_token: Option<Vec<u8>>,
    /// Allow listening on a non-loopback address without a token.
    pub insecure: bool,
    /// Spin this long on an empty poll before blocking, trading CPU for wake-up latency.
    pub busy_poll: Duration,
    /// In a cluster, spin this long on an empty poll while replies wait for backups'
    /// acknowledgements, instead of sleeping (they are due within tens of microseconds).
    pub ack_spin: Duration,
    /// Size of each storage segment file.
    pub segment_len: u64,
    /// Listen backlog.
    pub backlog: i32,
    /// SO_SNDBUF for client sockets; `None` leaves the kernel's autotuning alone.
    pub send_buffer: Option<usize>,
    /// SO_RCVBUF for client sockets; `None` leaves the kernel's autotuning alone.
    pub recv_buffer: Option<usize>,
    /// Cluster mode (`--coordinator`); `None` runs standalone.
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// Serve Prometheus metrics on this address (`--metrics`); `None` = off.
    pub metrics: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("./tandem-data"),
            durability: Durability::Never,
            max_connections: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            auth_token: None,
            insecure: false,
            busy_poll: Duration::ZERO,
            ack_spin: Duration::from_micros(50),
            segment_len: storage::Options::default().segment_len,
            backlog: 1024,
            send_buffer: None,
            recv_buffer: None,
            cluster: None,
            metrics: None,
        }
    }
}

/// A configuration the server refuses to start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A non-loopback listen address without `--auth-token` or `--insecure`.
    ExposedWithoutAuth(SocketAddr),
    /// `max_connections` is zero.
    NoConnections,
    /// The auth token is empty.
    EmptyToken,
    /// Cluster mode on a non-loopback address (or coordinator) without a cluster secret.
    ClusterWithoutSecret,
    /// Cluster mode listening on an unspecified address without `--advertise`.
    NoAdvertise(SocketAddr),
    /// Metrics on a non-loopback address without `--insecure`.
    ExposedMetrics(SocketAddr),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::ExposedWithoutAuth(addr) => write!(
                f,
                "refusing to listen on non-loopback address {addr} without --auth-token FILE (or pass --insecure)"
            ),
            ConfigError::NoConnections => f.write_str("--max-connections must be at least 1"),
            ConfigError::EmptyToken => f.write_str("the auth token is empty"),
            ConfigError::ClusterWithoutSecret => f.write_str(
                "refusing cluster mode over non-loopback addresses without --cluster-secret FILE (or pass --insecure)",
            ),
            ConfigError::ExposedMetrics(addr) => write!(
                f,
                "refusing to serve metrics on non-loopback address {addr} without --insecure (they are not authenticated)"
            ),
            ConfigError::NoAdvertise(addr) => write!(
                f,
                "listening on {addr} in cluster mode needs --advertise ADDR: peers and clients must be told a \
                 concrete address"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks the configuration as a whole.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        if matches!(&self.auth_token, Some(t) if t.is_empty()) {
            return Err(ConfigError::EmptyToken);
        }
        if !self.listen.ip().is_loopback() && self.auth_token.is_none() && !self.insecure {
            return Err(ConfigError::ExposedWithoutAuth(self.listen));
        }
        if let Some(m) = self.metrics {
            if !m.ip().is_loopback() && !self.insecure {
                return Err(ConfigError::ExposedMetrics(m));
            }
        }
        if let Some(c) = &self.cluster {
            let advertise = c.advertise.unwrap_or(self.listen);
            let exposed = !self.listen.ip().is_loopback()
                || !advertise.ip().is_loopback()
                || c.coordinators.iter().any(|a| !a.ip().is_loopback());
            if exposed && c.key.is_none() && !self.insecure {
                return Err(ConfigError::ClusterWithoutSecret);
            }
            if advertise.ip().is_unspecified() {
                return Err(ConfigError::NoAdvertise(self.listen));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_needs_a_token_or_consent() {
        let mut c = Config { listen: "0.0.0.0:7070".parse().unwrap(), ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::ExposedWithoutAuth(_))));
        c.insecure = true;
        assert_eq!(c.validate(), Ok(()));
        c.insecure = false;
        c.auth_token = Some(b"t".to_vec());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(Config::default().validate(), Ok(()));
    }
}
