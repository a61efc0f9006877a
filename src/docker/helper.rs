//! The helpers' side in the build container: its init and stop (whatever
//! daemon it runs), and the work of a dockerd there, driven through its
//! unix socket with bollard (pull, load, prune), reported to the tool as
//! JSON lines on stdout.

use std::io::Write;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{CreateImageOptions, TagImageOptions};
use bollard::Docker;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::auth::Credentials;
use crate::platform::Platform;
use crate::protocol::{Event, FailureKind, Got, Stopped, HELPER_BIN};
use crate::source::ImageRef;

/// What the daemon says of image `name`.
async fn describe(docker: &Docker, name: &str) -> Result<Got> {
    let image = docker
        .inspect_image(name)
        .await
        .with_context(|| format!("inspecting {name}"))?;
    let platform = super::engine::platform_of(&image);
    Ok(Got {
        id: image.id.unwrap_or_default(),
        platform: platform.to_string(),
        names: image
            .repo_tags
            .into_iter()
            .flatten()
            .chain(image.repo_digests.into_iter().flatten())
            .collect(),
    })
}

/// What the pull helper reads as one JSON line from its standard input,
/// never from its command line or environment (both show in `docker
/// inspect`): the credentials of each registry (by `host[:port]`, or
/// `docker.io`).
#[derive(Default, Serialize, Deserialize)]
pub struct PullSecrets {
    pub credentials: HashMap<String, Credentials>,
}

/// What the pull helper is asked to do.
pub struct PullRequest {
    pub refs: Vec<ImageRef>,
    pub jobs: usize,
    /// The platform the images must be for.
    pub platform: Platform,
    /// Pull a single-platform image of another platform anyway.
    pub allow_platform_mismatch: bool,
    /// Fail an image whose pull makes no progress for this long.
    pub stall: Option<Duration>,
    /// A reference with a tag and a digest fails when its tag no longer
    /// names that digest (`--locked`).
    pub locked: bool,
    pub secrets: PullSecrets,
}

/// `step` of the pull of `r`, failed as stalled when it takes longer than
/// `stall`.
async fn unless_stalled<T>(
    stall: Option<Duration>,
    r: &ImageRef,
    step: impl std::future::Future<Output = T>,
) -> Result<T> {
    match stall {
        Some(after) => tokio::time::timeout(after, step)
            .await
            .map_err(|_| stalled(after, r.registry())),
        None => Ok(step.await),
    }
}

use crate::protocol::{classified, emit, emit_failed, stalled};

