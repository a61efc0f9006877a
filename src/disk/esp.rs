//! The platform a Flatcar disk image is built for, read from the EFI loader
//! on its EFI system partition (ESP) without mounting anything and without
//! writing to the disk file.
//!
//! Only what the FAT reader asks for is read: the GPT, the boot sector, the
//! FAT entries of three directories and those directories' entries. Raw
//! images are read in place. Compressed ones are decompressed lazily, only
//! as far as the farthest byte read so far, into a sparse private temporary
//! file; qcow2/vmdk ones are fetched in 4 MiB chunks with `qemu-img dd`
//! (one short process per chunk, a handful in all, instead of converting
//! the whole ESP: Flatcar's is 1 GiB, 128 MiB on older releases).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};

use super::{copy, guid_to_string, Format};
use crate::compress;
use crate::platform::Platform;

/// GPT type GUID of an EFI system partition (Flatcar's p1 "EFI-SYSTEM").
pub(crate) const ESP_TYPE_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// The UEFI removable-media loaders in `EFI/boot` and what they run on.
const LOADERS: &[(&str, &str)] = &[("bootx64.efi", "amd64"), ("bootaa64.efi", "arm64")];

/// Bytes that hold the GPT (header and entries, 512- or 4096-byte sectors).
const GPT_BYTES: u64 = 1 << 20;

/// What is fetched at once from a compressed or qcow2/vmdk image.
const CHUNK: u64 = 4 << 20;

/// The platform a Flatcar disk image is built for, from the EFI loader on
/// its EFI system partition: `EFI/boot/bootx64.efi` -> linux/amd64,
/// `bootaa64.efi` -> linux/arm64 (FAT names are case-insensitive). Read
/// without mounting, with the `fatfs` crate, never writing to the disk file.
///
/// `Ok(Err(reason))` when it cannot tell (no ESP, not FAT, no or both
/// loaders): the caller warns with the reason and falls back. `Err` only for
/// I/O errors on the disk file itself (and a failing decompressor or
/// qemu-img).
pub(crate) fn detect_platform(disk: &Path) -> Result<std::result::Result<Platform, String>> {
    detect_platform_as(disk, Format::detect(disk)?)
}

/// [`detect_platform`] of a disk whose format is known.
pub(crate) fn detect_platform_as(
    disk: &Path,
    format: Format,
) -> Result<std::result::Result<Platform, String>> {
    let mut image = Image::open(disk, format)?;
    detect_in(&mut image)
}

