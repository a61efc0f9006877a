//! Shared by the integration tests: fixture disks, archives described by a
//! spec, and three independent ways to read back what was written
//! (ext4-view, debugfs, the kernel through a read-only loop mount).
#![allow(dead_code)]

pub mod esp;
pub mod fuzz;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use flatcar_preload::disk::{locate_root, RootPartition};

/// Where the tests find the checkout, the tool and a directory of their own:
/// the variable `name` when it is set, else what cargo said when it built
/// the test. Cargo sets CARGO_MANIFEST_DIR and CARGO_BIN_EXE_* when it runs
/// a test; ci/test-as-user.sh sets all three when it runs root's test
/// binaries as a user, who may not write root's target/tmp nor, for a
/// checkout in root's home, read the checkout (it runs copies then).
fn cargo_path(name: &str, built: &str) -> PathBuf {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(built), PathBuf::from)
}

/// The flatcar-preload binary.
pub fn bin() -> PathBuf {
    cargo_path(
        "CARGO_BIN_EXE_flatcar-preload",
        env!("CARGO_BIN_EXE_flatcar-preload"),
    )
}

/// The checkout.
pub fn manifest_dir() -> PathBuf {
    cargo_path("CARGO_MANIFEST_DIR", env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's directory for the tests' files (`target/tmp`).
pub fn target_tmpdir() -> PathBuf {
    cargo_path("CARGO_TARGET_TMPDIR", env!("CARGO_TARGET_TMPDIR"))
}

/// A fixture disk made by tests/fixtures/make-disk.sh, built once per
/// argument set and cached in cargo's directory for the tests' files
/// (`target/tmp/fixtures`).
pub fn fixture(args: &[&str]) -> PathBuf {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _guard = LOCK.get_or_init(|| Mutex::new(())).lock().unwrap();
    let dir = target_tmpdir().join("fixtures");
    fs::create_dir_all(&dir).unwrap();
    let script = manifest_dir().join("tests/fixtures/make-disk.sh");
    let stamp = fs::metadata(&script).unwrap().mtime();
    let name = format!("{}-{stamp}.bin", args.join("_").replace(['-', '/'], ""));
    let path = dir.join(name);
    if !path.exists() {
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), args.join("_")));
        let _ = fs::remove_file(&tmp);
        let out = Command::new("bash")
            .arg(&script)
            .args(args)
            .arg(&tmp)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make-disk.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// A private sparse copy of a fixture in `dir`.
pub fn disk_copy(args: &[&str], dir: &Path) -> PathBuf {
    let src = fixture(args);
    let dst = dir.join("disk.bin");
    let st = Command::new("cp")
        .args(["--sparse=always"])
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success());
    dst
}

/// A private sparse copy of a fixture in `dir` whose ESP (p1) is a FAT
/// filesystem (label EFI-SYSTEM, FAT type chosen by size as mkfs.fat does)
/// holding `EFI/boot/NAME` for each of `loaders` (none: an ESP without a
/// loader), as Flatcar's amd64 image has `bootx64.efi` and its arm64 image
/// `bootaa64.efi`. Formatted with the fatfs crate: no root, loop device,
/// mkfs.fat or mtools needed.
pub fn disk_copy_with_esp(args: &[&str], loaders: &[&str], dir: &Path) -> PathBuf {
    let disk = disk_copy(args, dir);
    esp::write_esp(&disk, esp::Fat::Auto, ("EFI", "boot"), loaders, false);
    disk
}

pub fn root(disk: &Path) -> RootPartition {
    locate_root(disk).expect("locating ROOT")
}

pub fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(bin());
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("running flatcar-preload")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Hash of a whole file (to show it was not modified).
pub fn file_digest(p: &Path) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut f = File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    h.finish()
}

