//! A tar stream reader that frames PAX records by their length.
//!
//! Why our own, over tar-rs's header types: tar-rs 0.4 splits a PAX header
//! on `\n` before reading the lengths, so any binary value holding the byte
//! 0x0a (file capabilities such as `cap_dac_override,cap_fowner`, IMA
//! signatures, `user.*` data) is "malformed", and its `path()`/`link_name()`
//! skip bad records and can take the tail of a value for a record of its
//! own. tar-core 0.1 frames records correctly but stops silently at a record
//! whose length field is not a number. Here every record is `<length>
//! <key>=<value>\n` exactly as POSIX (and Go's archive/tar, which wrote the
//! stream Docker pulled) reads it; anything else is an error naming the
//! entry, never skipped. Header fields (octal and base-256 numbers, ustar
//! prefixes) are decoded by tar-rs's `Header`.
//!
//! What the metadata headers before an entry mean follows Go's
//! `Reader.next` (golang/go src/archive/tar/reader.go), the reader dockerd
//! unpacks layers with: the last PAX header (`x`) counts, each replacing
//! the records of one before; the last GNU long name and link count, and
//! win over PAX `path` and `linkpath`; an empty PAX value keeps the
//! header's field; a global header (`g`), which Go returns as an entry of
//! its own and dockerd skips, changes no entry. GNU sparse files (the old GNU format `S`, and PAX
//! formats 0.0, 0.1 and 1.0, as `readOldGNUSparseMap`,
//! `readGNUSparsePAXHeaders` and `readGNUSparseMap1x0`/`0x1` find their
//! maps) come out as regular files of their real size whose data reads
//! expanded, holes as zeros made as they are read; maps Go's
//! `validateSparseEntries` refuses, and maps whose fragments do not add up
//! to the data stored (where Go's sparse reader fails), are errors naming
//! the entry. A sparse map is held in memory, at most 16 MiB of it.

use std::borrow::Cow;
use std::io::{self, Read, Seek, SeekFrom};

use anyhow::{anyhow, bail, Context, Result};
pub use tar::EntryType;

use crate::compress::read_full;

const BLOCK: usize = 512;
/// Largest PAX header or GNU long name accepted: far above anything real
/// (xattr values are at most 64 KiB on Linux), small enough for memory.
const MAX_META: u64 = 16 << 20;
/// Metadata headers (PAX, GNU long names) allowed before one entry.
const MAX_META_HEADERS: usize = 16;

/// One entry's metadata, with every PAX and GNU override applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub path: Vec<u8>,
    pub kind: EntryType,
    /// Symlink target or hard link name.
    pub link: Option<Vec<u8>>,
    /// Bytes of data that follow the header.
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Device numbers of character and block devices.
    pub dev: (u32, u32),
    /// `SCHILY.xattr.*` records: name without the prefix, value as bytes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// The path for messages.
    pub fn show(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.path)
    }
}

/// Reads entries one after the other; each entry's data is read (or
/// skipped) before the next header.
pub struct Archive<R> {
    inner: R,
    skip: fn(&mut R, u64) -> io::Result<()>,
    /// Data of the current entry not read yet, and its padding.
    remaining: u64,
    pad: u64,
    /// Headers read so far, for messages.
    headers: u64,
    /// Offset of the next byte of the stream.
    pos: u64,
    done: bool,
    /// Where the current entry's data is when it is a GNU sparse file.
    sparse: Option<Sparse>,
}

/// The data of a GNU sparse file: `frags` (offset, length; in order, none
/// empty) are read from the archive, the holes between them and after the
/// last one up to `size` are zeros. `pos` is the offset of the next byte,
/// `next` the first fragment not wholly read.
struct Sparse {
    frags: Vec<(u64, u64)>,
    size: u64,
    pos: u64,
    next: usize,
}

/// Where a GNU sparse file's map is, as Go's archive/tar finds it.
enum SparseMap {
    /// Old GNU format (type `S`): in the header and the extension blocks
    /// after it.
    Old,
    /// PAX formats 0.0 and 0.1: in `GNU.sparse.numblocks` and
    /// `GNU.sparse.map` (0.0's repeated records joined).
    Records { numblocks: Vec<u8>, map: Vec<u8> },
    /// PAX format 1.0: at the start of the entry's data.
    Data,
}

/// An entry: its metadata and a reader of its data.
pub struct Entry<'a, R> {
    pub meta: Meta,
    pub data: Data<'a, R>,
}

/// Reads the data of the current entry (and no further).
pub struct Data<'a, R> {
    ar: &'a mut Archive<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let ar = &mut *self.ar;
        let Some(sp) = ar.sparse.as_mut() else {
            return ar.read_stored(buf);
        };
        let left = sp.size - sp.pos;
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        match sp.frags.get(sp.next) {
            Some(&(off, len)) if sp.pos >= off => {
                // In a fragment of data: read from the archive.
                let n = want.min(usize::try_from(off + len - sp.pos).unwrap_or(usize::MAX));
                let n = ar.read_stored(&mut buf[..n])?;
                let sp = ar.sparse.as_mut().expect("the sparse state of this entry");
                sp.pos += n as u64;
                if sp.pos == off + len {
                    sp.next += 1;
                }
                Ok(n)
            }
            frag => {
                // In a hole: zeros up to the next fragment, or the end.
                let end = frag.map_or(sp.size, |&(off, _)| off);
                let n = want.min(usize::try_from(end - sp.pos).unwrap_or(usize::MAX));
                buf[..n].fill(0);
                sp.pos += n as u64;
                Ok(n)
            }
        }
    }
}

impl<R: Read> Archive<R> {
    /// Reads the bytes of the current entry as stored in the archive.
    fn read_stored(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let ar = self;
        if ar.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(ar.remaining).unwrap_or(usize::MAX));
        let n = ar.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry's data",
            ));
        }
        ar.remaining -= n as u64;
        ar.pos += n as u64;
        Ok(n)
    }
}

fn skip_by_reading<R: Read>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the archive ends inside an entry's data",
        ));
    }
    Ok(())
}

