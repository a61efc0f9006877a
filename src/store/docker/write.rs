//! Docker's overlay2 store written from images' configs and layer streams,
//! with no daemon: what `dockerd` leaves in /var/lib/docker once it has
//! pulled them (`../shared/notes/docker-store.md`, moby's
//! `daemon/internal/layer`, `image`, `distribution/metadata`,
//! `graphdriver/overlay2` and go-archive's `Unpack`), in the form the
//! build container's export gives it (directories named from chain IDs,
//! what Docker made stamped): the two ways in write the same store.
//!
//! The store comes out as a PAX tar of `/var/lib/docker` (the same stream
//! an export is), written by [`write_store`] as each layer streams in:
//!
//! - a layer's entries go to `overlay2/<chain>/diff/` with dockerd's
//!   conversions: `.wh.NAME` becomes a 0/0 character device `NAME` (no
//!   permissions, the header's owner), `.wh..wh..opq` the xattr
//!   `trusted.overlay.opaque=y` on its directory (written again once the
//!   layer ends), hard links point into the same `diff/`, symlinks are
//!   0777 as the kernel makes them;
//! - beside it the layer DB: `diff` (sha256 of the whole uncompressed
//!   stream), `size` (what `directory.Size` gives of `diff/`: regular files
//!   once per inode and symlink targets), `cache-id`, `parent`, and a
//!   `tar-split.json.gz` made from the stream ([`super::tarsplit::Splitter`]);
//! - the image configs, `repositories.json` and the distribution metadata.
//!
//! Memory stays bounded: a layer's files stream through, only its
//! directories' attributes and the tar-split (compressed) are held.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::layout::{
    CONTENT, DIFFID_BY_DIGEST, LAYERDB, LAYERS, LINKS, METADATA, REPOSITORIES, V2META_BY_DIFFID,
};
use super::select::{layer_dir, link_name};
use super::tarsplit::{gzip_writer, Splitter};
use crate::digest::{chain_ids, sha256_hex};
use crate::tar::{Archive, Attrs, Device, EntryType, Meta, Writer};

/// One image to write: its config (whose digest is the image ID), its
/// names in `repositories.json`, the repository its layers came from, and
/// its layers' blob digests, bottom first.
#[derive(Debug, Clone)]
pub struct ImageIn {
    /// The image as the user named it, for messages.
    pub reference: String,
    pub config: Vec<u8>,
    /// Familiar repository name -> reference names (`name:tag`,
    /// `name@sha256:...`), as `repositories.json` holds them.
    pub names: Vec<(String, String)>,
    /// The repository recorded as the layers' source
    /// (`docker.io/library/alpine`).
    pub source_repository: String,
    pub layers: Vec<String>,
}

/// A layer's uncompressed tar stream, by its blob digest.
pub type OpenLayer<'a> = dyn FnMut(&str) -> Result<Box<dyn Read + Send>> + 'a;

/// What [`write_store`] wrote.
#[derive(Debug, Clone, Default)]
pub struct StoreOut {
    /// `sha256:<id>` of each image, in the order given.
    pub ids: Vec<String>,
    /// Layers written (shared ones once).
    pub layers: u64,
}

#[derive(serde::Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(serde::Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// `dockerd`'s modes (overlay2 `create`, the layer and image stores,
/// `distribution/metadata`).
mod mode {
    pub const ROOT: u32 = 0o710;
    pub const PRIVATE_DIR: u32 = 0o700;
    pub const OPEN_DIR: u32 = 0o755;
    pub const LAYER_DIR: u32 = 0o710;
    pub const DIFF: u32 = 0o755;
    pub const FILE: u32 = 0o644;
    pub const PRIVATE_FILE: u32 = 0o600;
}

