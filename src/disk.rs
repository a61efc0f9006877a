//! The disk image: finding Flatcar's ROOT partition in its GPT, and making
//! the output file (a sparse copy, published only when complete).

use std::fs::{self, File, OpenOptions};
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
}

impl Output {
    /// The file to write into until [`Output::publish`].
    pub fn working_path(&self) -> &Path {
        &self.tmp
    }

    /// Moves the finished file to its final name.
    pub fn publish(mut self) -> Result<()> {
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

/// Copies `src` to a temporary next to `dst`, keeping holes and turning
/// all-zero runs into holes. `progress` is called with bytes done so far.
pub fn sparse_copy(
    src: &Path,
    dst: &Path,
    cancel: Option<&AtomicBool>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Output> {
    let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = input
        .metadata()
        .with_context(|| format!("reading the size of {}", src.display()))?
        .len();
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
    tmp_name.push(format!(".partial-{}", std::process::id()));
    let tmp = dst.with_file_name(tmp_name);
    let out = Output {
        tmp: tmp.clone(),
        path: dst.to_path_buf(),
        published: false,
    };
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(&input, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            // No SEEK_DATA support: treat everything as data.
            Err(_) => pos,
        };
        let hole = rustix::fs::seek(&input, rustix::fs::SeekFrom::Hole(data))
            .unwrap_or(len)
            .min(len);
        let mut at = data;
        while at < hole {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                bail!("interrupted");
            }
            let n = ((hole - at) as usize).min(COPY_CHUNK);
            input
                .read_exact_at(&mut buf[..n], at)
                .with_context(|| format!("reading {} at byte {at}", src.display()))?;
            if buf[..n].iter().any(|&b| b != 0) {
                output
                    .write_all_at(&buf[..n], at)
                    .with_context(|| format!("writing {}", tmp.display()))?;
            }
            at += n as u64;
            progress(at, len);
        }
        pos = hole;
    }
    output
        .set_len(len)
        .with_context(|| format!("setting the size of {}", tmp.display()))?;
    progress(len, len);
    Ok(out)
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
}
