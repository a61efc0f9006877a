//! The helper side for containerd, run inside the build container: drives
//! the build container's containerd with its own client, `ctr` (every
//! containerd package ships it), and leaves each image as the target's own
//! pull leaves it ([`Records`]): for the CRI the records `repo:tag`,
//! `repo@sha256:DIGEST` and `sha256:CONFIG`, labelled
//! `io.cri-containerd.image=managed` (and pinned); for Docker 29 (`moby`)
//! its name alone. Unpacked into the overlayfs snapshotter. Reports
//! [`Event`]s on stdout as the Docker helpers do.
//!
//! The daemon runs without its CRI plugin (see [`super::config_toml`]):
//! that plugin relabels images of `k8s.io` as they are made, racing the
//! labels set here.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::docker::helper::{daemon_exit, read_secrets, PullSecrets};
use crate::docker::registry::CONTAINERD_HOSTS_DIR;
use crate::platform::Platform;
use crate::protocol::{
    classified, emit, emit_failed, stalled, ContainerdVersion, Event, FailureKind, Got, StoreOp,
    StoreOptions,
};
use crate::source::ImageRef;

use super::image::{MANAGED, PINNED};
use super::Records;

/// `ctr` talking to one namespace of the build container's containerd.
struct Ctr<'a> {
    socket: &'a str,
    namespace: &'a str,
}

impl Ctr<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.args(["--address", self.socket, "--namespace", self.namespace])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs `ctr ARGS` and returns its stdout; fails with what it said
    /// (its last `ctr: ` line, which is its error).
    fn run(&self, args: &[&str]) -> Result<Vec<u8>> {
        self.finish(self.command(args), args)
    }

    fn finish(&self, mut cmd: Command, args: &[&str]) -> Result<Vec<u8>> {
        let out = cmd.output().map_err(not_started)?;
        if !out.status.success() {
            return Err(failed(args, &out.stderr));
        }
        Ok(out.stdout)
    }

    /// Runs `ctr ARGS`, handing each line of its standard output (escape
    /// sequences left out) to `line` as it comes, which says whether the
    /// line shows progress. With `stall`, ctr is stopped and the pull of
    /// an image from that registry fails when no line has shown progress
    /// for that long.
    fn follow(
        &self,
        args: &[&str],
        stall: Option<(Duration, &str)>,
        line: &mut dyn FnMut(&str) -> bool,
    ) -> Result<()> {
        use std::io::{BufRead, Read};
        use std::sync::mpsc::RecvTimeoutError;
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(not_started)?;
        let mut stderr = child.stderr.take().context("ctr's standard error")?;
        let errors = std::thread::spawn(move || {
            let mut b = vec![];
            let _ = stderr.read_to_end(&mut b);
            b
        });
        let mut out = std::io::BufReader::new(child.stdout.take().context("ctr's output")?);
        let (lines, got) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![];
            while matches!(out.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                if lines
                    .send(without_escapes(&String::from_utf8_lossy(&buf)))
                    .is_err()
                {
                    break;
                }
                buf.clear();
            }
        });
        let mut progress = Instant::now();
        loop {
            match got.recv_timeout(Duration::from_millis(250)) {
                Ok(l) if line(&l) => progress = Instant::now(),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if let Some((after, registry)) = stall.filter(|(after, _)| progress.elapsed() > *after)
            {
                let _ = child.kill();
                let _ = child.wait();
                return Err(stalled(after, registry));
            }
        }
        let status = child.wait().context("waiting for ctr")?;
        let stderr = errors.join().unwrap_or_default();
        if !status.success() {
            return Err(failed(args, &stderr));
        }
        Ok(())
    }

    /// Every image record: name -> target digest.
    fn images(&self) -> Result<BTreeMap<String, String>> {
        let out = self.run(&["images", "ls"])?;
        let text = String::from_utf8_lossy(&out);
        let mut map = BTreeMap::new();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 3 {
                map.insert(f[0].to_string(), f[2].to_string());
            }
        }
        Ok(map)
    }

    /// The blob `digest` of the content store.
    fn content(&self, digest: &str) -> Result<Vec<u8>> {
        self.run(&["content", "get", digest])
            .with_context(|| format!("reading {digest} from the content store"))
    }
}

fn not_started(e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "running ctr (containerd's client) in the build container: {e}; \
         the build image must have ctr on its PATH"
    )
}

