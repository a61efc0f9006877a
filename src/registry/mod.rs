//! The registry client of `--engine direct`: pulls manifests, configs and
//! layer blobs straight from registries (the Docker Registry HTTP API v2 /
//! OCI distribution), with no daemon, as `docker pull` reaches them: Docker
//! Hub's names, the client's credentials (`docker::auth`), certs.d,
//! insecure registries and mirrors (`docker::RegistryOptions`). And a local
//! blob cache ([`BlobCache`]).
//!
//! Built on reqwest (rustls with the ring provider, which bollard already
//! brings) rather than the oci-client crate, which lacks three things
//! Docker does: client certificates (certs.d `*.cert` + `*.key`: mTLS),
//! the https -> http fallback of insecure registries, and Docker Hub
//! mirrors tried in order with an error falling through to the next
//! endpoint (it has one mirror, with no fallback).
//!
//! No reqwest type leaves this module.

mod cache;
mod http;
mod manifest;
mod stream;
#[cfg(test)]
mod tests;

use std::time::Duration;

use anyhow::{Context, Result};

use crate::digest::hex;
use crate::docker::RegistryOptions;
use crate::platform::Platform;
use crate::source::refs::{ImageRef, DOCKER_HUB};

pub use cache::BlobCache;
pub use manifest::Compression;

/// What went wrong, for the code that must tell failures apart (retry
/// elsewhere, ask for credentials, pick another platform); the text is for
/// people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 401/403: credentials missing or refused.
    Unauthorized,
    /// 404: no such repository, tag, manifest or blob.
    NotFound,
    /// The index has no image for the platform asked for.
    PlatformMissing,
    /// Bytes that do not match their digest (or declared size).
    DigestMismatch,
    /// The connection ended before all the bytes came.
    Truncated,
    /// No byte for longer than the stall limit (--pull-timeout).
    Stalled,
    /// A manifest or media type this client does not pull (schema 1,
    /// artifacts, unknown layer types).
    Unsupported,
    /// A manifest that is not what the specs say (bad JSON, bad digests).
    InvalidManifest,
    /// Any other HTTP status after the retries.
    Http(u16),
    /// Could not connect (DNS, TCP, TLS) or the connection failed.
    Connection,
}

/// An error of the registry client, with its [`ErrorKind`]; find it in an
/// error's chain with [`error_kind`].
#[derive(Debug)]
pub struct RegistryError {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RegistryError {}

impl RegistryError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RegistryError {
        RegistryError {
            kind,
            message: message.into(),
        }
    }
}

/// The kind of the first [`RegistryError`] in `e`'s chain (also inside an
/// I/O error, as a blob stream reports one).
pub fn error_kind(e: &anyhow::Error) -> Option<ErrorKind> {
    e.chain().find_map(|c| {
        c.downcast_ref::<RegistryError>()
            .or_else(|| {
                c.downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<RegistryError>())
            })
            .map(|r| r.kind)
    })
}

/// A registry client for one run.
pub struct Client {
    http: http::Http,
}

/// What a reference resolved to for one platform.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What the reference points at (the index digest for a multi-arch
    /// tag, else the manifest's): docker records `name@<this>`.
    pub digest: String,
    /// The platform's image manifest (what the index tests check it
    /// picked; the store records `digest`).
    #[cfg_attr(not(test), allow(dead_code))]
    pub manifest_digest: String,
    /// The image config's digest: the image ID.
    pub config_digest: String,
    /// The config's bytes, digest checked.
    pub config: Vec<u8>,
    /// The layers, bottom first.
    pub layers: Vec<Blob>,
}

/// A blob to pull: a layer (or a config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<64 hex>`.
    pub digest: String,
    pub size: u64,
    pub compression: Compression,
}

/// Where a repository is pulled from: mirrors first, in order, then the
/// registry (its https and, insecure, its http endpoint).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `scheme://host[:port]`.
    pub base: String,
    /// Verify the server's certificate (false: an insecure registry).
    pub verify_tls: bool,
    pub mirror: bool,
}

/// Whether `s` is `sha256:<64 lowercase hex>`, the only digests pulled.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
}

