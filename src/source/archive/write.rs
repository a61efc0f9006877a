//! Streaming checked images out as the docker-archive tar `docker load`
//! takes (see [`super::write_docker_archive`]).

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::image::{Blob, Plan};
use super::scan::{blob_path, normalize, Hashing};
use super::{ArchiveImage, ArchiveKind};
use crate::compress;
use crate::source::ImageRef;
use crate::tar::{Archive, EntryType, Writer};

/// Every entry of the archive: a regular file of root's, 0644, at time 0
/// (what `docker save` writes; nothing of this machine).
const ENTRY: crate::tar::Attrs = crate::tar::Attrs {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime: 0,
    mtime_nsec: 0,
    xattrs: Vec::new(),
};

/// Copies exactly `blob.size` bytes of `from` into `out` as the tar entry
/// `blobs/sha256/<hex>`, checking the digest.
fn copy_blob(
    archive: &Path,
    blob: &Blob,
    from: impl Read,
    out: &mut Writer<impl Write>,
) -> Result<()> {
    let name = blob_path(&blob.hex);
    let mut hashing = Hashing::new(from.take(blob.size));
    out.file(name.as_bytes(), &ENTRY, blob.size, &mut hashing)
        .with_context(|| format!("{}: copying {}", archive.display(), blob.source))?;
    let (hex, size) = hashing.finish();
    if size != blob.size || hex != blob.hex {
        bail!(
            "{}: {} changed since it was checked (now {size} bytes, sha256:{hex})",
            archive.display(),
            blob.source
        );
    }
    Ok(())
}

fn write_entry(out: &mut Writer<impl Write>, name: &str, data: &[u8]) -> Result<()> {
    out.file_bytes(name.as_bytes(), &ENTRY, data)
        .context("writing the converted archive")
}

/// The body of [`super::write_docker_archive`], on the parts of a
/// [`super::CheckedArchive`].
pub(super) fn docker_archive(
    kind: ArchiveKind,
    path: &Path,
    images: &[ArchiveImage],
    plans: &[Plan],
    out: impl Write,
) -> Result<()> {
    let mut out = Writer::new(out);
    let mut written: BTreeSet<String> = BTreeSet::new();
    #[derive(serde::Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Item {
        config: String,
        repo_tags: Vec<String>,
        layers: Vec<String>,
    }
    let mut manifest = vec![];
    for (img, plan) in images.iter().zip(plans) {
        let hex = img.id.trim_start_matches("sha256:");
        if written.insert(hex.to_string()) {
            write_entry(&mut out, &blob_path(hex), &plan.config)?;
        }
        manifest.push(Item {
            config: blob_path(hex),
            repo_tags: img.tags.iter().map(ImageRef::to_string).collect(),
            layers: plan.layers.iter().map(|l| blob_path(&l.hex)).collect(),
        });
    }
    // Each file once, even when several layers or images share it.
    let mut wanted: HashMap<&str, &Blob> = HashMap::new();
    for l in plans.iter().flat_map(|p| &p.layers) {
        if !written.contains(&l.hex) {
            wanted.entry(l.source.as_str()).or_insert(l);
        }
    }
    match kind {
        ArchiveKind::OciDir => {
            let mut todo: Vec<&Blob> = wanted.values().copied().collect();
            todo.sort_by(|x, y| x.source.cmp(&y.source));
            for blob in todo {
                if !written.insert(blob.hex.clone()) {
                    continue;
                }
                let p = path.join(&blob.source);
                let f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
                copy_blob(path, blob, f, &mut out)?;
            }
        }
        ArchiveKind::DockerArchive | ArchiveKind::OciArchive => {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let (_, mut stream) = compress::decompress(file)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut ar = Archive::new(&mut stream);
            while !wanted.is_empty() {
                let Some(entry) = ar
                    .next_entry()
                    .with_context(|| format!("{}: not a complete tar archive", path.display()))?
                else {
                    break;
                };
                if !matches!(entry.meta.kind, EntryType::Regular | EntryType::Continuous) {
                    continue;
                }
                let Ok(name) = normalize(&String::from_utf8_lossy(&entry.meta.path)) else {
                    continue;
                };
                let Some(blob) = wanted.remove(name.as_str()) else {
                    continue;
                };
                if !written.insert(blob.hex.clone()) {
                    continue;
                }
                copy_blob(path, blob, entry.data, &mut out)?;
            }
            if let Some(name) = wanted.keys().next() {
                bail!(
                    "{}: {name} is missing: the archive changed since it was checked",
                    path.display()
                );
            }
        }
    }
    let json = serde_json::to_vec(&manifest).context("encoding manifest.json")?;
    write_entry(&mut out, "manifest.json", &json)?;
    out.finish()
        .map(drop)
        .context("writing the converted archive")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::{check, write_docker_archive, ArchiveKind};

    #[test]
    fn changed_after_check() {
        let dir = tempfile::tempdir().unwrap();
        let (tar, _, _) = legacy_archive(&["a:1"]);
        let p = write(dir.path(), "a.tar", &tar);
        let a = check(ArchiveKind::DockerArchive, &p, None, &amd64(), false).unwrap();
        // Same size, other bytes in a layer ("two" -> "TWO").
        let pos = tar.windows(3).position(|w| w == b"two").unwrap();
        let mut changed = tar.clone();
        changed[pos..pos + 3].copy_from_slice(b"TWO");
        write(dir.path(), "a.tar", &changed);
        let mut out = vec![];
        let e = format!("{:#}", write_docker_archive(&a, &mut out).unwrap_err());
        assert!(e.contains("changed since it was checked"), "{e}");
        // No manifest.json was written: docker load refuses the stream.
        assert!(!out.windows(13).any(|w| w == b"manifest.json"));
    }
}
