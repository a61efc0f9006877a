//! What of Docker's `/var/lib/docker` goes into the image, and the walk
//! that exports a tree (through [`crate::tar::Writer`]) with everything
//! overlayfs relies on: owners, modes, hard links, 0:0 whiteout devices and
//! every xattr (as PAX `SCHILY.xattr.*` records), including
//! `trusted.overlay.opaque`, which plain tar, busybox tar and Docker's
//! archive API all drop.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::ext4::estimate::{Estimator, Item, Need};

pub mod select;

pub use select::{read_selection, SelectedImage, Selection};
use select::{Plan, Rule};

/// Where Flatcar's Docker keeps its store (no --data-root on Flatcar).
pub const DOCKER_ROOT: &str = "/var/lib/docker";
/// Where Flatcar's containerd keeps its root.
pub const CONTAINERD_ROOT: &str = "/var/lib/containerd";

/// The top-level entries of /var/lib/docker that a daemon needs to find the
/// pulled images: the image metadata (image db, layer db, repositories.json,
/// distribution cache) and the overlay2 layers. Everything else is state of
/// the daemon that pulled (the dind's), recreated empty by Docker at first start:
/// `engine-id` (the daemon's identity), `network/` (local-kv.db), `containers/`,
/// `swarm/`, `buildkit/`, `tmp/`, `runtimes/`, `plugins/`, `volumes/`, the
/// dind's own `containerd/`.
pub const DOCKER_KEEP: &[&str] = &["image", "overlay2"];

/// Within what is kept, per-instance state that must not travel either.
const DOCKER_SKIP: &[&str] = &[
    // Read-write layers of containers: the dind never runs any, but a
    // merged store must not get references to them.
    "image/overlay2/layerdb/mounts",
];

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExportStats {
    pub entries: u64,
    pub bytes: u64,
}

fn xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let size = rustix::fs::llistxattr_query(path).map_err(io::Error::from)?;
    if size == 0 {
        return Ok(vec![]);
    }
    let mut names = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, &mut names[..]).map_err(io::Error::from)?;
    let mut out = vec![];
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let len = rustix::fs::lgetxattr_query(path, name).map_err(io::Error::from)?;
        let mut value = vec![0u8; len];
        let got = rustix::fs::lgetxattr(path, name, &mut value[..]).map_err(io::Error::from)?;
        value.truncate(got);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// Walks a tree into a tar stream (or only measures it); the stream
/// format is [`crate::tar::Writer`]'s.
struct Exporter<W: Write> {
    tar: crate::tar::Writer<W>,
    /// When set, entries are only counted (no data is read or written).
    measure: Option<Estimator>,
    /// (dev, ino) of files with several links -> the first path written.
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: ExportStats,
}

