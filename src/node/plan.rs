//! The node's inputs read and checked: [`check_local`] (the host's files,
//! before the disk is read) and [`check_disk`] (against the disk image),
//! and what ROOT will take ([`root_need`]). Nothing is written here.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::image::{self, Trap};
use super::{grub, ignition, sysext, unit};
use crate::disk::ext4;
use crate::disk::vfat::Esp;
use crate::disk::{btrfs, Boot, Layout};
use crate::platform::Platform;

/// What to do with an image that was booted before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Booted {
    /// Refuse it, naming each trap (the default).
    #[default]
    Refuse,
    /// Bake anyway (`--allow-booted`), with a warning.
    Allow,
    /// Undo the known traps (`--reset-first-boot`).
    Reset,
}

/// A host file or directory and where it goes (`SRC:DEST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileArg {
    pub src: PathBuf,
    pub dest: String,
}

impl FileArg {
    /// Parses `SRC:DEST`: DEST is absolute, and the last `:/` splits (a
    /// SRC may hold ':').
    pub fn parse(s: &str) -> std::result::Result<FileArg, String> {
        let Some(i) = s.rfind(":/") else {
            return Err(format!(
                "{s:?}: give SRC:DEST, DEST an absolute path in the partition (e.g. ./kubelet.service:/etc/systemd/system/kubelet.service)"
            ));
        };
        let (src, dest) = (&s[..i], &s[i + 1..]);
        if src.is_empty() {
            return Err(format!("{s:?}: SRC (before ':') is empty"));
        }
        if dest.split('/').any(|c| c == ".." || c == ".") {
            return Err(format!("{s:?}: DEST may hold no '.' or '..' component"));
        }
        Ok(FileArg {
            src: src.into(),
            dest: dest.trim_end_matches('/').to_string(),
        })
    }
}

/// A system extension to bake (`--sysext FILE[:NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysextArg {
    pub path: PathBuf,
    pub name: Option<String>,
}

impl SysextArg {
    /// `FILE` or `FILE:NAME`; a FILE whose name holds ':' is taken whole
    /// when it exists.
    pub fn parse(s: &str) -> std::result::Result<SysextArg, String> {
        if Path::new(s).exists() {
            return Ok(SysextArg {
                path: s.into(),
                name: None,
            });
        }
        match s.rsplit_once(':') {
            Some((path, name)) if !name.contains('/') && !name.is_empty() => Ok(SysextArg {
                path: path.into(),
                name: Some(name.to_string()),
            }),
            _ => Ok(SysextArg {
                path: s.into(),
                name: None,
            }),
        }
    }
}

/// What to bake beside the stores. Empty: nothing of this module runs but
/// the booted check.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `--ignition`, `--ignition-base`, `--ignition-default`: (OEM path,
    /// host file, flag).
    pub ignition: Vec<(&'static str, PathBuf, &'static str)>,
    pub kernel_args: Vec<String>,
    pub oem_files: Vec<FileArg>,
    pub esp_files: Vec<FileArg>,
    pub root_files: Vec<FileArg>,
    pub enable_units: Vec<String>,
    pub sysexts: Vec<SysextArg>,
    pub flatcar_sysexts: Vec<PathBuf>,
    pub booted: Booted,
}

/// One entry of a host tree, with its place in the partition.
#[derive(Debug, Clone)]
pub(super) enum Item {
    Dir {
        dest: Vec<u8>,
        mode: u32,
        mtime: i64,
    },
    File {
        src: PathBuf,
        dest: Vec<u8>,
        mode: u32,
        size: u64,
        mtime: i64,
    },
    Symlink {
        dest: Vec<u8>,
        target: Vec<u8>,
        mtime: i64,
    },
}

impl Item {
    pub(super) fn dest(&self) -> &[u8] {
        match self {
            Item::Dir { dest, .. } | Item::File { dest, .. } | Item::Symlink { dest, .. } => dest,
        }
    }
}

