//! A Docker store in memory (two images sharing a base layer, with
//! whiteouts, an opaque directory, a hard link and a long name) and on
//! disk, and what `verify` says of it and of its damage.

use std::io::Write;

use super::*;

const ROOT: &str = "/var/lib/docker";

use crate::store::docker::tarsplit;
use crate::store::verify_common::memfs::MemFs;
use crate::store::verify_common::OPAQUE_XATTR;

/// What a layer's tar holds.
enum Ent {
    Dir(&'static str),
    File(&'static str, Vec<u8>),
    HardLink(&'static str, &'static str),
    /// `dir/.wh.name`: deletes dir/name.
    Whiteout(&'static str),
    /// `dir/.wh..wh..opq`.
    Opaque(&'static str),
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

fn layer_tar(ents: &[Ent]) -> Vec<u8> {
    let mut b = tar::Builder::new(vec![]);
    let mut add = |kind: tar::EntryType, name: &str, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            b.append_link(&mut h, name, l).unwrap();
        } else {
            b.append_data(&mut h, name, data).unwrap();
        }
    };
    for e in ents {
        match e {
            Ent::Dir(d) => add(tar::EntryType::Directory, d, b"", None),
            Ent::File(p, data) => add(tar::EntryType::Regular, p, data, None),
            Ent::HardLink(p, to) => add(tar::EntryType::Link, p, b"", Some(to)),
            Ent::Whiteout(p) => add(tar::EntryType::Regular, p, b"", None),
            Ent::Opaque(d) => add(
                tar::EntryType::Regular,
                &format!("{d}/.wh..wh..opq"),
                b"",
                None,
            ),
        }
    }
    b.into_inner().unwrap()
}

/// tar-split.json.gz of a tar stream, as Docker's layer store writes it.
fn tar_split(tar: &[u8]) -> Vec<u8> {
    let mut gz = tarsplit::gzip_writer(vec![]);
    gz.write_all(&tarsplit::encode_tar(tar).unwrap()).unwrap();
    gz.finish().unwrap()
}

struct FixLayer {
    diff_id: String,
    chain: String,
    cache: String,
    link: String,
}

struct Fixture {
    fs: MemFs,
    /// Image IDs (sha256:...), A then B.
    images: [String; 2],
    /// L1 (shared base), L2 (A's top), L3 (B's top).
    layers: [FixLayer; 3],
    file_bytes: u64,
}

impl Fixture {
    fn diff(&self, layer: usize, rel: &str) -> String {
        format!("{ROOT}/overlay2/{}/diff/{rel}", self.layers[layer].cache)
    }
    fn ldb(&self, layer: usize, file: &str) -> String {
        format!(
            "{ROOT}/{LAYERDB}/{}/{file}",
            self.layers[layer].chain.trim_start_matches("sha256:")
        )
    }
    fn config(&self, image: usize) -> String {
        format!(
            "{ROOT}/{IMAGEDB}/{}",
            self.images[image].trim_start_matches("sha256:")
        )
    }
    /// The image whose failures name the shared base layer.
    fn first_image(&self) -> String {
        self.images.iter().min().unwrap().clone()
    }
    fn verify(&self) -> Report {
        let opts = Options {
            root: ROOT.as_bytes().to_vec(),
        };
        let mut seen = 0;
        let r = verify(&self.fs, &opts, &mut |n| seen += n).unwrap();
        assert_eq!(seen, r.bytes_hashed, "progress adds up to bytes_hashed");
        r
    }
    /// Asserts that verify reports exactly this one failure.
    fn only(&self, image: Option<&str>, layer: Option<usize>, path: &str) -> Failure {
        let f = crate::store::verify_common::only_failure(&self.verify(), path);
        assert_eq!(f.image.as_deref(), image, "{f:?}");
        assert_eq!(
            f.layer,
            layer.map(|l| self.layers[l].diff_id.clone()),
            "{f:?}"
        );
        f
    }
}

/// Two images sharing a base layer, as Docker 28's overlay2 driver
/// leaves them after a pull.
fn fixture() -> Fixture {
    fixture_of(layers_with_whiteouts())
}

fn layers_with_whiteouts() -> [Vec<Ent>; 3] {
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let l1 = vec![
        Ent::Dir("etc"),
        Ent::File("etc/hello", b"hello\n".to_vec()),
        Ent::HardLink("etc/hello2", "etc/hello"),
        Ent::Dir("data"),
        Ent::Dir("data/a"),
        Ent::File("data/a/file1", b"one".to_vec()),
    ];
    let l2 = vec![
        Ent::Dir("data"),
        Ent::Dir("data/a"),
        Ent::Opaque("data/a"),
        Ent::File("data/a/new", b"new".to_vec()),
        Ent::Dir("etc"),
        Ent::Whiteout("etc/.wh.hello"),
        Ent::Dir("bin"),
        Ent::File("bin/big", big),
        Ent::File(
            "usr/share/a-rather-long-directory-name-to-need-a-gnu-long-name/and-a-long-file-name.txt",
            b"long".to_vec(),
        ),
    ];
    let l3 = vec![Ent::Dir("./"), Ent::File("./x", b"x content".to_vec())];
    [l1, l2, l3]
}

fn fixture_of(specs: [Vec<Ent>; 3]) -> Fixture {
    let tars: Vec<Vec<u8>> = specs.iter().map(|s| layer_tar(s)).collect();
    let diffs: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let chains_a = chain_ids(&[diffs[0].clone(), diffs[1].clone()]);
    let chains_b = chain_ids(&[diffs[0].clone(), diffs[2].clone()]);
    let chains = [&chains_a[0], &chains_a[1], &chains_b[1]];
    let mut fs = MemFs::default();
    let mut layers: Vec<FixLayer> = vec![];
    let mut file_bytes = 0;
    for (i, spec) in specs.iter().enumerate() {
        let chain = chains[i].clone();
        let chex = chain.trim_start_matches("sha256:");
        let cache = sha256_hex(format!("cache {chain}").as_bytes());
        let link: String = chex[..26].to_ascii_uppercase();
        let ldb = format!("{ROOT}/{LAYERDB}/{chex}");
        let size: u64 = spec
            .iter()
            .map(|e| match e {
                Ent::File(_, d) => d.len() as u64,
                _ => 0,
            })
            .sum();
        file_bytes += size;
        fs.file(&format!("{ldb}/diff"), diffs[i].as_bytes());
        fs.file(&format!("{ldb}/size"), size.to_string().as_bytes());
        fs.file(&format!("{ldb}/cache-id"), cache.as_bytes());
        fs.file(&format!("{ldb}/tar-split.json.gz"), &tar_split(&tars[i]));
        if i > 0 {
            fs.file(&format!("{ldb}/parent"), chains_a[0].as_bytes());
        }
        let dir = format!("{ROOT}/overlay2/{cache}");
        fs.file(&format!("{dir}/link"), link.as_bytes());
        fs.dir(&format!("{dir}/diff"));
        if i > 0 {
            fs.file(
                &format!("{dir}/lower"),
                format!("l/{}", layers[0].link).as_bytes(),
            );
            fs.dir(&format!("{dir}/work"));
        }
        fs.put(
            &format!("{ROOT}/overlay2/l/{link}"),
            Kind::Symlink,
            format!("../{cache}/diff").as_bytes(),
            (0, 0),
        );
        let diff = |rel: &str| {
            format!(
                "{dir}/diff/{}",
                rel.trim_start_matches("./").trim_end_matches('/')
            )
        };
        for e in spec {
            match e {
                Ent::Dir(d) => fs.dir(diff(d).trim_end_matches('/')),
                Ent::File(p, data) => fs.file(&diff(p), data),
                Ent::HardLink(p, to) => {
                    let data = fs.node(&diff(to)).data.clone();
                    fs.file(&diff(p), &data);
                }
                Ent::Whiteout(p) => {
                    let (d, name) = p.rsplit_once('/').unwrap();
                    let name = name.strip_prefix(".wh.").unwrap();
                    fs.put(&diff(&format!("{d}/{name}")), Kind::CharDev, b"", (0, 0));
                }
                Ent::Opaque(d) => {
                    fs.dir(&diff(d));
                    fs.node(&diff(d))
                        .xattrs
                        .push((OPAQUE_XATTR.into(), b"y".to_vec()));
                }
            }
        }
        layers.push(FixLayer {
            diff_id: diffs[i].clone(),
            chain,
            cache,
            link,
        });
    }
    let mut images = vec![];
    for (name, d) in [("a", [&diffs[0], &diffs[1]]), ("b", [&diffs[0], &diffs[2]])] {
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2026-11-01T00:00:00Z",
            "config": {"Cmd": [format!("/bin/{name}")]},
            "rootfs": {"type": "layers", "diff_ids": d},
        }))
        .unwrap();
        let id = sha(&config);
        fs.file(
            &format!("{ROOT}/{IMAGEDB}/{}", id.trim_start_matches("sha256:")),
            &config,
        );
        images.push(id);
    }
    let repos = serde_json::json!({"Repositories": {
        "a": {"a:latest": images[0]},
        "b": {"b:1": images[1], format!("b@{}", sha(b"manifest")): images[1]},
    }});
    fs.file(
        &format!("{ROOT}/{REPOSITORIES}"),
        &serde_json::to_vec(&repos).unwrap(),
    );
    Fixture {
        fs,
        images: images.try_into().unwrap(),
        layers: layers.try_into().unwrap_or_else(|_| unreachable!()),
        file_bytes,
    }
}

