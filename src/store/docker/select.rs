//! The part of a Docker overlay2 store (a stopped daemon's /var/lib/docker)
//! that belongs to some of its images, as moby lays it out
//! (daemon/internal/image/fs.go, layer/filestore.go, refstore/store.go,
//! distribution/metadata, graphdriver/overlay2):
//!
//! - `image/overlay2/imagedb/content/sha256/<id>`: the image config (its
//!   digest is the image ID) and `imagedb/metadata/sha256/<id>/`
//!   (`lastUpdated`, `parent`, ...). A `parent` naming an image that is not
//!   selected is left out, as Docker deletes it when that parent goes:
//!   Docker never needs the parent, and `docker rmi` would fail on a
//!   dangling one.
//! - `image/overlay2/layerdb/sha256/<chain-id>/` for every chain ID of the
//!   config's `rootfs.diff_ids` (`diff`, `size`, `cache-id`, `parent`,
//!   `tar-split.json.gz`, ...). Not `layerdb/mounts/`, `layerdb/tmp/` nor
//!   `<chain-id>-removing` leftovers.
//! - `overlay2/<cache-id>/` of each of those layers and the short link
//!   `overlay2/l/<link>` its `link` file names (the `lower` files of the
//!   layers above reach it through that link). `<id>-init` directories
//!   belong to containers (their init layer), never to image layers.
//! - `image/overlay2/repositories.json`, regenerated with only the selected
//!   names, in Docker's own shape.
//! - `image/overlay2/distribution/`: `diffid-by-digest/sha256/<digest>`
//!   holding a selected diff ID, and `v2metadata-by-diffid/sha256/<diff-id>`
//!   of the selected diff IDs (what lets Docker skip layers it has when
//!   pulling or pushing again).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::layout::{
    CONTENT, DIFFID_BY_DIGEST, LAYERDB, LAYERS, LINKS, METADATA, REPOSITORIES, V2META_BY_DIFFID,
};
use crate::digest::{chain_ids, sha256_part};
use crate::fsread::{FsRead, Kind};
use crate::source::ImageRef;
use crate::store::export::{Plan, Rule, Times};
use crate::store::Selection;

/// Directories a daemon makes at start anyway; kept (when there) so that
/// the exported store has Docker's layout even for images without layers.
const SKELETON: &[&str] = &[CONTENT, METADATA, LAYERDB, LINKS];

/// A name as Docker compares it: registry, repository path (`library/`
/// for Docker Hub's official images), and the digest, else the tag
/// (`latest` when none). Docker keeps only the digest of `name:tag@digest`.
fn normalized(name: &str) -> Result<String> {
    Ok(ImageRef::parse(name)?.normalized())
}

fn is_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0'])
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: Option<RootFs>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct Repositories {
    #[serde(rename = "Repositories", default)]
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

/// The store of a stopped daemon, read through [`FsRead`] by paths
/// relative to it.
struct Store<'a>(&'a dyn FsRead);

impl Store<'_> {
    fn abs(rel: &str) -> Vec<u8> {
        format!("/{rel}").into_bytes()
    }

    fn kind(&self, rel: &str) -> Result<Option<Kind>> {
        Ok(self.0.stat(&Self::abs(rel))?.map(|s| s.kind))
    }

    fn is_dir(&self, rel: &str) -> Result<bool> {
        Ok(self.kind(rel)? == Some(Kind::Dir))
    }

    fn is_file(&self, rel: &str) -> Result<bool> {
        Ok(self.kind(rel)? == Some(Kind::File))
    }

    /// The content of the file `rel`, None when there is nothing there.
    fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        if self.kind(rel)?.is_none() {
            return Ok(None);
        }
        let data = self
            .0
            .read_all(&Self::abs(rel))
            .with_context(|| format!("reading {rel}"))?;
        Ok(Some(data))
    }

    /// A small metadata file, trimmed as Docker trims it.
    fn read_text(&self, rel: &str) -> Result<String> {
        let data = self
            .0
            .read_all(&Self::abs(rel))
            .with_context(|| format!("reading {rel}"))?;
        Ok(String::from_utf8_lossy(&data).trim().to_string())
    }

    fn list(&self, rel: &str) -> Result<Vec<String>> {
        let names = self
            .0
            .read_dir(&Self::abs(rel))
            .with_context(|| format!("listing {rel}"))?;
        Ok(names
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect())
    }
}