impl<W: Write> Exporter<W> {
    /// Writes the entry at `path` as `name`; with `content`, a regular file
    /// holding it instead of what is on disk (mode 0600, as Docker writes
    /// its generated files).
    fn entry(&mut self, path: &Path, name: &[u8], content: Option<&[u8]>) -> Result<()> {
        let md =
            fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let ft = md.file_type();
        if ft.is_socket() {
            return Ok(()); // tar cannot hold sockets; nothing in a store needs one
        }
        if content.is_some() && !ft.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        // A generated file is an inode of its own, whatever the disk's has.
        let linked = content.is_none() && !ft.is_dir() && md.nlink() > 1;
        let size = content.map_or(md.len(), |c| c.len() as u64);
        let attrs =
            xattrs(path).with_context(|| format!("reading xattrs of {}", path.display()))?;
        if let Some(est) = &mut self.measure {
            let item = if linked && self.links.insert((md.dev(), md.ino()), vec![]).is_some() {
                Item::HardLink
            } else if ft.is_dir() {
                Item::Dir
            } else if ft.is_file() {
                Item::File { size }
            } else if ft.is_symlink() {
                Item::Symlink {
                    target_len: fs::read_link(path)?.as_os_str().len(),
                }
            } else {
                Item::Other
            };
            let sizes: Vec<(usize, usize)> =
                attrs.iter().map(|(n, v)| (n.len(), v.len())).collect();
            let rel = name.strip_prefix(b"./").unwrap_or(name);
            est.add(rel, item, &sizes);
            return Ok(());
        }
        let attrs = crate::tar::Attrs {
            mode: if content.is_some() {
                0o600
            } else {
                md.mode() & 0o7777
            },
            uid: md.uid() as u64,
            gid: md.gid() as u64,
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            xattrs: attrs,
        };
        self.stats.entries += 1;
        if linked {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                // The first name carries the inode's xattrs.
                let attrs = crate::tar::Attrs {
                    xattrs: vec![],
                    ..attrs
                };
                return self.tar.hard_link(name, &attrs, first);
            }
            self.links.insert((md.dev(), md.ino()), name.to_vec());
        }
        if ft.is_dir() {
            self.tar.dir(name, &attrs)?;
        } else if ft.is_file() {
            match content {
                Some(c) => self.tar.file_bytes(name, &attrs, c)?,
                None => {
                    let f =
                        File::open(path).with_context(|| format!("opening {}", path.display()))?;
                    self.tar.file(name, &attrs, size, f)?;
                }
            }
            self.stats.bytes += size;
        } else if ft.is_symlink() {
            let target =
                fs::read_link(path).with_context(|| format!("reading {}", path.display()))?;
            self.tar
                .symlink(name, &attrs, target.as_os_str().as_bytes())?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let (major, minor) = (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()));
            if ft.is_char_device() {
                self.tar.char_device(name, &attrs, major, minor)?;
            } else {
                self.tar.block_device(name, &attrs, major, minor)?;
            }
        } else if ft.is_fifo() {
            self.tar.fifo(name, &attrs)?;
        }
        Ok(())
    }

    /// Writes what is below `dir` (named `name`), in name order: everything
    /// but `skip` and what `plan` skips, or, when `filtered`, only the
    /// children that `plan` names.
    fn tree(
        &mut self,
        dir: &Path,
        name: &[u8],
        skip: &[&str],
        plan: Option<&Plan>,
        filtered: bool,
    ) -> Result<()> {
        let mut children = BTreeMap::new();
        for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            children.insert(e.file_name(), e.path());
        }
        for (child, path) in children {
            let mut child_name = name.to_vec();
            if !child_name.is_empty() {
                child_name.push(b'/');
            }
            child_name.extend_from_slice(child.as_bytes());
            if skip.iter().any(|s| s.as_bytes() == child_name) {
                continue;
            }
            let rule = plan.and_then(|p| p.rules.get(&child_name));
            let content = match rule {
                None if filtered => continue,
                Some(Rule::Skip) => continue,
                Some(Rule::Generated(c)) => Some(&c[..]),
                _ => None,
            };
            self.entry(&path, &child_name, content)?;
            if fs::symlink_metadata(&path)?.is_dir() {
                let filtered = matches!(rule, Some(Rule::Dir));
                self.tree(&path, &child_name, skip, plan, filtered)?;
            }
        }
        Ok(())
    }
}

/// Writes `root` as a tar stream to `out`: the root itself as `./`, then,
/// when `keep` is given, only those top-level entries (and none of `skip`).
pub fn export_tree(
    root: &Path,
    keep: Option<&[&str]>,
    skip: &[&str],
    out: impl Write,
) -> Result<ExportStats> {
    walk(root, keep, skip, None, out, None).map(|(stats, _)| stats)
}

/// Counts the blocks and inodes `root` will take in ext4, reading metadata
/// only.
pub fn measure_tree(
    root: &Path,
    keep: Option<&[&str]>,
    skip: &[&str],
    block_size: u64,
) -> Result<Need> {
    let (_, need) = walk(
        root,
        keep,
        skip,
        None,
        io::sink(),
        Some(Estimator::new(block_size)),
    )?;
    Ok(need.unwrap_or_default())
}

