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
        Command::Internal(request) => serve(request),
    }
}

/// The stall timeout of a pull request (0: none).
fn stall(seconds: u64) -> Option<std::time::Duration> {
    (seconds > 0).then(|| std::time::Duration::from_secs(seconds))
}

/// The references of a pull request.
fn parse_refs(refs: &[String]) -> Result<Vec<source::ImageRef>> {
    refs.iter().map(|r| source::ImageRef::parse(r)).collect()
}

/// Runs a request of the tool inside its build container (the binary was
/// uploaded there; see `protocol`).
fn serve(request: protocol::Request) -> Result<()> {
    use protocol::Request;
    match request {
        Request::Init { cmd } => docker::inner::dind_init(&cmd),
        Request::Ready {
            socket,
            store: protocol::StoreKind::Docker,
            ..
        } => runtime()?.block_on(docker::inner::ready(&socket)),
        Request::Ready {
            socket,
            store: protocol::StoreKind::Containerd,
            containerd_version,
        } => store::containerd::ctr::ready(&socket, containerd_version),
        Request::CtrPull {
            socket,
            namespace,
            jobs,
            platform,
            allow_platform_mismatch,
            pin,
            hosts_dir,
            stall_seconds,
            refs,
        } => {
            let refs = parse_refs(&refs)?;
            store::containerd::ctr::pull(&store::containerd::ctr::PullRequest {
                stall: stall(stall_seconds),
                socket: &socket,
                namespace: &namespace,
                refs,
                jobs,
                platform,
                allow_platform_mismatch,
                pin,
                hosts_dir: &hosts_dir,
                secrets: docker::inner::read_secrets()?,
            })
        }
        Request::CtrImport {
            socket,
            namespace,
            platform,
            pin,
            index,
        } => store::containerd::ctr::import(&store::containerd::ctr::ImportRequest {
            socket: &socket,
            namespace: &namespace,
            platform,
            pin,
            index,
        }),
        Request::Pull {
            socket,
            jobs,
            platform,
            allow_platform_mismatch,
            stall_seconds,
            locked,
            refs,
        } => {
            let refs = parse_refs(&refs)?;
            let req = docker::inner::PullRequest {
                stall: stall(stall_seconds),
                locked,
                refs,
                jobs,
                platform,
                allow_platform_mismatch,
                secrets: docker::inner::read_secrets()?,
            };
            runtime()?.block_on(docker::inner::pull_images(&socket, &req))
        }
        Request::Load { socket, index } => {
            runtime()?.block_on(docker::inner::load_images(&socket, index))
        }
        Request::CtrPrune { socket, namespace } => {
            store::containerd::ctr::prune(&socket, &namespace)
        }
        Request::Prune { socket } => runtime()?.block_on(docker::inner::prune_images(&socket)),
        Request::Measure {
            store,
            root,
            block_size,
            selection,
        } => {
            let only = selection.then(store::read_selection_stdin).transpose()?;
            let need = store::backend(store).measure(&root, only.as_ref(), block_size)?;
            serde_json::to_writer(std::io::stdout().lock(), &need)
                .context("writing the measurements to standard output")
        }
        Request::Export {
            store,
            root,
            socket,
            selection,
            stamp,
        } => {
            let only = selection.then(store::read_selection_stdin).transpose()?;
            store::export_to(
                store::backend(store),
                &root,
                only.as_ref(),
                stamp,
                socket.as_deref(),
            )
        }
        Request::Stop { root } => {
            docker::inner::stop_dockerd(&root, std::time::Duration::from_secs(60))
        }
    }
}
