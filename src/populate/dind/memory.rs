//! Where the build container's store lives while pulling: memory (a
//! tmpfs, when the engine's machine can spare it) or disk (a volume).

use anyhow::Result;

use super::store_run::StoreRun;
use crate::populate::config::StoreChoice;

/// `--store auto` takes memory only with at least this much to spare:
/// below, most image sets would not fit and would be pulled twice.
pub(crate) const MIN_MEMORY_STORE: u64 = 1 << 30;

/// What is left to the rest of the engine's machine when the tool runs
/// there: the store in memory must not push it into swapping or the OOM
/// killer.
pub(crate) const MEMORY_RESERVE: u64 = 1 << 30;

/// How much memory the store may take: half of the engine's machine
/// (`engine_total`), and no more than `here_available` less
/// [`MEMORY_RESERVE`] when the engine runs on this machine. 0 when unknown.
pub(crate) fn memory_budget(engine_total: u64, here_available: Option<u64>) -> u64 {
    let half = engine_total / 2;
    match here_available {
        Some(a) => half.min(a.saturating_sub(MEMORY_RESERVE)),
        None => half,
    }
}

/// MemAvailable of /proc/meminfo, in bytes.
pub(crate) fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// Decides where the store lives: Some(cap) for a tmpfs of at most `cap`
/// bytes, None for a Docker volume.
pub(crate) async fn plan_store(run: &StoreRun<'_>) -> Result<Option<u64>> {
    let cfg = run.cfg;
    if cfg.store == StoreChoice::Disk {
        return Ok(None);
    }
    let cap = match cfg.store_memory_cap {
        Some(c) => c,
        None => {
            // The engine's machine is this one: leave it its reserve.
            let here = run.engine.is_local().then(|| {
                let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
                mem_available(&meminfo)
            });
            memory_budget(run.engine.mem_total(), here.flatten())
        }
    };
    Ok(match cfg.store {
        // A tmpfs of size 0 would have no limit at all.
        StoreChoice::Memory if cap == 0 => {
            eprintln!(
                "the memory of the Docker engine's machine is unknown: pulling with the store on disk"
            );
            None
        }
        StoreChoice::Memory => Some(cap),
        _ if cap >= MIN_MEMORY_STORE => Some(cap),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_budget_is_half_the_engine_and_leaves_a_reserve_here() {
        const GIB: u64 = 1 << 30;
        assert_eq!(memory_budget(8 * GIB, None), 4 * GIB);
        assert_eq!(memory_budget(8 * GIB, Some(7 * GIB)), 4 * GIB);
        assert_eq!(memory_budget(8 * GIB, Some(2 * GIB)), GIB);
        assert_eq!(memory_budget(8 * GIB, Some(GIB / 2)), 0);
        assert_eq!(memory_budget(0, None), 0);
        let meminfo =
            "MemTotal:       24683976 kB\nMemFree:  572344 kB\nMemAvailable:   23498116 kB\n";
        assert_eq!(mem_available(meminfo), Some(23498116 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }
}
