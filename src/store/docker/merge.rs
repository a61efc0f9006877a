//! `--merge`: a new Docker store written over one already in ROOT. The
//! new store's files replace the old ones of the same paths; what both
//! must agree on afterwards is reconciled here: the names of the images
//! (`repositories.json`, both sets kept) and the layers they share.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::layout::{LAYERDB, LAYERS, REPOSITORIES};
use super::ROOT;
use crate::disk::ext4;
use crate::fsread::FsRead;

/// What the store in ROOT held before the new one was written.
pub struct Before {
    /// Its `repositories.json`.
    repositories: Vec<u8>,
    /// The overlay2 directory of each of its layers, by chain ID.
    layers: BTreeMap<String, String>,
}

impl Before {
    /// Reads what a merge must keep of the store in `fs`; None when it has
    /// no `repositories.json` (no store to merge with).
    pub fn read(fs: &dyn FsRead) -> Result<Option<Before>> {
        let path = format!("{ROOT}/{REPOSITORIES}");
        if fs.stat(path.as_bytes())?.is_none() {
            return Ok(None);
        }
        Ok(Some(Before {
            repositories: fs.read_all(path.as_bytes())?,
            layers: layer_dirs(fs, ROOT)?,
        }))
    }
}

impl crate::store::Merge for Before {
    /// Relinks the shared layers, then writes the names of both stores.
    fn finish(self: Box<Self>, fs: &mut ext4::Fs) -> Result<()> {
        relink_shared_layers(fs, &self.layers)?;
        let path = format!("{ROOT}/{REPOSITORIES}");
        let new = fs.read_if_exists(&path)?.unwrap_or_else(|| b"{}".to_vec());
        let merged = merge_repositories(&self.repositories, &new)?;
        // Root's, 0600, as Docker writes it.
        let attrs = stamped(fs, 0o600, &path)?;
        fs.write_file(&path, &merged, &attrs)
            .context("writing the merged repositories.json")
    }
}

/// Root's, `mode`, with the time the filesystem stamps (so that a merge is
/// as reproducible as the rest) and the xattrs of the file at `path` it
/// replaces (its SELinux label).
fn stamped(fs: &ext4::Fs, mode: u32, path: &str) -> Result<crate::tar::Attrs> {
    let xattrs = match fs.stat(path.as_bytes())? {
        Some(_) => fs
            .xattrs(path.as_bytes())?
            .into_iter()
            .map(|(n, v)| (n.into_bytes(), v))
            .collect(),
        None => vec![],
    };
    Ok(crate::tar::Attrs {
        mtime: fs.stamp(),
        xattrs,
        ..crate::tar::Attrs::root_owned(mode)
    })
}

/// --merge: a layer the new images share with the images already in ROOT
/// (the same chain ID) was written again under a new overlay2 directory,
/// and its layerdb entry now names that one. The layers of the older
/// images above it still list the old directory's short link in their
/// `lower` file: point them at the new one, as Docker would have, so that
/// every layer's `lower` agrees with the layerdb. (The old directory stays,
/// unused.)
fn relink_shared_layers(fs: &mut ext4::Fs, before: &BTreeMap<String, String>) -> Result<()> {
    let after = layer_dirs(fs, ROOT)?;
    let overlay = format!("{ROOT}/{LAYERS}");
    let link_of = |cache_id: &str| -> Result<String> {
        let l = fs.read_all(format!("{overlay}/{cache_id}/link").as_bytes())?;
        Ok(String::from_utf8_lossy(&l).trim().to_string())
    };
    let mut moved = BTreeMap::new();
    for (chain, old) in before {
        match after.get(chain) {
            Some(new) if new != old => {
                moved.insert(
                    format!("l/{}", link_of(old)?),
                    format!("l/{}", link_of(new)?),
                );
            }
            _ => {}
        }
    }
    if moved.is_empty() {
        return Ok(());
    }
    let mut rewrites = vec![];
    for dir in fs.read_dir(overlay.as_bytes())? {
        let dir = String::from_utf8_lossy(&dir).into_owned();
        let lower = format!("{overlay}/{dir}/lower");
        if dir == "l" || fs.stat(lower.as_bytes())?.is_none() {
            continue;
        }
        let text = String::from_utf8_lossy(&fs.read_all(lower.as_bytes())?).into_owned();
        let relinked: Vec<&str> = text
            .split(':')
            .map(|l| moved.get(l).map_or(l, String::as_str))
            .collect();
        let relinked = relinked.join(":");
        if relinked != text {
            rewrites.push((lower, relinked));
        }
    }
    for (lower, relinked) in rewrites {
        let attrs = stamped(fs, 0o644, &lower)?;
        fs.write_file(&lower, relinked.as_bytes(), &attrs)
            .with_context(|| format!("relinking {lower} to the shared layers"))?;
    }
    Ok(())
}

/// The cache-id (overlay2 directory) of every layer in the layerdb of the
/// store at `root` (`/var/lib/docker` in `fs`), by chain ID.
fn layer_dirs(fs: &dyn FsRead, root: &str) -> Result<BTreeMap<String, String>> {
    let db = format!("{root}/{LAYERDB}");
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
fn merge_repositories(old: &[u8], new: &[u8]) -> Result<Vec<u8>> {
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
}
