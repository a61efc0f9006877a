//! The tool run as `unpigz -d -c`, as dockerd and containerd run it in a
//! build container without one: its output against GNU gzip's on streams
//! gzip itself made, and its failures.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A link named `unpigz` to the tool, as the helper's init provides it.
fn unpigz(dir: &Path) -> PathBuf {
    let link = dir.join("unpigz");
    std::os::unix::fs::symlink(common::bin(), &link).unwrap();
    link
}

fn run(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feed = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feed.join().unwrap();
    out
}

/// Bytes shaped like a layer: text, runs, random blocks and zeros.
fn layer_like(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match x % 4 {
            0 => out.extend(format!("/usr/lib/file-{x:x}.so: ELF 64-bit\n").as_bytes()),
            1 => out.extend(std::iter::repeat_n(
                (x >> 8) as u8,
                (x >> 16) as usize % 4096,
            )),
            2 => out.extend((0..(x >> 20) as usize % 8192).map(|i| (x >> (i % 56)) as u8)),
            _ => out.extend(std::iter::repeat_n(0u8, (x >> 24) as usize % 65536)),
        }
    }
    out.truncate(len);
    out
}

fn gzip(level: &str, data: &[u8]) -> Vec<u8> {
    let out = run(Command::new("gzip").args([level, "-c", "-n"]), data);
    assert!(out.status.success(), "gzip {level} failed");
    out.stdout
}

#[test]
fn inflates_as_gzip_does() {
    let dir = tempfile::tempdir().unwrap();
    let unpigz = unpigz(dir.path());
    let big = layer_like(48 << 20, 7);
    let small = layer_like(100_000, 3);
    let mut members = gzip("-1", &small);
    members.extend(gzip("-9", &big[..1 << 20]));
    members.extend(gzip("-6", b""));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("gzip -6 of 48 MiB", gzip("-6", &big)),
        ("gzip -1", gzip("-1", &small)),
        ("gzip -9", gzip("-9", &small)),
        ("an empty file", gzip("-6", b"")),
        ("three members", members),
    ];
    for (what, gz) in &cases {
        let ours = run(Command::new(&unpigz).args(["-d", "-c"]), gz);
        assert!(
            ours.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&ours.stderr)
        );
        let theirs = run(Command::new("gzip").arg("-dc"), gz);
        assert!(theirs.status.success(), "{what}: gzip -dc failed");
        assert!(
            ours.stdout == theirs.stdout,
            "{what}: the output differs from gzip -dc's"
        );
    }
    assert_eq!(
        run(Command::new(&unpigz).args(["-d", "-c"]), &cases[0].1)
            .stdout
            .len(),
        big.len()
    );
}

#[test]
fn fails_on_a_broken_stream() {
    let dir = tempfile::tempdir().unwrap();
    let unpigz = unpigz(dir.path());
    let good = gzip("-6", &layer_like(1 << 20, 5));
    let mut cut = good.clone();
    cut.truncate(good.len() / 2);
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    let mut trailing = good.clone();
    trailing.extend(b"not gzip");
    for (what, input) in [
        ("cut in half", cut),
        ("a byte changed", flipped),
        ("trailing bytes", trailing),
        ("not gzip", b"plain text, not compressed".to_vec()),
    ] {
        let out = run(Command::new(&unpigz).args(["-d", "-c"]), &input);
        assert!(!out.status.success(), "{what}: exit status 0");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("unpigz (flatcar-preload)"), "{what}: {err}");
    }
    let out = run(Command::new(&unpigz).args(["-d", "layer.gz"]), b"");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only `unpigz -d -c`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
