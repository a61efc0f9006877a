//! containerd's image store (`/var/lib/containerd`): the content store
//! (blobs by digest), the metadata database (`meta.db`: image records and
//! labels per namespace) and the overlayfs snapshotter (unpacked layers),
//! written by a containerd in the build container. It owns its on-disk
//! layout; [`inspect`] lists its images and [`verify`] checks them.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::export::{ExportStats, Scope};
use super::{Backend, Daemon, DaemonOptions, DaemonSetup, Inventory, Merge, Report, Selection};
use crate::digest::is_hex64;
use crate::disk::ext4::Need;
use crate::fsread::{is_dir, join, show, FsRead, Kind};
use crate::protocol::{ContainerdVersion, StoreOp, StoreOptions};

pub mod bolt;
pub mod ctr;
pub mod image;
pub mod inspect;
pub mod layer_stream;
pub mod snapdiff;
pub mod verify;

/// Where Flatcar's containerd keeps its root (its config's `root`).
pub const ROOT: &str = "/var/lib/containerd";

/// The schema version of a metadata database: containerd 1.7 writes 3,
/// 2.0 and later 4 (and migrate 3 at their first open).
const SCHEMA_2X: i64 = 4;

/// The namespace of Docker 29's containerd image store.
pub const DOCKER_NAMESPACE: &str = "moby";

/// Whose pull an image is left as, by the namespace it goes into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Records {
    /// The CRI's (the kubelet's `k8s.io`, and any namespace but Docker's):
    /// `repo:tag`, `repo@sha256:DIGEST` and `sha256:CONFIG`, labelled
    /// managed (and pinned).
    Cri,
    /// Docker 29's in [`DOCKER_NAMESPACE`]: the name alone, no label (it
    /// would list `sha256:CONFIG` as an image of its own).
    Docker,
}

impl Records {
    pub fn of(namespace: &str) -> Records {
        if namespace == DOCKER_NAMESPACE {
            Records::Docker
        } else {
            Records::Cri
        }
    }
}

/// The schema version of the metadata database of the store in `fs`, or
/// None when there is no store.
pub fn schema(fs: &dyn FsRead) -> Result<Option<i64>> {
    let meta = join(ROOT.as_bytes(), layout::META.as_bytes());
    if fs.stat(&meta)?.is_none() {
        return Ok(None);
    }
    let data = fs.read_all(&meta)?;
    let version = bolt::Db::open(&data)
        .and_then(|db| {
            let v1 = db.root().bucket(b"v1")?;
            Ok(match v1 {
                Some(b) => b.value(b"version")?.and_then(bolt::varint),
                None => None,
            })
        })
        .with_context(|| format!("reading the metadata database {}", show(&meta)))?;
    version.map(Some).with_context(|| {
        format!(
            "{} has no schema version: it is not containerd's",
            show(&meta)
        )
    })
}

/// Before a `--merge` adds images to the store in `fs` (ROOT): whether
/// there is one, refusing one that the target's containerd (`target`)
/// cannot read once the build container's containerd has written it.
pub fn check_merge(fs: &dyn FsRead, target: ContainerdVersion) -> Result<bool> {
    let Some(schema) = schema(fs)? else {
        return Ok(false);
    };
    match (schema, target) {
        (s, _) if s > SCHEMA_2X => bail!(
            "the containerd store in ROOT has metadata schema {s}, newer than any containerd Flatcar \
             ships writes (4): it cannot be added to"
        ),
        (SCHEMA_2X, ContainerdVersion::V1_7) => bail!(
            "the containerd store in ROOT was written by containerd 2.x (metadata schema 4), which the \
             target's containerd 1.7 (--containerd-version 1.7, Flatcar LTS) cannot read; give the \
             target's version with --containerd-version (2.1 or 2.2)"
        ),
        _ => Ok(true),
    }
}

/// The sandbox (pause) image a containerd of `version` is built with
/// (its CRI default, which Flatcar's configuration keeps).
pub fn default_sandbox(version: crate::protocol::ContainerdVersion) -> &'static str {
    use crate::protocol::ContainerdVersion::*;
    match version {
        V1_7 => "registry.k8s.io/pause:3.8",
        V2_1 => "registry.k8s.io/pause:3.10",
        V2_2 => "registry.k8s.io/pause:3.10.1",
    }
}

/// The build container's containerd answers on this socket only.
pub const SOCKET: &str = "/run/fp-containerd/containerd.sock";

/// Its state directory (sockets, mounts of running tasks: none here).
const STATE: &str = "/run/fp-containerd";

