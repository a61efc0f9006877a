//! Adding xattrs to the root directory of a btrfs image, offline.
//!
//! The OEM btrfs is rebuilt with `mkfs.btrfs --rootdir` (see `btrfs.rs`),
//! and btrfs-progs 6.2 copies every xattr except those of the root
//! directory, so Flatcar's `btrfs.compression=zlib` property on the root is
//! lost. Setting it back normally needs a mount, that is root; this module
//! instead edits the freshly made filesystem image in place: it finds the
//! leaf of the FS tree that holds the root directory's items and inserts
//! XATTR_ITEMs into it, exactly where and how the kernel would have.
//!
//! Only what a small `mkfs.btrfs` result looks like is supported, and
//! everything else is refused rather than guessed at: one device, crc32c
//! checksums, single or DUP chunks, no snapshots, and room in the leaf for
//! the new items (leaves are never split, so no tree block is allocated and
//! the extent, free space and chunk trees and the superblock stay as they
//! are). Every on-disk structure is read with bounds checks and every tree
//! block's checksum, address, owner and level are verified before use.
//!
//! Layouts follow the kernel's `btrfs_tree.h`: superblock at 64 KiB, tree
//! block header of 101 bytes, leaf items of 25 bytes, key pointers of 33.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

/// Where the primary superblock lies. The backups (64 MiB, 256 GiB) are
/// not touched: nothing this module changes lives in the superblock.
const SUPER_OFFSET: u64 = 64 * 1024;
/// Bytes of the superblock that its checksum covers the tail of.
const SUPER_SIZE: usize = 4096;
const MAGIC: &[u8; 8] = b"_BHRfS_M";
/// Checksum field size at the start of the superblock and of every tree
/// block; checksums cover everything after it.
const CSUM_SIZE: usize = 32;
/// `struct btrfs_header`.
const HEADER_SIZE: usize = 101;
/// `struct btrfs_item`: disk key, data offset, data size.
const ITEM_SIZE: usize = 25;
/// `struct btrfs_key_ptr`: disk key, block pointer, generation.
const KEY_PTR_SIZE: usize = 33;
/// `struct btrfs_disk_key`.
const KEY_SIZE: usize = 17;
/// `struct btrfs_dir_item` before the name: location key, transid,
/// data_len, name_len, type.
const DIR_ITEM_SIZE: usize = 30;
/// `struct btrfs_chunk` without its stripes.
const CHUNK_ITEM_SIZE: usize = 48;
/// `struct btrfs_stripe`.
const STRIPE_SIZE: usize = 32;
/// `sys_chunk_array` in the superblock, and its capacity.
const SYS_CHUNK_ARRAY_OFFSET: usize = 0x32b;
const SYS_CHUNK_ARRAY_MAX: usize = 2048;
/// `BTRFS_MAX_LEVEL` is 8, so levels run 0..=7.
const MAX_LEVEL: u8 = 7;
/// `BTRFS_NAME_MAX`: the kernel refuses longer xattr names.
const NAME_MAX: usize = 255;

/// Tree ids, which are also the owners written in their blocks.
const ROOT_TREE_OBJECTID: u64 = 1;
const CHUNK_TREE_OBJECTID: u64 = 3;
const FS_TREE_OBJECTID: u64 = 5;
/// The root directory's inode number in every subvolume.
const ROOT_DIR_OBJECTID: u64 = 256;

/// Key types.
const XATTR_ITEM_KEY: u8 = 24;
const ROOT_ITEM_KEY: u8 = 132;
const CHUNK_ITEM_KEY: u8 = 228;
/// `BTRFS_FT_XATTR`, the dir_item type of an xattr.
const FT_XATTR: u8 = 8;

/// Superblock incompat bits whose meaning leaves the trees read and
/// written here as they are: MIXED_BACKREF .. RAID1C34 (profiles are
/// checked per chunk). Anything else (zoned, extent tree v2, raid stripe
/// tree, squota, or unknown) is refused.
const INCOMPAT_KNOWN: u64 = (1 << 12) - 1;
const INCOMPAT_METADATA_UUID: u64 = 1 << 10;
/// compat_ro bits: free space tree (+valid), verity, block group tree.
/// None of them is affected by editing a leaf in place.
const COMPAT_RO_KNOWN: u64 = (1 << 4) - 1;
/// Superblock flags: only WRITTEN is expected of a finished mkfs; seeding,
/// metadump, an interrupted fsid change or an error state are refused.
const SUPER_FLAGS_KNOWN: u64 = 1;
/// Chunk type bits: the profile part, and DUP (both copies on the one
/// device, at different physical offsets).
const BLOCK_GROUP_PROFILE_MASK: u64 = 0x7f8;
const BLOCK_GROUP_DUP: u64 = 1 << 5;

/// crc32c as btrfs uses it for checksums (`CRC_32_ISCSI` is crc32c).
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Adds the xattrs `xattrs` (full name such as "btrfs.compression", value)
/// to the root directory (inode 256 of the FS tree, objectid 5) of the
/// btrfs filesystem in the file `fs_image` (a filesystem image starting at
/// byte 0, e.g. what mkfs.btrfs just made).
///
/// Supports what `mkfs.btrfs --rootdir` makes for a small filesystem: one
/// device, crc32c checksums, single (or DUP) metadata or mixed block
/// groups, the root's items in a leaf with room for the new items. An
/// xattr that is already there with the same value is left; one with
/// another value is an error. Nothing is written unless every xattr can be
/// added, and the leaves are only written once all of them were checked.
pub fn add_root_xattrs(fs_image: &Path, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
    add(fs_image, xattrs).with_context(|| {
        format!(
            "cannot add xattrs to the root directory of the btrfs in {}",
            fs_image.display()
        )
    })
}