/// `e2fsck -fn` on ROOT; panics with its output unless it is clean.
pub fn assert_fsck_clean(disk: &Path) {
    let r = root(disk);
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(format!("{}?offset={}", disk.display(), r.offset))
        .output()
        .expect("running e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn is not clean:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deterministic incompressible bytes (xorshift), for large files.
pub struct Prng {
    state: u64,
    left: u64,
}

impl Prng {
    pub fn new(seed: u64, len: u64) -> Prng {
        Prng {
            state: seed | 1,
            left: len,
        }
    }
}

impl Read for Prng {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let b = self.state.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[derive(Clone, Debug)]
pub enum Content {
    Bytes(Vec<u8>),
    Prng { seed: u64, len: u64 },
    Zeros { len: u64 },
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Prng { len, .. } | Content::Zeros { len } => *len,
        }
    }
    pub fn reader(&self) -> Box<dyn Read + '_> {
        match self {
            Content::Bytes(b) => Box::new(&b[..]),
            Content::Prng { seed, len } => Box::new(Prng::new(*seed, *len)),
            Content::Zeros { len } => Box::new(io::repeat(0).take(*len)),
        }
    }
    /// Compares with a reader, streaming.
    pub fn matches(&self, mut r: impl Read) -> bool {
        let mut want = self.reader();
        let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        loop {
            let n = read_full(&mut want, &mut a);
            let m = read_full(&mut r, &mut b);
            if n != m || a[..n] != b[..m] {
                return false;
            }
            if n == 0 {
                return true;
            }
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

#[derive(Clone, Debug)]
pub enum Kind {
    Dir,
    File(Content),
    Symlink(String),
    HardLink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// A regular file with these bytes.
pub fn bytes(b: &[u8]) -> Kind {
    Kind::File(Content::Bytes(b.to_vec()))
}

/// A regular file of `len` pseudo-random bytes.
pub fn random(seed: u64, len: u64) -> Kind {
    Kind::File(Content::Prng { seed, len })
}

/// One archive entry, and what must be found at its path afterwards.
#[derive(Clone, Debug)]
pub struct Item {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    /// Nanoseconds, written as a PAX mtime record when non-zero.
    pub nsec: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Overridden by a later entry for the same path: not checked.
    pub shadowed: bool,
}

pub fn item(path: &str, kind: Kind) -> Item {
    let mode = match kind {
        Kind::Dir => 0o755,
        Kind::Symlink(_) => 0o777,
        _ => 0o644,
    };
    Item {
        path: path.to_string(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        nsec: 0,
        xattrs: vec![],
        shadowed: false,
    }
}

impl Item {
    pub fn mode(mut self, m: u32) -> Self {
        self.mode = m;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, s: i64, ns: u32) -> Self {
        self.mtime = s;
        self.nsec = ns;
        self
    }
    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }
    pub fn shadowed(mut self) -> Self {
        self.shadowed = true;
        self
    }
}

/// Writes the items as a PAX-extended tar (GNU long names where the
/// builder needs them) to `path`.
pub fn write_tar(items: &[Item], path: &Path) {
    let mut b = tar::Builder::new(io::BufWriter::new(File::create(path).unwrap()));
    for it in items {
        let mut pax: Vec<(String, Vec<u8>)> = it
            .xattrs
            .iter()
            .map(|(n, v)| (format!("SCHILY.xattr.{n}"), v.clone()))
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_mode(it.mode);
        h.set_uid(it.uid);
        h.set_gid(it.gid);
        if it.mtime < 0 || it.nsec != 0 {
            pax.push((
                "mtime".into(),
                format!("{}.{:09}", it.mtime, it.nsec).into_bytes(),
            ));
            h.set_mtime(0);
        } else {
            h.set_mtime(it.mtime as u64);
        }
        if it.uid > 0o7777777 {
            pax.push(("uid".into(), it.uid.to_string().into_bytes()));
        }
        if it.gid > 0o7777777 {
            pax.push(("gid".into(), it.gid.to_string().into_bytes()));
        }
        // Paths over 150 bytes go in a PAX path record (the rest by the
        // builder's GNU long-name entries), so both forms are exercised.
        let use_pax_path = it.path.len() > 150;
        if use_pax_path {
            pax.push(("path".into(), it.path.clone().into_bytes()));
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), &v[..])))
                .unwrap();
        }
        let name: &str = if use_pax_path {
            "pax-path-placeholder"
        } else {
            &it.path
        };
        if name.starts_with('/') || name.split('/').any(|c| c == "..") || link_escapes(&it.kind) {
            // The builder refuses such names; hostile archives have them.
            append_raw(&mut b, h, name, &it.kind);
            continue;
        }
        match &it.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, name, io::empty()).unwrap();
            }
            Kind::File(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(c.len());
                b.append_data(&mut h, name, c.reader()).unwrap();
            }
            Kind::Symlink(t) | Kind::HardLink(t) => {
                h.set_entry_type(if matches!(it.kind, Kind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_size(0);
                b.append_link(&mut h, name, t).unwrap();
            }
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                h.set_entry_type(if matches!(it.kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
                h.set_size(0);
                b.append_data(&mut h, name, io::empty()).unwrap();
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_size(0);
                b.append_data(&mut h, name, io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap().flush().unwrap();
}

fn link_escapes(k: &Kind) -> bool {
    matches!(k, Kind::HardLink(t) if t.starts_with('/') || t.split('/').any(|c| c == ".."))
}

/// Appends an entry with its name and link name written verbatim.
fn append_raw(b: &mut tar::Builder<impl Write>, mut h: tar::Header, name: &str, kind: &Kind) {
    h.set_entry_type(match kind {
        Kind::File(_) => tar::EntryType::Regular,
        Kind::HardLink(_) => tar::EntryType::Link,
        Kind::Symlink(_) => tar::EntryType::Symlink,
        _ => panic!("raw entries are files and links"),
    });
    let data: Vec<u8> = match kind {
        Kind::File(c) => {
            let mut v = vec![];
            c.reader().read_to_end(&mut v).unwrap();
            v
        }
        _ => vec![],
    };
    h.set_size(data.len() as u64);
    let raw = h.as_old_mut();
    raw.name = [0; 100];
    raw.name[..name.len()].copy_from_slice(name.as_bytes());
    if let Kind::HardLink(t) | Kind::Symlink(t) = kind {
        raw.linkname = [0; 100];
        raw.linkname[..t.len()].copy_from_slice(t.as_bytes());
    }
    h.set_cksum();
    b.append(&h, &data[..]).unwrap();
}

/// ext4-view 1.0 rejects inode times whose low 32 bits have the sign bit
/// set (before 1970 or from 2038 on), which ext4 allows; debugfs and the
/// kernel check those.
fn ext4_view_reads_time(it: &Item) -> bool {
    (0..i32::MAX as i64).contains(&it.mtime)
}

/// The items that must be found afterwards, by normalized path.
fn expected(items: &[Item]) -> Vec<&Item> {
    items.iter().filter(|i| !i.shadowed).collect()
}

fn norm(p: &str) -> String {
    p.trim_start_matches("./").trim_end_matches('/').to_string()
}

/// The final content of a path, following hard links to their target.
fn content_of<'a>(items: &'a [Item], path: &str) -> Option<&'a Content> {
    let it = items
        .iter()
        .rev()
        .find(|i| !i.shadowed && norm(&i.path) == norm(path))?;
    match &it.kind {
        Kind::File(c) => Some(c),
        Kind::HardLink(t) => content_of(items, t),
        _ => None,
    }
}

fn hardlink_root<'a>(items: &'a [Item], path: &str) -> &'a Item {
    let it = items
        .iter()
        .rev()
        .find(|i| !i.shadowed && norm(&i.path) == norm(path))
        .unwrap();
    match &it.kind {
        Kind::HardLink(t) => hardlink_root(items, t),
        _ => it,
    }
}

