//! `flatcar-preload populate`: gets the listed images of each store
//! (Docker's, containerd's: each a `store::Backend`) into a build
//! container's daemon and streams the store into ROOT, in one stream per
//! store: registry -> build container (store in memory, on a volume or in
//! a cache) -> stop -> export helper (PAX tar, all xattrs) -> socket or
//! attach stream -> tar reader -> ext4 writer -> OUTPUT; then the node's
//! files (OEM, ESP, ROOT), verify, publish.
//!
//! [`run`] and [`populate`] are the whole path, phase by phase; each phase
//! is a function of a room named for its job that says what it leaves
//! behind when it fails: `checks` (before anything is written), `dind`
//! (the way images come in: the engine checked, pull, stop and measure,
//! export into ROOT, clean-up), `output` (the image made, grown, verified,
//! published). Phases that
//! do not need each other run at the same time: the output copy with the
//! pull, measuring and growing with stopping the daemons.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::docker::Engine;

pub mod cache;
mod checks;
mod config;
mod dind;
mod direct;
pub mod lock;
mod output;
mod report;
mod worker;

#[cfg(test)]
mod tests;

use checks::{check_local_inputs, Local};
pub use config::{EngineChoice, PopulateConfig, StoreChoice, StoreImages};
use dind::{export_and_write, plan_store, pull_beside_copy, stop_beside_measure, Pulled, StoreRun};
use output::{hash_output, publish, verify_written, write_containerd};

pub use report::Summary;
use report::{Clock, Phase, StoreReport};