fn skip_by_seeking<R: Read + Seek>(r: &mut R, n: u64) -> io::Result<()> {
    let n = i64::try_from(n).map_err(|_| io::Error::other("entry too large to skip"))?;
    r.seek(SeekFrom::Current(n)).map(|_| ())
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// The checksum a header should carry: the byte sum with the checksum
/// field counted as spaces (unsigned, as POSIX says; some old writers
/// summed signed bytes, which is accepted too).
fn checksums(block: &[u8; BLOCK]) -> (u64, i64) {
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    (unsigned, signed)
}

/// Splits PAX extended header data into its records, by their lengths.
pub fn pax_records(data: &[u8]) -> Result<Vec<(&[u8], &[u8])>> {
    let mut out = vec![];
    let mut rest = data;
    let mut at = 0usize;
    while !rest.is_empty() {
        let bad = |why: &str| anyhow!("malformed PAX record at byte {at} of the PAX header: {why}");
        let sp = rest
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("no length field"))?;
        let digits = &rest[..sp];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad("the length is not a decimal number"));
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("the length does not fit"))?;
        if len < sp + 3 {
            return Err(bad("the length is shorter than the record"));
        }
        if len > rest.len() {
            return Err(bad(&format!(
                "its length {len} runs past the end of the header ({} bytes left)",
                rest.len()
            )));
        }
        let record = &rest[..len];
        if record[len - 1] != b'\n' {
            return Err(bad("it does not end with a newline"));
        }
        let kv = &record[sp + 1..len - 1];
        let eq = kv
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("no '=' between key and value"))?;
        let (key, value) = (&kv[..eq], &kv[eq + 1..]);
        if key.is_empty() {
            return Err(bad("empty key"));
        }
        if key.contains(&0) {
            return Err(bad("a NUL byte in the key"));
        }
        out.push((key, value));
        rest = &rest[len..];
        at += len;
    }
    Ok(out)
}

/// Parses a PAX time (`1700000000`, `1700000000.5`, `-1.25`) into seconds
/// and nanoseconds.
pub fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let digits = &frac[..frac.len().min(9)];
    let mut nsec: u32 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    for _ in digits.len()..9 {
        nsec *= 10;
    }
    if s.starts_with('-') && nsec > 0 {
        // -1.25 means 1.25 s before the epoch: -2 s + 0.75 s.
        return Some((secs.checked_sub(1)?, 1_000_000_000 - nsec));
    }
    Some((secs, nsec))
}

fn show(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

fn decimal(key: &[u8], value: &[u8]) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "PAX record {}={:?} is not a decimal number that fits",
                show(key),
                show(value)
            )
        })
}

/// A numeric header field; an empty one (all NULs or spaces) is 0, as GNU
/// tar and Go's archive/tar read it.
fn number<T: Default>(parsed: io::Result<T>, raw: &[u8]) -> io::Result<T> {
    if raw.iter().all(|&b| b == 0 || b == b' ') {
        return Ok(T::default());
    }
    parsed
}

/// The value of a GNU long name or long link entry: up to the first NUL.
fn gnu_string(data: Vec<u8>) -> Vec<u8> {
    match data.iter().position(|&b| b == 0) {
        Some(i) => data[..i].to_vec(),
        None => data,
    }
}

/// Go's `strconv.ParseInt(s, 10, 64)`: an optional sign, then digits.
pub fn go_int(s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(s).ok()?;
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.strip_prefix('+').unwrap_or(s).parse().ok()
}

/// Go's `parseNumeric` of a header field: base-256 when the high bit is
/// set, else octal between NULs and spaces (empty is 0).
pub fn go_numeric(b: &[u8]) -> Option<i64> {
    if b.first().is_some_and(|&c| c & 0x80 != 0) {
        let inv = if b[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 > 0 {
                return None;
            }
            x = x << 8 | c as u64;
        }
        if x >> 63 > 0 {
            return None;
        }
        return Some(if inv == 0xff { !(x as i64) } else { x as i64 });
    }
    go_octal(b)
}

/// Go's `parseOctal`: the digits between leading and trailing NULs and
/// spaces, up to a NUL (empty is 0).
pub fn go_octal(b: &[u8]) -> Option<i64> {
    let Some(start) = b.iter().position(|&c| c != b' ' && c != 0) else {
        return Some(0);
    };
    let end = b.iter().rposition(|&c| c != b' ' && c != 0)? + 1;
    let field = &b[start..end];
    let digits = &field[..field.iter().position(|&c| c == 0).unwrap_or(field.len())];
    let mut x: u64 = 0;
    for &c in digits {
        if !(b'0'..=b'7').contains(&c) {
            return None;
        }
        x = x.checked_mul(8)?.checked_add((c - b'0') as u64)?;
    }
    Some(x as i64)
}

/// Whether an entry's PAX records make it a GNU sparse file, and where
/// its map is, as Go's `readGNUSparsePAXHeaders` decides: versions 0.0,
/// 0.1 and 1.0 by `GNU.sparse.major` and `minor`, another version is not
/// sparse, no version with a map is 0.x. Renames the entry after
/// `GNU.sparse.name` and gives it the real size (`GNU.sparse.size`, else
/// `GNU.sparse.realsize`).
fn pax_sparse(pax: &[(Vec<u8>, Vec<u8>)], meta: &mut Meta) -> Result<Option<SparseMap>> {
    // The last record of a key, as in Go's map; missing is empty.
    let get = |key: &[u8]| -> &[u8] {
        pax.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map_or(&b""[..], |(_, v)| v.as_slice())
    };
    let (major, minor) = (get(b"GNU.sparse.major"), get(b"GNU.sparse.minor"));
    let map = match (major, minor) {
        (b"0", b"0" | b"1") => SparseMap::Records {
            numblocks: get(b"GNU.sparse.numblocks").to_vec(),
            map: get(b"GNU.sparse.map").to_vec(),
        },
        (b"1", b"0") => SparseMap::Data,
        (b"", b"") if !get(b"GNU.sparse.map").is_empty() => SparseMap::Records {
            numblocks: get(b"GNU.sparse.numblocks").to_vec(),
            map: get(b"GNU.sparse.map").to_vec(),
        },
        // Another version (read as a plain file, as Go does), or no map.
        _ => return Ok(None),
    };
    let name = get(b"GNU.sparse.name");
    if !name.is_empty() {
        if name.contains(&0) {
            bail!("a NUL byte in its PAX GNU.sparse.name");
        }
        meta.path = name.to_vec();
    }
    let size = match get(b"GNU.sparse.size") {
        b"" => get(b"GNU.sparse.realsize"),
        s => s,
    };
    if !size.is_empty() {
        let n = go_int(size)
            .ok_or_else(|| anyhow!("its GNU sparse real size {:?} is not a number", show(size)))?;
        meta.size = u64::try_from(n).map_err(|_| anyhow!("a negative GNU sparse real size {n}"))?;
    }
    Ok(Some(map))
}

