//! The only place that touches libext2fs (through `shim.c`). Everything
//! outside this file sees the safe [`Filsys`] handle and plain Rust types.

use std::ffi::{c_char, c_int, c_long, c_void, CStr, CString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

#[repr(C)]
struct RawFs {
    _private: [u8; 0],
}

#[repr(C)]
#[derive(Default)]
struct RawInfo {
    blocks_count: u64,
    free_blocks: u64,
    reserved_blocks: u64,
    inodes_count: u32,
    free_inodes: u32,
    block_size: u32,
    inode_size: u32,
    feature_compat: u32,
    feature_incompat: u32,
    feature_ro_compat: u32,
    state: u32,
    needs_recovery: u32,
    orphans_present: u32,
    uuid: [u8; 16],
    label: [c_char; 17],
}

#[repr(C)]
struct RawAttr {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    now: i64,
}

#[repr(C)]
#[derive(Default)]
struct RawStat {
    mode: u32,
    uid: u32,
    gid: u32,
    links: u32,
    flags: u32,
    size: u64,
}

type DirentCb = extern "C" fn(*mut c_void, *const c_char, c_int, u32) -> c_int;
type DirentTypeCb = extern "C" fn(*mut c_void, *const c_char, c_int, u32, c_int) -> c_int;
type XattrCb = extern "C" fn(*mut c_void, *const c_char, *const c_void, usize) -> c_int;

#[repr(C)]
#[derive(Default)]
struct RawInode {
    mode: u32,
    uid: u32,
    gid: u32,
    links: u32,
    flags: u32,
    major: u32,
    minor: u32,
    fast_symlink: u32,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RawRun {
    lblk: u64,
    pblk: u64,
    len: u64,
    uninit: u32,
}

extern "C" {
    fn fp_strerror(err: c_long) -> *const c_char;
    fn fp_is_full(err: c_long) -> c_int;
    fn fp_is_not_found(err: c_long) -> c_int;
    fn fp_open(
        path: *const c_char,
        offset: u64,
        rw: c_int,
        now: i64,
        out: *mut *mut RawFs,
    ) -> c_long;
    fn fp_now(fs: *mut RawFs) -> i64;
    fn fp_wtime(fs: *mut RawFs) -> i64;
    fn fp_info(fs: *mut RawFs, info: *mut RawInfo);
    fn fp_close(fs: *mut RawFs) -> c_long;
    fn fp_abandon(fs: *mut RawFs);
    fn fp_lookup(
        fs: *mut RawFs,
        dir: u32,
        name: *const c_char,
        len: c_int,
        ino: *mut u32,
    ) -> c_long;
    fn fp_stat(fs: *mut RawFs, ino: u32, st: *mut RawStat) -> c_long;
    fn fp_set_attr(fs: *mut RawFs, ino: u32, a: *const RawAttr) -> c_long;
    fn fp_mkdir(fs: *mut RawFs, parent: u32, a: *const RawAttr, ino: *mut u32) -> c_long;
    fn fp_symlink(
        fs: *mut RawFs,
        parent: u32,
        a: *const RawAttr,
        target: *const c_char,
        ino: *mut u32,
    ) -> c_long;
    fn fp_create(
        fs: *mut RawFs,
        parent: u32,
        a: *const RawAttr,
        major: u32,
        minor: u32,
        ino: *mut u32,
    ) -> c_long;
    fn fp_file_alloc(fs: *mut RawFs, ino: u32, size: u64) -> c_long;
    fn fp_file_map(fs: *mut RawFs, ino: u32, lblk: u64, pblk: *mut u64, len: *mut u64) -> c_long;
    fn fp_write_blocks(fs: *mut RawFs, pblk: u64, count: u64, buf: *const c_void) -> c_long;
    fn fp_set_xattrs(
        fs: *mut RawFs,
        ino: u32,
        n: u32,
        names: *const *const c_char,
        values: *const *const c_void,
        lens: *const usize,
    ) -> c_long;
    fn fp_add_links(fs: *mut RawFs, ino: u32, delta: c_int) -> c_long;
    fn fp_free_inode(fs: *mut RawFs, ino: u32) -> c_long;
    fn fp_list_dir(fs: *mut RawFs, dir: u32, cb: DirentCb, ctx: *mut c_void) -> c_long;
    fn fp_link(
        fs: *mut RawFs,
        dir: u32,
        name: *const c_char,
        len: c_int,
        ino: u32,
        mode: u32,
    ) -> c_long;
    fn fp_unlink(fs: *mut RawFs, dir: u32, name: *const c_char, len: c_int, ino: u32) -> c_long;
    fn fp_read_inode(fs: *mut RawFs, ino: u32, st: *mut RawInode) -> c_long;
    fn fp_read_link(
        fs: *mut RawFs,
        ino: u32,
        buf: *mut c_char,
        bufsize: usize,
        len: *mut usize,
    ) -> c_long;
    fn fp_file_runs(
        fs: *mut RawFs,
        ino: u32,
        from: u64,
        runs: *mut RawRun,
        max: u32,
        n: *mut u32,
    ) -> c_long;
    fn fp_read_blocks(fs: *mut RawFs, pblk: u64, count: u64, buf: *mut c_void) -> c_long;
    fn fp_read_inline(
        fs: *mut RawFs,
        ino: u32,
        buf: *mut c_void,
        bufsize: usize,
        len: *mut usize,
    ) -> c_long;
    fn fp_list_xattrs(fs: *mut RawFs, ino: u32, cb: XattrCb, ctx: *mut c_void) -> c_long;
    fn fp_read_dir(fs: *mut RawFs, dir: u32, cb: DirentTypeCb, ctx: *mut c_void) -> c_long;
}

/// A libext2fs error code with its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errcode(c_long);

impl Errcode {
    /// No free block or inode was left.
    pub fn is_full(self) -> bool {
        // SAFETY: pure function of an integer.
        unsafe { fp_is_full(self.0) != 0 }
    }

    pub fn is_not_found(self) -> bool {
        // SAFETY: pure function of an integer.
        unsafe { fp_is_not_found(self.0) != 0 }
    }
}

impl fmt::Display for Errcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: error_message() returns a pointer to a static or
        // thread-local NUL-terminated string, valid until the next call.
        let msg = unsafe { CStr::from_ptr(fp_strerror(self.0)) };
        write!(f, "{}", msg.to_string_lossy())
    }
}

