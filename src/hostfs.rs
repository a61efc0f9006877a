//! The host's filesystems (hence `hostfs`, beside `disk`, the image's):
//! those of this machine that hold the output, how much room they have
//! and which one they are, for the checks made before anything
//! is written and for a write that finds one full.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The filesystem holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFs {
    /// Where it is mounted ("/" when /proc/self/mountinfo does not say).
    pub mount: PathBuf,
    /// Bytes an unprivileged writer may still use (`df`'s "Avail").
    pub avail: u64,
}

/// The filesystem holding `path` (which must exist).
pub fn of(path: &Path) -> Result<HostFs> {
    let st = rustix::fs::statvfs(path).with_context(|| {
        format!(
            "reading the free space of the filesystem of {}",
            path.display()
        )
    })?;
    let dev = rustix::fs::stat(path)
        .with_context(|| format!("reading {}", path.display()))?
        .st_dev;
    let want = format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev));
    // mountinfo: ID PARENT MAJOR:MINOR ROOT MOUNTPOINT ...: of the mounts
    // of that device, the deepest one above the path (bind mounts of
    // other directories of it are elsewhere).
    let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mount = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    (f.get(2) == Some(&want.as_str())).then(|| f.get(4).map(|m| unescape(m)))?
                })
                .filter(|m| full.starts_with(m))
                .max_by_key(|m| m.as_os_str().len())
        })
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok(HostFs {
        mount,
        avail: st.f_bavail.saturating_mul(st.f_frsize),
    })
}

/// A mount point as mountinfo writes it (space, tab, newline and
/// backslash as octal escapes).
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The directory a file at `path` is (or will be) in.
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fails before writing when `need` more bytes (`what`) do not fit on the
/// filesystem that holds (or will hold) the file `path`, naming it and
/// saying how much is missing.
pub fn check_room(path: &Path, need: u64, what: &str) -> Result<()> {
    let fs = of(dir_of(path))?;
    if need > fs.avail {
        bail!(
            "the filesystem of {} (mounted at {}) is too small: {what} needs {}, it has {} free; \
             free {} more there, or write the output elsewhere",
            dir_of(path).display(),
            fs.mount.display(),
            human(need),
            human(fs.avail),
            human(need - fs.avail)
        );
    }
    Ok(())
}

/// `err` of a run that wrote into the file `path`, said to be what it
/// most likely is when the filesystem holding `path` has no room left (a
/// short write, ENOSPC): that this filesystem is full, naming it.
pub fn explain_full(err: anyhow::Error, path: &Path) -> anyhow::Error {
    match of(dir_of(path)) {
        Ok(fs) if fs.avail < FULL => err.context(format!(
            "the filesystem of {} (mounted at {}) is full ({} free): free space there, or write the output elsewhere",
            dir_of(path).display(),
            fs.mount.display(),
            human(fs.avail)
        )),
        _ => err,
    }
}

/// The bytes of `file` between `from` and `to` that are holes (what
/// writing there allocates anew on the filesystem holding it).
pub fn hole_bytes(file: &Path, from: u64, to: u64) -> Result<u64> {
    use rustix::fs::SeekFrom;
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let (mut at, mut holes) = (from, 0);
    while at < to {
        // The next data at or after `at` (ENXIO: none, the rest is a hole).
        let data = match rustix::fs::seek(&f, SeekFrom::Data(at)) {
            Ok(d) => d.min(to),
            Err(rustix::io::Errno::NXIO) => to,
            Err(e) => {
                return Err(e).with_context(|| format!("reading the holes of {}", file.display()))
            }
        };
        holes += data - at;
        if data >= to {
            break;
        }
        at = rustix::fs::seek(&f, SeekFrom::Hole(data))
            .with_context(|| format!("reading the holes of {}", file.display()))?;
    }
    Ok(holes)
}

/// Less free than this (a few blocks), and a failed write is taken for a
/// full filesystem.
const FULL: u64 = 1 << 20;

pub(crate) fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_filesystem_and_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let fs = of(dir.path()).unwrap();
        assert!(fs.mount.is_absolute(), "{fs:?}");
        assert!(dir.path().starts_with(&fs.mount) || fs.mount == Path::new("/"));
        let out = dir.path().join("out.bin");
        check_room(&out, 1, "the copy").unwrap();
        let err = check_room(&out, u64::MAX / 2, "the copy")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the copy needs"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains(&fs.mount.display().to_string()), "{err}");
        assert_eq!(unescape("/mnt/a\\040b\\134c"), PathBuf::from("/mnt/a b\\c"));
        // A sparse file: 1 MiB of data in 8 MiB.
        let f = std::fs::File::create(&out).unwrap();
        f.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![1u8; 1 << 20], 2 << 20).unwrap();
        drop(f);
        assert_eq!(hole_bytes(&out, 0, 8 << 20).unwrap(), 7 << 20);
        assert_eq!(hole_bytes(&out, 2 << 20, 3 << 20).unwrap(), 0);
        assert_eq!(hole_bytes(&out, 3 << 20, 4 << 20).unwrap(), 1 << 20);
        // Not full: the error is left as it is.
        let e = explain_full(anyhow::anyhow!("short write"), &out);
        assert_eq!(format!("{e:#}"), "short write");
    }
}
