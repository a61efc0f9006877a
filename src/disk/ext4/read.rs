//! Reading ROOT through libext2fs, the tool's one way of reading it: the
//! `FsRead` behind [`super::Fs`] (`inspect`, `verify`, what populate looks
//! up). It sees device numbers, link counts and every extended attribute,
//! which `verify` compares with the layers' tar-split metadata, and it
//! reads through the same open filesystem that writes go to, so it sees
//! them before they are flushed.

use std::cell::RefCell;
use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use super::ffi::{self, Filsys, FT_DIR, FT_SYMLINK, ROOT_INO, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use super::Root;
use crate::fsread::{FsRead, Kind, Stat};

/// Bytes handed to the sink per call (the last chunk of a file is shorter).
const CHUNK: u64 = 4 << 20;
/// Extent runs fetched from libext2fs per call.
const RUNS_PER_CALL: usize = 256;
/// Directory entries kept in the lookup cache (about 100 bytes each).
const CACHE_ENTRIES: usize = 100_000;

const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;
const S_IFIFO: u32 = 0o010000;
const S_IFSOCK: u32 = 0o140000;
const EXT4_INLINE_DATA_FL: u32 = 0x1000_0000;

/// A path for messages: bytes that are not printable ASCII escaped.
fn show(path: &[u8]) -> String {
    path.escape_ascii().to_string()
}

/// Entries of the directories looked up lately: inode -> name -> (inode,
/// type). Verify stats every entry of the directories it lists; without
/// the cache each stat would scan every directory on its path.
#[derive(Default)]
struct DirCache {
    dirs: HashMap<u32, HashMap<Vec<u8>, (u32, u8)>>,
    entries: usize,
}

/// Checks, when opening, what every read relies on: a block size that
/// divides the read chunk and a root directory.
pub(super) fn check_readable(fs: &Filsys, root: &Root) -> Result<()> {
    let block_size = fs.block_size();
    if block_size == 0 || !CHUNK.is_multiple_of(block_size) {
        bail!("{root} has an unusable block size of {block_size} bytes");
    }
    let top = fs
        .read_inode(ROOT_INO)
        .with_context(|| format!("reading the root directory of {root}"))?;
    if top.mode & S_IFMT != S_IFDIR {
        bail!("the root inode of {root} is not a directory: the filesystem is corrupt");
    }
    Ok(())
}

/// What reading keeps between calls on one open filesystem. Writing
/// through the same filesystem must [`Cache::clear`] it.
#[derive(Default)]
pub(super) struct Cache {
    dirs: RefCell<DirCache>,
    /// The read buffer, kept between files (try_borrow: a sink that reads
    /// another file gets a buffer of its own).
    buf: RefCell<Vec<u8>>,
}

impl Cache {
    /// Forgets every directory listed so far (the read buffer stays).
    pub(super) fn clear(&mut self) {
        *self.dirs.get_mut() = DirCache::default();
    }
}

/// An open filesystem being read: the handle's parts that reading needs.
pub(super) struct View<'a> {
    pub fs: &'a Filsys,
    pub root: &'a Root,
    pub cache: &'a Cache,
}