/// Its configuration file, put there by [`build_files`].
const CONFIG: &str = "/etc/fp-containerd/config.toml";

/// The configuration of the build container's containerd: the defaults
/// (the overlayfs snapshotter, content kept after unpacking) without the
/// CRI plugin, whose image service relabels images of `k8s.io` as they are
/// made (racing the helper's labels) and which keeps state of its own.
/// Version 2 is read by containerd 1.7 and 2.x alike; the names are those
/// of both (unknown ones are ignored).
pub fn config_toml() -> String {
    [
        "version = 2",
        "disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.images\", \"io.containerd.cri.v1.runtime\"]",
        "",
    ]
    .join("\n")
}

/// The files the build container needs before its containerd starts, as a
/// tar to unpack at its `/`: the configuration and the registries' hosts
/// directories.
fn build_files(hosts: &[crate::docker::registry::RegistryHost]) -> Result<Vec<u8>> {
    use crate::docker::registry::CONTAINERD_HOSTS_DIR;
    use crate::tar::{Attrs, Writer};
    let mut tar = Writer::new(Vec::new());
    let dir = Attrs::root_owned(0o755);
    let rel = |p: &str| p.trim_start_matches('/').to_string();
    let config_dir = rel(CONFIG.rsplit_once('/').map_or(CONFIG, |(d, _)| d));
    (|| {
        tar.dir(rel("/etc").as_bytes(), &dir)?;
        tar.dir(config_dir.as_bytes(), &dir)?;
        tar.file_bytes(
            rel(CONFIG).as_bytes(),
            &Attrs::root_owned(0o644),
            config_toml().as_bytes(),
        )?;
        tar.dir(rel(CONTAINERD_HOSTS_DIR).as_bytes(), &dir)?;
        for h in hosts {
            let hdir = format!("{}/{}", rel(CONTAINERD_HOSTS_DIR), h.host);
            tar.dir(hdir.as_bytes(), &dir)?;
            for (name, data) in &h.files {
                let mode = crate::docker::registry::cert_mode(name);
                tar.file_bytes(
                    format!("{hdir}/{name}").as_bytes(),
                    &Attrs::root_owned(mode),
                    data,
                )?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })()
    .context("making the build container's containerd configuration")?;
    tar.finish()
        .context("making the build container's containerd configuration")
}

/// The layout below [`ROOT`], relative to it.
pub mod layout {
    /// Blobs (manifests, indexes, configs, compressed layers) by the hex
    /// of their sha256 digest.
    pub const BLOBS: &str = "io.containerd.content.v1.content/blobs/sha256";
    /// The metadata database: images, labels, leases per namespace.
    pub const META: &str = "io.containerd.metadata.v1.bolt/meta.db";
    /// The overlayfs snapshotter: its own metadata.db and `snapshots/N/fs`.
    pub const SNAPSHOTS: &str = "io.containerd.snapshotter.v1.overlayfs/snapshots";
    /// The overlayfs snapshotter's database: snapshot keys, IDs, parents.
    pub const SNAPSHOTTER_META: &str = "io.containerd.snapshotter.v1.overlayfs/metadata.db";
}

/// The top-level entries of the root that a containerd needs to find the
/// pulled images. Everything else is state of the containerd that pulled:
/// `tmpmounts`, `io.containerd.runtime.v2.task` (tasks), the CRI plugin's
/// `io.containerd.grpc.v1.cri` (containers, sandboxes),
/// `io.containerd.grpc.v1.introspection/uuid` (the daemon's identity), the
/// other snapshotters' empty directories.
const KEEP: &[&str] = &[
    "io.containerd.content.v1.content",
    "io.containerd.metadata.v1.bolt",
    "io.containerd.snapshotter.v1.overlayfs",
];

/// Within what is kept: downloads in progress.
const SKIP: &[&str] = &["io.containerd.content.v1.content/ingest"];

/// What of the root is exported (all of it kept: no `--cache` selection).
const SCOPE: Scope<'static> = Scope {
    keep: Some(KEEP),
    skip: SKIP,
    plan: None,
};

/// containerd's store, written by a containerd in the build container.
pub struct Containerd;

impl Backend for Containerd {
    fn name(&self) -> &'static str {
        "containerd"
    }

    fn tag(&self) -> &'static str {
        "ctrd-"
    }

    fn root(&self) -> &'static str {
        ROOT
    }

    /// The build container's containerd with [`config_toml`] (the
    /// image's own configuration is not read).
    fn exports_part(&self) -> bool {
        false
    }

    fn export(
        &self,
        root: &Path,
        only: Option<&Selection>,
        _stamp: i64,
        out: &mut dyn Write,
    ) -> Result<ExportStats> {
        refuse_selection(only)?;
        SCOPE.export(root, out)
    }

    fn measure(&self, root: &Path, only: Option<&Selection>, block_size: u64) -> Result<Need> {
        refuse_selection(only)?;
        SCOPE.measure(root, block_size)
    }

    /// Nothing to reconcile: the metadata database is one bbolt file, so a
    /// `--merge` starts the build container's containerd on the store in
    /// ROOT ([`check_merge`], [`super::export::fs_tree`]) and the store it
    /// leaves replaces the old one, whole.
    fn daemon(&self) -> Option<&dyn Daemon> {
        Some(self)
    }

    fn merge(&self, _before: &dyn FsRead) -> Result<Option<Box<dyn Merge>>> {
        Ok(None)
    }

    /// The overlayfs snapshots (one per unpacked layer).
    fn layers(&self, fs: &dyn FsRead) -> Result<u64> {
        let dir = join(ROOT.as_bytes(), layout::SNAPSHOTS.as_bytes());
        if !is_dir(fs, &dir)? {
            return Ok(0);
        }
        Ok(fs.read_dir(&dir)?.len() as u64)
    }

    fn inspect(&self, fs: &dyn FsRead) -> Result<Option<Inventory>> {
        Ok(inspect::store(fs)?.map(Inventory::Containerd))
    }

    fn verify_total(&self, fs: &dyn FsRead) -> Result<u64> {
        verify::total(fs)
    }

    /// See [`verify`]: labels, snapshot chains, snapshots against their
    /// layers, blobs against their digests.
    fn verify(&self, fs: &dyn FsRead, progress: &mut dyn FnMut(u64)) -> Result<Report> {
        verify::verify(fs, progress)
    }
}

