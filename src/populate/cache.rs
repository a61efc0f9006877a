//! `--cache NAME`: the pulling daemon's store in a Docker volume kept
//! between runs, and `flatcar-preload cache ls|rm`.

use anyhow::{bail, Result};

use crate::docker::Engine;

/// The Docker volume of cache `name`.
pub fn volume_name(name: &str) -> String {
    format!("flatcar-preload-cache-{name}")
}

/// The dind container of a run using cache `name`: one name, so that a
/// second run on the same cache cannot start (Docker refuses a second
/// container of that name) while the first has it.
pub fn dind_name(name: &str) -> String {
    format!("flatcar-preload-cache-{name}-dind")
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
    println!("{:<24} {:<26} {:<8} VOLUME", "NAME", "CREATED", "IN USE");
    for c in caches {
        let in_use = match engine.container_exists(&dind_name(&c.name)).await? {
            true => "yes",
            false => "no",
        };
        println!(
            "{:<24} {:<26} {:<8} {}",
            c.name, c.created, in_use, c.volume
        );
    }
    Ok(())
}

/// `flatcar-preload cache rm NAME...`: removes caches no run is using.
pub async fn remove(names: &[String]) -> Result<()> {
    let engine = Engine::connect().await?;
    let caches = engine.caches().await?;
    for name in names {
        let Some(c) = caches.iter().find(|c| &c.name == name) else {
            bail!("there is no cache {name:?} (`flatcar-preload cache ls` lists them)");
        };
        let dind = dind_name(name);
        if engine.container_exists(&dind).await? {
            bail!(
                "the cache {name:?} is in use by a run (its container {dind} exists); \
                 if no run is using it, remove that first: docker rm -f {dind}"
            );
        }
        engine.remove_volume(&c.volume).await?;
        eprintln!("removed cache {name} (volume {})", c.volume);
    }
    Ok(())
}
