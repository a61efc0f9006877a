//! Entry points into the parsers of untrusted bytes, for the fuzz targets
//! of tests/fuzz_parsers.rs; compiled only with the `test-hooks` feature.
//! Each returns a short summary of what was parsed (the fuzzer tells
//! outcomes apart by it) or the parser's error.

use std::path::Path;

use anyhow::Result;

use crate::platform::Platform;
use crate::source::archive::{self, ArchiveKind};
pub use crate::store::fuzzing::{bolt_db, verify_docker};

/// GPT: where ROOT (found by label and type) of the disk image file `disk` is.
pub fn locate_root(disk: &Path) -> Result<String> {
    let r = crate::disk::locate_root(disk)?;
    Ok(format!("root at {} len {}", r.offset, r.size))
}

/// The platform read from the EFI loader on the ESP of `disk` (GPT, then
/// the FAT reader); `Ok(Err(reason))` when it cannot tell.
pub fn detect_platform(disk: &Path) -> Result<std::result::Result<String, String>> {
    Ok(crate::disk::esp::detect_platform(disk)?.map(|p| p.to_string()))
}

/// Checks an image archive as `populate` does before using it: `kind` is
/// `docker-archive`, `oci-archive` or `oci` (a layout directory).
pub fn check_archive(kind: &str, path: &Path) -> Result<String> {
    let kind = match kind {
        "docker-archive" => ArchiveKind::DockerArchive,
        "oci-archive" => ArchiveKind::OciArchive,
        _ => ArchiveKind::OciDir,
    };
    let a = archive::check(
        kind,
        path,
        None,
        &Platform::new("linux", "amd64", None),
        false,
    )?;
    Ok(a.images()
        .iter()
        .map(|i| format!("{} tags, {} layers", i.tags.len(), i.layers))
        .collect::<Vec<_>>()
        .join("; "))
}

/// Parses an images.list.
pub fn parse_list(text: &str) -> Result<String> {
    let l = crate::source::list::parse_list(text, "fuzz", Path::new("/base"))?;
    Ok(format!("{} sources", l.len().min(3)))
}

/// Parses an image reference and spells it back.
pub fn parse_ref(s: &str) -> Result<String> {
    let r = crate::source::ImageRef::parse(s)?;
    let n = r.normalized();
    let _ = r.pull_spec();
    let again = crate::source::ImageRef::parse(&n)?;
    anyhow::ensure!(
        again.normalized() == n,
        "{n:?} reads back as {:?}",
        again.normalized()
    );
    Ok(format!("ok {}", r.registry() == "docker.io"))
}

/// Parses a size (`--headroom`, `--grow`, sizes on the command line).
pub fn parse_size(s: &str) -> Result<u64> {
    crate::disk::parse_size(s)
}

/// Sniffs the compression of `input` and reads at most `limit` bytes of
/// its decompressed content.
pub fn decompress(input: &[u8], limit: u64) -> Result<(String, u64)> {
    use std::io::Read;
    let (kind, r) = crate::compress::decompress(input)?;
    let n = std::io::copy(&mut r.take(limit), &mut std::io::sink())?;
    Ok((format!("{kind:?}"), n))
}
