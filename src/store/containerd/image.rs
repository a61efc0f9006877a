//! containerd's image records and what they point at, as `inspect` and
//! `verify` read them: the records and labels of a namespace in meta.db
//! (core/metadata/buckets.go), the manifests, indexes and configs in the
//! content store, the chain IDs a platform's layers are unpacked under,
//! and the namespace's overlayfs snapshot records.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;

use super::bolt::{self, Bucket};
use super::{layout, ROOT};
use crate::digest::{chain_ids, sha256_part};
use crate::fsread::{join, show, FsRead};
use crate::store::verify_common::diff_ids;

/// The label that makes an image the CRI's (the kubelet lists it).
pub const MANAGED: (&str, &str) = ("io.cri-containerd.image", "managed");
/// The label that keeps the kubelet's image garbage collection off it.
pub const PINNED: (&str, &str) = ("io.cri-containerd.pinned", "pinned");
/// The namespace of the kubelet's (CRI) images.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The snapshotter images are unpacked into.
pub const SNAPSHOTTER: &str = "overlayfs";

/// Labels by key.
pub type Labels = BTreeMap<String, String>;

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The keys and values of a `labels` bucket (empty when there is none).
pub fn labels(bucket: Option<Bucket<'_>>) -> Result<Labels> {
    let mut out = Labels::new();
    if let Some(b) = bucket {
        for (k, e) in b.entries()? {
            if let bolt::Entry::Value(v) = e {
                out.insert(utf8(k), utf8(v));
            }
        }
    }
    Ok(out)
}

/// The namespaces of meta.db (`v1/<namespace>`), in key order.
pub fn namespaces<'a>(db: &bolt::Db<'a>) -> Result<Vec<(String, Bucket<'a>)>> {
    let Some(v1) = db.root().bucket(b"v1")? else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    for (name, e) in v1.entries()? {
        if let bolt::Entry::Bucket(b) = e {
            out.push((utf8(name), b));
        }
    }
    Ok(out)
}

/// One image record of a namespace.
#[derive(Debug, Clone)]
pub struct Record {
    pub name: String,
    /// Its target's digest and media type (empty when absent).
    pub digest: String,
    pub media_type: String,
    pub labels: Labels,
}

impl Record {
    pub fn pinned(&self) -> bool {
        self.labels.get(PINNED.0).map(String::as_str) == Some(PINNED.1)
    }
}

/// The image records of namespace `ns`, in name order.
pub fn records(ns: &Bucket<'_>) -> Result<Vec<Record>> {
    let Some(images) = ns.bucket(b"images")? else {
        return Ok(vec![]);
    };
    let mut out = vec![];
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
        out.push(Record {
            name: utf8(name),
            digest: field(b"digest")?,
            media_type: field(b"mediatype")?,
            labels: labels(image.bucket(b"labels")?)?,
        });
    }
    Ok(out)
}

/// The labels of the namespace's content record of `digest`; None when the
/// namespace has no such record (containerd then acts as if the blob were
/// not there).
pub fn content_labels(ns: &Bucket<'_>, digest: &str) -> Result<Option<Labels>> {
    let Some(content) = ns.bucket(b"content")? else {
        return Ok(None);
    };
    let Some(blobs) = content.bucket(b"blob")? else {
        return Ok(None);
    };
    match blobs.bucket(digest.as_bytes())? {
        Some(r) => Ok(Some(labels(r.bucket(b"labels")?)?)),
        None => Ok(None),
    }
}

/// A namespace's record of an overlayfs snapshot (`snapshots/overlayfs/<key>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The snapshotter's own key (`k8s.io/12/sha256:...`).
    pub name: String,
    /// The parent's key in the namespace (a chain ID); None for a base.
    pub parent: Option<String>,
}

/// The namespace's overlayfs snapshot `key`; None when absent.
pub fn snapshot(ns: &Bucket<'_>, key: &str) -> Result<Option<SnapshotRecord>> {
    let Some(snaps) = ns.bucket(b"snapshots")? else {
        return Ok(None);
    };
    let Some(overlay) = snaps.bucket(SNAPSHOTTER.as_bytes())? else {
        return Ok(None);
    };
    let Some(s) = overlay.bucket(key.as_bytes())? else {
        return Ok(None);
    };
    Ok(Some(SnapshotRecord {
        name: s.value(b"name")?.map(utf8).unwrap_or_default(),
        parent: s.value(b"parent")?.map(utf8).filter(|p| !p.is_empty()),
    }))
}

/// The content store's path of a `sha256:` digest; None for another
/// spelling.
pub fn blob_path(digest: &str) -> Option<Vec<u8>> {
    let hex = sha256_part(digest)?;
    Some(join(
        &join(ROOT.as_bytes(), layout::BLOBS.as_bytes()),
        hex.as_bytes(),
    ))
}

/// A stored blob, whole; None when it is not in the content store.
pub fn read_blob(fs: &dyn FsRead, digest: &str) -> Result<Option<Vec<u8>>> {
    let Some(path) = blob_path(digest) else {
        return Ok(None);
    };
    if fs.stat(&path)?.is_none() {
        return Ok(None);
    }
    fs.read_all(&path)
        .with_context(|| format!("reading {}", show(&path)))
        .map(Some)
}

/// A descriptor in a manifest or index.
#[derive(Debug, Clone, Deserialize)]
pub struct Desc {
    pub digest: String,
}

/// A manifest or an index, as far as images are resolved.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub config: Option<Desc>,
    #[serde(default)]
    pub layers: Vec<Desc>,
    /// Present on an index (manifest list).
    #[serde(default)]
    pub manifests: Option<Vec<Desc>>,
}

/// Parses a manifest or index blob.
pub fn parse_manifest(blob: &[u8]) -> Result<Manifest> {
    serde_json::from_slice(blob).context("parsing it as an image manifest or index")
}

/// One platform's image: its manifest, config and layers.
#[derive(Debug, Clone)]
pub struct Platform {
    pub config: String,
    pub layers: Vec<Desc>,
    pub diff_ids: Vec<String>,
    pub chain_ids: Vec<String>,
}

/// The platform images of a target that are stored (manifest and config
/// in the content store): the target itself when it is a manifest, the
/// stored manifests of an index (a pull fetches one platform's).
pub fn platforms(fs: &dyn FsRead, target: &str) -> Result<Vec<Platform>> {
    let Some(blob) = read_blob(fs, target)? else {
        return Ok(vec![]);
    };
    let top = parse_manifest(&blob)?;
    let manifests = match top.manifests {
        Some(list) => {
            let mut out = vec![];
            for d in list {
                if let Some(b) = read_blob(fs, &d.digest)? {
                    out.push(parse_manifest(&b)?);
                }
            }
            out
        }
        None => vec![top],
    };
    let mut out = vec![];
    for m in manifests {
        let Some(config) = m.config else { continue };
        let Some(c) = read_blob(fs, &config.digest)? else {
            continue;
        };
        let diffs = diff_ids(&c)?;
        out.push(Platform {
            config: config.digest,
            layers: m.layers,
            chain_ids: chain_ids(&diffs),
            diff_ids: diffs,
        });
    }
    Ok(out)
}

/// Whether the namespace has the snapshot of a platform's top layer (an
/// image without layers has nothing to unpack).
pub fn is_unpacked(ns: &Bucket<'_>, p: &Platform) -> Result<bool> {
    match p.chain_ids.last() {
        None => Ok(true),
        Some(top) => Ok(snapshot(ns, top)?.is_some()),
    }
}
