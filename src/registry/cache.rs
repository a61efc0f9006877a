//! A local blob cache: an OCI image layout in a directory (`oci-layout`,
//! `index.json`, `blobs/sha256/<hex>`), shared safely by concurrent runs:
//! a blob is written to a temporary file beside its place, synced, checked
//! against its digest as it streams and renamed into place; a blob found
//! there is used only when its size matches and, the first time a run
//! uses it, its digest.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::AsyncReadExt;

use super::{is_sha256_digest, Blob, Client, ErrorKind, RegistryError};
use crate::digest::sha256_reader;
use crate::source::refs::ImageRef;

pub struct BlobCache {
    blobs: PathBuf,
    /// Digests whose file this run has checked.
    verified: Mutex<HashSet<String>>,
    /// One fetch of a digest at a time in this run.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes `name` in `dir` with `data` unless it exists (temporary file,
/// renamed: concurrent runs see all or nothing).
fn write_once(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let path = dir.join(name);
    if path.exists() {
        return Ok(());
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(data)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl BlobCache {
    /// The cache in `dir`, made when missing.
    pub fn open(dir: &Path) -> Result<BlobCache> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)
            .with_context(|| format!("making the blob cache {}", blobs.display()))?;
        write_once(dir, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        write_once(dir, "index.json", br#"{"schemaVersion":2,"manifests":[]}"#)?;
        Ok(BlobCache {
            blobs,
            verified: Mutex::default(),
            fetching: Mutex::default(),
        })
    }

    /// The blob's path in the cache, fetched with the client when missing.
    /// `fetched` is told the bytes fetched so far.
    pub async fn get(
        &self,
        client: &Client,
        r: &ImageRef,
        blob: &Blob,
        fetched: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<PathBuf> {
        if !is_sha256_digest(&blob.digest) {
            return Err(RegistryError::new(
                ErrorKind::InvalidManifest,
                format!("{r}: {:?} is not a sha256 digest", blob.digest),
            )
            .into());
        }
        let hex = &blob.digest["sha256:".len()..];
        let path = self.blobs.join(hex);
        let gate = lock(&self.fetching)
            .entry(blob.digest.clone())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if self.usable(&path, blob).await? {
            return Ok(path);
        }
        self.fetch(client, r, blob, &path, fetched).await?;
        lock(&self.verified).insert(blob.digest.clone());
        Ok(path)
    }

    /// Whether the file at `path` is the blob: its size, and its digest
    /// once per run. A wrong one is removed.
    async fn usable(&self, path: &Path, blob: &Blob) -> Result<bool> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the cached blob {}", path.display()))
            }
        };
        let fine = meta.len() == blob.size
            && (lock(&self.verified).contains(&blob.digest) || {
                let p = path.to_path_buf();
                let hex = tokio::task::spawn_blocking(move || {
                    std::fs::File::open(&p).and_then(sha256_reader)
                })
                .await
                .context("checking a cached blob")?
                .with_context(|| format!("reading the cached blob {}", path.display()))?;
                format!("sha256:{hex}") == blob.digest
            });
        if fine {
            lock(&self.verified).insert(blob.digest.clone());
            return Ok(true);
        }
        eprintln!(
            "warning: the cached blob {} is not {} ({} bytes): fetching it again",
            path.display(),
            blob.digest,
            blob.size
        );
        match std::fs::remove_file(path) {
            Ok(()) => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => {
                Err(e).with_context(|| format!("removing the bad cached blob {}", path.display()))
            }
        }
    }

    async fn fetch(
        &self,
        client: &Client,
        r: &ImageRef,
        blob: &Blob,
        path: &Path,
        fetched: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let mut reader = client.blob(r, blob).await?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.blobs)
            .with_context(|| format!("creating a temporary file in {}", self.blobs.display()))?;
        let mut file = tmp.as_file();
        let mut buf = vec![0u8; 256 << 10];
        let mut so_far = 0u64;
        loop {
            // The reader checks size and digest: it ends cleanly only when
            // they match.
            let n = reader
                .read(&mut buf)
                .await
                .with_context(|| format!("fetching {} of {r} into the cache", blob.digest))?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n])
                .with_context(|| format!("writing {}", tmp.path().display()))?;
            so_far += n as u64;
            fetched(so_far);
        }
        file.sync_all()
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        tmp.persist(path)
            .with_context(|| format!("moving a fetched blob to {}", path.display()))?;
        std::fs::File::open(&self.blobs)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.blobs.display()))?;
        Ok(())
    }
}

/// For the store writer, which reads the blobs once fetched.
impl BlobCache {
    /// Where the blob `digest` is (or would be) in the cache.
    pub fn path_of(&self, digest: &str) -> Result<PathBuf> {
        if !is_sha256_digest(digest) {
            anyhow::bail!("{digest:?} is not a sha256 digest");
        }
        Ok(self.blobs.join(&digest["sha256:".len()..]))
    }

    /// Whether the cache holds a file for `digest` (checked when [`Self::get`]
    /// takes it).
    pub fn contains(&self, digest: &str) -> bool {
        self.path_of(digest).is_ok_and(|p| p.is_file())
    }
}