/// Connects once the inner dockerd has made its socket and answers.
async fn connect_when_ready(socket: &str) -> Result<Docker> {
    let start = Instant::now();
    loop {
        let attempt = async {
            let docker = Docker::connect_with_unix(socket, 4 * 3600, bollard::API_DEFAULT_VERSION)?;
            docker.ping().await?;
            Ok::<_, bollard::errors::Error>(docker)
        };
        match attempt.await {
            Ok(d) => return Ok(d),
            Err(_) if daemon_exit().is_some() => bail!(
                "the inner dockerd exited (code {}) before it answered on {socket}",
                daemon_exit().unwrap_or_default()
            ),
            Err(e) if start.elapsed() > Duration::from_secs(90) => {
                bail!("the inner dockerd did not answer on {socket} within 90 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Returns once the inner dockerd answers on `socket`.
pub async fn ready(socket: &str) -> Result<()> {
    connect_when_ready(socket).await.map(|_| ())
}

/// The daemon's message of an API error, without bollard's wrapping.
fn api_message(e: bollard::errors::Error) -> anyhow::Error {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => anyhow!(message),
        e => anyhow!(e),
    }
}

/// Credentials as the Docker API takes them (X-Registry-Auth).
fn to_bollard(c: &Credentials) -> DockerCredentials {
    DockerCredentials {
        username: c.username.clone(),
        password: c.password.clone(),
        identitytoken: c.identity_token.clone(),
        registrytoken: c.registry_token.clone(),
        serveraddress: Some(c.server_address.clone()),
        ..Default::default()
    }
}

/// What the registry says an image reference is: the platforms it has,
/// and whether it is an index (a multi-platform image).
struct Manifest {
    platforms: Vec<Platform>,
    index: bool,
}

/// Reads the manifest of `r` from its registry through the inner daemon
/// (this is where a wrong password or an untrusted certificate shows,
/// before anything is pulled).
async fn read_manifest(
    docker: &Docker,
    r: &ImageRef,
    creds: Option<DockerCredentials>,
    stall: Option<Duration>,
) -> Result<Manifest> {
    let (from, tag) = r.pull_spec();
    let spec = match tag {
        Some(t) => format!("{from}:{t}"),
        None => from,
    };
    let d = unless_stalled(stall, r, docker.inspect_registry_image(&spec, creds))
        .await?
        .map_err(api_message)?;
    let media = d.descriptor.media_type.unwrap_or_default();
    Ok(Manifest {
        index: media.contains("manifest.list") || media.contains("image.index"),
        platforms: d
            .platforms
            .iter()
            .filter_map(|p| {
                Some(Platform::new(
                    p.os.as_deref()?,
                    p.architecture.as_deref()?,
                    p.variant.as_deref(),
                ))
            })
            .collect(),
    })
}

/// `--locked`: the tag of `r` (pinned to the lock's digest) still names
/// that digest in its registry. A tag that moved is named, not followed.
async fn check_tag(
    docker: &Docker,
    r: &ImageRef,
    creds: Option<DockerCredentials>,
    stall: Option<Duration>,
) -> Result<()> {
    let (Some(tag), Some(locked)) = (&r.tag, &r.digest) else {
        return Ok(());
    };
    let spec = format!("{}:{tag}", r.name);
    let d = unless_stalled(stall, r, docker.inspect_registry_image(&spec, creds))
        .await?
        .map_err(api_message)
        .with_context(|| format!("reading the tag {spec} to check it against the lock file"))?;
    let now = d.descriptor.digest.unwrap_or_default();
    if &now != locked {
        return Err(classified(
            FailureKind::Other,
            format!(
                "the tag {spec} moved: it names {now} now, the lock file has {locked} (--locked);                  to bake the locked image, pull it by digest ({}@{locked}); to take the new one, update the lock (--lock without --locked)",
                r.name
            ),
        ));
    }
    Ok(())
}

/// The platform to pull `r` for, from what its registry has: the target
/// platform when it has it; a single-platform image of another platform
/// only when allowed (with a warning).
fn choose_platform(
    index: usize,
    r: &ImageRef,
    m: &Manifest,
    want: &Platform,
    allow_mismatch: bool,
) -> Result<Platform> {
    if m.platforms.is_empty() || m.platforms.iter().any(|p| want.accepts(p)) {
        return Ok(want.clone());
    }
    let has: Vec<String> = m.platforms.iter().map(Platform::to_string).collect();
    if m.index {
        return Err(classified(
            FailureKind::Platform,
            format!(
                "its index has no image for {want} (it has {}); pass --platform to choose one of those",
                has.join(", ")
            ),
        ));
    }
    let own = m.platforms[0].clone();
    if !allow_mismatch {
        return Err(classified(
            FailureKind::Platform,
            format!(
                "it is a {own} image only, but the target platform is {want}: it could not run there; \
                 pass --allow-platform-mismatch to preload it anyway"
            ),
        ));
    }
    emit(&Event::Warning {
        image: index,
        message: format!(
            "{r} is a {own} image only, preloaded for a {want} target (--allow-platform-mismatch)"
        ),
    });
    Ok(own)
}

async fn pull_one(
    docker: &Docker,
    index: usize,
    r: &ImageRef,
    platform: &Platform,
    creds: Option<DockerCredentials>,
    stall: Option<Duration>,
) -> Result<Got> {
    let (from, tag) = r.pull_spec();
    let mut s = docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(from.clone()),
            tag,
            platform: platform.to_string(),
            ..Default::default()
        }),
        None,
        creds,
    );
    // The layers seen downloading, with their size. A small layer can come
    // down in one read with no "Downloading" progress: "Download complete"
    // (which a layer the daemon has already never gets) counts it too.
    let mut sizes: HashMap<String, u64> = HashMap::new();
    // Every status of the daemon (waiting, downloading, extracting) is
    // progress.
    while let Some(item) = unless_stalled(stall, r, s.next()).await? {
        let item = item.map_err(api_message)?;
        if let Some(msg) = item.error_detail.and_then(|d| d.message) {
            bail!(msg);
        }
        let Some(layer) = item.id else { continue };
        let progress = match item.status.as_deref() {
            Some("Downloading") => item
                .progress_detail
                .and_then(|p| Some((p.current?.max(0) as u64, p.total?.max(0) as u64))),
            Some("Download complete") => {
                let size = sizes.get(&layer).copied().unwrap_or(0);
                Some((size, size))
            }
            _ => None,
        };
        if let Some((current, total)) = progress {
            sizes.insert(layer.clone(), total);
            emit(&Event::Layer {
                image: index,
                layer,
                current,
                total,
            });
        }
    }
    let pulled = match r.digest {
        Some(_) => from.clone(),
        None => r.to_string(),
    };
    let got = describe(docker, &pulled).await?;
    let got_platform: Platform = got.platform.parse()?;
    if !platform.accepts(&got_platform) {
        return Err(classified(
            FailureKind::Platform,
            format!("it was pulled as a {got_platform} image, not the {platform} one asked for"),
        ));
    }
    // name:tag@digest pulls by digest, which leaves the image untagged.
    if let (Some(_), Some(tag)) = (&r.digest, &r.tag) {
        docker
            .tag_image(
                &got.id,
                Some(TagImageOptions {
                    repo: Some(r.name.clone()),
                    tag: Some(tag.clone()),
                }),
            )
            .await
            .with_context(|| format!("tagging {} as {}:{tag}", got.id, r.name))?;
        return describe(docker, &pulled).await;
    }
    Ok(got)
}

/// Runs `f` for every reference with at most `jobs` at once, reporting a
/// failure of each as an event. Returns the successes (None for a
/// failure).
async fn each_ref<'a, T, F, Fut>(refs: &'a [ImageRef], jobs: usize, f: F) -> Vec<Option<T>>
where
    F: Fn(usize, &'a ImageRef) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut results: Vec<(usize, Option<T>)> = futures_util::stream::iter(refs.iter().enumerate())
        .map(|(i, r)| {
            let f = &f;
            async move {
                match f(i, r).await {
                    Ok(v) => (i, Some(v)),
                    Err(e) => {
                        emit_failed(i, &e);
                        (i, None)
                    }
                }
            }
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, v)| v).collect()
}

