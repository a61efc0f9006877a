//! [`Splitter`]: a tar stream, fed as it is read, made into tar-split
//! metadata as tar-split's `asm.NewInputTarStream` makes it over its fork of
//! Go's `archive/tar` reader: which bytes are raw segments, each entry's
//! name and size as that reader gives them, the crc64 of its content.

use std::io::Write;

use anyhow::{anyhow, bail, Result};

use super::{Crc64, Encoder};
use crate::tar::{go_int, go_numeric, go_octal};

const BLOCK: usize = 512;
/// Go's `maxSpecialFileSize`: the largest PAX header or GNU long name the
/// reader of tar-split 0.11.7 and later takes (a larger one fails the pull
/// there); a bound on memory here.
const MAX_SPECIAL: u64 = 1 << 20;
/// Bytes after the end of the archive go out in chunks of this size, as
/// tar-split reads them (one segment a read of up to 1 MiB).
const TRAILER_CHUNK: usize = 1 << 20;

/// PAX records, keys and values, in their order.
type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Where the splitter is in the stream.
enum State {
    /// Gathering a header block; `after_zero` when it follows a block of
    /// zeros (two of them end the archive).
    Header { after_zero: bool },
    /// Gathering the data of a PAX header (`x`, `g`) or a GNU long name or
    /// link (`L`, `K`) of `size` bytes; `name` is the header's own.
    Meta {
        flag: u8,
        name: Vec<u8>,
        size: usize,
    },
    /// The content of the entry `name` of `size` bytes: `left` of them to
    /// go, the sum of those read in `crc`.
    Content {
        name: Vec<u8>,
        size: u64,
        left: u64,
        crc: Crc64,
    },
    /// Padding to the next block: `left` of `of` bytes to go.
    Pad { left: u64, of: u64 },
    /// After the end of the archive: everything is kept as it is.
    Trailer,
}

/// Makes the tar-split metadata of a tar stream: feed it the stream's
/// bytes in any chunks ([`Splitter::feed`], or as a [`Write`]), then
/// [`Splitter::finish`]. Content is only summed, never held; a header and
/// its PAX records are.
///
/// What Docker's tar-split would refuse is refused (a bad header checksum,
/// a number field that is not one, a PAX record that is not framed, a
/// truncated stream, two entries of the same path; a PAX header or long
/// name over 1 MiB, from tar-split 0.11.7 on), and GNU sparse files too,
/// whose content tar-split sums as expanded: no tar-split could rebuild
/// their stream.
pub struct Splitter<W: Write> {
    enc: Encoder<W>,
    state: State,
    /// The header block or metadata being gathered.
    buf: Vec<u8>,
    /// Raw bytes not written yet: the next segment.
    raw: Vec<u8>,
    /// The records of the last PAX header (`x`) before the next entry, as
    /// Go's reader keeps them (a later `x` replaces them).
    pax: Records,
    /// The last GNU long name before the next entry.
    long_name: Vec<u8>,
    /// Offset in the stream of the next byte fed, and header blocks read:
    /// for messages.
    offset: u64,
    headers: u64,
    /// The first error: the stream is not split any further.
    failed: Option<String>,
}

impl<W: Write> Splitter<W> {
    /// Writes the JSON lines to `out` (wrap it in
    /// [`super::gzip_writer`] for a `tar-split.json.gz`).
    pub fn new(out: W) -> Splitter<W> {
        Splitter {
            enc: Encoder::new(out),
            state: State::Header { after_zero: false },
            buf: Vec::with_capacity(BLOCK),
            raw: vec![],
            pax: vec![],
            long_name: vec![],
            offset: 0,
            headers: 0,
            failed: None,
        }
    }

