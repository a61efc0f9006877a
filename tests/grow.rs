//! Making room (growing the image, partition 9 and ROOT) and the input
//! formats (compressed raw images, qcow2), end to end with `unpack`.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::*;
use gptman::GPT;

fn unpack(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"unpack"];
    all.extend_from_slice(args);
    run(&all)
}

fn partitions(disk: &Path) -> GPT {
    GPT::find_from(&mut fs::File::open(disk).unwrap()).unwrap()
}

fn read_range(disk: &Path, start: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    fs::File::open(disk)
        .unwrap()
        .read_exact_at(&mut v, start)
        .unwrap();
    v
}

fn dumpe2fs(disk: &Path) -> String {
    let r = root(disk);
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(format!("{}?offset={}", disk.display(), r.offset))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field<'a>(dump: &'a str, name: &str) -> &'a str {
    dump.lines()
        .find(|l| l.starts_with(name))
        .map(|l| l[name.len()..].trim_start_matches(':').trim())
        .unwrap_or("")
}

/// Writes more than ROOT's free space with the default --grow auto and
/// checks the grown image: GPT valid (sgdisk -v), partitions 1-7 byte for
/// byte as before, p9 from the same start to the last usable sector, ext4
/// clean with the same label and UUID, every file readable.
fn grows(layout: &str, data: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", layout], tmp.path());
    let before_gpt = partitions(&disk);
    let before_dump = dumpe2fs(&disk);
    let items = vec![
        item("big/zeros", Kind::File(Content::Zeros { len: data })),
        item("big/random", random(3, 64 << 20)),
        item("big/small", bytes(b"small")),
    ];
    let archive = tmp.path().join("big.tar");
    write_tar(&items, &archive);
    let out = tmp.path().join("out.bin");
    // --grow no names what is missing and writes nothing.
    let o = unpack(&[&disk, &archive, &"-o", &out, &"--grow", &"no"]);
    assert!(
        !o.status.success() && stderr(&o).contains("missing"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());

    let o = unpack(&[&disk, &archive, &"-o", &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("grew the image"), "{}", stderr(&o));

    let v = Command::new("sgdisk").arg("-v").arg(&out).output().unwrap();
    let vtext = String::from_utf8_lossy(&v.stdout);
    assert!(vtext.contains("No problems found"), "sgdisk -v:\n{vtext}");
    let gpt = partitions(&out);
    for n in [1u32, 2, 3, 4, 6, 7] {
        let (a, b) = (&before_gpt[n], &gpt[n]);
        assert_eq!(
            (
                a.starting_lba,
                a.ending_lba,
                a.unique_partition_guid,
                a.partition_type_guid
            ),
            (
                b.starting_lba,
                b.ending_lba,
                b.unique_partition_guid,
                b.partition_type_guid
            ),
            "partition {n} entry changed"
        );
        let ss = gpt.sector_size;
        let len = (a.ending_lba - a.starting_lba + 1) * ss;
        assert!(
            read_range(&disk, a.starting_lba * ss, len)
                == read_range(&out, b.starting_lba * ss, len),
            "partition {n} content changed"
        );
    }
    let (a, b) = (&before_gpt[9], &gpt[9]);
    assert_eq!(a.starting_lba, b.starting_lba, "p9 moved");
    assert_eq!(
        b.ending_lba, gpt.header.last_usable_lba,
        "p9 does not reach the last usable sector"
    );
    assert_eq!(a.unique_partition_guid, b.unique_partition_guid);
    assert_eq!(before_gpt.header.disk_guid, gpt.header.disk_guid);

    assert_fsck_clean(&out);
    let dump = dumpe2fs(&out);
    assert_eq!(field(&dump, "Filesystem volume name"), "ROOT");
    assert_eq!(
        field(&dump, "Filesystem UUID"),
        field(&before_dump, "Filesystem UUID")
    );
    let blocks: u64 = field(&dump, "Block count").parse().unwrap();
    let r = root(&out);
    assert_eq!(
        blocks,
        r.size / 4096,
        "ext4 does not fill the grown partition"
    );
    // Headroom: at least 256 MiB free after the data.
    let free: u64 = field(&dump, "Free blocks").parse().unwrap();
    assert!(free * 4096 >= 250 << 20, "only {free} blocks free");
    check_ext4_view(&out, "/", &items);
    // The output stays sparse.
    let md = fs::metadata(&out).unwrap();
    assert!(
        md.blocks() * 512 < data + (400 << 20),
        "output not sparse: {} bytes allocated",
        md.blocks() * 512
    );
}

#[test]
fn grows_current_layout() {
    grows("current", 1600 << 20);
}

#[test]
fn grows_old_layout() {
    grows("old", 2200 << 20);
}

#[test]
fn grow_to_an_explicit_size() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let archive = tmp.path().join("a.tar");
    let items = vec![item("f", bytes(b"x"))];
    write_tar(&items, &archive);
    let out = tmp.path().join("out.bin");
    let o = unpack(&[&disk, &archive, &"-o", &out, &"--grow", &"200M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::metadata(&out).unwrap().len(), 200 << 20);
    assert_fsck_clean(&out);
    let out2 = tmp.path().join("out2.bin");
    let o = unpack(&[&out, &archive, &"-o", &out2, &"--grow", &"+56M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::metadata(&out2).unwrap().len(), 256 << 20);
    assert_fsck_clean(&out2);
    check_ext4_view(&out2, "/", &items);
    let o = unpack(&[
        &out2,
        &archive,
        &"-o",
        &tmp.path().join("x.bin"),
        &"--grow",
        &"100M",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("only grow"),
        "{}",
        stderr(&o)
    );
}

/// A compressed fixture: decompressed while copied, zero runs as holes.
fn compressed_input(layout: &str, tool: &[&str], ext: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", layout], tmp.path());
    let compressed = tmp.path().join(format!("disk.bin.{ext}"));
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} < {} > {}",
            tool.join(" "),
            disk.display(),
            compressed.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let items = vec![item("opt/bin/x", random(1, 1 << 20)).mode(0o755)];
    let archive = tmp.path().join("a.tar");
    write_tar(&items, &archive);
    // Compressed input cannot be modified in place.
    let o = unpack(&[&compressed, &archive, &"--in-place"]);
    assert!(
        !o.status.success() && stderr(&o).contains("-o"),
        "{}",
        stderr(&o)
    );
    let out = tmp.path().join("out.bin");
    let o = unpack(&[&compressed, &archive, &"-o", &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::metadata(&out).unwrap().len(),
        fs::metadata(&disk).unwrap().len()
    );
    assert_fsck_clean(&out);
    check_ext4_view(&out, "/", &items);
    // Allocated blocks, measured: about what the fixture holds, far from
    // its 8 GiB.
    let alloc = fs::metadata(&out).unwrap().blocks() * 512;
    let fixture_alloc = fs::metadata(&disk).unwrap().blocks() * 512;
    assert!(
        alloc <= fixture_alloc + (8 << 20),
        "output takes {alloc} bytes, the fixture {fixture_alloc}"
    );
}

#[test]
fn bzip2_input() {
    // bzip2 reads the 8 GiB of the current layout slowly: the small one.
    compressed_input("small", &["bzip2", "-c"], "bz2");
}

#[test]
fn zstd_input() {
    compressed_input("current", &["zstd", "-q", "-c"], "zst");
}

#[test]
fn qcow2_input_and_output() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let qcow = tmp.path().join("disk.qcow2");
    qemu_convert("raw", "qcow2", &disk, &qcow);
    let items = vec![item("etc/hello", bytes(b"hi"))];
    let archive = tmp.path().join("a.tar");
    write_tar(&items, &archive);
    let out = tmp.path().join("out.qcow2");
    let o = unpack(&[&qcow, &archive, &"-o", &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut head = [0u8; 4];
    fs::File::open(&out).unwrap().read_exact(&mut head).unwrap();
    assert_eq!(&head, b"QFI\xfb", "the output is not qcow2");
    let raw = tmp.path().join("back.raw");
    qemu_convert("qcow2", "raw", &out, &raw);
    assert_fsck_clean(&raw);
    check_ext4_view(&raw, "/", &items);
    // --output-format raw keeps it raw.
    let out_raw = tmp.path().join("out.raw");
    let o = unpack(&[&qcow, &archive, &"-o", &out_raw, &"--output-format", &"raw"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&out_raw);
    check_ext4_view(&out_raw, "/", &items);
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}