fn add(fs_image: &Path, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
    for (i, (name, _)) in xattrs.iter().enumerate() {
        if xattrs[..i].iter().any(|(other, _)| other == name) {
            bail!("xattr {name:?} is given twice");
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(fs_image)
        .with_context(|| format!("cannot open {} for writing", fs_image.display()))?;
    let fs = Fs::open(file)?;
    let fs_root = fs.fs_tree_root()?;

    // Plan every change in memory first, grouped by leaf, so that an
    // error on the last xattr leaves the image untouched.
    let mut leaves: Vec<Leaf> = Vec::new();
    for (name, value) in xattrs {
        let key = Key {
            objectid: ROOT_DIR_OBJECTID,
            kind: XATTR_ITEM_KEY,
            offset: name_hash(name.as_bytes()),
        };
        let new_item = dir_item(name, value, fs.nodesize)?;
        let logical = fs.find_leaf(fs_root.bytenr, fs_root.level, FS_TREE_OBJECTID, &key)?;
        let index = match leaves.iter().position(|leaf| leaf.logical == logical) {
            Some(index) => index,
            None => {
                let node = fs.read_node(logical, 0, FS_TREE_OBJECTID)?;
                let items =
                    parse_leaf(&node).with_context(|| format!("bad FS tree leaf at {logical}"))?;
                leaves.push(Leaf {
                    logical,
                    node,
                    items,
                    changed: false,
                });
                leaves.len() - 1
            }
        };
        let leaf = &mut leaves[index];
        let transid = read_u64(&leaf.node, 80)?;
        match leaf.items.binary_search_by(|item| item.key.cmp(&key)) {
            Ok(slot) => {
                // Names hashing alike share one item: look for ours in it.
                let item = &mut leaf.items[slot];
                match find_in_dir_items(&item.data, name.as_bytes())
                    .with_context(|| format!("bad xattr item {key:?} in leaf {logical}"))?
                {
                    Some(old) if old == value.as_slice() => {}
                    Some(_) => bail!(
                        "the root directory already has xattr {name:?} with another value; \
                         refusing to change it"
                    ),
                    None => {
                        item.data.extend_from_slice(&new_item.with_transid(transid));
                        leaf.changed = true;
                    }
                }
            }
            Err(slot) => {
                // Slot 0 would change the leaf's first key, which its
                // parents hold too; the root's INODE_ITEM always sorts
                // before its xattrs, so it means a tree we do not know.
                let before = slot.checked_sub(1).map(|s| &leaf.items[s]);
                match before {
                    Some(item) if item.key.objectid == ROOT_DIR_OBJECTID => {}
                    _ => bail!(
                        "the FS tree leaf at {logical} does not hold the root directory's \
                         items before its xattrs; not a filesystem as mkfs.btrfs makes it"
                    ),
                }
                leaf.items.insert(
                    slot,
                    Item {
                        key,
                        data: new_item.with_transid(transid),
                    },
                );
                leaf.changed = true;
            }
        }
    }

    let mut packed = Vec::new();
    for leaf in leaves.iter().filter(|leaf| leaf.changed) {
        let node = pack_leaf(&leaf.node, &leaf.items).with_context(|| {
            format!(
                "the root directory's leaf (at {}) has no room for the new xattrs; \
                 splitting leaves is not supported: use shorter values or fewer xattrs",
                leaf.logical
            )
        })?;
        packed.push((leaf.logical, node));
    }
    for (logical, node) in &mut packed {
        fs.write_node(*logical, node)?;
    }
    if !packed.is_empty() {
        fs.file
            .sync_all()
            .context("cannot flush the filesystem image to disk")?;
    }
    Ok(())
}

/// The kernel's `btrfs_name_hash`: crc32c seeded with ~1, without the
/// final inversion. It is the key offset of XATTR_ITEMs and DIR_ITEMs.
fn name_hash(name: &[u8]) -> u64 {
    // The crc crate takes the seed unreflected and reflects it, and
    // inverts at the end; undo both to get the kernel's raw register.
    let mut digest = CRC32C.digest_with_initial((!1u32).reverse_bits());
    digest.update(name);
    u64::from(!digest.finalize())
}

/// A btrfs key; sorts as the trees do, by (objectid, type, offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    objectid: u64,
    kind: u8,
    offset: u64,
}

/// One leaf item: key and a copy of its data.
#[derive(Debug, Clone)]
struct Item {
    key: Key,
    data: Vec<u8>,
}

/// A leaf being edited.
struct Leaf {
    logical: u64,
    node: Vec<u8>,
    items: Vec<Item>,
    changed: bool,
}

/// A `btrfs_dir_item` for an xattr whose transid is filled in later, when
/// the leaf (whose generation it takes) is known.
struct NewDirItem(Vec<u8>);

impl NewDirItem {
    fn with_transid(&self, transid: u64) -> Vec<u8> {
        let mut bytes = self.0.clone();
        bytes[KEY_SIZE..KEY_SIZE + 8].copy_from_slice(&transid.to_le_bytes());
        bytes
    }
}

/// Builds the dir_item of an xattr, refusing what the kernel would: an
/// empty name, a NUL in it, names over 255 bytes, and name plus value
/// larger than one item can be (`BTRFS_MAX_XATTR_SIZE`).
fn dir_item(name: &str, value: &[u8], nodesize: u32) -> Result<NewDirItem> {
    let name = name.as_bytes();
    ensure!(!name.is_empty(), "an xattr name is empty");
    ensure!(
        !name.contains(&0),
        "xattr name {:?} contains a NUL byte",
        String::from_utf8_lossy(name)
    );
    ensure!(
        name.len() <= NAME_MAX,
        "xattr name {:?} is longer than {NAME_MAX} bytes",
        String::from_utf8_lossy(name)
    );
    let max_item = (nodesize as usize).saturating_sub(HEADER_SIZE + ITEM_SIZE);
    let total = DIR_ITEM_SIZE + name.len() + value.len();
    ensure!(
        total <= max_item && value.len() <= usize::from(u16::MAX),
        "xattr {:?} is too large: {} bytes of value, at most {} fit with this name in a \
         {nodesize}-byte tree block",
        String::from_utf8_lossy(name),
        value.len(),
        max_item.saturating_sub(DIR_ITEM_SIZE + name.len())
    );
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(&[0u8; KEY_SIZE]); // location: none for xattrs
    bytes.extend_from_slice(&0u64.to_le_bytes()); // transid, set later
                                                  // Both lengths were checked against u16 above (name <= 255).
    bytes.extend_from_slice(&(value.len() as u16).to_le_bytes());
    bytes.extend_from_slice(&(name.len() as u16).to_le_bytes());
    bytes.push(FT_XATTR);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(value);
    Ok(NewDirItem(bytes))
}

/// Finds `name` among the dir_items packed in one XATTR_ITEM's data and
/// returns its value.
fn find_in_dir_items<'a>(mut data: &'a [u8], name: &[u8]) -> Result<Option<&'a [u8]>> {
    while !data.is_empty() {
        let data_len = usize::from(read_u16(data, KEY_SIZE + 8)?);
        let name_len = usize::from(read_u16(data, KEY_SIZE + 10)?);
        let kind = read_u8(data, KEY_SIZE + 12)?;
        ensure!(
            kind == FT_XATTR,
            "an xattr item holds a dir_item of type {kind}"
        );
        let name_end = DIR_ITEM_SIZE + name_len;
        let end = name_end + data_len;
        ensure!(end <= data.len(), "a dir_item runs past its item");
        if &data[DIR_ITEM_SIZE..name_end] == name {
            return Ok(Some(&data[name_end..end]));
        }
        data = &data[end..];
    }
    Ok(None)
}

