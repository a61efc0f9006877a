//! The rest of an air-gapped node's image, beside the image stores, as
//! Flatcar's guide to customizing an image names it: Ignition configs and
//! kernel arguments on OEM (btrfs, `disk::btrfs`), files on the EFI system
//! partition (vfat, `disk::vfat`), files, enabled units and system
//! extensions in ROOT (ext4); and the refusal of an image that was booted.
//!
//! Three steps, each with its contract: [`check_local`] reads and checks
//! every host input (nothing of the disk); [`check_disk`] checks them
//! against the disk image (its layout, version, platform, what ROOT, OEM
//! and the ESP hold) and writes nothing; [`apply`] writes, OEM first (the
//! one most likely to fail, on a full partition), then the ESP, then ROOT.

pub mod grub;
pub mod ignition;
pub mod image;
pub mod survey;
pub mod sysext;
pub mod unit;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::disk::ext4;
use crate::disk::vfat::{self, Esp};
use crate::disk::{btrfs, layout, Boot, Layout};
use crate::platform::Platform;
use image::Trap;

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
enum Item {
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
    fn dest(&self) -> &[u8] {
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
struct IgnitionFile {
    dest: &'static str,
    flag: String,
    bytes: Vec<u8>,
    remote: Vec<String>,
    version: String,
}

/// A system extension, read and checked.
#[derive(Debug, Clone)]
struct Sysext {
    src: PathBuf,
    /// Its file name, as placed.
    file: String,
    name: String,
    release: sysext::Release,
    size: u64,
}

/// Every host input, read and checked ([`check_local`]).
#[derive(Debug, Clone, Default)]
pub struct Plan {
    ignition: Vec<IgnitionFile>,
    kernel_args: Vec<String>,
    oem_files: Vec<FileArg>,
    esp: Vec<Item>,
    root: Vec<Item>,
    units: Vec<String>,
    sysexts: Vec<Sysext>,
    flatcar_sysexts: Vec<Sysext>,
    booted: Booted,
}

impl Plan {
    fn writes_oem(&self) -> bool {
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
    let root_ids = ignition::Root {
        fs_label: layout::ROOT_LABEL,
        part_label: layout::ROOT_LABEL,
        fs_uuid: None,
        part_uuid: None,
    };
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
    layout: Layout,
    /// The Flatcar version of USR-A (VERSION_ID), when read.
    version: Option<String>,
    /// What `--enable-unit` links: (link, target).
    links: Vec<(String, String)>,
    /// What makes the image a booted one, each with how to undo it.
    traps: Vec<Trap>,
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
    }
    // A config that wipes ROOT by its partition UUID, known only now.
    for i in &plan.ignition {
        let root = ignition::Root {
            fs_label: layout::ROOT_LABEL,
            part_label: layout::ROOT_LABEL,
            fs_uuid: None,
            part_uuid: Some(&layout.root.uuid),
        };
        ignition::check(&i.bytes, &i.flag, &root)?;
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
    if !plan.esp.is_empty() && esp.is_none() {
        bail!("--esp-file: {disk} has no EFI system partition with a FAT filesystem");
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
    // Extensions: the platform, and Flatcar's the very version.
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
        false => Some(image::usr_version(image, &layout)?),
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
    // Units: their files come with --root-file, or are in ROOT already.
    let mut links = vec![];
    for u in &plan.units {
        let template = match u.split_once('@') {
            Some((p, rest)) if !rest.starts_with('.') => {
                format!("{p}@.{}", rest.rsplit_once('.').map_or("", |(_, s)| s))
            }
            _ => u.clone(),
        };
        let (path, text) = find_unit(plan, &fs, u, &template)?;
        let install = unit::parse_install(&text)
            .with_context(|| format!("--enable-unit {u}: reading {path}"))?
            .with_context(|| {
                format!("--enable-unit {u}: {path} has no [Install] section naming what wants it (WantedBy=, RequiredBy=, Alias=): systemctl enable would do nothing; add one, e.g. [Install] WantedBy=multi-user.target")
            })?;
        links.extend(
            unit::enable_links(u, &path, &install).with_context(|| format!("--enable-unit {u}"))?,
        );
    }
    Ok(Facts {
        layout,
        version,
        links,
        traps,
    })
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
fn root_items(plan: &Plan, facts: &Facts) -> Vec<Item> {
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
        let mut out = vec![];
        let mut line = |what: &str, v: &[String]| {
            if !v.is_empty() {
                out.push(format!("{what}: {}", v.join(", ")));
            }
        };
        line("ignition", &self.ignition);
        line("kernel arguments", &self.kernel_args);
        line("OEM files", &self.oem_files);
        line("ESP files", &self.esp_files);
        line("enabled units", &self.unit_links);
        line("system extensions", &self.sysexts);
        line("Flatcar extensions", &self.flatcar_sysexts);
        line("reset (--reset-first-boot)", &self.reset);
        line("warning: OEM root xattrs not kept", &self.oem_lost_xattrs);
        line("warning: fetched at first boot", &self.remote_sources);
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
        let rebuilt = btrfs::rebuild(image, oem.offset, oem.size, &adds)
            .context("writing the OEM partition")?;
        report.oem_lost_xattrs = rebuilt.lost_root_xattrs;
    }
    let reset_flag = plan.booted == Booted::Reset && facts.traps.contains(&Trap::NoFirstBootFlag);
    if !plan.esp.is_empty() || reset_flag {
        let part = facts
            .layout
            .esp
            .as_ref()
            .context("no EFI system partition")?;
        let need: u64 = plan
            .esp
            .iter()
            .map(|i| match i {
                Item::File { size, .. } => *size,
                _ => 0,
            })
            .sum();
        let free = Esp::open(image, part)?.free_bytes()?;
        if need > free {
            bail!(
                "--esp-file: the files take {}, the EFI system partition has {} free",
                crate::hostfs::human(need),
                crate::hostfs::human(free)
            );
        }
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
        vfat::write_files(image, part, &files)?;
        if reset_flag {
            let said = format!(
                "put the first-boot flag {} back on the ESP",
                image::FIRST_BOOT
            );
            eprintln!("--reset-first-boot: {said}");
            report.reset.push(said);
        }
    }
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
        return Ok(report);
    }
    let mut fs = root.open_write(None)?;
    let written = (|| {
        for p in &resets {
            fs.remove_tree(p)?;
            let said = format!("removed {p} from ROOT");
            eprintln!("--reset-first-boot: {said}");
            report.reset.push(said);
        }
        if !sysext_names.is_empty() {
            let conf = "/etc/flatcar/enabled-sysext.conf";
            let old = fs.read_if_exists(conf)?.unwrap_or_default();
            let text = enabled_sysext(&old, &sysext_names);
            let mut attrs = crate::tar::Attrs::root_owned(0o644);
            attrs.mtime = fs.stamp();
            fs.write_file(conf, &text, &attrs)?;
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
        let stats = stats?;
        fed?;
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
    Ok(report)
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
