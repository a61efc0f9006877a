//! One layer against its overlayfs snapshot: the layer blob, decompressed
//! (gzip, zstd or none) and read as a tar, must be what containerd's
//! unpacking made of `snapshots/N/fs` (pkg/archive/tar.go with
//! `OverlayConvertWhiteout`): every entry there with its type, owner, mode,
//! xattrs and content (symlink target, device numbers, hard link to the
//! same inode), each `.wh.NAME` a 0:0 character device owned as the
//! whiteout entry, each `.wh..wh..opq` an opaque directory
//! (`trusted.overlay.opaque=y`), and nothing else in the snapshot. A path
//! the layer names twice is checked against its last entry, as unpacking
//! leaves it. Each path's failure names its first difference.

use std::collections::{BTreeSet, HashMap, HashSet};

use sha2::{Digest, Sha256};

use super::image::blob_path;
use super::layer_stream::{pump, End};
use crate::digest::sha256_part;
use crate::fsread::{join, show, FsRead, Kind, Stat};
use crate::store::verify_common::{
    clean, split_last, Subject, OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX,
};
use crate::store::Failure;
use crate::tar::{EntryType, Meta};

/// A layer to check: its blob, its diff ID, and its snapshot's `fs`.
pub struct Layer<'a> {
    pub blob: &'a str,
    pub diff_id: &'a str,
    pub dir: &'a [u8],
}

/// Checks `layer`, adding what differs to `failures`; `progress` is given
/// the bytes of the blob as they are read. Returns the blob's size.
pub fn check(
    fs: &dyn FsRead,
    layer: &Layer<'_>,
    who: &Subject,
    failures: &mut Vec<Failure>,
    progress: &mut dyn FnMut(u64),
) -> u64 {
    let Some(path) = blob_path(layer.blob) else {
        failures.push(who.fail(
            None,
            format!(
                "the manifest names the layer blob {:?}, not a sha256 digest",
                layer.blob
            ),
        ));
        return 0;
    };
    match fs.stat(&path) {
        Ok(Some(st)) if st.kind == Kind::File => {}
        Ok(_) => {
            failures.push(who.fail(
                Some(&path),
                "the layer blob is missing from the content store: the snapshot's files cannot be checked",
            ));
            return 0;
        }
        Err(e) => {
            failures.push(who.fail(Some(&path), format!("reading the layer blob: {e:#}")));
            return 0;
        }
    }
    let mut walk = Walk {
        fs,
        dir: layer.dir,
        who,
        results: vec![],
        index: HashMap::new(),
        entries: HashSet::new(),
        parents: BTreeSet::new(),
        opaque: BTreeSet::new(),
        attrs: HashMap::new(),
    };
    let (read, blob_hash, end) = pump(fs, &path, &mut |m, d| walk.entry(m, d), progress);
    let size = read.as_ref().map_or(0, |n| *n);
    if let Err(e) = read {
        walk.flush(failures);
        failures.push(who.fail(Some(&path), format!("reading the layer blob: {e:#}")));
        return size;
    }
    if Some(blob_hash.as_str()) != sha256_part(layer.blob) {
        failures.push(who.fail(
            Some(&path),
            format!("the layer blob hashes to sha256:{blob_hash}, not to its name"),
        ));
    }
    match end {
        End::Diff(diff) => {
            if diff != layer.diff_id {
                failures.push(who.fail(
                    Some(&path),
                    format!(
                        "the layer blob decompresses to {diff}, not to its diff ID {}",
                        layer.diff_id
                    ),
                ));
            }
            walk.finish(failures);
        }
        End::Broken(e) => {
            walk.flush(failures);
            failures.push(who.fail(
                Some(&path),
                format!("the layer blob is not a readable (compressed) tar: {e}"),
            ));
        }
    }
    size
}

/// What a tar entry makes in the snapshot.
enum Want<'a> {
    /// An entry of this type.
    Entry(&'a Meta),
    /// A whiteout: a 0:0 character device owned by (uid, gid).
    Whiteout(u64, u64),
}

/// The owner, mode and xattrs a path must end with: its entry's, or the
/// last hard link's to it (unpacking a hard link chowns, chmods and sets
/// the xattrs of the inode both names share).
#[derive(Clone)]
struct Attr {
    uid: u64,
    gid: u64,
    /// None for a symlink (its mode means nothing).
    mode: Option<u32>,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Attr {
    fn of(m: &Meta, symlink: bool) -> Attr {
        Attr {
            uid: m.uid,
            gid: m.gid,
            mode: (!symlink).then_some(m.mode & 0o7777),
            xattrs: m
                .xattrs
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
                .filter(|(k, _)| k != OPAQUE_XATTR)
                .collect(),
        }
    }
}

struct Walk<'a> {
    fs: &'a dyn FsRead,
    dir: &'a [u8],
    who: &'a Subject,
    /// Per path named by the layer, in order: the failure of its last entry.
    results: Vec<(Vec<u8>, Option<Failure>)>,
    index: HashMap<Vec<u8>, usize>,
    /// Paths the layer's entries (and whiteouts) make.
    entries: HashSet<Vec<u8>>,
    /// Directories above them, which unpacking makes when the layer does not.
    parents: BTreeSet<Vec<u8>>,
    /// Directories the layer makes opaque.
    opaque: BTreeSet<Vec<u8>>,
    /// What the paths whose type and content hold must be owned as,
    /// checked once the whole layer is read.
    attrs: HashMap<Vec<u8>, Attr>,
}

