//! What `populate` is asked to do, as the command line gave it.

use std::collections::HashMap;
use std::path::PathBuf;

use super::lock::{LockMode, Locked};
use crate::docker::{DindNetwork, RegistryOptions};
use crate::platform::Platform;
use crate::protocol::{ContainerdVersion, StoreKind};
use crate::source::Listed;
use crate::unpack::{OutputMode, Space};

#[derive(Debug, Clone)]
pub struct PopulateConfig {
    pub disk: PathBuf,
    /// What is baked beside the stores (OEM, ESP, ROOT files).
    pub node: crate::node::Config,
    pub images: Vec<Listed>,
    pub space: Space,
    pub output: OutputMode,
    pub dind_image: String,
    pub dind_network: DindNetwork,
    pub privileged: bool,
    pub merge: bool,
    pub containerd: Option<PathBuf>,
    /// Images for containerd's store (the sandbox image included); none:
    /// no containerd store is made.
    pub containerd_images: Vec<Listed>,
    pub containerd_options: ContainerdOptions,
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
    /// The images for the store of `kind`.
    pub fn lines(&self, kind: StoreKind) -> &[Listed] {
        match kind {
            StoreKind::Docker => &self.images,
            StoreKind::Containerd => &self.containerd_images,
        }
    }

    /// Every image of the run, Docker's first.
    pub fn all_lines(&self) -> impl Iterator<Item = &Listed> {
        StoreKind::ALL.into_iter().flat_map(|k| self.lines(k))
    }

    /// The image of the build container of the store of `kind`.
    pub fn build_image(&self, kind: StoreKind) -> &str {
        match (kind, &self.containerd_options.build_image) {
            (StoreKind::Containerd, Some(image)) => image,
            _ => &self.dind_image,
        }
    }
}

/// How containerd's store is made.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// The namespace the images go to (k8s.io, moby).
    pub namespace: String,
    /// Label every record io.cri-containerd.pinned=pinned.
    pub pin: bool,
    /// The target's containerd.
    pub version: ContainerdVersion,
    /// The image whose containerd makes the store (None: the dind image).
    pub build_image: Option<String>,
}

/// Where the inner daemon's store lives while pulling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChoice {
    /// Memory when the cap is at least `plan::MIN_MEMORY_STORE`, else disk.
    Auto,
    Memory,
    Disk,
}