/// The map of a PAX 0.0 or 0.1 sparse file: `numblocks` fragments, each
/// an offset and a length in the comma-separated `map`.
fn sparse_map_0x1(numblocks: &[u8], map: &[u8]) -> Result<Vec<(i64, i64)>> {
    let count = go_int(numblocks)
        .filter(|&n| n >= 0 && n.checked_mul(2).is_some())
        .ok_or_else(|| {
            anyhow!(
                "its PAX GNU.sparse.numblocks {:?} is not a count",
                show(numblocks)
            )
        })?;
    let numbers: Vec<&[u8]> = match map {
        b"" => vec![],
        m => m.split(|&b| b == b',').collect(),
    };
    if numbers.len() as u64 != 2 * count as u64 {
        bail!(
            "its sparse map holds {} numbers for {count} fragments (two each)",
            numbers.len()
        );
    }
    numbers
        .chunks(2)
        .map(|p| match (go_int(p[0]), go_int(p[1])) {
            (Some(off), Some(len)) => Ok((off, len)),
            _ => Err(anyhow!(
                "fragment {:?},{:?} of its sparse map is not a pair of numbers",
                show(p[0]),
                show(p[1])
            )),
        })
        .collect()
}

/// What the metadata headers before an entry said.
#[derive(Default)]
struct Pending {
    /// The records of the last PAX header.
    pax: Vec<(Vec<u8>, Vec<u8>)>,
    /// The last GNU long name and long link; empty ones change nothing.
    long_name: Vec<u8>,
    long_link: Vec<u8>,
    headers: usize,
}

/// The records of an entry's PAX header, with GNU sparse format 0.0's
/// repeated `GNU.sparse.offset` and `GNU.sparse.numbytes` records joined
/// into one `GNU.sparse.map` record, as Go's `parsePAX` joins them (they
/// must alternate, offset first, and hold no comma).
fn pax_header(data: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = vec![];
    let mut map: Vec<&[u8]> = vec![];
    for (k, v) in pax_records(data)? {
        if matches!(k, b"GNU.sparse.offset" | b"GNU.sparse.numbytes") {
            let want: &[u8] = if map.len().is_multiple_of(2) {
                b"GNU.sparse.offset"
            } else {
                b"GNU.sparse.numbytes"
            };
            if k != want || v.contains(&b',') {
                bail!(
                    "GNU sparse record {}={:?} out of order (each GNU.sparse.offset must be followed by its GNU.sparse.numbytes)",
                    show(k),
                    show(v)
                );
            }
            map.push(v);
            continue;
        }
        out.push((k.to_vec(), v.to_vec()));
    }
    if !map.is_empty() {
        out.push((b"GNU.sparse.map".to_vec(), map.join(&b',')));
    }
    Ok(out)
}

impl<R: Read> Archive<R> {
    /// Reads `inner` sequentially (data that is not read is read and
    /// discarded).
    pub fn new(inner: R) -> Archive<R> {
        Archive::with_skip(inner, skip_by_reading::<R>)
    }

    fn with_skip(inner: R, skip: fn(&mut R, u64) -> io::Result<()>) -> Archive<R> {
        Archive {
            inner,
            skip,
            remaining: 0,
            pad: 0,
            headers: 0,
            pos: 0,
            done: false,
            sparse: None,
        }
    }

    /// Skips what is left of the current entry's data and padding.
    fn finish_entry(&mut self) -> Result<()> {
        self.sparse = None;
        let n = self.remaining + self.pad;
        if n > 0 {
            (self.skip)(&mut self.inner, n).context("the archive is truncated")?;
            self.pos += n;
            self.remaining = 0;
            self.pad = 0;
        }
        Ok(())
    }

    /// Reads the next header block: None at the end of the archive (a zero
    /// block, or the end of the stream at a block boundary).
    fn read_header(&mut self) -> Result<Option<[u8; BLOCK]>> {
        let mut block = [0u8; BLOCK];
        let n = read_full(&mut self.inner, &mut block).context("reading the archive")?;
        if n == 0 {
            return Ok(None);
        }
        if n < BLOCK {
            bail!(
                "the archive ends inside a header at byte {} (truncated archive?)",
                self.pos
            );
        }
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        self.headers += 1;
        let (unsigned, signed) = checksums(&block);
        let stored = tar::Header::from_byte_slice(&block).cksum().ok();
        if stored != Some(unsigned as u32) && stored.map(|s| s as i64) != Some(signed) {
            bail!(
                "header #{} at byte {} has a wrong checksum: not a tar archive, or a corrupt one",
                self.headers,
                self.pos
            );
        }
        self.pos += BLOCK as u64;
        Ok(Some(block))
    }

    /// Reads the data of a metadata entry (PAX header, GNU long name).
    fn read_meta(&mut self, size: u64, what: &str) -> Result<Vec<u8>> {
        if size > MAX_META {
            bail!(
                "a {what} of {size} bytes at byte {}: more than the {} MiB accepted",
                self.pos,
                MAX_META >> 20
            );
        }
        let mut data = vec![0u8; size as usize];
        let n = read_full(&mut self.inner, &mut data).context("reading the archive")?;
        if n < data.len() {
            bail!("the archive ends inside a {what} (truncated archive?)");
        }
        self.pos += size;
        self.pad = padding(size);
        self.finish_entry()?;
        Ok(data)
    }

