//! The checks of `populate` made before anything is written: the local
//! inputs (list, disk, credentials, archives, the node's files) before any
//! engine is contacted, a store already in ROOT, then the engine.

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::disk::{self, ext4};
use crate::docker::RegistryAccess;
use crate::platform::Platform;
use crate::source::archive::{self, CheckedArchive};
use crate::source::{ImageRef, Listed, Source};
use crate::store::{self, Backend, CONTAINERD_ROOT};

use super::config::PopulateConfig;
use super::report::*;

/// What the local inputs gave: checked before any engine is contacted.
pub(super) struct Local {
    pub(super) access: RegistryAccess,
    /// Per source, what the local checks learnt.
    pub(super) prepared: Vec<Checked>,
    pub(super) platform: TargetPlatform,
    /// ROOT of the input disk image when a `--merge` adds to a store there
    /// that is written whole (containerd's): its daemon starts on a copy.
    pub(super) seed: Option<ext4::Root>,
    /// What is baked beside the stores, its host inputs read and checked.
    pub(super) node: crate::node::Plan,
    /// ... and checked against a raw input (what its copy holds too).
    pub(super) node_facts: Option<crate::node::Facts>,
    /// The disk image, opened and understood once.
    pub(super) disk: disk::Disk,
}

/// Checks the local inputs: the list, the disk (a compressed or
/// qcow2/vmdk one only once converted), the registry credentials and
/// certificates; finds the target platform. Leaves nothing behind.
pub(super) fn check_local_inputs(cfg: &PopulateConfig) -> Result<Local> {
    if cfg.all_lines().next().is_none() {
        bail!("no images to preload: give references or an image list with entries");
    }
    let mut seed = None;
    let in_place = cfg.output.path().is_none();
    let unfinished = disk::Unfinished::writing(cfg.space.force);
    let node = crate::node::check_local(&cfg.node)?;
    let opened = disk::Disk::open(&cfg.disk, in_place, unfinished)?;
    if let Some(layout) = &opened.layout {
        let root = ext4::Root::new(&cfg.disk, layout.root.offset);
        if check_existing(cfg, &root, true)? {
            seed = Some(root);
        }
    }
    let refs = |lines: &mut dyn Iterator<Item = &Listed>| -> Vec<ImageRef> {
        lines
            .filter_map(|l| l.source.registry_ref().cloned())
            .collect()
    };
    for s in &cfg.stores {
        if let Some(daemon) = s.backend.daemon() {
            daemon.check_refs(&refs(&mut s.lines.iter()), &cfg.registry)?;
        }
    }
    let access = cfg.registry.prepare(&refs(&mut cfg.all_lines()))?;
    let platform = match &cfg.platform {
        Some(p) => TargetPlatform {
            target: p.clone(),
            from: PlatformSource::Option,
        },
        None => match opened.platform()? {
            Ok(p) => TargetPlatform {
                target: p,
                from: PlatformSource::Disk,
            },
            Err(reason) => {
                let target = Platform::of_host();
                eprintln!(
                    "warning: cannot tell the platform of {} ({reason}): pulling for this machine's, {target}; pass --platform to choose",
                    cfg.disk.display()
                );
                TargetPlatform {
                    target,
                    from: PlatformSource::Host,
                }
            }
        },
    };
    let target = &platform.target;
    // A compressed or qcow2/vmdk input is checked once converted.
    let node_facts = match &opened.layout {
        Some(layout) => Some(crate::node::check_disk(&node, &cfg.disk, layout, target)?),
        None => None,
    };
    let mut prepared = vec![];
    for l in cfg.all_lines() {
        prepared.push(match &l.source {
            Source::Registry(_) => Checked::Registry,
            // Checked against the engine (see check_engine).
            Source::Daemon(r) => Checked::Daemon(r.to_string(), String::new()),
            Source::Archive { format, path, name } => {
                let checked = archive::check(
                    *format,
                    path,
                    name.as_ref(),
                    target,
                    cfg.allow_platform_mismatch,
                )
                .with_context(|| format!("{} ({})", l.source, l.origin))?;
                Checked::Archive(std::sync::Arc::new(checked))
            }
        });
    }
    Ok(Local {
        access,
        platform,
        prepared,
        seed,
        node,
        node_facts,
        disk: opened,
    })
}

/// Refuses a ROOT that already has a store the run writes, unless
/// merging, and a merge that cannot be done. Returns whether a build
/// container's daemon must start on the store in ROOT (a merge over a
/// store that is written whole, containerd's): possible only when
/// `readable`, ROOT being read from the input before the pull.
pub(super) fn check_existing(
    cfg: &PopulateConfig,
    root: &ext4::Root,
    readable: bool,
) -> Result<bool> {
    let disk = cfg.disk.display();
    let fs = root.open_read()?;
    // The stores the run writes, and the root that --containerd copies.
    let mut written: Vec<&'static dyn Backend> = cfg.stores.iter().map(|s| s.backend).collect();
    if cfg.containerd.is_some() {
        written.extend(
            store::BACKENDS
                .into_iter()
                .filter(|b| b.root() == CONTAINERD_ROOT),
        );
    }
    let mut present: Vec<&'static dyn Backend> = vec![];
    for b in store::BACKENDS {
        if written.contains(&b) && fs.exists(b.root())? {
            present.push(b);
        }
    }
    if !present.is_empty() && !cfg.merge {
        let roots: Vec<&str> = present.iter().map(|b| b.root()).collect();
        bail!(
            "ROOT of {disk} already has {}; pass --merge to add the images to what is there",
            roots.join(" and ")
        );
    }
    let mut seeded = false;
    for backend in present {
        let store_root = backend.root();
        let whole = !backend.exports_part();
        if let (Some(src), true) = (&cfg.containerd, whole) {
            bail!(
                "--containerd {} is a whole containerd root: it cannot be merged with the store \
                 {store_root} in ROOT of {disk}; bake its images with --containerd-image \
                 or --containerd-list instead",
                src.display()
            );
        }
        if let (Some(cache), true) = (&cfg.cache, whole) {
            bail!(
                "--merge over the store {store_root} in ROOT of {disk} starts the build container's \
                 daemon on a copy of it, which the cache {cache:?} cannot hold beside its own \
                 images: leave out --cache"
            );
        }
        if !readable && whole {
            bail!(
                "--merge over the store {store_root} in ROOT of {disk} reads that store before the pull, \
                 so the input must be a raw disk image: decompress or convert it first \
                 (qemu-img convert -O raw IN OUT.bin)"
            );
        }
        if let Some(daemon) = backend.daemon() {
            daemon
                .check_merge(&fs, cfg.store_options.containerd_version)
                .with_context(|| format!("--merge over ROOT of {disk}"))?;
        }
        seeded |= whole;
    }
    Ok(seeded)
}

/// What was learnt of a source before anything was written, for loading it.
#[derive(Clone)]
pub enum Checked {
    Registry,
    Archive(Arc<CheckedArchive>),
    /// The image's name and ID on the engine.
    Daemon(String, String),
}