/// Reads the manifest of every reference first (credentials, certificates
/// and platforms are checked before anything is pulled), then pulls them
/// with at most `jobs` at once. Returns an error when any step failed
/// (each failure was reported as an event).
pub async fn pull_images(socket: &str, req: &PullRequest) -> Result<()> {
    let docker = connect_when_ready(socket).await?;
    let docker = docker
        .negotiate_version()
        .await
        .context("talking to the inner dockerd")?;
    let creds = |r: &ImageRef| req.secrets.credentials.get(r.registry()).map(to_bollard);
    let chosen = each_ref(&req.refs, req.jobs, |i, r| {
        let docker = &docker;
        async move {
            if req.locked {
                check_tag(docker, r, creds(r), req.stall).await?;
            }
            let m = read_manifest(docker, r, creds(r), req.stall).await?;
            choose_platform(i, r, &m, &req.platform, req.allow_platform_mismatch)
        }
    })
    .await;
    if chosen.iter().any(Option::is_none) {
        bail!("some images cannot be pulled");
    }
    emit(&Event::Checked);
    let pulled = each_ref(&req.refs, req.jobs, |i, r| {
        let (docker, platform) = (&docker, chosen[i].as_ref().expect("checked above"));
        async move {
            let got = pull_one(docker, i, r, platform, creds(r), req.stall).await?;
            emit(&Event::Done { image: i, got });
            Ok(())
        }
    })
    .await;
    if pulled.iter().any(Option::is_none) {
        bail!("some pulls failed");
    }
    Ok(())
}

