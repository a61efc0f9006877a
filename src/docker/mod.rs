//! Everything that talks to Docker (bollard): the outer engine that runs the
//! dind container, and the helper side that runs inside it.
//! No bollard type leaves this module.

pub mod auth;
pub mod helper;
pub mod registry;

pub use registry::{RegistryAccess, RegistryOptions};

mod dind;
mod engine;

pub use dind::{Dind, DindNetwork, DindSpec, ExportVia, Seed, StoreMount};
pub use engine::Engine;

/// The inner daemon's only endpoint: a unix socket inside the container.
pub const INNER_SOCKET: &str = "/var/run/docker.sock";

/// Label on every container and volume a run creates.
pub const RUN_LABEL: &str = "org.flatcar-preload.run";

/// The labels of what a run makes (its build containers and volumes): the
/// run's own ([`RUN_LABEL`]) and the user's (`--label`).
#[derive(Debug, Clone)]
pub struct RunLabels {
    pub run_id: String,
    pub extra: Vec<(String, String)>,
}

impl RunLabels {
    fn map(&self) -> std::collections::HashMap<String, String> {
        self.extra
            .iter()
            .cloned()
            .chain([(RUN_LABEL.to_string(), self.run_id.clone())])
            .collect()
    }
}

/// Whether `e` comes of the engine refusing connections (it was stopped
/// or restarted during the run).
pub fn engine_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<bollard::errors::Error>(),
            Some(bollard::errors::Error::HyperLegacyError { err }) if err.is_connect()
        )
    })
}

/// Label of a cache volume (`populate --cache`); its value is the cache's name.
pub const CACHE_LABEL: &str = "org.flatcar-preload.cache";

/// What a command run in a container reads as its standard input.
pub type Input = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// A container could not be made: one of that name exists.
#[derive(Debug)]
pub struct NameInUse(pub String);

impl Finished {
    /// Ok when the command exited with 0, else an error saying that `what`
    /// failed, with its exit code and the tail of its stderr.
    pub fn success(&self, what: &str) -> anyhow::Result<()> {
        if self.exit_code != 0 {
            let said = match self.stderr.trim() {
                "" => String::new(),
                s => format!(": {s}"),
            };
            anyhow::bail!("{what} failed (exit code {}){said}", self.exit_code);
        }
        Ok(())
    }
}

impl std::fmt::Display for NameInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a container named {} exists already", self.0)
    }
}

impl std::error::Error for NameInUse {}

/// Result of a command run to completion in a container.
pub struct Finished {
    pub exit_code: i64,
    pub stderr: String,
}