impl View<'_> {
    /// The entries of directory `dir` (whose path is `path`), cached.
    fn entries(&self, dir: u32, path: &[u8]) -> Result<Vec<(Vec<u8>, u32, u8)>> {
        if let Some(map) = self.cache.dirs.borrow().dirs.get(&dir) {
            return Ok(map.iter().map(|(n, &(i, t))| (n.clone(), i, t)).collect());
        }
        let list = self.load_dir(dir, path)?;
        self.remember(dir, &list);
        Ok(list)
    }

    fn load_dir(&self, dir: u32, path: &[u8]) -> Result<Vec<(Vec<u8>, u32, u8)>> {
        self.fs
            .read_dir(dir)
            .with_context(|| format!("listing directory {} in {}", show(path), self.root))
    }

    fn remember(&self, dir: u32, list: &[(Vec<u8>, u32, u8)]) {
        if list.len() > CACHE_ENTRIES {
            return;
        }
        let mut cache = self.cache.dirs.borrow_mut();
        if cache.entries + list.len() > CACHE_ENTRIES {
            *cache = DirCache::default();
        }
        cache.entries += list.len();
        let map = list.iter().map(|(n, i, t)| (n.clone(), (*i, *t))).collect();
        cache.dirs.insert(dir, map);
    }

    /// The entry `name` of directory `dir` (whose path is `path`).
    fn lookup(&self, dir: u32, path: &[u8], name: &[u8]) -> Result<Option<(u32, u8)>> {
        if let Some(map) = self.cache.dirs.borrow().dirs.get(&dir) {
            return Ok(map.get(name).copied());
        }
        let list = self.load_dir(dir, path)?;
        let found = list
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|&(_, i, t)| (i, t));
        self.remember(dir, &list);
        Ok(found)
    }

    /// The inode of `path`, following no symlink: None when it (or a
    /// directory on the way) does not exist.
    pub(super) fn resolve(&self, path: &[u8]) -> Result<Option<u32>> {
        if path.first() != Some(&b'/') {
            bail!("{} is not an absolute path", show(path));
        }
        if path.contains(&0) {
            bail!("{} holds a NUL byte", show(path));
        }
        let mut ino = ROOT_INO;
        let mut i = 0;
        while i < path.len() {
            if path[i] == b'/' {
                i += 1;
                continue;
            }
            let end = path[i..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(path.len(), |p| i + p);
            let name = &path[i..end];
            if name == b"." || name == b".." {
                bail!("{}: paths may not hold . or ..", show(path));
            }
            let Some((child, ftype)) = self.lookup(ino, &path[..i], name)? else {
                return Ok(None);
            };
            if path[end..].iter().any(|&b| b != b'/') {
                self.require_dir(child, ftype, &path[..end], path)?;
            }
            ino = child;
            i = end;
        }
        Ok(Some(ino))
    }

    /// Checks that the inode `ino`, at `prefix` on the way to `path`, is a
    /// directory (not a symlink: paths are read as lstat reads them).
    fn require_dir(&self, ino: u32, ftype: u8, prefix: &[u8], path: &[u8]) -> Result<()> {
        if self.cache.dirs.borrow().dirs.contains_key(&ino) {
            return Ok(());
        }
        let mode = match ftype {
            FT_DIR => S_IFDIR,
            FT_SYMLINK => S_IFLNK,
            _ => self.inode(ino, prefix)?.mode & S_IFMT,
        };
        match mode {
            S_IFDIR => Ok(()),
            S_IFLNK => bail!(
                "{} is a symbolic link, not a directory (reading {} in {} without following symlinks)",
                show(prefix),
                show(path),
                self.root
            ),
            _ => bail!(
                "{} is not a directory (reading {} in {})",
                show(prefix),
                show(path),
                self.root
            ),
        }
    }

    fn inode(&self, ino: u32, path: &[u8]) -> Result<ffi::Inode> {
        self.fs
            .read_inode(ino)
            .with_context(|| format!("reading inode {ino} of {} in {}", show(path), self.root))
    }

    /// The inode of `path`, which must exist.
    fn existing(&self, path: &[u8]) -> Result<(u32, ffi::Inode)> {
        let Some(ino) = self.resolve(path)? else {
            bail!("{} does not exist in {}", show(path), self.root);
        };
        Ok((ino, self.inode(ino, path)?))
    }

    /// Streams the block-mapped content of `ino` (`size` bytes) into `sink`
    /// through `buf`.
    fn stream(
        &self,
        ino: u32,
        size: u64,
        buf: &mut Vec<u8>,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let bs = self.fs.block_size();
        let nblocks = size.div_ceil(bs);
        let cap = (CHUNK / bs).min(nblocks.max(1));
        buf.resize((cap * bs) as usize, 0);
        let mut out = Out {
            fs: self.fs,
            buf,
            bs,
            cap,
            filled: 0,
            left: size,
            sink,
        };
        let mut next = 0u64;
        'batches: while next < nblocks {
            let runs = self.fs.file_runs(ino, next, RUNS_PER_CALL)?;
            for (k, run) in runs.iter().enumerate() {
                let end = run
                    .lblk
                    .checked_add(run.len)
                    .context("extent past 2^64 blocks")?;
                if end <= next || (k > 0 && run.lblk < next) {
                    bail!(
                        "extents overlap or are out of order at logical block {}",
                        run.lblk
                    );
                }
                if run.lblk >= nblocks {
                    break 'batches;
                }
                let start = run.lblk.max(next);
                out.zeros(start - next)?;
                let end = end.min(nblocks);
                if run.uninit {
                    out.zeros(end - start)?;
                } else {
                    if run.pblk == 0 {
                        bail!("extent at logical block {} points at block 0", run.lblk);
                    }
                    out.data(run.pblk + (start - run.lblk), end - start)?;
                }
                next = end;
            }
            if runs.len() < RUNS_PER_CALL {
                break;
            }
        }
        out.zeros(nblocks - next.min(nblocks))?;
        out.flush()
    }
}

