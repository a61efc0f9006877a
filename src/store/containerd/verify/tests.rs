//! A containerd store in memory as a pull and unpack leave it (an index
//! with one of its two platforms stored, in `k8s.io`; a one-layer image in
//! `moby`), and what `verify` and `inspect` say of it and of its damage.

use std::io::Write;

use super::*;
use crate::digest::sha256_hex;
use crate::fsread::Kind;
use crate::store::containerd::bolt::write::{build, Tree};
use crate::store::verify_common::memfs::MemFs;
use crate::store::verify_common::OPAQUE_XATTR;
use crate::tar::{Attrs, Device, Writer};

const R: &str = "/var/lib/containerd";

/// What a layer's tar holds (path, then what).
#[derive(Clone)]
enum Ent {
    Dir(&'static [u8], u32, u32),
    File(&'static [u8], Vec<u8>, u32, u32, Vec<(Vec<u8>, Vec<u8>)>),
    Symlink(&'static [u8], &'static [u8]),
    /// Path, target, and the header's mode and owner, which unpacking
    /// gives the inode both names share.
    Hard(&'static [u8], &'static [u8], u32, u32),
    Fifo(&'static [u8]),
    Char(&'static [u8], u32, u32),
    /// `dir/.wh.name`, owned by 0:0.
    Whiteout(&'static [u8]),
    /// `dir/.wh..wh..opq`.
    Opaque(&'static [u8]),
}

/// An owner in the fixtures: `uid:uid`, or whoever runs the test.
const ME: u32 = u32::MAX;

fn owner(uid: u32) -> (u32, u32) {
    if uid == ME {
        (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        )
    } else {
        (uid, uid)
    }
}

fn attrs(mode: u32, uid: u32, xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Attrs {
    let (uid, gid) = owner(uid);
    Attrs {
        mode,
        uid: uid.into(),
        gid: gid.into(),
        mtime: 1_700_000_000,
        mtime_nsec: 0,
        xattrs,
    }
}

fn layer_tar(ents: &[Ent]) -> Vec<u8> {
    let mut w = Writer::new(vec![]);
    for e in ents {
        match e {
            Ent::Dir(p, mode, uid) => w.dir(p, &attrs(*mode, *uid, vec![])),
            Ent::File(p, data, mode, uid, x) => {
                w.file_bytes(p, &attrs(*mode, *uid, x.clone()), data)
            }
            Ent::Symlink(p, t) => w.symlink(p, &attrs(0o777, 0, vec![]), t),
            Ent::Hard(p, t, mode, uid) => w.hard_link(p, &attrs(*mode, *uid, vec![]), t),
            Ent::Fifo(p) => w.fifo(p, &attrs(0o600, 0, vec![])),
            Ent::Char(p, a, b) => w.device(p, &attrs(0o666, 0, vec![]), Device::Char, *a, *b),
            Ent::Whiteout(p) => w.file_bytes(p, &attrs(0o644, 0, vec![]), b""),
            Ent::Opaque(d) => w.file_bytes(
                &[*d, b"/.wh..wh..opq"].concat(),
                &attrs(0o644, 0, vec![]),
                b"",
            ),
        }
        .unwrap();
    }
    w.finish().unwrap()
}

/// A file capability: binary, with a newline and NULs in it.
fn cap() -> Vec<u8> {
    vec![
        1, 0, 0, 2, b'\n', 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]
}

fn base_layer() -> Vec<Ent> {
    vec![
        Ent::Dir(b"etc", 0o755, 0),
        Ent::File(b"etc/hello", b"hello\n".to_vec(), 0o644, 0, vec![]),
        // As Docker's tar writer leaves a hard link: mode 0 (containerd
        // chmods the shared inode with it), root's.
        Ent::Hard(b"etc/hello2", b"etc/hello", 0, 0),
        Ent::Dir(b"data", 0o750, 1000),
        Ent::File(b"data/we\nird name", b"x".to_vec(), 0o600, 1000, vec![]),
        Ent::Dir(b"data/a", 0o755, 0),
        Ent::File(b"data/a/old", b"old".to_vec(), 0o644, 0, vec![]),
        Ent::File(
            b"bin/ping",
            b"\x7fELF ping".to_vec(),
            0o755,
            0,
            vec![(b"security.capability".to_vec(), cap())],
        ),
        Ent::Symlink(b"bin/sh", b"busybox"),
        Ent::Fifo(b"run/fifo"),
        Ent::Char(b"dev/null", 1, 3),
    ]
}

fn top_layer() -> Vec<Ent> {
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    vec![
        Ent::Dir(b"data/a", 0o755, 0),
        Ent::Opaque(b"data/a"),
        Ent::File(b"data/a/new", b"new".to_vec(), 0o644, 0, vec![]),
        Ent::Dir(b"etc", 0o755, 0),
        Ent::Whiteout(b"etc/.wh.hello"),
        Ent::File(b"big", big, 0o644, 0, vec![]),
    ]
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(b))
}

/// Unpacks `ents` into `dir` of `fs` as containerd's overlay apply does.
fn unpack(fs: &mut MemFs, dir: &str, ents: &[Ent]) {
    fs.dir(dir);
    let p = |rel: &[u8]| [dir.as_bytes(), b"/", rel].concat();
    let set = |fs: &mut MemFs, path: &[u8], mode: u32, uid: u32| {
        let n = fs.node_bytes(path);
        n.stat.mode = mode;
        (n.stat.uid, n.stat.gid) = owner(uid);
    };
    for e in ents {
        match e {
            Ent::Dir(r, mode, uid) => {
                if !fs.nodes.contains_key(&p(r)) {
                    fs.put_bytes(&p(r), Kind::Dir, b"", (0, 0));
                }
                set(fs, &p(r), *mode, *uid);
            }
            Ent::File(r, data, mode, uid, x) => {
                fs.put_bytes(&p(r), Kind::File, data, (0, 0));
                set(fs, &p(r), *mode, *uid);
                fs.node_bytes(&p(r)).xattrs = x
                    .iter()
                    .map(|(k, v)| (String::from_utf8(k.clone()).unwrap(), v.clone()))
                    .collect();
            }
            Ent::Symlink(r, t) => {
                fs.put_bytes(&p(r), Kind::Symlink, t, (0, 0));
                set(fs, &p(r), 0o777, 0);
            }
            Ent::Hard(r, t, mode, uid) => {
                set(fs, &p(t), *mode, *uid);
                let n = fs.node_bytes(&p(t)).clone();
                fs.nodes.insert(p(r), n);
            }
            Ent::Fifo(r) => {
                fs.put_bytes(&p(r), Kind::Fifo, b"", (0, 0));
                set(fs, &p(r), 0o600, 0);
            }
            Ent::Char(r, a, b) => {
                fs.put_bytes(&p(r), Kind::CharDev, b"", (*a, *b));
                set(fs, &p(r), 0o666, 0);
            }
            Ent::Whiteout(r) => {
                let (d, name) = crate::store::verify_common::split_last(r);
                let target = [d, b"/", &name[4..]].concat();
                fs.put_bytes(&p(&target), Kind::CharDev, b"", (0, 0));
                set(fs, &p(&target), 0, 0);
            }
            Ent::Opaque(d) => fs
                .node_bytes(&p(d))
                .xattrs
                .push((OPAQUE_XATTR.into(), b"y".to_vec())),
        }
    }
}

struct Fixture {
    fs: MemFs,
    meta: Tree,
    snap: Tree,
    diffs: [String; 2],
    chains: [String; 2],
    index: String,
    manifest: String,
    config: String,
}

const MULTI: &str = "127.0.0.1:5000/fp/multi:1";

impl Fixture {
    fn new(base: Vec<Ent>, top: Vec<Ent>) -> Fixture {
        let mut fs = MemFs::default();
        let blob = |fs: &mut MemFs, data: &[u8]| -> String {
            let d = sha(data);
            fs.file(&blob_at(&d), data);
            d
        };
        let tars = [layer_tar(&base), layer_tar(&top)];
        let diffs = [sha(&tars[0]), sha(&tars[1])];
        let chains: [String; 2] = chain_ids(&diffs).try_into().unwrap();
        let l1 = blob(&mut fs, &gzip(&tars[0]));
        let l2 = blob(&mut fs, &zstd::encode_all(&tars[1][..], 1).unwrap());
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diffs},
        }))
        .unwrap();
        let config = blob(&mut fs, &config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": {"digest": config, "size": 1},
            "layers": [{"digest": l1}, {"digest": l2}],
        }))
        .unwrap();
        let manifest = blob(&mut fs, &manifest);
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"digest": manifest}, {"digest": sha(b"arm64, not pulled")}],
        }))
        .unwrap();
        let index = blob(&mut fs, &index);
        // moby: one layer, no CRI labels, its own snapshot.
        let mconfig = serde_json::to_vec(&serde_json::json!({
            "rootfs": {"type": "layers", "diff_ids": [diffs[0]]},
        }))
        .unwrap();
        let mconfig = blob(&mut fs, &mconfig);
        let mmanifest = serde_json::to_vec(&serde_json::json!({
            "config": {"digest": mconfig}, "layers": [{"digest": l1}],
        }))
        .unwrap();
        let mmanifest = blob(&mut fs, &mmanifest);

        let mut meta = Tree::default();
        let k8s: &[u8] = b"k8s.io";
        for name in [
            MULTI.to_string(),
            format!("127.0.0.1:5000/fp/multi@{index}"),
            config.clone(),
        ] {
            let img: &[&[u8]] = &[b"v1", k8s, b"images", name.as_bytes()];
            meta.set(&[img, &[b"target"]].concat(), b"digest", index.as_bytes());
            meta.set(
                &[img, &[b"target"]].concat(),
                b"mediatype",
                b"application/vnd.oci.image.index.v1+json",
            );
            meta.set(
                &[img, &[b"labels"]].concat(),
                MANAGED.0.as_bytes(),
                b"managed",
            );
            meta.set(
                &[img, &[b"labels"]].concat(),
                PINNED.0.as_bytes(),
                b"pinned",
            );
        }
        let labels = |meta: &mut Tree, ns: &[u8], d: &str, kv: &[(String, String)]| {
            let path: &[&[u8]] = &[b"v1", ns, b"content", b"blob", d.as_bytes(), b"labels"];
            meta.bucket(path);
            for (k, v) in kv {
                meta.set(path, k.as_bytes(), v.as_bytes());
            }
        };
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        labels(
            &mut meta,
            k8s,
            &index,
            &[kv("containerd.io/gc.ref.content.m.0", &manifest)],
        );
        labels(
            &mut meta,
            k8s,
            &manifest,
            &[
                kv("containerd.io/gc.ref.content.config", &config),
                kv("containerd.io/gc.ref.content.l.0", &l1),
                kv("containerd.io/gc.ref.content.l.1", &l2),
            ],
        );
        labels(&mut meta, k8s, &config, &[kv(GC_SNAPSHOT, &chains[1])]);
        labels(&mut meta, k8s, &l1, &[kv(UNCOMPRESSED, &diffs[0])]);
        labels(&mut meta, k8s, &l2, &[kv(UNCOMPRESSED, &diffs[1])]);
        let snaps: &[&[u8]] = &[b"v1", k8s, b"snapshots", b"overlayfs"];
        let key0 = format!("k8s.io/1/{}", chains[0]);
        let key1 = format!("k8s.io/2/{}", chains[1]);
        meta.set(
            &[snaps, &[chains[0].as_bytes()]].concat(),
            b"name",
            key0.as_bytes(),
        );
        meta.set(
            &[snaps, &[chains[1].as_bytes()]].concat(),
            b"name",
            key1.as_bytes(),
        );
        meta.set(
            &[snaps, &[chains[1].as_bytes()]].concat(),
            b"parent",
            chains[0].as_bytes(),
        );
        // moby
        let moby: &[u8] = b"moby";
        let img: &[&[u8]] = &[b"v1", moby, b"images", b"docker.io/library/one:1"];
        meta.set(
            &[img, &[b"target"]].concat(),
            b"digest",
            mmanifest.as_bytes(),
        );
        labels(
            &mut meta,
            moby,
            &mmanifest,
            &[
                kv("containerd.io/gc.ref.content.config", &mconfig),
                kv("containerd.io/gc.ref.content.l.0", &l1),
            ],
        );
        labels(&mut meta, moby, &mconfig, &[kv(GC_SNAPSHOT, &chains[0])]);
        labels(&mut meta, moby, &l1, &[]);
        let key3 = format!("moby/3/{}", chains[0]);
        meta.set(
            &[
                b"v1",
                moby,
                b"snapshots",
                b"overlayfs",
                chains[0].as_bytes(),
            ],
            b"name",
            key3.as_bytes(),
        );

        let mut snap = Tree::default();
        for (key, id, parent) in [
            (&key0, 1u8, None),
            (&key1, 2, Some(&key0)),
            (&key3, 3, None),
        ] {
            let b: &[&[u8]] = &[b"v1", b"snapshots", key.as_bytes()];
            snap.set(b, b"id", &[id]);
            snap.set(b, b"kind", &[COMMITTED]);
            if let Some(p) = parent {
                snap.set(b, b"parent", p.as_bytes());
            }
        }
        let s = format!("{R}/{}", layout::SNAPSHOTS);
        unpack(&mut fs, &format!("{s}/1/fs"), &base);
        unpack(&mut fs, &format!("{s}/2/fs"), &top);
        unpack(&mut fs, &format!("{s}/3/fs"), &base);
        let mut f = Fixture {
            fs,
            meta,
            snap,
            diffs,
            chains,
            index,
            manifest,
            config,
        };
        f.write_dbs();
        f
    }

    fn write_dbs(&mut self) {
        self.fs
            .file(&format!("{R}/{}", layout::META), &build(&self.meta));
        self.fs.file(
            &format!("{R}/{}", layout::SNAPSHOTTER_META),
            &build(&self.snap),
        );
    }

    fn snap(&self, id: u32, rel: &str) -> String {
        format!("{R}/{}/{id}/fs/{rel}", layout::SNAPSHOTS)
    }

    fn verify(&self) -> Report {
        let mut seen = 0;
        let r = verify(&self.fs, &mut |n| seen += n).unwrap();
        assert_eq!(seen, r.bytes_hashed, "progress adds up to bytes_hashed");
        assert_eq!(
            total(&self.fs).unwrap(),
            r.bytes_hashed,
            "every blob read once"
        );
        r
    }

    /// Where the blob of layer `i` of the image's manifest is.
    fn layer_blob(&mut self, i: usize) -> String {
        let manifest = self.fs.node(&blob_at(&self.manifest)).data.clone();
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        blob_at(m["layers"][i]["digest"].as_str().unwrap())
    }

    /// Asserts verify reports exactly one failure, at `path`, whose problem
    /// contains `says`.
    fn only(&self, path: &str, says: &str) -> Failure {
        let f = crate::store::verify_common::only_failure(&self.verify(), path);
        assert!(f.problem.contains(says), "{f}");
        f
    }
}