/// The registry a reference names, Docker Hub as `docker.io` however
/// written.
pub fn registry_of(r: &ImageRef) -> &str {
    match r.registry() {
        "index.docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// Most a manifest or index may weigh (the distribution registry's limit
/// is 4 MiB).
pub const MANIFEST_LIMIT: u64 = 4 << 20;

/// Most an image config may weigh.
const CONFIG_LIMIT: u64 = 32 << 20;

impl Client {
    /// From the command line's registry options and --pull-timeout (a
    /// stall limit: no byte for that long = error).
    pub fn new(opts: &RegistryOptions, stall: Option<Duration>) -> Result<Client> {
        Ok(Client {
            http: http::Http::new(opts, stall)?,
        })
    }

    /// The manifest the reference names for this platform (an index /
    /// manifest list resolved by os/architecture/variant as docker does),
    /// its config (raw bytes, digest checked) and layers.
    pub async fn resolve(&self, r: &ImageRef, platform: &Platform) -> Result<Resolved> {
        let registry = registry_of(r);
        let repo = r.remote_path();
        let reference = match (&r.digest, &r.tag) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        };
        let endpoints = self.http.endpoints(registry).await?;
        let mut failures = vec![];
        for ep in &endpoints {
            match self.resolve_at(ep, r, &repo, &reference, platform).await {
                Ok(resolved) => {
                    self.http.remember(registry, ep);
                    return Ok(resolved);
                }
                // Errors of the image itself are the same at every endpoint.
                Err(e)
                    if matches!(
                        error_kind(&e),
                        Some(
                            ErrorKind::PlatformMissing
                                | ErrorKind::Unsupported
                                | ErrorKind::InvalidManifest
                                | ErrorKind::DigestMismatch
                        )
                    ) && !ep.mirror =>
                {
                    return Err(e).with_context(|| format!("pulling {r} from {}", ep.base));
                }
                Err(e) => failures.push((ep.clone(), e)),
            }
        }
        Err(endpoints_failed(r, registry, "resolving", failures))
    }

    async fn resolve_at(
        &self,
        ep: &Endpoint,
        r: &ImageRef,
        repo: &str,
        reference: &str,
        platform: &Platform,
    ) -> Result<Resolved> {
        let top = self.http.manifest(ep, r, repo, reference).await?;
        if let Some(d) = &r.digest {
            if &top.digest != d {
                return Err(RegistryError::new(
                    ErrorKind::DigestMismatch,
                    format!(
                        "{} sent a manifest of digest {} for {r} (pinned to {d})",
                        ep.base, top.digest
                    ),
                )
                .into());
            }
        }
        let parsed = manifest::parse(&top.bytes, top.content_type.as_deref())
            .with_context(|| format!("the manifest of {r} ({}) at {}", top.digest, ep.base))?;
        let (manifest_digest, image) = match parsed {
            manifest::Parsed::Image(m) => (top.digest.clone(), m),
            manifest::Parsed::Index(entries) => {
                let chosen = manifest::choose(&entries, platform).map_err(|msg| {
                    RegistryError::new(ErrorKind::PlatformMissing, format!("{r}: {msg}"))
                })?;
                let m = self.http.manifest(ep, r, repo, &chosen).await?;
                if m.digest != chosen {
                    return Err(RegistryError::new(
                        ErrorKind::DigestMismatch,
                        format!(
                            "{} sent a manifest of digest {} for {r}@{chosen}",
                            ep.base, m.digest
                        ),
                    )
                    .into());
                }
                match manifest::parse(&m.bytes, m.content_type.as_deref())
                    .with_context(|| format!("the manifest {chosen} of {r} at {}", ep.base))?
                {
                    manifest::Parsed::Image(image) => (chosen, image),
                    manifest::Parsed::Index(_) => {
                        return Err(RegistryError::new(
                            ErrorKind::Unsupported,
                            format!("{r}: the index entry {chosen} for {platform} is an index again; only one level of index is pulled"),
                        )
                        .into())
                    }
                }
            }
        };
        let config_blob = Blob {
            digest: image.config.digest.clone(),
            size: image.config.size,
            compression: Compression::None,
        };
        if config_blob.size > CONFIG_LIMIT {
            return Err(RegistryError::new(
                ErrorKind::InvalidManifest,
                format!(
                    "{r}: its config {} says it is {} bytes, more than this tool reads ({CONFIG_LIMIT})",
                    config_blob.digest, config_blob.size
                ),
            )
            .into());
        }
        let mut config = Vec::with_capacity(config_blob.size as usize);
        let mut reader = self.http.blob_at(ep, r, repo, &config_blob).await?;
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut config)
            .await
            .with_context(|| {
                format!(
                    "reading the config {} of {r} from {}",
                    config_blob.digest, ep.base
                )
            })?;
        Ok(Resolved {
            digest: top.digest,
            manifest_digest,
            config_digest: image.config.digest,
            config,
            layers: image.layers,
        })
    }

    /// One blob's bytes as a stream, verified against its digest and size
    /// while streaming: the stream ends with an error (never Ok EOF) when
    /// the bytes do not match or are cut short.
    pub async fn blob(
        &self,
        r: &ImageRef,
        blob: &Blob,
    ) -> Result<impl tokio::io::AsyncRead + Send + Unpin + 'static> {
        if !is_sha256_digest(&blob.digest) {
            return Err(RegistryError::new(
                ErrorKind::InvalidManifest,
                format!("{r}: {:?} is not a sha256 digest", blob.digest),
            )
            .into());
        }
        let registry = registry_of(r);
        let repo = r.remote_path();
        let endpoints = self.http.endpoints(registry).await?;
        let mut failures = vec![];
        for ep in &endpoints {
            match self.http.blob_at(ep, r, &repo, blob).await {
                Ok(reader) => return Ok(reader),
                Err(e) => failures.push((ep.clone(), e)),
            }
        }
        Err(endpoints_failed(
            r,
            registry,
            &format!("fetching blob {}", blob.digest),
            failures,
        ))
    }
}

