//! The helpers the tool runs in its build container, as one typed
//! protocol: what the tool asks ([`Request`]: the build container's init,
//! its stop, and store-neutral [`StoreRequest`]s that name the backend
//! serving them; one serde definition gives the command line,
//! [`Request::argv`], and its reading back under the hidden `internal`
//! command of the same binary, uploaded into the container) and
//! what the helpers answer ([`Event`] lines on stdout, with failures of a
//! [`FailureKind`] the tool branches on, and the JSON results of
//! [`Stopped`] and measuring).
//!
//! Secrets and bulk data never go on the command line (it shows in `docker
//! inspect` and `docker events`): they are the helper's standard input.

use std::path::PathBuf;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::platform::Platform;

/// Where the helper binary is put inside the build container.
pub const HELPER_DIR: &str = "/fp-helper";
pub const HELPER_PATH: &str = "/fp-helper/flatcar-preload";
/// Where the helper's `unpigz` link to HELPER_PATH is (see `unpigz`).
pub const HELPER_BIN: &str = "/fp-helper/bin";
/// The hidden command of the binary that the requests are subcommands of.
pub const INTERNAL: &str = "internal";

/// What the tool asks a helper in the build container to do. One
/// definition gives both the command line ([`Request::argv`]: the request
/// as one JSON argument) and its reading back ([`Request::parse`]), so the
/// two cannot drift apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The build container's first process: runs the daemon `cmd`, and
    /// keeps the container (and a store in memory) alive once the daemon
    /// has stopped.
    Init { cmd: Vec<String> },
    /// Something of one store's daemon or files (see [`StoreOp`]).
    Store(StoreRequest),
    /// Stops the daemon (through the init), waits until it has exited and
    /// prints a [`Stopped`] for the store at `root`.
    Stop { root: PathBuf },
}

/// A request about one image store: which backend (by its name, as
/// `store::by_name` finds it), what the run asks of every store, and what
/// to do. The store-neutral form of every per-store helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreRequest {
    pub store: String,
    pub options: StoreOptions,
    pub op: StoreOp,
}

/// The store a request is about: a [`StoreRequest`] without its op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRef {
    /// The backend's name.
    pub store: String,
    pub options: StoreOptions,
}

impl StoreRef {
    /// The request to do `op` for this store.
    pub fn request(&self, op: StoreOp) -> Request {
        Request::Store(StoreRequest {
            store: self.store.clone(),
            options: self.options.clone(),
            op,
        })
    }
}

/// What a run asks of its stores beyond the images; each backend reads
/// what concerns it (Docker's store has no namespaces, for one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreOptions {
    /// The namespace the images go to (containerd: k8s.io, moby).
    pub namespace: String,
    /// Every image record labelled as the CRI pins it.
    pub pin: bool,
    /// The target's containerd (what its metadata database must be).
    pub containerd_version: ContainerdVersion,
}

/// What a helper does for a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum StoreOp {
    /// Returns once the store's daemon answers on its socket, refusing a
    /// daemon whose store the target cannot read.
    Ready,
    /// Pulls images into the daemon, reporting [`Event`]s. Input: one JSON
    /// line of credentials.
    Pull(PullOp),
    /// Loads the docker-archive tar of its input into the daemon, as a
    /// pull leaves an image, reporting each as one of source number
    /// `index`.
    Load { platform: Platform, index: usize },
    /// Removes every image of the daemon's store but those its input names
    /// (a JSON list: Docker's image IDs, containerd's record names), and
    /// what only they kept, printing `removed NAME` for each.
    Prune,
    /// Prints (JSON) what the store at `root` will take in an ext4 with
    /// `block_size`. With `selection`, only the images of the JSON
    /// selection of its input.
    Measure {
        root: PathBuf,
        block_size: u64,
        selection: bool,
    },
    /// Writes the store at `root` as a PAX tar with every xattr, to the
    /// unix socket `socket` when it accepts a connection, else to stdout.
    /// With `selection`, only the images of the JSON selection of its
    /// input. `stamp` (seconds since 1970) is the time written where the
    /// daemon wrote the time of the pull (a reproducible export).
    Export {
        root: PathBuf,
        socket: Option<PathBuf>,
        selection: bool,
        stamp: i64,
    },
}

/// What a pull helper is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullOp {
    /// At most this many images at once.
    pub jobs: usize,
    pub platform: Platform,
    pub allow_platform_mismatch: bool,
    /// Fail an image whose pull makes no progress for this long (0: never).
    pub stall_seconds: u64,
    /// `--locked`: a reference with a tag and a digest fails when the tag
    /// no longer names that digest.
    pub locked: bool,
    pub refs: Vec<String>,
}

