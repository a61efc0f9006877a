//! `verify`: proves that a Docker overlay2 image store (as `populate` writes
//! it into ROOT) is intact, from the store alone, through [`FsRead`]:
//!
//! 1. every image config in `imagedb` hashes to its image ID;
//! 2. the chain IDs follow from the config's diff IDs, and each layer's
//!    `layerdb` entry (`diff`, `cache-id`, `size`, `tar-split.json.gz`,
//!    `parent`) agrees with them;
//! 3. each layer's overlay2 directory has `diff/`, `link`, `lower` (as
//!    Docker's overlay2 driver writes it) and its `l/<link>` symlink;
//! 4. each layer's tar stream, rebuilt from its tar-split metadata and the
//!    files of its `diff/`, hashes to its diff ID (streamed, never held in
//!    memory);
//! 5. overlay whiteouts and opaque directories in `diff/` match the layer;
//! 6. `repositories.json` names only images that exist.
//!
//! Every failure names the image, the layer (its diff ID) and the path; the
//! checks go on after a failure. A layer shared by several images is
//! checked once and its failures name the first image (by ID) using it.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;

use crate::digest::{chain_ids, hex, is_hex64, sha256_hex, PipedSha256};
use crate::fsread::{join as join_bytes, show, FsRead, Kind};

/// `root/rel`.
fn join(root: &[u8], rel: &str) -> Vec<u8> {
    join_bytes(root, rel.as_bytes())
}
use super::layout::{CONTENT as IMAGEDB, IMAGE, LAYERDB, LAYERS, LINKS, REPOSITORIES};
use crate::store::verify_common::{
    clean, diff_ids, split_last, Subject, OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_META_PREFIX,
    WHITEOUT_PREFIX,
};
use crate::store::{Failure, Report};

/// Where the store is.
pub struct Options {
    /// Docker's data root in the tree, normally `b"/var/lib/docker"`.
    pub root: Vec<u8>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            root: super::ROOT.as_bytes().to_vec(),
        }
    }
}

/// Go's `hash/crc64` with the ISO table, as tar-split stores per file.
const CRC64: crc::Crc<u64, crc::Table<16>> =
    crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_GO_ISO);

/// What is known of a layer once checked (for the `lower` of layers above).
#[derive(Clone)]
struct LayerInfo {
    /// The short name in `overlay2/l/`, when readable.
    link: Option<String>,
}

/// A small text file (`diff`, `cache-id`, `link`...), trimmed; None when
/// missing or unreadable (the failure is recorded).
fn read_text(
    fs: &dyn FsRead,
    path: &[u8],
    who: &Subject,
    what: &str,
    failures: &mut Vec<Failure>,
) -> Option<String> {
    match fs.stat(path) {
        Ok(Some(st)) if st.kind == Kind::File => {}
        Ok(Some(st)) => {
            failures.push(who.fail(
                Some(path),
                format!("{what} is a {:?}, not a regular file", st.kind),
            ));
            return None;
        }
        Ok(None) => {
            failures.push(who.fail(Some(path), format!("{what} is missing")));
            return None;
        }
        Err(e) => {
            failures.push(who.fail(Some(path), format!("reading {what}: {e:#}")));
            return None;
        }
    }
    match fs.read_all(path) {
        Ok(b) => match String::from_utf8(b) {
            Ok(s) => Some(s.trim().to_string()),
            Err(_) => {
                failures.push(who.fail(Some(path), format!("{what} is not UTF-8 text")));
                None
            }
        },
        Err(e) => {
            failures.push(who.fail(Some(path), format!("reading {what}: {e:#}")));
            None
        }
    }
}

