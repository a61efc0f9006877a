//! The HTTP side: endpoints (mirrors, insecure registries), TLS per host
//! (certs.d), authentication (bearer token or basic), retries, redirects
//! and the stall limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode, Url};
use tokio_util::io::StreamReader;

use super::stream::{read_all, Chunks, Verified};
use super::{
    is_sha256_digest, sha256_digest, Blob, Endpoint, ErrorKind, RegistryError, MANIFEST_LIMIT,
};
use crate::docker::auth::{ClientConfig, Credentials};
use crate::docker::registry::{host_certs, mirror_host};
use crate::docker::RegistryOptions;
use crate::source::refs::{ImageRef, DOCKER_HUB};

/// Docker Hub's registry endpoint.
const DOCKER_HUB_ENDPOINT: &str = "registry-1.docker.io";

/// Tries of one request that fails with 429, 5xx or no connection.
const ATTEMPTS: u32 = 4;

/// First wait between tries, doubled after each.
const BACKOFF: Duration = Duration::from_millis(500);

/// Most a Retry-After is waited for.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

/// How long connecting may take when there is no stall limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How a host is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    Verify,
    NoVerify,
    Plain,
}

/// A manifest as fetched: its bytes, their digest, the Content-Type.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub content_type: Option<String>,
}

pub struct Http {
    config: ClientConfig,
    insecure: Vec<String>,
    mirrors: Vec<(String, String)>,
    certs: Option<PathBuf>,
    stall: Option<Duration>,
    clients: Mutex<HashMap<(String, Mode), reqwest::Client>>,
    creds: Mutex<HashMap<String, Option<(Credentials, String)>>>,
    /// Authorization header per (endpoint, repository).
    tokens: Mutex<HashMap<(String, String), String>>,
    /// The endpoint that served a registry last.
    preferred: Mutex<HashMap<String, String>>,
    insecure_hosts: Mutex<HashMap<String, bool>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An error's message with its sources (reqwest's own says little).
fn full(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s += &format!(": {t}");
        }
        src = c.source();
    }
    s
}

/// Whether CIDR `cidr` (`a.b.c.d/n`, `x::/n`) holds `ip`.
fn cidr_contains(cidr: &str, ip: IpAddr) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    let mask = |len: u32, bits: u32| -> u128 {
        if bits == 0 {
            0
        } else {
            (!0u128 << (len - bits.min(len))) & (!0u128 >> (128 - len))
        }
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let m = mask(32, bits);
            (u32::from(n) as u128 & m) == (u32::from(i) as u128 & m)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let m = mask(128, bits);
            (u128::from(n) & m) == (u128::from(i) & m)
        }
        _ => false,
    }
}

/// `host` without its port and IPv6 brackets.
fn host_name(host: &str) -> &str {
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !n.ends_with(':') => n,
        _ => host,
    };
    name.trim_start_matches('[').trim_end_matches(']')
}

/// The challenges of a WWW-Authenticate header: scheme (lowercase) and
/// parameters (`realm`, `service`, `scope`).
pub fn parse_challenges(headers: &HeaderMap) -> Vec<(String, HashMap<String, String>)> {
    let mut out = vec![];
    for v in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(v) = v.to_str() else { continue };
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        let mut params = HashMap::new();
        let b = rest.as_bytes();
        let mut i = 0;
        while i < b.len() {
            while i < b.len() && (b[i] == b' ' || b[i] == b',') {
                i += 1;
            }
            let k0 = i;
            while i < b.len() && b[i] != b'=' {
                i += 1;
            }
            let key = rest[k0..i].trim().to_ascii_lowercase();
            i += 1;
            let mut val = String::new();
            if i < b.len() && b[i] == b'"' {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    val.push(b[i] as char);
                    i += 1;
                }
                i += 1;
            } else {
                let v0 = i.min(b.len());
                while i < b.len() && b[i] != b',' {
                    i += 1;
                }
                val = rest[v0..i.min(b.len())].trim().to_string();
            }
            if !key.is_empty() {
                params.insert(key, val);
            }
        }
        out.push((scheme.to_ascii_lowercase(), params));
    }
    out
}

