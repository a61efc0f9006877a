//! The phases of `populate`, each a function that says what it leaves
//! behind when it fails; `populate()` (mod.rs) runs them in order.

use std::cell::Cell;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use crate::disk::ext4::{self, Need};
use crate::disk::{self, Prepared, ROOT_NAME};
use crate::docker::{Engine, ExportVia, NameInUse, RegistryAccess, Seed, StoreMount};
use crate::source::{ImageRef, Listed, Source};

use crate::platform::Platform;
use crate::progress::{Bar, ReadProgress, WriteProgress};
use crate::protocol::StoreKind;
use crate::source::archive;
use crate::store::{self, Backend, CONTAINERD_ROOT};
use crate::unpack::{open_archive, Input};

use super::cache;
use super::config::PopulateConfig;
use super::context::{blocking, Checked, Run};
use super::images::{self, OutOfSpace};
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
    if cfg.images.is_empty() && cfg.containerd_images.is_empty() {
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
    cfg.registry
        .check_docker_refs(&refs(&mut cfg.lines(StoreKind::Docker).iter()))?;
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

/// Whether the run writes /var/lib/containerd.
fn writes_containerd(cfg: &PopulateConfig) -> bool {
    cfg.containerd.is_some() || !cfg.containerd_images.is_empty()
}

/// Refuses a ROOT that already has a store, unless merging, and a merge
/// that cannot be done. Returns whether the build container's containerd
/// must start on the store in ROOT (a merge over containerd's store, which
/// is written whole): possible only when `readable`, ROOT being read from
/// the input before the pull.
pub(super) fn check_existing(
    cfg: &PopulateConfig,
    root: &ext4::Root,
    readable: bool,
) -> Result<bool> {
    let disk = cfg.disk.display();
    let mut present = vec![];
    let fs = root.open_read()?;
    let docker = store::backend(StoreKind::Docker).root();
    if fs.exists(docker)? {
        present.push(docker);
    }
    if writes_containerd(cfg) && fs.exists(CONTAINERD_ROOT)? {
        present.push(CONTAINERD_ROOT);
    }
    if !present.is_empty() && !cfg.merge {
        bail!(
            "ROOT of {disk} already has {}; pass --merge to add the images to what is there",
            present.join(" and ")
        );
    }
    if !present.contains(&CONTAINERD_ROOT) {
        return Ok(false);
    }
    if let Some(src) = &cfg.containerd {
        bail!(
            "--containerd {} is a whole containerd root: it cannot be merged with the containerd \
             store ({CONTAINERD_ROOT}) in ROOT of {disk}; bake its images with --containerd-image \
             or --containerd-list instead",
            src.display()
        );
    }
    if let Some(cache) = &cfg.cache {
        bail!(
            "--merge over the containerd store in ROOT of {disk} starts the build container's \
             containerd on a copy of it, which the cache {cache:?} cannot hold beside its own \
             images: leave out --cache"
        );
    }
    if !readable {
        bail!(
            "--merge over the containerd store in ROOT of {disk} reads that store before the pull, \
             so the input must be a raw disk image: decompress or convert it first \
             (qemu-img convert -O raw IN OUT.bin)"
        );
    }
    let backend = store::backend(StoreKind::Containerd);
    backend
        .check_merge(&fs, cfg.containerd_options.version)
        .with_context(|| format!("--merge over ROOT of {disk}"))?;
    Ok(true)
}

/// Checks the engine before pulling: its architecture, the images of the
/// engine the list names (present, of the target platform) and the dind
/// image (pulled when missing). Leaves nothing behind.
pub(super) async fn check_engine(
    engine: &Engine,
    cfg: &PopulateConfig,
    platform: &TargetPlatform,
    mut prepared: Vec<Checked>,
    cancel: &CancellationToken,
) -> Result<Vec<Checked>> {
    engine.check_arch()?;
    let target = &platform.target;
    for (l, prepared) in cfg.all_lines().zip(prepared.iter_mut()) {
        let Source::Daemon(r) = &l.source else {
            continue;
        };
        let name = r.to_string();
        let (id, platform) = engine
            .image_platform(&name)
            .await
            .with_context(|| format!("{} ({})", l.source, l.origin))?;
        if !target.accepts(&platform) && !cfg.allow_platform_mismatch {
            bail!(
                "{} ({}): it is a {platform} image, but the target platform is {target}: it could not run there; \
                 pass --allow-platform-mismatch to preload it anyway",
                l.source,
                l.origin
            );
        }
        *prepared = Checked::Daemon(name, id);
    }
    let mut images: Vec<&str> = StoreKind::ALL
        .into_iter()
        .filter(|&k| !cfg.lines(k).is_empty())
        .map(|k| cfg.build_image(k))
        .collect();
    images.dedup();
    for image in images {
        match cancel.run_until_cancelled(engine.ensure_image(image)).await {
            Some(ensured) => ensured?,
            None => bail!("interrupted"),
        }
    }
    Ok(prepared)
}

/// What [`pull_store`] got.
pub(super) struct Pulled {
    pub(super) images: Vec<PulledImage>,
    pub(super) store: StoreReport,
    /// With --cache: the images of this run (a JSON store selection), the
    /// only ones exported from a store that may hold others.
    pub(super) selection: Option<Vec<u8>>,
}

/// Pulls (see [`pull_store`]) and makes the output (see [`make_output`])
/// at the same time: neither needs the other. The output is only started
/// once the registries have answered for every image, so that a run that
/// cannot pull (a wrong password, an untrusted certificate, another
/// platform) writes nothing. The first to fail stops the other, and its
/// error is returned.
pub(super) async fn pull_beside_copy(
    runs: &[Run<'_>],
    disk: &disk::Disk,
    clock: &Clock,
    memory_caps: &[Option<u64>],
) -> Result<(Vec<Pulled>, Prepared)> {
    let cfg = runs[0].cfg;
    let both = &runs[0].cancel;
    let first_failed = Cell::new(None);
    let failing = |failed: bool, which: u8| {
        if failed && first_failed.get().is_none() {
            first_failed.set(Some(which));
            both.cancel();
        }
    };
    let copy = async {
        // Nothing is written before the registries have answered for every
        // image of every store (logins, certificates, platforms).
        for run in runs {
            let mut checked = run.manifests_read.subscribe();
            let answered = checked.wait_for(|read| *read);
            if both.run_until_cancelled(answered).await.is_none() {
                bail!("interrupted");
            }
        }
        let seeded = runs.iter().any(|r| r.seed.is_some());
        clock
            .time(Phase::Copy, make_output(cfg, disk, seeded, both.clone()))
            .await
    };
    let pull = async {
        let pulls = runs
            .iter()
            .zip(memory_caps)
            .map(|(run, cap)| pull_store(run, clock, *cap));
        let r: Result<Vec<Pulled>> = futures_util::future::join_all(pulls)
            .await
            .into_iter()
            .collect();
        failing(r.is_err(), 0);
        r
    };
    let copy = async {
        let r = copy.await;
        failing(r.is_err(), 1);
        r
    };
    let (pulled, prepared) = tokio::join!(pull, copy);
    match (pulled, prepared, first_failed.get()) {
        (Ok(p), Ok(o), _) => Ok((p, o)),
        (Err(e), _, Some(0)) | (_, Err(e), Some(1)) => Err(e),
        (Err(e), _, _) | (_, Err(e), _) => Err(e),
    }
}

/// Starts the dind and pulls, with the store in a tmpfs of at most
/// `memory_cap` bytes when given, else on a volume. When the images
/// outgrow the tmpfs, says so and pulls them again on a volume. On failure
/// nothing was written; the dind (and volume) are recorded for removal.
pub(super) async fn pull_store(
    run: &Run<'_>,
    clock: &Clock,
    memory_cap: Option<u64>,
) -> Result<Pulled> {
    if let Some(name) = run.cfg.cache.clone() {
        let volume = cache::volume_name(&name, run.backend.kind());
        run.engine.ensure_cache_volume(&volume, &name).await?;
        clock
            .time(Phase::Start, start_dind(run, &StoreMount::Volume(volume)))
            .await?;
        let images = clock.time(Phase::Pull, images::acquire(run)).await?;
        // containerd's store is exported whole (its metadata database holds
        // every image): the images of other runs leave the cache first.
        let whole = !run.backend.exports_part();
        if run.cfg.cache_prune || whole {
            images::prune(run, &images).await?;
        }
        let selection = match whole {
            true => None,
            false => Some(images::selection(&images)?),
        };
        let store = StoreReport {
            kind: StoreLocation::Cache,
            memory_cap_bytes: None,
            fell_back_to_disk: false,
            used_bytes: 0,
        };
        return Ok(Pulled {
            images,
            store,
            selection,
        });
    }
    // A store to start from is copied onto a volume (the engine mounts
    // volumes, not a tmpfs, for a copy into a container not yet started).
    let memory_cap = memory_cap.filter(|_| run.seed.is_none());
    if let Some(cap) = memory_cap {
        let memory = StoreMount::Memory { cap };
        clock.time(Phase::Start, start_dind(run, &memory)).await?;
        match clock.time(Phase::Pull, images::acquire(run)).await {
            Ok(images) => {
                let store = StoreReport {
                    kind: StoreLocation::Memory,
                    memory_cap_bytes: Some(cap),
                    fell_back_to_disk: false,
                    used_bytes: 0,
                };
                return Ok(Pulled {
                    images,
                    store,
                    selection: None,
                });
            }
            Err(e) if e.downcast_ref::<OutOfSpace>().is_some() => {
                eprintln!(
                    "the images do not fit in the store in memory ({} at most): pulling them again with the store on disk",
                    indicatif::HumanBytes(cap)
                );
                let dind = run.dind.clone();
                run.engine.remove_container(&dind).await?;
                run.removed_container(&dind);
            }
            Err(e) => return Err(e),
        }
    }
    let volume = run.name("store");
    run.engine.create_volume(&volume, &run.spec.labels).await?;
    run.created_volume(&volume);
    let disk = StoreMount::Volume(volume);
    clock.time(Phase::Start, start_dind(run, &disk)).await?;
    let images = clock.time(Phase::Pull, images::acquire(run)).await?;
    let store = StoreReport {
        kind: StoreLocation::Disk,
        memory_cap_bytes: memory_cap,
        fell_back_to_disk: memory_cap.is_some(),
        used_bytes: 0,
    };
    Ok(Pulled {
        images,
        store,
        selection: None,
    })
}

/// Starts the dind with its store in `store` (holding a copy of the store
/// in ROOT when the run has a seed). On failure the container is already
/// recorded for removal (unless it was not made because a run using the
/// same cache has it).
pub(super) async fn start_dind(run: &Run<'_>, store: &StoreMount) -> Result<()> {
    let dind = run.dind.clone();
    let socket_dir = run.socket_dir.as_ref().map(|d| d.path());
    let container = run.dind();
    let seed = run.seed.clone().map(|root| seed(root, run.backend.root()));
    eprintln!("starting build container {dind} from {}", run.spec.image);
    let started = container.start(&run.spec, store, socket_dir, seed);
    match run.or_cancel(started).await {
        Err(e) if e.downcast_ref::<NameInUse>().is_some() => match &run.cfg.cache {
            Some(c) => bail!(
                "the cache {c:?} is in use by another run (its container {dind} exists); \
                 run again when it is done, or use another --cache. If no run is using it \
                 (one was killed), remove the container: docker rm -f {dind}"
            ),
            None => Err(e),
        },
        result => {
            run.created_container(&dind);
            result
        }
    }
}

/// The store `store_root` of `root` (the input's ROOT) as a tar stream,
/// read through libext2fs by a thread as it is sent: what the build
/// container's daemon starts on for a `--merge`.
fn seed(root: ext4::Root, store_root: &'static str) -> Seed {
    let (tar, writer) = tokio::io::duplex(1 << 20);
    let label = format!("copying {store_root} of ROOT into the build container");
    let done = tokio::task::spawn_blocking(move || {
        let fs = root.open_read()?;
        let path = store_root.as_bytes();
        let out = WriteProgress::new(SyncIoBridge::new(writer), Bar::bytes(&label, None));
        let out = std::io::BufWriter::with_capacity(1 << 20, out);
        store::export::fs_tree(&fs, path, &path[1..], out)
            .with_context(|| format!("reading {store_root} in {root}"))?;
        Ok(())
    });
    Seed {
        tar: Box::new(tar),
        done,
    }
}

/// Makes the image to write into: the disk itself (--in-place) or a
/// sparse, decompressed or converted copy, and checks its ROOT again. On
/// failure a partial copy is removed and the disk is untouched.
pub(super) async fn make_output(
    cfg: &PopulateConfig,
    opened: &disk::Disk,
    seeded: bool,
    cancel: CancellationToken,
) -> Result<Prepared> {
    let (disk, out, raw) = (
        opened.clone(),
        cfg.output.path().map(Path::to_path_buf),
        cfg.space.raw_output,
    );
    let cfg = cfg.clone();
    blocking(move || {
        let prepared = disk::prepare(&disk, out.as_deref(), raw, Some(&cancel))?;
        check_existing(&cfg, &prepared.fs(), seeded)?;
        Ok(prepared)
    })
    .await
}

/// Stops the inner daemon (see [`stop_dind`]) while measuring the store and
/// making room for it: stopping changes nothing that is exported (the
/// layers and the image database are complete once the pulls have
/// returned). Returns what the store took, the output with room made and
/// what the store needs. The export must wait for all of it.
pub(super) async fn stop_beside_measure(
    runs: &[Run<'_>],
    clock: &Clock,
    prepared: Prepared,
    only: &[Option<&[u8]>],
    extra: Need,
) -> Result<(Vec<u64>, (Prepared, Option<disk::GrowReport>), Need)> {
    let stop = clock.time(
        Phase::Stop,
        futures_util::future::join_all(runs.iter().map(stop_dind)),
    );
    let room = async {
        let mut need = extra;
        for (run, only) in runs.iter().zip(only) {
            need += clock
                .time(Phase::Measure, measure(run, &prepared, *only))
                .await?;
        }
        let grown = clock
            .time(Phase::Grow, make_room(runs[0].cfg, prepared, need))
            .await?;
        Ok::<_, anyhow::Error>((grown, need))
    };
    let (stopped, room) = tokio::join!(stop, room);
    let used = stopped.into_iter().collect::<Result<Vec<u64>>>()?;
    let (grown, need) = room?;
    Ok((used, grown, need))
}

/// Stops the inner daemon cleanly (the container stays, with a store in
/// memory) and returns what the store takes: the store must be quiescent
/// before it is exported. On failure nothing was written.
pub(super) async fn stop_dind(run: &Run<'_>) -> Result<u64> {
    let dind = run.dind.clone();
    let stopped = run.or_cancel(run.dind().stop(run.backend.root())).await?;
    if stopped.exit_code != 0 {
        bail!(
            "the daemon of the build container ({}) did not shut down cleanly (exit code {}); its last lines:\n{}",
            run.spec.daemon.first().map_or("?", String::as_str),
            stopped.exit_code,
            run.engine.logs_tail(&dind).await
        );
    }
    Ok(stopped.store_used_bytes)
}

/// Measures what the store (and the containerd root) will take in ROOT,
/// with the helper in the dind. Writes nothing.
pub(super) async fn measure(
    run: &Run<'_>,
    prepared: &Prepared,
    only: Option<&[u8]>,
) -> Result<Need> {
    let root = prepared.fs();
    let block_size = blocking(move || Ok(root.open_read()?.inspect(ROOT_NAME)?.block_size)).await?;
    let store = (run.backend.kind(), run.backend.root());
    let dind = run.dind();
    let measured = dind.measure(store, block_size, only);
    let mut need = run.or_cancel(measured).await?;
    // The store in ROOT that the build container started on is removed
    // before the export, which holds all of it again.
    if run.seed.is_some() {
        let (root, path) = (prepared.fs(), run.backend.root());
        let old = blocking(move || {
            let fs = root.open_read()?;
            store::export::measure_fs_tree(&fs, path.as_bytes(), block_size)
        });
        need = need.less(old.await?);
    }
    // The --containerd root (only given with Docker's images).
    let docker = run.backend.kind() == StoreKind::Docker;
    if let (Some(src), true) = (run.cfg.containerd.clone(), docker) {
        need += blocking(move || containerd_need(&src, block_size)).await?;
    }
    Ok(need)
}

/// Grows the image, ROOT's partition and filesystem when `need` does not fit, as
/// --grow allows. On failure the caller must not publish the output: ROOT
/// may be half grown (in place, the disk image may be longer).
pub(super) async fn make_room(
    cfg: &PopulateConfig,
    mut prepared: Prepared,
    need: Need,
) -> Result<(Prepared, Option<disk::GrowReport>)> {
    let (grow, headroom) = (cfg.space.grow, cfg.space.headroom);
    blocking(move || {
        prepared.begin_writing()?;
        let grown = disk::ensure_room(&mut prepared, Some(need), grow, headroom)?;
        Ok((prepared, grown))
    })
    .await
}

/// The private directory of the export socket, or None for an engine on
/// another machine (`local` false: a directory of this machine cannot be
/// mounted into its containers), or when the tests force the attach
/// stream.
pub(super) fn socket_dir(local: bool) -> Result<Option<tempfile::TempDir>> {
    if !local {
        return Ok(None);
    }
    #[cfg(feature = "test-hooks")]
    if crate::hooks::no_export_socket() {
        return Ok(None);
    }
    let dir = tempfile::Builder::new()
        .prefix("flatcar-preload-")
        .tempdir()
        .context("creating a private directory for the export socket")?;
    Ok(Some(dir))
}

/// What [`export_and_write`] did.
pub(super) struct Written {
    pub(super) entries: u64,
    pub(super) bytes: u64,
    pub(super) via: ExportVia,
}

/// Exports the store with the helper in the stopped dind and writes it into ROOT as it
/// streams in; when merging, the backend reconciles what was there with
/// what was written ([`crate::store::Merge`]). On failure or Ctrl-C, ROOT
/// is closed consistently with the entries before the failure written; the
/// caller must not publish the output.
pub(super) async fn export_and_write(
    run: &Run<'_>,
    root: &ext4::Root,
    only: Option<&[u8]>,
) -> Result<Written> {
    let backend = run.backend;
    // One handle for the phase: what a merge must remember is read through
    // it, the store written, the merge finished.
    let (root, cancel, merging) = (root.clone(), run.cancel.clone(), run.cfg.merge);
    // The build container started on the store in ROOT: its export holds
    // all of it, and replaces it.
    let replace = run.seed.is_some();
    let (mut fs, merge) = blocking(move || {
        let mut fs = root.open_write(Some(&cancel))?;
        if replace {
            fs.remove_tree(backend.root())?;
        }
        let merge = match merging {
            true => backend.merge(&fs)?,
            false => None,
        };
        Ok((fs, merge))
    })
    .await?;
    // Chunks of up to 1 MiB: at most 8 wait for the writer, which bounds
    // the memory a fast export takes while ROOT is written (with 64, the
    // peak RSS of ci/bench-scale.sh's 5 GB store varied from 34 to 72 MiB).
    let (tx, mut rx) = mpsc::channel::<Bytes>(8);
    let chunks = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|c| c.map(Ok::<_, std::io::Error>))
    });
    let stream = ReadProgress::new(
        SyncIoBridge::new(StreamReader::new(chunks)),
        Bar::bytes("exporting store", None),
    );
    #[cfg(feature = "test-hooks")]
    let stream = {
        use crate::hooks::pause_after_read;
        let stream = pause_after_read("write", 0, stream, run.cancel.clone());
        pause_after_read("mid-write", 1 << 20, stream, run.cancel.clone())
    };
    let stamp = fs.stamp();
    let mut labeler = run.cfg.selinux.labeler(backend.root().as_bytes())?;
    let writer = tokio::task::spawn_blocking(move || {
        let label = labeler.as_mut().map(|l| l as &mut dyn ext4::Transform);
        let written = fs.write_tar(backend.root().as_bytes(), stream, label);
        (fs, written)
    });
    let socket_dir = run.socket_dir.as_ref().map(|d| d.path());
    let exported = run
        .or_cancel(run.dind().export(
            (backend.kind(), backend.root()),
            socket_dir,
            only,
            stamp,
            tx,
        ))
        .await;
    // The writer stops by itself once the stream ends or is cancelled; the
    // filesystem is closed consistently either way.
    let (fs, written) = writer.await.context("the ext4 writer panicked")?;
    // A stream cut short (the build container killed, the engine gone) is
    // told by what became of the container.
    let helper_ok = exported.as_ref().is_ok_and(|e| e.finished.exit_code == 0);
    let cut = match written.is_ok() && helper_ok {
        true => None,
        false => run.engine.container_state(&run.dind).await,
    }
    .map(|state| format!("the build container {} is {state}", run.dind));
    let stats = blocking(move || {
        let mut fs = fs;
        let done = (|| {
            let told = |e: anyhow::Error| match &cut {
                Some(cut) => e.context(cut.clone()),
                None => e,
            };
            let exported = exported.map_err(told)?;
            let stats = match (written, exported.finished.success("the export helper")) {
                (Ok(stats), Ok(())) => stats,
                // The helper failed: what the writer read was cut short.
                (_, Err(helper)) => {
                    let what = format!("exporting the store {}", backend.root());
                    return Err(told(helper.context(what)));
                }
                (Err(w), Ok(())) => {
                    let what = format!("writing the store {} into ROOT", backend.root());
                    return Err(told(w.context(what)));
                }
            };
            if let Some(merge) = merge {
                merge.finish(&mut fs)?;
            }
            Ok((stats, exported.via))
        })();
        fs.close_after(done)
    })
    .await?;
    let (stats, via) = stats;
    Ok(Written {
        entries: stats.entries,
        bytes: stats.bytes,
        via,
    })
}

