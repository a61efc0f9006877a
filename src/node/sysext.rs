//! Reading the `extension-release` file of a systemd system extension
//! (`.raw`) without mounting it, so that an extension meant for another
//! architecture or another Flatcar release is refused before it is baked
//! into an image, rather than being silently skipped by
//! `systemd-sysext` on the first boot.
//!
//! Two kinds of images occur in Flatcar practice:
//!
//! * sysext-bakery extensions (Kubernetes, containerd, docker, ...): a bare
//!   squashfs (or, optionally, erofs) filesystem;
//! * Flatcar's own opt-in extensions (`flatcar-podman.raw`, ...), made by
//!   `systemd-repart --make-ddi=sysext`: a GPT disk image (DDI) whose root
//!   (or usr) partition holds an erofs filesystem, next to verity and
//!   signature partitions.
//!
//! Neither format can be read by the kernel without mounting, which needs
//! root; so the files are extracted with the user-space tools of
//! squashfs-tools (`unsquashfs`) and erofs-utils (`fsck.erofs`) into a
//! private temporary directory, and read from there.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// The on-disk format of a system extension image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A bare squashfs filesystem, as sysext-bakery makes by default.
    Squashfs,
    /// A bare erofs filesystem.
    Erofs,
    /// A GPT disk image (DDI) with an erofs root or usr partition, as
    /// `systemd-repart --make-ddi=sysext` makes for Flatcar's extensions.
    ErofsDdi,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Squashfs => "squashfs",
            Format::Erofs => "erofs",
            Format::ErofsDdi => "GPT disk image with an erofs partition",
        })
    }
}

/// The `extension-release` file of a system extension, as read from its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The format the image was found to be in.
    pub format: Format,
    /// the NAME of extension-release.NAME that was read
    pub name: String,
    /// KEY=VALUE fields, as os-release(5) parses them (quotes and escapes), in file order
    pub fields: Vec<(String, String)>,
}

impl Release {
    /// The value of `key`; the last one when the file repeats the key,
    /// because that is the one a shell sourcing the file would see.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Where systemd looks for the release file of a system extension.
const RELEASE_DIR: &str = "usr/lib/extension-release.d";

/// The prefix of release file names in [`RELEASE_DIR`].
const RELEASE_PREFIX: &str = "extension-release.";

/// Upper bound on a release file's size: a few lines are expected, and
/// anything much larger is not a release file worth holding in memory.
const MAX_RELEASE_BYTES: u64 = 64 * 1024;

/// How many symlinks are followed to the release file, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

/// The Discoverable Partitions types accepted as the filesystem of a DDI:
/// root and usr of the architectures Flatcar ships, root first because
/// `systemd-repart --make-ddi=sysext` makes a root partition.
const DDI_PARTITION_TYPES: &[(&str, &str)] = &[
    ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "root x86-64"),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "root arm64"),
    ("8484680C-9521-48C6-9C11-B0720656F69E", "usr x86-64"),
    ("B0E01050-EE5F-4390-949A-9101B17104E9", "usr arm64"),
];

/// erofs superblock magic, little-endian at byte 1024 of the filesystem.
const EROFS_MAGIC: [u8; 4] = 0xE0F5_E1E2u32.to_le_bytes();

/// Reads the extension-release of the sysext image at `path`; `name` the expected extension name when known (file name without .raw).
///
/// systemd reads `extension-release.<image name>`; when an image was
/// renamed (sysext-bakery publishes `NAME-VERSION-ARCH.raw`, whose release
/// file is `extension-release.NAME`) it accepts the single release file
/// present if that file is marked non-strict. This function does the same
/// without checking the mark: the exact name if present, else the only
/// `extension-release.*` file, else an error listing what is there.
pub fn read_release(path: &Path, name: Option<&str>) -> Result<Release> {
    read_release_with(&Tools::default(), path, name)
}

/// The external programs used; separate so tests can point them elsewhere
/// to see what a user without them is told.
struct Tools {
    unsquashfs: PathBuf,
    fsck_erofs: PathBuf,
}

impl Default for Tools {
    fn default() -> Self {
        Tools {
            unsquashfs: "unsquashfs".into(),
            fsck_erofs: "fsck.erofs".into(),
        }
    }
}

/// Where the filesystem of an image lies, as found by [`detect`].
#[derive(Debug)]
enum Layout {
    Squashfs,
    Erofs,
    /// The erofs partition `number` of a GPT disk image, `size` bytes at
    /// byte `offset`.
    ErofsDdi {
        number: u32,
        offset: u64,
        size: u64,
    },
}

