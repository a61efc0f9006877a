//! What `inspect` shows of the stores: each backend's [`Inventory`] under
//! the store's name (the JSON of docs/inspect-schema.md) and as tables for
//! people. Sizes in binary units, as everywhere in the tool.

use std::io::Write;

use indicatif::HumanBytes;
use serde::Serialize;

use super::containerd::inspect::ContainerdStore;
use super::docker::inspect::DockerStore;
use super::Inventory;

/// The stores' inventories, each under its store's name (the keys of
/// `inspect --json`, which stay as they are).
#[derive(Debug, Default, Serialize)]
pub struct Stores {
    /// Docker's overlay2 image store in `/var/lib/docker`; null when
    /// `/var/lib/docker/image/overlay2` does not exist.
    pub docker: Option<DockerStore>,
    /// containerd's images (`/var/lib/containerd`); null when that
    /// directory does not exist.
    pub containerd: Option<ContainerdStore>,
}

impl Stores {
    /// Files what a backend found under its store's name.
    pub fn add(&mut self, found: Inventory) {
        match found {
            Inventory::Docker(d) => self.docker = Some(d),
            Inventory::Containerd(c) => self.containerd = Some(c),
        }
    }

    /// Every store as tables, or a line saying it is absent.
    pub fn print(&self, out: &mut dyn Write) -> std::io::Result<()> {
        match &self.docker {
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
                            HumanBytes(i.size_bytes).to_string(),
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
        match &self.containerd {
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
        writeln!(out)
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