/// A kind for messages.
fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "regular file",
        Kind::Dir => "directory",
        Kind::Symlink => "symlink",
        Kind::CharDev => "character device",
        Kind::BlockDev => "block device",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    }
}

/// An xattr value for messages.
fn value(v: &[u8]) -> String {
    // escape_ascii gives ASCII only: any byte offset is a char boundary.
    let s = v.escape_ascii().to_string();
    if s.len() > 60 {
        format!("\"{}\"...", &s[..60])
    } else {
        format!("\"{s}\"")
    }
}

impl Walk<'_> {
    /// Checks one entry of the layer's tar (`digest`: of its data).
    fn entry(&mut self, meta: Meta, digest: Option<[u8; 32]>) {
        let Some(rel) = clean(&meta.path) else {
            let f = self.who.fail(
                Some(&join(self.dir, &meta.path)),
                "the layer's entry leaves the layer (..): containerd refuses it",
            );
            self.result(meta.path, Some(f));
            return;
        };
        if rel.is_empty() {
            return; // the snapshot's root: unpacking skips it
        }
        let (parent, base) = split_last(&rel);
        self.add_parents(parent);
        if base == OPAQUE_MARKER {
            self.opaque.insert(parent.to_vec());
            self.parents.insert(parent.to_vec());
            return;
        }
        if let Some(name) = base.strip_prefix(WHITEOUT_PREFIX) {
            let target = rel_join(parent, name);
            let (got, _) = self.compare(&target, Want::Whiteout(meta.uid, meta.gid), None);
            self.attrs.remove(&target);
            self.entries.insert(target.clone());
            self.result(target, got);
            return;
        }
        let got = if meta.kind == EntryType::Link {
            self.hard_link(&rel, &meta)
        } else {
            let (got, attr) = self.compare(&rel, Want::Entry(&meta), digest);
            match attr {
                Some(a) => self.attrs.insert(rel.clone(), a),
                None => self.attrs.remove(&rel),
            };
            got
        };
        self.entries.insert(rel.clone());
        self.result(rel, got);
    }

    fn add_parents(&mut self, mut dir: &[u8]) {
        while !dir.is_empty() && self.parents.insert(dir.to_vec()) {
            dir = split_last(dir).0;
        }
    }

    fn result(&mut self, rel: Vec<u8>, failure: Option<Failure>) {
        match self.index.get(&rel) {
            Some(&i) => self.results[i].1 = failure,
            None => {
                self.index.insert(rel.clone(), self.results.len());
                self.results.push((rel, failure));
            }
        }
    }

    /// The owner, mode and xattrs of each path whose type and content
    /// hold.
    fn check_attrs(&mut self) {
        for (rel, failure) in &mut self.results {
            let Some(want) = self.attrs.get(rel) else {
                continue;
            };
            if failure.is_some() {
                continue;
            }
            let path = join(self.dir, rel);
            let problem = match self.fs.stat(&path) {
                Ok(Some(st)) => owner(&st, want.uid, want.gid)
                    .or_else(|| {
                        want.mode
                            .filter(|&m| m != st.mode)
                            .map(|m| format!("has mode {:04o}, the layer has {m:04o}", st.mode))
                    })
                    .or_else(|| xattrs(self.fs, &path, &want.xattrs)),
                Ok(None) => Some("is in the layer but missing from the snapshot".into()),
                Err(e) => Some(format!("reading it: {e:#}")),
            };
            *failure = problem.map(|p| self.who.fail(Some(&path), p));
        }
    }

    fn flush(&mut self, failures: &mut Vec<Failure>) {
        failures.extend(self.results.drain(..).filter_map(|(_, f)| f));
    }

    /// After the whole tar: the entries' failures, then the directories
    /// made for them, opaque directories, and what the snapshot has that
    /// the layer does not.
    fn finish(&mut self, failures: &mut Vec<Failure>) {
        self.check_attrs();
        self.flush(failures);
        for p in &self.parents {
            if self.entries.contains(p) {
                continue;
            }
            let path = join(self.dir, p);
            match self.fs.stat(&path) {
                Ok(Some(st)) if st.kind == Kind::Dir => {}
                Ok(Some(st)) => failures.push(self.who.fail(
                    Some(&path),
                    format!(
                        "is a {}, the layer has a directory here",
                        kind_name(st.kind)
                    ),
                )),
                Ok(None) => failures.push(self.who.fail(
                    Some(&path),
                    "the layer has files in this directory but it is missing from the snapshot",
                )),
                Err(e) => failures.push(self.who.fail(Some(&path), format!("reading it: {e:#}"))),
            }
        }
        let mut stack = vec![vec![]];
        while let Some(rel) = stack.pop() {
            let path = join(self.dir, &rel);
            match self.fs.xattrs(&path) {
                Ok(x) => {
                    let has = x.iter().any(|(k, v)| k == OPAQUE_XATTR && v == b"y");
                    let want = self.opaque.contains(&rel);
                    if has && !want {
                        failures.push(self.who.fail(
                            Some(&path),
                            format!("has {OPAQUE_XATTR}=y but the layer has no .wh..wh..opq in this directory"),
                        ));
                    } else if want && !has {
                        failures.push(self.who.fail(
                            Some(&path),
                            format!("the layer makes this directory opaque (.wh..wh..opq) but it lacks {OPAQUE_XATTR}=y"),
                        ));
                    }
                }
                Err(e) => failures.push(
                    self.who
                        .fail(Some(&path), format!("reading its xattrs: {e:#}")),
                ),
            }
            let mut names = match self.fs.read_dir(&path) {
                Ok(n) => n,
                Err(e) => {
                    failures.push(self.who.fail(Some(&path), format!("listing it: {e:#}")));
                    continue;
                }
            };
            names.sort();
            for name in names.into_iter().rev() {
                let child = rel_join(&rel, &name);
                if !self.entries.contains(&child) && !self.parents.contains(&child) {
                    failures.push(self.who.fail(
                        Some(&join(self.dir, &child)),
                        "is in the snapshot but not in the layer",
                    ));
                    continue;
                }
                if matches!(self.fs.stat(&join(self.dir, &child)), Ok(Some(st)) if st.kind == Kind::Dir)
                {
                    stack.push(child);
                }
            }
        }
    }

    /// The first difference between the snapshot's `rel` and what the
    /// layer makes there, in type and content; when they hold, the owner,
    /// mode and xattrs to check at the end.
    fn compare(
        &self,
        rel: &[u8],
        want: Want<'_>,
        digest: Option<[u8; 32]>,
    ) -> (Option<Failure>, Option<Attr>) {
        let path = join(self.dir, rel);
        let fail = |p: String| (Some(self.who.fail(Some(&path), p)), None);
        let st = match self.fs.stat(&path) {
            Ok(Some(st)) => st,
            Ok(None) => {
                // Under a missing directory: that directory is named.
                let parent = split_last(rel).0;
                if !parent.is_empty() && matches!(self.fs.stat(&join(self.dir, parent)), Ok(None)) {
                    return (None, None);
                }
                return fail(match want {
                    Want::Whiteout(..) => "the layer deletes this path (a .wh. entry) but its whiteout (a 0:0 character device) is missing from the snapshot".into(),
                    Want::Entry(_) => "is in the layer but missing from the snapshot".into(),
                });
            }
            Err(e) => return fail(format!("reading it: {e:#}")),
        };
        let m = match want {
            Want::Whiteout(uid, gid) => {
                if st.kind != Kind::CharDev {
                    return fail(format!(
                        "the layer deletes this path (a .wh. entry) but it is a {}, not a 0:0 character device",
                        kind_name(st.kind)
                    ));
                }
                if st.rdev != (0, 0) {
                    return fail(format!(
                        "the layer deletes this path (a .wh. entry) but it is character device {}:{}, not 0:0",
                        st.rdev.0, st.rdev.1
                    ));
                }
                return match owner(&st, uid, gid) {
                    Some(p) => fail(p),
                    None => (None, None),
                };
            }
            Want::Entry(m) => m,
        };
        let kind = match m.kind {
            EntryType::Regular | EntryType::Continuous => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Char => Kind::CharDev,
            EntryType::Block => Kind::BlockDev,
            EntryType::Fifo => Kind::Fifo,
            EntryType::Link => return (None, None), // see hard_link
            other => {
                return fail(format!(
                    "the layer has an entry of tar type {:?}, which containerd does not unpack",
                    other.as_byte() as char
                ))
            }
        };
        if st.kind != kind {
            return fail(format!(
                "is a {}, the layer has a {}",
                kind_name(st.kind),
                kind_name(kind)
            ));
        }
        let problem = match kind {
            Kind::File => self.content(&path, &st, m, digest),
            Kind::Symlink => match self.fs.read_link(&path) {
                Ok(t) if Some(&t) == m.link.as_ref() => None,
                Ok(t) => Some(format!(
                    "points at {}, the layer's symlink at {}",
                    show(&t),
                    show(m.link.as_deref().unwrap_or_default())
                )),
                Err(e) => Some(format!("reading the symlink: {e:#}")),
            },
            Kind::CharDev | Kind::BlockDev if st.rdev != m.dev => Some(format!(
                "is device {}:{}, the layer's is {}:{}",
                st.rdev.0, st.rdev.1, m.dev.0, m.dev.1
            )),
            _ => None,
        };
        match problem {
            Some(p) => fail(p),
            None => (None, Some(Attr::of(m, kind == Kind::Symlink))),
        }
    }

    /// A regular file's size and content.
    fn content(&self, path: &[u8], st: &Stat, m: &Meta, want: Option<[u8; 32]>) -> Option<String> {
        if st.size != m.size {
            return Some(format!("is {} bytes, the layer has {}", st.size, m.size));
        }
        let mut got = Sha256::new();
        if let Err(e) = self.fs.read_file(path, &mut |c| {
            got.update(c);
            Ok(())
        }) {
            return Some(format!("reading it: {e:#}"));
        }
        let got: [u8; 32] = got.finalize().into();
        (Some(got) != want).then(|| "its content differs from the layer's".into())
    }

    /// A hard link: the same inode as its target, which takes the link's
    /// owner, mode and xattrs.
    fn hard_link(&mut self, rel: &[u8], m: &Meta) -> Option<Failure> {
        let path = join(self.dir, rel);
        let target = m.link.as_deref().and_then(clean).unwrap_or_default();
        let tpath = join(self.dir, &target);
        // The target takes the link's attributes whether or not the link
        // is right: only the link is named when it is not.
        let mut attr = Attr::of(m, false);
        if let Some(t) = self.attrs.get(&target) {
            let mut x = t.xattrs.clone();
            x.retain(|(k, _)| !attr.xattrs.iter().any(|(n, _)| n == k));
            attr.xattrs.extend(x);
            self.attrs.insert(target.clone(), attr.clone());
        }
        let problem = match (self.fs.stat(&path), self.fs.stat(&tpath)) {
            (Ok(Some(l)), Ok(Some(t))) if t.ino == l.ino => {
                self.attrs.insert(rel.to_vec(), attr);
                return None;
            }
            (Ok(None), _) => "is in the layer (a hard link) but missing from the snapshot".into(),
            (Ok(Some(_)), Ok(Some(_))) => format!(
                "the layer makes it a hard link to {}, but it is another file",
                show(&tpath)
            ),
            (Ok(Some(_)), Ok(None)) => format!(
                "the layer makes it a hard link to {}, which is missing",
                show(&tpath)
            ),
            (Err(e), _) | (_, Err(e)) => format!("reading it: {e:#}"),
        };
        self.attrs.remove(rel);
        Some(self.who.fail(Some(&path), problem))
    }
}

