//! What a run reports: the summary (`--json` and the lines on stderr) and
//! the one clock that times the phases.

use std::cell::RefCell;

use std::future::Future;
use std::time::Instant;

use serde::Serialize;

use crate::disk::{self};
use crate::docker::ExportVia;

use crate::platform::Platform;

/// The platform the images are pulled for, and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct TargetPlatform {
    /// os/arch[/variant]
    #[serde(serialize_with = "crate::platform::as_string")]
    pub target: Platform,
    pub from: PlatformSource,
}

/// Where the target platform came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlatformSource {
    /// --platform
    Option,
    /// The EFI loader of DISK.
    Disk,
    /// This machine's, when the disk's could not be read (the engine runs
    /// on the same architecture: `Engine::check_arch`).
    Host,
}

impl std::fmt::Display for PlatformSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PlatformSource::Option => "option",
            PlatformSource::Disk => "disk",
            PlatformSource::Host => "host",
        })
    }
}

/// Where the store was pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreLocation {
    /// A tmpfs of the build container.
    Memory,
    /// A Docker volume of the run.
    Disk,
    /// The volume of --cache.
    Cache,
    /// The blob cache of --engine direct (layers as fetched, compressed).
    BlobCache,
}

/// What a run did for one store (`stores` in `--json`).
#[derive(Debug, Serialize)]
pub struct StoreReport {
    /// The backend's name: `docker`, `containerd`.
    pub store: &'static str,
    /// Where it is in ROOT.
    pub root: &'static str,
    /// The images of the run written into it.
    pub images: usize,
    /// Its layers in ROOT once written (those of a `--merge` included).
    pub layers: u64,
    pub entries_written: u64,
    pub bytes_written: u64,
    /// How the store left its build container.
    pub export_via: ExportVia,
    /// Where it was pulled.
    #[serde(flatten)]
    pub pulled: PullPlace,
}

/// Where a store was pulled, for the summary.
#[derive(Debug, Serialize)]
pub struct PullPlace {
    pub kind: StoreLocation,
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
    /// The sums over the stores.
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
    /// How the first store left its build container: "socket" (a daemon
    /// on this machine) or "attach" (the Docker API stream); each store's
    /// is in `stores`.
    pub export_via: ExportVia,
    /// One report per store written, in the order of the registry.
    pub stores: Vec<StoreReport>,
    pub platform: TargetPlatform,
    /// What the final verify checked (None: --no-verify).
    pub verified: Option<Verified>,
    /// The sha256 of the output (with --sha256), as `sha256sum` gives it.
    pub output_sha256: Option<String>,
    /// What was baked beside the stores.
    pub node: crate::node::Report,
}

/// What the final verify of ROOT checked (all of it held).
#[derive(Debug, Serialize)]
pub struct Verified {
    pub images: usize,
    pub layers: usize,
    pub bytes_hashed: u64,
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
    /// Writing the node's files (OEM, ESP, ROOT) beside the stores.
    pub node: f64,
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
    Node,
    Verify,
}

/// The one place that times the phases (which may run at the same time).
pub(super) struct Clock {
    origin: Instant,
    spans: RefCell<Vec<Span>>,
}

impl Clock {
    pub(super) fn new(origin: Instant) -> Clock {
        Clock {
            origin,
            spans: RefCell::new(vec![]),
        }
    }

    /// Runs `fut` as `phase`, recording when it started and ended.
    pub(super) async fn time<T>(&self, phase: Phase, fut: impl Future<Output = T>) -> T {
        let start = self.origin.elapsed().as_secs_f64();
        let out = fut.await;
        let end = self.origin.elapsed().as_secs_f64();
        self.spans.borrow_mut().push(Span { phase, start, end });
        out
    }

    pub(super) fn phases(&self) -> Phases {
        let mut p = Phases::default();
        let spans = self.spans.take();
        for s in &spans {
            *p.slot(s.phase) += s.end - s.start;
        }
        p.spans = spans;
        p
    }
}

impl Phases {
    pub(super) fn slot(&mut self, phase: Phase) -> &mut f64 {
        match phase {
            Phase::Start => &mut self.start,
            Phase::Pull => &mut self.pull,
            Phase::Stop => &mut self.stop,
            Phase::Measure => &mut self.measure,
            Phase::Copy => &mut self.copy,
            Phase::Grow => &mut self.grow,
            Phase::ExportAndWrite => &mut self.export_and_write,
            Phase::Containerd => &mut self.containerd,
            Phase::Node => &mut self.node,
            Phase::Verify => &mut self.verify,
        }
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
                "  {}: {} {} {} (from {}{})",
                i.store,
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
        for line in s.node.lines() {
            eprintln!("{line}");
        }
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
        if let Some(h) = &s.output_sha256 {
            eprintln!("sha256: {h}  {}", s.output);
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
        for st in &s.stores {
            let pulled = &st.pulled;
            let how = match st.export_via {
                ExportVia::Direct => {
                    "straight from the registries (--engine direct, blobs in the blob cache)"
                        .to_string()
                }
                via => format!(
                    "pulled {} ({} used), exported via {}",
                    match (pulled.kind, pulled.fell_back_to_disk) {
                        (StoreLocation::Memory, _) => "in memory",
                        (StoreLocation::Cache, _) => "in the cache",
                        (StoreLocation::BlobCache, _) => "into the blob cache",
                        (_, true) => "on disk, after outgrowing memory",
                        _ => "on disk",
                    },
                    HumanBytes(pulled.used_bytes),
                    match via {
                        ExportVia::Socket => "socket",
                        _ => "attach stream",
                    }
                ),
            };
            eprintln!(
                "store: {} ({}): {} image(s), {} layers, {} entries, {} written, {how}",
                st.store,
                st.root,
                st.images,
                st.layers,
                st.entries_written,
                HumanBytes(st.bytes_written),
            );
        }
        eprintln!(
            "time: start {:.1} s, pull {:.1} s, stop {:.1} s, measure {:.1} s, copy {:.1} s, grow {:.1} s, export+write {:.1} s, containerd {:.1} s, node {:.1} s, verify {:.1} s, total {:.1} s (phases overlap)",
            p.start,
            p.pull, p.stop, p.measure, p.copy, p.grow, p.export_and_write, p.containerd, p.node, p.verify, p.total
        );
    }
}

/// One image of the run, in the inner daemon.
#[derive(Debug, Serialize)]
pub struct PulledImage {
    /// The store it went into (the backend's name).
    pub store: &'static str,
    /// The source as given (a reference, `docker-archive:PATH[:NAME]`, ...).
    pub reference: String,
    pub id: String,
    /// The platform of the image (os/arch[/variant]).
    #[serde(serialize_with = "crate::platform::as_string")]
    pub platform: Platform,
    /// Its names in the store (tags and digests).
    pub names: Vec<String>,
    /// Where it came from.
    pub source: ImageSource,
    /// The layers downloaded from the registry (by the digest prefix the
    /// daemon reports); empty when all were there already.
    pub downloaded_layers: Vec<String>,
}

/// Where an image of the run came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSource {
    Registry,
    /// A registry image whose layers were all in the cache already.
    Cache,
    Archive,
    Daemon,
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageSource::Registry => "registry",
            ImageSource::Cache => "cache",
            ImageSource::Archive => "archive",
            ImageSource::Daemon => "daemon",
        })
    }
}