    /// The next entry, or None at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'_, R>>> {
        if self.done {
            return Ok(None);
        }
        self.finish_entry()?;
        let mut pending = Pending::default();
        let block = loop {
            let Some(block) = self.read_header()? else {
                self.done = true;
                if pending.headers > 0 {
                    bail!(
                        "the archive ends after a PAX or GNU long-name header, without the entry it describes"
                    );
                }
                return Ok(None);
            };
            let h = tar::Header::from_byte_slice(&block);
            let label = format!("header #{} ({:?})", self.headers, show(&h.path_bytes()));
            let what = || label.clone();
            let ty = h.entry_type();
            if !matches!(
                ty,
                EntryType::XHeader
                    | EntryType::XGlobalHeader
                    | EntryType::GNULongName
                    | EntryType::GNULongLink
            ) {
                break block;
            }
            pending.headers += 1;
            if pending.headers > MAX_META_HEADERS {
                bail!(
                    "{}: more than {MAX_META_HEADERS} PAX or long-name headers in a row",
                    what()
                );
            }
            let size = h
                .entry_size()
                .with_context(|| format!("{}: size", what()))?;
            let data = self.read_meta(size, "PAX or long-name header")?;
            match ty {
                EntryType::XHeader => {
                    // Each PAX header replaces the records of one before
                    // it: only the last one describes the entry, as Go's
                    // archive/tar and GNU tar read it.
                    pending.pax = pax_header(&data).with_context(|| {
                        format!("{}, the PAX header of the entry after it", what())
                    })?;
                }
                EntryType::XGlobalHeader => {
                    // Go's reader returns a global header as an entry of
                    // its own, which dockerd skips: its records change no
                    // entry, and what came before it is dropped.
                    pax_records(&data)
                        .with_context(|| format!("{}, a global PAX header", what()))?;
                    pending = Pending::default();
                }
                // The last of several long names (links) counts.
                EntryType::GNULongName => pending.long_name = gnu_string(data),
                _ => pending.long_link = gnu_string(data),
            }
        };
        let (mut meta, stored, sparse) = self.resolve(&block, pending)?;
        self.remaining = stored;
        self.pad = padding(stored);
        if let Some(map) = sparse {
            let name = meta.show().into_owned();
            let ctx = || format!("archive entry {name:?}, a GNU sparse file");
            let frags = match map {
                SparseMap::Old => self.old_sparse_map(&block, &mut meta).with_context(ctx)?,
                SparseMap::Records { numblocks, map } => {
                    sparse_map_0x1(&numblocks, &map).with_context(ctx)?
                }
                SparseMap::Data => self.sparse_map_1x0().with_context(ctx)?,
            };
            self.sparse = Some(self.check_sparse(frags, meta.size).with_context(ctx)?);
            // Read as Go's reader gives it: a regular file of the real size.
            meta.kind = EntryType::Regular;
        }
        Ok(Some(Entry {
            meta,
            data: Data { ar: self },
        }))
    }

    /// Applies the entry's own PAX records and GNU long names over the
    /// header's fields (global records change nothing, as in Go).
    ///
    /// Follows Go's `Reader.next`: PAX records first (an empty value keeps
    /// the header's field), then a GNU long name or link over them; for a
    /// GNU sparse file, `GNU.sparse.name` and its real size last, and where
    /// its map is. Also gives the size of the data stored.
    fn resolve(
        &self,
        block: &[u8; BLOCK],
        pending: Pending,
    ) -> Result<(Meta, u64, Option<SparseMap>)> {
        let h = tar::Header::from_byte_slice(block);
        let header_path = h.path_bytes().into_owned();
        let ctx = || format!("archive entry {:?}", show(&header_path));
        let kind = h.entry_type();
        let old = h.as_old();
        let mut meta = Meta {
            path: header_path.clone(),
            kind,
            link: h.link_name_bytes().map(Cow::into_owned),
            size: number(h.entry_size(), &old.size).with_context(ctx)?,
            mode: number(h.mode(), &old.mode).with_context(ctx)? & 0o7777,
            uid: number(h.uid(), &old.uid).with_context(ctx)?,
            gid: number(h.gid(), &old.gid).with_context(ctx)?,
            mtime: number(h.mtime(), &old.mtime).with_context(ctx)? as i64,
            mtime_nsec: 0,
            dev: (0, 0),
            xattrs: vec![],
        };
        if matches!(kind, EntryType::Char | EntryType::Block) {
            // devmajor and devminor lie at the same offsets in ustar and
            // GNU headers.
            meta.dev = (
                number(h.device_major(), &block[329..337])
                    .with_context(ctx)?
                    .unwrap_or(0),
                number(h.device_minor(), &block[337..345])
                    .with_context(ctx)?
                    .unwrap_or(0),
            );
        }
        for (key, value) in &pending.pax {
            let ctx = || format!("archive entry {:?}", meta.show());
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                // A later record for the same name wins, as in a map.
                meta.xattrs.retain(|(n, _)| n != name);
                meta.xattrs.push((name.to_vec(), value.clone()));
                continue;
            }
            let numeric = matches!(
                key.as_slice(),
                b"path" | b"linkpath" | b"size" | b"uid" | b"gid" | b"mtime"
            );
            if numeric && value.is_empty() {
                continue;
            }
            match key.as_slice() {
                b"path" | b"linkpath" => {
                    if value.contains(&0) {
                        bail!("{}: a NUL byte in its PAX {}", ctx(), show(key));
                    }
                    if key == b"path" {
                        meta.path = value.clone();
                    } else {
                        meta.link = Some(value.clone());
                    }
                }
                b"size" => meta.size = decimal(key, value).with_context(ctx)?,
                b"uid" => meta.uid = decimal(key, value).with_context(ctx)?,
                b"gid" => meta.gid = decimal(key, value).with_context(ctx)?,
                b"mtime" => {
                    (meta.mtime, meta.mtime_nsec) = parse_pax_time(value)
                        .ok_or_else(|| anyhow!("{}: bad PAX mtime {:?}", ctx(), show(value)))?
                }
                // hdrcharset (BINARY or UTF-8): names are bytes here anyway.
                // atime, ctime, uname, gname, comment, vendor records: unused.
                _ => {}
            }
        }
        if !pending.long_name.is_empty() {
            meta.path = pending.long_name;
        }
        if !pending.long_link.is_empty() {
            meta.link = Some(pending.long_link);
        }
        // The bytes stored in the archive; a sparse file's real size may
        // be set next.
        let stored = meta.size;
        let sparse = if kind == EntryType::GNUSparse {
            Some(SparseMap::Old)
        } else {
            pax_sparse(&pending.pax, &mut meta).with_context(ctx)?
        };
        if sparse.is_some()
            && matches!(
                kind,
                EntryType::Link
                    | EntryType::Symlink
                    | EntryType::Char
                    | EntryType::Block
                    | EntryType::Directory
                    | EntryType::Fifo
            )
        {
            bail!(
                "{}: a {kind:?} entry with a GNU sparse map: a corrupt archive",
                ctx()
            );
        }
        if meta.path.is_empty() {
            bail!("header #{}: an entry with an empty name", self.headers);
        }
        Ok((meta, stored, sparse))
    }

    /// The map of an old GNU sparse file: four fragments in the header,
    /// 21 in each extension block after it while the one before says
    /// there are more; the real size in the header. Go stops reading a
    /// block's fragments at the first whose offset starts with a NUL.
    fn old_sparse_map(&mut self, block: &[u8; BLOCK], meta: &mut Meta) -> Result<Vec<(i64, i64)>> {
        if &block[257..265] != b"ustar  \0" {
            bail!("a sparse header (type S) that is not in the GNU format");
        }
        let size = go_numeric(&block[483..495])
            .ok_or_else(|| anyhow!("its real size field is not a number"))?;
        meta.size = u64::try_from(size).map_err(|_| anyhow!("a negative real size {size}"))?;
        let mut frags = vec![];
        let mut block = *block;
        let (mut at, mut count, mut extended) = (386, 4, 482);
        let mut blocks = 0u64;
        loop {
            for i in 0..count {
                let e = &block[at + 24 * i..at + 24 * (i + 1)];
                if e[0] == 0 {
                    break;
                }
                match (go_numeric(&e[..12]), go_numeric(&e[12..])) {
                    (Some(off), Some(len)) => frags.push((off, len)),
                    _ => bail!("a fragment of its sparse map is not a number"),
                }
            }
            if block[extended] == 0 {
                return Ok(frags);
            }
            blocks += 1;
            if blocks * BLOCK as u64 > MAX_META {
                bail!(
                    "a sparse map of more than {} MiB of extension blocks",
                    MAX_META >> 20
                );
            }
            let n = read_full(&mut self.inner, &mut block).context("reading the archive")?;
            if n < BLOCK {
                bail!("the archive ends inside its sparse map (truncated archive?)");
            }
            self.pos += BLOCK as u64;
            (at, count, extended) = (0, 21, 504);
        }
    }

    /// The map of a PAX 1.0 sparse file, at the start of its data: decimal
    /// numbers each ending with a newline, the count of fragments then
    /// each one's offset and length, up to the end of the block holding
    /// the last newline.
    fn sparse_map_1x0(&mut self) -> Result<Vec<(i64, i64)>> {
        let mut text = vec![];
        let mut newlines = 0u64;
        let mut at = 0;
        let mut feed = |ar: &mut Self, text: &mut Vec<u8>, want: u64| -> Result<()> {
            while newlines < want {
                if ar.remaining < BLOCK as u64 {
                    bail!("its sparse map runs past the end of its data");
                }
                if text.len() as u64 >= MAX_META {
                    bail!("a sparse map of more than {} MiB", MAX_META >> 20);
                }
                let mut block = [0u8; BLOCK];
                let n = read_full(&mut ar.inner, &mut block).context("reading the archive")?;
                if n < BLOCK {
                    bail!("the archive ends inside its sparse map (truncated archive?)");
                }
                ar.remaining -= BLOCK as u64;
                ar.pos += BLOCK as u64;
                newlines += block.iter().filter(|&&b| b == b'\n').count() as u64;
                text.extend_from_slice(&block);
            }
            Ok(())
        };
        let mut token = |text: &[u8]| -> Result<i64> {
            let end = at + text[at..].iter().position(|&b| b == b'\n').unwrap_or(0);
            let tok = &text[at..end];
            at = end + 1;
            go_int(tok).ok_or_else(|| anyhow!("{:?} in its sparse map is not a number", show(tok)))
        };
        feed(self, &mut text, 1)?;
        let count = token(&text)?;
        if count < 0 || count.checked_mul(2).is_none() {
            bail!("its sparse map counts {count} fragments");
        }
        feed(self, &mut text, 1 + 2 * count as u64)?;
        let mut frags = vec![];
        for _ in 0..count {
            let off = token(&text)?;
            let len = token(&text)?;
            frags.push((off, len));
        }
        Ok(frags)
    }

    /// Checks a sparse map as Go's `validateSparseEntries` does (no
    /// negative numbers, fragments in order, none overlapping, none past
    /// the real size), and that its fragments hold exactly the data left
    /// in the archive (Go fails the read otherwise: "sparse file
    /// references non-existent data", "contains unreferenced data").
    fn check_sparse(&self, map: Vec<(i64, i64)>, size: u64) -> Result<Sparse> {
        let mut end = 0u64;
        let mut frags = vec![];
        let mut data = 0u64;
        for (i, (off, len)) in map.into_iter().enumerate() {
            let bad = |why: &str| {
                anyhow!(
                    "fragment #{} (offset {off}, length {len}) of its sparse map {why}",
                    i + 1
                )
            };
            let (Ok(o), Ok(l)) = (u64::try_from(off), u64::try_from(len)) else {
                return Err(bad("is negative"));
            };
            let Some(e) = o.checked_add(l).filter(|&e| e <= i64::MAX as u64) else {
                return Err(bad("overflows"));
            };
            if e > size {
                return Err(bad(&format!("runs past the real size {size}")));
            }
            if o < end {
                return Err(bad("overlaps the one before or is out of order"));
            }
            end = e;
            if l > 0 {
                frags.push((o, l));
                data += l;
            }
        }
        if data != self.remaining {
            bail!(
                "its sparse map places {data} bytes of data, but the archive holds {} for it",
                self.remaining
            );
        }
        Ok(Sparse {
            frags,
            size,
            pos: 0,
            next: 0,
        })
    }
}

