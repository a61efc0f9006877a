//! `flatcar-preload unpack` end to end: real fixture disks, real archives,
//! and the result read back by e2fsck, ext4-view, debugfs and the kernel.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const CAP_V2: &[u8] = &[
    0x00, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
const CAP_V3: &[u8] = &[
    0x00, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xe8, 0x03,
    0, 0,
];

/// Every hard case the writer must get right, in one archive.
fn hard_cases() -> Vec<Item> {
    let deep = format!("{}/leaf", ["deepdirectoryname"; 12].join("/"));
    let long_name = "n".repeat(255);
    let gnu_long = format!("gnu/{}/file", "g".repeat(120));
    vec![
        item("./", Kind::Dir).mode(0o711),
        item("etc/", Kind::Dir).xattr("trusted.overlay.opaque", b"y"),
        item("etc/empty", Kind::File(Content::Bytes(vec![]))),
        item("etc/one", bytes(b"x")).mode(0o600),
        item("etc/block", random(1, 4096)),
        item("etc/block+1", random(2, 4097)),
        item("etc/five-mib", random(3, 5 << 20)).xattr("user.big", &vec![b'v'; 3000]),
        // More than one 128 MiB extent.
        item("big/file", random(4, (130 << 20) + 123)),
        item("bin/ping", bytes(b"#!/bin/sh\n"))
            .mode(0o4755)
            .xattr("security.capability", CAP_V2),
        item("bin/ping3", bytes(b"v3"))
            .xattr("security.capability", CAP_V3)
            .xattr("user.a", b"1")
            .xattr("trusted.b", b"\x00\x01\x02"),
        item("bin/sgid", bytes(b"g")).mode(0o2711),
        item("tmp/", Kind::Dir).mode(0o1777),
        item("owners/big-ids", bytes(b"ids")).owner(100_000, 65_536),
        item("owners/huge-ids", bytes(b"ids")).owner(4_000_000_000, 3_000_000),
        item("times/ns", Kind::File(Content::Bytes(vec![]))).mtime(1_700_000_000, 123_456_789),
        item("times/after-2038", Kind::File(Content::Bytes(vec![]))).mtime(4_102_444_800, 5),
        item("times/before-1970", Kind::File(Content::Bytes(vec![]))).mtime(-86_400, 0),
        // Missing parents are created on the way.
        item("implicit/a/b/c", bytes(b"c")),
        item("links/short", Kind::Symlink("target".into())).xattr("trusted.sym", b"s"),
        item("links/sixty", Kind::Symlink("t".repeat(60))),
        item(
            "links/long",
            Kind::Symlink(format!("/{}", "l/".repeat(150))),
        ),
        item("links/dangling", Kind::Symlink("../../nowhere".into())),
        item("links/hard1", Kind::HardLink("etc/one".into())),
        item("links/hard2", Kind::HardLink("etc/one".into())),
        item("links/hard-big", Kind::HardLink("etc/five-mib".into())),
        item("dev/whiteout", Kind::Char(0, 0))
            .mode(0o000)
            .xattr("trusted.overlay.x", b"w"),
        item("dev/null", Kind::Char(1, 3)).mode(0o666),
        item("dev/sda1", Kind::Block(8, 1)).mode(0o660).owner(0, 6),
        item("dev/big-numbers", Kind::Char(300, 70_000)),
        item("dev/fifo", Kind::Fifo).mode(0o600),
        item(&deep, bytes(b"deep")),
        item(&format!("names/{long_name}"), bytes(b"255")),
        item(&gnu_long, bytes(b"gnu")),
        item("names/sp ace & ünïcode\t", bytes(b"odd")),
        // Replacements, as tar does them: file -> symlink -> file, file ->
        // dir, dir kept with new metadata, hard link over a file.
        item("replace/r", bytes(b"first")).shadowed(),
        item("replace/r", Kind::Symlink("elsewhere".into())).shadowed(),
        item("replace/r", bytes(b"third")).xattr("user.r", b"3"),
        item("replace/f2d", bytes(b"file")).shadowed(),
        item("replace/f2d/", Kind::Dir).mode(0o700),
        item("replace/d/", Kind::Dir).mode(0o755).shadowed(),
        item("replace/d/inside", bytes(b"kept")),
        item("replace/d/", Kind::Dir)
            .mode(0o750)
            .owner(5, 6)
            .xattr("trusted.overlay.opaque", b"y"),
        item("replace/h", bytes(b"old")).shadowed(),
        item("replace/h", Kind::HardLink("etc/block".into())),
    ]
}

