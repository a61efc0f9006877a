//! What `populate` is asked to do, as the command line gave it.

use std::collections::HashMap;
use std::path::PathBuf;

use super::lock::{LockMode, Locked};
use crate::docker::{DindNetwork, RegistryOptions};
use crate::platform::Platform;
use crate::protocol::StoreOptions;
use crate::source::Listed;
use crate::store::Backend;
use crate::unpack::{OutputMode, Space};

#[derive(Debug, Clone)]
pub struct PopulateConfig {
    pub disk: PathBuf,
    /// What is baked beside the stores (OEM, ESP, ROOT files).
    pub node: crate::node::Config,
    /// The stores written and their images, in the order of the registry
    /// of backends; only stores with images.
    pub stores: Vec<StoreImages>,
    pub space: Space,
    pub output: OutputMode,
    pub dind_network: DindNetwork,
    pub privileged: bool,
    pub merge: bool,
    pub containerd: Option<PathBuf>,
    /// What the run asks of every store (containerd's namespace, pins and
    /// version).
    pub store_options: StoreOptions,
    pub keep_dind: bool,
    /// --label: more labels on the run's containers and volumes.
    pub labels: Vec<(String, String)>,
    pub store: StoreChoice,
    /// The most memory the in-memory store may take (None: see
    /// [`memory_budget`]).
    pub store_memory_cap: Option<u64>,
    pub jobs: usize,
    /// --pull-timeout: an image whose pull makes no progress for this
    /// long fails (zero: never).
    pub pull_timeout: std::time::Duration,
    pub registry: RegistryOptions,
    /// --platform (None: the disk's, else this machine's).
    pub platform: Option<Platform>,
    pub allow_platform_mismatch: bool,
    /// --cache NAME: the store lives in that volume, kept between runs.
    pub cache: Option<String>,
    /// --cache-prune: images of the cache that are not in the list are
    /// removed from it.
    pub cache_prune: bool,
    /// How the images come in.
    pub engine: EngineChoice,
    /// --blob-cache (None: [`super::direct::default_blob_cache`]).
    pub blob_cache: Option<PathBuf>,
    /// End with `verify` of what was written.
    pub verify: bool,
    /// --sha256: the summary gives the sha256 of the output.
    pub sha256: bool,
    /// --selinux, --selinux-file-contexts.
    pub selinux: crate::selinux::Config,
    /// --lock, --locked.
    pub lock: Option<LockMode>,
    /// With --locked: the lock's entry of each image, by its source as
    /// pulled (pinned to the locked digest).
    pub pinned: HashMap<String, Locked>,
}

impl PopulateConfig {
    /// Every image of the run, store by store.
    pub fn all_lines(&self) -> impl Iterator<Item = &Listed> {
        self.stores.iter().flat_map(|s| &s.lines)
    }
}

/// How the images come in (--engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineChoice {
    /// A build container's daemon (Docker's or containerd's) pulls; the
    /// tool exports its store into ROOT.
    Dind,
    /// The tool's own registry client; the tool writes Docker's store.
    Direct,
}

/// One store of the run and the images for it.
#[derive(Debug, Clone)]
pub struct StoreImages {
    pub backend: &'static dyn Backend,
    /// The images (for containerd's, the sandbox image included).
    pub lines: Vec<Listed>,
    /// The image of the build container whose daemon makes the store.
    pub build_image: String,
}

/// Where the inner daemon's store lives while pulling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChoice {
    /// Memory when the cap is at least `plan::MIN_MEMORY_STORE`, else disk.
    Auto,
    Memory,
    Disk,
}
