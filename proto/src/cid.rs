//! Content identifiers (CIDs) of sealed values, so a blob kept on IPFS or in
//! any other store can be checked against its `health_data` row.
//!
//! A sealed value is addressed by **CIDv1, raw codec (0x55), sha2-256
//! multihash, base32-lower multibase** — the `bafkrei…` form — of its
//! `ciphertext` bytes exactly as carried in the envelope (WIRE.md §2.3:
//! the AES-GCM ciphertext followed by the 16-byte tag; not the nonce or the
//! key id, which stay in the row). Those are the bytes a blob store would
//! hold; `ipfs add --raw-leaves --cid-version 1` of a file of those bytes
//! (one chunk: they are at most 4,096 bytes) gives the same CID.
//!
//! The encoding is a few lines (RFC 4648 base32, lower case, no padding;
//! one-byte varints for the codecs used here), so no multiformats crate is
//! pulled in.

use sha2::{Digest, Sha256};

/// Multicodec of raw bytes.
pub const RAW: u8 = 0x55;
/// Multicodec of a dag-pb node (what UnixFS files without raw leaves are).
pub const DAG_PB: u8 = 0x70;
/// Multihash code of sha2-256, and its digest length.
const SHA2_256: u8 = 0x12;
const SHA2_256_LEN: u8 = 32;

/// The CIDv1 text (`b` + base32 lower) of a sha2-256 `digest` under `codec`.
/// Both codes used here are below 0x80, so each varint is one byte.
pub fn v1_sha256(codec: u8, digest: &[u8; 32]) -> String {
    debug_assert!(codec < 0x80, "one-byte varint codecs only");
    let mut bytes = Vec::with_capacity(4 + 32);
    bytes.extend_from_slice(&[0x01, codec, SHA2_256, SHA2_256_LEN]);
    bytes.extend_from_slice(digest);
    let mut out = String::with_capacity(1 + (bytes.len() * 8).div_ceil(5));
    out.push('b');
    base32_lower(&bytes, &mut out);
    out
}

/// The CID under which a sealed value's `ciphertext` is stored
/// (`health_data.ipfs_data_cid`).
pub fn sealed_value_cid(ciphertext: &[u8]) -> String {
    v1_sha256(RAW, &Sha256::digest(ciphertext).into())
}

/// RFC 4648 base32, lower-case alphabet, no padding.
fn base32_lower(bytes: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
        buffer &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        // RFC 4648 §10, lower case, padding removed.
        for (input, expected) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            let mut s = String::new();
            base32_lower(input.as_bytes(), &mut s);
            assert_eq!(s, expected, "{input:?}");
        }
    }

    #[test]
    fn raw_cids_match_known_ones() {
        // The empty block and "hello" as raw-leaf CIDv1s (the values IPFS
        // tools print for them).
        assert_eq!(
            sealed_value_cid(b""),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        assert_eq!(
            sealed_value_cid(b"hello"),
            "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
        );
        let c = sealed_value_cid(&[0xAB; 4096]);
        assert!(c.starts_with("bafkrei") && c.len() == 59, "{c}");
    }
}
