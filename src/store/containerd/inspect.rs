//! What `inspect` lists of containerd's store: the image records of every
//! namespace in its metadata database, read with [`super::bolt`].

use anyhow::{Context, Result};
use serde::Serialize;

use super::bolt;
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
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// containerd keeps images in its metadata database (core/metadata/
/// buckets.go): v1 / <namespace> / images / <name> / target / {digest,
/// mediatype, size}.
fn containerd_store(fs: &dyn FsRead) -> Result<ContainerdStore> {
    let meta = join(ROOT.as_bytes(), layout::META.as_bytes());
    if fs.stat(&meta)?.is_none() {
        return Ok(ContainerdStore { namespaces: vec![] });
    }
    let raw = fs
        .read_all(&meta)
        .with_context(|| format!("reading {}", show(&meta)))?;
    let namespaces = containerd_images(&raw).with_context(|| format!("reading {}", show(&meta)))?;
    Ok(ContainerdStore { namespaces })
}

fn containerd_images(db: &[u8]) -> Result<Vec<ContainerdNamespace>> {
    let db = bolt::Db::open(db)?;
    let root = db.root();
    let Some(v1) = root.bucket(b"v1")? else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    for (ns, entry) in v1.entries()? {
        let bolt::Entry::Bucket(ns_bucket) = entry else {
            continue;
        };
        let Some(images) = ns_bucket.bucket(b"images")? else {
            continue;
        };
        let mut list = vec![];
        for (name, entry) in images.entries()? {
            let bolt::Entry::Bucket(image) = entry else {
                continue;
            };
            let target = image.bucket(b"target")?;
            let field = |k: &[u8]| -> Result<String> {
                Ok(match &target {
                    Some(t) => t.value(k)?.map(utf8).unwrap_or_default(),
                    None => String::new(),
                })
            };
            list.push(ContainerdImage {
                name: utf8(name),
                digest: field(b"digest")?,
                media_type: field(b"mediatype")?,
            });
        }
        if !list.is_empty() {
            list.sort_by(|a, b| a.name.cmp(&b.name));
            out.push(ContainerdNamespace {
                name: utf8(ns),
                images: list,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
