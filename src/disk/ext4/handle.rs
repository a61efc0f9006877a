//! One open ROOT for a whole phase. Every read and write of the phase goes
//! through the same libext2fs filesystem: the image is opened (and, for
//! writing, its bitmaps read) once, and reads see what was written before
//! it is flushed, which a second opening of the image would not.

use std::io::Read;

use anyhow::{anyhow, bail, Context, Result};
use tokio_util::sync::CancellationToken;

use super::ffi::Filsys;
use super::read::{self, View};
use super::writer::{self, EntryKind, EntryMeta, HardLinks, Stats, Transform, TreeWriter};
use super::{untar, FsSummary, Root};
use crate::fsread::{FsRead, Stat};
use crate::tar::Attrs;

/// How a filesystem is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The image file is opened read-only: nothing can change it.
    Read,
    /// Reads and writes; closing writes the superblock, group descriptors
    /// and bitmaps back.
    Write,
}

/// An ext4 filesystem opened once, by [`Root::open_read`] or
/// [`Root::open_write`]. Reading goes through [`FsRead`] and the helpers
/// below; writing needs [`Mode::Write`]. [`Fs::close`] flushes and reports
/// errors; dropping a writable handle flushes too, with a warning on
/// failure.
pub struct Fs {
    /// None only once closed (by close() or drop), when nothing uses it.
    raw: Option<Filsys>,
    root: Root,
    mode: Mode,
    cancel: Option<CancellationToken>,
    cache: read::Cache,
}

const INCOMPAT_EXTENTS: u32 = 0x40;
/// Features whose on-disk rules this writer does not follow.
const INCOMPAT_REFUSED: &[(u32, &str)] = &[
    (0x8000, "inline_data"),
    (0x1_0000, "encrypt"),
    (0x2_0000, "casefold"),
];
const RO_COMPAT_REFUSED: &[(u32, &str)] =
    &[(0x100, "quota"), (0x200, "bigalloc"), (0x2000, "project")];
const STATE_VALID: u32 = 1;
const STATE_ERROR: u32 = 2;

fn format_uuid(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// SOURCE_DATE_EPOCH, when set (not empty): the time a written ROOT is
/// stamped with, in seconds since 1970.
pub(super) fn source_date_epoch() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .parse::<i64>()
            .ok()
            .filter(|t| *t > 0)
            .map(Some)
            .with_context(|| {
                format!(
                    "SOURCE_DATE_EPOCH={v:?}: it must be a positive number of seconds since 1970"
                )
            }),
        _ => Ok(None),
    }
}

/// The open filesystem, mutably, borrowed apart from the handle's other
/// fields.
fn open_mut(raw: &mut Option<Filsys>) -> &mut Filsys {
    raw.as_mut()
        .expect("the filesystem is open until close() or drop, which take the handle")
}

impl Fs {
    /// Opens the filesystem `root` and checks that it can be read (block
    /// size, root directory); `cancel` stops writes at the next entry or
    /// chunk.
    pub(super) fn open(root: &Root, mode: Mode, cancel: Option<&CancellationToken>) -> Result<Fs> {
        let now = match mode {
            Mode::Write => source_date_epoch()?,
            Mode::Read => None,
        };
        let raw = Filsys::open(&root.image, root.offset, mode == Mode::Write, now).with_context(
            || match mode {
                Mode::Read => format!(
                    "no usable ext4 filesystem at byte offset {} of {}",
                    root.offset,
                    root.image.display()
                ),
                Mode::Write => format!("opening {root} for writing"),
            },
        )?;
        read::check_readable(&raw, root)?;
        Ok(Fs {
            raw: Some(raw),
            root: root.clone(),
            mode,
            cancel: cancel.cloned(),
            cache: read::Cache::default(),
        })
    }

    pub(super) fn raw(&self) -> &Filsys {
        self.raw
            .as_ref()
            .expect("the filesystem is open until close() or drop, which take the handle")
    }

    fn view(&self) -> View<'_> {
        View {
            fs: self.raw(),
            root: &self.root,
            cache: &self.cache,
        }
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The time what this handle writes is stamped with, in seconds since
    /// 1970: SOURCE_DATE_EPOCH, else the filesystem's last write time
    /// before it was opened.
    pub fn stamp(&self) -> i64 {
        self.raw().now()
    }

