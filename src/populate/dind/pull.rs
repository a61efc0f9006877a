//! Getting the images into the build containers' daemons while the output
//! is made beside them: the build container started (its store in memory,
//! on a volume or in a cache), the images pulled and loaded.

use std::cell::Cell;

use anyhow::{bail, Context, Result};
use tokio_util::io::SyncIoBridge;

use crate::disk::ext4::{self};
use crate::disk::{self, Prepared};
use crate::docker::{NameInUse, Seed, StoreMount};
use crate::progress::{Bar, WriteProgress};
use crate::store;

use super::cached;
use super::images::{self, OutOfSpace};
use super::store_run::StoreRun;
use crate::populate::cache;
use crate::populate::output::make_output;
use crate::populate::report::*;

/// What [`pull_store`] got.
pub(crate) struct Pulled {
    pub(crate) images: Vec<PulledImage>,
    pub(crate) store: PullPlace,
    /// With --cache: the images of this run (a JSON store selection), the
    /// only ones exported from a store that may hold others.
    pub(crate) selection: Option<Vec<u8>>,
}

/// Pulls (see [`pull_store`]) and makes the output (see [`make_output`])
/// at the same time: neither needs the other. The output is only started
/// once the registries have answered for every image, so that a run that
/// cannot pull (a wrong password, an untrusted certificate, another
/// platform) writes nothing. The first to fail stops the other, and its
/// error is returned.
pub(crate) async fn pull_beside_copy(
    runs: &[StoreRun<'_>],
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
pub(crate) async fn pull_store(
    run: &StoreRun<'_>,
    clock: &Clock,
    memory_cap: Option<u64>,
) -> Result<Pulled> {
    if let Some(name) = run.cfg.cache.clone() {
        let volume = cache::volume_name(&name, run.backend);
        run.engine.ensure_cache_volume(&volume, &name).await?;
        clock
            .time(Phase::Start, start_dind(run, &StoreMount::Volume(volume)))
            .await?;
        let images = clock.time(Phase::Pull, images::acquire(run)).await?;
        // containerd's store is exported whole (its metadata database holds
        // every image): the images of other runs leave the cache first.
        let whole = !run.backend.exports_part();
        if run.cfg.cache_prune || whole {
            cached::prune(run, &images).await?;
        }
        let selection = match whole {
            true => None,
            false => Some(cached::selection(&images)?),
        };
        let store = PullPlace {
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
                let store = PullPlace {
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
    let store = PullPlace {
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
pub(crate) async fn start_dind(run: &StoreRun<'_>, store: &StoreMount) -> Result<()> {
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
