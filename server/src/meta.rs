//! The replica metadata a server keeps beside its store: its id, its incarnation, which copy of
//! the data its store holds, whether a snapshot install was interrupted, and its term history.
//!
//! One small text file, `REPLICA`, in the data directory, rewritten whole (temporary file,
//! fsync, rename, fsync of the directory) whenever it changes: at start, when a term begins,
//! and around snapshot installs. A CRC line ends it; a damaged file stops the server with a
//! message rather than guessing.
//!
//! ```text
//! tandem-replica 1
//! id s1
//! incarnation 1764620000000000
//! data_id 9f2c44a1b0e3d217
//! installing 0
//! term 1 1
//! term 4 1520
//! crc 1a2b3c4d
//! ```

use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::coordinator::driver::write_durably;
use crate::replica::{Meta, Terms};

/// File name in the data directory.
pub const META_FILE: &str = "REPLICA";
const MAGIC: &str = "tandem-replica 1";

/// Everything in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMeta {
    /// The server's stable id.
    pub id: String,
    /// The incarnation of the last run that started.
    pub incarnation: u64,
    /// Data id, install flag and term history.
    pub replica: Meta,
}

/// Why the file cannot be used.
#[derive(Debug)]
pub enum MetaError {
    /// Reading or writing failed.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is damaged.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            MetaError::Corrupt { path, reason } => write!(
                f,
                "{} is damaged ({reason}); move it away to start this server as a new, empty member \
                 that copies its data from the primary",
                path.display()
            ),
        }
    }
}

impl std::error::Error for MetaError {}

/// Renders the file.
pub fn encode(meta: &NodeMeta) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{MAGIC}");
    let _ = writeln!(s, "id {}", meta.id);
    let _ = writeln!(s, "incarnation {}", meta.incarnation);
    let _ = writeln!(s, "data_id {:016x}", meta.replica.data_id);
    let _ = writeln!(s, "installing {}", u8::from(meta.replica.installing));
    for (term, start) in meta.replica.terms.entries() {
        let _ = writeln!(s, "term {term} {start}");
    }
    let crc = crc32fast::hash(s.as_bytes());
    let _ = writeln!(s, "crc {crc:08x}");
    s
}

/// Parses the file.
///
/// # Errors
/// What is wrong with it.
pub fn decode(text: &str) -> Result<NodeMeta, String> {
    let crc_at = text.rfind("crc ").ok_or("no crc line")?;
    let (body, crc_line) = text.split_at(crc_at);
    let crc = u32::from_str_radix(crc_line.trim_end().trim_start_matches("crc "), 16)
        .map_err(|_| "bad crc line")?;
    if crc != crc32fast::hash(body.as_bytes()) {
        return Err("checksum mismatch".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(MAGIC) {
        return Err("not a replica metadata file".into());
    }
    let (mut id, mut incarnation, mut data_id, mut installing) = (None, None, None, None);
    let mut terms = Vec::new();
    for line in lines {
        let (key, value) = line.split_once(' ').ok_or_else(|| format!("bad line {line:?}"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|_| format!("bad number in {line:?}"));
        match key {
            "id" => id = Some(value.to_string()),
            "incarnation" => incarnation = Some(num(value)?),
            "data_id" => {
                data_id = Some(u64::from_str_radix(value, 16).map_err(|_| format!("bad data id {value:?}"))?)
            }
            "installing" => installing = Some(value == "1"),
            "term" => {
                let (t, s) = value.split_once(' ').ok_or_else(|| format!("bad line {line:?}"))?;
                terms.push((num(t)?, num(s)?));
            }
            _ => return Err(format!("unknown line {line:?}")),
        }
    }
    let terms = Terms::from_entries(&terms).map_err(|e| format!("term history: {e}"))?;
    Ok(NodeMeta {
        id: id.filter(|s| !s.is_empty()).ok_or("no id")?,
        incarnation: incarnation.ok_or("no incarnation")?,
        replica: Meta {
            terms,
            data_id: data_id.ok_or("no data id")?,
            installing: installing.unwrap_or(false),
        },
    })
}

/// Reads `dir/REPLICA`; `Ok(None)` if there is none.
///
/// # Errors
/// [`MetaError`] if it cannot be read or is damaged.
pub fn load(dir: &Path) -> Result<Option<NodeMeta>, MetaError> {
    let path = dir.join(META_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => decode(&text).map(Some).map_err(|reason| MetaError::Corrupt { path, reason }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MetaError::Io { path, source: e }),
    }
}

/// Writes `dir/REPLICA` durably.
///
/// # Errors
/// [`MetaError::Io`].
pub fn store(dir: &Path, meta: &NodeMeta) -> Result<(), MetaError> {
    write_durably(dir, META_FILE, encode(meta).as_bytes())
        .map_err(|source| MetaError::Io { path: dir.join(META_FILE), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeMeta {
        NodeMeta {
            id: "s1".into(),
            incarnation: 1_764_620_000_000_000,
            replica: Meta {
                terms: Terms::from_entries(&[(1, 1), (4, 1520)]).unwrap(),
                data_id: 0x9f2c_44a1_b0e3_d217,
                installing: true,
            },
        }
    }

    #[test]
    fn metadata_round_trips_and_damage_is_refused() {
        let text = encode(&sample());
        assert_eq!(decode(&text), Ok(sample()));
        assert!(decode(&text.replace("term 4", "term 5")).is_err());
        assert!(decode(&text[..text.len() - 4]).is_err());
        assert!(decode("").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        store(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(sample()));
        std::fs::write(dir.path().join(META_FILE), "tandem-replica 1\nid x\ncrc 00000000\n").unwrap();
        assert!(matches!(load(dir.path()), Err(MetaError::Corrupt { .. })));
    }
}
