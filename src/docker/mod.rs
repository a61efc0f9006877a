//! Everything that talks to Docker (bollard): the outer engine that runs the
//! dind container, and the helper side that runs inside it.
//! No bollard type leaves this module.

pub mod auth;
pub mod inner;
pub mod registry;

pub use registry::{RegistryAccess, RegistryOptions};

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, LogsOptions, RemoveContainerOptions,
    RemoveVolumeOptions, UploadToContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::command::tail;

/// Where the helper binary is put inside containers.
pub const HELPER_DIR: &str = "/fp-helper";
pub const HELPER_PATH: &str = "/fp-helper/flatcar-preload";
/// The inner daemon's only endpoint: a unix socket inside the container.
pub const INNER_SOCKET: &str = "/var/run/docker.sock";
/// Where Docker listens when DOCKER_HOST is unset or empty.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Label on every container and volume a run creates.
pub const RUN_LABEL: &str = "org.flatcar-preload.run";
/// Label of a cache volume (`populate --cache`); its value is the cache's name.
pub const CACHE_LABEL: &str = "org.flatcar-preload.cache";

/// Calls to the engine may wait for long pulls and large exports.
const API_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// The Docker engine the tool drives (DOCKER_HOST, DOCKER_CERT_PATH and
/// DOCKER_TLS_VERIFY are honored).
pub struct Engine {
    docker: Docker,
    /// The engine runs on this machine (a unix socket).
    local: bool,
    /// Its architecture and memory, from one `docker info`.
    arch: String,
    mem_total: u64,
}

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
    pub run_id: String,
    /// The inner daemon's --max-concurrent-downloads.
    pub downloads: usize,
    /// More flags of the inner daemon (registries, mirrors).
    pub daemon_args: Vec<String>,
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

/// What a command run in a container reads as its standard input.
pub type Input = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// A container could not be made: one of that name exists.
#[derive(Debug)]
pub struct NameInUse(pub String);

impl std::fmt::Display for NameInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a container named {} exists already", self.0)
    }
}

impl std::error::Error for NameInUse {}

/// A cache volume (`populate --cache`).
pub struct Cache {
    pub name: String,
    pub volume: String,
    /// When it was made, as the engine says.
    pub created: String,
}

/// Result of a command run to completion in a container.
pub struct Finished {
    pub exit_code: i64,
    pub stderr: String,
}

/// How the store left the dind (the export helper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportVia {
    /// A private unix socket (a daemon on this machine).
    Socket,
    /// The Docker API's attach stream (any daemon).
    Attach,
}

/// The result of [`Engine::export_store`].
pub struct Exported {
    pub finished: Finished,
    pub via: ExportVia,
}

fn labels(run_id: &str) -> HashMap<String, String> {
    HashMap::from([(RUN_LABEL.to_string(), run_id.to_string())])
}

/// The platform of an image as the daemon describes it.
fn platform_of(image: &bollard::models::ImageInspect) -> crate::platform::Platform {
    crate::platform::Platform::new(
        image.os.as_deref().unwrap_or("linux"),
        image.architecture.as_deref().unwrap_or(""),
        image.variant.as_deref(),
    )
}

/// The helper arguments and standard input that pass a selection of the
/// store (JSON) to the export and measure helpers.
fn selection_input(only: Option<&[u8]>) -> (&'static [&'static str], Option<Input>) {
    match only {
        Some(json) => (
            &["--only", "-"],
            Some(Box::new(std::io::Cursor::new(json.to_vec()))),
        ),
        None => (&[], None),
    }
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

/// A tar holding the running executable as HELPER_PATH, as chunks that
/// share the one in-memory copy of the executable.
fn helper_tar() -> Result<Vec<Bytes>> {
    let exe =
        Bytes::from(std::fs::read("/proc/self/exe").context("reading this program's executable")?);
    check_static(&exe)?;
    let header = |path: &str, ty: tar::EntryType, size: u64| -> Result<Bytes> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(0o755);
        h.set_size(size);
        h.set_path(path)?;
        h.set_cksum();
        Ok(Bytes::copy_from_slice(h.as_bytes()))
    };
    let pad = (512 - exe.len() % 512) % 512;
    Ok(vec![
        header(&HELPER_DIR[1..], tar::EntryType::Directory, 0)?,
        header(&HELPER_PATH[1..], tar::EntryType::Regular, exe.len() as u64)?,
        exe,
        Bytes::from(vec![0u8; pad + 1024]),
    ])
}

