//! `--cache NAME`: the pulling daemon's store in a Docker volume kept
//! between runs, and `flatcar-preload cache ls|rm`.

use anyhow::{bail, Context, Result};

use crate::docker::Engine;
use crate::store::{self, Backend};

/// The Docker volume of cache `name` for the store of `backend` (one per
/// store: each build container has its daemon's root on it). Each store's
/// own tag, so that no cache name gives another's volume.
pub fn volume_name(name: &str, backend: &dyn Backend) -> String {
    format!("flatcar-preload-{}cache-{name}", backend.tag())
}

/// The build container of a run using cache `name` for the store of
/// `backend`: one name, so that a second run on the same cache cannot
/// start (Docker refuses a second container of that name) while the first
/// has it.
pub fn dind_name(name: &str, backend: &dyn Backend) -> String {
    format!("{}-dind", volume_name(name, backend))
}

/// The store whose volume of cache `name` `volume` is.
fn store_of(name: &str, volume: &str) -> Result<&'static dyn Backend> {
    store::BACKENDS
        .into_iter()
        .find(|b| volume_name(name, *b) == volume)
        .with_context(|| format!("volume {volume} is of no store of this tool's"))
}

/// `flatcar-preload cache ls`: the caches on the engine, when they were
/// made and whether a run is using them.
pub async fn list() -> Result<()> {
    let engine = Engine::connect().await?;
    let caches = engine.caches().await?;
    if caches.is_empty() {
        eprintln!("no caches (make one with populate --cache NAME)");
        return Ok(());
    }
    println!(
        "{:<24} {:<11} {:<26} {:<8} VOLUME",
        "NAME", "STORE", "CREATED", "IN USE"
    );
    for c in caches {
        let store = store_of(&c.name, &c.volume)?;
        let in_use = match engine.container_exists(&dind_name(&c.name, store)).await? {
            true => "yes",
            false => "no",
        };
        println!(
            "{:<24} {:<11} {:<26} {:<8} {}",
            c.name,
            store.name(),
            c.created,
            in_use,
            c.volume
        );
    }
    Ok(())
}

/// `flatcar-preload cache rm NAME...`: removes caches no run is using.
pub async fn remove(names: &[String]) -> Result<()> {
    let engine = Engine::connect().await?;
    let caches = engine.caches().await?;
    for name in names {
        // Its volume for each store.
        let volumes: Vec<_> = caches.iter().filter(|c| &c.name == name).collect();
        if volumes.is_empty() {
            bail!("there is no cache {name:?} (`flatcar-preload cache ls` lists them)");
        }
        for c in &volumes {
            let dind = dind_name(name, store_of(name, &c.volume)?);
            if engine.container_exists(&dind).await? {
                bail!(
                    "the cache {name:?} is in use by a run (its container {dind} exists); \
                     if no run is using it, remove that first: docker rm -f {dind}"
                );
            }
        }
        for c in volumes {
            engine.remove_volume(&c.volume).await?;
            eprintln!("removed cache {name} (volume {})", c.volume);
        }
    }
    Ok(())
}
