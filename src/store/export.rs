//! The one walk that exports a store's tree as a tar stream (through
//! [`crate::tar::Writer`]), or measures
//! what it will take in ext4, with everything overlayfs relies on: owners,
//! modes, hard links, 0:0 whiteout devices and every xattr (as PAX
//! `SCHILY.xattr.*` records), including `trusted.overlay.opaque`, which plain
//! tar, busybox tar and Docker's archive API all drop. What of a tree is
//! written is the backend's: top-level entries to keep and paths to skip,
//! or a [`Plan`] naming each entry.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::disk::ext4::{Estimator, Item, Need};
use crate::fsread::{join, show, FsRead, Kind};
use crate::tar::Device;

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExportStats {
    pub entries: u64,
    pub bytes: u64,
}

fn xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let size = rustix::fs::llistxattr_query(path).map_err(io::Error::from)?;
    if size == 0 {
        return Ok(vec![]);
    }
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut names[..]).map_err(io::Error::from)?;
    let mut out = vec![];
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let len = rustix::fs::lgetxattr_query(path, name).map_err(io::Error::from)?;
        let mut value = vec![0u8; len];
        let got = rustix::fs::lgetxattr(path, name, &mut value[..]).map_err(io::Error::from)?;
        value.truncate(got);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// Walks a tree into a tar stream (or only measures it); the stream
/// format is [`crate::tar::Writer`]'s.
struct Exporter<W: Write> {
    tar: crate::tar::Writer<W>,
    /// When set, entries are only counted (no data is read or written).
    measure: Option<Estimator>,
    /// (dev, ino) of files with several links -> the first path written.
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: ExportStats,
}

