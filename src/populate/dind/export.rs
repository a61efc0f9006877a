//! From the build containers into ROOT: each daemon stopped while its
//! store is measured and room made, then its store exported by the helper
//! and written into ROOT as it streams in.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::disk::ext4::{self, Need};
use crate::disk::{self, Prepared, ROOT_NAME};
use crate::docker::ExportVia;
use crate::progress::{Bar, ReadProgress};
use crate::store;

use super::store_run::StoreRun;
use crate::populate::output::make_room;
use crate::populate::report::*;
use crate::populate::worker::blocking;

/// Stops the inner daemon (see [`stop_dind`]) while measuring the store and
/// making room for it: stopping changes nothing that is exported (the
/// layers and the image database are complete once the pulls have
/// returned). Returns what the store took, the output with room made and
/// what the store needs. The export must wait for all of it.
pub(crate) async fn stop_beside_measure(
    runs: &[StoreRun<'_>],
    clock: &Clock,
    prepared: Prepared,
    only: &[Option<&[u8]>],
    extra: Need,
) -> Result<(Vec<u64>, (Prepared, Option<disk::GrowReport>), Need)> {
    let stop = clock.time(
        Phase::Stop,
        futures_util::future::join_all(runs.iter().map(stop_dind)),
    );
    let room = async {
        let mut need = extra;
        for (run, only) in runs.iter().zip(only) {
            need += clock
                .time(Phase::Measure, measure(run, &prepared, *only))
                .await?;
        }
        let grown = clock
            .time(Phase::Grow, make_room(runs[0].cfg, prepared, need))
            .await?;
        Ok::<_, anyhow::Error>((grown, need))
    };
    let (stopped, room) = tokio::join!(stop, room);
    let used = stopped.into_iter().collect::<Result<Vec<u64>>>()?;
    let (grown, need) = room?;
    Ok((used, grown, need))
}

/// Stops the inner daemon cleanly (the container stays, with a store in
/// memory) and returns what the store takes: the store must be quiescent
/// before it is exported. On failure nothing was written.
pub(crate) async fn stop_dind(run: &StoreRun<'_>) -> Result<u64> {
    let dind = run.dind.clone();
    let stopped = run.or_cancel(run.dind().stop(run.backend.root())).await?;
    if stopped.exit_code != 0 {
        bail!(
            "the daemon of the build container ({}) did not shut down cleanly (exit code {}); its last lines:\n{}",
            run.spec.daemon.first().map_or("?", String::as_str),
            stopped.exit_code,
            run.engine.logs_tail(&dind).await
        );
    }
    Ok(stopped.store_used_bytes)
}

/// Measures what the store will take in ROOT,
/// with the helper in the dind. Writes nothing.
pub(crate) async fn measure(
    run: &StoreRun<'_>,
    prepared: &Prepared,
    only: Option<&[u8]>,
) -> Result<Need> {
    let root = prepared.fs();
    let block_size = blocking(move || Ok(root.open_read()?.inspect(ROOT_NAME)?.block_size)).await?;
    let store = (&run.store, run.backend.root());
    let dind = run.dind();
    let measured = dind.measure(store, block_size, only);
    let mut need = run.or_cancel(measured).await?;
    // The store in ROOT that the build container started on is removed
    // before the export, which holds all of it again.
    if run.seed.is_some() {
        let (root, path) = (prepared.fs(), run.backend.root());
        let old = blocking(move || {
            let fs = root.open_read()?;
            store::export::measure_fs_tree(&fs, path.as_bytes(), block_size)
        });
        need = need.less(old.await?);
    }
    Ok(need)
}

/// The private directory of the export socket, or None for an engine on
/// another machine (`local` false: a directory of this machine cannot be
/// mounted into its containers), or when the tests force the attach
/// stream.
pub(crate) fn socket_dir(local: bool) -> Result<Option<tempfile::TempDir>> {
    if !local {
        return Ok(None);
    }
    #[cfg(feature = "test-hooks")]
    if crate::hooks::no_export_socket() {
        return Ok(None);
    }
    let dir = tempfile::Builder::new()
        .prefix("flatcar-preload-")
        .tempdir()
        .context("creating a private directory for the export socket")?;
    Ok(Some(dir))
}

/// What [`export_and_write`] did.
pub(crate) struct Written {
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    pub(crate) via: ExportVia,
}

/// Exports the store with the helper in the stopped dind and writes it into ROOT as it
/// streams in; when merging, the backend reconciles what was there with
/// what was written ([`crate::store::Merge`]). On failure or Ctrl-C, ROOT
/// is closed consistently with the entries before the failure written; the
/// caller must not publish the output.
pub(crate) async fn export_and_write(
    run: &StoreRun<'_>,
    root: &ext4::Root,
    only: Option<&[u8]>,
) -> Result<Written> {
    let backend = run.backend;
    // One handle for the phase: what a merge must remember is read through
    // it, the store written, the merge finished.
    let (root, cancel, merging) = (root.clone(), run.cancel.clone(), run.cfg.merge);
    // The build container started on the store in ROOT: its export holds
    // all of it, and replaces it.
    let replace = run.seed.is_some();
    let (mut fs, merge) = blocking(move || {
        let mut fs = root.open_write(Some(&cancel))?;
        if replace {
            fs.remove_tree(backend.root())?;
        }
        let merge = match merging {
            true => backend.merge(&fs)?,
            false => None,
        };
        Ok((fs, merge))
    })
    .await?;
    // Chunks of up to 1 MiB: at most 8 wait for the writer, which bounds
    // the memory a fast export takes while ROOT is written (with 64, the
    // peak RSS of ci/bench-scale.sh's 5 GB store varied from 34 to 72 MiB).
    let (tx, mut rx) = mpsc::channel::<Bytes>(8);
    let chunks = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|c| c.map(Ok::<_, std::io::Error>))
    });
    let stream = ReadProgress::new(
        SyncIoBridge::new(StreamReader::new(chunks)),
        Bar::bytes("exporting store", None),
    );
    #[cfg(feature = "test-hooks")]
    let stream = {
        use crate::hooks::pause_after_read;
        let stream = pause_after_read("write", 0, stream, run.cancel.clone());
        pause_after_read("mid-write", 1 << 20, stream, run.cancel.clone())
    };
    let stamp = fs.stamp();
    let mut labeler = run.cfg.selinux.labeler(backend.root().as_bytes())?;
    let writer = tokio::task::spawn_blocking(move || {
        let label = labeler.as_mut().map(|l| l as &mut dyn ext4::Transform);
        let written = fs.write_tar(backend.root().as_bytes(), stream, label);
        (fs, written)
    });
    let socket_dir = run.socket_dir.as_ref().map(|d| d.path());
    let exported = run
        .or_cancel(
            run.dind()
                .export((&run.store, backend.root()), socket_dir, only, stamp, tx),
        )
        .await;
    // The writer stops by itself once the stream ends or is cancelled; the
    // filesystem is closed consistently either way.
    let (fs, written) = writer.await.context("the ext4 writer panicked")?;
    // A stream cut short (the build container killed, the engine gone) is
    // told by what became of the container.
    let helper_ok = exported.as_ref().is_ok_and(|e| e.finished.exit_code == 0);
    let cut = match written.is_ok() && helper_ok {
        true => None,
        false => run.engine.container_state(&run.dind).await,
    }
    .map(|state| format!("the build container {} is {state}", run.dind));
    let stats = blocking(move || {
        let mut fs = fs;
        let done = (|| {
            let told = |e: anyhow::Error| match &cut {
                Some(cut) => e.context(cut.clone()),
                None => e,
            };
            let exported = exported.map_err(told)?;
            let stats = match (written, exported.finished.success("the export helper")) {
                (Ok(stats), Ok(())) => stats,
                // The helper failed: what the writer read was cut short.
                (_, Err(helper)) => {
                    let what = format!("exporting the store {}", backend.root());
                    return Err(told(helper.context(what)));
                }
                (Err(w), Ok(())) => {
                    let what = format!("writing the store {} into ROOT", backend.root());
                    return Err(told(w.context(what)));
                }
            };
            if let Some(merge) = merge {
                merge.finish(&mut fs)?;
            }
            Ok((stats, exported.via))
        })();
        fs.close_after(done)
    })
    .await?;
    let (stats, via) = stats;
    Ok(Written {
        entries: stats.entries,
        bytes: stats.bytes,
        via,
    })
}
