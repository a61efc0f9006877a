//! Reading an archive: the outer tar (compressed or not) once, or a
//! directory, file by file. Every file is hashed and its size counted; the
//! small ones that may be JSON are kept for the readers of manifest.json
//! and index.json. Paths are normalized and links followed here, so that
//! the readers ask for a file by the one name it has.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::compress::{self, read_full, Compression, SNIFF_LEN};
use crate::digest::{hex, is_hex64};
use crate::tar::{Archive, EntryType};

/// Largest JSON document read (manifest.json, index.json, a manifest, a
/// config): real ones are a few KiB, big configs some hundred KiB.
const MAX_JSON: u64 = 4 << 20;
/// Small files of a tar kept in memory while it is read once, in all.
const MAX_KEPT: u64 = 64 << 20;
/// Indexes inside indexes, and links to links, followed at most.
pub(super) const MAX_DEPTH: usize = 8;
pub(super) const COPY_BUF: usize = 1 << 20;

/// A path inside the archive in one spelling: no `.`, no empty
/// components, no leading `/`; `..` may not leave the archive.
pub(super) fn normalize(path: &str) -> Result<String> {
    let mut parts: Vec<&str> = vec![];
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    bail!("the path {path:?} leads out of the archive");
                }
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        bail!("the path {path:?} names no file");
    }
    Ok(parts.join("/"))
}

/// `sha256:<hex>` into its hex part.
pub(super) fn digest_hex(digest: &str) -> Result<&str> {
    match digest.split_once(':') {
        Some(("sha256", h)) if is_hex64(h) => Ok(h),
        Some(("sha256", _)) => bail!("{digest:?} is not a sha256 digest (64 lowercase hex digits)"),
        Some((alg, _)) => bail!("the digest {digest:?} uses {alg}: only sha256 is supported"),
        None => bail!("{digest:?} is not a digest (sha256:<hex>)"),
    }
}

pub(super) fn blob_path(hex: &str) -> String {
    format!("blobs/sha256/{hex}")
}

/// Reads and hashes a stream, counting its bytes.
pub(super) struct Hashing<R> {
    inner: R,
    hash: Sha256,
    n: u64,
}

impl<R: Read> Hashing<R> {
    pub(super) fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            hash: Sha256::new(),
            n: 0,
        }
    }

    pub(super) fn finish(self) -> (String, u64) {
        (hex(&self.hash.finalize()), self.n)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// A regular file of a tar, as seen when it was read.
#[derive(Debug)]
struct TarFile {
    hex: String,
    size: u64,
    compression: Compression,
    /// The content of small files that may be JSON.
    content: Option<Vec<u8>>,
}

/// Everything a single read of a tar learnt about it.
#[derive(Debug, Default)]
struct TarListing {
    files: HashMap<String, TarFile>,
    /// Symbolic and hard links: path -> the path they lead to.
    links: HashMap<String, String>,
}

fn scan_tar(path: &Path) -> Result<TarListing> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (_, mut stream) =
        compress::decompress(file).with_context(|| format!("reading {}", path.display()))?;
    let mut listing = TarListing::default();
    let mut kept = 0u64;
    let mut buf = vec![0u8; COPY_BUF];
    {
        let mut ar = Archive::new(&mut stream);
        while let Some(mut entry) = ar
            .next_entry()
            .with_context(|| format!("{}: not a complete tar archive", path.display()))?
        {
            let raw = String::from_utf8_lossy(&entry.meta.path).into_owned();
            let name = match entry.meta.kind {
                EntryType::Directory => continue,
                _ => normalize(&raw).with_context(|| format!("{}", path.display()))?,
            };
            if listing.files.contains_key(&name) || listing.links.contains_key(&name) {
                bail!("{}: {name:?} appears twice in the archive", path.display());
            }
            match entry.meta.kind {
                EntryType::Regular | EntryType::Continuous => {}
                EntryType::Symlink | EntryType::Link => {
                    let target = entry.meta.link.clone().unwrap_or_default();
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let joined = match (entry.meta.kind, target.starts_with('/')) {
                        // A symlink is relative to its directory (and stays
                        // inside the archive, as Docker's loader keeps it).
                        (EntryType::Symlink, false) => match name.rsplit_once('/') {
                            Some((dir, _)) => format!("{dir}/{target}"),
                            None => target.clone(),
                        },
                        _ => target.clone(),
                    };
                    let to = normalize(&joined).with_context(|| {
                        format!("{}: the link {name:?} -> {target:?}", path.display())
                    })?;
                    listing.links.insert(name, to);
                    continue;
                }
                // Devices, fifos: nothing an image archive uses.
                _ => continue,
            }
            let size = entry.meta.size;
            let mut hashing = Hashing::new(&mut entry.data);
            let mut head = [0u8; SNIFF_LEN];
            let n = read_full(&mut hashing, &mut head)
                .with_context(|| format!("{}: reading {name:?}", path.display()))?;
            let first = head[..n].iter().find(|b| !b.is_ascii_whitespace());
            // Layers (tar, compressed) never start like JSON: they are not
            // kept, however small (skopeo writes them as top-level files).
            let json_like = name.ends_with(".json") || matches!(first, Some(b'{' | b'['));
            let mut content = None;
            if json_like && size <= MAX_JSON {
                kept += size;
                if kept > MAX_KEPT {
                    bail!(
                        "{}: more than {} MiB of small files that may be JSON metadata; not an image archive",
                        path.display(),
                        MAX_KEPT >> 20
                    );
                }
                let mut data = head[..n].to_vec();
                hashing
                    .read_to_end(&mut data)
                    .with_context(|| format!("{}: reading {name:?}", path.display()))?;
                content = Some(data);
            } else {
                loop {
                    let k = hashing
                        .read(&mut buf)
                        .with_context(|| format!("{}: reading {name:?}", path.display()))?;
                    if k == 0 {
                        break;
                    }
                }
            }
            let (hex, got) = hashing.finish();
            if got != size {
                bail!(
                    "{}: {name:?} is shorter than its header says",
                    path.display()
                );
            }
            listing.files.insert(
                name,
                TarFile {
                    hex,
                    size,
                    compression: Compression::sniff(&head[..n]),
                    content,
                },
            );
        }
    }
    // Read to the end so that a compressed stream's checksum is checked.
    io::copy(&mut stream, &mut io::sink())
        .with_context(|| format!("{}: a corrupt or truncated stream", path.display()))?;
    Ok(listing)
}

