//! A small read-only reader of bbolt (etcd-io/bbolt, ex boltdb) files, for
//! containerd's metadata database (`io.containerd.metadata.v1.bolt/meta.db`).
//!
//! Why not a crate: `bbolt-rs` (a port of bbolt) opens files by host path
//! with mmap and file locks, and we read ROOT through `FsRead`, not through
//! the host; it also brings a large dependency tree for a few hundred bytes
//! of metadata. The format is simple and stable (version 2 since 2014):
//!
//! - page 0 and page 1 are meta pages; the valid one (magic, version, FNV-1a
//!   checksum) with the higher transaction id is current;
//! - every page starts with `id u64, flags u16, count u16, overflow u32`
//!   and spans `(overflow + 1) * page_size` bytes;
//! - branch pages hold `pos u32, ksize u32, pgid u64` elements, leaf pages
//!   `flags u32, pos u32, ksize u32, vsize u32` elements, where `pos` is
//!   the offset of the key from the element itself;
//! - a leaf value with flag 1 is a bucket: `root u64, sequence u64`, and
//!   when root is 0 an inline page follows in the value itself.
//!
//! Everything is bounds-checked: a damaged file gives an error, never a
//! panic; a page cycle is cut by a depth limit, and a page reached twice in
//! one bucket's walk is an error (so that a walk reads each byte once and a
//! damaged file cannot make it list more entries than it holds).

use std::collections::HashSet;

use anyhow::{bail, ensure, Context, Result};

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const BUCKET_LEAF_FLAG: u32 = 0x01;
const BUCKET_HEADER: usize = 16;
/// bbolt trees of any real size are a few levels deep; deeper means a loop.
const MAX_DEPTH: usize = 64;

/// An open database: the whole file in memory.
#[derive(Clone, Copy)]
pub struct Db<'a> {
    data: &'a [u8],
    page_size: usize,
    root: u64,
}

/// A value in a bucket: a nested bucket or plain bytes.
pub enum Entry<'a> {
    Bucket(Bucket<'a>),
    Value(&'a [u8]),
}

/// A bucket: its B+tree on pages, or inline in its parent's leaf.
#[derive(Clone, Copy)]
pub struct Bucket<'a> {
    db: Db<'a>,
    root: Root<'a>,
}

#[derive(Clone, Copy)]
enum Root<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    let s = b
        .get(off..off + 2)
        .context("bbolt: field past the end of its page")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b
        .get(off..off + 4)
        .context("bbolt: field past the end of its page")?;
    Ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64> {
    let s = b
        .get(off..off + 8)
        .context("bbolt: field past the end of its page")?;
    Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn fnv1a64(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A meta page's (txid, page size, root bucket's page) when it is valid.
fn meta_at(data: &[u8], off: usize) -> Option<(u64, usize, u64)> {
    // The meta struct follows the page header: magic, version, pageSize,
    // flags (u32 each), root bucket (root u64, sequence u64), freelist,
    // pgid, txid, checksum (u64 each).
    let m = data.get(off + PAGE_HEADER..off + PAGE_HEADER + 64)?;
    let magic = u32_at(m, 0).ok()?;
    let version = u32_at(m, 4).ok()?;
    let page_size = u32_at(m, 8).ok()? as usize;
    let root = u64_at(m, 16).ok()?;
    let txid = u64_at(m, 48).ok()?;
    let checksum = u64_at(m, 56).ok()?;
    if magic != MAGIC || version != VERSION || fnv1a64(&m[..56]) != checksum {
        return None;
    }
    if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
        return None;
    }
    Some((txid, page_size, root))
}

impl<'a> Db<'a> {
    /// Reads the meta pages of a whole bbolt file.
    pub fn open(data: &'a [u8]) -> Result<Self> {
        let first = meta_at(data, 0);
        // The second meta page sits one page further; when the first is
        // damaged its page size is unknown: try the usual ones.
        let mut sizes = vec![];
        if let Some((_, ps, _)) = first {
            sizes.push(ps);
        }
        sizes.extend([4096, 8192, 16384, 65536]);
        let second = sizes.iter().find_map(|&ps| meta_at(data, ps));
        let (_, page_size, root) = match (first, second) {
            (Some(a), Some(b)) => {
                if b.0 > a.0 {
                    b
                } else {
                    a
                }
            }
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => {
                bail!("not a bbolt database (no valid meta page: wrong magic, version or checksum)")
            }
        };
        Ok(Db {
            data,
            page_size,
            root,
        })
    }