impl<R: Read + Seek> Archive<R> {
    /// Like [`Archive::new`], seeking over data that is not read.
    pub fn seekable(inner: R) -> Archive<R> {
        Archive::with_skip(inner, skip_by_seeking::<R>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: &[u8]) -> Vec<u8> {
        let body = [key.as_bytes(), b"=", value, b"\n"].concat();
        let mut len = body.len() + 1;
        loop {
            let n = len.to_string().len() + 1 + body.len();
            if n == len {
                break;
            }
            len = n;
        }
        [format!("{len} ").as_bytes(), &body].concat()
    }

    fn header(name: &[u8], ty: EntryType, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(ty);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(7);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn padded(mut v: Vec<u8>) -> Vec<u8> {
        v.resize(v.len() + padding(v.len() as u64) as usize, 0);
        v
    }

    /// A PAX header with `records`, then a file entry.
    fn with_pax(records: &[u8], name: &[u8], ty: EntryType, data: &[u8]) -> Vec<u8> {
        [
            header(b"PaxHeaders/x", EntryType::XHeader, records.len() as u64),
            padded(records.to_vec()),
            header(name, ty, data.len() as u64),
            padded(data.to_vec()),
            vec![0; 1024],
        ]
        .concat()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(Meta, Vec<u8>)>> {
        let mut ar = Archive::new(bytes);
        let mut out = vec![];
        while let Some(mut e) = ar.next_entry()? {
            let mut data = vec![];
            e.data.read_to_end(&mut data)?;
            out.push((e.meta, data));
        }
        Ok(out)
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1700000000, 0)));
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1700000000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.-5"), None);
    }

