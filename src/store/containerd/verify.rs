//! `verify` of containerd's store, from the store alone, through
//! [`FsRead`]:
//!
//! 1. every image record's labels: `io.cri-containerd.image=managed` in
//!    `k8s.io` (the kubelet lists only those; other namespaces, such as
//!    Docker's `moby`, carry no CRI labels, but those present must hold
//!    their value), `io.cri-containerd.pinned=pinned` when present;
//! 2. its target, and each stored platform manifest and config, are in the
//!    content store with a content record in the namespace, and carry the
//!    garbage collector's references: `containerd.io/gc.ref.content.m.<i>`
//!    on an index for each stored manifest, `…content.config` and
//!    `…content.l.<i>` on a manifest, `containerd.io/gc.ref.snapshot.
//!    overlayfs=<top chain ID>` on an unpacked config;
//! 3. each unpacked platform's snapshot chain: per layer, the namespace's
//!    overlayfs snapshot keyed by its chain ID with the chain ID below as
//!    parent, the snapshotter's own record (`metadata.db`: committed, the
//!    parent's key as parent) and its `snapshots/<id>/fs` directory;
//! 4. each snapshot's files against its layer blob ([`super::snapdiff`]),
//!    the blob against its digest and the tar against its diff ID;
//! 5. every other blob of the content store against its digest.
//!
//! Every failure names the image record (and namespace), the layer (its
//! diff ID) and the path; checks go on after a failure. What several
//! records share (their target, a layer) is checked once, for the first.

use std::collections::{BTreeSet, HashSet};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use super::bolt::{self, Bucket};
use super::image::{self, Desc, Platform, Record, CRI_NAMESPACE, MANAGED, PINNED, SNAPSHOTTER};
use super::snapdiff;
use super::{blobs, layout, ROOT};
use crate::digest::{chain_ids, hex, sha256_part};
use crate::fsread::{is_dir, join, show, FsRead};
use crate::store::verify_common::{diff_ids, Subject};
use crate::store::{Failure, Report};

/// The garbage collector's reference labels (core/metadata/gc.go,
/// core/images/labels.go).
const GC_CONTENT: &str = "containerd.io/gc.ref.content";
const GC_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.overlayfs";
/// The uncompressed digest containerd records on a layer blob.
const UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// The overlayfs snapshotter's `Kind` of a committed snapshot
/// (core/snapshots/snapshotter.go: Unknown, View, Active, Committed).
const COMMITTED: u8 = 3;

/// The bytes [`verify`] reads: every blob of the content store, once.
pub fn total(fs: &dyn FsRead) -> Result<u64> {
    let mut total = 0;
    for (path, _) in blobs(fs)? {
        if let Some(st) = fs.stat(&path)? {
            total += st.size;
        }
    }
    Ok(total)
}

/// Checks the store in `fs`; Err only when it cannot be read at all.
pub fn verify(fs: &dyn FsRead, progress: &mut dyn FnMut(u64)) -> Result<Report> {
    let all_blobs = blobs(fs)?;
    let mut v = Verify {
        fs,
        failures: vec![],
        hashed: HashSet::new(),
        targets: HashSet::new(),
        snapshots: BTreeSet::new(),
        bytes: 0,
        progress,
    };
    let meta_path = join(ROOT.as_bytes(), layout::META.as_bytes());
    let snap_path = join(ROOT.as_bytes(), layout::SNAPSHOTTER_META.as_bytes());
    let nobody = Subject::default();
    let mut images = 0;
    let meta = read_db(fs, &meta_path, &nobody, &mut v.failures)?;
    let snap = read_db(fs, &snap_path, &nobody, &mut v.failures)?;
    if let Some(meta) = &meta {
        let snapdb = snap.as_deref().and_then(|d| match bolt::Db::open(d) {
            Ok(db) => Some(db),
            Err(e) => {
                v.failures
                    .push(nobody.fail(Some(&snap_path), format!("{e:#}")));
                None
            }
        });
        match bolt::Db::open(meta).and_then(|db| {
            let mut n = 0;
            for (ns, bucket) in image::namespaces(&db)? {
                for r in image::records(&bucket)? {
                    n += 1;
                    v.image(&ns, &bucket, &r, snapdb.as_ref());
                }
            }
            Ok(n)
        }) {
            Ok(n) => images = n,
            Err(e) => v.failures.push(nobody.fail(
                Some(&meta_path),
                format!("reading the metadata database: {e:#}"),
            )),
        }
    }
    // 5. The blobs no layer check read.
    for (path, name) in all_blobs {
        if v.hashed.contains(&name) {
            continue;
        }
        let mut h = Sha256::new();
        let n = fs
            .read_file(&path, &mut |chunk| {
                h.update(chunk);
                (v.progress)(chunk.len() as u64);
                Ok(())
            })
            .with_context(|| format!("reading {}", show(&path)))?;
        v.bytes += n;
        let got = hex(&h.finalize());
        if got != name {
            v.failures.push(nobody.fail(
                Some(&path),
                format!("content hashes to sha256:{got}, not to its name"),
            ));
        }
    }
    Ok(Report {
        images,
        layers: v.snapshots.len(),
        bytes_hashed: v.bytes,
        failures: v.failures,
    })
}

