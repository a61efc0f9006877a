//! Image stores as backends: what a store brings to a run, behind one
//! interface ([`Backend`]) that the phases of `populate`, `inspect` and
//! `verify` use without knowing which store it is. Docker's overlay2 store
//! ([`docker`]) is the first, containerd's ([`containerd`]) the second,
//! implementing the same functions:
//!
//! - the daemon of the build container that writes it ([`Backend::daemon`])
//!   and where its root is there and in ROOT ([`Backend::root`]);
//! - what of that root is exported, and what is left out as the build
//!   machine's state ([`Backend::export`], [`Backend::measure`], run inside
//!   the build container by the export and measure helpers);
//! - what a `--merge` over an existing store must keep ([`Backend::merge`]);
//! - what is in it ([`Backend::inspect`]) and whether all of it holds
//!   ([`Backend::verify`]), read from ROOT through [`FsRead`].
//!
//! How images get into the daemon is the daemon's API (the pull and load
//! helpers of `docker::inner`), and the selection of a store's images for
//! `--cache` is a [`Selection`] that [`Backend::export`] honours.

use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::disk::ext4::{self, Need};
use crate::fsread::FsRead;
use crate::protocol::{ContainerdVersion, Request, StoreKind};

pub mod check;
pub mod containerd;
pub mod docker;
pub mod export;

pub use export::ExportStats;

/// Where Flatcar's containerd keeps its root (`populate --containerd`
/// copies a tree there).
pub const CONTAINERD_ROOT: &str = containerd::ROOT;

/// The backend of `kind`.
pub fn backend(kind: StoreKind) -> &'static dyn Backend {
    match kind {
        StoreKind::Docker => &docker::Docker,
        StoreKind::Containerd => &containerd::Containerd,
    }
}

/// What the daemon of the build container is asked for, whichever it is.
pub struct DaemonOptions<'a> {
    /// Layers downloaded at once.
    pub downloads: usize,
    /// More flags (registries, mirrors).
    pub extra: &'a [String],
}

/// One image store the tool can bake into ROOT.
pub trait Backend: Sync {
    /// Which store this is (the helpers' requests name it).
    fn kind(&self) -> StoreKind;

    /// Where the store lives: the same path in the build container and in
    /// ROOT.
    fn root(&self) -> &'static str;

    /// The unix socket that daemon answers on, inside the build container
    /// (its only endpoint).
    fn socket(&self) -> &'static str;

    /// Whether the export can be limited to some images of the store (a
    /// `--cache` keeps others in it); else the store is written whole: a
    /// cache holds only the images of the run, and a `--merge` starts the
    /// daemon on a copy of the store in ROOT, which the export replaces.
    fn exports_part(&self) -> bool;

    /// The command line of the daemon that writes this store in the build
    /// container (run by the container's init).
    fn daemon(&self, opts: &DaemonOptions<'_>) -> Vec<String>;

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

    /// Before anything is pulled for a `--merge`: refuses a store in
    /// `before` (ROOT) that the daemon of the build container cannot add
    /// to for a target whose containerd is `target`.
    fn check_merge(&self, before: &dyn FsRead, target: ContainerdVersion) -> Result<()>;

    /// The helper request that removes every image of the build
    /// container's store but `kept` (a `--cache`'s others), with the list
    /// of what to keep it reads on its standard input (Docker's images by
    /// ID, containerd's records of `namespace` by name).
    fn prune(&self, kept: &Selection, namespace: &str) -> (Request, Vec<String>);

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
