//! What the stores' `verify` share: who a failure is about, layer entry
//! names as an unpacker sees them, the overlay whiteout conventions, and
//! the layer list of an image config. Tests also get an in-memory tree
//! ([`memfs::MemFs`]).

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::Failure;
use crate::digest::is_hex64;
use crate::fsread::show;

/// The xattr overlayfs reads to make a directory opaque (written by Docker's
/// overlay2 driver and containerd's overlay whiteout conversion as root).
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// A layer tar's `.wh.NAME` deletes NAME from the layers below.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// `.wh..wh.*` names are markers, not deletions.
pub const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// `DIR/.wh..wh..opq` makes DIR opaque.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Who a failure is about.
#[derive(Clone, Debug, Default)]
pub struct Subject {
    pub image: Option<String>,
    pub layer: Option<String>,
}

impl Subject {
    /// A failure of `problem` at `path`, about this image and layer.
    pub fn fail(&self, path: Option<&[u8]>, problem: impl Into<String>) -> Failure {
        Failure {
            image: self.image.clone(),
            layer: self.layer.clone(),
            path: path.map(show),
            problem: problem.into(),
        }
    }
}

/// The cleaned relative path of a tar entry name (no `.`, empty parts or
/// leading `/`); None when it leaves the layer.
pub fn clean(name: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<&[u8]> = vec![];
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join(&b'/'))
}

/// (parent, last name) of a relative path; the parent of a top-level name
/// is empty.
pub fn split_last(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (b"", rel),
    }
}

/// Layer IDs of an image config, in order (`rootfs.diff_ids`).
pub fn diff_ids(config: &[u8]) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    let c: Config = serde_json::from_slice(config).context("parsing the image config")?;
    for d in &c.rootfs.diff_ids {
        match d.strip_prefix("sha256:") {
            Some(h) if is_hex64(h) => {}
            _ => bail!("rootfs.diff_ids holds {d:?}, not a sha256 digest"),
        }
    }
    Ok(c.rootfs.diff_ids)
}

/// For the stores' `verify` tests: the one failure of `r` (it must have
/// exactly one), which must be at `path`.
#[cfg(test)]
pub fn only_failure(r: &super::Report, path: &str) -> super::Failure {
    assert_eq!(
        r.failures.len(),
        1,
        "one failure expected: {:#?}",
        r.failures
    );
    let f = r.failures[0].clone();
    assert_eq!(f.path.as_deref(), Some(path), "{f}");
    f
}

#[cfg(test)]
pub mod memfs {
    //! A tree in memory with full control over kinds, owners, devices and
    //! xattrs, for the stores' `verify` tests.

    use std::collections::BTreeMap;

    use anyhow::{Context, Result};

    use crate::fsread::{FsRead, Kind, Stat};

    #[derive(Clone)]
    pub struct Node {
        pub stat: Stat,
        pub data: Vec<u8>,
        pub xattrs: Vec<(String, Vec<u8>)>,
    }

    #[derive(Clone, Default)]
    pub struct MemFs {
        pub nodes: BTreeMap<Vec<u8>, Node>,
    }