/// Writes a containerd root (a directory or a tar) under
/// /var/lib/containerd and returns the entries written. On failure ROOT is
/// consistent with part of it written; the caller must not publish.
pub(super) async fn write_containerd(
    root: ext4::Root,
    src: PathBuf,
    selinux: crate::selinux::Config,
    cancel: CancellationToken,
) -> Result<u64> {
    blocking(move || {
        let md = std::fs::metadata(&src)
            .with_context(|| format!("reading --containerd {}", src.display()))?;
        let target = CONTAINERD_ROOT.as_bytes();
        let mut fs = root.open_write(Some(&cancel))?;
        let mut labeler = selinux.labeler(target)?;
        let label = labeler.as_mut().map(|l| l as &mut dyn ext4::Transform);
        let written = if md.is_dir() {
            let (reader, writer) = std::io::pipe().context("making a pipe")?;
            let dir = src.clone();
            let export = std::thread::spawn(move || store::export::tree(&dir, writer));
            let written = fs.write_tar(target, reader, label);
            export
                .join()
                .map_err(|_| anyhow!("the containerd export panicked"))
                .and_then(|exported| {
                    let stats = written?;
                    exported.with_context(|| {
                        format!("reading the containerd root {}", src.display())
                    })?;
                    Ok(stats)
                })
        } else {
            open_archive(&Input::File(src), true)
                .and_then(|archive| fs.write_tar(target, archive, label))
        };
        Ok(fs.close_after(written)?.entries)
    })
    .await
}

