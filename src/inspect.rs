//! `inspect`: what images a ROOT filesystem carries, read through `FsRead`
//! (no mount, no root, nothing written). The JSON shape of `Inventory` is a
//! documented, stable interface (docs/inspect-schema.md): rename nothing.

mod bolt;

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::digest::chain_ids;
use crate::fsread::{FsRead, Kind};

const DOCKER: &[u8] = b"/var/lib/docker";
const DOCKER_IMAGE: &[u8] = b"/var/lib/docker/image/overlay2";
const CONTAINERD: &[u8] = b"/var/lib/containerd";
const CONTAINERD_META: &[u8] = b"/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db";

/// Everything `inspect` reports about a ROOT filesystem.
#[derive(Debug, Serialize)]
pub struct Inventory {
    /// Docker's overlay2 image store in `/var/lib/docker`; null when
    /// `/var/lib/docker/image/overlay2` does not exist.
    pub docker: Option<DockerStore>,
    /// containerd's images (`/var/lib/containerd`); null when that
    /// directory does not exist.
    pub containerd: Option<ContainerdStore>,
    /// Size and free space of the ROOT filesystem.
    pub root: RootSpace,
}

/// ROOT's space, in bytes. `inventory` leaves it zero: the caller, which
/// knows the filesystem, sets it.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RootSpace {
    /// Size of the filesystem (blocks times block size).
    pub size_bytes: u64,
    /// Free space (free blocks times block size, reserved blocks included).
    pub free_bytes: u64,
}

/// Docker's image store.
#[derive(Debug, Serialize)]
pub struct DockerStore {
    /// The graph driver whose store this is: always "overlay2".
    pub driver: String,
    /// Which of Flatcar's Docker majors will use this store at boot, and why.
    pub used_by: Vec<DockerUser>,
    /// Every image of the store (tagged or not), tagged ones first by tag.
    pub images: Vec<DockerImage>,
}

/// One Docker major version and whether it takes this store.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DockerUser {
    /// The Docker major version: 26, 28 or 29.
    pub docker: u32,
    /// Flatcar channels shipping that major (as of 2026): "lts", "stable",
    /// "beta", "alpha".
    pub channels: Vec<String>,
    /// True when that Docker will list and run these images.
    pub uses_store: bool,
    /// Why, in one sentence.
    pub why: String,
}