/// The entries of host `src` (a file, a symlink or a directory, whose
/// content goes under `dest`; the directory itself is not copied, so an
/// existing `dest` keeps its owner and mode), in name order.
fn walk(src: &Path, dest: &[u8], flag: &str, top: bool, out: &mut Vec<Item>) -> Result<()> {
    let md = std::fs::symlink_metadata(src)
        .with_context(|| format!("{flag} {}: cannot read it", src.display()))?;
    let ft = md.file_type();
    let mode = md.permissions().mode() & 0o7777;
    let mtime = md.mtime();
    if ft.is_dir() {
        if !top {
            out.push(Item::Dir {
                dest: dest.to_vec(),
                mode,
                mtime,
            });
        }
        let mut names: Vec<_> = std::fs::read_dir(src)
            .with_context(|| format!("{flag} {}: listing it", src.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("{flag} {}: listing it", src.display()))?;
        names.sort();
        for name in names {
            let mut d = dest.to_vec();
            d.push(b'/');
            d.extend_from_slice(name.as_bytes());
            walk(&src.join(&name), &d, flag, false, out)?;
        }
    } else if ft.is_file() {
        out.push(Item::File {
            src: src.to_path_buf(),
            dest: dest.to_vec(),
            mode,
            size: md.len(),
            mtime,
        });
    } else if ft.is_symlink() {
        let target = std::fs::read_link(src)
            .with_context(|| format!("{flag} {}: reading the link", src.display()))?;
        out.push(Item::Symlink {
            dest: dest.to_vec(),
            target: target.as_os_str().as_bytes().to_vec(),
            mtime,
        });
    } else {
        bail!(
            "{flag} {}: only files, directories and symbolic links are copied (this is a device, FIFO or socket)",
            src.display()
        );
    }
    Ok(())
}

/// An Ignition config to write to OEM.
#[derive(Debug, Clone)]
pub(super) struct IgnitionFile {
    pub(super) dest: &'static str,
    pub(super) flag: String,
    pub(super) bytes: Vec<u8>,
    pub(super) remote: Vec<String>,
    pub(super) version: String,
}

/// A system extension, read and checked.
#[derive(Debug, Clone)]
pub(super) struct Sysext {
    pub(super) src: PathBuf,
    /// Its file name, as placed.
    pub(super) file: String,
    pub(super) name: String,
    pub(super) release: sysext::Release,
    pub(super) size: u64,
}

/// Every host input, read and checked ([`check_local`]).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub(super) ignition: Vec<IgnitionFile>,
    pub(super) kernel_args: Vec<String>,
    pub(super) oem_files: Vec<FileArg>,
    pub(super) esp: Vec<Item>,
    pub(super) root: Vec<Item>,
    pub(super) units: Vec<String>,
    pub(super) sysexts: Vec<Sysext>,
    pub(super) flatcar_sysexts: Vec<Sysext>,
    pub(super) booted: Booted,
}

impl Plan {
    pub(super) fn writes_oem(&self) -> bool {
        !self.ignition.is_empty() || !self.kernel_args.is_empty() || !self.oem_files.is_empty()
    }
}

/// Reads and checks every host input of `cfg`: files there, Ignition
/// configs valid and not wiping ROOT, kernel arguments GRUB can hold, unit
/// names, each system extension's release. Reads nothing of the disk.
pub fn check_local(cfg: &Config) -> Result<Plan> {
    let mut plan = Plan {
        booted: cfg.booted,
        kernel_args: cfg.kernel_args.clone(),
        oem_files: cfg.oem_files.clone(),
        units: cfg.enable_units.clone(),
        ..Plan::default()
    };
    let root_ids = ignition::Root::flatcar(None);
    for (dest, path, flag) in &cfg.ignition {
        let what = format!("{flag} {}", path.display());
        let bytes = std::fs::read(path).with_context(|| format!("{what}: cannot read it"))?;
        let checked = ignition::check(&bytes, &what, &root_ids)?;
        plan.ignition.push(IgnitionFile {
            dest,
            flag: what,
            bytes,
            remote: checked.remote,
            version: checked.version,
        });
    }
    for arg in &cfg.kernel_args {
        grub::check_arg(arg).with_context(|| format!("--kernel-arg {arg:?}"))?;
    }
    for f in &cfg.oem_files {
        std::fs::symlink_metadata(&f.src)
            .with_context(|| format!("--oem-file {}: cannot read it", f.src.display()))?;
    }
    for f in &cfg.esp_files {
        let mut items = vec![];
        walk(&f.src, f.dest.as_bytes(), "--esp-file", true, &mut items)?;
        if let Some(Item::Symlink { dest, .. }) =
            items.iter().find(|i| matches!(i, Item::Symlink { .. }))
        {
            bail!(
                "--esp-file {}: {} is a symbolic link, which FAT cannot hold",
                f.src.display(),
                dest.escape_ascii()
            );
        }
        plan.esp.extend(items);
    }
    for f in &cfg.root_files {
        walk(
            &f.src,
            f.dest.as_bytes(),
            "--root-file",
            true,
            &mut plan.root,
        )?;
    }
    for u in &cfg.enable_units {
        unit::check_name(u).with_context(|| format!("--enable-unit {u:?}"))?;
    }
    for s in &cfg.sysexts {
        plan.sysexts
            .push(read_sysext(&s.path, s.name.as_deref(), "--sysext")?);
    }
    for p in &cfg.flatcar_sysexts {
        let s = read_sysext(p, None, "--flatcar-sysext")?;
        if s.release.get("ID") != Some("flatcar") {
            bail!(
                "--flatcar-sysext {}: its extension-release says ID={}, not ID=flatcar: it is not one of Flatcar's own extensions (bake it with --sysext)",
                p.display(),
                s.release.get("ID").unwrap_or("(none)")
            );
        }
        plan.flatcar_sysexts.push(s);
    }
    Ok(plan)
}