impl<W: Write> Exporter<W> {
    /// Writes the entry at `path` as `name`, changed as `how` says.
    fn entry(&mut self, path: &Path, name: &[u8], how: &Written<'_>) -> Result<()> {
        let Written {
            content,
            target,
            times,
        } = *how;
        let md =
            fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let ft = md.file_type();
        if ft.is_socket() {
            return Ok(()); // tar cannot hold sockets; nothing in a store needs one
        }
        if content.is_some() && !ft.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        // A generated file is an inode of its own, whatever the disk's has.
        let linked = content.is_none() && !ft.is_dir() && md.nlink() > 1;
        let size = content.map_or(md.len(), |c| c.len() as u64);
        let attrs =
            xattrs(path).with_context(|| format!("reading xattrs of {}", path.display()))?;
        if let Some(est) = &mut self.measure {
            let item = if linked && self.links.insert((md.dev(), md.ino()), vec![]).is_some() {
                Item::HardLink
            } else if ft.is_dir() {
                Item::Dir
            } else if ft.is_file() {
                Item::File { size }
            } else if ft.is_symlink() {
                Item::Symlink {
                    target_len: match target {
                        Some(t) => t.len(),
                        None => fs::read_link(path)?.as_os_str().len(),
                    },
                }
            } else {
                Item::Other
            };
            let sizes: Vec<(usize, usize)> =
                attrs.iter().map(|(n, v)| (n.len(), v.len())).collect();
            let rel = name.strip_prefix(b"./").unwrap_or(name);
            est.add(rel, item, &sizes);
            return Ok(());
        }
        let own = (md.mtime(), md.mtime_nsec() as u32);
        let (mtime, mtime_nsec) = times.map_or(own, |t| t.of(own));
        let attrs = crate::tar::Attrs {
            mode: md.mode() & 0o7777,
            uid: md.uid() as u64,
            gid: md.gid() as u64,
            mtime,
            mtime_nsec,
            xattrs: attrs,
        };
        self.stats.entries += 1;
        if linked {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                // The first name carries the inode's xattrs.
                let attrs = crate::tar::Attrs {
                    xattrs: vec![],
                    ..attrs
                };
                return self.tar.hard_link(name, &attrs, first);
            }
            self.links.insert((md.dev(), md.ino()), name.to_vec());
        }
        if ft.is_dir() {
            self.tar.dir(name, &attrs)?;
        } else if ft.is_file() {
            match content {
                Some(c) => self.tar.file_bytes(name, &attrs, c)?,
                None => {
                    let f =
                        File::open(path).with_context(|| format!("opening {}", path.display()))?;
                    self.tar.file(name, &attrs, size, f)?;
                }
            }
            self.stats.bytes += size;
        } else if ft.is_symlink() {
            let own = match target {
                Some(_) => None,
                None => Some(
                    fs::read_link(path).with_context(|| format!("reading {}", path.display()))?,
                ),
            };
            let target =
                target.unwrap_or_else(|| own.as_ref().map_or(&[], |t| t.as_os_str().as_bytes()));
            self.tar.symlink(name, &attrs, target)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let (major, minor) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
            let device = if ft.is_char_device() {
                Device::Char
            } else {
                Device::Block
            };
            self.tar.device(name, &attrs, device, major, minor)?;
        } else if ft.is_fifo() {
            self.tar.fifo(name, &attrs)?;
        }
        Ok(())
    }

    /// Writes what is below `dir` (`src` in the store, written as `name`),
    /// in the order of the names written: everything but `skip` and what
    /// `plan` skips, or, when `filtered`, only the children that `plan`
    /// names. `layer` is the time the layer `dir` is in was unpacked, if it
    /// is in one ([`Times`]).
    #[allow(clippy::too_many_arguments)]
    fn tree(
        &mut self,
        dir: &Path,
        src: &[u8],
        name: &[u8],
        skip: &[&str],
        plan: Option<&Plan>,
        filtered: bool,
        layer: Option<(i64, u32)>,
    ) -> Result<()> {
        let sub = |parent: &[u8], child: &[u8]| {
            let mut p = parent.to_vec();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(child);
            p
        };
        // Written name -> (path, path in the store).
        let mut children = BTreeMap::new();
        for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let child_src = sub(src, e.file_name().as_bytes());
            let written = match plan.and_then(|p| p.renames.get(&child_src)) {
                Some(new) => new.clone(),
                None => e.file_name().as_bytes().to_vec(),
            };
            if let Some((other, _)) = children.insert(written, (e.path(), child_src)) {
                bail!(
                    "{} and another entry of {} would be written under the same name",
                    other.display(),
                    dir.display()
                );
            }
        }
        for (child, (path, child_src)) in children {
            let child_name = sub(name, &child);
            if skip.iter().any(|s| s.as_bytes() == child_src) {
                continue;
            }
            let rule = plan.and_then(|p| p.rules.get(&child_src));
            let (content, target) = match rule {
                None if filtered => continue,
                Some(Rule::Skip) => continue,
                Some(Rule::Generated(c)) => (Some(&c[..]), None),
                Some(Rule::Link(t)) => (None, Some(&t[..])),
                _ => (None, None),
            };
            let times = plan.and_then(|p| p.times.as_ref());
            let layer = times
                .and_then(|t| t.layers.get(&child_src))
                .copied()
                .or(layer);
            let how = Written {
                content,
                target,
                times: times.map(|t| Stamp {
                    stamp: t.stamp,
                    layer,
                }),
            };
            self.entry(&path, &child_name, &how)?;
            if fs::symlink_metadata(&path)?.is_dir() {
                let filtered = matches!(rule, Some(Rule::Dir));
                self.tree(&path, &child_src, &child_name, skip, plan, filtered, layer)?;
            }
        }
        Ok(())
    }
}

/// How an entry is written, when not as it is on disk.
#[derive(Default, Clone, Copy)]
struct Written<'a> {
    /// A regular file holding this instead of its own content.
    content: Option<&'a [u8]>,
    /// A symbolic link pointing here instead.
    target: Option<&'a [u8]>,
    /// Its modification time, made reproducible.
    times: Option<Stamp>,
}

/// The modification time of one entry of a reproducible export
/// ([`Times`]).
#[derive(Clone, Copy)]
struct Stamp {
    stamp: i64,
    /// The time the layer the entry is in was unpacked, if it is in one.
    layer: Option<(i64, u32)>,
}

impl Stamp {
    /// The time written for an entry whose own time is `own`: its own
    /// when it is in a layer and older than the layer's unpacking (it came
    /// with the layer), else the stamp.
    fn of(self, own: (i64, u32)) -> (i64, u32) {
        match self.layer {
            Some(made) if own < made => own,
            _ => (self.stamp, 0),
        }
    }
}

/// What of a tree to export or measure: the root itself as `./`, then,
/// when `keep` is given, only those top-level entries (and none of `skip`),
/// or, with a `plan`, only what the plan names.
#[derive(Clone, Copy)]
pub(super) struct Scope<'a> {
    pub keep: Option<&'a [&'a str]>,
    pub skip: &'a [&'a str],
    pub plan: Option<&'a Plan>,
}

