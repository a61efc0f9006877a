//! The PAX tar writer behind the tars the tool makes (the export of a
//! store, single files for ROOT).
//!
//! Why our own, over tar-rs's `Builder`: every xattr must travel as a
//! `SCHILY.xattr.NAME` record whose value is binary (file capabilities
//! hold 0x00 and 0x0a), names and link targets may hold any byte but NUL
//! (`\n` included) at any length, and times keep their nanoseconds; each
//! of these goes into PAX records framed by their length, which is how
//! [`super::Archive`] (and GNU tar, and Go's archive/tar) read them. Header
//! fields are encoded by tar-rs's `Header`.

use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};
use tar::{EntryType, Header};

const BLOCK: usize = 512;
/// Largest value of an 8-byte octal header field (uid, gid).
const MAX_OCTAL_8: u64 = 0o7777777;
/// Largest value of a 12-byte octal header field (size, mtime).
const MAX_OCTAL_12: u64 = 0o77777777777;
/// Bytes of the name and link name fields of a header.
const NAME_FIELD: usize = 100;

/// Which kind of device [`Writer::device`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Char,
    Block,
}

/// Owner, permissions, time and xattrs of an entry: of a tar entry, and of
/// a file written with `ext4::Fs::write_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits (07777); the type comes from the method called.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch (negative before it) and nanoseconds.
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Full names (`trusted.overlay.opaque`) and values, in the order
    /// written.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Attrs {
    /// Owned by root, modified now, no xattrs: how the tool's own files
    /// (certificates, a merged repositories.json, a layer's `lower`) are
    /// written.
    pub fn root_owned(mode: u32) -> Attrs {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Attrs {
            mode,
            uid: 0,
            gid: 0,
            mtime: now,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }
}

/// Writes a tar stream to `W`, entry by entry; [`Writer::finish`] ends it.
pub struct Writer<W: Write> {
    out: W,
}

