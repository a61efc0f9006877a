//! The helpers the tool runs in its build container, as one typed
//! protocol: what the tool asks ([`Request`], rendered to a command line in
//! one place, [`Request::argv`], and parsed back by clap under the hidden
//! `internal` command of the same binary, uploaded into the container) and
//! what the helpers answer ([`Event`] lines on stdout, with failures of a
//! [`FailureKind`] the tool branches on, and the JSON results of
//! [`Stopped`] and measuring).
//!
//! Secrets and bulk data never go on the command line (it shows in `docker
//! inspect` and `docker events`): they are the helper's standard input.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::platform::Platform;

/// Where the helper binary is put inside the build container.
pub const HELPER_DIR: &str = "/fp-helper";
pub const HELPER_PATH: &str = "/fp-helper/flatcar-preload";
/// Where the helper's `unpigz` link to HELPER_PATH is (see `unpigz`).
pub const HELPER_BIN: &str = "/fp-helper/bin";
/// The hidden command of the binary that the requests are subcommands of.
pub const INTERNAL: &str = "internal";

/// Which image store a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// Docker's overlay2 store (/var/lib/docker).
    Docker,
    /// containerd's store (/var/lib/containerd).
    Containerd,
}

/// What the tool asks a helper in the build container to do.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Request {
    /// The build container's first process: runs the daemon `cmd`, and
    /// keeps the container (and a store in memory) alive once the daemon
    /// has stopped.
    Init {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Returns once the daemon of `store` answers on `socket`. For
    /// containerd, also refuses a daemon whose store the target's
    /// `containerd_version` cannot read.
    Ready {
        #[arg(long)]
        socket: String,
        #[arg(long, value_enum)]
        store: StoreKind,
        #[arg(long, value_enum)]
        containerd_version: ContainerdVersion,
    },
    /// Pulls `refs` through the daemon on `socket` for `platform`, with at
    /// most `jobs` at once, reporting [`Event`]s. Input: one JSON line of
    /// credentials.
    Pull {
        #[arg(long)]
        socket: String,
        #[arg(long)]
        jobs: usize,
        #[arg(long)]
        platform: Platform,
        #[arg(long)]
        allow_platform_mismatch: bool,
        /// Fail an image whose pull makes no progress for this long (0:
        /// never).
        #[arg(long)]
        stall_seconds: u64,
        /// `--locked`: a reference with a tag and a digest fails when the
        /// tag no longer names that digest.
        #[arg(long)]
        locked: bool,
        refs: Vec<String>,
    },
    /// Loads the docker-archive tar of its input into the daemon, reporting
    /// each image as one of source number `index`.
    Load {
        #[arg(long)]
        socket: String,
        #[arg(long)]
        index: usize,
    },
    /// Pulls `refs` into namespace `namespace` of the containerd on
    /// `socket` (with `ctr`, the registries configured by `hosts_dir`) for
    /// `platform`, and gives each image the records and labels a CRI pull
    /// gives it (pinned when `pin`), reporting [`Event`]s. Input: one JSON
    /// line of credentials.
    CtrPull {
        #[arg(long)]
        socket: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        jobs: usize,
        #[arg(long)]
        platform: Platform,
        #[arg(long)]
        allow_platform_mismatch: bool,
        #[arg(long)]
        pin: bool,
        #[arg(long)]
        hosts_dir: String,
        /// As for [`Request::Pull`].
        #[arg(long)]
        stall_seconds: u64,
        refs: Vec<String>,
    },
    /// Imports the docker-archive tar of its input into namespace
    /// `namespace` of the containerd on `socket`, as [`Request::CtrPull`]
    /// leaves an image, reporting each as one of source number `index`.
    CtrImport {
        #[arg(long)]
        socket: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        platform: Platform,
        #[arg(long)]
        pin: bool,
        #[arg(long)]
        index: usize,
    },
    /// Removes the daemon's images whose IDs are not in the JSON list of
    /// its input, printing `removed ID` for each.
    Prune {
        #[arg(long)]
        socket: String,
    },
    /// Removes every image record of the containerd on `socket` (in every
    /// namespace) but those of `namespace` named in the JSON list of its
    /// input, and what only they kept, printing `removed NAME` for each.
    CtrPrune {
        #[arg(long)]
        socket: String,
        #[arg(long)]
        namespace: String,
    },
    /// Prints (JSON) what the store at `root` will take in an ext4 with
    /// `block_size`. With `selection`, only the images of the JSON
    /// selection of its input.
    Measure {
        #[arg(long, value_enum)]
        store: StoreKind,
        root: PathBuf,
        #[arg(long)]
        block_size: u64,
        #[arg(long)]
        selection: bool,
    },
    /// Writes the store at `root` as a PAX tar with every xattr, to the
    /// unix socket `socket` when it accepts a connection, else to stdout.
    /// With `selection`, only the images of the JSON selection of its
    /// input.
    Export {
        #[arg(long, value_enum)]
        store: StoreKind,
        root: PathBuf,
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        selection: bool,
        /// Seconds since 1970: the time written where the daemon wrote the
        /// time of the pull (a reproducible export).
        #[arg(long)]
        stamp: i64,
    },
    /// Stops the daemon (through the init), waits until it has exited and
    /// prints a [`Stopped`] for the store at `root`.
    Stop { root: PathBuf },
}