/// Expected link count of each non-directory path (names sharing an inode).
fn link_counts(items: &[Item]) -> HashMap<String, u32> {
    let mut by_root: HashMap<String, u32> = HashMap::new();
    for it in expected(items) {
        if !matches!(it.kind, Kind::Dir) {
            *by_root
                .entry(norm(&hardlink_root(items, &it.path).path))
                .or_default() += 1;
        }
    }
    let mut out = HashMap::new();
    for it in expected(items) {
        if !matches!(it.kind, Kind::Dir) {
            out.insert(
                norm(&it.path),
                by_root[&norm(&hardlink_root(items, &it.path).path)],
            );
        }
    }
    out
}

/// An ext4-view handle on ROOT of `disk`: a reader of its own, independent
/// of the libext2fs the tool writes and reads with.
pub fn ext4_view(disk: &Path) -> ext4_view::Ext4 {
    struct At(File, u64);
    impl ext4_view::Ext4Read for At {
        fn read(
            &mut self,
            start: u64,
            dst: &mut [u8],
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
            use std::os::unix::fs::FileExt;
            self.0
                .read_exact_at(dst, self.1 + start)
                .map_err(Box::new)?;
            Ok(())
        }
    }
    let f = File::open(disk).unwrap_or_else(|e| panic!("opening {}: {e}", disk.display()));
    ext4_view::Ext4::load(Box::new(At(f, root(disk).offset))).expect("ext4-view load")
}

