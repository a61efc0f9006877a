//! Adding files to Flatcar's OEM partition, a btrfs, without root and
//! without mounting it.
//!
//! No library writes btrfs and the kernel needs root to mount it, so the
//! filesystem is rebuilt with btrfs-progs instead: its bytes are copied out
//! of the disk image (btrfs-progs cannot read at an offset), `btrfs restore`
//! brings every file back with owners, modes, times, symlinks and xattrs
//! into a staging directory, the new files are put in, and `mkfs.btrfs
//! --rootdir` makes a new filesystem with the same label, UUID (fsid),
//! size, mixed block groups, node and sector size and checksum. All of it
//! runs in ONE fakeroot session: fakeroot fakes owners and xattrs for the
//! tools, but its saved state (`-s`) keeps only owners and modes, so the
//! xattrs would be lost between two sessions. Only when the new filesystem
//! is complete and checked is it written over the old one.
//!
//! `mkfs.btrfs --rootdir` (btrfs-progs 6.2, Debian 12) gives the root
//! directory a fixed mode 0755, owner 0:0 and no xattrs; Flatcar's
//! `btrfs.compression=zlib` on the root (what `btrfs property set` makes)
//! is put back into the new filesystem by `btrfs_xattr` before it is
//! checked and written. A root xattr whose value `dump-tree` does not show
//! whole (not printable text), and a root mode or owner other than 0755
//! 0:0, are named in [`Rebuilt::lost_root_xattrs`] so the caller can warn.
//!
//! Known losses:
//! - Files already compressed are restored uncompressed (they then take
//!   their full size).
//! - `btrfs restore` writes each name of a hard-linked file as its own
//!   copy, and times to the second.
//! - Special files (devices, FIFOs, sockets) and subvolumes are refused.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use rustix::fs::{FallocateFlags, SeekFrom};

/// Where the primary superblock lies in a btrfs.
const SUPER_OFFSET: u64 = 64 * 1024;
/// The superblock's magic, at byte 64 of it.
const MAGIC: &[u8; 8] = b"_BHRfS_M";
/// `BTRFS_FEATURE_INCOMPAT_MIXED_GROUPS`.
const INCOMPAT_MIXED_GROUPS: u64 = 1 << 2;
/// Copy and compare unit.
const CHUNK: usize = 1 << 20;
/// What mkfs.btrfs keeps for itself besides the files' data: the first MiB
/// and the system chunk (4 MiB), plus a little metadata. Only used for an
/// early refusal; mkfs.btrfs' own result decides.
const MKFS_OVERHEAD: u64 = 5 << 20;
/// Where btrfs-progs lives, which a Debian user's PATH lacks.
const SBIN: &[&str] = &["/usr/sbin", "/sbin"];
/// Lines of a tool's error output quoted in an error.
const TAIL_LINES: usize = 15;

/// What the superblock of a btrfs says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub label: String,
    /// The filesystem UUID (fsid), lower-case with hyphens.
    pub uuid: String,
    pub total_bytes: u64,
    pub bytes_used: u64,
    /// Whether data and metadata share block groups (`mkfs.btrfs --mixed`).
    pub mixed: bool,
    pub nodesize: u32,
    pub sectorsize: u32,
}

