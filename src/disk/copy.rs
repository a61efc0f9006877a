//! Making the image to write into: a sparse copy of a raw image, a
//! decompressed copy of a compressed one, or a raw conversion of a qcow2 or
//! vmdk one (qemu-img).

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use super::Output;
use crate::command;
use crate::compress::{self, Compression, SNIFF_LEN};

const COPY_CHUNK: usize = 1 << 20;

/// What a disk image file holds, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Compressed(Compression),
    Qcow2,
    Vmdk,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::Raw => f.write_str("raw"),
            Format::Compressed(c) => write!(f, "{c:?}-compressed"),
            Format::Qcow2 => f.write_str("qcow2"),
            Format::Vmdk => f.write_str("vmdk"),
        }
    }
}

impl Format {
    pub fn detect(path: &Path) -> Result<Format> {
        let mut head = [0u8; 32];
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let n = f
            .read_at(&mut head, 0)
            .with_context(|| format!("reading {}", path.display()))?;
        let h = &head[..n];
        Ok(match Compression::sniff(&h[..n.min(SNIFF_LEN)]) {
            Compression::None if h.starts_with(b"QFI\xfb") => Format::Qcow2,
            Compression::None
                if h.starts_with(b"KDMV") || h.starts_with(b"# Disk DescriptorFile") =>
            {
                Format::Vmdk
            }
            Compression::None => Format::Raw,
            c => Format::Compressed(c),
        })
    }

    pub fn is_compressed(self) -> bool {
        matches!(self, Format::Compressed(_))
    }

    /// The qemu-img format name of an image format.
    pub fn qemu_name(self) -> Option<&'static str> {
        match self {
            Format::Qcow2 => Some("qcow2"),
            Format::Vmdk => Some("vmdk"),
            _ => None,
        }
    }
}

/// Runs qemu-img.
pub(super) fn qemu_img<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<()> {
    command::run(
        "qemu-img",
        args,
        &[0],
        "install qemu-utils for qcow2/vmdk images",
    )
}

/// Creates the hidden temporary for `dst`, refusing when `dst` is `src`.
fn new_output(src: &Path, dst: &Path) -> Result<(Output, File)> {
    if let (Ok(a), Ok(b)) = (fs::metadata(src), fs::metadata(dst)) {
        use std::os::unix::fs::MetadataExt;
        if a.dev() == b.dev() && a.ino() == b.ino() {
            bail!(
                "the output {} is the input disk image itself; use --in-place to modify it",
                dst.display()
            );
        }
    }
    let (file, tmp) = hidden_temp(dst, "partial")?.into_parts();
    let out = Output {
        tmp,
        path: dst.to_path_buf(),
        convert: None,
    };
    Ok((out, file))
}

fn check_cancel(cancel: Option<&CancellationToken>) -> Result<()> {
    if cancel.is_some_and(|c| c.is_cancelled()) {
        bail!("interrupted");
    }
    Ok(())
}

/// Writes the non-zero chunks of `data` at `at` (zero runs stay holes).
fn write_sparse(out: &File, buf: &[u8], at: u64) -> Result<()> {
    for (i, chunk) in buf.chunks(64 << 10).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            out.write_all_at(chunk, at + (i as u64) * (64 << 10))
                .with_context(|| format!("writing the output at byte {at}"))?;
        }
    }
    Ok(())
}

