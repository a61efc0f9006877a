//! Fuzzing the tar reader into the ext4 writer, on stable Rust.
//!
//! cargo-fuzz needs a nightly toolchain, which this project's machines do
//! not have, so this is a mutational fuzzer of our own: it starts from the
//! seed corpus (`tests/fuzz/corpus/*.tar`, made by GNU tar with
//! `make-corpus.sh`, plus archives built here around PAX records), mutates
//! bytes, tar headers and PAX records (fixing header checksums most of the
//! time so that mutations reach past the header), and feeds each case as
//! the archive into a small ext4 filesystem. Every case must end without a
//! panic, within a time limit, and with `e2fsck -fn` clean, whether the
//! archive was accepted or refused. Inputs that produce an outcome not seen
//! before (a new error, a new mix of written entries) join the corpus.
//!
//! - `FP_FUZZ_SECONDS` (default 10; `ci/test.sh` gives 60): how long.
//! - `FP_FUZZ_SEED`: the random seed (printed at the start), to replay a run.
//! - A failing case is saved under cargo's `target/tmp/fuzz-failures/`; copy it into
//!   `tests/fuzz/regressions/`, where every file is replayed on each run.
//!
//! The engine (rng, time budget, cases in a thread with a time limit,
//! regressions, saved failures) is tests/common/fuzz.rs, shared with the
//! parser targets of tests/fuzz_parsers.rs.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::fuzz::{case_files, env_u64, fix_tar_checksums, run_limited, Campaign, Rng};

/// A small ext4 made like Flatcar's ROOT (4 KiB blocks, one inode per
/// 4 KiB, 256-byte inodes; e2fsprogs' ext4 defaults), made once.
fn fixture_fs(dir: &Path) -> PathBuf {
    let img = dir.join("fixture.img");
    let f = fs::File::create(&img).unwrap();
    f.set_len(8 << 20).unwrap();
    drop(f);
    let out = Command::new("mke2fs")
        .args([
            "-q", "-F", "-t", "ext4", "-b", "4096", "-i", "4096", "-I", "256",
        ])
        .args(["-L", "ROOT"])
        .arg(&img)
        .output()
        .expect("mke2fs (e2fsprogs)");
    assert!(out.status.success(), "mke2fs: {out:?}");
    img
}

fn fsck_clean(img: &Path) -> Result<(), String> {
    let out = Command::new("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "e2fsck -fn is not clean:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A PAX record with its length computed.
fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = [key, b"=", value, b"\n"].concat();
    let mut len = body.len() + 2;
    while len.to_string().len() + 1 + body.len() != len {
        len = len.to_string().len() + 1 + body.len();
    }
    [format!("{len} ").as_bytes(), &body].concat()
}

fn header(name: &[u8], ty: u8, size: u64, link: &[u8]) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    let old = h.as_old_mut();
    let n = name.len().min(100);
    old.name[..n].copy_from_slice(&name[..n]);
    let l = link.len().min(100);
    old.linkname[..l].copy_from_slice(&link[..l]);
    h.set_entry_type(tar::EntryType::new(ty));
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    *h.as_bytes()
}

fn pad(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(512) * 512, 0);
}

