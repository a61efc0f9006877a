//! Archives the tests of the archive module build: tars, layers, configs,
//! OCI layouts, and the reading back of a converted archive.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{json, Value};

use super::{write_docker_archive, CheckedArchive};
use crate::digest::sha256_hex;
use crate::platform::Platform;
use crate::source::ImageRef;

pub(super) fn sha(b: &[u8]) -> String {
    sha256_hex(b)
}

/// A tar of regular files (and symlinks: `(name, None, Some(target))`).
pub(super) fn tar_of(files: &[(String, Vec<u8>)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(vec![]);
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    for (name, target) in links {
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.into_inner().unwrap()
}

/// A layer: one file.
pub(super) fn layer(name: &str, content: &str) -> Vec<u8> {
    tar_of(&[(name.to_string(), content.as_bytes().to_vec())], &[])
}

pub(super) fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

pub(super) fn config(arch: &str, variant: Option<&str>, diff_ids: &[&[u8]]) -> Vec<u8> {
    let mut c = json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids":
            diff_ids.iter().map(|l| format!("sha256:{}", sha(l))).collect::<Vec<_>>()},
    });
    if let Some(v) = variant {
        c["variant"] = json!(v);
    }
    // Not serde's formatting: the bytes must survive as they are.
    let mut s = serde_json::to_string_pretty(&c).unwrap();
    s.push('\n');
    s.into_bytes()
}

pub(super) fn amd64() -> Platform {
    "linux/amd64".parse().unwrap()
}

pub(super) fn arm64() -> Platform {
    "linux/arm64".parse().unwrap()
}

pub(super) fn r(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

pub(super) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

pub(super) fn err(res: Result<CheckedArchive>) -> String {
    format!("{:#}", res.expect_err("accepted"))
}

/// Converts and reads the result back: manifest.json and every file.
pub(super) fn convert(a: &CheckedArchive) -> (Value, HashMap<String, Vec<u8>>) {
    let mut out = vec![];
    write_docker_archive(a, &mut out).unwrap();
    let mut files = HashMap::new();
    let mut ar = tar::Archive::new(Cursor::new(out));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = vec![];
        e.read_to_end(&mut data).unwrap();
        assert!(files.insert(name, data).is_none());
    }
    let manifest = serde_json::from_slice(&files["manifest.json"]).unwrap();
    (manifest, files)
}

/// The converted archive holds `config` as it is and `layers`, in order.
pub(super) fn assert_converted(a: &CheckedArchive, config: &[u8], layers: &[&[u8]], tags: &[&str]) {
    let (m, files) = convert(a);
    let items = m.as_array().unwrap();
    assert_eq!(items.len(), 1, "{m}");
    let item = &items[0];
    assert_eq!(item["Config"], format!("blobs/sha256/{}", sha(config)));
    assert_eq!(files[item["Config"].as_str().unwrap()], config);
    assert_eq!(item["RepoTags"], json!(tags));
    let names: Vec<&str> = item["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(names.len(), layers.len());
    for (n, l) in names.iter().zip(layers) {
        assert_eq!(&files[*n][..], *l, "{n}");
    }
    assert_eq!(a.images()[0].id, format!("sha256:{}", sha(config)));
}

/// `docker save` before Docker 25: `<hex>.json`, `<id>/layer.tar`, a
/// layer written once and linked.
pub(super) fn legacy_archive(tags: &[&str]) -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
    let l1 = layer("etc/a", "one");
    let l2 = layer("etc/b", "two");
    let cfg = config("amd64", None, &[&l1, &l2, &l1]);
    let manifest = json!([{
        "Config": format!("{}.json", sha(&cfg)),
        "RepoTags": tags,
        "Layers": ["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"],
    }]);
    let files = vec![
        (format!("{}.json", sha(&cfg)), cfg.clone()),
        ("aaa/layer.tar".into(), l1.clone()),
        ("aaa/VERSION".into(), b"1.0".to_vec()),
        ("bbb/layer.tar".into(), l2.clone()),
        ("manifest.json".into(), manifest.to_string().into_bytes()),
        ("repositories".into(), b"{}".to_vec()),
    ];
    let tar = tar_of(&files, &[("ccc/layer.tar", "../aaa/layer.tar")]);
    (tar, cfg, vec![l1.clone(), l2, l1])
}

/// An OCI layout under construction.
#[derive(Default)]
pub(super) struct Oci {
    files: Vec<(String, Vec<u8>)>,
}

impl Oci {
    pub(super) fn blob(&mut self, media_type: &str, data: Vec<u8>) -> Value {
        let d = json!({"mediaType": media_type, "digest": format!("sha256:{}", sha(&data)), "size": data.len()});
        let name = format!("blobs/sha256/{}", sha(&data));
        if !self.files.iter().any(|(n, _)| *n == name) {
            self.files.push((name, data));
        }
        d
    }

    /// An image of gzip-compressed layers; returns its manifest
    /// descriptor and its config.
    pub(super) fn image(&mut self, arch: &str, layers: &[Vec<u8>]) -> (Value, Vec<u8>) {
        let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        let cfg = config(arch, None, &refs);
        let c = self.blob("application/vnd.oci.image.config.v1+json", cfg.clone());
        let ls: Vec<Value> = layers
            .iter()
            .map(|l| self.blob("application/vnd.oci.image.layer.v1.tar+gzip", gzip(l)))
            .collect();
        let m = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": c, "layers": ls});
        let mut d = self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            m.to_string().into_bytes(),
        );
        d["platform"] = json!({"os": "linux", "architecture": arch});
        (d, cfg)
    }

    pub(super) fn index(&mut self, manifests: Vec<Value>) -> Value {
        let i = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": manifests});
        self.blob(
            "application/vnd.oci.image.index.v1+json",
            i.to_string().into_bytes(),
        )
    }

    pub(super) fn finish(mut self, top: Vec<Value>) -> Vec<(String, Vec<u8>)> {
        let i = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": top});
        self.files
            .push(("index.json".into(), i.to_string().into_bytes()));
        self.files.push((
            "oci-layout".into(),
            br#"{"imageLayoutVersion": "1.0.0"}"#.to_vec(),
        ));
        self.files
    }
}

pub(super) fn to_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (n, d) in files {
        let p = dir.join(n);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, d).unwrap();
    }
}

/// The files of a layout, its arm64 config and arm64 layer.
pub(super) type MultiPlatform = (Vec<(String, Vec<u8>)>, Vec<u8>, Vec<u8>);

/// buildx-like: index.json -> index -> amd64, arm64 and an attestation.
pub(super) fn multi_platform() -> MultiPlatform {
    let mut o = Oci::default();
    let (amd, _) = o.image("amd64", &[layer("f", "amd")]);
    let (arm, arm_cfg) = o.image("arm64", &[layer("f", "arm")]);
    let arm_layer = layer("f", "arm");
    let (mut att, _) = o.image("unknown", &[layer("att", "x")]);
    att["platform"] = json!({"os": "unknown", "architecture": "unknown"});
    att["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest"});
    let mut idx = o.index(vec![amd, arm, att]);
    idx["annotations"] = json!({"io.containerd.image.name": "ex/multi:1"});
    (o.finish(vec![idx]), arm_cfg, arm_layer)
}