/// [`read_release`] with the external programs taken from `tools`.
fn read_release_with(tools: &Tools, path: &Path, name: Option<&str>) -> Result<Release> {
    let layout = detect(path)?;
    // Private (0700) and removed on drop, whatever happens below.
    let tmp = tempfile::Builder::new()
        .prefix("flatcar-preload-sysext-")
        .tempdir()
        .context("creating a temporary directory to extract the extension's release file into (is TMPDIR writable?)")?;
    let root = tmp.path().join("root");
    let format = match layout {
        Layout::Squashfs => {
            unsquashfs(tools, path, &root, RELEASE_DIR)?;
            Format::Squashfs
        }
        Layout::Erofs => {
            fsck_erofs_extract(tools, path, &root)?;
            Format::Erofs
        }
        Layout::ErofsDdi {
            number,
            offset,
            size,
        } => {
            // fsck.erofs 1.5 has no offset option: hand it the partition alone.
            let part = tmp.path().join("partition.erofs");
            copy_range(path, offset, size, &part).with_context(|| {
                format!(
                    "copying partition {number} of {} to {}",
                    path.display(),
                    part.display()
                )
            })?;
            fsck_erofs_extract(tools, &part, &root)
                .with_context(|| format!("reading partition {number} of {}", path.display()))?;
            Format::ErofsDdi
        }
    };
    let chosen = choose_release(&root, name).with_context(|| {
        format!(
            "finding the release file of system extension {}",
            path.display()
        )
    })?;
    let rel = Path::new(RELEASE_DIR).join(format!("{RELEASE_PREFIX}{chosen}"));
    if format == Format::Squashfs {
        // Only the directory was extracted: when the release file is a
        // symlink, extract what it points to, link after link.
        // (`unsquashfs -follow-symlinks` of squashfs-tools 4.5 fails on it.)
        for _ in 0..MAX_SYMLINKS {
            let real = resolve_in_root(&root, &rel)?;
            if real.symlink_metadata().is_ok() {
                break;
            }
            let inside = real.strip_prefix(&root).unwrap_or(&real);
            let inside = inside.to_str().with_context(|| {
                format!(
                    "the release file's symlink points to a non-UTF-8 path {}",
                    inside.display()
                )
            })?;
            unsquashfs(tools, path, &root, inside)?;
            if real.symlink_metadata().is_err() {
                break;
            }
        }
    }
    let text = read_in_root(&root, &rel)
        .with_context(|| format!("reading /{} of {}", rel.display(), path.display()))?;
    Ok(Release {
        format,
        name: chosen,
        fields: parse_os_release(&text),
    })
}

/// Recognizes the image's format from its first bytes, and for a DDI finds
/// the partition to read.
fn detect(path: &Path) -> Result<Layout> {
    let mut file = File::open(path)
        .with_context(|| format!("opening system extension image {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting {}", path.display()))?;
    if meta.is_dir() {
        bail!(
            "{} is a directory; only system extension image files (.raw) are read",
            path.display()
        );
    }
    if !meta.is_file() {
        bail!(
            "{} is not a regular file; copy the system extension image (.raw) to a file first",
            path.display()
        );
    }
    let mut head = Vec::new();
    (&mut file)
        .take(0x10048)
        .read_to_end(&mut head)
        .with_context(|| format!("reading the start of {}", path.display()))?;
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let only = "only squashfs and erofs system extensions (bare, or erofs in a GPT disk image) are read; rebuild it as squashfs (mksquashfs DIR NAME.raw -all-root) or erofs";
    if at(0, b"hsqs") {
        return Ok(Layout::Squashfs);
    }
    if at(1024, &EROFS_MAGIC) {
        return Ok(Layout::Erofs);
    }
    if at(512, b"EFI PART") || at(4096, b"EFI PART") {
        return find_ddi_partition(&mut file, path);
    }
    if head.is_empty() {
        bail!("{} is empty, not a system extension image", path.display());
    }
    let compressed: [&[u8]; 4] = [
        &[0x1f, 0x8b],
        b"\xfd7zXZ\0",
        &[0x28, 0xb5, 0x2f, 0xfd],
        b"BZh",
    ];
    if compressed.iter().any(|m| at(0, m)) {
        bail!(
            "{} is compressed (gzip, xz, zstd or bzip2), not a system extension image; decompress it first",
            path.display()
        );
    }
    let what = if at(0, b"sqsh") {
        "a big-endian squashfs, which current squashfs-tools no longer read"
    } else if at(1080, &[0x53, 0xEF]) {
        "an ext2/ext3/ext4 filesystem"
    } else if at(0x10040, b"_BHRfS_M") {
        "a btrfs filesystem"
    } else if at(0, b"XFSB") {
        "an xfs filesystem"
    } else if at(510, &[0x55, 0xAA]) {
        "a disk image with an MBR partition table but no GPT"
    } else {
        bail!(
            "{} is not a system extension image (neither squashfs, erofs nor a GPT disk image); it {}",
            path.display(),
            describe(&head)
        );
    };
    bail!("{} is {what}; {only}", path.display())
}

/// Says what unrecognized bytes look like, for an error message.
fn describe(head: &[u8]) -> String {
    let start = &head[..head.len().min(64)];
    let texty = start
        .iter()
        .all(|&b| b == b'\n' || b == b'\r' || b == b'\t' || (0x20..0x7f).contains(&b));
    if texty {
        let line = String::from_utf8_lossy(start);
        let line = line.lines().next().unwrap_or("");
        let line: String = line.chars().take(40).collect();
        return format!("looks like text, starting {line:?}");
    }
    let hex: Vec<String> = head.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("starts with the bytes {}", hex.join(" "))
}