/// The chunk being filled for the sink: whole blocks, the file's tail cut
/// off at its size.
struct Out<'a, 'b> {
    fs: &'a Filsys,
    buf: &'a mut Vec<u8>,
    bs: u64,
    /// Blocks the buffer holds.
    cap: u64,
    /// Blocks filled.
    filled: u64,
    /// Bytes of the file not yet handed to the sink.
    left: u64,
    sink: &'a mut (dyn FnMut(&[u8]) -> Result<()> + 'b),
}

impl Out<'_, '_> {
    fn zeros(&mut self, mut blocks: u64) -> Result<()> {
        while blocks > 0 {
            let n = blocks.min(self.cap - self.filled);
            let (a, b) = (
                (self.filled * self.bs) as usize,
                ((self.filled + n) * self.bs) as usize,
            );
            self.buf[a..b].fill(0);
            self.filled += n;
            blocks -= n;
            self.flush_if_full()?;
        }
        Ok(())
    }

    fn data(&mut self, mut pblk: u64, mut blocks: u64) -> Result<()> {
        while blocks > 0 {
            let n = blocks.min(self.cap - self.filled);
            let (a, b) = (
                (self.filled * self.bs) as usize,
                ((self.filled + n) * self.bs) as usize,
            );
            self.fs
                .read_blocks(pblk, &mut self.buf[a..b])
                .with_context(|| format!("reading blocks {pblk}..{}", pblk + n))?;
            self.filled += n;
            pblk += n;
            blocks -= n;
            self.flush_if_full()?;
        }
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<()> {
        if self.filled == self.cap {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let n = (self.filled * self.bs).min(self.left);
        if n > 0 {
            (self.sink)(&self.buf[..n as usize])?;
        }
        self.left -= n;
        self.filled = 0;
        Ok(())
    }
}

fn kind_of(mode: u32) -> Option<Kind> {
    Some(match mode & S_IFMT {
        S_IFREG => Kind::File,
        S_IFDIR => Kind::Dir,
        S_IFLNK => Kind::Symlink,
        S_IFCHR => Kind::CharDev,
        S_IFBLK => Kind::BlockDev,
        S_IFIFO => Kind::Fifo,
        S_IFSOCK => Kind::Socket,
        _ => return None,
    })
}

impl FsRead for View<'_> {
    fn stat(&self, path: &[u8]) -> Result<Option<Stat>> {
        let Some(ino) = self.resolve(path)? else {
            return Ok(None);
        };
        let i = self.inode(ino, path)?;
        let Some(kind) = kind_of(i.mode) else {
            bail!(
                "{} in {} has the unknown file type {:o}: the filesystem is corrupt",
                show(path),
                self.root,
                i.mode & S_IFMT
            );
        };
        Ok(Some(Stat {
            kind,
            mode: i.mode & 0o7777,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
                i.rdev
            } else {
                (0, 0)
            },
            ino: ino as u64,
            nlink: i.links,
            mtime: (i.mtime, i.mtime_nsec),
        }))
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (ino, i) = self.existing(path)?;
        if i.mode & S_IFMT != S_IFDIR {
            bail!("{} in {} is not a directory", show(path), self.root);
        }
        Ok(self
            .entries(ino, path)?
            .into_iter()
            .map(|(n, _, _)| n)
            .collect())
    }