/// Root of a tree: logical address and level of its top block.
#[derive(Debug, Clone, Copy)]
struct TreeRoot {
    bytenr: u64,
    level: u8,
}

/// One chunk: a logical range and where its copies lie on the device.
#[derive(Debug, Clone)]
struct Chunk {
    logical: u64,
    length: u64,
    /// Physical offsets of the copies (1 for single, 2 for DUP).
    stripes: Vec<u64>,
}

/// An opened filesystem image: the superblock's facts and the chunk map.
struct Fs {
    file: File,
    nodesize: u32,
    /// What tree blocks carry as fsid (metadata_uuid when it differs).
    tree_fsid: [u8; 16],
    root_tree: TreeRoot,
    chunks: Vec<Chunk>,
}

impl Fs {
    /// Reads and checks the superblock, then loads the chunk map: first the
    /// SYSTEM chunks of `sys_chunk_array`, which map the chunk tree, then
    /// every chunk of the chunk tree.
    fn open(file: File) -> Result<Fs> {
        let mut sb = vec![0u8; SUPER_SIZE];
        file.read_exact_at(&mut sb, SUPER_OFFSET).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                anyhow::anyhow!("not a btrfs filesystem: too small to hold a superblock")
            } else {
                anyhow::Error::new(e).context("cannot read the superblock")
            }
        })?;
        ensure!(
            &sb[64..72] == MAGIC,
            "not a btrfs filesystem: no btrfs magic at 64 KiB"
        );
        let csum_type = read_u16(&sb, 196)?;
        ensure!(
            csum_type == 0,
            "the filesystem uses checksum type {csum_type}; only crc32c (0) is supported"
        );
        let stored = read_u32(&sb, 0)?;
        let computed = CRC32C.checksum(&sb[CSUM_SIZE..]);
        ensure!(
            stored == computed,
            "the superblock checksum is wrong (stored {stored:#010x}, computed \
             {computed:#010x}): the image is damaged"
        );
        let bytenr = read_u64(&sb, 48)?;
        ensure!(
            bytenr == SUPER_OFFSET,
            "the superblock says it lies at {bytenr}, not at {SUPER_OFFSET}"
        );
        let flags = read_u64(&sb, 56)?;
        ensure!(
            flags & !SUPER_FLAGS_KNOWN == 0,
            "the superblock has flags {flags:#x} (seeding, metadump, fsid change or error \
             state); only a finished, plain filesystem is supported"
        );
        let incompat = read_u64(&sb, 188)?;
        ensure!(
            incompat & !INCOMPAT_KNOWN == 0,
            "the filesystem has incompat features {:#x} that this tool does not know \
             (e.g. zoned or extent-tree-v2)",
            incompat & !INCOMPAT_KNOWN
        );
        let compat_ro = read_u64(&sb, 180)?;
        ensure!(
            compat_ro & !COMPAT_RO_KNOWN == 0,
            "the filesystem has read-only-compat features {:#x} that this tool does not know",
            compat_ro & !COMPAT_RO_KNOWN
        );
        let num_devices = read_u64(&sb, 136)?;
        ensure!(
            num_devices == 1,
            "the filesystem spans {num_devices} devices; only one is supported"
        );
        let log_root = read_u64(&sb, 96)?;
        ensure!(
            log_root == 0,
            "the filesystem has a log tree to replay; mount it once first"
        );
        let sectorsize = read_u32(&sb, 144)?;
        let nodesize = read_u32(&sb, 148)?;
        ensure!(
            nodesize.is_power_of_two()
                && (4096..=65536).contains(&nodesize)
                && sectorsize.is_power_of_two()
                && (4096..=nodesize).contains(&sectorsize),
            "unsupported sector size {sectorsize} or node size {nodesize}"
        );
        let root_level = read_u8(&sb, 198)?;
        let chunk_root_level = read_u8(&sb, 199)?;
        ensure!(
            root_level <= MAX_LEVEL && chunk_root_level <= MAX_LEVEL,
            "the superblock gives tree levels over {MAX_LEVEL}: the image is damaged"
        );
        let fsid_at = if incompat & INCOMPAT_METADATA_UUID != 0 {
            571
        } else {
            32
        };
        let tree_fsid: [u8; 16] = read_array(&sb, fsid_at)?;
        // dev_item (at 201) starts with the devid.
        let devid = read_u64(&sb, 201)?;
        let array_size = read_u32(&sb, 160)? as usize;
        ensure!(
            array_size <= SYS_CHUNK_ARRAY_MAX,
            "the superblock's system chunk array size {array_size} is over \
             {SYS_CHUNK_ARRAY_MAX}: the image is damaged"
        );
        let array = &sb[SYS_CHUNK_ARRAY_OFFSET..SYS_CHUNK_ARRAY_OFFSET + array_size];

        let mut fs = Fs {
            file,
            nodesize,
            tree_fsid,
            root_tree: TreeRoot {
                bytenr: read_u64(&sb, 80)?,
                level: root_level,
            },
            chunks: parse_sys_chunk_array(array, devid)
                .context("bad system chunk array in the superblock")?,
        };
        let chunk_root = TreeRoot {
            bytenr: read_u64(&sb, 88)?,
            level: chunk_root_level,
        };
        let mut chunks = Vec::new();
        fs.collect_chunks(chunk_root.bytenr, chunk_root.level, devid, &mut chunks)
            .context("cannot read the chunk tree")?;
        ensure!(!chunks.is_empty(), "the chunk tree lists no chunks");
        fs.chunks = chunks;
        Ok(fs)
    }

    /// Gathers every CHUNK_ITEM of the chunk tree below `bytenr`.
    fn collect_chunks(
        &self,
        bytenr: u64,
        level: u8,
        devid: u64,
        out: &mut Vec<Chunk>,
    ) -> Result<()> {
        let node = self.read_node(bytenr, level, CHUNK_TREE_OBJECTID)?;
        if level == 0 {
            for item in
                parse_leaf(&node).with_context(|| format!("bad chunk tree leaf at {bytenr}"))?
            {
                if item.key.kind == CHUNK_ITEM_KEY {
                    out.push(
                        parse_chunk(&item.data, item.key.offset, devid).with_context(|| {
                            format!("bad chunk item at logical {}", item.key.offset)
                        })?,
                    );
                }
            }
        } else {
            for (_, child) in
                parse_key_ptrs(&node).with_context(|| format!("bad chunk tree node at {bytenr}"))?
            {
                self.collect_chunks(child, level - 1, devid, out)?;
            }
        }
        Ok(())
    }

    /// The FS tree's root, from its ROOT_ITEM (5, 132, 0) in the root tree.
    fn fs_tree_root(&self) -> Result<TreeRoot> {
        let key = Key {
            objectid: FS_TREE_OBJECTID,
            kind: ROOT_ITEM_KEY,
            offset: 0,
        };
        let logical = self.find_leaf(
            self.root_tree.bytenr,
            self.root_tree.level,
            ROOT_TREE_OBJECTID,
            &key,
        )?;
        let node = self.read_node(logical, 0, ROOT_TREE_OBJECTID)?;
        let items =
            parse_leaf(&node).with_context(|| format!("bad root tree leaf at {logical}"))?;
        let item = items
            .iter()
            .find(|item| item.key == key)
            .context("the root tree has no ROOT_ITEM for the FS tree: the image is damaged")?;
        let data = &item.data;
        // root_item: inode item (160), generation, root_dirid (168),
        // bytenr (176), byte_limit, bytes_used, last_snapshot (208), flags,
        // refs (u32), drop_progress (key), drop_level (237), level (238).
        let root_dirid = read_u64(data, 168)?;
        ensure!(
            root_dirid == ROOT_DIR_OBJECTID,
            "the FS tree's root directory is inode {root_dirid}, not {ROOT_DIR_OBJECTID}"
        );
        let last_snapshot = read_u64(data, 208)?;
        ensure!(
            last_snapshot == 0,
            "the FS tree has been snapshotted, so its blocks may be shared; only a fresh \
             filesystem is supported"
        );
        let level = read_u8(data, 238)?;
        ensure!(
            level <= MAX_LEVEL,
            "the FS tree's level {level} is over {MAX_LEVEL}"
        );
        Ok(TreeRoot {
            bytenr: read_u64(data, 176)?,
            level,
        })
    }

    /// Walks from a tree's root down to the leaf where `key` is or would
    /// be, as the kernel's search does: at each node, the last child whose
    /// first key is not above `key`. Returns the leaf's logical address.
    fn find_leaf(&self, mut bytenr: u64, mut level: u8, owner: u64, key: &Key) -> Result<u64> {
        while level > 0 {
            let node = self.read_node(bytenr, level, owner)?;
            let ptrs =
                parse_key_ptrs(&node).with_context(|| format!("bad tree node at {bytenr}"))?;
            let slot = ptrs
                .partition_point(|(first, _)| first <= key)
                .saturating_sub(1);
            // parse_key_ptrs refuses empty nodes, so the slot exists.
            bytenr = ptrs
                .get(slot)
                .map(|&(_, child)| child)
                .context("empty tree node")?;
            level -= 1;
        }
        Ok(bytenr)
    }

    /// Maps a tree block's logical address to its copies' physical
    /// offsets, requiring the whole block to lie in one chunk.
    fn map(&self, logical: u64) -> Result<Vec<u64>> {
        let len = u64::from(self.nodesize);
        let chunk = self
            .chunks
            .iter()
            .find(|c| logical >= c.logical && logical - c.logical < c.length)
            .with_context(|| {
                format!("no chunk maps logical address {logical}: the image is damaged")
            })?;
        let within = logical - chunk.logical;
        ensure!(
            within
                .checked_add(len)
                .is_some_and(|end| end <= chunk.length),
            "tree block at {logical} crosses the end of its chunk"
        );
        chunk
            .stripes
            .iter()
            .map(|stripe| {
                stripe
                    .checked_add(within)
                    .with_context(|| format!("physical address of {logical} overflows"))
            })
            .collect()
    }

    /// Reads a tree block and checks its checksum, fsid, address, owner
    /// and level, so nothing is edited on the strength of a stray block.
    fn read_node(&self, logical: u64, level: u8, owner: u64) -> Result<Vec<u8>> {
        let physical = *self
            .map(logical)?
            .first()
            .context("a chunk has no stripes")?;
        let mut node = vec![0u8; self.nodesize as usize];
        self.file
            .read_exact_at(&mut node, physical)
            .with_context(|| {
                format!(
                "cannot read the tree block at logical {logical} (byte {physical} of the image); \
                 is the image truncated?"
            )
            })?;
        let stored = read_u32(&node, 0)?;
        let computed = CRC32C.checksum(&node[CSUM_SIZE..]);
        ensure!(
            stored == computed,
            "tree block at {logical} has a wrong checksum (stored {stored:#010x}, computed \
             {computed:#010x}): the image is damaged"
        );
        let fsid: [u8; 16] = read_array(&node, 32)?;
        ensure!(
            fsid == self.tree_fsid,
            "tree block at {logical} belongs to another filesystem"
        );
        let bytenr = read_u64(&node, 48)?;
        ensure!(
            bytenr == logical,
            "tree block at {logical} says it lies at {bytenr}: the image is damaged"
        );
        let block_owner = read_u64(&node, 88)?;
        ensure!(
            block_owner == owner,
            "tree block at {logical} belongs to tree {block_owner}, expected tree {owner}"
        );
        let block_level = read_u8(&node, 100)?;
        ensure!(
            block_level == level,
            "tree block at {logical} has level {block_level}, expected {level}"
        );
        Ok(node)
    }

    /// Checksums a tree block and writes it to every copy.
    fn write_node(&self, logical: u64, node: &mut [u8]) -> Result<()> {
        let csum = CRC32C.checksum(&node[CSUM_SIZE..]);
        node[..4].copy_from_slice(&csum.to_le_bytes());
        node[4..CSUM_SIZE].fill(0);
        for physical in self.map(logical)? {
            self.file.write_all_at(node, physical).with_context(|| {
                format!("cannot write the tree block at logical {logical} (byte {physical})")
            })?;
        }
        Ok(())
    }
}

