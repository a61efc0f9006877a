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

/// The sha256 of everything `r` reads, as lowercase hex (read and hashed
/// at the same time).
pub fn sha256_reader(mut r: impl std::io::Read) -> std::io::Result<String> {
    let mut h = PipedSha256::new();
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

/// A sha256 computed on its own thread, so that reading the bytes and
/// hashing them overlap: `update` copies them into batches that the
/// hashing thread takes in order (at most two waiting, 1 MiB each).
pub struct PipedSha256 {
    batch: Vec<u8>,
    send: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    /// Batches hashed, back for reuse.
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<[u8; 32]>>,
}

const PIPE_BATCH: usize = 1 << 20;

impl PipedSha256 {
    pub fn new() -> PipedSha256 {
        let (send, take) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
        let (give_back, free) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for mut batch in take {
                h.update(&batch);
                batch.clear();
                let _ = give_back.send(batch);
            }
            h.finalize().into()
        });
        PipedSha256 {
            batch: Vec::with_capacity(PIPE_BATCH),
            send: Some(send),
            free,
            thread: Some(thread),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = data.len().min(PIPE_BATCH - self.batch.len());
            self.batch.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.batch.len() == PIPE_BATCH {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        let next = self
            .free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIPE_BATCH));
        let full = std::mem::replace(&mut self.batch, next);
        if let Some(send) = &self.send {
            // The thread only ends when `send` is dropped.
            send.send(full).expect("the hashing thread ended early");
        }
    }

    /// The digest of everything given to `update`.
    pub fn finalize(mut self) -> [u8; 32] {
        if !self.batch.is_empty() {
            self.flush();
        }
        self.send = None;
        let thread = self.thread.take().expect("finalized once");
        thread.join().expect("the hashing thread panicked")
    }
}

impl Default for PipedSha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PipedSha256 {
    fn drop(&mut self) {
        // Unfinished (an error on the way): let the thread end.
        self.send = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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

    #[test]
    fn piped_hash_is_the_hash() {
        let data: Vec<u8> = (0..(3 * PIPE_BATCH + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        // Pieces of every size, across batch boundaries.
        for piece in [1, 511, 4096, PIPE_BATCH - 1, PIPE_BATCH + 3, data.len()] {
            let mut h = PipedSha256::new();
            for chunk in data.chunks(piece) {
                h.update(chunk);
            }
            assert_eq!(hex(&h.finalize()), sha256_hex(&data), "pieces of {piece}");
        }
        assert_eq!(hex(&PipedSha256::new().finalize()), sha256_hex(b""));
        assert_eq!(sha256_reader(&data[..]).unwrap(), sha256_hex(&data));
        // Dropped unfinished: the thread ends.
        let mut h = PipedSha256::new();
        h.update(&data);
        drop(h);
    }
}