impl Engine {
    /// Connects to the engine and agrees on an API version.
    pub async fn connect() -> Result<Engine> {
        // An empty DOCKER_HOST means the default socket, as for docker.
        let where_ = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.into());
        let docker = Docker::connect_with_host(&where_)
            .with_context(|| format!("connecting to the Docker engine at {where_}"))?
            .with_timeout(API_TIMEOUT);
        let docker = docker
            .negotiate_version()
            .await
            .with_context(|| format!("cannot reach the Docker engine at {where_} (set DOCKER_HOST, or check that your user may use its socket)"))?;
        let info = docker
            .info()
            .await
            .with_context(|| format!("asking the Docker engine at {where_} for its info"))?;
        Ok(Engine {
            docker,
            local: where_.starts_with("unix://"),
            arch: info.architecture.unwrap_or_default(),
            mem_total: info.mem_total.unwrap_or(0).max(0) as u64,
        })
    }

    /// Whether the engine runs on this machine (its socket is a local one).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// The memory of the engine's machine, in bytes (0 when unknown).
    pub fn mem_total(&self) -> u64 {
        self.mem_total
    }

    /// Fails when the engine runs on another architecture than this
    /// binary, which is uploaded into containers and run there.
    pub fn check_arch(&self) -> Result<()> {
        let arch = &self.arch;
        let normalized = match arch.as_str() {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            a => a,
        };
        if normalized != std::env::consts::ARCH {
            bail!(
                "the Docker engine runs on {arch}, but this flatcar-preload binary is built for {}: \
                 its export helper could not run there; use a {arch} build of flatcar-preload",
                std::env::consts::ARCH
            );
        }
        Ok(())
    }

    /// The ID and platform of image `name` of the engine.
    pub async fn image_platform(&self, name: &str) -> Result<(String, crate::platform::Platform)> {
        let image = self.docker.inspect_image(name).await.with_context(|| {
            format!("the Docker engine has no image {name} (`docker images` lists those it has)")
        })?;
        let platform = platform_of(&image);
        Ok((image.id.unwrap_or_default(), platform))
    }

    /// `docker save` of image `name` (a docker-archive tar naming it), as
    /// it streams from the engine.
    pub fn save_image(&self, name: &str) -> Input {
        let stream = self
            .docker
            .export_image(name)
            .map(|chunk| chunk.map_err(std::io::Error::other));
        Box::new(tokio_util::io::StreamReader::new(Box::pin(stream)))
    }

    /// Makes sure `image` is present, pulling it when missing.
    pub async fn ensure_image(&self, image: &str) -> Result<()> {
        if self.docker.inspect_image(image).await.is_ok() {
            return Ok(());
        }
        let mut s = self.docker.create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_string()),
                ..Default::default()
            }),
            None,
            None,
        );
        while let Some(item) = s.next().await {
            let item = item.with_context(|| {
                format!("the dind image {image} is not present and pulling it failed")
            })?;
            if let Some(e) = item.error_detail.and_then(|d| d.message) {
                bail!("the dind image {image} is not present and pulling it failed: {e}");
            }
        }
        Ok(())
    }

    pub async fn create_volume(&self, name: &str, run_id: &str) -> Result<()> {
        self.docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(labels(run_id)),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating volume {name}"))?;
        Ok(())
    }

    pub async fn remove_volume(&self, name: &str) -> Result<()> {
        self.docker
            .remove_volume(name, Some(RemoveVolumeOptions { force: true }))
            .await
            .with_context(|| format!("removing volume {name}"))
    }

    pub async fn remove_container(&self, name: &str) -> Result<()> {
        self.docker
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
            .with_context(|| format!("removing container {name}"))
    }

    /// Creates container `name`; [`NameInUse`] when a container of that
    /// name exists.
    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<()> {
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await;
        match created {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Err(NameInUse(name.to_string()).into()),
            r => r
                .map(|_| ())
                .with_context(|| format!("creating container {name}")),
        }
    }

    /// Whether a container `name` exists.
    pub async fn container_exists(&self, name: &str) -> Result<bool> {
        match self.docker.inspect_container(name, None).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("looking for container {name}")),
        }
    }

    /// Makes the volume `volume` of cache `name` unless it exists; an
    /// existing volume of that name must be that cache's.
    pub async fn ensure_cache_volume(&self, volume: &str, name: &str) -> Result<()> {
        match self.docker.inspect_volume(volume).await {
            Ok(v) => {
                if v.labels.get(CACHE_LABEL).map(String::as_str) != Some(name) {
                    bail!("the Docker volume {volume} exists but is not the flatcar-preload cache {name:?}; remove it or use another --cache name");
                }
                Ok(())
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                self.docker
                    .create_volume(bollard::models::VolumeCreateRequest {
                        name: Some(volume.to_string()),
                        labels: Some(HashMap::from([(CACHE_LABEL.to_string(), name.to_string())])),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("creating the cache volume {volume}"))?;
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("looking for the cache volume {volume}")),
        }
    }

    /// The cache volumes of the engine.
    pub async fn caches(&self) -> Result<Vec<Cache>> {
        let listed = self
            .docker
            .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                filters: Some(HashMap::from([(
                    "label".to_string(),
                    vec![CACHE_LABEL.to_string()],
                )])),
            }))
            .await
            .context("asking the Docker engine for its volumes")?;
        let mut out = vec![];
        for v in listed.volumes.into_iter().flatten() {
            if let Some(name) = v.labels.get(CACHE_LABEL) {
                out.push(Cache {
                    name: name.clone(),
                    volume: v.name.clone(),
                    created: v.created_at.map(|c| c.to_string()).unwrap_or_default(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Creates and starts the dind container: an inner dockerd with the
    /// overlay2 driver whose store is `store`, reachable only through its
    /// unix socket inside the container, and that touches no network
    /// interface or firewall (no bridge, no iptables). Its first process is
    /// the helper's init, which keeps the container (and a store in
    /// memory) alive once the inner dockerd has stopped. `socket_dir` is
    /// bind-mounted for the export socket.
    pub async fn start_dind(
        &self,
        name: &str,
        spec: &DindSpec,
        store: &StoreMount,
        socket_dir: Option<&Path>,
    ) -> Result<()> {
        let host_net = spec.network == DindNetwork::Host;
        let (binds, mounts) = match store {
            StoreMount::Volume(v) => (vec![format!("{v}:/var/lib/docker")], None),
            StoreMount::Memory { cap } => (
                vec![],
                Some(vec![bollard::models::Mount {
                    target: Some("/var/lib/docker".into()),
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
            entrypoint: Some(vec![HELPER_PATH.into(), "__dind-init".into()]),
            cmd: Some(
                [
                    "dockerd",
                    "--storage-driver=overlay2",
                    &format!("--host=unix://{INNER_SOCKET}"),
                    "--iptables=false",
                    "--ip6tables=false",
                    "--bridge=none",
                    &format!("--max-concurrent-downloads={}", spec.downloads.max(1)),
                ]
                .iter()
                .map(|s| s.to_string())
                .chain(spec.daemon_args.iter().cloned())
                .collect(),
            ),
            env: Some(vec!["DOCKER_TLS_CERTDIR=".into()]),
            labels: Some(labels(&spec.run_id)),
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
        self.create(name, body).await?;
        self.upload(name, helper_tar()?, "the export helper")
            .await?;
        if let Some(files) = &spec.files {
            let chunks = vec![Bytes::copy_from_slice(files)];
            self.upload(name, chunks, "the registry certificates")
                .await?;
        }
        self.docker
            .start_container(name, None)
            .await
            .with_context(|| format!("starting the dind container {name} from {}", spec.image))?;
        let cmd = [HELPER_PATH, "__ready", "--socket", INNER_SOCKET];
        let ready = self.exec_lines(name, &cmd, None, |_| {}).await?;
        if ready.exit_code != 0 {
            bail!(
                "the inner dockerd of {name} did not start: {}\nits last lines:\n{}",
                ready.stderr.trim(),
                self.logs_tail(name).await
            );
        }
        Ok(())
    }

    /// Unpacks the tar `tar` at / of `container`; `what` names it in errors.
    async fn upload(&self, container: &str, tar: Vec<Bytes>, what: &str) -> Result<()> {
        self.docker
            .upload_to_container(
                container,
                Some(UploadToContainerOptions {
                    path: "/".into(),
                    ..Default::default()
                }),
                bollard::body_stream(futures_util::stream::iter(tar)),
            )
            .await
            .with_context(|| format!("copying {what} into {container}"))
    }

    /// The last lines of a container's output, for error messages.
    pub async fn logs_tail(&self, container: &str) -> String {
        let mut s = self.docker.logs(
            container,
            Some(LogsOptions {
                stdout: true,
                stderr: true,
                tail: "15".into(),
                ..Default::default()
            }),
        );
        let mut out = String::new();
        while let Some(Ok(chunk)) = s.next().await {
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        out
    }

    /// Runs `cmd` in a running container with `stdin` as its standard
    /// input; each stdout line goes to `on_line`, stderr is collected.
    pub async fn exec_lines(
        &self,
        container: &str,
        cmd: &[&str],
        stdin: Option<Input>,
        mut on_line: impl FnMut(&str),
    ) -> Result<Finished> {
        let mut line = Vec::new();
        let (finished, _) = self
            .exec_stream(container, cmd, stdin, |chunk| {
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

    /// Stops the inner dockerd of the dind `container` (the container and
    /// a store on tmpfs stay) and waits until it has exited.
    pub async fn stop_inner(&self, container: &str) -> Result<inner::Stopped> {
        let cmd = [HELPER_PATH, "__stop-dockerd", "/var/lib/docker"];
        self.exec_json(container, &cmd, None, "stopping the inner dockerd")
            .await
    }

    /// Runs the helper command `cmd` in `container` and reads its stdout
    /// as JSON; `what` names the step in errors.
    async fn exec_json<T: serde::de::DeserializeOwned>(
        &self,
        container: &str,
        cmd: &[&str],
        stdin: Option<Input>,
        what: &str,
    ) -> Result<T> {
        let mut out = Vec::new();
        let (finished, _) = self
            .exec_stream(container, cmd, stdin, |chunk| {
                out.extend_from_slice(&chunk);
                async { true }
            })
            .await?;
        if finished.exit_code != 0 {
            bail!(
                "{what} failed (exit code {}): {}",
                finished.exit_code,
                finished.stderr.trim()
            );
        }
        serde_json::from_slice(&out).with_context(|| format!("reading what {what} reported"))
    }

    /// Runs `cmd` in the running `container`, passing its stdout chunk by
    /// chunk to `sink` until the sink returns false. `stdin` is written to
    /// its standard input (which is how secrets reach it: an exec's command
    /// and environment show in `docker inspect`, its input does not). The
    /// second value is the number of stdout bytes passed.
    async fn exec_stream<F, Fut>(
        &self,
        container: &str,
        cmd: &[&str],
        stdin: Option<Input>,
        mut sink: F,
    ) -> Result<(Finished, u64)>
    where
        F: FnMut(Bytes) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let what = cmd.get(1).copied().unwrap_or("a helper");
        let exec = self
            .docker
            .create_exec(
                container,
                bollard::models::ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    attach_stdin: Some(stdin.is_some()),
                    cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("running {what} in {container}"))?;
        let started = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .with_context(|| format!("running {what} in {container}"))?;
        let bollard::exec::StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            bail!("the engine did not attach to {what} in {container}");
        };
        // The input is written while the output is read (a helper may
        // answer before it has read all), then closed.
        let feeding = stdin.map(|mut data| {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                tokio::io::copy(&mut data, &mut input).await?;
                input.shutdown().await
            })
        });
        let mut stderr = String::new();
        let mut passed = 0u64;
        while let Some(chunk) = output.next().await {
            match chunk.with_context(|| format!("reading the output of {what} in {container}"))? {
                bollard::container::LogOutput::StdOut { message } => {
                    passed += message.len() as u64;
                    if !sink(message).await {
                        // The consumer stopped (and will say why); dropping
                        // the stream ends the helper's output.
                        if let Some(f) = feeding {
                            f.abort();
                        }
                        let finished = Finished {
                            exit_code: 0,
                            stderr,
                        };
                        return Ok((finished, passed));
                    }
                }
                other => stderr.push_str(&String::from_utf8_lossy(&other.into_bytes())),
            }
        }
        let inspect = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .with_context(|| format!("reading the exit code of {what} in {container}"))?;
        let finished = Finished {
            exit_code: inspect.exit_code.unwrap_or(-1),
            stderr: tail(&stderr, 20),
        };
        if let Some(f) = feeding {
            let fed = f.await.map_err(|e| anyhow::anyhow!("feeding {what}: {e}"));
            // A helper that failed says why; that it stopped reading its
            // input is no news then.
            if finished.exit_code == 0 {
                fed?.with_context(|| format!("writing to the input of {what} in {container}"))?;
            }
        }
        Ok((finished, passed))
    }

    /// Exports the store of the dind `container` (its inner dockerd
    /// stopped) as a tar stream into `tx`, with the helper run in that
    /// container. When the daemon runs on this machine, the helper writes
    /// to the unix socket `export.sock` in `socket_dir` (bind-mounted at
    /// /fp-out when the dind was made), which is several times faster than
    /// the attach stream; otherwise (a remote daemon: the directory is not
    /// there) it falls back to its stdout. Which one it took shows in where
    /// the data came from: a helper that used the socket wrote nothing to
    /// its stdout.
    pub async fn export_store(
        &self,
        container: &str,
        socket_dir: Option<&Path>,
        only: Option<&[u8]>,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<Exported> {
        // With a selection (JSON), only its images, read from stdin.
        let (only_args, input) = selection_input(only);
        let forward = |chunk: Bytes| {
            let tx = tx.clone();
            async move { tx.send(chunk).await.is_ok() }
        };
        let Some(dir) = socket_dir else {
            let cmd = [
                &[HELPER_PATH, "__export-store", "/var/lib/docker"],
                only_args,
            ]
            .concat();
            let (finished, _) = self.exec_stream(container, &cmd, input, forward).await?;
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
        let cmd = [
            &[
                HELPER_PATH,
                "__export-store",
                "/var/lib/docker",
                "--socket",
                &inside,
            ],
            only_args,
        ]
        .concat();
        let helper = self.exec_stream(container, &cmd, input, forward).await;
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

    /// What the store of the dind `container` will take in an ext4 with
    /// `block_size` (metadata only).
    pub async fn measure_store(
        &self,
        container: &str,
        block_size: u64,
        only: Option<&[u8]>,
    ) -> Result<crate::ext4::Need> {
        let block_size = block_size.to_string();
        let (only_args, input) = selection_input(only);
        let cmd = [
            &[
                HELPER_PATH,
                "__measure-store",
                "/var/lib/docker",
                "--block-size",
                &block_size,
            ],
            only_args,
        ]
        .concat();
        self.exec_json(container, &cmd, input, "measuring the store")
            .await
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
