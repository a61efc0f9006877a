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

use crate::ext4::{Estimator, Item, Need};
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
    /// Writes the entry at `path` as `name`; with `content`, a regular file
    /// holding it instead of what is on disk (mode 0600, as Docker writes
    /// its generated files).
    fn entry(&mut self, path: &Path, name: &[u8], content: Option<&[u8]>) -> Result<()> {
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
                    target_len: fs::read_link(path)?.as_os_str().len(),
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
        let attrs = crate::tar::Attrs {
            mode: if content.is_some() {
                0o600
            } else {
                md.mode() & 0o7777
            },
            uid: md.uid() as u64,
            gid: md.gid() as u64,
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
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
            let target =
                fs::read_link(path).with_context(|| format!("reading {}", path.display()))?;
            self.tar
                .symlink(name, &attrs, target.as_os_str().as_bytes())?;
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

    /// Writes what is below `dir` (named `name`), in name order: everything
    /// but `skip` and what `plan` skips, or, when `filtered`, only the
    /// children that `plan` names.
    fn tree(
        &mut self,
        dir: &Path,
        name: &[u8],
        skip: &[&str],
        plan: Option<&Plan>,
        filtered: bool,
    ) -> Result<()> {
        let mut children = BTreeMap::new();
        for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            children.insert(e.file_name(), e.path());
        }
        for (child, path) in children {
            let mut child_name = name.to_vec();
            if !child_name.is_empty() {
                child_name.push(b'/');
            }
            child_name.extend_from_slice(child.as_bytes());
            if skip.iter().any(|s| s.as_bytes() == child_name) {
                continue;
            }
            let rule = plan.and_then(|p| p.rules.get(&child_name));
            let content = match rule {
                None if filtered => continue,
                Some(Rule::Skip) => continue,
                Some(Rule::Generated(c)) => Some(&c[..]),
                _ => None,
            };
            self.entry(&path, &child_name, content)?;
            if fs::symlink_metadata(&path)?.is_dir() {
                let filtered = matches!(rule, Some(Rule::Dir));
                self.tree(&path, &child_name, skip, plan, filtered)?;
            }
        }
        Ok(())
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
    ex.entry(root, b"./", None)?;
    match (plan, keep) {
        (Some(plan), _) => ex.tree(root, b"", skip, Some(plan), true)?,
        (None, Some(keep)) => {
            for top in keep {
                let path = root.join(top);
                if fs::symlink_metadata(&path).is_err() {
                    continue;
                }
                ex.entry(&path, top.as_bytes(), None)?;
                if path.is_dir() {
                    ex.tree(&path, top.as_bytes(), skip, None, false)?;
                }
            }
        }
        (None, None) => ex.tree(root, b"", skip, None, false)?,
    }
    let need = ex.measure.take().map(Estimator::finish);
    ex.tar.finish()?;
    Ok((ex.stats, need))
}

/// What the walk does with an entry of the store.
pub enum Rule {
    /// A directory written with only those of its children that have a
    /// rule.
    Dir,
    /// The entry and everything below it (but what is [`Rule::Skip`]).
    Whole,
    /// A regular file written with this content instead of its own.
    Generated(Vec<u8>),
    /// Left out, below a [`Rule::Whole`] directory.
    Skip,
}

/// Which entries of a store to export, by '/'-separated path relative to
/// the store.
#[derive(Default)]
pub struct Plan {
    pub rules: HashMap<Vec<u8>, Rule>,
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
    backend.export(root, None, &mut buf).unwrap();
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