impl Request {
    /// The command line that runs this request in the build container.
    pub fn argv(&self) -> Vec<String> {
        let mut v: Vec<String> = vec![HELPER_PATH.into(), INTERNAL.into()];
        let mut push = |args: &[&str]| v.extend(args.iter().map(|s| s.to_string()));
        match self {
            Request::Init { cmd } => {
                push(&["init", "--"]);
                v.extend(cmd.iter().cloned());
            }
            Request::Ready {
                socket,
                store,
                containerd_version,
            } => {
                push(&["ready", "--socket", socket, "--store", store.name()]);
                push(&["--containerd-version", containerd_version.name()]);
            }
            Request::Pull {
                socket,
                jobs,
                platform,
                allow_platform_mismatch,
                stall_seconds,
                locked,
                refs,
            } => {
                let (jobs, platform) = (jobs.to_string(), platform.to_string());
                push(&["pull", "--socket", socket, "--jobs", &jobs]);
                push(&["--platform", &platform]);
                push(&["--stall-seconds", &stall_seconds.to_string()]);
                if *allow_platform_mismatch {
                    push(&["--allow-platform-mismatch"]);
                }
                if *locked {
                    push(&["--locked"]);
                }
                push(&["--"]);
                v.extend(refs.iter().cloned());
            }
            Request::Load { socket, index } => {
                push(&["load", "--socket", socket, "--index", &index.to_string()])
            }
            Request::CtrPull {
                socket,
                namespace,
                jobs,
                platform,
                allow_platform_mismatch,
                pin,
                hosts_dir,
                stall_seconds,
                refs,
            } => {
                let (jobs, platform) = (jobs.to_string(), platform.to_string());
                push(&["ctr-pull", "--socket", socket, "--namespace", namespace]);
                push(&["--jobs", &jobs, "--platform", &platform]);
                push(&["--hosts-dir", hosts_dir]);
                push(&["--stall-seconds", &stall_seconds.to_string()]);
                if *allow_platform_mismatch {
                    push(&["--allow-platform-mismatch"]);
                }
                if *pin {
                    push(&["--pin"]);
                }
                push(&["--"]);
                v.extend(refs.iter().cloned());
            }
            Request::CtrImport {
                socket,
                namespace,
                platform,
                pin,
                index,
            } => {
                let (platform, index) = (platform.to_string(), index.to_string());
                push(&["ctr-import", "--socket", socket, "--namespace", namespace]);
                push(&["--platform", &platform, "--index", &index]);
                if *pin {
                    push(&["--pin"]);
                }
            }
            Request::Prune { socket } => push(&["prune", "--socket", socket]),
            Request::CtrPrune { socket, namespace } => {
                push(&["ctr-prune", "--socket", socket, "--namespace", namespace])
            }
            Request::Measure {
                store,
                root,
                block_size,
                selection,
            } => {
                let block_size = block_size.to_string();
                push(&["measure", "--store", store.name()]);
                push(&["--block-size", &block_size]);
                if *selection {
                    push(&["--selection"]);
                }
                push(&["--", &root.to_string_lossy()]);
            }
            Request::Export {
                store,
                root,
                socket,
                selection,
                stamp,
            } => {
                let stamp = stamp.to_string();
                push(&["export", "--store", store.name(), "--stamp", &stamp]);
                if let Some(s) = socket {
                    push(&["--socket", &s.to_string_lossy()]);
                }
                if *selection {
                    push(&["--selection"]);
                }
                push(&["--", &root.to_string_lossy()]);
            }
            Request::Stop { root } => push(&["stop", "--", &root.to_string_lossy()]),
        }
        v
    }