fn unpack_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"unpack"];
    all.extend_from_slice(args);
    let out = run(&all);
    assert!(out.status.success(), "unpack failed: {}", stderr(&out));
    stderr(&out)
}

fn unpack_err(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"unpack"];
    all.extend_from_slice(args);
    let out = run(&all);
    assert!(
        !out.status.success(),
        "unpack should have failed: {}",
        stderr(&out)
    );
    stderr(&out)
}

/// Writes the hard cases into the current layout and checks them through
/// e2fsck, ext4-view, debugfs and (as root) the kernel.
fn hard_cases_into(layout: &str, target: &str, kernel: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", layout], tmp.path());
    let before = file_digest(&disk);
    let items = hard_cases();
    let archive = tmp.path().join("a.tar");
    write_tar(&items, &archive);
    let out = tmp.path().join("out.bin");
    // Byte for byte as the archive has it: no label added (labels are
    // `selinux_labels_as_setfiles_gives_them`'s).
    let log = unpack_ok(&[
        &disk,
        &archive,
        &"--target",
        &target,
        &"-o",
        &out,
        &"--selinux",
        &"off",
    ]);
    assert!(log.contains("wrote"), "{log}");
    assert_eq!(
        file_digest(&disk),
        before,
        "the input disk image was modified"
    );
    assert_fsck_clean(&out);
    check_ext4_view(&out, target, &items);
    check_debugfs(&out, target, &items);
    if kernel {
        check_kernel(&out, target, &items);
    }
    // The shipped top-level directories are still there.
    let fs = ext4_view(&out);
    for d in ["/usr", "/boot", "/oem", "/lost+found"] {
        assert!(fs.symlink_metadata(d).unwrap().is_dir(), "{d} lost");
    }
    // The output is a sparse copy: far less allocated than its size.
    let md = fs::metadata(&out).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        md.blocks() * 512 < md.len() / 8,
        "output is not sparse: {} of {}",
        md.blocks() * 512,
        md.len()
    );
}

#[test]
fn hard_cases_current_layout() {
    hard_cases_into("current", "/", false);
}

#[test]
fn hard_cases_old_layout_under_target() {
    hard_cases_into("old", "/var/lib/preload", false);
}

#[test]
fn kernel_reads_hard_cases() {
    if !require_root("reads the result through a loop mount") {
        return;
    }
    hard_cases_into("current", "/opt", true);
}

#[test]
fn hundred_thousand_entries_in_one_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    let archive = tmp.path().join("many.tar");
    let mut items = vec![item("many/", Kind::Dir)];
    for i in 0..100_000 {
        items.push(item(
            &format!("many/entry-{i:06}-with-a-longer-name"),
            Kind::File(Content::Bytes(vec![])),
        ));
    }
    items.push(item("many/last", bytes(b"last")));
    write_tar(&items, &archive);
    unpack_ok(&[&disk, &archive, &"--in-place"]);
    assert_fsck_clean(&disk);
    let fs = ext4_view(&disk);
    let n = fs.read_dir("/many").unwrap().count();
    assert_eq!(n, 100_001 + 2, "entries in /many (with . and ..)");
    assert_eq!(fs.read("/many/last").unwrap(), b"last");
    assert!(fs.exists("/many/entry-099999-with-a-longer-name").unwrap());
    // A second run into the same directory replaces entries instead of
    // duplicating them.
    let again = tmp.path().join("again.tar");
    write_tar(
        &[
            item("many/entry-000007-with-a-longer-name", bytes(b"new")),
            item("many/added", Kind::File(Content::Bytes(vec![]))),
        ],
        &again,
    );
    unpack_ok(&[&disk, &again, &"--in-place"]);
    assert_fsck_clean(&disk);
    let fs = ext4_view(&disk);
    assert_eq!(fs.read_dir("/many").unwrap().count(), 100_002 + 2);
    assert_eq!(
        fs.read("/many/entry-000007-with-a-longer-name").unwrap(),
        b"new"
    );
}

