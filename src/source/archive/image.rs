//! One image of an archive: its config checked against the layers its
//! manifest lists, and what is copied of it; the naming helpers both
//! manifest readers share.

use std::fmt;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::scan::{parse_json, FileInfo, Input};
use crate::compress::Compression;
use crate::digest::sha256_hex;
use crate::platform::Platform;
use crate::source::ImageRef;

/// A file of the archive that is copied: where it is, what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Blob {
    /// Path in the tar, or relative to the directory.
    pub(super) source: String,
    /// sha256 of its bytes, hex.
    pub(super) hex: String,
    pub(super) size: u64,
}

/// What is copied of an image: its config as it is and its layer blobs.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) config: Vec<u8>,
    pub(super) layers: Vec<Blob>,
}

/// An image found and checked, before names are decided.
pub(super) struct Found {
    pub(super) plan: Plan,
    pub(super) platform: Platform,
    /// The config's digest, hex.
    pub(super) id: String,
    pub(super) size: u64,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Checks a config against the layers that go with it and returns the
/// image it describes.
pub(super) fn finish_image(
    src: &Input,
    config_name: &str,
    config: Vec<u8>,
    layers: Vec<(FileInfo, String)>,
) -> Result<Found> {
    let id = sha256_hex(&config);
    let cfg: ImageConfig = parse_json(src, config_name, &config)?;
    if cfg.rootfs.kind != "layers" {
        bail!(
            "{}: {config_name}: rootfs type {:?}, not \"layers\": not a container image config",
            src.path().display(),
            cfg.rootfs.kind
        );
    }
    if cfg.rootfs.diff_ids.len() != layers.len() {
        bail!(
            "{}: the config {config_name} lists {} layers (rootfs.diff_ids), its manifest {}: a corrupt archive",
            src.path().display(),
            cfg.rootfs.diff_ids.len(),
            layers.len()
        );
    }
    let mut blobs = vec![];
    let mut size = 0u64;
    for ((info, name), diff_id) in layers.into_iter().zip(&cfg.rootfs.diff_ids) {
        // An uncompressed layer's digest is its diff ID: cheap to check
        // here, and `docker load` would fail on it after a long copy.
        if info.compression == Compression::None && *diff_id != format!("sha256:{}", info.hex) {
            bail!(
                "{}: the layer {name} has the digest sha256:{}, but the config says {diff_id}: a corrupt archive",
                src.path().display(),
                info.hex
            );
        }
        size = size.saturating_add(info.size);
        blobs.push(Blob {
            source: info.source,
            hex: info.hex,
            size: info.size,
        });
    }
    let platform = Platform::new(
        if cfg.os.is_empty() {
            "unknown"
        } else {
            &cfg.os
        },
        if cfg.architecture.is_empty() {
            "unknown"
        } else {
            &cfg.architecture
        },
        cfg.variant.as_deref(),
    );
    Ok(Found {
        plan: Plan {
            config,
            layers: blobs,
        },
        platform,
        id,
        size,
    })
}

pub(super) fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

/// A name an image can be tagged with: a tag (`latest` when none), no
/// digest (Docker refuses to tag with one).
pub(super) fn as_tag(r: &ImageRef) -> ImageRef {
    ImageRef {
        name: r.name.clone(),
        tag: Some(r.tag.clone().unwrap_or_else(|| "latest".into())),
        digest: None,
    }
}

pub(super) fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::*;
    use super::super::{check, ArchiveKind};

    #[test]
    fn missing_and_wrong_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _, _) = multi_platform();
        // Drop the arm64 layer blob.
        let arm_layer = format!("blobs/sha256/{}", sha(&gzip(&layer("f", "arm"))));
        let fewer: Vec<_> = files
            .iter()
            .filter(|(n, _)| *n != arm_layer)
            .cloned()
            .collect();
        let p = write(dir.path(), "missing.tar", &tar_of(&fewer, &[]));
        let e = err(check(ArchiveKind::OciArchive, &p, None, &arm64(), false));
        assert!(e.contains(&arm_layer) && e.contains("missing"), "{e}");
        // The amd64 image does not need it.
        check(ArchiveKind::OciArchive, &p, None, &amd64(), false).unwrap();
        // Another content under its name, in a tar and in a directory.
        let mut wrong = files.clone();
        for (n, d) in &mut wrong {
            if *n == arm_layer {
                *d = gzip(&layer("f", "ARM"));
            }
        }
        let p = write(dir.path(), "wrong.tar", &tar_of(&wrong, &[]));
        let e = err(check(ArchiveKind::OciArchive, &p, None, &arm64(), false));
        assert!(e.contains(&arm_layer) && e.contains("corrupt"), "{e}");
        let od = dir.path().join("wrong");
        to_dir(&od, &wrong);
        let e = err(check(ArchiveKind::OciDir, &od, None, &arm64(), false));
        assert!(e.contains(&arm_layer) && e.contains("corrupt"), "{e}");
        // A docker-archive whose uncompressed layer is not its diff ID.
        let l1 = layer("a", "1");
        let cfg = config("amd64", None, &[&layer("a", "2")]);
        let manifest =
            json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["x/layer.tar"]}]);
        let files = vec![
            ("c.json".to_string(), cfg),
            ("x/layer.tar".into(), l1),
            ("manifest.json".into(), manifest.to_string().into_bytes()),
        ];
        let p = write(dir.path(), "diffid.tar", &tar_of(&files, &[]));
        let e = err(check(ArchiveKind::DockerArchive, &p, None, &amd64(), false));
        assert!(e.contains("x/layer.tar") && e.contains("diff"), "{e}");
        // More layers in the manifest than in the config.
        let l1 = layer("a", "1");
        let cfg = config("amd64", None, &[&l1]);
        let manifest = json!([{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["x/layer.tar", "x/layer.tar"]}]);
        let files = vec![
            ("c.json".to_string(), cfg),
            ("x/layer.tar".into(), l1),
            ("manifest.json".into(), manifest.to_string().into_bytes()),
        ];
        let p = write(dir.path(), "count.tar", &tar_of(&files, &[]));
        let e = err(check(ArchiveKind::DockerArchive, &p, None, &amd64(), false));
        assert!(
            e.contains("lists 1 layers") && e.contains("its manifest 2"),
            "{e}"
        );
        // manifest.json that is not JSON.
        let files = vec![("manifest.json".to_string(), b"[{".to_vec())];
        let p = write(dir.path(), "badjson.tar", &tar_of(&files, &[]));
        let e = err(check(ArchiveKind::DockerArchive, &p, None, &amd64(), false));
        assert!(e.contains("manifest.json is not well-formed"), "{e}");
    }
}