/// What the image and the registry are, for messages.
struct Ctx<'a> {
    r: &'a ImageRef,
    registry: &'a str,
    repo: &'a str,
}

impl Http {
    pub fn new(opts: &RegistryOptions, stall: Option<Duration>) -> Result<Http> {
        let config = ClientConfig::load(opts.config_file())?;
        let certs = match opts.certs_dir_in_use() {
            Some((dir, true)) if !dir.is_dir() => {
                anyhow::bail!("--registry-certs {}: no such directory", dir.display())
            }
            Some((dir, _)) => Some(dir.to_path_buf()),
            None => None,
        };
        Ok(Http {
            config,
            insecure: opts.insecure().to_vec(),
            mirrors: opts.mirrors().to_vec(),
            certs,
            stall,
            clients: Mutex::default(),
            creds: Mutex::default(),
            tokens: Mutex::default(),
            preferred: Mutex::default(),
            insecure_hosts: Mutex::default(),
        })
    }

    /// Whether `host` (`host[:port]`) is an insecure registry as dockerd
    /// decides: listed by name, or an address of it (a listed CIDR,
    /// loopback always).
    async fn is_insecure(&self, host: &str) -> bool {
        if let Some(&b) = lock(&self.insecure_hosts).get(host) {
            return b;
        }
        let name = host_name(host);
        let ips: Vec<IpAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((name, 0))
                .await
                .map(|a| a.map(|s| s.ip()).collect())
                .unwrap_or_default(),
        };
        let insecure = self.insecure.iter().any(|i| i == host || i == name)
            || ips
                .iter()
                .any(|ip| ip.is_loopback() || self.insecure.iter().any(|c| cidr_contains(c, *ip)));
        lock(&self.insecure_hosts).insert(host.to_string(), insecure);
        insecure
    }

    /// Where `registry` is pulled from, in order: its mirrors, then its
    /// own endpoint (https; an insecure one: https without verification,
    /// then http); the endpoint that served it last first.
    pub async fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>> {
        let mut v = vec![];
        for (h, url) in &self.mirrors {
            if h == registry {
                let host = mirror_host(url)?.to_string();
                let verify_tls = !self.is_insecure(&host).await;
                v.push(Endpoint {
                    base: url.clone(),
                    verify_tls,
                    mirror: true,
                });
            }
        }
        let host = if registry == DOCKER_HUB {
            DOCKER_HUB_ENDPOINT
        } else {
            registry
        };
        let insecure = self.is_insecure(host).await;
        v.push(Endpoint {
            base: format!("https://{host}"),
            verify_tls: !insecure,
            mirror: false,
        });
        if insecure {
            v.push(Endpoint {
                base: format!("http://{host}"),
                verify_tls: false,
                mirror: false,
            });
        }
        if let Some(p) = lock(&self.preferred).get(registry) {
            if let Some(i) = v.iter().position(|e| &e.base == p) {
                let e = v.remove(i);
                v.insert(0, e);
            }
        }
        Ok(v)
    }

    /// `ep` served `registry`: try it first from now on.
    pub fn remember(&self, registry: &str, ep: &Endpoint) {
        lock(&self.preferred).insert(registry.to_string(), ep.base.clone());
    }

    /// The HTTP client for `host` in `mode`: certs.d's CA files and client
    /// certificate for it.
    fn client(&self, host: &str, mode: Mode) -> Result<reqwest::Client> {
        if let Some(c) = lock(&self.clients).get(&(host.to_string(), mode)) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flatcar-preload/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.stall.unwrap_or(CONNECT_TIMEOUT).min(CONNECT_TIMEOUT));
        match mode {
            Mode::Plain => b = b.tls_built_in_root_certs(false),
            Mode::NoVerify => b = b.danger_accept_invalid_certs(true),
            Mode::Verify => {}
        }
        if let (Some(dir), Mode::Verify | Mode::NoVerify) = (&self.certs, mode) {
            let hdir = dir.join(host);
            let files = host_certs(&hdir)?;
            for (name, data) in &files {
                let path = hdir.join(name);
                if name.ends_with(".crt") {
                    for c in reqwest::Certificate::from_pem_bundle(data).with_context(|| {
                        format!("reading the CA certificates {}", path.display())
                    })? {
                        b = b.add_root_certificate(c);
                    }
                } else if let Some(stem) = name.strip_suffix(".cert") {
                    let key = files
                        .iter()
                        .find(|(n, _)| *n == format!("{stem}.key"))
                        .map(|(_, d)| d.clone())
                        .unwrap_or_default();
                    let mut pem = data.clone();
                    pem.push(b'\n');
                    pem.extend_from_slice(&key);
                    let id = reqwest::Identity::from_pem(&pem).with_context(|| {
                        format!(
                            "reading the client certificate {} and its key {stem}.key",
                            path.display()
                        )
                    })?;
                    b = b.identity(id);
                }
            }
        }
        let c = b
            .build()
            .with_context(|| format!("setting up the HTTP client for {host}"))?;
        lock(&self.clients).insert((host.to_string(), mode), c.clone());
        Ok(c)
    }

    fn client_for_url(&self, url: &Url, verify: bool) -> Result<reqwest::Client> {
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        let mode = match (url.scheme(), verify) {
            ("http", _) => Mode::Plain,
            (_, true) => Mode::Verify,
            (_, false) => Mode::NoVerify,
        };
        self.client(&host, mode)
    }

    /// Sends what `make` builds, again on 429, 5xx and (`retry_connect`)
    /// failed connections, a few times with backoff or as Retry-After says.
    async fn send(
        &self,
        make: impl Fn() -> RequestBuilder,
        retry_connect: bool,
        what: &str,
    ) -> Result<Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let backoff = BACKOFF * 2u32.pow(attempt - 1);
            let fut = make().send();
            let res = match self.stall {
                Some(d) => tokio::time::timeout(d, fut).await.map_err(|_| {
                    RegistryError::new(
                        ErrorKind::Stalled,
                        format!(
                            "{what}: no answer for {}s; raise --pull-timeout for a slow registry",
                            d.as_secs()
                        ),
                    )
                })?,
                None => fut.await,
            };
            match res {
                Ok(resp) => {
                    let s = resp.status();
                    let again = s == StatusCode::TOO_MANY_REQUESTS
                        || matches!(s.as_u16(), 500 | 502 | 503 | 504);
                    if again && attempt < ATTEMPTS {
                        let wait = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map_or(backoff, |s| Duration::from_secs(s).min(RETRY_AFTER_MAX));
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Ok(resp);
                }
                Err(e)
                    if retry_connect
                        && attempt < ATTEMPTS
                        && (e.is_connect() || e.is_timeout()) =>
                {
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => {
                    return Err(RegistryError::new(
                        ErrorKind::Connection,
                        format!("{what}: {}", full(&e)),
                    )
                    .into())
                }
            }
        }
    }

    /// The credentials of `registry` (looked up once) and where from.
    fn credentials(&self, registry: &str) -> Result<Option<(Credentials, String)>> {
        if let Some(c) = lock(&self.creds).get(registry) {
            return Ok(c.clone());
        }
        let c = self
            .config
            .credentials(registry)
            .with_context(|| format!("looking up the credentials of registry {registry}"))?;
        lock(&self.creds).insert(registry.to_string(), c.clone());
        Ok(c)
    }

    /// Which credentials were tried, for a 401 (no secret).
    fn tried(&self, registry: &str) -> String {
        match lock(&self.creds).get(registry) {
            Some(Some((c, from))) => {
                let who = match (&c.username, &c.identity_token, &c.registry_token) {
                    (_, _, Some(_)) => "a registry token".to_string(),
                    (_, Some(_), _) => "an identity token".to_string(),
                    (Some(u), _, _) => format!("user {u}"),
                    _ => "no user".to_string(),
                };
                format!("the credentials for {registry} from {from} ({who})")
            }
            _ => match self.config.path() {
                Some(p) => format!(
                    "no credentials (there are none for {registry} in {})",
                    p.display()
                ),
                None => "no credentials (no docker client configuration was found)".to_string(),
            },
        }
    }

    fn unauthorized(
        &self,
        ctx: &Ctx,
        status: StatusCode,
        base: &str,
        detail: &str,
    ) -> anyhow::Error {
        RegistryError::new(
            ErrorKind::Unauthorized,
            format!(
                "{base} refused to let {} be pulled (HTTP {}{detail}) with {}; log in with `docker login {}` (or give --registry-config FILE), and check that the repository {} exists and you may pull it",
                ctx.r,
                status.as_u16(),
                self.tried(ctx.registry),
                ctx.registry,
                ctx.repo,
            ),
        )
        .into()
    }

    /// The Authorization header for a 401's challenges.
    async fn authorize(&self, ctx: &Ctx<'_>, base: &str, headers: &HeaderMap) -> Result<String> {
        let challenges = parse_challenges(headers);
        let creds = self.credentials(ctx.registry)?.map(|(c, _)| c);
        let basic = creds
            .as_ref()
            .and_then(|c| Some((c.username.clone()?, c.password.clone()?)));
        if let Some((_, params)) = challenges.iter().find(|(s, _)| s == "bearer") {
            if let Some(t) = creds.as_ref().and_then(|c| c.registry_token.clone()) {
                return Ok(format!("Bearer {t}"));
            }
            let realm = params.get("realm").cloned().unwrap_or_default();
            let url = Url::parse(&realm).map_err(|e| {
                RegistryError::new(
                    ErrorKind::Unauthorized,
                    format!("{base} asks for a token from {realm:?}, which is not a URL: {e}"),
                )
            })?;
            let scope = format!("repository:{}:pull", ctx.repo);
            let service = params.get("service").cloned().unwrap_or_default();
            let verify = url.scheme() == "http" || !self.is_insecure(&url_host(&url)).await;
            let client = self.client_for_url(&url, verify)?;
            let identity = creds.as_ref().and_then(|c| c.identity_token.clone());
            let what = format!("getting a token for {} from {}", ctx.r, url_origin(&url));
            let resp = self
                .send(
                    || match &identity {
                        Some(tok) => client.post(url.clone()).form(&[
                            ("grant_type", "refresh_token"),
                            ("refresh_token", tok.as_str()),
                            ("service", service.as_str()),
                            ("scope", scope.as_str()),
                            ("client_id", "flatcar-preload"),
                        ]),
                        None => {
                            let mut q = vec![("scope", scope.as_str())];
                            if !service.is_empty() {
                                q.push(("service", service.as_str()));
                            }
                            let b = client.get(url.clone()).query(&q);
                            match &basic {
                                Some((u, p)) => b.basic_auth(u, Some(p)),
                                None => b,
                            }
                        }
                    },
                    true,
                    &what,
                )
                .await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(self.unauthorized(
                    ctx,
                    status,
                    &url_origin(&url),
                    " from its token service",
                ));
            }
            if !status.is_success() {
                return Err(status_error(ctx, &what, resp).await);
            }
            let body = read_all(chunks(resp), 1 << 20, &what, self.stall).await?;
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                RegistryError::new(
                    ErrorKind::Unauthorized,
                    format!("{what}: the answer is not JSON: {e}"),
                )
            })?;
            let token = v
                .get("token")
                .or_else(|| v.get("access_token"))
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    RegistryError::new(
                        ErrorKind::Unauthorized,
                        format!("{what}: the answer has no token"),
                    )
                })?;
            return Ok(format!("Bearer {token}"));
        }
        if challenges.iter().any(|(s, _)| s == "basic") {
            if let Some((u, p)) = basic {
                use base64::Engine;
                let enc = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                return Ok(format!("Basic {enc}"));
            }
        }
        Err(self.unauthorized(ctx, StatusCode::UNAUTHORIZED, base, ""))
    }

    /// GET `/v2/<repo>/<suffix>` at `ep`, authenticating as the registry
    /// asks, retrying, and following redirects (the Authorization header
    /// only to the endpoint's own origin). A response with a 2xx status.
    async fn get(
        &self,
        ep: &Endpoint,
        ctx: &Ctx<'_>,
        suffix: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response> {
        let mut url = Url::parse(&format!("{}/v2/{}/{suffix}", ep.base, ctx.repo))
            .with_context(|| format!("the URL of {what} at {}", ep.base))?;
        let origin = url_origin(&url);
        let key = (ep.base.clone(), ctx.repo.to_string());
        // An insecure registry's https is tried once before its http.
        let retry_connect = ep.verify_tls || ep.base.starts_with("http://");
        let mut authed = false;
        let mut redirects = 0;
        loop {
            let same_origin = url_origin(&url) == origin;
            let auth = if same_origin {
                lock(&self.tokens).get(&key).cloned()
            } else {
                None
            };
            let verify = if same_origin {
                ep.verify_tls
            } else {
                !self.is_insecure(&url_host(&url)).await
            };
            let client = self.client_for_url(&url, verify)?;
            let resp = self
                .send(
                    || {
                        let mut b = client.get(url.clone());
                        if let Some(a) = accept {
                            b = b.header(ACCEPT, a);
                        }
                        if let Some(a) = &auth {
                            b = b.header(AUTHORIZATION, a);
                        }
                        b
                    },
                    retry_connect || !same_origin,
                    &format!("{what} at {}", url_origin(&url)),
                )
                .await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && same_origin && !authed {
                authed = true;
                let header = self.authorize(ctx, &ep.base, resp.headers()).await?;
                lock(&self.tokens).insert(key.clone(), header);
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(self.unauthorized(ctx, status, &url_origin(&url), ""));
            }
            if status.is_redirection() {
                redirects += 1;
                let loc = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| {
                        RegistryError::new(
                            ErrorKind::Http(status.as_u16()),
                            format!("{what}: {} redirected without a Location", url_origin(&url)),
                        )
                    })?;
                if redirects > 10 {
                    return Err(RegistryError::new(
                        ErrorKind::Http(status.as_u16()),
                        format!("{what}: more than 10 redirects"),
                    )
                    .into());
                }
                url = url.join(loc).map_err(|e| {
                    RegistryError::new(
                        ErrorKind::Http(status.as_u16()),
                        format!("{what}: a redirect to {loc:?}, not a URL: {e}"),
                    )
                })?;
                continue;
            }
            if !status.is_success() {
                return Err(
                    status_error(ctx, &format!("{what} at {}", url_origin(&url)), resp).await,
                );
            }
            return Ok(resp);
        }
    }

    /// The manifest `reference` (tag or digest) of the repository at `ep`,
    /// its digest computed (and checked against Docker-Content-Digest).
    pub async fn manifest(
        &self,
        ep: &Endpoint,
        r: &ImageRef,
        repo: &str,
        reference: &str,
    ) -> Result<Fetched> {
        let ctx = Ctx {
            r,
            registry: super::registry_of(r),
            repo,
        };
        let what = format!("the manifest {repo}:{reference}");
        let what = what.replace(":sha256:", "@sha256:");
        let resp = self
            .get(
                ep,
                &ctx,
                &format!("manifests/{reference}"),
                Some(super::manifest::ACCEPT),
                &what,
            )
            .await?;
        let header = |n| {
            resp.headers()
                .get(n)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(CONTENT_TYPE.as_str());
        let said = header("docker-content-digest");
        let bytes = read_all(chunks(resp), MANIFEST_LIMIT, &what, self.stall).await?;
        let digest = sha256_digest(&bytes);
        if let Some(said) = said.filter(|s| is_sha256_digest(s)) {
            if said != digest {
                return Err(RegistryError::new(
                    ErrorKind::DigestMismatch,
                    format!(
                        "{what} at {}: the registry says its digest is {said}, its bytes have {digest}",
                        ep.base
                    ),
                )
                .into());
            }
        }
        Ok(Fetched {
            bytes,
            digest,
            content_type,
        })
    }

    /// A blob of the repository at `ep`, verified as it streams.
    pub async fn blob_at(
        &self,
        ep: &Endpoint,
        r: &ImageRef,
        repo: &str,
        blob: &Blob,
    ) -> Result<StreamReader<Verified, bytes::Bytes>> {
        let ctx = Ctx {
            r,
            registry: super::registry_of(r),
            repo,
        };
        let what = format!("blob {} of {r}", blob.digest);
        let resp = self
            .get(ep, &ctx, &format!("blobs/{}", blob.digest), None, &what)
            .await?;
        if let Some(len) = resp.content_length() {
            if len != blob.size {
                return Err(RegistryError::new(
                    ErrorKind::DigestMismatch,
                    format!(
                        "{what} at {}: {len} bytes are coming, its manifest says {}",
                        ep.base, blob.size
                    ),
                )
                .into());
            }
        }
        let what = format!("{what} from {}", ep.base);
        Ok(StreamReader::new(Verified::new(
            chunks(resp),
            blob.size,
            &blob.digest,
            what,
            self.stall,
        )))
    }
}

