//! `flatcar-preload unpack`: a tar archive into ROOT, from the disk image
//! to the output in one stream.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use flate2::read::MultiGzDecoder;
use indicatif::HumanBytes;

use crate::disk::{self, ROOT_NAME};
use crate::ext4;
use crate::progress::{Bar, ReadProgress};

#[derive(Debug, Clone)]
pub enum Input {
    File(PathBuf),
    Stdin,
}

#[derive(Debug, Clone)]
pub enum OutputMode {
    /// Write a sparse copy of the disk image at this path.
    Copy(PathBuf),
    /// Modify the disk image itself.
    InPlace,
}

#[derive(Debug, Clone)]
pub struct UnpackConfig {
    pub disk: PathBuf,
    pub archive: Input,
    /// Absolute directory inside ROOT.
    pub target: Vec<u8>,
    pub output: OutputMode,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens the archive, decompressing it when its content is gzip.
pub fn open_archive(input: &Input) -> Result<Box<dyn Read>> {
    let (raw, total): (Box<dyn Read>, Option<u64>) = match input {
        Input::File(p) => {
            let f = File::open(p).with_context(|| format!("opening archive {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        }
        Input::Stdin => (Box::new(io::stdin().lock()), None),
    };
    let mut reader = BufReader::with_capacity(
        1 << 20,
        ReadProgress::new(raw, Bar::bytes("archive", total)),
    );
    let head = reader.fill_buf().context("reading the archive")?;
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Runs the command: checks the disk image, makes the output, writes the
/// archive into ROOT, and publishes the output only when all went well.
pub fn run(cfg: &UnpackConfig, cancel: &AtomicBool) -> Result<()> {
    let start = Instant::now();
    let root = disk::locate_root(&cfg.disk)?;
    ext4::inspect(&cfg.disk, root.offset, ROOT_NAME)
        .with_context(|| format!("checking partition 9 of {}", cfg.disk.display()))?;
    let archive = open_archive(&cfg.archive)?;

    let output = match &cfg.output {
        OutputMode::Copy(path) => {
            let mut bar = Bar::bytes(
                "copying image",
                std::fs::metadata(&cfg.disk).ok().map(|m| m.len()),
            );
            let out = disk::sparse_copy(&cfg.disk, path, Some(cancel), |done, _| bar.set(done))?;
            bar.finish();
            Some(out)
        }
        OutputMode::InPlace => None,
    };
    let image = output
        .as_ref()
        .map_or(cfg.disk.as_path(), |o| o.working_path());

    let write_start = Instant::now();
    let stats = ext4::write_tar(image, root.offset, &cfg.target, archive, Some(cancel), None)
        .context("writing the archive into ROOT")?;
    let write_secs = write_start.elapsed().as_secs_f64();
    let fs =
        ext4::inspect(image, root.offset, ROOT_NAME).context("re-reading ROOT after writing")?;
    if let Some(out) = output {
        out.publish()?;
    }
    eprintln!(
        "wrote {} entries ({} files, {} directories, {} symlinks, {} hard links, {} device nodes, {} xattrs), \
         {} of file data in {write_secs:.2} s; {:.2} s in all",
        stats.entries,
        stats.files,
        stats.dirs,
        stats.symlinks,
        stats.hardlinks,
        stats.devices,
        stats.xattrs,
        HumanBytes(stats.bytes),
        start.elapsed().as_secs_f64()
    );
    eprintln!(
        "ROOT: {} free of {}, {} inodes free",
        HumanBytes(fs.free_bytes()),
        HumanBytes(fs.size_bytes()),
        fs.free_inodes
    );
    Ok(())
}