    /// What the superblock says now (with what this handle wrote).
    pub fn summary(&self) -> FsSummary {
        let info = self.raw().info();
        FsSummary {
            label: info.label,
            uuid: format_uuid(&info.uuid),
            block_size: info.block_size as u64,
            blocks: info.blocks_count,
            free_blocks: info.free_blocks,
            inodes: info.inodes_count as u64,
            free_inodes: info.free_inodes as u64,
            inode_size: info.inode_size as u64,
        }
    }

    /// Checks that this is an ext4 labelled `label` that can be written
    /// safely, and says what its superblock holds.
    pub fn inspect(&self, label: &str) -> Result<FsSummary> {
        let info = self.raw().info();
        let (root, offset) = (&self.root, self.root.offset);
        if info.feature_incompat & INCOMPAT_EXTENTS == 0 {
            bail!("the filesystem at byte offset {offset} is ext2/ext3, not ext4 (no extents feature)");
        }
        if info.label != label {
            bail!(
                "the filesystem at byte offset {offset} is labelled {:?}, not {label:?}: this is not Flatcar's ROOT",
                info.label
            );
        }
        if info.needs_recovery {
            bail!(
                "the {label} filesystem's journal needs recovery: the image was probably booted or not cleanly unmounted. \
                 Writing would bypass the journal; run `e2fsck -f '{}'` first, or start from a fresh image",
                root.device()
            );
        }
        if info.state & STATE_ERROR != 0 || info.state & STATE_VALID == 0 || info.orphans_present {
            bail!(
                "the {label} filesystem is not clean (errors, orphans or not unmounted cleanly); run `e2fsck -f '{}'` first",
                root.device()
            );
        }
        for (bit, name) in INCOMPAT_REFUSED {
            if info.feature_incompat & bit != 0 {
                bail!("the {label} filesystem uses the ext4 feature {name}, which flatcar-preload cannot write");
            }
        }
        for (bit, name) in RO_COMPAT_REFUSED {
            if info.feature_ro_compat & bit != 0 {
                bail!("the {label} filesystem uses the ext4 feature {name}, which flatcar-preload cannot write");
            }
        }
        Ok(self.summary())
    }

    /// Whether `path` (absolute, no symlink on the way) exists.
    pub fn exists(&self, path: &str) -> Result<bool> {
        Ok(self
            .view()
            .resolve(path.as_bytes())
            .with_context(|| format!("looking up {path} in {}", self.root))?
            .is_some())
    }

    /// The content of the regular file `path`, if there is anything at
    /// `path`.
    pub fn read_if_exists(&self, path: &str) -> Result<Option<Vec<u8>>> {
        if !self.exists(path)? {
            return Ok(None);
        }
        Ok(Some(self.view().read_all(path.as_bytes())?))
    }

    /// The names in directory `path` ("." and ".." left out), in no set
    /// order.
    pub fn list_dir(&self, path: &str) -> Result<Vec<String>> {
        let names = self
            .view()
            .read_dir(path.as_bytes())
            .with_context(|| format!("listing {path}"))?;
        Ok(names
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect())
    }

    fn require_write(&self) -> Result<()> {
        match self.mode {
            Mode::Write => Ok(()),
            Mode::Read => bail!(
                "{} was opened read-only: writing needs it opened for writing",
                self.root
            ),
        }
    }

    /// Writes the tar stream `input` under `target` (an absolute directory,
    /// created like `mkdir -p`), each entry first passed through
    /// `transform` (None: as the archive has it). On failure the
    /// filesystem is consistent, with the entries before the failing one
    /// written.
    pub fn write_tar(
        &mut self,
        target: &[u8],
        input: impl Read,
        transform: Option<&mut dyn Transform>,
    ) -> Result<Stats> {
        self.write_tar_with(target, input, transform, HardLinks::KeepTarget)
    }

    /// [`Self::write_tar`], with `links` saying what hard link entries'
    /// attributes do.
    pub fn write_tar_with(
        &mut self,
        target: &[u8],
        input: impl Read,
        mut transform: Option<&mut dyn Transform>,
        links: HardLinks,
    ) -> Result<Stats> {
        self.require_write()?;
        let written = {
            let mut w = TreeWriter::new(open_mut(&mut self.raw), self.cancel.as_ref());
            w.hard_links(links);
            let mut made = |p: &[u8]| transform.as_deref_mut().map_or(vec![], |t| t.made_dir(p));
            w.set_target(target, &mut made)
                .and_then(|()| untar::write_tar(input, &mut w, transform))
        };
        self.cache.clear();
        written
    }