    /// The next bytes of the tar stream.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            bail!("{e}");
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.step(rest) {
                Ok(n) => {
                    rest = &rest[n..];
                    self.offset += n as u64;
                }
                Err(e) => {
                    self.failed = Some(format!("{e:#}"));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Ends the stream: writes the last segment and returns the output.
    /// Errors when the stream stops inside a header, an entry's content or
    /// its padding.
    pub fn finish(mut self) -> Result<W> {
        if let Some(e) = &self.failed {
            bail!("{e}");
        }
        let at = self.offset;
        match &self.state {
            State::Header { .. } if self.buf.is_empty() => {}
            State::Pad { left, of } if left == of => {}
            State::Trailer => {}
            State::Header { .. } => bail!(
                "the tar stream ends inside a header, at byte {at} (truncated layer)"
            ),
            State::Meta { .. } => bail!(
                "the tar stream ends inside a PAX header or GNU long name, at byte {at} (truncated layer)"
            ),
            State::Content { name, .. } => bail!(
                "the tar stream ends inside the content of {:?}, at byte {at} (truncated layer)",
                String::from_utf8_lossy(name)
            ),
            State::Pad { .. } => bail!(
                "the tar stream ends inside the padding after an entry, at byte {at} (truncated layer)"
            ),
        }
        let raw = std::mem::take(&mut self.raw);
        for chunk in raw.chunks(self.chunk_size()) {
            self.enc.segment(chunk)?;
        }
        self.enc.finish()
    }

    /// The raw bytes are cut in trailer chunks once past the end.
    fn chunk_size(&self) -> usize {
        match self.state {
            State::Trailer => TRAILER_CHUNK,
            _ => usize::MAX,
        }
    }

    /// Takes what the current state wants of `input`; returns how much.
    fn step(&mut self, input: &[u8]) -> Result<usize> {
        match &mut self.state {
            State::Header { after_zero } => {
                let after_zero = *after_zero;
                let n = (BLOCK - self.buf.len()).min(input.len());
                self.buf.extend_from_slice(&input[..n]);
                if self.buf.len() == BLOCK {
                    let block: [u8; BLOCK] = self.buf[..].try_into().unwrap_or([0; BLOCK]);
                    self.buf.clear();
                    self.raw.extend_from_slice(&block);
                    let at = (self.offset + n as u64).saturating_sub(BLOCK as u64);
                    self.header(&block, after_zero, at)?;
                }
                Ok(n)
            }
            State::Meta { size, .. } => {
                let n = (*size - self.buf.len()).min(input.len());
                self.buf.extend_from_slice(&input[..n]);
                if self.buf.len() == *size {
                    self.meta(self.offset + n as u64)?;
                }
                Ok(n)
            }
            State::Content { left, crc, .. } => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                crc.update(&input[..n]);
                *left -= n as u64;
                if *left == 0 {
                    let State::Content {
                        name, size, crc, ..
                    } = std::mem::replace(&mut self.state, State::Trailer)
                    else {
                        unreachable!()
                    };
                    self.enc.file(&name, size, crc.finish())?;
                    self.pad(size);
                }
                Ok(n)
            }
            State::Pad { left, .. } => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                self.raw.extend_from_slice(&input[..n]);
                *left -= n as u64;
                if *left == 0 {
                    self.state = State::Header { after_zero: false };
                }
                Ok(n)
            }
            State::Trailer => {
                let n = (TRAILER_CHUNK - self.raw.len()).min(input.len());
                self.raw.extend_from_slice(&input[..n]);
                if self.raw.len() == TRAILER_CHUNK {
                    self.enc.segment(&self.raw)?;
                    self.raw.clear();
                }
                Ok(n)
            }
        }
    }

    /// Pads to the block after `size` bytes of data, then a header.
    fn pad(&mut self, size: u64) {
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.state = match pad {
            0 => State::Header { after_zero: false },
            _ => State::Pad { left: pad, of: pad },
        };
    }

    /// A header block read whole (already in `raw`).
    /// `at` is its offset in the stream.
    fn header(&mut self, block: &[u8; BLOCK], after_zero: bool, at: u64) -> Result<()> {
        if block.iter().all(|&b| b == 0) {
            if after_zero {
                // The end of the archive: its blocks end the last segment.
                let raw = std::mem::take(&mut self.raw);
                self.enc.segment(&raw)?;
                self.state = State::Trailer;
            } else {
                self.state = State::Header { after_zero: true };
            }
            return Ok(());
        }
        self.headers += 1;
        let what = format!("tar header #{} (at byte {at})", self.headers);
        if after_zero {
            bail!("{what} follows a block of zeros: a corrupt tar stream");
        }
        let h = Header::parse(block).map_err(|e| anyhow!("{what}: {e}"))?;
        match h.flag {
            b'x' | b'g' | b'L' | b'K' => {
                if h.size < 0 || h.size as u64 > MAX_SPECIAL {
                    bail!(
                        "{what}: a PAX header or GNU long name of {} bytes (more than the 1 MiB Docker's tar-split reads)",
                        h.size
                    );
                }
                self.state = State::Meta {
                    flag: h.flag,
                    name: h.name,
                    size: h.size as usize,
                };
                if h.size == 0 {
                    self.meta(at + BLOCK as u64)?;
                }
                Ok(())
            }
            _ => self.entry(h).map_err(|e| anyhow!("{what}: {e:#}")),
        }
    }

