use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use flatcar_preload::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Ctrl-C and SIGTERM only raise a flag: the work stops at the next
    // entry boundary, the filesystem is closed consistently and a partial
    // output is removed.
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&cancel)) {
            eprintln!("warning: cannot handle signal {sig}: {e}");
        }
    }
    let result = match cli.command {
        Command::Unpack(args) => flatcar_preload::unpack::run(&args.into_config(), &cancel),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