/// Image IDs (hex) of `imagedb`, sorted; Err when the store is unreadable.
fn image_ids(fs: &dyn FsRead, root: &[u8]) -> Result<Vec<String>> {
    let store = join(root, IMAGE);
    match fs
        .stat(&store)
        .with_context(|| format!("reading {}", show(&store)))?
    {
        Some(st) if st.kind == Kind::Dir => {}
        _ => bail!(
            "{} holds no Docker overlay2 image store ({} is missing)",
            show(root),
            show(&store)
        ),
    }
    let imagedb = join(root, IMAGEDB);
    if fs
        .stat(&imagedb)
        .with_context(|| format!("reading {}", show(&imagedb)))?
        .is_none()
    {
        return Ok(vec![]);
    }
    let mut ids: Vec<String> = fs
        .read_dir(&imagedb)
        .with_context(|| format!("listing {}", show(&imagedb)))?
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Sum of the layers' content sizes (`layerdb/.../size`) of every image:
/// the total that `verify`'s `progress` counts towards. Cheap: reads only
/// configs and small files. Unreadable entries count 0 (`verify` reports
/// them).
pub fn total_bytes(fs: &dyn FsRead, opts: &Options) -> Result<u64> {
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for id in image_ids(fs, &opts.root)? {
        let path = join(&opts.root, &format!("{IMAGEDB}/{id}"));
        let Ok(config) = fs.read_all(&path) else {
            continue;
        };
        let Ok(diffs) = diff_ids(&config) else {
            continue;
        };
        for chain in chain_ids(&diffs) {
            if !seen.insert(chain.clone()) {
                continue;
            }
            let hex = chain.trim_start_matches("sha256:");
            let size = join(&opts.root, &format!("{LAYERDB}/{hex}/size"));
            if let Ok(b) = fs.read_all(&size) {
                if let Ok(n) = String::from_utf8_lossy(&b).trim().parse::<u64>() {
                    total = total.saturating_add(n);
                }
            }
        }
    }
    Ok(total)
}

/// Checks every image of the store. `progress(n)` is called with each
/// increment of `n` layer content bytes hashed (towards `total_bytes`).
/// Returns Err only when the store cannot be read at all; every other
/// problem is a [`Failure`] in the report.
pub fn verify(fs: &dyn FsRead, opts: &Options, progress: &mut dyn FnMut(u64)) -> Result<Report> {
    let root = &opts.root[..];
    let ids = image_ids(fs, root)?;
    let mut failures = vec![];
    let mut layers: HashMap<String, LayerInfo> = HashMap::new();
    let mut bytes_hashed = 0u64;

    for id in &ids {
        let image = format!("sha256:{id}");
        let who = Subject {
            image: Some(image.clone()),
            layer: None,
        };
        let path = join(root, &format!("{IMAGEDB}/{id}"));
        // 1. The config hashes to the image ID.
        let config = match fs.read_all(&path) {
            Ok(c) => c,
            Err(e) => {
                failures.push(who.fail(Some(&path), format!("reading the image config: {e:#}")));
                continue;
            }
        };
        let got = sha256_hex(&config);
        if !is_hex64(id) {
            failures.push(who.fail(Some(&path), "the name in imagedb is not a sha256 image ID"));
        } else if &got != id {
            failures.push(who.fail(
                Some(&path),
                format!("the image config hashes to sha256:{got}, not to its image ID (the config was changed)"),
            ));
        }
        let diffs = match diff_ids(&config) {
            Ok(d) => d,
            Err(e) => {
                failures.push(who.fail(Some(&path), format!("{e:#}")));
                continue;
            }
        };
        // 2.-5. Its layers, bottom up.
        let chains = chain_ids(&diffs);
        let mut lowers: Vec<Option<String>> = vec![];
        for (i, (diff, chain)) in diffs.iter().zip(&chains).enumerate() {
            let info = match layers.get(chain) {
                Some(info) => info.clone(),
                None => {
                    let who = Subject {
                        image: Some(image.clone()),
                        layer: Some(diff.clone()),
                    };
                    let layer = Layer {
                        diff_id: diff,
                        chain,
                        parent: i.checked_sub(1).map(|p| chains[p].as_str()),
                        lowers: &lowers,
                    };
                    let info = check_layer(
                        fs,
                        root,
                        &layer,
                        &who,
                        &mut failures,
                        &mut bytes_hashed,
                        progress,
                    );
                    layers.insert(chain.clone(), info.clone());
                    info
                }
            };
            lowers.push(info.link);
        }
    }

    // 6. repositories.json names only images that exist.
    check_repositories(fs, root, &ids, &mut failures);

    Ok(Report {
        images: ids.len(),
        layers: layers.len(),
        bytes_hashed,
        failures,
    })
}

fn check_repositories(fs: &dyn FsRead, root: &[u8], ids: &[String], failures: &mut Vec<Failure>) {
    let path = join(root, REPOSITORIES);
    let nobody = Subject {
        image: None,
        layer: None,
    };
    match fs.stat(&path) {
        Ok(None) => return, // no tags: Docker starts with untagged images
        Ok(Some(_)) => {}
        Err(e) => {
            failures.push(nobody.fail(Some(&path), format!("reading repositories.json: {e:#}")));
            return;
        }
    }
    #[derive(Deserialize)]
    struct Repos {
        #[serde(rename = "Repositories", default)]
        repositories:
            std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    }
    let repos: Repos = match fs
        .read_all(&path)
        .and_then(|b| serde_json::from_slice(&b).context("parsing it"))
    {
        Ok(r) => r,
        Err(e) => {
            failures.push(nobody.fail(Some(&path), format!("reading repositories.json: {e:#}")));
            return;
        }
    };
    for refs in repos.repositories.values() {
        for (name, id) in refs {
            let exists = id
                .strip_prefix("sha256:")
                .is_some_and(|h| ids.iter().any(|i| i == h));
            if !exists {
                failures.push(Failure {
                    image: Some(id.clone()),
                    layer: None,
                    path: Some(show(&path)),
                    problem: format!(
                        "{name} points at image {id}, which is not in the image database"
                    ),
                });
            }
        }
    }
}

struct Layer<'a> {
    diff_id: &'a str,
    chain: &'a str,
    parent: Option<&'a str>,
    /// Link names of the layers below, bottom first.
    lowers: &'a [Option<String>],
}

fn check_layer(
    fs: &dyn FsRead,
    root: &[u8],
    layer: &Layer,
    who: &Subject,
    failures: &mut Vec<Failure>,
    bytes_hashed: &mut u64,
    progress: &mut dyn FnMut(u64),
) -> LayerInfo {
    let mut info = LayerInfo { link: None };
    // 2. layerdb/<chain>/
    let Some(entry) = check_layerdb(fs, root, layer, who, failures) else {
        return info;
    };
    // 3. overlay2/<cache-id>/ with diff/, link, lower and l/<link>.
    let diff_dir = check_overlay_dir(
        fs,
        root,
        layer,
        &entry.cache_id,
        who,
        failures,
        &mut info.link,
    );
    // 4. and 5. The tar stream and the overlay whiteouts.
    if let (Some(ts), Some(diff_dir)) = (&entry.tar_split_data, &diff_dir) {
        let stream = Stream {
            fs,
            diff_dir,
            ts,
            tar_split: &entry.tar_split,
            who,
        };
        check_stream(&stream, layer, failures, bytes_hashed, progress);
    }
    info
}

/// A layer's entry in the layer database, as far as the rest of the checks
/// need it.
struct LayerDbEntry {
    cache_id: String,
    /// The path of its tar-split metadata, and the metadata when readable.
    tar_split: Vec<u8>,
    tar_split_data: Option<Vec<u8>>,
}

