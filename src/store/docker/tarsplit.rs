//! Docker's tar-split metadata (`layerdb/sha256/<chain>/tar-split.json.gz`),
//! the codec: what github.com/vbatts/tar-split (`tar/asm` disassembling a
//! layer's tar stream into `storage.JSONPacker`, gzipped by Docker's layer
//! store) writes, read by [`Decoder`] (`verify` rebuilds each layer's tar
//! from it and `diff/`), written by [`Encoder`], and made from a tar stream
//! by [`Splitter`] (`split.rs`) as tar-split makes it.
//!
//! One JSON document a line, in the order of the tar stream:
//!
//! - `{"type":2,"payload":"<base64>","position":N}`: raw bytes of the
//!   stream (headers, PAX records, padding, the end-of-archive blocks and
//!   anything after them), never empty;
//! - `{"type":1,"name":"<path>","size":S,"payload":"<base64>","position":N}`:
//!   one entry of the tar, of any kind, whose S bytes of content follow its
//!   headers in the stream but are not stored (they are the file in the
//!   layer's `diff/`); the payload is their crc64 (Go's `hash/crc64`, ISO
//!   table, 8 bytes big-endian). A name that is not UTF-8 is `name_raw`
//!   (base64) instead of `name`; `size` is left out when 0, and the payload
//!   is `null` then.
//!
//! `position` counts the lines from 0. The JSON is Go's `encoding/json`:
//! fields in that order, `<`, `>`, `&`, U+2028 and U+2029 escaped.
//!
//! What is written is byte for byte what tar-split 0.11.5 and later (Docker
//! 27 on) write, compiled with Go 1.22 or later, but for:
//! - bytes after the end-of-archive blocks, which tar-split cuts where its
//!   reads of the stream end (up to 1 MiB each; how much a read returns
//!   depends on what Docker reads from); they are cut every 1 MiB here;
//! - the deflate stream of the gzip, zlib's here and Go's there (the
//!   header is Go's: no name, time 0, OS unknown).
//!
//! Older writers differ: tar-split before 0.11.4 ends with an empty
//! segment (`"payload":""`), Go before 1.22 escapes backspace and form
//! feed in names as `\u0008` and `\u000c`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde::Deserialize;

mod split;

pub use split::Splitter;

/// Go's `hash/crc64` with the ISO table, as tar-split sums each file.
static CRC64: crc::Crc<u64, crc::Table<16>> =
    crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_GO_ISO);

/// The longest tar-split entry (one JSON line) read: real ones hold a
/// file's name or the raw bytes of a tar header (PAX records included),
/// kilobytes; a longer one is corrupt metadata, not held in memory.
const MAX_ENTRY: usize = 16 << 20;

/// The `type` of a raw segment.
const SEGMENT: u8 = 2;
/// The `type` of a tar entry.
const FILE: u8 = 1;

/// One entry of tar-split metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Raw bytes of the tar stream: headers, padding, the trailer.
    Segment(Vec<u8>),
    /// An entry of the tar, whose `size` bytes of content are the next
    /// bytes of the stream.
    File {
        /// The entry's name as Go's archive/tar reads it (PAX `path` and
        /// GNU long names applied), bytes as they are.
        name: Vec<u8>,
        size: u64,
        /// The crc64 of the content; None when the entry has no payload
        /// (size 0) or one that is not 8 bytes (damaged: no content
        /// matches it).
        crc64: Option<u64>,
    },
}

