//! `--engine direct` against its oracle, `--engine dind`: for the same list
//! and stamp, the two write the same /var/lib/docker, file by file (path,
//! type, mode, owner, xattrs, link count, time, content), the tar-splits
//! compared as the entries and bytes they rebuild; then the truth on real
//! Docker daemons, and hostile registry input.

use super::*;
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;

/// One file of a store as the kernel reads it.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    mtime: (i64, i64),
    rdev: u64,
    xattrs: Vec<(String, Vec<u8>)>,
    /// A symlink's target, a file's content (its sha256; a tar-split's
    /// entries decoded, a v2metadata list sorted).
    content: String,
}

fn xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = list_xattrs(p)
        .into_iter()
        .map(|name| {
            let mut buf = vec![0u8; 65536];
            let n = rustix::fs::lgetxattr(p, name.as_str(), &mut buf[..]).unwrap();
            buf.truncate(n);
            (name, buf)
        })
        .collect();
    out.sort();
    out
}

/// A tar-split as what it rebuilds: its entries (names, sizes, sums) and
/// the raw bytes of the stream, joined (dockerd cuts the bytes after the
/// end of the archive where its decompressor's reads end).
fn tar_split(data: &[u8]) -> String {
    use std::io::Read as _;
    let mut json = String::new();
    flate2::read::GzDecoder::new(data)
        .read_to_string(&mut json)
        .unwrap();
    let mut entries = vec![];
    let mut bytes = vec![];
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        match v["type"].as_u64() {
            Some(1) => entries.push(format!(
                "{} {} {} {}",
                v["name"], v["name_raw"], v["size"], v["payload"]
            )),
            _ => {
                use base64::Engine as _;
                let raw = v["payload"].as_str().unwrap();
                bytes.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(raw)
                        .unwrap(),
                );
            }
        }
    }
    format!("{}\nraw {}", entries.join("\n"), sha256(&bytes))
}

/// Every file under /var/lib/docker of ROOT of `disk`, by path.
fn store_nodes(disk: &Path) -> BTreeMap<String, Node> {
    let m = Mount::new(disk);
    let root = m.dir.path().join("var/lib/docker");
    let mut out = BTreeMap::new();
    let mut todo = vec![root.clone()];
    while let Some(p) = todo.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(&root).unwrap().display().to_string();
        let content = if md.file_type().is_symlink() {
            fs::read_link(&p).unwrap().display().to_string()
        } else if md.is_file() {
            let data = fs::read(&p).unwrap();
            if rel.ends_with("/tar-split.json.gz") {
                tar_split(&data)
            } else if rel.contains("v2metadata-by-diffid/") {
                let mut v: Vec<serde_json::Value> = serde_json::from_slice(&data).unwrap();
                v.sort_by_key(|m| m.to_string());
                serde_json::to_string(&v).unwrap()
            } else {
                sha256(&data)
            }
        } else {
            String::new()
        };
        out.insert(
            rel,
            Node {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                nlink: md.nlink(),
                mtime: (md.mtime(), md.mtime_nsec()),
                rdev: md.rdev(),
                xattrs: xattrs(&p),
                content,
            },
        );
        if md.is_dir() {
            todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

/// Names what differs between two stores (empty when equal).
fn differences(a: &BTreeMap<String, Node>, b: &BTreeMap<String, Node>) -> Vec<String> {
    let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut out = vec![];
    for p in paths {
        match (a.get(p), b.get(p)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => out.push(format!("{p}:\n  dind   {x:?}\n  direct {y:?}")),
            (Some(_), None) => out.push(format!("{p}: only in dind's")),
            (None, Some(_)) => out.push(format!("{p}: only in direct's")),
            (None, None) => unreachable!(),
        }
    }
    out
}

/// An image with a zstd layer, pushed by hand (docker pushes gzip):
/// its reference.
fn zstd_fixture() -> &'static str {
    static F: OnceLock<String> = OnceLock::new();
    F.get_or_init(|| {
        let repo = "fp/zstd";
        // A long name as GNU tar writes it (an `L` entry) and one as PAX
        // writers do (a `path` record), a hole of zeros, an empty file.
        let gnu_long = format!("z/{}", "g".repeat(150));
        let mut zeros = vec![0u8; 1 << 20];
        zeros[..4].copy_from_slice(b"head");
        let mut tar = layer(&[
            L::Dir("z"),
            L::File("z/empty", b"", 0o600),
            L::File("z/data", &b"zstd layer ".repeat(1000), 0o644),
            L::File("z/zeros", &zeros, 0o644),
            L::Sym("z/link", "data"),
            L::File(&gnu_long, b"gnu", 0o644),
        ]);
        {
            // The layer ends in two zero blocks: the PAX entry goes before
            // them.
            tar.truncate(tar.len() - 1024);
            let mut b = tar::Builder::new(std::mem::take(&mut tar));
            let pax_long = format!("z/{}", "p".repeat(200));
            b.append_pax_extensions([("path", pax_long.as_bytes())]).unwrap();
            let mut h = tar::Header::new_ustar();
            h.as_ustar_mut().unwrap().name[..7].copy_from_slice(b"z/short");
            h.set_mode(0o640);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(3);
            h.set_cksum();
            b.append(&h, &b"pax"[..]).unwrap();
            // into_inner ends the archive again.
            tar = b.into_inner().unwrap();
        }
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
            "history": [{"created_by": "flatcar-preload tests"}],
        }))
        .unwrap();
        let config_digest = push_blob(repo, &config);
        let layer_digest = push_blob(repo, &zst);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "size": zst.len(), "digest": layer_digest}],
        }))
        .unwrap();
        push_manifest(repo, "1", "application/vnd.oci.image.manifest.v1+json", &manifest);
        format!("{}/{repo}:1", env().registry)
    })
}

