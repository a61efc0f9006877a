//! One layer of the store, checked from what Docker wrote of it: its
//! `layerdb/<chain>/` entry (diff ID, size, parent, cache-id, tar-split),
//! its `overlay2/<cache-id>/` directory (`diff/`, `link`, `lower`) and its
//! `l/` short-name symlink; then its tar stream (`stream.rs`).

use crate::fsread::{join as join_bytes, show, FsRead, Kind};
use crate::store::docker::layout::{LAYERDB, LAYERS, LINKS};
use crate::store::verify_common::Subject;
use crate::store::Failure;

use super::stream::{check_stream, Stream};

/// `root/rel`.
pub(super) fn join(root: &[u8], rel: &str) -> Vec<u8> {
    join_bytes(root, rel.as_bytes())
}

/// What is known of a layer once checked (for the `lower` of layers above).
#[derive(Clone)]
pub(super) struct LayerInfo {
    /// The short name in `overlay2/l/`, when readable.
    pub(super) link: Option<String>,
}

/// A small text file (`diff`, `cache-id`, `link`...), trimmed; None when
/// missing or unreadable (the failure is recorded).
fn read_text(
    fs: &dyn FsRead,
    path: &[u8],
    who: &Subject,
    what: &str,
    failures: &mut Vec<Failure>,
) -> Option<String> {
    match fs.stat(path) {
        Ok(Some(st)) if st.kind == Kind::File => {}
        Ok(Some(st)) => {
            failures.push(who.fail(
                Some(path),
                format!("{what} is a {:?}, not a regular file", st.kind),
            ));
            return None;
        }
        Ok(None) => {
            failures.push(who.fail(Some(path), format!("{what} is missing")));
            return None;
        }
        Err(e) => {
            failures.push(who.fail(Some(path), format!("reading {what}: {e:#}")));
            return None;
        }
    }
    match fs.read_all(path) {
        Ok(b) => match String::from_utf8(b) {
            Ok(s) => Some(s.trim().to_string()),
            Err(_) => {
                failures.push(who.fail(Some(path), format!("{what} is not UTF-8 text")));
                None
            }
        },
        Err(e) => {
            failures.push(who.fail(Some(path), format!("reading {what}: {e:#}")));
            None
        }
    }
}

pub(super) struct Layer<'a> {
    pub(super) diff_id: &'a str,
    pub(super) chain: &'a str,
    pub(super) parent: Option<&'a str>,
    /// Link names of the layers below, bottom first.
    pub(super) lowers: &'a [Option<String>],
}

pub(super) fn check_layer(
    fs: &dyn FsRead,
    root: &[u8],
    layer: &Layer,
    who: &Subject,
    failures: &mut Vec<Failure>,
    bytes_hashed: &mut u64,
    progress: &mut dyn FnMut(u64),
) -> LayerInfo {
    let mut info = LayerInfo { link: None };
    // 2. layerdb/<chain>/
    let Some(entry) = check_layerdb(fs, root, layer, who, failures) else {
        return info;
    };
    // 3. overlay2/<cache-id>/ with diff/, link, lower and l/<link>.
    let diff_dir = check_overlay_dir(
        fs,
        root,
        layer,
        &entry.cache_id,
        who,
        failures,
        &mut info.link,
    );
    // 4. and 5. The tar stream and the overlay whiteouts.
    if let (Some(ts), Some(diff_dir)) = (&entry.tar_split_data, &diff_dir) {
        let stream = Stream {
            fs,
            diff_dir,
            ts,
            tar_split: &entry.tar_split,
            who,
        };
        check_stream(&stream, layer.diff_id, failures, bytes_hashed, progress);
    }
    info
}

/// A layer's entry in the layer database, as far as the rest of the checks
/// need it.
struct LayerDbEntry {
    cache_id: String,
    /// The path of its tar-split metadata, and the metadata when readable.
    tar_split: Vec<u8>,
    tar_split_data: Option<Vec<u8>>,
}

