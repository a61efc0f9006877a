//! `flatcar-preload populate`: pull the listed images in a dind container
//! and stream its store into ROOT, in one stream:
//! registry -> dind (overlay2, store in memory or on a volume) -> stop ->
//! export helper in the dind (PAX tar, all xattrs) -> socket or attach
//! stream -> tar reader -> ext4 writer -> OUTPUT.
//!
//! [`populate`] is the list of the phases, each a function below that says
//! what it leaves behind when it fails. Phases that do not need each other
//! run at the same time: the output copy with the pull, measuring and
//! growing with stopping the inner daemon.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tokio_util::sync::CancellationToken;

use crate::disk::{self, Prepared, ROOT_NAME};
use crate::docker::{
    DindNetwork, DindSpec, Engine, ExportVia, NameInUse, RegistryAccess, RegistryOptions,
    StoreMount,
};
use crate::ext4::{self, Need};
use crate::fsread::FsRead;
use crate::platform::Platform;
use crate::progress::{Bar, ReadProgress};
use crate::source::archive;
use crate::source::{ImageRef, Listed, Source};
use crate::store::{self, CONTAINERD_ROOT, DOCKER_ROOT, REPOSITORIES};
use crate::unpack::{open_archive, Input, OutputMode, Space};

pub mod cache;
mod images;

use images::{Checked, PulledImage};

#[derive(Debug, Clone)]
pub struct PopulateConfig {
    pub disk: PathBuf,
    pub images: Vec<Listed>,
    pub space: Space,
    pub output: OutputMode,
    pub dind_image: String,
    pub dind_network: DindNetwork,
    pub privileged: bool,
    pub merge: bool,
    pub containerd: Option<PathBuf>,
    pub keep_dind: bool,
    pub store: StoreChoice,
    /// The most memory the in-memory store may take (None: see
    /// [`memory_budget`]).
    pub store_memory_cap: Option<u64>,
    pub jobs: usize,
    pub registry: RegistryOptions,
    /// --platform (None: the disk's, else this machine's).
    pub platform: Option<Platform>,
    pub allow_platform_mismatch: bool,
    /// --cache NAME: the store lives in that volume, kept between runs.
    pub cache: Option<String>,
    /// --cache-prune: images of the cache that are not in the list are
    /// removed from it.
    pub cache_prune: bool,
    /// End with `verify` of what was written.
    pub verify: bool,
}

/// The platform the images are pulled for, and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct TargetPlatform {
    /// os/arch[/variant]
    pub target: String,
    /// "option" (--platform), "disk" (the EFI loader of DISK) or "host"
    /// (this machine's, when the disk's could not be read; the engine runs
    /// on the same, see [`Engine::check_arch`]).
    pub from: &'static str,
}

/// What the local inputs gave: checked before any engine is contacted.
struct Local {
    access: RegistryAccess,
    /// Per source, what the local checks learnt.
    prepared: Vec<Checked>,
    platform: TargetPlatform,
}

/// Where the inner daemon's store lives while pulling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChoice {
    /// Memory when the cap is at least [`MIN_MEMORY_STORE`], else disk.
    Auto,
    Memory,
    Disk,
}

/// `--store auto` takes memory only with at least this much to spare:
/// below, most image sets would not fit and would be pulled twice.
const MIN_MEMORY_STORE: u64 = 1 << 30;

/// What is left to the rest of the engine's machine when the tool runs
/// there: the store in memory must not push it into swapping or the OOM
/// killer.
const MEMORY_RESERVE: u64 = 1 << 30;

/// Where the store was pulled, for the summary.
#[derive(Debug, Serialize)]
pub struct StoreReport {
    /// "memory" (a tmpfs), "disk" (a Docker volume) or "cache" (the
    /// volume of --cache).
    pub kind: &'static str,
    /// The size cap of the tmpfs, when memory was tried.
    pub memory_cap_bytes: Option<u64>,
    /// Whether the images outgrew the memory cap and were pulled again on
    /// disk.
    pub fell_back_to_disk: bool,
    /// What the store took on its filesystem once pulled (for memory: the
    /// tmpfs's use at the end of the pull).
    pub used_bytes: u64,
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
    /// How the store left the dind: "socket" (a daemon on this
    /// machine) or "attach" (the Docker API stream).
    pub export_via: ExportVia,
    pub store: StoreReport,
    pub platform: TargetPlatform,
    /// What the final verify checked (None: --no-verify).
    pub verified: Option<Verified>,
}

