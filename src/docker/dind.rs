//! The build container: a dind whose first process is this binary (the
//! init of `protocol::Request::Init`) running the store backend's daemon,
//! and the helpers run in it, spoken to through [`Dind`].

use std::path::Path;

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::protocol::{Request, Stopped, StoreOp, StoreRef, HELPER_BIN, HELPER_DIR, HELPER_PATH};

use super::{Engine, Finished, Input, RunLabels};

/// The network of the dind container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DindNetwork {
    Bridge,
    /// The host's network: the inner daemon gets no NET_ADMIN.
    Host,
    None,
    /// The network namespace of another container.
    Container(String),
    /// A user-defined network.
    Named(String),
}

impl std::str::FromStr for DindNetwork {
    type Err = String;
    fn from_str(s: &str) -> Result<DindNetwork, String> {
        Ok(match s {
            "bridge" => DindNetwork::Bridge,
            "host" => DindNetwork::Host,
            "none" => DindNetwork::None,
            "" => return Err("the network mode is empty".into()),
            s => match s.strip_prefix("container:") {
                Some("") => return Err("container: needs a container name".into()),
                Some(c) => DindNetwork::Container(c.into()),
                None => DindNetwork::Named(s.into()),
            },
        })
    }
}

impl DindNetwork {
    /// Docker's HostConfig.NetworkMode.
    fn mode(&self) -> String {
        match self {
            DindNetwork::Bridge => "bridge".into(),
            DindNetwork::Host => "host".into(),
            DindNetwork::None => "none".into(),
            DindNetwork::Container(c) => format!("container:{c}"),
            DindNetwork::Named(n) => n.clone(),
        }
    }
}

/// How the dind container runs.
#[derive(Debug, Clone)]
pub struct DindSpec {
    pub image: String,
    pub network: DindNetwork,
    pub privileged: bool,
    /// The labels of the container (and of the run's volumes).
    pub labels: RunLabels,
    /// The command line of the daemon that writes the store (the store
    /// backend's), run by the helper's init.
    pub daemon: Vec<String>,
    /// Where that daemon keeps its store, in the container.
    pub store_root: String,
    /// The helper request that returns once that daemon answers.
    pub ready: Request,
    /// A tar unpacked at / of the dind before it starts (the registry
    /// certificates in /etc/docker/certs.d).
    pub files: Option<Vec<u8>>,
}

/// Where the inner daemon's store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreMount {
    /// A Docker volume of that name.
    Volume(String),
    /// A tmpfs of the dind container of at most `cap` bytes.
    Memory { cap: u64 },
}

/// Where the private directory of the export socket appears in the dind.
const SOCKET_MOUNT: &str = "/fp-out";

const EXPORT_SOCKET: &str = "export.sock";

/// How the store left the dind (the export helper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportVia {
    /// A private unix socket (a daemon on this machine).
    Socket,
    /// The Docker API's attach stream (any daemon).
    Attach,
    /// No export: the tool wrote the store itself (--engine direct).
    Direct,
}

/// The result of [`Engine::export_store`].
pub struct Exported {
    pub finished: Finished,
    pub via: ExportVia,
}

/// The standard input that passes a selection of the store (JSON) to the
/// export and measure helpers.
fn selection_input(only: Option<&[u8]>) -> Option<Input> {
    only.map(|json| Box::new(std::io::Cursor::new(json.to_vec())) as Input)
}

/// Whether this executable is statically linked (no ELF interpreter), so
/// that it can run in a container with any libc or none (it is the dind's
/// init and runs the pull, measure and export helpers there).
fn check_static(exe: &[u8]) -> Result<()> {
    let u16_at = |o: usize| exe.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        exe.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if exe.get(..5) != Some(b"\x7fELF\x02") {
        bail!("this executable is not a 64-bit ELF file");
    }
    let (phoff, phentsize, phnum) = (
        u64_at(0x20).unwrap_or(0) as usize,
        u16_at(0x36).unwrap_or(0) as usize,
        u16_at(0x38).unwrap_or(0) as usize,
    );
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let ty = exe
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        if ty == Some(3) {
            bail!(
                "this flatcar-preload binary is dynamically linked, so it cannot run as the export \
                 helper inside the dind container; build it as the repository's .cargo/config.toml \
                 does (static, `--target x86_64-unknown-linux-gnu`)"
            );
        }
    }
    Ok(())
}

