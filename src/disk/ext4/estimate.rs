//! How many blocks and inodes a tree will take in ext4 (the filesystem's
//! block size, 256-byte inodes, extents, metadata_csum), computed from
//! its metadata alone so that space can be checked, and made, before
//! anything is written.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Blocks and inodes needed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    pub blocks: u64,
    pub inodes: u64,
    /// File data alone, for messages.
    pub data_bytes: u64,
}

impl std::ops::AddAssign for Need {
    fn add_assign(&mut self, other: Need) {
        self.blocks += other.blocks;
        self.inodes += other.inodes;
        self.data_bytes += other.data_bytes;
    }
}

impl Need {
    /// What is left to find once `freed` (a tree removed first) is free
    /// again; never below zero.
    pub fn less(self, freed: Need) -> Need {
        Need {
            blocks: self.blocks.saturating_sub(freed.blocks),
            inodes: self.inodes.saturating_sub(freed.inodes),
            data_bytes: self.data_bytes.saturating_sub(freed.data_bytes),
        }
    }
}

/// What kind of entry is being counted.
pub enum Item {
    Dir,
    File {
        size: u64,
    },
    Symlink {
        target_len: usize,
    },
    /// Another name for an inode counted before: only a directory entry.
    HardLink,
    Other,
}

const EXTENT_MAX_BLOCKS: u64 = 32_768;
const EXTENTS_IN_INODE: u64 = 4;
/// Bytes for xattrs inside a 256-byte inode with extra_isize 32, after the
/// 4-byte in-inode header.
const IN_INODE_XATTR_SPACE: u64 = 256 - 128 - 32 - 4;
/// The checksum tail of each directory block.
const DIR_TAIL: u64 = 12;

pub struct Estimator {
    block_size: u64,
    need: Need,
    /// Bytes of directory entries per directory.
    dir_bytes: HashMap<Vec<u8>, u64>,
}

fn round4(n: u64) -> u64 {
    n.div_ceil(4) * 4
}

impl Estimator {
    pub fn new(block_size: u64) -> Estimator {
        Estimator {
            block_size,
            need: Need::default(),
            dir_bytes: HashMap::new(),
        }
    }

    /// Counts one entry at `path` ('/'-separated, relative) with its
    /// xattrs (name with namespace prefix, value length).
    pub fn add(&mut self, path: &[u8], item: Item, xattrs: &[(usize, usize)]) {
        let bs = self.block_size;
        let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        if !name.is_empty() {
            *self.dir_bytes.entry(parent.to_vec()).or_default() += 8 + round4(name.len() as u64);
        }
        if matches!(item, Item::HardLink) {
            return;
        }
        self.need.inodes += 1;
        match item {
            Item::Dir => {
                self.dir_bytes.entry(path.to_vec()).or_default();
            }
            Item::File { size } => {
                let blocks = size.div_ceil(bs);
                let extents = blocks.div_ceil(EXTENT_MAX_BLOCKS);
                let index = if extents > EXTENTS_IN_INODE {
                    extents.div_ceil((bs - 12) / 12)
                } else {
                    0
                };
                self.need.blocks += blocks + index;
                self.need.data_bytes += size;
            }
            Item::Symlink { target_len } => {
                if target_len >= 60 {
                    self.need.blocks += 1;
                }
            }
            Item::HardLink | Item::Other => {}
        }
        // xattr entries: 16-byte header + name (without its namespace
        // prefix, roughly) + value, each rounded to 4 bytes.
        let bytes: u64 = xattrs
            .iter()
            .map(|&(n, v)| 16 + round4(n as u64) + round4(v as u64))
            .sum::<u64>();
        if !xattrs.is_empty() && bytes + 4 > IN_INODE_XATTR_SPACE {
            self.need.blocks += (bytes + 32).div_ceil(bs);
        }
    }

    /// The total, directories included.
    pub fn finish(mut self) -> Need {
        let per_block = self.block_size - DIR_TAIL;
        for bytes in self.dir_bytes.values() {
            // "." and ".." take 12 bytes each.
            self.need.blocks += (bytes + 24).div_ceil(per_block).max(1);
        }
        self.need
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_and_inodes() {
        let mut e = Estimator::new(4096);
        e.add(b"", Item::Dir, &[]);
        e.add(b"d", Item::Dir, &[]);
        e.add(b"d/f", Item::File { size: 4097 }, &[]);
        e.add(b"d/g", Item::HardLink, &[]);
        e.add(b"d/s", Item::Symlink { target_len: 100 }, &[]);
        e.add(b"d/big", Item::File { size: 1 << 30 }, &[(11, 2000)]);
        let n = e.finish();
        // Data 2 + 262144, an extent index block (8 extents > 4 in the
        // inode), the symlink's block, an xattr block, 2 directory blocks.
        assert_eq!(n.blocks, 2 + 262_144 + 1 + 1 + 1 + 2);
        assert_eq!(n.inodes, 5);
        // Many entries spill over several directory blocks.
        let mut e = Estimator::new(4096);
        for i in 0..1000 {
            e.add(format!("many/{i:08}").as_bytes(), Item::Other, &[]);
        }
        let n = e.finish();
        assert_eq!(n.blocks, (1000 * 16 + 24u64).div_ceil(4084));
    }
}