/// The standard text form of a GPT GUID, whose first three fields are
/// stored little-endian.
fn guid_string(b: &[u8; 16]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// Finds the root (or usr) partition of a DDI and checks it holds erofs.
fn find_ddi_partition(file: &mut File, path: &Path) -> Result<Layout> {
    let gpt = gptman::GPT::find_from(file)
        .with_context(|| format!("reading the GPT partition table of {}", path.display()))?;
    let used: Vec<(u32, &gptman::GPTPartitionEntry)> =
        gpt.iter().filter(|(_, p)| p.is_used()).collect();
    let found = DDI_PARTITION_TYPES.iter().find_map(|(guid, _)| {
        used.iter()
            .find(|(_, p)| guid_string(&p.partition_type_guid) == *guid)
    });
    let Some(&(number, _)) = found else {
        let have: Vec<String> = used
            .iter()
            .map(|(i, p)| {
                format!(
                    "#{i} type {} name {:?}",
                    guid_string(&p.partition_type_guid),
                    p.partition_name.as_str()
                )
            })
            .collect();
        let want: Vec<String> = DDI_PARTITION_TYPES
            .iter()
            .map(|(g, what)| format!("{what} {g}"))
            .collect();
        bail!(
            "{} is a GPT disk image without a root or usr partition of a known type (expected one of: {}); it has: {}",
            path.display(),
            want.join(", "),
            if have.is_empty() { "no partitions".to_string() } else { have.join("; ") }
        );
    };
    let range = gpt
        .get_partition_byte_range(number)
        .with_context(|| format!("locating partition {number} of {}", path.display()))?;
    let (offset, last) = (*range.start(), *range.end());
    let len = file
        .metadata()
        .with_context(|| format!("inspecting {}", path.display()))?
        .len();
    if last >= len {
        bail!(
            "{} is truncated: partition {number} ends at byte {} but the file has {len} bytes; download it again",
            path.display(),
            last + 1
        );
    }
    if last - offset + 1 < 4096 {
        bail!(
            "partition {number} of {} is too small ({} bytes) to hold an erofs filesystem",
            path.display(),
            last - offset + 1
        );
    }
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut magic))
        .with_context(|| format!("reading partition {number} of {}", path.display()))?;
    if magic == *b"hsqs" {
        bail!(
            "partition {number} of {} holds squashfs; only GPT disk images with an erofs partition are read (systemd-repart Format=erofs), or a bare squashfs file",
            path.display()
        );
    }
    file.seek(SeekFrom::Start(offset + 1024))
        .and_then(|_| file.read_exact(&mut magic))
        .with_context(|| format!("reading partition {number} of {}", path.display()))?;
    if magic != EROFS_MAGIC {
        bail!(
            "partition {number} of {} holds no erofs filesystem; only erofs partitions of GPT disk images are read",
            path.display()
        );
    }
    Ok(Layout::ErofsDdi {
        number,
        offset,
        size: last - offset + 1,
    })
}

/// Copies `size` bytes at `offset` of `src` to a new file `dst`.
fn copy_range(src: &Path, offset: u64, size: u64, dst: &Path) -> Result<()> {
    let mut from = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    from.seek(SeekFrom::Start(offset))
        .with_context(|| format!("seeking to byte {offset} of {}", src.display()))?;
    let mut to = File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let copied = std::io::copy(&mut from.take(size), &mut to).with_context(|| {
        format!(
            "copying to {} (is the temporary directory full?)",
            dst.display()
        )
    })?;
    if copied != size {
        bail!(
            "{} ended after {copied} of the {size} bytes of the partition; download it again",
            src.display()
        );
    }
    Ok(())
}

/// Runs `tool` with `args`; an error names the command, its exit status
/// and the last lines of its stderr, or the Debian package to install when
/// the tool is missing.
fn run(tool: &Path, args: &[&OsStr], package: &str) -> Result<Output> {
    let line = std::iter::once(tool.as_os_str())
        .chain(args.iter().copied())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = match Command::new(tool).args(args).stdin(Stdio::null()).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} is not installed (not found{}); install the {package} package (Debian/Ubuntu: apt-get install {package})",
            tool.display(),
            if tool.components().count() > 1 { "" } else { " in PATH" }
        ),
        other => other.with_context(|| format!("running `{line}`"))?,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        bail!("`{line}` failed ({}):\n{tail}", out.status);
    }
    Ok(out)
}

/// Extracts `what` (a path inside the image) of squashfs `image` into
/// `dest`, leaving xattrs out (setting `security.*` needs root). A path
/// missing in the image is no error: unsquashfs only warns.
fn unsquashfs(tools: &Tools, image: &Path, dest: &Path, what: &str) -> Result<()> {
    let mut args: Vec<&OsStr> = vec![
        "-no-progress".as_ref(),
        "-quiet".as_ref(),
        "-no-xattrs".as_ref(),
        "-force".as_ref(),
        "-dest".as_ref(),
        dest.as_os_str(),
    ];
    args.push(image.as_os_str());
    args.push(what.as_ref());
    run(&tools.unsquashfs, &args, "squashfs-tools")
        .with_context(|| format!("extracting /{what} of squashfs image {}", image.display()))?;
    Ok(())
}

/// Extracts erofs `image` into `dest` (which must not exist). fsck.erofs
/// 1.5 cannot extract a single path, so the whole filesystem is written:
/// a temporary directory as large as the extension is needed.
fn fsck_erofs_extract(tools: &Tools, image: &Path, dest: &Path) -> Result<()> {
    let mut arg = OsString::from("--extract=");
    arg.push(dest);
    run(
        &tools.fsck_erofs,
        &[arg.as_os_str(), image.as_os_str()],
        "erofs-utils",
    )
    .with_context(|| format!("extracting erofs image {}", image.display()))?;
    Ok(())
}