/// A running crc64 of a file's content, as tar-split sums it.
#[derive(Clone)]
pub struct Crc64(crc::Digest<'static, u64, crc::Table<16>>);

impl Default for Crc64 {
    fn default() -> Crc64 {
        Crc64::new()
    }
}

impl Crc64 {
    /// The sum of nothing yet.
    pub fn new() -> Crc64 {
        Crc64(CRC64.digest())
    }

    /// Adds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The sum of everything added.
    pub fn finish(self) -> u64 {
        self.0.finalize()
    }

    /// The crc64 of `bytes`.
    #[cfg(test)]
    pub fn checksum(bytes: &[u8]) -> u64 {
        CRC64.checksum(bytes)
    }
}

impl Write for Crc64 {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One line as tar-split writes it (`tar/storage/entry.go`).
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    /// base64, for names that are not UTF-8.
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: i64,
    /// base64: raw bytes of a segment, crc64 (big-endian) of a file.
    #[serde(default)]
    payload: Option<String>,
}

/// Reads tar-split metadata entry by entry, never more than one entry
/// ([`MAX_ENTRY`]) in memory. Lines of blank space are skipped; the first
/// error ends the entries.
pub struct Decoder<R> {
    reader: R,
    line: Vec<u8>,
    /// Lines read, for messages.
    n: usize,
    done: bool,
}

impl<R: Read> Decoder<BufReader<flate2::read::GzDecoder<R>>> {
    /// Reads a `tar-split.json.gz`.
    pub fn gzip(compressed: R) -> Self {
        Decoder::new(BufReader::with_capacity(
            256 * 1024,
            flate2::read::GzDecoder::new(compressed),
        ))
    }
}

impl<R: BufRead> Decoder<R> {
    /// Reads the JSON lines of `json` (not compressed).
    pub fn new(json: R) -> Self {
        Decoder {
            reader: json,
            line: Vec::with_capacity(4096),
            n: 0,
            done: false,
        }
    }

    /// The next entry, None after the last one. Errors name the entry (its
    /// line, from 1) and what is wrong with it.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.done {
            return Ok(None);
        }
        let entry = self.read_entry();
        if !matches!(entry, Ok(Some(_))) {
            self.done = true;
        }
        entry
    }

    fn read_entry(&mut self) -> Result<Option<Entry>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let n = loop {
            self.line.clear();
            // At most one byte past the limit: a longer line is refused
            // below instead of growing without bound.
            let mut limited = (&mut self.reader).take(MAX_ENTRY as u64 + 1);
            match limited.read_until(b'\n', &mut self.line) {
                Ok(0) => return Ok(None),
                Ok(_) if self.line.len() > MAX_ENTRY => bail!(
                    "the tar-split metadata is corrupt (entry {}: longer than {} MiB)",
                    self.n + 1,
                    MAX_ENTRY >> 20
                ),
                Ok(_) => {}
                Err(e) => bail!("the tar-split metadata is truncated or corrupt: {e}"),
            }
            self.n += 1;
            if !self.line.iter().all(u8::is_ascii_whitespace) {
                break self.n;
            }
        };
        let line: Line = serde_json::from_slice(&self.line)
            .map_err(|e| anyhow!("the tar-split metadata is corrupt (entry {n}: {e})"))?;
        let payload = match line.payload.as_deref().map(|p| b64.decode(p)).transpose() {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => bail!("the tar-split metadata is corrupt (entry {n}: payload: {e})"),
        };
        match line.kind {
            SEGMENT => Ok(Some(Entry::Segment(payload))),
            FILE => {
                let name = match (&line.name_raw, line.name) {
                    (Some(raw), _) if !raw.is_empty() => b64.decode(raw).map_err(|e| {
                        anyhow!("the tar-split metadata is corrupt (entry {n}: name: {e})")
                    })?,
                    (_, Some(name)) => name.into_bytes(),
                    _ => vec![],
                };
                let crc64 = <[u8; 8]>::try_from(payload).ok().map(u64::from_be_bytes);
                Ok(Some(Entry::File {
                    name,
                    size: u64::try_from(line.size).unwrap_or(0),
                    crc64,
                }))
            }
            k => bail!("the tar-split metadata is corrupt (entry {n} has type {k})"),
        }
    }
}

impl<R: BufRead> Iterator for Decoder<R> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        self.next_entry().transpose()
    }
}

/// Writes tar-split metadata as tar-split's `JSONPacker` does: one line an
/// entry, numbered from 0, and no two entries of the same name (after Go's
/// `filepath.Clean`), which tar-split refuses.
pub struct Encoder<W: Write> {
    out: W,
    position: u64,
    /// Cleaned names of the entries written.
    seen: HashSet<Vec<u8>>,
    line: Vec<u8>,
}

impl<W: Write> Encoder<W> {
    /// Writes the JSON lines to `out` (wrap it in [`gzip_writer`] for a
    /// `tar-split.json.gz`).
    pub fn new(out: W) -> Encoder<W> {
        Encoder {
            out,
            position: 0,
            seen: HashSet::new(),
            line: Vec::with_capacity(4096),
        }
    }