    /// Removes `path` (absolute) and everything below it, if it exists (a
    /// store written whole replaces the old one). On failure the
    /// filesystem is consistent, with part of the tree removed.
    pub fn remove_tree(&mut self, path: &str) -> Result<()> {
        self.require_write()?;
        let removed = {
            let mut w = TreeWriter::new(open_mut(&mut self.raw), self.cancel.as_ref());
            w.remove_tree(path.as_bytes())
        };
        self.cache.clear();
        removed.with_context(|| format!("removing {path} from {}", self.root))
    }

    /// Writes the regular file `path` (absolute) holding `content`,
    /// replacing what is there as tar would; missing parent directories
    /// are created as [`Fs::write_tar`] creates them.
    pub fn write_file(&mut self, path: &str, content: &[u8], attrs: &Attrs) -> Result<()> {
        self.require_write()?;
        let what = || format!("writing {path} into {}", self.root);
        let Some(rel) = path.strip_prefix('/') else {
            return Err(anyhow!("{path:?} is not an absolute path")).with_context(what);
        };
        let entry = EntryMeta {
            perm: attrs.mode & 0o7777,
            uid: writer::owner_id(attrs.uid, "uid").with_context(what)?,
            gid: writer::owner_id(attrs.gid, "gid").with_context(what)?,
            mtime: attrs.mtime,
            mtime_nsec: attrs.mtime_nsec,
            xattrs: attrs.xattrs.clone(),
            ..EntryMeta::new(
                rel.as_bytes().to_vec(),
                EntryKind::File {
                    size: content.len() as u64,
                },
            )
        };
        let written = {
            let mut w = TreeWriter::new(open_mut(&mut self.raw), self.cancel.as_ref());
            w.put(entry, &mut &content[..])
        };
        self.cache.clear();
        written.with_context(what)
    }

    /// Closes the filesystem after `result`, the outcome of the writes made
    /// through it: the writes' error first (the filesystem is closed
    /// consistently either way), else the closing's.
    pub fn close_after<T>(self, result: Result<T>) -> Result<T> {
        let closed = self.close();
        let value = result?;
        closed?;
        Ok(value)
    }

    /// Closes the filesystem; for a writable one, writes its superblock,
    /// group descriptors and bitmaps back first.
    pub fn close(mut self) -> Result<()> {
        let Some(raw) = self.raw.take() else {
            return Ok(());
        };
        match self.mode {
            Mode::Read => {
                drop(raw);
                Ok(())
            }
            Mode::Write => raw
                .close()
                .with_context(|| format!("closing {}", self.root)),
        }
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        let Some(raw) = self.raw.take() else {
            return;
        };
        if self.mode == Mode::Write {
            if let Err(e) = raw.close() {
                eprintln!(
                    "warning: closing {} failed ({e}): what was written may not be complete; run `e2fsck -f '{}'`",
                    self.root,
                    self.root.device()
                );
            }
        }
    }
}

impl FsRead for Fs {
    fn stat(&self, path: &[u8]) -> Result<Option<Stat>> {
        self.view().stat(path)
    }

    fn read_dir(&self, path: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.view().read_dir(path)
    }

    fn read_file(&self, path: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        self.view().read_file(path, sink)
    }

    fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
        self.view().read_link(path)
    }

    fn xattrs(&self, path: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
        self.view().xattrs(path)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::super::testutil::{mkfs, pattern, run, sha, tool};
    use super::super::{EntryKind, Keep};
    use super::*;
    use crate::fsread::Kind;
    use crate::tar::Writer;

    /// A fresh 32 MiB ROOT, or None when e2fsprogs is missing.
    fn fresh(dir: &Path) -> Option<Root> {
        let mke2fs = tool("mke2fs")?;
        let img = dir.join("root.img");
        mkfs(&mke2fs, &img, 32, &[], None);
        Some(Root::new(img, 0))
    }

    /// e2fsck -fn finds nothing to fix.
    fn assert_clean(root: &Root) {
        let Some(e2fsck) = tool("e2fsck") else {
            return;
        };
        run(Command::new(e2fsck).arg("-fn").arg(&root.image));
    }

    fn attrs(mode: u32) -> Attrs {
        Attrs {
            mtime: 1_700_000_000,
            ..Attrs::root_owned(mode)
        }
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    /// A header block of `ty` with `mode`, `size` and `link`.
    fn raw_header(name: &str, ty: tar::EntryType, mode: u32, size: u64, link: &str) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn padded(mut v: Vec<u8>) -> Vec<u8> {
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    #[test]
    fn symlinks_are_0777_and_sparse_files_are_written_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let Some(root) = fresh(dir.path()) else {
            return;
        };
        // A PAX 0.1 sparse file: 3 bytes at 10 000, 2 at 70 000, a hole
        // to 100 000.
        let records: Vec<u8> = [
            "GNU.sparse.size=100000",
            "GNU.sparse.numblocks=2",
            "GNU.sparse.name=dir/sparse",
            "GNU.sparse.map=10000,3,70000,2",
        ]
        .iter()
        .flat_map(|r| {
            // Two digits of length, a space and a newline.
            let len = r.len() + 4;
            format!("{len} {r}\n").into_bytes()
        })
        .collect();
        let tar = [
            raw_header("l0", tar::EntryType::Symlink, 0, 0, "target"),
            raw_header("l1", tar::EntryType::Symlink, 0o640, 0, "other"),
            raw_header(
                "PaxHeaders/s",
                tar::EntryType::XHeader,
                0o644,
                records.len() as u64,
                "",
            ),
            padded(records),
            raw_header(
                "GNUSparseFile.1/sparse",
                tar::EntryType::Regular,
                0o600,
                5,
                "",
            ),
            padded(b"abcde".to_vec()),
            vec![0; 1024],
        ]
        .concat();
        let mut fs = root.open_write(None).unwrap();
        fs.write_tar(b"/", &tar[..], None).unwrap();
        fs.close().unwrap();
        assert_clean(&root);
        let fs = root.open_read().unwrap();
        for (l, target) in [(&b"/l0"[..], "target"), (b"/l1", "other")] {
            let st = fs.stat(l).unwrap().unwrap();
            assert_eq!(
                (st.kind, st.mode, st.size),
                (Kind::Symlink, 0o777, target.len() as u64)
            );
        }
        let st = fs.stat(b"/dir/sparse").unwrap().unwrap();
        assert_eq!((st.kind, st.mode, st.size), (Kind::File, 0o600, 100_000));
        let mut want = vec![0u8; 100_000];
        want[10_000..10_003].copy_from_slice(b"abc");
        want[70_000..70_002].copy_from_slice(b"de");
        assert!(fs.read_all(b"/dir/sparse").unwrap() == want);
    }

    #[test]
    fn reads_through_a_writing_handle_see_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let Some(root) = fresh(dir.path()) else {
            return;
        };
        let mut fs = root.open_write(None).unwrap();
        let before = fs.inspect("ROOT").unwrap();
        assert!(!fs.exists("/var/lib/docker").unwrap());
        assert_eq!(fs.read_if_exists("/var/lib/docker/x").unwrap(), None);
        assert!(fs.list_dir("/var").is_err());

        let names = "/var/lib/docker/image/overlay2/repositories.json";
        fs.write_file(names, b"{}", &Attrs::root_owned(0o600))
            .unwrap();
        assert!(fs.exists(names).unwrap());
        assert_eq!(fs.read_if_exists(names).unwrap().unwrap(), b"{}");
        let st = fs.stat(names.as_bytes()).unwrap().unwrap();
        assert_eq!(
            (st.kind, st.mode, st.uid, st.size),
            (Kind::File, 0o600, 0, 2)
        );
        assert_eq!(
            fs.stat(b"/var/lib/docker/image").unwrap().unwrap().mode,
            0o755
        );
        // Listed (and cached) before the next write...
        assert_eq!(
            fs.list_dir("/var/lib/docker/image/overlay2").unwrap(),
            ["repositories.json"]
        );

        // ...and listed again after it: a new name, a replaced file.
        let big = pattern(3 << 20, 5);
        let mut w = Writer::new(Vec::new());
        w.file_bytes(b"image/overlay2/layerdb", &attrs(0o644), b"db")
            .unwrap();
        w.file(
            b"image/overlay2/big",
            &attrs(0o644),
            big.len() as u64,
            &big[..],
        )
        .unwrap();
        let tar = w.finish().unwrap();
        let stats = fs.write_tar(b"/var/lib/docker", &tar[..], None).unwrap();
        assert_eq!((stats.entries, stats.files), (2, 2));
        assert_eq!(
            sorted(fs.list_dir("/var/lib/docker/image/overlay2").unwrap()),
            ["big", "layerdb", "repositories.json"]
        );
        assert!(fs.read_all(b"/var/lib/docker/image/overlay2/big").unwrap() == big);

        let xattrs = vec![(b"user.k".to_vec(), vec![0, 10, 255])];
        let replaced = Attrs {
            uid: 7,
            gid: 8,
            xattrs: xattrs.clone(),
            ..Attrs::root_owned(0o644)
        };
        fs.write_file(names, b"{\"Repositories\":{}}", &replaced)
            .unwrap();
        assert_eq!(
            fs.read_if_exists(names).unwrap().unwrap(),
            b"{\"Repositories\":{}}"
        );
        let st = fs.stat(names.as_bytes()).unwrap().unwrap();
        assert_eq!((st.mode, st.uid, st.gid, st.nlink), (0o644, 7, 8, 1));
        assert_eq!(
            fs.xattrs(names.as_bytes()).unwrap(),
            vec![("user.k".to_string(), vec![0, 10, 255])]
        );

        // The superblock in memory counts what was written.
        let after = fs.inspect("ROOT").unwrap();
        assert!(
            after.free_blocks + (3 << 20) / 4096 <= before.free_blocks,
            "{before:?} -> {after:?}"
        );
        assert!(after.free_inodes < before.free_inodes);
        fs.close().unwrap();
        assert_clean(&root);

        let fs = root.open_read().unwrap();
        assert_eq!(
            sorted(fs.list_dir("/var/lib/docker/image/overlay2").unwrap()),
            ["big", "layerdb", "repositories.json"]
        );
        assert_eq!(
            fs.xattrs(names.as_bytes()).unwrap(),
            vec![("user.k".to_string(), vec![0, 10, 255])]
        );
        assert_eq!(fs.summary().free_blocks, after.free_blocks);
    }

    #[test]
    fn transform_relabels_remaps_and_skips() {
        let dir = tempfile::tempdir().unwrap();
        let Some(root) = fresh(dir.path()) else {
            return;
        };
        let label = |l: &str| Attrs {
            xattrs: vec![(b"security.selinux".to_vec(), l.as_bytes().to_vec())],
            ..attrs(0o644)
        };
        let mut w = Writer::new(Vec::new());
        w.dir(b"old", &label("dir_t")).unwrap();
        w.file_bytes(b"old/keep", &label("file_t"), b"kept")
            .unwrap();
        w.file_bytes(b"old/drop", &label("file_t"), b"dropped")
            .unwrap();
        w.file_bytes(b"old/plain", &attrs(0o600), b"plain").unwrap();
        w.hard_link(b"old/again", &attrs(0o644), b"old/keep")
            .unwrap();
        w.symlink(b"old/link", &attrs(0o777), b"keep").unwrap();
        let tar = w.finish().unwrap();

        let mut seen = vec![];
        let mut transform = |e: &mut EntryMeta| -> Result<Keep> {
            seen.push((e.path.clone(), e.kind().clone()));
            if e.path == b"old/drop" {
                return Ok(Keep::Skip);
            }
            for (name, value) in &mut e.xattrs {
                if name == b"security.selinux" {
                    *value = b"system_u:object_r:container_file_t:s0".to_vec();
                }
            }
            e.path = [&b"new"[..], &e.path[3..]].concat();
            if let (EntryKind::HardLink { .. }, Some(t)) = (e.kind().clone(), e.link_target_mut()) {
                *t = [&b"new"[..], &t[3..]].concat();
            }
            Ok(Keep::Write)
        };
        let mut fs = root.open_write(None).unwrap();
        let stats = fs
            .write_tar(b"/srv", &tar[..], Some(&mut transform))
            .unwrap();
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[1], (b"old/keep".to_vec(), EntryKind::File { size: 4 }));
        assert_eq!(
            seen[5],
            (
                b"old/link".to_vec(),
                EntryKind::Symlink {
                    target: b"keep".to_vec()
                }
            )
        );
        assert_eq!((stats.entries, stats.files, stats.hardlinks), (5, 2, 1));

        let label_of = |fs: &Fs, p: &str| fs.xattrs(p.as_bytes()).unwrap();
        let relabelled = vec![(
            "security.selinux".to_string(),
            b"system_u:object_r:container_file_t:s0".to_vec(),
        )];
        assert!(!fs.exists("/srv/old").unwrap());
        assert_eq!(
            sorted(fs.list_dir("/srv/new").unwrap()),
            ["again", "keep", "link", "plain"]
        );
        assert_eq!(label_of(&fs, "/srv/new"), relabelled);
        assert_eq!(label_of(&fs, "/srv/new/keep"), relabelled);
        assert_eq!(label_of(&fs, "/srv/new/plain"), vec![]);
        let (keep, again) = (
            fs.stat(b"/srv/new/keep").unwrap().unwrap(),
            fs.stat(b"/srv/new/again").unwrap().unwrap(),
        );
        assert_eq!((keep.ino, keep.nlink), (again.ino, 2));
        assert_eq!(fs.read_link(b"/srv/new/link").unwrap(), b"keep");
        assert_eq!(fs.read_if_exists("/srv/new/drop").unwrap(), None);

        // A transform's error names the entry and stops the writing.
        let mut failing = |e: &mut EntryMeta| -> Result<Keep> {
            if e.path.ends_with(b"plain") {
                bail!("no label for it");
            }
            Ok(Keep::Write)
        };
        let e = fs
            .write_tar(b"/other", &tar[..], Some(&mut failing))
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("old/plain") && e.contains("no label for it"),
            "{e}"
        );
        assert!(fs.exists("/other/old/drop").unwrap());
        assert!(!fs.exists("/other/old/plain").unwrap());
        // ...and an xattr a transform adds is checked like the archive's.
        let mut bad = |e: &mut EntryMeta| -> Result<Keep> {
            e.xattrs.push((b"bogus.name".to_vec(), vec![]));
            Ok(Keep::Write)
        };
        let e = fs.write_tar(b"/bad", &tar[..], Some(&mut bad)).unwrap_err();
        assert!(format!("{e:#}").contains("bogus.name"), "{e:#}");
        fs.close().unwrap();
        assert_clean(&root);
    }

    #[test]
    fn a_read_handle_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let Some(root) = fresh(dir.path()) else {
            return;
        };
        let before = sha(&root.image);
        let mut fs = root.open_read().unwrap();
        let e = fs
            .write_file("/a", b"x", &Attrs::root_owned(0o644))
            .unwrap_err();
        assert!(format!("{e:#}").contains("read-only"), "{e:#}");
        let e = fs.write_tar(b"/", &[0u8; 1024][..], None).unwrap_err();
        assert!(format!("{e:#}").contains("read-only"), "{e:#}");
        assert_eq!(fs.mode(), Mode::Read);
        assert_eq!(fs.inspect("ROOT").unwrap().label, "ROOT");
        assert!(format!("{:#}", fs.inspect("OEM").unwrap_err()).contains("not Flatcar's ROOT"));
        fs.close().unwrap();
        assert!(sha(&root.image) == before, "reading changed the image file");
    }

    #[test]
    fn dropping_a_writing_handle_flushes_it() {
        let dir = tempfile::tempdir().unwrap();
        let Some(root) = fresh(dir.path()) else {
            return;
        };
        {
            let mut fs = root.open_write(None).unwrap();
            fs.write_file("/etc/x", b"kept", &Attrs::root_owned(0o644))
                .unwrap();
            let e = fs
                .write_file("etc/y", b"", &Attrs::root_owned(0o644))
                .unwrap_err();
            assert!(format!("{e:#}").contains("not an absolute path"), "{e:#}");
            let bad = Attrs {
                xattrs: vec![(b"nonamespace".to_vec(), vec![])],
                ..Attrs::root_owned(0o644)
            };
            assert!(fs.write_file("/etc/z", b"", &bad).is_err());
        }
        assert_clean(&root);
        let fs = root.open_read().unwrap();
        assert_eq!(fs.read_if_exists("/etc/x").unwrap().unwrap(), b"kept");
        assert!(!fs.exists("/etc/z").unwrap());
    }

    #[test]
    fn cancelling_stops_writing_at_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let Some(root) = fresh(dir.path()) else {
            return;
        };
        let cancel = CancellationToken::new();
        let mut fs = root.open_write(Some(&cancel)).unwrap();
        fs.write_file("/a", b"1", &Attrs::root_owned(0o644))
            .unwrap();
        cancel.cancel();
        let e = fs
            .write_file("/b", b"2", &Attrs::root_owned(0o644))
            .unwrap_err();
        assert!(format!("{e:#}").contains("interrupted"), "{e:#}");
        fs.close().unwrap();
        assert_clean(&root);
        let fs = root.open_read().unwrap();
        assert!(fs.exists("/a").unwrap() && !fs.exists("/b").unwrap());
    }
}