    fn read_file(&self, path: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        let (ino, i) = self.existing(path)?;
        if i.mode & S_IFMT != S_IFREG {
            bail!("{} in {} is not a regular file", show(path), self.root);
        }
        let what = || format!("reading {} in {}", show(path), self.root);
        if i.flags & EXT4_INLINE_DATA_FL != 0 {
            let mut data = self.fs.read_inline(ino).with_context(what)?;
            if (data.len() as u64) < i.size {
                bail!(
                    "{}: inline data holds {} bytes, the inode says {}",
                    what(),
                    data.len(),
                    i.size
                );
            }
            data.truncate(i.size as usize);
            if !data.is_empty() {
                sink(&data)?;
            }
            return Ok(i.size);
        }
        let mut own = vec![];
        let mut shared = self.cache.buf.try_borrow_mut();
        let buf = match shared.as_mut() {
            Ok(b) => &mut **b,
            Err(_) => &mut own,
        };
        self.stream(ino, i.size, buf, sink).with_context(what)?;
        Ok(i.size)
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        let (ino, i) = self.existing(path)?;
        if i.mode & S_IFMT != S_IFLNK {
            bail!("{} in {} is not a symbolic link", show(path), self.root);
        }
        self.fs
            .read_link(ino)
            .with_context(|| format!("reading symlink {} in {}", show(path), self.root))
    }

    fn xattrs(&self, path: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
        let (ino, _) = self.existing(path)?;
        let all = self
            .fs
            .xattrs(ino)
            .with_context(|| format!("reading the xattrs of {} in {}", show(path), self.root))?;
        Ok(all
            .into_iter()
            // Where inline data keeps its tail; the kernel does not list it.
            .filter(|(n, _)| n != b"system.data")
            .map(|(n, v)| (String::from_utf8_lossy(&n).into_owned(), v))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;
    use std::process::Command;

    use super::super::testutil::{mkfs, pattern, run, sha, tool};
    use super::super::Fs;
    use super::*;

    /// Writes the tar stream `tar` at the root of `root`, and closes.
    fn write(root: &Root, tar: impl std::io::Read) {
        let mut fs = root.open_write(None).unwrap();
        fs.write_tar(b"/", tar, None).unwrap();
        fs.close().unwrap();
    }

    struct Entry<'a> {
        path: &'a [u8],
        kind: tar::EntryType,
        mode: u32,
        ids: (u64, u64),
        data: &'a [u8],
        link: &'a [u8],
        dev: (u32, u32),
        xattrs: Vec<(&'a str, &'a [u8])>,
    }

    fn entry(path: &[u8], kind: tar::EntryType) -> Entry<'_> {
        Entry {
            path,
            kind,
            mode: 0o644,
            ids: (0, 0),
            data: b"",
            link: b"",
            dev: (0, 0),
            xattrs: vec![],
        }
    }

    fn host(p: &[u8]) -> &Path {
        use std::os::unix::ffi::OsStrExt;
        Path::new(std::ffi::OsStr::from_bytes(p))
    }

    fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(vec![]);
        for e in entries {
            if !e.xattrs.is_empty() {
                let recs: Vec<(String, &[u8])> = e
                    .xattrs
                    .iter()
                    .map(|(n, v)| (format!("SCHILY.xattr.{n}"), *v))
                    .collect();
                b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
                    .unwrap();
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(e.kind);
            h.set_mode(e.mode);
            h.set_uid(e.ids.0);
            h.set_gid(e.ids.1);
            h.set_mtime(1_700_000_000);
            h.set_size(e.data.len() as u64);
            if e.kind == tar::EntryType::Char || e.kind == tar::EntryType::Block {
                h.set_device_major(e.dev.0).unwrap();
                h.set_device_minor(e.dev.1).unwrap();
            }
            if !e.link.is_empty() {
                b.append_link(&mut h, host(e.path), host(e.link)).unwrap();
            } else {
                b.append_data(&mut h, host(e.path), e.data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    /// File capabilities `cap_dac_override,cap_fowner` (VFS_CAP_REVISION_2):
    /// binary, with 0x0a and 0x00 bytes.
    const CAP: &[u8] = &[
        1, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    const INDEX_FL: u32 = 0x1000;

    struct Expect {
        big: Vec<u8>,
        sparse: Vec<u8>,
        slow: Vec<u8>,
        xattr_big: Vec<u8>,
        many: Vec<Vec<u8>>,
    }

    fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
        v.sort();
        v
    }

    fn err_of<T: std::fmt::Debug>(r: Result<T>) -> String {
        format!("{:#}", r.expect_err("an error"))
    }

    /// Everything written, read back; `many_indexed`: whether /data/many is
    /// expected to be a hash-indexed directory.
    fn check_tree(r: &Fs, x: &Expect, many_indexed: bool) {
        let st = |p: &[u8]| {
            r.stat(p)
                .unwrap()
                .unwrap_or_else(|| panic!("{} missing", show(p)))
        };

        let root = st(b"/");
        assert_eq!((root.kind, root.ino), (Kind::Dir, 2));
        assert_eq!(
            sorted(r.read_dir(b"/data").unwrap()),
            sorted(
                [
                    "big",
                    "empty",
                    "fast",
                    "slow",
                    "new\nline",
                    "null",
                    "bigdev",
                    "blk",
                    "fifo",
                    "hard1",
                    "hard2",
                    "opaque",
                    "linkdir",
                    "cap",
                    "many",
                    "sparse",
                ]
                .iter()
                .map(|n| n.as_bytes().to_vec())
                .collect()
            )
        );

        // A large file with a high uid/gid, setuid, read in large chunks.
        let big = st(b"/data/big");
        assert_eq!(
            (big.kind, big.mode, big.uid, big.gid, big.size, big.nlink, big.rdev),
            (
                Kind::File,
                0o4755,
                100_000,
                200_000,
                x.big.len() as u64,
                1,
                (0, 0)
            )
        );
        let mut chunks = vec![];
        let mut got = vec![];
        let n = r
            .read_file(b"/data/big", &mut |c| {
                chunks.push(c.len());
                got.extend_from_slice(c);
                Ok(())
            })
            .unwrap();
        assert_eq!(n, x.big.len() as u64);
        assert!(got == x.big, "/data/big differs");
        assert!(
            chunks[..chunks.len() - 1].iter().all(|&c| c >= 1 << 20),
            "{chunks:?}"
        );

        // A sparse file (holes read as zeros, also at its end).
        let sparse = st(b"/data/sparse");
        assert_eq!(sparse.size, x.sparse.len() as u64);
        let runs = r.raw().file_runs(sparse.ino as u32, 0, 64).unwrap();
        assert_eq!(runs.len(), 2, "the image should hold a hole: {runs:?}");
        assert!(runs[0].lblk + runs[0].len < runs[1].lblk, "{runs:?}");
        assert!(
            r.read_all(b"/data/sparse").unwrap() == x.sparse,
            "/data/sparse differs"
        );

        let empty = st(b"/data/empty");
        assert_eq!((empty.kind, empty.size), (Kind::File, 0));
        assert_eq!(r.read_all(b"/data/empty").unwrap(), b"");

        // Symlinks, fast and slow; lstat semantics.
        let fast = st(b"/data/fast");
        assert_eq!((fast.kind, fast.size, fast.mode), (Kind::Symlink, 6, 0o777));
        assert_eq!(r.read_link(b"/data/fast").unwrap(), b"target");
        assert_eq!(st(b"/data/slow").size, x.slow.len() as u64);
        assert_eq!(r.read_link(b"/data/slow").unwrap(), x.slow);
        assert_eq!(st(b"/data/linkdir").kind, Kind::Symlink);
        let e = err_of(r.stat(b"/data/linkdir/anything"));
        assert!(e.contains("/data/linkdir is a symbolic link"), "{e}");
        let e = err_of(r.read_dir(b"/data/linkdir/"));
        assert!(e.contains("/data/linkdir"), "{e}");
        let e = err_of(r.stat(b"/data/big/x"));
        assert!(e.contains("/data/big is not a directory"), "{e}");

        assert_eq!(r.read_all(b"/data/new\nline").unwrap(), b"nl\n");

        // Devices: old (8-bit) and new encodings, whiteouts.
        let dev = |p: &[u8]| {
            let s = st(p);
            (s.kind, s.rdev)
        };
        assert_eq!(dev(b"/data/null"), (Kind::CharDev, (0, 0)));
        assert_eq!(dev(b"/data/bigdev"), (Kind::CharDev, (300, 70_000)));
        assert_eq!(dev(b"/data/blk"), (Kind::BlockDev, (8, 1)));
        assert_eq!(st(b"/data/fifo").kind, Kind::Fifo);

        let (h1, h2) = (st(b"/data/hard1"), st(b"/data/hard2"));
        assert_eq!((h1.ino, h1.nlink, h2.nlink), (h2.ino, 2, 2));
        assert_eq!(r.read_all(b"/data/hard2").unwrap(), b"linked");

        // Xattrs: in the inode and in an external block.
        assert_eq!(
            r.xattrs(b"/data/opaque").unwrap(),
            vec![("trusted.overlay.opaque".to_string(), b"y".to_vec())]
        );
        assert_eq!(
            sorted(r.xattrs(b"/data/cap").unwrap()),
            vec![
                ("security.capability".to_string(), CAP.to_vec()),
                ("user.big".to_string(), x.xattr_big.clone()),
            ]
        );
        assert_eq!(r.xattrs(b"/data/big").unwrap(), vec![]);

        // 5,000 entries.
        let many = st(b"/data/many");
        let flags = r.raw().read_inode(many.ino as u32).unwrap().flags;
        assert_eq!(flags & INDEX_FL != 0, many_indexed, "flags {flags:#x}");
        assert_eq!(sorted(r.read_dir(b"/data/many").unwrap()), x.many);
        for name in x.many.iter().step_by(499) {
            let p = [&b"/data/many/"[..], name].concat();
            assert_eq!(st(&p).kind, Kind::File);
            assert_eq!(r.read_all(&p).unwrap(), name.as_slice());
        }

        // What is missing, and what is not what it is read as.
        assert_eq!(r.stat(b"/data/nope").unwrap(), None);
        assert_eq!(r.stat(b"/nope/deeper").unwrap(), None);
        assert!(err_of(r.read_file(b"/data/nope", &mut |_| Ok(())))
            .contains("/data/nope does not exist"));
        assert!(err_of(r.read_all(b"/data")).contains("/data in"));
        assert!(err_of(r.read_link(b"/data/big")).contains("not a symbolic link"));
        assert!(err_of(r.read_dir(b"/data/big")).contains("not a directory"));
        assert!(err_of(r.stat(b"data/big")).contains("not an absolute path"));
    }

    #[test]
    fn reads_what_the_writer_wrote() {
        let (Some(mke2fs), Some(debugfs), Some(e2fsck)) =
            (tool("mke2fs"), tool("debugfs"), tool("e2fsck"))
        else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("root.img");
        mkfs(&mke2fs, &img, 64, &[], None);
        let mut sparse = pattern(1 << 20, 11);
        sparse.resize(4 << 20, 0);
        sparse.extend(pattern((1 << 20) + 123, 13));
        sparse.resize(7 << 20, 0);
        let x = Expect {
            big: pattern((5 << 20) + 1234, 7),
            sparse,
            slow: "a-rather-long-directory-name/".repeat(7).into_bytes(),
            xattr_big: pattern(2000, 3),
            many: sorted(
                (0..5000)
                    .map(|i| format!("entry-{i:05}-{}", "x".repeat(i % 40)).into_bytes())
                    .collect(),
            ),
        };
        use tar::EntryType as T;
        let mut entries = vec![
            Entry {
                mode: 0o755,
                ..entry(b"data", T::Directory)
            },
            Entry {
                mode: 0o4755,
                ids: (100_000, 200_000),
                data: &x.big,
                ..entry(b"data/big", T::Regular)
            },
            entry(b"data/empty", T::Regular),
            Entry {
                mode: 0o777,
                link: b"target",
                ..entry(b"data/fast", T::Symlink)
            },
            Entry {
                mode: 0o777,
                link: &x.slow,
                ..entry(b"data/slow", T::Symlink)
            },
            Entry {
                mode: 0o777,
                link: b"opaque",
                ..entry(b"data/linkdir", T::Symlink)
            },
            Entry {
                data: b"nl\n",
                ..entry(b"data/new\nline", T::Regular)
            },
            entry(b"data/null", T::Char),
            Entry {
                dev: (300, 70_000),
                ..entry(b"data/bigdev", T::Char)
            },
            Entry {
                dev: (8, 1),
                ..entry(b"data/blk", T::Block)
            },
            entry(b"data/fifo", T::Fifo),
            Entry {
                data: b"linked",
                ..entry(b"data/hard1", T::Regular)
            },
            Entry {
                link: b"data/hard1",
                ..entry(b"data/hard2", T::Link)
            },
            Entry {
                mode: 0o755,
                xattrs: vec![("trusted.overlay.opaque", b"y")],
                ..entry(b"data/opaque", T::Directory)
            },
            Entry {
                xattrs: vec![("security.capability", CAP), ("user.big", &x.xattr_big)],
                ..entry(b"data/cap", T::Regular)
            },
            Entry {
                mode: 0o755,
                ..entry(b"data/many", T::Directory)
            },
        ];
        let many: Vec<Vec<u8>> = x
            .many
            .iter()
            .map(|n| [&b"data/many/"[..], n].concat())
            .collect();
        for (path, name) in many.iter().zip(&x.many) {
            entries.push(Entry {
                data: name,
                ..entry(path, T::Regular)
            });
        }
        let root = Root::new(&img, 0);
        write(&root, &tar_of(&entries)[..]);

        // The writer allocates every block: a file with holes comes from
        // debugfs, which leaves all-zero blocks unallocated.
        let host = dir.path().join("sparse");
        std::fs::write(&host, &x.sparse).unwrap();
        let cmds = dir.path().join("cmds");
        std::fs::write(
            &cmds,
            format!("cd /data\nwrite {} sparse\n", host.display()),
        )
        .unwrap();
        run(Command::new(&debugfs)
            .arg("-w")
            .arg("-f")
            .arg(&cmds)
            .arg(&img));

        let before = sha(&img);
        check_tree(&root.open_read().unwrap(), &x, false);
        assert!(sha(&img) == before, "reading changed the image file");

        // e2fsck -D turns the large directory into a hash-indexed one.
        let out = Command::new(&e2fsck)
            .arg("-fyD")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "e2fsck -fyD: {out:?}"
        );
        let before = sha(&img);
        check_tree(&root.open_read().unwrap(), &x, true);
        assert!(sha(&img) == before, "reading changed the image file");
    }

    #[test]
    fn inline_data() {
        let Some(mke2fs) = tool("mke2fs") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let mid = pattern(100, 5);
        let target = "t/".repeat(35);
        std::fs::write(src.join("small"), b"hello\n").unwrap();
        std::fs::write(src.join("mid"), &mid).unwrap();
        std::fs::write(src.join("sub/a"), b"a").unwrap();
        std::os::unix::fs::symlink(&target, src.join("link")).unwrap();
        let img = dir.path().join("root.img");
        mkfs(&mke2fs, &img, 16, &["-O", "inline_data"], Some(&src));

        let before = sha(&img);
        let r = Root::new(&img, 0).open_read().unwrap();
        for (p, want) in [
            (&b"/small"[..], &b"hello\n"[..]),
            (b"/mid", &mid),
            (b"/sub/a", b"a"),
        ] {
            let ino = r.stat(p).unwrap().unwrap().ino as u32;
            let flags = r.raw().read_inode(ino).unwrap().flags;
            assert!(
                flags & EXT4_INLINE_DATA_FL != 0,
                "{} is not inline",
                show(p)
            );
            assert_eq!(r.read_all(p).unwrap(), want, "{}", show(p));
            assert_eq!(r.xattrs(p).unwrap(), vec![], "{}", show(p));
        }
        assert_eq!(r.read_link(b"/link").unwrap(), target.as_bytes());
        assert_eq!(r.read_dir(b"/sub").unwrap(), vec![b"a".to_vec()]);
        drop(r);
        assert!(sha(&img) == before, "reading changed the image file");
    }

    /// A damaged extent tree is an error naming the file, not a crash.
    #[test]
    fn corrupt_extents_are_an_error() {
        let (Some(mke2fs), Some(debugfs)) = (tool("mke2fs"), tool("debugfs")) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), pattern(40_000, 9)).unwrap();
        let img = dir.path().join("root.img");
        // Without metadata_csum the inode checksum does not catch it first.
        mkfs(&mke2fs, &img, 16, &["-O", "^metadata_csum"], Some(&src));
        let out = run(Command::new(&debugfs).arg("-R").arg("imap /f").arg(&img));
        // "Inode 12 is part of block group 0\n\tlocated at block 1234, offset 0x0b00"
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let block: u64 = text
            .split("located at block ")
            .nth(1)
            .and_then(|t| t.split(',').next())
            .and_then(|b| b.trim().parse().ok())
            .unwrap_or_else(|| panic!("debugfs imap: {text}"));
        let offset = text
            .split("offset 0x")
            .nth(1)
            .and_then(|t| u64::from_str_radix(t.trim(), 16).ok())
            .unwrap_or_else(|| panic!("debugfs imap: {text}"));
        // i_block (the extent header's magic first) is at byte 40 of the inode.
        let at = block * 4096 + offset + 40;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0xde, 0xad], at).unwrap();
        drop(f);

