//! `verify`: proves that a Docker overlay2 image store (as `populate` writes
//! it into ROOT) is intact, from the store alone, through [`FsRead`]:
//!
//! 1. every image config in `imagedb` hashes to its image ID;
//! 2. the chain IDs follow from the config's diff IDs, and each layer's
//!    `layerdb` entry (`diff`, `cache-id`, `size`, `tar-split.json.gz`,
//!    `parent`) agrees with them;
//! 3. each layer's overlay2 directory has `diff/`, `link`, `lower` (as
//!    Docker's overlay2 driver writes it) and its `l/<link>` symlink;
//! 4. each layer's tar stream, rebuilt from its tar-split metadata and the
//!    files of its `diff/`, hashes to its diff ID (streamed, never held in
//!    memory);
//! 5. overlay whiteouts and opaque directories in `diff/` match the layer;
//! 6. `repositories.json` names only images that exist.
//!
//! Every failure names the image, the layer (its diff ID) and the path; the
//! checks go on after a failure. A layer shared by several images is
//! checked once and its failures name the first image (by ID) using it.
//!
//! This file walks the images (1, 2) and `repositories.json` (6);
//! `verify/layers.rs` checks a layer's `layerdb` and overlay2 entries
//! (2, 3), `verify/stream.rs` its tar stream and whiteouts (4, 5), reading
//! the tar-split metadata with [`super::tarsplit`].

use std::collections::{BTreeSet, HashMap};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::layout::{CONTENT as IMAGEDB, IMAGE, LAYERDB, REPOSITORIES};
use crate::digest::{chain_ids, is_hex64, sha256_hex};
use crate::fsread::{show, FsRead, Kind};
use crate::store::verify_common::{diff_ids, Subject};
use crate::store::{Failure, Report};
use layers::{check_layer, join, Layer, LayerInfo};

mod layers;
mod stream;

/// Where the store is.
pub struct Options {
    /// Docker's data root in the tree, normally `b"/var/lib/docker"`.
    pub root: Vec<u8>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            root: super::ROOT.as_bytes().to_vec(),
        }
    }
}

/// Image IDs (hex) of `imagedb`, sorted; Err when the store is unreadable.
fn image_ids(fs: &dyn FsRead, root: &[u8]) -> Result<Vec<String>> {
    let store = join(root, IMAGE);
    match fs
        .stat(&store)
        .with_context(|| format!("reading {}", show(&store)))?
    {
        Some(st) if st.kind == Kind::Dir => {}
        _ => bail!(
            "{} holds no Docker overlay2 image store ({} is missing)",
            show(root),
            show(&store)
        ),
    }
    let imagedb = join(root, IMAGEDB);
    if fs
        .stat(&imagedb)
        .with_context(|| format!("reading {}", show(&imagedb)))?
        .is_none()
    {
        return Ok(vec![]);
    }
    let mut ids: Vec<String> = fs
        .read_dir(&imagedb)
        .with_context(|| format!("listing {}", show(&imagedb)))?
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect();
    ids.sort();
    Ok(ids)
}

/// Sum of the layers' content sizes (`layerdb/.../size`) of every image:
/// the total that `verify`'s `progress` counts towards. Cheap: reads only
/// configs and small files. Unreadable entries count 0 (`verify` reports
/// them).
pub fn total_bytes(fs: &dyn FsRead, opts: &Options) -> Result<u64> {
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for id in image_ids(fs, &opts.root)? {
        let path = join(&opts.root, &format!("{IMAGEDB}/{id}"));
        let Ok(config) = fs.read_all(&path) else {
            continue;
        };
        let Ok(diffs) = diff_ids(&config) else {
            continue;
        };
        for chain in chain_ids(&diffs) {
            if !seen.insert(chain.clone()) {
                continue;
            }
            let hex = chain.trim_start_matches("sha256:");
            let size = join(&opts.root, &format!("{LAYERDB}/{hex}/size"));
            if let Ok(b) = fs.read_all(&size) {
                if let Ok(n) = String::from_utf8_lossy(&b).trim().parse::<u64>() {
                    total = total.saturating_add(n);
                }
            }
        }
    }
    Ok(total)
}