    #[test]
    fn binary_values_with_newlines_are_framed_by_length() {
        // cap_dac_override,cap_fowner+ep: the second byte of the mask is 0x0a.
        let cap = [
            1, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let values: [&[u8]; 4] = [&cap, b"\n", b"\nfirst", b"last\n\n\n"];
        let mut records = vec![];
        for (i, v) in values.iter().enumerate() {
            records.extend(record(&format!("SCHILY.xattr.user.v{i}"), v));
        }
        let got = read_all(&with_pax(&records, b"f", EntryType::Regular, b"data")).unwrap();
        assert_eq!(got.len(), 1);
        let (meta, data) = &got[0];
        assert_eq!(data, b"data");
        for (i, v) in values.iter().enumerate() {
            assert_eq!(meta.xattrs[i].0, format!("user.v{i}").into_bytes());
            assert_eq!(&meta.xattrs[i].1, v);
        }
    }

    #[test]
    fn a_value_cannot_smuggle_a_record() {
        // tar-rs 0.4 reads this value's tail as a linkpath record.
        let records = [
            record("SCHILY.xattr.user.x", b"a\n22 linkpath=/etc/evil\n"),
            record("linkpath", b"good/target"),
        ]
        .concat();
        let got = read_all(&with_pax(&records, b"l", EntryType::Symlink, b"")).unwrap();
        assert_eq!(got[0].0.link.as_deref(), Some(&b"good/target"[..]));
        assert_eq!(got[0].0.xattrs[0].1, b"a\n22 linkpath=/etc/evil\n");
        // And without a real linkpath, the header's link name stays.
        let records = record("SCHILY.xattr.user.x", b"a\n22 linkpath=/etc/evil\n");
        let got = read_all(&with_pax(&records, b"l", EntryType::Symlink, b"")).unwrap();
        assert_eq!(got[0].0.link, None);
    }

    #[test]
    fn names_and_targets_with_newlines() {
        let records = [
            record("path", b"dir/new\nline"),
            record("linkpath", b"to\nthere"),
            record("hdrcharset", b"BINARY"),
        ]
        .concat();
        let got = read_all(&with_pax(&records, b"x", EntryType::Symlink, b"")).unwrap();
        assert_eq!(got[0].0.path, b"dir/new\nline");
        assert_eq!(got[0].0.link.as_deref(), Some(&b"to\nthere"[..]));
    }

    #[test]
    fn malformed_records_are_errors() {
        let cases: [(&[u8], &str); 7] = [
            (b"99 path=x\n", "runs past the end"),
            (b"10 pathx\n\n", "no '='"),
            (b"11 path=xyz", "newline"),
            (b"abc path=x\n", "not a decimal"),
            (b"99999999999999999999999 a=b\n", "no length field"),
            (b"3 a\n", "shorter"),
            (b"10 path=x\n\0\0", "no length field"),
        ];
        for (records, want) in cases {
            let err = read_all(&with_pax(records, b"f", EntryType::Regular, b""))
                .err()
                .unwrap_or_else(|| panic!("{records:?} was accepted"));
            let msg = format!("{err:#}");
            assert!(msg.contains(want), "{records:?}: {msg}");
            assert!(msg.contains("PaxHeaders/x"), "{records:?}: {msg}");
        }
        let bad_uid = record("uid", b"12x");
        let err = read_all(&with_pax(&bad_uid, b"f", EntryType::Regular, b"")).unwrap_err();
        assert!(format!("{err:#}").contains("\"f\""), "{err:#}");
    }

    #[test]
    fn overrides_and_global_headers() {
        let global = [record("uid", b"5"), record("comment", b"git")].concat();
        let local = [
            record("size", b"3"),
            record("gid", b"4000000000"),
            record("mtime", b"-1.5"),
        ]
        .concat();
        let bytes = [
            header(b"g", EntryType::XGlobalHeader, global.len() as u64),
            padded(global),
            header(b"PaxHeaders/x", EntryType::XHeader, local.len() as u64),
            padded(local),
            // The header says 0 bytes; PAX says 3.
            header(b"a", EntryType::Regular, 0),
            padded(b"abc".to_vec()),
            header(b"b", EntryType::Regular, 1),
            padded(b"z".to_vec()),
            vec![0; 1024],
        ]
        .concat();
        let got = read_all(&bytes).unwrap();
        assert_eq!(got[0].1, b"abc");
        // Go applies no global record to an entry (dockerd skips the
        // global header Go returns as an entry of its own).
        assert_eq!((got[0].0.uid, got[0].0.gid), (0, 4_000_000_000));
        assert_eq!((got[0].0.mtime, got[0].0.mtime_nsec), (-2, 500_000_000));
        // The local records were for `a` only.
        assert_eq!((got[1].0.uid, got[1].0.gid, got[1].0.mtime), (0, 0, 7));
        assert_eq!(got[1].1, b"z");
        // A global path renames nothing, and drops the PAX header and
        // long name before it (Go returns the global header in their
        // place).
        let global = record("path", b"p");
        let local = record("path", b"lost");
        let bytes = [
            header(b"PaxHeaders/x", EntryType::XHeader, local.len() as u64),
            padded(local),
            header(b"././@LongLink", EntryType::GNULongName, 5),
            padded(b"gone\0".to_vec()),
            header(b"g", EntryType::XGlobalHeader, global.len() as u64),
            padded(global),
            header(b"kept", EntryType::Regular, 0),
            vec![0; 1024],
        ]
        .concat();
        let got = read_all(&bytes).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.path, b"kept");
        // A global header alone is an archive of nothing.
        let global = record("comment", b"git");
        let bytes = [
            header(b"g", EntryType::XGlobalHeader, global.len() as u64),
            padded(global),
            vec![0; 1024],
        ]
        .concat();
        assert!(read_all(&bytes).unwrap().is_empty());
        // Its records are framed as strictly as any.
        let bytes = [
            header(b"g", EntryType::XGlobalHeader, 11),
            padded(b"99 path=x\n".to_vec()),
            vec![0; 1024],
        ]
        .concat();
        assert!(format!("{:#}", read_all(&bytes).unwrap_err()).contains("global"));
    }

