//! A layer's tar stream, rebuilt from its tar-split metadata and the files
//! of its `diff/` and hashed against its diff ID (naming the files whose
//! crc64 differs when it does not match), and its overlay whiteouts and
//! opaque directories checked against the entries of the layer.

use std::collections::BTreeSet;

use crate::digest::{hex, PipedSha256};
use crate::fsread::{join as join_bytes, show, FsRead, Kind};
use crate::store::docker::tarsplit::{Crc64, Decoder, Entry};
use crate::store::verify_common::{
    clean, split_last, Subject, OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_META_PREFIX, WHITEOUT_PREFIX,
};
use crate::store::Failure;

/// What a layer's tar stream is checked from.
pub(super) struct Stream<'a> {
    pub(super) fs: &'a dyn FsRead,
    pub(super) diff_dir: &'a [u8],
    /// The tar-split metadata, and its path.
    pub(super) ts: &'a [u8],
    pub(super) tar_split: &'a [u8],
    pub(super) who: &'a Subject,
}

/// Rebuilds the layer's tar stream from its tar-split metadata and
/// `diff/`, checks it against the diff ID (naming the files that differ
/// when it does not match) and the overlay whiteouts.
pub(super) fn check_stream(
    stream: &Stream<'_>,
    diff_id: &str,
    failures: &mut Vec<Failure>,
    bytes_hashed: &mut u64,
    progress: &mut dyn FnMut(u64),
) {
    let Stream {
        fs,
        diff_dir,
        ts,
        tar_split,
        who,
    } = *stream;
    let mut pass = Pass {
        fs,
        diff_dir,
        who,
        diagnose: false,
        failures: vec![],
        crc_mismatches: vec![],
        broken: false,
        bytes: 0,
    };
    let hashed = pass.run(ts, tar_split, progress);
    *bytes_hashed += pass.bytes;
    failures.append(&mut pass.failures);
    if let Some(got) = hashed {
        let got = format!("sha256:{got}");
        if got != diff_id {
            // Find the files that differ (tar-split keeps a crc64 of each).
            let mut diag = Pass {
                fs,
                diff_dir,
                who,
                diagnose: true,
                failures: vec![],
                crc_mismatches: vec![],
                broken: false,
                bytes: 0,
            };
            diag.run(ts, tar_split, &mut |_| {});
            let why = format!(
                "the layer's tar stream rebuilt from diff/ hashes to {got}, not to its diff ID"
            );
            if diag.crc_mismatches.is_empty() {
                failures.push(who.fail(
                    Some(tar_split),
                    format!("{why}, yet every file matches the tar-split checksums: the tar-split metadata was changed"),
                ));
            }
            for p in diag.crc_mismatches {
                failures.push(who.fail(
                    Some(&p),
                    format!("the file's content differs from the layer's (tar-split crc64); {why}"),
                ));
            }
        }
    }
}

/// One walk over a layer's tar-split: rebuilds and hashes the tar stream
/// (or, when `diagnose`, finds the files whose crc64 differs).
struct Pass<'a> {
    fs: &'a dyn FsRead,
    diff_dir: &'a [u8],
    who: &'a Subject,
    diagnose: bool,
    failures: Vec<Failure>,
    crc_mismatches: Vec<Vec<u8>>,
    /// The stream cannot be rebuilt (a file is missing or has another size).
    broken: bool,
    bytes: u64,
}