fn fixture() -> Fixture {
    Fixture::new(base_layer(), top_layer())
}

fn multi(f: &Failure) -> bool {
    f.image.as_deref() == Some(&format!("{MULTI} (namespace k8s.io)")[..])
}

/// The bucket of the labels of blob `digest` in namespace k8s.io.
fn blob_labels(digest: &str) -> [&[u8]; 6] {
    [
        b"v1",
        b"k8s.io",
        b"content",
        b"blob",
        digest.as_bytes(),
        b"labels",
    ]
}

/// Where blob `digest` (`sha256:...`) is in ROOT.
fn blob_at(digest: &str) -> String {
    format!("{R}/{}/{}", layout::BLOBS, &digest[7..])
}

#[test]
fn a_good_store_passes_and_reads_every_blob_once() {
    let f = fixture();
    let r = f.verify();
    assert!(r.failures.is_empty(), "{:#?}", r.failures);
    assert_eq!((r.images, r.layers), (4, 3));
}

#[test]
fn names_a_changed_byte_in_a_snapshot_file() {
    let mut f = fixture();
    let path = f.snap(2, "big");
    f.fs.node(&path).data[200_000] ^= 1;
    let fail = f.only(&path, "its content differs from the layer's");
    assert!(multi(&fail), "{fail}");
    assert_eq!(fail.layer.as_deref(), Some(f.diffs[1].as_str()));
}

