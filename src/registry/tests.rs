//! The registry client against in-process fake registries (plain HTTP/1.1
//! spoken by hand over a TcpListener), for what a real registry cannot be
//! made to do: challenges, 429s, wrong or cut bytes, redirects, failing
//! mirrors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use super::*;
use crate::docker::RegistryOptions;

#[derive(Debug, Clone)]
struct Req {
    path: String,
    headers: HashMap<String, String>,
}

#[derive(Default)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many bytes of the body (Content-Length says all).
    cut: Option<usize>,
    /// Wait this long after the headers.
    stall: Option<Duration>,
}

fn ok(body: &[u8], content_type: &str) -> Resp {
    Resp {
        status: 200,
        headers: vec![("Content-Type".into(), content_type.into())],
        body: body.to_vec(),
        ..Resp::default()
    }
}

fn status(s: u16) -> Resp {
    Resp {
        status: s,
        body: br#"{"errors":[{"code":"X","message":"fake"}]}"#.to_vec(),
        ..Resp::default()
    }
}

type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

/// A fake server; its requests recorded.
struct Fake {
    host: String,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Fake {
    async fn start(ip: &str, handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Fake {
        let l = TcpListener::bind((ip, 0)).await.unwrap();
        let host = format!("{ip}:{}", l.local_addr().unwrap().port());
        let seen = Arc::new(Mutex::new(vec![]));
        let handler: Handler = Arc::new(handler);
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                let (handler, seen) = (handler.clone(), s.clone());
                tokio::spawn(async move {
                    let mut buf = vec![];
                    let mut b = [0u8; 4096];
                    loop {
                        let Ok(n) = c.read(&mut b).await else { return };
                        if n == 0 {
                            return;
                        }
                        // TLS (an insecure registry's https try): hang up.
                        if buf.is_empty() && b[0] == 0x16 {
                            return;
                        }
                        buf.extend_from_slice(&b[..n]);
                        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let text = String::from_utf8_lossy(&buf).to_string();
                    let mut lines = text.split("\r\n");
                    let first = lines.next().unwrap_or("");
                    let path = first.split(' ').nth(1).unwrap_or("").to_string();
                    let headers = lines
                        .filter_map(|l| l.split_once(": "))
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                        .collect();
                    let req = Req { path, headers };
                    seen.lock().unwrap().push(req.clone());
                    let resp = handler(&req);
                    let mut head = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        resp.status,
                        resp.body.len()
                    );
                    for (k, v) in &resp.headers {
                        head += &format!("{k}: {v}\r\n");
                    }
                    head += "\r\n";
                    let _ = c.write_all(head.as_bytes()).await;
                    let _ = c.flush().await;
                    if let Some(d) = resp.stall {
                        tokio::time::sleep(d).await;
                    }
                    let body = &resp.body[..resp.cut.unwrap_or(resp.body.len())];
                    let _ = c.write_all(body).await;
                    let _ = c.shutdown().await;
                });
            }
        });
        Fake { host, seen }
    }

    fn count(&self, prefix: &str) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|r| r.path.starts_with(prefix)).count()
    }
}

/// An image: its manifest, config and layer blobs by digest.
struct Image {
    manifest: Vec<u8>,
    manifest_digest: String,
    config_digest: String,
    blobs: HashMap<String, Vec<u8>>,
}

fn image(arch: &str, layers: &[&[u8]]) -> Image {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    let config_digest = sha256_digest(&config);
    let mut blobs = HashMap::from([(config_digest.clone(), config.clone())]);
    let mut ls = vec![];
    for l in layers {
        let d = sha256_digest(l);
        ls.push(serde_json::json!({
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "digest": d, "size": l.len(),
        }));
        blobs.insert(d, l.to_vec());
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": ls,
    }))
    .unwrap();
    Image {
        manifest_digest: sha256_digest(&manifest),
        manifest,
        config_digest,
        blobs,
    }
}

/// Serves `img` as `repo:tag` (and its manifest by digest); None for any
/// other path.
fn serve(img: &Image, repo: &str, path: &str) -> Option<Resp> {
    let m = format!("/v2/{repo}/manifests/");
    if let Some(r) = path.strip_prefix(&m) {
        if r == "v1" || r == img.manifest_digest {
            return Some(ok(&img.manifest, DOCKER_MANIFEST));
        }
    }
    let b = format!("/v2/{repo}/blobs/");
    let d = path.strip_prefix(&b)?;
    img.blobs
        .get(d)
        .map(|bytes| ok(bytes, "application/octet-stream"))
}

