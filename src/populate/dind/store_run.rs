//! One store of a `populate` run ([`StoreRun`]): its backend, engine,
//! names and the choices made before the phases start, read by every
//! phase, and what the run created (removed at its end).

use std::cell::RefCell;
use std::future::Future;

use anyhow::{anyhow, Result};
use tokio_util::sync::CancellationToken;

use crate::docker::{Dind, DindSpec, Engine, RegistryAccess};

use crate::protocol::StoreRef;
use crate::source::Listed;
use crate::store::{Backend, Daemon};

use crate::populate::checks::Checked;
use crate::populate::config::PopulateConfig;
use crate::populate::report::TargetPlatform;

/// Containers and volumes a run created, removed at the end.
#[derive(Default)]
pub(crate) struct Resources {
    /// The run's ID, in the label of everything it made.
    pub(crate) run_id: String,
    pub(crate) containers: Vec<String>,
    pub(crate) volumes: Vec<String>,
}

/// One store of the run: what the phases read (settled before they
/// start), and what the run created.
pub(crate) struct StoreRun<'a> {
    pub(crate) cfg: &'a PopulateConfig,
    /// The store written.
    pub(crate) backend: &'static dyn Backend,
    /// The daemon that writes it in the build container.
    pub(crate) daemon: &'static dyn Daemon,
    /// That store, as the helpers' requests name it.
    pub(crate) store: StoreRef,
    pub(crate) engine: &'a Engine,
    /// Cancelled on Ctrl-C, and when one of two phases that run side by
    /// side fails (the other stops).
    pub(crate) cancel: CancellationToken,
    pub(crate) spec: DindSpec,
    /// What the run created: the only state the phases change.
    pub(crate) res: &'a RefCell<Resources>,
    /// Credentials and certificates for the pull.
    pub(crate) access: &'a RegistryAccess,
    /// Set once the pull helper has read the manifest of every image.
    pub(crate) manifests_read: tokio::sync::watch::Sender<bool>,
    /// The sources of this store's images.
    pub(crate) lines: &'a [Listed],
    /// Each source as text, for progress and messages.
    pub(crate) names: Vec<String>,
    /// Per source, what the checks learnt (archives, the engine's images).
    pub(crate) prepared: Vec<Checked>,
    pub(crate) platform: &'a TargetPlatform,
    /// The dind container's name (with --cache, the cache's: only one run
    /// at a time may use it).
    pub(crate) dind: String,
    /// The private directory of the export socket (bind-mounted into the
    /// dind); None forces the attach stream.
    pub(crate) socket_dir: Option<tempfile::TempDir>,
    /// ROOT of the input when the daemon starts on the store there (a
    /// `--merge` over a store written whole).
    pub(crate) seed: Option<crate::disk::ext4::Root>,
}

impl StoreRun<'_> {
    /// A name for a container or volume of this run.
    pub(crate) fn name(&self, what: &str) -> String {
        let (run, tag) = (&self.spec.labels.run_id, self.backend.tag());
        format!("flatcar-preload-{run}-{tag}{what}")
    }

    /// The build container of the run.
    pub(crate) fn dind(&self) -> Dind<'_> {
        self.engine.dind(&self.dind)
    }

    /// Records container `name` for removal at the end of the run.
    pub(crate) fn created_container(&self, name: &str) {
        self.res.borrow_mut().containers.push(name.to_string());
    }

    /// Records volume `name` for removal at the end of the run.
    pub(crate) fn created_volume(&self, name: &str) {
        self.res.borrow_mut().volumes.push(name.to_string());
    }

    /// Container `name` was removed already.
    pub(crate) fn removed_container(&self, name: &str) {
        self.res.borrow_mut().containers.retain(|c| c != name);
    }

    /// Awaits `fut` unless the run is cancelled first.
    pub(crate) async fn or_cancel<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        self.cancel
            .run_until_cancelled(fut)
            .await
            .unwrap_or_else(|| Err(anyhow!("interrupted")))
    }
}
