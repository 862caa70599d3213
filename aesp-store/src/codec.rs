//! The encodings of the embedded store's records.
//!
//! - `versions` table: key `(user key, revision)` → a version record:
//!   `[kind: u8][create_revision: u64 LE][version: u64 LE][value…]`, kind 1 = put; a deletion
//!   is the single byte `[0]`.
//! - `log` table: key `revision` → the keys the commit changed, in operation order:
//!   `[count: u32 LE]` then per key `[len: u32 LE][key…]`.
//!
//! Decoding never panics: a short or malformed record is a [`Corrupt`] error.

use aesp_core::{KeyValue, Revision};

const PUT: u8 = 1;
const DELETE: u8 = 0;
const HEADER: usize = 1 + 8 + 8;

/// A record that does not decode.
#[derive(Debug)]
pub(crate) struct Corrupt(pub(crate) &'static str);

/// One version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    Put { create_revision: Revision, version: u64, value: Vec<u8> },
    Delete,
}

impl Version {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Version::Delete => vec![DELETE],
            Version::Put { create_revision, version, value } => {
                let mut out = Vec::with_capacity(HEADER + value.len());
                out.push(PUT);
                out.extend_from_slice(&create_revision.to_le_bytes());
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(value);
                out
            }
        }
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, Corrupt> {
        match bytes.split_first() {
            Some((&DELETE, [])) => Ok(Version::Delete),
            Some((&PUT, rest)) => {
                let (create, rest) = rest.split_first_chunk::<8>().ok_or(Corrupt("short version record"))?;
                let (version, value) =
                    rest.split_first_chunk::<8>().ok_or(Corrupt("short version record"))?;
                Ok(Version::Put {
                    create_revision: u64::from_le_bytes(*create),
                    version: u64::from_le_bytes(*version),
                    value: value.to_vec(),
                })
            }
            _ => Err(Corrupt("unknown version record kind")),
        }
    }

    /// The key-value this version is, if it is a put.
    pub(crate) fn into_kv(self, key: &[u8], mod_revision: Revision) -> Option<KeyValue> {
        match self {
            Version::Delete => None,
            Version::Put { create_revision, version, value } => {
                Some(KeyValue { key: key.to_vec(), value, create_revision, mod_revision, version })
            }
        }
    }
}

pub(crate) fn encode_keys<'a>(keys: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&u32::try_from(keys.len()).unwrap_or(u32::MAX).to_le_bytes());
    for key in keys {
        out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(key);
    }
    out
}

pub(crate) fn decode_keys(bytes: &[u8]) -> Result<Vec<Vec<u8>>, Corrupt> {
    let (count, mut rest) = bytes.split_first_chunk::<4>().ok_or(Corrupt("short log record"))?;
    let count = u32::from_le_bytes(*count) as usize;
    let mut keys = Vec::with_capacity(count.min(aesp_core::state::MAX_TXN_OPS));
    for _ in 0..count {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or(Corrupt("short log record"))?;
        let len = u32::from_le_bytes(*len) as usize;
        let (key, tail) = tail.split_at_checked(len).ok_or(Corrupt("short log record"))?;
        keys.push(key.to_vec());
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(Corrupt("trailing bytes in log record"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let put = Version::Put { create_revision: 3, version: 2, value: b"v".to_vec() };
        assert_eq!(Version::decode(&put.encode()).unwrap(), put);
        assert_eq!(Version::decode(&Version::Delete.encode()).unwrap(), Version::Delete);
        for garbage in [&b""[..], b"\x01\x00", b"\x07", b"\x00\x00"] {
            assert!(Version::decode(garbage).is_err());
        }
        let keys: Vec<&[u8]> = vec![b"a", b"", b"long key"];
        assert_eq!(decode_keys(&encode_keys(keys.iter().copied())).unwrap(), keys);
        for garbage in
            [&b""[..], b"\x01\x00\x00\x00", b"\x01\x00\x00\x00\x09\x00\x00\x00ab", b"\x00\x00\x00\x00x"]
        {
            assert!(decode_keys(garbage).is_err());
        }
    }
}