    /// The top-level bucket (its keys are the root buckets' names).
    pub fn root(&self) -> Bucket<'a> {
        Bucket {
            db: *self,
            root: Root::Page(self.root),
        }
    }

    fn page(&self, id: u64) -> Result<&'a [u8]> {
        let start = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_mul(self.page_size))
            .filter(|&s| s + PAGE_HEADER <= self.data.len())
            .with_context(|| format!("bbolt: page {id} is past the end of the file"))?;
        let overflow = u32_at(self.data, start + 12)? as usize;
        let len = (overflow + 1)
            .checked_mul(self.page_size)
            .context("bbolt: page overflow count too large")?;
        let end = (start + len).min(self.data.len());
        Ok(&self.data[start..end])
    }

    /// Page `id` of a walk that has read the pages in `seen`: a page (or
    /// an overflow page of it) read twice is a damaged tree, refused, so
    /// that a walk reads each byte of the file at most once.
    fn page_once(&self, id: u64, seen: &mut HashSet<u64>) -> Result<&'a [u8]> {
        let page = self.page(id)?;
        let pages = page.len().div_ceil(self.page_size) as u64;
        for p in id..id + pages {
            ensure!(
                seen.insert(p),
                "bbolt: page {p} is reached twice in one bucket (a damaged tree)"
            );
        }
        Ok(page)
    }
}

impl<'a> Bucket<'a> {
    /// Every key of the bucket with its value, in key order.
    pub fn entries(&self) -> Result<Vec<(&'a [u8], Entry<'a>)>> {
        let mut out = vec![];
        let mut seen = HashSet::new();
        match self.root {
            Root::Page(id) => {
                let page = self.db.page_once(id, &mut seen)?;
                self.walk(page, 0, &mut seen, &mut out)?
            }
            Root::Inline(page) => self.walk(page, 0, &mut seen, &mut out)?,
        }
        Ok(out)
    }

    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Entry<'a>>> {
        Ok(self
            .entries()?
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v))
    }

    /// The nested bucket under `key` (None when absent or not a bucket).
    pub fn bucket(&self, key: &[u8]) -> Result<Option<Bucket<'a>>> {
        Ok(match self.get(key)? {
            Some(Entry::Bucket(b)) => Some(b),
            _ => None,
        })
    }

    /// The plain value under `key` (None when absent or a bucket).
    pub fn value(&self, key: &[u8]) -> Result<Option<&'a [u8]>> {
        Ok(match self.get(key)? {
            Some(Entry::Value(v)) => Some(v),
            _ => None,
        })
    }

    fn walk(
        &self,
        page: &'a [u8],
        depth: usize,
        seen: &mut HashSet<u64>,
        out: &mut Vec<(&'a [u8], Entry<'a>)>,
    ) -> Result<()> {
        ensure!(
            depth < MAX_DEPTH,
            "bbolt: tree deeper than {MAX_DEPTH} levels (a page loop?)"
        );
        let flags = u16_at(page, 8)?;
        let count = u16_at(page, 10)? as usize;
        for i in 0..count {
            let e = PAGE_HEADER + i * ELEMENT;
            if flags & BRANCH != 0 {
                let child = u64_at(page, e + 8)?;
                let page = self.db.page_once(child, seen)?;
                self.walk(page, depth + 1, seen, out)?;
            } else if flags & LEAF != 0 {
                let eflags = u32_at(page, e)?;
                let pos = u32_at(page, e + 4)? as usize;
                let ksize = u32_at(page, e + 8)? as usize;
                let vsize = u32_at(page, e + 12)? as usize;
                let k0 = e + pos;
                let key = page
                    .get(k0..k0 + ksize)
                    .context("bbolt: key past the end of its page")?;
                let value = page
                    .get(k0 + ksize..k0 + ksize + vsize)
                    .context("bbolt: value past the end of its page")?;
                let entry = if eflags & BUCKET_LEAF_FLAG != 0 {
                    let root = u64_at(value, 0)?;
                    let root = if root == 0 {
                        Root::Inline(
                            value
                                .get(BUCKET_HEADER..)
                                .context("bbolt: inline bucket without its page")?,
                        )
                    } else {
                        Root::Page(root)
                    };
                    Entry::Bucket(Bucket { db: self.db, root })
                } else {
                    Entry::Value(value)
                };
                out.push((key, entry));
            } else {
                bail!("bbolt: page with flags {flags:#x} where a branch or leaf page belongs");
            }
        }
        Ok(())
    }
}

