use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use flatcar_preload::cli::{Cli, Command};
use flatcar_preload::docker::{self, inner, refs::ImageRef};
use flatcar_preload::{populate, store, unpack};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli, cancel: Arc<AtomicBool>) -> Result<()> {
    match cli.command {
        Command::Unpack(args) => unpack::run(&args.into_config(), &cancel),
        Command::Populate(args) => {
            let json = args.json;
            let cfg = args.into_config()?;
            let summary = runtime()?.block_on(populate::run(&cfg, cancel))?;
            populate::print_summary(&summary);
            if json {
                let mut out = std::io::stdout().lock();
                serde_json::to_writer_pretty(&mut out, &summary)?;
                writeln!(out)?;
            }
            Ok(())
        }
        Command::InnerPull(args) => {
            let refs = args
                .refs
                .iter()
                .map(|r| ImageRef::parse(r))
                .collect::<Result<Vec<_>>>()?;
            runtime()?.block_on(inner::pull_images(&args.socket, &refs, args.jobs))
        }
        Command::InnerMeasure { root } => {
            let need = store::measure_docker_store(&root, 4096)?;
            serde_json::to_writer(std::io::stdout().lock(), &need)?;
            Ok(())
        }
        Command::InnerExport { root, socket } => {
            // The socket, when the tool can be reached through it, skips the
            // daemon's attach stream (the slowest link); stdout always works.
            if let Some(stream) =
                socket.and_then(|s| std::os::unix::net::UnixStream::connect(s).ok())
            {
                eprintln!("{}", docker::SOCKET_MARKER);
                let out = std::io::BufWriter::with_capacity(1 << 20, stream);
                return store::export_docker_store(&root, out).map(|_| ());
            }
            let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            store::export_docker_store(&root, out).map(|_| ())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ctrl-C and SIGTERM only raise a flag: work stops at the next safe
    // point, the filesystem is closed consistently, containers and volumes
    // are removed and a partial output is deleted.
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&cancel)) {
            eprintln!("warning: cannot handle signal {sig}: {e}");
        }
    }
    match run(cli, cancel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