/// What a failed `ctr ARGS` said (its last `ctr: ` line, which is its
/// error), classified.
fn failed(args: &[&str], stderr: &[u8]) -> anyhow::Error {
    let stderr = String::from_utf8_lossy(stderr);
    let said = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("ctr: "))
        .unwrap_or(stderr.trim());
    // `ctr images pull`, not the password of `--user`.
    let what: Vec<&str> = args.iter().take(2).copied().collect();
    let message = format!("ctr {} failed: {said}", what.join(" "));
    classified(FailureKind::of_message(said), message)
}

/// `text` without terminal escape sequences (`ESC [ ... letter`).
fn without_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// A layer's line of ctr's pull progress.
#[derive(Debug, PartialEq)]
struct LayerLine {
    /// The first 12 hex digits of its digest.
    layer: String,
    /// `waiting`, `downloading`, `done`, `complete`, `exists`, ...
    status: String,
    /// Bytes so far and in all, when it says.
    bytes: Option<(u64, u64)>,
}

/// The layer line `line` of ctr's pull progress, if it is one. ctr 1.7
/// writes `layer-sha256:HEX:  downloading  |+++---|  1.2 MiB/3.0 MiB`,
/// ctr 2.x `layer (HEX12)  downloading  |+++---|  1.2 MiB/3.0 MiB`.
fn layer_progress(line: &str) -> Option<LayerLine> {
    let line = line.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let (hex, rest) = if let Some(r) = line.strip_prefix("layer-sha256:") {
        r.split_once(':')?
    } else {
        line.strip_prefix("layer (")?.split_once(')')?
    };
    let hex = hex.get(..12)?;
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let status = rest.split('|').next()?.trim().to_string();
    let bytes = rest
        .rsplit('|')
        .next()
        .and_then(|t| t.trim().split_once('/'))
        .and_then(|(a, b)| Some((human_bytes(a)?, human_bytes(b)?)));
    Some(LayerLine {
        layer: hex.to_string(),
        status,
        bytes,
    })
}