/// What the final verify of ROOT checked (all of it held).
#[derive(Debug, Serialize)]
pub struct Verified {
    pub images: usize,
    pub layers: usize,
    pub bytes_hashed: u64,
}

/// Verifies the store written into ROOT (see `verify`); fails naming every
/// check that does not hold, so that the output is not published.
async fn verify_written(root: ext4::Root) -> Result<Verified> {
    blocking(move || {
        let report = crate::verify::check_root(&root)?;
        if !report.failures.is_empty() {
            let lines: Vec<String> = report.failures.iter().map(|f| f.to_string()).collect();
            bail!(
                "the store written into ROOT does not verify ({} check(s) failed); the output is not kept:\n  {}",
                lines.len(),
                lines.join("\n  ")
            );
        }
        Ok(Verified {
            images: report.images,
            layers: report.layers,
            bytes_hashed: report.bytes_hashed,
        })
    })
    .await
}

/// Seconds spent in each phase. Phases overlap: each one's start and end
/// (seconds since the run started) are in `spans`, and `total` is the
/// wall time of the run.
#[derive(Debug, Default, Serialize)]
pub struct Phases {
    /// Starting the dind (its dockerd answering).
    pub start: f64,
    /// Getting the images into the dind's daemon.
    pub pull: f64,
    pub stop: f64,
    pub measure: f64,
    pub copy: f64,
    pub grow: f64,
    pub export_and_write: f64,
    pub containerd: f64,
    pub verify: f64,
    pub total: f64,
    pub spans: Vec<Span>,
}

/// When a phase ran, in seconds since the run started.
#[derive(Debug, Serialize)]
pub struct Span {
    pub phase: Phase,
    pub start: f64,
    pub end: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Start,
    Pull,
    Stop,
    Measure,
    Copy,
    Grow,
    ExportAndWrite,
    Containerd,
    Verify,
}

/// The one place that times the phases (which may run at the same time).
struct Clock {
    origin: Instant,
    spans: RefCell<Vec<Span>>,
}

impl Clock {
    fn new(origin: Instant) -> Clock {
        Clock {
            origin,
            spans: RefCell::new(vec![]),
        }
    }

    /// Runs `fut` as `phase`, recording when it started and ended.
    async fn time<T>(&self, phase: Phase, fut: impl Future<Output = T>) -> T {
        let start = self.origin.elapsed().as_secs_f64();
        let out = fut.await;
        let end = self.origin.elapsed().as_secs_f64();
        self.spans.borrow_mut().push(Span { phase, start, end });
        out
    }

    fn phases(self) -> Phases {
        let mut p = Phases::default();
        let spans = self.spans.into_inner();
        for s in &spans {
            *p.slot(s.phase) += s.end - s.start;
        }
        p.spans = spans;
        p
    }
}

