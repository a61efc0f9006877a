//! Images from files: `docker save` archives (docker-archive), OCI image
//! layouts as a tar (oci-archive) or a directory (oci), checked whole before
//! anything is written, then streamed as the docker-archive that `docker
//! load` of Docker 26 and 28 with the overlay2 store accepts.
//!
//! Why a conversion: that loader (moby `image/tarexport/load.go`) reads only
//! `manifest.json` (`[{Config, RepoTags, Layers}]`), so an OCI layout made by
//! skopeo or buildx fails there. It decompresses each layer itself
//! (gzip, bzip2, xz, zstd), so layer blobs are passed on as stored. The
//! config bytes are kept as they are: the image ID is their sha256, the same
//! as when the image is pulled from a registry.
//!
//! Formats read:
//! - docker-archive: `manifest.json`; configs as `<hex>.json` (Docker before
//!   25, skopeo) or `blobs/sha256/<hex>` (Docker 25+, which writes an OCI
//!   layout next to manifest.json); layers as `<id>/layer.tar`, `<hex>.tar`
//!   or `blobs/sha256/<hex>`; symbolic and hard links between them (Docker
//!   before 25 links a layer it already wrote). `repositories` is not used.
//! - OCI image layout: `index.json` (`oci-layout` checked when present),
//!   `blobs/sha256/<hex>`, image manifests and indexes (nested too), OCI or
//!   Docker media types.
//!
//! Nothing here holds a layer in memory: JSON documents are capped at
//! [`MAX_JSON`], layers are hashed and copied as streams.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::refs::ImageRef;
use crate::compress::{self, read_full, Compression, SNIFF_LEN};
use crate::digest::{hex, is_hex64, sha256_hex};
use crate::platform::Platform;
use crate::tar::{Archive, EntryType};

/// Largest JSON document read (manifest.json, index.json, a manifest, a
/// config): real ones are a few KiB, big configs some hundred KiB.
const MAX_JSON: u64 = 4 << 20;
/// Small files of a tar kept in memory while it is read once, in all.
const MAX_KEPT: u64 = 64 << 20;
/// Indexes inside indexes, and links to links, followed at most.
const MAX_DEPTH: usize = 8;
const COPY_BUF: usize = 1 << 20;

/// How an archive is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// A `docker save` tar (compressed or not).
    DockerArchive,
    /// An OCI image layout in a tar (compressed or not).
    OciArchive,
    /// An OCI image layout in a directory.
    OciDir,
}

impl fmt::Display for ArchiveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArchiveKind::DockerArchive => "docker-archive",
            ArchiveKind::OciArchive => "oci-archive",
            ArchiveKind::OciDir => "oci",
        })
    }
}

/// One image found in an archive, checked.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// sha256:<hex> of the config bytes: the image ID Docker will give it.
    pub id: String,
    /// The names it gets: the `:REF` given, else the tags the archive
    /// carries (always with a tag: `latest` when none was written).
    pub tags: Vec<ImageRef>,
    pub platform: Platform,
    /// How many layers.
    pub layers: usize,
    /// Bytes of the layer blobs as stored (compressed or not).
    pub size: u64,
}

/// A file of the archive that is copied: where it is, what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blob {
    /// Path in the tar, or relative to the directory.
    source: String,
    /// sha256 of its bytes, hex.
    hex: String,
    size: u64,
}

#[derive(Debug, Clone)]
struct Plan {
    config: Vec<u8>,
    layers: Vec<Blob>,
}

/// An archive that [`check`] found complete and consistent, with the
/// image(s) selected from it.
#[derive(Debug)]
pub struct CheckedArchive {
    kind: ArchiveKind,
    path: PathBuf,
    images: Vec<ArchiveImage>,
    plans: Vec<Plan>,
}

