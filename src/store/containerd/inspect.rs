//! What `inspect` lists of containerd's store: the image records of every
//! namespace in its metadata database, read with [`super::bolt`], pinned
//! or not, unpacked or not.

use anyhow::{Context, Result};
use serde::Serialize;

use super::{bolt, image};
use super::{layout, ROOT};
use crate::fsread::{is_dir, join, show, FsRead};

/// containerd's store in `fs`; None when `/var/lib/containerd` does not
/// exist.
pub fn store(fs: &dyn FsRead) -> Result<Option<ContainerdStore>> {
    if !is_dir(fs, ROOT.as_bytes())? {
        return Ok(None);
    }
    containerd_store(fs)
        .with_context(|| format!("reading containerd's metadata in {ROOT}"))
        .map(Some)
}

/// containerd's image metadata.
#[derive(Debug, Serialize)]
pub struct ContainerdStore {
    /// Namespaces holding images ("moby", "k8s.io", "default", ...), sorted
    /// by name; empty when containerd has no metadata database yet.
    pub namespaces: Vec<ContainerdNamespace>,
}

/// One containerd namespace.
#[derive(Debug, Serialize)]
pub struct ContainerdNamespace {
    /// The namespace's name.
    pub name: String,
    /// Its images, sorted by name.
    pub images: Vec<ContainerdImage>,
}

/// One containerd image record.
#[derive(Debug, Serialize)]
pub struct ContainerdImage {
    /// The image name (a reference such as "example.com/library/nginx:1.27").
    pub name: String,
    /// Digest of the target: the manifest or index ("sha256:...").
    pub digest: String,
    /// Media type of the target (manifest, index, ...).
    pub media_type: String,
    /// Labelled `io.cri-containerd.pinned=pinned`: the kubelet's image
    /// garbage collection leaves it.
    pub pinned: bool,
    /// The snapshot of its top layer (its chain ID) is in the namespace's
    /// overlayfs snapshots: a container starts without unpacking.
    pub unpacked: bool,
}

/// containerd keeps images in its metadata database (core/metadata/
/// buckets.go): v1 / <namespace> / images / <name> / target / {digest,
/// mediatype, size}, and labels.
fn containerd_store(fs: &dyn FsRead) -> Result<ContainerdStore> {
    let meta = join(ROOT.as_bytes(), layout::META.as_bytes());
    if fs.stat(&meta)?.is_none() {
        return Ok(ContainerdStore { namespaces: vec![] });
    }
    let raw = fs
        .read_all(&meta)
        .with_context(|| format!("reading {}", show(&meta)))?;
    let namespaces =
        containerd_images(fs, &raw).with_context(|| format!("reading {}", show(&meta)))?;
    Ok(ContainerdStore { namespaces })
}

fn containerd_images(fs: &dyn FsRead, db: &[u8]) -> Result<Vec<ContainerdNamespace>> {
    let db = bolt::Db::open(db)?;
    let mut out = vec![];
    for (ns, bucket) in image::namespaces(&db)? {
        let mut list = vec![];
        for r in image::records(&bucket)? {
            list.push(ContainerdImage {
                unpacked: unpacked(fs, &bucket, &r.digest),
                pinned: r.pinned(),
                name: r.name,
                digest: r.digest,
                media_type: r.media_type,
            });
        }
        if !list.is_empty() {
            list.sort_by(|a, b| a.name.cmp(&b.name));
            out.push(ContainerdNamespace {
                name: ns,
                images: list,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Whether a stored platform image of `target` has its top layer's
/// snapshot; false when that cannot be told (`verify` says why).
fn unpacked(fs: &dyn FsRead, ns: &bolt::Bucket<'_>, target: &str) -> bool {
    let Ok(platforms) = image::platforms(fs, target) else {
        return false;
    };
    platforms
        .iter()
        .any(|p| image::is_unpacked(ns, p).unwrap_or(false))
}
