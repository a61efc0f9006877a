//! `flatcar-preload populate`: pull the listed images in a dind container
//! and stream its store into ROOT, in one stream:
//! registry -> dind (overlay2) -> stop -> export helper (PAX tar, all xattrs)
//! -> socket or attach stream -> tar reader -> ext4 writer -> OUTPUT.
//!
//! [`populate`] is the list of the phases, each a function below that says
//! what it leaves behind when it fails.

use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use crate::disk::{self, Prepared, ROOT_NAME};
use crate::docker::inner::PullEvent;
use crate::docker::refs::ImageRef;
use crate::docker::{DindNetwork, DindSpec, Engine, ExportVia, HELPER_PATH, INNER_SOCKET};
use crate::ext4::{self, Need};
use crate::progress::{Bar, Pulls, ReadProgress};
use crate::store::{self, CONTAINERD_ROOT, DOCKER_ROOT, REPOSITORIES};
use crate::unpack::{open_archive, Input, OutputMode, Space};

#[derive(Debug, Clone)]
pub struct PopulateConfig {
    pub disk: PathBuf,
    pub images: Vec<ImageRef>,
    pub space: Space,
    pub output: OutputMode,
    pub dind_image: String,
    pub dind_network: DindNetwork,
    pub privileged: bool,
    pub merge: bool,
    pub containerd: Option<PathBuf>,
    pub keep_dind: bool,
    pub jobs: usize,
}

/// What `--json` prints, and what the summary says.
#[derive(Debug, Serialize)]
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
    pub export_via: ExportVia,
}

#[derive(Debug, Serialize)]
pub struct PulledImage {
    pub reference: String,
    pub id: String,
}

/// Seconds spent in each phase: the one place that times them.
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

#[derive(Debug, Clone, Copy)]
enum Phase {
    Pull,
    Stop,
    Measure,
    Copy,
    Grow,
    ExportAndWrite,
    Containerd,
}

impl Phases {
    /// Runs `fut` as `phase`, adding its duration to the phase's time.
    async fn time<T>(&mut self, phase: Phase, fut: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = fut.await;
        *self.slot(phase) += start.elapsed().as_secs_f64();
        out
    }

    fn slot(&mut self, phase: Phase) -> &mut f64 {
        match phase {
            Phase::Pull => &mut self.pull,
            Phase::Stop => &mut self.stop,
            Phase::Measure => &mut self.measure,
            Phase::Copy => &mut self.copy,
            Phase::Grow => &mut self.grow,
            Phase::ExportAndWrite => &mut self.export_and_write,
            Phase::Containerd => &mut self.containerd,
        }
    }
}

/// Containers and volumes a run created, removed at the end.
#[derive(Default)]
struct Resources {
    containers: Vec<String>,
    volumes: Vec<String>,
}

/// One run: the engine, its names and what it created.
struct Run<'a> {
    cfg: &'a PopulateConfig,
    engine: Engine,
    cancel: CancellationToken,
    spec: DindSpec,
    res: Resources,
}

impl Run<'_> {
    /// A name for a container or volume of this run.
    fn name(&self, what: &str) -> String {
        format!("flatcar-preload-{}-{what}", self.spec.run_id)
    }

    /// Awaits `fut` unless the run is cancelled first.
    async fn or_cancel<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        self.cancel
            .run_until_cancelled(fut)
            .await
            .unwrap_or_else(|| Err(anyhow!("interrupted")))
    }
}

/// Runs `f` on a blocking thread (disk and CPU work) and returns its
/// result.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow!("a worker thread failed: {e}"))?
}

/// Runs the command; whatever happens, removes the containers and volumes
/// it created (unless --keep-dind).
pub async fn run(cfg: &PopulateConfig, cancel: CancellationToken) -> Result<Summary> {
    let start = Instant::now();
    let spec = DindSpec {
        image: cfg.dind_image.clone(),
        network: cfg.dind_network.clone(),
        privileged: cfg.privileged,
        run_id: format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() % 100_000)
        ),
    };
    // Local inputs first: a wrong path or list fails before any engine is
    // contacted.
    check_local_inputs(cfg)?;
    let mut run = Run {
        cfg,
        engine: Engine::connect().await?,
        cancel,
        spec,
        res: Resources::default(),
    };
    let result = populate(&mut run).await;
    let Run { engine, res, .. } = run;
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