fn join(target: &str, p: &str) -> String {
    let p = norm(p);
    let t = target.trim_end_matches('/');
    if p.is_empty() {
        if t.is_empty() {
            "/".into()
        } else {
            t.into()
        }
    } else {
        format!("{t}/{p}")
    }
}

/// Reads every expected entry back through ext4-view: type, mode, owner,
/// mtime, content, link target.
pub fn check_ext4_view(disk: &Path, target: &str, items: &[Item]) {
    let fs = ext4_view(disk);
    for it in expected(items) {
        if !ext4_view_reads_time(hardlink_root(items, &it.path)) {
            continue;
        }
        let p = join(target, &it.path);
        let md = fs
            .symlink_metadata(p.as_str())
            .unwrap_or_else(|e| panic!("ext4-view: {p}: {e}"));
        let ft = md.file_type();
        let root_item = hardlink_root(items, &it.path);
        let ok_type = match &root_item.kind {
            Kind::Dir => ft.is_dir(),
            Kind::File(_) => ft.is_regular_file(),
            Kind::Symlink(_) => ft.is_symlink(),
            Kind::Char(..) => ft.is_char_dev(),
            Kind::Block(..) => ft.is_block_dev(),
            Kind::Fifo => ft.is_fifo(),
            Kind::HardLink(_) => unreachable!(),
        };
        assert!(
            ok_type,
            "ext4-view: {p}: wrong type {ft:?} for {:?}",
            root_item.kind
        );
        assert_eq!(
            md.mode() as u32 & 0o7777,
            root_item.mode,
            "ext4-view: {p}: mode"
        );
        assert_eq!(md.uid() as u64, root_item.uid, "ext4-view: {p}: uid");
        assert_eq!(md.gid() as u64, root_item.gid, "ext4-view: {p}: gid");
        let m = md.modified();
        assert_eq!(
            (m.seconds(), m.nanoseconds()),
            (root_item.mtime, root_item.nsec),
            "ext4-view: {p}: mtime"
        );
        if let Some(c) = content_of(items, &it.path) {
            assert_eq!(md.len(), c.len(), "ext4-view: {p}: size");
            let file = fs.open(p.as_str()).unwrap();
            assert!(c.matches(file), "ext4-view: {p}: content differs");
        }
        if let Kind::Symlink(t) = &root_item.kind {
            let got = fs.read_link(p.as_str()).unwrap();
            assert_eq!(got.as_ref(), t.as_bytes(), "ext4-view: {p}: link target");
        }
    }
}

