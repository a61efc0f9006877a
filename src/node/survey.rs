//! What a disk image carries beside the stores, read without writing
//! anything: the Ignition configs and kernel arguments of OEM, the system
//! extensions and enabled units of ROOT, and what a boot left. `inspect`
//! lists it; `verify` checks that it holds together (and, with
//! `--air-gapped`, that the first boot needs no network).

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::{grub, ignition, image};
use crate::disk::{btrfs, Layout};
use crate::fsread::{FsRead, Kind};

/// The OEM paths Flatcar's Ignition reads.
const IGNITION: [&str; 3] = ["/config.ign", "/base/base.ign", "/base/default.ign"];
/// What `survey` reads of OEM: the Ignition configs, then grub.cfg.
const OEM_FILES: [&str; 4] = [IGNITION[0], IGNITION[1], IGNITION[2], "/grub.cfg"];
const EXTENSIONS: &str = "/etc/extensions";
const FLATCAR_SYSEXT: &str = "/etc/flatcar/sysext";
const ENABLED_SYSEXT: &str = "/etc/flatcar/enabled-sysext.conf";
const UNITS: &str = "/etc/systemd/system";

/// What the image holds beside the stores.
#[derive(Debug, Default, Serialize)]
pub struct Node {
    /// ROOT's partition number and how the image boots (grub, uki).
    pub root_partition: u32,
    pub boot: Option<crate::disk::Boot>,
    /// The Flatcar version of USR-A, when it could be read.
    pub flatcar_version: Option<String>,
    /// Ignition configs on OEM, with their spec version.
    pub ignition: Vec<String>,
    /// Kernel arguments OEM's grub.cfg appends.
    pub kernel_args: Vec<String>,
    /// `/etc/extensions/NAME.raw -> target` links.
    pub sysexts: Vec<String>,
    /// Names listed in enabled-sysext.conf, and the files baked for them.
    pub flatcar_sysexts_enabled: Vec<String>,
    pub flatcar_sysexts_baked: Vec<String>,
    /// `.wants`/`.requires` links under /etc/systemd/system.
    pub enabled_units: Vec<String>,
    /// What a boot left (an image should have none).
    pub booted: Vec<String>,
    /// Sources the Ignition configs fetch at first boot.
    pub remote_sources: Vec<String>,
    /// What may need a network but is not known to (e.g. Kubernetes
    /// images without a Kubernetes extension).
    pub warnings: Vec<String>,
}

/// Reads what `image` (raw) carries beside the stores; `problems` gets
/// what does not hold together (`air_gapped`: also what would need a
/// network at first boot). `k8s_images`: the names of the images of
/// containerd's namespace k8s.io (the kubelet's).
pub fn survey(
    image: &Path,
    layout: &Layout,
    fs: &dyn FsRead,
    air_gapped: bool,
    k8s_images: &[String],
    problems: &mut Vec<(String, String)>,
) -> Result<Node> {
    let mut node = Node {
        root_partition: layout.root.number,
        boot: Some(layout.boot),
        ..Node::default()
    };
    let exists = |p: &str| -> Result<bool> { Ok(fs.stat(p.as_bytes())?.is_some()) };
    // OEM.
    if let Some(oem) = &layout.oem {
        if btrfs::probe(image, oem.offset)?.is_some() {
            // The partition copied out once for all four files.
            let mut files = btrfs::read_files(image, oem.offset, oem.size, &OEM_FILES)?;
            let grub_cfg = files.pop().flatten();
            let root = ignition::Root::flatcar(Some(&layout.root.uuid));
            for (path, bytes) in IGNITION.iter().zip(files) {
                let Some(bytes) = bytes else {
                    continue;
                };
                match ignition::check(&bytes, &format!("OEM {path}"), &root) {
                    Ok(c) => {
                        node.ignition
                            .push(format!("{path} (Ignition {})", c.version));
                        node.remote_sources.extend(c.remote);
                    }
                    Err(e) => problems.push((format!("/oem{path}"), format!("{e:#}"))),
                }
            }
            if let Some(cfg) = grub_cfg {
                node.kernel_args = grub::kernel_args(&cfg);
            }
        }
    }
    // ROOT: extensions, Flatcar's own, units, traps.
    if exists(EXTENSIONS)? {
        for name in sorted(fs.read_dir(EXTENSIONS.as_bytes())?) {
            let path = format!("{EXTENSIONS}/{name}");
            let target = match fs.stat(path.as_bytes())? {
                Some(st) if st.kind == Kind::Symlink => {
                    String::from_utf8_lossy(&fs.read_link(path.as_bytes())?).into_owned()
                }
                _ => path.clone(),
            };
            // /usr (USR-A) is not ROOT: links there are Flatcar's own.
            if target.starts_with('/') && !target.starts_with("/usr/") && !exists(&target)? {
                problems.push((
                    path.clone(),
                    format!("links to {target}, which is not in ROOT"),
                ));
            }
            node.sysexts.push(format!("{path} -> {target}"));
        }
    }
    if let Some(conf) = read(fs, ENABLED_SYSEXT)? {
        let text = String::from_utf8_lossy(&conf).into_owned();
        node.flatcar_sysexts_enabled = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('-'))
            .map(str::to_string)
            .collect();
    }
    if exists(FLATCAR_SYSEXT)? {
        node.flatcar_sysexts_baked = sorted(fs.read_dir(FLATCAR_SYSEXT.as_bytes())?);
    }
    if !node.flatcar_sysexts_enabled.is_empty() {
        node.flatcar_version = image::usr_version(image, layout).ok();
    }
    for name in &node.flatcar_sysexts_enabled {
        let baked = match &node.flatcar_version {
            Some(v) => node
                .flatcar_sysexts_baked
                .contains(&format!("flatcar-{name}-{v}.raw")),
            None => node
                .flatcar_sysexts_baked
                .iter()
                .any(|f| f.starts_with(&format!("flatcar-{name}-"))),
        };
        if !baked && air_gapped {
            problems.push((
                ENABLED_SYSEXT.into(),
                format!(
                    "lists {name}, but {FLATCAR_SYSEXT}/flatcar-{name}-{}.raw is not baked: the first boot downloads it (--flatcar-sysext)",
                    node.flatcar_version.as_deref().unwrap_or("VERSION")
                ),
            ));
        }
    }
    if exists(UNITS)? {
        for dir in sorted(fs.read_dir(UNITS.as_bytes())?) {
            if !(dir.ends_with(".wants") || dir.ends_with(".requires") || dir.ends_with(".upholds"))
            {
                continue;
            }
            let d = format!("{UNITS}/{dir}");
            if fs.stat(d.as_bytes())?.is_none_or(|s| s.kind != Kind::Dir) {
                continue;
            }
            for name in sorted(fs.read_dir(d.as_bytes())?) {
                let path = format!("{d}/{name}");
                if fs
                    .stat(path.as_bytes())?
                    .is_some_and(|s| s.kind == Kind::Symlink)
                {
                    let target =
                        String::from_utf8_lossy(&fs.read_link(path.as_bytes())?).into_owned();
                    if target.starts_with("/etc/") && !exists(&target)? {
                        problems.push((
                            path.clone(),
                            format!("links to {target}, which is not in ROOT"),
                        ));
                    }
                }
                node.enabled_units.push(path);
            }
        }
    }
    let traps = image::traps(image, layout, fs)?;
    node.booted = traps.iter().map(|t| t.to_string()).collect();
    if !k8s_images.is_empty() {
        if !node.sysexts.iter().any(|s| s.contains("kubernetes")) {
            node.warnings.push(format!(
                "containerd's namespace k8s.io holds {} image(s), but no Kubernetes system extension is linked in {EXTENSIONS}: \
                 the kubelet comes from somewhere else, or first boot downloads it",
                k8s_images.len()
            ));
        }
        if air_gapped && !k8s_images.iter().any(|n| is_sandbox(n)) {
            problems.push((
                "/var/lib/containerd".into(),
                "containerd's namespace k8s.io has no sandbox (pause) image: the first pod pulls it (populate bakes the target containerd's own unless --sandbox-image none)".into(),
            ));
        }
    }
    if air_gapped {
        for t in &node.booted {
            problems.push(("(boot)".into(), t.clone()));
        }
        for r in &node.remote_sources {
            problems.push((
                "/oem".into(),
                format!("an Ignition config fetches {r} at first boot: a network is needed"),
            ));
        }
    }
    Ok(node)
}