impl Pass<'_> {
    fn fail(&mut self, path: &[u8], problem: impl Into<String>) {
        if !self.diagnose {
            self.failures.push(self.who.fail(Some(path), problem));
        }
    }

    fn is_opaque(&self, dir: &[u8]) -> std::result::Result<bool, String> {
        let x = self
            .fs
            .xattrs(dir)
            .map_err(|e| format!("reading its xattrs: {e:#}"))?;
        Ok(x.iter().any(|(k, v)| k == OPAQUE_XATTR && v == b"y"))
    }

    /// Returns the hex sha256 of the rebuilt stream when it could be
    /// rebuilt completely.
    fn run(&mut self, ts: &[u8], ts_path: &[u8], progress: &mut dyn FnMut(u64)) -> Option<String> {
        let mut hasher = PipedSha256::new();
        let mut entries = Decoder::gzip(ts);
        // Directories the layer makes opaque, and those that are in diff/.
        let mut opq_dirs = BTreeSet::new();
        let mut opaque_dirs = BTreeSet::new();
        loop {
            let entry = match entries.next_entry() {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(e) => {
                    self.fail(ts_path, format!("{e:#}"));
                    return None;
                }
            };
            match entry {
                Entry::Segment(raw) => hasher.update(&raw),
                Entry::File { name, size, crc64 } => {
                    let Some(rel) = clean(&name) else {
                        self.fail(ts_path, format!("entry {:?} leaves the layer", show(&name)));
                        self.broken = true;
                        continue;
                    };
                    self.file(
                        &rel,
                        size,
                        crc64,
                        &mut hasher,
                        &mut opq_dirs,
                        &mut opaque_dirs,
                        progress,
                    );
                }
            }
        }
        // 5. Opaque directories: exactly where the layer has .wh..wh..opq.
        for d in opq_dirs.difference(&opaque_dirs) {
            let path = join_bytes(self.diff_dir, d);
            match self.is_opaque(&path) {
                Ok(true) => {}
                Ok(false) => self.fail(
                    &path,
                    format!("the layer makes this directory opaque (.wh..wh..opq) but it lacks {OPAQUE_XATTR}=y"),
                ),
                Err(e) => self.fail(&path, e),
            }
        }
        for d in opaque_dirs.difference(&opq_dirs) {
            let path = join_bytes(self.diff_dir, d);
            self.fail(
                &path,
                format!("has {OPAQUE_XATTR}=y but the layer has no .wh..wh..opq in this directory"),
            );
        }
        (!self.broken).then(|| hex(&hasher.finalize()))
    }

    #[allow(clippy::too_many_arguments)]
    fn file(
        &mut self,
        rel: &[u8],
        size: u64,
        crc64: Option<u64>,
        hasher: &mut PipedSha256,
        opq_dirs: &mut BTreeSet<Vec<u8>>,
        opaque_dirs: &mut BTreeSet<Vec<u8>>,
        progress: &mut dyn FnMut(u64),
    ) {
        let path = join_bytes(self.diff_dir, rel);
        let (parent, base) = split_last(rel);
        if size == 0 && base.starts_with(WHITEOUT_PREFIX) {
            // Docker's overlay2 applies these instead of writing them.
            if base == OPAQUE_MARKER {
                opq_dirs.insert(parent.to_vec());
            } else if !base.starts_with(WHITEOUT_META_PREFIX) {
                let mut deleted = parent.to_vec();
                if !deleted.is_empty() {
                    deleted.push(b'/');
                }
                deleted.extend_from_slice(&base[WHITEOUT_PREFIX.len()..]);
                let target = join_bytes(self.diff_dir, &deleted);
                match self.fs.stat(&target) {
                    Ok(Some(st)) if st.kind == Kind::CharDev && st.rdev == (0, 0) => {}
                    Ok(Some(st)) => self.fail(
                        &target,
                        format!(
                            "the layer deletes this path ({}) but it is a {:?} {}:{}, not a 0:0 character device",
                            show(base),
                            st.kind,
                            st.rdev.0,
                            st.rdev.1
                        ),
                    ),
                    Ok(None) => self.fail(
                        &target,
                        format!("the layer deletes this path ({}) but its whiteout (a 0:0 character device) is missing", show(base)),
                    ),
                    Err(e) => self.fail(&target, format!("reading it: {e:#}")),
                }
            }
            if let Ok(Some(_)) = self.fs.stat(&path) {
                self.fail(
                    &path,
                    "a whiteout marker was written as a file: overlayfs ignores it",
                );
            }
            return;
        }
        let st = match self.fs.stat(&path) {
            Ok(Some(st)) => st,
            Ok(None) => {
                self.fail(&path, "is in the layer but missing from its diff directory");
                self.broken |= size > 0;
                return;
            }
            Err(e) => {
                self.fail(&path, format!("reading it: {e:#}"));
                self.broken = true;
                return;
            }
        };
        if st.kind == Kind::Dir {
            match self.is_opaque(&path) {
                Ok(true) => {
                    opaque_dirs.insert(rel.to_vec());
                }
                Ok(false) => {}
                Err(e) => self.fail(&path, e),
            }
        }
        if size == 0 {
            return;
        }
        if st.kind != Kind::File {
            self.fail(
                &path,
                format!(
                    "is a {:?}, the layer has a regular file of {size} bytes",
                    st.kind
                ),
            );
            self.broken = true;
            return;
        }
        if st.size != size {
            self.fail(&path, format!("is {} bytes, the layer has {size}", st.size));
            self.broken = true;
            return;
        }
        if self.broken {
            return; // the stream is lost already: only check what is there
        }
        let mut digest = self.diagnose.then(Crc64::new);
        let diagnose = self.diagnose;
        let mut hashed = 0u64;
        let read = self.fs.read_file(&path, &mut |chunk| {
            hasher.update(chunk);
            if let Some(d) = digest.as_mut() {
                d.update(chunk);
            }
            hashed += chunk.len() as u64;
            if !diagnose {
                progress(chunk.len() as u64);
            }
            Ok(())
        });
        if !diagnose {
            self.bytes += hashed;
        }
        match read {
            Ok(n) if n == size => {}
            Ok(n) => {
                self.fail(&path, format!("read {n} bytes, the layer has {size}"));
                self.broken = true;
                return;
            }
            Err(e) => {
                self.fail(&path, format!("reading it: {e:#}"));
                self.broken = true;
                return;
            }
        }
        if let Some(d) = digest {
            if crc64 != Some(d.finish()) {
                self.crc_mismatches.push(path);
            }
        }
    }
}