/// Run in the dind: loads the docker-archive tar on standard
/// input into the inner daemon (`docker load`) and reports each image it
/// loaded as one of source number `index`.
pub async fn load_images(socket: &str, index: usize) -> Result<()> {
    let result = async {
        let docker = connect_when_ready(socket).await?;
        let docker = docker
            .negotiate_version()
            .await
            .context("talking to the inner dockerd")?;
        let input = tokio_util::io::ReaderStream::with_capacity(tokio::io::stdin(), 1 << 20);
        let mut s = docker.import_image_stream(
            bollard::query_parameters::ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            input,
            None,
        );
        let mut loaded: Vec<String> = vec![];
        while let Some(item) = s.next().await {
            let item = item.map_err(api_message)?;
            if let Some(msg) = item.error_detail.and_then(|d| d.message) {
                bail!(msg);
            }
            for line in item.stream.iter().flat_map(|s| s.lines()) {
                let name = line
                    .strip_prefix("Loaded image: ")
                    .or_else(|| line.strip_prefix("Loaded image ID: "));
                if let Some(n) = name {
                    loaded.push(n.trim().to_string());
                }
            }
        }
        if loaded.is_empty() {
            bail!("the daemon loaded no image from the archive");
        }
        let mut got: Vec<Got> = vec![];
        for name in &loaded {
            let g = describe(&docker, name).await?;
            if !got.iter().any(|o| o.id == g.id) {
                got.push(g);
            }
        }
        Ok(got)
    }
    .await;
    match result {
        Ok(got) => {
            for got in got {
                emit(&Event::Done { image: index, got });
            }
            Ok(())
        }
        Err(e) => {
            emit_failed(index, &e);
            Err(e)
        }
    }
}

/// Run in the dind: removes every image of the inner daemon
/// whose ID is not in the JSON list on standard input, printing
/// `removed ID` for each.
pub async fn prune_images(socket: &str) -> Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the images to keep from standard input")?;
    let keep: Vec<String> =
        serde_json::from_str(&line).context("reading the images to keep from standard input")?;
    let docker = connect_when_ready(socket).await?;
    let docker = docker
        .negotiate_version()
        .await
        .context("talking to the inner dockerd")?;
    let images = docker
        .list_images(Some(bollard::query_parameters::ListImagesOptions {
            all: false,
            ..Default::default()
        }))
        .await
        .map_err(api_message)?;
    for image in images {
        if keep.contains(&image.id) {
            continue;
        }
        docker
            .remove_image(
                &image.id,
                Some(bollard::query_parameters::RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )
            .await
            .map_err(api_message)
            .with_context(|| format!("removing {}", image.id))?;
        println!("removed {}", image.id);
    }
    Ok(())
}

/// Reads the [`PullSecrets`] line from standard input.
pub fn read_secrets() -> Result<PullSecrets> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the credentials from standard input")?;
    serde_json::from_str(&line).context("reading the credentials from standard input")
}

/// Where the dind's init writes its daemon's (dockerd's or containerd's) exit code once it has
/// exited: in the helper's own directory, which every dind image has once
/// the helper is uploaded (not every image has /run).
pub const DOCKERD_EXIT: &str = "/fp-helper/dockerd.exit";

/// What dockerd logs once its store is closed (after the image service
/// and the graph driver are shut down). What follows is only stopping the
/// containerd it started, whose state is not exported; measured, that took
/// over a second after this line, for nothing the export needs.
const SHUTDOWN_COMPLETE: &[u8] = b"Daemon shutdown complete";