impl Scope<'_> {
    /// All of the tree.
    const WHOLE: Scope<'static> = Scope {
        keep: None,
        skip: &[],
        plan: None,
    };

    /// Writes this part of `root` as a tar stream to `out`.
    pub(super) fn export(self, root: &Path, out: impl Write) -> Result<ExportStats> {
        walk(root, self, out, None).map(|(stats, _)| stats)
    }

    /// Counts the blocks and inodes this part of `root` will take in an
    /// ext4 with `block_size`, reading metadata only.
    pub(super) fn measure(self, root: &Path, block_size: u64) -> Result<Need> {
        let est = Some(Estimator::new(block_size));
        let (_, need) = walk(root, self, io::sink(), est)?;
        Ok(need.unwrap_or_default())
    }
}

/// Writes the whole tree `root` as a tar stream to `out`, the root itself
/// as `./` (a containerd root given with `populate --containerd`).
pub fn tree(root: &Path, out: impl Write) -> Result<ExportStats> {
    Scope::WHOLE.export(root, out)
}

/// Counts the blocks and inodes the tree `root` will take in ext4, reading
/// metadata only.
pub fn measure_tree(root: &Path, block_size: u64) -> Result<Need> {
    Scope::WHOLE.measure(root, block_size)
}

/// The one walk behind exporting and measuring `scope` of `root`.
fn walk(
    root: &Path,
    Scope { keep, skip, plan }: Scope<'_>,
    out: impl Write,
    measure: Option<Estimator>,
) -> Result<(ExportStats, Option<Need>)> {
    let mut ex = Exporter {
        tar: crate::tar::Writer::new(out),
        measure,
        links: HashMap::new(),
        stats: ExportStats::default(),
    };
    let root_how = Written {
        times: plan.and_then(|p| p.times.as_ref()).map(|t| Stamp {
            stamp: t.stamp,
            layer: None,
        }),
        ..Written::default()
    };
    ex.entry(root, b"./", &root_how)?;
    match (plan, keep) {
        (Some(plan), _) => ex.tree(root, b"", b"", skip, Some(plan), true, None)?,
        (None, Some(keep)) => {
            for top in keep {
                let path = root.join(top);
                if fs::symlink_metadata(&path).is_err() {
                    continue;
                }
                ex.entry(&path, top.as_bytes(), &Written::default())?;
                if path.is_dir() {
                    let top = top.as_bytes();
                    ex.tree(&path, top, top, skip, None, false, None)?;
                }
            }
        }
        (None, None) => ex.tree(root, b"", b"", skip, None, false, None)?,
    }
    let need = ex.measure.take().map(Estimator::finish);
    ex.tar.finish()?;
    Ok((ex.stats, need))
}

/// Walks a tree of an [`FsRead`] (ROOT of a disk image) into a tar stream
/// or an estimate, as [`Exporter`] walks a directory of this machine.
struct FsWalk<'a, W: Write> {
    fs: &'a dyn FsRead,
    tar: crate::tar::Writer<W>,
    measure: Option<Estimator>,
    /// Inode of files with several links -> the first name written.
    links: HashMap<u64, Vec<u8>>,
    stats: ExportStats,
}