/// The tar of `/var/lib/docker` holding `images`, written to `out`;
/// `open` gives each layer's uncompressed stream. `stamp` is the time of
/// everything Docker makes; `made` is when the layers were made: a
/// layer's file of that time or later is stamped too, as the export of a
/// daemon's store stamps it.
pub fn write_store<W: Write>(
    images: &[ImageIn],
    open: &mut OpenLayer<'_>,
    stamp: i64,
    made: i64,
    out: W,
) -> Result<(StoreOut, W)> {
    let mut s = StoreWriter {
        tar: Writer::new(out),
        stamp,
        made,
        done: BTreeMap::new(),
        committed: BTreeSet::new(),
        dist: BTreeMap::new(),
        v2meta: BTreeMap::new(),
        repos: BTreeMap::new(),
        configs: BTreeMap::new(),
    };
    s.skeleton()?;
    let mut got = StoreOut::default();
    for image in images {
        let id = format!("sha256:{}", sha256_hex(&image.config));
        let name = &image.reference;
        let config: Config = serde_json::from_slice(&image.config)
            .with_context(|| format!("reading the config of {name} ({id})"))?;
        if config.rootfs.diff_ids.len() != image.layers.len() {
            bail!(
                "{name}: its config lists {} layers, its manifest {}",
                config.rootfs.diff_ids.len(),
                image.layers.len()
            );
        }
        let chains = chain_ids(&config.rootfs.diff_ids);
        for (i, blob) in image.layers.iter().enumerate() {
            let chain = &chains[i];
            let parent = i.checked_sub(1).map(|p| chains[p].as_str());
            let want = &config.rootfs.diff_ids[i];
            if !s.done.contains_key(chain) {
                let mut stream = open(blob)?;
                let diff = s
                    .layer(chain, parent, &mut stream, &chains[..i])
                    .with_context(|| format!("layer {blob} of {name}"))?;
                if &diff != want {
                    bail!("layer {blob} of {name} is {diff} uncompressed, its config says {want}");
                }
                got.layers += 1;
            }
            s.dist.insert(hex(blob).to_string(), want.clone());
            let sources = s.v2meta.entry(hex(want).to_string()).or_default();
            let meta = V2Meta {
                digest: blob.clone(),
                source_repository: image.source_repository.clone(),
                hmac: String::new(),
            };
            if !sources.contains(&meta) {
                sources.push(meta);
            }
        }
        for (repo, name) in &image.names {
            s.repos
                .entry(repo.clone())
                .or_default()
                .insert(name.clone(), id.clone());
        }
        s.configs.insert(hex(&id).to_string(), image.config.clone());
        got.ids.push(id);
    }
    s.metadata()?;
    Ok((got, s.tar.finish()?))
}

#[derive(serde::Serialize, PartialEq)]
struct V2Meta {
    #[serde(rename = "Digest")]
    digest: String,
    #[serde(rename = "SourceRepository")]
    source_repository: String,
    #[serde(rename = "HMAC")]
    hmac: String,
}