/// A tar holding the running executable as HELPER_PATH (its directory
/// and the file, root's, 0755), and HELPER_BIN/unpigz linking to it.
fn helper_tar() -> Result<Vec<Bytes>> {
    let exe = std::fs::read("/proc/self/exe").context("reading this program's executable")?;
    check_static(&exe)?;
    let attrs = crate::tar::Attrs::root_owned(0o755);
    let mut tar = crate::tar::Writer::new(Vec::with_capacity(exe.len() + (8 << 10)));
    tar.dir(&HELPER_DIR.as_bytes()[1..], &attrs)
        .and_then(|()| tar.file_bytes(&HELPER_PATH.as_bytes()[1..], &attrs, &exe))
        .and_then(|()| tar.dir(&HELPER_BIN.as_bytes()[1..], &attrs))
        .and_then(|()| {
            let link = format!("{}/{}", &HELPER_BIN[1..], crate::unpigz::NAME);
            tar.symlink(link.as_bytes(), &attrs, HELPER_PATH.as_bytes())
        })
        .context("making the helper's archive")?;
    let tar = tar.finish().context("making the helper's archive")?;
    Ok(vec![Bytes::from(tar)])
}

/// A tar stream unpacked into the build container before its daemon
/// starts ([`Dind::start`]).
pub struct Seed {
    pub tar: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    /// What makes the stream: its error, if any, is the one to report (a
    /// stream cut at an entry's end reads as a complete archive).
    pub done: tokio::task::JoinHandle<Result<()>>,
}

/// The build container `name` of `engine`.
pub struct Dind<'a> {
    engine: &'a Engine,
    name: &'a str,
}

impl Engine {
    /// The build container named `name` (made or not).
    pub fn dind<'a>(&'a self, name: &'a str) -> Dind<'a> {
        Dind { engine: self, name }
    }
}