/// Checks every image of the store. `progress(n)` is called with each
/// increment of `n` layer content bytes hashed (towards `total_bytes`).
/// Returns Err only when the store cannot be read at all; every other
/// problem is a [`Failure`] in the report.
pub fn verify(fs: &dyn FsRead, opts: &Options, progress: &mut dyn FnMut(u64)) -> Result<Report> {
    let root = &opts.root[..];
    let ids = image_ids(fs, root)?;
    let mut failures = vec![];
    let mut layers: HashMap<String, LayerInfo> = HashMap::new();
    let mut bytes_hashed = 0u64;

    for id in &ids {
        let image = format!("sha256:{id}");
        let who = Subject {
            image: Some(image.clone()),
            layer: None,
        };
        let path = join(root, &format!("{IMAGEDB}/{id}"));
        // 1. The config hashes to the image ID.
        let config = match fs.read_all(&path) {
            Ok(c) => c,
            Err(e) => {
                failures.push(who.fail(Some(&path), format!("reading the image config: {e:#}")));
                continue;
            }
        };
        let got = sha256_hex(&config);
        if !is_hex64(id) {
            failures.push(who.fail(Some(&path), "the name in imagedb is not a sha256 image ID"));
        } else if &got != id {
            failures.push(who.fail(
                Some(&path),
                format!("the image config hashes to sha256:{got}, not to its image ID (the config was changed)"),
            ));
        }
        let diffs = match diff_ids(&config) {
            Ok(d) => d,
            Err(e) => {
                failures.push(who.fail(Some(&path), format!("{e:#}")));
                continue;
            }
        };
        // 2.-5. Its layers, bottom up.
        let chains = chain_ids(&diffs);
        let mut lowers: Vec<Option<String>> = vec![];
        for (i, (diff, chain)) in diffs.iter().zip(&chains).enumerate() {
            let info = match layers.get(chain) {
                Some(info) => info.clone(),
                None => {
                    let who = Subject {
                        image: Some(image.clone()),
                        layer: Some(diff.clone()),
                    };
                    let layer = Layer {
                        diff_id: diff,
                        chain,
                        parent: i.checked_sub(1).map(|p| chains[p].as_str()),
                        lowers: &lowers,
                    };
                    let info = check_layer(
                        fs,
                        root,
                        &layer,
                        &who,
                        &mut failures,
                        &mut bytes_hashed,
                        progress,
                    );
                    layers.insert(chain.clone(), info.clone());
                    info
                }
            };
            lowers.push(info.link);
        }
    }

    // 6. repositories.json names only images that exist.
    check_repositories(fs, root, &ids, &mut failures);

    Ok(Report {
        images: ids.len(),
        layers: layers.len(),
        bytes_hashed,
        failures,
    })
}

fn check_repositories(fs: &dyn FsRead, root: &[u8], ids: &[String], failures: &mut Vec<Failure>) {
    let path = join(root, REPOSITORIES);
    let nobody = Subject {
        image: None,
        layer: None,
    };
    match fs.stat(&path) {
        Ok(None) => return, // no tags: Docker starts with untagged images
        Ok(Some(_)) => {}
        Err(e) => {
            failures.push(nobody.fail(Some(&path), format!("reading repositories.json: {e:#}")));
            return;
        }
    }
    #[derive(Deserialize)]
    struct Repos {
        #[serde(rename = "Repositories", default)]
        repositories:
            std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    }
    let repos: Repos = match fs
        .read_all(&path)
        .and_then(|b| serde_json::from_slice(&b).context("parsing it"))
    {
        Ok(r) => r,
        Err(e) => {
            failures.push(nobody.fail(Some(&path), format!("reading repositories.json: {e:#}")));
            return;
        }
    };
    for refs in repos.repositories.values() {
        for (name, id) in refs {
            let exists = id
                .strip_prefix("sha256:")
                .is_some_and(|h| ids.iter().any(|i| i == h));
            if !exists {
                failures.push(Failure {
                    image: Some(id.clone()),
                    layer: None,
                    path: Some(show(&path)),
                    problem: format!(
                        "{name} points at image {id}, which is not in the image database"
                    ),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
