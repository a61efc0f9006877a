//! The ext4 side, through libext2fs (no root, no mount): a filesystem in
//! an image opened once per phase ([`Fs`]), checked, read, and written from
//! tar streams and single files.

mod estimate;
#[allow(unsafe_code)]
mod ffi;
mod handle;
pub(crate) mod read;
#[cfg(test)]
pub(crate) mod testutil;
mod untar;
mod writer;

use std::path::PathBuf;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

pub use estimate::{Estimator, Item, Need};
pub use handle::{Fs, Mode};
pub use untar::{estimate_tar, estimate_tar_file};
pub use writer::{EntryKind, EntryMeta, HardLinks, Keep, Stats, Transform};

/// Where a filesystem lies: an image file and the byte offset of the
/// filesystem's first byte in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub image: PathBuf,
    pub offset: u64,
}

impl Root {
    pub fn new(image: impl Into<PathBuf>, offset: u64) -> Root {
        Root {
            image: image.into(),
            offset,
        }
    }

    /// The name e2fsprogs' tools take for it (`image?offset=N`).
    pub fn device(&self) -> String {
        format!("{}?offset={}", self.image.display(), self.offset)
    }

    /// Opens the filesystem read-only (the image file too), for a phase
    /// that only reads it.
    pub fn open_read(&self) -> Result<Fs> {
        Fs::open(self, Mode::Read, None)
    }

    /// Opens the filesystem for reading and writing; writes stop at the
    /// next entry or chunk once `cancel` is cancelled.
    pub fn open_write(&self, cancel: Option<&CancellationToken>) -> Result<Fs> {
        Fs::open(self, Mode::Write, cancel)
    }
}

impl std::fmt::Display for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the filesystem at byte offset {} of {}",
            self.offset,
            self.image.display()
        )
    }
}

/// What the superblock says about a filesystem.
#[derive(Debug, Clone)]
pub struct FsSummary {
    pub label: String,
    pub uuid: String,
    pub block_size: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub inodes: u64,
    pub free_inodes: u64,
    pub inode_size: u64,
}

impl FsSummary {
    pub fn free_bytes(&self) -> u64 {
        self.free_blocks * self.block_size
    }
    pub fn size_bytes(&self) -> u64 {
        self.blocks * self.block_size
    }
}

/// Grows the filesystem `root` to `blocks` blocks with e2fsprogs
/// (e2fsck -fp first, as resize2fs requires a checked filesystem).
/// They stamp the time the writes of the tool stamp (SOURCE_DATE_EPOCH,
/// else the filesystem's last write time): the same inputs, the same bytes.
pub fn resize(root: &Root, blocks: u64) -> Result<()> {
    let dev = root.device();
    let missing = "install e2fsprogs";
    let stamp = match handle::source_date_epoch()? {
        Some(t) => t,
        None => root.open_read()?.raw().written_at(),
    }
    .to_string();
    let env = [
        ("E2FSPROGS_FAKE_TIME", stamp.as_str()),
        ("E2FSCK_TIME", &stamp),
    ];
    // e2fsck: 0 = clean, 1 = errors fixed.
    crate::command::run_with("e2fsck", &["-fp", &dev], &[0, 1], missing, &env)?;
    crate::command::run_with("resize2fs", &[dev, blocks.to_string()], &[0], missing, &env)
}
