//! Image stores as backends: what a store brings to a run, behind one
//! interface ([`Backend`]) that the phases of `populate`, `inspect` and
//! `verify` use without knowing which store it is. Docker's overlay2 store
//! ([`docker`]) is the first, containerd's ([`containerd`]) the second,
//! implementing the same functions:
//!
//! - where its root is, in the build container and in ROOT
//!   ([`Backend::root`]);
//! - the daemon of the build container that writes it ([`Backend::daemon`],
//!   a [`Daemon`]: its command line and the helpers' requests it serves,
//!   the way images get in, apart from the layout);
//! - what of that root is exported, and what is left out as the build
//!   machine's state ([`Backend::export`], [`Backend::measure`], run inside
//!   the build container by the export and measure helpers);
//! - what a `--merge` over an existing store must keep ([`Backend::merge`]);
//! - what is in it ([`Backend::inspect`]) and whether all of it holds
//!   ([`Backend::verify`]), read from ROOT through [`FsRead`].
//!
//! The selection of a store's images for
//! `--cache` is a [`Selection`] that [`Backend::export`] honours.

use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::disk::ext4::{self, Need};
use crate::docker::{RegistryAccess, RegistryOptions};
use crate::fsread::FsRead;
use crate::protocol::{ContainerdVersion, StoreOp, StoreOptions, StoreRequest};
use crate::source::ImageRef;

pub mod verify_common;

pub mod containerd;
pub mod docker;
pub mod export;
#[cfg(feature = "test-hooks")]
pub mod fuzzing;
mod inventory;
#[cfg(test)]
mod tests;

pub use containerd::{default_sandbox as sandbox_image, Records as ContainerdRecords};

pub use export::ExportStats;
pub use inventory::Stores;

/// For `inspect`'s tests: a store's inventory, and a real meta.db.
#[cfg(test)]
pub(crate) use containerd::bolt::fixture_meta_db;
#[cfg(test)]
pub(crate) use docker::inspect::DockerStore;

/// Where Flatcar's containerd keeps its root (`populate --containerd`
/// copies a tree there).
pub const CONTAINERD_ROOT: &str = containerd::ROOT;

/// Which image store: the command line's choice of a store for an image
/// list (`--image` or `--containerd-image`); everything else holds the
/// store's [`Backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// Docker's overlay2 store (/var/lib/docker).
    Docker,
    /// containerd's store (/var/lib/containerd).
    Containerd,
}

/// The registry of backends: every store the tool knows, in the order a
/// run writes them and `inspect` and `verify` list them. A new store is a
/// module beside `docker` and `containerd` and one line here.
pub const BACKENDS: [&dyn Backend; 2] = [&docker::Docker, &containerd::Containerd];

/// The backend of `kind`.
pub fn backend(kind: StoreKind) -> &'static dyn Backend {
    match kind {
        StoreKind::Docker => &docker::Docker,
        StoreKind::Containerd => &containerd::Containerd,
    }
}

/// The backend named `name` ([`Backend::name`]).
pub fn by_name(name: &str) -> Result<&'static dyn Backend> {
    BACKENDS
        .into_iter()
        .find(|b| b.name() == name)
        .with_context(|| format!("no image store named {name:?} in this build of the tool"))
}

impl std::fmt::Debug for dyn Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backend({})", self.name())
    }
}

impl PartialEq for dyn Backend {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

/// Serves a helper's request about a store, in the build container: its
/// files (measure, export) here, its daemon's work by its backend.
pub fn serve(request: StoreRequest) -> Result<()> {
    let backend = by_name(&request.store)?;
    match request.op {
        StoreOp::Measure {
            root,
            block_size,
            selection,
        } => {
            let only = selection.then(read_selection_stdin).transpose()?;
            let need = backend.measure(&root, only.as_ref(), block_size)?;
            serde_json::to_writer(io::stdout().lock(), &need)
                .context("writing the measurements to standard output")
        }
        StoreOp::Export {
            root,
            socket,
            selection,
            stamp,
        } => {
            let only = selection.then(read_selection_stdin).transpose()?;
            export_to(backend, &root, only.as_ref(), stamp, socket.as_deref())
        }
        op => match backend.daemon() {
            Some(daemon) => daemon.serve(op, &request.options),
            None => bail!("no daemon writes the store {}", backend.name()),
        },
    }
}

/// What the daemon of the build container is asked for, whichever it is.
pub struct DaemonOptions<'a> {
    /// Layers downloaded at once.
    pub downloads: usize,
    /// The registries' configuration (mirrors, plain HTTP, certificates),
    /// which each daemon takes in its own form.
    pub registry: &'a RegistryAccess,
}

