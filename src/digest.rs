//! Content digests as images and stores spell them: `sha256:<64 hex>`.

use sha2::{Digest, Sha256};

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The sha256 of everything `r` reads, as lowercase hex.
pub fn sha256_reader(mut r: impl std::io::Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(hex(&h.finalize())),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The sha256 of `data`, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Whether `s` is 64 lowercase hex digits (a sha256 in hex).
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The hex part of `sha256:<64 hex>`, or `None`.
pub fn sha256_part(digest: &str) -> Option<&str> {
    digest.strip_prefix("sha256:").filter(|h| is_hex64(h))
}

/// Chain IDs of a layer stack as the image spec defines them (containerd's
/// `identity.ChainIDs`, Docker's layer store and containerd's snapshots
/// are keyed by them): chain[0] = diff[0], chain[i] = `sha256:` + the
/// sha256 of "chain[i-1] diff[i]".
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", sha256_hex(format!("{prev} {d}").as_bytes())),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(sha256_hex(b""), empty);
        assert!(is_hex64(empty));
        assert!(!is_hex64(&empty.to_uppercase()));
        assert!(!is_hex64(&empty[1..]));
        assert_eq!(sha256_part(&format!("sha256:{empty}")), Some(empty));
        assert_eq!(sha256_part(empty), None);
        assert_eq!(sha256_part(&format!("sha512:{empty}")), None);
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