/// Picks the release file in the extracted tree at `root`: the one for
/// `name` if present, else the only one.
fn choose_release(root: &Path, name: Option<&str>) -> Result<String> {
    let dir = resolve_in_root(root, Path::new(RELEASE_DIR))?;
    let entries = match std::fs::read_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "the image has no /{RELEASE_DIR}/ directory, so systemd-sysext would refuse it (is it a configuration extension, which has /etc/extension-release.d/, or not an extension at all?)"
        ),
        other => other.with_context(|| format!("listing the extracted /{RELEASE_DIR}"))?,
    };
    let mut all = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing the extracted /{RELEASE_DIR}"))?;
        all.push(entry.file_name().to_string_lossy().into_owned());
    }
    all.sort();
    let names: Vec<&str> = all
        .iter()
        .filter_map(|f| f.strip_prefix(RELEASE_PREFIX))
        .filter(|n| !n.is_empty())
        .collect();
    if let Some(want) = name.filter(|w| names.contains(w)) {
        return Ok(want.to_string());
    }
    match names.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!(
            "/{RELEASE_DIR}/ holds no {RELEASE_PREFIX}NAME file (it holds: {})",
            if all.is_empty() { "nothing".to_string() } else { all.join(", ") }
        ),
        several => bail!(
            "/{RELEASE_DIR}/ holds several release files ({}){}; name the image after one of them (NAME.raw for {RELEASE_PREFIX}NAME)",
            several.iter().map(|n| format!("{RELEASE_PREFIX}{n}")).collect::<Vec<_>>().join(", "),
            match name {
                Some(n) => format!(" and none is {RELEASE_PREFIX}{n}"),
                None => String::new(),
            }
        ),
    }
}

/// The path under `root` that `rel` names when symlinks are resolved as if
/// `root` were `/`, as systemd does inside an image: an absolute link in
/// the image must not lead to the host's files.
fn resolve_in_root(root: &Path, rel: &Path) -> Result<PathBuf> {
    let mut todo: Vec<OsString> = components(rel);
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == "/" {
            cur = PathBuf::new();
        } else if c == ".." {
            cur.pop();
        } else if c != "." {
            let here = root.join(&cur).join(&c);
            match std::fs::symlink_metadata(&here) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINKS {
                        bail!(
                            "too many levels of symbolic links at /{}",
                            cur.join(&c).display()
                        );
                    }
                    let target = std::fs::read_link(&here)
                        .with_context(|| format!("reading symlink {}", here.display()))?;
                    todo.extend(components(&target));
                }
                _ => cur.push(&c),
            }
        }
    }
    Ok(root.join(cur))
}

/// The components of `p` in reverse order (a stack), `/` for the root.
fn components(p: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = p
        .components()
        .map(|c| match c {
            Component::RootDir | Component::Prefix(_) => OsString::from("/"),
            Component::CurDir => OsString::from("."),
            Component::ParentDir => OsString::from(".."),
            Component::Normal(n) => n.to_os_string(),
        })
        .collect();
    v.reverse();
    v
}

/// Reads `rel` in the extracted tree at `root`, following symlinks inside it.
fn read_in_root(root: &Path, rel: &Path) -> Result<Vec<u8>> {
    let real = resolve_in_root(root, rel)?;
    let shown = real
        .strip_prefix(root)
        .unwrap_or(&real)
        .display()
        .to_string();
    let file = File::open(&real).with_context(|| {
        format!("opening /{shown} (the release file or what its symlink points to) in the image")
    })?;
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting /{shown} in the image"))?;
    if !meta.is_file() {
        bail!("/{shown} in the image is not a regular file");
    }
    let mut text = Vec::new();
    file.take(MAX_RELEASE_BYTES + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("reading /{shown} in the image"))?;
    if text.len() as u64 > MAX_RELEASE_BYTES {
        bail!("/{shown} in the image is larger than {MAX_RELEASE_BYTES} bytes, too large for a release file");
    }
    Ok(text)
}