fn detect_in(image: &mut Image<'_>) -> Result<std::result::Result<Platform, String>> {
    let esp = match image.find_esp()? {
        Ok(esp) => esp,
        Err(reason) => return Ok(Err(reason)),
    };
    let volume = Volume {
        image: &mut *image,
        start: esp.0,
        len: esp.1,
        pos: 0,
        budget: READ_BUDGET,
    };
    // fatfs reads an untrusted filesystem: a panic in it means "cannot
    // tell", not a crash of the whole run.
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loaders(volume)))
        .unwrap_or_else(|_| Err("the FAT reader failed on the EFI system partition".to_string()));
    if let Some(e) = image.failure.take() {
        return Err(e);
    }
    let found = match found {
        Ok(found) => found,
        Err(reason) => return Ok(Err(reason)),
    };
    let mut platforms: Vec<(Platform, String)> = Vec::new();
    for name in found {
        let arch = LOADERS
            .iter()
            .find(|(loader, _)| loader.eq_ignore_ascii_case(&name))
            .map(|(_, arch)| *arch);
        if let Some(arch) = arch {
            platforms.push((Platform::new("linux", arch, None), name));
        }
    }
    Ok(match &platforms[..] {
        [] => Err(format!(
            "the EFI system partition has no {} in EFI/boot",
            LOADERS
                .iter()
                .map(|(l, _)| *l)
                .collect::<Vec<_>>()
                .join(" or ")
        )),
        [(p, _)] => Ok(p.clone()),
        many => Err(format!(
            "the EFI system partition has loaders for more than one platform in EFI/boot: {}",
            many.iter()
                .map(|(p, name)| format!("{name} ({p})"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    })
}

/// The names of the files in `EFI/boot` of the FAT filesystem in `volume`
/// (directory names matched without case, as FAT does).
fn loaders(volume: Volume<'_, '_>) -> std::result::Result<Vec<String>, String> {
    let fs = fatfs::FileSystem::new(volume, fatfs::FsOptions::new())
        .map_err(|e| format!("the EFI system partition holds no FAT filesystem ({e})"))?;
    let root = fs.root_dir();
    let efi = subdir(&root, "EFI")?.ok_or("the EFI system partition has no EFI directory")?;
    let boot = subdir(&efi, "boot")?.ok_or("the EFI system partition has no EFI/boot directory")?;
    let mut names = Vec::new();
    for entry in boot.iter() {
        let entry =
            entry.map_err(|e| format!("reading EFI/boot on the EFI system partition: {e}"))?;
        if entry.is_file() {
            names.push(entry.file_name());
        }
    }
    Ok(names)
    // Dropping `fs` unmounts: fatfs writes only when something changed (a
    // clean volume stays clean, a dirty flag found at mount is left as it
    // is), and a refused write would only be logged there, not returned.
}

fn subdir<'a, T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'a, T>,
    name: &str,
) -> std::result::Result<Option<fatfs::Dir<'a, T>>, String> {
    for entry in dir.iter() {
        let entry =
            entry.map_err(|e| format!("reading a directory of the EFI system partition: {e}"))?;
        if entry.is_dir() && entry.file_name().eq_ignore_ascii_case(name) {
            return Ok(Some(entry.to_dir()));
        }
    }
    Ok(None)
}

/// Where the bytes of the disk come from.
enum Source {
    /// A raw image: `Image::file` is the disk itself.
    Raw,
    /// A compressed image, decompressed into `Image::file` up to `done`.
    Stream {
        reader: Box<dyn Read + Send>,
        done: u64,
        ended: bool,
    },
    /// A qcow2 or vmdk image: chunks copied into `Image::file` by qemu-img.
    Qemu {
        format: &'static str,
        fetched: HashSet<u64>,
        scratch: tempfile::TempDir,
    },
}

/// The disk image as a raw byte array, read at offsets.
struct Image<'a> {
    path: &'a Path,
    /// The disk file (raw) or a sparse private staging file.
    file: File,
    source: Source,
    /// The first error from the disk file, the decompressor or qemu-img:
    /// fatfs only sees an io::Error, the caller gets this.
    failure: Option<anyhow::Error>,
}

