//! `inspect`: what images a ROOT filesystem carries, read through `FsRead`
//! (no mount, no root, nothing written). The JSON shape of `Inventory` is a
//! documented, stable interface (docs/inspect-schema.md): rename nothing.

use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::fsread::FsRead;
use crate::store;
use indicatif::HumanBytes;

/// Everything `inspect` reports about a ROOT filesystem.
#[derive(Debug, Serialize)]
pub struct Inventory {
    /// Each store's inventory under its name (`docker`, `containerd`),
    /// null when it has none.
    #[serde(flatten)]
    pub stores: store::Stores,
    /// Size and free space of the ROOT filesystem.
    pub root: RootSpace,
    /// What the mark of a run that did not finish writing into ROOT says
    /// (`/.flatcar-preload-unfinished`); null when there is none.
    pub unfinished: Option<String>,
    /// The SELinux labels of the stores' inodes.
    pub selinux: crate::selinux::Labels,
    /// What the image holds beside the stores (OEM's Ignition configs and
    /// kernel arguments, ROOT's extensions and enabled units, what a boot
    /// left); null when only a filesystem was read.
    pub node: Option<crate::node::survey::Node>,
}

/// ROOT's space, in bytes. `inventory` leaves it zero: the caller, which
/// knows the filesystem, sets it.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RootSpace {
    /// Size of the filesystem (blocks times block size).
    pub size_bytes: u64,
    /// Free space (free blocks times block size, reserved blocks included).
    pub free_bytes: u64,
}

/// Reads what images `fs` (a ROOT filesystem) carries.
pub fn inventory(fs: &dyn FsRead) -> Result<Inventory> {
    let mut inv = Inventory {
        stores: store::Stores::default(),
        root: RootSpace::default(),
        unfinished: crate::disk::unfinished(fs)?,
        selinux: crate::selinux::survey(fs)?,
        node: None,
    };
    for backend in store::BACKENDS {
        if let Some(found) = backend.inspect(fs)? {
            inv.stores.add(found);
        }
    }
    Ok(inv)
}

/// The inventory for people: Docker's images, containerd's, ROOT's space.
pub fn print_table(inv: &Inventory, out: &mut dyn Write) -> std::io::Result<()> {
    let l = &inv.selinux;
    if l.inodes > 0 {
        writeln!(
            out,
            "SELinux: {} of the stores' {} inodes labelled",
            l.labelled, l.inodes
        )?;
        for (label, n) in &l.by_label {
            writeln!(out, "  {n} {label}")?;
        }
    }
    if let Some(node) = &inv.node {
        for line in node.lines() {
            writeln!(out, "{line}")?;
        }
    }
    if let Some(said) = &inv.unfinished {
        writeln!(
            out,
            "UNFINISHED: an interrupted run left ROOT unfinished ({said}); what it holds may be half-written\n"
        )?;
    }
    inv.stores.print(out)?;
    writeln!(out)?;
    let r = &inv.root;
    writeln!(
        out,
        "ROOT: {} in all, {} free",
        HumanBytes(r.size_bytes),
        HumanBytes(r.free_bytes)
    )
}

#[cfg(test)]
mod tests;

/// `flatcar-preload inspect DISK [--json]`: the inventory of ROOT, read
/// only, as a table on stdout (or the JSON of [`Inventory`]).
pub fn run(disk: &std::path::Path, json: bool) -> Result<()> {
    let opened = crate::disk::open_for_reading(disk)?;
    let root = opened.prepared.fs();
    let fs = root.open_read()?;
    let mut inv = match (inventory(&fs), crate::disk::unfinished(&fs)?) {
        (Err(e), Some(said)) => {
            return Err(e.context(format!(
                "ROOT was left unfinished by an interrupted run ({said})"
            )))
        }
        (inv, _) => inv?,
    };
    let summary = fs.inspect(crate::disk::ROOT_NAME)?;
    inv.root = RootSpace {
        size_bytes: summary.size_bytes(),
        free_bytes: summary.free_bytes(),
    };
    let mut problems = vec![];
    let k8s = store::kubelet_images(&fs)?;
    inv.node = Some(crate::node::survey::survey(
        &opened.prepared.image,
        &opened.prepared.layout,
        &fs,
        false,
        &k8s,
        &mut problems,
    )?);
    for (path, problem) in problems {
        eprintln!("warning: {path}: {problem}");
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &inv)
            .map_err(std::io::Error::from)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
    } else {
        print_table(&inv, &mut out)
    }
    .context("writing to standard output")
}
