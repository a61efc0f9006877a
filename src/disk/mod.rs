//! The disk image: finding Flatcar's ROOT partition in its GPT, making the
//! output file (published only when complete), input formats (`copy`) and
//! growing (`grow`), and the platform it is built for (`esp`).

pub mod btrfs;
mod btrfs_xattr;
mod copy;
pub(crate) mod esp;
pub mod ext4;
mod grow;
pub mod layout;
pub mod vfat;

pub use copy::{convert_to_raw, sparse_copy, Format};
pub use grow::{ensure_room, grow_disk, parse_size, Grow, GrowReport};
pub use layout::{Boot, Layout, Partition};

use std::fs;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

use anyhow::{bail, Context, Result};

/// Flatcar's ROOT label (GPT name and ext4 label).
pub const ROOT_NAME: &str = layout::ROOT_LABEL;

/// Where ROOT lies in the disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootPartition {
    /// Byte offset of the partition's first byte.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The most partition entries a GPT header may declare here (Flatcar's
/// has 128, the usual number; UEFI asks for at least 16 KiB of entries).
pub const MAX_GPT_ENTRIES: u32 = 16384;

/// Refuses a GPT whose header declares more than [`MAX_GPT_ENTRIES`]
/// partition entries, before gptman reads it: gptman reserves memory for
/// every declared entry (4 billion entries: hundreds of GiB, an abort) and
/// reads them one by one. Checks the headers gptman would read (primary
/// and backup, 512- and 4096-byte sectors); `Ok(Some(why))` when one is
/// refused.
pub fn gpt_too_large<R: std::io::Read + std::io::Seek + ?Sized>(
    r: &mut R,
) -> std::io::Result<Option<String>> {
    use std::io::SeekFrom;
    let len = r.seek(SeekFrom::End(0))?;
    for ss in [512u64, 4096] {
        if len < ss {
            continue;
        }
        for (at, which) in [(ss, "primary"), ((len / ss - 1) * ss, "backup")] {
            r.seek(SeekFrom::Start(at))?;
            let mut h = [0u8; 92];
            match r.read_exact(&mut h) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => continue,
                Err(e) => return Err(e),
                Ok(()) if &h[..8] != b"EFI PART" => continue,
                Ok(()) => {}
            }
            let entries = u32::from_le_bytes([h[80], h[81], h[82], h[83]]);
            if entries > MAX_GPT_ENTRIES {
                return Ok(Some(format!(
                    "the {which} GPT header declares {entries} partition entries \
                     (at most {MAX_GPT_ENTRIES} are read): a damaged partition table"
                )));
            }
        }
    }
    r.seek(SeekFrom::Start(0))?;
    Ok(None)
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

/// Where ROOT lies in `image`, found by its GPT label and type
/// ([`layout`]).
pub fn locate_root(image: &Path) -> Result<RootPartition> {
    let root = Layout::read(image)?.root;
    Ok(RootPartition {
        offset: root.offset,
        size: root.size,
    })
}

/// An output file being made: a hidden temporary next to the final path,
/// renamed into place by [`Output::publish`] and removed if dropped before.
pub struct Output {
    tmp: tempfile::TempPath,
    path: PathBuf,
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
    pub fn publish(self) -> Result<()> {
        let Output { tmp, path, convert } = self;
        let done = match convert.and_then(Format::qemu_name) {
            Some(format) => {
                let converted = copy::hidden_temp(&path, "partial")?.into_temp_path();
                copy::qemu_img(&[
                    "convert".as_ref(),
                    "-f".as_ref(),
                    "raw".as_ref(),
                    "-O".as_ref(),
                    format.as_ref(),
                    tmp.as_os_str(),
                    converted.as_os_str(),
                ])?;
                converted
            }
            None => tmp,
        };
        done.persist(&path)
            .with_context(|| format!("renaming the finished image to {}", path.display()))?;
        Ok(())
    }
}

/// The file a run writes into ROOT before it changes anything in the
/// image, and removes once everything it wrote is in place: a ROOT that
/// has it was left unfinished (the tool was killed, the machine lost
/// power, or a run failed part way through writing).
pub const UNFINISHED: &str = "/.flatcar-preload-unfinished";

/// What a run does with a ROOT that an interrupted run left unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfinished {
    /// Refuses to write into it (the default).
    Refuse,
    /// Writes into it anyway, saying so (`--force`).
    Force,
    /// Only reads it (`inspect`, `verify` report the mark).
    Read,
}

impl Unfinished {
    /// For a run that writes: `--force` given or not.
    pub fn writing(force: bool) -> Unfinished {
        match force {
            true => Unfinished::Force,
            false => Unfinished::Refuse,
        }
    }
}