/// A pause image, by its repository's last component.
fn is_sandbox(name: &str) -> bool {
    let repo = name.split('@').next().unwrap_or(name);
    let repo = match repo.rfind(':') {
        Some(i) if !repo[i..].contains('/') => &repo[..i],
        _ => repo,
    };
    repo.rsplit('/').next() == Some("pause")
}

/// `WHAT: a, b, c` for each list that is not empty (the summary's and
/// `inspect`'s lines).
pub fn listed(lists: &[(&str, &Vec<String>)]) -> Vec<String> {
    lists
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(what, v)| format!("{what}: {}", v.join(", ")))
        .collect()
}

fn sorted(names: Vec<Vec<u8>>) -> Vec<String> {
    let mut v: Vec<String> = names
        .into_iter()
        .map(|n| String::from_utf8_lossy(&n).into_owned())
        .collect();
    v.sort();
    v
}

fn read(fs: &dyn FsRead, path: &str) -> Result<Option<Vec<u8>>> {
    match fs.stat(path.as_bytes())? {
        Some(_) => Ok(Some(fs.read_all(path.as_bytes())?)),
        None => Ok(None),
    }
}

impl Node {
    /// Lines for `inspect`'s table.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "ROOT: partition {}; boots {}",
            self.root_partition,
            match self.boot {
                Some(crate::disk::Boot::Uki) => "a unified kernel image",
                _ => "with GRUB",
            }
        )];
        out.extend(listed(&[
            ("ignition", &self.ignition),
            ("kernel arguments", &self.kernel_args),
            ("system extensions", &self.sysexts),
            ("Flatcar extensions enabled", &self.flatcar_sysexts_enabled),
            ("Flatcar extensions baked", &self.flatcar_sysexts_baked),
            ("enabled units", &self.enabled_units),
            ("booted", &self.booted),
            ("fetched at first boot", &self.remote_sources),
        ]));
        for w in &self.warnings {
            out.push(format!("warning: {w}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_images() {
        for yes in [
            "registry.k8s.io/pause:3.10",
            "127.0.0.1:5000/pause:3.8",
            "pause",
            "k8s.gcr.io/pause@sha256:00",
        ] {
            assert!(is_sandbox(yes), "{yes}");
        }
        for no in [
            "registry.k8s.io/kube-proxy:v1.33.0",
            "pause.io/x:1",
            "a/paused:1",
        ] {
            assert!(!is_sandbox(no), "{no}");
        }
    }
}