#[test]
fn kernel_lists_hundred_thousand_entries() {
    if !require_root("reads the result through a loop mount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    let archive = tmp.path().join("many.tar");
    let items: Vec<Item> = (0..100_000)
        .map(|i| {
            item(
                &format!("d/{i}"),
                Kind::File(Content::Bytes(i.to_string().into_bytes())),
            )
        })
        .collect();
    write_tar(&items, &archive);
    unpack_ok(&[&disk, &archive, &"--in-place"]);
    let m = Mount::new(&disk);
    let dir = m.dir.path().join("d");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 100_000);
    for i in [0, 1, 4242, 99_999] {
        assert_eq!(
            fs::read(dir.join(i.to_string())).unwrap(),
            i.to_string().as_bytes()
        );
    }
}

#[test]
fn existing_directories_are_kept_and_updated() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    let first = tmp.path().join("1.tar");
    write_tar(
        &[item("srv/", Kind::Dir), item("srv/a", bytes(b"a"))],
        &first,
    );
    unpack_ok(&[&disk, &first, &"--in-place"]);
    let second = tmp.path().join("2.tar");
    let items = vec![
        item("usr/", Kind::Dir).mode(0o700).owner(1, 2),
        item("srv/", Kind::Dir)
            .mode(0o750)
            .xattr("trusted.overlay.opaque", b"y"),
        item("srv/b", bytes(b"b")),
    ];
    write_tar(&items, &second);
    unpack_ok(&[&disk, &second, &"--in-place"]);
    assert_fsck_clean(&disk);
    check_ext4_view(&disk, "/", &items);
    check_debugfs(&disk, "/", &items);
    let fs = ext4_view(&disk);
    assert_eq!(
        fs.read("/srv/a").unwrap(),
        b"a",
        "content of a kept directory"
    );
}

#[test]
fn gzip_and_stdin_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let items = vec![
        item("opt/bin/tool", random(9, 300_000)).mode(0o755),
        item(
            "etc/systemd/system/multi-user.target.wants/tool.service",
            Kind::Symlink("/etc/systemd/system/tool.service".into()),
        ),
    ];
    let tar = tmp.path().join("a.tar");
    write_tar(&items, &tar);
    let gz = tmp.path().join("a.tgz");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -c {} > {}", tar.display(), gz.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let out1 = tmp.path().join("o1.bin");
    unpack_ok(&[&disk, &gz, &"-o", &out1]);
    check_ext4_view(&out1, "/", &items);

    let out2 = tmp.path().join("o2.bin");
    let mut child = Command::new(bin())
        .args(["unpack"])
        .arg(&disk)
        .arg("-")
        .arg("-o")
        .arg(&out2)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&fs::read(&gz).unwrap())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    check_ext4_view(&out2, "/", &items);
    assert_fsck_clean(&out2);
}

/// A failed run: clear error, no output file, input unchanged.
fn assert_clean_failure(disk: &Path, archive: &Path, want: &str) -> String {
    assert_clean_failure_with(disk, archive, &[], want)
}

fn assert_clean_failure_with(disk: &Path, archive: &Path, extra: &[&str], want: &str) -> String {
    let dir = disk.parent().unwrap();
    let before = file_digest(disk);
    let out = dir.join("out.bin");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&disk, &archive, &"-o", &out];
    for e in extra {
        args.push(e);
    }
    let err = unpack_err(&args);
    assert!(err.contains(want), "error should mention {want:?}: {err}");
    assert!(!out.exists(), "a failed run left its output behind");
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "temporary output left behind");
    assert_eq!(file_digest(disk), before, "the input was modified");
    err
}