/// Every image of the store in `fs` with every name that points at it:
/// what is exported when no selection is given.
pub(super) fn all(fs: &dyn FsRead) -> Result<Selection> {
    let store = Store(fs);
    let mut images: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if store.is_dir(CONTENT)? {
        for hex in store.list(CONTENT)? {
            if crate::digest::is_hex64(&hex) {
                images.insert(format!("sha256:{hex}"), vec![]);
            }
        }
    }
    if let Some(text) = store.read(REPOSITORIES)? {
        let have: Repositories =
            serde_json::from_slice(&text).with_context(|| format!("parsing {REPOSITORIES}"))?;
        for refs in have.repositories.values() {
            for (name, id) in refs {
                if let Some(names) = images.get_mut(id) {
                    names.push(name.clone());
                }
            }
        }
    }
    let images = images
        .into_iter()
        .map(|(id, names)| crate::store::SelectedImage { id, names })
        .collect();
    Ok(Selection { images })
}

/// The name of a layer's overlay2 directory in a reproducible export:
/// the hex of its chain ID (Docker makes a random one).
pub(super) fn layer_dir(chain_hex: &str) -> String {
    chain_hex.to_string()
}

/// The short link name of a layer (26 characters of base32, as Docker's
/// random ones), made from its chain ID.
pub(super) fn link_name(chain_hex: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("overlay2 link {chain_hex}").as_bytes());
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0);
    for &b in digest.iter() {
        acc = ((acc << 8) | u32::from(b)) & 0xffff;
        bits += 8;
        while bits >= 5 && out.len() < 26 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

/// Reads the metadata of the store in `fs` (a stopped daemon's
/// /var/lib/docker, as `/`) to find what of it belongs to the selected
/// images. Fails naming a selected image, layer or name that the store
/// does not have.
///
/// What is written is reproducible: each layer's overlay2 directory and
/// short link are named from its chain ID ([`layer_dir`], [`link_name`]),
/// with `cache-id`, `link`, `lower` and the links in `l/` to match; what
/// Docker stamped with the time of the pull (the times of its directories
/// and metadata files) carries `stamp` ([`Times`]); `lastUpdated` is left
/// out.
pub(super) fn plan(fs: &dyn FsRead, sel: &Selection, stamp: i64) -> Result<Plan> {
    let store = Store(fs);
    let mut plan = Plan::default();
    let mut times = Times {
        stamp,
        layers: HashMap::new(),
    };
    // Short link name in the store -> the one written.
    let mut links = HashMap::new();
    // Layers (their directory) whose `lower` to rewrite.
    let mut lowers = vec![];
    for dir in SKELETON {
        if store.is_dir(dir)? {
            plan.dir(dir);
        }
    }
    let mut ids = BTreeSet::new();
    for img in &sel.images {
        if sha256_part(&img.id).is_none() {
            bail!(
                "{:?} is not an image ID (sha256: and 64 lowercase hex digits)",
                img.id
            );
        }
        ids.insert(img.id.as_str());
    }
    // The repositories each selected image is named in.
    let mut repos_of: HashMap<&str, BTreeSet<String>> = HashMap::new();
    for img in &sel.images {
        let repos = repos_of.entry(img.id.as_str()).or_default();
        repos.extend(
            img.names
                .iter()
                .filter_map(|n| ImageRef::parse(n).ok())
                .map(|r| r.repository()),
        );
    }
    // Each selected layer (diff ID) and the repositories that have it.
    let mut diff_ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for id in &ids {
        let hex = &id["sha256:".len()..];
        let content = format!("{CONTENT}/{hex}");
        let Some(config) = store
            .read(&content)
            .with_context(|| format!("reading the config of image {id}"))?
        else {
            bail!("image {id} is not in the store")
        };
        let config: ImageConfig = serde_json::from_slice(&config)
            .with_context(|| format!("parsing the config of image {id}"))?;
        plan.whole(&content);
        let meta = format!("{METADATA}/{hex}");
        if store.is_dir(&meta)? {
            // `lastUpdated` is the time of the last tag through the API (a
            // pull by digest then tagged has one, a pull by tag none): left
            // out, so that both give the same store (Docker then shows no
            // LastTagTime, as after a pull by tag). A `parent` naming an
            // image that is not selected is left out too.
            let mut kept = 0;
            for name in store.list(&meta)? {
                let path = format!("{meta}/{name}");
                let parent_gone = name == "parent"
                    && store.is_file(&path)?
                    && !ids.contains(store.read_text(&path)?.as_str());
                if name == "lastUpdated" || parent_gone {
                    plan.rules.insert(path.into_bytes(), Rule::Skip);
                } else {
                    kept += 1;
                }
            }
            if kept > 0 {
                plan.whole(&meta);
            }
        }
        let diffs = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        for (diff, chain) in diffs.iter().zip(chain_ids(&diffs)) {
            let Some(chain_hex) = sha256_part(&chain) else {
                bail!("image {id}: {diff:?} is not a sha256 layer diff ID");
            };
            let layer = format!("{LAYERDB}/{chain_hex}");
            if !store.is_dir(&layer)? {
                bail!("layer {chain} of image {id} is not in the store's layer database ({layer} is missing)");
            }
            plan.whole(&layer);
            let cache_id = store
                .read_text(&format!("{layer}/cache-id"))
                .with_context(|| format!("reading layer {chain} of image {id}"))?;
            if !is_component(&cache_id) {
                bail!("layer {chain} of image {id} has an invalid cache-id {cache_id:?}");
            }
            let dir = format!("{LAYERS}/{cache_id}");
            if !store.is_dir(&dir)? {
                bail!("layer {chain} of image {id}: its overlay2 directory {dir} is missing");
            }
            plan.whole(&dir);
            let new_dir = layer_dir(chain_hex);
            plan.renames
                .insert(dir.clone().into_bytes(), new_dir.clone().into_bytes());
            plan.rules.insert(
                format!("{layer}/cache-id").into_bytes(),
                Rule::Generated(new_dir.clone().into_bytes()),
            );
            let link = format!("{dir}/link");
            if store.is_file(&link)? {
                let short = store.read_text(&link)?;
                if !is_component(&short) {
                    bail!("{link} holds an invalid link name {short:?}");
                }
                let new_short = link_name(chain_hex);
                let made = fs.stat(&Store::abs(&link))?.map_or((0, 0), |st| st.mtime);
                times
                    .layers
                    .insert(format!("{dir}/diff").into_bytes(), made);
                plan.rules.insert(
                    link.into_bytes(),
                    Rule::Generated(new_short.clone().into_bytes()),
                );
                let l = format!("{LINKS}/{short}");
                if store.kind(&l)?.is_some() {
                    plan.whole(&l);
                    plan.renames
                        .insert(l.clone().into_bytes(), new_short.clone().into_bytes());
                    let target = format!("../{new_dir}/diff").into_bytes();
                    plan.rules.insert(l.into_bytes(), Rule::Link(target));
                }
                links.insert(short, new_short);
            }
            let lower = format!("{dir}/lower");
            if store.is_file(&lower)? {
                lowers.push(lower);
            }
            diff_ids
                .entry(diff.clone())
                .or_default()
                .extend(repos_of.get(id).into_iter().flatten().cloned());
        }
    }
    // A layer's `lower` names the short links of the layers below it, all
    // of them parents of a selected layer.
    for lower in lowers {
        let text = store.read_text(&lower)?;
        let mut out = vec![];
        for part in text.split(':') {
            let new = part
                .strip_prefix("l/")
                .and_then(|short| links.get(short))
                .with_context(|| {
                    format!("{lower} names {part:?}, which is not the link of a layer below it")
                })?;
            out.push(format!("l/{new}"));
        }
        plan.rules.insert(
            lower.into_bytes(),
            Rule::Generated(out.join(":").into_bytes()),
        );
    }
    distribution(&store, &mut plan, &diff_ids)?;
    repositories(&store, &mut plan, sel)?;
    plan.times = Some(times);
    Ok(plan)
}

/// One entry of `v2metadata-by-diffid`: where Docker pulled a layer from.
#[derive(Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct V2Metadata {
    #[serde(rename = "Digest")]
    digest: String,
    #[serde(rename = "SourceRepository")]
    source_repository: String,
    #[serde(rename = "HMAC", default)]
    hmac: String,
}

