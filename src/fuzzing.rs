//! Entry points into the parsers of untrusted bytes, for the fuzz targets
//! of tests/fuzz_parsers.rs; compiled only with the `test-hooks` feature.
//! Each returns a short summary of what was parsed (the fuzzer tells
//! outcomes apart by it) or the parser's error.

use std::path::Path;

use anyhow::Result;

use crate::platform::Platform;
use crate::source::archive::{self, ArchiveKind};
use crate::store::containerd::{bolt, image};

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

/// Walks a bbolt file as `inspect`, `verify` and `--merge` read
/// containerd's meta.db: every bucket (nested up to 8 levels, at most
/// 10000 entries in all), then the namespaces' image records, their
/// content labels and snapshots.
pub fn bolt_db(data: &[u8]) -> Result<String> {
    fn walk(b: &bolt::Bucket<'_>, depth: usize, n: &mut usize) -> Result<()> {
        for (_, e) in b.entries()? {
            *n += 1;
            if *n > 10_000 {
                return Ok(());
            }
            if let bolt::Entry::Bucket(inner) = e {
                if depth < 8 {
                    walk(&inner, depth + 1, n)?;
                }
            }
        }
        Ok(())
    }
    let db = bolt::Db::open(data)?;
    let mut n = 0;
    walk(&db.root(), 0, &mut n)?;
    let mut records = 0;
    for (_, ns) in image::namespaces(&db)? {
        for r in image::records(&ns)? {
            records += 1;
            let _ = r.pinned();
            image::content_labels(&ns, &r.digest)?;
            image::snapshot(&ns, &r.digest)?;
        }
    }
    Ok(format!("{} entries, {} records", n.min(3), records.min(3)))
}

/// Docker's `verify` of a store whose data root is `root` on this
/// machine (its tar-split metadata, layer and image JSON).
pub fn verify_docker(root: &Path) -> Result<String> {
    let host = crate::fsread::HostDir(root.to_path_buf());
    let opts = crate::store::docker::verify::Options::default();
    let r = crate::store::docker::verify::verify(&host, &opts, &mut |_| {})?;
    if std::env::var_os("FP_FUZZ_VERBOSE").is_some() {
        for f in &r.failures {
            eprintln!("verify: {f}");
        }
    }
    let mut problems: Vec<String> = r
        .failures
        .iter()
        .map(|f| {
            f.problem
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .take(60)
                .collect()
        })
        .collect();
    problems.sort();
    problems.dedup();
    Ok(format!(
        "{} images, {} layers: {}",
        r.images.min(3),
        r.layers.min(3),
        problems.join(" | ")
    ))
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