#[test]
fn truncated_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let archive = tmp.path().join("a.tar");
    write_tar(
        &[item("ok", bytes(b"fine")), item("cut", random(5, 1 << 20))],
        &archive,
    );
    let data = fs::read(&archive).unwrap();
    fs::write(&archive, &data[..600_000]).unwrap();
    assert_clean_failure(&disk, &archive, "truncated");
    // In place, what came before the cut is written and the fs is clean.
    unpack_err(&[&disk, &archive, &"--in-place"]);
    assert_fsck_clean(&disk);
    assert_eq!(ext4_view(&disk).read("/ok").unwrap(), b"fine");
    assert!(
        !ext4_view(&disk).exists("/cut").unwrap(),
        "a partly written file was left"
    );
}

#[test]
fn not_a_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let archive = tmp.path().join("a.tar");
    fs::write(&archive, vec![0x55u8; 10_000]).unwrap();
    assert_clean_failure(&disk, &archive, "archive");
}

/// Runs unpack reading the archive from standard input (which cannot be
/// measured first, so nothing grows and a full filesystem is hit while
/// writing).
fn unpack_stdin(disk: &Path, archive: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("unpack")
        .arg(disk)
        .arg("-")
        .args(extra)
        .stdin(fs::File::open(archive).unwrap())
        .output()
        .unwrap()
}

#[test]
fn full_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let archive = tmp.path().join("a.tar");
    write_tar(
        &[
            item("before", bytes(b"b")),
            item("huge", random(6, 100 << 20)),
            item("after", bytes(b"a")),
        ],
        &archive,
    );
    // Measured first: --grow no refuses before writing, naming what is
    // missing.
    let err = assert_clean_failure_with(&disk, &archive, &["--grow", "no"], "too small");
    assert!(err.contains("MiB missing"), "{err}");
    // From standard input nothing is measured: the write itself runs out
    // of space, and the filesystem stays consistent.
    let out = tmp.path().join("o.bin");
    let o = unpack_stdin(&disk, &archive, &["-o", out.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("full") && stderr(&o).contains("huge"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    let o = unpack_stdin(&disk, &archive, &["--in-place"]);
    assert!(stderr(&o).contains("full"), "{}", stderr(&o));
    assert_fsck_clean(&disk);
    let fs = ext4_view(&disk);
    assert!(fs.exists("/before").unwrap());
    assert!(!fs.exists("/huge").unwrap());
    // Many small files until the blocks run out, in place.
    let many = tmp.path().join("many.tar");
    let items: Vec<Item> = (0..20_000)
        .map(|i| item(&format!("m/{i}"), random(i, 4096)))
        .collect();
    write_tar(&items, &many);
    // The failed run left ROOT marked unfinished: refused, then forced.
    let o = unpack_stdin(&disk, &many, &["--in-place"]);
    assert!(
        !o.status.success() && stderr(&o).contains("left unfinished"),
        "{}",
        stderr(&o)
    );
    let o = unpack_stdin(&disk, &many, &["--in-place", "--force"]);
    assert!(stderr(&o).contains("full"), "{}", stderr(&o));
    assert_fsck_clean(&disk);
}

#[test]
fn path_escapes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    for (name, items, want) in [
        (
            "dotdot",
            vec![item("a/../../evil", Kind::File(Content::Bytes(vec![])))],
            "a/../../evil",
        ),
        (
            "absolute",
            vec![item("/etc/evil", Kind::File(Content::Bytes(vec![])))],
            "/etc/evil",
        ),
        (
            "symlink",
            vec![
                item("escape", Kind::Symlink("/etc".into())),
                item("escape/passwd", bytes(b"root::0:0")),
            ],
            "escape",
        ),
        (
            "hardlink",
            vec![item("h", Kind::HardLink("../outside".into()))],
            "../outside",
        ),
    ] {
        let archive = tmp.path().join(format!("{name}.tar"));
        write_tar(&items, &archive);
        let err = assert_clean_failure(&disk, &archive, want);
        assert!(err.contains("refus") || err.contains(".."), "{name}: {err}");
    }
    // The same symlink trick against a symlink that is already in ROOT.
    let first = tmp.path().join("first.tar");
    write_tar(&[item("var", Kind::Symlink("/".into()))], &first);
    unpack_ok(&[&disk, &first, &"--in-place"]);
    let second = tmp.path().join("second.tar");
    write_tar(&[item("x", Kind::File(Content::Bytes(vec![])))], &second);
    let out = tmp.path().join("o.bin");
    let err = unpack_err(&[&disk, &second, &"--target", &"/var/lib/docker", &"-o", &out]);
    assert!(err.contains("symlink") && err.contains("var"), "{err}");
    assert!(!out.exists());
    assert_fsck_clean(&disk);
}

#[test]
fn output_choice_is_required_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let archive = tmp.path().join("a.tar");
    write_tar(&[item("f", Kind::File(Content::Bytes(vec![])))], &archive);
    let before = file_digest(&disk);
    let err = unpack_err(&[&disk, &archive]);
    assert!(
        err.contains("--output") && err.contains("--in-place"),
        "{err}"
    );
    let err = unpack_err(&[&disk, &archive, &"-o", &disk]);
    assert!(err.contains("--in-place"), "{err}");
    let err = unpack_err(&[
        &disk,
        &archive,
        &"-o",
        &tmp.path().join("o.bin"),
        &"--target",
        &"relative",
    ]);
    assert!(err.contains("absolute"), "{err}");
    assert_eq!(file_digest(&disk), before);
    // An existing output is replaced only on success.
    let out = tmp.path().join("keep.bin");
    fs::write(&out, b"precious").unwrap();
    let bad = tmp.path().join("bad.tar");
    fs::write(&bad, b"not a tar at all, not at all").unwrap();
    unpack_err(&[&disk, &bad, &"-o", &out]);
    assert_eq!(fs::read(&out).unwrap(), b"precious");
}