/// The phases, top to bottom. Nothing is written before the output is
/// made; a failure after that drops the output (removed) or, in place,
/// leaves ROOT consistent with part of the store in it.
async fn populate(run: &mut Run<'_>) -> Result<Summary> {
    let cfg = run.cfg;
    let mut t = Phases::default();
    check_engine(run).await?;
    let volume = t.time(Phase::Pull, start_dind(run)).await?;
    let images = t.time(Phase::Pull, pull(run)).await?;
    t.time(Phase::Stop, stop_dind(run)).await?;
    let prepared = t.time(Phase::Copy, make_output(run)).await?;
    let need = t
        .time(Phase::Measure, measure(run, &volume, &prepared))
        .await?;
    let (prepared, grown) = t.time(Phase::Grow, make_room(cfg, prepared, need)).await?;
    let root = prepared.fs();
    let written = t
        .time(Phase::ExportAndWrite, export_and_write(run, &volume, &root))
        .await?;
    let containerd_entries = match &cfg.containerd {
        Some(src) => {
            let job = write_containerd(root.clone(), src.clone(), run.cancel.clone());
            t.time(Phase::Containerd, job).await?
        }
        None => 0,
    };
    let (fs, layers) = publish(prepared)?;
    Ok(Summary {
        images,
        layers,
        entries_written: written.entries,
        bytes_written: written.bytes,
        containerd_entries,
        root_free_bytes: fs.free_bytes(),
        root_size_bytes: fs.size_bytes(),
        grown,
        needed_blocks: need.blocks,
        seconds: t,
        output: cfg.output.path().unwrap_or(&cfg.disk).display().to_string(),
        export_via: written.via,
    })
}

/// Refuses a ROOT that already has a store, unless merging.
fn check_existing(cfg: &PopulateConfig, root: &ext4::Root) -> Result<()> {
    let mut present = vec![];
    if ext4::exists(root, DOCKER_ROOT)? {
        present.push(DOCKER_ROOT);
    }
    if cfg.containerd.is_some() && ext4::exists(root, CONTAINERD_ROOT)? {
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

/// Checks the local inputs: the list and the disk (a compressed or
/// qcow2/vmdk one only once converted). Leaves nothing behind.
fn check_local_inputs(cfg: &PopulateConfig) -> Result<()> {
    if cfg.images.is_empty() {
        bail!("no images to preload: give references or an image list with entries");
    }
    if let (_, Some(root)) = disk::check_input(&cfg.disk, cfg.output.path().is_none())? {
        check_existing(cfg, &ext4::Root::new(&cfg.disk, root.offset))?;
    }
    Ok(())
}

/// Checks the engine before pulling: its architecture and the dind image
/// (pulled when missing). Leaves nothing behind.
async fn check_engine(run: &Run<'_>) -> Result<()> {
    run.engine.check_arch().await?;
    run.or_cancel(run.engine.ensure_image(&run.cfg.dind_image))
        .await
}

/// Starts the dind whose store is a fresh volume, and returns the volume.
/// On failure the volume and container are already recorded for removal.
async fn start_dind(run: &mut Run<'_>) -> Result<String> {
    let (volume, dind) = (run.name("store"), run.name("dind"));
    run.engine.create_volume(&volume, &run.spec.run_id).await?;
    run.res.volumes.push(volume.clone());
    run.res.containers.push(dind.clone());
    run.or_cancel(run.engine.start_dind(&dind, &run.spec, &volume))
        .await?;
    Ok(volume)
}

/// Runs the pull helper in the dind and follows its progress. On failure
/// nothing was written; the dind is left for removal.
async fn pull(run: &Run<'_>) -> Result<Vec<PulledImage>> {
    #[cfg(feature = "test-hooks")]
    crate::hooks::pause("pull", &run.cancel).await;
    let (cfg, engine, dind) = (run.cfg, &run.engine, run.name("dind"));
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
    let follow = engine.exec_lines(&dind, cmd, |line| {
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
    });
    let finished = run.or_cancel(follow).await?;
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
            engine.logs_tail(&dind).await
        );
    }
    Ok(cfg
        .images
        .iter()
        .zip(ids)
        .map(|(r, id)| PulledImage {
            reference: r.to_string(),
            id,
        })
        .collect())
}