struct StoreWriter<W: Write> {
    tar: Writer<W>,
    stamp: i64,
    made: i64,
    /// Chain ID -> diff ID of the layers written.
    done: BTreeMap<String, String>,
    /// Layer directories marked `committed` (they have a child).
    committed: BTreeSet<String>,
    /// Blob hex -> diff ID.
    dist: BTreeMap<String, String>,
    /// Diff hex -> where it came from.
    v2meta: BTreeMap<String, Vec<V2Meta>>,
    repos: BTreeMap<String, BTreeMap<String, String>>,
    /// Image ID hex -> config.
    configs: BTreeMap<String, Vec<u8>>,
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

impl<W: Write> StoreWriter<W> {
    fn attrs(&self, mode: u32) -> Attrs {
        Attrs {
            mode,
            uid: 0,
            gid: 0,
            mtime: self.stamp,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let attrs = self.attrs(mode);
        self.tar.dir(path.as_bytes(), &attrs)
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let attrs = self.attrs(mode);
        self.tar.file_bytes(path.as_bytes(), &attrs, data)
    }

    /// The directories a daemon makes at start.
    fn skeleton(&mut self) -> Result<()> {
        use mode::*;
        self.dir("./", ROOT)?;
        for d in [
            "image",
            "image/overlay2",
            "image/overlay2/distribution",
            "image/overlay2/imagedb",
            "image/overlay2/imagedb/content",
            CONTENT,
            "image/overlay2/imagedb/metadata",
            METADATA,
            "image/overlay2/layerdb",
        ] {
            self.dir(d, PRIVATE_DIR)?;
        }
        self.dir(LAYERDB, OPEN_DIR)?;
        for d in [
            "image/overlay2/distribution/diffid-by-digest",
            DIFFID_BY_DIGEST,
            "image/overlay2/distribution/v2metadata-by-diffid",
            V2META_BY_DIFFID,
        ] {
            self.dir(d, OPEN_DIR)?;
        }
        self.dir(LAYERS, LAYER_DIR)?;
        self.dir(LINKS, PRIVATE_DIR)
    }

    /// Writes one layer, returns its diff ID.
    fn layer(
        &mut self,
        chain: &str,
        parent: Option<&str>,
        stream: &mut dyn Read,
        below: &[String],
    ) -> Result<String> {
        use mode::*;
        let chain_hex = hex(chain).to_string();
        let dir = format!("{LAYERS}/{}", layer_dir(&chain_hex));
        let short = link_name(&chain_hex);
        self.dir(&dir, LAYER_DIR)?;
        self.dir(&format!("{dir}/diff"), DIFF)?;
        let mut tee = Tee {
            inner: stream,
            hash: Sha256::new(),
            split: Splitter::new(gzip_writer(Vec::new())),
        };
        let size = self.diff(&format!("{dir}/diff"), &mut tee)?;
        // What follows the end of the archive is part of the layer too.
        io::copy(&mut tee, &mut io::sink()).context("reading the layer to its end")?;
        let diff = format!("sha256:{:x}", tee.hash.finalize());
        let tar_split = tee
            .split
            .finish()
            .context("making the layer's tar-split")?
            .finish()
            .context("compressing the layer's tar-split")?;
        self.file(&format!("{dir}/link"), FILE, short.as_bytes())?;
        if let Some(parent) = parent {
            // Making a child marks its parent committed.
            let parent_dir = format!("{LAYERS}/{}", layer_dir(hex(parent)));
            if self.committed.insert(parent_dir.clone()) {
                self.file(&format!("{parent_dir}/committed"), PRIVATE_FILE, b"")?;
            }
            let lower: Vec<String> = below
                .iter()
                .rev()
                .map(|c| format!("l/{}", link_name(hex(c))))
                .collect();
            self.file(&format!("{dir}/lower"), FILE, lower.join(":").as_bytes())?;
            self.dir(&format!("{dir}/work"), PRIVATE_DIR)?;
        }
        let attrs = Attrs {
            mode: 0o777,
            ..self.attrs(0o777)
        };
        let target = format!("../{}/diff", layer_dir(&chain_hex));
        self.tar.symlink(
            format!("{LINKS}/{short}").as_bytes(),
            &attrs,
            target.as_bytes(),
        )?;
        let db = format!("{LAYERDB}/{chain_hex}");
        self.dir(&db, PRIVATE_DIR)?;
        self.file(
            &format!("{db}/cache-id"),
            FILE,
            layer_dir(&chain_hex).as_bytes(),
        )?;
        self.file(&format!("{db}/diff"), FILE, diff.as_bytes())?;
        if let Some(parent) = parent {
            self.file(&format!("{db}/parent"), FILE, parent.as_bytes())?;
        }
        self.file(&format!("{db}/size"), FILE, size.to_string().as_bytes())?;
        self.file(&format!("{db}/tar-split.json.gz"), FILE, &tar_split)?;
        self.done.insert(chain.to_string(), diff.clone());
        Ok(diff)
    }

    /// Applies a layer's tar to `diff` as dockerd's untar does, returns
    /// what `directory.Size` gives of the result.
    fn diff(&mut self, diff: &str, stream: &mut dyn Read) -> Result<u64> {
        let mut ar = Archive::new(stream);
        // Directories of the layer, to write again at its end when opaque
        // (their attributes as the layer gave them).
        let mut dirs: BTreeMap<Vec<u8>, Attrs> = BTreeMap::new();
        let mut opaque: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut size = 0u64;
        while let Some(entry) = ar.next_entry().context("reading the layer")? {
            let meta = entry.meta;
            let mut data = entry.data;
            if meta.kind == EntryType::XGlobalHeader {
                continue;
            }
            let Some(rel) = clean(&meta.path)
                .with_context(|| format!("layer entry {:?} is outside the layer", meta.show()))?
            else {
                continue;
            };
            if !seen.insert(rel.clone()) {
                bail!(
                    "layer entry {:?} appears twice (dockerd refuses such a layer: \"duplicates of file paths not supported\")",
                    meta.show()
                );
            }
            let (parent, base) = match rel.iter().rposition(|&b| b == b'/') {
                Some(i) => (&rel[..i], &rel[i + 1..]),
                None => (&b""[..], &rel[..]),
            };
            let under = |name: &[u8]| {
                let mut p = diff.as_bytes().to_vec();
                if !name.is_empty() {
                    p.push(b'/');
                    p.extend_from_slice(name);
                }
                p
            };
            if base == b".wh..wh..opq" {
                opaque.insert(parent.to_vec());
                continue;
            }
            let attrs = self.entry_attrs(&meta);
            if let Some(name) = base.strip_prefix(b".wh.") {
                let mut path = parent.to_vec();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                let attrs = Attrs {
                    mode: 0,
                    mtime: self.stamp,
                    mtime_nsec: 0,
                    xattrs: vec![],
                    ..attrs
                };
                self.tar.device(&under(&path), &attrs, Device::Char, 0, 0)?;
                continue;
            }
            let path = under(&rel);
            match meta.kind {
                EntryType::Directory => {
                    self.tar.dir(&path, &attrs)?;
                    dirs.insert(rel.clone(), attrs);
                }
                EntryType::Regular | EntryType::Continuous => {
                    size += meta.size;
                    self.tar.file(&path, &attrs, meta.size, &mut data)?;
                }
                EntryType::Symlink => {
                    let target = meta.link.clone().unwrap_or_default();
                    size += target.len() as u64;
                    let attrs = Attrs {
                        mode: 0o777,
                        ..attrs
                    };
                    self.tar.symlink(&path, &attrs, &target)?;
                }
                EntryType::Link => {
                    let target = meta.link.clone().unwrap_or_default();
                    let target = clean(&target)
                        .with_context(|| {
                            format!("hard link {:?} points outside the layer", meta.show())
                        })?
                        .with_context(|| format!("hard link {:?} has no target", meta.show()))?;
                    self.tar.hard_link(&path, &attrs, &under(&target))?;
                }
                EntryType::Char | EntryType::Block => {
                    let dev = match meta.kind {
                        EntryType::Char => Device::Char,
                        _ => Device::Block,
                    };
                    self.tar
                        .device(&path, &attrs, dev, meta.dev.0, meta.dev.1)?;
                }
                EntryType::Fifo => self.tar.fifo(&path, &attrs)?,
                other => bail!(
                    "layer entry {:?}: unhandled tar header type {:?} (dockerd refuses it too)",
                    meta.show(),
                    other
                ),
            }
        }
        for dir in opaque {
            let mut attrs = match dirs.get(&dir) {
                Some(a) => a.clone(),
                // A directory the layer does not list: dockerd makes it.
                None => self.attrs(mode::DIFF),
            };
            attrs.xattrs.retain(|(k, _)| k != b"trusted.overlay.opaque");
            attrs
                .xattrs
                .push((b"trusted.overlay.opaque".to_vec(), b"y".to_vec()));
            let path = match dir.is_empty() {
                true => diff.as_bytes().to_vec(),
                false => [diff.as_bytes(), b"/", &dir].concat(),
            };
            self.tar.dir(&path, &attrs)?;
        }
        Ok(size)
    }

    /// A layer entry's attributes as dockerd gives them: the header's owner,
    /// xattrs and permissions; its time unless that is no older than the
    /// layer (then the stamp, as the export of a daemon's store gives it).
    fn entry_attrs(&self, meta: &Meta) -> Attrs {
        let (mtime, mtime_nsec) = match meta.mtime < self.made {
            true => (meta.mtime, meta.mtime_nsec),
            false => (self.stamp, 0),
        };
        Attrs {
            mode: meta.mode & 0o7777,
            uid: meta.uid,
            gid: meta.gid,
            mtime,
            mtime_nsec,
            xattrs: meta
                .xattrs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The image configs, repositories.json and the distribution metadata.
    fn metadata(&mut self) -> Result<()> {
        use mode::*;
        let configs = std::mem::take(&mut self.configs);
        for (id, config) in &configs {
            self.file(&format!("{CONTENT}/{id}"), PRIVATE_FILE, config)?;
        }
        let dist = std::mem::take(&mut self.dist);
        for (blob, diff) in &dist {
            self.file(&format!("{DIFFID_BY_DIGEST}/{blob}"), FILE, diff.as_bytes())?;
        }
        let v2 = std::mem::take(&mut self.v2meta);
        for (diff, meta) in &v2 {
            let json = serde_json::to_vec(meta)?;
            self.file(&format!("{V2META_BY_DIFFID}/{diff}"), FILE, &json)?;
        }
        #[derive(serde::Serialize)]
        struct Repositories<'a> {
            #[serde(rename = "Repositories")]
            repositories: &'a BTreeMap<String, BTreeMap<String, String>>,
        }
        let repos = serde_json::to_vec(&Repositories {
            repositories: &self.repos,
        })?;
        self.file(REPOSITORIES, PRIVATE_FILE, &repos)
    }
}

/// A layer entry's path as dockerd's untar takes it (Go's `filepath.Clean`,
/// relative to the layer's root): None for the root itself, an error for a
/// path that leaves it.
fn clean(path: &[u8]) -> Result<Option<Vec<u8>>> {
    // `..` above the root of an absolute path stays at the root; above a
    // relative one it leaves the layer.
    let rooted = path.first() == Some(&b'/');
    let mut parts: Vec<&[u8]> = vec![];
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() && !rooted {
                    bail!("it leaves the layer's root");
                }
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(parts.join(&b'/')))
}

/// Reads a layer's stream, hashing it (its diff ID) and splitting it (its
/// tar-split) as it is read.
struct Tee<'a, S: Write> {
    inner: &'a mut dyn Read,
    hash: Sha256,
    split: Splitter<S>,
}

impl<S: Write> Read for Tee<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.split
            .feed(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:#}")))?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const T: i64 = 1_600_000_000;
    const STAMP: i64 = 1_750_000_000;

    /// A layer tar of (path, kind, mode) entries, each at time T.
    fn layer(entries: &[(&str, char, u32)]) -> Vec<u8> {
        let mut w = Writer::new(vec![]);
        for &(path, kind, mode) in entries {
            let a = Attrs {
                mode,
                uid: 1000,
                gid: 1000,
                mtime: T,
                mtime_nsec: 0,
                xattrs: vec![],
            };
            let p = path.as_bytes();
            match kind {
                'd' => w.dir(p, &a).unwrap(),
                'f' => w.file_bytes(p, &a, path.as_bytes()).unwrap(),
                'l' => w.symlink(p, &a, b"target").unwrap(),
                'h' => w.hard_link(p, &a, b"dir/file").unwrap(),
                _ => unreachable!(),
            }
        }
        w.finish().unwrap()
    }

    fn config(diffs: &[&[u8]]) -> Vec<u8> {
        let ids: Vec<String> = diffs
            .iter()
            .map(|d| format!("sha256:{}", sha256_hex(d)))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ids},
        }))
        .unwrap()
    }

    /// The store written for images of `layers` (by blob name), as path ->
    /// (kind, mode, uid, mtime, xattrs, link, data).
    type Out = HashMap<String, (EntryType, u32, u64, i64, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>)>;

    fn store(images: &[(&[&str], &str)], blobs: &HashMap<&str, Vec<u8>>) -> (StoreOut, Out) {
        let images: Vec<ImageIn> = images
            .iter()
            .map(|(layers, name)| ImageIn {
                reference: format!("r:{name}"),
                config: config(&layers.iter().map(|l| &blobs[l][..]).collect::<Vec<_>>()),
                names: vec![("r".into(), format!("r:{name}"))],
                source_repository: "docker.io/library/r".into(),
                layers: layers.iter().map(|l| l.to_string()).collect(),
            })
            .collect();
        let mut open = |d: &str| -> Result<Box<dyn Read + Send>> {
            Ok(Box::new(io::Cursor::new(blobs[d].clone())))
        };
        let (got, tar) = write_store(&images, &mut open, STAMP, T + 1, vec![]).unwrap();
        let mut out = Out::new();
        let mut ar = Archive::new(&tar[..]);
        while let Some(e) = ar.next_entry().unwrap() {
            let m = e.meta.clone();
            let mut data = vec![];
            let mut d = e.data;
            d.read_to_end(&mut data).unwrap();
            let link = m.link.clone().unwrap_or(data);
            let path = String::from_utf8(m.path.clone()).unwrap();
            out.insert(path, (m.kind, m.mode, m.uid, m.mtime, m.xattrs, link));
        }
        (got, out)
    }

    #[test]
    fn layers_are_applied_as_dockerd_applies_them() {
        let base = layer(&[
            ("dir/", 'd', 0o755),
            ("dir/file", 'f', 0o640),
            ("dir/hard", 'h', 0o600),
            ("dir/sym", 'l', 0),
            ("gone", 'f', 0o644),
        ]);
        let upper = layer(&[
            ("dir/", 'd', 0o750),
            ("dir/.wh..wh..opq", 'f', 0o644),
            ("dir/new", 'f', 0o644),
            (".wh.gone", 'f', 0o644),
        ]);
        let blobs: HashMap<&str, Vec<u8>> =
            [("sha256:b0", base.clone()), ("sha256:b1", upper)].into();
        let (got, out) = store(
            &[(&["sha256:b0", "sha256:b1"], "1"), (&["sha256:b0"], "2")],
            &blobs,
        );
        assert_eq!(got.layers, 2, "the shared base layer is written once");
        let chains = chain_ids(&[
            format!("sha256:{}", sha256_hex(&base)),
            format!("sha256:{}", sha256_hex(&blobs["sha256:b1"])),
        ]);
        let (c0, c1) = (hex(&chains[0]), hex(&chains[1]));
        let d0 = format!("overlay2/{}/diff", layer_dir(c0));
        let d1 = format!("overlay2/{}/diff", layer_dir(c1));
        // A symlink is 0777 whatever its header says; a layer's file keeps
        // its owner and time.
        assert_eq!(out[&format!("{d0}/dir/sym")].1, 0o777);
        assert_eq!(out[&format!("{d0}/dir/file")].2, 1000);
        assert_eq!(out[&format!("{d0}/dir/file")].3, T);
        assert_eq!(out[&format!("{d0}/dir/hard")].0, EntryType::Link);
        assert_eq!(
            out[&format!("{d0}/dir/hard")].5,
            format!("{d0}/dir/file").into_bytes()
        );
        // The whiteout is a 0/0 character device with no permissions, the
        // opaque marker an xattr of its directory.
        let wh = &out[&format!("{d1}/gone")];
        assert_eq!((wh.0, wh.1, wh.3), (EntryType::Char, 0, STAMP));
        assert!(!out.contains_key(&format!("{d1}/.wh.gone")));
        assert!(!out.contains_key(&format!("{d1}/dir/.wh..wh..opq")));
        let dir = &out[&format!("{d1}/dir")];
        assert_eq!(dir.1, 0o750);
        assert_eq!(
            dir.4,
            vec![(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())]
        );
        // The layer DB: diff ID, parent, size as directory.Size counts it
        // (the file once, the symlink's target, not the hard link).
        let db = |c: &str, f: &str| out[&format!("{LAYERDB}/{c}/{f}")].5.clone();
        assert_eq!(db(c1, "parent"), chains[0].as_bytes());
        assert_eq!(db(c0, "size"), (8 + 6 + 4).to_string().into_bytes());
        assert_eq!(db(c0, "cache-id"), layer_dir(c0).into_bytes());
        assert!(!out.contains_key(&format!("{LAYERDB}/{c0}/parent")));
        // The tar-split rebuilds the layer from diff/.
        let ts = db(c0, "tar-split.json.gz");
        let mut dec = super::super::tarsplit::Decoder::gzip(&ts[..]);
        let mut names = vec![];
        while let Some(e) = dec.next_entry().unwrap() {
            if let super::super::tarsplit::Entry::File { name, .. } = e {
                names.push(String::from_utf8(name).unwrap());
            }
        }
        assert_eq!(names, ["dir/", "dir/file", "dir/hard", "dir/sym", "gone"]);
        // The parent is committed, the lower names it by its link.
        assert!(out.contains_key(&format!("overlay2/{}/committed", layer_dir(c0))));
        assert_eq!(
            out[&format!("overlay2/{}/lower", layer_dir(c1))].5,
            format!("l/{}", link_name(c0)).into_bytes()
        );
        let repos = String::from_utf8(out[REPOSITORIES].5.clone()).unwrap();
        assert!(
            repos.contains("\"r:1\"") && repos.contains("\"r:2\""),
            "{repos}"
        );
    }

    #[test]
    fn hostile_layers_are_refused() {
        let escape = layer(&[("../etc/passwd", 'f', 0o644)]);
        let twice = layer(&[("a", 'f', 0o644), ("./a", 'f', 0o644)]);
        for (bad, want) in [(escape, "outside the layer"), (twice, "appears twice")] {
            let image = ImageIn {
                reference: "x".into(),
                config: config(&[&bad]),
                names: vec![],
                source_repository: "x".into(),
                layers: vec!["sha256:x".into()],
            };
            let mut open = |_: &str| -> Result<Box<dyn Read + Send>> {
                Ok(Box::new(io::Cursor::new(bad.clone())))
            };
            let err = write_store(&[image], &mut open, STAMP, T, vec![]).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{err:#}");
        }
    }
}
