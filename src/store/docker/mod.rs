//! Docker's overlay2 image store, `/var/lib/docker`, as moby lays it out:
//! the one module that knows its paths, chain IDs, `repositories.json` and
//! overlay2 links. Flatcar's Docker 26, 28 and 29 all use it when it is
//! there at first boot.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use super::export::{Plan, Scope};
use super::{Backend, DaemonOptions, ExportStats, Inventory, Merge, Report, Selection};
use crate::ext4::Need;
use crate::fsread::FsRead;
use crate::protocol::{ContainerdVersion, Request, StoreKind};

pub mod inspect;
pub mod merge;
mod select;
pub mod verify;

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

/// The top-level entries of /var/lib/docker that a daemon needs to find the
/// pulled images: the image metadata (image db, layer db, repositories.json,
/// distribution cache) and the overlay2 layers. Everything else is state of
/// the daemon that pulled (the dind's), recreated empty by Docker at first start:
/// `engine-id` (the daemon's identity), `network/` (local-kv.db), `containers/`,
/// `swarm/`, `buildkit/`, `tmp/`, `runtimes/`, `plugins/`, `volumes/`, the
/// dind's own `containerd/`.
const KEEP: &[&str] = &["image", "overlay2"];

/// Within what is kept, per-instance state that must not travel either.
const SKIP: &[&str] = &[
    // Read-write layers of containers: the dind never runs any, but a
    // merged store must not get references to them.
    "image/overlay2/layerdb/mounts",
];

/// Docker's overlay2 store, written by a dockerd in the build container.
pub struct Docker;

/// What of the store is exported: what is kept, or what `plan` names.
fn scope(plan: Option<&Plan>) -> Scope<'_> {
    Scope {
        keep: Some(KEEP),
        skip: SKIP,
        plan,
    }
}

/// The plan of what to export of the store at `root` for `only`.
fn plan(root: &Path, only: Option<&Selection>) -> Result<Option<Plan>> {
    only.map(|sel| select::plan(&crate::fsread::HostDir(root.into()), sel))
        .transpose()
}

impl Backend for Docker {
    fn kind(&self) -> StoreKind {
        StoreKind::Docker
    }

    fn root(&self) -> &'static str {
        ROOT
    }

    fn socket(&self) -> &'static str {
        crate::docker::INNER_SOCKET
    }

    fn exports_part(&self) -> bool {
        true
    }

    fn daemon(&self, opts: &DaemonOptions<'_>) -> Vec<String> {
        [
            "dockerd",
            "--storage-driver=overlay2",
            &format!("--host=unix://{}", self.socket()),
            // The daemon touches no network interface or firewall.
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            &format!("--max-concurrent-downloads={}", opts.downloads.max(1)),
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(opts.extra.iter().cloned())
        .collect()
    }

    fn export(
        &self,
        root: &Path,
        only: Option<&Selection>,
        out: &mut dyn Write,
    ) -> Result<ExportStats> {
        let plan = plan(root, only)?;
        scope(plan.as_ref()).export(root, out)
    }

    fn measure(&self, root: &Path, only: Option<&Selection>, block_size: u64) -> Result<Need> {
        let plan = plan(root, only)?;
        scope(plan.as_ref()).measure(root, block_size)
    }

    fn merge(&self, before: &dyn FsRead) -> Result<Option<Box<dyn Merge>>> {
        Ok(merge::Before::read(before)?.map(|b| Box::new(b) as Box<dyn Merge>))
    }

    fn prune(&self, kept: &Selection, _namespace: &str) -> (Request, Vec<String>) {
        let ids = kept.images.iter().map(|i| i.id.clone()).collect();
        let socket = self.socket().into();
        (Request::Prune { socket }, ids)
    }

    /// Any overlay2 store can be added to: what is in it is kept as it is
    /// and reconciled afterwards ([`merge::Before`]).
    fn check_merge(&self, _before: &dyn FsRead, _target: ContainerdVersion) -> Result<()> {
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::export::exported_entries;
    use super::*;

    #[test]
    fn export_keeps_only_the_image_store() {
        let names = exported_entries(
            &Docker,
            &[
                "image/overlay2/layerdb/mounts/x",
                "overlay2/abc/diff",
                "network/files",
                "containers/c",
            ],
            &[("engine-id", "id"), ("overlay2/abc/diff/f", "data")],
            |root| {
                fs::hard_link(
                    root.join("overlay2/abc/diff/f"),
                    root.join("overlay2/abc/diff/g"),
                )
                .unwrap();
                std::os::unix::fs::symlink("../abc/diff", root.join("overlay2/l")).unwrap();
            },
        );
        let just: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            just,
            [
                "./",
                "image",
                "image/overlay2",
                "image/overlay2/layerdb",
                "overlay2",
                "overlay2/abc",
                "overlay2/abc/diff",
                "overlay2/abc/diff/f",
                "overlay2/abc/diff/g",
                "overlay2/l"
            ]
        );
        assert_eq!(names[8].1, tar::EntryType::Link);
        assert_eq!(names[9].1, tar::EntryType::Symlink);
    }
}