/// A bbolt file, whole; None (and a failure when `required`) when absent.
fn read_db(
    fs: &dyn FsRead,
    path: &[u8],
    who: &Subject,
    failures: &mut Vec<Failure>,
) -> Result<Option<Vec<u8>>> {
    if fs.stat(path)?.is_none() {
        return Ok(None);
    }
    match fs.read_all(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) => {
            failures.push(who.fail(Some(path), format!("reading it: {e:#}")));
            Ok(None)
        }
    }
}

struct Verify<'a, 'p> {
    fs: &'a dyn FsRead,
    failures: Vec<Failure>,
    /// Blobs (hex) hashed by the layer checks.
    hashed: HashSet<String>,
    /// (namespace, target) checked already.
    targets: HashSet<(String, String)>,
    /// Snapshot IDs whose files were checked.
    snapshots: BTreeSet<u64>,
    bytes: u64,
    progress: &'p mut dyn FnMut(u64),
}

/// The content store's path of a digest, for messages.
fn blob_shown(digest: &str) -> Vec<u8> {
    image::blob_path(digest).unwrap_or_else(|| {
        join(
            &join(ROOT.as_bytes(), layout::BLOBS.as_bytes()),
            digest.as_bytes(),
        )
    })
}

fn meta_path() -> Vec<u8> {
    join(ROOT.as_bytes(), layout::META.as_bytes())
}

impl Verify<'_, '_> {
    fn fail(&mut self, who: &Subject, path: &[u8], problem: impl Into<String>) {
        self.failures.push(who.fail(Some(path), problem));
    }