/// Parses `sys_chunk_array`: (disk key, chunk item) pairs.
fn parse_sys_chunk_array(mut array: &[u8], devid: u64) -> Result<Vec<Chunk>> {
    let mut chunks = Vec::new();
    while !array.is_empty() {
        let key = read_key(array, 0)?;
        ensure!(
            key.kind == CHUNK_ITEM_KEY,
            "an entry has key type {}, not CHUNK_ITEM",
            key.kind
        );
        let body = &array[KEY_SIZE..];
        let num_stripes = usize::from(read_u16(body, 44)?);
        let len = CHUNK_ITEM_SIZE + STRIPE_SIZE * num_stripes;
        let data = body
            .get(..len)
            .context("a chunk item runs past the array")?;
        chunks.push(parse_chunk(data, key.offset, devid)?);
        array = &body[len..];
    }
    ensure!(!chunks.is_empty(), "no system chunk");
    Ok(chunks)
}

/// Parses a `btrfs_chunk` whose key offset (logical start) is `logical`,
/// refusing profiles other than single and DUP and stripes on other
/// devices: only those map a block to whole copies on this one file.
fn parse_chunk(data: &[u8], logical: u64, devid: u64) -> Result<Chunk> {
    let length = read_u64(data, 0)?;
    let kind = read_u64(data, 24)?;
    let num_stripes = usize::from(read_u16(data, 44)?);
    let profile = kind & BLOCK_GROUP_PROFILE_MASK;
    let expected = match profile {
        0 => 1,
        BLOCK_GROUP_DUP => 2,
        _ => bail!(
            "chunk at {logical} has profile bits {profile:#x}; only single and DUP are supported"
        ),
    };
    ensure!(
        num_stripes == expected,
        "chunk at {logical} has {num_stripes} stripes, expected {expected}"
    );
    ensure!(
        length > 0 && logical.checked_add(length).is_some(),
        "chunk at {logical} has a bad length {length}"
    );
    let mut stripes = Vec::with_capacity(num_stripes);
    for i in 0..num_stripes {
        let at = CHUNK_ITEM_SIZE + i * STRIPE_SIZE;
        let stripe_dev = read_u64(data, at)?;
        ensure!(
            stripe_dev == devid,
            "chunk at {logical} lies on device {stripe_dev}, not on this one ({devid})"
        );
        stripes.push(read_u64(data, at + 8)?);
    }
    Ok(Chunk {
        logical,
        length,
        stripes,
    })
}