/// Checks `layerdb/<chain>/` of `layer`: diff, size, parent, cache-id and
/// tar-split. None when the rest cannot be checked (no entry, no valid
/// cache-id).
fn check_layerdb(
    fs: &dyn FsRead,
    root: &[u8],
    layer: &Layer,
    who: &Subject,
    failures: &mut Vec<Failure>,
) -> Option<LayerDbEntry> {
    let chain_hex = layer.chain.trim_start_matches("sha256:");
    let ldb = join(root, &format!("{LAYERDB}/{chain_hex}"));
    match fs.stat(&ldb) {
        Ok(Some(st)) if st.kind == Kind::Dir => {}
        Ok(_) => {
            failures.push(who.fail(
                Some(&ldb),
                format!(
                    "layer {} (chain ID {}) is not in the layer database",
                    layer.diff_id, layer.chain
                ),
            ));
            return None;
        }
        Err(e) => {
            failures.push(who.fail(Some(&ldb), format!("reading the layer database: {e:#}")));
            return None;
        }
    }
    let file = |name: &str| join_bytes(&ldb, name.as_bytes());
    if let Some(d) = read_text(fs, &file("diff"), who, "the layer's diff ID file", failures) {
        if d != layer.diff_id {
            failures.push(who.fail(
                Some(&file("diff")),
                format!("holds diff ID {d}, the image config says {}", layer.diff_id),
            ));
        }
    }
    if let Some(s) = read_text(fs, &file("size"), who, "the layer's size file", failures) {
        if s.parse::<u64>().is_err() {
            failures.push(who.fail(Some(&file("size")), format!("holds {s:?}, not a size")));
        }
    }
    match (layer.parent, fs.stat(&file("parent"))) {
        (None, Ok(Some(_))) => {
            failures.push(who.fail(Some(&file("parent")), "a base layer has a parent file"))
        }
        (None, _) => {}
        (Some(want), _) => {
            if let Some(p) = read_text(
                fs,
                &file("parent"),
                who,
                "the layer's parent file",
                failures,
            ) {
                if p != want {
                    failures.push(who.fail(
                        Some(&file("parent")),
                        format!("names parent {p}, the image's layers give {want}"),
                    ));
                }
            }
        }
    }
    let cache_id = read_text(
        fs,
        &file("cache-id"),
        who,
        "the layer's cache-id file",
        failures,
    );
    let tar_split = file("tar-split.json.gz");
    let ts = match fs.stat(&tar_split) {
        Ok(Some(st)) if st.kind == Kind::File => match fs.read_all(&tar_split) {
            Ok(b) => Some(b),
            Err(e) => {
                failures.push(who.fail(
                    Some(&tar_split),
                    format!("reading the tar-split metadata: {e:#}"),
                ));
                None
            }
        },
        Ok(_) => {
            failures.push(who.fail(
                Some(&tar_split),
                "the layer's tar-split metadata is missing",
            ));
            None
        }
        Err(e) => {
            failures.push(who.fail(
                Some(&tar_split),
                format!("reading the tar-split metadata: {e:#}"),
            ));
            None
        }
    };
    let cache_id = cache_id?;
    if cache_id.is_empty()
        || cache_id.contains('/')
        || cache_id == "."
        || cache_id == ".."
        || cache_id == "l"
    {
        failures.push(who.fail(
            Some(&file("cache-id")),
            format!("holds {cache_id:?}, not a cache ID"),
        ));
        return None;
    }
    Some(LayerDbEntry {
        cache_id,
        tar_split,
        tar_split_data: ts,
    })
}

/// Checks `overlay2/<cache_id>/` of `layer`: the directory, `diff/`,
/// `link` and its `l/` symlink (whose name goes to `link_name`), `lower`.
/// Its `diff/` when there is one to check the tar stream against.
fn check_overlay_dir(
    fs: &dyn FsRead,
    root: &[u8],
    layer: &Layer,
    cache_id: &str,
    who: &Subject,
    failures: &mut Vec<Failure>,
    link_name: &mut Option<String>,
) -> Option<Vec<u8>> {
    let dir = join(root, &format!("{LAYERS}/{cache_id}"));
    match fs.stat(&dir) {
        Ok(Some(st)) if st.kind == Kind::Dir => {}
        _ => {
            failures.push(who.fail(Some(&dir), "the layer's overlay2 directory is missing"));
            return None;
        }
    }
    let diff_dir = join_bytes(&dir, b"diff");
    let diff_ok = matches!(fs.stat(&diff_dir), Ok(Some(st)) if st.kind == Kind::Dir);
    if !diff_ok {
        failures.push(who.fail(Some(&diff_dir), "the layer's diff directory is missing"));
    }
    let link_path = join_bytes(&dir, b"link");
    if let Some(link) = read_text(fs, &link_path, who, "the layer's link file", failures) {
        if link.is_empty() || link.contains('/') || link == "." || link == ".." {
            failures.push(who.fail(Some(&link_path), format!("holds {link:?}, not a link name")));
        } else {
            let l = join(root, &format!("{LINKS}/{link}"));
            let want = format!("../{cache_id}/diff");
            match fs.stat(&l) {
                Ok(Some(st)) if st.kind == Kind::Symlink => match fs.read_link(&l) {
                    Ok(t) if t == want.as_bytes() => {}
                    Ok(t) => failures
                        .push(who.fail(Some(&l), format!("points at {}, not at {want}", show(&t)))),
                    Err(e) => {
                        failures.push(who.fail(Some(&l), format!("reading the symlink: {e:#}")))
                    }
                },
                Ok(Some(st)) => failures.push(who.fail(
                    Some(&l),
                    format!("is a {:?}, not a symlink to {want}", st.kind),
                )),
                Ok(None) => failures.push(who.fail(
                    Some(&l),
                    format!("the layer's short-name symlink (to {want}) is missing"),
                )),
                Err(e) => failures.push(who.fail(Some(&l), format!("reading the symlink: {e:#}"))),
            }
            *link_name = Some(link);
        }
    }
    let lower_path = join_bytes(&dir, b"lower");
    if layer.lowers.is_empty() {
        if let Ok(Some(_)) = fs.stat(&lower_path) {
            failures.push(who.fail(Some(&lower_path), "a base layer has a lower file"));
        }
    } else if layer.lowers.iter().all(Option::is_some) {
        // Docker: "l/<parent link>:<the parent's lower>", nearest first.
        let want = layer
            .lowers
            .iter()
            .rev()
            .map(|l| format!("l/{}", l.as_deref().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(":");
        if let Some(got) = read_text(fs, &lower_path, who, "the layer's lower file", failures) {
            if got != want {
                failures.push(who.fail(
                    Some(&lower_path),
                    format!("holds {got:?}, the layers below give {want:?}"),
                ));
            }
        }
    }
    diff_ok.then_some(diff_dir)
}

/// What a layer's tar stream is checked from.
struct Stream<'a> {
    fs: &'a dyn FsRead,
    diff_dir: &'a [u8],
    /// The tar-split metadata, and its path.
    ts: &'a [u8],
    tar_split: &'a [u8],
    who: &'a Subject,
}

/// Rebuilds the layer's tar stream from its tar-split metadata and
/// `diff/`, checks it against the diff ID (naming the files that differ
/// when it does not match) and the overlay whiteouts.
fn check_stream(
    stream: &Stream<'_>,
    layer: &Layer,
    failures: &mut Vec<Failure>,
    bytes_hashed: &mut u64,
    progress: &mut dyn FnMut(u64),
) {
    let Stream {
        fs,
        diff_dir,
        ts,
        tar_split,
        who,
    } = *stream;
    let mut pass = Pass {
        fs,
        diff_dir,
        who,
        diagnose: false,
        failures: vec![],
        crc_mismatches: vec![],
        broken: false,
        bytes: 0,
    };
    let hashed = pass.run(ts, tar_split, progress);
    *bytes_hashed += pass.bytes;
    failures.append(&mut pass.failures);
    if let Some(got) = hashed {
        let got = format!("sha256:{got}");
        if got != layer.diff_id {
            // Find the files that differ (tar-split keeps a crc64 of each).
            let mut diag = Pass {
                fs,
                diff_dir,
                who,
                diagnose: true,
                failures: vec![],
                crc_mismatches: vec![],
                broken: false,
                bytes: 0,
            };
            diag.run(ts, tar_split, &mut |_| {});
            let why = format!(
                "the layer's tar stream rebuilt from diff/ hashes to {got}, not to its diff ID"
            );
            if diag.crc_mismatches.is_empty() {
                failures.push(who.fail(
                    Some(tar_split),
                    format!("{why}, yet every file matches the tar-split checksums: the tar-split metadata was changed"),
                ));
            }
            for p in diag.crc_mismatches {
                failures.push(who.fail(
                    Some(&p),
                    format!("the file's content differs from the layer's (tar-split crc64); {why}"),
                ));
            }
        }
    }
}

/// One tar-split entry (vbatts/tar-split `tar/storage/entry.go`).
#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    /// base64, for names that are not UTF-8.
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: i64,
    /// base64: raw bytes of a segment, crc64 (big-endian) of a file.
    #[serde(default)]
    payload: Option<String>,
}