#[test]
fn not_flatcar_disks() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.tar");
    write_tar(&[item("f", Kind::File(Content::Bytes(vec![])))], &archive);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--layout",
                "small",
                "--root-type",
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
                "--root-name",
                "DATA",
            ],
            "not Flatcar's ROOT",
        ),
        (&["--layout", "small", "--no-fs"], "no usable ext4"),
        (&["--layout", "small", "--label", "OTHER"], "OTHER"),
    ];
    for (args, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let disk = disk_copy(args, dir.path());
        assert_clean_failure(&disk, &archive, want);
    }
    // Not a disk image at all, and a GPT without partition 9.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    fs::write(&junk, vec![0u8; 4 << 20]).unwrap();
    assert_clean_failure(&junk, &archive, "no valid GPT");
    let disk = disk_copy(&["--layout", "small"], dir.path());
    let st = Command::new("sgdisk")
        .arg("-d")
        .arg("9")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(st.status.success());
    assert_clean_failure(&disk, &archive, "no ROOT partition");
}

#[test]
fn corrupt_gpt() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let archive = tmp.path().join("a.tar");
    write_tar(&[item("f", Kind::File(Content::Bytes(vec![])))], &archive);
    // Damage the primary and the backup header.
    let f = fs::OpenOptions::new().write(true).open(&disk).unwrap();
    use std::os::unix::fs::FileExt;
    let len = f.metadata().unwrap().len();
    f.write_all_at(&[0xff; 92], 512).unwrap();
    f.write_all_at(&[0xff; 92], len - 512).unwrap();
    drop(f);
    assert_clean_failure(&disk, &archive, "no valid GPT");
}