    #[test]
    fn gnu_long_names_and_truncation() {
        let long = vec![b'n'; 300];
        let bytes = [
            header(b"././@LongLink", EntryType::GNULongName, 301),
            padded([&long[..], b"\0"].concat()),
            header(b"short", EntryType::Regular, 2),
            padded(b"hi".to_vec()),
        ]
        .concat();
        let got = read_all(&bytes).unwrap();
        assert_eq!(got[0].0.path, long);
        // Cut inside the data.
        let err = read_all(&bytes[..bytes.len() - 511]).unwrap_err();
        assert!(format!("{err:#}").contains("ends inside"), "{err:#}");
        // A header cut short, and a long name with nothing after it.
        assert!(read_all(&bytes[..1000]).is_err());
        assert!(read_all(&bytes[..1024]).is_err());
        // Not a tar: the checksum does not match.
        let err = read_all(&[0x55; 2048]).unwrap_err();
        assert!(format!("{err:#}").contains("checksum"), "{err:#}");
    }

    /// `sparse.bin`, 3 MiB + 100 bytes (mode 0640): data at 1 MiB and
    /// (unaligned) past 2 MiB, a hole at the start and at the end; GNU tar
    /// makes its archive with `args`, `zz` (`next!`) after it. None when
    /// tar is not installed.
    fn gnu_sparse_tar(test: &str, args: &[&str]) -> Option<(Vec<u8>, Vec<u8>)> {
        use std::os::unix::fs::{FileExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.bin");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len((3 << 20) + 100).unwrap();
        f.write_all_at(&[b'A'; 4096], 1 << 20).unwrap();
        f.write_all_at(b"BBBBBBBBBB", (2 << 20) + 5).unwrap();
        drop(f);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(dir.path().join("zz"), b"next!").unwrap();
        let out = match std::process::Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .args(["--sparse", "-cf", "-"])
            .args(args)
            .args(["sparse.bin", "zz"])
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                crate::testing::skipped(test, &format!("GNU tar cannot run: {e}"));
                return None;
            }
        };
        assert!(
            out.status.success(),
            "tar {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some((out.stdout, std::fs::read(&path).unwrap()))
    }

    #[test]
    fn gnu_sparse_files_read_expanded_as_go_reads_them() {
        let formats: [&[&str]; 4] = [
            &["--format=gnu"],
            &["--format=posix", "--sparse-version=0.0"],
            &["--format=posix", "--sparse-version=0.1"],
            &["--format=posix", "--sparse-version=1.0"],
        ];
        for args in formats {
            let Some((tar, want)) = gnu_sparse_tar("gnu_sparse_files_read_expanded", args) else {
                return;
            };
            // Stored sparse: far smaller than the file.
            assert!(tar.len() < 64 << 10, "{args:?}: {} bytes", tar.len());
            let got = read_all(&tar).unwrap_or_else(|e| panic!("{args:?}: {e:#}"));
            assert_eq!(got.len(), 2, "{args:?}");
            let (meta, data) = &got[0];
            assert_eq!(meta.path, b"sparse.bin", "{args:?}");
            assert_eq!(meta.kind, EntryType::Regular, "{args:?}");
            assert_eq!(meta.size, want.len() as u64, "{args:?}");
            assert_eq!(meta.mode, 0o640, "{args:?}");
            assert!(data == &want, "{args:?}: the content differs");
            assert_eq!(
                (&got[1].0.path[..], &got[1].1[..]),
                (&b"zz"[..], &b"next!"[..])
            );
            // Skipped unread, the entry after it still comes.
            let mut ar = Archive::new(&tar[..]);
            ar.next_entry().unwrap().unwrap();
            let mut e = ar.next_entry().unwrap().unwrap();
            let mut data = vec![];
            e.data.read_to_end(&mut data).unwrap();
            assert_eq!(
                (&e.meta.path[..], &data[..]),
                (&b"zz"[..], &b"next!"[..]),
                "{args:?}"
            );
        }
    }

