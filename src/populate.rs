//! `flatcar-preload populate`: pull the listed images in a dind container
//! and stream its store into ROOT, in one stream:
//! registry -> dind (overlay2) -> stop -> export helper (PAX tar, all xattrs)
//! -> attach stream -> tar reader -> ext4 writer -> OUTPUT.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::disk::{self, RootPartition, ROOT_NAME};
use crate::docker::inner::PullEvent;
use crate::docker::refs::ImageRef;
use crate::docker::{DindSpec, Engine, HELPER_PATH, INNER_SOCKET};
use crate::ext4::{self, Rewrite};
use crate::progress::{Bar, Pulls};
use crate::store::{self, CONTAINERD_ROOT, DOCKER_ROOT};
use crate::unpack::{open_archive, Input, OutputMode, Space};

#[derive(Debug, Clone)]
pub struct PopulateConfig {
    pub disk: PathBuf,
    pub images: Vec<ImageRef>,
    pub space: Space,
    pub output: OutputMode,
    pub dind_image: String,
    pub dind_network: String,
    pub privileged: bool,
    pub merge: bool,
    pub containerd: Option<PathBuf>,
    pub keep_dind: bool,
    pub jobs: usize,
}

/// What `--json` prints, and what the summary says.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub images: Vec<PulledImage>,
    pub layers: u64,
    pub entries_written: u64,
    pub bytes_written: u64,
    pub containerd_entries: u64,
    pub root_free_bytes: u64,
    pub root_size_bytes: u64,
    /// Present when the image was grown to make room.
    pub grown: Option<disk::GrowReport>,
    /// What the store was measured to take in ROOT.
    pub needed_blocks: u64,
    pub seconds: Phases,
    pub output: String,
    /// How the store left the export container: "socket" (a daemon on this
    /// machine) or "attach" (the Docker API stream).
    pub export_via: String,
}

