//! The phases of `populate` on their own, where they run without an
//! engine: their failure contracts (what each leaves behind when it fails).
//! The phases that need an engine are tested whole in tests/populate.rs.

use std::path::Path;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cli::{Cli, Command};
use crate::disk::ext4;
use crate::disk::ext4::testutil::{mkfs, sha, tool};

/// The config of `populate ARGS` as the command line makes it.
fn config(args: &[&str]) -> PopulateConfig {
    let argv = ["flatcar-preload", "populate"].iter().chain(args);
    let Command::Populate(p) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    p.into_config().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A ROOT filesystem (a bare ext4) holding the files of `tree`.
fn root_with(dir: &Path, tree: &[&str]) -> Option<ext4::Root> {
    let mke2fs = tool("mke2fs")?;
    let src = dir.join("tree");
    std::fs::create_dir_all(&src).unwrap();
    for path in tree {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"{}").unwrap();
    }
    let img = dir.join("root.img");
    mkfs(&mke2fs, &img, 16, &[], Some(&src));
    Some(ext4::Root::new(&img, 0))
}

/// A store already in ROOT is refused unless merging, and a merge that
/// cannot be done is refused before anything is pulled; each refusal
/// leaves ROOT as it was, and names what to do.
#[test]
fn check_existing_refuses_and_leaves_root_alone() {
    let dir = tempfile::tempdir().unwrap();
    let tree = [
        "var/lib/docker/image/overlay2/repositories.json",
        "var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db",
    ];
    let Some(root) = root_with(dir.path(), &tree) else {
        return;
    };
    let before = sha(&root.image);
    let refusal = |args: &[&str], readable: bool| {
        let d = dir.path().join("d.bin");
        let o = dir.path().join("o.bin");
        let argv = [&[d.to_str().unwrap(), "-o", o.to_str().unwrap()], args].concat();
        let e = checks::check_existing(&config(&argv), &root, readable).unwrap_err();
        assert_eq!(sha(&root.image), before, "ROOT changed: {e:#}");
        format!("{e:#}")
    };
    // Only the stores the run writes count.
    let e = refusal(&["a:1"], true);
    assert!(
        e.contains("already has /var/lib/docker; pass --merge"),
        "{e}"
    );
    let e = refusal(&["--containerd-image", "a:1"], true);
    assert!(
        e.contains("already has /var/lib/containerd; pass --merge"),
        "{e}"
    );
    let e = refusal(&["a:1", "--containerd-image", "b:1"], true);
    assert!(
        e.contains("already has /var/lib/docker and /var/lib/containerd"),
        "{e}"
    );
    // A merge over a store written whole (containerd's) starts on a copy.
    let ctrd = ["--containerd-image", "a:1", "--merge"];
    let e = refusal(&[&ctrd[..], &["--cache", "c"]].concat(), true);
    assert!(e.contains("leave out --cache"), "{e}");
    let e = refusal(&ctrd, false);
    assert!(e.contains("qemu-img convert -O raw"), "{e}");
    let whole = dir.path().to_str().unwrap();
    let e = refusal(&["a:1", "--merge", "--containerd", whole], true);
    assert!(e.contains("is a whole containerd root"), "{e}");
    // A merge over Docker's store is possible: nothing to start from.
    let cfg = config(&[whole, "a:1", "--merge", "-o", "o.bin"]);
    assert!(!checks::check_existing(&cfg, &root, true).unwrap());
    assert_eq!(sha(&root.image), before);
}

/// The local checks fail before anything is made: no output, the input
/// as it was.
#[test]
fn local_checks_fail_before_anything_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let Some(root) = root_with(dir.path(), &[]) else {
        return;
    };
    let out = dir.path().join("out.bin");
    let before = sha(&root.image);
    let disk = root.image.to_str().unwrap();
    let list = dir.path().join("images.list");
    std::fs::write(&list, "# nothing\n").unwrap();
    let cfg = config(&[
        disk,
        "-l",
        list.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let e = checks::check_local_inputs(&cfg)
        .err()
        .expect("an empty list");
    assert!(format!("{e:#}").contains("no images to preload"), "{e:#}");
    // A bare filesystem is not a disk image.
    let cfg = config(&[disk, "a:1", "-o", out.to_str().unwrap()]);
    assert!(checks::check_local_inputs(&cfg).is_err());
    assert!(!out.exists());
    assert_eq!(sha(&root.image), before);
}

/// Making the output, interrupted, leaves no output and no partial copy
/// beside it, and the input as it was.
#[test]
fn make_output_interrupted_leaves_nothing() {
    if tool("mke2fs").is_none() || tool("sgdisk").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.bin");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-disk.sh");
    let path = format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    let made = std::process::Command::new("bash")
        .arg(script)
        .args(["--layout", "small"])
        .arg(&disk)
        .env("PATH", path)
        .status()
        .unwrap();
    assert!(made.success());
    let before = sha(&disk);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("out.bin");
    let cfg = config(&[disk.to_str().unwrap(), "a:1", "-o", out.to_str().unwrap()]);
    let opened = crate::disk::Disk::open(&disk, false, crate::disk::Unfinished::Refuse).unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let made = runtime().block_on(output::make_output(&cfg, &opened, false, cancel));
    let e = made.err().expect("an interrupted copy");
    assert!(format!("{e:#}").contains("interrupted"), "{e:#}");
    let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(sha(&disk), before, "the input changed");
}

/// A store that does not verify is refused, naming what failed, so that
/// the output is not published.
#[test]
fn verify_written_refuses_a_broken_store() {
    let dir = tempfile::tempdir().unwrap();
    let tree = [
        "var/lib/docker/image/overlay2/repositories.json",
        "var/lib/docker/image/overlay2/imagedb/content/sha256/00",
    ];
    let Some(root) = root_with(dir.path(), &tree) else {
        return;
    };
    let e = runtime()
        .block_on(output::verify_written(root))
        .expect_err("a broken store");
    let e = format!("{e:#}");
    assert!(e.contains("does not verify"), "{e}");
    assert!(e.contains("the output is not kept"), "{e}");
}