impl Phases {
    fn slot(&mut self, phase: Phase) -> &mut f64 {
        match phase {
            Phase::Start => &mut self.start,
            Phase::Pull => &mut self.pull,
            Phase::Stop => &mut self.stop,
            Phase::Measure => &mut self.measure,
            Phase::Copy => &mut self.copy,
            Phase::Grow => &mut self.grow,
            Phase::ExportAndWrite => &mut self.export_and_write,
            Phase::Containerd => &mut self.containerd,
            Phase::Verify => &mut self.verify,
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
    /// Credentials and certificates for the pull.
    access: RegistryAccess,
    /// Set once the pull helper has read the manifest of every image.
    manifests_read: tokio::sync::watch::Sender<bool>,
    /// Each source as text, for progress and messages.
    names: Vec<String>,
    /// Per source, what the checks learnt (archives, the engine's images).
    prepared: Vec<Checked>,
    platform: TargetPlatform,
    /// The dind container's name (with --cache, the cache's: only one run
    /// at a time may use it).
    dind: String,
    /// With --cache: the images of this run (a JSON store selection), the
    /// only ones exported from a store that may hold others.
    selection: Option<Vec<u8>>,
    /// The private directory of the export socket (bind-mounted into the
    /// dind); None forces the attach stream.
    socket_dir: Option<tempfile::TempDir>,
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
    // Local inputs first: a wrong path, list, credential or certificate
    // fails before any engine is contacted.
    let Local {
        access,
        platform,
        prepared,
    } = check_local_inputs(cfg)?;
    let engine = Engine::connect().await?;
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() % 100_000)
    );
    let spec = DindSpec {
        image: cfg.dind_image.clone(),
        network: cfg.dind_network.clone(),
        privileged: cfg.privileged,
        downloads: cfg.jobs,
        daemon_args: access.daemon_args.clone(),
        files: access.certs.clone(),
        run_id: run_id.clone(),
    };
    let mut run = Run {
        cfg,
        engine,
        cancel,
        spec,
        res: Resources::default(),
        socket_dir: None,
        access,
        platform,
        manifests_read: tokio::sync::watch::Sender::new(false),
        names: cfg.images.iter().map(|l| l.source.to_string()).collect(),
        prepared,
        dind: match &cfg.cache {
            Some(c) => cache::dind_name(c),
            None => format!("flatcar-preload-{run_id}-dind"),
        },
        selection: None,
    };
    let result = populate(&mut run, start).await;
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
async fn populate(run: &mut Run<'_>, origin: Instant) -> Result<Summary> {
    let cfg = run.cfg;
    let clock = Clock::new(origin);
    check_engine(run).await?;
    let memory_cap = plan_store(run).await?;
    run.socket_dir = socket_dir()?;
    let ((images, mut store), prepared) = pull_beside_copy(run, &clock, memory_cap).await?;
    let (used, (prepared, grown), need) = stop_beside_measure(run, &clock, prepared).await?;
    store.used_bytes = used;
    let root = prepared.fs();
    let written = clock
        .time(Phase::ExportAndWrite, export_and_write(run, &root))
        .await?;
    let containerd_entries = match &cfg.containerd {
        Some(src) => {
            let job = write_containerd(root.clone(), src.clone(), run.cancel.clone());
            clock.time(Phase::Containerd, job).await?
        }
        None => 0,
    };
    let verified = match cfg.verify {
        true => Some(
            clock
                .time(Phase::Verify, verify_written(root.clone()))
                .await?,
        ),
        false => None,
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
        seconds: clock.phases(),
        output: cfg.output.path().unwrap_or(&cfg.disk).display().to_string(),
        export_via: written.via,
        store,
        platform: run.platform.clone(),
        verified,
    })
}

/// Pulls (see [`pull_store`]) and makes the output (see [`make_output`])
/// at the same time: neither needs the other. The output is only started
/// once the registries have answered for every image, so that a run that
/// cannot pull (a wrong password, an untrusted certificate, another
/// platform) writes nothing. The first to fail stops the other, and its
/// error is returned.
async fn pull_beside_copy(
    run: &mut Run<'_>,
    clock: &Clock,
    memory_cap: Option<u64>,
) -> Result<((Vec<PulledImage>, StoreReport), Prepared)> {
    let cfg = run.cfg;
    let outer = run.cancel.clone();
    let both = outer.child_token();
    run.cancel = both.clone();
    let first_failed = Cell::new(None);
    let failing = |failed: bool, which: u8| {
        if failed && first_failed.get().is_none() {
            first_failed.set(Some(which));
            both.cancel();
        }
    };
    let mut checked = run.manifests_read.subscribe();
    let copy = async {
        // Nothing is written before the registries have answered for every
        // image (logins, certificates, platforms).
        let answered = checked.wait_for(|read| *read);
        if both.run_until_cancelled(answered).await.is_none() {
            bail!("interrupted");
        }
        clock
            .time(Phase::Copy, make_output(cfg, both.clone()))
            .await
    };
    let pull = async {
        let r = pull_store(run, clock, memory_cap).await;
        failing(r.is_err(), 0);
        r
    };
    let copy = async {
        let r = copy.await;
        failing(r.is_err(), 1);
        r
    };
    let (pulled, prepared) = tokio::join!(pull, copy);
    run.cancel = outer;
    match (pulled, prepared, first_failed.get()) {
        (Ok(p), Ok(o), _) => Ok((p, o)),
        (Err(e), _, Some(0)) | (_, Err(e), Some(1)) => Err(e),
        (Err(e), _, _) | (_, Err(e), _) => Err(e),
    }
}