    /// A PAX 0.1 sparse entry `s` of real size `size` with `map`, and
    /// `data` stored.
    fn pax_sparse(size: u64, numblocks: &str, map: &str, data: &[u8]) -> Vec<u8> {
        let records = [
            record("GNU.sparse.size", size.to_string().as_bytes()),
            record("GNU.sparse.numblocks", numblocks.as_bytes()),
            record("GNU.sparse.name", b"s"),
            record("GNU.sparse.map", map.as_bytes()),
        ]
        .concat();
        with_pax(&records, b"GNUSparseFile.0/s", EntryType::Regular, data)
    }

    #[test]
    fn bad_sparse_maps_are_refused_naming_the_entry() {
        let cases: [(&str, &str, &[u8], &str); 8] = [
            ("2", "0,5,3,5", b"0123456789", "overlaps"),
            ("2", "10,5,0,5", b"0123456789", "overlaps"),
            ("1", "98,5", b"01234", "past the real size"),
            ("1", "-1,5", b"01234", "negative"),
            ("2", "0,5", b"01234", "numbers for 2 fragments"),
            ("x", "0,5", b"01234", "numblocks"),
            ("1", "0,4", b"01234", "archive holds 5"),
            ("1", "0,6", b"01234", "places 6 bytes"),
        ];
        for (n, map, data, want) in cases {
            let err = read_all(&pax_sparse(100, n, map, data))
                .err()
                .unwrap_or_else(|| panic!("{map:?} was accepted"));
            let msg = format!("{err:#}");
            assert!(msg.contains(want), "{map:?}: {msg}");
            assert!(msg.contains("\"s\""), "{map:?}: {msg}");
        }
        // 0.0's records out of order.
        let records = [
            record("GNU.sparse.size", b"10"),
            record("GNU.sparse.numblocks", b"1"),
            record("GNU.sparse.numbytes", b"5"),
            record("GNU.sparse.offset", b"0"),
        ]
        .concat();
        let err = read_all(&with_pax(&records, b"s00", EntryType::Regular, b"01234")).unwrap_err();
        assert!(format!("{err:#}").contains("out of order"), "{err:#}");
        // A sparse map on a symlink.
        let records = [
            record("GNU.sparse.map", b""),
            record("GNU.sparse.major", b"1"),
            record("GNU.sparse.minor", b"0"),
        ]
        .concat();
        let err = read_all(&with_pax(&records, b"l", EntryType::Symlink, b"")).unwrap_err();
        assert!(format!("{err:#}").contains("\"l\""), "{err:#}");
        // An unknown version is a plain file, as Go reads it.
        let records = [
            record("GNU.sparse.major", b"2"),
            record("GNU.sparse.minor", b"0"),
            record("GNU.sparse.map", b"0,1"),
        ]
        .concat();
        let got = read_all(&with_pax(&records, b"v2", EntryType::Regular, b"raw")).unwrap();
        assert_eq!(
            (&got[0].0.path[..], &got[0].1[..]),
            (&b"v2"[..], &b"raw"[..])
        );
    }

    #[test]
    fn an_eight_gib_hole_streams_as_zeros() {
        let size = 8u64 << 30;
        let map = format!("0,5,{},5", size - 5);
        let tar = pax_sparse(size, "2", &map, b"startend!");
        // 9 bytes stored for 10 mapped: refused up front.
        assert!(read_all(&tar).is_err());
        let tar = pax_sparse(size, "2", &map, b"start-end!");
        let mut ar = Archive::new(&tar[..]);
        let mut e = ar.next_entry().unwrap().unwrap();
        assert_eq!((&e.meta.path[..], e.meta.size), (&b"s"[..], size));
        let start = std::time::Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        let zeros = vec![0u8; 1 << 20];
        // Every byte that is not zero, with its offset.
        let (mut total, mut bytes) = (0u64, vec![]);
        loop {
            let n = e.data.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            if buf[..n] != zeros[..n] {
                for (i, &b) in buf[..n].iter().enumerate() {
                    if b != 0 {
                        bytes.push((total + i as u64, b));
                    }
                }
            }
            total += n as u64;
        }
        assert_eq!(total, size);
        let want: Vec<(u64, u8)> = (0..5)
            .zip(*b"start")
            .chain((size - 5..size).zip(*b"-end!"))
            .collect();
        assert_eq!(bytes, want);
        drop(e);
        assert!(ar.next_entry().unwrap().is_none());
        assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
    }

    #[test]
    fn the_last_pax_header_and_long_name_count() {
        let first = [record("path", b"first"), record("uid", b"7")].concat();
        let last = record("path", b"last");
        let bytes = [
            header(b"PaxHeaders/1", EntryType::XHeader, first.len() as u64),
            padded(first),
            header(b"PaxHeaders/2", EntryType::XHeader, last.len() as u64),
            padded(last.clone()),
            header(b"f", EntryType::Regular, 1),
            padded(b"z".to_vec()),
            vec![0; 1024],
        ]
        .concat();
        let got = read_all(&bytes).unwrap();
        // The first header's uid went with it.
        assert_eq!((&got[0].0.path[..], got[0].0.uid), (&b"last"[..], 0));
        // Two long names: the last; a long name over a PAX path; an empty
        // long name and an empty PAX path change nothing.
        let long = |ty, v: &[u8]| {
            [
                header(b"././@LongLink", ty, v.len() as u64),
                padded(v.to_vec()),
            ]
            .concat()
        };
        let empty_path = record("path", b"");
        let bytes = [
            long(EntryType::GNULongName, b"one\0"),
            long(EntryType::GNULongName, b"two\0"),
            header(b"PaxHeaders/3", EntryType::XHeader, last.len() as u64),
            padded(last),
            long(EntryType::GNULongLink, b"target\0"),
            header(b"a", EntryType::Symlink, 0),
            long(EntryType::GNULongName, b"\0"),
            header(b"PaxHeaders/4", EntryType::XHeader, empty_path.len() as u64),
            padded(empty_path),
            header(b"b", EntryType::Regular, 0),
            vec![0; 1024],
        ]
        .concat();
        let got = read_all(&bytes).unwrap();
        assert_eq!(got[0].0.path, b"two");
        assert_eq!(got[0].0.link.as_deref(), Some(&b"target"[..]));
        assert_eq!(got[1].0.path, b"b");
    }
}