/// Checks `layerdb/<chain>/` of `layer`: diff, size, parent, cache-id and
/// tar-split. None when the rest cannot be checked (no entry, no valid
/// cache-id).
fn check_layerdb(
    fs: &dyn FsRead,
    root: &[u8],
    layer: &Layer,
    who: &Subject,
    failures: &mut Vec<Failure>,
) -> Option<LayerDbEntry> {
    let chain_hex = layer.chain.trim_start_matches("sha256:");
    let ldb = join(root, &format!("{LAYERDB}/{chain_hex}"));
    match fs.stat(&ldb) {
        Ok(Some(st)) if st.kind == Kind::Dir => {}
        Ok(_) => {
            failures.push(who.fail(
                Some(&ldb),
                format!(
                    "layer {} (chain ID {}) is not in the layer database",
                    layer.diff_id, layer.chain
                ),
            ));
            return None;
        }
        Err(e) => {
            failures.push(who.fail(Some(&ldb), format!("reading the layer database: {e:#}")));
            return None;
        }
    }
    let file = |name: &str| join_bytes(&ldb, name.as_bytes());
    if let Some(d) = read_text(fs, &file("diff"), who, "the layer's diff ID file", failures) {
        if d != layer.diff_id {
            failures.push(who.fail(
                Some(&file("diff")),
                format!("holds diff ID {d}, the image config says {}", layer.diff_id),
            ));
        }
    }
    if let Some(s) = read_text(fs, &file("size"), who, "the layer's size file", failures) {
        if s.parse::<u64>().is_err() {
            failures.push(who.fail(Some(&file("size")), format!("holds {s:?}, not a size")));
        }
    }
    match (layer.parent, fs.stat(&file("parent"))) {
        (None, Ok(Some(_))) => {
            failures.push(who.fail(Some(&file("parent")), "a base layer has a parent file"))
        }
        (None, _) => {}
        (Some(want), _) => {
            if let Some(p) = read_text(
                fs,
                &file("parent"),
                who,
                "the layer's parent file",
                failures,
            ) {
                if p != want {
                    failures.push(who.fail(
                        Some(&file("parent")),
                        format!("names parent {p}, the image's layers give {want}"),
                    ));
                }
            }
        }
    }
    let cache_id = read_text(
        fs,
        &file("cache-id"),
        who,
        "the layer's cache-id file",
        failures,
    );
    let tar_split = file("tar-split.json.gz");
    let ts = match fs.stat(&tar_split) {
        Ok(Some(st)) if st.kind == Kind::File => match fs.read_all(&tar_split) {
            Ok(b) => Some(b),
            Err(e) => {
                failures.push(who.fail(
                    Some(&tar_split),
                    format!("reading the tar-split metadata: {e:#}"),
                ));
                None
            }
        },
        Ok(_) => {
            failures.push(who.fail(
                Some(&tar_split),
                "the layer's tar-split metadata is missing",
            ));
            None
        }
        Err(e) => {
            failures.push(who.fail(
                Some(&tar_split),
                format!("reading the tar-split metadata: {e:#}"),
            ));
            None
        }
    };
    let cache_id = cache_id?;
    if cache_id.is_empty()
        || cache_id.contains('/')
        || cache_id == "."
        || cache_id == ".."
        || cache_id == "l"
    {
        failures.push(who.fail(
            Some(&file("cache-id")),
            format!("holds {cache_id:?}, not a cache ID"),
        ));
        return None;
    }
    Some(LayerDbEntry {
        cache_id,
        tar_split,
        tar_split_data: ts,
    })
}

/// Checks `overlay2/<cache_id>/` of `layer`: the directory, `diff/`,
/// `link` and its `l/` symlink (whose name goes to `link_name`), `lower`.
/// Its `diff/` when there is one to check the tar stream against.
fn check_overlay_dir(
    fs: &dyn FsRead,
    root: &[u8],
    layer: &Layer,
    cache_id: &str,
    who: &Subject,
    failures: &mut Vec<Failure>,
    link_name: &mut Option<String>,
) -> Option<Vec<u8>> {
    let dir = join(root, &format!("{LAYERS}/{cache_id}"));
    match fs.stat(&dir) {
        Ok(Some(st)) if st.kind == Kind::Dir => {}
        _ => {
            failures.push(who.fail(Some(&dir), "the layer's overlay2 directory is missing"));
            return None;
        }
    }
    let diff_dir = join_bytes(&dir, b"diff");
    let diff_ok = matches!(fs.stat(&diff_dir), Ok(Some(st)) if st.kind == Kind::Dir);
    if !diff_ok {
        failures.push(who.fail(Some(&diff_dir), "the layer's diff directory is missing"));
    }
    let link_path = join_bytes(&dir, b"link");
    if let Some(link) = read_text(fs, &link_path, who, "the layer's link file", failures) {
        if link.is_empty() || link.contains('/') || link == "." || link == ".." {
            failures.push(who.fail(Some(&link_path), format!("holds {link:?}, not a link name")));
        } else {
            let l = join(root, &format!("{LINKS}/{link}"));
            let want = format!("../{cache_id}/diff");
            match fs.stat(&l) {
                Ok(Some(st)) if st.kind == Kind::Symlink => match fs.read_link(&l) {
                    Ok(t) if t == want.as_bytes() => {}
                    Ok(t) => failures
                        .push(who.fail(Some(&l), format!("points at {}, not at {want}", show(&t)))),
                    Err(e) => {
                        failures.push(who.fail(Some(&l), format!("reading the symlink: {e:#}")))
                    }
                },
                Ok(Some(st)) => failures.push(who.fail(
                    Some(&l),
                    format!("is a {:?}, not a symlink to {want}", st.kind),
                )),
                Ok(None) => failures.push(who.fail(
                    Some(&l),
                    format!("the layer's short-name symlink (to {want}) is missing"),
                )),
                Err(e) => failures.push(who.fail(Some(&l), format!("reading the symlink: {e:#}"))),
            }
            *link_name = Some(link);
        }
    }
    let lower_path = join_bytes(&dir, b"lower");
    if layer.lowers.is_empty() {
        if let Ok(Some(_)) = fs.stat(&lower_path) {
            failures.push(who.fail(Some(&lower_path), "a base layer has a lower file"));
        }
    } else if layer.lowers.iter().all(Option::is_some) {
        // Docker: "l/<parent link>:<the parent's lower>", nearest first.
        let want = layer
            .lowers
            .iter()
            .rev()
            .map(|l| format!("l/{}", l.as_deref().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(":");
        if let Some(got) = read_text(fs, &lower_path, who, "the layer's lower file", failures) {
            if got != want {
                failures.push(who.fail(
                    Some(&lower_path),
                    format!("holds {got:?}, the layers below give {want:?}"),
                ));
            }
        }
    }
    diff_ok.then_some(diff_dir)
}
