//! The way images come in today: each store's daemon in a build container
//! (`docker:dind`, or one with containerd), driven through the Docker API.
//! This room is the seam between `populate` and how images are got: the
//! job calls [`check_engine`], [`store_runs`], [`pull_beside_copy`],
//! [`stop_beside_measure`], [`export_and_write`] and [`clean_up`], and
//! knows nothing of containers, volumes or helpers; a way in without a
//! daemon is a sibling room offering the same calls. What a store's daemon
//! is (its command line, socket, requests) is the store backend's
//! (`store::Backend::daemon`, a `store::Daemon`).

use std::cell::RefCell;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::disk::ext4;
use crate::docker::{DindSpec, Engine, RegistryAccess, RunLabels};
use crate::populate::cache;
use crate::populate::checks::Checked;
use crate::populate::config::PopulateConfig;
use crate::populate::report::TargetPlatform;
use crate::protocol::{StoreOp, StoreRef};
use crate::store;

mod cached;
mod check;
mod export;
mod images;
mod memory;
mod pull;
mod store_run;

pub(crate) use check::check_engine;
pub(crate) use export::{export_and_write, stop_beside_measure};
pub(crate) use memory::plan_store;
pub(crate) use pull::{pull_beside_copy, Pulled};
pub(crate) use store_run::{Resources, StoreRun};

/// What the runs of one `populate` share, made by its caller.
pub(crate) type Places<'a> = (
    &'a Engine,
    &'a RegistryAccess,
    &'a TargetPlatform,
    &'a RefCell<Resources>,
);

/// One [`StoreRun`] per store of `cfg`, with its build container's spec;
/// `prepared` holds what the checks learnt of each image, store by store.
pub(crate) fn store_runs<'a>(
    cfg: &'a PopulateConfig,
    (engine, access, platform, res): Places<'a>,
    prepared: Vec<Checked>,
    seed: Option<ext4::Root>,
    cancel: &CancellationToken,
) -> Result<Vec<StoreRun<'a>>> {
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() % 100_000)
    );
    res.borrow_mut().run_id = run_id.clone();
    let mut runs = vec![];
    let mut prepared = prepared.into_iter();
    for s in &cfg.stores {
        // The checks gave one entry per image, in the order of all_lines.
        let prepared: Vec<_> = prepared.by_ref().take(s.lines.len()).collect();
        let (lines, backend) = (&s.lines[..], s.backend);
        let dind = match &cfg.cache {
            Some(c) => cache::dind_name(c, backend),
            None => format!("flatcar-preload-{run_id}-{}dind", backend.tag()),
        };
        let opts = store::DaemonOptions {
            downloads: cfg.jobs,
            registry: access,
        };
        let daemon = backend
            .daemon()
            .with_context(|| format!("no daemon can write the store {}", backend.name()))?;
        let setup = daemon.setup(&opts)?;
        let store = StoreRef {
            store: backend.name().into(),
            options: cfg.store_options.clone(),
        };
        let spec = DindSpec {
            image: s.build_image.clone(),
            network: cfg.dind_network.clone(),
            privileged: cfg.privileged,
            daemon: setup.argv,
            ready: store.request(StoreOp::Ready),
            store_root: backend.root().into(),
            files: setup.files,
            labels: RunLabels {
                run_id: run_id.clone(),
                extra: cfg.labels.clone(),
            },
        };
        runs.push(StoreRun {
            cfg,
            backend,
            daemon,
            store,
            engine,
            cancel: cancel.clone(),
            spec,
            res,
            socket_dir: export::socket_dir(engine.is_local())?,
            access,
            platform,
            manifests_read: tokio::sync::watch::Sender::new(false),
            lines,
            names: lines.iter().map(|l| l.source.to_string()).collect(),
            prepared,
            dind,
            seed: seed.clone().filter(|_| !backend.exports_part()),
        });
    }
    Ok(runs)
}

/// Removes the containers and volumes the run made (or names them, with
/// `keep`: --keep-dind). What cannot be removed (the engine went away) is
/// named, with the commands that remove it once the engine is back.
pub(crate) async fn clean_up(engine: &Engine, res: Resources, keep: bool) {
    if keep {
        eprintln!(
            "keeping containers {} and volumes {} (--keep-dind)",
            res.containers.join(", "),
            res.volumes.join(", ")
        );
        return;
    }
    let mut left = vec![];
    let mut warn = |e: anyhow::Error, remove: String| {
        if !crate::docker::engine_gone(&e) {
            eprintln!("warning: {e:#}");
        }
        left.push(remove);
    };
    for c in &res.containers {
        if let Err(e) = engine.remove_container(c).await {
            warn(e, format!("docker rm -f {c}"));
        }
    }
    for v in &res.volumes {
        if let Err(e) = engine.remove_volume(v).await {
            warn(e, format!("docker volume rm {v}"));
        }
    }
    if !left.is_empty() {
        eprintln!(
            "warning: this run's containers and volumes (label {}={}) may be left on the engine; remove them with: {}",
            crate::docker::RUN_LABEL,
            res.run_id,
            left.join("; ")
        );
    }
}