impl std::error::Error for Errcode {}

fn check(err: c_long) -> Result<(), Errcode> {
    if err == 0 {
        Ok(())
    } else {
        Err(Errcode(err))
    }
}

/// Superblock facts of an opened filesystem.
#[derive(Debug, Clone)]
pub struct Info {
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub inodes_count: u32,
    pub free_inodes: u32,
    pub block_size: u32,
    pub inode_size: u32,
    pub feature_incompat: u32,
    pub feature_ro_compat: u32,
    pub state: u32,
    pub needs_recovery: bool,
    pub orphans_present: bool,
    pub uuid: [u8; 16],
    pub label: String,
}

/// Ownership, permission bits and times for a new or updated inode.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    /// Full st_mode (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Written as atime, ctime and crtime.
    pub now: i64,
}

impl Attr {
    fn raw(&self) -> RawAttr {
        RawAttr {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            now: self.now,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Stat {
    pub mode: u32,
    pub links: u32,
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const ROOT_INO: u32 = 2;

impl Stat {
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
}

/// An open ext2/3/4 filesystem inside a file at a byte offset (libext2fs'
/// `ext2_filsys`).
pub struct Filsys {
    raw: *mut RawFs,
    block_size: u64,
}

// SAFETY: an ext2_filsys is heap state reached only through this pointer,
// with no thread affinity (no thread-local state, no lock held between
// calls). Filsys is not Sync and every call goes through &self or &mut
// self, so one thread at a time uses it; moving it to another thread (a
// blocking task writing ROOT) is sound.
unsafe impl Send for Filsys {}

fn cstring(bytes: &[u8]) -> Result<CString, Errcode> {
    // EXT2_ET_INVALID_ARGUMENT is not exported as a number; a name with a
    // NUL byte cannot come from tar anyway, so any error code will do.
    CString::new(bytes).map_err(|_| Errcode(libc_einval()))
}

fn libc_einval() -> c_long {
    22
}

/// A directory entry name as the shim takes it: its bytes and length.
fn name_arg(name: &[u8]) -> Result<(*const c_char, c_int), Errcode> {
    let len = c_int::try_from(name.len()).map_err(|_| Errcode(libc_einval()))?;
    Ok((name.as_ptr().cast(), len))
}

impl Filsys {
    /// Opens the filesystem that starts `offset` bytes into `path`. Written,
    /// what it stamps is `now` (seconds since 1970), or when None the time
    /// its superblock says it was last written.
    pub fn open(
        path: &Path,
        offset: u64,
        writable: bool,
        now: Option<i64>,
    ) -> Result<Filsys, Errcode> {
        let cpath = cstring(path.as_os_str().as_bytes())?;
        let mut raw = std::ptr::null_mut();
        let now = now.unwrap_or(0);
        // SAFETY: cpath is a valid C string for the call; raw is written
        // only on success and is then owned by the returned Filsys.
        check(unsafe { fp_open(cpath.as_ptr(), offset, writable as c_int, now, &mut raw) })?;
        let mut fs = Filsys { raw, block_size: 0 };
        fs.block_size = fs.info().block_size as u64;
        Ok(fs)
    }

    /// The time this filesystem stamps (see [`Filsys::open`]).
    pub fn now(&self) -> i64 {
        // SAFETY: self.raw is a live filesystem.
        unsafe { fp_now(self.raw) }
    }

    /// When the superblock says the filesystem was last written.
    pub fn written_at(&self) -> i64 {
        // SAFETY: self.raw is a live filesystem.
        unsafe { fp_wtime(self.raw) }
    }

    pub fn info(&self) -> Info {
        let mut raw = RawInfo::default();
        // SAFETY: self.raw is a live filesystem; raw is a properly sized
        // struct matching struct fp_info.
        unsafe { fp_info(self.raw, &mut raw) };
        let label: Vec<u8> = raw
            .label
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Info {
            blocks_count: raw.blocks_count,
            free_blocks: raw.free_blocks,
            inodes_count: raw.inodes_count,
            free_inodes: raw.free_inodes,
            block_size: raw.block_size,
            inode_size: raw.inode_size,
            feature_incompat: raw.feature_incompat,
            feature_ro_compat: raw.feature_ro_compat,
            state: raw.state,
            needs_recovery: raw.needs_recovery != 0,
            orphans_present: raw.orphans_present != 0,
            uuid: raw.uuid,
            label: String::from_utf8_lossy(&label).into_owned(),
        }
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Writes superblock, group descriptors and bitmaps, and closes.
    pub fn close(mut self) -> Result<(), Errcode> {
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        // SAFETY: raw is live and is not used again (self.raw is null, so
        // Drop does nothing).
        check(unsafe { fp_close(raw) })
    }

    pub fn lookup(&self, dir: u32, name: &[u8]) -> Result<Option<u32>, Errcode> {
        let mut ino = 0;
        let (ptr, len) = name_arg(name)?;
        // SAFETY: ptr points to len readable bytes of name, which outlives
        // the call; ino is valid.
        let err = unsafe { fp_lookup(self.raw, dir, ptr, len, &mut ino) };
        match check(err) {
            Ok(()) => Ok(Some(ino)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn stat(&self, ino: u32) -> Result<Stat, Errcode> {
        let mut raw = RawStat::default();
        // SAFETY: raw matches struct fp_stat.
        check(unsafe { fp_stat(self.raw, ino, &mut raw) })?;
        Ok(Stat {
            mode: raw.mode,
            links: raw.links,
        })
    }

    pub fn set_attr(&mut self, ino: u32, attr: &Attr) -> Result<(), Errcode> {
        // SAFETY: the attr struct lives for the call.
        check(unsafe { fp_set_attr(self.raw, ino, &attr.raw()) })
    }

    /// A new directory (not yet linked) whose ".." is `parent`.
    pub fn mkdir(&mut self, parent: u32, attr: &Attr) -> Result<u32, Errcode> {
        let mut ino = 0;
        // SAFETY: pointers valid for the call.
        check(unsafe { fp_mkdir(self.raw, parent, &attr.raw(), &mut ino) })?;
        Ok(ino)
    }

    /// A new symlink (not yet linked).
    pub fn symlink(&mut self, parent: u32, attr: &Attr, target: &[u8]) -> Result<u32, Errcode> {
        let ctarget = cstring(target)?;
        let mut ino = 0;
        // SAFETY: pointers valid for the call.
        check(unsafe { fp_symlink(self.raw, parent, &attr.raw(), ctarget.as_ptr(), &mut ino) })?;
        Ok(ino)
    }

    /// A new empty inode of another type (not yet linked); `rdev` is the
    /// (major, minor) pair of a device node.
    pub fn create(&mut self, parent: u32, attr: &Attr, rdev: (u32, u32)) -> Result<u32, Errcode> {
        let mut ino = 0;
        // SAFETY: pointers valid for the call.
        check(unsafe { fp_create(self.raw, parent, &attr.raw(), rdev.0, rdev.1, &mut ino) })?;
        Ok(ino)
    }

    /// Sets the size of a new regular file and allocates all its blocks.
    pub fn file_alloc(&mut self, ino: u32, size: u64) -> Result<(), Errcode> {
        // SAFETY: plain values.
        check(unsafe { fp_file_alloc(self.raw, ino, size) })
    }

    /// The physical run (first block, block count) holding logical block
    /// `lblk` of `ino`.
    pub fn file_map(&self, ino: u32, lblk: u64) -> Result<(u64, u64), Errcode> {
        let (mut pblk, mut len) = (0, 0);
        // SAFETY: out-pointers valid for the call.
        check(unsafe { fp_file_map(self.raw, ino, lblk, &mut pblk, &mut len) })?;
        Ok((pblk, len))
    }

    /// Writes `buf` (a whole number of blocks) at physical block `pblk`.
    pub fn write_blocks(&mut self, pblk: u64, buf: &[u8]) -> Result<(), Errcode> {
        assert_eq!(buf.len() as u64 % self.block_size, 0);
        let count = buf.len() as u64 / self.block_size;
        // SAFETY: buf holds count whole blocks.
        check(unsafe { fp_write_blocks(self.raw, pblk, count, buf.as_ptr().cast()) })
    }

    pub fn set_xattrs(&mut self, ino: u32, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), Errcode> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let names = xattrs
            .iter()
            .map(|(n, _)| cstring(n))
            .collect::<Result<Vec<_>, _>>()?;
        let name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let value_ptrs: Vec<*const c_void> =
            xattrs.iter().map(|(_, v)| v.as_ptr().cast()).collect();
        let lens: Vec<usize> = xattrs.iter().map(|(_, v)| v.len()).collect();
        // SAFETY: the three arrays have xattrs.len() elements and outlive
        // the call; each value pointer is valid for its length.
        check(unsafe {
            fp_set_xattrs(
                self.raw,
                ino,
                xattrs.len() as u32,
                name_ptrs.as_ptr(),
                value_ptrs.as_ptr(),
                lens.as_ptr(),
            )
        })
    }

    pub fn add_links(&mut self, ino: u32, delta: i32) -> Result<(), Errcode> {
        // SAFETY: plain values.
        check(unsafe { fp_add_links(self.raw, ino, delta) })
    }

    /// Frees an inode that no directory entry names any more.
    pub fn free_inode(&mut self, ino: u32) -> Result<(), Errcode> {
        // SAFETY: plain values.
        check(unsafe { fp_free_inode(self.raw, ino) })
    }

    /// Calls `f(name, ino)` for each entry of `dir` but "." and "..".
    pub fn list_dir<F: FnMut(&[u8], u32)>(&self, dir: u32, mut f: F) -> Result<(), Errcode> {
        extern "C" fn trampoline<G: FnMut(&[u8], u32)>(
            ctx: *mut c_void,
            name: *const c_char,
            len: c_int,
            ino: u32,
        ) -> c_int {
            // SAFETY: ctx is the &mut F passed below, alive for the whole
            // fp_list_dir call; name points to len bytes of a dir entry.
            let (f, name) = unsafe {
                (
                    &mut *(ctx as *mut G),
                    std::slice::from_raw_parts(name.cast::<u8>(), len as usize),
                )
            };
            f(name, ino);
            0
        }
        // SAFETY: the callback only uses ctx as the F it was created for.
        check(unsafe {
            fp_list_dir(
                self.raw,
                dir,
                trampoline::<F>,
                &mut f as *mut F as *mut c_void,
            )
        })
    }

    /// Adds the entry `name` -> `ino` (whose mode is `mode`) to `dir`;
    /// `name` must not be in `dir` yet.
    pub fn link(&mut self, dir: u32, name: &[u8], ino: u32, mode: u32) -> Result<(), Errcode> {
        let (ptr, len) = name_arg(name)?;
        // SAFETY: ptr points to len readable bytes of name, which outlives
        // the call.
        check(unsafe { fp_link(self.raw, dir, ptr, len, ino, mode) })
    }

    pub fn unlink(&mut self, dir: u32, name: &[u8], ino: u32) -> Result<(), Errcode> {
        let (ptr, len) = name_arg(name)?;
        // SAFETY: ptr points to len readable bytes of name, which outlives
        // the call.
        check(unsafe { fp_unlink(self.raw, dir, ptr, len, ino) })
    }
}

/// An inode as `lstat` shows it.
#[derive(Debug, Clone, Copy)]
pub struct Inode {
    /// Full st_mode (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub links: u32,
    /// i_flags (EXT4_INLINE_DATA_FL, ...).
    pub flags: u32,
    /// (major, minor) of a character or block device, else (0, 0).
    pub rdev: (u32, u32),
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
}

/// A run of mapped blocks of a file: logical start, physical start, length
/// in blocks; `uninit` blocks are allocated but read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub lblk: u64,
    pub pblk: u64,
    pub len: u64,
    pub uninit: bool,
}

/// An extended attribute: full name and value.
pub type Xattr = (Vec<u8>, Vec<u8>);

/// The file type of a directory entry as stored in it (EXT2_FT_*); 0 when
/// the filesystem does not record it.
pub const FT_DIR: u8 = 2;
pub const FT_SYMLINK: u8 = 7;

/// Reading: none of these writes anything, so they take `&self`.
impl Filsys {
    pub fn read_inode(&self, ino: u32) -> Result<Inode, Errcode> {
        let mut raw = RawInode::default();
        // SAFETY: self.raw is a live filesystem; raw matches struct
        // fp_inode and is valid for the call.
        check(unsafe { fp_read_inode(self.raw, ino, &mut raw) })?;
        Ok(Inode {
            mode: raw.mode,
            uid: raw.uid,
            gid: raw.gid,
            links: raw.links,
            flags: raw.flags,
            rdev: (raw.major, raw.minor),
            size: raw.size,
            mtime: raw.mtime,
            mtime_nsec: raw.mtime_nsec,
        })
    }

    /// The target of the symlink `ino` (fast, slow or inline).
    pub fn read_link(&self, ino: u32) -> Result<Vec<u8>, Errcode> {
        let mut buf = vec![0u8; self.block_size.max(4096) as usize];
        let mut len = 0usize;
        // SAFETY: buf is writable for buf.len() bytes, which the shim never
        // exceeds; len is valid for the call.
        check(unsafe {
            fp_read_link(self.raw, ino, buf.as_mut_ptr().cast(), buf.len(), &mut len)
        })?;
        buf.truncate(len.min(buf.len()));
        Ok(buf)
    }

    /// Up to `max` runs of the mapped blocks of `ino`, in logical order,
    /// from the first one that ends after logical block `from`; empty when
    /// no block at or after `from` is mapped.
    pub fn file_runs(&self, ino: u32, from: u64, max: usize) -> Result<Vec<Run>, Errcode> {
        let max = max.clamp(1, 1 << 16);
        let mut raw = vec![RawRun::default(); max];
        let mut n = 0u32;
        // SAFETY: raw holds max elements, which is the limit given to the
        // shim; n is valid for the call.
        check(unsafe { fp_file_runs(self.raw, ino, from, raw.as_mut_ptr(), max as u32, &mut n) })?;
        Ok(raw[..(n as usize).min(max)]
            .iter()
            .map(|r| Run {
                lblk: r.lblk,
                pblk: r.pblk,
                len: r.len,
                uninit: r.uninit != 0,
            })
            .collect())
    }

    /// Fills `buf` (a whole number of blocks) from physical block `pblk` on.
    pub fn read_blocks(&self, pblk: u64, buf: &mut [u8]) -> Result<(), Errcode> {
        if !(buf.len() as u64).is_multiple_of(self.block_size) {
            return Err(Errcode(libc_einval()));
        }
        let count = buf.len() as u64 / self.block_size;
        // SAFETY: buf is writable for count whole blocks; the shim reads
        // exactly that many.
        check(unsafe { fp_read_blocks(self.raw, pblk, count, buf.as_mut_ptr().cast()) })
    }

    /// The content of an inline-data inode.
    pub fn read_inline(&self, ino: u32) -> Result<Vec<u8>, Errcode> {
        // Inline data lives in i_block and the inode's xattr space: never
        // more than an inode (at most a block).
        let mut buf = vec![0u8; self.block_size.max(4096) as usize];
        let mut len = 0usize;
        // SAFETY: buf is writable for buf.len() bytes, the limit given to
        // the shim; len is valid for the call.
        check(unsafe {
            fp_read_inline(self.raw, ino, buf.as_mut_ptr().cast(), buf.len(), &mut len)
        })?;
        buf.truncate(len.min(buf.len()));
        Ok(buf)
    }

    /// Every extended attribute of `ino`, with its full name
    /// (`trusted.overlay.opaque`, `system.posix_acl_access`, ...).
    pub fn xattrs(&self, ino: u32) -> Result<Vec<Xattr>, Errcode> {
        extern "C" fn collect(
            ctx: *mut c_void,
            name: *const c_char,
            value: *const c_void,
            len: usize,
        ) -> c_int {
            // SAFETY: ctx is the Vec passed below, alive for the whole
            // fp_list_xattrs call; name is a NUL-terminated string and
            // value points to len bytes (or is unused when len is 0), both
            // owned by the xattr handle during the callback.
            let (out, name, value) = unsafe {
                (
                    &mut *(ctx as *mut Vec<Xattr>),
                    CStr::from_ptr(name).to_bytes().to_vec(),
                    if len == 0 || value.is_null() {
                        vec![]
                    } else {
                        std::slice::from_raw_parts(value.cast::<u8>(), len).to_vec()
                    },
                )
            };
            out.push((name, value));
            0
        }
        let mut out: Vec<Xattr> = vec![];
        // SAFETY: the callback only uses ctx as the Vec it was made for.
        check(unsafe {
            fp_list_xattrs(
                self.raw,
                ino,
                collect,
                &mut out as *mut Vec<Xattr> as *mut c_void,
            )
        })?;
        Ok(out)
    }

    /// The entries of `dir` but "." and "..": (name, inode, EXT2_FT_* type).
    pub fn read_dir(&self, dir: u32) -> Result<Vec<(Vec<u8>, u32, u8)>, Errcode> {
        extern "C" fn collect(
            ctx: *mut c_void,
            name: *const c_char,
            len: c_int,
            ino: u32,
            ftype: c_int,
        ) -> c_int {
            // SAFETY: ctx is the Vec passed below, alive for the whole
            // fp_read_dir call; name points to len bytes of a dir entry.
            let (out, name) = unsafe {
                (
                    &mut *(ctx as *mut Vec<(Vec<u8>, u32, u8)>),
                    std::slice::from_raw_parts(name.cast::<u8>(), len.max(0) as usize),
                )
            };
            out.push((name.to_vec(), ino, ftype as u8));
            0
        }
        let mut out: Vec<(Vec<u8>, u32, u8)> = vec![];
        // SAFETY: the callback only uses ctx as the Vec it was made for.
        check(unsafe {
            fp_read_dir(
                self.raw,
                dir,
                collect,
                &mut out as *mut Vec<(Vec<u8>, u32, u8)> as *mut c_void,
            )
        })?;
        Ok(out)
    }
}

impl Drop for Filsys {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: raw is live and not used after this. Nothing is
            // written: a filesystem dropped without close() was only read,
            // or a write failed so badly that flushing would not help.
            unsafe { fp_abandon(self.raw) };
        }
    }
}
