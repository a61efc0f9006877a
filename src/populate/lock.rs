//! `--lock FILE`: what each image of the run resolved to, so that a later
//! run bakes exactly the same images (`--locked`), as cargo's Cargo.lock
//! and `--locked`.
//!
//! The file is JSON:
//!
//! ```json
//! {
//!   "version": 1,
//!   "images": [
//!     {
//!       "source": "nginx:1.27",
//!       "digest": "sha256:…",
//!       "platform": "linux/amd64",
//!       "id": "sha256:…"
//!     }
//!   ]
//! }
//! ```
//!
//! `source` is the image as the list or the command line gives it (an
//! archive with its path), `digest` what a registry reference resolved to
//! (the manifest or index digest its tag named; absent for archives and
//! images of the engine), `id` the image ID (the digest of its config, for
//! the target `platform`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::report::PulledImage;
use crate::source::{ImageRef, Listed, Source};

/// The version of the format this tool writes and reads.
const VERSION: u32 = 1;

/// What `--lock` does with its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockMode {
    /// Writes what this run's images resolved to, after the run.
    Write(PathBuf),
    /// `--locked`: pulls exactly what the file says, which it does not
    /// change.
    Locked(PathBuf),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockFile {
    pub version: u32,
    pub images: Vec<Locked>,
}

/// One image of a [`LockFile`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locked {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub platform: String,
    pub id: String,
}

/// Reads the lock file at `path`.
pub fn read(path: &Path) -> Result<LockFile> {
    let text = std::fs::read(path)
        .with_context(|| format!("reading the lock file {} (--locked)", path.display()))?;
    let lock: LockFile = serde_json::from_slice(&text).with_context(|| {
        format!(
            "parsing the lock file {}: it is not what `populate --lock` writes",
            path.display()
        )
    })?;
    if lock.version != VERSION {
        bail!(
            "the lock file {} is of version {}; this tool reads version {VERSION}",
            path.display(),
            lock.version
        );
    }
    Ok(lock)
}

/// `--locked`: gives each registry image of `lines` the digest the lock
/// has for it (its tag, if any, is kept: it is checked to still name that
/// digest). Fails naming the lines the lock lacks. Returns, for each line,
/// the lock's entry, by the source as it is pulled now.
pub fn pin(lines: &mut [Listed], lock: &LockFile, path: &Path) -> Result<HashMap<String, Locked>> {
    let by_source: HashMap<&str, &Locked> =
        lock.images.iter().map(|l| (l.source.as_str(), l)).collect();
    let mut missing = vec![];
    let mut pinned = HashMap::new();
    for line in lines.iter_mut() {
        let source = line.source.to_string();
        let Some(entry) = by_source.get(source.as_str()) else {
            missing.push(format!("{source} ({})", line.origin));
            continue;
        };
        if let (Source::Registry(r), Some(digest)) = (&mut line.source, &entry.digest) {
            match &r.digest {
                Some(d) if d != digest => bail!(
                    "{source} ({}) names digest {d}, but the lock file {} has {digest} for it",
                    line.origin,
                    path.display()
                ),
                _ => r.digest = Some(digest.clone()),
            }
        }
        pinned.insert(line.source.to_string(), (*entry).clone());
    }
    if !missing.is_empty() {
        bail!(
            "the lock file {} has no entry for {} (--locked pulls only what the lock names; run with --lock and without --locked to update it)",
            path.display(),
            missing.join(", ")
        );
    }
    Ok(pinned)
}

/// `--locked`, after the pull: every image is the one the lock names
/// (an archive or an image of the engine can have changed).
pub fn check(images: &[PulledImage], pinned: &HashMap<String, Locked>, path: &Path) -> Result<()> {
    for img in images {
        let Some(entry) = pinned.get(&img.reference) else {
            continue;
        };
        if entry.id != img.id {
            bail!(
                "{} is image {}, not the {} the lock file {} names (--locked); run with --lock and without --locked to update it",
                entry.source,
                img.id,
                entry.id,
                path.display()
            );
        }
    }
    Ok(())
}