/// What the mark of an unfinished run in `fs` (ROOT) says, if it is there.
pub fn unfinished(fs: &dyn crate::fsread::FsRead) -> Result<Option<String>> {
    if fs.stat(UNFINISHED.as_bytes())?.is_none() {
        return Ok(None);
    }
    let text = fs.read_all(UNFINISHED.as_bytes())?;
    Ok(Some(String::from_utf8_lossy(&text).trim().to_string()))
}

/// The image being written and where ROOT is in it.
pub struct Prepared {
    /// The output being made (None: --in-place).
    pub output: Option<Output>,
    /// The raw image file to write into.
    pub image: PathBuf,
    pub root: RootPartition,
    /// Its partitions, read once from its GPT (again only after growing).
    pub layout: Layout,
    /// Whether ROOT carries the mark of this run ([`UNFINISHED`]).
    marked: bool,
}

/// What `unpack` and `populate` both do with an output: [`prepare`] it,
/// measure what will be written in ROOT's blocks ([`Prepared::block_size`]),
/// make room ([`ensure_room`]), write, and [`Prepared::publish`].
impl Prepared {
    fn new(output: Option<Output>, image: PathBuf, layout: Layout) -> Prepared {
        Prepared {
            output,
            image,
            root: RootPartition {
                offset: layout.root.offset,
                size: layout.root.size,
            },
            layout,
            marked: false,
        }
    }

    /// ROOT's filesystem in the image being written.
    pub fn fs(&self) -> crate::disk::ext4::Root {
        crate::disk::ext4::Root::new(&self.image, self.root.offset)
    }

    /// ROOT's block size, the unit what is written is measured in.
    pub fn block_size(&self) -> Result<u64> {
        Ok(self.fs().open_read()?.inspect(ROOT_NAME)?.block_size)
    }

    /// Marks ROOT unfinished ([`UNFINISHED`]), written through before
    /// anything else is changed (growing included): until
    /// [`Prepared::publish`] removes it, a run killed at any moment leaves
    /// either the image as it was or the mark. Once per run. An OUTPUT
    /// being made needs none: it has a temporary name until published,
    /// which is all a killed run leaves; and the mark's freed block would
    /// keep the run's pid and time in the image shipped.
    pub fn begin_writing(&mut self) -> Result<()> {
        if self.marked || self.output.is_some() {
            return Ok(());
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let text = format!(
            "flatcar-preload {} {} (pid {}) began writing into this ROOT at {since} (seconds since 1970) \
             and did not finish\n",
            env!("CARGO_PKG_VERSION"),
            std::env::args().nth(1).unwrap_or_default(),
            std::process::id(),
        );
        let attrs = crate::tar::Attrs::root_owned(0o600);
        let mut fs = self.fs().open_write(None)?;
        let written = fs.write_file(UNFINISHED, text.as_bytes(), &attrs);
        fs.close_after(written).with_context(|| {
            format!("marking ROOT of {} as being written", self.image.display())
        })?;
        self.marked = true;
        Ok(())
    }

    /// Removes the mark of this run, re-reads ROOT (what it holds once
    /// written) and moves the output to its name (converted back to
    /// qcow2/vmdk when it came from there). On failure the output is
    /// removed; in place, the disk holds what was written, marked
    /// unfinished.
    pub fn publish(self) -> Result<crate::disk::ext4::FsSummary> {
        if self.marked {
            let mut fs = self.fs().open_write(None)?;
            let removed = fs.remove_tree(UNFINISHED);
            fs.close_after(removed)
                .context("removing the mark of an unfinished run from ROOT")?;
        }
        let fs = (self.fs().open_read().and_then(|fs| fs.inspect(ROOT_NAME)))
            .context("re-reading ROOT after writing")?;
        if let Some(out) = self.output {
            out.publish()?;
        }
        Ok(fs)
    }
}

/// A disk image opened and understood once: its format and, for a raw
/// image, its layout (the partitions by GPT type and label; ROOT checked
/// readable, and writable when asked). The phases are handed this value;
/// a compressed or qcow2/vmdk image is understood once converted
/// ([`prepare`] reads the copy's layout).
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub format: Format,
    /// A raw image's layout (None: compressed or qcow2/vmdk).
    pub layout: Option<Layout>,
    unfinished: Unfinished,
}

impl Disk {
    /// Checks `path` before anything is written. A raw image must hold
    /// Flatcar's ROOT; other formats are checked once converted, and
    /// cannot be modified in place.
    pub fn open(path: &Path, in_place: bool, unfinished: Unfinished) -> Result<Disk> {
        let format = Format::detect(path)?;
        if format != Format::Raw && in_place {
            bail!(
                "{} is a {format} image: it cannot be modified in place; write a new image with -o OUTPUT",
                path.display()
            );
        }
        let layout = match format {
            Format::Raw => Some(check_root(path, path, unfinished)?),
            _ => None,
        };
        Ok(Disk {
            path: path.to_path_buf(),
            format,
            layout,
            unfinished,
        })
    }