fn url_origin(u: &Url) -> String {
    u.origin().ascii_serialization()
}

fn url_host(u: &Url) -> String {
    match u.port() {
        Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
        None => u.host_str().unwrap_or_default().to_string(),
    }
}

fn chunks(resp: Response) -> Chunks {
    Box::pin(
        resp.bytes_stream()
            .map(|r| r.map_err(std::io::Error::other)),
    )
}

/// The error of a non-2xx answer: 404 as NotFound, with the registry's
/// own error codes and messages.
async fn status_error(ctx: &Ctx<'_>, what: &str, resp: Response) -> anyhow::Error {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    let said = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            let errs = v.get("errors")?.as_array()?.clone();
            Some(
                errs.iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e.get("code").and_then(|c| c.as_str()).unwrap_or(""),
                            e.get("message").and_then(|c| c.as_str()).unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
        .map(|s| format!(": {}", s.trim()))
        .unwrap_or_default();
    let (kind, hint) = match status.as_u16() {
        404 => (
            ErrorKind::NotFound,
            format!(
                "; check that {} exists in registry {} (name, tag, digest)",
                ctx.r, ctx.registry
            ),
        ),
        429 => (
            ErrorKind::Http(429),
            "; the registry limits pulls: log in, wait, or use a mirror (--registry-mirror)"
                .to_string(),
        ),
        s => (ErrorKind::Http(s), String::new()),
    };
    RegistryError::new(kind, format!("{what}: HTTP {status}{said}{hint}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_hosts_and_challenges() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(cidr_contains("10.0.0.0/8", ip("10.1.2.3")));
        assert!(!cidr_contains("10.0.0.0/8", ip("11.1.2.3")));
        assert!(cidr_contains("0.0.0.0/0", ip("11.1.2.3")));
        assert!(cidr_contains("fd00::/8", ip("fd12::1")));
        assert!(!cidr_contains("fd00::/8", ip("10.0.0.1")));
        assert_eq!(host_name("[::1]:5000"), "::1");
        assert_eq!(host_name("r.local:5000"), "r.local");
        assert_eq!(host_name("r.local"), "r.local");
        let mut h = HeaderMap::new();
        h.append(
            WWW_AUTHENTICATE,
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push""#
                .parse()
                .unwrap(),
        );
        let c = parse_challenges(&h);
        assert_eq!(c[0].0, "bearer");
        assert_eq!(c[0].1["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].1["service"], "registry.docker.io");
        assert_eq!(c[0].1["scope"], "repository:a/b:pull,push");
    }
}