/// os-release(5) parsing: used for the Flatcar image's own /usr/lib/os-release too.
///
/// The format is a subset of shell variable assignments: `KEY=VALUE` lines,
/// `#` comments, blank lines; values may be double-quoted (where `\"`,
/// `\\`, `` \` `` and `\$` are escapes), single-quoted (literal), or bare
/// (where a backslash escapes any character), and a backslash before a line
/// end continues the line. As in systemd, quoted and bare parts may be
/// concatenated, whitespace around `=` and trailing unquoted whitespace is
/// dropped, and lines with an invalid key are ignored. Invalid UTF-8 is
/// replaced rather than refused: the file is informative, not trusted code.
pub fn parse_os_release(text: &[u8]) -> Vec<(String, String)> {
    #[derive(Clone, Copy, PartialEq)]
    enum S {
        PreKey,
        Key,
        Comment,
        PreValue,
        Value,
        ValueEscape,
        Single,
        Double,
        DoubleEscape,
    }
    let text = String::from_utf8_lossy(text);
    let mut out = Vec::new();
    let mut state = S::PreKey;
    let mut key = String::new();
    let mut value = String::new();
    // Length of `value` up to its last quoted or non-blank character.
    let mut keep = 0;
    let mut emit = |key: &mut String, value: &mut String, keep: usize| {
        value.truncate(keep);
        let k = key.trim_end();
        let valid = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            out.push((k.to_string(), std::mem::take(value)));
        }
        key.clear();
        value.clear();
    };
    for c in text.chars() {
        state = match state {
            S::PreKey => match c {
                '#' | ';' => S::Comment,
                c if c.is_whitespace() => S::PreKey,
                c => {
                    key.push(c);
                    S::Key
                }
            },
            S::Key => match c {
                '\n' => {
                    key.clear();
                    S::PreKey
                }
                '=' => S::PreValue,
                c => {
                    key.push(c);
                    S::Key
                }
            },
            S::Comment => {
                if c == '\n' {
                    S::PreKey
                } else {
                    S::Comment
                }
            }
            S::PreValue | S::Value => match c {
                '\n' => {
                    emit(&mut key, &mut value, keep);
                    keep = 0;
                    S::PreKey
                }
                '"' => S::Double,
                '\'' => S::Single,
                '\\' => S::ValueEscape,
                c if c.is_whitespace() => {
                    if state == S::Value {
                        value.push(c);
                    }
                    state
                }
                c => {
                    value.push(c);
                    keep = value.len();
                    S::Value
                }
            },
            S::ValueEscape => {
                if c != '\n' {
                    value.push(c);
                    keep = value.len();
                }
                S::Value
            }
            S::Single => {
                if c == '\'' {
                    S::Value
                } else {
                    value.push(c);
                    keep = value.len();
                    S::Single
                }
            }
            S::Double => match c {
                '"' => S::Value,
                '\\' => S::DoubleEscape,
                c => {
                    value.push(c);
                    keep = value.len();
                    S::Double
                }
            },
            S::DoubleEscape => {
                match c {
                    '"' | '\\' | '`' | '$' => value.push(c),
                    '\n' => {}
                    c => {
                        value.push('\\');
                        value.push(c);
                    }
                }
                keep = value.len();
                S::Double
            }
        };
    }
    if !matches!(state, S::PreKey | S::Key | S::Comment) {
        emit(&mut key, &mut value, keep);
    }
    out
}