impl PullOp {
    /// The references to pull, parsed.
    pub fn parsed_refs(&self) -> anyhow::Result<Vec<crate::source::ImageRef>> {
        self.refs
            .iter()
            .map(|r| crate::source::ImageRef::parse(r))
            .collect()
    }

    /// How long an image's pull may make no progress (None: for ever).
    pub fn stall(&self) -> Option<std::time::Duration> {
        (self.stall_seconds > 0).then(|| std::time::Duration::from_secs(self.stall_seconds))
    }
}

impl Request {
    /// The command line that runs this request in the build container.
    pub fn argv(&self) -> Vec<String> {
        let json = serde_json::to_string(self).expect("a request serializes");
        vec![HELPER_PATH.into(), INTERNAL.into(), json]
    }

    /// The request of the command line's argument (the other end of
    /// [`Request::argv`]).
    pub fn parse(arg: &str) -> Result<Request, String> {
        serde_json::from_str(arg).map_err(|e| format!("not a request of this version: {e}"))
    }

    /// A short name for messages ("the pull helper").
    pub fn what(&self) -> &'static str {
        match self {
            Request::Init { .. } => "the build container's init",
            Request::Stop { .. } => "the stop helper",
            Request::Store(r) => match r.op {
                StoreOp::Ready => "the readiness check",
                StoreOp::Pull(_) => "the pull helper",
                StoreOp::Load { .. } => "the load helper",
                StoreOp::Prune => "the prune helper",
                StoreOp::Measure { .. } => "the measure helper",
                StoreOp::Export { .. } => "the export helper",
            },
        }
    }
}

/// The containerd release series of a target (Flatcar LTS 1.7, stable 2.1,
/// beta and alpha 2.2): what its metadata database and sandbox image are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
pub enum ContainerdVersion {
    #[value(name = "1.7")]
    #[serde(rename = "1.7")]
    V1_7,
    #[value(name = "2.1")]
    #[serde(rename = "2.1")]
    V2_1,
    #[value(name = "2.2")]
    #[serde(rename = "2.2")]
    V2_2,
}

impl ContainerdVersion {
    /// As written on the command line (`2.1`).
    pub fn name(self) -> &'static str {
        match self {
            ContainerdVersion::V1_7 => "1.7",
            ContainerdVersion::V2_1 => "2.1",
            ContainerdVersion::V2_2 => "2.2",
        }
    }
}

impl std::fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Writes one [`Event`] line on stdout (the helpers' side).
pub fn emit(ev: &Event) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Ok(s) = serde_json::to_string(ev) {
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }
}

/// A helper's failure whose kind it knows from where it happened (not from
/// the daemon's words).
#[derive(Debug)]
pub struct Classified {
    pub kind: FailureKind,
    pub message: String,
}

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Classified {}

/// An error of `kind` saying `message`.
pub fn classified(kind: FailureKind, message: String) -> anyhow::Error {
    Classified { kind, message }.into()
}

/// A pull of an image from `registry` that made no progress for `after`
/// (`--pull-timeout`).
pub fn stalled(after: std::time::Duration, registry: &str) -> anyhow::Error {
    classified(
        FailureKind::Stalled,
        format!(
            "no progress for {} s: registry {registry} stopped answering (--pull-timeout)",
            after.as_secs()
        ),
    )
}

/// Reports `e` as the failure of image `image`: its kind is ours where we
/// classified it, else what its message says.
pub fn emit_failed(image: usize, e: &anyhow::Error) {
    let kind = match e.downcast_ref::<Classified>() {
        Some(c) => c.kind,
        None => FailureKind::of_message(&format!("{e:#}")),
    };
    emit(&Event::Failed {
        image,
        kind,
        message: format!("{e:#}"),
    });
}

impl FailureKind {
    /// The kind of a failure a daemon or its client reported as text only
    /// (dockerd's API and ctr give registry and storage errors so; this is
    /// the one place that reads them).
    pub fn of_message(message: &str) -> FailureKind {
        let m = message.to_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| m.contains(w));
        if has(&["no space left on device"]) {
            FailureKind::OutOfSpace
        } else if has(&["x509", "certificate", "tls:"]) {
            FailureKind::Tls
        } else if has(&[
            "unauthorized",
            "authentication required",
            "denied",
            "no basic auth credentials",
        ]) {
            FailureKind::Auth
        } else if has(&["platform", "no matching manifest"]) {
            FailureKind::Platform
        } else if has(&["manifest unknown", "not found"]) {
            FailureKind::NotFound
        } else {
            FailureKind::Other
        }
    }
}