fn show(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

/// Appends the PAX record `<length> <key>=<value>\n`, the length counting
/// its own digits.
fn record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    loop {
        let n = body + len.to_string().len();
        if n == len {
            break;
        }
        len = n;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A PAX time: the decimal number of seconds, `-1.250000000` for 1.25 s
/// before the epoch (not -1 s plus 0.25).
fn pax_time(secs: i64, nsec: u32) -> String {
    if secs < 0 && nsec > 0 {
        let whole = -(secs + 1);
        format!("-{whole}.{:09}", 1_000_000_000 - nsec)
    } else {
        format!("{secs}.{nsec:09}")
    }
}

/// Copies up to the field's length of `value` into a header field.
fn set_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// What a header describes besides its path and attributes.
struct Shape<'a> {
    ty: EntryType,
    size: u64,
    link: Option<&'a [u8]>,
    dev: (u32, u32),
}

impl Shape<'_> {
    fn of(ty: EntryType) -> Shape<'static> {
        Shape {
            ty,
            size: 0,
            link: None,
            dev: (0, 0),
        }
    }
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer { out }
    }

    pub fn dir(&mut self, path: &[u8], attrs: &Attrs) -> Result<()> {
        self.entry(path, attrs, Shape::of(EntryType::Directory))
    }

    /// A regular file of `size` bytes read from `data`, which must hold
    /// that many.
    pub fn file(&mut self, path: &[u8], attrs: &Attrs, size: u64, data: impl Read) -> Result<()> {
        let shape = Shape {
            size,
            ..Shape::of(EntryType::Regular)
        };
        self.entry(path, attrs, shape)?;
        let what = || format!("writing the data of {} to the tar stream", show(path));
        let copied = io::copy(&mut data.take(size), &mut self.out).with_context(what)?;
        if copied != size {
            bail!(
                "{}: only {copied} of its {size} bytes could be read (did it change while being read?)",
                show(path)
            );
        }
        self.pad(size).with_context(what)
    }

    /// A regular file of `size` bytes that `fill` writes, chunk by chunk,
    /// into the sink it is given (a reader that pushes, as `FsRead` does);
    /// it returns how many it wrote.
    pub fn file_from(
        &mut self,
        path: &[u8],
        attrs: &Attrs,
        size: u64,
        fill: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64>,
    ) -> Result<()> {
        let shape = Shape {
            size,
            ..Shape::of(EntryType::Regular)
        };
        self.entry(path, attrs, shape)?;
        let what = || format!("writing the data of {} to the tar stream", show(path));
        let mut written = 0u64;
        let out = &mut self.out;
        fill(&mut |chunk: &[u8]| {
            written += chunk.len() as u64;
            if written > size {
                bail!("{} grew while being read", show(path));
            }
            out.write_all(chunk).with_context(what)
        })?;
        if written != size {
            bail!(
                "{}: only {written} of its {size} bytes could be read (did it change while being read?)",
                show(path)
            );
        }
        self.pad(size).with_context(what)
    }

    /// A regular file holding `data`.
    pub fn file_bytes(&mut self, path: &[u8], attrs: &Attrs, data: &[u8]) -> Result<()> {
        self.file(path, attrs, data.len() as u64, data)
    }

    pub fn symlink(&mut self, path: &[u8], attrs: &Attrs, target: &[u8]) -> Result<()> {
        let shape = Shape {
            link: Some(target),
            ..Shape::of(EntryType::Symlink)
        };
        self.entry(path, attrs, shape)
    }

    /// A second name for `target`, an entry written before.
    pub fn hard_link(&mut self, path: &[u8], attrs: &Attrs, target: &[u8]) -> Result<()> {
        let shape = Shape {
            link: Some(target),
            ..Shape::of(EntryType::Link)
        };
        self.entry(path, attrs, shape)
    }

    /// A character or block device (whiteouts are 0:0 character devices).
    pub fn device(
        &mut self,
        path: &[u8],
        attrs: &Attrs,
        device: Device,
        major: u32,
        minor: u32,
    ) -> Result<()> {
        let kind = match device {
            Device::Char => EntryType::Char,
            Device::Block => EntryType::Block,
        };
        let shape = Shape {
            dev: (major, minor),
            ..Shape::of(kind)
        };
        self.entry(path, attrs, shape)
    }

    pub fn fifo(&mut self, path: &[u8], attrs: &Attrs) -> Result<()> {
        self.entry(path, attrs, Shape::of(EntryType::Fifo))
    }

    /// Ends the archive (two zero blocks), flushes, and hands the output
    /// back.
    pub fn finish(mut self) -> Result<W> {
        self.out
            .write_all(&[0; 2 * BLOCK])
            .context("ending the tar stream")?;
        self.out.flush().context("flushing the tar stream")?;
        Ok(self.out)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem == 0 {
            return Ok(());
        }
        self.out.write_all(&[0; BLOCK][..BLOCK - rem])
    }

    fn entry(&mut self, path: &[u8], attrs: &Attrs, shape: Shape<'_>) -> Result<()> {
        self.headers(path, attrs, &shape)
            .with_context(|| format!("writing tar entry {}", show(path)))
    }

    /// The PAX header (when anything needs one) and the entry's header.
    fn headers(&mut self, path: &[u8], attrs: &Attrs, shape: &Shape<'_>) -> Result<()> {
        if path.is_empty() {
            bail!("an entry needs a name");
        }
        if path.contains(&0) {
            bail!("a name cannot hold a NUL byte");
        }
        if shape.link.is_some_and(|l| l.is_empty() || l.contains(&0)) {
            bail!("a link target must be 1 or more bytes, none of them NUL");
        }
        let mut pax = vec![];
        for (name, value) in &attrs.xattrs {
            if name.is_empty() || name.contains(&0) || name.contains(&b'=') {
                bail!(
                    "extended attribute {:?} cannot be written: its name is empty or holds '=' or NUL",
                    show(name)
                );
            }
            record(&mut pax, &[&b"SCHILY.xattr."[..], name].concat(), value);
        }
        if path.len() > NAME_FIELD {
            record(&mut pax, b"path", path);
        }
        if let Some(link) = shape.link.filter(|l| l.len() > NAME_FIELD) {
            record(&mut pax, b"linkpath", link);
        }
        let fits = |v: u64, max: u64| if v <= max { v } else { 0 };
        for (key, v) in [(&b"uid"[..], attrs.uid), (b"gid", attrs.gid)] {
            if v > MAX_OCTAL_8 {
                record(&mut pax, key, v.to_string().as_bytes());
            }
        }
        if shape.size > MAX_OCTAL_12 {
            record(&mut pax, b"size", shape.size.to_string().as_bytes());
        }
        let header_mtime = u64::try_from(attrs.mtime)
            .ok()
            .filter(|&m| m <= MAX_OCTAL_12);
        if attrs.mtime_nsec >= 1_000_000_000 {
            bail!("{} nanoseconds is not a time", attrs.mtime_nsec);
        }
        if header_mtime.is_none() || attrs.mtime_nsec != 0 {
            record(
                &mut pax,
                b"mtime",
                pax_time(attrs.mtime, attrs.mtime_nsec).as_bytes(),
            );
        }

        if !pax.is_empty() {
            let mut h = Header::new_ustar();
            set_field(&mut h.as_old_mut().name, b"././@PaxHeader");
            h.set_entry_type(EntryType::XHeader);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(pax.len() as u64);
            h.set_cksum();
            self.out.write_all(h.as_bytes())?;
            self.out.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }

        let mut h = Header::new_ustar();
        set_field(&mut h.as_old_mut().name, path);
        if let Some(link) = shape.link {
            set_field(&mut h.as_old_mut().linkname, link);
        }
        h.set_entry_type(shape.ty);
        h.set_mode(attrs.mode & 0o7777);
        h.set_uid(fits(attrs.uid, MAX_OCTAL_8));
        h.set_gid(fits(attrs.gid, MAX_OCTAL_8));
        h.set_size(fits(shape.size, MAX_OCTAL_12));
        h.set_mtime(header_mtime.unwrap_or(0));
        if matches!(shape.ty, EntryType::Char | EntryType::Block) {
            let (major, minor) = shape.dev;
            if u64::from(major.max(minor)) > MAX_OCTAL_8 {
                bail!("device numbers {major}:{minor} do not fit in a tar header");
            }
            h.set_device_major(major)?;
            h.set_device_minor(minor)?;
        }
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::read::Meta;
    use super::super::Archive;
    use super::*;

    fn attrs(mode: u32) -> Attrs {
        Attrs {
            mode,
            uid: 1000,
            gid: 1001,
            mtime: 1_700_000_000,
            mtime_nsec: 0,
            xattrs: vec![],
        }
    }

    fn read_back(bytes: &[u8]) -> Vec<(Meta, Vec<u8>)> {
        let mut ar = Archive::new(bytes);
        let mut out = vec![];
        while let Some(mut e) = ar.next_entry().unwrap() {
            let mut data = vec![];
            e.data.read_to_end(&mut data).unwrap();
            out.push((e.meta, data));
        }
        out
    }

    /// Deterministic bytes, each value many times.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn what_is_written_reads_back_through_the_strict_reader() {
        let every_byte: Vec<u8> = (0..=255u8).collect();
        let long_path: Vec<u8> = [&b"dir/"[..], &[b'x'; 150][..], b"/file"].concat();
        let long_target = vec![b't'; 300];
        let big = pattern(3 << 20);
        let with_xattrs = Attrs {
            xattrs: vec![
                (b"security.capability".to_vec(), every_byte.clone()),
                (b"trusted.overlay.opaque".to_vec(), b"y".to_vec()),
                (b"user.empty".to_vec(), vec![]),
            ],
            ..attrs(0o755)
        };
        let odd_times = Attrs {
            mtime: -2,
            mtime_nsec: 750_000_000,
            uid: 3_000_000,
            gid: 1 << 32,
            ..attrs(0o4711)
        };

        let mut w = Writer::new(Vec::new());
        w.dir(b"./", &attrs(0o755)).unwrap();
        w.dir(b"dir", &with_xattrs).unwrap();
        w.file_bytes(b"dir/empty", &attrs(0o600), b"").unwrap();
        w.file(b"dir/big", &odd_times, big.len() as u64, &big[..])
            .unwrap();
        w.file_bytes(b"dir/new\nline", &attrs(0o644), b"nl\n")
            .unwrap();
        w.file_bytes(&long_path, &attrs(0o644), b"long").unwrap();
        w.symlink(b"dir/link", &attrs(0o777), b"to\nthere").unwrap();
        w.symlink(b"dir/far", &attrs(0o777), &long_target).unwrap();
        w.hard_link(b"dir/hard", &attrs(0o644), &long_path).unwrap();
        w.device(b"dir/whiteout", &attrs(0), Device::Char, 0, 0)
            .unwrap();
        w.device(b"dir/chr", &attrs(0o600), Device::Char, 300, 70_000)
            .unwrap();
        w.device(b"dir/blk", &attrs(0o660), Device::Block, 8, 1)
            .unwrap();
        w.fifo(b"dir/fifo", &attrs(0o644)).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 512, 0);

        let got = read_back(&bytes);
        let paths: Vec<&[u8]> = got.iter().map(|(m, _)| m.path.as_slice()).collect();
        assert_eq!(
            paths,
            [
                &b"./"[..],
                b"dir",
                b"dir/empty",
                b"dir/big",
                b"dir/new\nline",
                &long_path,
                b"dir/link",
                b"dir/far",
                b"dir/hard",
                b"dir/whiteout",
                b"dir/chr",
                b"dir/blk",
                b"dir/fifo",
            ]
        );
        let meta = |p: &[u8]| {
            got.iter()
                .find(|(m, _)| m.path == p)
                .unwrap_or_else(|| panic!("{} missing", show(p)))
        };

        let (dir, _) = meta(b"dir");
        assert_eq!(dir.kind, EntryType::Directory);
        assert_eq!((dir.mode, dir.uid, dir.gid), (0o755, 1000, 1001));
        assert_eq!((dir.mtime, dir.mtime_nsec), (1_700_000_000, 0));
        assert_eq!(dir.xattrs, with_xattrs.xattrs);

        let (empty, data) = meta(b"dir/empty");
        assert_eq!(
            (empty.kind, empty.size, empty.mode),
            (EntryType::Regular, 0, 0o600)
        );
        assert!(data.is_empty());

        let (m, data) = meta(b"dir/big");
        assert_eq!(m.size, big.len() as u64);
        assert!(*data == big, "dir/big differs");
        assert_eq!((m.mode, m.uid, m.gid), (0o4711, 3_000_000, 1 << 32));
        assert_eq!((m.mtime, m.mtime_nsec), (-2, 750_000_000));

        assert_eq!(meta(b"dir/new\nline").1, b"nl\n");
        assert_eq!(meta(&long_path).1, b"long");

        let link = |p: &[u8]| {
            let (m, _) = meta(p);
            (m.kind, m.link.clone().unwrap_or_default())
        };
        assert_eq!(
            link(b"dir/link"),
            (EntryType::Symlink, b"to\nthere".to_vec())
        );
        assert_eq!(link(b"dir/far"), (EntryType::Symlink, long_target));
        assert_eq!(link(b"dir/hard"), (EntryType::Link, long_path.clone()));

        let dev = |p: &[u8]| {
            let (m, _) = meta(p);
            (m.kind, m.dev)
        };
        assert_eq!(dev(b"dir/whiteout"), (EntryType::Char, (0, 0)));
        assert_eq!(dev(b"dir/chr"), (EntryType::Char, (300, 70_000)));
        assert_eq!(dev(b"dir/blk"), (EntryType::Block, (8, 1)));
        assert_eq!(meta(b"dir/fifo").0.kind, EntryType::Fifo);
    }

    #[test]
    fn pax_times_and_records() {
        assert_eq!(pax_time(5, 0), "5.000000000");
        assert_eq!(pax_time(-2, 750_000_000), "-1.250000000");
        assert_eq!(pax_time(-1, 500_000_000), "-0.500000000");
        assert_eq!(pax_time(-3, 0), "-3.000000000");
        for n in [0, 1, 80, 88, 89, 90, 985, 994, 995, 996, 9_990] {
            let mut out = vec![];
            record(&mut out, b"k", &vec![b'v'; n]);
            let len: usize =
                std::str::from_utf8(&out[..out.iter().position(|&b| b == b' ').unwrap()])
                    .unwrap()
                    .parse()
                    .unwrap();
            assert_eq!(len, out.len(), "value of {n} bytes");
        }
    }

    #[test]
    fn what_cannot_be_written_is_refused() {
        let mut w = Writer::new(Vec::new());
        let e = |r: Result<()>| format!("{:#}", r.unwrap_err());
        assert!(e(w.dir(b"", &attrs(0o755))).contains("needs a name"));
        assert!(e(w.dir(b"a\0b", &attrs(0o755))).contains("NUL"));
        assert!(e(w.symlink(b"l", &attrs(0o777), b"")).contains("link target"));
        let bad = Attrs {
            xattrs: vec![(b"user.a=b".to_vec(), vec![])],
            ..attrs(0o644)
        };
        assert!(e(w.dir(b"d", &bad)).contains("user.a=b"));
        assert!(e(w.device(b"c", &attrs(0), Device::Char, 1 << 22, 0)).contains("do not fit"));
        // A file that holds less than it said.
        let r = w.file(b"short", &attrs(0o644), 10, &b"12345"[..]);
        assert!(e(r).contains("only 5 of its 10 bytes"));
    }
}