impl<'a> Image<'a> {
    fn open(path: &'a Path, format: Format) -> Result<Image<'a>> {
        let disk =
            File::open(path).with_context(|| format!("opening disk image {}", path.display()))?;
        let staging = || {
            tempfile::tempfile().context("creating a temporary file to read the disk image's ESP")
        };
        let (file, source) = match format {
            Format::Raw => (disk, Source::Raw),
            Format::Compressed(_) => {
                let (_, reader) = compress::decompress(disk)
                    .with_context(|| format!("decompressing {}", path.display()))?;
                let source = Source::Stream {
                    reader,
                    done: 0,
                    ended: false,
                };
                (staging()?, source)
            }
            Format::Qcow2 | Format::Vmdk => {
                let source = Source::Qemu {
                    format: format.qemu_name().context("not a qemu-img format")?,
                    fetched: HashSet::new(),
                    scratch: tempfile::tempdir()
                        .context("creating a temporary directory to read the disk image's ESP")?,
                };
                (staging()?, source)
            }
        };
        Ok(Image {
            path,
            file,
            source,
            failure: None,
        })
    }

    /// The byte range of the ESP, or why there is none.
    fn find_esp(&mut self) -> Result<std::result::Result<(u64, u64), String>> {
        let disk_len = match self.source {
            Source::Raw => Some(
                self.file
                    .metadata()
                    .with_context(|| format!("reading the size of {}", self.path.display()))?
                    .len(),
            ),
            _ => None,
        };
        let too_large = |r: &mut dyn ReadSeek| {
            super::gpt_too_large(r).with_context(|| format!("reading {}", self.path.display()))
        };
        let read = match self.source {
            // In place, so that gptman can fall back to the backup GPT.
            Source::Raw => {
                if let Some(why) = too_large(&mut self.file)? {
                    return Ok(Err(why));
                }
                gptman::GPT::find_from(&mut self.file)
            }
            _ => {
                let mut head = vec![0u8; GPT_BYTES as usize];
                let n = self.read_at(&mut head, 0)?;
                head.truncate(n);
                let mut head = Cursor::new(head);
                if let Some(why) = too_large(&mut head)? {
                    return Ok(Err(why));
                }
                gptman::GPT::find_from(&mut head)
            }
        };
        let gpt = match read {
            Ok(gpt) => gpt,
            Err(gptman::Error::Io(e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
                return Err(e).with_context(|| format!("reading {}", self.path.display()))
            }
            Err(e) => {
                return Ok(Err(format!(
                    "the disk image has no valid GPT partition table ({e})"
                )))
            }
        };
        let Some((number, p)) = gpt
            .iter()
            .find(|(_, p)| p.is_used() && guid_to_string(&p.partition_type_guid) == ESP_TYPE_GUID)
        else {
            return Ok(Err(format!(
                "the disk image has no EFI system partition (type {ESP_TYPE_GUID})"
            )));
        };
        let range = p
            .starting_lba
            .checked_mul(gpt.sector_size)
            .and_then(|start| {
                let len = (p.ending_lba.checked_add(1)?)
                    .checked_sub(p.starting_lba)?
                    .checked_mul(gpt.sector_size)?;
                Some((start, len, start.checked_add(len)?))
            });
        let Some((start, len, end)) = range else {
            return Ok(Err(format!(
                "the EFI system partition (partition {number}) has an impossible extent"
            )));
        };
        if disk_len.is_some_and(|l| end > l) {
            return Ok(Err(format!(
                "the EFI system partition (partition {number}) ends past the end of the disk image"
            )));
        }
        Ok(Ok((start, len)))
    }

    /// Reads at `at` (short only at the end of the disk).
    fn read_at(&mut self, buf: &mut [u8], at: u64) -> Result<usize> {
        let end = at + buf.len() as u64;
        match &mut self.source {
            Source::Raw => {}
            Source::Stream {
                reader,
                done,
                ended,
            } => {
                let mut chunk = vec![];
                while *done < end && !*ended {
                    chunk.resize(CHUNK as usize, 0);
                    let n = compress::read_full(reader, &mut chunk)
                        .with_context(|| format!("decompressing {}", self.path.display()))?;
                    stage(&self.file, &chunk[..n], *done)?;
                    *done += n as u64;
                    *ended = n < chunk.len();
                }
            }
            Source::Qemu {
                format,
                fetched,
                scratch,
            } => {
                for k in at / CHUNK..end.div_ceil(CHUNK) {
                    if fetched.insert(k) {
                        fetch_chunk(self.path, format, k, scratch.path(), &self.file)?;
                    }
                }
            }
        }
        let mut n = 0;
        while n < buf.len() {
            match self.file.read_at(&mut buf[n..], at + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", self.path.display()))
                }
            }
        }
        Ok(n)
    }
}

/// Writes the non-zero 64 KiB pieces of `data` at `at` into the staging
/// file and extends it to `at + data.len()` (zero runs stay holes).
fn stage(file: &File, data: &[u8], at: u64) -> Result<()> {
    const PIECE: usize = 64 << 10;
    for (i, piece) in data.chunks(PIECE).enumerate() {
        if piece.iter().any(|&b| b != 0) {
            file.write_all_at(piece, at + (i * PIECE) as u64)
                .context("writing the temporary copy of the disk image's ESP")?;
        }
    }
    let end = at + data.len() as u64;
    let len = file
        .metadata()
        .context("reading the size of the temporary copy of the ESP")?
        .len();
    if len < end {
        file.set_len(end)
            .context("extending the temporary copy of the ESP")?;
    }
    Ok(())
}

/// Copies chunk `k` of a qcow2/vmdk image into the staging file.
fn fetch_chunk(disk: &Path, format: &str, k: u64, scratch: &Path, staging: &File) -> Result<()> {
    let mib = CHUNK >> 20;
    let out = scratch.join("chunk.raw");
    let mut input = std::ffi::OsString::from("if=");
    input.push(disk);
    let mut output = std::ffi::OsString::from("of=");
    output.push(&out);
    // qemu-img dd's count is where it stops, counted from the start like skip.
    copy::qemu_img(&[
        "dd".into(),
        "-f".into(),
        format.into(),
        "-O".into(),
        "raw".into(),
        "bs=1M".into(),
        format!("skip={}", k * mib).into(),
        format!("count={}", (k + 1) * mib).into(),
        input,
        output,
    ] as &[std::ffi::OsString])?;
    let data = std::fs::read(&out).context("reading a chunk qemu-img extracted")?;
    stage(staging, &data, k * CHUNK)
}

/// What a GPT is read from.
trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// What fatfs may read of the ESP in all. Finding the loaders reads the
/// boot sector, the FAT entries of three directories and those directories
/// (kilobytes); a directory whose cluster chain loops would be read
/// forever (fatfs follows the chain), so past this the volume fails.
const READ_BUDGET: u64 = 4 << 20;

/// The ESP as the volume fatfs reads: offsets relative to its start, seeks
/// bounded to its length, no writes, and at most `budget` more bytes read.
struct Volume<'a, 'b> {
    image: &'b mut Image<'a>,
    start: u64,
    len: u64,
    pos: u64,
    budget: u64,
}

impl Read for Volume<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n > 0 && self.budget == 0 {
            return Err(io::Error::other(format!(
                "more than {} MiB read: a damaged FAT (a cluster chain that loops?)",
                READ_BUDGET >> 20
            )));
        }
        let n = n.min(usize::try_from(self.budget).unwrap_or(usize::MAX));
        match self.image.read_at(&mut buf[..n], self.start + self.pos) {
            Ok(k) => {
                self.pos += k as u64;
                self.budget = self.budget.saturating_sub(k as u64);
                Ok(k)
            }
            Err(e) => {
                let text = format!("{e:#}");
                self.image.failure.get_or_insert(e);
                Err(io::Error::other(text))
            }
        }
    }
}