/// Runs the debugfs commands `cmds` (one a line) on ROOT of `disk`, read
/// only, with the command file in `dir`; panics unless debugfs succeeds.
pub fn debugfs_script(disk: &Path, cmds: &str, dir: &Path) -> Output {
    let cmdfile = dir.join("cmds");
    fs::write(&cmdfile, cmds).unwrap();
    let out = Command::new("debugfs")
        .arg("-f")
        .arg(&cmdfile)
        .arg(format!("{}?offset={}", disk.display(), root(disk).offset))
        .output()
        .expect("running debugfs");
    assert!(out.status.success(), "debugfs failed: {}", stderr(&out));
    out
}

/// Reads xattrs, device numbers and link counts back through debugfs.
pub fn check_debugfs(disk: &Path, target: &str, items: &[Item]) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmds = String::new();
    let mut xattr_files = vec![];
    let mut stats = vec![];
    for (i, it) in expected(items).into_iter().enumerate() {
        let p = join(target, &it.path);
        stats.push((p.clone(), it));
        cmds.push_str(&format!("stat \"{p}\"\n"));
        for (j, (name, value)) in hardlink_root(items, &it.path).xattrs.iter().enumerate() {
            let f = tmp.path().join(format!("x{i}-{j}"));
            cmds.push_str(&format!("ea_get -f {} \"{p}\" {name}\n", f.display()));
            xattr_files.push((p.clone(), name.clone(), value.clone(), f));
        }
    }
    let out = debugfs_script(disk, &cmds, tmp.path());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for (p, name, value, f) in xattr_files {
        let got = fs::read(&f).unwrap_or_else(|_| panic!("debugfs: {p}: xattr {name} missing"));
        assert_eq!(got, value, "debugfs: {p}: xattr {name}");
    }
    // debugfs prints one "Inode: N ... Links: K" block per stat command,
    // in command order.
    let blocks: Vec<&str> = text.split("Inode: ").skip(1).collect();
    assert_eq!(
        blocks.len(),
        stats.len(),
        "debugfs: one stat block per entry:\n{text}"
    );
    let links = link_counts(items);
    for ((p, it), block) in stats.iter().zip(blocks) {
        let root_item = hardlink_root(items, &it.path);
        if let Kind::Char(ma, mi) | Kind::Block(ma, mi) = root_item.kind {
            let want = format!("Device major/minor number: {ma:02}:{mi:02}");
            assert!(
                block.contains(&want),
                "debugfs: {p}: want {want} in\n{block}"
            );
        }
        if let Some(n) = links.get(&norm(&it.path)) {
            assert!(
                block.contains(&format!("Links: {n} ")),
                "debugfs: {p}: want {n} links in\n{block}"
            );
        }
        if let Kind::File(_) = root_item.kind {
            assert!(
                block.contains("Flags: 0x80000"),
                "debugfs: {p}: not extent-mapped:\n{block}"
            );
        }
        assert_eq!(
            debugfs_mtime(block),
            (root_item.mtime, root_item.nsec),
            "debugfs: {p}: mtime in\n{block}"
        );
    }
}

/// Decodes " mtime: 0xLO:EXTRA -- ..." from debugfs' stat output.
fn debugfs_mtime(block: &str) -> (i64, u32) {
    let line = block
        .lines()
        .find(|l| l.trim_start().starts_with("mtime: 0x"))
        .expect("mtime line");
    let hex = line.trim_start().trim_start_matches("mtime: 0x");
    let (lo, rest) = hex.split_once(':').unwrap();
    let extra = u32::from_str_radix(&rest[..8], 16).unwrap();
    let lo = u32::from_str_radix(lo, 16).unwrap() as i32 as i64;
    (lo + (((extra & 3) as i64) << 32), extra >> 2)
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// CI (`CI=true`) runs as root with the Docker environment up: there,
/// nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The running test's name (libtest names its threads after the tests).
fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("this test")
        .to_string()
}

