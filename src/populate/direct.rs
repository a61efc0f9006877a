//! `--engine direct`: the images come straight from their registries, with
//! the tool's own client (`crate::registry`), and Docker's store is
//! written into ROOT by the tool (`store::docker::write`), with no daemon,
//! no build container and no root: registry -> blob cache (an OCI layout)
//! -> inflate -> layer tar -> store tar -> ext4 writer -> OUTPUT.
//!
//! The phases, as the build container's: every reference resolved (its
//! registry has answered for the platform) before anything is written;
//! the output copied while the blobs are fetched (at most `--jobs` at
//! once, each once); the store measured, room made, then written.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::disk::ext4::{self, Need};
use crate::disk::{self, Prepared, ROOT_NAME};
use crate::platform::Platform;
use crate::progress::{Bar, ReadProgress};
use crate::registry::{BlobCache, Client, Resolved};
use crate::source::{ImageRef, Listed, Source};
use crate::store::docker::write::{write_store, ImageIn, StoreOut};
use crate::store::{self, Backend};

use super::config::PopulateConfig;
use super::output::make_output;
use super::report::*;
use super::worker::blocking;

/// One listed image, resolved in its registry.
struct Got {
    listed: Listed,
    r: ImageRef,
    resolved: Resolved,
    /// What its config says.
    platform: Platform,
}

/// The default place of the blob cache: `$XDG_CACHE_HOME/flatcar-preload/blobs`
/// (`~/.cache/...`).
pub fn default_blob_cache() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".cache"),
            None => bail!("no HOME nor XDG_CACHE_HOME for the blob cache: pass --blob-cache DIR"),
        },
    };
    Ok(base.join("flatcar-preload/blobs"))
}

/// What `--engine direct` takes today: Docker's store, from registries.
/// Checked before anything is contacted.
pub(super) fn check_scope(cfg: &PopulateConfig) -> Result<()> {
    for s in &cfg.stores {
        if s.backend.name() != store::docker::Docker.name() {
            bail!(
                "--engine direct writes Docker's store only so far; the {} images ({}) need --engine dind",
                s.backend.name(),
                s.lines.first().map_or(String::new(), |l| l.source.to_string())
            );
        }
        for l in &s.lines {
            if !matches!(l.source, Source::Registry(_)) {
                bail!(
                    "--engine direct reads images from registries only so far; {} needs --engine dind",
                    l.source
                );
            }
        }
    }
    if cfg.merge {
        bail!("--engine direct does not --merge into a store in ROOT yet; use --engine dind");
    }
    if cfg.cache.is_some() || cfg.cache_prune {
        bail!("--cache names a build container's volume; --engine direct keeps its blobs in --blob-cache DIR");
    }
    Ok(())
}

/// Resolves every listed reference in its registry, at most `--jobs` at
/// once. With `--locked`, a pinned reference's tag must still name its
/// digest: a tag that moved is named, not followed.
async fn resolve_all(
    client: &Client,
    lines: &[Listed],
    platform: &Platform,
    cfg: &PopulateConfig,
    locked: bool,
    cancel: &CancellationToken,
) -> Result<Vec<Got>> {
    let resolving = futures_util::stream::iter(lines.iter().cloned())
        .map(|listed| async move {
            let Source::Registry(r) = &listed.source else {
                bail!("{} is not a registry image", listed.source);
            };
            let r = r.clone();
            let resolved = client
                .resolve(&r, platform)
                .await
                .with_context(|| format!("pulling {r}"))?;
            if let (true, Some(tag), Some(digest)) = (locked, &r.tag, &r.digest) {
                let by_tag = ImageRef {
                    digest: None,
                    ..r.clone()
                };
                let now = client
                    .resolve(&by_tag, platform)
                    .await
                    .with_context(|| format!("reading the tag {by_tag} to check it against the lock file"))?;
                if &now.digest != digest {
                    bail!(
                        "the tag {}:{tag} moved: it names {} now, the lock file has {digest} (--locked); to bake the locked image, pull it by digest ({}@{digest}); to take the new one, update the lock (--lock without --locked)",
                        r.name, now.digest, r.name
                    );
                }
            }
            let got = platform_of(&resolved.config)
                .with_context(|| format!("reading the config of {r}"))?;
            if !cfg.allow_platform_mismatch && !platform.accepts(&got) {
                bail!(
                    "pulling {r}: it is a {got} image, not the {platform} one asked for (--allow-platform-mismatch takes it anyway)"
                );
            }
            Ok(Got {
                listed,
                r,
                resolved,
                platform: got,
            })
        })
        .buffered(cfg.jobs.max(1))
        .collect::<Vec<_>>();
    match cancel.run_until_cancelled(resolving).await {
        Some(got) => got.into_iter().collect(),
        None => bail!("interrupted"),
    }
}

