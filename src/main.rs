use std::process::ExitCode;

use clap::Parser;
use flatcar_preload::cli::Cli;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // In the build container, the daemon runs this executable as `unpigz`.
    let mut args = std::env::args_os();
    if args
        .next()
        .is_some_and(|a| flatcar_preload::unpigz::called_as(&a))
    {
        return flatcar_preload::unpigz::main(&args.collect::<Vec<_>>());
    }
    let cli = Cli::parse();
    // Ctrl-C and SIGTERM cancel the run: work stops at the next safe point,
    // the filesystem is closed consistently, containers and volumes are
    // removed and a partial output is deleted.
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let sigs = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM];
    match signal_hook::iterator::Signals::new(sigs) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    on_signal.cancel();
                }
            });
        }
        Err(e) => eprintln!("warning: cannot handle Ctrl-C and SIGTERM: {e}"),
    }
    match flatcar_preload::run(cli, cancel) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
