//! PAX records framed by their length: binary xattr values holding the byte
//! 0x0a, names and link targets holding newlines, a value that tries to
//! smuggle a record, and malformed records. Each result is read back by
//! ext4-view, debugfs (by inode number, so that any name works) and the
//! kernel, and the link targets are compared with what GNU tar extracts.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// cap_dac_override,cap_fowner+ep (v2): permitted mask 0x0000000a.
const CAP_V2_NL: &[u8] = &[
    0x01, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];
/// The same as v3 with root id 10 (0x0a in the mask and in the root id).
const CAP_V3_NL: &[u8] = &[
    0x01, 0x00, 0x00, 0x03, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00,
];
const SMUGGLER: &[u8] = b"x\n22 linkpath=/etc/evil\n";

/// One entry as raw PAX records plus a ustar header, written by hand so
/// that names, targets and values can hold any byte.
struct Raw {
    records: Vec<(&'static str, Vec<u8>)>,
    header_name: &'static str,
    header_link: &'static str,
    ty: tar::EntryType,
    data: Vec<u8>,
}

fn raw(ty: tar::EntryType, header_name: &'static str) -> Raw {
    Raw {
        records: vec![],
        header_name,
        header_link: "",
        ty,
        data: vec![],
    }
}

impl Raw {
    fn pax(mut self, key: &'static str, value: &[u8]) -> Raw {
        self.records.push((key, value.to_vec()));
        self
    }
    fn link(mut self, l: &'static str) -> Raw {
        self.header_link = l;
        self
    }
    fn data(mut self, d: &[u8]) -> Raw {
        self.data = d.to_vec();
        self
    }
}

fn write_raw(entries: &[Raw], path: &Path) {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.records.is_empty() {
            b.append_pax_extensions(e.records.iter().map(|(k, v)| (*k, &v[..])))
                .unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(e.ty);
        h.set_mode(if e.ty == tar::EntryType::Symlink {
            0o777
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_size(e.data.len() as u64);
        let old = h.as_old_mut();
        old.name[..e.header_name.len()].copy_from_slice(e.header_name.as_bytes());
        old.linkname[..e.header_link.len()].copy_from_slice(e.header_link.as_bytes());
        h.set_cksum();
        b.append(&h, &e.data[..]).unwrap();
    }
    fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// The archive of every newline case, and what each path must hold:
/// (path, xattrs, symlink target, file content).
type Want = (
    Vec<u8>,
    Vec<(&'static str, Vec<u8>)>,
    Option<Vec<u8>>,
    Vec<u8>,
);

fn newline_cases() -> (Vec<Raw>, Vec<Want>) {
    use tar::EntryType::{Regular, Symlink};
    let many: Vec<u8> = (0..600)
        .map(|i| if i % 3 == 0 { b'\n' } else { i as u8 })
        .collect();
    let every: Vec<u8> = (0u8..=255).collect();
    let entries = vec![
        raw(Regular, "caps/v2")
            .pax("SCHILY.xattr.security.capability", CAP_V2_NL)
            .data(b"v2"),
        raw(Regular, "caps/v3")
            .pax("SCHILY.xattr.security.capability", CAP_V3_NL)
            .data(b"v3"),
        raw(Regular, "values/first")
            .pax("SCHILY.xattr.user.first", b"\nrest")
            .pax("SCHILY.xattr.trusted.last", b"rest\n")
            .pax("SCHILY.xattr.user.only", b"\n")
            .data(b"f"),
        raw(Regular, "values/many")
            .pax("SCHILY.xattr.user.many", &many)
            .pax("SCHILY.xattr.user.every-byte", &every)
            .pax("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        raw(Regular, "placeholder-1")
            .pax("path", b"names/new\nline")
            .pax("hdrcharset", b"BINARY")
            .data(b"newline in the name"),
        raw(Symlink, "placeholder-2")
            .pax("path", b"names/link\n")
            .pax("linkpath", b"target\nwith newline"),
        // tar-rs 0.4 reads the value's tail as a linkpath record.
        raw(Symlink, "smuggle/link")
            .link("honest-target")
            .pax("SCHILY.xattr.trusted.payload", SMUGGLER),
        raw(Symlink, "smuggle/with-linkpath")
            .link("placeholder")
            .pax("SCHILY.xattr.trusted.payload", SMUGGLER)
            .pax("linkpath", b"framed-target"),
    ];
    let want: Vec<Want> = vec![
        (
            b"caps/v2".to_vec(),
            vec![("security.capability", CAP_V2_NL.to_vec())],
            None,
            b"v2".to_vec(),
        ),
        (
            b"caps/v3".to_vec(),
            vec![("security.capability", CAP_V3_NL.to_vec())],
            None,
            b"v3".to_vec(),
        ),
        (
            b"values/first".to_vec(),
            vec![
                ("user.first", b"\nrest".to_vec()),
                ("trusted.last", b"rest\n".to_vec()),
                ("user.only", b"\n".to_vec()),
            ],
            None,
            b"f".to_vec(),
        ),
        (
            b"values/many".to_vec(),
            vec![
                ("user.many", many),
                ("user.every-byte", every),
                ("trusted.overlay.opaque", b"y".to_vec()),
            ],
            None,
            vec![],
        ),
        (
            b"names/new\nline".to_vec(),
            vec![],
            None,
            b"newline in the name".to_vec(),
        ),
        (
            b"names/link\n".to_vec(),
            vec![],
            Some(b"target\nwith newline".to_vec()),
            vec![],
        ),
        (
            b"smuggle/link".to_vec(),
            vec![("trusted.payload", SMUGGLER.to_vec())],
            Some(b"honest-target".to_vec()),
            vec![],
        ),
        (
            b"smuggle/with-linkpath".to_vec(),
            vec![("trusted.payload", SMUGGLER.to_vec())],
            Some(b"framed-target".to_vec()),
            vec![],
        ),
    ];
    (entries, want)
}

fn os(b: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(b)
}

fn unpack_to(disk: &Path, archive: &Path, out: &Path) {
    let o = run(&[&"unpack", &disk, &archive, &"--target", &"/t", &"-o", &out]);
    assert!(o.status.success(), "unpack failed: {}", stderr(&o));
}

/// ext4-view: names, types, contents and link targets (it reads no xattrs).
fn check_view(disk: &Path, want: &[Want]) {
    let fs = ext4_view(disk);
    for (path, _, link, content) in want {
        let bytes = [&b"/t/"[..], path].concat();
        let p = ext4_view::Path::try_from(&bytes[..]).unwrap();
        let md = fs
            .symlink_metadata(p)
            .unwrap_or_else(|e| panic!("ext4-view: {:?}: {e}", p));
        match link {
            Some(t) => {
                assert!(md.file_type().is_symlink(), "{p:?}");
                assert_eq!(fs.read_link(p).unwrap().as_ref(), &t[..], "{p:?}");
            }
            None => assert_eq!(&fs.read(p).unwrap(), content, "ext4-view: {p:?}"),
        }
    }
}

/// The kernel: a read-only loop mount, every byte of names, targets,
/// contents and xattr values; returns each path's inode number.
fn check_kernel_mount(disk: &Path, want: &[Want]) -> Vec<u64> {
    let m = Mount::new(disk);
    let base = m.dir.path().join("t");
    let mut inodes = vec![];
    for (path, xattrs, link, content) in want {
        let p = base.join(os(path));
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("kernel: {p:?}: {e}"));
        inodes.push(md.ino());
        match link {
            Some(t) => assert_eq!(
                fs::read_link(&p).unwrap().as_os_str().as_encoded_bytes(),
                &t[..],
                "kernel: {p:?}: link target"
            ),
            None => assert_eq!(&fs::read(&p).unwrap(), content, "kernel: {p:?}"),
        }
        let mut names = list_xattrs(&p);
        names.sort();
        let mut want_names: Vec<String> = xattrs.iter().map(|(n, _)| n.to_string()).collect();
        want_names.sort();
        assert_eq!(names, want_names, "kernel: {p:?}: xattr names");
        for (n, v) in xattrs {
            let mut buf = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(&p, *n, &mut buf[..]).unwrap();
            assert_eq!(&buf[..len], &v[..], "kernel: {p:?}: xattr {n}");
        }
    }
    inodes
}

/// debugfs, addressing each entry by inode number (`<N>`), so that names
/// with newlines need no quoting: xattr values byte for byte, and the
/// symlink targets from `stat`.
fn check_debugfs_by_inode(disk: &Path, want: &[Want], inodes: &[u64]) {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmds = String::new();
    let mut files = vec![];
    for (i, ((_, xattrs, _, _), ino)) in want.iter().zip(inodes).enumerate() {
        for (j, (n, v)) in xattrs.iter().enumerate() {
            let f = tmp.path().join(format!("x{i}-{j}"));
            cmds.push_str(&format!("ea_get -f {} <{ino}> {n}\n", f.display()));
            files.push((f, v.clone(), *n, *ino));
        }
        cmds.push_str(&format!("stat <{ino}>\n"));
    }
    let out = debugfs_script(disk, &cmds, tmp.path());
    for (f, v, n, ino) in files {
        let got = fs::read(&f).unwrap_or_else(|_| panic!("debugfs: <{ino}>: no xattr {n}"));
        assert_eq!(got, v, "debugfs: <{ino}>: xattr {n}");
    }
    let text = out.stdout;
    for (path, _, link, _) in want {
        if let Some(t) = link {
            let line = [&b"Fast link dest: \""[..], t, b"\""].concat();
            assert!(
                text.windows(line.len()).any(|w| w == line),
                "debugfs: {:?}: link target {:?} not in stat output",
                String::from_utf8_lossy(path),
                String::from_utf8_lossy(t)
            );
        }
    }
}

/// GNU tar reads the same archive the same way.
fn check_gnu_tar(archive: &Path, want: &[Want]) {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(dir.path())
        .output()
        .expect("GNU tar");
    assert!(o.status.success(), "GNU tar: {}", stderr(&o));
    for (path, _, link, content) in want {
        let p = dir.path().join(os(path));
        match link {
            Some(t) => assert_eq!(
                fs::read_link(&p).unwrap().as_os_str().as_encoded_bytes(),
                &t[..],
                "GNU tar reads {p:?} differently"
            ),
            None => assert_eq!(&fs::read(&p).unwrap(), content, "GNU tar: {p:?}"),
        }
    }
}

fn newline_case_files(dir: &Path) -> (PathBuf, PathBuf, Vec<Want>) {
    let disk = disk_copy(&["--layout", "small"], dir);
    let (entries, want) = newline_cases();
    let archive = dir.join("nl.tar");
    write_raw(&entries, &archive);
    (disk, archive, want)
}

#[test]
fn newline_bytes_in_values_names_and_targets() {
    let tmp = tempfile::tempdir().unwrap();
    let (disk, archive, want) = newline_case_files(tmp.path());
    let before = file_digest(&disk);
    let out = tmp.path().join("out.bin");
    unpack_to(&disk, &archive, &out);
    assert_eq!(file_digest(&disk), before, "the input was modified");
    assert_fsck_clean(&out);
    check_view(&out, &want);
    check_gnu_tar(&archive, &want);
    // The same bytes through a gzip stream on standard input (measured
    // nowhere, read once).
    let gz = tmp.path().join("nl.tar.gz");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -c '{}' > '{}'",
            archive.display(),
            gz.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    let out2 = tmp.path().join("out2.bin");
    unpack_to(&disk, &gz, &out2);
    check_view(&out2, &want);
}

#[test]
fn kernel_and_debugfs_read_newline_bytes() {
    if !require_root("reads the result back through a loop mount") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (disk, archive, want) = newline_case_files(tmp.path());
    let out = tmp.path().join("out.bin");
    unpack_to(&disk, &archive, &out);
    let inodes = check_kernel_mount(&out, &want);
    check_debugfs_by_inode(&out, &want, &inodes);
}

#[test]
fn malformed_pax_records_are_refused_naming_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let before = file_digest(&disk);
    // A good entry first, then a PAX header whose record is bad, written
    // raw (the builder only writes good ones).
    let cases: [(&[u8], &str); 5] = [
        (b"99 path=x\n", "runs past the end"),
        (b"14 uid=1 gid=2", "newline"),
        (b"11 pathxy\n\n", "no '='"),
        (b"1x path=x\n", "not a decimal"),
        (b"99999999999999999999999 path=x\n", "no length"),
    ];
    for (i, (records, want)) in cases.iter().enumerate() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "good", &b"ok"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(records.len() as u64);
        b.append_data(&mut h, "PaxHeaders.0/victim", *records)
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "victim", &b"v"[..]).unwrap();
        let archive = tmp.path().join(format!("bad{i}.tar"));
        fs::File::create(&archive)
            .unwrap()
            .write_all(&b.into_inner().unwrap())
            .unwrap();
        let out = tmp.path().join("out.bin");
        let o = run(&[&"unpack", &disk, &archive, &"-o", &out]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{records:?} was accepted: {err}");
        assert!(
            err.contains(want) && err.contains("victim"),
            "{records:?}: the error should say {want:?} and name the entry: {err}"
        );
        assert!(!out.exists(), "a failed run left its output");
        assert_eq!(file_digest(&disk), before, "the input was modified");
    }
}