/// Fetches every layer blob not in the cache once, at most `jobs` at once,
/// one progress line per image (its layers' bytes); returns the digests
/// fetched.
async fn fetch_all(
    client: &Client,
    cache: &BlobCache,
    got: &[Got],
    jobs: usize,
    cancel: &CancellationToken,
) -> Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    let mut wanted = vec![];
    for (i, g) in got.iter().enumerate() {
        for b in &g.resolved.layers {
            if seen.insert(b.digest.clone()) && !cache.contains(&b.digest) {
                wanted.push((i, g, b));
            }
        }
    }
    let names: Vec<String> = got.iter().map(|g| g.listed.source.to_string()).collect();
    let pulls = std::sync::Mutex::new(crate::progress::Pulls::new(&names));
    let progress = |i: usize, digest: &str, current: u64, total: u64| {
        let short = digest
            .trim_start_matches("sha256:")
            .get(..12)
            .unwrap_or(digest);
        let mut p = pulls.lock().unwrap_or_else(|e| e.into_inner());
        p.layer(i, short, current, total);
    };
    let fetching = futures_util::stream::iter(wanted)
        .map(|(i, g, b)| {
            let progress = &progress;
            async move {
                let report = |n: u64| progress(i, &b.digest, n, b.size);
                cache
                    .get(client, &g.r, b, &report)
                    .await
                    .with_context(|| format!("fetching layer {} of {}", b.digest, g.r))?;
                Ok::<_, anyhow::Error>(b.digest.clone())
            }
        })
        .buffer_unordered(jobs.max(1))
        .collect::<Vec<_>>();
    let fetched = match cancel.run_until_cancelled(fetching).await {
        Some(f) => f.into_iter().collect::<Result<BTreeSet<_>>>()?,
        None => bail!("interrupted"),
    };
    let mut p = pulls.into_inner().unwrap_or_else(|e| e.into_inner());
    for (i, g) in got.iter().enumerate() {
        p.done(i, &g.resolved.config_digest, &g.platform.to_string());
    }
    Ok(fetched)
}

/// The platform an image config says it is for.
fn platform_of(config: &[u8]) -> Result<Platform> {
    #[derive(serde::Deserialize)]
    struct P {
        #[serde(default)]
        os: String,
        #[serde(default)]
        architecture: String,
        variant: Option<String>,
    }
    let p: P = serde_json::from_slice(config).context("the image config is not JSON")?;
    Ok(Platform::new(&p.os, &p.architecture, p.variant.as_deref()))
}

/// An image's names in `repositories.json`, as Docker gives a pull:
/// `name:tag` (the tag of a pinned reference too, as the build container
/// tags it; `latest` for a bare name) and `name@<the digest its
/// reference named>`, by familiar repository name.
fn names(g: &Got) -> Vec<(String, String)> {
    let repo = g.r.familiar_repository();
    let tag = match (&g.r.tag, &g.r.digest) {
        (Some(t), _) => Some(t.as_str()),
        (None, None) => Some("latest"),
        (None, Some(_)) => None,
    };
    let mut names = vec![];
    if let Some(tag) = tag {
        names.push((repo.clone(), format!("{repo}:{tag}")));
    }
    names.push((repo.clone(), format!("{repo}@{}", g.resolved.digest)));
    names
}

