//! `inspect`: what images a ROOT filesystem carries, read through `FsRead`
//! (no mount, no root, nothing written). The JSON shape of `Inventory` is a
//! documented, stable interface (docs/inspect-schema.md): rename nothing.

use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::fsread::FsRead;
use crate::store;
pub use crate::store::{ContainerdStore, DockerStore};

/// Everything `inspect` reports about a ROOT filesystem.
#[derive(Debug, Serialize)]
pub struct Inventory {
    /// Docker's overlay2 image store in `/var/lib/docker`; null when
    /// `/var/lib/docker/image/overlay2` does not exist.
    pub docker: Option<DockerStore>,
    /// containerd's images (`/var/lib/containerd`); null when that
    /// directory does not exist.
    pub containerd: Option<ContainerdStore>,
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
        docker: None,
        containerd: None,
        root: RootSpace::default(),
        unfinished: crate::disk::unfinished(fs)?,
        selinux: crate::selinux::survey(fs)?,
        node: None,
    };
    for backend in store::BACKENDS {
        match backend.inspect(fs)? {
            Some(store::Inventory::Docker(d)) => inv.docker = Some(d),
            Some(store::Inventory::Containerd(c)) => inv.containerd = Some(c),
            None => {}
        }
    }
    Ok(inv)
}

/// Sizes as `docker images` shows them (SI units).
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else if v < 10.0 {
        format!("{v:.2}{}", UNITS[u])
    } else if v < 100.0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

fn short_created(c: &Option<String>) -> String {
    match c {
        // "2024-05-01T12:34:56.789Z" -> "2024-05-01 12:34:56"
        Some(c) if c.len() >= 19 && c.is_char_boundary(19) => c[..19].replacen('T', " ", 1),
        Some(c) => c.clone(),
        None => "-".into(),
    }
}

fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: Vec<&str>| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, header.to_vec())?;
    for r in rows {
        line(out, r.iter().map(String::as_str).collect())?;
    }
    Ok(())
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
    match &inv.docker {
        None => writeln!(
            out,
            "Docker: no image store (/var/lib/docker/image/overlay2 is absent)"
        )?,
        Some(d) => {
            writeln!(
                out,
                "Docker image store ({}), {} image(s):",
                d.driver,
                d.images.len()
            )?;
            let rows: Vec<Vec<String>> = d
                .images
                .iter()
                .map(|i| {
                    vec![
                        if i.tags.is_empty() {
                            "<none>".to_string()
                        } else {
                            i.tags.join(", ")
                        },
                        short_id(&i.id).to_string(),
                        i.platform.clone(),
                        short_created(&i.created),
                        i.layers.to_string(),
                        human(i.size_bytes),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                table(
                    out,
                    &["TAGS", "IMAGE ID", "PLATFORM", "CREATED", "LAYERS", "SIZE"],
                    &rows,
                )?;
            }
            let digests: Vec<(&str, &String)> = d
                .images
                .iter()
                .flat_map(|i| i.digests.iter().map(|g| (short_id(&i.id), g)))
                .collect();
            if !digests.is_empty() {
                writeln!(out, "Digests (IMAGE ID  REFERENCE):")?;
                for (id, g) in digests {
                    writeln!(out, "  {id}  {g}")?;
                }
            }
            writeln!(out, "Used by:")?;
            for u in &d.used_by {
                writeln!(
                    out,
                    "  Docker {} ({}): {}: {}",
                    u.docker,
                    u.channels.join(", "),
                    if u.uses_store { "yes" } else { "NO" },
                    u.why
                )?;
            }
        }
    }
    writeln!(out)?;
    match &inv.containerd {
        None => writeln!(out, "containerd: none (/var/lib/containerd is absent)")?,
        Some(c) if c.namespaces.is_empty() => writeln!(out, "containerd: no images")?,
        Some(c) => {
            writeln!(out, "containerd images:")?;
            let rows: Vec<Vec<String>> = c
                .namespaces
                .iter()
                .flat_map(|ns| {
                    ns.images.iter().map(|i| {
                        vec![
                            ns.name.clone(),
                            i.name.clone(),
                            i.digest.clone(),
                            i.media_type.clone(),
                            yes_no(i.pinned),
                            yes_no(i.unpacked),
                        ]
                    })
                })
                .collect();
            table(
                out,
                &[
                    "NAMESPACE",
                    "NAME",
                    "DIGEST",
                    "MEDIA TYPE",
                    "PINNED",
                    "UNPACKED",
                ],
                &rows,
            )?;
        }
    }
    writeln!(out)?;
    let r = &inv.root;
    writeln!(
        out,
        "ROOT: {} in all, {} free",
        human(r.size_bytes),
        human(r.free_bytes)
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