#[test]
fn direct_engine_writes_what_dind_writes() {
    let Some(_guard) = docker_test() else { return };
    if !require_root("reads both stores through loop mounts") {
        return;
    }
    let f = fixtures();
    let (multi, _, _) = multi_arch_fixture();
    let images = [
        f.listed[0].0.as_str(),
        f.listed[1].0.as_str(),
        multi.as_str(),
        zstd_fixture(),
    ];
    let dir = user_dir();
    let disk = disk_copy(&[], dir.path());
    let out = |name: &str| dir.path().join(name);
    let stamp = [("SOURCE_DATE_EPOCH", "1750000000")];
    let run = |engine: &str, name: &str| {
        let mut args = vec![
            disk.to_str().unwrap(),
            "--engine",
            engine,
            "--platform",
            "linux/amd64",
        ];
        args.extend(images);
        let o = out(name);
        args.extend(["-o", o.to_str().unwrap()]);
        let blobs = out("blobs");
        if engine == "direct" {
            args.extend(["--blob-cache", blobs.to_str().unwrap()]);
        }
        let r = populate_cmd_with(&stamp, &args).output().unwrap();
        assert!(r.status.success(), "--engine {engine}: {}", stderr(&r));
        o
    };
    let dind = run("dind", "dind.bin");
    let direct = run("direct", "direct.bin");
    assert_fsck_clean(&direct);
    let (a, b) = (store_nodes(&dind), store_nodes(&direct));
    let diff = differences(&a, &b);
    assert!(
        diff.is_empty(),
        "{} difference(s) between the stores of --engine dind and --engine direct:\n{}",
        diff.len(),
        diff.join("\n")
    );
    // The blob cache is an OCI layout, and a second run reads it only.
    assert!(out("blobs/oci-layout").is_file());
    let again = run("direct", "again.bin");
    assert_eq!(
        store_nodes(&again),
        b,
        "a warm direct run wrote another store"
    );
}

/// The truth of the direct engine's store, as of the build container's:
/// real Docker 26, 28 and 29 list and run the images, with no Docker
/// engine reachable by the run (it needs none).
#[test]
fn direct_engine_truth() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let blobs = user_dir();
    let cache = blobs.path().to_str().unwrap();
    truth_of_a_run(
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
        "direct",
        &["--engine", "direct", "--blob-cache", cache],
    );
}

/// What a hand registry serves: path -> (content type, body, bytes
/// claimed).
type Paths = HashMap<String, (String, Vec<u8>, usize)>;

/// A registry of one image, `fp/bad:1`, served over plain HTTP by hand,
/// whose manifest, config and layer are what `serve` says (a path ->
/// (content type, body, bytes claimed)): its address.
fn hand_registry(serve: Paths) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { continue };
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let reply = match serve.get(&path) {
                Some((ty, body, claimed)) => {
                    let mut out = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ty}\r\nContent-Length: {claimed}\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes();
                    out.extend_from_slice(body);
                    out
                }
                None if path == "/v2/" => {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = c.write_all(&reply);
        }
    });
    addr
}

/// The paths of image `fp/bad:1` made of `config` and `layer` (served as
/// `served`, claimed `claimed` bytes long), its manifest naming the layer
/// by `digest`.
fn bad_image(layer: &[u8], digest: &str, served: &[u8], claimed: usize) -> Paths {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
    }))
    .unwrap();
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST_V2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_digest},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar", "size": claimed, "digest": digest}],
    }))
    .unwrap();
    let mut m = HashMap::new();
    let n = manifest.len();
    m.insert(
        "/v2/fp/bad/manifests/1".to_string(),
        (MANIFEST_V2.to_string(), manifest, n),
    );
    let n = config.len();
    m.insert(
        format!("/v2/fp/bad/blobs/{config_digest}"),
        ("application/octet-stream".into(), config, n),
    );
    m.insert(
        format!("/v2/fp/bad/blobs/{digest}"),
        ("application/octet-stream".into(), served.to_vec(), claimed),
    );
    m
}