/// A file of the archive that was hashed.
pub(super) struct FileInfo {
    /// Where it really is (links followed).
    pub(super) source: String,
    pub(super) hex: String,
    pub(super) size: u64,
    pub(super) compression: Compression,
}

/// The archive being checked, opened by [`Input::dir`] or [`Input::tar`].
pub(super) struct Input {
    files: Files,
}

/// A tar read once, or a directory.
enum Files {
    Tar {
        path: PathBuf,
        listing: TarListing,
    },
    Dir {
        path: PathBuf,
        hashed: HashMap<String, (String, u64, Compression)>,
    },
}

impl Input {
    /// A directory: its files are hashed when first asked for.
    pub(super) fn dir(path: &Path) -> Input {
        Input {
            files: Files::Dir {
                path: path.to_path_buf(),
                hashed: HashMap::new(),
            },
        }
    }

    /// A tar, read whole once now.
    pub(super) fn tar(path: &Path) -> Result<Input> {
        Ok(Input {
            files: Files::Tar {
                path: path.to_path_buf(),
                listing: scan_tar(path)?,
            },
        })
    }

    pub(super) fn path(&self) -> &Path {
        match &self.files {
            Files::Tar { path, .. } | Files::Dir { path, .. } => path,
        }
    }

    /// `name` with links followed, in a tar.
    fn resolve<'a>(listing: &'a TarListing, name: &str) -> Option<(String, &'a TarFile)> {
        let mut name = name.to_string();
        for _ in 0..=MAX_DEPTH {
            if let Some(f) = listing.files.get(&name) {
                return Some((name, f));
            }
            name = listing.links.get(&name)?.clone();
        }
        None
    }

    pub(super) fn has(&self, name: &str) -> bool {
        match &self.files {
            Files::Tar { listing, .. } => Input::resolve(listing, name).is_some(),
            Files::Dir { path, .. } => path.join(name).is_file(),
        }
    }

    fn missing(&self, name: &str) -> anyhow::Error {
        anyhow!(
            "{}: {name} is missing (an incomplete archive?)",
            self.path().display()
        )
    }

    /// The content of a JSON document, at most [`MAX_JSON`] bytes.
    pub(super) fn json(&self, name: &str) -> Result<Vec<u8>> {
        match &self.files {
            Files::Tar { path, listing } => {
                let (_, f) = Input::resolve(listing, name).ok_or_else(|| self.missing(name))?;
                match &f.content {
                    Some(c) => Ok(c.clone()),
                    None if f.size > MAX_JSON => bail!(
                        "{}: {name} has {} bytes: more than the {} MiB read of a JSON document",
                        path.display(),
                        f.size,
                        MAX_JSON >> 20
                    ),
                    None => bail!("{}: {name} is not a JSON document", path.display()),
                }
            }
            Files::Dir { path, .. } => {
                let file_path = path.join(name);
                let file = match File::open(&file_path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.missing(name)),
                    Err(e) => {
                        return Err(e).with_context(|| format!("opening {}", file_path.display()))
                    }
                };
                let mut data = vec![];
                file.take(MAX_JSON + 1)
                    .read_to_end(&mut data)
                    .with_context(|| format!("reading {}", file_path.display()))?;
                if data.len() as u64 > MAX_JSON {
                    bail!(
                        "{}: more than the {} MiB read of a JSON document",
                        file_path.display(),
                        MAX_JSON >> 20
                    );
                }
                Ok(data)
            }
        }
    }

    /// A file hashed (in a directory: read now, once).
    pub(super) fn file(&mut self, name: &str) -> Result<FileInfo> {
        let missing = self.missing(name);
        match &mut self.files {
            Files::Tar { listing, .. } => {
                let (source, f) = Input::resolve(listing, name).ok_or(missing)?;
                Ok(FileInfo {
                    source,
                    hex: f.hex.clone(),
                    size: f.size,
                    compression: f.compression,
                })
            }
            Files::Dir { path, hashed } => {
                if let Some((hex, size, compression)) = hashed.get(name) {
                    return Ok(FileInfo {
                        source: name.to_string(),
                        hex: hex.clone(),
                        size: *size,
                        compression: *compression,
                    });
                }
                let file_path = path.join(name);
                let file = match File::open(&file_path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing),
                    Err(e) => {
                        return Err(e).with_context(|| format!("opening {}", file_path.display()))
                    }
                };
                let mut hashing = Hashing::new(file);
                let mut head = [0u8; SNIFF_LEN];
                let n = read_full(&mut hashing, &mut head)
                    .with_context(|| format!("reading {}", file_path.display()))?;
                io::copy(&mut hashing, &mut io::sink())
                    .with_context(|| format!("reading {}", file_path.display()))?;
                let (hex, size) = hashing.finish();
                let compression = Compression::sniff(&head[..n]);
                hashed.insert(name.to_string(), (hex.clone(), size, compression));
                Ok(FileInfo {
                    source: name.to_string(),
                    hex,
                    size,
                    compression,
                })
            }
        }
    }
}

