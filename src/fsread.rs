//! Reading a filesystem tree the way `inspect` and `verify` need: by byte
//! paths, without following symlinks, with device numbers and xattrs. ROOT
//! of a disk image is read through libext2fs (an `ext4::Fs` opened read-only,
//! no root, no mount); a directory of this machine through `HostDir`.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// What a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

/// `lstat` of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits (and setuid/setgid/sticky), without the type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// (major, minor) of a device, else (0, 0).
    pub rdev: (u32, u32),
    pub ino: u64,
    pub nlink: u32,
    /// Modification time: seconds since 1970 and nanoseconds.
    pub mtime: (i64, u32),
}

/// A read-only tree. Paths are absolute byte strings (`/var/lib/docker/...`):
/// names may hold any byte but `/` and NUL.
pub trait FsRead {
    /// `lstat`; None when the path does not exist.
    fn stat(&self, path: &[u8]) -> Result<Option<Stat>>;
    /// The names in a directory, without `.` and `..`, in no set order.
    fn read_dir(&self, path: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Streams a regular file's content into `sink`, chunk by chunk, and
    /// returns its length.
    fn read_file(&self, path: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64>;
    /// A symlink's target.
    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>>;
    /// Every xattr (`trusted.overlay.opaque`, `security.capability`, ...)
    /// with its value.
    fn xattrs(&self, path: &[u8]) -> Result<Vec<(String, Vec<u8>)>>;

    /// A whole (small) file.
    fn read_all(&self, path: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![];
        self.read_file(path, &mut |chunk| {
            out.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Whether `path` is a directory in `fs`.
pub fn is_dir(fs: &dyn FsRead, path: &[u8]) -> Result<bool> {
    Ok(matches!(fs.stat(path)?, Some(s) if s.kind == Kind::Dir))
}

/// `dir/rel` (just `dir` when `rel` is empty).
pub fn join(dir: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !rel.is_empty() {
        if !p.ends_with(b"/") {
            p.push(b'/');
        }
        p.extend_from_slice(rel);
    }
    p
}

/// A byte path for messages.
pub fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// A directory of this machine read as if it were `/`: the store of the
/// stopped daemon in the build container, which the export helper plans
/// from, and the unit tests' trees (reading `trusted.*` xattrs needs root).
pub struct HostDir(pub PathBuf);

impl HostDir {
    fn host(&self, path: &[u8]) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let rel = path.strip_prefix(b"/").unwrap_or(path);
        self.0.join(std::ffi::OsStr::from_bytes(rel))
    }
}

impl FsRead for HostDir {
    fn stat(&self, path: &[u8]) -> Result<Option<Stat>> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let p = self.host(path);
        let md = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("{}", p.display()))),
        };
        let t = md.file_type();
        let kind = if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else if t.is_char_device() {
            Kind::CharDev
        } else if t.is_block_device() {
            Kind::BlockDev
        } else if t.is_fifo() {
            Kind::Fifo
        } else if t.is_socket() {
            Kind::Socket
        } else {
            Kind::File
        };
        let rdev = md.rdev();
        Ok(Some(Stat {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: md.len(),
            rdev: (
                rustix::fs::major(rdev) as u32,
                rustix::fs::minor(rdev) as u32,
            ),
            ino: md.ino(),
            nlink: md.nlink() as u32,
            mtime: (md.mtime(), md.mtime_nsec() as u32),
        }))
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<Vec<u8>>> {
        use std::os::unix::ffi::OsStrExt;
        let mut out = vec![];
        let dir = self.host(path);
        let listing = || format!("listing {}", dir.display());
        for e in std::fs::read_dir(&dir).with_context(listing)? {
            out.push(e.with_context(listing)?.file_name().as_bytes().to_vec());
        }
        Ok(out)
    }

    fn read_file(&self, path: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        use std::io::Read;
        let file = self.host(path);
        let mut f =
            std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", file.display()))?;
            if k == 0 {
                return Ok(n);
            }
            sink(&buf[..k])?;
            n += k as u64;
        }
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let link = self.host(path);
        Ok(std::fs::read_link(&link)
            .with_context(|| format!("reading the link {}", link.display()))?
            .as_os_str()
            .as_bytes()
            .to_vec())
    }

    fn xattrs(&self, path: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
        let p = self.host(path);
        let mut names = vec![0u8; 64 * 1024];
        let n = rustix::fs::llistxattr(&p, &mut names[..])
            .with_context(|| format!("listing the xattrs of {}", p.display()))?;
        let mut out = vec![];
        for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
            let name = String::from_utf8_lossy(name).into_owned();
            let mut value = vec![0u8; 64 * 1024];
            let k = rustix::fs::lgetxattr(&p, name.as_str(), &mut value[..])
                .with_context(|| format!("reading xattr {name} of {}", p.display()))?;
            value.truncate(k);
            out.push((name, value));
        }
        Ok(out)
    }
}
