//! What the disk image says of itself beside the stores: the Flatcar
//! version on USR-A, and what a boot left in it (a Flatcar image must
//! never be booted before it is customized).

use std::path::Path;

use anyhow::{Context, Result};

use super::sysext;
use crate::disk::ext4;
use crate::disk::{btrfs, vfat::Esp, Layout};
use crate::fsread::FsRead;

/// A sign that the image was booted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trap {
    /// A file in ROOT (`/etc/machine-id`, an SSH host key).
    RootFile(String),
    /// The ESP lacks the first-boot flag.
    NoFirstBootFlag,
}

impl std::fmt::Display for Trap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trap::RootFile(p) if p == MACHINE_ID => write!(
                f,
                "ROOT has {p}: every node made from this image would share one machine ID"
            ),
            Trap::RootFile(p) => write!(
                f,
                "ROOT has the SSH host key {p}: every node would share it (sshd-keygen makes only missing ones)"
            ),
            Trap::NoFirstBootFlag => write!(
                f,
                "the EFI system partition has no {FIRST_BOOT} flag: Ignition would not run at first boot"
            ),
        }
    }
}

pub const MACHINE_ID: &str = "/etc/machine-id";
/// The first-boot flag on the ESP (GRUB then passes flatcar.first_boot).
pub const FIRST_BOOT: &str = "flatcar/first_boot";
pub const FIRST_BOOT_LEGACY: &str = "coreos/first_boot";
pub const SSH_DIR: &str = "/etc/ssh";

/// What a boot left in `image`: in ROOT (`fs`) and on the ESP (a FAT
/// one; an ESP that is not FAT cannot tell).
pub fn traps(image: &Path, layout: &Layout, fs: &dyn FsRead) -> Result<Vec<Trap>> {
    let mut traps = vec![];
    if fs.stat(MACHINE_ID.as_bytes())?.is_some() {
        traps.push(Trap::RootFile(MACHINE_ID.into()));
    }
    if fs.stat(SSH_DIR.as_bytes())?.is_some() {
        let mut keys: Vec<String> = fs
            .read_dir(SSH_DIR.as_bytes())?
            .into_iter()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .filter(|n| n.starts_with("ssh_host_") && n.ends_with("_key"))
            .collect();
        keys.sort();
        traps.extend(
            keys.into_iter()
                .map(|k| Trap::RootFile(format!("{SSH_DIR}/{k}"))),
        );
    }
    if let Some(esp) = layout.esp.as_ref().and_then(|p| Esp::open(image, p).ok()) {
        if !esp.exists(FIRST_BOOT)? && !esp.exists(FIRST_BOOT_LEGACY)? {
            traps.push(Trap::NoFirstBootFlag);
        }
    }
    Ok(traps)
}

/// VERSION_ID of `/usr/lib/os-release` on USR-A (btrfs on today's images,
/// ext2 on older ones).
pub fn usr_version(image: &Path, layout: &Layout) -> Result<String> {
    let disk = image.display();
    let usr = layout.usr_a.as_ref().with_context(|| {
        format!("{disk} has no USR-A partition to read the Flatcar version from")
    })?;
    let text = match btrfs::probe(image, usr.offset)? {
        Some(_) => btrfs::read_file(image, usr.offset, usr.size, "/lib/os-release")?,
        None => ext4::Root::new(image, usr.offset)
            .open_read()
            .and_then(|fs| fs.read_if_exists("/lib/os-release"))
            .ok()
            .flatten(),
    };
    let text = text.with_context(|| {
        format!("USR-A of {disk} has no readable /lib/os-release (/usr/lib/os-release at run time)")
    })?;
    sysext::parse_os_release(&text)
        .into_iter()
        .find(|(k, _)| k == "VERSION_ID")
        .map(|(_, v)| v)
        .with_context(|| format!("/usr/lib/os-release on USR-A of {disk} has no VERSION_ID"))
}
