//! The ext4 side: checking that a filesystem is one we may write, and
//! writing a tar stream into it through libext2fs (no root, no mount).

mod archive;
pub mod estimate;
mod ffi;
mod untar;
mod writer;

use std::io::Read;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context, Result};

pub use estimate::Need;
pub use untar::{estimate_tar, estimate_tar_file, Rewrite};
pub use writer::{components, Stats};

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

/// Opens the filesystem at `offset` in `image` read-only and checks that it
/// is an ext4 labelled `label` that can be written safely.
pub fn inspect(image: &Path, offset: u64, label: &str) -> Result<FsSummary> {
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
             Writing would bypass the journal; run `e2fsck -f '{}?offset={offset}'` first, or start from a fresh image",
            image.display()
        );
    }
    if info.state & STATE_ERROR != 0 || info.state & STATE_VALID == 0 || info.orphans_present {
        bail!(
            "the {label} filesystem is not clean (errors, orphans or not unmounted cleanly); run `e2fsck -f '{}?offset={offset}'` first",
            image.display()
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
/// the filesystem at `offset` in `image`. On failure the filesystem is left
/// consistent, with the entries before the failing one written.
pub fn write_tar(
    image: &Path,
    offset: u64,
    target: &[u8],
    input: impl Read,
    cancel: Option<&AtomicBool>,
    rewrite: Option<&Rewrite<'_>>,
) -> Result<Stats> {
    let fs = ffi::Fs::open(image, offset, true).with_context(|| {
        format!(
            "opening the filesystem at byte offset {offset} of {} for writing",
            image.display()
        )
    })?;
    let mut w = writer::TreeWriter::new(fs, cancel);
    let written = w
        .set_target(target)
        .and_then(|()| untar::write_tar(input, &mut w, rewrite));
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
pub fn exists(image: &Path, offset: u64, path: &str) -> Result<bool> {
    view(image, offset)?
        .exists(path)
        .with_context(|| format!("looking up {path} in {}", image.display()))
}

/// The content of the regular file `path`, if there is one.
pub fn read_file(image: &Path, offset: u64, path: &str) -> Result<Option<Vec<u8>>> {
    let fs = view(image, offset)?;
    if !fs
        .exists(path)
        .with_context(|| format!("looking up {path}"))?
    {
        return Ok(None);
    }
    Ok(Some(fs.read(path).with_context(|| {
        format!("reading {path} from {}", image.display())
    })?))
}

/// The names in directory `path` ("." and ".." left out).
pub fn list_dir(image: &Path, offset: u64, path: &str) -> Result<Vec<String>> {
    let fs = view(image, offset)?;
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

fn run_tool(cmd: &str, args: &[String], ok_codes: &[i32]) -> Result<()> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd} (install e2fsprogs)"))?;
    let code = out.status.code().unwrap_or(-1);
    if !ok_codes.contains(&code) {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let tail: Vec<&str> = text
            .lines()
            .rev()
            .take(10)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!(
            "{cmd} {} failed (exit code {code}):\n{}",
            args.join(" "),
            tail.join("\n")
        );
    }
    Ok(())
}

/// Grows the filesystem at `offset` in `image` to `blocks` blocks with
/// e2fsprogs (e2fsck -fp first, as resize2fs requires a checked fs).
pub fn resize(image: &Path, offset: u64, blocks: u64) -> Result<()> {
    let dev = format!("{}?offset={offset}", image.display());
    // e2fsck: 0 = clean, 1 = errors fixed.
    run_tool("e2fsck", &["-fp".into(), dev.clone()], &[0, 1])?;
    run_tool("resize2fs", &[dev, blocks.to_string()], &[0])
}
