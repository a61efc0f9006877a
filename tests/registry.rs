//! The registry client of `--engine direct` against the real local
//! registry of ci/docker-env.sh: an image pushed by docker is resolved and
//! its blobs fetched into the blob cache, and both agree with what docker
//! says. Needs the Docker test environment (skips without it, fails under
//! CI=true).
#![cfg(feature = "test-hooks")]

mod common;

use std::process::Command;

use sha2::{Digest, Sha256};

fn sha256(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A tar of one file.
fn layer(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, name, data).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn pushed_image_resolves_and_fetches_as_docker_has_it() {
    if !common::require_docker_env() {
        return;
    }
    let registry = std::env::var("FP_REGISTRY").unwrap();
    let tag = format!("{registry}/fp-registry-client:{}", std::process::id());
    let layers = [
        layer("a.txt", b"first layer"),
        layer("b.txt", &[42u8; 100_000]),
    ];
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/a.txt"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>()},
    }))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    for (i, l) in layers.iter().enumerate() {
        add(&format!("l{i}/layer.tar"), l);
    }
    add("config.json", &config);
    let manifest = serde_json::json!([{
        "Config": "config.json", "RepoTags": [tag], "Layers": ["l0/layer.tar", "l1/layer.tar"]
    }]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("image.tar");
    std::fs::write(&archive, b.into_inner().unwrap()).unwrap();
    docker(&["load", "-q", "-i", archive.to_str().unwrap()]);
    docker(&["push", "-q", &tag]);
    let id = docker(&["inspect", "--format", "{{.Id}}", &tag]);
    let repo_digest = docker(&["inspect", "--format", "{{index .RepoDigests 0}}", &tag]);
    docker(&["rmi", "-f", &tag]);

    let cache = dir.path().join("cache");
    let pulled = flatcar_preload::registry_hooks::pull(&tag, "linux/amd64", &cache)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(pulled.config_digest, id);
    assert_eq!(sha256(&pulled.config), id);
    assert!(
        repo_digest.ends_with(&format!("@{}", pulled.digest)),
        "{repo_digest} vs {}",
        pulled.digest
    );
    assert_eq!(pulled.layers.len(), 2);
    for (digest, path) in &pulled.layers {
        assert_eq!(&sha256(&std::fs::read(path).unwrap()), digest);
    }
    // Docker pushed the layers gzipped: what they unpack to is the image's.
    let mut unpacked = vec![];
    for (_, path) in &pulled.layers {
        let mut out = vec![];
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()),
            &mut out,
        )
        .unwrap();
        unpacked.push(out);
    }
    assert_eq!(unpacked, layers);

    // Pinned by digest: the same image; again from the cache.
    let pinned = format!("{registry}/fp-registry-client@{}", pulled.digest);
    let again = flatcar_preload::registry_hooks::pull(&pinned, "linux/amd64", &cache)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(again.config_digest, id);
    assert_eq!(again.layers, pulled.layers);
    let e = flatcar_preload::registry_hooks::pull(
        &format!("{registry}/fp-registry-client:no-such-tag"),
        "linux/amd64",
        &cache,
    )
    .err()
    .expect("a missing tag is an error");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("no-such-tag") && msg.contains(&registry),
        "{msg}"
    );
}