/// Skips the calling test: prints `SKIPPED name: reason` where `cargo test`
/// shows it (straight to stderr, past libtest's capture of passing tests)
/// and returns false, so that the test can `return`. With `CI=true` it
/// fails the test instead.
pub fn skip(reason: &str) -> bool {
    let name = test_name();
    assert!(
        !in_ci(),
        "{name} cannot run: {reason} (CI=true: nothing may be skipped)"
    );
    let _ = writeln!(io::stderr(), "SKIPPED {name}: {reason}");
    false
}

/// True when running as root; otherwise skips (see `skip`), saying `why`
/// root is needed. Use as `if !require_root("...") { return; }`.
pub fn require_root(why: &str) -> bool {
    is_root() || skip(&format!("needs root ({why}); run `sudo ci/test.sh`"))
}

/// The variables ci/docker-env.sh exports for the populate tests.
pub const DOCKER_ENV_VARS: [&str; 9] = [
    "DOCKER_HOST",
    "FP_DIND_IMAGE",
    "FP_TARGET_DOCKERS",
    "FP_REGISTRY",
    "FP_REGISTRY_CONTAINER",
    "FP_TEST_USER",
    "FP_CRICTL",
    "FP_DOCKER_TLS_HOST",
    "FP_DOCKER_CERT_PATH",
];

/// Why the Docker test environment of ci/docker-env.sh is not usable
/// here, if it is not: the tests run the tool as the test user (runuser),
/// loop-mount results and need our dockerd, registry and dind images.
pub fn docker_env_missing() -> Option<String> {
    if !is_root() {
        return Some("needs root and the Docker test environment; run `sudo ci/test.sh`".into());
    }
    let unset: Vec<&str> = DOCKER_ENV_VARS
        .into_iter()
        .filter(|k| std::env::var_os(k).is_none_or(|v| v.is_empty()))
        .collect();
    if unset.is_empty() {
        None
    } else {
        Some(format!(
            "needs the Docker test environment ({} not set); run `. ci/docker-env.sh` \
             (as root) first, or `sudo ci/test.sh`",
            unset.join(", ")
        ))
    }
}

/// True when the Docker test environment is there; otherwise skips (see
/// `skip`). Use as `if !require_docker_env() { return; }`.
pub fn require_docker_env() -> bool {
    match docker_env_missing() {
        None => true,
        Some(reason) => skip(&reason),
    }
}

/// A loop mount of ROOT (read-only unless `rw`), unmounted on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    pub fn new(disk: &Path) -> Mount {
        Mount::with(disk, false)
    }

    pub fn with(disk: &Path, rw: bool) -> Mount {
        assert!(
            is_root(),
            "loop-mounting ROOT needs root: the test should have called require_root()"
        );
        let r = root(disk);
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "ext4", "-o"])
            .arg(format!(
                "{},loop,offset={},sizelimit={}",
                if rw { "rw" } else { "ro" },
                r.offset,
                r.size
            ))
            .arg(disk)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount failed");
        Mount { dir }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Compares every expected entry with what the kernel shows.