/// Stops the inner daemon (see [`stop_dind`]) while measuring the store and
/// making room for it: stopping changes nothing that is exported (the
/// layers and the image database are complete once the pulls have
/// returned). Returns what the store took, the output with room made and
/// what the store needs. The export must wait for all of it.
async fn stop_beside_measure(
    run: &Run<'_>,
    clock: &Clock,
    prepared: Prepared,
) -> Result<(u64, (Prepared, Option<disk::GrowReport>), Need)> {
    let stop = clock.time(Phase::Stop, stop_dind(run));
    let room = async {
        let need = clock.time(Phase::Measure, measure(run, &prepared)).await?;
        let grown = clock
            .time(Phase::Grow, make_room(run.cfg, prepared, need))
            .await?;
        Ok::<_, anyhow::Error>((grown, need))
    };
    let (stopped, room) = tokio::join!(stop, room);
    let used = stopped?;
    let (grown, need) = room?;
    Ok((used, grown, need))
}

/// The private directory of the export socket, or None when the tests
/// force the attach stream.
fn socket_dir() -> Result<Option<tempfile::TempDir>> {
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

/// How much memory the store may take: half of the engine's machine
/// (`engine_total`), and no more than `here_available` less
/// [`MEMORY_RESERVE`] when the engine runs on this machine. 0 when unknown.
fn memory_budget(engine_total: u64, here_available: Option<u64>) -> u64 {
    let half = engine_total / 2;
    match here_available {
        Some(a) => half.min(a.saturating_sub(MEMORY_RESERVE)),
        None => half,
    }
}

/// MemAvailable of /proc/meminfo, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Decides where the store lives: Some(cap) for a tmpfs of at most `cap`
/// bytes, None for a Docker volume.
async fn plan_store(run: &Run<'_>) -> Result<Option<u64>> {
    let cfg = run.cfg;
    if cfg.store == StoreChoice::Disk {
        return Ok(None);
    }
    let cap = match cfg.store_memory_cap {
        Some(c) => c,
        None => {
            // The engine's machine is this one: leave it its reserve.
            let here = run.engine.is_local().then(|| {
                let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
                mem_available(&meminfo)
            });
            memory_budget(run.engine.mem_total(), here.flatten())
        }
    };
    Ok(match cfg.store {
        // A tmpfs of size 0 would have no limit at all.
        StoreChoice::Memory if cap == 0 => {
            eprintln!(
                "the memory of the Docker engine's machine is unknown: pulling with the store on disk"
            );
            None
        }
        StoreChoice::Memory => Some(cap),
        _ if cap >= MIN_MEMORY_STORE => Some(cap),
        _ => None,
    })
}

/// Starts the dind and pulls, with the store in a tmpfs of at most
/// `memory_cap` bytes when given, else on a volume. When the images
/// outgrow the tmpfs, says so and pulls them again on a volume. On failure
/// nothing was written; the dind (and volume) are recorded for removal.
async fn pull_store(
    run: &mut Run<'_>,
    clock: &Clock,
    memory_cap: Option<u64>,
) -> Result<(Vec<PulledImage>, StoreReport)> {
    if let Some(name) = run.cfg.cache.clone() {
        let volume = cache::volume_name(&name);
        run.engine.ensure_cache_volume(&volume, &name).await?;
        clock
            .time(Phase::Start, start_dind(run, &StoreMount::Volume(volume)))
            .await?;
        let images = clock.time(Phase::Pull, images::acquire(run)).await?;
        if run.cfg.cache_prune {
            images::prune(run, &images).await?;
        }
        run.selection = Some(images::selection(&images)?);
        let report = StoreReport {
            kind: "cache",
            memory_cap_bytes: None,
            fell_back_to_disk: false,
            used_bytes: 0,
        };
        return Ok((images, report));
    }
    if let Some(cap) = memory_cap {
        let memory = StoreMount::Memory { cap };
        clock.time(Phase::Start, start_dind(run, &memory)).await?;
        match clock.time(Phase::Pull, images::acquire(run)).await {
            Ok(images) => {
                let report = StoreReport {
                    kind: "memory",
                    memory_cap_bytes: Some(cap),
                    fell_back_to_disk: false,
                    used_bytes: 0,
                };
                return Ok((images, report));
            }
            Err(e) if e.downcast_ref::<OutOfSpace>().is_some() => {
                eprintln!(
                    "the images do not fit in the store in memory ({} at most): pulling them again with the store on disk",
                    indicatif::HumanBytes(cap)
                );
                let dind = run.dind.clone();
                run.engine.remove_container(&dind).await?;
                run.res.containers.retain(|c| *c != dind);
            }
            Err(e) => return Err(e),
        }
    }
    let volume = run.name("store");
    run.engine.create_volume(&volume, &run.spec.run_id).await?;
    run.res.volumes.push(volume.clone());
    let disk = StoreMount::Volume(volume);
    clock.time(Phase::Start, start_dind(run, &disk)).await?;
    let images = clock.time(Phase::Pull, images::acquire(run)).await?;
    let report = StoreReport {
        kind: "disk",
        memory_cap_bytes: memory_cap,
        fell_back_to_disk: memory_cap.is_some(),
        used_bytes: 0,
    };
    Ok((images, report))
}

/// A pull failed because the store's filesystem is full.
#[derive(Debug)]
struct OutOfSpace(String);

impl std::fmt::Display for OutOfSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OutOfSpace {}

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

/// Checks the local inputs: the list, the disk (a compressed or
/// qcow2/vmdk one only once converted), the registry credentials and
/// certificates; finds the target platform. Leaves nothing behind.
fn check_local_inputs(cfg: &PopulateConfig) -> Result<Local> {
    if cfg.images.is_empty() {
        bail!("no images to preload: give references or an image list with entries");
    }
    if let (_, Some(root)) = disk::check_input(&cfg.disk, cfg.output.path().is_none())? {
        check_existing(cfg, &ext4::Root::new(&cfg.disk, root.offset))?;
    }
    let refs: Vec<ImageRef> = cfg
        .images
        .iter()
        .filter_map(|l| l.source.registry_ref().cloned())
        .collect();
    let access = cfg.registry.prepare(&refs)?;
    let platform = match &cfg.platform {
        Some(p) => TargetPlatform {
            target: p.to_string(),
            from: "option",
        },
        None => match disk::esp::detect_platform(&cfg.disk)? {
            Ok(p) => TargetPlatform {
                target: p.to_string(),
                from: "disk",
            },
            Err(reason) => {
                let target = Platform::of_host().to_string();
                eprintln!(
                    "warning: cannot tell the platform of {} ({reason}): pulling for this machine's, {target}; pass --platform to choose",
                    cfg.disk.display()
                );
                TargetPlatform {
                    target,
                    from: "host",
                }
            }
        },
    };
    let target: Platform = platform.target.parse()?;
    let mut prepared = vec![];
    for l in &cfg.images {
        prepared.push(match &l.source {
            Source::Registry(_) => Checked::Registry,
            // Checked against the engine (see check_engine).
            Source::Daemon(r) => Checked::Daemon(r.to_string(), String::new()),
            Source::Archive { format, path, name } => {
                let checked = archive::check(
                    *format,
                    path,
                    name.as_ref(),
                    &target,
                    cfg.allow_platform_mismatch,
                )
                .with_context(|| format!("{} ({})", l.source, l.origin))?;
                Checked::Archive(std::sync::Arc::new(checked))
            }
        });
    }
    Ok(Local {
        access,
        platform,
        prepared,
    })
}

/// Checks the engine before pulling: its architecture, the images of the
/// engine the list names (present, of the target platform) and the dind
/// image (pulled when missing). Leaves nothing behind.
async fn check_engine(run: &mut Run<'_>) -> Result<()> {
    run.engine.check_arch()?;
    let target: Platform = run.platform.target.parse()?;
    for (l, prepared) in run.cfg.images.iter().zip(run.prepared.iter_mut()) {
        let Source::Daemon(r) = &l.source else {
            continue;
        };
        let name = r.to_string();
        let (id, platform) = run
            .engine
            .image_platform(&name)
            .await
            .with_context(|| format!("{} ({})", l.source, l.origin))?;
        if !target.accepts(&platform) && !run.cfg.allow_platform_mismatch {
            bail!(
                "{} ({}): it is a {platform} image, but the target platform is {target}: it could not run there; \
                 pass --allow-platform-mismatch to preload it anyway",
                l.source,
                l.origin
            );
        }
        *prepared = Checked::Daemon(name, id);
    }
    run.or_cancel(run.engine.ensure_image(&run.cfg.dind_image))
        .await
}

/// Starts the dind with its store in `store`. On failure the container is
/// already recorded for removal (unless it was not made because a run
/// using the same cache has it).
async fn start_dind(run: &mut Run<'_>, store: &StoreMount) -> Result<()> {
    let dind = run.dind.clone();
    let socket_dir = run.socket_dir.as_ref().map(|d| d.path());
    let started = run.engine.start_dind(&dind, &run.spec, store, socket_dir);
    match run.or_cancel(started).await {
        Err(e) if e.downcast_ref::<NameInUse>().is_some() => match &run.cfg.cache {
            Some(c) => bail!(
                "the cache {c:?} is in use by another run (its container {dind} exists); \
                 run again when it is done, or use another --cache. If no run is using it \
                 (one was killed), remove the container: docker rm -f {dind}"
            ),
            None => Err(e),
        },
        result => {
            run.res.containers.push(dind);
            result
        }
    }
}

/// Stops the inner daemon cleanly (the container stays, with a store in
/// memory) and returns what the store takes: the store must be quiescent
/// before it is exported. On failure nothing was written.
async fn stop_dind(run: &Run<'_>) -> Result<u64> {
    let dind = run.dind.clone();
    let stopped = run.or_cancel(run.engine.stop_inner(&dind)).await?;
    if stopped.exit_code != 0 {
        bail!(
            "the inner dockerd did not shut down cleanly (exit code {}); its last lines:\n{}",
            stopped.exit_code,
            run.engine.logs_tail(&dind).await
        );
    }
    Ok(stopped.store_used_bytes)
}

/// Makes the image to write into: the disk itself (--in-place) or a
/// sparse, decompressed or converted copy, and checks its ROOT again. On
/// failure a partial copy is removed and the disk is untouched.
async fn make_output(cfg: &PopulateConfig, cancel: CancellationToken) -> Result<Prepared> {
    let (disk, out, raw) = (
        cfg.disk.clone(),
        cfg.output.path().map(Path::to_path_buf),
        cfg.space.raw_output,
    );
    let prepared =
        blocking(move || disk::prepare(&disk, out.as_deref(), raw, Some(&cancel))).await?;
    check_existing(cfg, &prepared.fs())?;
    Ok(prepared)
}

/// Measures what the store (and the containerd root) will take in ROOT,
/// with the helper in the dind. Writes nothing.
async fn measure(run: &Run<'_>, prepared: &Prepared) -> Result<Need> {
    let block_size = ext4::inspect(&prepared.fs(), ROOT_NAME)?.block_size;
    let dind = run.dind.clone();
    let measured = run
        .engine
        .measure_store(&dind, block_size, run.selection.as_deref());
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

/// Exports the store with the helper in the stopped dind and writes it into ROOT as it
/// streams in; when merging, merges the names of the images that were
/// there (repositories.json) into the new ones. On failure or Ctrl-C, ROOT
/// is closed consistently with the entries before the failure written; the
/// caller must not publish the output.
async fn export_and_write(run: &Run<'_>, root: &ext4::Root) -> Result<Written> {
    let repositories = format!("{DOCKER_ROOT}/{REPOSITORIES}");
    let existing_names = match run.cfg.merge {
        true => ext4::read_file(root, &repositories)?.map(|names| {
            let fs = ext4::read::Reader::open(root)?;
            Ok::<_, anyhow::Error>((names, store::layer_dirs(&fs, DOCKER_ROOT)?))
        }),
        false => None,
    }
    .transpose()?;
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
    let socket_dir = run.socket_dir.as_ref().map(|d| d.path());
    let exported = run
        .or_cancel(
            run.engine
                .export_store(&run.dind, socket_dir, run.selection.as_deref(), tx),
        )
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
    if let Some((old, layers_before)) = existing_names {
        relink_shared_layers(root, &layers_before)?;
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

/// --merge: a layer the new images share with the images already in ROOT
/// (the same chain ID) was written again under a new overlay2 directory,
/// and its layerdb entry now names that one. The layers of the older
/// images above it still list the old directory's short link in their
/// `lower` file: point them at the new one, as Docker would have, so that
/// every layer's `lower` agrees with the layerdb. (The old directory stays,
/// unused.)
fn relink_shared_layers(root: &ext4::Root, before: &BTreeMap<String, String>) -> Result<()> {
    let fs = ext4::read::Reader::open(root)?;
    let after = store::layer_dirs(&fs, DOCKER_ROOT)?;
    let overlay = format!("{DOCKER_ROOT}/overlay2");
    let link_of = |cache_id: &str| -> Result<String> {
        let l = fs.read_all(format!("{overlay}/{cache_id}/link").as_bytes())?;
        Ok(String::from_utf8_lossy(&l).trim().to_string())
    };
    let mut moved = BTreeMap::new();
    for (chain, old) in before {
        match after.get(chain) {
            Some(new) if new != old => {
                moved.insert(
                    format!("l/{}", link_of(old)?),
                    format!("l/{}", link_of(new)?),
                );
            }
            _ => {}
        }
    }
    if moved.is_empty() {
        return Ok(());
    }
    let mut rewrites = vec![];
    for dir in fs.read_dir(overlay.as_bytes())? {
        let dir = String::from_utf8_lossy(&dir).into_owned();
        let lower = format!("{overlay}/{dir}/lower");
        if dir == "l" || fs.stat(lower.as_bytes())?.is_none() {
            continue;
        }
        let text = String::from_utf8_lossy(&fs.read_all(lower.as_bytes())?).into_owned();
        let relinked: Vec<&str> = text
            .split(':')
            .map(|l| moved.get(l).map_or(l, String::as_str))
            .collect();
        let relinked = relinked.join(":");
        if relinked != text {
            rewrites.push((format!("{overlay}/{dir}"), relinked));
        }
    }
    drop(fs);
    for (dir, lower) in rewrites {
        ext4::write_tar(
            root,
            dir.as_bytes(),
            &store::file_tar("lower", lower.as_bytes(), 0o644)?[..],
            None,
        )
        .with_context(|| format!("relinking {dir}/lower to the shared layers"))?;
    }
    Ok(())
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
            eprintln!(
                "  {} {} {} (from {}{})",
                i.reference,
                i.id,
                i.platform,
                i.source,
                match i.downloaded_layers.len() {
                    0 => String::new(),
                    n => format!(", {n} layers downloaded"),
                }
            );
        }
        eprintln!("platform: {} (from {})", s.platform.target, s.platform.from);
        match &s.verified {
            Some(v) => eprintln!(
                "verified: {} image(s), {} layer(s), {} of layer data hashed against their digests",
                v.images,
                v.layers,
                HumanBytes(v.bytes_hashed)
            ),
            None => eprintln!("not verified (--no-verify)"),
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
            "store: pulled {} ({})",
            match (s.store.kind, s.store.fell_back_to_disk) {
                ("memory", _) => "in memory".to_string(),
                (_, true) => "on disk, after outgrowing memory".to_string(),
                _ => "on disk".to_string(),
            },
            HumanBytes(s.store.used_bytes)
        );
        eprintln!(
            "time: start {:.1} s, pull {:.1} s, stop {:.1} s, measure {:.1} s, copy {:.1} s, grow {:.1} s, export+write {:.1} s, containerd {:.1} s, verify {:.1} s, total {:.1} s (phases overlap)",
            p.start,
            p.pull, p.stop, p.measure, p.copy, p.grow, p.export_and_write, p.containerd, p.verify, p.total
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_budget_is_half_the_engine_and_leaves_a_reserve_here() {
        const GIB: u64 = 1 << 30;
        assert_eq!(memory_budget(8 * GIB, None), 4 * GIB);
        assert_eq!(memory_budget(8 * GIB, Some(7 * GIB)), 4 * GIB);
        assert_eq!(memory_budget(8 * GIB, Some(2 * GIB)), GIB);
        assert_eq!(memory_budget(8 * GIB, Some(GIB / 2)), 0);
        assert_eq!(memory_budget(0, None), 0);
        let meminfo =
            "MemTotal:       24683976 kB\nMemFree:  572344 kB\nMemAvailable:   23498116 kB\n";
        assert_eq!(mem_available(meminfo), Some(23498116 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }
}