fn read_sysext(path: &Path, name: Option<&str>, flag: &str) -> Result<Sysext> {
    let what = format!("{flag} {}", path.display());
    let md = std::fs::metadata(path).with_context(|| format!("{what}: cannot read it"))?;
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{what}: its file name is not UTF-8"))?
        .to_string();
    let stem = file.strip_suffix(".raw").unwrap_or(&file);
    let release = sysext::read_release(path, name.or(Some(stem)))
        .with_context(|| format!("{what}: reading its extension-release"))?;
    let name = match (name, flag) {
        (Some(n), _) => n.to_string(),
        // Flatcar's: extension-release.flatcar-NAME.
        (None, "--flatcar-sysext") => release
            .name
            .strip_prefix("flatcar-")
            .unwrap_or(&release.name)
            .to_string(),
        (None, _) => release.name.clone(),
    };
    if name.is_empty() || name.contains('/') {
        bail!("{what}: {name:?} is no extension name");
    }
    Ok(Sysext {
        src: path.to_path_buf(),
        file,
        name,
        release,
        size: md.len(),
    })
}

/// What the disk image told about the plan ([`check_disk`]).
#[derive(Debug, Clone)]
pub struct Facts {
    pub(super) layout: Layout,
    /// The Flatcar version of USR-A (VERSION_ID), when read.
    pub(super) version: Option<String>,
    /// What `--enable-unit` links: (link, target).
    pub(super) links: Vec<(String, String)>,
    /// What makes the image a booted one, each with how to undo it.
    pub(super) traps: Vec<Trap>,
}

/// Checks the plan against the raw disk image `image` (its ROOT must be
/// readable): the layout has the partitions the plan writes, kernel
/// arguments have a `grub.cfg` to go to, extensions fit the platform and
/// version, units have files, and the image was not booted. Writes
/// nothing.
pub fn check_disk(
    plan: &Plan,
    image: &Path,
    layout: &Layout,
    platform: &Platform,
) -> Result<Facts> {
    let layout = layout.clone();
    let disk = image.display();
    if plan.writes_oem() {
        check_oem(plan, image, &layout)?;
    }
    // A config that wipes ROOT by its partition UUID, known only now.
    for i in &plan.ignition {
        ignition::check(
            &i.bytes,
            &i.flag,
            &ignition::Root::flatcar(Some(&layout.root.uuid)),
        )?;
    }
    if !plan.kernel_args.is_empty() && layout.boot == Boot::Uki {
        bail!(
            "--kernel-arg: {disk} boots a unified kernel image (ROOT is partition {} of the Discoverable Partitions layout): \
             its kernel command line is signed into the image and no grub.cfg is read; set kernel arguments when the UKI is built",
            layout.root.number
        );
    }
    let fs = ext4::Root::new(image, layout.root.offset).open_read()?;
    // Booted: machine-id, host keys, the flag.
    let traps = image::traps(image, &layout, &fs)?;
    let esp = layout.esp.as_ref().and_then(|p| Esp::open(image, p).ok());
    if !plan.esp.is_empty() {
        let Some(esp) = &esp else {
            bail!("--esp-file: {disk} has no EFI system partition with a FAT filesystem");
        };
        let need: u64 = plan
            .esp
            .iter()
            .map(|i| match i {
                Item::File { size, .. } => *size,
                _ => 0,
            })
            .sum();
        let free = esp.free_bytes()?;
        if need > free {
            bail!(
                "--esp-file: the files take {}, the EFI system partition of {disk} has {} free",
                crate::hostfs::human(need),
                crate::hostfs::human(free)
            );
        }
    }
    if !traps.is_empty() {
        let list = traps
            .iter()
            .map(|t| format!("  - {t}"))
            .collect::<Vec<_>>()
            .join("\n");
        match plan.booted {
            Booted::Refuse => bail!(
                "{disk} was booted before (Flatcar's guide: never boot an image before customizing it):\n{list}\n\
                 start again from the image as released, or pass --reset-first-boot to undo these, or --allow-booted to bake anyway"
            ),
            Booted::Allow => eprintln!("warning: {disk} was booted before (--allow-booted):\n{list}"),
            Booted::Reset => {}
        }
    }
    let version = check_sysexts(plan, image, &layout, platform)?;
    let links = unit_links(plan, &fs)?;
    Ok(Facts {
        layout,
        version,
        links,
        traps,
    })
}