/// One image of Docker's store.
#[derive(Debug, Serialize)]
pub struct DockerImage {
    /// Image ID: "sha256:" and the hex digest of its config.
    pub id: String,
    /// References with a tag ("name:tag"), sorted; empty for an untagged image.
    pub tags: Vec<String>,
    /// References by digest ("name@sha256:..."), sorted.
    pub digests: Vec<String>,
    /// "os/architecture" or "os/architecture/variant", from the config.
    pub platform: String,
    /// The config's creation time as written there (RFC 3339), if any.
    pub created: Option<String>,
    /// Number of layers (the config's diff IDs).
    pub layers: usize,
    /// Size on disk: the sum of the layers' `size` files in the layer
    /// database (what `docker images` shows). A layer missing from the
    /// layer database counts 0; `verify` reports it.
    pub size_bytes: u64,
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

/// Reads what images `fs` (a ROOT filesystem) carries.
pub fn inventory(fs: &dyn FsRead) -> Result<Inventory> {
    let docker = if is_dir(fs, DOCKER_IMAGE)? {
        Some(docker_store(fs).context("reading Docker's image store in /var/lib/docker")?)
    } else {
        None
    };
    let containerd = if is_dir(fs, CONTAINERD)? {
        Some(containerd_store(fs).context("reading containerd's metadata in /var/lib/containerd")?)
    } else {
        None
    };
    Ok(Inventory {
        docker,
        containerd,
        root: RootSpace::default(),
    })
}

fn is_dir(fs: &dyn FsRead, path: &[u8]) -> Result<bool> {
    Ok(matches!(fs.stat(path)?, Some(s) if s.kind == Kind::Dir))
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

#[derive(Deserialize)]
struct Repositories {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct ImageConfig {
    architecture: Option<String>,
    os: Option<String>,
    variant: Option<String>,
    created: Option<String>,
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

fn docker_store(fs: &dyn FsRead) -> Result<DockerStore> {
    let mut names: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let repos_path = join(DOCKER_IMAGE, b"repositories.json");
    if fs.stat(&repos_path)?.is_some() {
        let raw = fs
            .read_all(&repos_path)
            .with_context(|| format!("reading {}", show(&repos_path)))?;
        let repos: Repositories = serde_json::from_slice(&raw)
            .with_context(|| format!("parsing {}", show(&repos_path)))?;
        for refs in repos.repositories.into_values() {
            for (reference, id) in refs {
                let entry = names.entry(id).or_default();
                if reference.contains('@') {
                    entry.1.push(reference);
                } else {
                    entry.0.push(reference);
                }
            }
        }
    }

    let content = join(DOCKER_IMAGE, b"imagedb/content/sha256");
    let mut hexes = if is_dir(fs, &content)? {
        fs.read_dir(&content)
            .with_context(|| format!("listing {}", show(&content)))?
    } else {
        vec![]
    };
    hexes.sort();
    let mut images = vec![];
    for hex in hexes {
        let path = join(&content, &hex);
        let id = format!("sha256:{}", String::from_utf8_lossy(&hex));
        let raw = fs
            .read_all(&path)
            .with_context(|| format!("reading the config of image {id}"))?;
        let config: ImageConfig = serde_json::from_slice(&raw)
            .with_context(|| format!("parsing the config of image {id} ({})", show(&path)))?;
        let mut platform = format!(
            "{}/{}",
            config.os.as_deref().unwrap_or("unknown"),
            config.architecture.as_deref().unwrap_or("unknown")
        );
        if let Some(v) = config.variant.as_deref().filter(|v| !v.is_empty()) {
            platform = format!("{platform}/{v}");
        }
        let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        let mut size_bytes = 0u64;
        for chain in chain_ids(&diff_ids) {
            let hex = chain.strip_prefix("sha256:").unwrap_or(&chain);
            let size_path = join(
                &join(DOCKER_IMAGE, b"layerdb/sha256"),
                format!("{hex}/size").as_bytes(),
            );
            if fs.stat(&size_path)?.is_none() {
                continue;
            }
            let raw = fs
                .read_all(&size_path)
                .with_context(|| format!("reading {}", show(&size_path)))?;
            let n: u64 = String::from_utf8_lossy(&raw)
                .trim()
                .parse()
                .with_context(|| format!("{} holds no byte count", show(&size_path)))?;
            size_bytes = size_bytes.saturating_add(n);
        }
        let (mut tags, mut digests) = names.remove(&id).unwrap_or_default();
        tags.sort();
        digests.sort();
        images.push(DockerImage {
            id,
            tags,
            digests,
            platform,
            created: config.created,
            layers: diff_ids.len(),
            size_bytes,
        });
    }
    // Tagged images by their first tag, then untagged ones by ID.
    images.sort_by(|a, b| {
        (a.tags.is_empty(), a.tags.first(), &a.id).cmp(&(b.tags.is_empty(), b.tags.first(), &b.id))
    });
    Ok(DockerStore {
        driver: "overlay2".into(),
        used_by: docker_users(fs)?,
        images,
    })
}

#[derive(Deserialize, Default)]
struct DaemonJson {
    #[serde(rename = "storage-driver")]
    storage_driver: Option<String>,
    #[serde(default)]
    features: BTreeMap<String, serde_json::Value>,
}

/// Which Docker majors of Flatcar take the overlay2 store at boot.
///
/// Flatcar's docker.service passes neither --storage-driver nor
/// --data-root and ships no daemon.json, so the defaults decide:
/// - Docker 26 and 28 use a graph driver unless the `containerd-snapshotter`
///   feature is on, and pick overlay2 (first in their priority list, and
///   the prior driver when its directory has content).
/// - Docker 29 (moby daemon/image_store_choice.go, determineImageStoreChoice)
///   defaults to the containerd image store, but returns "graphdriver-prior"
///   when `graphdriver.HasPriorDriver(/var/lib/docker)` holds, i.e. when the
///   directory of a registered graph driver other than vfs
///   (/var/lib/docker/overlay2) exists and is not empty, unless
///   `features.containerd-snapshotter` or a storage driver is set
///   explicitly (daemon.json, DOCKER_DRIVER).
///
/// A daemon.json found on ROOT (`/etc/docker/daemon.json`) is honoured.
fn docker_users(fs: &dyn FsRead) -> Result<Vec<DockerUser>> {
    let overlay2 = join(DOCKER, b"overlay2");
    let overlay2_has_content = is_dir(fs, &overlay2)?
        && !fs
            .read_dir(&overlay2)
            .with_context(|| format!("listing {}", show(&overlay2)))?
            .is_empty();
    let daemon_json_path: &[u8] = b"/etc/docker/daemon.json";
    let daemon: DaemonJson = match fs.stat(daemon_json_path)? {
        Some(s) if s.kind == Kind::File => {
            let raw = fs
                .read_all(daemon_json_path)
                .context("reading /etc/docker/daemon.json")?;
            serde_json::from_slice(&raw).context("parsing /etc/docker/daemon.json")?
        }
        _ => DaemonJson::default(),
    };
    let snapshotter = daemon
        .features
        .get("containerd-snapshotter")
        .and_then(|v| v.as_bool());
    let other_driver = daemon
        .storage_driver
        .as_deref()
        .filter(|d| *d != "overlay2");

    let channels = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let decide = |major: u32| -> (bool, String) {
        if let Some(d) = other_driver {
            return (
                false,
                format!("/etc/docker/daemon.json sets storage-driver {d:?}"),
            );
        }
        if snapshotter == Some(true) {
            return (
                false,
                "/etc/docker/daemon.json turns on the containerd-snapshotter feature: it uses containerd's image store".into(),
            );
        }
        if snapshotter == Some(false) || daemon.storage_driver.is_some() {
            return (
                true,
                "/etc/docker/daemon.json chooses the overlay2 graph driver".into(),
            );
        }
        if major < 29 {
            return (true, "overlay2 is its default graph driver".into());
        }
        if overlay2_has_content {
            (
                true,
                "it defaults to containerd's image store only on fresh installs: /var/lib/docker/overlay2 has content, so it keeps the overlay2 graph driver".into(),
            )
        } else {
            (
                false,
                "/var/lib/docker/overlay2 is missing or empty, so it takes containerd's image store (a fresh install)".into(),
            )
        }
    };
    Ok([
        (26, channels(&["lts"])),
        (28, channels(&["stable", "beta"])),
        (29, channels(&["alpha"])),
    ]
    .into_iter()
    .map(|(docker, channels)| {
        let (uses_store, why) = decide(docker);
        DockerUser {
            docker,
            channels,
            uses_store,
            why,
        }
    })
    .collect())
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// containerd keeps images in its metadata database (core/metadata/
/// buckets.go): v1 / <namespace> / images / <name> / target / {digest,
/// mediatype, size}.
fn containerd_store(fs: &dyn FsRead) -> Result<ContainerdStore> {
    if fs.stat(CONTAINERD_META)?.is_none() {
        return Ok(ContainerdStore { namespaces: vec![] });
    }
    let raw = fs
        .read_all(CONTAINERD_META)
        .with_context(|| format!("reading {}", show(CONTAINERD_META)))?;
    let namespaces =
        containerd_images(&raw).with_context(|| format!("reading {}", show(CONTAINERD_META)))?;
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

/// Sizes as `docker images` shows them (SI units).
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else if v < 10.0 {
        format!("{v:.2}{}", UNITS[u])
    } else if v < 100.0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
    }
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

fn short_created(c: &Option<String>) -> String {
    match c {
        // "2024-05-01T12:34:56.789Z" -> "2024-05-01 12:34:56"
        Some(c) if c.len() >= 19 && c.is_char_boundary(19) => c[..19].replacen('T', " ", 1),
        Some(c) => c.clone(),
        None => "-".into(),
    }
}

fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: Vec<&str>| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, header.to_vec())?;
    for r in rows {
        line(out, r.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// The inventory for people: Docker's images, containerd's, ROOT's space.
pub fn print_table(inv: &Inventory, out: &mut dyn Write) -> std::io::Result<()> {
    match &inv.docker {
        None => writeln!(
            out,
            "Docker: no image store (/var/lib/docker/image/overlay2 is absent)"
        )?,
        Some(d) => {
            writeln!(
                out,
                "Docker image store ({}), {} image(s):",
                d.driver,
                d.images.len()
            )?;
            let rows: Vec<Vec<String>> = d
                .images
                .iter()
                .map(|i| {
                    vec![
                        if i.tags.is_empty() {
                            "<none>".to_string()
                        } else {
                            i.tags.join(", ")
                        },
                        short_id(&i.id).to_string(),
                        i.platform.clone(),
                        short_created(&i.created),
                        i.layers.to_string(),
                        human(i.size_bytes),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                table(
                    out,
                    &["TAGS", "IMAGE ID", "PLATFORM", "CREATED", "LAYERS", "SIZE"],
                    &rows,
                )?;
            }
            let digests: Vec<(&str, &String)> = d
                .images
                .iter()
                .flat_map(|i| i.digests.iter().map(|g| (short_id(&i.id), g)))
                .collect();
            if !digests.is_empty() {
                writeln!(out, "Digests (IMAGE ID  REFERENCE):")?;
                for (id, g) in digests {
                    writeln!(out, "  {id}  {g}")?;
                }
            }
            writeln!(out, "Used by:")?;
            for u in &d.used_by {
                writeln!(
                    out,
                    "  Docker {} ({}): {}: {}",
                    u.docker,
                    u.channels.join(", "),
                    if u.uses_store { "yes" } else { "NO" },
                    u.why
                )?;
            }
        }
    }
    writeln!(out)?;
    match &inv.containerd {
        None => writeln!(out, "containerd: none (/var/lib/containerd is absent)")?,
        Some(c) if c.namespaces.is_empty() => writeln!(out, "containerd: no images")?,
        Some(c) => {
            writeln!(out, "containerd images:")?;
            let rows: Vec<Vec<String>> = c
                .namespaces
                .iter()
                .flat_map(|ns| {
                    ns.images.iter().map(|i| {
                        vec![
                            ns.name.clone(),
                            i.name.clone(),
                            i.digest.clone(),
                            i.media_type.clone(),
                        ]
                    })
                })
                .collect();
            table(out, &["NAMESPACE", "NAME", "DIGEST", "MEDIA TYPE"], &rows)?;
        }
    }
    writeln!(out)?;
    let r = &inv.root;
    writeln!(
        out,
        "ROOT: {} in all, {} free",
        human(r.size_bytes),
        human(r.free_bytes)
    )
}

#[cfg(test)]
mod tests;

/// `flatcar-preload inspect DISK [--json]`: the inventory of ROOT, read
/// only, as a table on stdout (or the JSON of [`Inventory`]).
pub fn run(disk: &std::path::Path, json: bool) -> Result<()> {
    let opened = crate::disk::open_for_reading(disk)?;
    let root = opened.prepared.fs();
    let fs = crate::ext4::read::Reader::open(&root)?;
    let mut inv = inventory(&fs)?;
    let summary = crate::ext4::inspect(&root, crate::disk::ROOT_NAME)?;
    inv.root = RootSpace {
        size_bytes: summary.size_bytes(),
        free_bytes: summary.free_bytes(),
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &inv)
            .map_err(std::io::Error::from)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
    } else {
        print_table(&inv, &mut out)
    }
    .context("writing to standard output")
}
