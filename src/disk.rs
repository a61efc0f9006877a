//! The disk image: finding Flatcar's ROOT partition in its GPT, and making
//! the output file (a sparse copy, published only when complete).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use gptman::GPT;

/// Flatcar's ROOT partition number and GPT type ("flatcar-resize").
pub const ROOT_PARTITION: u32 = 9;
pub const ROOT_TYPE_GUID: &str = "3884DD41-8582-4404-B9A8-E9B84F2DF50E";
pub const ROOT_NAME: &str = "ROOT";

/// Where ROOT lies in the disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootPartition {
    /// Byte offset of the partition's first byte.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A GPT GUID as written on disk (first three fields little-endian) in its
/// usual text form.
pub fn guid_to_string(g: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{}",
        g[3],
        g[2],
        g[1],
        g[0],
        g[5],
        g[4],
        g[7],
        g[6],
        g[8],
        g[9],
        g[10..]
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    )
}

/// Reads the GPT of `image` and returns the byte range of partition 9 when
/// it is Flatcar's ROOT.
pub fn locate_root(image: &Path) -> Result<RootPartition> {
    let mut f =
        File::open(image).with_context(|| format!("opening disk image {}", image.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("reading the size of {}", image.display()))?
        .len();
    let gpt = GPT::find_from(&mut f).with_context(|| {
        format!(
            "{} has no valid GPT partition table: not a raw Flatcar disk image \
             (compressed and qcow2 images are not supported yet; decompress or `qemu-img convert -O raw` first)",
            image.display()
        )
    })?;
    let found = || {
        let parts: Vec<String> = gpt
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(i, p)| format!("{i} {:?}", p.partition_name.as_str()))
            .collect();
        if parts.is_empty() {
            "no partitions".to_string()
        } else {
            parts.join(", ")
        }
    };
    if gpt.header.number_of_partition_entries < ROOT_PARTITION || gpt[ROOT_PARTITION].is_unused() {
        bail!(
            "{} has no partition {ROOT_PARTITION} (found: {}): not a Flatcar disk image",
            image.display(),
            found()
        );
    }
    let p = &gpt[ROOT_PARTITION];
    let type_guid = guid_to_string(&p.partition_type_guid);
    let name = p.partition_name.as_str();
    if type_guid != ROOT_TYPE_GUID && name != ROOT_NAME {
        bail!(
            "partition {ROOT_PARTITION} of {} is {name:?} of type {type_guid}, not Flatcar's ROOT \
             (name {ROOT_NAME:?}, type {ROOT_TYPE_GUID})",
            image.display()
        );
    }
    let sector = gpt.sector_size;
    let offset = p
        .starting_lba
        .checked_mul(sector)
        .context("partition offset overflow")?;
    let size = (p.ending_lba + 1)
        .checked_sub(p.starting_lba)
        .and_then(|n| n.checked_mul(sector))
        .context("partition 9 ends before it starts")?;
    if offset + size > len {
        bail!(
            "partition {ROOT_PARTITION} of {} ends at byte {} but the file has only {len} bytes: truncated image?",
            image.display(),
            offset + size
        );
    }
    Ok(RootPartition { offset, size })
}

/// An output file being made: a hidden temporary next to the final path,
/// renamed into place by [`Output::publish`] and removed if dropped before.
pub struct Output {
    tmp: PathBuf,
    path: PathBuf,
    published: bool,
    /// Converted to this format (qemu-img) when published.
    convert: Option<Format>,
}

