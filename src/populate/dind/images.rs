//! Getting the images of the run into the dind's daemon: registry
//! references pulled by the pull helper, archives and images of the
//! engine loaded by the load helper, both followed as progress events.

use std::cell::RefCell;

use anyhow::{anyhow, bail, Context, Result};
use tokio_util::io::SyncIoBridge;

use super::store_run::StoreRun;
use crate::docker::registry::DEFAULT_CERTS_DIR;
use crate::docker::Input;
use crate::populate::checks::Checked;
use crate::populate::report::{ImageSource, PlatformSource, PulledImage};
use crate::progress::Pulls;
use crate::protocol::{Event, FailureKind, Got, PullOp, StoreOp};
use crate::source::archive::{self};
use crate::source::{ImageRef, Source};

/// The events of the helpers, gathered per source.
struct Follow<'a> {
    run: &'a StoreRun<'a>,
    progress: Pulls,
    got: Vec<Vec<Got>>,
    downloaded: Vec<Vec<String>>,
    failures: Vec<String>,
    /// The kind of each failure.
    kinds: Vec<FailureKind>,
}

impl Follow<'_> {
    /// An event of a helper whose image `i` is source number `map(i)`.
    fn event(&mut self, line: &str, map: impl Fn(usize) -> usize) {
        let names = &self.run.names;
        match serde_json::from_str::<Event>(line) {
            Ok(Event::Layer {
                image,
                layer,
                current,
                total,
            }) => {
                let image = map(image);
                self.progress.layer(image, &layer, current, total);
                if let Some(d) = self.downloaded.get_mut(image) {
                    if !d.contains(&layer) {
                        d.push(layer);
                    }
                }
            }
            Ok(Event::Done { image, got }) => {
                let image = map(image);
                self.progress.done(image, &got.id, &got.platform);
                if let Some(slot) = self.got.get_mut(image) {
                    slot.push(got);
                }
            }
            Ok(Event::Failed {
                image,
                kind,
                message,
            }) => {
                let image = map(image);
                self.progress.failed(image, &message);
                self.kinds.push(kind);
                let listed = self.run.lines.get(image);
                let hint = listed
                    .and_then(|l| l.source.registry_ref())
                    .and_then(|r| registry_hint(self.run, r, kind))
                    .map(|h| format!("\n    {h}"))
                    .unwrap_or_default();
                self.failures.push(format!(
                    "{} ({}): {message}{hint}",
                    names.get(image).map_or("?", |s| s.as_str()),
                    listed.map_or("?", |l| l.origin.as_str()),
                ));
            }
            Ok(Event::Warning { message, .. }) => self.progress.warn(&message),
            Ok(Event::Checked) => {
                self.run.manifests_read.send_replace(true);
            }
            Err(_) => eprintln!("dind: {line}"),
        }
    }
}