    fn image(&mut self, ns_name: &str, ns: &Bucket<'_>, r: &Record, snapdb: Option<&bolt::Db<'_>>) {
        let who = Subject {
            image: Some(format!("{} (namespace {ns_name})", r.name)),
            layer: None,
        };
        // 1. The record's labels.
        let meta = meta_path();
        match r.labels.get(MANAGED.0) {
            Some(v) if v == MANAGED.1 => {}
            Some(v) => self.fail(
                &who,
                &meta,
                format!(
                    "its record has the label {}={v:?}, not {}",
                    MANAGED.0, MANAGED.1
                ),
            ),
            None if ns_name == CRI_NAMESPACE => self.fail(
                &who,
                &meta,
                format!(
                    "its record lacks the label {}={}: the kubelet does not list it",
                    MANAGED.0, MANAGED.1
                ),
            ),
            None => {}
        }
        if let Some(v) = r.labels.get(PINNED.0) {
            if v != PINNED.1 {
                self.fail(
                    &who,
                    &meta,
                    format!(
                        "its record has the label {}={v:?}, not {}",
                        PINNED.0, PINNED.1
                    ),
                );
            }
        }
        // 2.-4. What it points at, once per namespace.
        if !self.targets.insert((ns_name.to_string(), r.digest.clone())) {
            return;
        }
        if sha256_part(&r.digest).is_none() {
            self.fail(
                &who,
                &meta,
                format!(
                    "its record's target digest {:?} is not a sha256 digest",
                    r.digest
                ),
            );
            return;
        }
        let Some((blob, _)) = self.stored(&who, ns, &r.digest, "target") else {
            return;
        };
        let target = match image::parse_manifest(&blob) {
            Ok(m) => m,
            Err(e) => {
                self.fail(&who, &blob_shown(&r.digest), format!("{e:#}"));
                return;
            }
        };
        let mut platforms: Vec<(String, image::Manifest, bool)> = vec![];
        match target.manifests {
            Some(list) => {
                let labels = image::content_labels(ns, &r.digest)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                for (i, d) in list.iter().enumerate() {
                    let key = format!("{GC_CONTENT}.m.{i}");
                    let stored = image::blob_path(&d.digest)
                        .is_some_and(|p| matches!(self.fs.stat(&p), Ok(Some(_))));
                    let label = labels.get(&key);
                    if label.is_some_and(|l| l != &d.digest) || (stored && label.is_none()) {
                        self.fail(
                            &who,
                            &blob_shown(&r.digest),
                            format!(
                                "the index's content record has {key}={}, its manifest {i} is {}: the garbage collector would not keep that manifest",
                                label.map_or("(none)", String::as_str),
                                d.digest
                            ),
                        );
                    }
                    if !stored {
                        continue; // another platform's, not pulled
                    }
                    let Some((b, _)) = self.stored(&who, ns, &d.digest, "manifest") else {
                        continue;
                    };
                    match image::parse_manifest(&b) {
                        Ok(m) => platforms.push((d.digest.clone(), m, true)),
                        Err(e) => self.fail(&who, &blob_shown(&d.digest), format!("{e:#}")),
                    }
                }
            }
            None => platforms.push((r.digest.clone(), target, false)),
        }
        let mut unpacked = 0;
        let mut any = false;
        for (digest, m, in_index) in platforms {
            if let Some(p) = self.platform(&who, ns, &digest, m, in_index) {
                any = true;
                if self.chain(&who, ns, &p, snapdb) {
                    unpacked += 1;
                }
            }
        }
        if !any {
            self.fail(
                &who,
                &blob_shown(&r.digest),
                "none of its platform images is in the content store (a manifest with its config)",
            );
        } else if unpacked == 0 {
            self.fail(
                &who,
                &meta,
                format!("none of its platform images is unpacked: no {SNAPSHOTTER} snapshot of a top layer"),
            );
        }
    }

    /// A blob that must be stored, with its content record's labels in
    /// the namespace; None (and a failure) when it is not.
    fn stored(
        &mut self,
        who: &Subject,
        ns: &Bucket<'_>,
        digest: &str,
        what: &str,
    ) -> Option<(Vec<u8>, image::Labels)> {
        let path = blob_shown(digest);
        let blob = match image::read_blob(self.fs, digest) {
            Ok(Some(b)) => b,
            Ok(None) => {
                self.fail(
                    who,
                    &path,
                    format!("its {what} {digest} is missing from the content store"),
                );
                return None;
            }
            Err(e) => {
                self.fail(who, &path, format!("{e:#}"));
                return None;
            }
        };
        match image::content_labels(ns, digest) {
            Ok(Some(l)) => Some((blob, l)),
            Ok(None) => {
                self.fail(
                    who,
                    &meta_path(),
                    format!("its {what} {digest} has no content record in the namespace: containerd acts as if it were missing"),
                );
                None
            }
            Err(e) => {
                self.fail(who, &meta_path(), format!("{e:#}"));
                None
            }
        }
    }

