//! Growing the image, ROOT's partition and filesystem when the data does not fit.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use gptman::GPT;

use super::copy::copy_range;
use super::{Layout, Prepared, RootPartition, ROOT_NAME};

/// Extends the disk image to `new_len` bytes: the backup GPT moves to the
/// new end and ROOT's partition (which must be the last one) grows to the last
/// usable sector. Other partitions, GUIDs and names are untouched.
pub fn grow_disk(image: &Path, new_len: u64) -> Result<Layout> {
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
    if let Some(why) = super::gpt_too_large(&mut f)
        .with_context(|| format!("reading the GPT of {}", image.display()))?
    {
        bail!("{}: {why}", image.display());
    }
    let mut gpt = GPT::find_from(&mut f)
        .with_context(|| format!("reading the GPT of {}", image.display()))?;
    let ss = gpt.sector_size;
    let root = Layout::of(&gpt, old_len, &image.display().to_string())?
        .root
        .number;
    let root_start = gpt[root].starting_lba;
    if let Some((n, p)) = gpt
        .iter()
        .find(|(n, p)| p.is_used() && *n != root && p.starting_lba > root_start)
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
    gpt[root].ending_lba = gpt.header.last_usable_lba;
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
    Layout::read(image)
}

/// Grows the filesystem of partition `root` (already grown) to fill it.
/// resize2fs truncates a regular file to the filesystem's size, ignoring
/// `?offset=`, which would cut the end of the disk image off; so it works
/// on a sparse copy of the partition that is copied back.
fn resize_root(image: &Path, root: RootPartition, old_size: u64, block_size: u64) -> Result<()> {
    let (part, tmp) = super::copy::hidden_temp(image, "root")?.into_parts();
    let img = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    copy_range(&img, root.offset, &part, 0, old_size, None, |_| {})?;
    part.set_len(old_size)
        .with_context(|| format!("setting the size of {}", tmp.display()))?;
    let blocks = root.size / block_size;
    crate::disk::ext4::resize(&crate::disk::ext4::Root::new(&tmp, 0), blocks)?;
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
/// ROOT's partition and filesystem as `grow` allows.
pub fn ensure_room(
    prepared: &mut Prepared,
    need: Option<crate::disk::ext4::Need>,
    grow: Grow,
    headroom: Option<u64>,
) -> Result<Option<GrowReport>> {
    let image = prepared.image.clone();
    let fs = prepared.fs().open_read()?.inspect(ROOT_NAME)?;
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
    let disk_len = fs::metadata(&image)
        .with_context(|| format!("reading the size of {}", image.display()))?
        .len();
    // What the data allocates on the filesystem holding the image: ROOT's
    // free blocks that are holes in it get written (growing adds holes).
    if let Some(n) = need {
        let root = prepared.root;
        let holes = crate::hostfs::hole_bytes(&image, root.offset, root.offset + root.size)?;
        let data = (n.blocks * bs).min(holes + missing_blocks * bs);
        crate::hostfs::check_room(&image, data, "writing the data into ROOT")?;
    }
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
    let layout = grow_disk(&image, new_len)?;
    let root = RootPartition {
        offset: layout.root.offset,
        size: layout.root.size,
    };
    // Half grown: the partition is, its filesystem not yet.
    #[cfg(feature = "test-hooks")]
    crate::hooks::pause_until_killed("grow");
    resize_root(&image, root, before.size, bs)?;
    prepared.root = root;
    prepared.layout = layout;
    let report = GrowReport {
        disk_bytes_before: disk_len,
        disk_bytes_after: fs::metadata(&image)
            .with_context(|| format!("reading the size of {}", image.display()))?
            .len(),
        root_bytes_before: before.size,
        root_bytes_after: root.size,
    };
    let after = prepared.fs().open_read()?.inspect(ROOT_NAME)?;
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