/// Reads the superblock of the btrfs at `offset` (primary superblock at
/// +64 KiB, magic "_BHRfS_M" at byte 64 of it) straight from the file, no
/// tool needed: Ok(None) when there is no btrfs there.
pub fn probe(image: &Path, offset: u64) -> Result<Option<Info>> {
    let file = File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let mut buf = vec![0u8; 4096];
    let at = offset
        .checked_add(SUPER_OFFSET)
        .context("partition offset is too large")?;
    match file.read_exact_at(&mut buf, at) {
        Ok(()) => Ok(parse_super(&buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot read the btrfs superblock at byte {at} of {}",
                image.display()
            )
        }),
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes the fields of `struct btrfs_super_block` this module needs.
fn parse_super(b: &[u8]) -> Option<Info> {
    if b.len() < 0x12b + 256 || &b[0x40..0x48] != MAGIC {
        return None;
    }
    let f = &b[0x20..0x30];
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        hex(&f[0..4]),
        hex(&f[4..6]),
        hex(&f[6..8]),
        hex(&f[8..10]),
        hex(&f[10..16])
    );
    let label = &b[0x12b..0x12b + 256];
    let end = label.iter().position(|&c| c == 0).unwrap_or(label.len());
    Some(Info {
        label: String::from_utf8_lossy(&label[..end]).into_owned(),
        uuid,
        total_bytes: le64(b, 0x70),
        bytes_used: le64(b, 0x78),
        mixed: le64(b, 0xbc) & INCOMPAT_MIXED_GROUPS != 0,
        sectorsize: le32(b, 0x90),
        nodesize: le32(b, 0x94),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|c| format!("{c:02x}")).collect()
}

/// What goes into the filesystem at one path.
pub enum Content {
    /// A regular file with these bytes and permission bits, owner 0:0.
    File { data: Vec<u8>, mode: u32 },
    /// A host file or directory tree (a symlink given here is followed),
    /// copied with modes and times kept, owner 0:0; symlinks inside the
    /// tree stay symlinks.
    Copy { from: PathBuf },
}

/// One path to add.
pub struct Add {
    /// Absolute path inside the filesystem, e.g. "/config.ign". Whatever is
    /// there already is replaced; missing parents are made (0755, 0:0).
    pub dest: String,
    pub content: Content,
}

/// What [`rebuild`] did.
#[derive(Debug)]
pub struct Rebuilt {
    /// The new filesystem's superblock (label and UUID are the old ones).
    pub info: Info,
    /// Entries (files, directories, symlinks) of the old filesystem that
    /// are in the new one.
    pub files_kept: u64,
    /// Entries put in from `adds` (a copied tree counts all its entries).
    pub files_added: u64,
    /// Xattrs of the root directory that the new filesystem lacks, e.g.
    /// "btrfs.compression" (see the module doc); also a note such as
    /// "(root directory mode 0700 uid 5 gid 5, now 0755 0:0)" when the
    /// root's mode or owner could not be kept.
    pub lost_root_xattrs: Vec<String>,
}

/// Rebuilds the btrfs at image[offset..offset+size] with its old content
/// plus `adds` (see above). Nothing in `image` changes unless it returns Ok.
pub fn rebuild(image: &Path, offset: u64, size: u64, adds: &[Add]) -> Result<Rebuilt> {
    let tools = Tools::find(true)?;
    let old = probe(image, offset)?.with_context(|| {
        format!(
            "no btrfs filesystem at byte {offset} of {} (no btrfs superblock magic)",
            image.display()
        )
    })?;
    if old.total_bytes > size {
        bail!(
            "the btrfs at byte {offset} of {} says it is {} bytes but its partition is only {size} bytes; the disk image looks damaged",
            image.display(),
            old.total_bytes
        );
    }
    // Refuse bad adds and an image we cannot write before any heavy work.
    let dests = adds
        .iter()
        .map(|a| normalize_dest(&a.dest))
        .collect::<Result<Vec<_>>>()?;
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("cannot open {} for writing", image.display()))?;

    let work = Work::new()?;
    let part = work.path("part.img");
    extract(image, offset, size, &part)?;
    let sup = dump_super(&tools, &part)?;
    let tree = dump_tree(&tools, &part)?;
    if tree.special > 0 {
        bail!(
            "the OEM btrfs holds {} device, FIFO or socket file(s), which btrfs restore cannot copy; refusing to rebuild it without them",
            tree.special
        );
    }
    if tree.subvolumes > 0 {
        bail!(
            "the OEM btrfs holds {} subvolume(s), which this tool cannot rebuild",
            tree.subvolumes
        );
    }

    // The bytes of File contents go to files first; Copy sources are read
    // in place by cp.
    let adds_dir = work.path("adds");
    fs::create_dir(&adds_dir).with_context(|| format!("cannot create {}", adds_dir.display()))?;
    let mut sources = Vec::new();
    let mut add_bytes = 0u64;
    let mut files_added = 0u64;
    for (i, (add, dest)) in adds.iter().zip(&dests).enumerate() {
        let src = match &add.content {
            Content::File { data, mode } => {
                let p = adds_dir.join(i.to_string());
                fs::write(&p, data).with_context(|| format!("cannot write {}", p.display()))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(mode & 0o7777))
                    .with_context(|| format!("cannot set the mode of {}", p.display()))?;
                p
            }
            Content::Copy { from } => std::path::absolute(from)
                .with_context(|| format!("cannot resolve {}", from.display()))?,
        };
        let (n, bytes) = tree_size(&src, true, sup.sectorsize).with_context(|| {
            format!("cannot read {} to be added as {}", src.display(), add.dest)
        })?;
        files_added += n;
        add_bytes += bytes;
        sources.push((src, dest.clone()));
    }

    let stage = work.path("stage");
    fs::create_dir(&stage).with_context(|| format!("cannot create {}", stage.display()))?;
    let newfs = work.path("new.img");
    File::create(&newfs)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("cannot create {}", newfs.display()))?;

    let mut mkfs: Vec<OsString> = vec![tools.mkfs.clone().into(), "-q".into(), "-f".into()];
    if old.mixed {
        mkfs.push("--mixed".into());
    }
    for a in [
        "-m",
        "single",
        "-d",
        "single",
        "--nodiscard",
        "--csum",
        &sup.csum,
        "--nodesize",
        &old.nodesize.to_string(),
        "--sectorsize",
        &old.sectorsize.to_string(),
        "--label",
        &old.label,
        "--uuid",
        &old.uuid,
        "--byte-count",
        &old.total_bytes.to_string(),
        "--rootdir",
    ] {
        mkfs.push(a.into());
    }
    mkfs.push(stage.clone().into());
    mkfs.push(newfs.clone().into());

    let mut session = Session::start(&tools, &work, &part, &stage, &sources, &mkfs)?;
    if !session.wait_restored()? {
        let status = session.finish()?;
        bail!(
            "btrfs restore (in fakeroot) of the OEM btrfs failed with exit status {status}:\n{}",
            tail(&work.read_log("session.err"))
        );
    }
    let checked = check_staged(&stage, &tree, &dests, &sup, add_bytes, size, &old);
    let (kept, content_bytes) = match checked {
        Ok(v) => v,
        Err(e) => {
            session.abort();
            return Err(e);
        }
    };
    let status = session.finish()?;
    let mkfs_log = work.read_log("session.err");
    let overflow = || overflow_error(content_bytes, size, old.total_bytes);
    if status != 0 {
        if mkfs_log.contains("No space left") || mkfs_log.contains("-28") {
            return Err(overflow());
        }
        bail!(
            "{} (in fakeroot) failed with exit status {status} while rebuilding the OEM btrfs:\n{}",
            match status {
                10 => "btrfs restore".to_string(),
                12 => "placing the new files (mkdir/cp/chown)".to_string(),
                _ => "mkfs.btrfs".to_string(),
            },
            tail(&mkfs_log)
        );
    }
    // mkfs.btrfs 6.2 --rootdir grows its output file, with exit status 0,
    // instead of failing when the content exceeds --byte-count.
    let new_len = fs::metadata(&newfs)
        .with_context(|| format!("cannot stat {}", newfs.display()))?
        .len();
    let new = probe(&newfs, 0)?.context("mkfs.btrfs made no btrfs superblock")?;
    if new_len > size || new.total_bytes != old.total_bytes {
        return Err(overflow());
    }
    if new.uuid != old.uuid || new.label != old.label {
        bail!(
            "mkfs.btrfs made label {:?} UUID {} instead of {:?} {}",
            new.label,
            new.uuid,
            old.label,
            old.uuid
        );
    }
    // The root's xattrs, which mkfs left out.
    let mut lost = vec![];
    let mut put_back = vec![];
    for (name, value) in &tree.root_xattrs {
        match value {
            Some(v) => put_back.push((name.clone(), v.clone())),
            None => lost.push(name.clone()),
        }
    }
    if !put_back.is_empty() {
        super::btrfs_xattr::add_root_xattrs(&newfs, &put_back)
            .context("putting the root directory's xattrs back into the rebuilt OEM btrfs")?;
    }
    run(
        Command::new(&tools.btrfs)
            .args(["check", "--readonly"])
            .arg(&newfs)
            .env("PATH", &tools.path_env),
        "btrfs check --readonly (of the rebuilt OEM filesystem)",
    )?;

    write_back(&newfs, &out, image, offset, size)?;
    let info = probe(image, offset)?.context("the rebuilt btrfs is not in the disk image")?;
    if let Some((mode, uid, gid)) = tree.root_owner {
        if (mode & 0o7777, uid, gid) != (0o755, 0, 0) {
            lost.push(format!(
                "(root directory mode {:04o} uid {uid} gid {gid}, now 0755 0:0)",
                mode & 0o7777
            ));
        }
    }
    Ok(Rebuilt {
        info,
        files_kept: kept,
        files_added,
        lost_root_xattrs: lost,
    })
}