/// Seeds built here: PAX records of every kind the reader handles.
fn built_seeds() -> Vec<Vec<u8>> {
    let cap = [
        1u8, 0, 0, 2, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let pax = |records: &[Vec<u8>], entry: [u8; 512], data: &[u8]| {
        let r = records.concat();
        let mut v = header(b"PaxHeaders/e", b'x', r.len() as u64, b"").to_vec();
        v.extend(r);
        pad(&mut v);
        v.extend(entry);
        v.extend(data);
        pad(&mut v);
        v
    };
    let mut seeds = vec![];
    let mut a = pax(
        &[
            record(b"SCHILY.xattr.security.capability", &cap),
            record(b"SCHILY.xattr.trusted.overlay.opaque", b"y"),
            record(b"mtime", b"1700000000.123456789"),
            record(b"uid", b"100000"),
        ],
        header(b"d/f", b'0', 5, b""),
        b"hello",
    );
    a.extend(pax(
        &[record(b"path", b"d/new\nline"), record(b"linkpath", b"t\n")],
        header(b"x", b'2', 0, b""),
        b"",
    ));
    a.extend(header(b"d/h", b'1', 0, b"d/f"));
    a.extend(header(b"d/wh", b'3', 0, b""));
    a.extend(header(b"d/", b'5', 0, b""));
    a.extend([0u8; 1024]);
    seeds.push(a);
    let g = record(b"comment", b"global");
    let mut b = header(b"g", b'g', g.len() as u64, b"").to_vec();
    b.extend(g);
    pad(&mut b);
    b.extend(pax(
        &[record(b"size", b"3"), record(b"gid", b"7")],
        header(b"s", b'0', 0, b""),
        b"abc",
    ));
    b.extend([0u8; 1024]);
    seeds.push(b);
    seeds
}

const INTERESTING: &[u8] = b"\n =0123456789\0\xff/.xgLK5S7";

/// Tokens of the format for the byte-level havoc.
const TOKENS: &[&[u8]] = &[
    b"ustar",
    b"path=",
    b"linkpath=",
    b"SCHILY.xattr.",
    b"size=",
    b"././@LongLink",
];

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len().max(1);
        match rng.below(6) {
            // Bytes anywhere: flips, tokens, nudged digits, deletions,
            // insertions, truncation (the engine's byte-level havoc).
            0 | 1 => common::fuzz::havoc(rng, &mut v, corpus, TOKENS),
            2 => {
                // A header field: type flag, size, mode, uid, name.
                let block = rng.below(len / 512 + 1) * 512;
                let (off, width) = [
                    (156, 1),
                    (124, 12),
                    (100, 8),
                    (108, 8),
                    (0, 100),
                    (157, 100),
                ][rng.below(6)];
                for k in 0..width {
                    if let Some(b) = v.get_mut(block + off + k) {
                        if rng.chance(50) {
                            *b = INTERESTING[rng.below(INTERESTING.len())];
                        }
                    }
                }
            }
            3 => {
                // Duplicate or drop a whole block.
                let blocks = v.len() / 512;
                if blocks > 0 {
                    let b = rng.below(blocks) * 512;
                    if rng.chance(50) {
                        let copy = v[b..b + 512].to_vec();
                        v.splice(b..b, copy);
                    } else {
                        v.drain(b..b + 512);
                    }
                }
            }
            4 => {
                // Splice with another corpus entry at a block boundary.
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(v.len() / 512 + 1) * 512;
                let from = rng.below(other.len() / 512 + 1) * 512;
                v.truncate(cut.min(v.len()));
                v.extend_from_slice(&other[from.min(other.len())..]);
            }
            _ => {
                // A new PAX header in front of a random block.
                let blocks = v.len() / 512;
                let at = rng.below(blocks + 1) * 512;
                let keys: [&[u8]; 8] = [
                    b"path",
                    b"linkpath",
                    b"size",
                    b"uid",
                    b"mtime",
                    b"SCHILY.xattr.user.x",
                    b"SCHILY.xattr.trusted.overlay.opaque",
                    b"GNU.sparse.major",
                ];
                let value: Vec<u8> = (0..rng.below(40))
                    .map(|_| INTERESTING[rng.below(INTERESTING.len())])
                    .collect();
                let r = record(keys[rng.below(keys.len())], &value);
                let mut h = header(b"PaxHeaders/f", b'x', r.len() as u64, b"").to_vec();
                h.extend(r);
                pad(&mut h);
                v.splice(at.min(v.len())..at.min(v.len()), h);
            }
        }
    }
    if rng.chance(80) {
        fix_tar_checksums(&mut v);
    }
    v.truncate(1 << 20);
    v
}

/// What a case did, with numbers left out: a new one keeps the input.
fn outcome(r: &anyhow::Result<flatcar_preload::disk::ext4::Stats>) -> String {
    match r {
        Ok(s) => format!(
            "ok f{} d{} s{} h{} v{} x{}",
            s.files.min(3),
            s.dirs.min(3),
            s.symlinks.min(2),
            s.hardlinks.min(2),
            s.devices.min(2),
            s.xattrs.min(3)
        ),
        Err(e) => format!("{e:#}")
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(120)
            .collect(),
    }
}

/// Runs one case on a fresh copy of the fixture; Err says what went wrong.
fn run_case(fixture: &Path, work: &Path, input: &[u8]) -> Result<String, String> {
    fs::copy(fixture, work).map_err(|e| e.to_string())?;
    let img = work.to_path_buf();
    let data = input.to_vec();
    let r = run_limited(Duration::from_secs(20), move || {
        let mut fs = flatcar_preload::disk::ext4::Root::new(&img, 0).open_write(None)?;
        let written = fs.write_tar(b"/fuzz", &data[..], None);
        fs.close_after(written)
    })
    .map_err(|e| format!("the reader or writer {e}"))?;
    fsck_clean(work)?;
    Ok(outcome(&r))
}

fn campaign() -> Campaign {
    Campaign {
        name: "tar".into(),
        seconds: env_u64("FP_FUZZ_SECONDS").unwrap_or(10),
        seed: common::fuzz::seed(),
        max_corpus: 500,
        max_len: 1 << 20,
        ext: "tar".into(),
    }
}

#[test]
fn regressions_replay_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = fixture_fs(tmp.path());
    let work = tmp.path().join("work.img");
    let cases = case_files(&common::manifest_dir().join("tests/fuzz/regressions"));
    let n = campaign().replay(&cases, &mut |input| run_case(&fixture, &work, input));
    eprintln!("replayed {n} regression case(s)");
}

#[test]
fn fuzz_reader_into_writer() {
    let c = campaign();
    eprintln!("fuzzing for {} s with FP_FUZZ_SEED={}", c.seconds, c.seed);
    let tmp = tempfile::tempdir().unwrap();
    let fixture = fixture_fs(tmp.path());
    let work = tmp.path().join("work.img");
    let mut corpus: Vec<Vec<u8>> = case_files(&common::manifest_dir().join("tests/fuzz/corpus"))
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert!(!corpus.is_empty(), "the seed corpus is missing");
    corpus.extend(built_seeds());
    // Every seed must be read cleanly and completely; the regressions are
    // replayed by regressions_replay_clean.
    c.run(
        corpus,
        &[],
        &|o| o.starts_with("ok"),
        &mut mutate,
        &mut |input| run_case(&fixture, &work, input),
    );
}
