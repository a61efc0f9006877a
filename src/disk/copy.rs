//! Making the image to write into: a sparse copy of a raw image, a
//! decompressed copy of a compressed one, or a raw conversion of a qcow2 or
//! vmdk one (qemu-img).

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

use super::Output;

const COPY_CHUNK: usize = 1 << 20;

/// What a disk image file holds, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
    Qcow2,
    Vmdk,
}

impl Format {
    pub fn detect(path: &Path) -> Result<Format> {
        let mut head = [0u8; 32];
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let n = f
            .read_at(&mut head, 0)
            .with_context(|| format!("reading {}", path.display()))?;
        let h = &head[..n];
        Ok(if h.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if h.starts_with(b"BZh") {
            Format::Bzip2
        } else if h.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Format::Xz
        } else if h.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else if h.starts_with(b"QFI\xfb") {
            Format::Qcow2
        } else if h.starts_with(b"KDMV") || h.starts_with(b"# Disk DescriptorFile") {
            Format::Vmdk
        } else {
            Format::Raw
        })
    }

    pub fn is_compressed(self) -> bool {
        matches!(
            self,
            Format::Gzip | Format::Bzip2 | Format::Xz | Format::Zstd
        )
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

/// Creates the hidden temporary for `dst`, refusing when `dst` is `src`.
fn new_output(src: &Path, dst: &Path, what: &str) -> Result<(Output, File)> {
    if let (Ok(a), Ok(b)) = (fs::metadata(src), fs::metadata(dst)) {
        use std::os::unix::fs::MetadataExt;
        if a.dev() == b.dev() && a.ino() == b.ino() {
            bail!(
                "the output {} is the input disk image itself; use --in-place to modify it",
                dst.display()
            );
        }
    }
    let name = dst
        .file_name()
        .with_context(|| format!("the output path {} has no file name", dst.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{what}-{}", std::process::id()));
    let tmp = dst.with_file_name(tmp_name);
    let out = Output {
        tmp: tmp.clone(),
        path: dst.to_path_buf(),
        published: false,
        convert: None,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    Ok((out, file))
}

fn check_cancel(cancel: Option<&AtomicBool>) -> Result<()> {
    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
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
    cancel: Option<&AtomicBool>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Output> {
    let format = Format::detect(src)?;
    let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = input
        .metadata()
        .with_context(|| format!("reading the size of {}", src.display()))?
        .len();
    let (out, output) = new_output(src, dst, "partial")?;
    let tmp = out.tmp.clone();
    let mut buf = vec![0u8; COPY_CHUNK];
    if format.is_compressed() {
        let read = Rc::new(Cell::new(0u64));
        let counted = io::BufReader::with_capacity(
            COPY_CHUNK,
            CountingFile {
                f: input,
                n: Rc::clone(&read),
            },
        );
        let mut reader = decompressor(counted, format)?;
        let mut at = 0u64;
        loop {
            check_cancel(cancel)?;
            let n = read_full(&mut reader, &mut buf).with_context(|| {
                format!("decompressing {} (corrupt or truncated?)", src.display())
            })?;
            if n == 0 {
                break;
            }
            write_sparse(&output, &buf[..n], at)?;
            at += n as u64;
            progress(read.get().min(len), len);
        }
        output
            .set_len(at)
            .with_context(|| format!("setting the size of {}", tmp.display()))?;
        progress(len, len);
        return Ok(out);
    }
    copy_range(&input, 0, &output, 0, len, cancel, |at| progress(at, len))?;
    output
        .set_len(len)
        .with_context(|| format!("setting the size of {}", tmp.display()))?;
    progress(len, len);
    Ok(out)
}

/// Copies `len` bytes of `input` from `from` to `output` at `to`, reading
/// only the data ranges (SEEK_DATA) and writing only non-zero chunks.
pub(super) fn copy_range(
    input: &File,
    from: u64,
    output: &File,
    to: u64,
    len: u64,
    cancel: Option<&AtomicBool>,
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
    n: Rc<Cell<u64>>,
}

impl Read for CountingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.f.read(buf)?;
        self.n.set(self.n.get() + n as u64);
        Ok(n)
    }
}

fn decompressor(r: io::BufReader<CountingFile>, format: Format) -> Result<Box<dyn Read>> {
    Ok(match format {
        Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Format::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(r)),
        Format::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Format::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(r).context("starting zstd")?)
        }
        _ => bail!("not a compressed format"),
    })
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub(super) fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| {
            anyhow::anyhow!("running qemu-img (install qemu-utils for qcow2/vmdk images): {e}")
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("qemu-img {:?} failed: {}", args, err.trim());
    }
    Ok(())
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
    let (mut out, file) = new_output(src, dst, "raw")?;
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