/// `1.2 MiB`, `107.6 Mi` (ctr cuts it at 8 characters), `512 B`.
fn human_bytes(text: &str) -> Option<u64> {
    let (n, unit) = text.trim().split_once(' ')?;
    let n: f64 = n.parse().ok()?;
    let scale = match unit.trim_end_matches('B') {
        "" => 1u64,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    Some((n * scale as f64) as u64)
}

/// The fields of a manifest, an index and a config that are read here.
#[derive(Deserialize)]
struct Blob {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    platform: Option<DescPlatform>,
}

#[derive(Deserialize)]
struct DescPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl DescPlatform {
    fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

/// The repository of a normalized name (`domain/path:tag` or
/// `domain/path@sha256:...`).
fn repository(name: &str) -> &str {
    if let Some((repo, _)) = name.split_once('@') {
        return repo;
    }
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// The server's version of `ctr version` (`v2.1.9`, `1.7.24~ds1`) as
/// (major, minor).
fn server_version(text: &str) -> Option<(u32, u32)> {
    let server = text.split("Server:").nth(1)?;
    let v = server
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))?
        .trim()
        .trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether a containerd of `target`'s series reads the store of the build
/// container's containerd `build` (major, minor) as it is: containerd 2.x
/// migrates a 1.7 database (schema 3) with a write at its first open, as
/// an upgrade does; 1.7 does not support a 2.x database (schema 4, with
/// sandboxes), as containerd supports no downgrade.
pub fn check_compatible(build: (u32, u32), target: ContainerdVersion) -> Result<()> {
    let shown = format!("{}.{}", build.0, build.1);
    match (build, target) {
        ((1, minor), _) if minor < 7 => bail!(
            "the build image's containerd is {shown}: older than 1.7, the oldest Flatcar ships; \
             use a build image with containerd 1.7 or later (--containerd-build-image)"
        ),
        ((2.., _), ContainerdVersion::V1_7) => bail!(
            "the build image's containerd is {shown}, whose metadata database (schema 4) containerd 1.7 \
             (the target's, --containerd-version 1.7: Flatcar LTS) does not support reading; use a build \
             image with containerd 1.7 (--containerd-build-image), or give the target's version"
        ),
        ((3.., _), _) => bail!(
            "the build image's containerd is {shown}: newer than any Flatcar ships ({target} is the target's); \
             use a build image with the target's containerd (--containerd-build-image)"
        ),
        _ => Ok(()),
    }
}

/// Serves a request of the tool to the containerd on `socket` (see
/// [`crate::protocol::StoreOp`]).
pub fn serve(socket: &str, op: StoreOp, opts: &StoreOptions) -> Result<()> {
    match op {
        StoreOp::Ready => ready(socket, opts.containerd_version),
        StoreOp::Pull(p) => pull(&PullRequest {
            stall: p.stall(),
            socket,
            namespace: &opts.namespace,
            refs: p.parsed_refs()?,
            platform: p.platform,
            allow_platform_mismatch: p.allow_platform_mismatch,
            pin: opts.pin,
            hosts_dir: CONTAINERD_HOSTS_DIR,
            secrets: read_secrets()?,
        }),
        StoreOp::Load { platform, index } => import(&ImportRequest {
            socket,
            namespace: &opts.namespace,
            platform,
            pin: opts.pin,
            index,
        }),
        StoreOp::Prune => prune(socket, &opts.namespace),
        StoreOp::Measure { .. } | StoreOp::Export { .. } => {
            bail!("{op:?} is not a request to containerd")
        }
    }
}

/// The containerd of the build container, once it answers on `socket`;
/// refuses one whose store `target` cannot read. Prints its version.
pub fn ready(socket: &str, target: ContainerdVersion) -> Result<()> {
    let ctr = Ctr {
        socket,
        namespace: "default",
    };
    let start = Instant::now();
    let text = loop {
        match ctr.run(&["version"]) {
            Ok(out) => break String::from_utf8_lossy(&out).into_owned(),
            Err(e) if daemon_exit().is_some() => {
                return Err(e.context(format!(
                    "containerd exited (code {}) before it answered",
                    daemon_exit().unwrap_or_default()
                )))
            }
            Err(e) if start.elapsed() > Duration::from_secs(60) => {
                return Err(e.context("containerd did not answer within 60 s"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let build = server_version(&text)
        .with_context(|| format!("reading containerd's version in: {}", text.trim()))?;
    check_compatible(build, target)?;
    println!("{}.{}", build.0, build.1);
    Ok(())
}

/// What the containerd pull helper is asked.
pub struct PullRequest<'a> {
    pub socket: &'a str,
    pub namespace: &'a str,
    pub refs: Vec<ImageRef>,
    pub platform: Platform,
    pub allow_platform_mismatch: bool,
    pub pin: bool,
    pub hosts_dir: &'a str,
    /// Fail an image whose pull makes no progress for this long.
    pub stall: Option<Duration>,
    pub secrets: PullSecrets,
}

/// Pulls every reference, one after the other, each reported as an event;
/// then reports that every registry answered. Fails when any did.
///
/// One at a time, whatever `--jobs` says: two pulls unpacking a layer they
/// share race for its snapshot, and containerd (1.7.24 here) then keeps a
/// stray one no image reaches, which the target's GC removes at first
/// boot (by hand, two images sharing their base layer: 2 stores in 8 had
/// a fourth snapshot with 6 pulls at once, none in 8 one at a time, whose
/// snapshot IDs were also the same every time).
pub fn pull(req: &PullRequest<'_>) -> Result<()> {
    let ctr = Ctr {
        socket: req.socket,
        namespace: req.namespace,
    };
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(r) = req.refs.get(i) else { break };
            match pull_one(&ctr, req, r, i) {
                Ok(got) => emit(&Event::Done { image: i, got }),
                Err(e) => {
                    failed.fetch_add(1, Ordering::SeqCst);
                    emit_failed(i, &e);
                }
            }
        });
    });
    if failed.load(Ordering::SeqCst) > 0 {
        bail!("some pulls failed");
    }
    emit(&Event::Checked);
    forget_leases(&ctr)
}

fn pull_one(ctr: &Ctr<'_>, req: &PullRequest<'_>, r: &ImageRef, index: usize) -> Result<Got> {
    let name = r.normalized();
    let platform = req.platform.to_string();
    let user = match req.secrets.credentials.get(r.registry()) {
        Some(c) => match (&c.username, &c.password) {
            (Some(u), Some(p)) => Some(format!("{u}:{p}")),
            _ => {
                return Err(classified(
                    FailureKind::Auth,
                    format!(
                    "the credentials of registry {} are a token, which ctr (containerd's client) \
                         cannot send; log in with a username and password",
                    r.registry()
                ),
                ))
            }
        },
        None => None,
    };
    let mut args = vec!["images", "pull", "--platform", &platform];
    args.extend(["--hosts-dir", req.hosts_dir]);
    if let Some(u) = &user {
        args.extend(["--user", u]);
    }
    args.push(&name);
    // ctr echoes no argument in its messages: the password stays here.
    // Its progress table gives each layer's bytes as they come (a layer it
    // has already is not downloaded: `exists`, `already exists`).
    // Progress is a layer's status or bytes changing.
    let mut downloaded: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut seen: BTreeMap<String, (String, Option<(u64, u64)>)> = BTreeMap::new();
    let stall = req.stall.map(|after| (after, r.registry()));
    ctr.follow(&args, stall, &mut |line| {
        let Some(LayerLine {
            layer,
            status,
            bytes,
        }) = layer_progress(line)
        else {
            return false;
        };
        let now = (status.clone(), bytes);
        let moved = seen.insert(layer.clone(), now.clone()) != Some(now);
        if !matches!(status.as_str(), "downloading" | "done" | "complete") {
            return moved;
        }
        let (current, total) = bytes.unwrap_or_default();
        if downloaded.insert(layer.clone(), (current, total)) != Some((current, total)) && total > 0
        {
            emit(&Event::Layer {
                image: index,
                layer,
                current,
                total,
            });
        }
        moved
    })?;
    // `name:tag@digest` is pulled by digest (as the CRI does) and keeps its
    // tag as a record of its own.
    let mut names = vec![name.clone()];
    if let (Some(_), Some(tag)) = (&r.digest, &r.tag) {
        let tagged = format!("{}:{tag}", repository(&name));
        ctr.run(&["images", "tag", "--force", &name, &tagged])?;
        names.push(tagged);
    }
    let want = Want {
        platform: &req.platform,
        allow_platform_mismatch: req.allow_platform_mismatch,
        pin: req.pin,
        records: Records::of(req.namespace),
    };
    let (got, layers) = finish_records(ctr, &names, &want, index)?;
    // The exact sizes of what was downloaded, from the manifest.
    for l in layers {
        let hex = l.digest.trim_start_matches("sha256:");
        if let Some(short) = hex.get(..12).filter(|s| downloaded.contains_key(*s)) {
            emit(&Event::Layer {
                image: index,
                layer: short.to_string(),
                current: l.size,
                total: l.size,
            });
        }
    }
    Ok(got)
}

/// What an image must be, and how it is labelled.
struct Want<'a> {
    platform: &'a Platform,
    allow_platform_mismatch: bool,
    pin: bool,
    records: Records,
}

/// Checks that the config of the image of the records `names` (one
/// target) is for the target platform; for the CRI, gives it the other
/// records a CRI pull makes and labels them all. Returns it and its
/// layers.
fn finish_records(
    ctr: &Ctr<'_>,
    names: &[String],
    want: &Want<'_>,
    index: usize,
) -> Result<(Got, Vec<Descriptor>)> {
    let first = names.first().context("an image without a name")?;
    let records = ctr.images()?;
    let target = records
        .get(first)
        .with_context(|| format!("{first} is not in containerd after the pull"))?
        .clone();
    let blob: Blob = serde_json::from_slice(&ctr.content(&target)?)
        .with_context(|| format!("reading the manifest {target} of {first}"))?;
    let manifest: Blob = match &blob.manifests {
        Some(list) => {
            let chosen = list
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| want.platform.accepts(&p.platform()))
                })
                .ok_or_else(|| {
                    let has: Vec<String> = list
                        .iter()
                        .filter_map(|m| m.platform.as_ref().map(|p| p.platform().to_string()))
                        .collect();
                    classified(
                        FailureKind::Platform,
                        format!(
                            "its index has no image for {} (it has {})",
                            want.platform,
                            has.join(", ")
                        ),
                    )
                })?;
            serde_json::from_slice(&ctr.content(&chosen.digest)?)
                .with_context(|| format!("reading the manifest {} of {first}", chosen.digest))?
        }
        None => blob,
    };
    let layers = manifest.layers;
    let config = manifest
        .config
        .with_context(|| format!("the manifest of {first} has no config"))?
        .digest;
    let image: DescPlatform = serde_json::from_slice(&ctr.content(&config)?)
        .with_context(|| format!("reading the config {config} of {first}"))?;
    let platform = image.platform();
    if !want.platform.accepts(&platform) {
        if !want.allow_platform_mismatch {
            return Err(classified(
                FailureKind::Platform,
                format!(
                    "it is a {platform} image only, but the target platform is {}: it could not run there; \
                     pass --allow-platform-mismatch to preload it anyway",
                    want.platform
                ),
            ));
        }
        emit(&Event::Warning {
            image: index,
            message: format!(
                "{first} is a {platform} image only, preloaded for a {} target (--allow-platform-mismatch)",
                want.platform
            ),
        });
    }
    let mut all: Vec<String> = names.to_vec();
    if want.records == Records::Docker {
        let got = Got {
            id: config,
            platform: platform.to_string(),
            names: all,
        };
        return Ok((got, layers));
    }
    for extra in names
        .iter()
        .map(|n| format!("{}@{target}", repository(n)))
        .chain([config.clone()])
    {
        if !all.contains(&extra) {
            all.push(extra);
        }
    }
    for n in &all[names.len()..] {
        ctr.run(&["images", "tag", "--force", first, n])?;
    }
    let labels: Vec<String> = [Some(MANAGED), want.pin.then_some(PINNED)]
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for n in &all {
        let mut args = vec!["images", "label", n.as_str()];
        args.extend(labels.iter().map(String::as_str));
        ctr.run(&args)?;
    }
    let got = Got {
        id: config,
        platform: platform.to_string(),
        names: all,
    };
    Ok((got, layers))
}

