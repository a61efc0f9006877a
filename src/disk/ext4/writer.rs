//! Builds a directory tree inside an open ext4 filesystem, one entry at a
//! time, with tar's semantics: missing parents are created, an existing
//! directory is kept and updated, anything else at a path is replaced.
//! Nothing may land outside the target directory.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{self, Read};

use anyhow::{anyhow, bail, Context, Result};
use tokio_util::sync::CancellationToken;

use super::ffi::{Attr, Errcode, Filsys, Stat, ROOT_INO, S_IFDIR};

/// What an entry is, with what each kind needs but its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// A regular file of `size` bytes, read from the entry's data.
    File {
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A hard link to an entry written before, named relative to the target.
    HardLink {
        target: Vec<u8>,
    },
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One entry of the tree, as a [`Transform`] sees it before it is written.
/// `path` is relative to the target directory, '/' separated, as it came
/// from the archive (checked after the transform).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryMeta {
    pub path: Vec<u8>,
    /// Private: the data that follows a file is read by its size, so a
    /// transform may not turn one kind into another.
    pub(super) kind: EntryKind,
    /// Permission bits (07777) only; the type comes from the kind.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Full names (`security.selinux`) and values.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EntryMeta {
    pub(super) fn new(path: Vec<u8>, kind: EntryKind) -> EntryMeta {
        EntryMeta {
            path,
            kind,
            perm: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }

    pub fn kind(&self) -> &EntryKind {
        &self.kind
    }

    /// The target of a symlink or hard link, which remapping paths may
    /// have to change along with `path`.
    pub fn link_target_mut(&mut self) -> Option<&mut Vec<u8>> {
        match &mut self.kind {
            EntryKind::Symlink { target } | EntryKind::HardLink { target } => Some(target),
            _ => None,
        }
    }
}

/// Whether an entry is written after its transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Write,
    /// Leave this one entry out (a skipped directory's entries are still
    /// written, under a directory made with default attributes).
    Skip,
}

/// Changes entries between the archive and the filesystem: the place for
/// labels (`security.selinux`) and for moving paths.
pub trait Transform {
    /// Called for every entry, in archive order, before it is checked and
    /// written.
    fn entry(&mut self, entry: &mut EntryMeta) -> Result<Keep>;

    /// The xattrs of a directory the writer makes because the target or an
    /// entry below it needs it (it is not in the archive); `path` is
    /// absolute in the filesystem.
    fn made_dir(&mut self, _path: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![]
    }
}

impl<F: FnMut(&mut EntryMeta) -> Result<Keep>> Transform for F {
    fn entry(&mut self, entry: &mut EntryMeta) -> Result<Keep> {
        self(entry)
    }
}

/// What gives the xattrs of a directory the writer makes
/// ([`Transform::made_dir`]).
pub type MadeDir<'m> = &'m mut dyn FnMut(&[u8]) -> Vec<(Vec<u8>, Vec<u8>)>;

/// Counts of what was written.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub devices: u64,
    pub bytes: u64,
    pub xattrs: u64,
}

const MAX_NAME: usize = 255;
/// Largest single write of file data; keeps memory flat for any file size.
const CHUNK: usize = 1 << 20;

/// Writes entries under one target directory of an open filesystem, for
/// one archive or one file; its caches hold for that writing only.
pub struct TreeWriter<'a> {
    fs: &'a mut Filsys,
    target: u32,
    /// The target directory's absolute path.
    target_path: Vec<u8>,
    now: i64,
    /// Directories seen so far: path relative to the target -> inode.
    dirs: HashMap<Vec<u8>, u32>,
    /// Per directory, hashes of the names it holds, so that a lookup in a
    /// large directory costs one hash probe instead of a scan.
    names: HashMap<u32, HashSet<u64>>,
    buf: Vec<u8>,
    stats: Stats,
    cancel: Option<&'a CancellationToken>,
    links: HardLinks,
}

/// What a hard link entry's own owner, permissions, time and xattrs do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HardLinks {
    /// Nothing: the inode keeps its file's (GNU tar, and exports, whose
    /// links carry their inode's anyway).
    #[default]
    KeepTarget,
    /// They become the shared inode's, as dockerd's untar (Go's
    /// go-archive) applies them to the path it linked: a layer's.
    ApplyToInode,
}