impl Output {
    /// The file to write into until [`Output::publish`].
    pub fn working_path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the finished file to its final name (converting it back to
    /// the input's format first when it came from qcow2 or vmdk).
    pub fn publish(mut self) -> Result<()> {
        if let Some(format) = self.convert {
            let mut name = self.tmp.clone().into_os_string();
            name.push(".out");
            let converted = PathBuf::from(name);
            let res = qemu_img(&[
                "convert".as_ref(),
                "-f".as_ref(),
                "raw".as_ref(),
                "-O".as_ref(),
                format.qemu_name().unwrap_or("raw").as_ref(),
                self.tmp.as_os_str(),
                converted.as_os_str(),
            ])
            .and_then(|()| {
                fs::rename(&converted, &self.path)
                    .with_context(|| format!("renaming to {}", self.path.display()))
            });
            let _ = fs::remove_file(&converted);
            res?;
            let _ = fs::remove_file(&self.tmp);
            self.published = true;
            return Ok(());
        }
        fs::rename(&self.tmp, &self.path).with_context(|| {
            format!("renaming {} to {}", self.tmp.display(), self.path.display())
        })?;
        self.published = true;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.published {
            if let Err(e) = fs::remove_file(&self.tmp) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("warning: could not remove {}: {e}", self.tmp.display());
                }
            }
        }
    }
}

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
        let counted = io::BufReader::new(CountingFile { f: input, n: 0 });
        let mut reader = decompressor_counted(counted, format)?;
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
            progress(reader_pos(&reader).min(len), len);
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
fn copy_range(
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

/// Grows the filesystem of partition `root` (already grown) to fill it.
/// resize2fs truncates a regular file to the filesystem's size, ignoring
/// `?offset=`, which would cut the end of the disk image off; so it works
/// on a sparse copy of the partition that is copied back.
fn resize_root(image: &Path, root: RootPartition, old_size: u64, block_size: u64) -> Result<()> {
    let mut name = std::ffi::OsString::from(".");
    name.push(image.file_name().unwrap_or_default());
    name.push(format!(".root-{}", std::process::id()));
    let tmp = image.with_file_name(name);
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_file(self.0);
        }
    }
    let _remove = Remove(&tmp);
    let img = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let part = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    copy_range(&img, root.offset, &part, 0, old_size, None, |_| {})?;
    part.set_len(old_size)?;
    let blocks = root.size / block_size;
    crate::ext4::resize(&tmp, 0, blocks)?;
    copy_range(
        &part,
        0,
        &img,
        root.offset,
        blocks * block_size,
        None,
        |_| {},
    )?;
    img.sync_all().context("syncing the grown image")?;
    Ok(())
}

/// A file that counts the bytes read from it (compressed progress).
struct CountingFile {
    f: File,
    n: u64,
}

impl Read for CountingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.f.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// A decompressor over a counting reader, able to tell how far into the
/// compressed input it is.
enum Decoder {
    Gzip(flate2::read::MultiGzDecoder<io::BufReader<CountingFile>>),
    Bzip2(bzip2::read::MultiBzDecoder<io::BufReader<CountingFile>>),
    Xz(liblzma::read::XzDecoder<io::BufReader<CountingFile>>),
    Zstd(zstd::stream::read::Decoder<'static, io::BufReader<CountingFile>>),
}

fn decompressor_counted(r: io::BufReader<CountingFile>, format: Format) -> Result<Decoder> {
    Ok(match format {
        Format::Gzip => Decoder::Gzip(flate2::read::MultiGzDecoder::new(r)),
        Format::Bzip2 => Decoder::Bzip2(bzip2::read::MultiBzDecoder::new(r)),
        Format::Xz => Decoder::Xz(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Format::Zstd => {
            Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(r).context("starting zstd")?)
        }
        _ => bail!("not a compressed format"),
    })
}

fn reader_pos(d: &Decoder) -> u64 {
    match d {
        Decoder::Gzip(x) => x.get_ref().get_ref().n,
        Decoder::Bzip2(x) => x.get_ref().get_ref().n,
        Decoder::Xz(x) => x.get_ref().get_ref().n,
        Decoder::Zstd(x) => x.get_ref().get_ref().n,
    }
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(x) => x.read(buf),
            Decoder::Bzip2(x) => x.read(buf),
            Decoder::Xz(x) => x.read(buf),
            Decoder::Zstd(x) => x.read(buf),
        }
    }
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

fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<()> {
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

/// Extends the disk image to `new_len` bytes: the backup GPT moves to the
/// new end and partition 9 (which must be the last one) grows to the last
/// usable sector. Other partitions, GUIDs and names are untouched.
pub fn grow_disk(image: &Path, new_len: u64) -> Result<RootPartition> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {} to grow it", image.display()))?;
    let old_len = f.metadata()?.len();
    if new_len <= old_len {
        bail!(
            "cannot shrink {} from {old_len} to {new_len} bytes",
            image.display()
        );
    }
    let mut gpt = GPT::find_from(&mut f)
        .with_context(|| format!("reading the GPT of {}", image.display()))?;
    let ss = gpt.sector_size;
    let p9_start = gpt[ROOT_PARTITION].starting_lba;
    if let Some((n, p)) = gpt
        .iter()
        .find(|(n, p)| p.is_used() && *n != ROOT_PARTITION && p.starting_lba > p9_start)
    {
        bail!(
            "partition {n} ({:?}) lies after ROOT, so ROOT cannot grow at the end of the disk",
            p.partition_name.as_str()
        );
    }
    let old_backup = gpt.header.backup_lba;
    f.set_len(new_len.div_ceil(ss) * ss)
        .with_context(|| format!("extending {}", image.display()))?;
    gpt.header
        .update_from(&mut f, ss)
        .context("moving the backup GPT to the new end")?;
    gpt[ROOT_PARTITION].ending_lba = gpt.header.last_usable_lba;
    gpt.write_into(&mut f).context("writing the grown GPT")?;
    // The old backup header is now inside ROOT: blank it so that no tool
    // mistakes it for a partition table.
    f.write_all_at(&vec![0u8; ss as usize], old_backup * ss)
        .context("clearing the old backup GPT header")?;
    // The protective MBR's partition covers the whole disk.
    let mut mbr = [0u8; 512];
    f.read_exact_at(&mut mbr, 0)
        .context("reading the protective MBR")?;
    if mbr[510..512] == [0x55, 0xaa] && mbr[446 + 4] == 0xee {
        let sectors = (new_len / ss - 1).min(u32::MAX as u64) as u32;
        f.write_all_at(&sectors.to_le_bytes(), 446 + 12)
            .context("updating the protective MBR")?;
    }
    f.sync_all().context("syncing the grown image")?;
    drop(f);
    locate_root(image)
}