/// Removes the leases the pulls left (build-machine state: a lease keeps
/// content it names from the garbage collector, here for nothing).
fn forget_leases(ctr: &Ctr<'_>) -> Result<()> {
    let out = ctr.run(&["leases", "ls", "-q"])?;
    for id in String::from_utf8_lossy(&out).split_whitespace() {
        ctr.run(&["leases", "rm", id])?;
    }
    Ok(())
}

/// Removes every image record but those of `namespace` named in the JSON
/// list on standard input (a cache's images of other runs, in any
/// namespace), waiting for the garbage collection of what only they kept;
/// prints `removed NAME` (`NAMESPACE/NAME` in another namespace) for each.
pub fn prune(socket: &str, namespace: &str) -> Result<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut input)
        .context("reading the names to keep")?;
    let keep: Vec<String> =
        serde_json::from_str(input.trim()).context("reading the names to keep (JSON)")?;
    let all = Ctr {
        socket,
        namespace: "default",
    };
    let out = all.run(&["namespaces", "ls", "-q"])?;
    for ns in String::from_utf8_lossy(&out).split_whitespace() {
        let ctr = Ctr {
            socket,
            namespace: ns,
        };
        for name in ctr.images()?.into_keys() {
            if ns == namespace && keep.contains(&name) {
                continue;
            }
            ctr.run(&["images", "rm", "--sync", &name])?;
            match ns == namespace {
                true => println!("removed {name}"),
                false => println!("removed {ns}/{name}"),
            }
        }
    }
    Ok(())
}