/// The distribution metadata of the selected layers: the registry
/// digests of each (`diffid-by-digest`), and where it can be pulled from
/// (`v2metadata-by-diffid`). Docker records a layer's source only for the
/// pull that downloaded it, which depends on the order pulls finish in, and
/// a cache's other images may have brought it from elsewhere: so what is
/// written is every digest Docker recorded for the layer with every
/// repository of the selected images that have it, sorted.
fn distribution(
    store: &Store<'_>,
    plan: &mut Plan,
    diff_ids: &BTreeMap<String, BTreeSet<String>>,
) -> Result<()> {
    // Digests of each selected layer, from what Docker recorded.
    let mut digests: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    // And where from, for a layer of images that have no name.
    let mut recorded: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for diff in diff_ids.keys() {
        let Some(hex) = sha256_part(diff) else {
            continue;
        };
        let path = format!("{V2META_BY_DIFFID}/{hex}");
        if let Some(text) = store.read(&path)? {
            // Docker skips what it cannot parse: so is it here.
            if let Ok(all) = serde_json::from_slice::<Vec<V2Metadata>>(&text) {
                let from = recorded.entry(diff.as_str()).or_default();
                from.extend(all.iter().map(|m| m.source_repository.clone()));
                let set = digests.entry(diff.as_str()).or_default();
                set.extend(all.into_iter().map(|m| m.digest));
                plan.whole(&path);
            }
        }
    }
    for (diff, repos) in diff_ids {
        let (Some(hex), Some(digests)) = (sha256_part(diff), digests.get(diff.as_str())) else {
            continue;
        };
        let repos = match repos.is_empty() {
            true => recorded.get(diff.as_str()).unwrap_or(repos),
            false => repos,
        };
        let mut all = vec![];
        for digest in digests {
            for repo in repos {
                all.push(V2Metadata {
                    digest: digest.clone(),
                    source_repository: repo.clone(),
                    hmac: String::new(),
                });
            }
        }
        let path = format!("{V2META_BY_DIFFID}/{hex}");
        let json = serde_json::to_vec(&all).context("making v2metadata")?;
        plan.rules.insert(path.into_bytes(), Rule::Generated(json));
    }
    if store.is_dir(DIFFID_BY_DIGEST)? {
        for name in store.list(DIFFID_BY_DIGEST)? {
            let path = format!("{DIFFID_BY_DIGEST}/{name}");
            if !store.is_file(&path)? {
                continue;
            }
            let diff = store.read_text(&path)?;
            let known = digests.get(diff.as_str());
            // Only the digests recorded for the layer, when some are.
            if diff_ids.contains_key(&diff)
                && known.is_none_or(|d| d.contains(&format!("sha256:{name}")))
            {
                plan.whole(&path);
            }
        }
    }
    Ok(())
}

