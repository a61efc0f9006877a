//! `flatcar-preload unpack`: a tar archive into ROOT, from the disk image
//! to the output in one stream.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result};
use flate2::read::MultiGzDecoder;
use indicatif::HumanBytes;

use crate::disk::{self, Grow, ROOT_NAME};
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

/// How room is made in ROOT, and the output's format.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    pub grow: Grow,
    pub headroom: Option<u64>,
    /// Write raw output for qcow2/vmdk input instead of converting back.
    pub raw_output: bool,
}

impl OutputMode {
    pub fn path(&self) -> Option<&Path> {
        match self {
            OutputMode::Copy(p) => Some(p),
            OutputMode::InPlace => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct UnpackConfig {
    pub disk: PathBuf,
    pub archive: Input,
    /// Absolute directory inside ROOT.
    pub target: Vec<u8>,
    pub space: Space,
    pub output: OutputMode,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens the archive, decompressing it when its content is gzip.
pub fn open_archive(input: &Input, show_progress: bool) -> Result<Box<dyn Read>> {
    let (raw, total): (Box<dyn Read>, Option<u64>) = match input {
        Input::File(p) => {
            let f = File::open(p).with_context(|| format!("opening archive {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len)
        }
        Input::Stdin => (Box::new(io::stdin().lock()), None),
    };
    let raw: Box<dyn Read> = if show_progress {
        Box::new(ReadProgress::new(raw, Bar::bytes("archive", total)))
    } else {
        raw
    };
    let mut reader = BufReader::with_capacity(1 << 20, raw);
    let head = reader.fill_buf().context("reading the archive")?;
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(MultiGzDecoder::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

/// What a tar or gzip-compressed tar file will take in ext4.
pub fn measure_archive(path: &Path) -> Result<ext4::Need> {
    let mut f = File::open(path).with_context(|| format!("opening archive {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    if n == 2 && magic == GZIP_MAGIC {
        ext4::estimate_tar(open_archive(&Input::File(path.to_path_buf()), false)?, 4096)
    } else {
        let f = File::open(path).with_context(|| format!("opening archive {}", path.display()))?;
        ext4::estimate_tar_file(f, 4096)
    }
}

/// Runs the command: checks the disk image, makes the output, writes the
/// archive into ROOT, and publishes the output only when all went well.
pub fn run(cfg: &UnpackConfig, cancel: &AtomicBool) -> Result<()> {
    let start = Instant::now();
    let mut prepared = disk::prepare(
        &cfg.disk,
        cfg.output.path(),
        cfg.space.raw_output,
        Some(cancel),
    )?;
    // Measured from the archive's headers when it is a file; standard
    // input can be read only once.
    let need = match &cfg.archive {
        Input::File(p) => Some(measure_archive(p).context("measuring the archive")?),
        Input::Stdin => None,
    };
    let grown = disk::ensure_room(&mut prepared, need, cfg.space.grow, cfg.space.headroom)?;
    let archive = open_archive(&cfg.archive, true)?;
    let (image, offset) = (prepared.image.clone(), prepared.root.offset);

    let write_start = Instant::now();
    let stats = ext4::write_tar(&image, offset, &cfg.target, archive, Some(cancel), None)
        .context("writing the archive into ROOT")?;
    let write_secs = write_start.elapsed().as_secs_f64();
    let fs = ext4::inspect(&image, offset, ROOT_NAME).context("re-reading ROOT after writing")?;
    if let Some(out) = prepared.output {
        out.publish()?;
    }
    if let Some(g) = grown {
        eprintln!("{g}");
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