fn name_hash(name: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

fn show(path: &[u8]) -> String {
    if path.is_empty() {
        ".".to_string()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}

/// Splits an archive path into its components, refusing anything that
/// could leave the target: absolute names and "..". "." and empty
/// components are dropped, as tar does.
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    if path.first() == Some(&b'/') {
        bail!(
            "refusing archive entry {:?}: absolute names are not allowed",
            show(path)
        );
    }
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => bail!(
                "refusing archive entry {:?}: \"..\" would leave the target directory",
                show(path)
            ),
            c if c.len() > MAX_NAME => bail!(
                "archive entry {:?}: a name is longer than ext4's {MAX_NAME} bytes",
                show(path)
            ),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

fn full(err: Errcode, what: &str, fs: &Filsys) -> anyhow::Error {
    if err.is_full() {
        let info = fs.info();
        anyhow!(
            "the ROOT filesystem is full while writing {what}: {} MiB and {} inodes are free of {} MiB and {} inodes",
            (info.free_blocks * info.block_size as u64) >> 20,
            info.free_inodes,
            (info.blocks_count * info.block_size as u64) >> 20,
            info.inodes_count
        )
    } else {
        anyhow!("{err}")
    }
}

impl<'a> TreeWriter<'a> {
    pub fn new(fs: &'a mut Filsys, cancel: Option<&'a CancellationToken>) -> Self {
        // What the filesystem stamps: SOURCE_DATE_EPOCH, or the input's
        // own last write time (the same inputs give the same bytes).
        let now = fs.now();
        let mut dirs = HashMap::new();
        dirs.insert(Vec::new(), ROOT_INO);
        TreeWriter {
            fs,
            target: ROOT_INO,
            target_path: b"/".to_vec(),
            now,
            dirs,
            names: HashMap::new(),
            buf: Vec::new(),
            stats: Stats::default(),
            cancel,
            links: HardLinks::default(),
        }
    }

    /// What hard link entries' attributes do (default
    /// [`HardLinks::KeepTarget`]).
    pub fn hard_links(&mut self, links: HardLinks) {
        self.links = links;
    }

    /// Makes `target` (an absolute path inside the filesystem, created like
    /// `mkdir -p` when missing) the directory that entries are written under.
    /// The directories it makes get the xattrs `made` gives.
    pub fn set_target(&mut self, target: &[u8], made: MadeDir<'_>) -> Result<()> {
        if target.first() != Some(&b'/') {
            bail!("--target must be an absolute path, got {:?}", show(target));
        }
        let comps = components(&target[1..]).context("--target")?;
        self.target = self.ensure_dir(&comps, made)?;
        self.target_path = [b"/".as_slice(), &join(&comps)].concat();
        self.dirs.clear();
        self.dirs.insert(Vec::new(), self.target);
        Ok(())
    }

    /// Makes the missing directories above the entry `path` (relative to
    /// the target), with the xattrs `made` gives them.
    pub fn make_parents(&mut self, path: &[u8], made: MadeDir<'_>) -> Result<()> {
        let comps = components(path)?;
        if let Some((_, parents)) = comps.split_last() {
            self.ensure_dir(parents, made)?;
        }
        Ok(())
    }

    /// What was written so far. Every entry is either complete or undone,
    /// so the filesystem is consistent after a failed one too.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_some_and(|c| c.is_cancelled()) {
            bail!("interrupted");
        }
        Ok(())
    }

    fn default_dir_attr(&self) -> Attr {
        Attr {
            mode: S_IFDIR | 0o755,
            uid: 0,
            gid: 0,
            mtime: self.now,
            mtime_nsec: 0,
            now: self.now,
        }
    }

    /// The inode named `name` in `dir`, if any.
    fn find(&mut self, dir: u32, name: &[u8]) -> Result<Option<u32>> {
        if !self.names.contains_key(&dir) {
            let mut set = HashSet::new();
            self.fs
                .list_dir(dir, |n, _| {
                    set.insert(name_hash(n));
                })
                .map_err(|e| anyhow!("reading directory inode {dir}: {e}"))?;
            self.names.insert(dir, set);
        }
        if !self.names[&dir].contains(&name_hash(name)) {
            return Ok(None);
        }
        self.fs
            .lookup(dir, name)
            .map_err(|e| anyhow!("looking up {:?}: {e}", show(name)))
    }

    fn stat(&self, ino: u32, path: &[u8]) -> Result<Stat> {
        self.fs
            .stat(ino)
            .map_err(|e| anyhow!("reading inode of {:?}: {e}", show(path)))
    }

    fn link(&mut self, dir: u32, name: &[u8], ino: u32, mode: u32, path: &[u8]) -> Result<()> {
        self.fs
            .link(dir, name, ino, mode)
            .map_err(|e| full(e, &show(path), self.fs))
            .with_context(|| format!("adding {:?} to its directory", show(path)))?;
        self.names.entry(dir).or_default().insert(name_hash(name));
        Ok(())
    }

    /// Resolves `comps` (relative to the target) to a directory, creating
    /// missing ones. A symlink or non-directory on the way is an error.
    fn ensure_dir(&mut self, comps: &[&[u8]], made: MadeDir<'_>) -> Result<u32> {
        let key = join(comps);
        if let Some(&ino) = self.dirs.get(&key) {
            return Ok(ino);
        }
        let (name, parent_comps) = comps.split_last().expect("the empty path is always cached");
        let parent = self.ensure_dir(parent_comps, made)?;
        let ino = match self.find(parent, name)? {
            Some(ino) => {
                let st = self.stat(ino, &key)?;
                if st.is_symlink() {
                    bail!(
                        "refusing to write below {:?}: it is a symlink, and following it could leave the target directory",
                        show(&key)
                    );
                }
                if !st.is_dir() {
                    bail!("{:?} exists and is not a directory", show(&key));
                }
                ino
            }
            None => {
                let attr = self.default_dir_attr();
                let abs = match self.target_path.as_slice() {
                    b"/" => [b"/".as_slice(), &key].concat(),
                    t => [t, b"/", &key].concat(),
                };
                let xattrs = made(&abs);
                self.new_dir(parent, name, &attr, &xattrs, &key)?
            }
        };
        self.dirs.insert(key, ino);
        Ok(ino)
    }

    fn new_dir(
        &mut self,
        parent: u32,
        name: &[u8],
        attr: &Attr,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        path: &[u8],
    ) -> Result<u32> {
        let ino = self
            .fs
            .mkdir(parent, attr)
            .map_err(|e| full(e, &show(path), self.fs))
            .with_context(|| format!("creating directory {:?}", show(path)))?;
        self.names.insert(ino, HashSet::new());
        let linked = self
            .set_xattrs(ino, xattrs, path)
            .and_then(|()| self.link(parent, name, ino, S_IFDIR, path));
        if let Err(e) = linked {
            self.undo(ino, Some(parent));
            return Err(e);
        }
        self.stats.dirs += 1;
        Ok(ino)
    }

    /// Best-effort removal of an inode that was created but not linked.
    fn undo(&mut self, ino: u32, dir_parent: Option<u32>) {
        let _ = self.fs.free_inode(ino);
        if let Some(parent) = dir_parent {
            let _ = self.fs.add_links(parent, -1);
        }
        self.names.remove(&ino);
    }

    fn set_xattrs(&mut self, ino: u32, xattrs: &[(Vec<u8>, Vec<u8>)], path: &[u8]) -> Result<()> {
        self.fs
            .set_xattrs(ino, xattrs)
            .map_err(|e| full(e, &show(path), self.fs))
            .with_context(|| format!("setting extended attributes of {:?}", show(path)))?;
        self.stats.xattrs += xattrs.len() as u64;
        Ok(())
    }

    /// Removes the entry `name` (inode `ino`) from `dir` to make room for a
    /// new one, as tar does. A non-empty directory is not removed.
    fn remove(&mut self, dir: u32, name: &[u8], ino: u32, st: &Stat, path: &[u8]) -> Result<()> {
        if st.is_dir() {
            let mut empty = true;
            self.fs
                .list_dir(ino, |_, _| empty = false)
                .map_err(|e| anyhow!("reading directory {:?}: {e}", show(path)))?;
            if !empty {
                bail!(
                    "cannot replace the non-empty directory {:?} with a non-directory",
                    show(path)
                );
            }
        }
        self.fs
            .unlink(dir, name, ino)
            .map_err(|e| anyhow!("removing the old {:?}: {e}", show(path)))?;
        let freed = if st.is_dir() {
            self.fs.add_links(dir, -1).and_then(|()| {
                self.dirs.remove(path);
                self.names.remove(&ino);
                self.fs.free_inode(ino)
            })
        } else if st.links <= 1 {
            self.fs.free_inode(ino)
        } else {
            self.fs.add_links(ino, -1)
        };
        freed.map_err(|e| anyhow!("removing the old {:?}: {e}", show(path)))
    }

    /// Removes `path` (absolute) and everything below it, if it exists; a
    /// symlink on the way is an error.
    pub fn remove_tree(&mut self, path: &[u8]) -> Result<()> {
        let comps = components(path.strip_prefix(b"/").unwrap_or(path))?;
        let Some((name, parents)) = comps.split_last() else {
            bail!("cannot remove the root directory");
        };
        let mut dir = ROOT_INO;
        for (i, c) in parents.iter().enumerate() {
            let Some(ino) = self.find(dir, c)? else {
                return Ok(());
            };
            let at = join(&parents[..=i]);
            if !self.stat(ino, &at)?.is_dir() {
                bail!("{:?} is not a directory", show(&at));
            }
            dir = ino;
        }
        let Some(ino) = self.find(dir, name)? else {
            return Ok(());
        };
        self.remove_below(dir, name, ino, &join(&comps))?;
        self.dirs.clear();
        self.dirs.insert(Vec::new(), self.target);
        Ok(())
    }

    /// Removes the entry `name` of `dir` (inode `ino`, at `path`), with
    /// what is below it when it is a directory.
    fn remove_below(&mut self, dir: u32, name: &[u8], ino: u32, path: &[u8]) -> Result<()> {
        self.check_cancel()?;
        let st = self.stat(ino, path)?;
        if st.is_dir() {
            let mut children = vec![];
            self.fs
                .list_dir(ino, |n, i| children.push((n.to_vec(), i)))
                .map_err(|e| anyhow!("reading directory {:?}: {e}", show(path)))?;
            for (child, cino) in children {
                let mut at = path.to_vec();
                at.push(b'/');
                at.extend_from_slice(&child);
                self.remove_below(ino, &child, cino, &at)?;
            }
        }
        self.remove(dir, name, ino, &st, path)
    }

    /// Resolves an existing path (for hard-link targets) without creating
    /// anything.
    fn resolve_existing(&mut self, comps: &[&[u8]], path: &[u8]) -> Result<u32> {
        let (name, parent_comps) = comps
            .split_last()
            .ok_or_else(|| anyhow!("hard link {:?} points at the target directory", show(path)))?;
        let key = join(parent_comps);
        let parent = match self.dirs.get(&key) {
            Some(&ino) => ino,
            None => {
                let mut dir = self.target;
                for (i, c) in parent_comps.iter().enumerate() {
                    let sub = join(&parent_comps[..=i]);
                    let ino = self.find(dir, c)?.ok_or_else(|| {
                        anyhow!(
                            "hard link {:?}: its target {:?} is not in the filesystem (a hard link must follow the entry it names)",
                            show(path),
                            show(&join(comps))
                        )
                    })?;
                    let st = self.stat(ino, &sub)?;
                    if !st.is_dir() {
                        bail!(
                            "hard link {:?}: {:?} on the way to its target is not a directory",
                            show(path),
                            show(&sub)
                        );
                    }
                    dir = ino;
                }
                dir
            }
        };
        self.find(parent, name)?.ok_or_else(|| {
            anyhow!(
                "hard link {:?}: its target {:?} is not in the filesystem (a hard link must follow the entry it names)",
                show(path),
                show(&join(comps))
            )
        })
    }

    /// Writes one entry; `data` holds a file's content (the size its kind
    /// gives), and is not read for other kinds.
    pub fn put(&mut self, entry: EntryMeta, data: &mut dyn Read) -> Result<()> {
        self.check_cancel()?;
        for (name, _) in &entry.xattrs {
            check_xattr_name(name).with_context(|| show(&entry.path))?;
        }
        let comps = components(&entry.path)?;
        let path = join(&comps);
        let attr = Attr {
            mode: entry.perm & 0o7777,
            uid: entry.uid,
            gid: entry.gid,
            mtime: entry.mtime,
            mtime_nsec: entry.mtime_nsec,
            now: self.now,
        };
        self.stats.entries += 1;
        let Some((name, parent_comps)) = comps.split_last() else {
            // "./": the target directory itself.
            return match entry.kind {
                EntryKind::Dir => {
                    let target = self.target;
                    self.fs
                        .set_attr(target, &attr)
                        .map_err(|e| anyhow!("updating the target directory: {e}"))?;
                    self.set_xattrs(target, &entry.xattrs, b"")
                }
                _ => bail!(
                    "archive entry {:?} names the target directory but is not a directory",
                    show(&entry.path)
                ),
            };
        };
        let parent = self.ensure_dir(parent_comps, &mut |_| vec![])?;
        let existing = match self.find(parent, name)? {
            Some(ino) => Some((ino, self.stat(ino, &path)?)),
            None => None,
        };

        if let EntryKind::Dir = entry.kind {
            if let Some((ino, st)) = existing {
                if st.is_dir() {
                    self.fs
                        .set_attr(ino, &attr)
                        .map_err(|e| anyhow!("updating directory {:?}: {e}", show(&path)))?;
                    self.set_xattrs(ino, &entry.xattrs, &path)?;
                    self.dirs.insert(path, ino);
                    return Ok(());
                }
                self.remove(parent, name, ino, &st, &path)?;
            }
            let attr = Attr {
                mode: attr.mode | S_IFDIR,
                ..attr
            };
            let ino = self.new_dir(parent, name, &attr, &entry.xattrs, &path)?;
            self.dirs.insert(path, ino);
            return Ok(());
        }

        if let EntryKind::HardLink { target } = &entry.kind {
            let tcomps =
                components(target).with_context(|| format!("hard link {:?}", show(&path)))?;
            let tpath = join(&tcomps);
            let tino = self.resolve_existing(&tcomps, &path)?;
            let tst = self.stat(tino, &tpath)?;
            if tst.is_dir() {
                bail!(
                    "hard link {:?} points at the directory {:?}",
                    show(&path),
                    show(&tpath)
                );
            }
            // The link's owner, permissions, time and xattrs, as
            // `self.links` says.
            let apply = |w: &mut Self| -> Result<()> {
                if w.links == HardLinks::KeepTarget {
                    return Ok(());
                }
                w.fs.set_attr(tino, &attr).map_err(|e| {
                    anyhow!(
                        "updating {:?} through hard link {:?}: {e}",
                        show(&tpath),
                        show(&path)
                    )
                })?;
                w.set_xattrs(tino, &entry.xattrs, &path)
            };
            if let Some((ino, st)) = existing {
                if ino == tino {
                    return apply(self);
                }
                self.remove(parent, name, ino, &st, &path)?;
            }
            self.link(parent, name, tino, tst.mode, &path)?;
            self.fs
                .add_links(tino, 1)
                .map_err(|e| anyhow!("raising the link count of {:?}: {e}", show(&tpath)))?;
            self.stats.hardlinks += 1;
            return apply(self);
        }

        if let Some((ino, st)) = existing {
            self.remove(parent, name, ino, &st, &path)?;
        }
        let ino = self.create(parent, attr, entry.kind, data, &path)?;
        let done = self
            .set_xattrs(ino, &entry.xattrs, &path)
            .and_then(|()| self.link(parent, name, ino, self.stat(ino, &path)?.mode, &path));
        if let Err(e) = done {
            self.undo(ino, None);
            return Err(e);
        }
        Ok(())
    }

    /// Creates the inode of a non-directory, with its content.
    fn create(
        &mut self,
        parent: u32,
        attr: Attr,
        kind: EntryKind,
        data: &mut dyn Read,
        path: &[u8],
    ) -> Result<u32> {
        let fail = |fs: &Filsys, e: Errcode| full(e, &show(path), fs);
        let ino = match kind {
            EntryKind::File { size } => {
                let attr = Attr {
                    mode: attr.mode | super::ffi::S_IFREG,
                    ..attr
                };
                let ino = self
                    .fs
                    .create(parent, &attr, (0, 0))
                    .map_err(|e| fail(self.fs, e))
                    .with_context(|| format!("creating {:?}", show(path)))?;
                if let Err(e) = self.write_data(ino, size, data, path) {
                    self.undo(ino, None);
                    return Err(e);
                }
                self.stats.files += 1;
                self.stats.bytes += size;
                ino
            }
            EntryKind::Symlink { target } => {
                if target.is_empty() || target.len() >= self.fs.block_size() as usize {
                    bail!(
                        "symlink {:?}: its target is {} bytes; ext4 takes 1 to {}",
                        show(path),
                        target.len(),
                        self.fs.block_size() - 1
                    );
                }
                // A symlink's permission bits are always 0777, as the
                // kernel (so dockerd) makes them, whatever the archive's
                // header says (0 in some).
                let attr = Attr {
                    mode: 0o120777,
                    ..attr
                };
                self.stats.symlinks += 1;
                self.fs
                    .symlink(parent, &attr, &target)
                    .map_err(|e| fail(self.fs, e))
                    .with_context(|| format!("creating symlink {:?}", show(path)))?
            }
            EntryKind::Char { major, minor } | EntryKind::Block { major, minor } => {
                let ty = if matches!(kind, EntryKind::Char { .. }) {
                    0o020000
                } else {
                    0o060000
                };
                self.stats.devices += 1;
                self.fs
                    .create(
                        parent,
                        &Attr {
                            mode: attr.mode | ty,
                            ..attr
                        },
                        (major, minor),
                    )
                    .map_err(|e| fail(self.fs, e))
                    .with_context(|| format!("creating device node {:?}", show(path)))?
            }
            EntryKind::Fifo => self
                .fs
                .create(
                    parent,
                    &Attr {
                        mode: attr.mode | 0o010000,
                        ..attr
                    },
                    (0, 0),
                )
                .map_err(|e| fail(self.fs, e))
                .with_context(|| format!("creating FIFO {:?}", show(path)))?,
            EntryKind::Dir | EntryKind::HardLink { .. } => unreachable!("handled by put"),
        };
        Ok(ino)
    }

    /// Allocates the file's blocks in as few extents as the allocator
    /// gives, then streams the data into them in large writes.
    fn write_data(&mut self, ino: u32, size: u64, data: &mut dyn Read, path: &[u8]) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        self.fs
            .file_alloc(ino, size)
            .map_err(|e| full(e, &format!("{:?} ({size} bytes)", show(path)), self.fs))?;
        let bs = self.fs.block_size();
        let chunk_blocks = CHUNK as u64 / bs;
        if self.buf.len() < CHUNK {
            self.buf.resize(CHUNK, 0);
        }
        let mut lblk = 0u64;
        let mut left = size;
        while left > 0 {
            self.check_cancel()?;
            let (pblk, run) = self
                .fs
                .file_map(ino, lblk)
                .map_err(|e| anyhow!("mapping block {lblk} of {:?}: {e}", show(path)))?;
            let nblk = run.min(chunk_blocks).min(left.div_ceil(bs));
            let nbytes = (nblk * bs).min(left) as usize;
            let padded = (nblk * bs) as usize;
            let buf = &mut self.buf[..padded];
            data.read_exact(&mut buf[..nbytes]).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    anyhow!(
                        "the archive ends inside {:?} (truncated archive?)",
                        show(path)
                    )
                } else {
                    anyhow!("reading {:?} from the archive: {e}", show(path))
                }
            })?;
            buf[nbytes..].fill(0);
            self.fs
                .write_blocks(pblk, buf)
                .map_err(|e| anyhow!("writing {:?}: {e}", show(path)))?;
            lblk += nblk;
            left -= nbytes as u64;
        }
        Ok(())
    }
}

/// The xattr namespaces Linux (and ext4) has.
const XATTR_NAMESPACES: &[&[u8]] = &[b"user.", b"trusted.", b"security.", b"system."];

/// An owner (`what`: uid or gid) as ext4 stores it, in 32 bits.
pub fn owner_id(v: u64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| anyhow!("{what} {v} does not fit ext4's 32-bit owner ids"))
}

/// Refuses an xattr that Linux could not hold: outside its namespaces, an
/// empty name after the namespace, or one longer than ext4 stores (255
/// bytes after the prefix). [`TreeWriter::put`] checks every entry's.
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

#[cfg(test)]
mod tests {
    use super::components;

    #[test]
    fn components_refuse_escapes() {
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../b").is_err());
        assert!(components(b"..").is_err());
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(&[b'x'; 256]).is_err());
    }
}
