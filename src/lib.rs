//! flatcar-preload: bakes container images into a Flatcar Container Linux
//! disk image, without booting it, without root and without mounting
//! anything: the image stores (`store`: Docker's overlay2, containerd's,
//! each a backend) into partition ROOT, and the rest of a node's image
//! (`node`: Ignition and kernel arguments on OEM, files on the ESP, files,
//! units and system extensions in ROOT). `docs/architecture.md` maps the
//! rooms.
#![deny(unsafe_code)]

pub mod cli;
mod command;
mod compress;
mod digest;
pub mod disk;
mod docker;
mod fsread;
#[cfg(feature = "test-hooks")]
pub mod fuzzing;
#[cfg(feature = "test-hooks")]
mod hooks;
mod hostfs;
mod inspect;
mod node;
mod platform;
mod populate;
mod progress;
mod protocol;
mod registry;
#[cfg(feature = "test-hooks")]
pub use registry::hooks as registry_hooks;
mod selinux;
mod source;
mod store;
mod tar;
#[cfg(test)]
mod testing;
mod unpack;
pub mod unpigz;
mod verify;

use std::io::Write;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs the parsed command line until done or `cancel` is cancelled (then
/// each command stops at its next safe point and cleans up).
pub fn run(cli: Cli, cancel: CancellationToken) -> Result<()> {
    match cli.command {
        Command::Unpack(args) => unpack::run(&args.into_config()?, &cancel),
        Command::Populate(args) => {
            let json = args.json;
            let cfg = args.into_config()?;
            let summary = runtime()?.block_on(populate::run(&cfg, cancel))?;
            summary.print();
            if json {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer_pretty(&mut out, &summary)
                    .map_err(std::io::Error::from)
                    .and_then(|()| writeln!(out))
                    .context("writing the summary to standard output")?;
            }
            Ok(())
        }
        Command::Verify(a) => verify::run(&a.check.disk, a.check.json, a.air_gapped),
        Command::Inspect(a) => inspect::run(&a.disk, a.json),
        Command::Cache(c) => runtime()?.block_on(async {
            match c {
                cli::CacheCommand::Ls => populate::cache::list().await,
                cli::CacheCommand::Rm { names } => populate::cache::remove(&names).await,
            }
        }),
        Command::Internal(internal) => serve(internal.request),
    }
}

/// Runs a request of the tool inside its build container (the binary was
/// uploaded there; see `protocol`): the container's init and stop, and
/// what its stores' backends serve.
fn serve(request: protocol::Request) -> Result<()> {
    use protocol::Request;
    match request {
        Request::Init { cmd } => docker::helper::dind_init(&cmd),
        Request::Store(request) => store::serve(request),
        Request::Stop { root } => {
            docker::helper::stop_dockerd(&root, std::time::Duration::from_secs(60))
        }
    }
}