/// Hostile registry input fails the run clearly, with nothing written: no
/// output file, the input untouched, nothing cached under the blob's name.
#[test]
fn direct_engine_refuses_hostile_registries() {
    // The test user and its environment come with the Docker test setup.
    let Some(_serial) = docker_test() else {
        return;
    };
    let good = layer(&[L::File("f", b"content", 0o644)]);
    // tar-rs will not write `..`: the name goes into the header by hand.
    let escapes = {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..10].copy_from_slice(b"../escaped");
        h.set_mode(0o644);
        h.set_size(1);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let mut other = good.clone();
    let last = other.len() - 1100;
    other[last] ^= 1;
    let cases: Vec<(&str, Paths, &str)> = vec![
        (
            "a blob that does not match its digest",
            bad_image(&good, &sha256(&good), &other, good.len()),
            "sha256",
        ),
        (
            "a truncated blob",
            bad_image(&good, &sha256(&good), &good[..1000], good.len()),
            "",
        ),
        (
            "a manifest that points outside itself",
            bad_image(&good, "sha256:../../../../etc/passwd", &good, good.len()),
            "digest",
        ),
        (
            "a layer that escapes its root",
            bad_image(&escapes, &sha256(&escapes), &escapes, escapes.len()),
            "outside the layer",
        ),
    ];
    for (what, paths, want) in cases {
        let addr = hand_registry(paths);
        let image = format!("{addr}/fp/bad:1");
        let (_tmp, disk, before, out) = disk_for_run("small");
        let blobs = user_dir();
        let o = populate_cmd_with(
            &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
            &[
                disk.to_str().unwrap(),
                &image,
                "-o",
                out.to_str().unwrap(),
                "--engine",
                "direct",
                "--blob-cache",
                blobs.path().to_str().unwrap(),
                "--pull-timeout",
                "5s",
            ],
        )
        .output()
        .unwrap();
        assert!(!o.status.success(), "{what}: the run succeeded");
        let err = stderr(&o);
        assert!(
            err.contains("fp/bad"),
            "{what}: the image is not named:\n{err}"
        );
        assert!(err.contains(want), "{what}: no {want:?} in:\n{err}");
        assert_clean_failure_but_left(&o, &disk, before, &out, "");
        let cached: Vec<_> = fs::read_dir(blobs.path().join("blobs/sha256"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(
            what == "a layer that escapes its root" || cached.is_empty(),
            "{what}: {cached:?} cached"
        );
    }
}

/// What --engine direct does not take yet is refused before anything is
/// contacted or written, naming --engine dind; --blob-cache is refused
/// with the build container. No Docker needed.
#[test]
fn direct_engine_refuses_what_it_cannot_do_yet() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_copy(&[], dir.path());
    let before = file_digest(&disk);
    let out = dir.path().join("out.bin");
    let archive = dir.path().join("image.tar");
    fs::write(&archive, b"").unwrap();
    let (d, o) = (disk.to_str().unwrap(), out.to_str().unwrap());
    let docker_archive = format!("docker-archive:{}", archive.display());
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "--containerd-image",
                "127.0.0.1:1/x:1",
                "--sandbox-image",
                "none",
            ],
            "--engine dind",
        ),
        (&[&docker_archive], "--engine dind"),
        (&["127.0.0.1:1/x:1", "--merge"], "--engine dind"),
        (&["127.0.0.1:1/x:1", "--cache", "c"], "--blob-cache"),
        (
            &[
                "127.0.0.1:1/x:1",
                "--engine",
                "dind",
                "--blob-cache",
                "/nonexistent",
            ],
            "--engine direct",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = Command::new(bin());
        cmd.args(["populate", d, "-o", o])
            .env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
        if !args.contains(&"dind") {
            cmd.args(["--engine", "direct"]);
        }
        let r = cmd.args(args).output().unwrap();
        // Not assert_clean_failure: it reads the Docker test setup, which
        // this test does without.
        assert!(!r.status.success(), "{args:?}: the run succeeded");
        assert!(
            stderr(&r).contains(want),
            "{args:?}: no {want:?} in:\n{}",
            stderr(&r)
        );
        assert!(!out.exists(), "{args:?}: an output was left");
        assert_eq!(
            file_digest(&disk),
            before,
            "{args:?}: the input was modified"
        );
        assert!(
            !stderr(&r).contains("nonexistent/docker.sock"),
            "{args:?}: the engine was contacted:\n{}",
            stderr(&r)
        );
    }
}