/// The lock of this run's images: each line's source, the digest its
/// registry gave (from the image's names in the store), its platform and
/// image ID.
pub fn of(images: &[PulledImage]) -> LockFile {
    let images = images
        .iter()
        .map(|img| {
            let registry_ref = match Source::parse(&img.reference, Path::new("")) {
                Ok(Source::Registry(r)) => Some(r),
                _ => None,
            };
            let digest = registry_ref.and_then(|r| {
                r.digest.clone().or_else(|| {
                    let repo = r.repository();
                    img.names.iter().find_map(|n| {
                        let named = ImageRef::parse(n).ok()?;
                        (named.repository() == repo).then_some(named.digest?)
                    })
                })
            });
            Locked {
                source: img.reference.clone(),
                digest,
                platform: img.platform.to_string(),
                id: img.id.clone(),
            }
        })
        .collect();
    LockFile {
        version: VERSION,
        images,
    }
}

/// Writes `lock` to `path`, whole or not at all.
pub fn write(path: &Path, lock: &LockFile) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut json = serde_json::to_vec_pretty(lock).context("making the lock file")?;
    json.push(b'\n');
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing the lock file {}", path.display()))?;
    std::io::Write::write_all(&mut tmp, &json)
        .with_context(|| format!("writing the lock file {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing the lock file {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(s: &str) -> Listed {
        Listed {
            source: Source::parse(s, Path::new("")).unwrap(),
            origin: format!("images.list:{s}"),
        }
    }

    #[test]
    fn pin_gives_the_locked_digest_and_names_missing_lines() {
        let d = format!("sha256:{}", "a".repeat(64));
        let lock = LockFile {
            version: VERSION,
            images: vec![Locked {
                source: "reg:5000/fp/a:1".into(),
                digest: Some(d.clone()),
                platform: "linux/amd64".into(),
                id: format!("sha256:{}", "b".repeat(64)),
            }],
        };
        let path = Path::new("images.lock");
        let mut lines = vec![listed("reg:5000/fp/a:1")];
        let pinned = pin(&mut lines, &lock, path).unwrap();
        let now = lines[0].source.to_string();
        assert_eq!(now, format!("reg:5000/fp/a:1@{d}"));
        assert_eq!(pinned[&now].source, "reg:5000/fp/a:1");

        let mut lines = vec![listed("reg:5000/fp/a:1"), listed("reg:5000/fp/b:2")];
        let e = format!("{:#}", pin(&mut lines, &lock, path).unwrap_err());
        assert!(
            e.contains("no entry for reg:5000/fp/b:2 (images.list:reg:5000/fp/b:2)"),
            "{e}"
        );

        let other = format!("sha256:{}", "c".repeat(64));
        let mut lines = vec![listed(&format!("reg:5000/fp/a:1@{other}"))];
        let mut lock2 = lock.clone();
        lock2.images[0].source = lines[0].source.to_string();
        let e = format!("{:#}", pin(&mut lines, &lock2, path).unwrap_err());
        assert!(e.contains("but the lock file images.lock has"), "{e}");
    }

    #[test]
    fn a_lock_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.lock");
        let lock = LockFile {
            version: VERSION,
            images: vec![Locked {
                source: "docker-archive:/x.tar".into(),
                digest: None,
                platform: "linux/arm64".into(),
                id: format!("sha256:{}", "b".repeat(64)),
            }],
        };
        write(&path, &lock).unwrap();
        assert_eq!(read(&path).unwrap().images, lock.images);
        std::fs::write(&path, r#"{"version":2,"images":[]}"#).unwrap();
        let e = format!("{:#}", read(&path).unwrap_err());
        assert!(e.contains("of version 2"), "{e}");
    }
}