impl Dind<'_> {
    /// Creates and starts the build container: the store backend's daemon
    /// (`spec.daemon`: dockerd with the overlay2 driver, or containerd)
    /// whose store is `store`, reachable only through its unix socket
    /// inside the container, and that touches no network interface or
    /// firewall (no bridge, no iptables); returns once `spec.ready` says it
    /// answers. Its first process is the helper's init, which keeps the
    /// container (and a store in memory) alive once the daemon has stopped.
    /// `socket_dir` is bind-mounted for the export socket. `seed`, a tar
    /// stream of paths below /, is unpacked into the container before its
    /// daemon starts (the store a `--merge` adds to; it must be on a
    /// volume).
    pub async fn start(
        &self,
        spec: &DindSpec,
        store: &StoreMount,
        socket_dir: Option<&Path>,
        seed: Option<Seed>,
    ) -> Result<()> {
        let host_net = spec.network == DindNetwork::Host;
        let (binds, mounts) = match store {
            StoreMount::Volume(v) => (vec![format!("{v}:{}", spec.store_root)], None),
            StoreMount::Memory { cap } => (
                vec![],
                Some(vec![bollard::models::Mount {
                    target: Some(spec.store_root.clone()),
                    typ: Some(bollard::models::MountType::TMPFS),
                    tmpfs_options: Some(bollard::models::MountTmpfsOptions {
                        size_bytes: Some(i64::try_from(*cap).unwrap_or(i64::MAX)),
                        mode: Some(0o711),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
            ),
        };
        let binds = binds
            .into_iter()
            .chain(socket_dir.map(|d| format!("{}:{SOCKET_MOUNT}", d.display())))
            .collect();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(
                Request::Init {
                    cmd: spec.daemon.clone(),
                }
                .argv(),
            ),
            env: Some(vec!["DOCKER_TLS_CERTDIR=".into()]),
            labels: Some(spec.labels.map()),
            host_config: Some(HostConfig {
                binds: Some(binds),
                mounts,
                network_mode: Some(spec.network.mode()),
                privileged: Some(spec.privileged),
                cap_add: (!spec.privileged).then(|| vec!["SYS_ADMIN".into()]),
                // On the host's network, the inner daemon must not be able
                // to change the host's interfaces or firewall.
                cap_drop: host_net.then(|| vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                security_opt: Some(vec!["apparmor=unconfined".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.engine.create(self.name, body).await?;
        self.engine
            .upload(self.name, helper_tar()?, "the export helper")
            .await?;
        if let Some(files) = &spec.files {
            let chunks = vec![Bytes::copy_from_slice(files)];
            self.engine
                .upload(self.name, chunks, "the registry certificates")
                .await?;
        }
        if let Some(Seed { tar, done }) = seed {
            let what = format!("the store in ROOT ({})", spec.store_root);
            let stream = tokio_util::io::ReaderStream::with_capacity(tar, 1 << 20);
            let uploaded = self.engine.upload_stream(self.name, stream, &what).await;
            let made = done.await.context("the reader of ROOT panicked")?;
            match (uploaded, made) {
                (Err(up), Err(read)) => bail!("{up:#} ({read:#})"),
                (up, read) => up.and(read)?,
            }
        }
        self.engine
            .docker
            .start_container(self.name, None)
            .await
            .with_context(|| {
                format!(
                    "starting the dind container {} from {}",
                    self.name, spec.image
                )
            })?;
        // A container that exits at once (its image has no such daemon)
        // fails the readiness check: what became of it says why.
        let ready = self.helper_lines(&spec.ready, None, |_| {}).await;
        let said = match &ready {
            Ok(r) if r.exit_code == 0 => return Ok(()),
            Ok(r) => r.stderr.trim().to_string(),
            Err(e) => format!("{e:#}"),
        };
        let state = match self.engine.container_state(self.name).await {
            Some(state) => format!(" (the container is {state})"),
            None => String::new(),
        };
        bail!(
            "the daemon of the build container {} ({}, from {}) did not start{state}: {said}\nits last lines:\n{}",
            self.name,
            spec.daemon.first().map_or("?", String::as_str),
            spec.image,
            self.engine.logs_tail(self.name).await
        );
    }

    /// Runs the helper `request` in a running container with `stdin` as
    /// its standard input; each stdout line goes to `on_line`, stderr is
    /// collected.
    pub async fn helper_lines(
        &self,
        request: &Request,
        stdin: Option<Input>,
        mut on_line: impl FnMut(&str),
    ) -> Result<Finished> {
        let mut line = Vec::new();
        let (finished, _) = self
            .engine
            .exec_stream(self.name, request, stdin, |chunk| {
                for &b in chunk.iter() {
                    if b == b'\n' {
                        on_line(&String::from_utf8_lossy(&line));
                        line.clear();
                    } else {
                        line.push(b);
                    }
                }
                async { true }
            })
            .await?;
        if !line.is_empty() {
            on_line(&String::from_utf8_lossy(&line));
        }
        Ok(finished)
    }

    /// Stops the inner daemon of the build container (the container and
    /// a store on tmpfs stay) and waits until it has exited; what its store
    /// at `root` takes is reported.
    pub async fn stop(&self, root: &str) -> Result<Stopped> {
        let stop = Request::Stop { root: root.into() };
        self.helper_json(&stop, None).await
    }

    /// Runs the helper `request` in the build container and reads its stdout as
    /// JSON.
    async fn helper_json<T: serde::de::DeserializeOwned>(
        &self,
        request: &Request,
        stdin: Option<Input>,
    ) -> Result<T> {
        let what = request.what();
        let mut out = Vec::new();
        let (finished, _) = self
            .engine
            .exec_stream(self.name, request, stdin, |chunk| {
                out.extend_from_slice(&chunk);
                async { true }
            })
            .await?;
        finished.success(what)?;
        serde_json::from_slice(&out).with_context(|| format!("reading what {what} reported"))
    }

    /// Exports the store of the build container (its inner dockerd
    /// stopped) as a tar stream into `tx`, with the helper run in that
    /// container. When the daemon runs on this machine, the helper writes
    /// to the unix socket `export.sock` in `socket_dir` (bind-mounted at
    /// /fp-out when the dind was made), which is several times faster than
    /// the attach stream; otherwise (a remote daemon: the directory is not
    /// there) it falls back to its stdout. Which one it took shows in where
    /// the data came from: a helper that used the socket wrote nothing to
    /// its stdout.
    pub async fn export(
        &self,
        (store, root): (&StoreRef, &str),
        socket_dir: Option<&Path>,
        only: Option<&[u8]>,
        stamp: i64,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<Exported> {
        // With a selection (JSON), only its images, read from stdin.
        let input = selection_input(only);
        let export = |socket: Option<String>| {
            store.request(StoreOp::Export {
                root: root.into(),
                socket: socket.map(Into::into),
                selection: only.is_some(),
                stamp,
            })
        };
        let forward = |chunk: Bytes| {
            let tx = tx.clone();
            async move { tx.send(chunk).await.is_ok() }
        };
        let Some(dir) = socket_dir else {
            let request = export(None);
            let (finished, _) = self
                .engine
                .exec_stream(self.name, &request, input, forward)
                .await?;
            let via = ExportVia::Attach;
            return Ok(Exported { finished, via });
        };
        let path = dir.join(EXPORT_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .with_context(|| format!("listening on {}", path.display()))?;
        let socket_tx = tx.clone();
        let mut from_socket = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut stream, _) = listener.accept().await?;
            let mut buf = bytes::BytesMut::new();
            loop {
                buf.reserve(1 << 20);
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                if socket_tx.send(buf.split().freeze()).await.is_err() {
                    return Ok(());
                }
            }
        });
        let inside = format!("{SOCKET_MOUNT}/{EXPORT_SOCKET}");
        let request = export(Some(inside));
        let helper = self
            .engine
            .exec_stream(self.name, &request, input, forward)
            .await;
        let (finished, stdout_bytes) = match helper {
            Ok(h) => h,
            Err(e) => {
                from_socket.abort();
                return Err(e);
            }
        };
        let via = if finished.exit_code == 0 && stdout_bytes == 0 {
            // The helper has exited: its connection waits to be accepted,
            // and the socket ends once drained.
            (&mut from_socket)
                .await
                .context("the socket reader panicked")?
                .context("reading the store from the export socket")?;
            ExportVia::Socket
        } else {
            from_socket.abort();
            ExportVia::Attach
        };
        Ok(Exported { finished, via })
    }

    /// What the store at `root` of the build container will take in an
    /// ext4 with `block_size` (metadata only).
    pub async fn measure(
        &self,
        (store, root): (&StoreRef, &str),
        block_size: u64,
        only: Option<&[u8]>,
    ) -> Result<crate::disk::ext4::Need> {
        let measure = store.request(StoreOp::Measure {
            root: root.into(),
            block_size,
            selection: only.is_some(),
        });
        self.helper_json(&measure, selection_input(only)).await
    }
}

#[cfg(test)]
mod tests {
    use super::DindNetwork;

    #[test]
    fn network_modes() {
        let parse = |s: &str| s.parse::<DindNetwork>();
        assert_eq!(parse("host"), Ok(DindNetwork::Host));
        assert_eq!(parse("none").unwrap().mode(), "none");
        assert_eq!(parse("container:reg").unwrap().mode(), "container:reg");
        assert_eq!(parse("mynet"), Ok(DindNetwork::Named("mynet".into())));
        assert!(parse("container:").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn this_test_binary_is_static_as_configured() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        super::check_static(&exe).unwrap();
        let dynamic = std::fs::read("/bin/sh").unwrap();
        assert!(super::check_static(&dynamic).is_err());
    }
}