fn random_bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A store of `l1` and two small layers on it, materialized in a
/// directory (kept while the second is).
fn on_disk(l1: Vec<Ent>) -> (Fixture, tempfile::TempDir) {
    let l2 = vec![
        Ent::Dir("etc"),
        Ent::File("etc/os-release", b"ID=test\n".to_vec()),
    ];
    let l3 = vec![Ent::Dir("./"), Ent::File("./x", b"x content".to_vec())];
    let f = fixture_of([l1, l2, l3]);
    let tmp = tempfile::tempdir().unwrap();
    f.fs.materialize(tmp.path());
    (f, tmp)
}

/// A store on disk read through `HostDir`: passes, then names a changed
/// byte. With FP_VERIFY_BENCH_MIB=N the base layer holds N MiB and the
/// test prints verify's throughput next to `sha256sum` of the same files.
#[test]
fn verify_host_dir_store() {
    let mib: usize = std::env::var("FP_VERIFY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let files = 8;
    let names: Vec<&'static str> = (0..files)
        .map(|i| &*Box::leak(format!("big/f{i}").into_boxed_str()))
        .collect();
    let mut l1 = vec![Ent::Dir("big")];
    for (i, n) in names.iter().enumerate() {
        l1.push(Ent::File(
            n,
            random_bytes(mib * 1024 * 1024 / files, i as u32),
        ));
    }
    let (f, tmp) = on_disk(l1);
    let host = crate::fsread::HostDir(tmp.path().to_path_buf());
    let opts = Options {
        root: ROOT.as_bytes().to_vec(),
    };
    let t = std::time::Instant::now();
    let r = verify(&host, &opts, &mut |_| {}).unwrap();
    let took = t.elapsed().as_secs_f64();
    assert!(r.failures.is_empty(), "{:#?}", r.failures);
    assert_eq!(r.bytes_hashed, f.file_bytes);
    if std::env::var_os("FP_VERIFY_BENCH_MIB").is_some() {
        let diff = tmp.path().join(format!(
            "var/lib/docker/overlay2/{}/diff/big",
            f.layers[0].cache
        ));
        let t = std::time::Instant::now();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("sha256sum * >/dev/null")
            .current_dir(&diff)
            .status()
            .unwrap();
        assert!(out.success());
        let sum = t.elapsed().as_secs_f64();
        let mb = r.bytes_hashed as f64 / 1e6;
        println!(
            "verify: {mb:.0} MB in {took:.3} s = {:.0} MB/s; sha256sum: {:.3} s = {:.0} MB/s; ratio {:.2}",
            mb / took,
            sum,
            mb / sum,
            sum / took
        );
    }
    // The same store with one byte changed names the file.
    let path = tmp.path().join(format!(
        "var/lib/docker/overlay2/{}/diff/big/f3",
        f.layers[0].cache
    ));
    let mut data = std::fs::read(&path).unwrap();
    data[7] ^= 0x80;
    std::fs::write(&path, data).unwrap();
    let r = verify(&host, &opts, &mut |_| {}).unwrap();
    assert_eq!(r.failures.len(), 1, "{:#?}", r.failures);
    assert_eq!(
        r.failures[0].path.as_deref(),
        Some(f.diff(0, "big/f3").as_str())
    );
    assert_eq!(
        r.failures[0].layer.as_deref(),
        Some(f.layers[0].diff_id.as_str())
    );
    assert_eq!(
        r.failures[0].image.as_deref(),
        Some(f.first_image().as_str())
    );
}

#[test]
fn verify_good_store_passes() {
    let f = fixture();
    let r = f.verify();
    assert!(r.failures.is_empty(), "{:#?}", r.failures);
    assert_eq!((r.images, r.layers), (2, 3));
    assert_eq!(r.bytes_hashed, f.file_bytes);
    let opts = Options {
        root: ROOT.as_bytes().to_vec(),
    };
    assert_eq!(total_bytes(&f.fs, &opts).unwrap(), f.file_bytes);
}

#[test]
fn verify_names_a_changed_byte() {
    let mut f = fixture();
    let path = f.diff(1, "bin/big");
    f.fs.node(&path).data[1_000_000] ^= 1;
    let fail = f.only(Some(&f.images[0]), Some(1), &path);
    assert!(fail.problem.contains("differs"), "{fail:?}");
}

#[test]
fn verify_names_a_removed_opaque_xattr() {
    let mut f = fixture();
    let path = f.diff(1, "data/a");
    f.fs.node(&path).xattrs.clear();
    let fail = f.only(Some(&f.images[0]), Some(1), &path);
    assert!(fail.problem.contains(OPAQUE_XATTR), "{fail:?}");
}

#[test]
fn verify_names_an_opaque_xattr_the_layer_lacks() {
    let mut f = fixture();
    let path = f.diff(0, "etc");
    f.fs.node(&path)
        .xattrs
        .push((OPAQUE_XATTR.into(), b"y".to_vec()));
    f.only(Some(&f.first_image()), Some(0), &path);
}

#[test]
fn verify_names_a_deleted_l_symlink() {
    let mut f = fixture();
    let path = format!("{ROOT}/overlay2/l/{}", f.layers[0].link);
    f.fs.remove(&path);
    f.only(Some(&f.first_image()), Some(0), &path);
}

#[test]
fn verify_names_a_truncated_tar_split() {
    let mut f = fixture();
    let path = f.ldb(2, "tar-split.json.gz");
    let node = f.fs.node(&path);
    let half = node.data.len() / 2;
    node.data.truncate(half);
    node.stat.size = half as u64;
    let fail = f.only(Some(&f.images[1]), Some(2), &path);
    assert!(fail.problem.contains("truncated"), "{fail:?}");
}

#[test]
fn verify_names_an_edited_image_config() {
    let mut f = fixture();
    let path = f.config(1);
    let node = f.fs.node(&path);
    let text = String::from_utf8(node.data.clone())
        .unwrap()
        .replace("2026-11-01", "2026-11-02");
    node.data = text.into_bytes();
    let fail = f.only(Some(&f.images[1]), None, &path);
    assert!(fail.problem.contains("image ID"), "{fail:?}");
}

#[test]
fn verify_names_a_tag_of_a_missing_image() {
    let mut f = fixture();
    let path = format!("{ROOT}/{REPOSITORIES}");
    let missing = sha(b"no such image");
    let repos = serde_json::json!({"Repositories": {
        "a": {"a:latest": f.images[0]},
        "b": {"b:1": f.images[1], "b:gone": missing},
    }});
    f.fs.node(&path).data = serde_json::to_vec(&repos).unwrap();
    let fail = f.only(Some(&missing), None, &path);
    assert!(fail.problem.contains("b:gone"), "{fail:?}");
}

#[test]
fn verify_names_a_missing_whiteout_and_file() {
    let mut f = fixture();
    let whiteout = f.diff(1, "etc/hello");
    f.fs.remove(&whiteout);
    f.only(Some(&f.images[0]), Some(1), &whiteout);

    let mut f = fixture();
    let path = f.diff(1, "data/a/new");
    f.fs.remove(&path);
    f.only(Some(&f.images[0]), Some(1), &path);
}

#[test]
fn verify_names_a_wrong_lower() {
    let mut f = fixture();
    let path = format!("{ROOT}/overlay2/{}/lower", f.layers[2].cache);
    f.fs.node(&path).data = b"l/NOTTHEPARENT".to_vec();
    f.only(Some(&f.images[1]), Some(2), &path);
}

#[test]
fn verify_errs_without_a_store() {
    let opts = Options {
        root: ROOT.as_bytes().to_vec(),
    };
    let err = verify(&MemFs::default(), &opts, &mut |_| {}).unwrap_err();
    assert!(
        format!("{err:#}").contains("no Docker overlay2 image store"),
        "{err:#}"
    );
}

/// The seed of the `docker-verify` fuzz target (tests/fuzz_parsers.rs):
/// a store of two images and three layers, as a tar of the tree below
/// `/`, with its tar-split metadata stored decompressed (the target
/// compresses a `*.json.gz` that is not gzip) so that mutations reach
/// the JSON.
#[test]
#[ignore = "writes tests/fuzz/docker-verify/corpus (FP_FUZZ_WRITE_SEEDS=1)"]
fn write_fuzz_seeds() {
    use std::io::Read;
    if std::env::var_os("FP_FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    let l1 = vec![
        Ent::Dir("etc"),
        Ent::File("etc/hello", b"hello\n".to_vec()),
        Ent::HardLink("etc/hello2", "etc/hello"),
    ];
    let (_, tmp) = on_disk(l1);
    let layerdb = tmp
        .path()
        .join("var/lib/docker/image/overlay2/layerdb/sha256");
    for e in std::fs::read_dir(layerdb).unwrap() {
        let ts = e.unwrap().path().join("tar-split.json.gz");
        let mut plain = vec![];
        flate2::read::GzDecoder::new(&std::fs::read(&ts).unwrap()[..])
            .read_to_end(&mut plain)
            .unwrap();
        std::fs::write(&ts, plain).unwrap();
    }
    let mut b = tar::Builder::new(vec![]);
    b.follow_symlinks(false);
    b.append_dir_all("var", tmp.path().join("var")).unwrap();
    let out =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/docker-verify/corpus");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("store.tar"), b.into_inner().unwrap()).unwrap();
}
