//! The node's files written: OEM (btrfs, rebuilt), the ESP (vfat), ROOT
//! (ext4), in that order, and the report of what was.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::image::{self, Trap};
use super::plan::{root_items, Booted, Facts, Item, Plan};
use super::{grub, survey};
use crate::disk::btrfs;
use crate::disk::ext4;
use crate::disk::vfat;

/// What was baked beside the stores (summary, `--json`).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// OEM paths of the Ignition configs written, with their spec version.
    pub ignition: Vec<String>,
    pub kernel_args: Vec<String>,
    pub oem_files: Vec<String>,
    pub esp_files: Vec<String>,
    /// Entries written into ROOT (files, directories, links).
    pub root_entries: u64,
    /// `.wants` (and other) links of the enabled units.
    pub unit_links: Vec<String>,
    pub sysexts: Vec<String>,
    pub flatcar_sysexts: Vec<String>,
    /// What --reset-first-boot changed.
    pub reset: Vec<String>,
    /// Root directory xattrs of OEM that the rebuild could not keep.
    pub oem_lost_xattrs: Vec<String>,
    /// Sources that the Ignition configs fetch at first boot (a network).
    pub remote_sources: Vec<String>,
}

impl Report {
    /// Lines for the summary.
    pub fn lines(&self) -> Vec<String> {
        let mut out = survey::listed(&[
            ("ignition", &self.ignition),
            ("kernel arguments", &self.kernel_args),
            ("OEM files", &self.oem_files),
            ("ESP files", &self.esp_files),
            ("enabled units", &self.unit_links),
            ("system extensions", &self.sysexts),
            ("Flatcar extensions", &self.flatcar_sysexts),
            ("reset (--reset-first-boot)", &self.reset),
            ("warning: OEM root xattrs not kept", &self.oem_lost_xattrs),
            ("warning: fetched at first boot", &self.remote_sources),
        ]);
        if self.root_entries > 0 {
            out.push(format!("ROOT files: {} entries", self.root_entries));
        }
        out
    }
}

/// Writes the plan into the raw image `image` whose ROOT is `root`: OEM,
/// then the ESP, then ROOT (with the labels of `selinux`). On failure the
/// caller drops the output; in place, what was written stays.
pub fn apply(
    plan: &Plan,
    facts: &Facts,
    image: &Path,
    root: &ext4::Root,
    selinux: &crate::selinux::Config,
) -> Result<Report> {
    let mut report = Report::default();
    if plan.writes_oem() {
        write_oem(plan, facts, image, &mut report)?;
    }
    write_esp(plan, facts, image, root, &mut report)?;
    write_root(plan, facts, root, selinux, &mut report)?;
    Ok(report)
}

/// OEM rebuilt with the Ignition configs, grub.cfg and files added.
fn write_oem(plan: &Plan, facts: &Facts, image: &Path, report: &mut Report) -> Result<()> {
    let oem = facts.layout.oem.as_ref().context("no OEM partition")?;
    let mut adds = vec![];
    for i in &plan.ignition {
        adds.push(btrfs::Add {
            dest: i.dest.to_string(),
            content: btrfs::Content::File {
                data: i.bytes.clone(),
                mode: 0o644,
            },
        });
        report.ignition.push(format!(
            "/oem{} ({}, Ignition {})",
            i.dest, i.flag, i.version
        ));
        report.remote_sources.extend(i.remote.iter().cloned());
    }
    if !plan.kernel_args.is_empty() {
        let old = btrfs::read_file(image, oem.offset, oem.size, "/grub.cfg")?;
        let new = grub::append_kernel_args(old.as_deref(), &plan.kernel_args)?;
        adds.push(btrfs::Add {
            dest: "/grub.cfg".into(),
            content: btrfs::Content::File {
                data: new,
                mode: 0o644,
            },
        });
        report.kernel_args = plan.kernel_args.clone();
    }
    for f in &plan.oem_files {
        adds.push(btrfs::Add {
            dest: f.dest.clone(),
            content: btrfs::Content::Copy {
                from: f.src.clone(),
            },
        });
        report.oem_files.push(f.dest.clone());
    }
    eprintln!(
        "writing {} file(s) into OEM (partition {}, btrfs, rebuilt with its old content) ...",
        adds.len(),
        oem.number
    );
    let rebuilt =
        btrfs::rebuild(image, oem.offset, oem.size, &adds).context("writing the OEM partition")?;
    report.oem_lost_xattrs = rebuilt.lost_root_xattrs;
    Ok(())
}

/// The ESP's files, and the first-boot flag put back (--reset-first-boot).
fn write_esp(
    plan: &Plan,
    facts: &Facts,
    image: &Path,
    root: &ext4::Root,
    report: &mut Report,
) -> Result<()> {
    let reset_flag = plan.booted == Booted::Reset && facts.traps.contains(&Trap::NoFirstBootFlag);
    if !plan.esp.is_empty() || reset_flag {
        let part = facts
            .layout
            .esp
            .as_ref()
            .context("no EFI system partition")?;
        let empty = tempfile::NamedTempFile::new().context("making an empty file")?;
        let mut files: Vec<(&Path, &str)> = vec![];
        for i in &plan.esp {
            if let Item::File { src, dest, .. } = i {
                let dest = std::str::from_utf8(dest).context("an ESP path is not UTF-8")?;
                files.push((src, dest));
                report.esp_files.push(dest.to_string());
            }
        }
        if reset_flag {
            files.push((empty.path(), image::FIRST_BOOT));
        }
        // Stamped as ROOT is (SOURCE_DATE_EPOCH, else ROOT's last write).
        let stamp = root.open_read()?.stamp();
        vfat::write_files(image, part, &files, stamp)?;
        if reset_flag {
            let said = format!(
                "put the first-boot flag {} back on the ESP",
                image::FIRST_BOOT
            );
            eprintln!("--reset-first-boot: {said}");
            report.reset.push(said);
        }
    }
    Ok(())
}