pub fn check_kernel(disk: &Path, target: &str, items: &[Item]) {
    let m = Mount::new(disk);
    let base = m.dir.path();
    let mut inodes: HashMap<String, u64> = HashMap::new();
    for it in expected(items) {
        let rel = join(target, &it.path);
        let p = base.join(rel.trim_start_matches('/'));
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("kernel: {rel}: {e}"));
        let root_item = hardlink_root(items, &it.path);
        let ft = md.file_type();
        match &root_item.kind {
            Kind::Dir => assert!(ft.is_dir(), "kernel: {rel}: not a dir"),
            Kind::File(_) => assert!(ft.is_file(), "kernel: {rel}: not a file"),
            Kind::Symlink(t) => {
                assert!(ft.is_symlink(), "kernel: {rel}: not a symlink");
                assert_eq!(
                    fs::read_link(&p).unwrap().as_os_str().as_encoded_bytes(),
                    t.as_bytes()
                );
            }
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                assert!(
                    if matches!(root_item.kind, Kind::Char(..)) {
                        ft.is_char_device()
                    } else {
                        ft.is_block_device()
                    },
                    "kernel: {rel}: wrong device type"
                );
                let rdev = md.rdev();
                assert_eq!(
                    (rustix::fs::major(rdev), rustix::fs::minor(rdev)),
                    (*ma, *mi),
                    "kernel: {rel}: device numbers"
                );
            }
            Kind::Fifo => assert!(ft.is_fifo(), "kernel: {rel}: not a fifo"),
            Kind::HardLink(_) => unreachable!(),
        }
        assert_eq!(md.mode() & 0o7777, root_item.mode, "kernel: {rel}: mode");
        assert_eq!(
            (md.uid() as u64, md.gid() as u64),
            (root_item.uid, root_item.gid),
            "kernel: {rel}: owner"
        );
        assert_eq!(
            (md.mtime(), md.mtime_nsec() as u32),
            (root_item.mtime, root_item.nsec),
            "kernel: {rel}: mtime"
        );
        if let Some(c) = content_of(items, &it.path) {
            assert!(
                c.matches(File::open(&p).unwrap()),
                "kernel: {rel}: content differs"
            );
        }
        let mut names: Vec<String> = list_xattrs(&p);
        names.sort();
        let mut want: Vec<String> = root_item.xattrs.iter().map(|(n, _)| n.clone()).collect();
        want.sort();
        assert_eq!(names, want, "kernel: {rel}: xattr names");
        for (n, v) in &root_item.xattrs {
            let mut buf = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(&p, n.as_str(), &mut buf[..]).unwrap();
            assert_eq!(&buf[..len], &v[..], "kernel: {rel}: xattr {n}");
        }
        if !md.is_dir() {
            let root_path = norm(&hardlink_root(items, &it.path).path);
            let ino = *inodes.entry(root_path).or_insert(md.ino());
            assert_eq!(
                ino,
                md.ino(),
                "kernel: {rel}: hard link to a different inode"
            );
            assert_eq!(
                md.nlink() as u32,
                link_counts(items)[&norm(&it.path)],
                "kernel: {rel}: link count"
            );
        }
    }
}

pub fn list_xattrs(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap();
    buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter(|s| !s.starts_with("system.data"))
        .collect()
}

/// `qemu-img convert` between formats (raw, qcow2, ...).
pub fn qemu_convert(from: &str, to: &str, src: &Path, dst: &Path) {
    let st = Command::new("qemu-img")
        .args(["convert", "-f", from, "-O", to])
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img convert {from} -> {to} failed");
}

/// refpolicy's file contexts for the stores (policy/modules/services/
/// container.fc, and files.fc's `/var/lib(/.*)?`), as Flatcar's policy
/// (type mcs, level s0) has them: written here, apart from the tool's own
/// copy, for `matchpathcon` to read.
pub const STORE_FILE_CONTEXTS: &str = r#"/var/lib(/.*)?	system_u:object_r:var_lib_t:s0
/var/lib/docker(/.*)?	system_u:object_r:container_var_lib_t:s0
/var/lib/docker/.*/config\.env	--	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/containers/.*/.*\.log	--	system_u:object_r:container_log_t:s0
/var/lib/docker/containers/.*/hostname	--	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/containers/.*/hosts	--	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/init(/.*)?	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/overlay(/.*)?	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/overlay2(/.*)?	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/volumes/[^/]+/.*	system_u:object_r:container_file_t:s0
/var/lib/containerd(/.*)?	system_u:object_r:container_var_lib_t:s0
/var/lib/containerd/[^/]+/sandboxes(/.*)?	system_u:object_r:container_ro_file_t:s0
/var/lib/containerd/[^/]+/snapshots(/.*)?	system_u:object_r:container_ro_file_t:s0
"#;