/// The exit code of the build container's daemon once it has exited (as
/// its init recorded it in [`DOCKERD_EXIT`]).
pub fn daemon_exit() -> Option<String> {
    std::fs::read_to_string(DOCKERD_EXIT)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Writes `code` to [`DOCKERD_EXIT`] (atomically).
fn record_exit(code: i32) -> Result<()> {
    let tmp = format!("{DOCKERD_EXIT}.tmp");
    std::fs::write(&tmp, code.to_string())
        .and_then(|()| std::fs::rename(&tmp, DOCKERD_EXIT))
        .with_context(|| format!("writing {DOCKERD_EXIT}"))
}

/// The dind container's first process (`Request::Init`): runs `cmd` (the
/// inner dockerd), forwards SIGTERM and SIGINT to it, records in
/// [`DOCKERD_EXIT`] that it has stopped (0 once it logs that its shutdown
/// is complete, else its exit code) and then keeps the container (and a
/// store on tmpfs, which belongs to the container) alive for the measure
/// and export helpers, until signalled again. Reaps orphans as an init
/// must.
pub fn dind_init(cmd: &[String]) -> Result<()> {
    use rustix::process::{kill_process, Pid, Signal, WaitOptions};
    use std::io::BufRead;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let (prog, args) = cmd.split_first().context("the init needs a command")?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("handling SIGTERM in the dind's init")?;
    let mut daemon = std::process::Command::new(prog);
    // Layers are inflated at native speed, whatever the image holds.
    let path = std::env::var_os("PATH");
    if let Some(path) = crate::unpigz::provided_path(path.as_deref(), HELPER_BIN.as_ref()) {
        daemon.env("PATH", path);
    }
    let mut child = daemon
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {prog} in the dind container"))?;
    let pid = Pid::from_raw(child.id() as i32).context("the inner dockerd has no pid")?;
    let running = Arc::new(AtomicBool::new(true));
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let (running, stopping) = (running.clone(), stopping.clone());
        std::thread::spawn(move || {
            for _ in signals.forever() {
                if running.load(Ordering::SeqCst) {
                    stopping.store(true, Ordering::SeqCst);
                    let _ = kill_process(pid, Signal::TERM);
                } else {
                    std::process::exit(0);
                }
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let stopping = stopping.clone();
        std::thread::spawn(move || {
            let (mut err, mut line) = (std::io::BufReader::new(err), Vec::new());
            let mut out = std::io::stderr();
            while matches!(err.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let _ = out.write_all(&line);
                let done = line
                    .windows(SHUTDOWN_COMPLETE.len())
                    .any(|w| w == SHUTDOWN_COMPLETE);
                if done && stopping.load(Ordering::SeqCst) {
                    let _ = record_exit(0);
                }
                line.clear();
            }
        });
    }
    loop {
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some((p, status))) if p == pid => {
                let code = status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|s| 128 + s))
                    .unwrap_or(-1);
                record_exit(code)?;
                running.store(false, Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            // No child left: orphans may still come (reparented to us).
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Run in the dind: asks the init to stop the inner
/// dockerd (SIGTERM), waits until it has exited (its store is then
/// quiescent) and prints a [`Stopped`] as JSON.
pub fn stop_dockerd(store: &std::path::Path, grace: Duration) -> Result<()> {
    use rustix::process::{kill_process, Pid, Signal};
    kill_process(Pid::INIT, Signal::TERM).context("signalling the dind's init")?;
    let start = Instant::now();
    let exit_code = loop {
        match std::fs::read_to_string(DOCKERD_EXIT) {
            Ok(s) => {
                break s
                    .trim()
                    .parse::<i32>()
                    .with_context(|| format!("reading {DOCKERD_EXIT}"))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if start.elapsed() > grace {
                    bail!(
                        "the build container's daemon did not stop within {} s",
                        grace.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).with_context(|| format!("reading {DOCKERD_EXIT}")),
        }
    };
    let st = rustix::fs::statvfs(store)
        .with_context(|| format!("reading the free space of {}", store.display()))?;
    let stopped = Stopped {
        exit_code,
        store_used_bytes: (st.f_blocks - st.f_bfree) * st.f_frsize,
    };
    serde_json::to_writer(std::io::stdout().lock(), &stopped)
        .context("writing to standard output")?;
    Ok(())
}