/// A real containerd 1.6 metadata database (tests/fixtures/
/// containerd-meta.db.gz, see its .gen.sh), for the tests here and of
/// `inspect`.
/// Go's `binary.Uvarint`, how containerd stores numbers; None when
/// malformed.
pub fn uvarint(b: &[u8]) -> Option<u64> {
    let mut x = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        x |= u64::from(byte & 0x7f).checked_shl(7 * i as u32)?;
        if byte < 0x80 {
            return Some(x);
        }
    }
    None
}

/// Go's `binary.Varint` (zig-zag); None when malformed.
pub fn varint(b: &[u8]) -> Option<i64> {
    let u = uvarint(b)?;
    Some((u >> 1) as i64 ^ -((u & 1) as i64))
}

#[cfg(test)]
pub(crate) fn fixture_meta_db() -> Vec<u8> {
    use std::io::Read;
    const GZ: &[u8] = include_bytes!("../../../tests/fixtures/containerd-meta.db.gz");
    let mut out = vec![];
    flate2::read::GzDecoder::new(GZ)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A bbolt file of `tree` for tests: the root bucket on one leaf page
/// (with overflow pages as needed), every nested bucket inline; both meta
/// pages valid.
#[cfg(test)]
pub(crate) mod write {
    use std::collections::BTreeMap;

    use super::*;

    /// A bucket's keys and values.
    #[derive(Clone, Debug, Default)]
    pub struct Tree(pub BTreeMap<Vec<u8>, Node>);

    #[derive(Clone, Debug)]
    pub enum Node {
        Value(Vec<u8>),
        Bucket(Tree),
    }

    impl Tree {
        /// The bucket at `path` (made as needed).
        pub fn bucket(&mut self, path: &[&[u8]]) -> &mut Tree {
            let mut t = self;
            for p in path {
                let n =
                    t.0.entry(p.to_vec())
                        .or_insert_with(|| Node::Bucket(Tree::default()));
                t = match n {
                    Node::Bucket(b) => b,
                    Node::Value(_) => panic!("{} is a value", String::from_utf8_lossy(p)),
                };
            }
            t
        }
        /// Sets `key` in the bucket at `path`.
        pub fn set(&mut self, path: &[&[u8]], key: &[u8], value: &[u8]) {
            self.bucket(path)
                .0
                .insert(key.to_vec(), Node::Value(value.to_vec()));
        }
        /// Removes `key` (a value or a bucket) from the bucket at `path`.
        pub fn remove(&mut self, path: &[&[u8]], key: &[u8]) {
            assert!(self.bucket(path).0.remove(key).is_some(), "no such key");
        }
    }

    /// A leaf page of `tree` (header id 0 for inline pages).
    fn leaf(tree: &Tree, id: u64) -> Vec<u8> {
        let n = tree.0.len();
        let mut elems = vec![];
        let mut data = vec![];
        for (i, (k, node)) in tree.0.iter().enumerate() {
            let (flags, v) = match node {
                Node::Value(v) => (0u32, v.clone()),
                Node::Bucket(b) => {
                    let mut v = vec![0u8; BUCKET_HEADER];
                    v.extend(leaf(b, 0));
                    (BUCKET_LEAF_FLAG, v)
                }
            };
            let pos = (n - i) * ELEMENT + data.len();
            elems.extend(flags.to_le_bytes());
            elems.extend((pos as u32).to_le_bytes());
            elems.extend((k.len() as u32).to_le_bytes());
            elems.extend((v.len() as u32).to_le_bytes());
            data.extend(k);
            data.extend(v);
        }
        let mut page = id.to_le_bytes().to_vec();
        page.extend(LEAF.to_le_bytes());
        page.extend((n as u16).to_le_bytes());
        page.extend(0u32.to_le_bytes());
        page.extend(elems);
        page.extend(data);
        page
    }

    /// The whole file.
    pub fn build(tree: &Tree) -> Vec<u8> {
        const PS: usize = 4096;
        let mut root = leaf(tree, 2);
        let pages = root.len().div_ceil(PS).max(1);
        root[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        root.resize(pages * PS, 0);
        let mut out = vec![0u8; 2 * PS];
        for (i, txid) in [(0usize, 1u64), (1, 2)] {
            let mut m = vec![];
            m.extend(MAGIC.to_le_bytes());
            m.extend(VERSION.to_le_bytes());
            m.extend((PS as u32).to_le_bytes());
            m.extend(0u32.to_le_bytes());
            m.extend(2u64.to_le_bytes()); // root bucket's page
            m.extend(0u64.to_le_bytes()); // sequence
            m.extend(0u64.to_le_bytes()); // freelist
            m.extend(((2 + pages) as u64).to_le_bytes()); // pgid high water
            m.extend(txid.to_le_bytes());
            let sum = fnv1a64(&m);
            m.extend(sum.to_le_bytes());
            let off = i * PS;
            out[off..off + 8].copy_from_slice(&(i as u64).to_le_bytes());
            out[off + 8..off + 10].copy_from_slice(&4u16.to_le_bytes()); // meta page
            out[off + PAGE_HEADER..off + PAGE_HEADER + m.len()].copy_from_slice(&m);
        }
        out.extend(root);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_bbolt() {
        let err = Db::open(&[0u8; 8192]).err().expect("zeros are no database");
        assert!(err.to_string().contains("not a bbolt database"), "{err}");
        assert!(Db::open(b"short").is_err());
    }

    #[test]
    fn fnv_matches_the_reference_values() {
        // FNV-1a 64 test vectors ("" and "a").
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    use super::fixture_meta_db as meta_db;

    #[test]
    fn bolt_reads_nested_and_inline_buckets() {
        let data = meta_db();
        let db = Db::open(&data).unwrap();
        let root = db.root();
        let names: Vec<Vec<u8>> = root
            .entries()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.to_vec())
            .collect();
        assert!(names.contains(&b"v1".to_vec()), "{names:?}");
        let v1 = root.bucket(b"v1").unwrap().unwrap();
        let ns: Vec<Vec<u8>> = v1
            .entries()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k.to_vec())
            .collect();
        // Namespaces, and containerd's schema version as a plain value.
        assert_eq!(
            ns,
            [b"k8s.io".to_vec(), b"ns1".to_vec(), b"version".to_vec()]
        );
        assert!(v1.value(b"version").unwrap().is_some());
        // Keys come in bbolt's (byte) order, and plain values are not buckets.
        let target = v1
            .bucket(b"ns1")
            .unwrap()
            .unwrap()
            .bucket(b"images")
            .unwrap()
            .unwrap()
            .bucket(b"127.0.0.1:5000/fp/test:1")
            .unwrap()
            .unwrap()
            .bucket(b"target")
            .unwrap()
            .unwrap();
        assert!(target.bucket(b"digest").unwrap().is_none());
        assert_eq!(
            target.value(b"mediatype").unwrap(),
            Some(&b"application/vnd.docker.distribution.manifest.v2+json"[..])
        );
    }

    #[test]
    fn bolt_falls_back_to_the_other_meta_page_and_rejects_damage() {
        let mut data = meta_db();
        let page_size = 4096;
        // Break the checksum of meta page 1 then of meta page 0: with one left
        // the database still opens, with none it is refused.
        data[page_size + 16 + 56] ^= 0xff;
        let db = Db::open(&data).unwrap();
        assert!(db.root().bucket(b"v1").unwrap().is_some());
        data[16 + 56] ^= 0xff;
        let err = Db::open(&data).err().expect("both meta pages broken");
        assert!(err.to_string().contains("not a bbolt database"), "{err}");
    }

    #[test]
    fn bolt_errs_on_a_truncated_file_without_panicking() {
        let data = meta_db();
        let mut errors = 0;
        for len in (0..data.len()).step_by(4093) {
            let cut = &data[..len];
            let r = Db::open(cut).and_then(|db| containerd_images_of(&db));
            if r.is_err() {
                errors += 1;
            }
        }
        assert!(errors > 0);
    }

    #[test]
    fn the_test_writer_reads_back() {
        use super::write::{build, Tree};
        let mut t = Tree::default();
        let big = vec![7u8; 10_000];
        t.set(&[b"v1", b"ns", b"images", b"a\nb"], b"k", b"\x00\xff");
        t.set(&[b"v1"], b"big", &big);
        let data = build(&t);
        let db = Db::open(&data).unwrap();
        let v1 = db.root().bucket(b"v1").unwrap().unwrap();
        assert_eq!(v1.value(b"big").unwrap(), Some(&big[..]));
        let img = v1
            .bucket(b"ns")
            .unwrap()
            .unwrap()
            .bucket(b"images")
            .unwrap()
            .unwrap()
            .bucket(b"a\nb")
            .unwrap()
            .unwrap();
        assert_eq!(img.value(b"k").unwrap(), Some(&b"\x00\xff"[..]));
    }

    fn containerd_images_of(db: &Db) -> Result<usize> {
        let mut n = 0;
        fn walk(b: Bucket, n: &mut usize) -> Result<()> {
            for (_, e) in b.entries()? {
                *n += 1;
                if let Entry::Bucket(c) = e {
                    walk(c, n)?;
                }
            }
            Ok(())
        }
        walk(db.root(), &mut n)?;
        Ok(n)
    }
}