/// Parses a leaf's items, checking that each item's data lies inside the
/// block after the item headers and that keys strictly increase.
fn parse_leaf(node: &[u8]) -> Result<Vec<Item>> {
    let nritems = read_u32(node, 96)? as usize;
    let data_area = node.len().saturating_sub(HEADER_SIZE);
    ensure!(
        nritems <= data_area / ITEM_SIZE,
        "leaf claims {nritems} items, more than fit"
    );
    let headers_end = HEADER_SIZE + nritems * ITEM_SIZE;
    let mut items: Vec<Item> = Vec::with_capacity(nritems + 2);
    for i in 0..nritems {
        let at = HEADER_SIZE + i * ITEM_SIZE;
        let key = read_key(node, at)?;
        let offset = read_u32(node, at + KEY_SIZE)? as usize;
        let size = read_u32(node, at + KEY_SIZE + 4)? as usize;
        let start = HEADER_SIZE + offset;
        let end = start.checked_add(size).context("item size overflows")?;
        ensure!(
            start >= headers_end && end <= node.len(),
            "item {i} data ({offset}+{size}) lies outside the leaf"
        );
        if let Some(prev) = items.last() {
            ensure!(prev.key < key, "leaf keys are out of order at item {i}");
        }
        items.push(Item {
            key,
            data: node[start..end].to_vec(),
        });
    }
    Ok(items)
}

/// Rebuilds a leaf from `items` with the header of `old`: item headers
/// after the header, data packed from the end of the block down in item
/// order (the layout `btrfs check` expects), free space zeroed.
fn pack_leaf(old: &[u8], items: &[Item]) -> Result<Vec<u8>> {
    let nodesize = old.len();
    let needed = HEADER_SIZE
        + items
            .iter()
            .map(|item| ITEM_SIZE + item.data.len())
            .sum::<usize>();
    ensure!(
        needed <= nodesize,
        "the items need {needed} bytes, the {nodesize}-byte leaf holds {}",
        nodesize
    );
    let mut node = vec![0u8; nodesize];
    node[..HEADER_SIZE].copy_from_slice(&old[..HEADER_SIZE]);
    let nritems = u32::try_from(items.len()).context("too many items")?;
    node[96..100].copy_from_slice(&nritems.to_le_bytes());
    let mut end = nodesize;
    for (i, item) in items.iter().enumerate() {
        let start = end - item.data.len();
        node[start..end].copy_from_slice(&item.data);
        let at = HEADER_SIZE + i * ITEM_SIZE;
        node[at..at + 8].copy_from_slice(&item.key.objectid.to_le_bytes());
        node[at + 8] = item.key.kind;
        node[at + 9..at + KEY_SIZE].copy_from_slice(&item.key.offset.to_le_bytes());
        let offset = u32::try_from(start - HEADER_SIZE).context("leaf offset overflows")?;
        let size = u32::try_from(item.data.len()).context("item size overflows")?;
        node[at + KEY_SIZE..at + KEY_SIZE + 4].copy_from_slice(&offset.to_le_bytes());
        node[at + KEY_SIZE + 4..at + ITEM_SIZE].copy_from_slice(&size.to_le_bytes());
        end = start;
    }
    Ok(node)
}

