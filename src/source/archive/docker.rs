//! docker-archive: `docker save`'s `manifest.json` (`[{Config, RepoTags,
//! Layers}]`), in the layouts Docker before 25, Docker 25+ and skopeo
//! write.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::image::{as_tag, finish_image, short, Found};
use super::scan::{normalize, parse_json, Input};
use crate::digest::{is_hex64, sha256_hex};
use crate::platform::Platform;
use crate::source::ImageRef;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerItem {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The digest a file's name says it has: `blobs/sha256/<hex>` or
/// `<hex>.json` / `<hex>.tar` (docker save, skopeo).
fn digest_in_name(path: &str) -> Option<&str> {
    if let Some(h) = path.strip_prefix("blobs/sha256/") {
        return Some(h).filter(|h| is_hex64(h));
    }
    let name = path.strip_suffix(".json").or(path.strip_suffix(".tar"))?;
    Some(name).filter(|h| is_hex64(h))
}

pub(super) fn check_docker(
    src: &mut Input,
    reference: Option<&ImageRef>,
    platform: &Platform,
    allow_mismatch: bool,
) -> Result<Vec<(Found, Vec<ImageRef>)>> {
    let p = src.path().display().to_string();
    if !src.has("manifest.json") {
        if src.has("index.json") {
            bail!("{p}: no manifest.json, but an index.json: an OCI archive, to be given as oci-archive:");
        }
        bail!("{p}: no manifest.json: not a docker save archive (or one from Docker before 1.10)");
    }
    let data = src.json("manifest.json")?;
    let items: Option<Vec<DockerItem>> = parse_json(src, "manifest.json", &data)?;
    let items = items.ok_or_else(|| anyhow!("{p}: manifest.json is null"))?;
    if items.is_empty() {
        bail!("{p}: manifest.json lists no image");
    }
    // The names each image carries.
    let mut named: Vec<Vec<ImageRef>> = vec![];
    for item in &items {
        let mut tags = vec![];
        for t in item.repo_tags.iter().flatten() {
            let r = ImageRef::parse(t)
                .with_context(|| format!("{p}: manifest.json: the RepoTag {t:?}"))?;
            tags.push(as_tag(&r));
        }
        named.push(tags);
    }
    let selected: Vec<usize> = match reference {
        Some(r) if items.len() > 1 => {
            let want = r.normalized();
            let hit: Vec<usize> = (0..items.len())
                .filter(|&i| named[i].iter().any(|t| t.normalized() == want))
                .collect();
            if hit.is_empty() {
                let all: Vec<String> = named.iter().flatten().map(|t| t.to_string()).collect();
                bail!(
                    "{p} holds {} images and none is named {r} (it has {}): give one of those names",
                    items.len(),
                    if all.is_empty() { "no names".into() } else { all.join(", ") }
                );
            }
            hit
        }
        _ => (0..items.len()).collect(),
    };
    let mut out = vec![];
    for i in selected {
        let item = &items[i];
        let config_name =
            normalize(&item.config).with_context(|| format!("{p}: manifest.json: Config"))?;
        let config = src.json(&config_name).context("the config of an image")?;
        if let Some(h) = digest_in_name(&config_name) {
            let got = sha256_hex(&config);
            if got != h {
                bail!("{p}: the config {config_name} has the digest sha256:{got}, not the one of its name: a corrupt archive");
            }
        }
        let mut layers = vec![];
        for l in &item.layers {
            let name = normalize(l).with_context(|| format!("{p}: manifest.json: Layers"))?;
            let info = src.file(&name)?;
            if let Some(h) = digest_in_name(&name).filter(|_| name.starts_with("blobs/")) {
                if h != info.hex {
                    bail!("{p}: the layer {name} has the digest sha256:{}, not the one of its name: a corrupt archive", info.hex);
                }
            }
            layers.push((info, name));
        }
        let found = finish_image(src, &config_name, config, layers)?;
        let tags = match reference {
            Some(r) => vec![as_tag(r)],
            None => named[i].clone(),
        };
        if tags.is_empty() {
            bail!(
                "{p}: the image sha256:{} has no name in the archive: add :NAME[:TAG] to give it one",
                short(&found.id)
            );
        }
        if !platform.accepts(&found.platform) && !allow_mismatch {
            bail!(
                "{p}: {} is a {} image, but the target platform is {platform}: it could not run there; \
                 pass --allow-platform-mismatch to preload it anyway",
                tags[0],
                found.platform
            );
        }
        out.push((found, tags));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::*;
    use super::super::image::list;
    use super::super::{check, ArchiveKind};

    #[test]
    fn docker_archive_legacy_layout() {
        let dir = tempfile::tempdir().unwrap();
        let (tar, cfg, layers) = legacy_archive(&["busybox:latest", "ex/b:1"]);
        let p = write(dir.path(), "a.tar", &tar);
        let a = check(ArchiveKind::DockerArchive, &p, None, &amd64(), false).unwrap();
        let img = &a.images()[0];
        assert_eq!(list(&img.tags), "busybox:latest, ex/b:1");
        assert_eq!(
            (img.layers, img.platform.to_string()),
            (3, "linux/amd64".into())
        );
        let total: usize = layers.iter().map(Vec::len).sum();
        assert_eq!(img.size, total as u64);
        let lr: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        assert_converted(&a, &cfg, &lr, &["busybox:latest", "ex/b:1"]);
        // Given a :REF, that is its only name, with a tag.
        let a = check(
            ArchiveKind::DockerArchive,
            &p,
            Some(&r("mine/x")),
            &amd64(),
            false,
        )
        .unwrap();
        assert_converted(&a, &cfg, &lr, &["mine/x:latest"]);
        // Another platform: named both, unless allowed.
        let e = err(check(ArchiveKind::DockerArchive, &p, None, &arm64(), false));
        assert!(
            e.contains("linux/amd64") && e.contains("linux/arm64"),
            "{e}"
        );
        assert!(e.contains("--allow-platform-mismatch"), "{e}");
        check(ArchiveKind::DockerArchive, &p, None, &arm64(), true).unwrap();
        // No name and no :REF.
        let (tar, _, _) = legacy_archive(&[]);
        let p = write(dir.path(), "unnamed.tar", &tar);
        let e = err(check(ArchiveKind::DockerArchive, &p, None, &amd64(), false));
        assert!(
            e.contains("add :NAME[:TAG]") && e.contains("unnamed.tar"),
            "{e}"
        );
        // Given as the wrong kind.
        let e = err(check(ArchiveKind::OciArchive, &p, None, &amd64(), false));
        assert!(e.contains("docker-archive:"), "{e}");
    }

    /// `docker save` of Docker 25+: an OCI layout plus manifest.json,
    /// uncompressed layers; written gzip- and zstd-compressed.
    #[test]
    fn docker_archive_25_layout_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = layer("bin/x", "x");
        let l2 = layer("bin/y", "y");
        let cfg = config("amd64", None, &[&l1, &l2]);
        let b = |d: &[u8]| format!("blobs/sha256/{}", sha(d));
        let manifest = json!([{"Config": b(&cfg), "RepoTags": ["127.0.0.1:5000/fp/x:1"],
                               "Layers": [b(&l1), b(&l2)]}]);
        let files = vec![
            (b(&cfg), cfg.clone()),
            (b(&l1), l1.clone()),
            (b(&l2), l2.clone()),
            (
                "index.json".into(),
                br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
            ),
            ("manifest.json".into(), manifest.to_string().into_bytes()),
            (
                "oci-layout".into(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
        ];
        let tar = tar_of(&files, &[]);
        for (name, bytes) in [
            ("a.tar.gz", gzip(&tar)),
            ("a.tar.zst", zstd::encode_all(&tar[..], 3).unwrap()),
        ] {
            let p = write(dir.path(), name, &bytes);
            let a = check(ArchiveKind::DockerArchive, &p, None, &amd64(), false).unwrap();
            assert_converted(&a, &cfg, &[&l1, &l2], &["127.0.0.1:5000/fp/x:1"]);
        }
    }

    #[test]
    fn several_images_and_a_ref() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = layer("a", "1");
        let l2 = layer("b", "2");
        let c1 = config("amd64", None, &[&l1]);
        let c2 = config("amd64", None, &[&l2]);
        let manifest = json!([
            {"Config": format!("{}.json", sha(&c1)), "RepoTags": ["one:1"], "Layers": ["l1/layer.tar"]},
            {"Config": format!("{}.json", sha(&c2)), "RepoTags": ["docker.io/library/two:2"], "Layers": ["l2/layer.tar"]},
        ]);
        let files = vec![
            (format!("{}.json", sha(&c1)), c1.clone()),
            (format!("{}.json", sha(&c2)), c2.clone()),
            ("l1/layer.tar".into(), l1.clone()),
            ("l2/layer.tar".into(), l2.clone()),
            ("manifest.json".into(), manifest.to_string().into_bytes()),
        ];
        let p = write(dir.path(), "two.tar", &tar_of(&files, &[]));
        // Without a REF: both, with their names.
        let a = check(ArchiveKind::DockerArchive, &p, None, &amd64(), false).unwrap();
        assert_eq!(a.images().len(), 2);
        let (m, _) = convert(&a);
        assert_eq!(m[1]["RepoTags"], json!(["docker.io/library/two:2"]));
        // A REF naming one (in another spelling) selects it.
        let a = check(
            ArchiveKind::DockerArchive,
            &p,
            Some(&r("two:2")),
            &amd64(),
            false,
        )
        .unwrap();
        assert_converted(&a, &c2, &[&l2], &["two:2"]);
        let e = err(check(
            ArchiveKind::DockerArchive,
            &p,
            Some(&r("three")),
            &amd64(),
            false,
        ));
        assert!(
            e.contains("none is named three") && e.contains("one:1"),
            "{e}"
        );
        let e = err(check(
            ArchiveKind::DockerArchive,
            &p,
            Some(&r(&format!("one@sha256:{}", sha(b"")))),
            &amd64(),
            false,
        ));
        assert!(e.contains("digest"), "{e}");
    }
}
