//! What the ext4 unit tests share: e2fsprogs' tools, fresh filesystems,
//! test data.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// An e2fsprogs tool, also from /usr/sbin and /sbin (not in a Debian
/// user's PATH). None (the test then skips, saying why) outside CI.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} (e2fsprogs) is missing, and CI may not skip"
        );
        crate::testing::skipped("ext4", &format!("{name} (e2fsprogs) is not installed"));
    }
    found
}

pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().expect("starting an e2fsprogs tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An empty ext4 made as Flatcar makes ROOT, `mib` MiB large.
pub fn mkfs(mke2fs: &Path, img: &Path, mib: u64, extra: &[&str], from: Option<&Path>) {
    std::fs::File::create(img)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let mut cmd = Command::new(mke2fs);
    cmd.args([
        "-q", "-F", "-t", "ext4", "-b", "4096", "-i", "4096", "-I", "256",
    ])
    .args(["-L", "ROOT"])
    .args(extra);
    if let Some(dir) = from {
        cmd.arg("-d").arg(dir);
    }
    run(cmd.arg(img));
}

pub fn sha(img: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(img).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().to_vec()
}

/// Deterministic bytes that are not all zero in any block.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