/// The images as the store writer takes them.
fn images_in(got: &[Got]) -> Vec<ImageIn> {
    got.iter()
        .map(|g| ImageIn {
            reference: g.listed.source.to_string(),
            config: g.resolved.config.clone(),
            names: names(g),
            source_repository: g.r.repository(),
            layers: g.resolved.layers.iter().map(|b| b.digest.clone()).collect(),
        })
        .collect()
}

/// Writes the store tar of `images` to `out` from the blobs in `cache`.
fn write_from_cache(
    images: &[ImageIn],
    cache: &BlobCache,
    stamp: i64,
    made: i64,
    out: impl std::io::Write,
) -> Result<StoreOut> {
    let mut open = |digest: &str| -> Result<Box<dyn std::io::Read + Send>> {
        let path = cache.path_of(digest)?;
        let file = std::fs::File::open(&path)
            .with_context(|| format!("opening the cached blob {}", path.display()))?;
        let (_, reader) = crate::compress::decompress(file)
            .with_context(|| format!("reading the cached blob {}", path.display()))?;
        Ok(reader)
    };
    let (out, _) = write_store(images, &mut open, stamp, made, out)?;
    Ok(out)
}

/// Runs `make` writing a store tar into a pipe on its own thread while
/// `read` reads it here.
fn piped<T: Send + 'static, U>(
    make: impl FnOnce(std::io::PipeWriter) -> Result<T> + Send + 'static,
    read: impl FnOnce(std::io::PipeReader) -> Result<U>,
) -> Result<(T, U)> {
    let (reader, writer) = std::io::pipe().context("making a pipe")?;
    let maker = std::thread::spawn(move || make(writer));
    let read = read(reader);
    let made = maker
        .join()
        .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
    // The maker's error says why the stream stopped.
    let made = made?;
    Ok((made, read?))
}

/// What Docker's store will take in ROOT.
async fn measure(
    images: Arc<Vec<ImageIn>>,
    cache: Arc<BlobCache>,
    prepared: &Prepared,
) -> Result<Need> {
    let root = prepared.fs();
    blocking(move || {
        let block_size = root.open_read()?.inspect(ROOT_NAME)?.block_size;
        let (_, need) = piped(
            move |w| write_from_cache(&images, &cache, 0, i64::MAX, w),
            |r| ext4::estimate_tar(r, block_size),
        )?;
        Ok(need)
    })
    .await
}

/// Writes Docker's store into ROOT. On failure ROOT is consistent with
/// part of the store written; the caller must not publish.
async fn write(
    images: Arc<Vec<ImageIn>>,
    cache: Arc<BlobCache>,
    root: ext4::Root,
    cfg: &PopulateConfig,
    made: i64,
    cancel: CancellationToken,
) -> Result<(StoreOut, ext4::Stats)> {
    let selinux = cfg.selinux.clone();
    let target = store::docker::ROOT;
    blocking(move || {
        let mut fs = root.open_write(Some(&cancel))?;
        let stamp = fs.stamp();
        let mut labeler = selinux.labeler(target.as_bytes())?;
        let written = piped(
            move |w| write_from_cache(&images, &cache, stamp, made, w),
            |r| {
                let r = ReadProgress::new(r, Bar::bytes("writing the store", None));
                let label = labeler.as_mut().map(|l| l as &mut dyn ext4::Transform);
                // A layer's hard links as dockerd applies them.
                fs.write_tar_with(target.as_bytes(), r, label, ext4::HardLinks::ApplyToInode)
            },
        )
        .with_context(|| format!("writing the store {target} into ROOT"));
        fs.close_after(written)
    })
    .await
}

/// The images resolved and their blobs in the cache.
pub(super) struct Pulled {
    got: Vec<Got>,
    cache: Arc<BlobCache>,
    /// The blobs fetched by this run (the others were in the cache).
    fetched: BTreeSet<String>,
    /// When the pull started: a layer's file of that time or later is
    /// stamped, as the build container's export stamps what its daemon made.
    made: i64,
}