/// Lists the fs read-only through `btrfs restore` (e.g. for a later
/// verify): the paths and their file contents up to a limit.
///
/// Returns the content of the regular file at `path` (absolute), or None
/// when there is none (missing, a directory or a symlink).
pub fn read_file(image: &Path, offset: u64, size: u64, path: &str) -> Result<Option<Vec<u8>>> {
    Ok(read_files(image, offset, size, &[path])?.remove(0))
}

/// [`read_file`] of several paths, the partition copied out once.
pub fn read_files(
    image: &Path,
    offset: u64,
    size: u64,
    paths: &[&str],
) -> Result<Vec<Option<Vec<u8>>>> {
    let tools = Tools::find(false)?;
    if probe(image, offset)?.is_none() {
        bail!(
            "no btrfs filesystem at byte {offset} of {} (no btrfs superblock magic)",
            image.display()
        );
    }
    let work = Work::new()?;
    let part = work.path("part.img");
    extract(image, offset, size, &part)?;
    let mut found = vec![];
    for (i, path) in paths.iter().enumerate() {
        let rel = normalize_dest(path)?;
        let out = work.path(&format!("out{i}"));
        fs::create_dir(&out).with_context(|| format!("cannot create {}", out.display()))?;
        run(
            Command::new(&tools.btrfs)
                .arg("restore")
                .arg("--path-regex")
                .arg(path_regex(&rel))
                .arg(&part)
                .arg(&out)
                .stdin(Stdio::null())
                .env("PATH", &tools.path_env),
            &format!("btrfs restore --path-regex (reading {path} from the OEM btrfs)"),
        )?;
        let p = out.join(&rel);
        found.push(match fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => {
                Some(fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?)
            }
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", p.display())),
        });
    }
    Ok(found)
}

/// `btrfs restore --path-regex` for one path and its parents, in the form
/// its help asks for: `^/(|a(|/b))$`.
fn path_regex(rel: &str) -> String {
    let parts: Vec<String> = rel
        .split('/')
        .map(|c| {
            c.chars()
                .map(|ch| {
                    if "\\.[]{}()*+?^$|".contains(ch) {
                        format!("\\{ch}")
                    } else {
                        ch.to_string()
                    }
                })
                .collect()
        })
        .collect();
    let mut re = String::new();
    for (i, p) in parts.iter().enumerate() {
        re.push_str(if i == 0 { "(|" } else { "(|/" });
        re.push_str(p);
    }
    format!("^/{}{}$", re, ")".repeat(parts.len()))
}

/// `dest` without its leading '/': refuses relative paths, ".", "..",
/// empty components and the root itself, which could reach outside the
/// staging directory or mean nothing.
fn normalize_dest(dest: &str) -> Result<String> {
    let Some(rel) = dest.strip_prefix('/') else {
        bail!("{dest:?}: a path inside the OEM filesystem must start with '/'");
    };
    let rel = rel.trim_end_matches('/');
    if rel.is_empty() || dest.contains('\0') {
        bail!("{dest:?} is not a file path inside the OEM filesystem");
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("{dest:?}: a path inside the OEM filesystem may not hold '.', '..' or '//'");
    }
    Ok(rel.to_string())
}

/// The tools, found once, and the PATH their children get.
struct Tools {
    fakeroot: PathBuf,
    btrfs: PathBuf,
    mkfs: PathBuf,
    path_env: OsString,
}

impl Tools {
    /// Finds btrfs-progs (and fakeroot when `fakeroot`), naming the Debian
    /// package to install when one is missing.
    fn find(fakeroot: bool) -> Result<Tools> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        for d in SBIN.iter().chain(&["/usr/bin", "/bin"]) {
            if !dirs.iter().any(|x| x == Path::new(d)) {
                dirs.push(PathBuf::from(d));
            }
        }
        let path_env = std::env::join_paths(&dirs).context("PATH holds a ':' in a directory")?;
        let find = |name: &str, package: &str| -> Result<PathBuf> {
            dirs.iter()
                .map(|d| d.join(name))
                .find(|p| p.is_file())
                .with_context(|| {
                    format!(
                        "{name} is needed for Flatcar's OEM partition (btrfs) but was not found in PATH, /usr/sbin or /sbin; install it (Debian/Ubuntu: apt-get install {package})"
                    )
                })
        };
        Ok(Tools {
            fakeroot: if fakeroot {
                find("fakeroot", "fakeroot")?
            } else {
                PathBuf::new()
            },
            btrfs: find("btrfs", "btrfs-progs")?,
            mkfs: find("mkfs.btrfs", "btrfs-progs")?,
            path_env,
        })
    }
}

