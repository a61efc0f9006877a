//! Reads a tar stream entry by entry (never the whole archive) and hands
//! each entry to the [`TreeWriter`], with every PAX `SCHILY.xattr.*` record.

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};

use super::writer::{Entry, Kind, Stats, TreeWriter};
use crate::tar::{Archive, Entry as TarEntry, EntryType};

/// Writes every entry of the tar stream `input` through `writer`.
pub fn write_tar(input: impl Read, writer: &mut TreeWriter<'_>) -> Result<Stats> {
    let mut archive = Archive::new(input);
    while let Some(entry) = archive.next_entry().context("reading the archive")? {
        let TarEntry { meta, mut data } = entry;
        let ctx = || format!("archive entry {:?}", meta.show());
        let to_u32 = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| anyhow!("{}: {what} {v} does not fit in 32 bits", ctx()))
        };
        let uid = to_u32(meta.uid, "uid")?;
        let gid = to_u32(meta.gid, "gid")?;
        let need_link = || {
            meta.link
                .clone()
                .ok_or_else(|| anyhow!("{}: no link target", ctx()))
        };
        let (major, minor) = meta.dev;
        let kind = match meta.kind {
            EntryType::Regular | EntryType::Continuous => Kind::File {
                size: meta.size,
                data: &mut data as &mut dyn Read,
            },
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink {
                target: need_link()?,
            },
            EntryType::Link => Kind::HardLink {
                target: need_link()?,
            },
            EntryType::Char => Kind::Char { major, minor },
            EntryType::Block => Kind::Block { major, minor },
            EntryType::Fifo => Kind::Fifo,
            other => bail!("{}: unsupported tar entry type {:?}", ctx(), other),
        };
        for (name, _) in &meta.xattrs {
            check_xattr_name(name).with_context(ctx)?;
        }
        writer.put(Entry {
            path: meta.path,
            kind,
            perm: meta.mode,
            uid,
            gid,
            mtime: meta.mtime,
            mtime_nsec: meta.mtime_nsec,
            xattrs: meta.xattrs,
        })?;
    }
    Ok(writer.stats())
}

/// The xattr namespaces Linux (and ext4) has.
const XATTR_NAMESPACES: &[&[u8]] = &[b"user.", b"trusted.", b"security.", b"system."];

/// Refuses an xattr that Linux could not hold: outside its namespaces, an
/// empty name after the namespace, or one longer than ext4 stores (255
/// bytes after the prefix).
fn check_xattr_name(name: &[u8]) -> Result<()> {
    let rest = XATTR_NAMESPACES
        .iter()
        .find_map(|ns| name.strip_prefix(*ns));
    match rest {
        Some(r) if !r.is_empty() && r.len() <= 255 && !r.contains(&0) => Ok(()),
        _ => bail!(
            "extended attribute {:?} is not one Linux can hold (a name in user., trusted., security. or system., at most 255 bytes after it)",
            String::from_utf8_lossy(name)
        ),
    }
}

/// Counts what the archive will take in ext4, from its headers.
pub fn estimate_tar(input: impl Read, block_size: u64) -> Result<super::estimate::Need> {
    estimate_entries(Archive::new(input), block_size)
}

/// The same for an uncompressed tar file, seeking over file data instead
/// of reading it.
pub fn estimate_tar_file(file: std::fs::File, block_size: u64) -> Result<super::estimate::Need> {
    estimate_entries(Archive::seekable(std::io::BufReader::new(file)), block_size)
}

fn estimate_entries<R: Read>(
    mut archive: Archive<R>,
    block_size: u64,
) -> Result<super::estimate::Need> {
    use super::estimate::{Estimator, Item};
    let mut est = Estimator::new(block_size);
    while let Some(entry) = archive.next_entry().context("reading the archive")? {
        let meta = entry.meta;
        let path = super::writer::components(&meta.path)?.join(&b'/');
        let item = match meta.kind {
            EntryType::Directory => Item::Dir,
            EntryType::Regular | EntryType::Continuous => Item::File { size: meta.size },
            EntryType::Symlink => Item::Symlink {
                target_len: meta.link.as_ref().map_or(0, |l| l.len()),
            },
            EntryType::Link => Item::HardLink,
            _ => Item::Other,
        };
        let sizes: Vec<(usize, usize)> = meta
            .xattrs
            .iter()
            .map(|(n, v)| (n.len(), v.len()))
            .collect();
        est.add(&path, item, &sizes);
    }
    Ok(est.finish())
}