/// The longest tar-split entry (one JSON line) read: real ones hold a
/// file's name or the raw bytes of a tar header (PAX records included),
/// kilobytes; a longer one is corrupt metadata, not held in memory.
const MAX_ENTRY: usize = 16 << 20;

const SEGMENT: u8 = 2;
const FILE: u8 = 1;

/// One walk over a layer's tar-split: rebuilds and hashes the tar stream
/// (or, when `diagnose`, finds the files whose crc64 differs).
struct Pass<'a> {
    fs: &'a dyn FsRead,
    diff_dir: &'a [u8],
    who: &'a Subject,
    diagnose: bool,
    failures: Vec<Failure>,
    crc_mismatches: Vec<Vec<u8>>,
    /// The stream cannot be rebuilt (a file is missing or has another size).
    broken: bool,
    bytes: u64,
}

impl Pass<'_> {
    fn fail(&mut self, path: &[u8], problem: impl Into<String>) {
        if !self.diagnose {
            self.failures.push(self.who.fail(Some(path), problem));
        }
    }

    fn is_opaque(&self, dir: &[u8]) -> std::result::Result<bool, String> {
        let x = self
            .fs
            .xattrs(dir)
            .map_err(|e| format!("reading its xattrs: {e:#}"))?;
        Ok(x.iter().any(|(k, v)| k == OPAQUE_XATTR && v == b"y"))
    }

    /// Returns the hex sha256 of the rebuilt stream when it could be
    /// rebuilt completely.
    fn run(&mut self, ts: &[u8], ts_path: &[u8], progress: &mut dyn FnMut(u64)) -> Option<String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut hasher = PipedSha256::new();
        let mut reader = BufReader::with_capacity(256 * 1024, flate2::read::GzDecoder::new(ts));
        let mut line = Vec::with_capacity(4096);
        // Directories the layer makes opaque, and those that are in diff/.
        let mut opq_dirs = BTreeSet::new();
        let mut opaque_dirs = BTreeSet::new();
        let mut n = 0usize;
        loop {
            line.clear();
            // At most one byte past the limit: a longer line is refused
            // below instead of growing without bound.
            let mut limited = (&mut reader).take(MAX_ENTRY as u64 + 1);
            match limited.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) if line.len() > MAX_ENTRY => {
                    self.fail(
                        ts_path,
                        format!(
                            "the tar-split metadata is corrupt (entry {}: longer than {} MiB)",
                            n + 1,
                            MAX_ENTRY >> 20
                        ),
                    );
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    self.fail(
                        ts_path,
                        format!("the tar-split metadata is truncated or corrupt: {e}"),
                    );
                    return None;
                }
            }
            n += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let entry: Entry = match serde_json::from_slice(&line) {
                Ok(e) => e,
                Err(e) => {
                    self.fail(
                        ts_path,
                        format!("the tar-split metadata is corrupt (entry {n}: {e})"),
                    );
                    return None;
                }
            };
            let payload = match entry.payload.as_deref().map(|p| b64.decode(p)).transpose() {
                Ok(p) => p.unwrap_or_default(),
                Err(e) => {
                    self.fail(
                        ts_path,
                        format!("the tar-split metadata is corrupt (entry {n}: payload: {e})"),
                    );
                    return None;
                }
            };
            match entry.kind {
                SEGMENT => hasher.update(&payload),
                FILE => {
                    let name = match (&entry.name_raw, &entry.name) {
                        (Some(raw), _) if !raw.is_empty() => {
                            match b64.decode(raw) {
                                Ok(n) => n,
                                Err(e) => {
                                    self.fail(ts_path, format!("the tar-split metadata is corrupt (entry {n}: name: {e})"));
                                    return None;
                                }
                            }
                        }
                        (_, Some(name)) => name.as_bytes().to_vec(),
                        _ => vec![],
                    };
                    let size = u64::try_from(entry.size).unwrap_or(0);
                    let Some(rel) = clean(&name) else {
                        self.fail(ts_path, format!("entry {:?} leaves the layer", show(&name)));
                        self.broken = true;
                        continue;
                    };
                    self.file(
                        &rel,
                        size,
                        &payload,
                        &mut hasher,
                        &mut opq_dirs,
                        &mut opaque_dirs,
                        progress,
                    );
                }
                k => {
                    self.fail(
                        ts_path,
                        format!("the tar-split metadata is corrupt (entry {n} has type {k})"),
                    );
                    return None;
                }
            }
        }
        // 5. Opaque directories: exactly where the layer has .wh..wh..opq.
        for d in opq_dirs.difference(&opaque_dirs) {
            let path = join_bytes(self.diff_dir, d);
            match self.is_opaque(&path) {
                Ok(true) => {}
                Ok(false) => self.fail(
                    &path,
                    format!("the layer makes this directory opaque (.wh..wh..opq) but it lacks {OPAQUE_XATTR}=y"),
                ),
                Err(e) => self.fail(&path, e),
            }
        }
        for d in opaque_dirs.difference(&opq_dirs) {
            let path = join_bytes(self.diff_dir, d);
            self.fail(
                &path,
                format!("has {OPAQUE_XATTR}=y but the layer has no .wh..wh..opq in this directory"),
            );
        }
        (!self.broken).then(|| hex(&hasher.finalize()))
    }

    #[allow(clippy::too_many_arguments)]
    fn file(
        &mut self,
        rel: &[u8],
        size: u64,
        crc: &[u8],
        hasher: &mut PipedSha256,
        opq_dirs: &mut BTreeSet<Vec<u8>>,
        opaque_dirs: &mut BTreeSet<Vec<u8>>,
        progress: &mut dyn FnMut(u64),
    ) {
        let path = join_bytes(self.diff_dir, rel);
        let (parent, base) = split_last(rel);
        if size == 0 && base.starts_with(WHITEOUT_PREFIX) {
            // Docker's overlay2 applies these instead of writing them.
            if base == OPAQUE_MARKER {
                opq_dirs.insert(parent.to_vec());
            } else if !base.starts_with(WHITEOUT_META_PREFIX) {
                let mut deleted = parent.to_vec();
                if !deleted.is_empty() {
                    deleted.push(b'/');
                }
                deleted.extend_from_slice(&base[WHITEOUT_PREFIX.len()..]);
                let target = join_bytes(self.diff_dir, &deleted);
                match self.fs.stat(&target) {
                    Ok(Some(st)) if st.kind == Kind::CharDev && st.rdev == (0, 0) => {}
                    Ok(Some(st)) => self.fail(
                        &target,
                        format!(
                            "the layer deletes this path ({}) but it is a {:?} {}:{}, not a 0:0 character device",
                            show(base),
                            st.kind,
                            st.rdev.0,
                            st.rdev.1
                        ),
                    ),
                    Ok(None) => self.fail(
                        &target,
                        format!("the layer deletes this path ({}) but its whiteout (a 0:0 character device) is missing", show(base)),
                    ),
                    Err(e) => self.fail(&target, format!("reading it: {e:#}")),
                }
            }
            if let Ok(Some(_)) = self.fs.stat(&path) {
                self.fail(
                    &path,
                    "a whiteout marker was written as a file: overlayfs ignores it",
                );
            }
            return;
        }
        let st = match self.fs.stat(&path) {
            Ok(Some(st)) => st,
            Ok(None) => {
                self.fail(&path, "is in the layer but missing from its diff directory");
                self.broken |= size > 0;
                return;
            }
            Err(e) => {
                self.fail(&path, format!("reading it: {e:#}"));
                self.broken = true;
                return;
            }
        };
        if st.kind == Kind::Dir {
            match self.is_opaque(&path) {
                Ok(true) => {
                    opaque_dirs.insert(rel.to_vec());
                }
                Ok(false) => {}
                Err(e) => self.fail(&path, e),
            }
        }
        if size == 0 {
            return;
        }
        if st.kind != Kind::File {
            self.fail(
                &path,
                format!(
                    "is a {:?}, the layer has a regular file of {size} bytes",
                    st.kind
                ),
            );
            self.broken = true;
            return;
        }
        if st.size != size {
            self.fail(&path, format!("is {} bytes, the layer has {size}", st.size));
            self.broken = true;
            return;
        }
        if self.broken {
            return; // the stream is lost already: only check what is there
        }
        let mut digest = self.diagnose.then(|| CRC64.digest());
        let diagnose = self.diagnose;
        let mut hashed = 0u64;
        let read = self.fs.read_file(&path, &mut |chunk| {
            hasher.update(chunk);
            if let Some(d) = digest.as_mut() {
                d.update(chunk);
            }
            hashed += chunk.len() as u64;
            if !diagnose {
                progress(chunk.len() as u64);
            }
            Ok(())
        });
        if !diagnose {
            self.bytes += hashed;
        }
        match read {
            Ok(n) if n == size => {}
            Ok(n) => {
                self.fail(&path, format!("read {n} bytes, the layer has {size}"));
                self.broken = true;
                return;
            }
            Err(e) => {
                self.fail(&path, format!("reading it: {e:#}"));
                self.broken = true;
                return;
            }
        }
        if let Some(d) = digest {
            if d.finalize().to_be_bytes()[..] != *crc {
                self.crc_mismatches.push(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const ROOT: &str = "/var/lib/docker";

    use crate::store::verify_common::memfs::MemFs;

    /// What a layer's tar holds.
    enum Ent {
        Dir(&'static str),
        File(&'static str, Vec<u8>),
        HardLink(&'static str, &'static str),
        /// `dir/.wh.name`: deletes dir/name.
        Whiteout(&'static str),
        /// `dir/.wh..wh..opq`.
        Opaque(&'static str),
    }

    fn sha(data: &[u8]) -> String {
        format!("sha256:{}", sha256_hex(data))
    }

    fn layer_tar(ents: &[Ent]) -> Vec<u8> {
        let mut b = tar::Builder::new(vec![]);
        let mut add = |kind: tar::EntryType, name: &str, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                b.append_link(&mut h, name, l).unwrap();
            } else {
                b.append_data(&mut h, name, data).unwrap();
            }
        };
        for e in ents {
            match e {
                Ent::Dir(d) => add(tar::EntryType::Directory, d, b"", None),
                Ent::File(p, data) => add(tar::EntryType::Regular, p, data, None),
                Ent::HardLink(p, to) => add(tar::EntryType::Link, p, b"", Some(to)),
                Ent::Whiteout(p) => add(tar::EntryType::Regular, p, b"", None),
                Ent::Opaque(d) => add(
                    tar::EntryType::Regular,
                    &format!("{d}/.wh..wh..opq"),
                    b"",
                    None,
                ),
            }
        }
        b.into_inner().unwrap()
    }

    /// tar-split.json.gz of a tar stream, as tar-split's disassembler
    /// writes it: raw segments around file entries with their crc64.
    fn tar_split(tar: &[u8]) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut lines = vec![];
        let seg = |lines: &mut Vec<serde_json::Value>, bytes: &[u8]| {
            let pos = lines.len();
            lines.push(
                serde_json::json!({"type": 2, "payload": b64.encode(bytes), "position": pos}),
            );
        };
        let mut ar = tar::Archive::new(tar);
        let mut prev = 0usize;
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let start = e.raw_file_position() as usize;
            let size = e.header().entry_size().unwrap() as usize;
            seg(&mut lines, &tar[prev..start]);
            let name = String::from_utf8(e.path_bytes().to_vec()).unwrap();
            let crc = CRC64.checksum(&tar[start..start + size]).to_be_bytes();
            let pos = lines.len();
            lines.push(serde_json::json!({"type": 1, "name": name, "size": size, "payload": b64.encode(crc), "position": pos}));
            prev = start + size;
        }
        seg(&mut lines, &tar[prev..]);
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
        for l in lines {
            serde_json::to_writer(&mut gz, &l).unwrap();
            gz.write_all(b"\n").unwrap();
        }
        gz.finish().unwrap()
    }

    struct FixLayer {
        diff_id: String,
        chain: String,
        cache: String,
        link: String,
    }

    struct Fixture {
        fs: MemFs,
        /// Image IDs (sha256:...), A then B.
        images: [String; 2],
        /// L1 (shared base), L2 (A's top), L3 (B's top).
        layers: [FixLayer; 3],
        file_bytes: u64,
    }

    impl Fixture {
        fn diff(&self, layer: usize, rel: &str) -> String {
            format!("{ROOT}/overlay2/{}/diff/{rel}", self.layers[layer].cache)
        }
        fn ldb(&self, layer: usize, file: &str) -> String {
            format!(
                "{ROOT}/{LAYERDB}/{}/{file}",
                self.layers[layer].chain.trim_start_matches("sha256:")
            )
        }
        fn config(&self, image: usize) -> String {
            format!(
                "{ROOT}/{IMAGEDB}/{}",
                self.images[image].trim_start_matches("sha256:")
            )
        }
        /// The image whose failures name the shared base layer.
        fn first_image(&self) -> String {
            self.images.iter().min().unwrap().clone()
        }
        fn verify(&self) -> Report {
            let opts = Options {
                root: ROOT.as_bytes().to_vec(),
            };
            let mut seen = 0;
            let r = verify(&self.fs, &opts, &mut |n| seen += n).unwrap();
            assert_eq!(seen, r.bytes_hashed, "progress adds up to bytes_hashed");
            r
        }
        /// Asserts that verify reports exactly this one failure.
        fn only(&self, image: Option<&str>, layer: Option<usize>, path: &str) -> Failure {
            let f = crate::store::verify_common::only_failure(&self.verify(), path);
            assert_eq!(f.image.as_deref(), image, "{f:?}");
            assert_eq!(
                f.layer,
                layer.map(|l| self.layers[l].diff_id.clone()),
                "{f:?}"
            );
            f
        }
    }

    /// Two images sharing a base layer, as Docker 28's overlay2 driver
    /// leaves them after a pull.
    fn fixture() -> Fixture {
        fixture_of(layers_with_whiteouts())
    }

    fn layers_with_whiteouts() -> [Vec<Ent>; 3] {
        let big: Vec<u8> = (0..3 * 1024 * 1024 + 17u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let l1 = vec![
            Ent::Dir("etc"),
            Ent::File("etc/hello", b"hello\n".to_vec()),
            Ent::HardLink("etc/hello2", "etc/hello"),
            Ent::Dir("data"),
            Ent::Dir("data/a"),
            Ent::File("data/a/file1", b"one".to_vec()),
        ];
        let l2 = vec![
            Ent::Dir("data"),
            Ent::Dir("data/a"),
            Ent::Opaque("data/a"),
            Ent::File("data/a/new", b"new".to_vec()),
            Ent::Dir("etc"),
            Ent::Whiteout("etc/.wh.hello"),
            Ent::Dir("bin"),
            Ent::File("bin/big", big),
            Ent::File(
                "usr/share/a-rather-long-directory-name-to-need-a-gnu-long-name/and-a-long-file-name.txt",
                b"long".to_vec(),
            ),
        ];
        let l3 = vec![Ent::Dir("./"), Ent::File("./x", b"x content".to_vec())];
        [l1, l2, l3]
    }

    fn fixture_of(specs: [Vec<Ent>; 3]) -> Fixture {
        let tars: Vec<Vec<u8>> = specs.iter().map(|s| layer_tar(s)).collect();
        let diffs: Vec<String> = tars.iter().map(|t| sha(t)).collect();
        let chains_a = chain_ids(&[diffs[0].clone(), diffs[1].clone()]);
        let chains_b = chain_ids(&[diffs[0].clone(), diffs[2].clone()]);
        let chains = [&chains_a[0], &chains_a[1], &chains_b[1]];
        let mut fs = MemFs::default();
        let mut layers: Vec<FixLayer> = vec![];
        let mut file_bytes = 0;
        for (i, spec) in specs.iter().enumerate() {
            let chain = chains[i].clone();
            let chex = chain.trim_start_matches("sha256:");
            let cache = sha256_hex(format!("cache {chain}").as_bytes());
            let link: String = chex[..26].to_ascii_uppercase();
            let ldb = format!("{ROOT}/{LAYERDB}/{chex}");
            let size: u64 = spec
                .iter()
                .map(|e| match e {
                    Ent::File(_, d) => d.len() as u64,
                    _ => 0,
                })
                .sum();
            file_bytes += size;
            fs.file(&format!("{ldb}/diff"), diffs[i].as_bytes());
            fs.file(&format!("{ldb}/size"), size.to_string().as_bytes());
            fs.file(&format!("{ldb}/cache-id"), cache.as_bytes());
            fs.file(&format!("{ldb}/tar-split.json.gz"), &tar_split(&tars[i]));
            if i > 0 {
                fs.file(&format!("{ldb}/parent"), chains_a[0].as_bytes());
            }
            let dir = format!("{ROOT}/overlay2/{cache}");
            fs.file(&format!("{dir}/link"), link.as_bytes());
            fs.dir(&format!("{dir}/diff"));
            if i > 0 {
                fs.file(
                    &format!("{dir}/lower"),
                    format!("l/{}", layers[0].link).as_bytes(),
                );
                fs.dir(&format!("{dir}/work"));
            }
            fs.put(
                &format!("{ROOT}/overlay2/l/{link}"),
                Kind::Symlink,
                format!("../{cache}/diff").as_bytes(),
                (0, 0),
            );
            let diff = |rel: &str| {
                format!(
                    "{dir}/diff/{}",
                    rel.trim_start_matches("./").trim_end_matches('/')
                )
            };
            for e in spec {
                match e {
                    Ent::Dir(d) => fs.dir(diff(d).trim_end_matches('/')),
                    Ent::File(p, data) => fs.file(&diff(p), data),
                    Ent::HardLink(p, to) => {
                        let data = fs.node(&diff(to)).data.clone();
                        fs.file(&diff(p), &data);
                    }
                    Ent::Whiteout(p) => {
                        let (d, name) = p.rsplit_once('/').unwrap();
                        let name = name.strip_prefix(".wh.").unwrap();
                        fs.put(&diff(&format!("{d}/{name}")), Kind::CharDev, b"", (0, 0));
                    }
                    Ent::Opaque(d) => {
                        fs.dir(&diff(d));
                        fs.node(&diff(d))
                            .xattrs
                            .push((OPAQUE_XATTR.into(), b"y".to_vec()));
                    }
                }
            }
            layers.push(FixLayer {
                diff_id: diffs[i].clone(),
                chain,
                cache,
                link,
            });
        }
        let mut images = vec![];
        for (name, d) in [("a", [&diffs[0], &diffs[1]]), ("b", [&diffs[0], &diffs[2]])] {
            let config = serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64",
                "os": "linux",
                "created": "2026-11-01T00:00:00Z",
                "config": {"Cmd": [format!("/bin/{name}")]},
                "rootfs": {"type": "layers", "diff_ids": d},
            }))
            .unwrap();
            let id = sha(&config);
            fs.file(
                &format!("{ROOT}/{IMAGEDB}/{}", id.trim_start_matches("sha256:")),
                &config,
            );
            images.push(id);
        }
        let repos = serde_json::json!({"Repositories": {
            "a": {"a:latest": images[0]},
            "b": {"b:1": images[1], format!("b@{}", sha(b"manifest")): images[1]},
        }});
        fs.file(
            &format!("{ROOT}/{REPOSITORIES}"),
            &serde_json::to_vec(&repos).unwrap(),
        );
        Fixture {
            fs,
            images: images.try_into().unwrap(),
            layers: layers.try_into().unwrap_or_else(|_| unreachable!()),
            file_bytes,
        }
    }

    fn random_bytes(n: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// A store on disk read through `HostDir`: passes, then names a changed
    /// byte. With FP_VERIFY_BENCH_MIB=N the base layer holds N MiB and the
    /// test prints verify's throughput next to `sha256sum` of the same files.
    #[test]
    fn verify_host_dir_store() {
        let mib: usize = std::env::var("FP_VERIFY_BENCH_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        let files = 8;
        let names: Vec<&'static str> = (0..files)
            .map(|i| &*Box::leak(format!("big/f{i}").into_boxed_str()))
            .collect();
        let mut l1 = vec![Ent::Dir("big")];
        for (i, n) in names.iter().enumerate() {
            l1.push(Ent::File(
                n,
                random_bytes(mib * 1024 * 1024 / files, i as u32),
            ));
        }
        let l2 = vec![
            Ent::Dir("etc"),
            Ent::File("etc/os-release", b"ID=test\n".to_vec()),
        ];
        let l3 = vec![Ent::Dir("./"), Ent::File("./x", b"x content".to_vec())];
        let f = fixture_of([l1, l2, l3]);
        let tmp = tempfile::tempdir().unwrap();
        f.fs.materialize(tmp.path());
        let host = crate::fsread::HostDir(tmp.path().to_path_buf());
        let opts = Options {
            root: ROOT.as_bytes().to_vec(),
        };
        let t = std::time::Instant::now();
        let r = verify(&host, &opts, &mut |_| {}).unwrap();
        let took = t.elapsed().as_secs_f64();
        assert!(r.failures.is_empty(), "{:#?}", r.failures);
        assert_eq!(r.bytes_hashed, f.file_bytes);
        if std::env::var_os("FP_VERIFY_BENCH_MIB").is_some() {
            let diff = tmp.path().join(format!(
                "var/lib/docker/overlay2/{}/diff/big",
                f.layers[0].cache
            ));
            let t = std::time::Instant::now();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg("sha256sum * >/dev/null")
                .current_dir(&diff)
                .status()
                .unwrap();
            assert!(out.success());
            let sum = t.elapsed().as_secs_f64();
            let mb = r.bytes_hashed as f64 / 1e6;
            println!(
                "verify: {mb:.0} MB in {took:.3} s = {:.0} MB/s; sha256sum: {:.3} s = {:.0} MB/s; ratio {:.2}",
                mb / took,
                sum,
                mb / sum,
                sum / took
            );
        }
        // The same store with one byte changed names the file.
        let path = tmp.path().join(format!(
            "var/lib/docker/overlay2/{}/diff/big/f3",
            f.layers[0].cache
        ));
        let mut data = std::fs::read(&path).unwrap();
        data[7] ^= 0x80;
        std::fs::write(&path, data).unwrap();
        let r = verify(&host, &opts, &mut |_| {}).unwrap();
        assert_eq!(r.failures.len(), 1, "{:#?}", r.failures);
        assert_eq!(
            r.failures[0].path.as_deref(),
            Some(f.diff(0, "big/f3").as_str())
        );
        assert_eq!(
            r.failures[0].layer.as_deref(),
            Some(f.layers[0].diff_id.as_str())
        );
        assert_eq!(
            r.failures[0].image.as_deref(),
            Some(f.first_image().as_str())
        );
    }

    #[test]
    fn verify_good_store_passes() {
        let f = fixture();
        let r = f.verify();
        assert!(r.failures.is_empty(), "{:#?}", r.failures);
        assert_eq!((r.images, r.layers), (2, 3));
        assert_eq!(r.bytes_hashed, f.file_bytes);
        let opts = Options {
            root: ROOT.as_bytes().to_vec(),
        };
        assert_eq!(total_bytes(&f.fs, &opts).unwrap(), f.file_bytes);
    }

    #[test]
    fn verify_names_a_changed_byte() {
        let mut f = fixture();
        let path = f.diff(1, "bin/big");
        f.fs.node(&path).data[1_000_000] ^= 1;
        let fail = f.only(Some(&f.images[0]), Some(1), &path);
        assert!(fail.problem.contains("differs"), "{fail:?}");
    }

    #[test]
    fn verify_names_a_removed_opaque_xattr() {
        let mut f = fixture();
        let path = f.diff(1, "data/a");
        f.fs.node(&path).xattrs.clear();
        let fail = f.only(Some(&f.images[0]), Some(1), &path);
        assert!(fail.problem.contains(OPAQUE_XATTR), "{fail:?}");
    }

    #[test]
    fn verify_names_an_opaque_xattr_the_layer_lacks() {
        let mut f = fixture();
        let path = f.diff(0, "etc");
        f.fs.node(&path)
            .xattrs
            .push((OPAQUE_XATTR.into(), b"y".to_vec()));
        f.only(Some(&f.first_image()), Some(0), &path);
    }

    #[test]
    fn verify_names_a_deleted_l_symlink() {
        let mut f = fixture();
        let path = format!("{ROOT}/overlay2/l/{}", f.layers[0].link);
        f.fs.remove(&path);
        f.only(Some(&f.first_image()), Some(0), &path);
    }

    #[test]
    fn verify_names_a_truncated_tar_split() {
        let mut f = fixture();
        let path = f.ldb(2, "tar-split.json.gz");
        let node = f.fs.node(&path);
        let half = node.data.len() / 2;
        node.data.truncate(half);
        node.stat.size = half as u64;
        let fail = f.only(Some(&f.images[1]), Some(2), &path);
        assert!(fail.problem.contains("truncated"), "{fail:?}");
    }

    #[test]
    fn verify_names_an_edited_image_config() {
        let mut f = fixture();
        let path = f.config(1);
        let node = f.fs.node(&path);
        let text = String::from_utf8(node.data.clone())
            .unwrap()
            .replace("2026-11-01", "2026-11-02");
        node.data = text.into_bytes();
        let fail = f.only(Some(&f.images[1]), None, &path);
        assert!(fail.problem.contains("image ID"), "{fail:?}");
    }

    #[test]
    fn verify_names_a_tag_of_a_missing_image() {
        let mut f = fixture();
        let path = format!("{ROOT}/{REPOSITORIES}");
        let missing = sha(b"no such image");
        let repos = serde_json::json!({"Repositories": {
            "a": {"a:latest": f.images[0]},
            "b": {"b:1": f.images[1], "b:gone": missing},
        }});
        f.fs.node(&path).data = serde_json::to_vec(&repos).unwrap();
        let fail = f.only(Some(&missing), None, &path);
        assert!(fail.problem.contains("b:gone"), "{fail:?}");
    }

    #[test]
    fn verify_names_a_missing_whiteout_and_file() {
        let mut f = fixture();
        let whiteout = f.diff(1, "etc/hello");
        f.fs.remove(&whiteout);
        f.only(Some(&f.images[0]), Some(1), &whiteout);

        let mut f = fixture();
        let path = f.diff(1, "data/a/new");
        f.fs.remove(&path);
        f.only(Some(&f.images[0]), Some(1), &path);
    }

    #[test]
    fn verify_names_a_wrong_lower() {
        let mut f = fixture();
        let path = format!("{ROOT}/overlay2/{}/lower", f.layers[2].cache);
        f.fs.node(&path).data = b"l/NOTTHEPARENT".to_vec();
        f.only(Some(&f.images[1]), Some(2), &path);
    }

    #[test]
    fn verify_errs_without_a_store() {
        let opts = Options {
            root: ROOT.as_bytes().to_vec(),
        };
        let err = verify(&MemFs::default(), &opts, &mut |_| {}).unwrap_err();
        assert!(
            format!("{err:#}").contains("no Docker overlay2 image store"),
            "{err:#}"
        );
    }

    /// The seed of the `docker-verify` fuzz target (tests/fuzz_parsers.rs):
    /// a store of two images and three layers, as a tar of the tree below
    /// `/`, with its tar-split metadata stored decompressed (the target
    /// compresses a `*.json.gz` that is not gzip) so that mutations reach
    /// the JSON.
    #[test]
    #[ignore = "writes tests/fuzz/docker-verify/corpus (FP_FUZZ_WRITE_SEEDS=1)"]
    fn write_fuzz_seeds() {
        use std::io::Read;
        if std::env::var_os("FP_FUZZ_WRITE_SEEDS").is_none() {
            return;
        }
        let l1 = vec![
            Ent::Dir("etc"),
            Ent::File("etc/hello", b"hello\n".to_vec()),
            Ent::HardLink("etc/hello2", "etc/hello"),
        ];
        let l2 = vec![
            Ent::Dir("etc"),
            Ent::File("etc/os-release", b"ID=test\n".to_vec()),
        ];
        let l3 = vec![Ent::Dir("./"), Ent::File("./x", b"x content".to_vec())];
        let f = fixture_of([l1, l2, l3]);
        let tmp = tempfile::tempdir().unwrap();
        f.fs.materialize(tmp.path());
        let layerdb = tmp
            .path()
            .join("var/lib/docker/image/overlay2/layerdb/sha256");
        for e in std::fs::read_dir(layerdb).unwrap() {
            let ts = e.unwrap().path().join("tar-split.json.gz");
            let mut plain = vec![];
            flate2::read::GzDecoder::new(&std::fs::read(&ts).unwrap()[..])
                .read_to_end(&mut plain)
                .unwrap();
            std::fs::write(&ts, plain).unwrap();
        }
        let mut b = tar::Builder::new(vec![]);
        b.follow_symlinks(false);
        b.append_dir_all("var", tmp.path().join("var")).unwrap();
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/docker-verify/corpus");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("store.tar"), b.into_inner().unwrap()).unwrap();
    }
}
