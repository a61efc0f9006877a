//! The dockerd of the build container, as this store's way of getting
//! images: the requests of the tool it serves there (see
//! [`crate::protocol::StoreOp`]), through the bollard client of
//! `crate::docker::helper`.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::docker::helper;
use crate::protocol::StoreOp;
use crate::source::ImageRef;

/// Serves `op` with the dockerd on `socket`.
pub(super) fn serve(socket: &str, op: StoreOp) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match op {
        StoreOp::Ready => runtime.block_on(helper::ready(socket)),
        StoreOp::Pull(p) => {
            let req = helper::PullRequest {
                stall: (p.stall_seconds > 0).then(|| Duration::from_secs(p.stall_seconds)),
                locked: p.locked,
                refs: p
                    .refs
                    .iter()
                    .map(|r| ImageRef::parse(r))
                    .collect::<Result<_>>()?,
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