/// The error of a pull that no endpoint served: each endpoint's error, the
/// kind of the last (the registry's own).
fn endpoints_failed(
    r: &ImageRef,
    registry: &str,
    what: &str,
    failures: Vec<(Endpoint, anyhow::Error)>,
) -> anyhow::Error {
    // The registry's own answer (past mirrors and a failed https try of an
    // insecure registry) says most.
    let kind = failures
        .iter()
        .filter(|(ep, _)| !ep.mirror)
        .filter_map(|(_, e)| error_kind(e))
        .find(|k| *k != ErrorKind::Connection)
        .or_else(|| failures.last().and_then(|(_, e)| error_kind(e)))
        .unwrap_or(ErrorKind::Connection);
    let tried: Vec<String> = failures
        .iter()
        .map(|(ep, e)| {
            let role = if ep.mirror { " (mirror)" } else { "" };
            format!("{}{role}: {e:#}", ep.base)
        })
        .collect();
    RegistryError::new(
        kind,
        format!(
            "{what} of {r} from registry {registry} failed: {}",
            tried.join("; then ")
        ),
    )
    .into()
}

/// What the integration tests (tests/registry.rs) drive: the client and
/// the cache as `--engine direct` uses them.
#[cfg(feature = "test-hooks")]
pub mod hooks {
    use std::path::{Path, PathBuf};

    use anyhow::Result;

    use super::{BlobCache, Client};
    use crate::docker::RegistryOptions;
    use crate::source::refs::ImageRef;

    /// What one pull got.
    pub struct Pulled {
        pub digest: String,
        pub config_digest: String,
        pub config: Vec<u8>,
        /// Each layer's digest and its file in the cache.
        pub layers: Vec<(String, PathBuf)>,
    }

    /// Resolves `reference` for `platform` (`os/arch[/variant]`) with the
    /// default registry options and fetches its layers into the blob
    /// cache in `cache`.
    pub fn pull(reference: &str, platform: &str, cache: &Path) -> Result<Pulled> {
        let r = ImageRef::parse(reference)?;
        let platform = platform.parse()?;
        let client = Client::new(&RegistryOptions::default(), None)?;
        let cache = BlobCache::open(cache)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let res = client.resolve(&r, &platform).await?;
            let mut layers = vec![];
            for l in &res.layers {
                layers.push((l.digest.clone(), cache.get(&client, &r, l, &|_| {}).await?));
            }
            Ok(Pulled {
                digest: res.digest,
                config_digest: res.config_digest,
                config: res.config,
                layers,
            })
        })
    }
}