    /// A short name for messages ("the pull helper").
    pub fn what(&self) -> &'static str {
        match self {
            Request::Init { .. } => "the build container's init",
            Request::Ready { .. } => "the readiness check",
            Request::Pull { .. } => "the pull helper",
            Request::Load { .. } => "the load helper",
            Request::CtrPull { .. } => "the containerd pull helper",
            Request::CtrImport { .. } => "the containerd import helper",
            Request::Prune { .. } => "the prune helper",
            Request::CtrPrune { .. } => "the containerd prune helper",
            Request::Measure { .. } => "the measure helper",
            Request::Export { .. } => "the export helper",
            Request::Stop { .. } => "the stop helper",
        }
    }
}

impl StoreKind {
    /// Every store, in the order `inspect` lists them.
    pub const ALL: [StoreKind; 2] = [StoreKind::Docker, StoreKind::Containerd];

    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Docker => "docker",
            StoreKind::Containerd => "containerd",
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

    #[derive(Parser)]
    struct Bin {
        #[command(subcommand)]
        internal: Internal,
    }

    #[derive(Subcommand)]
    enum Internal {
        #[command(subcommand)]
        Internal(Request),
    }

    #[test]
    fn every_request_is_parsed_back_from_its_command_line() {
        let requests = [
            Request::Init {
                cmd: vec!["dockerd".into(), "--host=unix:///x".into(), "-D".into()],
            },
            Request::Ready {
                socket: "/var/run/docker.sock".into(),
                store: StoreKind::Docker,
                containerd_version: ContainerdVersion::V2_1,
            },
            Request::Ready {
                socket: "/run/c.sock".into(),
                store: StoreKind::Containerd,
                containerd_version: ContainerdVersion::V1_7,
            },
            Request::CtrPull {
                socket: "/s".into(),
                namespace: "k8s.io".into(),
                jobs: 2,
                platform: "linux/arm/v7".parse().unwrap(),
                allow_platform_mismatch: false,
                pin: true,
                hosts_dir: "/etc/h".into(),
                stall_seconds: 300,
                refs: vec!["registry.k8s.io/pause:3.10".into(), "-x".into()],
            },
            Request::CtrImport {
                socket: "/s".into(),
                namespace: "moby".into(),
                platform: "linux/amd64".parse().unwrap(),
                pin: false,
                index: 3,
            },
            Request::Pull {
                socket: "/s".into(),
                jobs: 3,
                platform: "linux/arm64/v8".parse().unwrap(),
                allow_platform_mismatch: true,
                stall_seconds: 0,
                locked: true,
                refs: vec![
                    "nginx".into(),
                    "--not-an-option".into(),
                    "a:1@sha256:00".into(),
                ],
            },
            Request::Pull {
                socket: "/s".into(),
                jobs: 1,
                platform: "linux/amd64".parse().unwrap(),
                allow_platform_mismatch: false,
                stall_seconds: 7,
                locked: false,
                refs: vec![],
            },
            Request::Load {
                socket: "/s".into(),
                index: 7,
            },
            Request::Prune {
                socket: "/s".into(),
            },
            Request::CtrPrune {
                socket: "/s".into(),
                namespace: "k8s.io".into(),
            },
            Request::Measure {
                store: StoreKind::Docker,
                root: "/var/lib/docker".into(),
                block_size: 4096,
                selection: true,
            },
            Request::Measure {
                store: StoreKind::Docker,
                root: "-odd root".into(),
                block_size: 1024,
                selection: false,
            },
            Request::Export {
                store: StoreKind::Docker,
                root: "/var/lib/docker".into(),
                socket: Some("/fp-out/export.sock".into()),
                selection: true,
                stamp: 1_700_000_000,
            },
            Request::Export {
                store: StoreKind::Docker,
                root: "-r".into(),
                socket: None,
                selection: false,
                stamp: 0,
            },
            Request::Stop {
                root: "/var/lib/docker".into(),
            },
        ];
        for req in requests {
            let argv = req.argv();
            assert_eq!(argv[0], HELPER_PATH);
            let Bin {
                internal: Internal::Internal(back),
            } = Bin::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            assert_eq!(back, req, "{argv:?}");
        }
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