#[test]
fn journal_needing_recovery_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let archive = tmp.path().join("a.tar");
    write_tar(&[item("f", Kind::File(Content::Bytes(vec![])))], &archive);
    let r = root(&disk);
    let st = Command::new("debugfs")
        .args(["-w", "-R", "feature needs_recovery"])
        .arg(format!("{}?offset={}", disk.display(), r.offset))
        .output()
        .unwrap();
    assert!(st.status.success());
    let err = assert_clean_failure(&disk, &archive, "journal needs recovery");
    assert!(err.contains("booted"), "{err}");
    let err = unpack_err(&[&disk, &archive, &"--in-place"]);
    assert!(err.contains("journal needs recovery"), "{err}");
}

/// A tmpfs of `size` mounted on a new directory, unmounted when dropped.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn new(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs");
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// The output on a filesystem too small for it: said before anything is
/// written when it can be known (the copy of the disk, the archive's data
/// measured), else when the write finds it full; each time naming that
/// filesystem, no output and no temporary file left, the input untouched.
#[test]
fn output_filesystem_too_small() {
    if !is_root() {
        skip("mounting a small tmpfs for the output needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let before = fs::read(&disk).unwrap();
    let tar = tmp.path().join("big.tar");
    write_tar(&[item("opt/big", random(3, 24 << 20))], &tar);
    let left = |dir: &Path| fs::read_dir(dir).unwrap().count();

    // The copy itself does not fit (the small disk allocates more); then
    // the copy fits, the 24 MiB of data measured from the archive do not.
    let (tiny, small) = (SmallFs::new("64k"), SmallFs::new("16M"));
    for (fs, want) in [
        (&tiny, "is too small: the copy of"),
        (&small, "writing the data into ROOT needs"),
    ] {
        let out = fs.0.path().join("out.bin");
        let err = unpack_err(&[&disk, &tar, &"-o", &out]);
        assert!(err.contains(want), "{err}");
        assert!(err.contains(&fs.0.path().display().to_string()), "{err}");
        assert_eq!(
            left(fs.0.path()),
            0,
            "something was left in the output's directory"
        );
    }

    // From standard input nothing is measured: the write finds the
    // filesystem full, and says which.
    let out = small.0.path().join("out.bin");
    let mut child = Command::new(bin())
        .args(["unpack"])
        .arg(&disk)
        .args(["-", "-o"])
        .arg(&out)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(&fs::read(&tar).unwrap());
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("is full"), "{err}");
    assert!(err.contains(&small.0.path().display().to_string()), "{err}");
    assert_eq!(
        left(small.0.path()),
        0,
        "something was left in the output's directory"
    );
    assert!(fs::read(&disk).unwrap() == before, "the input was modified");
}

/// The same disk and archive give the same bytes whenever they are written:
/// what the tool and libext2fs stamp (new directories' times, inode change
/// and creation times, the superblock's write time) is SOURCE_DATE_EPOCH,
/// else ROOT's own last write time in the input. A qcow2 output too
/// (qemu-img writes no time into it). Another SOURCE_DATE_EPOCH gives
/// other bytes, with that time on what was made; a bad one is refused.
#[test]
fn the_same_inputs_give_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let archive = tmp.path().join("a.tar");
    write_tar(&hard_cases(), &archive);
    let qcow2 = tmp.path().join("disk.qcow2");
    qemu_convert("raw", "qcow2", &disk, &qcow2);
    let unpack_with = |sde: Option<&str>, input: &Path, out: &str| {
        let out = tmp.path().join(out);
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("unpack")
            .arg(input)
            .arg(&archive)
            .args(["--target", "/opt/new", "-o"])
            .arg(&out)
            .env_remove("SOURCE_DATE_EPOCH");
        if let Some(t) = sde {
            cmd.env("SOURCE_DATE_EPOCH", t);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        out
    };
    let mut first = vec![];
    for (input, ext) in [(&disk, "bin"), (&qcow2, "qcow2")] {
        let one = unpack_with(None, input, &format!("1.{ext}"));
        // Another second: a time taken from the clock would differ.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let two = unpack_with(None, input, &format!("2.{ext}"));
        assert_eq!(
            file_digest(&one),
            file_digest(&two),
            "two {ext} runs, two results"
        );
        first.push(one);
    }
    let first = &first[0];

    let at = unpack_with(Some("1700000000"), &disk, "at.bin");
    let later = unpack_with(Some("1700000001"), &disk, "later.bin");
    assert_ne!(file_digest(&at), file_digest(&later));
    assert_ne!(file_digest(&at), file_digest(first));
    assert_fsck_clean(&at);
    let dir = tmp.path().join("debugfs");
    fs::create_dir(&dir).unwrap();
    let o = debugfs_script(&at, "stat /opt/new\n", &dir);
    let text = String::from_utf8_lossy(&o.stdout);
    for field in ["ctime", "mtime", "crtime"] {
        assert!(
            text.contains(&format!("{field}: 0x6553f100:")),
            "{field} of a directory the run made is not SOURCE_DATE_EPOCH:\n{text}"
        );
    }

    let o = std::process::Command::new(bin())
        .args(["unpack"])
        .arg(&disk)
        .arg(&archive)
        .arg("-o")
        .arg(tmp.path().join("bad.bin"))
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("SOURCE_DATE_EPOCH=\"yesterday\""),
        "{}",
        stderr(&o)
    );
    assert!(!tmp.path().join("bad.bin").exists());
}

