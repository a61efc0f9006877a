//! OCI image layouts: `index.json` (and `oci-layout`), the indexes and
//! image manifests under it (nested too, OCI or Docker media types), and
//! the choice of the manifest for the target platform.

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use super::image::{as_tag, finish_image, list, short, Found};
use super::scan::{blob_path, digest_hex, parse_json, Input, MAX_DEPTH};
use crate::digest::sha256_hex;
use crate::platform::Platform;
use crate::source::ImageRef;

#[derive(Deserialize, Clone)]
struct OciPlatform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

impl OciPlatform {
    fn platform(&self) -> Platform {
        Platform::new(&self.os, &self.architecture, self.variant.as_deref())
    }
}

#[derive(Deserialize, Clone)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<OciPlatform>,
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

impl Descriptor {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }
}

/// An image index or an image manifest (both have a mediaType).
#[derive(Deserialize)]
struct Document {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
struct Layout {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// The content of a blob named by `desc`, checked against its digest
/// and size.
fn json_blob(src: &Input, desc: &Descriptor, what: &str) -> Result<(String, Vec<u8>)> {
    let h = digest_hex(&desc.digest)
        .with_context(|| format!("{}: {what}", src.path().display()))?
        .to_string();
    let name = blob_path(&h);
    let data = src.json(&name).with_context(|| format!("the {what}"))?;
    let got = sha256_hex(&data);
    if got != h {
        bail!(
            "{}: {name} ({what}) has the digest sha256:{got}, not the one of its name: a corrupt archive",
            src.path().display()
        );
    }
    if data.len() as u64 != desc.size {
        bail!(
            "{}: {name} ({what}) has {} bytes, its descriptor says {}",
            src.path().display(),
            data.len(),
            desc.size
        );
    }
    Ok((h, data))
}

/// The names a top-level entry of index.json carries: containerd's image
/// name, else `org.opencontainers.image.ref.name` when it is more than a
/// tag (`name:tag`, `registry/path`).
fn oci_names(desc: &Descriptor) -> Vec<ImageRef> {
    if let Some(r) = desc
        .annotation("io.containerd.image.name")
        .and_then(|n| ImageRef::parse(n).ok())
        .filter(|r| r.tag.is_some() || r.digest.is_none())
    {
        return vec![as_tag(&r)];
    }
    match desc.annotation("org.opencontainers.image.ref.name") {
        Some(n) if n.contains([':', '/']) => ImageRef::parse(n)
            .ok()
            .filter(|r| r.tag.is_some() || r.digest.is_none())
            .map(|r| vec![as_tag(&r)])
            .unwrap_or_default(),
        _ => vec![],
    }
}

fn is_index(desc: &Descriptor, doc: &Document) -> bool {
    let ty = doc.media_type.as_deref().unwrap_or(&desc.media_type);
    INDEX_TYPES.contains(&ty) || (ty.is_empty() && doc.manifests.is_some())
}

fn is_attestation(desc: &Descriptor) -> bool {
    desc.annotation("vnd.docker.reference.type") == Some("attestation-manifest")
}

/// Reads an image manifest and checks every blob it names.
fn oci_image(src: &mut Input, desc: &Descriptor, doc: &Document) -> Result<Found> {
    let p = src.path().display().to_string();
    let ty = doc.media_type.as_deref().unwrap_or(&desc.media_type);
    if !ty.is_empty() && !MANIFEST_TYPES.contains(&ty) {
        bail!(
            "{p}: the manifest {} has the media type {ty}: not a container image",
            desc.digest
        );
    }
    let (Some(config), Some(layer_descs)) = (&doc.config, &doc.layers) else {
        bail!(
            "{p}: the manifest {} has no config or no layers: not an image manifest",
            desc.digest
        );
    };
    if !config.media_type.is_empty() && !CONFIG_TYPES.contains(&config.media_type.as_str()) {
        bail!(
            "{p}: the manifest {} has a config of type {}: not a container image (an artifact?)",
            desc.digest,
            config.media_type
        );
    }
    let (config_hex, config_bytes) = json_blob(src, config, "config")?;
    let mut layers = vec![];
    for l in layer_descs {
        let t = l.media_type.as_str();
        if !t.contains("tar") || t.contains("encrypted") {
            bail!(
                "{p}: the layer {} has the media type {t:?}, which Docker cannot load",
                l.digest
            );
        }
        let h = digest_hex(&l.digest).with_context(|| format!("{p}: a layer"))?;
        let name = blob_path(h);
        let info = src.file(&name)?;
        if info.hex != h {
            bail!(
                "{p}: {name} has the digest sha256:{}, not the one of its name: a corrupt archive",
                info.hex
            );
        }
        if info.size != l.size {
            bail!(
                "{p}: {name} has {} bytes, its descriptor says {}",
                info.size,
                l.size
            );
        }
        layers.push((info, name));
    }
    finish_image(src, &blob_path(&config_hex), config_bytes, layers)
}

/// What resolving one entry of index.json for a platform gave.
enum Resolved {
    Image(Found),
    /// A single image manifest of another platform.
    Other(Found),
    /// An index without an image for the platform; the platforms it has.
    None(Vec<Platform>),
}

/// Resolves `desc` to the image for `platform`. `done` holds the digests
/// resolved so far under the same top-level entry: one met again (an index
/// listing the same child many times, at every level) resolved to no image
/// the first time and is skipped, so that the work stays linear in the
/// archive's size instead of growing with the product of the fan-outs.
fn oci_resolve(
    src: &mut Input,
    desc: &Descriptor,
    platform: &Platform,
    depth: usize,
    done: &mut HashSet<String>,
) -> Result<Resolved> {
    let p = src.path().display().to_string();
    if depth > MAX_DEPTH {
        bail!("{p}: indexes nested more than {MAX_DEPTH} deep");
    }
    let (_, data) = json_blob(src, desc, "manifest or index")?;
    let doc: Document = parse_json(src, &blob_path(digest_hex(&desc.digest)?), &data)?;
    if !is_index(desc, &doc) {
        let found = oci_image(src, desc, &doc)?;
        let own = desc
            .platform
            .as_ref()
            .map(OciPlatform::platform)
            .unwrap_or_else(|| found.platform.clone());
        return Ok(if platform.accepts(&own) {
            Resolved::Image(found)
        } else {
            Resolved::Other(found)
        });
    }
    let mut seen = vec![];
    for child in doc.manifests.iter().flatten() {
        if is_attestation(child) {
            continue;
        }
        if let Some(pl) = child.platform.as_ref().map(OciPlatform::platform) {
            if !platform.accepts(&pl) {
                if pl.os != "unknown" && !seen.contains(&pl) {
                    seen.push(pl);
                }
                continue;
            }
        }
        // The descriptor's platform is part of the key: an image
        // manifest takes it as its own.
        let key = match child.platform.as_ref().map(OciPlatform::platform) {
            Some(pl) => format!("{} {pl}", child.digest),
            None => child.digest.clone(),
        };
        if !done.insert(key) {
            continue;
        }
        match oci_resolve(src, child, platform, depth + 1, done)? {
            Resolved::Image(f) => return Ok(Resolved::Image(f)),
            Resolved::Other(f) => {
                if f.platform.os != "unknown" && !seen.contains(&f.platform) {
                    seen.push(f.platform)
                }
            }
            Resolved::None(more) => {
                for pl in more {
                    if !seen.contains(&pl) {
                        seen.push(pl);
                    }
                }
            }
        }
    }
    Ok(Resolved::None(seen))
}

pub(super) fn check_oci(
    src: &mut Input,
    reference: Option<&ImageRef>,
    platform: &Platform,
    allow_mismatch: bool,
) -> Result<Vec<(Found, Vec<ImageRef>)>> {
    let p = src.path().display().to_string();
    if !src.has("index.json") {
        if src.has("manifest.json") {
            bail!("{p}: no index.json, but a manifest.json: a docker save archive, to be given as docker-archive:");
        }
        bail!("{p}: no index.json: not an OCI image layout");
    }
    if src.has("oci-layout") {
        let data = src.json("oci-layout")?;
        let layout: Layout = parse_json(src, "oci-layout", &data)?;
        if !layout.version.starts_with("1.") {
            bail!(
                "{p}: oci-layout says version {}; only 1.x is known",
                layout.version
            );
        }
    }
    let data = src.json("index.json")?;
    let index: Document = parse_json(src, "index.json", &data)?;
    let entries = index
        .manifests
        .ok_or_else(|| anyhow!("{p}: index.json has no manifests list"))?;
    if entries.is_empty() {
        bail!("{p}: index.json lists no image");
    }
    let names: Vec<Vec<ImageRef>> = entries.iter().map(oci_names).collect();
    let mut chosen: Vec<usize> = (0..entries.len()).collect();
    if let Some(r) = reference.filter(|_| entries.len() > 1) {
        let want = r.normalized();
        let written = r.to_string();
        let hit: Vec<usize> = chosen
            .iter()
            .copied()
            .filter(|&i| {
                names[i].iter().any(|n| n.normalized() == want)
                    || entries[i].annotation("org.opencontainers.image.ref.name")
                        == Some(written.as_str())
            })
            .collect();
        if !hit.is_empty() {
            chosen = hit;
        } else if names.iter().any(|n| !n.is_empty()) {
            let all: Vec<String> = names.iter().flatten().map(|t| t.to_string()).collect();
            bail!(
                "{p} holds {} images and none is named {r} (it has {}): give one of those names",
                entries.len(),
                all.join(", ")
            );
        }
    }
    // Images for the platform, one per config (the same image may be listed
    // under several names); the platforms the others have.
    let mut images: Vec<(Found, Vec<ImageRef>)> = vec![];
    let mut others: Vec<Found> = vec![];
    let mut seen: Vec<Platform> = vec![];
    for i in chosen {
        if is_attestation(&entries[i]) {
            continue;
        }
        match oci_resolve(src, &entries[i], platform, 0, &mut HashSet::new())? {
            Resolved::Image(f) => match images.iter_mut().find(|(g, _)| g.id == f.id) {
                Some((_, tags)) => {
                    for n in &names[i] {
                        if !tags.contains(n) {
                            tags.push(n.clone());
                        }
                    }
                }
                None => images.push((f, names[i].clone())),
            },
            Resolved::Other(f) => {
                if !seen.contains(&f.platform) {
                    seen.push(f.platform.clone());
                }
                if !others.iter().any(|g| g.id == f.id) {
                    others.push(f);
                }
            }
            Resolved::None(more) => {
                for pl in more {
                    if !seen.contains(&pl) {
                        seen.push(pl);
                    }
                }
            }
        }
    }
    if images.is_empty() {
        if others.len() == 1 && seen.len() == 1 {
            let one = others.remove(0);
            let name = names
                .iter()
                .flatten()
                .next()
                .map_or_else(|| format!("sha256:{}", short(&one.id)), |n| n.to_string());
            if !allow_mismatch {
                bail!(
                    "{p}: {name} is a {} image, but the target platform is {platform}: it could not run there; \
                     pass --allow-platform-mismatch to preload it anyway",
                    one.platform
                );
            }
            let tags = names.into_iter().flatten().collect();
            images.push((one, tags));
        } else {
            bail!(
                "{p}: no image for {platform} in the index (it has {})",
                if seen.is_empty() {
                    "none".into()
                } else {
                    list(&seen)
                }
            );
        }
    }
    if let Some(r) = reference {
        if images.len() > 1 {
            let ids: Vec<String> = images
                .iter()
                .map(|(f, _)| format!("sha256:{}", short(&f.id)))
                .collect();
            bail!(
                "{p} holds {} images for {platform} ({}) and {r} can name only one: give a name the archive carries",
                images.len(),
                ids.join(", ")
            );
        }
        images[0].1 = vec![as_tag(r)];
    }
    for (f, tags) in &images {
        if tags.is_empty() {
            bail!(
                "{p}: the image sha256:{} has no name in the archive: add :NAME[:TAG] to give it one",
                short(&f.id)
            );
        }
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixtures::*;
    use super::super::image::list;
    use super::super::{check, ArchiveKind};
    use crate::platform::Platform;

    #[test]
    fn oci_dir_and_archive() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = layer("a", "1");
        let mut o = Oci::default();
        let (mut d, cfg) = o.image("amd64", std::slice::from_ref(&l1));
        // skopeo's oci:DIR:latest: a tag only, which is no name.
        d["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
        let files = o.finish(vec![d.clone()]);
        let od = dir.path().join("layout");
        to_dir(&od, &files);
        let p = write(dir.path(), "layout.tar", &tar_of(&files, &[]));
        let gz = gzip(&l1);
        for (kind, path) in [(ArchiveKind::OciDir, &od), (ArchiveKind::OciArchive, &p)] {
            let e = err(check(kind, path, None, &amd64(), false));
            assert!(e.contains("add :NAME[:TAG]"), "{e}");
            let a = check(kind, path, Some(&r("local/app:2")), &amd64(), false).unwrap();
            assert_eq!(a.images()[0].size, gz.len() as u64);
            // Layers stay compressed: docker load decompresses them.
            assert_converted(&a, &cfg, &[&gz], &["local/app:2"]);
        }
        // Named by containerd's annotation (docker save 25+, nerdctl), or
        // by a full reference in ref.name (skopeo oci:DIR:name:tag).
        for ann in [
            json!({"io.containerd.image.name": "docker.io/library/app:3",
                   "org.opencontainers.image.ref.name": "3"}),
            json!({"org.opencontainers.image.ref.name": "docker.io/library/app:3"}),
        ] {
            let mut o = Oci::default();
            let (mut d, _) = o.image("amd64", std::slice::from_ref(&l1));
            d["annotations"] = ann;
            let p = write(dir.path(), "named.tar", &tar_of(&o.finish(vec![d]), &[]));
            let a = check(ArchiveKind::OciArchive, &p, None, &amd64(), false).unwrap();
            assert_eq!(list(&a.images()[0].tags), "docker.io/library/app:3");
        }
        // An OCI dir given as a docker-archive, a tar as a dir.
        let e = err(check(
            ArchiveKind::DockerArchive,
            &od,
            None,
            &amd64(),
            false,
        ));
        assert!(e.contains("oci:"), "{e}");
        let e = err(check(ArchiveKind::OciDir, &p, None, &amd64(), false));
        assert!(e.contains("oci-archive:"), "{e}");
    }

    #[test]
    fn multi_platform_index() {
        let dir = tempfile::tempdir().unwrap();
        let (files, arm_cfg, arm_layer) = multi_platform();
        let p = write(dir.path(), "m.tar", &tar_of(&files, &[]));
        let a = check(ArchiveKind::OciArchive, &p, None, &arm64(), false).unwrap();
        let img = &a.images()[0];
        assert_eq!(img.platform, arm64());
        assert_eq!(list(&img.tags), "ex/multi:1");
        assert_converted(&a, &arm_cfg, &[&gzip(&arm_layer)], &["ex/multi:1"]);
        // No image for the platform: named, with what there is.
        let s390: Platform = "linux/s390x".parse().unwrap();
        let e = err(check(ArchiveKind::OciArchive, &p, None, &s390, true));
        assert!(
            e.contains("no image for linux/s390x in the index (it has linux/amd64, linux/arm64)"),
            "{e}"
        );
        assert!(e.contains("m.tar"), "{e}");
    }

    #[test]
    fn single_image_of_another_platform() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Oci::default();
        let (mut d, _) = o.image("amd64", &[layer("a", "1")]);
        d["annotations"] = json!({"io.containerd.image.name": "x:1"});
        let od = dir.path().join("l");
        to_dir(&od, &o.finish(vec![d]));
        let e = err(check(ArchiveKind::OciDir, &od, None, &arm64(), false));
        assert!(
            e.contains("x:1 is a linux/amd64 image") && e.contains("linux/arm64"),
            "{e}"
        );
        let a = check(ArchiveKind::OciDir, &od, None, &arm64(), true).unwrap();
        assert_eq!(a.images()[0].platform, amd64());
    }
}