/// The one walk behind exporting and measuring: `keep` and `skip` as for
/// [`export_tree`], or, with a `plan`, only what the plan names.
fn walk(
    root: &Path,
    keep: Option<&[&str]>,
    skip: &[&str],
    plan: Option<&Plan>,
    out: impl Write,
    measure: Option<Estimator>,
) -> Result<(ExportStats, Option<Need>)> {
    let mut ex = Exporter {
        tar: crate::tar::Writer::new(out),
        measure,
        links: HashMap::new(),
        stats: ExportStats::default(),
    };
    ex.entry(root, b"./", None)?;
    match (plan, keep) {
        (Some(plan), _) => ex.tree(root, b"", skip, Some(plan), true)?,
        (None, Some(keep)) => {
            for top in keep {
                let path = root.join(top);
                if fs::symlink_metadata(&path).is_err() {
                    continue;
                }
                ex.entry(&path, top.as_bytes(), None)?;
                if path.is_dir() {
                    ex.tree(&path, top.as_bytes(), skip, None, false)?;
                }
            }
        }
        (None, None) => ex.tree(root, b"", skip, None, false)?,
    }
    let need = ex.measure.take().map(Estimator::finish);
    ex.tar.finish()?;
    Ok((ex.stats, need))
}

/// Exports Docker's store at `root` (normally /var/lib/docker of a stopped
/// daemon) with only what the images need: all of its images, or `only`
/// those of the selection.
pub fn export_docker_store(
    root: &Path,
    only: Option<&Selection>,
    out: impl Write,
) -> Result<ExportStats> {
    let plan = only.map(|sel| Plan::new(root, sel)).transpose()?;
    walk(
        root,
        Some(DOCKER_KEEP),
        DOCKER_SKIP,
        plan.as_ref(),
        out,
        None,
    )
    .map(|(stats, _)| stats)
}

/// What exporting Docker's store at `root` (with the same `only`) will take
/// in ext4.
pub fn measure_docker_store(
    root: &Path,
    only: Option<&Selection>,
    block_size: u64,
) -> Result<Need> {
    let plan = only.map(|sel| Plan::new(root, sel)).transpose()?;
    let est = Some(Estimator::new(block_size));
    let (_, need) = walk(
        root,
        Some(DOCKER_KEEP),
        DOCKER_SKIP,
        plan.as_ref(),
        io::sink(),
        est,
    )?;
    Ok(need.unwrap_or_default())
}

/// Writes Docker's store at `root` (all of it, or `only` the selection)
/// as a tar stream to the unix socket `socket` when it accepts a connection
/// (the tool's machine; this skips the daemon's attach stream, the slowest
/// link), else to stdout.
pub fn export_to(root: &Path, only: Option<&Selection>, socket: Option<&Path>) -> Result<()> {
    const BUF: usize = 1 << 20;
    let stats = match socket.and_then(|s| std::os::unix::net::UnixStream::connect(s).ok()) {
        Some(stream) => export_docker_store(root, only, io::BufWriter::with_capacity(BUF, stream)),
        None => export_docker_store(
            root,
            only,
            io::BufWriter::with_capacity(BUF, io::stdout().lock()),
        ),
    };
    stats.map(|_| ())
}

/// Where Docker keeps the names of its images, relative to [`DOCKER_ROOT`].
pub const REPOSITORIES: &str = "image/overlay2/repositories.json";

/// A tar stream of one root-owned file `name` holding `content` with
/// `mode`, to replace that file in a directory of ROOT.
pub fn file_tar(name: &str, content: &[u8], mode: u32) -> Result<Vec<u8>> {
    let mut tar = crate::tar::Writer::new(Vec::new());
    tar.file_bytes(
        name.as_bytes(),
        &crate::tar::Attrs::root_owned(mode),
        content,
    )
    .with_context(|| format!("making the {name} entry"))?;
    tar.finish()
        .with_context(|| format!("making the {name} entry"))
}

/// A tar stream of one file, `repositories.json` holding `content`, with
/// the owner and mode Docker gives it (root, 0600).
pub fn repositories_tar(content: &[u8]) -> Result<Vec<u8>> {
    file_tar("repositories.json", content, 0o600)
}