/// The architecture names systemd uses (ARCHITECTURE=) for a Docker/OCI arch: amd64 -> x86-64, arm64 -> arm64.
///
/// The kernel's names (`x86_64`, `aarch64`) are accepted too, since the
/// architecture may come from `uname -m` rather than from Docker.
pub fn systemd_arch(oci_arch: &str) -> Option<&'static str> {
    Some(match oci_arch {
        "amd64" | "x86_64" => "x86-64",
        "arm64" | "aarch64" => "arm64",
        "386" => "x86",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "ppc64le" => "ppc64-le",
        "s390x" => "s390x",
        "loong64" => "loongarch64",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// `tool` as found in PATH or the sbin directories a user's PATH may lack.
    fn which(tool: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    }

    /// The paths of `tools`, or `None` after printing why the test is skipped.
    fn need<const N: usize>(test: &str, tools: [&str; N]) -> Option<[PathBuf; N]> {
        let found = tools.map(which);
        for (t, f) in tools.iter().zip(&found) {
            if f.is_none() {
                crate::testing::skipped(test, &format!("{t} is not installed"));
                return None;
            }
        }
        Some(found.map(|f| f.unwrap()))
    }

    fn sh(tool: &Path, args: &[&OsStr]) {
        run(tool, args, "the fixture tools").unwrap();
    }

    /// A directory tree of `files` (path, contents) and `links` (path, target).
    fn tree(dir: &Path, files: &[(&str, &str)], links: &[(&str, &str)]) {
        for (p, text) in files {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        for (p, target) in links {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            symlink(target, p).unwrap();
        }
    }

    const K8S: &str = "usr/lib/extension-release.d/extension-release.kubernetes";

    fn squashfs(mksquashfs: &Path, src: &Path, img: &Path) {
        let a: [&OsStr; 5] = [
            src.as_ref(),
            img.as_ref(),
            "-all-root".as_ref(),
            "-noappend".as_ref(),
            "-quiet".as_ref(),
        ];
        sh(mksquashfs, &a);
    }

    fn erofs(mkfs: &Path, src: &Path, img: &Path, compress: bool) {
        let mut a: Vec<&OsStr> = vec!["--quiet".as_ref(), "--all-root".as_ref()];
        if compress {
            a.push("-zlz4hc".as_ref());
        }
        a.push(img.as_ref());
        a.push(src.as_ref());
        sh(mkfs, &a);
    }

    fn fields(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn err(r: Result<Release>) -> String {
        let e = format!("{:#}", r.expect_err("expected an error"));
        eprintln!("error: {e}");
        e
    }

    #[test]
    fn squashfs_bakery_like() {
        let Some([mksquashfs, _]) = need("squashfs_bakery_like", ["mksquashfs", "unsquashfs"])
        else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        tree(
            &src,
            &[
                (K8S, "ID=_any\nARCHITECTURE=x86-64\n"),
                ("usr/bin/kubelet", "ELF"),
            ],
            &[],
        );
        let img = d.path().join("kubernetes-v1.33.0-x86-64.raw");
        squashfs(&mksquashfs, &src, &img);
        for name in [None, Some("kubernetes"), Some("kubernetes-v1.33.0-x86-64")] {
            let r = read_release(&img, name).unwrap();
            assert_eq!(r.format, Format::Squashfs);
            assert_eq!(r.name, "kubernetes");
            assert_eq!(
                r.fields,
                fields(&[("ID", "_any"), ("ARCHITECTURE", "x86-64")])
            );
            assert_eq!(r.get("ARCHITECTURE"), Some("x86-64"));
            assert_eq!(r.get("VERSION_ID"), None);
        }
    }

    #[test]
    fn symlinked_release_stays_inside_the_image() {
        let Some([mksquashfs, _, mkfs, _]) = need(
            "symlinked_release_stays_inside_the_image",
            ["mksquashfs", "unsquashfs", "mkfs.erofs", "fsck.erofs"],
        ) else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        // An absolute link: resolved against the host it would escape.
        tree(
            &src,
            &[(
                "usr/share/flatcar-preload-test/release",
                "ID=_any\nARCHITECTURE=arm64\n",
            )],
            &[(
                "usr/lib/extension-release.d/extension-release.docker",
                "/usr/share/flatcar-preload-test/release",
            )],
        );
        let sq = d.path().join("docker.raw");
        squashfs(&mksquashfs, &src, &sq);
        let er = d.path().join("docker.erofs.raw");
        erofs(&mkfs, &src, &er, false);
        for (img, format) in [(sq, Format::Squashfs), (er, Format::Erofs)] {
            let r = read_release(&img, Some("docker")).unwrap();
            assert_eq!(r.format, format);
            assert_eq!(r.name, "docker");
            assert_eq!(r.get("ARCHITECTURE"), Some("arm64"));
        }

        // `..` stops at the image's root: the host's /etc/os-release is not read.
        let src = d.path().join("escape");
        tree(
            &src,
            &[],
            &[(
                "usr/lib/extension-release.d/extension-release.escape",
                "../../../../../../../../etc/os-release",
            )],
        );
        let sq = d.path().join("escape.raw");
        squashfs(&mksquashfs, &src, &sq);
        let er = d.path().join("escape.erofs.raw");
        erofs(&mkfs, &src, &er, false);
        for img in [sq, er] {
            let e = err(read_release(&img, None));
            assert!(e.contains("opening /etc/os-release"), "{e}");
        }
    }

    #[test]
    fn erofs_plain_and_compressed() {
        let Some([mkfs, _]) = need("erofs_plain_and_compressed", ["mkfs.erofs", "fsck.erofs"])
        else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        tree(
            &src,
            &[(
                "usr/lib/extension-release.d/extension-release.containerd",
                "ID=flatcar\nSYSEXT_LEVEL=1.0\nARCHITECTURE=x86-64\nEXTENSION_RELOAD_MANAGER=1\n",
            )],
            &[],
        );
        for compress in [false, true] {
            let img = d.path().join(format!("containerd-{compress}.raw"));
            erofs(&mkfs, &src, &img, compress);
            let r = read_release(&img, None).unwrap();
            assert_eq!(r.format, Format::Erofs);
            assert_eq!(r.name, "containerd");
            assert_eq!(r.get("SYSEXT_LEVEL"), Some("1.0"));
            assert_eq!(r.get("EXTENSION_RELOAD_MANAGER"), Some("1"));
        }
    }

    /// Root x86-64 and its verity partition type.
    const ROOT_X86: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
    const VERITY_X86: &str = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5";

    /// A GPT disk image with a 64 KiB verity-typed partition of noise first,
    /// then `part` (if any) as a partition of type `ty`.
    fn ddi(sgdisk: &Path, img: &Path, part: Option<&Path>, ty: &str) {
        let data = part.map(|p| std::fs::read(p).unwrap()).unwrap_or_default();
        let sectors = (data.len() as u64).div_ceil(512).max(8);
        let (v_start, v_end) = (2048u64, 2048 + 127);
        let (r_start, r_end) = (4096u64, 4096 + sectors - 1);
        let total = (r_end + 1 + 2048) * 512;
        let f = File::create(img).unwrap();
        f.set_len(total).unwrap();
        drop(f);
        let args = [
            format!("--new=1:{v_start}:{v_end}"),
            format!("--typecode=1:{VERITY_X86}"),
            "--change-name=1:root-x86-64-verity".to_string(),
            format!("--new=2:{r_start}:{r_end}"),
            format!("--typecode=2:{ty}"),
            "--change-name=2:root-x86-64".to_string(),
            img.display().to_string(),
        ];
        let args: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
        sh(sgdisk, &args);
        let mut f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
        use std::io::Write;
        f.seek(SeekFrom::Start(v_start * 512)).unwrap();
        f.write_all(&[0x5a; 64 * 1024]).unwrap();
        f.seek(SeekFrom::Start(r_start * 512)).unwrap();
        f.write_all(&data).unwrap();
    }

    #[test]
    fn flatcar_like_ddi() {
        let Some([mkfs, _, sgdisk]) =
            need("flatcar_like_ddi", ["mkfs.erofs", "fsck.erofs", "sgdisk"])
        else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let release = concat!(
            "# made by systemd-repart\n",
            "ID=flatcar\n",
            "VERSION_ID=\"4230.2.0\"\n",
            "ARCHITECTURE='x86-64'\n",
            "SYSEXT_ID=\"flatcar-podman\"\n",
            "NAME=\"Podman \\\"for\\\" \\$Flatcar\"\n",
            "\n",
        );
        tree(
            &src,
            &[
                (
                    "usr/lib/extension-release.d/extension-release.flatcar-podman",
                    release,
                ),
                ("usr/bin/podman", "ELF"),
            ],
            &[],
        );
        let fs = d.path().join("podman.erofs");
        erofs(&mkfs, &src, &fs, true);
        let img = d.path().join("flatcar-podman.raw");
        ddi(&sgdisk, &img, Some(&fs), ROOT_X86);
        let r = read_release(&img, Some("flatcar-podman")).unwrap();
        assert_eq!(r.format, Format::ErofsDdi);
        assert_eq!(r.name, "flatcar-podman");
        assert_eq!(
            r.fields,
            fields(&[
                ("ID", "flatcar"),
                ("VERSION_ID", "4230.2.0"),
                ("ARCHITECTURE", "x86-64"),
                ("SYSEXT_ID", "flatcar-podman"),
                ("NAME", "Podman \"for\" $Flatcar"),
            ])
        );

        // No root partition: the error lists what is there.
        let other = d.path().join("other.raw");
        ddi(
            &sgdisk,
            &other,
            Some(&fs),
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        );
        let e = err(read_release(&other, None));
        assert!(e.contains("without a root or usr partition"), "{e}");
        assert!(e.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4"), "{e}");
        assert!(e.contains("root-x86-64-verity"), "{e}");

        // A root partition without erofs.
        let empty = d.path().join("empty.raw");
        ddi(&sgdisk, &empty, None, ROOT_X86);
        let e = err(read_release(&empty, None));
        assert!(e.contains("holds no erofs"), "{e}");

        // Truncated download.
        let cut = d.path().join("cut.raw");
        std::fs::copy(&img, &cut).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
        f.set_len(4096 * 512 + 2048).unwrap();
        drop(f);
        let e = err(read_release(&cut, None));
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn not_an_image() {
        let d = tempfile::tempdir().unwrap();
        let noise = d.path().join("noise.raw");
        let bytes: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
            .collect();
        std::fs::write(&noise, &bytes).unwrap();
        let e = err(read_release(&noise, None));
        assert!(e.contains("not a system extension image"), "{e}");
        assert!(
            e.contains(&format!(
                "starts with the bytes {:02x} {:02x}",
                bytes[0], bytes[1]
            )),
            "{e}"
        );

        let text = d.path().join("text.raw");
        std::fs::write(&text, "<html><body>404 Not Found</body></html>\n").unwrap();
        let e = err(read_release(&text, None));
        assert!(
            e.contains("looks like text, starting \"<html><body>404 Not Found"),
            "{e}"
        );

        let empty = d.path().join("empty.raw");
        std::fs::write(&empty, "").unwrap();
        assert!(err(read_release(&empty, None)).contains("is empty"));

        let zst = d.path().join("k.raw.zst");
        std::fs::write(&zst, [0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]).unwrap();
        assert!(err(read_release(&zst, None)).contains("decompress it first"));

        let e = err(read_release(d.path(), None));
        assert!(e.contains("is a directory"), "{e}");
        let e = err(read_release(&d.path().join("absent.raw"), None));
        assert!(e.contains("absent.raw"), "{e}");
    }

    #[test]
    fn ext4_and_btrfs_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let btrfs = d.path().join("btrfs.raw");
        let mut b = vec![0u8; 0x11000];
        b[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        std::fs::write(&btrfs, &b).unwrap();
        let e = err(read_release(&btrfs, None));
        assert!(
            e.contains("btrfs") && e.contains("only squashfs and erofs"),
            "{e}"
        );

        let Some([mke2fs]) = need("ext4_and_btrfs_are_refused (ext4 part)", ["mke2fs"]) else {
            return;
        };
        let src = d.path().join("src");
        tree(&src, &[(K8S, "ID=_any\n")], &[]);
        let img = d.path().join("ext4.raw");
        let a: [&OsStr; 7] = [
            "-q".as_ref(),
            "-t".as_ref(),
            "ext4".as_ref(),
            "-d".as_ref(),
            src.as_ref(),
            img.as_ref(),
            "4M".as_ref(),
        ];
        sh(&mke2fs, &a);
        let e = err(read_release(&img, None));
        assert!(
            e.contains("ext2/ext3/ext4") && e.contains("only squashfs and erofs"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_ambiguous_release_files() {
        let Some([mksquashfs, _, mkfs, _]) = need(
            "missing_and_ambiguous_release_files",
            ["mksquashfs", "unsquashfs", "mkfs.erofs", "fsck.erofs"],
        ) else {
            return;
        };
        let d = tempfile::tempdir().unwrap();
        let cases: [(&str, &[(&str, &str)]); 3] = [
            ("none", &[("usr/bin/tool", "x")]),
            ("emptydir", &[("usr/lib/extension-release.d/README", "x")]),
            (
                "two",
                &[
                    (
                        "usr/lib/extension-release.d/extension-release.a",
                        "ID=_any\n",
                    ),
                    (
                        "usr/lib/extension-release.d/extension-release.b",
                        "ID=flatcar\n",
                    ),
                ],
            ),
        ];
        for (case, files) in cases {
            let src = d.path().join(case);
            tree(&src, files, &[]);
            let sq = d.path().join(format!("{case}.sq.raw"));
            squashfs(&mksquashfs, &src, &sq);
            let er = d.path().join(format!("{case}.er.raw"));
            erofs(&mkfs, &src, &er, false);
            for img in [&sq, &er] {
                let e = err(read_release(img, None));
                match case {
                    "none" => assert!(e.contains("has no /usr/lib/extension-release.d/"), "{e}"),
                    "emptydir" => assert!(
                        e.contains("holds no extension-release.NAME file (it holds: README)"),
                        "{e}"
                    ),
                    _ => {
                        assert!(
                            e.contains(
                                "several release files (extension-release.a, extension-release.b)"
                            ),
                            "{e}"
                        );
                        let e = err(read_release(img, Some("c")));
                        assert!(e.contains("none is extension-release.c"), "{e}");
                        let r = read_release(img, Some("b")).unwrap();
                        assert_eq!((r.name.as_str(), r.get("ID")), ("b", Some("flatcar")));
                    }
                }
            }
        }
    }

    #[test]
    fn missing_tools_name_their_package() {
        let d = tempfile::tempdir().unwrap();
        let tools = Tools {
            unsquashfs: "/nonexistent/unsquashfs".into(),
            fsck_erofs: "/nonexistent/fsck.erofs".into(),
        };
        let sq = d.path().join("sq.raw");
        let mut b = b"hsqs".to_vec();
        b.resize(4096, 0);
        std::fs::write(&sq, &b).unwrap();
        let e = err(read_release_with(&tools, &sq, None));
        assert!(
            e.contains("/nonexistent/unsquashfs is not installed") && e.contains("squashfs-tools"),
            "{e}"
        );

        let er = d.path().join("er.raw");
        let mut b = vec![0u8; 4096];
        b[1024..1028].copy_from_slice(&EROFS_MAGIC);
        std::fs::write(&er, &b).unwrap();
        let e = err(read_release_with(&tools, &er, None));
        assert!(
            e.contains("fsck.erofs is not installed") && e.contains("erofs-utils"),
            "{e}"
        );
    }

    #[test]
    fn failing_tool_is_named_with_its_stderr() {
        let Some(_) = need("failing_tool_is_named_with_its_stderr", ["unsquashfs"]) else {
            return;
        };
        // A squashfs magic followed by garbage: unsquashfs refuses it.
        let d = tempfile::tempdir().unwrap();
        let sq = d.path().join("bad.raw");
        let mut b = b"hsqs".to_vec();
        b.resize(4096, 0xff);
        std::fs::write(&sq, &b).unwrap();
        let e = err(read_release(&sq, None));
        assert!(e.contains("`unsquashfs ") && e.contains("failed ("), "{e}");
    }

    #[test]
    fn os_release_parsing() {
        let text = concat!(
            "# a comment\n",
            "\n",
            "   ; another comment\n",
            "NAME=\"Flatcar Container Linux by Kinvolk\"\n",
            "ID=flatcar\n",
            "  ID_LIKE = coreos  \n",
            "SINGLE='it''s $not \\expanded'\n",
            "DQ=\"a \\\"b\\\" \\\\ \\$c \\`d\\` \\n\"\n",
            "BARE=foo\\ bar\\\"\n",
            "MIXED=pre\"mid dle\"'post'\n",
            "EMPTY=\n",
            "QEMPTY=\"\"\n",
            "CONT=\"one \\\ntwo\"\n",
            "not a key line\n",
            "9BAD=x\n",
            "BAD-KEY=y\n",
            "URL=\"https://example.org/#anchor\" \n",
            "ID=again\n",
            "LAST=no newline",
        );
        let got = parse_os_release(text.as_bytes());
        let want = fields(&[
            ("NAME", "Flatcar Container Linux by Kinvolk"),
            ("ID", "flatcar"),
            ("ID_LIKE", "coreos"),
            ("SINGLE", "its $not \\expanded"),
            ("DQ", "a \"b\" \\ $c `d` \\n"),
            ("BARE", "foo bar\""),
            ("MIXED", "premid dlepost"),
            ("EMPTY", ""),
            ("QEMPTY", ""),
            ("CONT", "one two"),
            ("URL", "https://example.org/#anchor"),
            ("ID", "again"),
            ("LAST", "no newline"),
        ]);
        assert_eq!(got, want);
        let r = Release {
            format: Format::Squashfs,
            name: "x".into(),
            fields: got,
        };
        assert_eq!(r.get("ID"), Some("again"));
        assert_eq!(r.get("QEMPTY"), Some(""));
        assert!(parse_os_release(b"").is_empty());
        assert_eq!(parse_os_release(b"A=\xff\n"), fields(&[("A", "\u{fffd}")]));
    }

    #[test]
    fn systemd_arch_names() {
        assert_eq!(systemd_arch("amd64"), Some("x86-64"));
        assert_eq!(systemd_arch("arm64"), Some("arm64"));
        assert_eq!(systemd_arch("x86_64"), Some("x86-64"));
        assert_eq!(systemd_arch("mips"), None);
    }

    #[test]
    fn guid_text_form() {
        // 4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 as stored on disk.
        let b = [
            0xE3, 0xBC, 0x68, 0x4F, 0xCD, 0xE8, 0xB1, 0x4D, 0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84,
            0xB7, 0x09,
        ];
        assert_eq!(guid_string(&b), ROOT_X86);
    }
}