#[test]
fn names_a_removed_or_changed_binary_xattr() {
    let mut f = fixture();
    let path = f.snap(1, "bin/ping");
    f.fs.node(&path).xattrs.clear();
    f.only(
        &path,
        "lacks the xattr security.capability, which the layer sets",
    );

    let mut f = fixture();
    f.fs.node(&path).xattrs[0].1[5] = 0x21;
    let fail = f.only(&path, "its xattr security.capability is");
    assert!(fail.problem.contains(r#"\n!"#), "{fail}");
    assert!(fail.problem.contains(r#"\n "#), "{fail}");
}

#[test]
fn names_a_removed_opaque_xattr_and_a_broken_whiteout() {
    let mut f = fixture();
    let path = f.snap(2, "data/a");
    f.fs.node(&path).xattrs.clear();
    f.only(&path, &format!("lacks {OPAQUE_XATTR}=y"));

    let mut f = fixture();
    let path = f.snap(2, "etc/hello");
    f.fs.file(&path, b"");
    f.only(&path, "not a 0:0 character device");

    let mut f = fixture();
    f.fs.remove(&path);
    f.only(&path, "its whiteout (a 0:0 character device) is missing");
}

#[test]
fn names_owner_mode_and_newline_names() {
    let mut f = fixture();
    let path = f.snap(1, "data/we\nird name");
    f.fs.node(&path).stat.uid = 0;
    let fail = f.only(&path, "is owned by 0:1000, the layer has 1000:1000");
    assert_eq!(fail.layer.as_deref(), Some(f.diffs[0].as_str()));

    let mut f = fixture();
    let path = f.snap(3, "data");
    f.fs.node(&path).stat.mode = 0o755;
    let fail = f.only(&path, "has mode 0755, the layer has 0750");
    assert_eq!(
        fail.image.as_deref(),
        Some("docker.io/library/one:1 (namespace moby)")
    );
}

#[test]
fn names_extra_missing_and_retyped_files() {
    let mut f = fixture();
    let path = f.snap(1, "etc/extra");
    f.fs.file(&path, b"not in the layer");
    f.only(&path, "is in the snapshot but not in the layer");

    let mut f = fixture();
    let path = f.snap(1, "data/a");
    f.fs.remove(&path);
    // The directory, not each file in it.
    f.only(&path, "is in the layer but missing from the snapshot");

    let mut f = fixture();
    let path = f.snap(1, "bin/sh");
    f.fs.node(&path).data = b"/bin/busybox".to_vec();
    f.only(
        &path,
        "points at /bin/busybox, the layer's symlink at busybox",
    );

    let mut f = fixture();
    let path = f.snap(1, "etc/hello2");
    f.fs.file(&path, b"hello\n");
    f.only(&path, "hard link to");

    // A hard link's mode is the inode's, not its target entry's.
    let mut f = fixture();
    let path = f.snap(1, "etc/hello");
    f.fs.node(&path).stat.mode = 0o644;
    f.only(&path, "has mode 0644, the layer has 0000");

    let mut f = fixture();
    let path = f.snap(1, "dev/null");
    f.fs.node(&path).stat.rdev = (1, 5);
    f.only(&path, "is device 1:5, the layer's is 1:3");
}

#[test]
fn names_a_changed_layer_blob() {
    let mut f = fixture();
    let path = f.layer_blob(1);
    let longer = [&f.fs.node(&path).data[..], b"\0"].concat();
    f.fs.file(&path, &longer);
    let r = f.verify();
    assert!(!r.failures.is_empty());
    assert_eq!(
        r.failures[0].path.as_deref(),
        Some(path.as_str()),
        "{:#?}",
        r.failures
    );
    assert!(
        r.failures[0].problem.contains("not to its name"),
        "{:#?}",
        r.failures
    );
}

#[test]
fn cri_labels_are_required_in_k8s_io_only() {
    let mut f = fixture();
    f.meta.remove(
        &[b"v1", b"k8s.io", b"images", MULTI.as_bytes(), b"labels"],
        MANAGED.0.as_bytes(),
    );
    f.write_dbs();
    let fail = f.only(
        &format!("{R}/{}", layout::META),
        "lacks the label io.cri-containerd.image=managed",
    );
    assert!(multi(&fail), "{fail}");

    let mut f = fixture();
    f.meta.set(
        &[
            b"v1",
            b"moby",
            b"images",
            b"docker.io/library/one:1",
            b"labels",
        ],
        PINNED.0.as_bytes(),
        b"yes",
    );
    f.write_dbs();
    f.only(
        &format!("{R}/{}", layout::META),
        "io.cri-containerd.pinned=\"yes\", not pinned",
    );
}

#[test]
fn names_missing_gc_labels() {
    let mut f = fixture();
    let m = f.manifest.clone();
    f.meta
        .remove(&blob_labels(&m), b"containerd.io/gc.ref.content.l.1");
    f.write_dbs();
    f.only(&blob_at(&m), "containerd.io/gc.ref.content.l.1=(none)");

    let mut f = fixture();
    let i = f.index.clone();
    f.meta.set(
        &blob_labels(&i),
        b"containerd.io/gc.ref.content.m.0",
        sha(b"other").as_bytes(),
    );
    f.write_dbs();
    f.only(&blob_at(&i), "its manifest 0 is");

    let mut f = fixture();
    let c = f.config.clone();
    f.meta.set(
        &blob_labels(&c),
        GC_SNAPSHOT.as_bytes(),
        f.chains[0].clone().as_bytes(),
    );
    f.write_dbs();
    f.only(&blob_at(&c), "its top layer's chain ID is");
}

#[test]
fn names_a_broken_snapshot_chain() {
    // The namespace lost the top snapshot.
    let mut f = fixture();
    let c1 = f.chains[1].clone();
    f.meta.remove(
        &[b"v1", b"k8s.io", b"snapshots", b"overlayfs"],
        c1.as_bytes(),
    );
    f.write_dbs();
    let fail = f.only(
        &format!("{R}/{}", layout::META),
        "layer 2/2 is not unpacked",
    );
    assert_eq!(fail.layer.as_deref(), Some(f.diffs[1].as_str()));

    // The snapshotter's parent is another snapshot.
    let mut f = fixture();
    let key1 = format!("k8s.io/2/{c1}");
    f.snap.set(
        &[b"v1", b"snapshots", key1.as_bytes()],
        b"parent",
        b"moby/3/x",
    );
    f.write_dbs();
    f.only(
        &format!("{R}/{}", layout::SNAPSHOTTER_META),
        "has parent moby/3/x",
    );

    // The snapshot's directory is gone.
    let mut f = fixture();
    let dir = format!("{R}/{}/2", layout::SNAPSHOTS);
    f.fs.remove(&dir);
    f.only(&format!("{dir}/fs"), "the directory of snapshot");
}

#[test]
fn inspect_lists_pinned_and_unpacked() {
    let mut f = fixture();
    let show = |f: &Fixture| -> Vec<(String, String, bool, bool)> {
        let s = super::super::inspect::store(&f.fs).unwrap().unwrap();
        s.namespaces
            .iter()
            .flat_map(|n| {
                n.images
                    .iter()
                    .map(|i| (n.name.clone(), i.name.clone(), i.pinned, i.unpacked))
            })
            .collect()
    };
    let got = show(&f);
    assert_eq!(got.len(), 4);
    assert!(
        got.iter().filter(|i| i.0 == "k8s.io").all(|i| i.2 && i.3),
        "{got:?}"
    );
    assert_eq!(
        got.iter().find(|i| i.0 == "moby").unwrap(),
        &("moby".into(), "docker.io/library/one:1".into(), false, true)
    );
    let c1 = f.chains[1].clone();
    f.meta.remove(
        &[b"v1", b"k8s.io", b"snapshots", b"overlayfs"],
        c1.as_bytes(),
    );
    f.write_dbs();
    assert!(show(&f).iter().filter(|i| i.0 == "k8s.io").all(|i| !i.3));
}

/// The store on disk, read through `HostDir` (as the build container's
/// helpers read it): passes, then names a changed byte and a removed file.
#[test]
fn verify_host_dir_store() {
    let base = vec![
        Ent::Dir(b"etc", 0o755, ME),
        Ent::File(b"etc/hello", b"hello\n".to_vec(), 0o644, ME, vec![]),
        // The runner's and readable, not root's and mode 0 as Docker leaves
        // a link (base_layer has that): only root can read a mode-0 file,
        // or give one to root, and this test runs as anyone.
        Ent::Hard(b"etc/hello2", b"etc/hello", 0o644, ME),
        Ent::File(b"etc/we\nird", b"x".to_vec(), 0o600, ME, vec![]),
    ];
    let top = vec![Ent::File(b"top", vec![7u8; 100_000], 0o640, ME, vec![])];
    let f = Fixture::new(base, top);
    let tmp = tempfile::tempdir().unwrap();
    f.fs.materialize(tmp.path());
    let host = crate::fsread::HostDir(tmp.path().to_path_buf());
    let r = verify(&host, &mut |_| {}).unwrap();
    assert!(r.failures.is_empty(), "{:#?}", r.failures);
    assert_eq!(r.bytes_hashed, total(&host).unwrap());

    let rel = f.snap(2, "top");
    let p = tmp.path().join(&rel[1..]);
    let mut data = std::fs::read(&p).unwrap();
    data[99_999] ^= 1;
    std::fs::write(&p, data).unwrap();
    let rel2 = f.snap(1, "etc/we\nird");
    std::fs::remove_file(tmp.path().join(&rel2[1..])).unwrap();
    let r = verify(&host, &mut |_| {}).unwrap();
    let got: Vec<(String, String)> = r
        .failures
        .iter()
        .map(|x| (x.path.clone().unwrap(), x.problem.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                rel2,
                "is in the layer but missing from the snapshot".to_string()
            ),
            (rel, "its content differs from the layer's".to_string()),
        ]
    );
}

#[test]
fn names_a_truncated_layer_blob_without_hanging() {
    let mut f = fixture();
    let path = f.layer_blob(1);
    let half = f.fs.node(&path).data.len() / 2;
    let cut = f.fs.node(&path).data[..half].to_vec();
    f.fs.file(&path, &cut);
    let r = f.verify();
    let problems: Vec<&str> = r
        .failures
        .iter()
        .filter(|x| x.path.as_deref() == Some(path.as_str()))
        .map(|x| x.problem.as_str())
        .collect();
    assert_eq!(problems.len(), 2, "{:#?}", r.failures);
    assert!(problems[0].contains("not to its name"), "{problems:?}");
    assert!(
        problems[1].contains("not a readable (compressed) tar"),
        "{problems:?}"
    );
}

/// The real store of tests/fixtures/containerd-store.tar.gz (see its
/// .gen.sh) in memory, with owners, devices and xattrs.
fn real_store() -> MemFs {
    use std::io::Read;
    const GZ: &[u8] = include_bytes!("../../../../tests/fixtures/containerd-store.tar.gz");
    let mut tar = vec![];
    flate2::read::GzDecoder::new(GZ)
        .read_to_end(&mut tar)
        .unwrap();
    let mut fs = MemFs::default();
    let mut ar = crate::tar::Archive::new(&tar[..]);
    while let Some(mut e) = ar.next_entry().unwrap() {
        let rel = crate::store::verify_common::clean(&e.meta.path).unwrap();
        let path = [R.as_bytes(), b"/", &rel].concat();
        let path = if rel.is_empty() {
            R.as_bytes().to_vec()
        } else {
            path
        };
        let m = e.meta.clone();
        let (kind, rdev) = match m.kind {
            crate::tar::EntryType::Directory => (Kind::Dir, (0, 0)),
            crate::tar::EntryType::Regular => (Kind::File, (0, 0)),
            crate::tar::EntryType::Char => (Kind::CharDev, m.dev),
            k => panic!("no {k:?} in the fixture"),
        };
        let mut data = vec![];
        e.data.read_to_end(&mut data).unwrap();
        fs.put_bytes(&path, kind, &data, rdev);
        let n = fs.node_bytes(&path);
        n.stat.mode = m.mode & 0o7777;
        (n.stat.uid, n.stat.gid) = (m.uid as u32, m.gid as u32);
        n.xattrs = m
            .xattrs
            .iter()
            .map(|(k, v)| (String::from_utf8(k.clone()).unwrap(), v.clone()))
            .collect();
    }
    fs
}

#[test]
fn a_real_store_passes_but_for_what_the_fixture_leaves_out() {
    let fs = real_store();
    let r = verify(&fs, &mut |_| {}).unwrap();
    assert_eq!((r.images, r.layers), (12, 3), "{:#?}", r.failures);
    let got: Vec<(String, String)> = r
        .failures
        .iter()
        .map(|f| (f.image.clone().unwrap(), f.path.clone().unwrap()))
        .collect();
    let s = format!("{R}/{}", layout::SNAPSHOTS);
    assert_eq!(
        got,
        [
            (
                "127.0.0.1:5000/fp/layers:1 (namespace k8s.io)".to_string(),
                format!("{s}/1/fs")
            ),
            (
                "127.0.0.1:5000/fp/test:1 (namespace k8s.io)".to_string(),
                format!("{s}/2/fs")
            ),
        ],
        "{:#?}",
        r.failures
    );
    assert!(r.failures.iter().all(|f| f.problem.contains("is missing")));
    // Every record is pinned and unpacked.
    let inv = super::super::inspect::store(&fs).unwrap().unwrap();
    let images: Vec<_> = inv.namespaces.iter().flat_map(|n| &n.images).collect();
    assert_eq!(images.len(), 12);
    assert!(images.iter().all(|i| i.pinned && i.unpacked));
}

#[test]
fn a_real_store_names_a_lost_opaque_xattr_and_whiteout() {
    let mut fs = real_store();
    let s = format!("{R}/{}/5/fs", layout::SNAPSHOTS);
    fs.node(&format!("{s}/data/a")).xattrs.clear();
    fs.node(&format!("{s}/data/b/gone")).stat.rdev = (1, 3);
    let r = verify(&fs, &mut |_| {}).unwrap();
    assert_eq!(r.failures.len(), 4, "{:#?}", r.failures);
    let lines: Vec<String> = r
        .failures
        .iter()
        .filter(|f| f.path.as_deref().is_some_and(|p| p.starts_with(&s)))
        .map(|f| f.to_string())
        .collect();
    let layer = "sha256:493982fb23ef5f599c2072120fec8ea1f4ab9600d73a4328da60d4f4c58ef823";
    assert_eq!(
        lines,
        [
            format!("image 127.0.0.1:5000/fp/layers:1 (namespace k8s.io), layer {layer}, path {s}/data/b/gone: the layer deletes this path (a .wh. entry) but it is character device 1:3, not 0:0"),
            format!("image 127.0.0.1:5000/fp/layers:1 (namespace k8s.io), layer {layer}, path {s}/data/a: the layer makes this directory opaque (.wh..wh..opq) but it lacks trusted.overlay.opaque=y"),
        ]
    );
}
