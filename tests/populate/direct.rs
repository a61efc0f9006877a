//! `--engine direct` against its oracle, `--engine dind`: for the same list
//! and stamp, the two write the same /var/lib/docker, file by file (path,
//! type, mode, owner, xattrs, link count, time, content), the tar-splits
//! compared as the entries and bytes they rebuild; then the truth on real
//! Docker daemons, and hostile registry input.

use super::*;
use std::collections::BTreeSet;
use std::io::Read as _;
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
                bytes.extend(base64::engine::general_purpose::STANDARD.decode(raw).unwrap());
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
        let tar = layer(&[
            L::Dir("z"),
            L::File("z/empty", b"", 0o600),
            L::File("z/data", &b"zstd layer ".repeat(1000), 0o644),
            L::Sym("z/link", "data"),
        ]);
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
        let mut args = vec![disk.to_str().unwrap(), "--engine", engine, "--platform", "linux/amd64"];
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
    assert_eq!(store_nodes(&again), b, "a warm direct run wrote another store");
}
