//! `flatcar-preload unpack`: a tar archive into ROOT, from the disk image
//! to the output in one stream.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::HumanBytes;
use tokio_util::sync::CancellationToken;

use crate::compress;
use crate::disk::ext4;
use crate::disk::{self, Grow};
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
    /// Write into a ROOT an interrupted run left unfinished.
    pub force: bool,
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
    pub selinux: crate::selinux::Config,
    pub disk: PathBuf,
    pub archive: Input,
    /// Absolute directory inside ROOT.
    pub target: Vec<u8>,
    pub space: Space,
    pub output: OutputMode,
    /// What is baked beside the archive (OEM, ESP, ROOT files).
    pub node: crate::node::Config,
}

/// Opens the archive, decompressing it when its content is gzip, bzip2,
/// xz or zstd.
pub fn open_archive(input: &Input, show_progress: bool) -> Result<Box<dyn Read + Send>> {
    let (raw, total, name): (Box<dyn Read + Send>, Option<u64>, String) = match input {
        Input::File(p) => {
            let f = File::open(p).with_context(|| format!("opening archive {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            (Box::new(f), len, p.display().to_string())
        }
        Input::Stdin => (Box::new(io::stdin()), None, "standard input".into()),
    };
    let raw: Box<dyn Read + Send> = if show_progress {
        Box::new(ReadProgress::new(raw, Bar::bytes("archive", total)))
    } else {
        raw
    };
    let (_, reader) =
        compress::decompress(raw).with_context(|| format!("reading the archive {name}"))?;
    Ok(reader)
}

/// What a tar file, compressed or not, will take in an ext4 with
/// `block_size`.
pub fn measure_archive(path: &Path, block_size: u64) -> Result<ext4::Need> {
    let input = Input::File(path.to_path_buf());
    let mut head = [0u8; compress::SNIFF_LEN];
    let mut f = File::open(path).with_context(|| format!("opening archive {}", path.display()))?;
    let n = compress::read_full(&mut f, &mut head)
        .with_context(|| format!("reading archive {}", path.display()))?;
    match compress::Compression::sniff(&head[..n]) {
        // Uncompressed: seek over file data instead of reading it.
        compress::Compression::None => {
            f.rewind()
                .with_context(|| format!("reading archive {}", path.display()))?;
            ext4::estimate_tar_file(f, block_size)
        }
        _ => ext4::estimate_tar(open_archive(&input, false)?, block_size),
    }
}

/// Runs the command: checks the disk image, makes the output, writes the
/// archive into ROOT, and publishes the output only when all went well.
pub fn run(cfg: &UnpackConfig, cancel: &CancellationToken) -> Result<()> {
    let start = Instant::now();
    let plan = crate::node::check_local(&cfg.node)?;
    let opened = disk::Disk::open(
        &cfg.disk,
        cfg.output.path().is_none(),
        disk::Unfinished::writing(cfg.space.force),
    )?;
    let mut prepared = disk::prepare(
        &opened,
        cfg.output.path(),
        cfg.space.raw_output,
        Some(cancel),
    )?;
    let block_size = prepared.block_size()?;
    // The node's files, checked against the image before anything is
    // written (the platform of its ESP, else this machine's).
    let platform = disk::esp::detect_platform(&prepared.image)?
        .unwrap_or_else(|_| crate::platform::Platform::of_host());
    let facts = crate::node::check_disk(&plan, &prepared.image, &prepared.layout, &platform)?;
    let node_need = crate::node::root_need(&plan, &facts, block_size);
    // Measured from the archive's headers when it is a file; standard
    // input can be read only once.
    let need = match &cfg.archive {
        Input::File(p) => {
            let mut need = measure_archive(p, block_size).context("measuring the archive")?;
            need += node_need;
            Some(need)
        }
        Input::Stdin => None,
    };
    let archive = open_archive(&cfg.archive, true)?;
    prepared.begin_writing()?;
    let grown = disk::ensure_room(&mut prepared, need, cfg.space.grow, cfg.space.headroom)?;
    let root = prepared.fs();

    let write_start = Instant::now();
    let mut fs = root.open_write(Some(cancel))?;
    let mut labeler = cfg.selinux.labeler(&cfg.target)?;
    let label = labeler
        .as_mut()
        .map(|l| l as &mut dyn crate::disk::ext4::Transform);
    let written = fs.write_tar(&cfg.target, archive, label);
    let stats = fs
        .close_after(written)
        .context("writing the archive into ROOT")
        .map_err(|e| crate::hostfs::explain_full(e, &root.image))?;
    let write_secs = write_start.elapsed().as_secs_f64();
    let node = crate::node::apply(&plan, &facts, &prepared.image, &root, &cfg.selinux)
        .map_err(|e| crate::hostfs::explain_full(e, &root.image))?;
    let fs = prepared.publish()?;
    for line in node.lines() {
        eprintln!("{line}");
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