    /// Entries written so far (the `position` of the next one).
    #[cfg(test)]
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Raw bytes of the stream; nothing when `raw` is empty (tar-split
    /// writes no empty segment).
    pub fn segment(&mut self, raw: &[u8]) -> Result<()> {
        if raw.is_empty() {
            return Ok(());
        }
        self.line.clear();
        self.line.extend_from_slice(b"{\"type\":2,\"payload\":\"");
        push_base64(&mut self.line, raw);
        self.line.extend_from_slice(b"\",");
        self.write_line()
    }

    /// An entry of the tar named `name`, with `size` bytes of content
    /// whose crc64 is `crc64` (not written when `size` is 0: tar-split
    /// sums only entries with a size, header-only ones such as hard links
    /// with a size included, whose content is empty: crc64 0).
    pub fn file(&mut self, name: &[u8], size: u64, crc64: u64) -> Result<()> {
        self.file_entry(name, size, (size > 0).then_some(crc64))
    }

    /// Writes `entry` as it is.
    #[cfg(test)]
    pub fn entry(&mut self, entry: &Entry) -> Result<()> {
        match entry {
            Entry::Segment(raw) => self.segment(raw),
            Entry::File { name, size, crc64 } => self.file_entry(name, *size, *crc64),
        }
    }

    fn file_entry(&mut self, name: &[u8], size: u64, crc64: Option<u64>) -> Result<()> {
        let shown = String::from_utf8_lossy(name);
        let size = i64::try_from(size)
            .map_err(|_| anyhow!("tar entry {shown:?}: a size of {size} bytes does not fit"))?;
        if !self.seen.insert(go_clean(name)) {
            bail!(
                "the layer has two entries named {shown:?}: tar-split (and so Docker) refuses duplicate paths"
            );
        }
        self.line.clear();
        self.line.extend_from_slice(b"{\"type\":1,");
        match std::str::from_utf8(name) {
            Ok("") => {}
            Ok(s) => {
                self.line.extend_from_slice(b"\"name\":");
                go_json_string(&mut self.line, s);
                self.line.push(b',');
            }
            Err(_) => {
                self.line.extend_from_slice(b"\"name_raw\":\"");
                push_base64(&mut self.line, name);
                self.line.extend_from_slice(b"\",");
            }
        }
        if size != 0 {
            self.line
                .extend_from_slice(format!("\"size\":{size},").as_bytes());
        }
        match crc64 {
            Some(c) => {
                self.line.extend_from_slice(b"\"payload\":\"");
                push_base64(&mut self.line, &c.to_be_bytes());
                self.line.extend_from_slice(b"\",");
            }
            None => self.line.extend_from_slice(b"\"payload\":null,"),
        }
        self.write_line()
    }

    /// Ends the line begun in `self.line` with its position.
    fn write_line(&mut self) -> Result<()> {
        self.line
            .extend_from_slice(format!("\"position\":{}}}\n", self.position).as_bytes());
        self.out
            .write_all(&self.line)
            .context("writing the tar-split metadata")?;
        self.position += 1;
        Ok(())
    }

    /// Flushes and returns the output.
    pub fn finish(mut self) -> Result<W> {
        self.out.flush().context("writing the tar-split metadata")?;
        Ok(self.out)
    }
}

/// Appends the base64 of `bytes` (Go's `[]byte` in JSON: standard, padded).
fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    out.extend_from_slice(b64.encode(bytes).as_bytes());
}

/// A gzip writer as Docker's (Go's `compress/gzip` at its default level:
/// no name, time 0, OS "unknown"). The deflate stream itself is zlib's, not
/// Go's: the same JSON, other compressed bytes.
pub fn gzip_writer<W: Write>(out: W) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new()
        .operating_system(255)
        .write(out, flate2::Compression::default())
}

/// The tar-split JSON lines (not compressed) of the tar stream `tar`, as
/// tar-split writes them for Docker.
#[cfg(test)]
pub fn encode_tar(tar: impl Read) -> Result<Vec<u8>> {
    let mut split = Splitter::new(vec![]);
    let mut tar = tar;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match tar.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the tar stream"),
        };
        split.feed(&buf[..n])?;
    }
    split.finish()
}

/// Appends `s` as a JSON string, escaped as Go's `encoding/json` (1.22 and
/// later) escapes it with HTML escaping on, as `json.Encoder` has it.
fn go_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\0'..='\u{1f}' | '<' | '>' | '&' => {
                let b = c as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Go's `filepath.Clean` on Linux, on bytes: the name tar-split compares
/// to find duplicate paths.
fn go_clean(path: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        return b".".to_vec();
    }
    let rooted = path[0] == b'/';
    let n = path.len();
    let mut out: Vec<u8> = Vec::with_capacity(n);
    let (mut r, mut dotdot) = (0, 0);
    if rooted {
        out.push(b'/');
        (r, dotdot) = (1, 1);
    }
    while r < n {
        if path[r] == b'/' || (path[r] == b'.' && (r + 1 == n || path[r + 1] == b'/')) {
            // An empty or `.` element.
            r += 1;
        } else if path[r] == b'.' && path[r + 1] == b'.' && (r + 2 == n || path[r + 2] == b'/') {
            r += 2;
            if out.len() > dotdot {
                // Back to the last slash (or the start), dropping it.
                let mut w = out.len() - 1;
                while w > dotdot && out[w] != b'/' {
                    w -= 1;
                }
                out.truncate(w);
            } else if !rooted {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(b"..");
                dotdot = out.len();
            }
        } else {
            if (rooted && out.len() != 1) || (!rooted && !out.is_empty()) {
                out.push(b'/');
            }
            while r < n && path[r] != b'/' {
                out.push(path[r]);
                r += 1;
            }
        }
    }
    if out.is_empty() {
        return b".".to_vec();
    }
    out
}

#[cfg(test)]
mod tests;