/// Parses an internal node's key pointers (first key, child address),
/// refusing empty nodes and unsorted keys.
fn parse_key_ptrs(node: &[u8]) -> Result<Vec<(Key, u64)>> {
    let nritems = read_u32(node, 96)? as usize;
    ensure!(nritems > 0, "internal node has no children");
    ensure!(
        nritems <= node.len().saturating_sub(HEADER_SIZE) / KEY_PTR_SIZE,
        "internal node claims {nritems} children, more than fit"
    );
    let mut ptrs: Vec<(Key, u64)> = Vec::with_capacity(nritems);
    for i in 0..nritems {
        let at = HEADER_SIZE + i * KEY_PTR_SIZE;
        let key = read_key(node, at)?;
        if let Some((prev, _)) = ptrs.last() {
            ensure!(*prev < key, "node keys are out of order at pointer {i}");
        }
        ptrs.push((key, read_u64(node, at + KEY_SIZE)?));
    }
    Ok(ptrs)
}

fn read_key(buf: &[u8], at: usize) -> Result<Key> {
    Ok(Key {
        objectid: read_u64(buf, at)?,
        kind: read_u8(buf, at + 8)?,
        offset: read_u64(buf, at + 9)?,
    })
}

/// Bounds-checked fixed-size read: on-disk structures are never trusted
/// to fit their buffer.
fn read_array<const N: usize>(buf: &[u8], at: usize) -> Result<[u8; N]> {
    at.checked_add(N)
        .and_then(|end| buf.get(at..end))
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| format!("a structure runs past its end (byte {at}, {N} bytes)"))
}

fn read_u8(buf: &[u8], at: usize) -> Result<u8> {
    Ok(read_array::<1>(buf, at)?[0])
}

fn read_u16(buf: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(read_array(buf, at)?))
}

fn read_u32(buf: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(read_array(buf, at)?))
}