/// OEM: there, btrfs, and with room for what is added.
fn check_oem(plan: &Plan, image: &Path, layout: &Layout) -> Result<()> {
    let disk = image.display();
    let Some(oem) = &layout.oem else {
        bail!("{disk} has no OEM partition (GPT label OEM): the Ignition configs, kernel arguments and --oem-file have nowhere to go");
    };
    let Some(info) = btrfs::probe(image, oem.offset)? else {
        bail!(
            "the OEM partition (partition {}) of {disk} holds no btrfs filesystem: the tool writes Flatcar's btrfs OEM only",
            oem.number
        );
    };
    // What is added, against what is free (a tenth kept for metadata):
    // refused here, before anything is written.
    let mut adding: u64 = plan.ignition.iter().map(|i| i.bytes.len() as u64).sum();
    for f in &plan.oem_files {
        let mut items = vec![];
        walk(&f.src, f.dest.as_bytes(), "--oem-file", true, &mut items)?;
        adding += items
            .iter()
            .map(|i| match i {
                Item::File { size, .. } => *size,
                _ => 0,
            })
            .sum::<u64>();
    }
    let room = (info.total_bytes - info.total_bytes / 10).saturating_sub(info.bytes_used);
    if adding > room {
        bail!(
            "the OEM partition (partition {}) of {disk} is too small: its btrfs holds {} of {}, \
             and the files to add take {} (about {} can be added)",
            oem.number,
            crate::hostfs::human(info.bytes_used),
            crate::hostfs::human(info.total_bytes),
            crate::hostfs::human(adding),
            crate::hostfs::human(room)
        );
    }
    Ok(())
}

/// Extensions: the platform, and Flatcar's the very version (returned,
/// when there is one of Flatcar's).
fn check_sysexts(
    plan: &Plan,
    image: &Path,
    layout: &Layout,
    platform: &Platform,
) -> Result<Option<String>> {
    let disk = image.display();
    let arch = sysext::systemd_arch(&platform.architecture);
    for s in plan.sysexts.iter().chain(&plan.flatcar_sysexts) {
        let what = format!("{} ({})", s.src.display(), s.name);
        if let (Some(want), Some(have)) = (arch, s.release.get("ARCHITECTURE")) {
            if want != have {
                bail!("{what}: ARCHITECTURE={have}, but {disk} is a {platform} image ({want})");
            }
        }
        match s.release.get("ID") {
            Some("_any") | Some("flatcar") => {}
            Some(id) => bail!(
                "{what}: ID={id} in its extension-release: systemd-sysext on Flatcar takes only ID=flatcar or ID=_any"
            ),
            None => bail!("{what}: its extension-release has no ID="),
        }
    }
    let version = match plan.flatcar_sysexts.is_empty() {
        true => None,
        false => Some(image::usr_version(image, layout)?),
    };
    for s in &plan.flatcar_sysexts {
        let have = s.release.get("VERSION_ID").unwrap_or("(none)");
        let want = version.as_deref().unwrap_or_default();
        if have != want {
            bail!(
                "--flatcar-sysext {}: it is for Flatcar {have}, but {disk} is Flatcar {want} (/usr/lib/os-release on USR-A): \
                 Flatcar's extensions are signed by a key of their own build; take flatcar-{}.raw of release {want}",
                s.src.display(),
                s.name
            );
        }
    }
    Ok(version)
}

