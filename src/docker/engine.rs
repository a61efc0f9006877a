//! The Docker engine the tool drives, through its API (bollard): images,
//! volumes, containers and commands run in them. The recipe of the build
//! container is `dind.rs`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, LogsOptions,
    RemoveContainerOptions, RemoveVolumeOptions, UploadToContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;

use crate::command::tail;
use crate::protocol::Request;

use super::{Finished, Input, NameInUse, RunLabels, CACHE_LABEL};

/// Where Docker listens when DOCKER_HOST is unset or empty.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Calls to the engine may wait for long pulls and large exports.
const API_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// The Docker engine the tool drives (DOCKER_HOST, DOCKER_CERT_PATH and
/// DOCKER_TLS_VERIFY are honored).
pub struct Engine {
    pub(super) docker: Docker,
    /// Where it listens (DOCKER_HOST, or the default socket).
    host: String,
    /// The engine runs on this machine (a unix socket).
    local: bool,
    /// Its architecture and memory, from one `docker info`.
    arch: String,
    mem_total: u64,
}

/// A cache volume (`populate --cache`).
pub struct Cache {
    pub name: String,
    pub volume: String,
    /// When it was made, as the engine says.
    pub created: String,
}

/// The platform of an image as the daemon describes it.
pub(super) fn platform_of(image: &bollard::models::ImageInspect) -> crate::platform::Platform {
    crate::platform::Platform::new(
        image.os.as_deref().unwrap_or("linux"),
        image.architecture.as_deref().unwrap_or(""),
        image.variant.as_deref(),
    )
}

