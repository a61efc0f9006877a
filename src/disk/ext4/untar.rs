//! Reads a tar stream entry by entry (never the whole archive) and hands
//! each entry to the [`TreeWriter`], with every PAX `SCHILY.xattr.*` record,
//! after the caller's [`Transform`].

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};

use super::writer::{owner_id, EntryKind, EntryMeta, Keep, Stats, Transform, TreeWriter};
use crate::tar::{Archive, Entry as TarEntry, EntryType};

/// Writes every entry of the tar stream `input` through `writer`, each
/// changed (or left out) by `transform` first.
pub fn write_tar(
    input: impl Read,
    writer: &mut TreeWriter<'_>,
    mut transform: Option<&mut dyn Transform>,
) -> Result<Stats> {
    let mut archive = Archive::new(input);
    while let Some(entry) = archive.next_entry().context("reading the archive")? {
        let TarEntry { meta, mut data } = entry;
        let ctx = || format!("archive entry {:?}", meta.show());
        let uid = owner_id(meta.uid, "uid").with_context(ctx)?;
        let gid = owner_id(meta.gid, "gid").with_context(ctx)?;
        let need_link = || {
            meta.link
                .clone()
                .ok_or_else(|| anyhow!("{}: no link target", ctx()))
        };
        let (major, minor) = meta.dev;
        let kind = match meta.kind {
            EntryType::Regular | EntryType::Continuous => EntryKind::File { size: meta.size },
            EntryType::Directory => EntryKind::Dir,
            EntryType::Symlink => EntryKind::Symlink {
                target: need_link()?,
            },
            EntryType::Link => EntryKind::HardLink {
                target: need_link()?,
            },
            EntryType::Char => EntryKind::Char { major, minor },
            EntryType::Block => EntryKind::Block { major, minor },
            EntryType::Fifo => EntryKind::Fifo,
            other => bail!("{}: unsupported tar entry type {:?}", ctx(), other),
        };
        let mut entry = EntryMeta {
            perm: meta.mode,
            uid,
            gid,
            mtime: meta.mtime,
            mtime_nsec: meta.mtime_nsec,
            xattrs: meta.xattrs.clone(),
            ..EntryMeta::new(meta.path.clone(), kind)
        };
        if let Some(t) = transform.as_deref_mut() {
            if t.entry(&mut entry).with_context(ctx)? == Keep::Skip {
                continue;
            }
            writer
                .make_parents(&entry.path, &mut |p| t.made_dir(p))
                .with_context(ctx)?;
        }
        writer.put(entry, &mut data)?;
    }
    Ok(writer.stats())
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