/// `matchpathcon` (selinux-utils), libselinux's own lookup; None (with
/// the reason printed) when it is not installed outside CI.
pub fn matchpathcon() -> Option<String> {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin"] {
        let p = format!("{dir}/matchpathcon");
        if Path::new(&p).exists() {
            return Some(p);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "matchpathcon is missing: ci/docker-env.sh installs selinux-utils"
    );
    eprintln!("skipped: matchpathcon (selinux-utils) is not installed");
    None
}

/// Every inode under `dirs` of ROOT of `disk` (the kernel's read-only
/// mount) carries the `security.selinux` (context and NUL) that
/// `matchpathcon` gives its path and type with the file contexts
/// `file_contexts`, and none where it gives `<<none>>`. Returns how many
/// were checked.
pub fn assert_labels_as_matchpathcon(disk: &Path, dirs: &[&str], file_contexts: &str) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let Some(tool) = matchpathcon() else {
        return 0;
    };
    let fc = tempfile::NamedTempFile::new().unwrap();
    fs::write(fc.path(), file_contexts).unwrap();
    let m = Mount::new(disk);
    // (path in ROOT, matchpathcon's type, inode, the label read).
    type Read = (Vec<u8>, &'static str, u64, Option<Vec<u8>>);
    let mut got: Vec<Read> = vec![];
    let mut todo: Vec<std::path::PathBuf> = dirs
        .iter()
        .map(|d| m.dir.path().join(d.trim_start_matches('/')))
        .collect();
    while let Some(p) = todo.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "link"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "pipe"
        } else if ft.is_socket() {
            "socket"
        } else {
            "file"
        };
        let mut buf = vec![0u8; 4096];
        let label = rustix::fs::lgetxattr(&p, "security.selinux", &mut buf[..])
            .ok()
            .map(|n| buf[..n].to_vec());
        let rel = p.strip_prefix(m.dir.path()).unwrap();
        let abs = [b"/".as_slice(), rel.as_os_str().as_bytes()].concat();
        got.push((abs, kind, md.ino(), label));
        if ft.is_dir() {
            todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    // What matchpathcon gives each path.
    let mut want_of_inode: HashMap<u64, Vec<Option<Vec<u8>>>> = HashMap::new();
    let mut wants = vec![];
    for (path, kind, ino, _) in &got {
        let o = Command::new(&tool)
            .args(["-N", "-f"])
            .arg(fc.path())
            .args(["-m", kind])
            .arg(std::ffi::OsStr::from_bytes(path))
            .output()
            .unwrap();
        assert!(o.status.success(), "matchpathcon: {}", stderr(&o));
        let out = o.stdout.strip_suffix(b"\n").unwrap_or(&o.stdout);
        let at = out.iter().rposition(|&b| b == b'\t').unwrap();
        let want = match &out[at + 1..] {
            b"<<none>>" => None,
            c => Some([c, b"\0"].concat()),
        };
        want_of_inode.entry(*ino).or_default().push(want.clone());
        wants.push(want);
    }
    let show = |l: &Option<Vec<u8>>| {
        l.as_deref()
            .map(|l| String::from_utf8_lossy(l).into_owned())
    };
    for ((path, kind, ino, label), want) in got.iter().zip(&wants) {
        // An inode of several names has one label, that of one of them
        // (setfiles keeps the first it labels; the tool, the first name
        // written).
        let ok = match want_of_inode[ino].len() {
            1 => label == want,
            _ => want_of_inode[ino].contains(label),
        };
        assert!(
            ok,
            "{} ({kind}): the label written, {:?}, is not matchpathcon's, {:?}",
            String::from_utf8_lossy(path),
            show(label),
            show(want)
        );
    }
    got.len()
}