    /// A platform manifest and its config, with their GC labels; None when
    /// the config is not stored (another platform of an index) or broken.
    fn platform(
        &mut self,
        who: &Subject,
        ns: &Bucket<'_>,
        digest: &str,
        m: image::Manifest,
        in_index: bool,
    ) -> Option<Platform> {
        let path = blob_shown(digest);
        let Some(config) = m.config else {
            self.fail(who, &path, "the manifest has no config");
            return None;
        };
        let config_stored = image::blob_path(&config.digest)
            .is_some_and(|p| matches!(self.fs.stat(&p), Ok(Some(_))));
        if in_index && !config_stored {
            return None;
        }
        let labels = image::content_labels(ns, digest)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut want: Vec<(String, &Desc)> = vec![(format!("{GC_CONTENT}.config"), &config)];
        want.extend(
            m.layers
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("{GC_CONTENT}.l.{i}"), l)),
        );
        for (key, d) in want {
            let got = labels.get(&key);
            if got != Some(&d.digest) {
                self.fail(
                    who,
                    &path,
                    format!(
                        "the manifest's content record has {key}={}, the manifest says {}: the garbage collector would not keep it",
                        got.map_or("(none)", String::as_str),
                        d.digest
                    ),
                );
            }
        }
        let (blob, _) = self.stored(who, ns, &config.digest, "config")?;
        let diffs = match diff_ids(&blob) {
            Ok(d) => d,
            Err(e) => {
                self.fail(who, &blob_shown(&config.digest), format!("{e:#}"));
                return None;
            }
        };
        if diffs.len() != m.layers.len() {
            self.fail(
                who,
                &path,
                format!(
                    "the manifest has {} layers, its config {} diff IDs",
                    m.layers.len(),
                    diffs.len()
                ),
            );
            return None;
        }
        Some(Platform {
            config: config.digest,
            layers: m.layers,
            chain_ids: chain_ids(&diffs),
            diff_ids: diffs,
        })
    }

    /// The snapshot chain of an unpacked platform (3.) and each
    /// snapshot's files (4.); whether it is unpacked.
    fn chain(
        &mut self,
        who: &Subject,
        ns: &Bucket<'_>,
        p: &Platform,
        snapdb: Option<&bolt::Db<'_>>,
    ) -> bool {
        let Some(top) = p.chain_ids.last() else {
            return true;
        };
        let config_path = blob_shown(&p.config);
        let label = image::content_labels(ns, &p.config)
            .ok()
            .flatten()
            .and_then(|l| l.get(GC_SNAPSHOT).cloned());
        let present = matches!(image::snapshot(ns, top), Ok(Some(_)));
        match &label {
            Some(l) if l != top => self.fail(
                who,
                &config_path,
                format!("the config's content record has {GC_SNAPSHOT}={l}, its top layer's chain ID is {top}"),
            ),
            None if present => self.fail(
                who,
                &config_path,
                format!("the config's content record lacks {GC_SNAPSHOT}={top}: the garbage collector would remove its unpacked layers"),
            ),
            _ => {}
        }
        if label.is_none() && !present {
            return false;
        }
        let meta = meta_path();
        let snap_meta = join(ROOT.as_bytes(), layout::SNAPSHOTTER_META.as_bytes());
        let mut below: Option<String> = None; // the backend key of the layer below
        for (i, chain) in p.chain_ids.iter().enumerate() {
            let who = Subject {
                image: who.image.clone(),
                layer: Some(p.diff_ids[i].clone()),
            };
            let n = p.chain_ids.len();
            let rec = match image::snapshot(ns, chain) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    self.fail(
                        &who,
                        &meta,
                        format!("layer {}/{n} is not unpacked: no {SNAPSHOTTER} snapshot {chain} in the namespace", i + 1),
                    );
                    below = None;
                    continue;
                }
                Err(e) => {
                    self.fail(&who, &meta, format!("{e:#}"));
                    return true;
                }
            };
            let want_parent = i.checked_sub(1).map(|j| p.chain_ids[j].clone());
            if rec.parent != want_parent {
                self.fail(
                    &who,
                    &meta,
                    format!(
                        "snapshot {chain} has parent {}, the layers below give {}",
                        rec.parent.as_deref().unwrap_or("(none)"),
                        want_parent.as_deref().unwrap_or("(none)")
                    ),
                );
            }
            let Some(db) = snapdb else {
                self.fail(
                    &who,
                    &snap_meta,
                    "the overlayfs snapshotter's database is missing",
                );
                return true;
            };
            let Some(id) = self.backend(&who, db, &rec.name, i, below.as_deref()) else {
                below = None;
                continue;
            };
            below = Some(rec.name.clone());
            let dir = join(
                ROOT.as_bytes(),
                format!("{}/{id}/fs", layout::SNAPSHOTS).as_bytes(),
            );
            if !matches!(is_dir(self.fs, &dir), Ok(true)) {
                self.fail(
                    &who,
                    &dir,
                    format!(
                        "the directory of snapshot {} (id {id}) is missing",
                        rec.name
                    ),
                );
                continue;
            }
            if !self.snapshots.insert(id) {
                continue;
            }
            let layer = &p.layers[i];
            if let Ok(Some(l)) = image::content_labels(ns, &layer.digest) {
                if let Some(u) = l.get(UNCOMPRESSED) {
                    if u != &p.diff_ids[i] {
                        self.fail(
                            &who,
                            &blob_shown(&layer.digest),
                            format!("the layer blob's content record has {UNCOMPRESSED}={u}, the config's diff ID is {}", p.diff_ids[i]),
                        );
                    }
                }
            }
            let l = snapdiff::Layer {
                blob: &layer.digest,
                diff_id: &p.diff_ids[i],
                dir: &dir,
            };
            // A blob under several snapshots (namespaces) counts once.
            let first = sha256_part(&layer.digest).is_some_and(|h| !self.hashed.contains(h));
            let mut quiet = |_| {};
            let progress: &mut dyn FnMut(u64) = if first { self.progress } else { &mut quiet };
            let n = snapdiff::check(self.fs, &l, &who, &mut self.failures, progress);
            if n > 0 && first {
                if let Some(h) = sha256_part(&layer.digest) {
                    self.hashed.insert(h.to_string());
                }
                self.bytes += n;
            }
        }
        true
    }

    /// The snapshotter's record of `key` (layer `i`): committed, with the
    /// key `below` as parent; its ID.
    fn backend(
        &mut self,
        who: &Subject,
        db: &bolt::Db<'_>,
        key: &str,
        i: usize,
        below: Option<&str>,
    ) -> Option<u64> {
        let path = join(ROOT.as_bytes(), layout::SNAPSHOTTER_META.as_bytes());
        let rec = db
            .root()
            .bucket(b"v1")
            .and_then(|v| v.map(|v| v.bucket(b"snapshots")).transpose())
            .map(Option::flatten)
            .and_then(|s| s.map(|s| s.bucket(key.as_bytes())).transpose())
            .map(Option::flatten);
        let rec = match rec {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.fail(
                    who,
                    &path,
                    format!(
                        "snapshot {key:?} is missing from the overlayfs snapshotter's database"
                    ),
                );
                return None;
            }
            Err(e) => {
                self.fail(who, &path, format!("{e:#}"));
                return None;
            }
        };
        let field = |k: &[u8]| rec.value(k).ok().flatten();
        let kind = field(b"kind").and_then(|k| k.first().copied());
        if kind != Some(COMMITTED) {
            self.fail(
                who,
                &path,
                format!("snapshot {key:?} is not committed (kind {kind:?}): it is no image layer"),
            );
        }
        let parent = field(b"parent").map(|p| String::from_utf8_lossy(p).into_owned());
        let want = if i == 0 { None } else { below };
        // When the layer below is broken, its failure says so already.
        if (i == 0 || below.is_some()) && parent.as_deref() != want {
            self.fail(
                who,
                &path,
                format!(
                    "snapshot {key:?} has parent {}, the layer below is {}",
                    parent.as_deref().unwrap_or("(none)"),
                    want.unwrap_or("(none)")
                ),
            );
        }
        match field(b"id").and_then(bolt::uvarint) {
            Some(id) => Some(id),
            None => {
                self.fail(who, &path, format!("snapshot {key:?} has no valid id"));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
