//! Sealing and opening authenticated cluster messages: coordinator datagrams and the
//! replication handshake.
//!
//! A sealed message is an ordinary frame whose value is a body (`wire::cluster`) whose first
//! byte says whether a 32-byte MAC ends it. The MAC covers the frame from its `id` field to the
//! end of the value minus the MAC (the compact encoding's bytes; a fixed frame has the same
//! bytes at the same offsets), so header fields, key and body are all covered; the checksum is
//! recomputed after the MAC is written.

use std::fmt;

use wire::cluster::{self, BodyError, BODY_MAC, MAC_LEN};
use wire::{DecodeError, Frame, Framing, HEADER_LEN};

use crate::secret::Key;

/// Why a cluster message was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealError {
    /// The bytes are not one valid frame.
    Frame(String),
    /// The body is malformed.
    Body(BodyError),
    /// The MAC is missing, present without a configured secret, or wrong.
    Auth(&'static str),
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::Frame(e) => write!(f, "not a valid frame: {e}"),
            SealError::Body(e) => write!(f, "bad body: {e}"),
            SealError::Auth(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for SealError {}

impl From<DecodeError> for SealError {
    fn from(e: DecodeError) -> Self {
        SealError::Frame(e.to_string())
    }
}

impl From<BodyError> for SealError {
    fn from(e: BodyError) -> Self {
        SealError::Body(e)
    }
}

/// Appends `frame` (its value replaced by `body`, a MAC appended when `key` is given) in the
/// given framing. `body`'s first byte is its flags byte.
pub fn seal(frame: Frame<'_>, mut body: Vec<u8>, key: Option<&Key>, framing: Framing, out: &mut Vec<u8>) {
    if let Some(first) = body.first_mut() {
        if key.is_some() {
            *first |= BODY_MAC;
        } else {
            *first &= !BODY_MAC;
        }
    }
    if key.is_some() {
        body.extend_from_slice(&[0u8; MAC_LEN]);
    }
    let start = out.len();
    let frame = Frame { value: &body, ..frame };
    let encoded = match framing {
        Framing::Compact => frame.encode_compact_to(out),
        Framing::Fixed => frame.encode_to(out),
    };
    if let Err(e) = encoded {
        // Bodies are built by this crate within the limits; refuse to send rather than panic.
        log::error!("cannot encode a cluster message: {e}");
        out.truncate(start);
        return;
    }
    if let Some(key) = key {
        let compact_end = start + frame.encoded_len(Framing::Compact);
        let tag = key.mac(&[cluster::mac_input(&out[start..compact_end])]);
        out[compact_end - MAC_LEN..compact_end].copy_from_slice(&tag);
        let crc = crc32fast::hash(&out[start + wire::header::CRC_START..compact_end]);
        out[start + wire::header::CRC_OFFSET..start + wire::header::ID_OFFSET]
            .copy_from_slice(&crc.to_le_bytes());
    }
}

/// Checks the MAC of a decoded frame whose compact encoding is `compact` (the first
/// `HEADER_LEN + key + value` bytes of what was received), as `key` requires. Returns the
/// body without its MAC.
///
/// # Errors
/// [`SealError`] when the MAC is missing, unexpected or wrong, or the body is malformed.
pub fn open_body<'a>(frame: &Frame<'a>, compact: &[u8], key: Option<&Key>) -> Result<&'a [u8], SealError> {
    let (fields, mac) = cluster::split_mac(frame.value)?;
    match (key, mac) {
        (Some(key), Some(tag)) => {
            if key.verify(&[cluster::mac_input(compact)], tag) {
                Ok(fields)
            } else {
                Err(SealError::Auth("wrong MAC: the sender does not have this cluster's secret"))
            }
        }
        (Some(_), None) => Err(SealError::Auth("unauthenticated message, but this cluster has a secret")),
        (None, Some(_)) => {
            Err(SealError::Auth("authenticated message, but no cluster secret is configured here"))
        }
        (None, None) => Ok(fields),
    }
}

/// Opens one datagram: exactly one compact frame, MAC checked as `key` requires. Returns the
/// frame and its body without the MAC.
///
/// # Errors
/// [`SealError`].
pub fn open<'a>(bytes: &'a [u8], key: Option<&Key>) -> Result<(Frame<'a>, &'a [u8]), SealError> {
    let (frame, used) = Frame::decode_compact(bytes)?.ok_or_else(|| {
        SealError::Frame(format!("a datagram of {} bytes holds no whole frame", bytes.len()))
    })?;
    if used != bytes.len() {
        return Err(SealError::Frame(format!("{} bytes after the frame", bytes.len() - used)));
    }
    let body = open_body(&frame, bytes, key)?;
    Ok((frame, body))
}

/// The compact encoding of a frame received in fixed framing: its first bytes.
pub fn compact_prefix<'b>(fixed: &'b [u8], frame: &Frame<'_>) -> &'b [u8] {
    &fixed[..(HEADER_LEN + frame.key.len() + frame.value.len()).min(fixed.len())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::cluster::{Heartbeat, View, HEARTBEAT};
    use wire::Command;

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            id: "s1".into(),
            addr: "127.0.0.1:7071".into(),
            incarnation: 5,
            view: 2,
            ..Heartbeat::default()
        }
    }

    fn sealed(key: Option<&Key>) -> Vec<u8> {
        let hb = heartbeat();
        let mut out = Vec::new();
        let frame = Frame::request(77, HEARTBEAT, hb.id.as_bytes(), b"");
        seal(frame, hb.encode(0).into_vec(), key, Framing::Compact, &mut out);
        out
    }

    #[test]
    fn sealed_datagrams_open_with_the_same_key_only() {
        let key = Key::new(b"a-long-enough-cluster-secret");
        let bytes = sealed(Some(&key));
        let (frame, body) = open(&bytes, Some(&key)).unwrap();
        assert_eq!(frame.id, 77);
        assert_eq!(Heartbeat::decode(frame.key, body).unwrap(), heartbeat());
        let other = Key::new(b"another-cluster-secret-entirely");
        assert!(matches!(open(&bytes, Some(&other)), Err(SealError::Auth(_))));
        assert!(matches!(open(&bytes, None), Err(SealError::Auth(_))));
        let plain = sealed(None);
        assert!(matches!(open(&plain, Some(&key)), Err(SealError::Auth(_))));
        assert!(open(&plain, None).is_ok());
    }

    #[test]
    fn any_change_to_a_sealed_datagram_is_refused() {
        let key = Key::new(b"a-long-enough-cluster-secret");
        let bytes = sealed(Some(&key));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            // Fix the checksum so only the MAC can catch it.
            if i >= wire::header::CRC_START {
                let crc = crc32fast::hash(&bad[wire::header::CRC_START..]);
                bad[wire::header::CRC_OFFSET..wire::header::ID_OFFSET].copy_from_slice(&crc.to_le_bytes());
            }
            assert!(open(&bad, Some(&key)).is_err(), "a change at byte {i} went through");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(open(&long, Some(&key)).is_err());
    }

    #[test]
    fn fixed_frames_carry_the_same_mac() {
        let key = Key::new(b"a-long-enough-cluster-secret");
        let mut out = Vec::new();
        let body = View::default().encode(0).into_vec();
        seal(Frame::request(3, Command(0x40), b"s1", b""), body, Some(&key), Framing::Fixed, &mut out);
        assert_eq!(out.len(), wire::FRAME_LEN);
        let frame = Frame::decode_slice(&out).unwrap();
        let body = open_body(&frame, compact_prefix(&out, &frame), Some(&key)).unwrap();
        assert!(View::decode(body).is_ok());
    }
}
