//! The output image around the stores: made (a sparse copy, or the disk
//! in place), grown, written with a whole containerd root (`--containerd`),
//! verified, and published under its name.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::disk::ext4::{self, Need};
use crate::disk::{self, Prepared};
use crate::store::{self, Backend, CONTAINERD_ROOT};
use crate::unpack::{open_archive, Input};

use super::checks::check_existing;
use super::config::PopulateConfig;
use super::report::*;
use super::worker::blocking;

/// Makes the image to write into: the disk itself (--in-place) or a
/// sparse, decompressed or converted copy, and checks its ROOT again. On
/// failure a partial copy is removed and the disk is untouched.
pub(super) async fn make_output(
    cfg: &PopulateConfig,
    opened: &disk::Disk,
    seeded: bool,
    cancel: CancellationToken,
) -> Result<Prepared> {
    let (disk, out, raw) = (
        opened.clone(),
        cfg.output.path().map(Path::to_path_buf),
        cfg.space.raw_output,
    );
    let cfg = cfg.clone();
    blocking(move || {
        let prepared = disk::prepare(&disk, out.as_deref(), raw, Some(&cancel))?;
        check_existing(&cfg, &prepared.fs(), seeded)?;
        Ok(prepared)
    })
    .await
}

/// Grows the image, ROOT's partition and filesystem when `need` does not fit, as
/// --grow allows. On failure the caller must not publish the output: ROOT
/// may be half grown (in place, the disk image may be longer).
pub(super) async fn make_room(
    cfg: &PopulateConfig,
    mut prepared: Prepared,
    need: Need,
) -> Result<(Prepared, Option<disk::GrowReport>)> {
    let (grow, headroom) = (cfg.space.grow, cfg.space.headroom);
    blocking(move || {
        prepared.begin_writing()?;
        let grown = disk::ensure_room(&mut prepared, Some(need), grow, headroom)?;
        Ok((prepared, grown))
    })
    .await
}

/// Writes a containerd root (a directory or a tar) under
/// /var/lib/containerd and returns the entries written. On failure ROOT is
/// consistent with part of it written; the caller must not publish.
pub(super) async fn write_containerd(
    root: ext4::Root,
    src: PathBuf,
    selinux: crate::selinux::Config,
    cancel: CancellationToken,
) -> Result<u64> {
    blocking(move || {
        let md = std::fs::metadata(&src)
            .with_context(|| format!("reading --containerd {}", src.display()))?;
        let target = CONTAINERD_ROOT.as_bytes();
        let mut fs = root.open_write(Some(&cancel))?;
        let mut labeler = selinux.labeler(target)?;
        let label = labeler.as_mut().map(|l| l as &mut dyn ext4::Transform);
        let written = if md.is_dir() {
            let (reader, writer) = std::io::pipe().context("making a pipe")?;
            let dir = src.clone();
            let export = std::thread::spawn(move || store::export::tree(&dir, writer));
            let written = fs.write_tar(target, reader, label);
            export
                .join()
                .map_err(|_| anyhow!("the containerd export panicked"))
                .and_then(|exported| {
                    let stats = written?;
                    exported.with_context(|| {
                        format!("reading the containerd root {}", src.display())
                    })?;
                    Ok(stats)
                })
        } else {
            open_archive(&Input::File(src), true)
                .and_then(|archive| fs.write_tar(target, archive, label))
        };
        Ok(fs.close_after(written)?.entries)
    })
    .await
}

/// What the containerd root will take in an ext4 with `block_size`.
pub(super) fn containerd_need(src: &Path, block_size: u64) -> Result<Need> {
    let md = std::fs::metadata(src)
        .with_context(|| format!("reading --containerd {}", src.display()))?;
    if md.is_dir() {
        store::export::measure_tree(src, block_size)
    } else {
        crate::unpack::measure_archive(src, block_size)
    }
}

/// Verifies the store written into ROOT (see `verify`); fails naming every
/// check that does not hold, so that the output is not published.
pub(super) async fn verify_written(root: ext4::Root) -> Result<Verified> {
    blocking(move || {
        let report = crate::verify::check_root(&root)?;
        if !report.failures.is_empty() {
            let lines: Vec<String> = report.failures.iter().map(|f| f.to_string()).collect();
            bail!(
                "the store written into ROOT does not verify ({} check(s) failed); the output is not kept:\n  {}",
                lines.len(),
                lines.join("\n  ")
            );
        }
        Ok(Verified {
            images: report.images,
            layers: report.layers,
            bytes_hashed: report.bytes_hashed,
        })
    })
    .await
}

/// Re-reads ROOT (its free space and the layers in the store: directories
/// of overlay2 but `l`) and moves the output to its name (converted back
/// to qcow2/vmdk when it came from there). On failure the output is
/// removed; in place, the disk holds the complete store.
pub(super) async fn publish(
    prepared: Prepared,
    backends: Vec<&'static dyn Backend>,
) -> Result<(ext4::FsSummary, Vec<u64>)> {
    blocking(move || {
        let fs = prepared.fs().open_read()?;
        let layers = backends
            .iter()
            .map(|b| b.layers(&fs))
            .collect::<Result<Vec<u64>>>()?;
        drop(fs);
        Ok((prepared.publish()?, layers))
    })
    .await
}

/// The sha256 of the written image (--sha256), with a progress bar.
pub(super) fn hash_output(path: &std::path::Path) -> Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).ok();
    let bar = crate::progress::Bar::bytes("hashing the output (--sha256)", size);
    crate::digest::sha256_reader(crate::progress::ReadProgress::new(file, bar))
        .with_context(|| format!("reading {} to hash it", path.display()))
}
