//! What `inspect` says of Docker's store in ROOT: its images (names, IDs,
//! platforms, sizes from the layer database) and which of Flatcar's Docker
//! majors will use it at boot. The JSON shape is part of `inspect`'s
//! documented interface (docs/inspect-schema.md): rename nothing.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::layout::{CONTENT, IMAGE, LAYERDB, LAYERS, REPOSITORIES};
use super::ROOT;
use crate::digest::chain_ids;
use crate::fsread::{is_dir, join, show, FsRead, Kind};

/// The Docker store in `fs`; None when `/var/lib/docker/image/overlay2`
/// does not exist.
pub fn store(fs: &dyn FsRead) -> Result<Option<DockerStore>> {
    let image = format!("{ROOT}/{IMAGE}");
    if !is_dir(fs, image.as_bytes())? {
        return Ok(None);
    }
    let store = docker_store(fs, ROOT.as_bytes())
        .with_context(|| format!("reading Docker's image store in {ROOT}"))?;
    Ok(Some(store))
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

fn docker_store(fs: &dyn FsRead, root: &[u8]) -> Result<DockerStore> {
    let mut names: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let repos_path = join(root, REPOSITORIES.as_bytes());
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

    let content = join(root, CONTENT.as_bytes());
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
                &join(root, LAYERDB.as_bytes()),
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
    let overlay2 = format!("{ROOT}/{LAYERS}").into_bytes();
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