impl<W: Write> FsWalk<'_, W> {
    /// The entry at `path` as `name` (`rel` below the walked root), and
    /// what is below it, in name order.
    fn entry(&mut self, path: &[u8], name: &[u8], rel: &[u8]) -> Result<()> {
        let st = self
            .fs
            .stat(path)?
            .with_context(|| format!("{} is gone while being read", show(path)))?;
        if st.kind == Kind::Socket {
            return Ok(()); // as the export: tar cannot hold sockets
        }
        let linked = st.kind != Kind::Dir && st.nlink > 1;
        // Not the SELinux label: the policy's, given again when the store
        // is written back (a build container may not be allowed to set it).
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = self
            .fs
            .xattrs(path)?
            .into_iter()
            .filter(|(n, _)| n != crate::selinux::XATTR)
            .map(|(n, v)| (n.into_bytes(), v))
            .collect();
        xattrs.sort();
        let first = match linked {
            true => self.links.get(&st.ino).cloned(),
            false => None,
        };
        if linked && first.is_none() {
            self.links.insert(st.ino, name.to_vec());
        }
        if let Some(est) = &mut self.measure {
            let item = match st.kind {
                _ if first.is_some() => Item::HardLink,
                Kind::Dir => Item::Dir,
                Kind::File => Item::File { size: st.size },
                Kind::Symlink => Item::Symlink {
                    target_len: self.fs.read_link(path)?.len(),
                },
                _ => Item::Other,
            };
            let sizes: Vec<(usize, usize)> =
                xattrs.iter().map(|(n, v)| (n.len(), v.len())).collect();
            est.add(rel, item, &sizes);
        } else {
            let attrs = crate::tar::Attrs {
                mode: st.mode,
                uid: st.uid.into(),
                gid: st.gid.into(),
                mtime: st.mtime.0,
                mtime_nsec: st.mtime.1,
                xattrs,
            };
            self.stats.entries += 1;
            match (st.kind, &first) {
                // The first name carries the inode's xattrs.
                (_, Some(first)) => self.tar.hard_link(
                    name,
                    &crate::tar::Attrs {
                        xattrs: vec![],
                        ..attrs
                    },
                    first,
                )?,
                (Kind::Dir, _) => self.tar.dir(name, &attrs)?,
                (Kind::File, _) => {
                    let fs = self.fs;
                    self.tar
                        .file_from(name, &attrs, st.size, |sink| fs.read_file(path, sink))?;
                    self.stats.bytes += st.size;
                }
                (Kind::Symlink, _) => self.tar.symlink(name, &attrs, &self.fs.read_link(path)?)?,
                (Kind::CharDev | Kind::BlockDev, _) => {
                    let device = match st.kind {
                        Kind::CharDev => Device::Char,
                        _ => Device::Block,
                    };
                    self.tar
                        .device(name, &attrs, device, st.rdev.0, st.rdev.1)?
                }
                (Kind::Fifo, _) => self.tar.fifo(name, &attrs)?,
                (Kind::Socket, _) => {}
            }
        }
        if st.kind == Kind::Dir {
            let mut children = self.fs.read_dir(path)?;
            children.sort();
            for child in children {
                let rel = match rel.is_empty() {
                    true => child.clone(),
                    false => join(rel, &child),
                };
                self.entry(&join(path, &child), &join(name, &child), &rel)?;
            }
        }
        Ok(())
    }
}

/// The one walk behind [`fs_tree`] and [`measure_fs_tree`].
fn walk_fs(
    fs: &dyn FsRead,
    root: &[u8],
    name: &[u8],
    out: impl Write,
    measure: Option<Estimator>,
) -> Result<(ExportStats, Option<Need>)> {
    let mut w = FsWalk {
        fs,
        tar: crate::tar::Writer::new(out),
        measure,
        links: HashMap::new(),
        stats: ExportStats::default(),
    };
    w.entry(root, name, b"")
        .with_context(|| format!("reading {}", show(root)))?;
    let need = w.measure.take().map(Estimator::finish);
    w.tar.finish()?;
    Ok((w.stats, need))
}

/// Writes the tree `root` of `fs` (a store in ROOT) as a tar stream to
/// `out`, its entries named below `name` (the root itself as `name`), with
/// owners, modes, times, hard links, devices and every xattr; sockets are
/// left out. What a `--merge` starts the build daemon's store from.
pub fn fs_tree(fs: &dyn FsRead, root: &[u8], name: &[u8], out: impl Write) -> Result<ExportStats> {
    walk_fs(fs, root, name, out, None).map(|(stats, _)| stats)
}

/// Counts the blocks and inodes the tree `root` of `fs` takes in an ext4
/// with `block_size` (as [`measure_tree`] counts a directory's).
pub fn measure_fs_tree(fs: &dyn FsRead, root: &[u8], block_size: u64) -> Result<Need> {
    let est = Some(Estimator::new(block_size));
    let (_, need) = walk_fs(fs, root, b".", io::sink(), est)?;
    Ok(need.unwrap_or_default())
}

/// What the walk does with an entry of the store.
pub enum Rule {
    /// A directory written with only those of its children that have a
    /// rule.
    Dir,
    /// The entry and everything below it (but what is [`Rule::Skip`]).
    Whole,
    /// A regular file written with this content instead of its own (its
    /// owner, mode and xattrs kept).
    Generated(Vec<u8>),
    /// A symbolic link written pointing at this target instead of its own.
    Link(Vec<u8>),
    /// Left out, below a [`Rule::Whole`] directory.
    Skip,
}

