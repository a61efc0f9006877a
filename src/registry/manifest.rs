//! Manifests and indexes (Docker's schema 2 and OCI's), their media types,
//! and the choice of an index entry by platform.

use serde::Deserialize;

use super::{is_sha256_digest, Blob, ErrorKind, RegistryError};
use crate::platform::Platform;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The Accept header of manifest requests: what this client parses.
pub const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    /// The compression of a layer of media type `t`: Docker's and OCI's
    /// (distributable or not) tar, tar+gzip and tar+zstd; None for any
    /// other type.
    pub fn of_media_type(t: &str) -> Option<Compression> {
        Some(match t {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
            _ => return None,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<PlatformJson>,
}

#[derive(Deserialize)]
struct PlatformJson {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// The config of an image manifest (its media type checked).
#[derive(Debug)]
pub struct ConfigRef {
    pub digest: String,
    pub size: u64,
}

#[derive(Debug)]
pub struct Image {
    pub config: ConfigRef,
    pub layers: Vec<Blob>,
}

/// One entry of an index.
#[derive(Debug)]
pub struct Entry {
    pub digest: String,
    pub platform: Option<Platform>,
    pub media_type: Option<String>,
}

#[derive(Debug)]
pub enum Parsed {
    Image(Image),
    Index(Vec<Entry>),
}

fn invalid(msg: String) -> anyhow::Error {
    RegistryError::new(ErrorKind::InvalidManifest, msg).into()
}

fn unsupported(msg: String) -> anyhow::Error {
    RegistryError::new(ErrorKind::Unsupported, msg).into()
}

fn check_digest(what: &str, d: &str) -> anyhow::Result<()> {
    if is_sha256_digest(d) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} has digest {d:?}, not sha256:<64 lowercase hex>"
        )))
    }
}

/// A manifest or index, by its `mediaType` field, else the response's
/// Content-Type, else its shape (OCI makes the field optional).
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> anyhow::Result<Parsed> {
    let raw: Raw = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("it is not a manifest JSON object: {e}")))?;
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim())
        .filter(|c| !c.is_empty() && *c != "application/json");
    let media_type = raw.media_type.as_deref().or(content_type);
    if raw.schema_version == Some(1)
        || matches!(media_type, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED))
    {
        return Err(unsupported(
            "it is a Docker schema 1 manifest, which Docker itself no longer pulls; push the image again with a current docker or buildkit (schema 2)".into(),
        ));
    }
    let is_index = match media_type {
        Some(DOCKER_LIST | OCI_INDEX) => true,
        Some(DOCKER_MANIFEST | OCI_MANIFEST) => false,
        Some(other) => {
            return Err(unsupported(format!(
                "its media type is {other:?}, not an image manifest or index"
            )))
        }
        None => raw.manifests.is_some(),
    };
    if is_index {
        let manifests = raw
            .manifests
            .ok_or_else(|| invalid("the index has no \"manifests\"".into()))?;
        let mut entries = vec![];
        for m in manifests {
            check_digest("an entry of the index", &m.digest)?;
            entries.push(Entry {
                platform: m
                    .platform
                    .map(|p| Platform::new(&p.os, &p.architecture, p.variant.as_deref())),
                digest: m.digest,
                media_type: m.media_type,
            });
        }
        return Ok(Parsed::Index(entries));
    }
    let config = raw
        .config
        .ok_or_else(|| invalid("the manifest has no \"config\"".into()))?;
    check_digest("the config", &config.digest)?;
    match config.media_type.as_deref() {
        Some(DOCKER_CONFIG | OCI_CONFIG) | None => {}
        Some(other) => {
            return Err(unsupported(format!(
                "its config is of media type {other:?}, not a container image's (an artifact?)"
            )))
        }
    }
    let mut layers = vec![];
    for (i, l) in raw
        .layers
        .ok_or_else(|| invalid("the manifest has no \"layers\"".into()))?
        .into_iter()
        .enumerate()
    {
        check_digest(&format!("layer {i}"), &l.digest)?;
        let t = l.media_type.as_deref().unwrap_or("");
        let compression = Compression::of_media_type(t).ok_or_else(|| {
            unsupported(format!(
                "layer {i} ({}) is of media type {t:?}, which is not a layer this tool unpacks (tar, tar+gzip, tar+zstd)",
                l.digest
            ))
        })?;
        layers.push(Blob {
            digest: l.digest,
            size: l.size,
            compression,
        });
    }
    Ok(Parsed::Image(Image {
        config: ConfigRef {
            digest: config.digest,
            size: config.size,
        },
        layers,
    }))
}

