//! A layer blob read as a tar while it streams out of ROOT: [`FsRead`]
//! pushes a file's chunks, the tar reader pulls, so the reader runs on a
//! thread of its own fed one chunk at a time, and hands back each entry
//! (with the sha256 of its data) to the caller, which may read ROOT again
//! meanwhile. Decompressed as [`crate::compress`] sniffs it (gzip, zstd,
//! none, ...); the uncompressed stream is hashed for its diff ID.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::digest::hex;
use crate::fsread::FsRead;
use crate::tar::{Archive, EntryType, Meta};

/// How the layer's tar ended.
pub enum End {
    /// Read to its end: the diff ID of the uncompressed stream.
    Diff(String),
    /// Not readable: why.
    Broken(String),
}

/// What the tar reader tells the pump.
enum Event {
    /// It needs the next chunk of the blob.
    NeedInput,
    /// An entry, with the sha256 of its data when it is a regular file.
    Entry(Box<Meta>, Option<[u8; 32]>),
    End(End),
}

/// The layer blob at `path`, streamed from `fs` (whose reads push chunks)
/// to a tar reader (which pulls) on a thread of its own, one chunk at a
/// time: `entry` gets each entry as it is read, with the sha256 of its data
/// when it is a regular file, and may read `fs` itself (from within the
/// push). The blob is never held whole. Returns the blob's size as read,
/// its sha256 (hex), and how the tar ended.
pub fn pump(
    fs: &dyn FsRead,
    path: &[u8],
    entry: &mut dyn FnMut(Meta, Option<[u8; 32]>),
    progress: &mut dyn FnMut(u64),
) -> (anyhow::Result<u64>, String, End) {
    use std::sync::mpsc;
    let mut end = End::Broken("the tar reader stopped without a word".into());
    let mut h = Sha256::new();
    let read = std::thread::scope(|scope| {
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>();
        let (ev_tx, ev_rx) = mpsc::sync_channel::<Event>(16);
        scope.spawn(move || read_tar(in_rx, ev_tx));
        let mut handle = |ev: Event, end: &mut End| match ev {
            Event::NeedInput => false,
            Event::Entry(meta, digest) => {
                entry(*meta, digest);
                true
            }
            Event::End(e) => {
                *end = e;
                true
            }
        };
        let read = fs.read_file(path, &mut |chunk| {
            h.update(chunk);
            progress(chunk.len() as u64);
            // Until the reader asks for more (or is done).
            while let Ok(ev) = ev_rx.recv() {
                if !handle(ev, &mut end) {
                    break;
                }
            }
            let _ = in_tx.send(chunk.to_vec()); // a reader that is done takes no more
            Ok(())
        });
        drop(in_tx);
        while let Ok(ev) = ev_rx.recv() {
            handle(ev, &mut end);
        }
        read
    });
    (read, hex(&h.finalize()), end)
}

/// Feeds the tar reader: the chunks the walk sends, one per request.
struct Chunks {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    ev: std::sync::mpsc::SyncSender<Event>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.ev.send(Event::NeedInput).is_err() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(c) => {
                    self.buf = c;
                    self.pos = 0;
                }
                Err(_) => return Ok(0), // the blob's end
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The tar reader's thread: decompresses, reads entries, hashes file data
/// and the whole uncompressed stream.
fn read_tar(rx: std::sync::mpsc::Receiver<Vec<u8>>, ev: std::sync::mpsc::SyncSender<Event>) {
    let input = Chunks {
        rx,
        ev: ev.clone(),
        buf: vec![],
        pos: 0,
    };
    let end = match entries(input, &ev) {
        Ok(diff) => End::Diff(diff),
        Err(e) => End::Broken(format!("{e:#}")),
    };
    let _ = ev.send(Event::End(end));
}

fn entries(input: Chunks, ev: &std::sync::mpsc::SyncSender<Event>) -> anyhow::Result<String> {
    let (_, reader) = crate::compress::decompress(input)?;
    let mut hashing = Hashing {
        inner: reader,
        hash: Sha256::new(),
    };
    {
        let mut ar = Archive::new(&mut hashing);
        let mut buf = vec![0u8; 256 * 1024];
        while let Some(mut e) = ar.next_entry()? {
            let digest = if matches!(e.meta.kind, EntryType::Regular | EntryType::Continuous) {
                let mut h = Sha256::new();
                loop {
                    let n = e.data.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                Some(h.finalize().into())
            } else {
                None
            };
            if ev
                .send(Event::Entry(Box::new(e.meta.clone()), digest))
                .is_err()
            {
                anyhow::bail!("the walk stopped");
            }
        }
    }
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(format!("sha256:{}", hex(&hashing.hash.finalize())))
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}
