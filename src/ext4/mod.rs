//! The ext4 side: checking that a filesystem is one we may write, and
//! writing a tar stream into it through libext2fs (no root, no mount).

mod estimate;
#[allow(unsafe_code)]
mod ffi;
pub(crate) mod read;
mod untar;
mod writer;

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

pub use estimate::{Estimator, Item, Need};
pub use untar::{estimate_tar, estimate_tar_file};
pub use writer::Stats;

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
    fn device(&self) -> String {
        format!("{}?offset={}", self.image.display(), self.offset)
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

const INCOMPAT_EXTENTS: u32 = 0x40;
/// Features whose on-disk rules this writer does not follow.
const INCOMPAT_REFUSED: &[(u32, &str)] = &[
    (0x8000, "inline_data"),
    (0x1_0000, "encrypt"),
    (0x2_0000, "casefold"),
];
const RO_COMPAT_REFUSED: &[(u32, &str)] =
    &[(0x100, "quota"), (0x200, "bigalloc"), (0x2000, "project")];
const STATE_VALID: u32 = 1;
const STATE_ERROR: u32 = 2;

fn format_uuid(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// Opens the filesystem `root` read-only and checks that it is an ext4
/// labelled `label` that can be written safely.
pub fn inspect(root: &Root, label: &str) -> Result<FsSummary> {
    let (image, offset) = (&root.image, root.offset);
    let fs = ffi::Fs::open(image, offset, false).with_context(|| {
        format!(
            "no usable ext4 filesystem at byte offset {offset} of {}",
            image.display()
        )
    })?;
    let info = fs.info();
    drop(fs);
    if info.feature_incompat & INCOMPAT_EXTENTS == 0 {
        bail!("the filesystem at byte offset {offset} is ext2/ext3, not ext4 (no extents feature)");
    }
    if info.label != label {
        bail!(
            "the filesystem at byte offset {offset} is labelled {:?}, not {label:?}: this is not Flatcar's ROOT",
            info.label
        );
    }
    if info.needs_recovery {
        bail!(
            "the {label} filesystem's journal needs recovery: the image was probably booted or not cleanly unmounted. \
             Writing would bypass the journal; run `e2fsck -f '{}'` first, or start from a fresh image",
            root.device()
        );
    }
    if info.state & STATE_ERROR != 0 || info.state & STATE_VALID == 0 || info.orphans_present {
        bail!(
            "the {label} filesystem is not clean (errors, orphans or not unmounted cleanly); run `e2fsck -f '{}'` first",
            root.device()
        );
    }
    for (bit, name) in INCOMPAT_REFUSED {
        if info.feature_incompat & bit != 0 {
            bail!("the {label} filesystem uses the ext4 feature {name}, which flatcar-preload cannot write");
        }
    }
    for (bit, name) in RO_COMPAT_REFUSED {
        if info.feature_ro_compat & bit != 0 {
            bail!("the {label} filesystem uses the ext4 feature {name}, which flatcar-preload cannot write");
        }
    }
    Ok(FsSummary {
        label: info.label,
        uuid: format_uuid(&info.uuid),
        block_size: info.block_size as u64,
        blocks: info.blocks_count,
        free_blocks: info.free_blocks,
        inodes: info.inodes_count as u64,
        free_inodes: info.free_inodes as u64,
        inode_size: info.inode_size as u64,
    })
}

/// Writes the tar stream `input` under `target` (an absolute directory) of
/// the filesystem `root`, stopping at the next entry or chunk once `cancel`
/// is cancelled. On failure the filesystem is left consistent, with the
/// entries before the failing one written.
pub fn write_tar(
    root: &Root,
    target: &[u8],
    input: impl Read,
    cancel: Option<&CancellationToken>,
) -> Result<Stats> {
    let fs = ffi::Fs::open(&root.image, root.offset, true)
        .with_context(|| format!("opening {root} for writing"))?;
    let mut w = writer::TreeWriter::new(fs, cancel);
    let written = w
        .set_target(target)
        .and_then(|()| untar::write_tar(input, &mut w));
    let closed = w.finish();
    let stats = written?;
    closed?;
    Ok(stats)
}

/// A read-only view of the filesystem at `offset` in `image` (ext4-view),
/// for reading back what was written.
pub fn view(image: &Path, offset: u64) -> Result<ext4_view::Ext4> {
    struct At(std::fs::File, u64);
    impl ext4_view::Ext4Read for At {
        fn read(
            &mut self,
            start: u64,
            dst: &mut [u8],
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
            use std::os::unix::fs::FileExt;
            self.0
                .read_exact_at(dst, self.1 + start)
                .map_err(Box::new)?;
            Ok(())
        }
    }
    let f = std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    ext4_view::Ext4::load(Box::new(At(f, offset))).with_context(|| {
        format!(
            "reading the filesystem at byte offset {offset} of {}",
            image.display()
        )
    })
}

/// Whether `path` (absolute) exists in the filesystem.
pub fn exists(root: &Root, path: &str) -> Result<bool> {
    view(&root.image, root.offset)?
        .exists(path)
        .with_context(|| format!("looking up {path} in {root}"))
}

/// The content of the regular file `path`, if there is one.
pub fn read_file(root: &Root, path: &str) -> Result<Option<Vec<u8>>> {
    let fs = view(&root.image, root.offset)?;
    if !fs
        .exists(path)
        .with_context(|| format!("looking up {path}"))?
    {
        return Ok(None);
    }
    Ok(Some(
        fs.read(path)
            .with_context(|| format!("reading {path} from {root}"))?,
    ))
}

/// The names in directory `path` ("." and ".." left out).
pub fn list_dir(root: &Root, path: &str) -> Result<Vec<String>> {
    let fs = view(&root.image, root.offset)?;
    let mut names = vec![];
    for e in fs
        .read_dir(path)
        .with_context(|| format!("listing {path}"))?
    {
        let name = e
            .with_context(|| format!("listing {path}"))?
            .file_name()
            .display()
            .to_string();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// Grows the filesystem `root` to `blocks` blocks with e2fsprogs
/// (e2fsck -fp first, as resize2fs requires a checked filesystem).
pub fn resize(root: &Root, blocks: u64) -> Result<()> {
    let dev = root.device();
    let missing = "install e2fsprogs";
    // e2fsck: 0 = clean, 1 = errors fixed.
    crate::command::run("e2fsck", &["-fp", &dev], &[0, 1], missing)?;
    crate::command::run("resize2fs", &[dev, blocks.to_string()], &[0], missing)
}