pub(super) fn parse_json<'a, T: Deserialize<'a>>(
    src: &Input,
    name: &str,
    data: &'a [u8],
) -> Result<T> {
    serde_json::from_slice(data)
        .with_context(|| format!("{}: {name} is not well-formed", src.path().display()))
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{check, ArchiveKind};

    #[test]
    fn truncated_and_corrupt_archives() {
        let dir = tempfile::tempdir().unwrap();
        let (tar, _, _) = legacy_archive(&["a:1"]);
        let gz = gzip(&tar);
        for (name, bytes) in [
            ("cut.tar", &tar[..tar.len() / 2 + 100]),
            ("cut.tar.gz", &gz[..gz.len() - 10]),
            (
                "notatar",
                &b"just some text that is not a tar archive at all"[..],
            ),
        ] {
            let p = write(dir.path(), name, bytes);
            let e = err(check(ArchiveKind::DockerArchive, &p, None, &amd64(), false));
            assert!(e.contains(name), "{e}");
        }
        // A flipped byte in the gzip stream's checksum.
        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 6] ^= 0xff;
        let p = write(dir.path(), "crc.tar.gz", &bad);
        err(check(ArchiveKind::DockerArchive, &p, None, &amd64(), false));
        let e = err(check(
            ArchiveKind::DockerArchive,
            &dir.path().join("absent.tar"),
            None,
            &amd64(),
            false,
        ));
        assert!(e.contains("absent.tar"), "{e}");
    }
}