/// Issue 20: `--selinux on` labels every inode written (the archive's
/// entries and the directories made for them) as setfiles would with the
/// built-in rules and a user file_contexts, read back with debugfs and on
/// the kernel's mount and compared with libselinux's `matchpathcon`;
/// `--selinux off` writes no label; a bad file_contexts is refused naming
/// its line, with nothing written.
#[test]
fn selinux_labels_as_setfiles_gives_them() {
    if !require_root("reads the labels through a loop mount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let before = file_digest(&disk);
    let archive = tmp.path().join("a.tar");
    write_tar(&hard_cases(), &archive);
    let user = "\
# the user's rules, after the built-in ones
/opt(/.*)?\tsystem_u:object_r:usr_t:s0
/opt/new/etc(/.*)?\tsystem_u:object_r:etc_t:s0
/opt/new/bin/.*\t--\tsystem_u:object_r:bin_t:s0
/opt/new/bin/ping\t--\tsystem_u:object_r:ping_exec_t:s0
/opt/new/tmp(/.*)?\t<<none>>
/opt/new/links/.*\t-l\tsystem_u:object_r:etc_t:s0
";
    let fc = tmp.path().join("file_contexts");
    fs::write(&fc, user).unwrap();
    let unpack = |out: &str, more: &[&str]| {
        let out = tmp.path().join(out);
        let o = Command::new(bin())
            .arg("unpack")
            .arg(&disk)
            .arg(&archive)
            .args(["--target", "/opt/new", "-o"])
            .arg(&out)
            .args(more)
            .output()
            .unwrap();
        (o, out)
    };
    let (o, labelled) = unpack(
        "on.bin",
        &[
            "--selinux",
            "on",
            "--selinux-file-contexts",
            fc.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&labelled);
    let all = format!("{STORE_FILE_CONTEXTS}{user}");
    let n = assert_labels_as_matchpathcon(&labelled, &["/opt/new"], &all);
    assert!(n == 0 || n > 30, "{n} inodes checked");
    // debugfs reads the same bytes, the NUL included.
    let dir = tmp.path().join("debugfs");
    fs::create_dir(&dir).unwrap();
    let o = debugfs_script(&labelled, "ea_get -x /opt/new/bin/ping security.selinux\nea_get /opt/new/implicit/a security.selinux\n", &dir);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("system_u:object_r:ping_exec_t:s0\\000") || text.contains("73 30 00"),
        "{text}"
    );
    assert!(
        text.contains("system_u:object_r:usr_t:s0"),
        "a directory the writer made is not labelled:\n{text}"
    );

    let (o, plain) = unpack("off.bin", &["--selinux", "off"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = Mount::new(&plain);
    let mut todo = vec![m.dir.path().join("opt/new")];
    while let Some(p) = todo.pop() {
        let mut buf = [0u8; 256];
        assert!(
            rustix::fs::lgetxattr(&p, "security.selinux", &mut buf[..]).is_err(),
            "{} is labelled with --selinux off",
            p.display()
        );
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    drop(m);

    fs::write(
        &fc,
        "/opt(/.*)?\tsystem_u:object_r:usr_t:s0\n/opt/(bad\tsystem_u:object_r:usr_t:s0\n",
    )
    .unwrap();
    let (o, bad) = unpack(
        "bad.bin",
        &["--selinux-file-contexts", fc.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("line 2"), "{}", stderr(&o));
    assert!(!bad.exists(), "a refused run left {}", bad.display());
    assert_eq!(
        file_digest(&disk),
        before,
        "the input disk image was modified"
    );
}

/// `unpack` takes the node's options too, rootless: a unit enabled from
/// its [Install] section, a file into ROOT, firmware onto the ESP, an
/// Ignition config onto OEM (btrfs, rebuilt without root); and refuses a
/// unit without [Install] before writing anything.
#[test]
fn node_files_beside_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "current", "--node"], tmp.path());
    let archive = tmp.path().join("a.tar");
    write_tar(&[item("srv/data", bytes(b"data"))], &archive);
    let t = tmp.path();
    fs::write(
        t.join("app.service"),
        "[Service]\nExecStart=/opt/bin/app\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    fs::write(t.join("bare.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
    fs::write(t.join("fw.bin"), b"firmware").unwrap();
    fs::write(t.join("c.ign"), br#"{"ignition":{"version":"3.3.0"}}"#).unwrap();
    let unit = format!(
        "{}:/etc/systemd/system/app.service",
        t.join("app.service").display()
    );
    let bare = format!(
        "{}:/etc/systemd/system/bare.service",
        t.join("bare.service").display()
    );
    let fw = format!("{}:/EFI/vendor/fw.bin", t.join("fw.bin").display());
    let err = assert_clean_failure_with(
        &disk,
        &archive,
        &["--root-file", &bare, "--enable-unit", "bare.service"],
        "no [Install] section",
    );
    assert!(err.contains("bare.service"), "{err}");
    let out = t.join("out.bin");
    let said = unpack_ok(&[
        &disk,
        &archive,
        &"-o",
        &out,
        &"--root-file",
        &unit,
        &"--enable-unit",
        &"app.service",
        &"--esp-file",
        &fw,
        &"--ignition",
        &t.join("c.ign"),
    ]);
    assert!(said.contains("enabled units"), "{said}");
    assert_fsck_clean(&out);
    let view = ext4_view(&out);
    assert_eq!(view.read("/srv/data").unwrap(), b"data");
    assert_eq!(
        view.read_link("/etc/systemd/system/multi-user.target.wants/app.service")
            .unwrap(),
        ext4_view::Path::new("/etc/systemd/system/app.service")
    );
    let inv = run(&[&"inspect", &"--json", &out]);
    assert!(inv.status.success(), "{}", stderr(&inv));
    let inv: serde_json::Value = serde_json::from_slice(&inv.stdout).unwrap();
    assert_eq!(
        inv["node"]["ignition"][0], "/config.ign (Ignition 3.3.0)",
        "{inv}"
    );
    assert_eq!(
        inv["node"]["enabled_units"][0],
        "/etc/systemd/system/multi-user.target.wants/app.service"
    );
    // The ESP, read with mtools.
    let esp = Command::new("sgdisk")
        .args(["-i", "1"])
        .arg(&out)
        .output()
        .unwrap();
    let first: u64 = String::from_utf8_lossy(&esp.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let got = Command::new("mtype")
        .args([
            "-i",
            &format!("{}@@{}", out.display(), first * 512),
            "::/EFI/vendor/fw.bin",
        ])
        .output()
        .unwrap();
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(got.stdout, b"firmware");
}