/// The last lines of a tool's output, for an error.
fn tail(text: &str) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Runs `cmd`, failing with `what` and the tail of its stderr unless it
/// exits 0.
fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        if text.trim().is_empty() {
            text = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        bail!("{what} failed ({}):\n{}", out.status, tail(&text));
    }
    Ok(out)
}

/// The error for content that does not fit, naming both sizes.
fn overflow_error(content: u64, size: u64, total_bytes: u64) -> anyhow::Error {
    anyhow!(
        "the OEM filesystem does not fit in its partition: its files take {} ({content} bytes) and btrfs needs about {} more for itself, but the partition is {} ({size} bytes, filesystem {total_bytes} bytes); remove or shrink files, or make the OEM partition bigger",
        mib(content),
        mib(MKFS_OVERHEAD),
        mib(size),
    )
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// A private temporary directory; made removable before it is removed,
/// since restored and copied directories may lack the owner's write bit.
struct Work {
    dir: Option<tempfile::TempDir>,
}

impl Work {
    fn new() -> Result<Work> {
        let dir = tempfile::Builder::new()
            .prefix("flatcar-preload-btrfs-")
            .tempdir()
            .context("cannot create a temporary directory (set TMPDIR to a place with room for the OEM partition)")?;
        Ok(Work { dir: Some(dir) })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.as_ref().expect("live").path().join(name)
    }

    /// A log file's text, empty when there is none.
    fn read_log(&self, name: &str) -> String {
        fs::read(self.path(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            make_writable(d.path());
            // Best effort: a leftover temporary directory is no error.
            let _ = d.close();
        }
    }
}

fn make_writable(dir: &Path) {
    let Ok(m) = fs::symlink_metadata(dir) else {
        return;
    };
    if !m.is_dir() {
        return;
    }
    let mode = m.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            make_writable(&e.path());
        }
    }
}

/// Copies image[offset..offset+size] into a new sparse file `dest`,
/// skipping the image's holes and writing no all-zero chunk.
fn extract(image: &Path, offset: u64, size: u64, dest: &Path) -> Result<()> {
    let src = File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let len = src
        .metadata()
        .with_context(|| format!("cannot stat {}", image.display()))?
        .len();
    let end = offset
        .checked_add(size)
        .filter(|&e| e <= len)
        .with_context(|| {
            format!(
                "the partition (byte {offset}, {size} bytes) does not lie within {} ({len} bytes)",
                image.display()
            )
        })?;
    let out = File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    out.set_len(size).with_context(|| {
        format!(
            "cannot size {} to {size} bytes (disk full?)",
            dest.display()
        )
    })?;
    let mut buf = vec![0u8; CHUNK];
    for (start, stop) in data_ranges(&src, offset, end)
        .with_context(|| format!("cannot find the data in {}", image.display()))?
    {
        let mut pos = start;
        while pos < stop {
            let n = ((stop - pos) as usize).min(CHUNK);
            src.read_exact_at(&mut buf[..n], pos)
                .with_context(|| format!("cannot read {} at byte {pos}", image.display()))?;
            if buf[..n].iter().any(|&b| b != 0) {
                out.write_all_at(&buf[..n], pos - offset).with_context(|| {
                    format!("cannot write {} (disk full? set TMPDIR)", dest.display())
                })?;
            }
            pos += n as u64;
        }
    }
    Ok(())
}

/// The ranges of `file` within [start, end) that may hold data, by
/// SEEK_DATA/SEEK_HOLE; the whole range where the filesystem cannot tell.
fn data_ranges(file: &File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut v = Vec::new();
    let mut pos = start;
    while pos < end {
        let data = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) if v.is_empty() => {
                return Ok(vec![(start, end)]);
            }
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        let hole = rustix::fs::seek(file, SeekFrom::Hole(data))?.min(end);
        v.push((data, hole));
        pos = hole;
    }
    Ok(v)
}

/// Writes the new filesystem over image[offset..offset+size]: its data
/// where it has data, and holes punched (zeros where punching is not
/// supported) everywhere else, so nothing of the old filesystem stays.
fn write_back(newfs: &Path, out: &File, image: &Path, offset: u64, size: u64) -> Result<()> {
    let src = File::open(newfs).with_context(|| format!("cannot open {}", newfs.display()))?;
    let ranges =
        data_ranges(&src, 0, size).with_context(|| format!("cannot read {}", newfs.display()))?;
    let mut zero_from = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let wctx = || format!("cannot write the OEM partition into {}", image.display());
    for (start, stop) in ranges {
        let mut pos = start;
        while pos < stop {
            let n = ((stop - pos) as usize).min(CHUNK);
            src.read_exact_at(&mut buf[..n], pos)
                .with_context(|| format!("cannot read {}", newfs.display()))?;
            if buf[..n].iter().any(|&b| b != 0) {
                zero(out, offset + zero_from, pos - zero_from).with_context(wctx)?;
                out.write_all_at(&buf[..n], offset + pos)
                    .with_context(wctx)?;
                zero_from = pos + n as u64;
            }
            pos += n as u64;
        }
    }
    zero(out, offset + zero_from, size - zero_from).with_context(wctx)?;
    out.sync_all()
        .with_context(|| format!("cannot flush {} to disk", image.display()))
}