/// `--cache` selects images of a Docker store; containerd's is exported
/// whole.
fn refuse_selection(only: Option<&Selection>) -> Result<()> {
    if only.is_some() {
        bail!("containerd's store cannot be exported in part (--cache) yet");
    }
    Ok(())
}

/// The blobs of the content store: (path, hex digest of their name),
/// sorted; a name that is not a sha256 hex digest is an error.
pub fn blobs(fs: &dyn FsRead) -> Result<Vec<(Vec<u8>, String)>> {
    let dir = join(ROOT.as_bytes(), layout::BLOBS.as_bytes());
    if !is_dir(fs, &dir)? {
        return Ok(vec![]);
    }
    let mut names = fs
        .read_dir(&dir)
        .with_context(|| format!("listing {}", show(&dir)))?;
    names.sort();
    let mut out = vec![];
    for name in names {
        let path = join(&dir, &name);
        let text = String::from_utf8_lossy(&name).into_owned();
        if !is_hex64(&text) {
            bail!("{} is not named by a sha256 digest", show(&path));
        }
        match fs.stat(&path)? {
            Some(st) if st.kind == Kind::File => out.push((path, text)),
            _ => bail!("{} is not a regular file", show(&path)),
        }
    }
    Ok(out)
}

/// The containerd of the build container, as this store's way of getting
/// images.
impl Daemon for Containerd {
    fn socket(&self) -> &'static str {
        SOCKET
    }

    /// Registries as containerd's hosts directories, in the files.
    fn setup(&self, opts: &DaemonOptions<'_>) -> Result<DaemonSetup> {
        let argv = [
            "containerd",
            &format!("--config={CONFIG}"),
            &format!("--root={ROOT}"),
            &format!("--state={STATE}"),
            &format!("--address={}", self.socket()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let files = Some(build_files(&opts.registry.containerd_hosts)?);
        Ok(DaemonSetup { argv, files })
    }

    fn kept(&self, kept: &Selection) -> Vec<String> {
        kept.images.iter().flat_map(|i| i.names.clone()).collect()
    }

    fn serve(&self, op: StoreOp, opts: &StoreOptions) -> Result<()> {
        ctr::serve(self.socket(), op, opts)
    }

    fn check_merge(&self, before: &dyn FsRead, target: ContainerdVersion) -> Result<()> {
        check_merge(before, target).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::export::exported_entries;
    use super::*;
    use crate::fsread::HostDir;

    #[test]
    fn export_keeps_content_metadata_and_snapshots_only() {
        let entries = exported_entries(
            &Containerd,
            &[
                "io.containerd.content.v1.content/blobs/sha256",
                "io.containerd.content.v1.content/ingest/partial",
                "io.containerd.metadata.v1.bolt",
                "io.containerd.snapshotter.v1.overlayfs/snapshots/1/fs",
                "io.containerd.grpc.v1.introspection",
                "io.containerd.runtime.v2.task/k8s.io",
                "tmpmounts",
            ],
            &[
                ("io.containerd.grpc.v1.introspection/uuid", "x"),
                ("io.containerd.metadata.v1.bolt/meta.db", "db"),
            ],
            |_| {},
        );
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "./",
                "io.containerd.content.v1.content",
                "io.containerd.content.v1.content/blobs",
                "io.containerd.content.v1.content/blobs/sha256",
                "io.containerd.metadata.v1.bolt",
                "io.containerd.metadata.v1.bolt/meta.db",
                "io.containerd.snapshotter.v1.overlayfs",
                "io.containerd.snapshotter.v1.overlayfs/snapshots",
                "io.containerd.snapshotter.v1.overlayfs/snapshots/1",
                "io.containerd.snapshotter.v1.overlayfs/snapshots/1/fs",
            ]
        );
        let sel = Selection::default();
        let dir = tempfile::tempdir().unwrap();
        let err = Containerd
            .export(dir.path(), Some(&sel), 0, &mut vec![])
            .unwrap_err();
        assert!(err.to_string().contains("--cache"), "{err}");
    }

    #[test]
    fn verify_hashes_every_blob_against_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("var/lib/containerd").join(layout::BLOBS);
        fs::create_dir_all(&blobs).unwrap();
        let good = crate::digest::sha256_hex(b"good");
        fs::write(blobs.join(&good), b"good").unwrap();
        let bad = crate::digest::sha256_hex(b"bad");
        fs::write(blobs.join(&bad), b"changed").unwrap();
        let fs_ = HostDir(dir.path().into());
        assert_eq!(Containerd.verify_total(&fs_).unwrap(), 11);
        let mut seen = 0;
        let report = Containerd.verify(&fs_, &mut |n| seen += n).unwrap();
        assert_eq!((report.bytes_hashed, seen), (11, 11));
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        let f = &report.failures[0];
        assert!(f.path.as_deref().unwrap().ends_with(&bad), "{f}");
        assert!(f.problem.contains("not to its name"), "{f}");
        fs::write(blobs.join("nothex"), b"").unwrap();
        let err = Containerd.verify(&fs_, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("sha256 digest"), "{err}");
    }

    #[test]
    fn merge_checks_the_schema_the_target_reads() {
        use crate::protocol::ContainerdVersion::*;
        let dir = tempfile::tempdir().unwrap();
        let fs_ = HostDir(dir.path().into());
        assert!(Containerd.merge(&fs_).unwrap().is_none());
        assert!(
            !check_merge(&fs_, V2_1).unwrap(),
            "no store: nothing to add to"
        );
        let meta = dir.path().join("var/lib/containerd").join(layout::META);
        fs::create_dir_all(meta.parent().unwrap()).unwrap();
        let db = |version: i64| {
            let mut t = bolt::write::Tree::default();
            let zigzag = ((version << 1) ^ (version >> 63)) as u8;
            t.set(&[b"v1"], b"version", &[zigzag]);
            bolt::write::build(&t)
        };
        // A database containerd 1.6 wrote.
        fs::write(&meta, bolt::fixture_meta_db()).unwrap();
        assert_eq!(schema(&fs_).unwrap(), Some(3));
        fs::write(&meta, db(3)).unwrap();
        assert_eq!(schema(&fs_).unwrap(), Some(3));
        for target in [V1_7, V2_1, V2_2] {
            assert!(check_merge(&fs_, target).unwrap());
        }
        fs::write(&meta, db(4)).unwrap();
        assert!(check_merge(&fs_, V2_2).unwrap());
        let err = check_merge(&fs_, V1_7).unwrap_err().to_string();
        assert!(
            err.contains("containerd 1.7") && err.contains("schema 4"),
            "{err}"
        );
        fs::write(&meta, db(5)).unwrap();
        let err = check_merge(&fs_, V2_2).unwrap_err().to_string();
        assert!(err.contains("schema 5"), "{err}");
        fs::write(&meta, b"not bolt").unwrap();
        let err = format!("{:#}", check_merge(&fs_, V2_2).unwrap_err());
        assert!(err.contains("meta.db"), "{err}");
    }
}