    /// The data of a metadata header, gathered in `buf`; `end` is the
    /// offset after it.
    fn meta(&mut self, end: u64) -> Result<()> {
        let State::Meta { flag, name, size } = std::mem::replace(&mut self.state, State::Trailer)
        else {
            unreachable!()
        };
        let data = std::mem::take(&mut self.buf);
        self.raw.extend_from_slice(&data);
        let what = || format!("the PAX header or GNU long name ending at byte {end}");
        match flag {
            b'x' => self.pax = pax_records(&data).map_err(|e| anyhow!("{}: {e}", what()))?,
            b'g' => {
                // Go's reader returns a global header as an entry of its
                // own, named by its header (or its `path` record).
                let records = pax_records(&data).map_err(|e| anyhow!("{}: {e}", what()))?;
                check_pax(&records).map_err(|e| anyhow!("{}: {e}", what()))?;
                let name = record(&records, b"path").map_or(name, <[u8]>::to_vec);
                let raw = std::mem::take(&mut self.raw);
                self.enc.segment(&raw)?;
                self.enc.file(&name, 0, 0)?;
                self.pax.clear();
                self.long_name.clear();
            }
            b'L' => self.long_name = c_string(&data).to_vec(),
            _ => {} // K: a long link target, not in tar-split
        }
        self.pad(size as u64);
        Ok(())
    }

    /// A header of an entry: its name and size as Go's reader gives them,
    /// the segment before it; then its content.
    fn entry(&mut self, h: Header) -> Result<()> {
        let pax = std::mem::take(&mut self.pax);
        let long_name = std::mem::take(&mut self.long_name);
        check_pax(&pax)?;
        let mut name = h.name;
        let mut size = h.size;
        if let Some(p) = record(&pax, b"path") {
            name = p.to_vec();
        }
        if let Some(s) = record(&pax, b"size") {
            size = go_int(s).ok_or_else(|| anyhow!("PAX size {:?} is not a number", show(s)))?;
        }
        if !long_name.is_empty() {
            name = long_name;
        }
        if h.flag == b'S' || pax.iter().any(|(k, _)| k.starts_with(b"GNU.sparse.")) {
            // Go's reader gives it the real size and the expanded content:
            // a tar-split of those could not rebuild the layer's bytes.
            let name = record(&pax, b"GNU.sparse.name").map_or(name, <[u8]>::to_vec);
            bail!(
                "{:?} is a GNU sparse file, which Docker cannot store as it was in the layer (tar-split would record its expanded size and content, not the sparse bytes of the layer); make the layer without --sparse",
                show(&name)
            );
        }
        if size < 0 {
            bail!("{:?} has a negative size", show(&name));
        }
        let size = size as u64;
        // Go's reader reads no content of these, whatever their size.
        let header_only =
            b"123456".contains(&h.flag) || (h.flag == 0 && name.last() == Some(&b'/'));
        let raw = std::mem::take(&mut self.raw);
        self.enc.segment(&raw)?;
        if header_only || size == 0 {
            self.enc.file(&name, size, Crc64::new().finish())?;
            self.state = State::Header { after_zero: false };
        } else {
            self.state = State::Content {
                name,
                size,
                left: size,
                crc: Crc64::new(),
            };
        }
        Ok(())
    }
}

