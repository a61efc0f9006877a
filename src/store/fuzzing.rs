//! Entry points of the fuzz targets into the stores' parsers
//! (`tests/fuzz_parsers.rs`, feature `test-hooks`), re-exported by
//! `crate::fuzzing`.

use std::path::Path;

use anyhow::Result;

use super::containerd::{bolt, image};

/// Walks a bbolt file as `inspect`, `verify` and `--merge` read
/// containerd's meta.db: every bucket (nested up to 8 levels, at most
/// 10000 entries in all), then the namespaces' image records, their
/// content labels and snapshots.
pub fn bolt_db(data: &[u8]) -> Result<String> {
    fn walk(b: &bolt::Bucket<'_>, depth: usize, n: &mut usize) -> Result<()> {
        for (_, e) in b.entries()? {
            *n += 1;
            if *n > 10_000 {
                return Ok(());
            }
            if let bolt::Entry::Bucket(inner) = e {
                if depth < 8 {
                    walk(&inner, depth + 1, n)?;
                }
            }
        }
        Ok(())
    }
    let db = bolt::Db::open(data)?;
    let mut n = 0;
    walk(&db.root(), 0, &mut n)?;
    let mut records = 0;
    for (_, ns) in image::namespaces(&db)? {
        for r in image::records(&ns)? {
            records += 1;
            let _ = r.pinned();
            image::content_labels(&ns, &r.digest)?;
            image::snapshot(&ns, &r.digest)?;
        }
    }
    Ok(format!("{} entries, {} records", n.min(3), records.min(3)))
}

/// Docker's `verify` of a store whose data root is `root` on this
/// machine (its tar-split metadata, layer and image JSON).
pub fn verify_docker(root: &Path) -> Result<String> {
    let host = crate::fsread::HostDir(root.to_path_buf());
    let opts = crate::store::docker::verify::Options::default();
    let r = crate::store::docker::verify::verify(&host, &opts, &mut |_| {})?;
    if std::env::var_os("FP_FUZZ_VERBOSE").is_some() {
        for f in &r.failures {
            eprintln!("verify: {f}");
        }
    }
    let mut problems: Vec<String> = r
        .failures
        .iter()
        .map(|f| {
            f.problem
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .take(60)
                .collect()
        })
        .collect();
    problems.sort();
    problems.dedup();
    Ok(format!(
        "{} images, {} layers: {}",
        r.images.min(3),
        r.layers.min(3),
        problems.join(" | ")
    ))
}
