//! Test-only hooks, compiled with the `test-hooks` feature (which the test
//! suites enable): they let tests stop a run at a chosen phase and force
//! the export path that a remote daemon takes.

use std::io::Read;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Whether `FLATCAR_PRELOAD_PAUSE_AT` names `phase` (pull, write,
/// mid-write, grow).
fn pause_requested(phase: &str) -> bool {
    std::env::var("FLATCAR_PRELOAD_PAUSE_AT").is_ok_and(|p| p == phase)
}

/// With `FLATCAR_PRELOAD_NO_EXPORT_SOCKET` set, the export takes the attach
/// stream even when the daemon is local.
pub(crate) fn no_export_socket() -> bool {
    std::env::var_os("FLATCAR_PRELOAD_NO_EXPORT_SOCKET").is_some()
}

/// Waits at `phase` until the run is cancelled, or until the file that
/// `FLATCAR_PRELOAD_RESUME_FILE` names exists (at most 10 minutes) when the
/// tests asked for it, saying so on stderr: a test does something to the
/// run's world (kills its container, stops the engine) and lets it go on.
pub(crate) async fn pause(phase: &str, cancel: &CancellationToken) {
    if pause_requested(phase) {
        eprintln!("paused at {phase} (FLATCAR_PRELOAD_PAUSE_AT)");
        let resume = std::env::var_os("FLATCAR_PRELOAD_RESUME_FILE");
        let resumed = async {
            while !resume
                .as_ref()
                .is_some_and(|f| std::path::Path::new(f).exists())
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let waited = async {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = resumed => eprintln!("resumed at {phase}"),
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(600), waited).await;
    }
}

/// In blocking code outside the runtime: waits at `phase` when the tests
/// asked for it, saying so on stderr, until the process is killed (at most
/// 10 minutes): the kill tests' points.
pub(crate) fn pause_until_killed(phase: &str) {
    if pause_requested(phase) {
        eprintln!("paused at {phase} (FLATCAR_PRELOAD_PAUSE_AT)");
        std::thread::sleep(Duration::from_secs(600));
    }
}

/// A reader that pauses at `phase` once more than `after` bytes have come
/// through it (for blocking code inside the runtime): `write` before the
/// first entry is written, `mid-write` part way through.
pub(crate) fn pause_after_read<R: Read + Send + 'static>(
    phase: &'static str,
    after: u64,
    inner: R,
    cancel: CancellationToken,
) -> Box<dyn Read + Send> {
    struct Paused<R> {
        inner: R,
        left: u64,
        pending: Option<(&'static str, CancellationToken)>,
    }
    impl<R: Read> Read for Paused<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.left = self.left.saturating_sub(n as u64);
            if n > 0 && self.left == 0 {
                if let Some((phase, cancel)) = self.pending.take() {
                    tokio::runtime::Handle::current().block_on(pause(phase, &cancel));
                }
            }
            Ok(n)
        }
    }
    Box::new(Paused {
        inner,
        left: after,
        pending: Some((phase, cancel)),
    })
}