/// The cache-id (overlay2 directory) of every layer in the layerdb of the
/// store at `root` (`/var/lib/docker` in `fs`), by chain ID.
pub fn layer_dirs(fs: &dyn crate::fsread::FsRead, root: &str) -> Result<BTreeMap<String, String>> {
    let db = format!("{root}/image/overlay2/layerdb/sha256");
    let mut out = BTreeMap::new();
    if fs.stat(db.as_bytes())?.is_none() {
        return Ok(out);
    }
    for chain in fs.read_dir(db.as_bytes())? {
        let chain = String::from_utf8_lossy(&chain).into_owned();
        let cache_id = format!("{db}/{chain}/cache-id");
        if fs.stat(cache_id.as_bytes())?.is_some() {
            let id = fs.read_all(cache_id.as_bytes())?;
            out.insert(chain, String::from_utf8_lossy(&id).trim().to_string());
        }
    }
    Ok(out)
}

/// Merges Docker's image/overlay2/repositories.json files: every
/// repository and reference of both, the new one winning on conflicts.
pub fn merge_repositories(old: &[u8], new: &[u8]) -> Result<Vec<u8>> {
    use serde_json::{Map, Value};
    let parse = |b: &[u8], which: &str| -> Result<Map<String, Value>> {
        let v: Value = serde_json::from_slice(b)
            .with_context(|| format!("parsing the {which} repositories.json"))?;
        Ok(match v.get("Repositories") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        })
    };
    let mut repos = parse(old, "existing")?;
    for (name, refs) in parse(new, "new")? {
        match (repos.get_mut(&name), refs) {
            (Some(Value::Object(have)), Value::Object(add)) => have.extend(add),
            (_, refs) => {
                repos.insert(name, refs);
            }
        }
    }
    let mut top = Map::new();
    top.insert("Repositories".into(), Value::Object(repos));
    Ok(serde_json::to_vec(&Value::Object(top))?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn repositories_merge() {
        let old = br#"{"Repositories":{"a":{"a:1":"sha256:1"},"b":{"b:1":"sha256:2"}}}"#;
        let new =
            br#"{"Repositories":{"a":{"a:2":"sha256:3","a:1":"sha256:9"},"c":{"c:1":"sha256:4"}}}"#;
        let m: serde_json::Value =
            serde_json::from_slice(&super::merge_repositories(old, new).unwrap()).unwrap();
        assert_eq!(
            m,
            serde_json::json!({"Repositories":{
                "a":{"a:1":"sha256:9","a:2":"sha256:3"},
                "b":{"b:1":"sha256:2"},
                "c":{"c:1":"sha256:4"}}})
        );
    }

    use super::*;

    #[test]
    fn export_keeps_only_the_image_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "image/overlay2/layerdb/mounts/x",
            "overlay2/abc/diff",
            "network/files",
            "containers/c",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("engine-id"), "id").unwrap();
        fs::write(root.join("overlay2/abc/diff/f"), "data").unwrap();
        fs::hard_link(
            root.join("overlay2/abc/diff/f"),
            root.join("overlay2/abc/diff/g"),
        )
        .unwrap();
        std::os::unix::fs::symlink("../abc/diff", root.join("overlay2/l")).unwrap();
        let mut buf = vec![];
        export_docker_store(root, None, &mut buf).unwrap();
        let mut names = vec![];
        let mut ar = tar::Archive::new(&buf[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            names.push((
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                e.header().entry_type(),
            ));
        }
        let just: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            just,
            [
                "./",
                "image",
                "image/overlay2",
                "image/overlay2/layerdb",
                "overlay2",
                "overlay2/abc",
                "overlay2/abc/diff",
                "overlay2/abc/diff/f",
                "overlay2/abc/diff/g",
                "overlay2/l"
            ]
        );
        assert_eq!(names[8].1, tar::EntryType::Link);
        assert_eq!(names[9].1, tar::EntryType::Symlink);
    }
}