/// What the containerd root will take in an ext4 with `block_size`.
pub(super) fn containerd_need(src: &Path, block_size: u64) -> Result<Need> {
    let md = std::fs::metadata(src)
        .with_context(|| format!("reading --containerd {}", src.display()))?;
    if md.is_dir() {
        store::export::measure_tree(src, block_size)
    } else {
        crate::unpack::measure_archive(src, block_size)
    }
}

/// Verifies the store written into ROOT (see `verify`); fails naming every
/// check that does not hold, so that the output is not published.
pub(super) async fn verify_written(root: ext4::Root) -> Result<Verified> {
    blocking(move || {
        let report = crate::verify::check_root(&root)?;
        if !report.failures.is_empty() {
            let lines: Vec<String> = report.failures.iter().map(|f| f.to_string()).collect();
            bail!(
                "the store written into ROOT does not verify ({} check(s) failed); the output is not kept:\n  {}",
                lines.len(),
                lines.join("\n  ")
            );
        }
        Ok(Verified {
            images: report.images,
            layers: report.layers,
            bytes_hashed: report.bytes_hashed,
        })
    })
    .await
}

/// Re-reads ROOT (its free space and the layers in the store: directories
/// of overlay2 but `l`) and moves the output to its name (converted back
/// to qcow2/vmdk when it came from there). On failure the output is
/// removed; in place, the disk holds the complete store.
pub(super) async fn publish(
    prepared: Prepared,
    backends: Vec<&'static dyn Backend>,
) -> Result<(ext4::FsSummary, u64)> {
    blocking(move || {
        let fs = prepared.fs().open_read()?;
        let mut layers = 0;
        for b in backends {
            layers += b.layers(&fs)?;
        }
        drop(fs);
        Ok((prepared.publish()?, layers))
    })
    .await
}