        let r = Root::new(&img, 0).open_read().unwrap();
        assert_eq!(r.stat(b"/f").unwrap().unwrap().size, 40_000);
        let e = err_of(r.read_all(b"/f"));
        assert!(e.contains("reading /f in"), "{e}");
    }

    /// Not an assertion: how fast a large file streams, against `cat`.
    #[test]
    fn throughput_against_cat() {
        let Some(mke2fs) = tool("mke2fs") else {
            return;
        };
        const SIZE: u64 = 256 << 20;
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("data");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&host).unwrap());
            for i in 0..SIZE >> 20 {
                f.write_all(&pattern(1 << 20, i)).unwrap();
            }
            f.flush().unwrap();
        }
        let tar_path = dir.path().join("data.tar");
        {
            let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
            b.append_path_with_name(&host, "data").unwrap();
            b.into_inner().unwrap();
        }
        let img = dir.path().join("root.img");
        mkfs(&mke2fs, &img, 300, &[], None);
        let root = Root::new(&img, 0);
        let tar = std::fs::File::open(&tar_path).unwrap();
        write(&root, tar);
        std::fs::remove_file(&tar_path).unwrap();

        let r = root.open_read().unwrap();
        let mut ours = f64::MAX;
        let mut cats = f64::MAX;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let mut n = 0u64;
            r.read_file(b"/data", &mut |c| {
                n += c.len() as u64;
                Ok(())
            })
            .unwrap();
            assert_eq!(n, SIZE);
            ours = ours.min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            let out = Command::new("cat")
                .arg(&host)
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(out.success());
            cats = cats.min(t.elapsed().as_secs_f64());
        }
        let mb = SIZE as f64 / 1e6;
        println!(
            "ext4::read throughput, 256 MiB file, best of 3: ext4::Fs {:.0} MB/s, cat {:.0} MB/s ({:.2}x)",
            mb / ours,
            mb / cats,
            cats / ours
        );
    }
}
