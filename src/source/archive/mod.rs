//! Images from files: `docker save` archives (docker-archive), OCI image
//! layouts as a tar (oci-archive) or a directory (oci), checked whole before
//! anything is written, then streamed as the docker-archive that `docker
//! load` of Docker 26 and 28 with the overlay2 store accepts.
//!
//! Why a conversion: that loader (moby `image/tarexport/load.go`) reads only
//! `manifest.json` (`[{Config, RepoTags, Layers}]`), so an OCI layout made by
//! skopeo or buildx fails there. It decompresses each layer itself
//! (gzip, bzip2, xz, zstd), so layer blobs are passed on as stored. The
//! config bytes are kept as they are: the image ID is their sha256, the same
//! as when the image is pulled from a registry.
//!
//! Formats read:
//! - docker-archive: `manifest.json`; configs as `<hex>.json` (Docker before
//!   25, skopeo) or `blobs/sha256/<hex>` (Docker 25+, which writes an OCI
//!   layout next to manifest.json); layers as `<id>/layer.tar`, `<hex>.tar`
//!   or `blobs/sha256/<hex>`; symbolic and hard links between them (Docker
//!   before 25 links a layer it already wrote). `repositories` is not used.
//! - OCI image layout: `index.json` (`oci-layout` checked when present),
//!   `blobs/sha256/<hex>`, image manifests and indexes (nested too), OCI or
//!   Docker media types.
//!
//! Nothing here holds a layer in memory: JSON documents are capped at
//! `MAX_JSON` (scan.rs), layers are hashed and copied as streams.

mod docker;
#[cfg(test)]
mod fixtures;
mod image;
mod oci;
mod scan;
mod write;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use self::image::Plan;
use self::scan::Input;
use super::refs::ImageRef;
use crate::platform::Platform;

/// How an archive is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// A `docker save` tar (compressed or not).
    DockerArchive,
    /// An OCI image layout in a tar (compressed or not).
    OciArchive,
    /// An OCI image layout in a directory.
    OciDir,
}

impl fmt::Display for ArchiveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArchiveKind::DockerArchive => "docker-archive",
            ArchiveKind::OciArchive => "oci-archive",
            ArchiveKind::OciDir => "oci",
        })
    }
}

/// One image found in an archive, checked.
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    /// sha256:<hex> of the config bytes: the image ID Docker will give it.
    pub id: String,
    /// The names it gets: the `:REF` given, else the tags the archive
    /// carries (always with a tag: `latest` when none was written).
    pub tags: Vec<ImageRef>,
    pub platform: Platform,
    /// How many layers.
    pub layers: usize,
    /// Bytes of the layer blobs as stored (compressed or not).
    pub size: u64,
}

/// An archive that [`check`] found complete and consistent, with the
/// image(s) selected from it.
#[derive(Debug)]
pub struct CheckedArchive {
    kind: ArchiveKind,
    path: PathBuf,
    images: Vec<ArchiveImage>,
    plans: Vec<Plan>,
}

impl CheckedArchive {
    pub fn images(&self) -> &[ArchiveImage] {
        &self.images
    }
}

/// Reads the whole archive once and checks it, before anything is written
/// anywhere: the structure (a truncated or corrupt tar or compressed
/// stream is an error), manifest.json / index.json present and well-formed,
/// every referenced blob present, configs and (for OCI) every blob equal to
/// its digest, an uncompressed layer equal to its diff ID, the config's
/// diff ID count equal to the layer count.
///
/// `reference` (the `:REF`) names the image: then exactly one image is
/// selected (with several in the archive, the one carrying that name).
/// Without it the images get the names the archive carries (docker-archive:
/// RepoTags; OCI: the annotation `io.containerd.image.name`, else
/// `org.opencontainers.image.ref.name` when it is a full reference); an
/// image without a name is an error. From an OCI index, the manifest for
/// `platform` is selected; a single image of another platform is an error
/// unless `allow_mismatch`.
pub fn check(
    kind: ArchiveKind,
    path: &Path,
    reference: Option<&ImageRef>,
    platform: &Platform,
    allow_mismatch: bool,
) -> Result<CheckedArchive> {
    if let Some(r) = reference {
        if r.digest.is_some() {
            bail!("{r}: an archive's image is named by NAME[:TAG]; a digest cannot be a name");
        }
    }
    let meta = std::fs::metadata(path).with_context(|| format!("opening {}", path.display()))?;
    let mut src = match kind {
        ArchiveKind::OciDir => {
            if !meta.is_dir() {
                bail!(
                    "{} is not a directory: an OCI layout in a tar is given as oci-archive:",
                    path.display()
                );
            }
            Input::dir(path)
        }
        _ => {
            if meta.is_dir() {
                bail!(
                    "{} is a directory: an OCI layout in a directory is given as oci:",
                    path.display()
                );
            }
            Input::tar(path)?
        }
    };
    let found = match kind {
        ArchiveKind::DockerArchive => {
            docker::check_docker(&mut src, reference, platform, allow_mismatch)?
        }
        _ => oci::check_oci(&mut src, reference, platform, allow_mismatch)?,
    };
    let mut images = vec![];
    let mut plans = vec![];
    for (f, tags) in found {
        images.push(ArchiveImage {
            id: format!("sha256:{}", f.id),
            tags,
            platform: f.platform,
            layers: f.plan.layers.len(),
            size: f.size,
        });
        plans.push(f.plan);
    }
    Ok(CheckedArchive {
        kind,
        path: path.to_path_buf(),
        images,
        plans,
    })
}

/// Streams the selected image(s) as a docker-archive tar: their configs
/// (bytes unchanged) and layer blobs (as stored: `docker load` decompresses
/// them) under `blobs/sha256/<hex>`, then `manifest.json`. An outer
/// compression of the archive file is removed. Reads the archive again (no
/// temporary copy) and fails if a blob changed since [`check`]; since
/// manifest.json comes last, a stream cut short by that error is one
/// `docker load` refuses, never a partial image.
pub fn write_docker_archive(a: &CheckedArchive, out: impl Write) -> Result<()> {
    write::docker_archive(a.kind, &a.path, &a.images, &a.plans, out)
}
