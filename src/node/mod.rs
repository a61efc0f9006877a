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
mod plan;
pub mod survey;
pub mod sysext;
pub mod unit;
mod write;

pub use plan::{
    check_disk, check_local, root_need, Booted, Config, Facts, FileArg, Plan, SysextArg,
};
pub use write::{apply, Report};
