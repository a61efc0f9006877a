//! One content-sniffing decompressing reader for disk images and archives:
//! gzip, bzip2, xz and zstd are recognised by their first bytes, anything
//! else passes through unchanged.

use std::io::{self, BufRead, BufReader, Cursor, Read};

use anyhow::{Context, Result};

/// A compression recognised from the first bytes of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// Bytes needed to tell the compressions apart.
pub const SNIFF_LEN: usize = 6;

impl Compression {
    /// The compression whose magic `head` starts with.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Reads until `buf` is full or the input ends.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Looks at the first bytes of `input` and returns its compression and a
/// reader of its decompressed content (multi-member streams included).
pub fn decompress<'a>(
    mut input: impl Read + Send + 'a,
) -> Result<(Compression, Box<dyn Read + Send + 'a>)> {
    let mut head = [0u8; SNIFF_LEN];
    let n = read_full(&mut input, &mut head).context("reading the first bytes")?;
    let kind = Compression::sniff(&head[..n]);
    let whole = BufReader::with_capacity(1 << 20, Cursor::new(head[..n].to_vec()).chain(input));
    Ok((kind, decoder(kind, whole)?))
}

fn decoder<'a>(
    kind: Compression,
    r: impl BufRead + Send + 'a,
) -> Result<Box<dyn Read + Send + 'a>> {
    Ok(match kind {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(r)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(r).context("starting zstd")?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn every_compression_reads_back() {
        let data = b"some data that is compressed, then read back".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let mut bz = bzip2::write::BzEncoder::new(vec![], bzip2::Compression::fast());
        bz.write_all(&data).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(vec![], 1);
        xz.write_all(&data).unwrap();
        let zst = zstd::encode_all(&data[..], 1).unwrap();
        for (kind, bytes) in [
            (Compression::None, data.clone()),
            (Compression::Gzip, gz.finish().unwrap()),
            (Compression::Bzip2, bz.finish().unwrap()),
            (Compression::Xz, xz.finish().unwrap()),
            (Compression::Zstd, zst),
        ] {
            let (found, mut r) = decompress(&bytes[..]).unwrap();
            assert_eq!(found, kind);
            let mut back = vec![];
            r.read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{kind:?}");
        }
        // Shorter than the magic numbers: passed through.
        let (found, mut r) = decompress(&b"ab"[..]).unwrap();
        assert_eq!(found, Compression::None);
        let mut back = vec![];
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"ab");
    }
}
