//! PLACEHOLDER until the `archive` branch is merged (issue 11).
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};

use crate::docker::refs::ImageRef;
use crate::platform::Platform;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    DockerArchive,
    OciArchive,
    OciDir,
}
#[derive(Debug, Clone)]
pub struct ArchiveImage {
    pub id: String,
    pub tags: Vec<ImageRef>,
    pub platform: Platform,
    pub layers: usize,
    pub size: u64,
}
pub struct CheckedArchive {
    images: Vec<ArchiveImage>,
}
impl CheckedArchive {
    pub fn images(&self) -> &[ArchiveImage] {
        &self.images
    }
}
pub fn check(
    _kind: ArchiveKind,
    _path: &Path,
    _reference: Option<&ImageRef>,
    _platform: &Platform,
    _allow_mismatch: bool,
) -> Result<CheckedArchive> {
    bail!("not yet")
}
pub fn write_docker_archive(_a: &CheckedArchive, _out: impl Write) -> Result<()> {
    bail!("not yet")
}