    impl MemFs {
        /// Adds (or replaces) a node, with the directories above it.
        pub fn put(&mut self, path: &str, kind: Kind, data: &[u8], rdev: (u32, u32)) {
            self.put_bytes(path.as_bytes(), kind, data, rdev)
        }
        pub fn put_bytes(&mut self, path: &[u8], kind: Kind, data: &[u8], rdev: (u32, u32)) {
            if let Some(i) = path.iter().rposition(|&b| b == b'/') {
                if i > 0 && !self.nodes.contains_key(&path[..i]) {
                    self.put_bytes(&path[..i], Kind::Dir, b"", (0, 0));
                }
            }
            let ino = self.nodes.len() as u64 + 1;
            self.nodes.insert(
                path.to_vec(),
                Node {
                    stat: Stat {
                        kind,
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        size: if kind == Kind::Dir {
                            4096
                        } else {
                            data.len() as u64
                        },
                        rdev,
                        ino,
                        nlink: 1,
                        mtime: (0, 0),
                    },
                    data: data.to_vec(),
                    xattrs: vec![],
                },
            );
        }
        pub fn file(&mut self, path: &str, data: &[u8]) {
            self.put(path, Kind::File, data, (0, 0));
        }
        pub fn dir(&mut self, path: &str) {
            if !self.nodes.contains_key(path.as_bytes()) {
                self.put(path, Kind::Dir, b"", (0, 0));
            }
        }
        pub fn node(&mut self, path: &str) -> &mut Node {
            self.node_bytes(path.as_bytes())
        }
        pub fn node_bytes(&mut self, path: &[u8]) -> &mut Node {
            let shown = String::from_utf8_lossy(path).into_owned();
            self.nodes
                .get_mut(path)
                .unwrap_or_else(|| panic!("no {shown} in the fixture"))
        }
        /// Writes the tree into a host directory (files, directories, symlinks,
        /// hard links; permissions).
        pub fn materialize(&self, dir: &std::path::Path) {
            use std::collections::HashMap;
            use std::os::unix::ffi::OsStrExt;
            use std::os::unix::fs::PermissionsExt;
            let mut inodes: HashMap<u64, std::path::PathBuf> = HashMap::new();
            let mut dirs = vec![];
            for (path, node) in &self.nodes {
                let p = dir.join(std::ffi::OsStr::from_bytes(&path[1..]));
                match node.stat.kind {
                    Kind::Dir => {
                        std::fs::create_dir_all(&p).unwrap();
                        dirs.push((p, node.stat.mode));
                    }
                    Kind::File => {
                        if let Some(first) = inodes.get(&node.stat.ino) {
                            std::fs::hard_link(first, &p).unwrap();
                            continue;
                        }
                        std::fs::write(&p, &node.data).unwrap();
                        let perm = std::fs::Permissions::from_mode(node.stat.mode);
                        std::fs::set_permissions(&p, perm).unwrap();
                        inodes.insert(node.stat.ino, p);
                    }
                    Kind::Symlink => {
                        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&node.data), &p)
                            .unwrap()
                    }
                    k => panic!("materialize cannot make a {k:?}"),
                }
            }
            for (p, mode) in dirs.into_iter().rev() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }

        /// Removes a node and everything below it.
        pub fn remove(&mut self, path: &str) {
            assert!(
                self.nodes.remove(path.as_bytes()).is_some(),
                "no {path} in the fixture"
            );
            let prefix = format!("{path}/");
            self.nodes.retain(|k, _| !k.starts_with(prefix.as_bytes()));
        }
    }

    impl FsRead for MemFs {
        fn stat(&self, path: &[u8]) -> Result<Option<Stat>> {
            Ok(self.nodes.get(path).map(|n| n.stat.clone()))
        }
        fn read_dir(&self, path: &[u8]) -> Result<Vec<Vec<u8>>> {
            let mut prefix = path.to_vec();
            prefix.push(b'/');
            Ok(self
                .nodes
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix[..]))
                .filter(|rest| !rest.contains(&b'/'))
                .map(<[u8]>::to_vec)
                .collect())
        }
        fn read_file(&self, path: &[u8], sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
            let n = self.nodes.get(path).context("no such file")?;
            anyhow::ensure!(n.stat.kind == Kind::File, "not a regular file");
            for c in n.data.chunks(64 * 1024) {
                sink(c)?;
            }
            Ok(n.data.len() as u64)
        }
        fn read_link(&self, path: &[u8]) -> Result<Vec<u8>> {
            let n = self.nodes.get(path).context("no such file")?;
            anyhow::ensure!(n.stat.kind == Kind::Symlink, "not a symlink");
            Ok(n.data.clone())
        }
        fn xattrs(&self, path: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
            Ok(self.nodes.get(path).context("no such file")?.xattrs.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_names_as_an_unpacker_sees_them() {
        assert_eq!(clean(b"./a//b/"), Some(b"a/b".to_vec()));
        assert_eq!(clean(b"/a/../b"), Some(b"b".to_vec()));
        assert_eq!(clean(b"a/../../etc"), None);
        assert_eq!(clean(b"./"), Some(vec![]));
        assert_eq!(split_last(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split_last(b"c"), (&b""[..], &b"c"[..]));
    }
}