/// Whether an ssh:// address names a port (ssh://[user@]host:port).
fn ssh_port(address: &str) -> bool {
    let rest = address.trim_start_matches("ssh://");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split('/').next().unwrap_or(host);
    host.rsplit_once(':').is_some_and(|(h, p)| {
        !h.ends_with(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The directory of the certificates to talk TLS with the engine, when
/// DOCKER_TLS_VERIFY is set (not empty, as docker reads it):
/// DOCKER_CERT_PATH, else ~/.docker; each file is checked to be readable.
fn tls_dir() -> Result<Option<std::path::PathBuf>> {
    let set = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if set("DOCKER_TLS_VERIFY").is_none() {
        if set("DOCKER_TLS").is_some() {
            bail!(
                "DOCKER_TLS without DOCKER_TLS_VERIFY (TLS without checking the engine's \
                 certificate) is not supported: set DOCKER_TLS_VERIFY=1, with the engine's CA in \
                 DOCKER_CERT_PATH/ca.pem"
            );
        }
        return Ok(None);
    }
    let dir = match (set("DOCKER_CERT_PATH"), set("HOME")) {
        (Some(d), _) => std::path::PathBuf::from(d),
        (None, Some(home)) => std::path::Path::new(&home).join(".docker"),
        (None, None) => bail!("DOCKER_TLS_VERIFY is set: set DOCKER_CERT_PATH to the directory of ca.pem, cert.pem and key.pem"),
    };
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        let p = dir.join(f);
        std::fs::File::open(&p).with_context(|| {
            format!(
                "DOCKER_TLS_VERIFY is set: reading {} (DOCKER_CERT_PATH holds ca.pem, cert.pem and key.pem)",
                p.display()
            )
        })?;
    }
    Ok(Some(dir))
}

impl Engine {
    /// Connects to the engine and agrees on an API version.
    pub async fn connect() -> Result<Engine> {
        // An empty DOCKER_HOST means the default socket, as for docker.
        let where_ = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.into());
        let tls = tls_dir()?;
        let tcp = ["tcp://", "http://", "https://"]
            .iter()
            .any(|p| where_.starts_with(p));
        let version = bollard::API_DEFAULT_VERSION;
        let secs = API_TIMEOUT.as_secs();
        let docker = match &tls {
            Some(dir) if tcp => Docker::connect_with_ssl(
                &where_,
                &dir.join("key.pem"),
                &dir.join("cert.pem"),
                &dir.join("ca.pem"),
                secs,
                version,
            ),
            None if tcp && !where_.starts_with("https://") => {
                Docker::connect_with_http(&where_, secs, version)
            }
            None if tcp => bail!(
                "DOCKER_HOST={where_} wants TLS: set DOCKER_TLS_VERIFY=1, with the engine's CA and \
                 a client certificate in DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem)"
            ),
            _ if where_.starts_with("ssh://") => {
                if ssh_port(&where_) {
                    bail!(
                        "DOCKER_HOST={where_}: a port in an ssh:// address is not supported; \
                         give it in ~/.ssh/config (Host NAME, HostName, Port) and use ssh://[USER@]NAME"
                    );
                }
                Docker::connect_with_ssh(&where_, secs, version, None)
            }
            _ => Docker::connect_with_host(&where_),
        }
        .with_context(|| format!("connecting to the Docker engine at {where_}"))?
        .with_timeout(API_TIMEOUT);
        let how = match (&tls, tcp) {
            (Some(dir), true) => format!(
                " with the certificates of {}: ca.pem must be the CA that signed the engine's \
                 certificate, cert.pem and key.pem a client certificate the engine trusts \
                 (DOCKER_CERT_PATH)",
                dir.display()
            ),
            (None, true) => {
                " (an engine with TLS wants DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH)".into()
            }
            _ if where_.starts_with("ssh://") => {
                " over ssh (ssh must log in without a prompt, with a key \
                 of ssh-agent or ~/.ssh/config, and the remote user must be able to run \
                 `docker system dial-stdio`)"
                    .into()
            }
            _ => " (set DOCKER_HOST, or check that your user may use its socket)".into(),
        };
        let docker = docker
            .negotiate_version()
            .await
            .with_context(|| format!("cannot reach the Docker engine at {where_}{how}"))?;
        let info = docker
            .info()
            .await
            .with_context(|| format!("asking the Docker engine at {where_} for its info"))?;
        Ok(Engine {
            docker,
            local: where_.starts_with("unix://"),
            host: where_,
            arch: info.architecture.unwrap_or_default(),
            mem_total: info.mem_total.unwrap_or(0).max(0) as u64,
        })
    }

    /// `e`, saying first that the engine went away when that is its cause.
    pub fn explain_gone(&self, e: anyhow::Error) -> anyhow::Error {
        match super::engine_gone(&e) {
            true => e.context(format!(
                "the Docker engine at {} no longer answers (was it stopped or restarted?)",
                self.host
            )),
            false => e,
        }
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

    pub async fn create_volume(&self, name: &str, labels: &RunLabels) -> Result<()> {
        self.docker
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(name.to_string()),
                labels: Some(labels.map()),
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
    pub(super) async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<()> {
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

    /// Unpacks the tar `tar` at / of `container`; `what` names it in errors.
    pub(super) async fn upload(&self, container: &str, tar: Vec<Bytes>, what: &str) -> Result<()> {
        let chunks = futures_util::stream::iter(tar.into_iter().map(Ok));
        self.upload_stream(container, chunks, what).await
    }

    /// Unpacks the tar streamed by `tar` at / of `container` (created,
    /// running or not: the engine mounts its volumes for it); `what` names
    /// it in errors.
    pub(super) async fn upload_stream(
        &self,
        container: &str,
        tar: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
        what: &str,
    ) -> Result<()> {
        self.docker
            .upload_to_container(
                container,
                Some(UploadToContainerOptions {
                    path: "/".into(),
                    ..Default::default()
                }),
                bollard::body_try_stream(tar),
            )
            .await
            .with_context(|| format!("copying {what} into {container}"))
    }

    /// What became of a container, for error messages: "running", "exited
    /// with code 137 (killed)", "gone (removed)", or what the engine said;
    /// None when the engine does not answer.
    pub async fn container_state(&self, container: &str) -> Option<String> {
        let got = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await;
        let state = match got {
            Ok(c) => c.state.unwrap_or_default(),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Some("gone (removed)".into()),
            Err(bollard::errors::Error::HyperLegacyError { err }) if err.is_connect() => {
                return None
            }
            Err(e) => return Some(format!("unknown ({e})")),
        };
        let status = state.status.map_or("unknown".into(), |s| s.to_string());
        Some(match state.exit_code {
            Some(code) if !state.running.unwrap_or(false) => {
                let why = match (state.oom_killed, code) {
                    (Some(true), _) => " (out of memory)",
                    (_, 137) => " (killed)",
                    _ => "",
                };
                format!("{status} with code {code}{why}")
            }
            _ => status,
        })
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

    /// Runs the helper `request` in the running `container`, passing its stdout chunk by
    /// chunk to `sink` until the sink returns false. `stdin` is written to
    /// its standard input (which is how secrets reach it: an exec's command
    /// and environment show in `docker inspect`, its input does not). The
    /// second value is the number of stdout bytes passed.
    pub(super) async fn exec_stream<F, Fut>(
        &self,
        container: &str,
        request: &Request,
        stdin: Option<Input>,
        mut sink: F,
    ) -> Result<(Finished, u64)>
    where
        F: FnMut(Bytes) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let what = request.what();
        let exec = self
            .docker
            .create_exec(
                container,
                bollard::models::ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    attach_stdin: Some(stdin.is_some()),
                    cmd: Some(request.argv()),
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
}

#[cfg(test)]
mod tests {
    use super::ssh_port;

    #[test]
    fn an_ssh_address_with_a_port_is_told() {
        for (address, port) in [
            ("ssh://host", false),
            ("ssh://user@host", false),
            ("ssh://user@host:2222", true),
            ("ssh://host:22", true),
            ("ssh://us:er@host", false),
            ("ssh://host/path", false),
        ] {
            assert_eq!(ssh_port(address), port, "{address}");
        }
    }
}
