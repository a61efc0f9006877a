//! The dockerd of the build container, as this store's way of getting
//! images ([`Daemon`]): its command line, and the requests of the tool it
//! serves there (see
//! [`crate::protocol::StoreOp`]), through the bollard client of
//! `crate::docker::helper`.

use anyhow::{bail, Context, Result};

use super::Docker;
use crate::docker::RegistryOptions;
use crate::fsread::FsRead;
use crate::protocol::{ContainerdVersion, StoreOptions};
use crate::store::{Daemon, DaemonOptions, DaemonSetup, Selection};

use crate::docker::helper;
use crate::protocol::StoreOp;
use crate::source::ImageRef;

impl Daemon for Docker {
    fn socket(&self) -> &'static str {
        crate::docker::INNER_SOCKET
    }

    /// Registries as dockerd's flags, their certificates as certs.d.
    fn setup(&self, opts: &DaemonOptions<'_>) -> Result<DaemonSetup> {
        let argv = [
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
        .chain(opts.registry.daemon_args.iter().cloned())
        .collect();
        let files = opts.registry.certs.clone();
        Ok(DaemonSetup { argv, files })
    }

    /// dockerd mirrors Docker Hub only.
    fn check_refs(&self, refs: &[ImageRef], registry: &RegistryOptions) -> Result<()> {
        registry.check_docker_refs(refs)
    }

    fn kept(&self, kept: &Selection) -> Vec<String> {
        kept.images.iter().map(|i| i.id.clone()).collect()
    }

    fn serve(&self, op: StoreOp, _opts: &StoreOptions) -> Result<()> {
        serve(self.socket(), op)
    }

    /// Any overlay2 store can be added to: what is in it is kept as it is
    /// and reconciled afterwards ([`merge::Before`]).
    fn check_merge(&self, _before: &dyn FsRead, _target: ContainerdVersion) -> Result<()> {
        Ok(())
    }
}

/// Serves `op` with the dockerd on `socket`.
fn serve(socket: &str, op: StoreOp) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match op {
        StoreOp::Ready => runtime.block_on(helper::ready(socket)),
        StoreOp::Pull(p) => {
            let req = helper::PullRequest {
                stall: p.stall(),
                locked: p.locked,
                refs: p.parsed_refs()?,
                jobs: p.jobs,
                platform: p.platform,
                allow_platform_mismatch: p.allow_platform_mismatch,
                secrets: helper::read_secrets()?,
            };
            runtime.block_on(helper::pull_images(socket, &req))
        }
        // docker load takes every platform the archive holds (checked before).
        StoreOp::Load { index, .. } => runtime.block_on(helper::load_images(socket, index)),
        StoreOp::Prune => runtime.block_on(helper::prune_images(socket)),
        StoreOp::Measure { .. } | StoreOp::Export { .. } => {
            bail!("{op:?} is not a request to dockerd")
        }
    }
}