/// Which entries of a store to export, by '/'-separated path relative to
/// the store.
#[derive(Default)]
pub struct Plan {
    pub rules: HashMap<Vec<u8>, Rule>,
    /// Entries written under another name (their last component), by path.
    pub renames: HashMap<Vec<u8>, Vec<u8>>,
    /// When set, the modification times written are made reproducible.
    pub times: Option<Times>,
}

/// The modification times of a reproducible export: `stamp` for what the
/// daemon made (metadata, directories, links), but an entry of a layer
/// keeps its own time when that is older than the layer's unpacking (it
/// came with the layer; what the daemon made while unpacking, such as a
/// whiteout device or a missing parent directory, is not older).
pub struct Times {
    /// Seconds since 1970.
    pub stamp: i64,
    /// Directories holding a layer's files, by path, and the time the
    /// layer was unpacked.
    pub layers: HashMap<Vec<u8>, (i64, u32)>,
}

impl Plan {
    /// `path` and everything below it.
    pub fn whole(&mut self, path: &str) {
        self.rules.insert(path.as_bytes().to_vec(), Rule::Whole);
        self.parents(path);
    }

    /// Marks the directories above `path` as [`Rule::Dir`].
    pub fn parents(&mut self, path: &str) {
        let mut p = path;
        while let Some((parent, _)) = p.rsplit_once('/') {
            self.rules
                .entry(parent.as_bytes().to_vec())
                .or_insert(Rule::Dir);
            p = parent;
        }
    }

    /// The directory `path`, with only the children that have a rule.
    pub fn dir(&mut self, path: &str) {
        self.rules
            .entry(path.as_bytes().to_vec())
            .or_insert(Rule::Dir);
        self.parents(path);
    }
}