/// Copies `src` to a temporary next to `dst`, keeping holes and turning
/// zero runs into holes; a compressed `src` (gzip, bzip2, xz, zstd) is
/// decompressed on the way. `progress` gets the bytes of `src` done.
pub fn sparse_copy(
    src: &Path,
    dst: &Path,
    cancel: Option<&CancellationToken>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Output> {
    let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = input
        .metadata()
        .with_context(|| format!("reading the size of {}", src.display()))?
        .len();
    let (out, output) = new_output(src, dst)?;
    // Explained while the partial copy still takes its room.
    copy_into(src, input, len, &output, &out, cancel, &mut progress)
        .map_err(|e| crate::hostfs::explain_full(e, &out.tmp))?;
    Ok(out)
}

/// The body of [`sparse_copy`]: decompresses or copies `input` into
/// `output` (the file of `out`).
fn copy_into(
    src: &Path,
    input: File,
    len: u64,
    output: &File,
    out: &Output,
    cancel: Option<&CancellationToken>,
    progress: &mut impl FnMut(u64, u64),
) -> Result<()> {
    if Format::detect(src)?.is_compressed() {
        let read = Arc::new(AtomicU64::new(0));
        let counted = CountingFile {
            f: input,
            n: Arc::clone(&read),
        };
        let (_, mut reader) = compress::decompress(counted)
            .with_context(|| format!("decompressing {}", src.display()))?;
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut at = 0u64;
        loop {
            check_cancel(cancel)?;
            let n = compress::read_full(&mut reader, &mut buf).with_context(|| {
                format!("decompressing {} (corrupt or truncated?)", src.display())
            })?;
            if n == 0 {
                break;
            }
            write_sparse(output, &buf[..n], at)?;
            at += n as u64;
            progress(read.load(Ordering::Relaxed).min(len), len);
        }
        output
            .set_len(at)
            .with_context(|| format!("setting the size of {}", out.tmp.display()))?;
        progress(len, len);
        return Ok(());
    }
    copy_range(&input, 0, output, 0, len, cancel, |at| progress(at, len))?;
    output
        .set_len(len)
        .with_context(|| format!("setting the size of {}", out.tmp.display()))?;
    progress(len, len);
    Ok(())
}

/// Copies `len` bytes of `input` from `from` to `output` at `to`, reading
/// only the data ranges (SEEK_DATA) and writing only non-zero chunks.
pub(super) fn copy_range(
    input: &File,
    from: u64,
    output: &File,
    to: u64,
    len: u64,
    cancel: Option<&CancellationToken>,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let end = from + len;
    let mut pos = from;
    while pos < end {
        let data = match rustix::fs::seek(input, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            // No SEEK_DATA support: treat everything as data.
            Err(_) => pos,
        };
        if data >= end {
            break;
        }
        let hole = rustix::fs::seek(input, rustix::fs::SeekFrom::Hole(data))
            .unwrap_or(end)
            .min(end);
        let mut at = data;
        while at < hole {
            check_cancel(cancel)?;
            let n = ((hole - at) as usize).min(COPY_CHUNK);
            input
                .read_exact_at(&mut buf[..n], at)
                .with_context(|| format!("reading at byte {at}"))?;
            write_sparse(output, &buf[..n], at - from + to)?;
            at += n as u64;
            progress(at - from);
        }
        pos = hole;
    }
    Ok(())
}

/// A file that counts the bytes read from it (progress of a compressed
/// input).
struct CountingFile {
    f: File,
    n: Arc<AtomicU64>,
}

impl Read for CountingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.f.read(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Converts a qcow2 or vmdk `src` to a raw temporary next to `dst`; the
/// returned output is converted back to `back_to` when published (None:
/// stays raw).
pub fn convert_to_raw(
    src: &Path,
    dst: &Path,
    format: Format,
    back_to: Option<Format>,
) -> Result<Output> {
    let (mut out, file) = new_output(src, dst)?;
    drop(file);
    let name = format.qemu_name().context("not a qemu-img format")?;
    qemu_img(&[
        "convert".as_ref(),
        "-f".as_ref(),
        name.as_ref(),
        "-O".as_ref(),
        "raw".as_ref(),
        src.as_os_str(),
        out.tmp.as_os_str(),
    ])?;
    out.convert = back_to;
    Ok(out)
}

/// A hidden temporary file next to `dst` (`.NAME.WHAT-XXXXXX`), removed
/// when dropped unless persisted; created with the usual 0666 & umask mode.
pub(super) fn hidden_temp(dst: &Path, what: &str) -> Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let name = dst
        .file_name()
        .with_context(|| format!("the output path {} has no file name", dst.display()))?;
    let dir = match dst.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(format!(".{what}-"));
    tempfile::Builder::new()
        .prefix(&prefix)
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))
}