/// Makes file[at..at+len] read as zeros: a punched hole, or written zeros
/// where the filesystem cannot punch.
fn zero(file: &File, at: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        at,
        len,
    ) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {}
        Err(e) => return Err(e.into()),
    }
    let buf = vec![0u8; CHUNK];
    let mut pos = 0;
    while pos < len {
        let n = ((len - pos) as usize).min(CHUNK);
        file.write_all_at(&buf[..n], at + pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// What `btrfs inspect-internal dump-super` adds to [`probe`]: it checks
/// the superblock's checksum.
struct Super {
    csum: String,
    sectorsize: u32,
}

fn dump_super(tools: &Tools, part: &Path) -> Result<Super> {
    let out = run(
        Command::new(&tools.btrfs)
            .args(["inspect-internal", "dump-super"])
            .arg(part)
            .env("PATH", &tools.path_env),
        "btrfs inspect-internal dump-super (of the OEM partition)",
    )?;
    parse_dump_super(&String::from_utf8_lossy(&out.stdout))
}

fn parse_dump_super(text: &str) -> Result<Super> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let mut it = l.splitn(2, char::is_whitespace);
            (it.next() == Some(key)).then(|| it.next().unwrap_or("").trim().to_string())
        })
    };
    let get = |key: &str| {
        field(key).with_context(|| format!("btrfs inspect-internal dump-super printed no {key}"))
    };
    if !get("magic")?.contains("[match]") {
        bail!("the OEM partition holds no btrfs (dump-super found no magic)");
    }
    if !get("csum")?.contains("[match]") {
        bail!("the OEM btrfs superblock's checksum does not match: the filesystem is damaged");
    }
    let devices: u64 = get("num_devices")?
        .parse()
        .context("dump-super: bad num_devices")?;
    if devices != 1 {
        bail!("the OEM btrfs spans {devices} devices; only a single-device btrfs can be rebuilt");
    }
    let ct = get("csum_type")?;
    let csum = ct
        .split_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(n, _)| n.to_string())
        .with_context(|| format!("dump-super: cannot read csum_type {ct:?}"))?;
    let sectorsize = get("sectorsize")?
        .parse()
        .context("dump-super: bad sectorsize")?;
    Ok(Super { csum, sectorsize })
}

/// What the filesystem tree (id 5) holds, from `dump-tree`.
#[derive(Debug, Default, PartialEq)]
struct Tree {
    /// Directory entries of files, directories and symlinks.
    entries: u64,
    /// Directory entries of devices, FIFOs and sockets.
    special: u64,
    /// Directory entries of subvolumes.
    subvolumes: u64,
    /// The root directory's xattrs: name, and the value when dump-tree
    /// shows it whole (printable text of `data_len` bytes).
    root_xattrs: Vec<(String, Option<Vec<u8>>)>,
    /// The root directory's mode, uid and gid.
    root_owner: Option<(u32, u32, u32)>,
}