impl Write for Volume<'_, '_> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the disk image is only read to find its platform",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Volume<'_, '_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let to = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match to {
            Some(to) if to <= self.len => {
                self.pos = to;
                Ok(to)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the EFI system partition",
            )),
        }
    }
}

// The fixture ESP writer the integration tests use too.
#[cfg(test)]
#[path = "../../tests/common/esp.rs"]
#[allow(dead_code)]
mod fixture;

#[cfg(test)]
mod tests {
    use super::fixture::{write_esp, Fat};
    use super::*;
    use std::path::PathBuf;

    /// A small GPT disk: p1 the ESP (40 MiB, enough for FAT32 with
    /// 512-byte clusters), p2 a Linux partition, like Flatcar's numbering.
    fn gpt_disk(dir: &Path, esp_type: &str) -> PathBuf {
        let path = dir.join("disk.bin");
        let f = File::create(&path).unwrap();
        f.set_len(48 << 20).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut gpt = gptman::GPT::new_from(&mut f, 512, [1; 16]).unwrap();
        let guid = |s: &str| {
            let h: Vec<u8> = (0..16)
                .map(|i| {
                    let hex: String = s.chars().filter(|c| *c != '-').collect();
                    u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap()
                })
                .collect();
            // On disk the first three fields are little-endian.
            let mut g = [0u8; 16];
            g.copy_from_slice(&h);
            g[0..4].reverse();
            g[4..6].reverse();
            g[6..8].reverse();
            g
        };
        gpt[1] = gptman::GPTPartitionEntry {
            partition_type_guid: guid(esp_type),
            unique_partition_guid: [2; 16],
            starting_lba: 2048,
            ending_lba: 2048 + (40 << 11) - 1,
            attribute_bits: 0,
            partition_name: "EFI-SYSTEM".into(),
        };
        gpt[2] = gptman::GPTPartitionEntry {
            partition_type_guid: guid("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
            unique_partition_guid: [3; 16],
            starting_lba: 2048 + (40 << 11),
            ending_lba: gpt.header.last_usable_lba,
            attribute_bits: 0,
            partition_name: "OEM".into(),
        };
        gpt.write_into(&mut f).unwrap();
        path
    }

    fn esp_disk(dir: &Path, fat: Fat, dirs: (&str, &str), loaders: &[&str]) -> PathBuf {
        let disk = gpt_disk(dir, ESP_TYPE_GUID);
        write_esp(&disk, fat, dirs, loaders, false);
        disk
    }

    fn detect(disk: &Path) -> std::result::Result<String, String> {
        detect_platform(disk)
            .expect("no I/O error")
            .map(|p| p.to_string())
    }

    fn digest(p: &Path) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(p).unwrap()).to_vec()
    }

    #[test]
    fn loaders_name_the_platform_in_any_case() {
        let dir = tempfile::tempdir().unwrap();
        for (fat, dirs, loader, want) in [
            (Fat::Fat32, ("EFI", "boot"), "bootaa64.efi", "linux/arm64"),
            (Fat::Fat32, ("EFI", "boot"), "bootx64.efi", "linux/amd64"),
            (Fat::Fat16, ("efi", "BOOT"), "BOOTAA64.EFI", "linux/arm64"),
            (Fat::Fat16, ("EFI", "Boot"), "BootX64.efi", "linux/amd64"),
        ] {
            let disk = esp_disk(dir.path(), fat, dirs, &[loader]);
            let before = digest(&disk);
            assert_eq!(
                detect(&disk).as_deref(),
                Ok(want),
                "{fat:?} {dirs:?} {loader}"
            );
            assert_eq!(digest(&disk), before, "the disk file changed");
        }
    }

    #[test]
    fn cannot_tell_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let both = esp_disk(
            dir.path(),
            Fat::Auto,
            ("EFI", "boot"),
            &["bootx64.efi", "BOOTAA64.EFI"],
        );
        let err = detect(&both).unwrap_err();
        assert!(
            err.contains("more than one platform")
                && err.contains("bootx64.efi (linux/amd64)")
                && err.contains("BOOTAA64.EFI (linux/arm64)"),
            "{err}"
        );

        let none = esp_disk(dir.path(), Fat::Auto, ("EFI", "boot"), &[]);
        let err = detect(&none).unwrap_err();
        assert!(err.contains("no bootx64.efi or bootaa64.efi"), "{err}");

        let no_boot_dir = esp_disk(dir.path(), Fat::Auto, ("EFI", "grub"), &["bootx64.efi"]);
        let err = detect(&no_boot_dir).unwrap_err();
        assert!(err.contains("no EFI/boot directory"), "{err}");

        // The ESP holds no filesystem, only bytes (as make-disk.sh's marker).
        let not_fat = gpt_disk(dir.path(), ESP_TYPE_GUID);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&not_fat)
            .unwrap();
        f.write_all_at(&b"p1-marker ".repeat(400), 2048 * 512)
            .unwrap();
        let err = detect(&not_fat).unwrap_err();
        assert!(err.contains("holds no FAT filesystem"), "{err}");

        // No partition of the ESP type.
        let no_esp = gpt_disk(dir.path(), "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        let err = detect(&no_esp).unwrap_err();
        assert!(err.contains("no EFI system partition"), "{err}");

        let no_gpt = dir.path().join("plain.bin");
        std::fs::write(&no_gpt, vec![0u8; 3 << 20]).unwrap();
        let err = detect(&no_gpt).unwrap_err();
        assert!(err.contains("no valid GPT"), "{err}");
    }

    #[test]
    fn unreadable_input_is_an_error() {
        let err = detect_platform(Path::new("/nonexistent/disk.bin")).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/disk.bin"),
            "{err:#}"
        );
    }

    #[test]
    fn dirty_volume_is_read_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        for fat in [Fat::Fat16, Fat::Fat32] {
            let disk = gpt_disk(dir.path(), ESP_TYPE_GUID);
            write_esp(&disk, fat, ("EFI", "boot"), &["bootaa64.efi"], true);
            let before = digest(&disk);
            assert_eq!(detect(&disk).as_deref(), Ok("linux/arm64"), "{fat:?}");
            assert_eq!(digest(&disk), before, "{fat:?}: the disk file changed");
        }
    }

    #[test]
    fn the_volume_refuses_writes_and_seeks_outside() {
        let dir = tempfile::tempdir().unwrap();
        let disk = esp_disk(dir.path(), Fat::Auto, ("EFI", "boot"), &["bootx64.efi"]);
        let before = digest(&disk);
        let mut image = Image::open(&disk, Format::Raw).unwrap();
        let mut v = Volume {
            image: &mut image,
            start: 2048 * 512,
            len: 40 << 20,
            pos: 0,
            budget: READ_BUDGET,
        };
        assert!(v.write(b"x").is_err());
        assert!(v.seek(SeekFrom::Start((40 << 20) + 1)).is_err());
        assert_eq!(v.seek(SeekFrom::End(0)).unwrap(), 40 << 20);
        let mut buf = [0u8; 16];
        assert_eq!(v.read(&mut buf).unwrap(), 0, "reads stop at the ESP's end");
        v.seek(SeekFrom::Start(0)).unwrap();
        v.read_exact(&mut buf[..3]).unwrap();
        assert_eq!(
            buf[0], 0xEB,
            "the boot sector's jump, read from the ESP's start"
        );
        drop(image);
        assert_eq!(digest(&disk), before);
    }

    #[test]
    fn compressed_qcow2_and_vmdk_copies_give_the_same_answer() {
        let dir = tempfile::tempdir().unwrap();
        let disk = esp_disk(dir.path(), Fat::Fat32, ("EFI", "boot"), &["bootaa64.efi"]);
        let raw = std::fs::read(&disk).unwrap();
        let gz = dir.path().join("disk.bin.gz");
        let mut enc =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all(&raw).unwrap();
        enc.finish().unwrap();
        let zst = dir.path().join("disk.bin.zst");
        std::fs::write(&zst, zstd::encode_all(&raw[..], 1).unwrap()).unwrap();
        let mut inputs = vec![gz, zst];
        for format in ["qcow2", "vmdk"] {
            let out = dir.path().join(format!("disk.{format}"));
            match std::process::Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", format])
                .arg(&disk)
                .arg(&out)
                .status()
            {
                Ok(st) if st.success() => inputs.push(out),
                _ if std::env::var_os("CI").is_some_and(|v| v == "true") => {
                    panic!("qemu-img convert to {format} failed in CI")
                }
                _ => crate::testing::skipped(
                    &format!("the {format} case"),
                    "qemu-img (qemu-utils) is not usable here",
                ),
            }
        }
        for input in inputs {
            let before = digest(&input);
            // Only the start of the 40 MiB ESP is fetched: the GPT, the
            // boot sector, the FATs and three directories.
            let mut image = Image::open(&input, Format::detect(&input).unwrap()).unwrap();
            let found = detect_in(&mut image).unwrap().map(|p| p.to_string());
            assert_eq!(found.as_deref(), Ok("linux/arm64"), "{}", input.display());
            let staged = match &image.source {
                Source::Stream { done, .. } => *done,
                Source::Qemu { fetched, .. } => fetched.len() as u64 * CHUNK,
                Source::Raw => unreachable!(),
            };
            assert!(
                staged <= 2 * CHUNK,
                "{}: {staged} bytes staged",
                input.display()
            );
            let staged_blocks = {
                use std::os::unix::fs::MetadataExt;
                image.file.metadata().unwrap().blocks() * 512
            };
            assert!(
                staged_blocks < 2 << 20,
                "{}: {staged_blocks} bytes on disk",
                input.display()
            );
            drop(image);

            assert_eq!(
                detect(&input).as_deref(),
                Ok("linux/arm64"),
                "{}",
                input.display()
            );
            assert_eq!(digest(&input), before, "{} changed", input.display());
        }
    }
}