/// Runs the command; whatever happens, removes the containers and volumes
/// it created (unless --keep-dind).
pub async fn run(cfg: &PopulateConfig, cancel: CancellationToken) -> Result<Summary> {
    let start = Instant::now();
    match cfg.engine {
        EngineChoice::Direct => direct::check_scope(cfg)?,
        EngineChoice::Dind if cfg.blob_cache.is_some() => bail!(
            "--blob-cache is the blob cache of --engine direct; with --engine dind, --cache NAME keeps the build container's store between runs"
        ),
        EngineChoice::Dind => {}
    }
    // Local inputs first: a wrong path, list, credential or certificate
    // fails before any engine is contacted.
    let local = {
        // Archives are read whole (every blob hashed): not on the runtime's
        // thread.
        let cfg = cfg.clone();
        worker::blocking(move || check_local_inputs(&cfg)).await?
    };
    let mut summary = match cfg.engine {
        EngineChoice::Dind => run_dind(cfg, local, start, cancel).await?,
        EngineChoice::Direct => {
            let cancel = cancel.child_token();
            populate_direct(cfg, local, start, &cancel).await?
        }
    };
    if let Some(lock::LockMode::Write(path)) = &cfg.lock {
        lock::write(path, &lock::of(&summary.images)).with_context(|| {
            format!("{} was written, but its lock file was not", summary.output)
        })?;
    }
    summary.seconds.total = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// The way in through build containers: each store's daemon pulls, the
/// tool exports its store; the containers and volumes are removed
/// whatever happens.
async fn run_dind(
    cfg: &PopulateConfig,
    local: Local,
    start: Instant,
    cancel: CancellationToken,
) -> Result<Summary> {
    let Local {
        access,
        platform,
        mut prepared,
        seed,
        node,
        node_facts,
        disk,
    } = local;
    let engine = Engine::connect().await?;
    prepared = dind::check_engine(&engine, cfg, &platform, prepared, &cancel).await?;
    let res = Default::default();
    // A child: cancelling it (a phase failed) leaves the caller's alone.
    let cancel = cancel.child_token();
    let places = (&engine, &access, &platform, &res);
    let runs = dind::store_runs(cfg, places, prepared, seed, &cancel)?;
    let result = populate(&runs, &disk, (&node, node_facts), start).await;
    drop(runs);
    dind::clean_up(&engine, res.into_inner(), cfg.keep_dind).await;
    result.map_err(|e| engine.explain_gone(e))
}

/// The way in with no daemon (--engine direct): the tool's registry
/// client and store writer. Nothing to clean up but the output, which a
/// failure drops.
async fn populate_direct(
    cfg: &PopulateConfig,
    local: Local,
    origin: Instant,
    cancel: &CancellationToken,
) -> Result<Summary> {
    let Local {
        platform,
        node,
        node_facts,
        disk,
        ..
    } = local;
    let clock = Clock::new(origin);
    let (pulled, prepared) =
        direct::pull_beside_copy(cfg, &disk, &platform.target, &clock, cancel).await?;
    let images = pulled.images();
    if let Some(lock::LockMode::Locked(path)) = &cfg.lock {
        lock::check(&images, &cfg.pinned, path)?;
    }
    let (facts, node_need) = node_need(cfg, &node, node_facts, &prepared, &platform.target).await?;
    let (store, prepared, grown, need) =
        direct::measure_and_write(cfg, &pulled, prepared, node_need, &clock, cancel).await?;
    let written = Written {
        stores: vec![store],
        images,
        prepared,
        grown,
        need,
        platform,
    };
    finish(cfg, written, (&node, facts), &clock, cancel).await
}

/// What the node's files will take in ROOT (and the facts of the disk
/// they were checked against), once the output is made.
async fn node_need(
    cfg: &PopulateConfig,
    node: &crate::node::Plan,
    facts: Option<crate::node::Facts>,
    prepared: &crate::disk::Prepared,
    target: &crate::platform::Platform,
) -> Result<(crate::node::Facts, crate::disk::ext4::Need)> {
    let (node, image, root) = (node.clone(), prepared.image.clone(), prepared.fs());
    let (layout, target) = (prepared.layout.clone(), target.clone());
    let containerd = cfg.containerd.clone();
    worker::blocking(move || {
        let facts = match facts {
            Some(facts) => facts,
            None => crate::node::check_disk(&node, &image, &layout, &target)?,
        };
        let block_size = root
            .open_read()?
            .inspect(crate::disk::ROOT_NAME)?
            .block_size;
        let mut need = crate::node::root_need(&node, &facts, block_size);
        // The --containerd root.
        if let Some(src) = &containerd {
            need += output::containerd_need(src, block_size)?;
        }
        Ok((facts, need))
    })
    .await
}

/// The stores written into the output, whatever the way in.
struct Written {
    stores: Vec<StoreReport>,
    images: Vec<report::PulledImage>,
    prepared: crate::disk::Prepared,
    grown: Option<crate::disk::GrowReport>,
    need: crate::disk::ext4::Need,
    platform: report::TargetPlatform,
}

/// The phases, top to bottom. Nothing is written before the output is
/// made; a failure after that drops the output (removed) or, in place,
/// leaves ROOT consistent with part of the store in it.
async fn populate(
    runs: &[StoreRun<'_>],
    disk: &crate::disk::Disk,
    (node, facts): (&crate::node::Plan, Option<crate::node::Facts>),
    origin: Instant,
) -> Result<Summary> {
    let first = runs.first().context("no image store to write")?;
    let (cfg, cancel) = (first.cfg, &first.cancel);
    let clock = Clock::new(origin);
    let mut caps = vec![];
    for run in runs {
        caps.push(plan_store(run).await?);
    }
    let (pulled, prepared) = pull_beside_copy(runs, disk, &clock, &caps).await?;
    if let Some(lock::LockMode::Locked(path)) = &cfg.lock {
        for p in &pulled {
            lock::check(&p.images, &cfg.pinned, path)?;
        }
    }
    let only: Vec<Option<&[u8]>> = pulled.iter().map(|p| p.selection.as_deref()).collect();
    // The node's files checked against the disk (a compressed input only
    // now, once converted), before anything is written.
    let (facts, node_need) = node_need(cfg, node, facts, &prepared, &first.platform.target).await?;
    let (used, (prepared, grown), need) =
        stop_beside_measure(runs, &clock, prepared, &only, node_need).await?;
    let root = prepared.fs();
    let mut images = vec![];
    let mut stores = vec![];
    for ((run, pulled), used) in runs.iter().zip(pulled).zip(used) {
        let Pulled {
            images: got,
            store: mut pulled,
            selection,
        } = pulled;
        pulled.used_bytes = used;
        // Explained while the output still takes its room.
        let written = clock
            .time(
                Phase::ExportAndWrite,
                export_and_write(run, &root, selection.as_deref()),
            )
            .await
            .map_err(|e| crate::hostfs::explain_full(e, &root.image))?;
        stores.push(StoreReport {
            store: run.backend.name(),
            root: run.backend.root(),
            images: got.len(),
            layers: 0,
            entries_written: written.entries,
            bytes_written: written.bytes,
            export_via: written.via,
            pulled,
        });
        images.extend(got);
    }
    let written = Written {
        stores,
        images,
        prepared,
        grown,
        need,
        platform: first.platform.clone(),
    };
    finish(cfg, written, (node, facts), &clock, cancel).await
}

/// The phases after the stores, whatever the way in: the --containerd
/// root, the node's files, verify, publish, the hash and the summary.
async fn finish(
    cfg: &PopulateConfig,
    written: Written,
    (node, facts): (&crate::node::Plan, crate::node::Facts),
    clock: &Clock,
    cancel: &CancellationToken,
) -> Result<Summary> {
    let Written {
        mut stores,
        images,
        prepared,
        grown,
        need,
        platform,
    } = written;
    let root = prepared.fs();
    let containerd_entries = match &cfg.containerd {
        Some(src) => {
            let job = write_containerd(
                root.clone(),
                src.clone(),
                cfg.selinux.clone(),
                cancel.clone(),
            );
            clock
                .time(Phase::Containerd, job)
                .await
                .map_err(|e| crate::hostfs::explain_full(e, &root.image))?
        }
        None => 0,
    };
    let node_report = {
        let (node, image, fs) = (node.clone(), prepared.image.clone(), root.clone());
        let selinux = cfg.selinux.clone();
        let job =
            worker::blocking(move || crate::node::apply(&node, &facts, &image, &fs, &selinux));
        clock
            .time(Phase::Node, job)
            .await
            .map_err(|e| crate::hostfs::explain_full(e, &root.image))?
    };
    let verified = match cfg.verify {
        true => Some(
            clock
                .time(Phase::Verify, verify_written(root.clone()))
                .await?,
        ),
        false => None,
    };
    let backends: Vec<_> = cfg.stores.iter().map(|s| s.backend).collect();
    let (fs, layers) = publish(prepared, backends).await?;
    for (store, layers) in stores.iter_mut().zip(layers) {
        store.layers = layers;
    }
    let output = cfg.output.path().unwrap_or(&cfg.disk).to_path_buf();
    let output_sha256 = match cfg.sha256 {
        true => Some(worker::blocking(move || hash_output(&output)).await?),
        false => None,
    };
    Ok(Summary {
        images,
        layers: stores.iter().map(|s| s.layers).sum(),
        entries_written: stores.iter().map(|s| s.entries_written).sum(),
        bytes_written: stores.iter().map(|s| s.bytes_written).sum(),
        containerd_entries,
        root_free_bytes: fs.free_bytes(),
        root_size_bytes: fs.size_bytes(),
        grown,
        needed_blocks: need.blocks,
        seconds: clock.phases(),
        output: cfg.output.path().unwrap_or(&cfg.disk).display().to_string(),
        export_via: stores.first().context("no store was exported")?.export_via,
        stores,
        platform,
        verified,
        output_sha256,
        node: node_report,
    })
}