/// How the disk may grow when the data does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grow {
    /// As much as needed, plus headroom.
    Auto,
    /// Never: fail and say how much is missing.
    No,
    /// To this disk size in bytes.
    To(u64),
    /// By this many bytes.
    By(u64),
}

/// Parses `16G`, `512M`, `4096` (bytes), with K/M/G/T as powers of 1024.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size like 16G, 512M or 4096"))?;
    let mult: u64 = match unit
        .trim_end_matches(['B', 'b', 'i'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => bail!("{s:?}: unknown size unit {unit:?} (use K, M, G or T)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("{s:?} is too large"))
}

impl std::str::FromStr for Grow {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Grow> {
        Ok(match s {
            "auto" => Grow::Auto,
            "no" => Grow::No,
            s if s.starts_with('+') => Grow::By(parse_size(&s[1..])?),
            s => Grow::To(parse_size(s)?),
        })
    }
}

/// The image being written and where ROOT is in it.
pub struct Prepared {
    /// The output being made (None: --in-place).
    pub output: Option<Output>,
    /// The raw image file to write into.
    pub image: PathBuf,
    pub root: RootPartition,
}

/// Checks the input and makes the raw image to write into: `disk` itself
/// (`output` None, --in-place), or a sparse copy at `output`
/// (decompressed, or converted from qcow2/vmdk and back unless `raw_out`).
pub fn prepare(
    disk: &Path,
    output: Option<&Path>,
    raw_out: bool,
    cancel: Option<&AtomicBool>,
) -> Result<Prepared> {
    let format = Format::detect(disk)?;
    let check = |image: &Path| -> Result<RootPartition> {
        let root = locate_root(image)?;
        crate::ext4::inspect(image, root.offset, ROOT_NAME)
            .with_context(|| format!("checking partition 9 of {}", disk.display()))?;
        Ok(root)
    };
    if format == Format::Raw {
        check(disk)?;
    }
    let Some(path) = output else {
        if format != Format::Raw {
            bail!(
                "{} is a {format:?} image: it cannot be modified in place; write a new image with -o OUTPUT",
                disk.display()
            );
        }
        let root = check(disk)?;
        return Ok(Prepared {
            output: None,
            image: disk.to_path_buf(),
            root,
        });
    };
    let out = if format.qemu_name().is_some() {
        eprintln!(
            "converting {} from {format:?} to raw with qemu-img ...",
            disk.display()
        );
        convert_to_raw(disk, path, format, (!raw_out).then_some(format))?
    } else {
        let label = if format.is_compressed() {
            "decompressing image"
        } else {
            "copying image"
        };
        let mut bar = crate::progress::Bar::bytes(label, fs::metadata(disk).ok().map(|m| m.len()));
        let out = sparse_copy(disk, path, cancel, |d, _| bar.set(d))?;
        bar.finish();
        out
    };
    let root = check(out.working_path())?;
    Ok(Prepared {
        image: out.working_path().to_path_buf(),
        output: Some(out),
        root,
    })
}

/// How the image was grown.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct GrowReport {
    pub disk_bytes_before: u64,
    pub disk_bytes_after: u64,
    pub root_bytes_before: u64,
    pub root_bytes_after: u64,
}

impl std::fmt::Display for GrowReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use indicatif::HumanBytes;
        write!(
            f,
            "grew the image from {} to {} and ROOT from {} to {}",
            HumanBytes(self.disk_bytes_before),
            HumanBytes(self.disk_bytes_after),
            HumanBytes(self.root_bytes_before),
            HumanBytes(self.root_bytes_after)
        )
    }
}