impl CheckedArchive {
    pub fn images(&self) -> &[ArchiveImage] {
        &self.images
    }
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

/// A path inside the archive in one spelling: no `.`, no empty
/// components, no leading `/`; `..` may not leave the archive.
fn normalize(path: &str) -> Result<String> {
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
fn digest_hex(digest: &str) -> Result<&str> {
    match digest.split_once(':') {
        Some(("sha256", h)) if is_hex64(h) => Ok(h),
        Some(("sha256", _)) => bail!("{digest:?} is not a sha256 digest (64 lowercase hex digits)"),
        Some((alg, _)) => bail!("the digest {digest:?} uses {alg}: only sha256 is supported"),
        None => bail!("{digest:?} is not a digest (sha256:<hex>)"),
    }
}

fn blob_path(hex: &str) -> String {
    format!("blobs/sha256/{hex}")
}

/// The digest a file's name says it has: `blobs/sha256/<hex>` or
/// `<hex>.json` / `<hex>.tar` (docker save, skopeo).
fn digest_in_name(path: &str) -> Option<&str> {
    if let Some(h) = path.strip_prefix("blobs/sha256/") {
        return Some(h).filter(|h| is_hex64(h));
    }
    let name = path.strip_suffix(".json").or(path.strip_suffix(".tar"))?;
    Some(name).filter(|h| is_hex64(h))
}

/// A name an image can be tagged with: a tag (`latest` when none), no
/// digest (Docker refuses to tag with one).
fn as_tag(r: &ImageRef) -> ImageRef {
    ImageRef {
        name: r.name.clone(),
        tag: Some(r.tag.clone().unwrap_or_else(|| "latest".into())),
        digest: None,
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------- reading

/// Reads and hashes a stream, counting its bytes.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    n: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            hash: Sha256::new(),
            n: 0,
        }
    }

    fn finish(self) -> (String, u64) {
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
struct FileInfo {
    /// Where it really is (links followed).
    source: String,
    hex: String,
    size: u64,
    compression: Compression,
}

/// The archive being checked: a tar read once, or a directory.
enum Source {
    Tar {
        path: PathBuf,
        listing: TarListing,
    },
    Dir {
        path: PathBuf,
        hashed: HashMap<String, (String, u64, Compression)>,
    },
}

impl Source {
    fn path(&self) -> &Path {
        match self {
            Source::Tar { path, .. } | Source::Dir { path, .. } => path,
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

    fn has(&self, name: &str) -> bool {
        match self {
            Source::Tar { listing, .. } => Source::resolve(listing, name).is_some(),
            Source::Dir { path, .. } => path.join(name).is_file(),
        }
    }

    fn missing(&self, name: &str) -> anyhow::Error {
        anyhow!(
            "{}: {name} is missing (an incomplete archive?)",
            self.path().display()
        )
    }

    /// The content of a JSON document, at most [`MAX_JSON`] bytes.
    fn json(&self, name: &str) -> Result<Vec<u8>> {
        match self {
            Source::Tar { path, listing } => {
                let (_, f) = Source::resolve(listing, name).ok_or_else(|| self.missing(name))?;
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
            Source::Dir { path, .. } => {
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
    fn file(&mut self, name: &str) -> Result<FileInfo> {
        let missing = self.missing(name);
        match self {
            Source::Tar { listing, .. } => {
                let (source, f) = Source::resolve(listing, name).ok_or(missing)?;
                Ok(FileInfo {
                    source,
                    hex: f.hex.clone(),
                    size: f.size,
                    compression: f.compression,
                })
            }
            Source::Dir { path, hashed } => {
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

    /// The content of a blob named by `desc`, checked against its digest
    /// and size.
    fn json_blob(&self, desc: &Descriptor, what: &str) -> Result<(String, Vec<u8>)> {
        let h = digest_hex(&desc.digest)
            .with_context(|| format!("{}: {what}", self.path().display()))?
            .to_string();
        let name = blob_path(&h);
        let data = self.json(&name).with_context(|| format!("the {what}"))?;
        let got = sha256_hex(&data);
        if got != h {
            bail!(
                "{}: {name} ({what}) has the digest sha256:{got}, not the one of its name: a corrupt archive",
                self.path().display()
            );
        }
        if data.len() as u64 != desc.size {
            bail!(
                "{}: {name} ({what}) has {} bytes, its descriptor says {}",
                self.path().display(),
                data.len(),
                desc.size
            );
        }
        Ok((h, data))
    }
}

fn parse_json<'a, T: Deserialize<'a>>(src: &Source, name: &str, data: &'a [u8]) -> Result<T> {
    serde_json::from_slice(data)
        .with_context(|| format!("{}: {name} is not well-formed", src.path().display()))
}

// ------------------------------------------------------------ JSON types

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerItem {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize, Clone)]
struct OciPlatform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

impl OciPlatform {
    fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

#[derive(Deserialize, Clone)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<OciPlatform>,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

impl Descriptor {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An image index or an image manifest (both have a mediaType).
#[derive(Deserialize)]
struct Document {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct Layout {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// An image found and checked, before names are decided.
struct Found {
    plan: Plan,
    platform: Platform,
    /// The config's digest, hex.
    id: String,
    size: u64,
}

/// Checks a config against the layers that go with it and returns the
/// image it describes.
fn finish_image(
    src: &Source,
    config_name: &str,
    config: Vec<u8>,
    layers: Vec<(FileInfo, String)>,
) -> Result<Found> {
    let id = sha256_hex(&config);
    let cfg: ImageConfig = parse_json(src, config_name, &config)?;
    if cfg.rootfs.kind != "layers" {
        bail!(
            "{}: {config_name}: rootfs type {:?}, not \"layers\": not a container image config",
            src.path().display(),
            cfg.rootfs.kind
        );
    }
    if cfg.rootfs.diff_ids.len() != layers.len() {
        bail!(
            "{}: the config {config_name} lists {} layers (rootfs.diff_ids), its manifest {}: a corrupt archive",
            src.path().display(),
            cfg.rootfs.diff_ids.len(),
            layers.len()
        );
    }
    let mut blobs = vec![];
    let mut size = 0u64;
    for ((info, name), diff_id) in layers.into_iter().zip(&cfg.rootfs.diff_ids) {
        // An uncompressed layer's digest is its diff ID: cheap to check
        // here, and `docker load` would fail on it after a long copy.
        if info.compression == Compression::None && *diff_id != format!("sha256:{}", info.hex) {
            bail!(
                "{}: the layer {name} has the digest sha256:{}, but the config says {diff_id}: a corrupt archive",
                src.path().display(),
                info.hex
            );
        }
        size = size.saturating_add(info.size);
        blobs.push(Blob {
            source: info.source,
            hex: info.hex,
            size: info.size,
        });
    }
    let platform = Platform::new(
        if cfg.os.is_empty() {
            "unknown"
        } else {
            &cfg.os
        },
        if cfg.architecture.is_empty() {
            "unknown"
        } else {
            &cfg.architecture
        },
        cfg.variant.as_deref(),
    );
    Ok(Found {
        plan: Plan {
            config,
            layers: blobs,
        },
        platform,
        id,
        size,
    })
}

// ------------------------------------------------------- docker-archive

fn check_docker(
    src: &mut Source,
    reference: Option<&ImageRef>,
    platform: &Platform,
    allow_mismatch: bool,
) -> Result<Vec<(Found, Vec<ImageRef>)>> {
    let p = src.path().display().to_string();
    if !src.has("manifest.json") {
        if src.has("index.json") {
            bail!("{p}: no manifest.json, but an index.json: an OCI archive, to be given as oci-archive:");
        }
        bail!("{p}: no manifest.json: not a docker save archive (or one from Docker before 1.10)");
    }
    let data = src.json("manifest.json")?;
    let items: Option<Vec<DockerItem>> = parse_json(src, "manifest.json", &data)?;
    let items = items.ok_or_else(|| anyhow!("{p}: manifest.json is null"))?;
    if items.is_empty() {
        bail!("{p}: manifest.json lists no image");
    }
    // The names each image carries.
    let mut named: Vec<Vec<ImageRef>> = vec![];
    for item in &items {
        let mut tags = vec![];
        for t in item.repo_tags.iter().flatten() {
            let r = ImageRef::parse(t)
                .with_context(|| format!("{p}: manifest.json: the RepoTag {t:?}"))?;
            tags.push(as_tag(&r));
        }
        named.push(tags);
    }
    let selected: Vec<usize> = match reference {
        Some(r) if items.len() > 1 => {
            let want = r.normalized();
            let hit: Vec<usize> = (0..items.len())
                .filter(|&i| named[i].iter().any(|t| t.normalized() == want))
                .collect();
            if hit.is_empty() {
                let all: Vec<String> = named.iter().flatten().map(|t| t.to_string()).collect();
                bail!(
                    "{p} holds {} images and none is named {r} (it has {}): give one of those names",
                    items.len(),
                    if all.is_empty() { "no names".into() } else { all.join(", ") }
                );
            }
            hit
        }
        _ => (0..items.len()).collect(),
    };
    let mut out = vec![];
    for i in selected {
        let item = &items[i];
        let config_name =
            normalize(&item.config).with_context(|| format!("{p}: manifest.json: Config"))?;
        let config = src.json(&config_name).context("the config of an image")?;
        if let Some(h) = digest_in_name(&config_name) {
            let got = sha256_hex(&config);
            if got != h {
                bail!("{p}: the config {config_name} has the digest sha256:{got}, not the one of its name: a corrupt archive");
            }
        }
        let mut layers = vec![];
        for l in &item.layers {
            let name = normalize(l).with_context(|| format!("{p}: manifest.json: Layers"))?;
            let info = src.file(&name)?;
            if let Some(h) = digest_in_name(&name).filter(|_| name.starts_with("blobs/")) {
                if h != info.hex {
                    bail!("{p}: the layer {name} has the digest sha256:{}, not the one of its name: a corrupt archive", info.hex);
                }
            }
            layers.push((info, name));
        }
        let found = finish_image(src, &config_name, config, layers)?;
        let tags = match reference {
            Some(r) => vec![as_tag(r)],
            None => named[i].clone(),
        };
        if tags.is_empty() {
            bail!(
                "{p}: the image sha256:{} has no name in the archive: add :NAME[:TAG] to give it one",
                short(&found.id)
            );
        }
        if !platform.accepts(&found.platform) && !allow_mismatch {
            bail!(
                "{p}: {} is a {} image, but the target platform is {platform}: it could not run there; \
                 pass --allow-platform-mismatch to preload it anyway",
                tags[0],
                found.platform
            );
        }
        out.push((found, tags));
    }
    Ok(out)
}

// ------------------------------------------------------------------ OCI

/// The names a top-level entry of index.json carries: containerd's image
/// name, else `org.opencontainers.image.ref.name` when it is more than a
/// tag (`name:tag`, `registry/path`).
fn oci_names(desc: &Descriptor) -> Vec<ImageRef> {
    if let Some(r) = desc
        .annotation("io.containerd.image.name")
        .and_then(|n| ImageRef::parse(n).ok())
        .filter(|r| r.tag.is_some() || r.digest.is_none())
    {
        return vec![as_tag(&r)];
    }
    match desc.annotation("org.opencontainers.image.ref.name") {
        Some(n) if n.contains([':', '/']) => ImageRef::parse(n)
            .ok()
            .filter(|r| r.tag.is_some() || r.digest.is_none())
            .map(|r| vec![as_tag(&r)])
            .unwrap_or_default(),
        _ => vec![],
    }
}

fn is_index(desc: &Descriptor, doc: &Document) -> bool {
    let ty = doc.media_type.as_deref().unwrap_or(&desc.media_type);
    INDEX_TYPES.contains(&ty) || (ty.is_empty() && doc.manifests.is_some())
}

fn is_attestation(desc: &Descriptor) -> bool {
    desc.annotation("vnd.docker.reference.type") == Some("attestation-manifest")
}

/// Reads an image manifest and checks every blob it names.
fn oci_image(src: &mut Source, desc: &Descriptor, doc: &Document) -> Result<Found> {
    let p = src.path().display().to_string();
    let ty = doc.media_type.as_deref().unwrap_or(&desc.media_type);
    if !ty.is_empty() && !MANIFEST_TYPES.contains(&ty) {
        bail!(
            "{p}: the manifest {} has the media type {ty}: not a container image",
            desc.digest
        );
    }
    let (Some(config), Some(layer_descs)) = (&doc.config, &doc.layers) else {
        bail!(
            "{p}: the manifest {} has no config or no layers: not an image manifest",
            desc.digest
        );
    };
    if !config.media_type.is_empty() && !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        bail!(
            "{p}: the manifest {} has a config of type {}: not a container image (an artifact?)",
            desc.digest,
            config.media_type
        );
    }
    let (config_hex, config_bytes) = src.json_blob(config, "config")?;
    let mut layers = vec![];
    for l in layer_descs {
        let t = l.media_type.as_str();
        if !t.contains("tar") || t.contains("encrypted") {
            bail!(
                "{p}: the layer {} has the media type {t:?}, which Docker cannot load",
                l.digest
            );
        }
        let h = digest_hex(&l.digest).with_context(|| format!("{p}: a layer"))?;
        let name = blob_path(h);
        let info = src.file(&name)?;
        if info.hex != h {
            bail!(
                "{p}: {name} has the digest sha256:{}, not the one of its name: a corrupt archive",
                info.hex
            );
        }
        if info.size != l.size {
            bail!(
                "{p}: {name} has {} bytes, its descriptor says {}",
                info.size,
                l.size
            );
        }
        layers.push((info, name));
    }
    finish_image(src, &blob_path(&config_hex), config_bytes, layers)
}

/// What resolving one entry of index.json for a platform gave.
enum Resolved {
    Image(Found),
    /// A single image manifest of another platform.
    Other(Found),
    /// An index without an image for the platform; the platforms it has.
    None(Vec<Platform>),
}

fn oci_resolve(
    src: &mut Source,
    desc: &Descriptor,
    platform: &Platform,
    depth: usize,
) -> Result<Resolved> {
    let p = src.path().display().to_string();
    if depth > MAX_DEPTH {
        bail!("{p}: indexes nested more than {MAX_DEPTH} deep");
    }
    let (_, data) = src.json_blob(desc, "manifest or index")?;
    let doc: Document = parse_json(src, &blob_path(digest_hex(&desc.digest)?), &data)?;
    if !is_index(desc, &doc) {
        let found = oci_image(src, desc, &doc)?;
        let own = desc
            .platform
            .as_ref()
            .map(OciPlatform::platform)
            .unwrap_or_else(|| found.platform.clone());
        return Ok(if platform.accepts(&own) {
            Resolved::Image(found)
        } else {
            Resolved::Other(found)
        });
    }
    let mut seen = vec![];
    for child in doc.manifests.iter().flatten() {
        if is_attestation(child) {
            continue;
        }
        if let Some(pl) = child.platform.as_ref().map(OciPlatform::platform) {
            if !platform.accepts(&pl) {
                if pl.os != "unknown" && !seen.contains(&pl) {
                    seen.push(pl);
                }
                continue;
            }
        }
        match oci_resolve(src, child, platform, depth + 1)? {
            Resolved::Image(f) => return Ok(Resolved::Image(f)),
            Resolved::Other(f) => {
                if f.platform.os != "unknown" && !seen.contains(&f.platform) {
                    seen.push(f.platform)
                }
            }
            Resolved::None(more) => {
                for pl in more {
                    if !seen.contains(&pl) {
                        seen.push(pl);
                    }
                }
            }
        }
    }
    Ok(Resolved::None(seen))
}

fn check_oci(
    src: &mut Source,
    reference: Option<&ImageRef>,
    platform: &Platform,
    allow_mismatch: bool,
) -> Result<Vec<(Found, Vec<ImageRef>)>> {
    let p = src.path().display().to_string();
    if !src.has("index.json") {
        if src.has("manifest.json") {
            bail!("{p}: no index.json, but a manifest.json: a docker save archive, to be given as docker-archive:");
        }
        bail!("{p}: no index.json: not an OCI image layout");
    }
    if src.has("oci-layout") {
        let data = src.json("oci-layout")?;
        let layout: Layout = parse_json(src, "oci-layout", &data)?;
        if !layout.version.starts_with("1.") {
            bail!(
                "{p}: oci-layout says version {}; only 1.x is known",
                layout.version
            );
        }
    }
    let data = src.json("index.json")?;
    let index: Document = parse_json(src, "index.json", &data)?;
    let entries = index
        .manifests
        .ok_or_else(|| anyhow!("{p}: index.json has no manifests list"))?;
    if entries.is_empty() {
        bail!("{p}: index.json lists no image");
    }
    let names: Vec<Vec<ImageRef>> = entries.iter().map(oci_names).collect();
    let mut chosen: Vec<usize> = (0..entries.len()).collect();
    if let Some(r) = reference.filter(|_| entries.len() > 1) {
        let want = r.normalized();
        let written = r.to_string();
        let hit: Vec<usize> = chosen
            .iter()
            .copied()
            .filter(|&i| {
                names[i].iter().any(|n| n.normalized() == want)
                    || entries[i].annotation("org.opencontainers.image.ref.name")
                        == Some(written.as_str())
            })
            .collect();
        if !hit.is_empty() {
            chosen = hit;
        } else if names.iter().any(|n| !n.is_empty()) {
            let all: Vec<String> = names.iter().flatten().map(|t| t.to_string()).collect();
            bail!(
                "{p} holds {} images and none is named {r} (it has {}): give one of those names",
                entries.len(),
                all.join(", ")
            );
        }
    }
    // Images for the platform, one per config (the same image may be listed
    // under several names); the platforms the others have.
    let mut images: Vec<(Found, Vec<ImageRef>)> = vec![];
    let mut others: Vec<Found> = vec![];
    let mut seen: Vec<Platform> = vec![];
    for i in chosen {
        if is_attestation(&entries[i]) {
            continue;
        }
        match oci_resolve(src, &entries[i], platform, 0)? {
            Resolved::Image(f) => match images.iter_mut().find(|(g, _)| g.id == f.id) {
                Some((_, tags)) => {
                    for n in &names[i] {
                        if !tags.contains(n) {
                            tags.push(n.clone());
                        }
                    }
                }
                None => images.push((f, names[i].clone())),
            },
            Resolved::Other(f) => {
                if !seen.contains(&f.platform) {
                    seen.push(f.platform.clone());
                }
                if !others.iter().any(|g| g.id == f.id) {
                    others.push(f);
                }
            }
            Resolved::None(more) => {
                for pl in more {
                    if !seen.contains(&pl) {
                        seen.push(pl);
                    }
                }
            }
        }
    }
    if images.is_empty() {
        if others.len() == 1 && seen.len() == 1 {
            let one = others.remove(0);
            let name = names
                .iter()
                .flatten()
                .next()
                .map_or_else(|| format!("sha256:{}", short(&one.id)), |n| n.to_string());
            if !allow_mismatch {
                bail!(
                    "{p}: {name} is a {} image, but the target platform is {platform}: it could not run there; \
                     pass --allow-platform-mismatch to preload it anyway",
                    one.platform
                );
            }
            let tags = names.into_iter().flatten().collect();
            images.push((one, tags));
        } else {
            bail!(
                "{p}: no image for {platform} in the index (it has {})",
                if seen.is_empty() {
                    "none".into()
                } else {
                    list(&seen)
                }
            );
        }
    }
    if let Some(r) = reference {
        if images.len() > 1 {
            let ids: Vec<String> = images
                .iter()
                .map(|(f, _)| format!("sha256:{}", short(&f.id)))
                .collect();
            bail!(
                "{p} holds {} images for {platform} ({}) and {r} can name only one: give a name the archive carries",
                images.len(),
                ids.join(", ")
            );
        }
        images[0].1 = vec![as_tag(r)];
    }
    for (f, tags) in &images {
        if tags.is_empty() {
            bail!(
                "{p}: the image sha256:{} has no name in the archive: add :NAME[:TAG] to give it one",
                short(&f.id)
            );
        }
    }
    Ok(images)
}

/// Reads the whole archive once and checks it, before anything is written
/// anywhere: the structure (a truncated or corrupt tar or compressed
/// stream is an error), manifest.json / index.json present and well-formed,
/// every referenced blob present, configs and (for OCI) every blob equal to
/// its digest, an uncompressed layer equal to its diff ID, the config's
/// diff ID count equal to the layer count.
///
/// `reference` (the `:REF`) names the image: then exactly one image is
/// selected (with several in the archive, the one carrying that name).
/// Without it the images get the names the archive carries (docker-archive:
/// RepoTags; OCI: the annotation `io.containerd.image.name`, else
/// `org.opencontainers.image.ref.name` when it is a full reference); an
/// image without a name is an error. From an OCI index, the manifest for
/// `platform` is selected; a single image of another platform is an error
/// unless `allow_mismatch`.
pub fn check(
    kind: ArchiveKind,
    path: &Path,
    reference: Option<&ImageRef>,
    platform: &Platform,
    allow_mismatch: bool,
) -> Result<CheckedArchive> {
    if let Some(r) = reference {
        if r.digest.is_some() {
            bail!("{r}: an archive's image is named by NAME[:TAG]; a digest cannot be a name");
        }
    }
    let meta = std::fs::metadata(path).with_context(|| format!("opening {}", path.display()))?;
    let mut src = match kind {
        ArchiveKind::OciDir => {
            if !meta.is_dir() {
                bail!(
                    "{} is not a directory: an OCI layout in a tar is given as oci-archive:",
                    path.display()
                );
            }
            Source::Dir {
                path: path.to_path_buf(),
                hashed: HashMap::new(),
            }
        }
        _ => {
            if meta.is_dir() {
                bail!(
                    "{} is a directory: an OCI layout in a directory is given as oci:",
                    path.display()
                );
            }
            Source::Tar {
                path: path.to_path_buf(),
                listing: scan_tar(path)?,
            }
        }
    };
    let found = match kind {
        ArchiveKind::DockerArchive => check_docker(&mut src, reference, platform, allow_mismatch)?,
        _ => check_oci(&mut src, reference, platform, allow_mismatch)?,
    };
    let mut images = vec![];
    let mut plans = vec![];
    for (f, tags) in found {
        images.push(ArchiveImage {
            id: format!("sha256:{}", f.id),
            tags,
            platform: f.platform,
            layers: f.plan.layers.len(),
            size: f.size,
        });
        plans.push(f.plan);
    }
    Ok(CheckedArchive {
        kind,
        path: path.to_path_buf(),
        images,
        plans,
    })
}

// ---------------------------------------------------------------- writing

fn tar_header(name: &str, size: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)
        .with_context(|| format!("naming {name} in the output tar"))?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

fn pad(out: &mut impl Write, size: u64) -> io::Result<()> {
    let n = (512 - size % 512) % 512;
    out.write_all(&[0u8; 512][..n as usize])
}

/// Copies exactly `blob.size` bytes of `from` into `out` as the tar entry
/// `blobs/sha256/<hex>`, checking the digest.
fn copy_blob(
    archive: &Path,
    blob: &Blob,
    from: impl Read,
    out: &mut impl Write,
    buf: &mut [u8],
) -> Result<()> {
    let name = blob_path(&blob.hex);
    let h = tar_header(&name, blob.size)?;
    out.write_all(h.as_bytes())
        .context("writing the converted archive")?;
    let mut hashing = Hashing::new(from.take(blob.size));
    loop {
        let n = hashing
            .read(buf)
            .with_context(|| format!("{}: reading {}", archive.display(), blob.source))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .context("writing the converted archive")?;
    }
    let (hex, size) = hashing.finish();
    if size != blob.size || hex != blob.hex {
        bail!(
            "{}: {} changed since it was checked (now {size} bytes, sha256:{hex})",
            archive.display(),
            blob.source
        );
    }
    pad(out, blob.size).context("writing the converted archive")
}

fn write_entry(out: &mut impl Write, name: &str, data: &[u8]) -> Result<()> {
    let h = tar_header(name, data.len() as u64)?;
    out.write_all(h.as_bytes())
        .and_then(|()| out.write_all(data))
        .and_then(|()| pad(out, data.len() as u64))
        .context("writing the converted archive")
}

/// Streams the selected image(s) as a docker-archive tar: their configs
/// (bytes unchanged) and layer blobs (as stored: `docker load` decompresses
/// them) under `blobs/sha256/<hex>`, then `manifest.json`. An outer
/// compression of the archive file is removed. Reads the archive again (no
/// temporary copy) and fails if a blob changed since [`check`]; since
/// manifest.json comes last, a stream cut short by that error is one
/// `docker load` refuses, never a partial image.
pub fn write_docker_archive(a: &CheckedArchive, mut out: impl Write) -> Result<()> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut written: BTreeSet<String> = BTreeSet::new();
    #[derive(serde::Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Item {
        config: String,
        repo_tags: Vec<String>,
        layers: Vec<String>,
    }
    let mut manifest = vec![];
    for (img, plan) in a.images.iter().zip(&a.plans) {
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
    for l in a.plans.iter().flat_map(|p| &p.layers) {
        if !written.contains(&l.hex) {
            wanted.entry(l.source.as_str()).or_insert(l);
        }
    }
    match a.kind {
        ArchiveKind::OciDir => {
            let mut todo: Vec<&Blob> = wanted.values().copied().collect();
            todo.sort_by(|x, y| x.source.cmp(&y.source));
            for blob in todo {
                if !written.insert(blob.hex.clone()) {
                    continue;
                }
                let p = a.path.join(&blob.source);
                let f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
                copy_blob(&a.path, blob, f, &mut out, &mut buf)?;
            }
        }
        ArchiveKind::DockerArchive | ArchiveKind::OciArchive => {
            let file =
                File::open(&a.path).with_context(|| format!("opening {}", a.path.display()))?;
            let (_, mut stream) = compress::decompress(file)
                .with_context(|| format!("reading {}", a.path.display()))?;
            let mut ar = Archive::new(&mut stream);
            while !wanted.is_empty() {
                let Some(entry) = ar
                    .next_entry()
                    .with_context(|| format!("{}: not a complete tar archive", a.path.display()))?
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
                copy_blob(&a.path, blob, entry.data, &mut out, &mut buf)?;
            }
            if let Some(name) = wanted.keys().next() {
                bail!(
                    "{}: {name} is missing: the archive changed since it was checked",
                    a.path.display()
                );
            }
        }
    }
    let json = serde_json::to_vec(&manifest).context("encoding manifest.json")?;
    write_entry(&mut out, "manifest.json", &json)?;
    out.write_all(&[0u8; 1024])
        .and_then(|()| out.flush())
        .context("writing the converted archive")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::io::Cursor;

    fn sha(b: &[u8]) -> String {
        sha256_hex(b)
    }

    /// A tar of regular files (and symlinks: `(name, None, Some(target))`).
    fn tar_of(files: &[(String, Vec<u8>)], links: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(vec![]);
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        for (name, target) in links {
            let mut h = tar::Header::new_ustar();
            h.set_size(0);
            h.set_mode(0o777);
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, name, target).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A layer: one file.
    fn layer(name: &str, content: &str) -> Vec<u8> {
        tar_of(&[(name.to_string(), content.as_bytes().to_vec())], &[])
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        gz.write_all(b).unwrap();
        gz.finish().unwrap()
    }

    fn config(arch: &str, variant: Option<&str>, diff_ids: &[&[u8]]) -> Vec<u8> {
        let mut c = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids":
                diff_ids.iter().map(|l| format!("sha256:{}", sha(l))).collect::<Vec<_>>()},
        });
        if let Some(v) = variant {
            c["variant"] = json!(v);
        }
        // Not serde's formatting: the bytes must survive as they are.
        let mut s = serde_json::to_string_pretty(&c).unwrap();
        s.push('\n');
        s.into_bytes()
    }

    fn amd64() -> Platform {
        "linux/amd64".parse().unwrap()
    }

    fn arm64() -> Platform {
        "linux/arm64".parse().unwrap()
    }

    fn r(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn err(res: Result<CheckedArchive>) -> String {
        format!("{:#}", res.expect_err("accepted"))
    }

    /// Converts and reads the result back: manifest.json and every file.
    fn convert(a: &CheckedArchive) -> (Value, HashMap<String, Vec<u8>>) {
        let mut out = vec![];
        write_docker_archive(a, &mut out).unwrap();
        let mut files = HashMap::new();
        let mut ar = tar::Archive::new(Cursor::new(out));
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = vec![];
            e.read_to_end(&mut data).unwrap();
            assert!(files.insert(name, data).is_none());
        }
        let manifest = serde_json::from_slice(&files["manifest.json"]).unwrap();
        (manifest, files)
    }

    /// The converted archive holds `config` as it is and `layers`, in order.
    fn assert_converted(a: &CheckedArchive, config: &[u8], layers: &[&[u8]], tags: &[&str]) {
        let (m, files) = convert(a);
        let items = m.as_array().unwrap();
        assert_eq!(items.len(), 1, "{m}");
        let item = &items[0];
        assert_eq!(item["Config"], format!("blobs/sha256/{}", sha(config)));
        assert_eq!(files[item["Config"].as_str().unwrap()], config);
        assert_eq!(item["RepoTags"], json!(tags));
        let names: Vec<&str> = item["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert_eq!(names.len(), layers.len());
        for (n, l) in names.iter().zip(layers) {
            assert_eq!(&files[*n][..], *l, "{n}");
        }
        assert_eq!(a.images()[0].id, format!("sha256:{}", sha(config)));
    }

    /// `docker save` before Docker 25: `<hex>.json`, `<id>/layer.tar`, a
    /// layer written once and linked.
    fn legacy_archive(tags: &[&str]) -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
        let l1 = layer("etc/a", "one");
        let l2 = layer("etc/b", "two");
        let cfg = config("amd64", None, &[&l1, &l2, &l1]);
        let manifest = json!([{
            "Config": format!("{}.json", sha(&cfg)),
            "RepoTags": tags,
            "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"],
        }]);
        let files = vec![
            (format!("{}.json", sha(&cfg)), cfg.clone()),
            ("aaa/layer.tar".into(), l1.clone()),
            ("aaa/VERSION".into(), b"1.0".to_vec()),
            ("bbb/layer.tar".into(), l2.clone()),
            ("manifest.json".into(), manifest.to_string().into_bytes()),
            ("repositories".into(), b"{}".to_vec()),
        ];
        let tar = tar_of(&files, &[("ccc/layer.tar", "../aaa/layer.tar")]);
        (tar, cfg, vec![l1.clone(), l2, l1])
    }

    #[test]
    fn docker_archive_legacy_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (tar, cfg, layers) = legacy_archive(&["busybox:latest", "ex/b:1"]);
        let p = write(dir.path(), "a.tar", &tar);
        let a = check(ArchiveKind::DockerArchive, &p, None, &amd64(), false).unwrap();
        let img = &a.images()[0];
        assert_eq!(list(&img.tags), "busybox:latest, ex/b:1");
        assert_eq!(
            (img.layers, img.platform.to_string()),
            (3, "linux/amd64".into())
        );
        let total: usize = layers.iter().map(Vec::len).sum();
        assert_eq!(img.size, total as u64);
        let lr: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        assert_converted(&a, &cfg, &lr, &["busybox:latest", "ex/b:1"]);
        // Given a :REF, that is its only name, with a tag.
        let a = check(
            ArchiveKind::DockerArchive,
            &p,
            Some(&r("mine/x")),
            &amd64(),
            false,
        )
        .unwrap();
        assert_converted(&a, &cfg, &lr, &["mine/x:latest"]);
        // Another platform: named both, unless allowed.
        let e = err(check(ArchiveKind::DockerArchive, &p, None, &arm64(), false));
        assert!(
            e.contains("linux/amd64") && e.contains("linux/arm64"),
            "{e}"
        );
        assert!(e.contains("--allow-platform-mismatch"), "{e}");
        check(ArchiveKind::DockerArchive, &p, None, &arm64(), true).unwrap();
        // No name and no :REF.
        let (tar, _, _) = legacy_archive(&[]);
        let p = write(dir.path(), "unnamed.tar", &tar);
        let e = err(check(ArchiveKind::DockerArchive, &p, None, &amd64(), false));
        assert!(
            e.contains("add :NAME[:TAG]") && e.contains("unnamed.tar"),
            "{e}"
        );
        // Given as the wrong kind.
        let e = err(check(ArchiveKind::OciArchive, &p, None, &amd64(), false));
        assert!(e.contains("docker-archive:"), "{e}");
    }

    /// An OCI layout under construction.
    #[derive(Default)]
    struct Oci {
        files: Vec<(String, Vec<u8>)>,
    }

    impl Oci {
        fn blob(&mut self, media_type: &str, data: Vec<u8>) -> Value {
            let d = json!({"mediaType": media_type, "digest": format!("sha256:{}", sha(&data)), "size": data.len()});
            let name = format!("blobs/sha256/{}", sha(&data));
            if !self.files.iter().any(|(n, _)| *n == name) {
                self.files.push((name, data));
            }
            d
        }

        /// An image of gzip-compressed layers; returns its manifest
        /// descriptor and its config.
        fn image(&mut self, arch: &str, layers: &[Vec<u8>]) -> (Value, Vec<u8>) {
            let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
            let cfg = config(arch, None, &refs);
            let c = self.blob("application/vnd.oci.image.config.v1+json", cfg.clone());
            let ls: Vec<Value> = layers
                .iter()
                .map(|l| self.blob("application/vnd.oci.image.layer.v1.tar+gzip", gzip(l)))
                .collect();
            let m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": c, "layers": ls});
            let mut d = self.blob(
                "application/vnd.oci.image.manifest.v1+json",
                m.to_string().into_bytes(),
            );
            d["platform"] = json!({"os": "linux", "architecture": arch});
            (d, cfg)
        }

        fn index(&mut self, manifests: Vec<Value>) -> Value {
            let i = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": manifests});
            self.blob(
                "application/vnd.oci.image.index.v1+json",
                i.to_string().into_bytes(),
            )
        }

        fn finish(mut self, top: Vec<Value>) -> Vec<(String, Vec<u8>)> {
            let i = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": top});
            self.files
                .push(("index.json".into(), i.to_string().into_bytes()));
            self.files.push((
                "oci-layout".into(),
                br#"{"imageLayoutVersion": "1.0.0"}"#.to_vec(),
            ));
            self.files
        }
    }

    fn to_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
        for (n, d) in files {
            let p = dir.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, d).unwrap();
        }
    }

    /// `docker save` of Docker 25+: an OCI layout plus manifest.json,
    /// uncompressed layers; written gzip- and zstd-compressed.
    #[test]
    fn docker_archive_25_layout_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = layer("bin/x", "x");
        let l2 = layer("bin/y", "y");
        let cfg = config("amd64", None, &[&l1, &l2]);
        let b = |d: &[u8]| format!("blobs/sha256/{}", sha(d));
        let manifest = json!([{"Config": b(&cfg), "RepoTags": ["127.0.0.1:5000/fp/x:1"],
                               "Layers": [b(&l1), b(&l2)]}]);
        let files = vec![
            (b(&cfg), cfg.clone()),
            (b(&l1), l1.clone()),
            (b(&l2), l2.clone()),
            (
                "index.json".into(),
                br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
            ),
            ("manifest.json".into(), manifest.to_string().into_bytes()),
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
        ];
        let tar = tar_of(&files, &[]);
        for (name, bytes) in [
            ("a.tar.gz", gzip(&tar)),
            ("a.tar.zst", zstd::encode_all(&tar[..], 3).unwrap()),
        ] {
            let p = write(dir.path(), name, &bytes);
            let a = check(ArchiveKind::DockerArchive, &p, None, &amd64(), false).unwrap();
            assert_converted(&a, &cfg, &[&l1, &l2], &["127.0.0.1:5000/fp/x:1"]);
        }
    }

    #[test]
    fn oci_dir_and_archive() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = layer("a", "1");
        let mut o = Oci::default();
        let (mut d, cfg) = o.image("amd64", std::slice::from_ref(&l1));
        // skopeo's oci:DIR:latest: a tag only, which is no name.
        d["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
        let files = o.finish(vec![d.clone()]);
        let od = dir.path().join("layout");
        to_dir(&od, &files);
        let p = write(dir.path(), "layout.tar", &tar_of(&files, &[]));
        let gz = gzip(&l1);
        for (kind, path) in [(ArchiveKind::OciDir, &od), (ArchiveKind::OciArchive, &p)] {
            let e = err(check(kind, path, None, &amd64(), false));
            assert!(e.contains("add :NAME[:TAG]"), "{e}");
            let a = check(kind, path, Some(&r("local/app:2")), &amd64(), false).unwrap();
            assert_eq!(a.images()[0].size, gz.len() as u64);
            // Layers stay compressed: docker load decompresses them.
            assert_converted(&a, &cfg, &[&gz], &["local/app:2"]);
        }
        // Named by containerd's annotation (docker save 25+, nerdctl), or
        // by a full reference in ref.name (skopeo oci:DIR:name:tag).
        for ann in [
            json!({"io.containerd.image.name": "docker.io/library/app:3",
                   "org.opencontainers.image.ref.name": "3"}),
            json!({"org.opencontainers.image.ref.name": "docker.io/library/app:3"}),
        ] {
            let mut o = Oci::default();
            let (mut d, _) = o.image("amd64", std::slice::from_ref(&l1));
            d["annotations"] = ann;
            let p = write(dir.path(), "named.tar", &tar_of(&o.finish(vec![d]), &[]));
            let a = check(ArchiveKind::OciArchive, &p, None, &amd64(), false).unwrap();
            assert_eq!(list(&a.images()[0].tags), "docker.io/library/app:3");
        }
        // An OCI dir given as a docker-archive, a tar as a dir.
        let e = err(check(
            ArchiveKind::DockerArchive,
            &od,
            None,
            &amd64(),
            false,
        ));
        assert!(e.contains("oci:"), "{e}");
        let e = err(check(ArchiveKind::OciDir, &p, None, &amd64(), false));
        assert!(e.contains("oci-archive:"), "{e}");
    }

    /// The files of a layout, its arm64 config and arm64 layer.
    type MultiPlatform = (Vec<(String, Vec<u8>)>, Vec<u8>, Vec<u8>);

    /// buildx-like: index.json -> index -> amd64, arm64 and an attestation.
    fn multi_platform() -> MultiPlatform {
        let mut o = Oci::default();
        let (amd, _) = o.image("amd64", &[layer("f", "amd")]);
        let (arm, arm_cfg) = o.image("arm64", &[layer("f", "arm")]);
        let arm_layer = layer("f", "arm");
        let (mut att, _) = o.image("unknown", &[layer("att", "x")]);
        att["platform"] = json!({"os": "unknown", "architecture": "unknown"});
        att["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest"});
        let mut idx = o.index(vec![amd, arm, att]);
        idx["annotations"] = json!({"io.containerd.image.name": "ex/multi:1"});
        (o.finish(vec![idx]), arm_cfg, arm_layer)
    }

    #[test]
    fn multi_platform_index() {
        let dir = tempfile::tempdir().unwrap();
        let (files, arm_cfg, arm_layer) = multi_platform();
        let p = write(dir.path(), "m.tar", &tar_of(&files, &[]));
        let a = check(ArchiveKind::OciArchive, &p, None, &arm64(), false).unwrap();
        let img = &a.images()[0];
        assert_eq!(img.platform, arm64());
        assert_eq!(list(&img.tags), "ex/multi:1");
        assert_converted(&a, &arm_cfg, &[&gzip(&arm_layer)], &["ex/multi:1"]);
        // No image for the platform: named, with what there is.
        let s390: Platform = "linux/s390x".parse().unwrap();
        let e = err(check(ArchiveKind::OciArchive, &p, None, &s390, true));
        assert!(
            e.contains("no image for linux/s390x in the index (it has linux/amd64, linux/arm64)"),
            "{e}"
        );
        assert!(e.contains("m.tar"), "{e}");
    }

    #[test]
    fn several_images_and_a_ref() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = layer("a", "1");
        let l2 = layer("b", "2");
        let c1 = config("amd64", None, &[&l1]);
        let c2 = config("amd64", None, &[&l2]);
        let manifest = json!([
            {"Config": format!("{}.json", sha(&c1)), "RepoTags": ["one:1"], "Layers": ["l1/layer.tar"]},
            {"Config": format!("{}.json", sha(&c2)), "RepoTags": ["docker.io/library/two:2"], "Layers": ["l2/layer.tar"]},
        ]);
        let files = vec![
            (format!("{}.json", sha(&c1)), c1.clone()),
            (format!("{}.json", sha(&c2)), c2.clone()),
            ("l1/layer.tar".into(), l1.clone()),
            ("l2/layer.tar".into(), l2.clone()),
            ("manifest.json".into(), manifest.to_string().into_bytes()),
        ];
        let p = write(dir.path(), "two.tar", &tar_of(&files, &[]));
        // Without a REF: both, with their names.
        let a = check(ArchiveKind::DockerArchive, &p, None, &amd64(), false).unwrap();
        assert_eq!(a.images().len(), 2);
        let (m, _) = convert(&a);
        assert_eq!(m[1]["RepoTags"], json!(["docker.io/library/two:2"]));
        // A REF naming one (in another spelling) selects it.
        let a = check(
            ArchiveKind::DockerArchive,
            &p,
            Some(&r("two:2")),
            &amd64(),
            false,
        )
        .unwrap();
        assert_converted(&a, &c2, &[&l2], &["two:2"]);
        let e = err(check(
            ArchiveKind::DockerArchive,
            &p,
            Some(&r("three")),
            &amd64(),
            false,
        ));
        assert!(
            e.contains("none is named three") && e.contains("one:1"),
            "{e}"
        );
        let e = err(check(
            ArchiveKind::DockerArchive,
            &p,
            Some(&r(&format!("one@sha256:{}", sha(b"")))),
            &amd64(),
            false,
        ));
        assert!(e.contains("digest"), "{e}");
    }

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

    #[test]
    fn missing_and_wrong_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _, _) = multi_platform();
        // Drop the arm64 layer blob.
        let arm_layer = format!("blobs/sha256/{}", sha(&gzip(&layer("f", "arm"))));
        let fewer: Vec<_> = files
            .iter()
            .filter(|(n, _)| *n != arm_layer)
            .cloned()
            .collect();
        let p = write(dir.path(), "missing.tar", &tar_of(&fewer, &[]));
        let e = err(check(ArchiveKind::OciArchive, &p, None, &arm64(), false));
        assert!(e.contains(&arm_layer) && e.contains("missing"), "{e}");
        // The amd64 image does not need it.
        check(ArchiveKind::OciArchive, &p, None, &amd64(), false).unwrap();
        // Another content under its name, in a tar and in a directory.
        let mut wrong = files.clone();
        for (n, d) in &mut wrong {
            if *n == arm_layer {
                *d = gzip(&layer("f", "ARM"));
            }
        }
        let p = write(dir.path(), "wrong.tar", &tar_of(&wrong, &[]));
        let e = err(check(ArchiveKind::OciArchive, &p, None, &arm64(), false));
        assert!(e.contains(&arm_layer) && e.contains("corrupt"), "{e}");
        let od = dir.path().join("wrong");
        to_dir(&od, &wrong);
        let e = err(check(ArchiveKind::OciDir, &od, None, &arm64(), false));
        assert!(e.contains(&arm_layer) && e.contains("corrupt"), "{e}");
        // A docker-archive whose uncompressed layer is not its diff ID.
        let l1 = layer("a", "1");
        let cfg = config("amd64", None, &[&layer("a", "2")]);
        let manifest =
            json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["x/layer.tar"]}]);
        let files = vec![
            ("c.json".to_string(), cfg),
            ("x/layer.tar".into(), l1),
            ("manifest.json".into(), manifest.to_string().into_bytes()),
        ];
        let p = write(dir.path(), "diffid.tar", &tar_of(&files, &[]));
        let e = err(check(ArchiveKind::DockerArchive, &p, None, &amd64(), false));
        assert!(e.contains("x/layer.tar") && e.contains("diff"), "{e}");
        // More layers in the manifest than in the config.
        let l1 = layer("a", "1");
        let cfg = config("amd64", None, &[&l1]);
        let manifest = json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["x/layer.tar", "x/layer.tar"]}]);
        let files = vec![
            ("c.json".to_string(), cfg),
            ("x/layer.tar".into(), l1),
            ("manifest.json".into(), manifest.to_string().into_bytes()),
        ];
        let p = write(dir.path(), "count.tar", &tar_of(&files, &[]));
        let e = err(check(ArchiveKind::DockerArchive, &p, None, &amd64(), false));
        assert!(
            e.contains("lists 1 layers") && e.contains("its manifest 2"),
            "{e}"
        );
        // manifest.json that is not JSON.
        let files = vec![("manifest.json".to_string(), b"[{".to_vec())];
        let p = write(dir.path(), "badjson.tar", &tar_of(&files, &[]));
        let e = err(check(ArchiveKind::DockerArchive, &p, None, &amd64(), false));
        assert!(e.contains("manifest.json is not well-formed"), "{e}");
    }

    #[test]
    fn single_image_of_another_platform() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Oci::default();
        let (mut d, _) = o.image("amd64", &[layer("a", "1")]);
        d["annotations"] = json!({"io.containerd.image.name": "x:1"});
        let od = dir.path().join("l");
        to_dir(&od, &o.finish(vec![d]));
        let e = err(check(ArchiveKind::OciDir, &od, None, &arm64(), false));
        assert!(
            e.contains("x:1 is a linux/amd64 image") && e.contains("linux/arm64"),
            "{e}"
        );
        let a = check(ArchiveKind::OciDir, &od, None, &arm64(), true).unwrap();
        assert_eq!(a.images()[0].platform, amd64());
    }

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