/// repositories.json with only the selected names, each checked to point
/// at its image.
fn repositories(store: &Store<'_>, plan: &mut Plan, sel: &Selection) -> Result<()> {
    let have: Repositories = match store.read(REPOSITORIES)? {
        Some(text) => {
            serde_json::from_slice(&text).with_context(|| format!("parsing {REPOSITORIES}"))?
        }
        None => {
            if sel.images.iter().all(|i| i.names.is_empty()) {
                return Ok(());
            }
            Repositories::default()
        }
    };
    // Normalized name -> (repository, name as Docker wrote it, image).
    let mut index = HashMap::new();
    for (repo, refs) in &have.repositories {
        for (name, id) in refs {
            // Docker itself ignores names it cannot parse.
            if let Ok(n) = normalized(name) {
                index.insert(n, (repo, name, id));
            }
        }
    }
    let mut out = Repositories::default();
    for img in &sel.images {
        for name in &img.names {
            let n = normalized(name).with_context(|| format!("image {}", img.id))?;
            let Some((repo, stored, id)) = index.get(&n) else {
                bail!(
                    "the store has no image named {name} (to export with image {})",
                    img.id
                );
            };
            if **id != img.id {
                bail!(
                    "{name} names image {id} in the store, not the selected {}",
                    img.id
                );
            }
            out.repositories
                .entry(repo.to_string())
                .or_default()
                .insert(stored.to_string(), img.id.clone());
        }
    }
    let json = serde_json::to_vec(&out).context("making repositories.json")?;
    plan.rules
        .insert(REPOSITORIES.as_bytes().to_vec(), Rule::Generated(json));
    plan.parents(REPOSITORIES);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::path::PathBuf;

    use std::fs;
    use std::io::{self, Read};
    use std::path::Path;

    use super::super::Docker;
    use super::*;
    use crate::store::{read_selection, Backend, SelectedImage};

    const STAMP: i64 = 1_700_000_000;

    fn sha(data: &[u8]) -> String {
        format!("sha256:{}", crate::digest::sha256_hex(data))
    }

    fn hex(d: &str) -> &str {
        d.strip_prefix("sha256:").unwrap()
    }

    fn write(root: &Path, rel: &str, data: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    /// A stopped daemon's store with two images sharing their base layer:
    /// `a` (layers d1, d2, named reg:5000/fp/a:1 and by digest) and `b`
    /// (layers d1, d3, named busybox:latest), plus state of the daemon.
    struct FakeStore {
        dir: tempfile::TempDir,
        a: String,
        b: String,
        /// Per layer (d1, d2, d3): diff ID, chain ID in `a` or `b`, cache ID.
        layers: Vec<(String, String, String)>,
    }

    impl FakeStore {
        fn root(&self) -> PathBuf {
            self.dir.path().to_path_buf()
        }

        fn new() -> FakeStore {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            let d: Vec<String> = (1..=3)
                .map(|i| sha(format!("layer {i}").as_bytes()))
                .collect();
            let chains_a = chain_ids(&[d[0].clone(), d[1].clone()]);
            let chains_b = chain_ids(&[d[0].clone(), d[2].clone()]);
            let chains = [&chains_a[0], &chains_a[1], &chains_b[1]];
            let mut layers = vec![];
            for (i, (diff, chain)) in d.iter().zip(chains).enumerate() {
                let cache = format!("cache{i}");
                let short = format!("SHORT{i}");
                let ldb = format!("{LAYERDB}/{}", hex(chain));
                write(root, &format!("{ldb}/cache-id"), &cache);
                write(root, &format!("{ldb}/diff"), diff);
                write(root, &format!("{ldb}/size"), "4");
                if i > 0 {
                    write(root, &format!("{ldb}/parent"), &chains_a[0]);
                    write(root, &format!("overlay2/{cache}/lower"), "l/SHORT0");
                    write(root, &format!("overlay2/{cache}/work/.keep"), "");
                }
                write(root, &format!("overlay2/{cache}/diff/file{i}"), "data");
                // Its time comes from the layer's tar, as dockerd's untar
                // gives it: long before the layer's `link` was written (a
                // time of "now" may equal link's on a coarse clock).
                let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
                fs::File::options()
                    .write(true)
                    .open(root.join(format!("overlay2/{cache}/diff/file{i}")))
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
                // A file the layer brought, and one Docker made unpacking
                // it (after the layer's `link`).
                let dir = root.join(format!("overlay2/{cache}/diff"));
                fs::hard_link(dir.join(format!("file{i}")), dir.join("hard")).unwrap();
                write(root, &format!("overlay2/{cache}/link"), &short);
                write(root, &format!("overlay2/{cache}/diff/made"), "");
                fs::create_dir_all(root.join(LINKS)).unwrap();
                symlink(
                    format!("../{cache}/diff"),
                    root.join(format!("{LINKS}/{short}")),
                )
                .unwrap();
                // The registry digest of the compressed layer.
                let blob = sha(format!("blob {i}").as_bytes());
                write(root, &format!("{DIFFID_BY_DIGEST}/{}", hex(&blob)), diff);
                write(
                    root,
                    &format!("{V2META_BY_DIFFID}/{}", hex(diff)),
                    &format!(r#"[{{"Digest":"{blob}","SourceRepository":"x"}}]"#),
                );
                layers.push((diff.clone(), chain.clone(), cache));
            }
            let config = |diffs: [&str; 2]| {
                format!(
                    r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
                    diffs[0], diffs[1]
                )
            };
            let (ca, cb) = (config([&d[0], &d[1]]), config([&d[0], &d[2]]));
            let (a, b) = (sha(ca.as_bytes()), sha(cb.as_bytes()));
            write(root, &format!("{CONTENT}/{}", hex(&a)), &ca);
            write(root, &format!("{CONTENT}/{}", hex(&b)), &cb);
            write(root, &format!("{METADATA}/{}/lastUpdated", hex(&a)), "2026");
            write(root, &format!("{METADATA}/{}/parent", hex(&a)), &b);
            write(root, &format!("{METADATA}/{}/lastUpdated", hex(&b)), "2026");
            let digest = sha(b"manifest");
            let repos = format!(
                r#"{{"Repositories":{{"busybox":{{"busybox:latest":"{b}"}},"reg:5000/fp/a":{{"reg:5000/fp/a:1":"{a}","reg:5000/fp/a@{digest}":"{a}"}}}}}}"#
            );
            write(root, REPOSITORIES, &repos);
            let repos_path = root.join(REPOSITORIES);
            fs::set_permissions(&repos_path, fs::Permissions::from_mode(0o600)).unwrap();
            // State of the daemon that must never travel.
            write(root, "image/overlay2/layerdb/mounts/c1/mount-id", "cache9");
            write(root, "image/overlay2/layerdb/tmp/write-set-1/x", "");
            write(root, "overlay2/cache9-init/diff/etc", "");
            write(root, "engine-id", "id");
            FakeStore { dir, a, b, layers }
        }
    }

    /// The entries of a tar stream: (path, content of regular files, mode).
    fn entries(tar: &[u8]) -> Vec<(String, Option<Vec<u8>>, u32)> {
        let mut out = vec![];
        let mut ar = tar::Archive::new(tar);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mode = e.header().mode().unwrap();
            let data = if e.header().entry_type() == tar::EntryType::Regular {
                let mut v = vec![];
                e.read_to_end(&mut v).unwrap();
                Some(v)
            } else {
                None
            };
            out.push((name, data, mode));
        }
        out
    }

    fn select(id: &str, names: &[&str]) -> Selection {
        Selection {
            images: vec![SelectedImage {
                id: id.into(),
                names: names.iter().map(|n| n.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn chain_ids_as_docker_computes_them() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        // printf 'sha256:aaa... sha256:bbb...' | sha256sum
        let want = "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c";
        assert_eq!(chain_ids(&[a.clone(), b]), [a, want.to_string()]);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn exports_only_the_selected_image() {
        let store = FakeStore::new();
        let root = store.root();
        let sel = select(&store.a, &["reg:5000/fp/a:1"]);
        let mut buf = vec![];
        Docker.export(&root, Some(&sel), STAMP, &mut buf).unwrap();
        let got = entries(&buf);
        let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        let (a, l) = (hex(&store.a), &store.layers);
        let (d1, d2) = (hex(&l[0].0), hex(&l[1].0));
        let (c1, c2) = (hex(&l[0].1), hex(&l[1].1));
        let blob = |i: usize| hex(&sha(format!("blob {i}").as_bytes())).to_string();
        let mut want = vec![
            "./".to_string(),
            "image".into(),
            "image/overlay2".into(),
            "image/overlay2/distribution".into(),
            "image/overlay2/distribution/diffid-by-digest".into(),
            format!("{DIFFID_BY_DIGEST}"),
        ];
        let mut blobs = [blob(0), blob(1)];
        blobs.sort();
        want.extend(blobs.iter().map(|b| format!("{DIFFID_BY_DIGEST}/{b}")));
        want.push("image/overlay2/distribution/v2metadata-by-diffid".into());
        want.push(V2META_BY_DIFFID.into());
        let mut diffs = [d1, d2];
        diffs.sort();
        want.extend(diffs.iter().map(|d| format!("{V2META_BY_DIFFID}/{d}")));
        want.extend([
            "image/overlay2/imagedb".into(),
            "image/overlay2/imagedb/content".into(),
            CONTENT.into(),
            format!("{CONTENT}/{a}"),
            "image/overlay2/imagedb/metadata".into(),
            METADATA.into(),
            // Not its metadata: its parent, image b, is not exported, and
            // lastUpdated never is.
            "image/overlay2/layerdb".into(),
            LAYERDB.into(),
        ]);
        let mut chains = [c1, c2];
        chains.sort();
        for c in chains {
            want.push(format!("{LAYERDB}/{c}"));
            want.push(format!("{LAYERDB}/{c}/cache-id"));
            want.push(format!("{LAYERDB}/{c}/diff"));
            if c == c2 {
                want.push(format!("{LAYERDB}/{c}/parent"));
            }
            want.push(format!("{LAYERDB}/{c}/size"));
        }
        want.push(REPOSITORIES.into());
        want.push("overlay2".into());
        // Each layer's directory and link are named from its chain ID.
        let mut dirs = [(c1, 0), (c2, 1)];
        dirs.sort();
        for (c, i) in dirs {
            want.push(format!("overlay2/{c}"));
            want.push(format!("overlay2/{c}/diff"));
            want.push(format!("overlay2/{c}/diff/file{i}"));
            want.push(format!("overlay2/{c}/diff/hard"));
            want.push(format!("overlay2/{c}/diff/made"));
            want.push(format!("overlay2/{c}/link"));
            if i > 0 {
                want.push(format!("overlay2/{c}/lower"));
                want.push(format!("overlay2/{c}/work"));
                want.push(format!("overlay2/{c}/work/.keep"));
            }
        }
        want.push("overlay2/l".into());
        let mut links = [link_name(c1), link_name(c2)];
        links.sort();
        want.extend(links.iter().map(|l| format!("overlay2/l/{l}")));
        assert_eq!(names, want);
        let content = |path: &str| {
            let (_, data, _) = got.iter().find(|(n, _, _)| n == path).unwrap();
            String::from_utf8(data.clone().unwrap()).unwrap()
        };
        assert_eq!(content(&format!("{LAYERDB}/{c2}/cache-id")), c2);
        assert_eq!(content(&format!("overlay2/{c2}/link")), link_name(c2));
        assert_eq!(
            content(&format!("overlay2/{c2}/lower")),
            format!("l/{}", link_name(c1))
        );
        // The links point at the renamed directories; a layer's own files
        // keep their times, what Docker made carries the stamp.
        let mut ar = tar::Archive::new(&buf[..]);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mtime = e.header().mtime().unwrap() as i64;
            if name == format!("overlay2/l/{}", link_name(c1)) {
                let target = e.link_name_bytes().unwrap().into_owned();
                assert_eq!(target, format!("../{c1}/diff").into_bytes());
            }
            if name == format!("overlay2/{c1}/diff/hard") {
                assert_eq!(e.header().entry_type(), tar::EntryType::Link);
            }
            let own = ["/file0", "/file1", "/hard"]
                .iter()
                .any(|f| name.ends_with(f));
            assert_eq!(mtime == STAMP, !own, "{name}: {mtime}");
        }

        let (_, repos, mode) = got.iter().find(|(n, _, _)| n == REPOSITORIES).unwrap();
        assert_eq!(*mode, 0o600);
        assert_eq!(
            String::from_utf8(repos.clone().unwrap()).unwrap(),
            format!(
                r#"{{"Repositories":{{"reg:5000/fp/a":{{"reg:5000/fp/a:1":"{}"}}}}}}"#,
                store.a
            )
        );
    }

    #[test]
    fn names_are_matched_as_docker_normalizes_them() {
        let store = FakeStore::new();
        let sel = select(&store.b, &["docker.io/library/busybox"]);
        let mut buf = vec![];
        Docker
            .export(&store.root(), Some(&sel), STAMP, &mut buf)
            .unwrap();
        let repos = entries(&buf)
            .into_iter()
            .find(|(n, _, _)| n == REPOSITORIES)
            .and_then(|(_, d, _)| d)
            .unwrap();
        assert_eq!(
            String::from_utf8(repos).unwrap(),
            format!(
                r#"{{"Repositories":{{"busybox":{{"busybox:latest":"{}"}}}}}}"#,
                store.b
            )
        );
    }

    #[test]
    fn both_images_share_their_base_layer_once() {
        let store = FakeStore::new();
        let sel = Selection {
            images: vec![
                SelectedImage {
                    id: store.a.clone(),
                    names: vec![],
                },
                SelectedImage {
                    id: store.b.clone(),
                    names: vec!["busybox:latest".into()],
                },
            ],
        };
        let mut buf = vec![];
        Docker
            .export(&store.root(), Some(&sel), STAMP, &mut buf)
            .unwrap();
        let names: Vec<String> = entries(&buf).into_iter().map(|(n, _, _)| n).collect();
        for (i, (_, chain, _)) in store.layers.iter().enumerate() {
            let chain = hex(chain);
            assert!(names.contains(&format!("{LAYERDB}/{chain}")));
            assert!(names.contains(&format!("overlay2/{chain}/diff/file{i}")));
        }
        let base = format!("{LAYERDB}/{}", hex(&store.layers[0].1));
        assert_eq!(names.iter().filter(|n| **n == base).count(), 1);
        // Both images are there, so a's parent (b) is kept.
        let parent = format!("{METADATA}/{}/parent", hex(&store.a));
        assert!(names.contains(&parent), "{names:#?}");
        assert!(!names.iter().any(|n| n.contains("mounts")
            || n.contains("tmp")
            || n.contains("-init")
            || n == "engine-id"));
        // With no selection, every image with every name: the same.
        let mut all = vec![];
        Docker.export(&store.root(), None, STAMP, &mut all).unwrap();
        let all_names: Vec<String> = entries(&all).into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(all_names, names);
        let repos = entries(&all)
            .into_iter()
            .find(|(n, _, _)| n == REPOSITORIES)
            .and_then(|(_, d, _)| d)
            .unwrap();
        assert_eq!(repos, fs::read(store.root().join(REPOSITORIES)).unwrap());
    }

    #[test]
    fn measure_counts_what_export_writes() {
        let store = FakeStore::new();
        let root = store.root();
        let sels = [
            None,
            Some(select(&store.a, &["reg:5000/fp/a:1"])),
            Some(Selection::default()),
        ];
        for sel in &sels {
            let mut buf = vec![];
            Docker.export(&root, sel.as_ref(), STAMP, &mut buf).unwrap();
            let written = crate::disk::ext4::estimate_tar(&buf[..], 4096).unwrap();
            let measured = Docker.measure(&root, sel.as_ref(), 4096).unwrap();
            assert_eq!(measured, written, "selection {sel:?}");
        }
    }

    #[test]
    fn missing_parts_are_errors_naming_them() {
        let store = FakeStore::new();
        let root = store.root();
        let err = |sel: &Selection| {
            let e = Docker
                .export(&root, Some(sel), STAMP, &mut io::sink())
                .unwrap_err();
            format!("{e:#}")
        };
        let absent = format!("sha256:{}", "0".repeat(64));
        let e = err(&select(&absent, &[]));
        assert!(
            e.contains(&format!("image {absent} is not in the store")),
            "{e}"
        );
        let e = err(&select("sha256:../../etc", &[]));
        assert!(e.contains("is not an image ID"), "{e}");
        let e = err(&select(&store.a, &["reg:5000/fp/a:2"]));
        assert!(e.contains("no image named reg:5000/fp/a:2"), "{e}");
        let e = err(&select(&store.a, &["busybox"]));
        assert!(
            e.contains(&format!("busybox names image {} in the store", store.b)),
            "{e}"
        );
        // A layer whose overlay2 directory is gone.
        fs::remove_dir_all(root.join("overlay2/cache1")).unwrap();
        let e = err(&select(&store.a, &[]));
        let chain = &store.layers[1].1;
        assert!(
            e.contains(&format!(
                "layer {chain} of image {}: its overlay2 directory overlay2/cache1 is missing",
                store.a
            )),
            "{e}"
        );
        // Measuring fails the same way.
        let e = Docker
            .measure(&root, Some(&select(&store.a, &[])), 4096)
            .unwrap_err();
        assert!(format!("{e:#}").contains("overlay2/cache1 is missing"));
        // The other image does not need that layer.
        Docker
            .export(&root, Some(&select(&store.b, &[])), STAMP, &mut io::sink())
            .unwrap();
    }

    #[test]
    fn selection_file_or_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sel.json");
        fs::write(
            &path,
            r#"{"images":[{"id":"sha256:ab","names":["a:1","a@sha256:cd"]}]}"#,
        )
        .unwrap();
        let read = |p: &Path| read_selection(fs::File::open(p).unwrap(), &p.display().to_string());
        let sel = read(&path).unwrap();
        assert_eq!(sel.images[0].names, ["a:1", "a@sha256:cd"]);
        fs::write(&path, "{").unwrap();
        let e = format!("{:#}", read(&path).unwrap_err());
        assert!(e.contains("parsing the image selection in"), "{e}");
    }
}