fn client_with(
    config: Option<&std::path::Path>,
    mirrors: Vec<String>,
    stall: Option<Duration>,
) -> Client {
    let opts = RegistryOptions::new(config.map(Into::into), None, vec![], mirrors).unwrap();
    Client::new(&opts, stall).unwrap()
}

fn client() -> Client {
    client_with(None, vec![], None)
}

async fn read(reader: impl tokio::io::AsyncRead + Unpin) -> anyhow::Result<Vec<u8>> {
    let mut reader = reader;
    let mut out = vec![];
    reader
        .read_to_end(&mut out)
        .await
        .map_err(anyhow::Error::from)?;
    Ok(out)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn platform(s: &str) -> Platform {
    s.parse().unwrap()
}

#[test]
fn bearer_token_from_basic_credentials_then_pull() {
    rt().block_on(async {
        let img = Arc::new(image("amd64", &[b"layer one", b"layer two"]));
        let port = Arc::new(Mutex::new(String::new()));
        let (i, p) = (img.clone(), port.clone());
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
        );
        let fake = Fake::start("127.0.0.1", move |req| {
            let host = p.lock().unwrap().clone();
            if req.path.starts_with("/token?") {
                assert!(req.path.contains("scope=repository%3Ateam%2Fapp%3Apull"), "{}", req.path);
                assert!(req.path.contains("service=fake"), "{}", req.path);
                if req.headers.get("authorization") != Some(&good) {
                    return status(401);
                }
                return ok(br#"{"token":"T0K"}"#, "application/json");
            }
            if req.headers.get("authorization").map(String::as_str) != Some("Bearer T0K") {
                let mut r = status(401);
                r.headers.push((
                    "WWW-Authenticate".into(),
                    format!(r#"Bearer realm="http://{host}/token",service="fake",scope="repository:team/app:pull""#),
                ));
                return r;
            }
            serve(&i, "team/app", &req.path).unwrap_or_else(|| status(404))
        })
        .await;
        *port.lock().unwrap() = fake.host.clone();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        let write_cfg = |pw: &str| {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{pw}"));
            std::fs::write(
                &cfg,
                format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, fake.host),
            )
            .unwrap();
        };
        write_cfg("s3cret");
        let r = ImageRef::parse(&format!("{}/team/app:v1", fake.host)).unwrap();
        let c = client_with(Some(&cfg), vec![], None);
        let res = c.resolve(&r, &platform("linux/amd64")).await.unwrap();
        assert_eq!(res.digest, img.manifest_digest);
        assert_eq!(res.manifest_digest, img.manifest_digest);
        assert_eq!(res.config_digest, img.config_digest);
        assert_eq!(sha256_digest(&res.config), img.config_digest);
        assert_eq!(res.layers.len(), 2);
        for l in &res.layers {
            assert_eq!(l.compression, Compression::Gzip);
            let bytes = read(c.blob(&r, l).await.unwrap()).await.unwrap();
            assert_eq!(&bytes, &img.blobs[&l.digest]);
        }
        // One token for the run.
        assert_eq!(fake.count("/token"), 1);

        // Wrong password: a 401 naming the user and the file, not the secret.
        write_cfg("wrong-pw");
        let c = client_with(Some(&cfg), vec![], None);
        let e = c.resolve(&r, &platform("linux/amd64")).await.unwrap_err();
        assert_eq!(error_kind(&e), Some(ErrorKind::Unauthorized), "{e:#}");
        let msg = format!("{e:#}");
        assert!(msg.contains("user alice") && msg.contains(&cfg.display().to_string()), "{msg}");
        assert!(msg.contains(&fake.host) && msg.contains("docker login"), "{msg}");
        assert!(!msg.contains("wrong-pw"), "{msg}");

        // No credentials at all: anonymous, and said so.
        std::fs::write(&cfg, "{}").unwrap();
        let c = client_with(Some(&cfg), vec![], None);
        let e = c.resolve(&r, &platform("linux/amd64")).await.unwrap_err();
        assert_eq!(error_kind(&e), Some(ErrorKind::Unauthorized), "{e:#}");
        assert!(format!("{e:#}").contains("no credentials"), "{e:#}");
    });
}

#[test]
fn basic_auth_challenge() {
    rt().block_on(async {
        let img = Arc::new(image("amd64", &[b"x"]));
        let i = img.clone();
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("bob:pw")
        );
        let fake = Fake::start("127.0.0.1", move |req| {
            if req.headers.get("authorization") != Some(&good) {
                let mut r = status(401);
                r.headers
                    .push(("WWW-Authenticate".into(), r#"Basic realm="fake""#.into()));
                return r;
            }
            serve(&i, "app", &req.path).unwrap_or_else(|| status(404))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            format!(
                r#"{{"auths":{{"{}":{{"username":"bob","password":"pw"}}}}}}"#,
                fake.host
            ),
        )
        .unwrap();
        let r = ImageRef::parse(&format!("{}/app:v1", fake.host)).unwrap();
        let c = client_with(Some(&cfg), vec![], None);
        let res = c.resolve(&r, &platform("linux/amd64")).await.unwrap();
        assert_eq!(res.config_digest, img.config_digest);
    });
}

#[test]
fn retries_429_then_succeeds() {
    rt().block_on(async {
        let img = Arc::new(image("amd64", &[b"x"]));
        let tries = Arc::new(AtomicUsize::new(0));
        let (i, t) = (img.clone(), tries.clone());
        let fake = Fake::start("127.0.0.1", move |req| {
            if req.path.contains("/manifests/") && t.fetch_add(1, Ordering::SeqCst) < 2 {
                let mut r = status(429);
                r.headers.push(("Retry-After".into(), "0".into()));
                return r;
            }
            serve(&i, "app", &req.path).unwrap_or_else(|| status(404))
        })
        .await;
        let r = ImageRef::parse(&format!("{}/app:v1", fake.host)).unwrap();
        let res = client()
            .resolve(&r, &platform("linux/amd64"))
            .await
            .unwrap();
        assert_eq!(res.config_digest, img.config_digest);
        assert_eq!(fake.count("/v2/app/manifests/"), 3);

        // Always 429: a bounded number of tries, then an error saying so.
        let fake = Fake::start("127.0.0.1", move |_| {
            let mut r = status(429);
            r.headers.push(("Retry-After".into(), "0".into()));
            r
        })
        .await;
        let r = ImageRef::parse(&format!("{}/app:v1", fake.host)).unwrap();
        let e = client()
            .resolve(&r, &platform("linux/amd64"))
            .await
            .unwrap_err();
        assert_eq!(error_kind(&e), Some(ErrorKind::Http(429)), "{e:#}");
        assert!(format!("{e:#}").contains("limits pulls"), "{e:#}");
        assert_eq!(fake.count("/v2/"), 4);
    });
}

#[test]
fn wrong_and_cut_blobs_end_in_errors() {
    rt().block_on(async {
        let img = Arc::new(image("amd64", &[b"0123456789abcdef"]));
        let i = img.clone();
        let fake = Fake::start("127.0.0.1", move |req| {
            let mut r = serve(&i, "app", &req.path).unwrap_or_else(|| status(404));
            if req.path.contains("/blobs/") && r.body.len() == 16 {
                // Same size, other bytes.
                r.body[0] ^= 1;
            }
            r
        })
        .await;
        let r = ImageRef::parse(&format!("{}/app:v1", fake.host)).unwrap();
        let c = client();
        let res = c.resolve(&r, &platform("linux/amd64")).await.unwrap();
        let e = read(c.blob(&r, &res.layers[0]).await.unwrap())
            .await
            .unwrap_err();
        assert_eq!(error_kind(&e), Some(ErrorKind::DigestMismatch), "{e:#}");
        assert!(format!("{e:#}").contains(&res.layers[0].digest), "{e:#}");

        let i = img.clone();
        let fake = Fake::start("127.0.0.1", move |req| {
            let mut r = serve(&i, "app", &req.path).unwrap_or_else(|| status(404));
            if req.path.contains("/blobs/") && r.body.len() == 16 {
                r.cut = Some(7);
            }
            r
        })
        .await;
        let r = ImageRef::parse(&format!("{}/app:v1", fake.host)).unwrap();
        let e = read(c.blob(&r, &res.layers[0]).await.unwrap())
            .await
            .unwrap_err();
        assert_eq!(error_kind(&e), Some(ErrorKind::Truncated), "{e:#}");

        // A blob that stops coming: the stall limit.
        let i = img.clone();
        let fake = Fake::start("127.0.0.1", move |req| {
            let mut r = serve(&i, "app", &req.path).unwrap_or_else(|| status(404));
            if req.path.contains("/blobs/") && r.body.len() == 16 {
                r.stall = Some(Duration::from_secs(5));
            }
            r
        })
        .await;
        let r = ImageRef::parse(&format!("{}/app:v1", fake.host)).unwrap();
        let c = client_with(None, vec![], Some(Duration::from_secs(1)));
        let e = read(c.blob(&r, &res.layers[0]).await.unwrap())
            .await
            .unwrap_err();
        assert_eq!(error_kind(&e), Some(ErrorKind::Stalled), "{e:#}");
    });
}

#[test]
fn redirect_to_another_host_gets_no_authorization() {
    rt().block_on(async {
        let img = Arc::new(image("amd64", &[b"big layer"]));
        let i = img.clone();
        // Another host: 127.0.0.2 (all of 127/8 is loopback on Linux).
        let cdn = Fake::start("127.0.0.2", move |req| {
            let d = req.path.strip_prefix("/cdn/").unwrap_or("");
            i.blobs
                .get(d)
                .map(|b| ok(b, "application/octet-stream"))
                .unwrap_or_else(|| status(404))
        })
        .await;
        let (i, cdn_host) = (img.clone(), cdn.host.clone());
        let fake = Fake::start("127.0.0.1", move |req| {
            if req.headers.get("authorization").map(String::as_str) != Some("Basic Ym9iOnB3") {
                let mut r = status(401);
                r.headers
                    .push(("WWW-Authenticate".into(), r#"Basic realm="x""#.into()));
                return r;
            }
            if let Some(d) = req.path.strip_prefix("/v2/app/blobs/") {
                if i.blobs[d].len() == 9 {
                    let mut r = status(307);
                    r.headers
                        .push(("Location".into(), format!("http://{cdn_host}/cdn/{d}")));
                    return r;
                }
            }
            serve(&i, "app", &req.path).unwrap_or_else(|| status(404))
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        std::fs::write(
            &cfg,
            format!(
                r#"{{"auths":{{"{}":{{"username":"bob","password":"pw"}}}}}}"#,
                fake.host
            ),
        )
        .unwrap();
        let r = ImageRef::parse(&format!("{}/app:v1", fake.host)).unwrap();
        let c = client_with(Some(&cfg), vec![], None);
        let res = c.resolve(&r, &platform("linux/amd64")).await.unwrap();
        let bytes = read(c.blob(&r, &res.layers[0]).await.unwrap())
            .await
            .unwrap();
        assert_eq!(bytes, b"big layer");
        let seen = cdn.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert!(
            !seen[0].headers.contains_key("authorization"),
            "{:?}",
            seen[0]
        );
    });
}

#[test]
fn index_picks_the_platform_or_names_those_it_has() {
    rt().block_on(async {
        let amd = Arc::new(image("amd64", &[b"amd"]));
        let arm = Arc::new(image("arm64", &[b"arm"]));
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": amd.manifest_digest, "size": amd.manifest.len(),
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": arm.manifest_digest, "size": arm.manifest.len(),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            ]
        }))
        .unwrap();
        let index_digest = sha256_digest(&index);
        let (a, b) = (amd.clone(), arm.clone());
        let fake = Fake::start("127.0.0.1", move |req| {
            if req.path == "/v2/multi/manifests/v1" {
                return ok(&index, OCI_INDEX);
            }
            serve(&a, "multi", &req.path)
                .or_else(|| serve(&b, "multi", &req.path))
                .unwrap_or_else(|| status(404))
        })
        .await;
        let r = ImageRef::parse(&format!("{}/multi:v1", fake.host)).unwrap();
        let c = client();
        let res = c.resolve(&r, &platform("linux/arm64")).await.unwrap();
        assert_eq!(res.digest, index_digest);
        assert_eq!(res.manifest_digest, arm.manifest_digest);
        assert_eq!(res.config_digest, arm.config_digest);
        let res = c.resolve(&r, &platform("linux/amd64")).await.unwrap();
        assert_eq!(res.config_digest, amd.config_digest);
        let e = c
            .resolve(&r, &platform("linux/s390x"))
            .await
            .unwrap_err();
        assert_eq!(error_kind(&e), Some(ErrorKind::PlatformMissing), "{e:#}");
        let msg = format!("{e:#}");
        assert!(msg.contains("linux/amd64, linux/arm64") && msg.contains("linux/s390x"), "{msg}");
        // Pinned by the index digest: the same; pinned to another: refused.
        let pinned = ImageRef::parse(&format!("{}/multi@{index_digest}", fake.host)).unwrap();
        let e = c
            .resolve(&pinned, &platform("linux/amd64"))
            .await
            .unwrap_err();
        // The fake serves the index under its tag only.
        assert_eq!(error_kind(&e), Some(ErrorKind::NotFound), "{e:#}");
        let by_manifest =
            ImageRef::parse(&format!("{}/multi@{}", fake.host, amd.manifest_digest)).unwrap();
        let res = c
            .resolve(&by_manifest, &platform("linux/amd64"))
            .await
            .unwrap();
        assert_eq!(res.digest, amd.manifest_digest);
    });
}

#[test]
fn failing_mirror_falls_through_to_the_registry() {
    rt().block_on(async {
        let img = Arc::new(image("amd64", &[b"x"]));
        let mirror = Fake::start("127.0.0.1", |_| {
            let mut r = status(500);
            r.headers.push(("Retry-After".into(), "0".into()));
            r
        })
        .await;
        let i = img.clone();
        let fake = Fake::start("127.0.0.1", move |req| {
            serve(&i, "app", &req.path).unwrap_or_else(|| status(404))
        })
        .await;
        let r = ImageRef::parse(&format!("{}/app:v1", fake.host)).unwrap();
        let c = client_with(
            None,
            vec![format!("{}=http://{}", fake.host, mirror.host)],
            None,
        );
        let res = c.resolve(&r, &platform("linux/amd64")).await.unwrap();
        assert_eq!(res.config_digest, img.config_digest);
        assert!(mirror.count("/v2/app/manifests/v1") >= 1);
        // Blobs go to the endpoint that served the manifest.
        let before = mirror.count("/");
        read(c.blob(&r, &res.layers[0]).await.unwrap())
            .await
            .unwrap();
        assert_eq!(mirror.count("/"), before);

        // Both fail: each endpoint's error, the registry's kind.
        let gone = ImageRef::parse(&format!("{}/app:nope", fake.host)).unwrap();
        let e = c
            .resolve(&gone, &platform("linux/amd64"))
            .await
            .unwrap_err();
        assert_eq!(error_kind(&e), Some(ErrorKind::NotFound), "{e:#}");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("(mirror)") && msg.contains("HTTP 500") && msg.contains("HTTP 404"),
            "{msg}"
        );
    });
}

#[test]
fn cache_fetches_once_and_refetches_a_corrupt_blob() {
    rt().block_on(async {
        let img = Arc::new(image("amd64", &[&[7u8; 300_000]]));
        let i = img.clone();
        let fake = Fake::start("127.0.0.1", move |req| {
            let mut r = serve(&i, "app", &req.path).unwrap_or_else(|| status(404));
            if req.path.contains("/blobs/") {
                // Slow enough for both gets to overlap.
                r.stall = Some(Duration::from_millis(200));
            }
            r
        })
        .await;
        let r = ImageRef::parse(&format!("{}/app:v1", fake.host)).unwrap();
        let c = client();
        let res = c.resolve(&r, &platform("linux/amd64")).await.unwrap();
        let layer = &res.layers[0];
        let blob_path = format!("/v2/app/blobs/{}", layer.digest);
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        assert!(dir.path().join("oci-layout").is_file());
        let (a, b) = tokio::join!(
            cache.get(&c, &r, layer, &|_| {}),
            cache.get(&c, &r, layer, &|_| {})
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a, b);
        assert_eq!(
            a,
            dir.path()
                .join("blobs/sha256")
                .join(&layer.digest["sha256:".len()..])
        );
        assert_eq!(std::fs::read(&a).unwrap(), img.blobs[&layer.digest]);
        assert_eq!(fake.count(&blob_path), 1);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");

        // Another run, on a corrupted blob of the right size.
        let mut bytes = std::fs::read(&a).unwrap();
        bytes[1000] ^= 0xff;
        std::fs::write(&a, &bytes).unwrap();
        let cache = BlobCache::open(dir.path()).unwrap();
        let p = cache.get(&c, &r, layer, &|_| {}).await.unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), img.blobs[&layer.digest]);
        assert_eq!(fake.count(&blob_path), 2);
        // Checked once per run: no refetch now.
        cache.get(&c, &r, layer, &|_| {}).await.unwrap();
        assert_eq!(fake.count(&blob_path), 2);
    });
}