/// Stops the inner daemon cleanly: the store must be quiescent. On failure
/// nothing was written.
async fn stop_dind(run: &Run<'_>) -> Result<()> {
    let dind = run.name("dind");
    let code = run
        .or_cancel(run.engine.stop(&dind, Duration::from_secs(60)))
        .await?;
    if code != 0 {
        bail!(
            "the inner dockerd did not shut down cleanly (exit code {code}); its last lines:\n{}",
            run.engine.logs_tail(&dind).await
        );
    }
    Ok(())
}

/// Makes the image to write into: the disk itself (--in-place) or a
/// sparse, decompressed or converted copy, and checks its ROOT again. On
/// failure a partial copy is removed and the disk is untouched.
async fn make_output(run: &Run<'_>) -> Result<Prepared> {
    let cfg = run.cfg;
    let (disk, out, raw) = (
        cfg.disk.clone(),
        cfg.output.path().map(Path::to_path_buf),
        cfg.space.raw_output,
    );
    let cancel = run.cancel.clone();
    let prepared =
        blocking(move || disk::prepare(&disk, out.as_deref(), raw, Some(&cancel))).await?;
    check_existing(cfg, &prepared.fs())?;
    Ok(prepared)
}

/// Measures what the store (and the containerd root) will take in ROOT, in
/// a helper container. Writes nothing.
async fn measure(run: &mut Run<'_>, volume: &str, prepared: &Prepared) -> Result<Need> {
    let block_size = ext4::inspect(&prepared.fs(), ROOT_NAME)?.block_size;
    let measurer = run.name("measure");
    run.res.containers.push(measurer.clone());
    let measured = run
        .engine
        .measure_store(&measurer, &run.spec, volume, block_size);
    let mut need = run.or_cancel(measured).await?;
    if let Some(src) = &run.cfg.containerd {
        need += containerd_need(src, block_size)?;
    }
    Ok(need)
}

/// Grows the image, partition 9 and ROOT when `need` does not fit, as
/// --grow allows. On failure the caller must not publish the output: ROOT
/// may be half grown (in place, the disk image may be longer).
async fn make_room(
    cfg: &PopulateConfig,
    mut prepared: Prepared,
    need: Need,
) -> Result<(Prepared, Option<disk::GrowReport>)> {
    let (grow, headroom) = (cfg.space.grow, cfg.space.headroom);
    blocking(move || {
        let grown = disk::ensure_room(&mut prepared, Some(need), grow, headroom)?;
        Ok((prepared, grown))
    })
    .await
}

/// What [`export_and_write`] did.
struct Written {
    entries: u64,
    bytes: u64,
    via: ExportVia,
}