fn mib(b: u64) -> String {
    format!("{} MiB", b.div_ceil(1 << 20))
}

/// Makes sure ROOT has room for `need` (when known), growing the image,
/// partition 9 and the filesystem as `grow` allows.
pub fn ensure_room(
    prepared: &mut Prepared,
    need: Option<crate::ext4::Need>,
    grow: Grow,
    headroom: Option<u64>,
) -> Result<Option<GrowReport>> {
    let image = prepared.image.clone();
    let fs = crate::ext4::inspect(&image, prepared.root.offset, ROOT_NAME)?;
    let bs = fs.block_size;
    let missing_blocks = need.map_or(0, |n| {
        let by_blocks = n.blocks.saturating_sub(fs.free_blocks);
        // New blocks bring inodes in the filesystem's ratio.
        let by_inodes = n
            .inodes
            .saturating_sub(fs.free_inodes)
            .saturating_mul(fs.blocks)
            .div_ceil(fs.inodes.max(1));
        by_blocks.max(by_inodes)
    });
    let disk_len = fs::metadata(&image)?.len();
    let new_len = match grow {
        Grow::No | Grow::Auto if missing_blocks == 0 => return Ok(None),
        Grow::No => {
            let n = need.unwrap_or_default();
            bail!(
                "ROOT is too small: the data needs {} in {} inodes, ROOT has {} and {} inodes free: {} missing. Use --grow auto (the default) or --grow SIZE",
                mib(n.blocks * bs),
                n.inodes,
                mib(fs.free_blocks * bs),
                fs.free_inodes,
                mib(missing_blocks * bs)
            );
        }
        Grow::Auto => {
            let data = need.map_or(0, |n| n.blocks * bs);
            let headroom = headroom.unwrap_or((data / 10).max(256 << 20));
            // New block groups spend part of their space on inode tables
            // and bitmaps (over 6% with Flatcar's one inode per 4 KiB).
            let overhead = (fs.inodes * fs.inode_size) as f64 / (fs.blocks * bs) as f64 + 0.01;
            let wanted = (missing_blocks * bs + headroom) as f64 / (1.0 - overhead.min(0.5));
            (disk_len + wanted.ceil() as u64).div_ceil(1 << 20) << 20
        }
        Grow::To(size) if size < disk_len => bail!(
            "--grow {}: the image is already {} bytes; it can only grow",
            size,
            disk_len
        ),
        Grow::To(size) if size == disk_len => return Ok(None),
        Grow::To(size) => size,
        Grow::By(0) => return Ok(None),
        Grow::By(d) => disk_len + d,
    };
    let before = prepared.root;
    eprintln!(
        "growing the image from {} to {} to make room in ROOT ...",
        mib(disk_len),
        mib(new_len)
    );
    let root = grow_disk(&image, new_len)?;
    resize_root(&image, root, before.size, bs)?;
    prepared.root = root;
    let report = GrowReport {
        disk_bytes_before: disk_len,
        disk_bytes_after: fs::metadata(&image)?.len(),
        root_bytes_before: before.size,
        root_bytes_after: root.size,
    };
    let after = crate::ext4::inspect(&image, root.offset, ROOT_NAME)?;
    if after.uuid != fs.uuid {
        bail!("growing ROOT changed its UUID");
    }
    if let Some(n) = need {
        if n.blocks > after.free_blocks || n.inodes > after.free_inodes {
            bail!(
                "even grown to {}, ROOT has only {} free, the data needs {}",
                mib(new_len),
                mib(after.free_blocks * bs),
                mib(n.blocks * bs)
            );
        }
    }
    Ok(Some(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_form() {
        // Flatcar ROOT's type GUID as its bytes lie on disk.
        let g = [
            0x41, 0xDD, 0x84, 0x38, 0x82, 0x85, 0x04, 0x44, 0xB9, 0xA8, 0xE9, 0xB8, 0x4F, 0x2D,
            0xF5, 0x0E,
        ];
        assert_eq!(guid_to_string(&g), ROOT_TYPE_GUID);
    }

    #[test]
    fn sizes_and_grow_modes() {
        assert_eq!(parse_size("16G").unwrap(), 16 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12X").is_err());
        assert_eq!("auto".parse::<Grow>().unwrap(), Grow::Auto);
        assert_eq!("no".parse::<Grow>().unwrap(), Grow::No);
        assert_eq!("+4G".parse::<Grow>().unwrap(), Grow::By(4 << 30));
        assert_eq!("16G".parse::<Grow>().unwrap(), Grow::To(16 << 30));
    }
}