#[derive(Debug, Serialize)]
pub struct PulledImage {
    pub reference: String,
    pub id: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Phases {
    pub pull: f64,
    pub stop: f64,
    pub measure: f64,
    pub copy: f64,
    pub grow: f64,
    pub export_and_write: f64,
    pub containerd: f64,
    pub total: f64,
}

/// Containers and volumes a run created, removed at the end.
#[derive(Default)]
struct Resources {
    containers: Vec<String>,
    volumes: Vec<String>,
}

/// Resolves when the user asked to stop (Ctrl-C, SIGTERM).
async fn cancelled(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Test seam: `FLATCAR_PRELOAD_PAUSE_AT=pull|write` makes the run wait at
/// that phase until it is cancelled, so that tests can interrupt it there.
fn pause_requested(phase: &str) -> bool {
    std::env::var("FLATCAR_PRELOAD_PAUSE_AT").is_ok_and(|p| p == phase)
}

fn pause_blocking(phase: &str, cancel: &AtomicBool) {
    if pause_requested(phase) {
        eprintln!("paused at {phase} (FLATCAR_PRELOAD_PAUSE_AT)");
        let start = Instant::now();
        while !cancel.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(600) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Awaits `fut` unless the run is cancelled first.
async fn or_cancel<T>(
    flag: &AtomicBool,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = fut => r,
        () = cancelled(flag) => bail!("interrupted"),
    }
}

pub async fn run(cfg: &PopulateConfig, cancel: Arc<AtomicBool>) -> Result<Summary> {
    let start = Instant::now();
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        start.elapsed().as_nanos() % 100_000
    );
    let mut res = Resources::default();
    let engine = Engine::connect().await?;
    let result = populate(cfg, &engine, &run_id, &mut res, &cancel).await;
    if cfg.keep_dind {
        eprintln!(
            "keeping containers {} and volumes {} (--keep-dind)",
            res.containers.join(", "),
            res.volumes.join(", ")
        );
    } else {
        for c in &res.containers {
            if let Err(e) = engine.remove_container(c).await {
                eprintln!("warning: {e:#}");
            }
        }
        for v in &res.volumes {
            if let Err(e) = engine.remove_volume(v).await {
                eprintln!("warning: {e:#}");
            }
        }
    }
    let mut summary = result?;
    summary.seconds.total = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Refuses a ROOT that already has a store, unless merging.
fn check_existing(
    cfg: &PopulateConfig,
    image: &std::path::Path,
    root: &RootPartition,
) -> Result<()> {
    let mut present = vec![];
    if ext4::exists(image, root.offset, DOCKER_ROOT)? {
        present.push(DOCKER_ROOT);
    }
    if cfg.containerd.is_some() && ext4::exists(image, root.offset, CONTAINERD_ROOT)? {
        present.push(CONTAINERD_ROOT);
    }
    if !present.is_empty() && !cfg.merge {
        bail!(
            "ROOT of {} already has {}; pass --merge to add the images to what is there",
            cfg.disk.display(),
            present.join(" and ")
        );
    }
    Ok(())
}

/// Checks the disk before anything is pulled (a compressed or qcow2/vmdk
/// one once converted).
fn check_disk(cfg: &PopulateConfig) -> Result<()> {
    if let (_, Some(root)) = disk::check_input(&cfg.disk, cfg.output.path().is_none())? {
        check_existing(cfg, &cfg.disk, &root)?;
    }
    Ok(())
}

async fn populate(
    cfg: &PopulateConfig,
    engine: &Engine,
    run_id: &str,
    res: &mut Resources,
    cancel: &Arc<AtomicBool>,
) -> Result<Summary> {
    if cfg.images.is_empty() {
        bail!("no images to preload: give references or an image list with entries");
    }
    check_disk(cfg)?;
    engine.check_arch().await?;
    or_cancel(cancel, engine.ensure_image(&cfg.dind_image)).await?;
    let mut summary = Summary::default();

    // 1. Pull everything in a dind whose store is a fresh volume.
    let t = Instant::now();
    let spec = DindSpec {
        image: cfg.dind_image.clone(),
        network: cfg.dind_network.clone(),
        privileged: cfg.privileged,
        run_id: run_id.to_string(),
    };
    let volume = format!("flatcar-preload-{run_id}-store");
    let dind = format!("flatcar-preload-{run_id}-dind");
    engine.create_volume(&volume, run_id).await?;
    res.volumes.push(volume.clone());
    res.containers.push(dind.clone());
    engine.start_dind(&dind, &spec, &volume).await?;
    if pause_requested("pull") {
        eprintln!("paused at pull (FLATCAR_PRELOAD_PAUSE_AT)");
        or_cancel(cancel, async {
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(())
        })
        .await?;
    }
    let ids = or_cancel(cancel, pull(cfg, engine, &dind)).await?;
    summary.images = cfg
        .images
        .iter()
        .zip(ids)
        .map(|(r, id)| PulledImage {
            reference: r.to_string(),
            id,
        })
        .collect();
    summary.seconds.pull = t.elapsed().as_secs_f64();

    // 2. Stop the inner daemon cleanly: the store must be quiescent.
    let t = Instant::now();
    let code = or_cancel(cancel, engine.stop(&dind, Duration::from_secs(60))).await?;
    if code != 0 {
        bail!(
            "the inner dockerd did not shut down cleanly (exit code {code}); its last lines:\n{}",
            engine.logs_tail(&dind).await
        );
    }
    summary.seconds.stop = t.elapsed().as_secs_f64();

    // 3. Measure the store, make the output (a sparse, decompressed or
    // converted copy, or the disk itself) and make room in ROOT.
    let t = Instant::now();
    let measurer = format!("flatcar-preload-{run_id}-measure");
    res.containers.push(measurer.clone());
    let mut need = or_cancel(cancel, engine.measure_store(&measurer, &spec, &volume)).await?;
    if let Some(src) = &cfg.containerd {
        need += containerd_need(src)?;
    }
    summary.needed_blocks = need.blocks;
    summary.seconds.measure = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut prepared = disk::prepare(
        &cfg.disk,
        cfg.output.path(),
        cfg.space.raw_output,
        Some(cancel),
    )?;
    summary.output = cfg.output.path().unwrap_or(&cfg.disk).display().to_string();
    check_existing(cfg, &prepared.image, &prepared.root)?;
    summary.seconds.copy = t.elapsed().as_secs_f64();
    let t = Instant::now();
    summary.grown = disk::ensure_room(
        &mut prepared,
        Some(need),
        cfg.space.grow,
        cfg.space.headroom,
    )?;
    summary.seconds.grow = t.elapsed().as_secs_f64();
    let (image, root) = (prepared.image.clone(), prepared.root);

    // 4. Export the store in a helper container and write it into ROOT as
    // it streams in.
    let t = Instant::now();
    let existing_repos = if cfg.merge {
        ext4::read_file(
            &image,
            root.offset,
            &format!("{DOCKER_ROOT}/image/overlay2/repositories.json"),
        )?
    } else {
        None
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let writer = {
        let image = image.clone();
        let cancel = Arc::clone(cancel);
        tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx: &mut rx,
                cur: Bytes::new(),
                bar: Bar::bytes("exporting store", None),
                cancel: &cancel,
                started: false,
            };
            let merge = |new: Vec<u8>| match &existing_repos {
                Some(old) => store::merge_repositories(old, &new),
                None => Ok(new),
            };
            let rewrite = Rewrite {
                path: "image/overlay2/repositories.json",
                with: &merge,
            };
            ext4::write_tar(
                &image,
                root.offset,
                DOCKER_ROOT.as_bytes(),
                reader,
                Some(&cancel),
                Some(&rewrite),
            )
        })
    };
    let exporter = format!("flatcar-preload-{run_id}-export");
    res.containers.push(exporter.clone());
    let exported = {
        let forward = engine.export_store(&exporter, &spec, &volume, tx);
        tokio::select! {
            r = forward => r,
            () = cancelled(cancel) => Err(anyhow!("interrupted")),
        }
    };
    // The writer stops by itself once the stream ends or is cancelled; the
    // filesystem is closed consistently either way.
    let written = writer.await.context("the ext4 writer panicked")?;
    let finished = exported?;
    let stats = written.context("writing Docker's store into ROOT")?;
    if finished.exit_code != 0 {
        bail!(
            "the export helper failed (exit code {}): {}",
            finished.exit_code,
            finished.stderr.trim()
        );
    }
    summary.export_via = if finished.via_socket {
        "socket"
    } else {
        "attach"
    }
    .into();
    summary.entries_written = stats.entries;
    summary.bytes_written = stats.bytes;
    summary.seconds.export_and_write = t.elapsed().as_secs_f64();
    summary.layers = count_layers(&image, root.offset)?;

    // 5. An optional containerd root, the same way.
    if let Some(src) = &cfg.containerd {
        let t = Instant::now();
        summary.containerd_entries = write_containerd(&image, root.offset, src, cancel)?;
        summary.seconds.containerd = t.elapsed().as_secs_f64();
    }

    let fs =
        ext4::inspect(&image, root.offset, ROOT_NAME).context("re-reading ROOT after writing")?;
    summary.root_free_bytes = fs.free_bytes();
    summary.root_size_bytes = fs.size_bytes();
    if let Some(out) = prepared.output {
        out.publish()?;
    }
    Ok(summary)
}

/// Runs the pull helper in the dind and follows its progress.
async fn pull(cfg: &PopulateConfig, engine: &Engine, dind: &str) -> Result<Vec<String>> {
    let names: Vec<String> = cfg.images.iter().map(|r| r.to_string()).collect();
    let mut cmd = vec![
        HELPER_PATH.to_string(),
        "__pull".into(),
        "--socket".into(),
        INNER_SOCKET.into(),
        "--jobs".into(),
        cfg.jobs.to_string(),
    ];
    cmd.extend(names.iter().cloned());
    let mut ids = vec![String::new(); names.len()];
    let mut failures = vec![];
    let mut progress = Pulls::new(&names);
    let finished = engine
        .exec_lines(dind, cmd, |line| {
            match serde_json::from_str::<PullEvent>(line) {
                Ok(PullEvent::Layer {
                    image,
                    layer,
                    current,
                    total,
                }) => progress.layer(image, &layer, current, total),
                Ok(PullEvent::Done { image, id }) => {
                    progress.done(image, &id);
                    if let Some(slot) = ids.get_mut(image) {
                        *slot = id;
                    }
                }
                Ok(PullEvent::Failed { image, message }) => {
                    progress.failed(image, &message);
                    failures.push(format!(
                        "{}: {message}",
                        names.get(image).map_or("?", |s| s.as_str())
                    ));
                }
                Err(_) => eprintln!("dind: {line}"),
            }
        })
        .await?;
    progress.finish();
    if !failures.is_empty() {
        bail!(
            "pulling failed, nothing was written:\n  {}",
            failures.join("\n  ")
        );
    }
    if finished.exit_code != 0 || ids.iter().any(|i| i.is_empty()) {
        bail!(
            "the pull helper in the dind failed (exit code {}): {}\nthe dind's last lines:\n{}",
            finished.exit_code,
            finished.stderr.trim(),
            engine.logs_tail(dind).await
        );
    }
    Ok(ids)
}

/// Layers in the written store (directories of overlay2 but `l`).
fn count_layers(image: &std::path::Path, offset: u64) -> Result<u64> {
    Ok(
        ext4::list_dir(image, offset, &format!("{DOCKER_ROOT}/overlay2"))?
            .iter()
            .filter(|n| n.as_str() != "l")
            .count() as u64,
    )
}

/// Writes a containerd root (a directory or a tar) under /var/lib/containerd.
fn write_containerd(
    image: &std::path::Path,
    offset: u64,
    src: &std::path::Path,
    cancel: &AtomicBool,
) -> Result<u64> {
    let md = std::fs::metadata(src)
        .with_context(|| format!("reading --containerd {}", src.display()))?;
    let stats = if md.is_dir() {
        let (reader, writer) = std::io::pipe().context("making a pipe")?;
        let dir = src.to_path_buf();
        let export = std::thread::spawn(move || store::export_tree(&dir, None, &[], writer));
        let written = ext4::write_tar(
            image,
            offset,
            CONTAINERD_ROOT.as_bytes(),
            reader,
            Some(cancel),
            None,
        );
        let exported = export
            .join()
            .map_err(|_| anyhow!("the containerd export panicked"))?;
        let stats = written?;
        exported.with_context(|| format!("reading the containerd root {}", src.display()))?;
        stats
    } else {
        let archive = open_archive(&Input::File(src.to_path_buf()), true)?;
        ext4::write_tar(
            image,
            offset,
            CONTAINERD_ROOT.as_bytes(),
            archive,
            Some(cancel),
            None,
        )?
    };
    Ok(stats.entries)
}

/// What the containerd root will take in ext4.
fn containerd_need(src: &std::path::Path) -> Result<ext4::Need> {
    let md = std::fs::metadata(src)
        .with_context(|| format!("reading --containerd {}", src.display()))?;
    if md.is_dir() {
        store::measure_tree(src, None, &[], 4096)
    } else {
        crate::unpack::measure_archive(src)
    }
}

/// Turns the chunks forwarded from the export container into a Read for
/// the (blocking) ext4 writer.
struct ChannelReader<'a> {
    rx: &'a mut mpsc::Receiver<Bytes>,
    cur: Bytes,
    bar: Bar,
    cancel: &'a AtomicBool,
    started: bool,
}

impl std::io::Read for ChannelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        if !self.started {
            self.started = true;
            pause_blocking("write", self.cancel);
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// The summary on stderr.
pub fn print_summary(s: &Summary) {
    use indicatif::HumanBytes;
    eprintln!(
        "preloaded {} image(s) ({} layers) into {}: {} entries, {} of file data",
        s.images.len(),
        s.layers,
        s.output,
        s.entries_written,
        HumanBytes(s.bytes_written)
    );
    for i in &s.images {
        eprintln!("  {} {}", i.reference, i.id);
    }
    if s.containerd_entries > 0 {
        eprintln!("containerd root: {} entries", s.containerd_entries);
    }
    if let Some(g) = &s.grown {
        eprintln!("{g}");
    }
    eprintln!(
        "ROOT: {} free of {}",
        HumanBytes(s.root_free_bytes),
        HumanBytes(s.root_size_bytes)
    );
    let p = &s.seconds;
    eprintln!(
        "time: pull {:.1} s, stop {:.1} s, measure {:.1} s, copy {:.1} s, grow {:.1} s, export+write {:.1} s, containerd {:.1} s, total {:.1} s",
        p.pull, p.stop, p.measure, p.copy, p.grow, p.export_and_write, p.containerd, p.total
    );
}
