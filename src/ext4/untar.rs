//! Reads a tar stream entry by entry (never the whole archive) and hands
//! each entry to the [`TreeWriter`], with every PAX `SCHILY.xattr.*` record.

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use tar::{Archive, EntryType};

use super::writer::{Entry, Kind, Stats, TreeWriter};

const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// PAX records that override header fields.
#[derive(Default)]
struct Pax {
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<(i64, u32)>,
}

fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let mut nsec: u32 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    for _ in digits.len()..9 {
        nsec *= 10;
    }
    if s.starts_with('-') && nsec > 0 {
        // -1.25 means 1.25 s before the epoch: -2 s + 0.75 s.
        return Some((secs - 1, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

fn parse_pax<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Pax> {
    let mut pax = Pax::default();
    let Some(exts) = entry.pax_extensions().context("reading PAX records")? else {
        return Ok(pax);
    };
    for ext in exts {
        let ext = ext.context("reading a PAX record")?;
        let (key, value) = (ext.key_bytes(), ext.value_bytes());
        if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
            pax.xattrs.push((name.to_vec(), value.to_vec()));
            continue;
        }
        let num = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
        };
        match key {
            b"uid" => pax.uid = Some(num().ok_or_else(|| anyhow!("bad PAX uid"))?),
            b"gid" => pax.gid = Some(num().ok_or_else(|| anyhow!("bad PAX gid"))?),
            b"mtime" => {
                pax.mtime = Some(parse_pax_time(value).ok_or_else(|| anyhow!("bad PAX mtime"))?)
            }
            _ => {}
        }
    }
    Ok(pax)
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Replaces the content of one file of the archive on the way in.
pub struct Rewrite<'a> {
    /// Path relative to the target, as in the archive without "./".
    pub path: &'a str,
    pub with: &'a dyn Fn(Vec<u8>) -> Result<Vec<u8>>,
}

/// Largest file a [`Rewrite`] may hold in memory.
const REWRITE_MAX: u64 = 64 << 20;

/// Writes every entry of the tar stream `input` through `writer`.
pub fn write_tar(
    input: impl Read,
    writer: &mut TreeWriter<'_>,
    rewrite: Option<&Rewrite<'_>>,
) -> Result<Stats> {
    let mut archive = Archive::new(input);
    let entries = archive.entries().context("reading the archive")?;
    for (n, entry) in entries.enumerate() {
        let mut entry = entry.with_context(|| {
            format!(
                "reading archive entry #{} (is the archive truncated or not a tar?)",
                n + 1
            )
        })?;
        let path = entry.path_bytes().into_owned();
        let ctx = || format!("archive entry {:?}", show(&path));
        let header = entry.header();
        let ty = header.entry_type();
        let perm = header.mode().with_context(ctx)? & 0o7777;
        let uid = header.uid().with_context(ctx)?;
        let gid = header.gid().with_context(ctx)?;
        let mtime = header.mtime().with_context(ctx)?;
        let dev = || -> Result<(u32, u32)> {
            Ok((
                header.device_major().with_context(ctx)?.unwrap_or(0),
                header.device_minor().with_context(ctx)?.unwrap_or(0),
            ))
        };
        let devnums = match ty {
            EntryType::Char | EntryType::Block => dev()?,
            _ => (0, 0),
        };
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let size = entry.size();
        let pax = parse_pax(&mut entry).with_context(ctx)?;
        let to_u32 = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| anyhow!("{}: {what} {v} does not fit in 32 bits", ctx()))
        };
        let uid = pax.uid.map_or_else(|| to_u32(uid, "uid"), Ok)?;
        let gid = pax.gid.map_or_else(|| to_u32(gid, "gid"), Ok)?;
        let (mtime, mtime_nsec) = pax.mtime.unwrap_or((mtime as i64, 0));
        let need_link = || {
            link.clone()
                .ok_or_else(|| anyhow!("{}: no link target", ctx()))
        };
        let rewritten = match rewrite {
            Some(rw)
                if matches!(ty, EntryType::Regular)
                    && size <= REWRITE_MAX
                    && super::writer::components(&path)?.join(&b'/') == rw.path.as_bytes() =>
            {
                let mut old = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut old).with_context(ctx)?;
                Some((rw.with)(old).with_context(ctx)?)
            }
            _ => None,
        };
        let kind = match (ty, &rewritten) {
            (EntryType::Regular, Some(new)) => Kind::File {
                size: new.len() as u64,
                data: &mut &new[..],
            },
            (EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse, _) => Kind::File {
                size,
                data: &mut entry as &mut dyn Read,
            },
            (EntryType::Directory, _) => Kind::Dir,
            (EntryType::Symlink, _) => Kind::Symlink {
                target: need_link()?,
            },
            (EntryType::Link, _) => Kind::HardLink {
                target: need_link()?,
            },
            (EntryType::Char, _) => Kind::Char {
                major: devnums.0,
                minor: devnums.1,
            },
            (EntryType::Block, _) => Kind::Block {
                major: devnums.0,
                minor: devnums.1,
            },
            (EntryType::Fifo, _) => Kind::Fifo,
            (EntryType::XGlobalHeader, _) => continue,
            (other, _) => bail!("{}: unsupported tar entry type {:?}", ctx(), other),
        };
        writer.put(Entry {
            path: path.clone(),
            kind,
            perm,
            uid,
            gid,
            mtime,
            mtime_nsec,
            xattrs: pax.xattrs,
        })?;
    }
    Ok(writer.stats())
}

/// Counts what the archive will take in ext4, from its headers.
pub fn estimate_tar(input: impl Read, block_size: u64) -> Result<super::estimate::Need> {
    let mut archive = Archive::new(input);
    estimate_entries(
        archive.entries().context("reading the archive")?,
        block_size,
    )
}

/// The same for an uncompressed tar file, seeking over file data instead
/// of reading it.
pub fn estimate_tar_file(file: std::fs::File, block_size: u64) -> Result<super::estimate::Need> {
    let mut archive = Archive::new(std::io::BufReader::new(file));
    estimate_entries(
        archive.entries_with_seek().context("reading the archive")?,
        block_size,
    )
}

fn estimate_entries<R: Read>(
    entries: tar::Entries<'_, R>,
    block_size: u64,
) -> Result<super::estimate::Need> {
    use super::estimate::{Estimator, Item};
    let mut est = Estimator::new(block_size);
    for entry in entries {
        let mut entry = entry.context("reading the archive (is it truncated or not a tar?)")?;
        let path = super::writer::components(&entry.path_bytes())?.join(&b'/');
        let ty = entry.header().entry_type();
        let item = match ty {
            EntryType::Directory => Item::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                Item::File { size: entry.size() }
            }
            EntryType::Symlink => Item::Symlink {
                target_len: entry.link_name_bytes().map_or(0, |l| l.len()),
            },
            EntryType::Link => Item::HardLink,
            EntryType::XGlobalHeader => continue,
            _ => Item::Other,
        };
        let pax = parse_pax(&mut entry)?;
        let sizes: Vec<(usize, usize)> =
            pax.xattrs.iter().map(|(n, v)| (n.len(), v.len())).collect();
        est.add(&path, item, &sizes);
    }
    Ok(est.finish())
}

#[cfg(test)]
mod tests {
    use super::parse_pax_time;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1700000000, 0)));
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1700000000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