/// How the build container runs a store's daemon.
pub struct DaemonSetup {
    /// Its command line (run by the container's init).
    pub argv: Vec<String>,
    /// A tar unpacked at / in the container before it starts (the
    /// registries' configuration), if any.
    pub files: Option<Vec<u8>>,
}

/// One image store the tool can bake into ROOT.
pub trait Backend: Sync {
    /// Which store this is, in the helpers' requests, the report and the
    /// names of what a run makes for it (`docker`, `containerd`).
    fn name(&self) -> &'static str;

    /// What sets this store's Docker volumes and containers apart from the
    /// other stores' ("" for Docker's, "ctrd-" for containerd's: the names
    /// of the first releases, which caches keep).
    fn tag(&self) -> &'static str;

    /// Where the store lives: the same path in the build container and in
    /// ROOT.
    fn root(&self) -> &'static str;

    /// How a daemon in a build container gets images into this store (the
    /// way in of `populate` today); None when no daemon writes it.
    fn daemon(&self) -> Option<&dyn Daemon>;

    /// Whether the export can be limited to some images of the store (a
    /// `--cache` keeps others in it); else the store is written whole: a
    /// cache holds only the images of the run, and a `--merge` starts the
    /// daemon on a copy of the store in ROOT, which the export replaces.
    fn exports_part(&self) -> bool;

    /// In the build container, its daemon stopped: the store at `root` as
    /// a PAX tar on `out` with every xattr, all of it or `only` the
    /// selected images, without the state of the daemon that pulled.
    /// What the backend can make reproducible carries `stamp` (seconds
    /// since 1970) where the daemon wrote the time of the pull.
    fn export(
        &self,
        root: &Path,
        only: Option<&Selection>,
        stamp: i64,
        out: &mut dyn Write,
    ) -> Result<ExportStats>;

    /// What [`Backend::export`] of the same images will take in an ext4
    /// with `block_size` (metadata only).
    fn measure(&self, root: &Path, only: Option<&Selection>, block_size: u64) -> Result<Need>;

    /// Before a new store is written over the one in ROOT (`--merge`):
    /// what the merge must remember of the old one, to reconcile the two
    /// once written ([`Merge::finish`]). None when ROOT has no such store.
    fn merge(&self, before: &dyn FsRead) -> Result<Option<Box<dyn Merge>>>;

    /// The layers of the store in `fs` (for the summary).
    fn layers(&self, fs: &dyn FsRead) -> Result<u64>;

    /// What images the store in `fs` holds; None when there is none.
    fn inspect(&self, fs: &dyn FsRead) -> Result<Option<Inventory>>;

    /// The bytes [`Backend::verify`] will hash (for its progress).
    fn verify_total(&self, fs: &dyn FsRead) -> Result<u64>;

    /// Checks that everything the store in `fs` says it holds is there,
    /// intact; `progress` is given the bytes hashed as they are.
    fn verify(&self, fs: &dyn FsRead, progress: &mut dyn FnMut(u64)) -> Result<Report>;
}

/// The daemon that writes a store in the build container: how images get
/// into the store, apart from how the store lies on disk ([`Backend`]).
pub trait Daemon: Sync {
    /// The unix socket the daemon answers on, inside the build container
    /// (its only endpoint).
    fn socket(&self) -> &'static str;