/// The variants an arm platform of variant `v` runs, best first (as
/// containerd's platform matcher that docker pulls with: v8 runs v7, v6,
/// v5; v7 runs v6, v5; ...).
fn arm_variants(v: &str) -> &'static [&'static str] {
    match v {
        "v8" => &["v8", "v7", "v6", "v5"],
        "v7" => &["v7", "v6", "v5"],
        "v6" => &["v6", "v5"],
        "v5" => &["v5"],
        _ => &[],
    }
}

/// The digest of the entry of `entries` for `want`, as docker picks it:
/// the same os and architecture; the variant asked for, else (arm) an
/// older one it runs, best first; no variant asked: the entry without one,
/// else the first. Err: a message saying which platforms there are.
pub fn choose(entries: &[Entry], want: &Platform) -> Result<String, String> {
    let usable = |e: &&Entry| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.os == want.os && p.architecture == want.architecture)
            && e.media_type
                .as_deref()
                .is_none_or(|t| matches!(t, DOCKER_MANIFEST | OCI_MANIFEST))
    };
    let candidates: Vec<&Entry> = entries.iter().filter(usable).collect();
    let variant = |e: &Entry| e.platform.as_ref().and_then(|p| p.variant.clone());
    let found = match &want.variant {
        Some(v) => {
            let order: Vec<&str> = match arm_variants(v) {
                [] => vec![v.as_str()],
                l if want.architecture == "arm" => l.to_vec(),
                _ => vec![v.as_str()],
            };
            order
                .iter()
                .find_map(|o| candidates.iter().find(|e| variant(e).as_deref() == Some(o)))
                .copied()
        }
        None => candidates
            .iter()
            .find(|e| variant(e).is_none())
            .or_else(|| candidates.first())
            .copied(),
    };
    match found {
        Some(e) => Ok(e.digest.clone()),
        None => {
            let mut have: Vec<String> = entries
                .iter()
                .filter_map(|e| e.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(|p| p.to_string())
                .collect();
            have.dedup();
            let have = if have.is_empty() {
                "none named".to_string()
            } else {
                have.join(", ")
            };
            Err(format!(
                "the index has no image for platform {want}; it has: {have} (give one of them with --platform, or pull an image built for {want})"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(d: char, p: &str) -> Entry {
        Entry {
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            platform: Some(p.parse().unwrap()),
            media_type: Some(OCI_MANIFEST.into()),
        }
    }

    #[test]
    fn platform_choice_as_docker() {
        let entries = [
            entry('a', "linux/amd64"),
            entry('b', "linux/arm/v6"),
            entry('c', "linux/arm/v7"),
            entry('d', "linux/arm64"),
            Entry {
                digest: format!("sha256:{}", "e".repeat(64)),
                platform: Some(Platform::new("unknown", "unknown", None)),
                media_type: Some(OCI_MANIFEST.into()),
            },
        ];
        let pick = |p: &str| choose(&entries, &p.parse().unwrap());
        assert!(pick("linux/amd64").unwrap().ends_with('a'));
        assert!(pick("linux/arm/v7").unwrap().ends_with('c'));
        assert!(pick("linux/arm/v6").unwrap().ends_with('b'));
        assert!(pick("linux/arm64").unwrap().ends_with('d'));
        let e = pick("linux/s390x").unwrap_err();
        assert!(
            e.contains("linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64")
                && !e.contains("unknown"),
            "{e}"
        );
        // v8 arm runs v7 when there is no v8.
        assert!(pick("linux/arm/v8").unwrap().ends_with('c'));
        assert!(pick("linux/arm/v5").is_err());
    }

    #[test]
    fn media_types_schema1_and_digests() {
        let layer = |t: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:{}","size":2}},"layers":[{{"mediaType":"{t}","digest":"sha256:{}","size":3}}]}}"#,
                "1".repeat(64),
                "2".repeat(64)
            )
        };
        for (t, c) in [
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
        ] {
            match parse(layer(t).as_bytes(), None).unwrap() {
                Parsed::Image(m) => assert_eq!(m.layers[0].compression, c),
                Parsed::Index(_) => panic!("not an index"),
            }
        }
        let e = parse(layer("application/x-tar+lz4").as_bytes(), None).unwrap_err();
        assert_eq!(super::super::error_kind(&e), Some(ErrorKind::Unsupported));
        assert!(format!("{e}").contains("application/x-tar+lz4"), "{e}");
        let e = parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err();
        assert!(format!("{e}").contains("schema 1"), "{e}");
        let bad = layer("application/vnd.oci.image.layer.v1.tar").replace(&"2".repeat(64), "22");
        let e = parse(bad.as_bytes(), None).unwrap_err();
        assert_eq!(
            super::super::error_kind(&e),
            Some(ErrorKind::InvalidManifest)
        );
        assert!(format!("{e}").contains("layer 0"), "{e}");
    }
}