fn read_u64(buf: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(read_array(buf, at)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::process::Command;

    /// btrfs-progs live in /usr/sbin, which a user's PATH may lack.
    fn tool(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    }

    struct Tools {
        mkfs: PathBuf,
        btrfs: PathBuf,
    }

    fn tools(test: &str) -> Option<Tools> {
        match (tool("mkfs.btrfs"), tool("btrfs")) {
            (Some(mkfs), Some(btrfs)) => Some(Tools { mkfs, btrfs }),
            _ => {
                crate::testing::skipped(test, "mkfs.btrfs (btrfs-progs) not found");
                None
            }
        }
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
            })
            .unwrap_or(false)
    }

    fn run(cmd: &mut Command) -> std::process::Output {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        src: PathBuf,
        image: PathBuf,
    }

    /// A source tree like the OEM partition's: a few files (one with an
    /// xattr, one large enough not to be inline), a subdirectory, plus
    /// `extra_files` small files in `many/` to grow the FS tree.
    fn fixture(t: &Tools, size: u64, args: &[&str], extra_files: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
        std::fs::write(src.join("a.txt"), "hello\n").unwrap();
        let big: Vec<u8> = (0..200 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(src.join("b.bin"), big).unwrap();
        std::fs::write(src.join("sub/c.txt"), "c\n").unwrap();
        std::fs::write(src.join("sub/deeper/d.txt"), "d\n").unwrap();
        match tool("setfattr") {
            Some(setfattr) => {
                run(Command::new(setfattr)
                    .args(["-n", "user.foo", "-v", "bar"])
                    .arg(src.join("a.txt")));
            }
            None => println!("note: setfattr not found, no file xattr in the fixture"),
        }
        if extra_files > 0 {
            std::fs::create_dir(src.join("many")).unwrap();
            for i in 0..extra_files {
                std::fs::write(
                    src.join(format!("many/file-with-a-longish-name-{i:05}")),
                    i.to_string(),
                )
                .unwrap();
            }
        }
        let image = dir.path().join("fs.img");
        File::create(&image).unwrap().set_len(size).unwrap();
        run(Command::new(&t.mkfs)
            .args(["-q", "-L", "OEM", "--rootdir"])
            .arg(&src)
            .args(args)
            .arg(&image));
        Fixture {
            _dir: dir,
            src,
            image,
        }
    }

    fn check_clean(t: &Tools, image: &Path) {
        let out = Command::new(&t.btrfs)
            .args(["check", "--readonly"])
            .arg(image)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("no error found"),
            "btrfs check: {text}"
        );
    }

    /// Names of the root directory's xattrs as `dump-tree -t 5` shows them.
    fn dumped_root_xattrs(t: &Tools, image: &Path) -> Vec<String> {
        let out = run(Command::new(&t.btrfs)
            .args(["inspect-internal", "dump-tree", "-t", "5"])
            .arg(image));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut names = Vec::new();
        let mut inside = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("item ") {
                inside = line.contains("key (256 XATTR_ITEM ");
            } else if inside {
                if let Some(name) = line.strip_prefix("name: ") {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        names
    }

    struct Mount(PathBuf);

    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    /// Mounts read-only and reads the xattrs and files back through the
    /// kernel, the final judge of what was written.
    fn mount_check(test: &str, t: &Tools, f: &Fixture, expect: &[(String, Vec<u8>)]) {
        if !is_root() {
            crate::testing::skipped(&format!("{test} (mount part)"), "not root");
            return;
        }
        let mnt = tempfile::tempdir().unwrap();
        run(Command::new("mount")
            .args(["-o", "loop,ro"])
            .arg(&f.image)
            .arg(mnt.path()));
        let mount = Mount(mnt.path().to_path_buf());
        let getfattr = tool("getfattr").expect("getfattr (attr) is needed for the mount check");
        for (name, value) in expect {
            let out = run(Command::new(&getfattr)
                .args(["--absolute-names", "--only-values", "-n", name])
                .arg(&mount.0));
            assert_eq!(&out.stdout, value, "xattr {name}");
        }
        let all = run(Command::new(&getfattr)
            .args(["--absolute-names", "-d", "-m-", "-e", "hex"])
            .arg(&mount.0));
        let all = String::from_utf8_lossy(&all.stdout);
        assert_eq!(
            all.lines().filter(|l| l.contains('=')).count(),
            expect.len(),
            "{all}"
        );
        if expect.iter().any(|(name, _)| name == "btrfs.compression") {
            let out = run(Command::new(&t.btrfs)
                .args(["property", "get"])
                .arg(&mount.0)
                .arg("compression"));
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "compression=zlib"
            );
        }
        for rel in ["a.txt", "b.bin", "sub/c.txt", "sub/deeper/d.txt"] {
            assert_eq!(
                std::fs::read(f.src.join(rel)).unwrap(),
                std::fs::read(mount.0.join(rel)).unwrap(),
                "{rel}"
            );
        }
        if tool("setfattr").is_some() {
            let out = run(Command::new(&getfattr)
                .args(["--absolute-names", "--only-values", "-n", "user.foo"])
                .arg(mount.0.join("a.txt")));
            assert_eq!(out.stdout, b"bar");
        }
    }

    fn wanted() -> Vec<(String, Vec<u8>)> {
        vec![
            ("btrfs.compression".to_string(), b"zlib".to_vec()),
            ("user.x".to_string(), vec![0x00, 0x0a, 0xff]),
        ]
    }

    fn round_trip(test: &str, size: u64, args: &[&str], extra_files: usize) {
        let Some(t) = tools(test) else { return };
        let f = fixture(&t, size, args, extra_files);
        add_root_xattrs(&f.image, &wanted()).unwrap();
        check_clean(&t, &f.image);
        assert_eq!(
            dumped_root_xattrs(&t, &f.image),
            ["btrfs.compression", "user.x"]
        );
        mount_check(test, &t, &f, &wanted());
    }

    #[test]
    fn name_hash_matches_the_kernel() {
        // Key offsets the kernel wrote for `btrfs property set` and
        // `setfattr` on a mounted filesystem.
        assert_eq!(name_hash(b"btrfs.compression"), 550297449);
        assert_eq!(name_hash(b"user.x"), 153960099);
        assert_eq!(name_hash(b"user.foo"), 3980819260);
    }

    #[test]
    fn mixed_128m() {
        round_trip(
            "mixed_128m",
            128 << 20,
            &["--mixed", "-m", "single", "-d", "single"],
            0,
        );
    }

    #[test]
    fn mixed_1g() {
        round_trip(
            "mixed_1g",
            1 << 30,
            &["--mixed", "-m", "single", "-d", "single"],
            0,
        );
    }

    #[test]
    fn separate_groups_128m() {
        round_trip(
            "separate_groups_128m",
            128 << 20,
            &["-m", "single", "-d", "single"],
            0,
        );
    }

    #[test]
    fn separate_groups_1g() {
        round_trip(
            "separate_groups_1g",
            1 << 30,
            &["-m", "single", "-d", "single"],
            0,
        );
    }

    #[test]
    fn multi_level_fs_tree() {
        let test = "multi_level_fs_tree";
        let Some(t) = tools(test) else { return };
        let args = ["--mixed", "-m", "single", "-d", "single", "-n", "4096"];
        // mkfs.btrfs does not always pack the root directory's leaf the
        // same way: seen here, 2 times in 17, it left 20 to 52 bytes too
        // few for the two xattrs (which the tool refuses, saying so: it
        // does not split leaves). The test is of a tree of several levels:
        // a fixture whose root leaf has room is made again, a few times.
        let mut made = None;
        for _ in 0..5 {
            let f = fixture(&t, 128 << 20, &args, 3000);
            let file = File::open(&f.image).unwrap();
            let root = Fs::open(file).unwrap().fs_tree_root().unwrap();
            assert!(root.level >= 1, "fixture FS tree is a single leaf");
            match add_root_xattrs(&f.image, &wanted()) {
                Ok(()) => {
                    made = Some(f);
                    break;
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    assert!(msg.contains("has no room"), "{msg}");
                    println!("note: {msg}; making the fixture again");
                }
            }
        }
        let f = made.expect("5 fixtures whose root leaf had no room for 2 xattrs");
        check_clean(&t, &f.image);
        assert_eq!(
            dumped_root_xattrs(&t, &f.image),
            ["btrfs.compression", "user.x"]
        );
        mount_check(test, &t, &f, &wanted());
    }

    #[test]
    fn dup_metadata_writes_both_copies() {
        let test = "dup_metadata_writes_both_copies";
        let Some(t) = tools(test) else { return };
        let f = fixture(&t, 1 << 30, &["-m", "dup", "-d", "single"], 0);
        add_root_xattrs(&f.image, &wanted()).unwrap();
        check_clean(&t, &f.image);
        let fs = Fs::open(File::open(&f.image).unwrap()).unwrap();
        let root = fs.fs_tree_root().unwrap();
        let key = Key {
            objectid: ROOT_DIR_OBJECTID,
            kind: XATTR_ITEM_KEY,
            offset: 0,
        };
        let leaf = fs
            .find_leaf(root.bytenr, root.level, FS_TREE_OBJECTID, &key)
            .unwrap();
        let copies = fs.map(leaf).unwrap();
        assert_eq!(copies.len(), 2);
        let read = |at: u64| {
            let mut buf = vec![0u8; fs.nodesize as usize];
            fs.file.read_exact_at(&mut buf, at).unwrap();
            buf
        };
        assert_eq!(read(copies[0]), read(copies[1]));
        mount_check(test, &t, &f, &wanted());
    }

    #[test]
    fn adding_twice_is_a_no_op() {
        let Some(t) = tools("adding_twice_is_a_no_op") else {
            return;
        };
        let f = fixture(
            &t,
            128 << 20,
            &["--mixed", "-m", "single", "-d", "single"],
            0,
        );
        add_root_xattrs(&f.image, &wanted()).unwrap();
        let before = std::fs::read(&f.image).unwrap();
        add_root_xattrs(&f.image, &wanted()).unwrap();
        add_root_xattrs(&f.image, &wanted()[1..]).unwrap();
        assert!(std::fs::read(&f.image).unwrap() == before, "image changed");
        check_clean(&t, &f.image);
    }

    #[test]
    fn another_value_is_an_error() {
        let Some(t) = tools("another_value_is_an_error") else {
            return;
        };
        let f = fixture(
            &t,
            128 << 20,
            &["--mixed", "-m", "single", "-d", "single"],
            0,
        );
        add_root_xattrs(&f.image, &wanted()).unwrap();
        let before = std::fs::read(&f.image).unwrap();
        let change = [
            ("user.new".to_string(), b"1".to_vec()),
            ("btrfs.compression".to_string(), b"zstd".to_vec()),
        ];
        let err = format!("{:#}", add_root_xattrs(&f.image, &change).unwrap_err());
        assert!(err.contains("another value"), "{err}");
        assert!(std::fs::read(&f.image).unwrap() == before, "image changed");
        let twice = [
            ("user.y".to_string(), b"1".to_vec()),
            ("user.y".to_string(), b"2".to_vec()),
        ];
        let err = format!("{:#}", add_root_xattrs(&f.image, &twice).unwrap_err());
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn bad_names_and_sizes_are_refused() {
        let Some(t) = tools("bad_names_and_sizes_are_refused") else {
            return;
        };
        let args = ["--mixed", "-m", "single", "-d", "single", "-n", "4096"];
        let f = fixture(&t, 128 << 20, &args, 0);
        let before = std::fs::read(&f.image).unwrap();
        for (name, len, says) in [
            ("", 1, "empty"),
            ("user.a\0b", 1, "NUL"),
            ("user.big", 4000, "too large"),
            // Fits an item, not the free space of the root's leaf.
            ("user.big", 3500, "no room"),
        ] {
            let err = add_root_xattrs(&f.image, &[(name.to_string(), vec![7; len])]).unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains(says), "{name:?} {len}: {err}");
        }
        assert!(std::fs::read(&f.image).unwrap() == before, "image changed");
        check_clean(&t, &f.image);
    }

    #[test]
    fn names_with_the_same_hash_share_an_item() {
        let test = "names_with_the_same_hash_share_an_item";
        let Some(t) = tools(test) else { return };
        let mut seen = HashMap::new();
        let pair = (0u32..)
            .find_map(|i| {
                let name = format!("user.c{i}");
                seen.insert(name_hash(name.as_bytes()), name.clone())
                    .map(|other| (other, name))
            })
            .unwrap();
        let xattrs = vec![
            (pair.0.clone(), b"first".to_vec()),
            (pair.1.clone(), b"second".to_vec()),
        ];
        let f = fixture(
            &t,
            128 << 20,
            &["--mixed", "-m", "single", "-d", "single"],
            0,
        );
        add_root_xattrs(&f.image, &xattrs[..1]).unwrap();
        add_root_xattrs(&f.image, &xattrs).unwrap();
        check_clean(&t, &f.image);
        let mut names = vec![pair.0, pair.1];
        names.sort();
        assert_eq!(dumped_root_xattrs(&t, &f.image), names);
        mount_check(test, &t, &f, &xattrs);
    }

    #[test]
    fn not_btrfs_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = dir.path().join("zeros");
        File::create(&zeros).unwrap().set_len(1 << 20).unwrap();
        let err = format!("{:#}", add_root_xattrs(&zeros, &wanted()).unwrap_err());
        assert!(err.contains("not a btrfs"), "{err}");
        let tiny = dir.path().join("tiny");
        std::fs::write(&tiny, b"hello").unwrap();
        let err = format!("{:#}", add_root_xattrs(&tiny, &wanted()).unwrap_err());
        assert!(err.contains("too small"), "{err}");
        let err = format!(
            "{:#}",
            add_root_xattrs(&dir.path().join("missing"), &wanted()).unwrap_err()
        );
        assert!(err.contains("cannot open"), "{err}");
    }

    #[test]
    fn broken_superblock_checksum_is_refused() {
        let Some(t) = tools("broken_superblock_checksum_is_refused") else {
            return;
        };
        let f = fixture(
            &t,
            128 << 20,
            &["--mixed", "-m", "single", "-d", "single"],
            0,
        );
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f.image)
            .unwrap();
        // A byte of the label.
        file.write_all_at(b"X", SUPER_OFFSET + 300).unwrap();
        drop(file);
        let before = std::fs::read(&f.image).unwrap();
        let err = format!("{:#}", add_root_xattrs(&f.image, &wanted()).unwrap_err());
        assert!(err.contains("superblock checksum"), "{err}");
        assert!(std::fs::read(&f.image).unwrap() == before, "image changed");
    }

    #[test]
    fn broken_leaf_checksum_is_refused() {
        let Some(t) = tools("broken_leaf_checksum_is_refused") else {
            return;
        };
        let f = fixture(
            &t,
            128 << 20,
            &["--mixed", "-m", "single", "-d", "single"],
            0,
        );
        let fs = Fs::open(File::open(&f.image).unwrap()).unwrap();
        let root = fs.fs_tree_root().unwrap();
        let physical = fs.map(root.bytenr).unwrap()[0];
        drop(fs);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f.image)
            .unwrap();
        file.write_all_at(&[0xee], physical + 2000).unwrap();
        drop(file);
        let err = format!("{:#}", add_root_xattrs(&f.image, &wanted()).unwrap_err());
        assert!(err.contains("wrong checksum"), "{err}");
    }
}
