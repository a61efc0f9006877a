//! `flatcar-preload populate`: pull the listed images in a dind container
//! and stream its store into ROOT, in one stream:
//! registry -> dind (overlay2, store in memory or on a volume) -> stop ->
//! export helper in the dind (PAX tar, all xattrs) -> socket or attach
//! stream -> tar reader -> ext4 writer -> OUTPUT.
//!
//! [`populate`] is the list of the phases, each a function below that says
//! what it leaves behind when it fails. Phases that do not need each other
//! run at the same time: the output copy with the pull, measuring and
//! growing with stopping the inner daemon.

use std::time::Instant;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::docker::{DindSpec, Engine};
use crate::protocol::StoreKind;
use crate::store;

pub mod cache;
mod config;
mod context;
mod images;
mod phases;
mod plan;
mod report;

pub use config::{PopulateConfig, StoreChoice};
use context::Run;
use phases::{
    check_engine, check_local_inputs, export_and_write, publish, pull_beside_copy, socket_dir,
    stop_beside_measure, verify_written, write_containerd, Local, Pulled,
};
use plan::plan_store;

pub use report::Summary;
use report::{Clock, Phase};

/// Runs the command; whatever happens, removes the containers and volumes
/// it created (unless --keep-dind).
pub async fn run(cfg: &PopulateConfig, cancel: CancellationToken) -> Result<Summary> {
    let start = Instant::now();
    // Local inputs first: a wrong path, list, credential or certificate
    // fails before any engine is contacted.
    let Local {
        access,
        platform,
        prepared,
    } = {
        // Archives are read whole (every blob hashed): not on the runtime's
        // thread.
        let cfg = cfg.clone();
        context::blocking(move || check_local_inputs(&cfg)).await?
    };
    let engine = Engine::connect().await?;
    let prepared = check_engine(&engine, cfg, &platform, prepared, &cancel).await?;
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() % 100_000)
    );
    let backend = store::backend(StoreKind::Docker);
    let spec = DindSpec {
        image: cfg.dind_image.clone(),
        network: cfg.dind_network.clone(),
        privileged: cfg.privileged,
        daemon: backend.daemon(&store::DaemonOptions {
            socket: crate::docker::INNER_SOCKET,
            downloads: cfg.jobs,
            extra: &access.daemon_args,
        }),
        store_root: backend.root().into(),
        files: access.certs.clone(),
        run_id: run_id.clone(),
    };
    let run = Run {
        cfg,
        backend,
        engine,
        // A child: cancelling it (a phase failed) leaves the caller's alone.
        cancel: cancel.child_token(),
        spec,
        res: Default::default(),
        socket_dir: socket_dir()?,
        access,
        platform,
        manifests_read: tokio::sync::watch::Sender::new(false),
        names: cfg.images.iter().map(|l| l.source.to_string()).collect(),
        prepared,
        dind: match &cfg.cache {
            Some(c) => cache::dind_name(c),
            None => format!("flatcar-preload-{run_id}-dind"),
        },
    };
    let result = populate(&run, start).await;
    let Run { engine, res, .. } = run;
    let res = res.into_inner();
    if cfg.keep_dind {
        eprintln!(
            "keeping containers {} and volumes {} (--keep-dind)",
            res.containers.join(", "),
            res.volumes.join(", ")
        );
    } else {
        for c in &res.containers {
            if let Err(e) = engine.remove_container(c).await {
                eprintln!("warning: {e:#}");
            }
        }
        for v in &res.volumes {
            if let Err(e) = engine.remove_volume(v).await {
                eprintln!("warning: {e:#}");
            }
        }
    }
    let mut summary = result?;
    summary.seconds.total = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// The phases, top to bottom. Nothing is written before the output is
/// made; a failure after that drops the output (removed) or, in place,
/// leaves ROOT consistent with part of the store in it.
async fn populate(run: &Run<'_>, origin: Instant) -> Result<Summary> {
    let cfg = run.cfg;
    let clock = Clock::new(origin);
    let memory_cap = plan_store(run).await?;
    let (pulled, prepared) = pull_beside_copy(run, &clock, memory_cap).await?;
    let only = pulled.selection.as_deref();
    let (used, (prepared, grown), need) = stop_beside_measure(run, &clock, prepared, only).await?;
    let Pulled {
        images,
        mut store,
        selection,
    } = pulled;
    store.used_bytes = used;
    let root = prepared.fs();
    let written = clock
        .time(
            Phase::ExportAndWrite,
            export_and_write(run, &root, selection.as_deref()),
        )
        .await?;
    let containerd_entries = match &cfg.containerd {
        Some(src) => {
            let job = write_containerd(root.clone(), src.clone(), run.cancel.clone());
            clock.time(Phase::Containerd, job).await?
        }
        None => 0,
    };
    let verified = match cfg.verify {
        true => Some(
            clock
                .time(Phase::Verify, verify_written(root.clone()))
                .await?,
        ),
        false => None,
    };
    let (fs, layers) = publish(prepared, run.backend).await?;
    Ok(Summary {
        images,
        layers,
        entries_written: written.entries,
        bytes_written: written.bytes,
        containerd_entries,
        root_free_bytes: fs.free_bytes(),
        root_size_bytes: fs.size_bytes(),
        grown,
        needed_blocks: need.blocks,
        seconds: clock.phases(),
        output: cfg.output.path().unwrap_or(&cfg.disk).display().to_string(),
        export_via: written.via,
        store,
        platform: run.platform.clone(),
        verified,
    })
}