/// For the backends' tests: a tree of directories `dirs` and files `files`
/// (path, content) made under a new temporary directory, and the entries
/// (name, type) that `backend` exports of it.
#[cfg(test)]
pub(super) fn exported_entries(
    backend: &dyn super::Backend,
    dirs: &[&str],
    files: &[(&str, &str)],
    more: impl FnOnce(&Path),
) -> Vec<(String, tar::EntryType)> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for d in dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for (f, content) in files {
        fs::write(root.join(f), content).unwrap();
    }
    more(root);
    let mut buf = vec![];
    backend.export(root, None, 1_700_000_000, &mut buf).unwrap();
    let mut ar = tar::Archive::new(&buf[..]);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            (name, e.header().entry_type())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;

    use crate::disk::ext4::testutil::{mkfs, pattern, run, tool};
    use crate::disk::ext4::Root;
    use crate::fsread::FsRead;
    use crate::tar::{Archive, Attrs, Device, EntryType, Meta, Writer};

    /// Each entry of `tar` by path below `prefix` (all its metadata, PAX
    /// records applied, a hard link's target below `prefix`) with the
    /// sha256 of its data; read with the tool's own reader, as the tar
    /// crate splits PAX records at a newline inside a value.
    fn entries(tar: &[u8], prefix: &[u8]) -> BTreeMap<Vec<u8>, (Meta, String)> {
        let mut out = BTreeMap::new();
        let mut ar = Archive::new(tar);
        while let Some(mut e) = ar.next_entry().unwrap() {
            let mut data = vec![];
            e.data.read_to_end(&mut data).unwrap();
            let mut meta = e.meta;
            // The root itself is `prefix` without its '/'.
            meta.path = match meta.path.strip_prefix(prefix) {
                Some(rel) => rel.to_vec(),
                None => {
                    assert_eq!(meta.path, prefix.strip_suffix(b"/").unwrap());
                    vec![]
                }
            };
            if meta.kind == EntryType::Link {
                meta.link = meta.link.map(|l| l.strip_prefix(prefix).unwrap().to_vec());
            }
            out.insert(meta.path.clone(), (meta, crate::digest::sha256_hex(&data)));
        }
        out
    }

    /// A tree written into ROOT and read back from it as a tar ([`fs_tree`],
    /// what a --merge starts containerd on) is the tar written, whatever
    /// its bytes: binary xattrs, newlines in names and link targets, hard
    /// links, whiteouts, a fifo, empty and large files, times to the
    /// nanosecond. Measured, then removed whole, it leaves the blocks and
    /// inodes it took free again, the filesystem clean.
    #[test]
    fn a_tree_in_root_reads_back_as_written_and_is_removed_whole() {
        let Some(mke2fs) = tool("mke2fs") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("root.img");
        mkfs(&mke2fs, &img, 64, &[], None);
        let root = Root::new(&img, 0);
        let at =
            |mode: u32, uid: u64, mtime: i64, nsec: u32, xattrs: Vec<(Vec<u8>, Vec<u8>)>| Attrs {
                mode,
                uid,
                gid: uid + 1,
                mtime,
                mtime_nsec: nsec,
                xattrs,
            };
        let cap: Vec<u8> = (0..=255u8).rev().take(20).chain([0, b'\n', 0]).collect();
        let big = pattern(5 << 20, 3);
        let mut w = Writer::new(Vec::new());
        w.dir(b"./", &at(0o700, 0, 1_600_000_000, 0, vec![]))
            .unwrap();
        let opaque = vec![(b"trusted.overlay.opaque".to_vec(), b"y".to_vec())];
        w.dir(b"s", &at(0o755, 0, 1_600_000_001, 5, opaque))
            .unwrap();
        let caps = vec![(b"security.capability".to_vec(), cap.clone())];
        w.file_bytes(
            b"s/cap",
            &at(0o4755, 1000, 1_700_000_000, 123_456_789, caps),
            b"x",
        )
        .unwrap();
        w.file_bytes(b"s/new\nline", &at(0o600, 7, 0, 0, vec![]), b"")
            .unwrap();
        w.file(
            b"s/big",
            &at(0o644, 0, -5, 0, vec![]),
            big.len() as u64,
            &big[..],
        )
        .unwrap();
        w.file_bytes(b"s/h1", &at(0o644, 0, 1, 0, vec![]), b"linked")
            .unwrap();
        w.hard_link(b"s/h2", &at(0o644, 0, 1, 0, vec![]), b"s/h1")
            .unwrap();
        w.symlink(b"s/l", &at(0o777, 0, 2, 0, vec![]), b"../a\nb")
            .unwrap();
        w.device(b"s/gone", &at(0, 0, 3, 0, vec![]), Device::Char, 0, 0)
            .unwrap();
        w.fifo(b"s/fifo", &at(0o644, 0, 4, 0, vec![])).unwrap();
        let tar = w.finish().unwrap();

        let mut fs = root.open_write(None).unwrap();
        fs.write_file("/var/lib/keep", b"", &Attrs::root_owned(0o644))
            .unwrap();
        let free = fs.summary();
        fs.write_tar(b"/var/lib/containerd", &tar[..], None)
            .unwrap();
        let mut back = vec![];
        let stats = super::fs_tree(
            &fs,
            b"/var/lib/containerd",
            b"var/lib/containerd",
            &mut back,
        )
        .unwrap();
        assert_eq!(stats.bytes, big.len() as u64 + 1 + 6);
        let (want, got) = (entries(&tar, b""), entries(&back, b"var/lib/containerd/"));
        let mut want = want;
        // The root: "./" written, the store's own path read back.
        let (mut root_entry, digest) = want.remove(&b"./"[..]).unwrap();
        root_entry.path.clear();
        assert_eq!(got[&b""[..]], (root_entry, digest));
        let got: BTreeMap<_, _> = got.into_iter().filter(|(k, _)| !k.is_empty()).collect();
        assert_eq!(got, want);

        let need = super::measure_fs_tree(&fs, b"/var/lib/containerd", 4096).unwrap();
        let taken = free.free_blocks - fs.summary().free_blocks;
        assert!(need.blocks >= taken * 9 / 10, "{need:?} for {taken} blocks");
        assert_eq!(need.inodes, free.free_inodes - fs.summary().free_inodes);

        fs.remove_tree("/var/lib/containerd").unwrap();
        fs.remove_tree("/var/lib/containerd").unwrap();
        assert!(fs.stat(b"/var/lib/containerd").unwrap().is_none());
        assert!(fs.stat(b"/var/lib/keep").unwrap().is_some());
        let after = fs.summary();
        assert_eq!(
            (after.free_blocks, after.free_inodes),
            (free.free_blocks, free.free_inodes)
        );
        fs.close().unwrap();
        if let Some(e2fsck) = tool("e2fsck") {
            run(std::process::Command::new(e2fsck).arg("-fn").arg(&img));
        }
    }
}