/// What the containerd import helper is asked.
pub struct ImportRequest<'a> {
    pub socket: &'a str,
    pub namespace: &'a str,
    pub platform: Platform,
    pub pin: bool,
    pub index: usize,
}

/// Imports the docker-archive on standard input (`ctr images import`) and
/// makes each image it brought as [`pull`] does, reported as source
/// `index`.
pub fn import(req: &ImportRequest<'_>) -> Result<()> {
    let ctr = Ctr {
        socket: req.socket,
        namespace: req.namespace,
    };
    let result = (|| {
        let before = ctr.images()?;
        let platform = req.platform.to_string();
        let args = ["images", "import", "--platform", &platform, "-"];
        let mut cmd = ctr.command(&args);
        cmd.stdin(Stdio::inherit());
        ctr.finish(cmd, &args)?;
        // What the archive brought: new records, or records it moved.
        let mut by_target: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, target) in ctr.images()? {
            if before.get(&name) != Some(&target) && !name.starts_with("sha256:") {
                by_target.entry(target).or_default().push(name);
            }
        }
        if by_target.is_empty() {
            bail!("containerd imported no named image from the archive");
        }
        let want = Want {
            platform: &req.platform,
            allow_platform_mismatch: false,
            pin: req.pin,
            records: Records::of(req.namespace),
        };
        let mut got: Vec<Got> = vec![];
        for names in by_target.values() {
            let (g, _) = finish_records(&ctr, names, &want, req.index)?;
            match got.iter_mut().find(|o| o.id == g.id) {
                Some(o) => o.names.extend(g.names),
                None => got.push(g),
            }
        }
        forget_leases(&ctr)?;
        Ok(got)
    })();
    // Drain what is left of the input, so that the writer is not cut off.
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    match result {
        Ok(got) => {
            for got in got {
                emit(&Event::Done {
                    image: req.index,
                    got,
                });
            }
            Ok(())
        }
        Err(e) => {
            emit_failed(req.index, &e);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_lines_of_ctr_1_7_and_2_x() {
        let v17 = "layer-sha256:0b719b4bbdc1f41ef7e8014d4ba5675b862b17f0e2d6868bf8afe49fdf6b30e0:    downloading    |\x1b[32m+++++\x1b[0m-----| 96.0 MiB/107.6 MiB \n";
        let LayerLine {
            layer: hex,
            status,
            bytes,
        } = layer_progress(&without_escapes(v17)).unwrap();
        assert_eq!(
            (hex.as_str(), status.as_str()),
            ("0b719b4bbdc1", "downloading")
        );
        assert_eq!(
            bytes,
            Some((96 << 20, (107.6 * (1u64 << 20) as f64) as u64))
        );
        let v2 = "   \u{2514}\u{2500}\u{2500}layer (7bce0c5aa1b9)              \tdownloading\t|\x1b[32m+++\x1b[0m---|\t107.6 Mi/294.1 MiB\t";
        let LayerLine {
            layer: hex,
            status,
            bytes,
        } = layer_progress(&without_escapes(v2)).unwrap();
        assert_eq!(
            (hex.as_str(), status.as_str()),
            ("7bce0c5aa1b9", "downloading")
        );
        assert_eq!(bytes.unwrap().0, (107.6 * (1u64 << 20) as f64) as u64);
        let done = "   \u{251c}\u{2500}\u{2500}layer (402733431054)   \tcomplete   \t|\x1b[32m++++\x1b[0m|\t";
        let l = layer_progress(&without_escapes(done)).unwrap();
        assert_eq!((l.status.as_str(), l.bytes), ("complete", None));
        let exists = "layer-sha256:402733431054a10e682f5a994a026f22991dc4b0fdd6ee41969cbb95b81b370d:    exists    |++++| ";
        assert_eq!(layer_progress(exists).unwrap().status, "exists");
        for other in [
            "manifest (681be7b85794)   \tcomplete",
            "Pulling from OCI Registry (x)\telapsed: 0.0 s\ttotal:   0.0 B",
            "layer (nothex!!!!!!)  done",
            "",
        ] {
            assert!(layer_progress(other).is_none(), "{other:?}");
        }
        assert_eq!(human_bytes("512 B"), Some(512));
        assert_eq!(human_bytes("1.0 KiB"), Some(1024));
        assert_eq!(human_bytes("3 parsecs"), None);
    }

    #[test]
    fn versions_and_what_each_target_reads() {
        let text = "Client:\n  Version:  2.1.9\n\nServer:\n  Version:  v2.1.9~ds1\n  UUID: x\n";
        assert_eq!(server_version(text), Some((2, 1)));
        assert_eq!(
            server_version("Server:\n  Version:  1.7.24~ds1\n"),
            Some((1, 7))
        );
        assert_eq!(server_version("Client:\n  Version: 2.1.9\n"), None);
        use ContainerdVersion::*;
        for ok in [
            ((1, 7), V1_7),
            ((1, 7), V2_1),
            ((2, 1), V2_1),
            ((2, 2), V2_1),
            ((2, 1), V2_2),
        ] {
            check_compatible(ok.0, ok.1).unwrap_or_else(|e| panic!("{ok:?}: {e:#}"));
        }
        let e = check_compatible((2, 1), V1_7).unwrap_err();
        assert!(format!("{e}").contains("containerd 1.7"), "{e}");
        assert!(check_compatible((1, 6), V2_1).is_err());
        assert!(check_compatible((3, 0), V2_2).is_err());
    }

    #[test]
    fn repositories_of_names() {
        assert_eq!(
            repository("docker.io/library/busybox:1.36"),
            "docker.io/library/busybox"
        );
        assert_eq!(repository("reg:5000/a/b:1"), "reg:5000/a/b");
        assert_eq!(repository("reg:5000/a/b"), "reg:5000/a/b");
        assert_eq!(repository("reg:5000/a/b@sha256:00"), "reg:5000/a/b");
    }
}
