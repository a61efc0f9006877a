//! flatcar-preload: writes files and Docker's image store into the ROOT
//! partition of a Flatcar Container Linux disk image, without booting it,
//! without root and without mounting anything.
#![deny(unsafe_code)]

pub mod cli;
mod command;
mod compress;
mod digest;
pub mod disk;
mod docker;
pub mod ext4;
mod fsread;
#[cfg(feature = "test-hooks")]
mod hooks;
mod inspect;
mod platform;
mod populate;
mod progress;
mod source;
mod store;
mod tar;
mod unpack;
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
        Command::Unpack(args) => unpack::run(&args.into_config(), &cancel),
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
        Command::InnerPull(args) => {
            let refs = args
                .refs
                .iter()
                .map(|r| source::ImageRef::parse(r))
                .collect::<Result<Vec<_>>>()?;
            let req = docker::inner::PullRequest {
                refs,
                jobs: args.jobs,
                platform: args.platform,
                allow_platform_mismatch: args.allow_platform_mismatch,
                secrets: docker::inner::read_secrets()?,
            };
            runtime()?.block_on(docker::inner::pull_images(&args.socket, &req))
        }
        Command::Verify(a) => verify::run(&a.disk, a.json),
        Command::Inspect(a) => inspect::run(&a.disk, a.json),
        Command::Cache(c) => runtime()?.block_on(async {
            match c {
                cli::CacheCommand::Ls => populate::cache::list().await,
                cli::CacheCommand::Rm { names } => populate::cache::remove(&names).await,
            }
        }),
        Command::InnerReady { socket } => runtime()?.block_on(docker::inner::ready(&socket)),
        Command::InnerPrune { socket } => runtime()?.block_on(docker::inner::prune_images(&socket)),
        Command::InnerLoad { socket, index } => {
            runtime()?.block_on(docker::inner::load_images(&socket, index))
        }
        Command::InnerMeasure {
            root,
            block_size,
            only,
        } => {
            let only = only.as_deref().map(store::read_selection).transpose()?;
            let need = store::measure_docker_store(&root, only.as_ref(), block_size)?;
            serde_json::to_writer(std::io::stdout().lock(), &need)
                .context("writing the measurements to standard output")?;
            Ok(())
        }
        Command::InnerExport { root, socket, only } => {
            let only = only.as_deref().map(store::read_selection).transpose()?;
            store::export_to(&root, only.as_ref(), socket.as_deref())
        }
        Command::InnerInit { cmd } => docker::inner::dind_init(&cmd),
        Command::InnerStop { root } => {
            docker::inner::stop_dockerd(&root, std::time::Duration::from_secs(60))
        }
    }
}