    /// The platform the image is built for, from the EFI loader on its
    /// ESP (`Ok(Err(why))` when it cannot tell; see [`esp`]).
    pub fn platform(&self) -> Result<std::result::Result<crate::platform::Platform, String>> {
        esp::detect_platform_as(&self.path, self.format)
    }
}

/// Locates ROOT in `image` and checks that it may be read, and written
/// when `unfinished` says so.
fn check_root(image: &Path, disk: &Path, unfinished: Unfinished) -> Result<Layout> {
    let layout = Layout::read(image)?;
    let mark = crate::disk::ext4::Root::new(image, layout.root.offset)
        .open_read()
        .and_then(|fs| {
            fs.inspect(ROOT_NAME)?;
            self::unfinished(&fs)
        })
        .with_context(|| format!("checking ROOT of {}", disk.display()))?;
    match (mark, unfinished) {
        (Some(said), Unfinished::Refuse) => bail!(
            "ROOT of {} was left unfinished by an interrupted run ({said}): what it holds may be \
             half-written. Start again from the image it was made from, or pass --force to write \
             into it anyway (a successful run removes the mark; what the interrupted run wrote \
             stays)",
            disk.display()
        ),
        // Said once: the input is checked again once copied.
        (Some(_), Unfinished::Force) if image == disk => eprintln!(
            "warning: ROOT of {} was left unfinished by an interrupted run; writing into it anyway (--force)",
            disk.display()
        ),
        _ => {}
    }
    Ok(layout)
}

/// Checks the input and makes the raw image to write into: `disk` itself
/// (`output` None, --in-place), or a sparse copy at `output`
/// (decompressed, or converted from qcow2/vmdk and back unless `raw_out`).
pub fn prepare(
    opened: &Disk,
    output: Option<&Path>,
    raw_out: bool,
    cancel: Option<&CancellationToken>,
) -> Result<Prepared> {
    let (disk, format, unfinished) = (opened.path.as_path(), opened.format, opened.unfinished);
    let Some(path) = output else {
        let layout = opened.layout.clone().with_context(|| {
            format!(
                "{} is a {format} image: it cannot be modified in place",
                disk.display()
            )
        })?;
        return Ok(Prepared::new(None, disk.to_path_buf(), layout));
    };
    let out = if format.qemu_name().is_some() {
        eprintln!(
            "converting {} from {format} to raw with qemu-img ...",
            disk.display()
        );
        convert_to_raw(disk, path, format, (!raw_out).then_some(format))?
    } else {
        let label = if format.is_compressed() {
            "decompressing image"
        } else {
            "copying image"
        };
        if !format.is_compressed() {
            use std::os::unix::fs::MetadataExt;
            let md = fs::metadata(disk).with_context(|| format!("reading {}", disk.display()))?;
            let what = format!("the copy of {}", disk.display());
            crate::hostfs::check_room(path, md.blocks() * 512, &what)?;
        }
        let mut bar = crate::progress::Bar::bytes(label, fs::metadata(disk).ok().map(|m| m.len()));
        let out = sparse_copy(disk, path, cancel, |d, _| bar.set(d))?;
        bar.finish();
        out
    };
    // The input was checked: a compressed one only now, a raw one again.
    let layout = check_root(out.working_path(), disk, unfinished)?;
    let image = out.working_path().to_path_buf();
    Ok(Prepared::new(Some(out), image, layout))
}

/// A disk image opened for reading its ROOT: in place when raw, else a
/// raw copy (decompressed or converted) in a private temporary directory,
/// removed when this is dropped. Nothing of `disk` is written.
pub struct ForReading {
    /// The raw image and where ROOT is in it.
    pub prepared: Prepared,
    _dir: Option<tempfile::TempDir>,
}

/// Opens `disk` (any format `populate` takes) for reading its ROOT.
pub fn open_for_reading(disk: &Path) -> Result<ForReading> {
    let opened = Disk::open(disk, false, Unfinished::Read)?;
    if let Some(layout) = &opened.layout {
        return Ok(ForReading {
            prepared: Prepared::new(None, disk.to_path_buf(), layout.clone()),
            _dir: None,
        });
    }
    let format = opened.format;
    let dir = tempfile::Builder::new()
        .prefix("flatcar-preload-read-")
        .tempdir()
        .context("creating a private directory for a raw copy of the image")?;
    eprintln!(
        "{} is a {format} image: reading it through a raw copy in {}",
        disk.display(),
        dir.path().display()
    );
    let raw = dir.path().join("raw.bin");
    let prepared = prepare(&opened, Some(&raw), true, None)?;
    Ok(ForReading {
        prepared,
        _dir: Some(dir),
    })
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
        assert_eq!(guid_to_string(&g), layout::FLATCAR_RESIZE);
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