/// Why a helper could not get an image: what the tool does next depends on
/// it (pull again with the store on disk, name the certificate file or the
/// credentials, name where the target platform came from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The store's filesystem is full.
    OutOfSpace,
    /// The registry refused the credentials, or wants some.
    Auth,
    /// The registry's TLS certificate is not trusted.
    Tls,
    /// The registry has no such image or tag.
    NotFound,
    /// The image has no variant for the target platform.
    Platform,
    /// The pull made no progress for `--pull-timeout`.
    Stalled,
    Other,
}

/// One report of the pull and load helpers, a JSON line on their stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// Bytes of one layer of image number `image` (index in the request).
    Layer {
        image: usize,
        layer: String,
        current: u64,
        total: u64,
    },
    /// An image of source `image` is in the daemon (a registry source has
    /// one, an archive one or more).
    Done {
        image: usize,
        #[serde(flatten)]
        got: Got,
    },
    Failed {
        image: usize,
        kind: FailureKind,
        message: String,
    },
    /// The manifest of every image is read: the registries accept the
    /// credentials and certificates, and each image has the platform.
    Checked,
    /// Something the user should know that does not stop the pull.
    Warning { image: usize, message: String },
}

/// An image in the build container's daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Got {
    pub id: String,
    /// os/arch[/variant]
    pub platform: String,
    /// Its names in the daemon (RepoTags and RepoDigests).
    pub names: Vec<String>,
}

/// What [`Request::Stop`] prints: the daemon's exit code and what the
/// store takes on its filesystem.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stopped {
    pub exit_code: i32,
    pub store_used_bytes: u64,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn store(store: &str, op: StoreOp) -> Request {
        Request::Store(StoreRequest {
            store: store.into(),
            options: StoreOptions {
                namespace: "k8s.io".into(),
                pin: true,
                containerd_version: ContainerdVersion::V1_7,
            },
            op,
        })
    }

    /// Every request goes through the tool's own command line and comes
    /// back the same, whatever its strings hold (option-like references,
    /// newlines, quotes).
    #[test]
    fn every_request_is_parsed_back_from_its_command_line() {
        let pull = PullOp {
            jobs: 3,
            platform: "linux/arm/v7".parse().unwrap(),
            allow_platform_mismatch: true,
            stall_seconds: 300,
            locked: true,
            refs: vec![
                "nginx".into(),
                "--not-an-option".into(),
                "a:1@sha256:00".into(),
                "odd \"quoted\"\nname".into(),
            ],
        };
        let requests = [
            Request::Init {
                cmd: vec!["dockerd".into(), "--host=unix:///x".into(), "-D".into()],
            },
            store("docker", StoreOp::Ready),
            store("containerd", StoreOp::Pull(pull.clone())),
            store(
                "docker",
                StoreOp::Pull(PullOp {
                    refs: vec![],
                    ..pull
                }),
            ),
            store(
                "containerd",
                StoreOp::Load {
                    platform: "linux/amd64".parse().unwrap(),
                    index: 7,
                },
            ),
            store("docker", StoreOp::Prune),
            store(
                "docker",
                StoreOp::Measure {
                    root: "-odd root".into(),
                    block_size: 1024,
                    selection: true,
                },
            ),
            store(
                "docker",
                StoreOp::Export {
                    root: "/var/lib/docker".into(),
                    socket: Some("/fp-out/export.sock".into()),
                    selection: false,
                    stamp: 1_700_000_000,
                },
            ),
            Request::Stop {
                root: "/var/lib/docker".into(),
            },
        ];
        for req in requests {
            let argv = req.argv();
            assert_eq!(argv[..2], [HELPER_PATH, INTERNAL]);
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let Command::Internal(back) = cli.command else {
                panic!("{argv:?}: not an internal request");
            };
            assert_eq!(back.request, req, "{argv:?}");
        }
        let e = Cli::try_parse_from([HELPER_PATH, INTERNAL, r#"{"pull":{}}"#]).unwrap_err();
        assert!(e.to_string().contains("not a request"), "{e}");
    }

    #[test]
    fn failures_carry_their_kind() {
        let line = serde_json::to_string(&Event::Failed {
            image: 2,
            kind: FailureKind::OutOfSpace,
            message: "write /var/lib/docker/x: no space left on device".into(),
        })
        .unwrap();
        assert!(line.contains(r#""kind":"out_of_space""#), "{line}");
        match serde_json::from_str::<Event>(&line).unwrap() {
            Event::Failed { image: 2, kind, .. } => assert_eq!(kind, FailureKind::OutOfSpace),
            e => panic!("{e:?}"),
        }
    }
}