/// ROOT's files, links and extensions, and what --reset-first-boot
/// removes.
fn write_root(
    plan: &Plan,
    facts: &Facts,
    root: &ext4::Root,
    selinux: &crate::selinux::Config,
    report: &mut Report,
) -> Result<()> {
    let items = root_items(plan, facts);
    let resets: Vec<&str> = match plan.booted {
        Booted::Reset => facts
            .traps
            .iter()
            .filter_map(|t| match t {
                Trap::RootFile(p) => Some(p.as_str()),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    let sysext_names: Vec<&str> = plan
        .flatcar_sysexts
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    if items.is_empty() && resets.is_empty() && sysext_names.is_empty() {
        return Ok(());
    }
    let mut fs = root.open_write(None)?;
    let written = (|| {
        for p in &resets {
            fs.remove_tree(p)?;
            let said = format!("removed {p} from ROOT");
            eprintln!("--reset-first-boot: {said}");
            report.reset.push(said);
        }
        let stamp = fs.stamp();
        let (reader, writer) = std::io::pipe().context("making a pipe")?;
        let feed = {
            let items = items.clone();
            std::thread::spawn(move || write_items(&items, writer, stamp))
        };
        let mut labeler = selinux.labeler(b"/")?;
        let label = labeler
            .as_mut()
            .map(|l| l as &mut dyn crate::disk::ext4::Transform);
        let stats = fs.write_tar(b"/", reader, label);
        let fed = feed
            .join()
            .map_err(|_| anyhow::anyhow!("the thread reading the --root-file inputs panicked"))?;
        // The reader's own error first: the writer's is then only the
        // stream it cut.
        fed?;
        let stats = stats?;
        // After the files: a enabled-sysext.conf given with --root-file is
        // kept, with the extensions added.
        if !sysext_names.is_empty() {
            let conf = "/etc/flatcar/enabled-sysext.conf";
            let old = fs.read_if_exists(conf)?.unwrap_or_default();
            let text = enabled_sysext(&old, &sysext_names);
            let mut attrs = crate::tar::Attrs::root_owned(0o644);
            attrs.mtime = stamp;
            fs.write_file(conf, &text, &attrs)?;
        }
        Ok::<_, anyhow::Error>(stats)
    })();
    let stats = fs
        .close_after(written)
        .context("writing the node's files into ROOT")?;
    report.root_entries = stats.entries;
    report.unit_links = facts.links.iter().map(|(l, _)| l.clone()).collect();
    report.sysexts = plan
        .sysexts
        .iter()
        .map(|s| format!("/opt/extensions/{}/{}", s.name, s.file))
        .collect();
    if let Some(v) = &facts.version {
        report.flatcar_sysexts = plan
            .flatcar_sysexts
            .iter()
            .map(|s| format!("/etc/flatcar/sysext/flatcar-{}-{v}.raw", s.name))
            .collect();
    }
    Ok(())
}

/// `enabled-sysext.conf` with `names` listed (after what is there, each
/// once; a `-NAME` line that disabled one is dropped).
fn enabled_sysext(old: &[u8], names: &[&str]) -> Vec<u8> {
    let text = String::from_utf8_lossy(old);
    let mut out = String::new();
    let mut have = vec![];
    for line in text.lines() {
        let t = line.trim();
        if let Some(n) = t.strip_prefix('-') {
            if names.contains(&n.trim()) {
                continue;
            }
        }
        have.push(t.to_string());
        out.push_str(line);
        out.push('\n');
    }
    for n in names {
        if !have.iter().any(|h| h == n) {
            out.push_str(n);
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// The items as a tar stream into `out` (owner root, modes kept, times the
/// host's or `stamp`).
fn write_items(items: &[Item], out: impl std::io::Write, stamp: i64) -> Result<()> {
    let mut w = crate::tar::Writer::new(std::io::BufWriter::new(out));
    let attrs = |mode: u32, mtime: i64| crate::tar::Attrs {
        mtime: if mtime == 0 { stamp } else { mtime },
        ..crate::tar::Attrs::root_owned(mode)
    };
    for i in items {
        let path = i.dest().strip_prefix(b"/").unwrap_or(i.dest());
        match i {
            Item::Dir { mode, mtime, .. } => w.dir(path, &attrs(*mode, *mtime))?,
            Item::File {
                src,
                mode,
                size,
                mtime,
                ..
            } => {
                let f = std::fs::File::open(src)
                    .with_context(|| format!("opening {}", src.display()))?;
                w.file(path, &attrs(*mode, *mtime), *size, f)?;
            }
            Item::Symlink { target, mtime, .. } => {
                w.symlink(path, &attrs(0o777, *mtime), target)?
            }
        }
    }
    w.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enabled_sysext_conf() {
        let out = enabled_sysext(b"# mine\npodman\n-zfs\n", &["zfs", "podman", "python"]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "# mine\npodman\nzfs\npython\n"
        );
        assert_eq!(enabled_sysext(b"", &["a"]), b"a\n");
    }
}