fn dump_tree(tools: &Tools, part: &Path) -> Result<Tree> {
    let out = run(
        Command::new(&tools.btrfs)
            .args(["inspect-internal", "dump-tree", "-t", "5"])
            .arg(part)
            .env("PATH", &tools.path_env),
        "btrfs inspect-internal dump-tree (of the OEM partition)",
    )?;
    Ok(parse_dump_tree(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_dump_tree(text: &str) -> Tree {
    /// The root directory's inode number in a btrfs subvolume.
    const ROOT: &str = "256";
    let mut t = Tree::default();
    let mut key: (String, String) = Default::default();
    let mut want_name = false;
    let mut data_len = None;
    for line in text.lines() {
        let l = line.trim_start();
        if l.starts_with("item ") {
            if let Some(k) = l.split_once(" key (").map(|(_, r)| r) {
                let mut it = k.split_whitespace();
                key = (
                    it.next().unwrap_or("").to_string(),
                    it.next().unwrap_or("").to_string(),
                );
                want_name = key.0 == ROOT && key.1 == "XATTR_ITEM";
            }
            continue;
        }
        if key.1 == "DIR_INDEX" {
            if let Some(loc) = l.strip_prefix("location key (") {
                match l.rsplit(" type ").next().unwrap_or("") {
                    _ if loc.contains("ROOT_ITEM") => t.subvolumes += 1,
                    "FILE" | "DIR" | "SYMLINK" => t.entries += 1,
                    _ => t.special += 1,
                }
            }
        } else if want_name {
            if let Some(n) = l.split_once("data_len ").map(|(_, r)| r) {
                data_len = n
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<usize>().ok());
            } else if let Some(n) = l.strip_prefix("name: ") {
                t.root_xattrs.push((n.to_string(), None));
            } else if let Some(v) = l.strip_prefix("data ") {
                let whole = Some(v.len()) == data_len
                    && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
                if let (true, Some(last)) = (whole, t.root_xattrs.last_mut()) {
                    last.1 = Some(v.as_bytes().to_vec());
                }
                want_name = false;
            }
        } else if key.0 == ROOT && key.1 == "INODE_ITEM" && t.root_owner.is_none() {
            let w: Vec<&str> = l.split_whitespace().collect();
            let val = |name: &str| {
                w.iter()
                    .position(|x| *x == name)
                    .and_then(|i| w.get(i + 1))
                    .map(|s| s.to_string())
            };
            if let (Some(m), Some(u), Some(g)) = (val("mode"), val("uid"), val("gid")) {
                if let (Ok(m), Ok(u), Ok(g)) = (u32::from_str_radix(&m, 8), u.parse(), g.parse()) {
                    t.root_owner = Some((m, u, g));
                }
            }
        }
    }
    t
}

/// Entries and bytes (each regular file rounded up to `sector`) of the
/// tree at `p`, itself included; `follow` follows `p` if it is a symlink.
fn tree_size(p: &Path, follow: bool, sector: u32) -> Result<(u64, u64)> {
    let m = if follow {
        fs::metadata(p)
    } else {
        fs::symlink_metadata(p)
    }
    .with_context(|| format!("cannot stat {}", p.display()))?;
    let sector = u64::from(sector.max(512));
    let ft = m.file_type();
    if ft.is_dir() {
        let (mut n, mut bytes) = (1, 0);
        for e in fs::read_dir(p).with_context(|| format!("cannot list {}", p.display()))? {
            let e = e.with_context(|| format!("cannot list {}", p.display()))?;
            let (a, b) = tree_size(&e.path(), false, sector as u32)?;
            n += a;
            bytes += b;
        }
        Ok((n, bytes))
    } else if ft.is_file() {
        Ok((1, m.len().div_ceil(sector) * sector))
    } else if ft.is_symlink() {
        Ok((1, 0))
    } else {
        bail!(
            "{} is a device, FIFO or socket, which cannot go into the OEM filesystem",
            p.display()
        )
    }
}

/// Checks what `btrfs restore` put in `stage` against the filesystem tree
/// and that the content fits, before mkfs runs. Returns the entries kept
/// and the content's bytes.
fn check_staged(
    stage: &Path,
    tree: &Tree,
    dests: &[String],
    sup: &Super,
    add_bytes: u64,
    size: u64,
    old: &Info,
) -> Result<(u64, u64)> {
    let (n, bytes) = tree_size(stage, false, sup.sectorsize)
        .context("cannot read back what btrfs restore wrote")?;
    let restored = n - 1;
    if restored != tree.entries {
        bail!(
            "btrfs restore brought back {restored} of the {} files and directories of the OEM btrfs; the filesystem may be damaged (try `btrfs check --readonly` on it)",
            tree.entries
        );
    }
    let (mut gone_n, mut gone_bytes) = (0, 0);
    for d in dests {
        // A symlink on the way would make mkdir/cp write outside the
        // staging directory, on the host.
        let mut p = stage.to_path_buf();
        let parts: Vec<&str> = d.split('/').collect();
        for (i, c) in parts.iter().enumerate() {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(m) if i + 1 < parts.len() && !m.is_dir() => bail!(
                    "cannot add /{d}: /{} in the OEM filesystem is not a directory",
                    parts[..=i].join("/")
                ),
                Ok(_) if i + 1 == parts.len() => {
                    let (a, b) = tree_size(&p, false, sup.sectorsize)?;
                    gone_n += a;
                    gone_bytes += b;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(e).with_context(|| format!("cannot stat {}", p.display())),
            }
        }
    }
    let content = (bytes + add_bytes).saturating_sub(gone_bytes);
    if content + MKFS_OVERHEAD > old.total_bytes {
        return Err(overflow_error(content, size, old.total_bytes));
    }
    Ok((restored.saturating_sub(gone_n), content))
}

/// The one fakeroot session: `btrfs restore`, then (after the caller's
/// "go" on its stdin) the new files, then mkfs.btrfs. It stops after the
/// restore so that the caller can check it before anything is built.
struct Session {
    child: std::process::Child,
    stdout: BufReader<std::process::ChildStdout>,
}

/// Exit statuses: 10 restore failed, 11 aborted by the caller, 12 placing
/// the new files failed; otherwise mkfs.btrfs's.
const SCRIPT: &str = r#"
umask 022
part=$1 stage=$2; shift 2
"$BTRFS" restore -x -m -S "$part" "$stage" </dev/null >&2 || { echo "btrfs restore failed: exit status $?" >&2; exit 10; }
echo restored
IFS= read -r go || exit 11
[ "$go" = go ] || exit 11
while [ "$1" != "--" ]; do
    src=$1 dest=$2 parent=$3; shift 3
    rm -rf -- "$stage/$dest" || exit 12
    mkdir -p -- "$stage/$parent" || exit 12
    cp -R -H --preserve=mode,timestamps -- "$src" "$stage/$dest" || exit 12
    chown -R -h 0:0 -- "$stage/$dest" || exit 12
done
shift
"$@" >&2
"#;

impl Session {
    fn start(
        tools: &Tools,
        work: &Work,
        part: &Path,
        stage: &Path,
        sources: &[(PathBuf, String)],
        mkfs: &[OsString],
    ) -> Result<Session> {
        let log = File::create(work.path("session.err")).context("cannot create a log file")?;
        let mut cmd = Command::new(&tools.fakeroot);
        cmd.args(["--", "sh", "-c", SCRIPT, "sh"])
            .arg(part)
            .arg(stage);
        for (src, dest) in sources {
            let parent = match dest.rsplit_once('/') {
                Some((p, _)) => format!("./{p}"),
                None => ".".to_string(),
            };
            cmd.arg(src).arg(format!("./{dest}")).arg(parent);
        }
        cmd.arg("--").args(mkfs);
        let mut child = cmd
            .env("PATH", &tools.path_env)
            .env("BTRFS", &tools.btrfs)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("cannot run fakeroot")?;
        let stdout = BufReader::new(child.stdout.take().context("no fakeroot stdout")?);
        Ok(Session { child, stdout })
    }

    /// Waits until the restore is done; false when the script ended
    /// before (`finish` then gives its status).
    fn wait_restored(&mut self) -> Result<bool> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .context("cannot read from fakeroot")?;
        Ok(line.trim_end() == "restored")
    }

    fn abort(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }

    /// Lets the script go on to mkfs and returns its exit status.
    fn finish(mut self) -> Result<i32> {
        if let Some(mut stdin) = self.child.stdin.take() {
            // A script that already ended is reported through its status.
            let _ = stdin.write_all(b"go\n");
        }
        let status = self.child.wait().context("cannot wait for fakeroot")?;
        Ok(status.code().unwrap_or(128))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::hash::{DefaultHasher, Hasher};
    use std::os::unix::fs::{symlink, MetadataExt};

    const MIB: u64 = 1 << 20;
    const OFFSET: u64 = MIB;
    const FS_SIZE: u64 = 128 * MIB;
    const NL_NAME: &str = "new\nline";

    fn sh(script: &str, args: &[&OsStr]) -> Output {
        let tools = Tools::find(true).unwrap();
        let out = Command::new(&tools.fakeroot)
            .args(["--", "sh", "-c", script, "sh"])
            .args(args)
            .env("PATH", &tools.path_env)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A 160 MiB sparse disk with a btrfs like Flatcar's OEM at 1 MiB and
    /// marker bytes around it.
    fn fixture(dir: &Path) -> PathBuf {
        let src = dir.join("src");
        fs::create_dir_all(src.join("sysext")).unwrap();
        fs::write(src.join("grub.cfg"), "set linux_append=\"x\"\n").unwrap();
        let raw: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(src.join("sysext/oem-qemu.raw"), raw).unwrap();
        symlink("grub.cfg", src.join("link")).unwrap();
        fs::write(src.join("empty"), "").unwrap();
        fs::write(src.join("blobfile"), "b").unwrap();
        fs::write(src.join(NL_NAME), "nl").unwrap();
        let fsimg = dir.join("fs.img");
        File::create(&fsimg).unwrap().set_len(FS_SIZE).unwrap();
        sh(
            "set -e; cd \"$1\"; chown 1234:55 sysext/oem-qemu.raw; chmod 0640 sysext/oem-qemu.raw;
             setfattr -n user.blob -v 0x000a41ff blobfile;
             # fakeroot records the real owner on setxattr.
             chown 0:0 blobfile;
             mkfs.btrfs -q --mixed -m single -d single --label OEM --rootdir . \"$2\" >/dev/null",
            &[src.as_os_str(), fsimg.as_os_str()],
        );
        let disk = dir.join("disk");
        let d = File::create(&disk).unwrap();
        d.set_len(160 * MIB).unwrap();
        d.write_all_at(&[0xa5; 4096], 0).unwrap();
        d.write_all_at(&[0x5a; 4096], OFFSET - 4096).unwrap();
        d.write_all_at(&[0x3c; 4096], OFFSET + FS_SIZE).unwrap();
        d.write_all_at(&[0xc3; 4096], 160 * MIB - 4096).unwrap();
        d.write_all_at(&fs::read(&fsimg).unwrap(), OFFSET).unwrap();
        disk
    }

    fn hash(data: &[u8]) -> u64 {
        let mut h = DefaultHasher::new();
        h.write(data);
        h.finish()
    }

    fn outside(disk: &Path) -> (u64, u64) {
        let all = fs::read(disk).unwrap();
        let end = (OFFSET + FS_SIZE) as usize;
        (hash(&all[..OFFSET as usize]), hash(&all[end..]))
    }

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn cmd(args: &[&str]) {
        let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(st.success(), "{args:?}");
    }

    #[test]
    fn rebuild_keeps_old_and_adds_new() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = fixture(tmp.path());
        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let mount_opts = format!("loop,offset={OFFSET},sizelimit={FS_SIZE}");
        if is_root() {
            // Like Flatcar's OEM: compression on the root directory.
            cmd(&[
                "mount",
                "-o",
                &mount_opts,
                disk.to_str().unwrap(),
                mnt.to_str().unwrap(),
            ]);
            let st = Command::new("btrfs")
                .args(["property", "set"])
                .arg(&mnt)
                .args(["compression", "zlib"])
                .status();
            cmd(&["umount", mnt.to_str().unwrap()]);
            assert!(st.unwrap().success());
        }
        let before = probe(&disk, OFFSET).unwrap().unwrap();
        assert_eq!(before.label, "OEM");
        assert!(before.mixed);
        let around = outside(&disk);

        let host = tmp.path().join("host");
        fs::create_dir_all(host.join("sub")).unwrap();
        fs::write(host.join("sub/tool.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(host.join("sub/tool.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        let ign = br#"{"ignition":{"version":"3.3.0"}}"#.to_vec();
        let adds = [
            Add {
                dest: "/config.ign".into(),
                content: Content::File {
                    data: ign.clone(),
                    mode: 0o600,
                },
            },
            Add {
                dest: "/base/base.ign".into(),
                content: Content::File {
                    data: b"{}".to_vec(),
                    mode: 0o644,
                },
            },
            Add {
                dest: "/grub.cfg".into(),
                content: Content::File {
                    data: b"set x=1\n".to_vec(),
                    mode: 0o644,
                },
            },
            Add {
                dest: "/extra/tree".into(),
                content: Content::Copy { from: host.clone() },
            },
        ];
        let t = std::time::Instant::now();
        let r = rebuild(&disk, OFFSET, FS_SIZE, &adds).unwrap();
        eprintln!("rebuild took {:?}: {r:?}", t.elapsed());
        assert_eq!(r.info.label, before.label);
        assert_eq!(r.info.uuid, before.uuid);
        assert_eq!(r.info.total_bytes, before.total_bytes);
        // grub.cfg, sysext, its raw, link, empty, blobfile, the newline name;
        // grub.cfg replaced.
        assert_eq!(r.files_kept, 6);
        // 3 files + tree, sub, tool.sh
        assert_eq!(r.files_added, 6);
        // The root's compression property is put back.
        assert!(r.lost_root_xattrs.is_empty(), "{:?}", r.lost_root_xattrs);
        let after = probe(&disk, OFFSET).unwrap().unwrap();
        assert_eq!(after, r.info);
        assert_eq!(
            outside(&disk),
            around,
            "bytes outside the partition changed"
        );

        let rf = |p: &str| read_file(&disk, OFFSET, FS_SIZE, p).unwrap();
        assert_eq!(rf("/config.ign"), Some(ign.clone()));
        assert_eq!(rf("/base/base.ign"), Some(b"{}".to_vec()));
        assert_eq!(rf("/grub.cfg"), Some(b"set x=1\n".to_vec()));
        assert_eq!(rf(&format!("/{NL_NAME}")), Some(b"nl".to_vec()));
        assert_eq!(rf("/extra/tree/sub/tool.sh"), Some(b"#!/bin/sh\n".to_vec()));
        assert_eq!(rf("/missing"), None);
        assert_eq!(rf("/base"), None);

        // Owners, modes and xattrs, through btrfs restore in one session.
        let part = tmp.path().join("part.img");
        extract(&disk, OFFSET, FS_SIZE, &part).unwrap();
        let tools = Tools::find(true).unwrap();
        run(
            Command::new(&tools.btrfs)
                .args(["check", "--readonly"])
                .arg(&part),
            "btrfs check",
        )
        .unwrap();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        let o = sh(
            "set -e; btrfs restore -x -m -S \"$1\" \"$2\" >/dev/null; cd \"$2\";
             stat -c '%n %u:%g %a' grub.cfg sysext sysext/oem-qemu.raw empty blobfile \
               config.ign base base/base.ign extra extra/tree extra/tree/sub extra/tree/sub/tool.sh;
             echo link $(readlink link);
             echo blob $(getfattr --only-values -n user.blob blobfile | od -An -tx1)",
            &[part.as_os_str(), out.as_os_str()],
        );
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        for want in [
            "grub.cfg 0:0 644",
            "sysext 0:0 755",
            "sysext/oem-qemu.raw 1234:55 640",
            "empty 0:0 644",
            "blobfile 0:0 644",
            "config.ign 0:0 600",
            "base 0:0 755",
            "base/base.ign 0:0 644",
            "extra 0:0 755",
            "extra/tree/sub/tool.sh 0:0 750",
            "link grub.cfg",
            "blob 00 0a 41 ff",
        ] {
            assert!(text.lines().any(|l| l == want), "no {want:?} in\n{text}");
        }
        assert_eq!(
            fs::read(out.join("sysext/oem-qemu.raw")).unwrap(),
            fs::read(tmp.path().join("src/sysext/oem-qemu.raw")).unwrap()
        );
        assert_eq!(fs::metadata(out.join("empty")).unwrap().len(), 0);

        if !is_root() {
            crate::testing::skipped("rebuild_keeps_old_and_adds_new (kernel check)", "not root");
            return;
        }
        cmd(&[
            "mount",
            "-o",
            &format!("ro,{mount_opts}"),
            disk.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ]);
        let check = || {
            assert_eq!(fs::read(mnt.join("config.ign")).unwrap(), ign);
            let m = fs::symlink_metadata(mnt.join("sysext/oem-qemu.raw")).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 55, 0o640));
            let m = fs::symlink_metadata(mnt.join("config.ign")).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 0, 0o600));
            assert_eq!(
                fs::read_link(mnt.join("link")).unwrap(),
                PathBuf::from("grub.cfg")
            );
            let mut v = [0u8; 16];
            let n = rustix::fs::lgetxattr(mnt.join("blobfile"), "user.blob", &mut v).unwrap();
            assert_eq!(&v[..n], &[0x00, 0x0a, 0x41, 0xff]);
            assert_eq!(fs::read(mnt.join(NL_NAME)).unwrap(), b"nl");
        };
        let res = std::panic::catch_unwind(check);
        cmd(&["umount", mnt.to_str().unwrap()]);
        res.unwrap();
    }

    #[test]
    fn overflow_fails_before_writing() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = fixture(tmp.path());
        let before = hash(&fs::read(&disk).unwrap());
        let adds = [Add {
            dest: "/big".into(),
            content: Content::File {
                data: vec![0x77; 200 << 20],
                mode: 0o644,
            },
        }];
        let e = rebuild(&disk, OFFSET, FS_SIZE, &adds).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("does not fit"), "{msg}");
        assert!(
            msg.contains(&FS_SIZE.to_string()) && msg.contains("128.0 MiB"),
            "{msg}"
        );
        assert!(msg.contains("200.") && msg.contains("MiB"), "{msg}");
        assert_eq!(hash(&fs::read(&disk).unwrap()), before, "the disk changed");
    }

    #[test]
    fn probe_finds_nothing_in_zeros() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.as_file().set_len(4 * MIB).unwrap();
        assert_eq!(probe(tmp.path(), MIB).unwrap(), None);
        assert_eq!(probe(tmp.path(), 100 * MIB).unwrap(), None);
        let e = rebuild(tmp.path(), 0, 4 * MIB, &[]).unwrap_err();
        assert!(format!("{e:#}").contains("no btrfs"), "{e:#}");
    }

    #[test]
    fn paths_and_regex() {
        assert_eq!(normalize_dest("/a/b.ign").unwrap(), "a/b.ign");
        for bad in ["a", "/", "/a/../b", "/a//b", "/./a"] {
            assert!(normalize_dest(bad).is_err(), "{bad}");
        }
        assert_eq!(path_regex("a/b.c"), r"^/(|a(|/b\.c))$");
    }

    #[test]
    fn dump_tree_text() {
        let text = "\titem 0 key (256 INODE_ITEM 0) itemoff 1 itemsize 160
\t\tgeneration 3 transid 0 size 58 nbytes 4096
\t\tblock group 0 mode 40700 links 1 uid 5 gid 6 rdev 0
\titem 2 key (256 XATTR_ITEM 550297449) itemoff 3772 itemsize 51
\t\tlocation key (0 UNKNOWN.0 0) type XATTR
\t\ttransid 8 data_len 4 name_len 17
\t\tname: btrfs.compression
\t\tdata zlib
\titem 8 key (256 DIR_INDEX 2) itemoff 3576 itemsize 38
\t\tlocation key (257 INODE_ITEM 0) type FILE
\t\tname: a
\titem 9 key (256 DIR_INDEX 3) itemoff 3576 itemsize 38
\t\tlocation key (258 INODE_ITEM 0) type FIFO
\titem 10 key (256 DIR_INDEX 4) itemoff 3576 itemsize 38
\t\tlocation key (259 ROOT_ITEM -1) type DIR
";
        let t = parse_dump_tree(text);
        assert_eq!(
            t,
            Tree {
                entries: 1,
                special: 1,
                subvolumes: 1,
                root_xattrs: vec![("btrfs.compression".into(), Some(b"zlib".to_vec()))],
                root_owner: Some((0o40700, 5, 6)),
            }
        );
    }
}
