//! Disk and CPU work of `populate` off the async runtime's thread.

use anyhow::{anyhow, Result};

/// Runs `f` on a blocking thread (disk and CPU work) and returns its
/// result.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("a worker thread failed: {e}"))?
}