impl<W: Write> Write for Splitter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.feed(buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:#}")))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What tar-split takes of a header block, read as Go's archive/tar reads
/// it.
struct Header {
    flag: u8,
    /// The name with the ustar (or star) prefix.
    name: Vec<u8>,
    size: i64,
}

impl Header {
    fn parse(b: &[u8; BLOCK]) -> std::result::Result<Header, String> {
        let stored = go_octal(&b[148..156]);
        let (mut unsigned, mut signed) = (0i64, 0i64);
        for (i, &c) in b.iter().enumerate() {
            let c = if (148..156).contains(&i) { b' ' } else { c };
            unsigned += c as i64;
            signed += c as i8 as i64;
        }
        if stored != Some(unsigned) && stored != Some(signed) {
            return Err("a wrong checksum: not a tar stream, or a corrupt one".into());
        }
        let (magic, version, trailer) = (&b[257..263], &b[263..265], &b[508..512]);
        let (ustar, star, gnu) = (
            magic == b"ustar\0" && trailer != b"tar\0",
            magic == b"ustar\0" && trailer == b"tar\0",
            magic == b"ustar " && version == b" \0",
        );
        let mut fields = vec![&b[100..108], &b[108..116], &b[116..124], &b[136..148]];
        if ustar || star || gnu {
            fields.extend([&b[329..337], &b[337..345]]);
        }
        if fields.iter().any(|f| go_numeric(f).is_none()) {
            return Err("a number field (mode, owner, time or device) that is not a number".into());
        }
        let size = go_numeric(&b[124..136]).ok_or("its size field is not a number".to_string())?;
        let mut name = c_string(&b[..100]).to_vec();
        let prefix = if ustar {
            c_string(&b[345..500])
        } else if star {
            c_string(&b[345..476])
        } else if gnu {
            // Go takes the prefix field of a GNU header as a prefix only
            // when its times do not parse (what Go before 1.8 wrote).
            let bad = |f: &[u8]| f[0] != 0 && go_numeric(f).is_none();
            let p = c_string(&b[345..500]);
            if (bad(&b[345..357]) || bad(&b[357..369])) && p.is_ascii() {
                p
            } else {
                b""
            }
        } else {
            b""
        };
        if !prefix.is_empty() {
            name = [prefix, b"/", &name].concat();
        }
        Ok(Header {
            flag: b[156],
            name,
            size,
        })
    }
}

/// A header's string field: up to its first NUL.
fn c_string(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

fn show(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// The records of a PAX header, framed as Go's `parsePAXRecord` frames
/// them.
fn pax_records(mut s: &[u8]) -> std::result::Result<Records, String> {
    let mut out = vec![];
    while !s.is_empty() {
        let bad = |why: &str| format!("a malformed PAX record ({why})");
        let sp = s
            .iter()
            .position(|&c| c == b' ')
            .ok_or_else(|| bad("no length"))?;
        let n = go_int(&s[..sp]).ok_or_else(|| bad("the length is not a number"))?;
        if n < 5 || n as u64 > s.len() as u64 || n as usize <= sp + 1 {
            return Err(bad("a length out of bounds"));
        }
        let n = n as usize;
        let (rec, rest) = (&s[sp + 1..n - 1], &s[n..]);
        if s[n - 1] != b'\n' {
            return Err(bad("no newline at its end"));
        }
        let eq = rec
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| bad("no '='"))?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        let nul = match k {
            b"path" | b"linkpath" | b"uname" | b"gname" => v.contains(&0),
            _ => k.contains(&0),
        };
        if k.is_empty() || nul {
            return Err(bad("an empty key or a NUL byte"));
        }
        out.push((k.to_vec(), v.to_vec()));
        s = rest;
    }
    Ok(out)
}

/// The value of the last record `key` when not empty (Go keeps the header's
/// field for an empty one).
fn record<'a>(records: &'a Records, key: &[u8]) -> Option<&'a [u8]> {
    let (_, v) = records.iter().rev().find(|(k, _)| k == key)?;
    (!v.is_empty()).then_some(v.as_slice())
}

/// Refuses the records Go's reader refuses: numbers and times that are not.
fn check_pax(records: &Records) -> Result<()> {
    for key in [&b"size"[..], b"uid", b"gid"] {
        if let Some(v) = record(records, key) {
            if go_int(v).is_none() {
                bail!("PAX {} {:?} is not a number", show(key), show(v));
            }
        }
    }
    for key in [&b"mtime"[..], b"atime", b"ctime"] {
        if let Some(v) = record(records, key) {
            let (secs, frac) = match v.iter().position(|&c| c == b'.') {
                Some(i) => (&v[..i], &v[i + 1..]),
                None => (v, &b""[..]),
            };
            if go_int(secs).is_none() || !frac.iter().all(u8::is_ascii_digit) {
                bail!("PAX {} {:?} is not a time", show(key), show(v));
            }
        }
    }
    Ok(())
}