/// The xattrs of `path` but the opaque one (checked per directory) and the
/// SELinux label (the policy's, which replaces a layer's own, as setfiles
/// does) against `want`: the first one missing, different or extra.
fn xattrs(fs: &dyn FsRead, path: &[u8], want: &[(String, Vec<u8>)]) -> Option<String> {
    let ours = |k: &str| k != OPAQUE_XATTR && k != crate::selinux::XATTR;
    let got = match fs.xattrs(path) {
        Ok(x) => x,
        Err(e) => return Some(format!("reading its xattrs: {e:#}")),
    };
    let got: std::collections::BTreeMap<&str, &[u8]> = got
        .iter()
        .filter(|(k, _)| ours(k))
        .map(|(k, v)| (k.as_str(), &v[..]))
        .collect();
    for (k, v) in want.iter().filter(|(k, _)| ours(k)) {
        match got.get(k.as_str()) {
            None => return Some(format!("lacks the xattr {k}, which the layer sets")),
            Some(g) if g != v => {
                return Some(format!(
                    "its xattr {k} is {}, the layer's is {}",
                    value(g),
                    value(v)
                ))
            }
            Some(_) => {}
        }
    }
    got.keys()
        .find(|k| !want.iter().any(|(w, _)| w == *k))
        .map(|k| format!("has the xattr {k}, which the layer does not set"))
}

/// `dir/name` relative to the snapshot (`name` at its top).
fn rel_join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        join(dir, name)
    }
}

/// The owner, when it differs.
fn owner(st: &Stat, uid: u64, gid: u64) -> Option<String> {
    (u64::from(st.uid) != uid || u64::from(st.gid) != gid).then(|| {
        format!(
            "is owned by {}:{}, the layer has {uid}:{gid}",
            st.uid, st.gid
        )
    })
}
