//! A run on a `--cache`: its images as a store selection (what is
//! exported of a store that holds others), and the cache pruned to them.

use anyhow::{Context, Result};

use super::store_run::StoreRun;
use crate::populate::report::PulledImage;
use crate::protocol::StoreOp;

/// The store selection (JSON) of `images`: their IDs and every name the
/// store gives them.
pub(crate) fn selection(images: &[PulledImage]) -> Result<Vec<u8>> {
    serde_json::to_vec(&selected(images)).context("describing the images to export")
}

/// The images of the run by ID, with all their names.
fn selected(images: &[PulledImage]) -> crate::store::Selection {
    let mut sel = crate::store::Selection { images: vec![] };
    for i in images {
        match sel.images.iter_mut().find(|s| s.id == i.id) {
            Some(s) => s.names.extend(i.names.iter().cloned()),
            None => sel.images.push(crate::store::SelectedImage {
                id: i.id.clone(),
                names: i.names.clone(),
            }),
        }
    }
    for s in &mut sel.images {
        s.names.sort();
        s.names.dedup();
    }
    sel
}

/// Removes the images of the cache that are not `kept` (--cache-prune),
/// with the prune helper in the dind.
pub(crate) async fn prune(run: &StoreRun<'_>, kept: &[PulledImage]) -> Result<()> {
    let why = match run.cfg.cache_prune {
        true => "--cache-prune",
        false => "the store is written whole",
    };
    let request = run.store.request(StoreOp::Prune);
    let keep = run.daemon.kept(&selected(kept));
    let mut list = serde_json::to_vec(&keep).context("listing the images to keep")?;
    list.push(b'\n');
    let mut removed = 0;
    let finished = run
        .dind()
        .helper_lines(
            &request,
            Some(Box::new(std::io::Cursor::new(list))),
            |line| {
                if let Some(id) = line.strip_prefix("removed ") {
                    eprintln!("removed {id} from the cache ({why})");
                    removed += 1;
                }
            },
        )
        .await?;
    finished.success("removing the other images from the cache")?;
    if removed == 0 {
        eprintln!("the cache holds no other image ({why})");
    }
    Ok(())
}