/// Exports the store in a helper container and writes it into ROOT as it
/// streams in; when merging, merges the names of the images that were
/// there (repositories.json) into the new ones. On failure or Ctrl-C, ROOT
/// is closed consistently with the entries before the failure written; the
/// caller must not publish the output.
async fn export_and_write(run: &mut Run<'_>, volume: &str, root: &ext4::Root) -> Result<Written> {
    let repositories = format!("{DOCKER_ROOT}/{REPOSITORIES}");
    let existing_names = if run.cfg.merge {
        ext4::read_file(root, &repositories)?
    } else {
        None
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let chunks = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|c| c.map(Ok::<_, std::io::Error>))
    });
    let stream = ReadProgress::new(
        SyncIoBridge::new(StreamReader::new(chunks)),
        Bar::bytes("exporting store", None),
    );
    #[cfg(feature = "test-hooks")]
    let stream = crate::hooks::pause_on_first_read("write", stream, run.cancel.clone());
    let writer = {
        let (root, cancel) = (root.clone(), run.cancel.clone());
        tokio::task::spawn_blocking(move || {
            ext4::write_tar(&root, DOCKER_ROOT.as_bytes(), stream, Some(&cancel))
        })
    };
    let exporter = run.name("export");
    run.res.containers.push(exporter.clone());
    let exported = run
        .or_cancel(run.engine.export_store(&exporter, &run.spec, volume, tx))
        .await;
    // The writer stops by itself once the stream ends or is cancelled; the
    // filesystem is closed consistently either way.
    let written = writer.await.context("the ext4 writer panicked")?;
    let exported = exported?;
    let stats = written.context("writing Docker's store into ROOT")?;
    if exported.finished.exit_code != 0 {
        bail!(
            "the export helper failed (exit code {}): {}",
            exported.finished.exit_code,
            exported.finished.stderr.trim()
        );
    }
    if let Some(old) = existing_names {
        let new = ext4::read_file(root, &repositories)?.unwrap_or_else(|| b"{}".to_vec());
        let merged = store::merge_repositories(&old, &new)?;
        let dir = format!("{DOCKER_ROOT}/image/overlay2");
        ext4::write_tar(
            root,
            dir.as_bytes(),
            &store::repositories_tar(&merged)?[..],
            None,
        )
        .context("writing the merged repositories.json")?;
    }
    Ok(Written {
        entries: stats.entries,
        bytes: stats.bytes,
        via: exported.via,
    })
}

/// Re-reads ROOT (its free space and the layers in the store: directories
/// of overlay2 but `l`) and moves the output to its name (converted back
/// to qcow2/vmdk when it came from there). On failure the output is
/// removed; in place, the disk holds the complete store.
fn publish(prepared: Prepared) -> Result<(ext4::FsSummary, u64)> {
    let root = prepared.fs();
    let fs = ext4::inspect(&root, ROOT_NAME).context("re-reading ROOT after writing")?;
    let layers = ext4::list_dir(&root, &format!("{DOCKER_ROOT}/overlay2"))?
        .iter()
        .filter(|n| n.as_str() != "l")
        .count() as u64;
    if let Some(out) = prepared.output {
        out.publish()?;
    }
    Ok((fs, layers))
}

/// Writes a containerd root (a directory or a tar) under
/// /var/lib/containerd and returns the entries written. On failure ROOT is
/// consistent with part of it written; the caller must not publish.
async fn write_containerd(
    root: ext4::Root,
    src: PathBuf,
    cancel: CancellationToken,
) -> Result<u64> {
    blocking(move || {
        let md = std::fs::metadata(&src)
            .with_context(|| format!("reading --containerd {}", src.display()))?;
        let target = CONTAINERD_ROOT.as_bytes();
        let stats = if md.is_dir() {
            let (reader, writer) = std::io::pipe().context("making a pipe")?;
            let dir = src.clone();
            let export = std::thread::spawn(move || store::export_tree(&dir, None, &[], writer));
            let written = ext4::write_tar(&root, target, reader, Some(&cancel));
            let exported = export
                .join()
                .map_err(|_| anyhow!("the containerd export panicked"))?;
            let stats = written?;
            exported.with_context(|| format!("reading the containerd root {}", src.display()))?;
            stats
        } else {
            let archive: Box<dyn Read + Send> = open_archive(&Input::File(src), true)?;
            ext4::write_tar(&root, target, archive, Some(&cancel))?
        };
        Ok(stats.entries)
    })
    .await
}

/// What the containerd root will take in an ext4 with `block_size`.
fn containerd_need(src: &Path, block_size: u64) -> Result<Need> {
    let md = std::fs::metadata(src)
        .with_context(|| format!("reading --containerd {}", src.display()))?;
    if md.is_dir() {
        store::measure_tree(src, None, &[], block_size)
    } else {
        crate::unpack::measure_archive(src, block_size)
    }
}

impl Summary {
    /// The summary on stderr.
    pub fn print(&self) {
        use indicatif::HumanBytes;
        let s = self;
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
}