impl Pulled {
    /// The images for the summary (and the lock).
    pub(super) fn images(&self) -> Vec<PulledImage> {
        let docker: &'static dyn Backend = &store::docker::Docker;
        self.got
            .iter()
            .map(|g| PulledImage {
                store: docker.name(),
                reference: g.listed.source.to_string().to_string(),
                // The config's digest, checked: the image ID.
                id: g.resolved.config_digest.clone(),
                platform: g.platform.clone(),
                names: names(g).into_iter().map(|(_, n)| n).collect(),
                source: match g
                    .resolved
                    .layers
                    .iter()
                    .any(|b| self.fetched.contains(&b.digest))
                {
                    true => ImageSource::Registry,
                    false => ImageSource::Cache,
                },
                downloaded_layers: g
                    .resolved
                    .layers
                    .iter()
                    .filter(|b| self.fetched.contains(&b.digest))
                    .map(|b| b.digest.clone())
                    .collect(),
            })
            .collect()
    }
}

/// Resolves every reference (nothing is written before every registry has
/// answered), then fetches the blobs into the cache while the output is
/// made. On failure nothing was written (blobs fetched stay cached).
pub(super) async fn pull_beside_copy(
    cfg: &PopulateConfig,
    disk: &disk::Disk,
    platform: &Platform,
    clock: &Clock,
    cancel: &CancellationToken,
) -> Result<(Pulled, Prepared)> {
    let lines: Vec<Listed> = cfg.all_lines().cloned().collect();
    let stall = (!cfg.pull_timeout.is_zero()).then_some(cfg.pull_timeout);
    let client = Client::new(&cfg.registry, stall)?;
    let dir = match &cfg.blob_cache {
        Some(d) => d.clone(),
        None => default_blob_cache()?,
    };
    let cache = Arc::new(BlobCache::open(&dir)?);
    let made = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let locked = matches!(cfg.lock, Some(super::lock::LockMode::Locked(_)));
    let got = clock
        .time(
            Phase::Pull,
            resolve_all(&client, &lines, platform, cfg, locked, cancel),
        )
        .await?;
    let copy = clock.time(Phase::Copy, make_output(cfg, disk, false, cancel.clone()));
    let fetch = clock.time(
        Phase::Pull,
        fetch_all(&client, &cache, &got, cfg.jobs, cancel),
    );
    let (prepared, fetched) = tokio::join!(copy, fetch);
    let (prepared, fetched) = (prepared?, fetched?);
    Ok((
        Pulled {
            got,
            cache,
            fetched,
            made,
        },
        prepared,
    ))
}

/// Measures the store, makes room for it and `extra` (the node's files),
/// and writes it into ROOT. On failure the caller must not publish: ROOT
/// is consistent with part of the store written.
pub(super) async fn measure_and_write(
    cfg: &PopulateConfig,
    pulled: &Pulled,
    prepared: Prepared,
    extra: Need,
    clock: &Clock,
    cancel: &CancellationToken,
) -> Result<(StoreReport, Prepared, Option<disk::GrowReport>, Need)> {
    let images = Arc::new(images_in(&pulled.got));
    let cache = pulled.cache.clone();
    let mut need = clock
        .time(
            Phase::Measure,
            measure(images.clone(), cache.clone(), &prepared),
        )
        .await?;
    need += extra;
    let (prepared, grown) = clock
        .time(Phase::Grow, super::output::make_room(cfg, prepared, need))
        .await?;
    let root = prepared.fs();
    let (out, stats) = clock
        .time(
            Phase::ExportAndWrite,
            write(
                images,
                cache,
                root.clone(),
                cfg,
                pulled.made,
                cancel.clone(),
            ),
        )
        .await
        .map_err(|e| crate::hostfs::explain_full(e, &root.image))?;
    let docker: &'static dyn Backend = &store::docker::Docker;
    let report = StoreReport {
        store: docker.name(),
        root: docker.root(),
        images: out.ids.len(),
        layers: out.layers,
        entries_written: stats.entries,
        bytes_written: stats.bytes,
        export_via: crate::docker::ExportVia::Direct,
        pulled: PullPlace {
            kind: StoreLocation::BlobCache,
            memory_cap_bytes: None,
            fell_back_to_disk: false,
            used_bytes: 0,
        },
    };
    Ok((report, prepared, grown, need))
}