/// Units: the links `systemctl enable` makes; their files come with
/// --root-file, or are in ROOT already.
fn unit_links(plan: &Plan, fs: &ext4::Fs) -> Result<Vec<(String, String)>> {
    let mut links = vec![];
    for u in &plan.units {
        let template = match u.split_once('@') {
            Some((p, rest)) if !rest.starts_with('.') => {
                format!("{p}@.{}", rest.rsplit_once('.').map_or("", |(_, s)| s))
            }
            _ => u.clone(),
        };
        let (path, text) = find_unit(plan, fs, u, &template)?;
        let install = unit::parse_install(&text)
            .with_context(|| format!("--enable-unit {u}: reading {path}"))?
            .with_context(|| {
                format!("--enable-unit {u}: {path} has no [Install] section naming what wants it (WantedBy=, RequiredBy=, Alias=): systemctl enable would do nothing; add one, e.g. [Install] WantedBy=multi-user.target")
            })?;
        links.extend(
            unit::enable_links(u, &path, &install).with_context(|| format!("--enable-unit {u}"))?,
        );
    }
    Ok(links)
}

/// Where systemd looks for units in ROOT (/usr is USR, not ROOT).
const UNIT_DIRS: [&str; 2] = ["/etc/systemd/system", "/etc/systemd/user"];

/// The file of unit `u` (or of its template): given with --root-file, or
/// in ROOT.
fn find_unit(plan: &Plan, fs: &ext4::Fs, u: &str, template: &str) -> Result<(String, Vec<u8>)> {
    for name in [u, template] {
        for dir in UNIT_DIRS {
            let path = format!("{dir}/{name}");
            let given = plan.root.iter().rev().find_map(|i| match i {
                Item::File { src, dest, .. } if dest == path.as_bytes() => Some(src),
                _ => None,
            });
            if let Some(src) = given {
                let text = std::fs::read(src)
                    .with_context(|| format!("--enable-unit {u}: reading {}", src.display()))?;
                return Ok((path, text));
            }
            if let Some(text) = fs.read_if_exists(&path)? {
                return Ok((path, text));
            }
        }
    }
    bail!(
        "--enable-unit {u}: no unit file {u} in {} of ROOT, and none given: add it with --root-file ./{u}:/etc/systemd/system/{u}",
        UNIT_DIRS[0]
    )
}

/// What ROOT will take for the plan, in blocks of `block_size`.
pub fn root_need(plan: &Plan, facts: &Facts, block_size: u64) -> ext4::Need {
    let mut est = ext4::Estimator::new(block_size);
    for i in root_items(plan, facts) {
        let path = i.dest().strip_prefix(b"/").unwrap_or(i.dest()).to_vec();
        let item = match &i {
            Item::Dir { .. } => ext4::Item::Dir,
            Item::File { size, .. } => ext4::Item::File { size: *size },
            Item::Symlink { target, .. } => ext4::Item::Symlink {
                target_len: target.len(),
            },
        };
        est.add(&path, item, &[]);
    }
    // enabled-sysext.conf, rewritten.
    est.add(
        b"etc/flatcar/enabled-sysext.conf",
        ext4::Item::File { size: 4096 },
        &[],
    );
    est.finish()
}

/// Everything written into ROOT, in order.
pub(super) fn root_items(plan: &Plan, facts: &Facts) -> Vec<Item> {
    let mut items = plan.root.clone();
    for s in &plan.sysexts {
        let dest = format!("/opt/extensions/{}/{}", s.name, s.file);
        items.push(Item::File {
            src: s.src.clone(),
            dest: dest.clone().into_bytes(),
            mode: 0o644,
            size: s.size,
            mtime: 0,
        });
        items.push(Item::Symlink {
            dest: format!("/etc/extensions/{}.raw", s.name).into_bytes(),
            target: dest.into_bytes(),
            mtime: 0,
        });
    }
    if let Some(v) = &facts.version {
        for s in &plan.flatcar_sysexts {
            items.push(Item::File {
                src: s.src.clone(),
                dest: format!("/etc/flatcar/sysext/flatcar-{}-{v}.raw", s.name).into_bytes(),
                mode: 0o644,
                size: s.size,
                mtime: 0,
            });
        }
    }
    for (link, target) in &facts.links {
        items.push(Item::Symlink {
            dest: link.clone().into_bytes(),
            target: target.clone().into_bytes(),
            mtime: 0,
        });
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_args() {
        let f = FileArg::parse("./a:b.conf:/etc/a.conf").unwrap();
        assert_eq!(f.src, PathBuf::from("./a:b.conf"));
        assert_eq!(f.dest, "/etc/a.conf");
        assert!(FileArg::parse("relative:dest").is_err());
        assert!(FileArg::parse(":/x").is_err());
        assert!(FileArg::parse("a:/etc/../x").is_err());
        let s = SysextArg::parse("k.raw:kubernetes").unwrap();
        assert_eq!(s.name.as_deref(), Some("kubernetes"));
        assert_eq!(SysextArg::parse("/x/k.raw").unwrap().name, None);
    }
}
