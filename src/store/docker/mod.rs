//! Docker's overlay2 image store, `/var/lib/docker`, as moby lays it out:
//! the one module that knows its paths, chain IDs, `repositories.json` and
//! overlay2 links. Flatcar's Docker 26, 28 and 29 all use it when it is
//! there at first boot.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use super::export::{Plan, Scope};
use super::{Backend, Daemon, ExportStats, Inventory, Merge, Report, Selection};
use crate::disk::ext4::Need;
use crate::fsread::FsRead;

mod daemon;
pub mod inspect;
pub mod merge;
mod select;
/// Docker's tar-split metadata: read by `verify`; its writing half waits
/// for its first user, the store written without a daemon.
pub mod tarsplit;
pub mod verify;
pub mod write;

/// Where Flatcar's Docker keeps its store (no --data-root on Flatcar).
pub const ROOT: &str = "/var/lib/docker";

/// The layout below [`ROOT`], relative to it.
pub mod layout {
    /// The image metadata of the overlay2 driver.
    pub const IMAGE: &str = "image/overlay2";
    /// Image configs by the hex of their ID.
    pub const CONTENT: &str = "image/overlay2/imagedb/content/sha256";
    /// `lastUpdated`, `parent`, ... of each image.
    pub const METADATA: &str = "image/overlay2/imagedb/metadata/sha256";
    /// Layers by the hex of their chain ID.
    pub const LAYERDB: &str = "image/overlay2/layerdb/sha256";
    /// The names of the images.
    pub const REPOSITORIES: &str = "image/overlay2/repositories.json";
    pub const DIFFID_BY_DIGEST: &str = "image/overlay2/distribution/diffid-by-digest/sha256";
    pub const V2META_BY_DIFFID: &str = "image/overlay2/distribution/v2metadata-by-diffid/sha256";
    /// The layers' directories (by cache-id), and their short links.
    pub const LAYERS: &str = "overlay2";
    pub const LINKS: &str = "overlay2/l";
}

/// Docker's overlay2 store, written by a dockerd in the build container.
pub struct Docker;

/// What of the store is exported: only what `plan` names, the images'
/// metadata (image db, layer db, repositories.json, distribution cache)
/// and their overlay2 layers. Everything else is state of the daemon that
/// pulled (the dind's), recreated empty by Docker at first start:
/// `engine-id` (the daemon's identity), `network/` (local-kv.db),
/// `containers/`, `swarm/`, `buildkit/`, `tmp/`, `runtimes/`, `plugins/`,
/// `volumes/`, the dind's own `containerd/`, and the read-write layers of
/// containers (`layerdb/mounts`, `<id>-init`).
fn scope(plan: &Plan) -> Scope<'_> {
    Scope {
        keep: None,
        skip: &[],
        plan: Some(plan),
    }
}

/// The plan of what to export of the store at `root`: `only` those
/// images, else all of them; reproducible, with `stamp` as the time of
/// what the daemon made ([`select::plan`]).
fn plan(root: &Path, only: Option<&Selection>, stamp: i64) -> Result<Plan> {
    let fs = crate::fsread::HostDir(root.into());
    match only {
        Some(sel) => select::plan(&fs, sel, stamp),
        None => select::plan(&fs, &select::all(&fs)?, stamp),
    }
}

impl Backend for Docker {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn tag(&self) -> &'static str {
        ""
    }

    fn root(&self) -> &'static str {
        ROOT
    }

    fn exports_part(&self) -> bool {
        true
    }

    fn export(
        &self,
        root: &Path,
        only: Option<&Selection>,
        stamp: i64,
        out: &mut dyn Write,
    ) -> Result<ExportStats> {
        let plan = plan(root, only, stamp)?;
        scope(&plan).export(root, out)
    }

    /// Names and link targets are as long as the exported ones, and times
    /// take no room: any stamp measures the same.
    fn measure(&self, root: &Path, only: Option<&Selection>, block_size: u64) -> Result<Need> {
        let plan = plan(root, only, 0)?;
        scope(&plan).measure(root, block_size)
    }

    fn daemon(&self) -> Option<&dyn Daemon> {
        Some(self)
    }

    fn merge(&self, before: &dyn FsRead) -> Result<Option<Box<dyn Merge>>> {
        Ok(merge::Before::read(before)?.map(|b| Box::new(b) as Box<dyn Merge>))
    }

    /// The directories of overlay2 but `l` (the short links).
    fn layers(&self, fs: &dyn FsRead) -> Result<u64> {
        let dir = format!("{ROOT}/{}", layout::LAYERS);
        if fs.stat(dir.as_bytes())?.is_none() {
            return Ok(0);
        }
        let names = fs.read_dir(dir.as_bytes())?;
        Ok(names.iter().filter(|n| n.as_slice() != b"l").count() as u64)
    }

    fn inspect(&self, fs: &dyn FsRead) -> Result<Option<Inventory>> {
        Ok(inspect::store(fs)?.map(Inventory::Docker))
    }

    fn verify_total(&self, fs: &dyn FsRead) -> Result<u64> {
        verify::total_bytes(fs, &verify::Options::default())
    }

    fn verify(&self, fs: &dyn FsRead, progress: &mut dyn FnMut(u64)) -> Result<Report> {
        verify::verify(fs, &verify::Options::default(), progress)
    }
}