/// Gets every image of the run into the dind's daemon: the registry ones
/// pulled by the pull helper while the others are loaded one by one.
/// Returns them in the order given. On failure nothing was written; the
/// dind is left for removal.
pub(crate) async fn acquire(run: &StoreRun<'_>) -> Result<Vec<PulledImage>> {
    #[cfg(feature = "test-hooks")]
    crate::hooks::pause("pull", &run.cancel).await;
    let cfg = run.cfg;
    let n = run.lines.len();
    let follow = RefCell::new(Follow {
        run,
        progress: Pulls::new(&run.names),
        got: vec![vec![]; n],
        downloaded: vec![vec![]; n],
        failures: vec![],
        kinds: vec![],
    });
    let registry: Vec<usize> = (0..n)
        .filter(|&i| matches!(run.prepared[i], Checked::Registry))
        .collect();
    if registry.is_empty() {
        run.manifests_read.send_replace(true);
    }
    let pulls = async {
        if registry.is_empty() {
            return Ok(());
        }
        pull(run, &registry, &follow).await
    };
    let loads = async {
        for i in (0..n).filter(|i| !registry.contains(i)) {
            load(run, i, &follow).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let (pulled, loaded) = tokio::join!(run.or_cancel(pulls), run.or_cancel(loads));
    let Follow {
        progress,
        got,
        downloaded,
        failures,
        kinds,
        ..
    } = follow.into_inner();
    progress.finish(pulled.is_ok() && loaded.is_ok());
    if !failures.is_empty() {
        let message = format!(
            "getting the images failed, nothing was written:\n  {}",
            failures.join("\n  ")
        );
        if kinds.contains(&FailureKind::OutOfSpace) {
            return Err(OutOfSpace(message).into());
        }
        bail!(message);
    }
    pulled?;
    loaded?;
    let mut images = vec![];
    for (i, ((listed, got), downloaded)) in run.lines.iter().zip(got).zip(downloaded).enumerate() {
        let mut ids: Vec<&str> = got.iter().map(|g| g.id.as_str()).collect();
        let mut want: Vec<&str> = match &run.prepared[i] {
            Checked::Archive(a) => a.images().iter().map(|m| m.id.as_str()).collect(),
            Checked::Daemon(_, id) => vec![id.as_str()],
            Checked::Registry => ids.iter().take(1).copied().collect(),
        };
        ids.sort_unstable();
        want.sort_unstable();
        if ids.is_empty() || ids != want {
            bail!(
                "{} ({}) gave the images [{}], not [{}]: did the archive or the engine's image change during the run?",
                listed.source,
                listed.origin,
                ids.join(", "),
                want.join(", ")
            );
        }
        let source = match &listed.source {
            Source::Registry(_) if downloaded.is_empty() && cfg.cache.is_some() => {
                ImageSource::Cache
            }
            Source::Registry(_) => ImageSource::Registry,
            Source::Archive { .. } => ImageSource::Archive,
            Source::Daemon(_) => ImageSource::Daemon,
        };
        for g in got {
            let platform = g
                .platform
                .parse()
                .with_context(|| format!("the platform the daemon gives image {}", g.id))?;
            images.push(PulledImage {
                store: run.backend.name(),
                reference: listed.source.to_string(),
                id: g.id,
                platform,
                names: g.names,
                source,
                downloaded_layers: downloaded.clone(),
            });
        }
    }
    Ok(images)
}

/// Runs the pull helper for the registry sources `which` (indices in the
/// run's list) and follows its events.
async fn pull(run: &StoreRun<'_>, which: &[usize], follow: &RefCell<Follow<'_>>) -> Result<()> {
    let cfg = run.cfg;
    let refs = which.iter().map(|&i| run.names[i].clone()).collect();
    let request = run.store.request(StoreOp::Pull(PullOp {
        jobs: cfg.jobs,
        platform: run.platform.target.clone(),
        allow_platform_mismatch: cfg.allow_platform_mismatch,
        stall_seconds: cfg.pull_timeout.as_secs(),
        locked: matches!(cfg.lock, Some(crate::populate::lock::LockMode::Locked(_))),
        refs,
    }));
    // The credentials go over the helper's standard input only.
    let mut secrets =
        serde_json::to_vec(&run.access.secrets).context("passing the credentials to the pull")?;
    secrets.push(b'\n');
    let secrets: Input = Box::new(std::io::Cursor::new(secrets));
    let dind = &run.dind;
    let finished = run
        .engine
        .dind(dind)
        .helper_lines(&request, Some(secrets), |line| {
            follow
                .borrow_mut()
                .event(line, |i| which.get(i).copied().unwrap_or(usize::MAX))
        })
        .await?;
    if finished.exit_code != 0 && follow.borrow().failures.is_empty() {
        bail!(
            "{} in the build container failed (exit code {}): {}\nthe build container's last lines:\n{}",
            request.what(),
            finished.exit_code,
            finished.stderr.trim(),
            run.engine.logs_tail(dind).await
        );
    }
    Ok(())
}

/// Loads source `i` (an archive or an image of the engine) into the dind's
/// daemon with the load helper, streaming it from where it is: nothing is
/// copied on this machine.
async fn load(run: &StoreRun<'_>, i: usize, follow: &RefCell<Follow<'_>>) -> Result<()> {
    let listed = &run.lines[i];
    let (input, writer): (Input, Option<tokio::task::JoinHandle<Result<()>>>) =
        match &run.prepared[i] {
            Checked::Archive(a) => {
                let (layers, bytes) = a
                    .images()
                    .iter()
                    .fold((0, 0), |(l, b), i| (l + i.layers, b + i.size));
                follow.borrow_mut().progress.say(&format!(
                    "loading {}: {} image(s) of {}, {layers} layers, {}",
                    listed.source,
                    a.images().len(),
                    a.images()
                        .iter()
                        .map(|i| i.platform.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    indicatif::HumanBytes(bytes)
                ));
                let (reader, writer) = tokio::io::duplex(1 << 20);
                let (a, sink) = (a.clone(), SyncIoBridge::new(writer));
                let writing =
                    tokio::task::spawn_blocking(move || archive::write_docker_archive(&a, sink));
                (Box::new(reader), Some(writing))
            }
            Checked::Daemon(name, _) => (run.engine.save_image(name), None),
            Checked::Registry => bail!("{} is not loaded but pulled", listed.source),
        };
    let request = run.store.request(StoreOp::Load {
        platform: run.platform.target.clone(),
        index: i,
    });
    let finished = run
        .dind()
        .helper_lines(&request, Some(input), |line| {
            follow.borrow_mut().event(line, |i| i)
        })
        .await;
    let written = match writer {
        Some(w) => w
            .await
            .map_err(|e| anyhow!("the archive reader failed: {e}"))?,
        None => Ok(()),
    };
    // What the archive reader says comes first: the daemon only saw the
    // stream end early.
    written.with_context(|| format!("reading {} ({})", listed.source, listed.origin))?;
    let finished = finished?;
    if follow.borrow().failures.is_empty() {
        finished.success(request.what())?;
    }
    Ok(())
}

/// What to do about a pull of `r` that failed for `kind`, when it is the
/// registry's certificate or a login, or the target platform.
fn registry_hint(run: &StoreRun<'_>, r: &ImageRef, kind: FailureKind) -> Option<String> {
    let registry = r.registry();
    if kind == FailureKind::Tls {
        let dir = match &run.cfg.registry.certs_dir() {
            Some(d) => d.display().to_string(),
            None => DEFAULT_CERTS_DIR.to_string(),
        };
        return Some(format!(
            "the TLS certificate of registry {registry} is not trusted: put the CA that signed it in \
             {dir}/{registry}/ca.crt (or give a directory laid out so with --registry-certs), \
             or, for a registry you trust without TLS verification, pass --insecure-registry {registry}"
        ));
    }
    if kind == FailureKind::Auth {
        return Some(match run.access.sources.get(registry) {
            Some(from) => format!(
                "registry {registry} refused the credentials from {from}: check them (docker login {registry})"
            ),
            None => format!(
                "no credentials for registry {registry} were found (docker's config.json: {}); log in with `docker login {registry}` or pass --registry-config",
                run.access
                    .config_path
                    .as_deref()
                    .map_or("none".to_string(), |p| p.display().to_string())
            ),
        });
    }
    if kind == FailureKind::Stalled {
        return Some(format!(
            "check that registry {registry} is up and reachable from the build container \
             (--dind-network), or give a longer --pull-timeout (it is {} s)",
            run.cfg.pull_timeout.as_secs()
        ));
    }
    if kind == FailureKind::Platform {
        return Some(format!(
            "the target platform {} comes from {}",
            run.platform.target,
            match run.platform.from {
                PlatformSource::Option => "--platform".to_string(),
                PlatformSource::Disk => format!("the EFI loader of {}", run.cfg.disk.display()),
                PlatformSource::Host => "this machine (the disk image does not say)".to_string(),
            }
        ));
    }
    None
}

/// A pull failed because the store's filesystem is full.
#[derive(Debug)]
pub(crate) struct OutOfSpace(pub(crate) String);

impl std::fmt::Display for OutOfSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OutOfSpace {}