    /// How the build container runs the daemon: its command line (run by
    /// the container's init) and the files it needs first.
    fn setup(&self, opts: &DaemonOptions<'_>) -> Result<DaemonSetup>;

    /// Refuses references the daemon of this store cannot pull as the
    /// `registry` options ask (before anything is pulled).
    fn check_refs(&self, refs: &[ImageRef], registry: &RegistryOptions) -> Result<()> {
        let _ = (refs, registry);
        Ok(())
    }

    /// Before anything is pulled for a `--merge`: refuses a store in
    /// `before` (ROOT) that the daemon of the build container cannot add
    /// to for a target whose containerd is `target`.
    fn check_merge(&self, before: &dyn FsRead, target: ContainerdVersion) -> Result<()>;

    /// What the prune helper ([`StoreOp::Prune`]), removing every image
    /// of the build container's store but `kept` (a `--cache`'s others),
    /// reads on its standard input: Docker's images by ID, containerd's
    /// records by name.
    fn kept(&self, kept: &Selection) -> Vec<String>;

    /// Serves, in the build container, a request of the tool to this
    /// store's daemon ([`StoreOp::Ready`], [`StoreOp::Pull`],
    /// [`StoreOp::Load`], [`StoreOp::Prune`]), reporting as the protocol
    /// says.
    fn serve(&self, op: StoreOp, opts: &StoreOptions) -> Result<()>;
}

/// The second half of a `--merge`, once the new store is written.
pub trait Merge: Send {
    /// Reconciles the store written into `fs` (ROOT, open for writing)
    /// with what was there.
    fn finish(self: Box<Self>, fs: &mut ext4::Fs) -> Result<()>;
}

/// What [`Backend::inspect`] found, in the shape of its store
/// (docs/inspect-schema.md).
pub enum Inventory {
    Docker(docker::inspect::DockerStore),
    Containerd(containerd::inspect::ContainerdStore),
}

/// The names of the images of containerd's namespace k8s.io (the
/// kubelet's) in `fs`.
pub fn kubelet_images(fs: &dyn FsRead) -> Result<Vec<String>> {
    let Some(Inventory::Containerd(c)) = containerd::Containerd.inspect(fs)? else {
        return Ok(vec![]);
    };
    Ok(c.namespaces
        .into_iter()
        .filter(|n| n.name == "k8s.io")
        .flat_map(|n| n.images.into_iter().map(|i| i.name))
        .collect())
}

/// Writes the store at `root` (all of it, or `only` the selection) as a
/// tar stream to the unix socket `socket` when it accepts a connection (the
/// tool's machine; this skips the daemon's attach stream, the slowest
/// link), else to stdout. Run in the build container.
pub fn export_to(
    backend: &dyn Backend,
    root: &Path,
    only: Option<&Selection>,
    stamp: i64,
    socket: Option<&Path>,
) -> Result<()> {
    const BUF: usize = 1 << 20;
    let stats = match socket.and_then(|s| std::os::unix::net::UnixStream::connect(s).ok()) {
        Some(stream) => backend.export(
            root,
            only,
            stamp,
            &mut io::BufWriter::with_capacity(BUF, stream),
        ),
        None => backend.export(
            root,
            only,
            stamp,
            &mut io::BufWriter::with_capacity(BUF, io::stdout().lock()),
        ),
    };
    stats.map(|_| ())
}

/// What of a store to export: the images with these IDs and the names
/// (repo:tag, and repo@digest) that point at them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Selection {
    pub images: Vec<SelectedImage>,
}

/// One image of a [`Selection`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelectedImage {
    /// `sha256:<hex>`, the digest of the image's config.
    pub id: String,
    /// Names as Docker takes them (`nginx:1.27`, `reg:5000/a/b@sha256:...`);
    /// each must point at `id` in the store.
    pub names: Vec<String>,
}

/// Reads a JSON [`Selection`] from `input`; `from` names it in errors.
pub fn read_selection(mut input: impl Read, from: &str) -> Result<Selection> {
    let mut text = vec![];
    input
        .read_to_end(&mut text)
        .with_context(|| format!("reading the image selection from {from}"))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing the image selection in {from}"))
}

/// Reads the JSON [`Selection`] a helper gets on its standard input.
pub fn read_selection_stdin() -> Result<Selection> {
    read_selection(io::stdin().lock(), "standard input")
}

/// One failed check of [`Backend::verify`]: which image, layer and path,
/// and what is wrong.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Failure {
    /// When the failure concerns an image: Docker's image ID
    /// (`sha256:...`); containerd's image record, `NAME (namespace NS)`.
    pub image: Option<String>,
    /// The layer's diff ID (`sha256:...`, as `docker image inspect` lists
    /// it under `RootFS.Layers`, and the image config's `rootfs.diff_ids`).
    pub layer: Option<String>,
    /// Absolute path in the checked tree.
    pub path: Option<String>,
    pub problem: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = vec![];
        if let Some(i) = &self.image {
            parts.push(format!("image {i}"));
        }
        if let Some(l) = &self.layer {
            parts.push(format!("layer {l}"));
        }
        if let Some(p) = &self.path {
            parts.push(format!("path {p}"));
        }
        write!(f, "{}: {}", parts.join(", "), self.problem)
    }
}

/// What [`Backend::verify`] found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Images in the store.
    pub images: usize,
    /// Distinct layers checked.
    pub layers: usize,
    /// Bytes of layer file content read and hashed (the unit of
    /// `progress` and [`Backend::verify_total`]).
    pub bytes_hashed: u64,
    pub failures: Vec<Failure>,
}
