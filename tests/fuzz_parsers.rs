//! Fuzz targets for the parsers of untrusted bytes, on stable Rust, with
//! the engine of tests/common/fuzz.rs (shared with tests/fuzz_tar.rs).
//!
//! One #[test] per target; each starts from its seed corpus
//! `tests/fuzz/<target>/corpus/` (see tests/fuzz/README.md for how the
//! seeds are made: `FP_FUZZ_WRITE_SEEDS=1 cargo test --features test-hooks
//! --test fuzz_parsers write_seeds -- --ignored` rewrites the generated
//! ones), replays `tests/fuzz/<target>/regressions/` and mutates. Every
//! case must end without a panic, within 5 s, and without holding more
//! than 256 MiB at once (a counting global allocator below; past 1 GiB
//! the process stops at once, saying which case, rather than running the
//! machine out of memory).
//!
//! - `FP_FUZZ_PARSER_SECONDS` (default 11; 11 targets: about 2 minutes of
//!   CPU in all): how long each target runs.
//! - `FP_FUZZ_SEED`: the random seed (printed), to replay a run.
//! - A failing case is saved under `target/tmp/fuzz-failures/`.
#![cfg(feature = "test-hooks")]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::fuzz::{
    case_files, digits_collapsed, env_u64, error_outcome, fix_tar_checksums, havoc, run_limited,
    Campaign, Mutate, Rng,
};
use flatcar_preload::fuzzing;

/// A case holding more than this at once fails.
const MEM_CAP: isize = 256 << 20;
/// Past this the process stops (the case's input is saved first).
const MEM_ABORT: isize = 1 << 30;
const CASE_LIMIT: Duration = Duration::from_secs(5);

/// Counts the bytes the current case's thread holds (allocations of other
/// threads are not counted: each case runs in a thread of its own).
struct Counting;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static CURRENT: RefCell<Option<(String, Vec<u8>)>> = const { RefCell::new(None) };
}

fn count(delta: isize) {
    if !ACTIVE.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    let live = LIVE.with(|l| {
        l.set(l.get() + delta);
        l.get()
    });
    PEAK.with(|p| p.set(p.get().max(live)));
    if live > MEM_ABORT {
        ACTIVE.with(|a| a.set(false));
        let saved = CURRENT.with(|c| {
            c.borrow().as_ref().map(|(target, input)| {
                common::fuzz::save_failure(target, "bin", input, "allocated more than 1 GiB")
            })
        });
        let _ = writeln!(
            std::io::stderr(),
            "fuzz: a case allocated more than {} MiB: stopping; its input is {saved:?}",
            MEM_ABORT >> 20
        );
        std::process::abort();
    }
}

// SAFETY: every method counts and then forwards its arguments unchanged to
// `System`, so each caller's contract (a valid layout; a pointer that this
// allocator returned with that layout) is `System`'s, which upholds it.
// The one `unsafe` outside src/disk/ext4/ffi.rs: a global allocator cannot be
// written without it, and it lives only in this test binary.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` as one case of `target`: in a thread of its own, with the time
/// limit, panics caught and the memory it holds counted.
fn guarded<T: Send + 'static>(
    target: &str,
    input: &[u8],
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let current = (target.to_string(), input.to_vec());
    let (out, peak) = run_limited(CASE_LIMIT, move || {
        CURRENT.with(|c| *c.borrow_mut() = Some(current));
        LIVE.with(|l| l.set(0));
        PEAK.with(|p| p.set(0));
        ACTIVE.with(|a| a.set(true));
        let out = f();
        ACTIVE.with(|a| a.set(false));
        (out, PEAK.with(Cell::get))
    })?;
    if peak > MEM_CAP {
        return Err(format!(
            "held {} MiB at once, over the cap of {} MiB",
            peak >> 20,
            MEM_CAP >> 20
        ));
    }
    Ok(out)
}

fn outcome<T: std::fmt::Display>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(v) => digits_collapsed(&format!("ok {v}"))
            .chars()
            .take(120)
            .collect(),
        Err(e) => format!("err {}", error_outcome(&format!("{e:#}"))),
    }
}

/// Runs target `name`: its corpus and regressions, mutated by `mutate`
/// (plain [`havoc`] with `dict` when None), each case through `case`.
fn fuzz_target(
    name: &str,
    dict: &[&[u8]],
    max_len: usize,
    mutate: Option<&mut Mutate<'_>>,
    case: &mut dyn FnMut(&[u8]) -> Result<String, String>,
) {
    let dir = common::manifest_dir().join("tests/fuzz").join(name);
    let corpus: Vec<Vec<u8>> = case_files(&dir.join("corpus"))
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let regressions = case_files(&dir.join("regressions"));
    let c = Campaign {
        name: name.to_string(),
        seconds: env_u64("FP_FUZZ_PARSER_SECONDS").unwrap_or(11),
        seed: common::fuzz::seed(),
        max_corpus: 300,
        max_len,
        ext: "bin".into(),
    };
    let mut plain = |rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]| {
        let mut v = input.to_vec();
        havoc(rng, &mut v, corpus, dict);
        v
    };
    let mutate: &mut Mutate<'_> = match mutate {
        Some(m) => m,
        None => &mut plain,
    };
    c.run(corpus, &regressions, &|_| true, mutate, case);
}

/// Writes `input` to a file of its own and runs `f` on its path.
fn on_file(target: &'static str, input: &[u8], f: fn(&Path) -> String) -> Result<String, String> {
    let data = input.to_vec();
    guarded(target, input, move || {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("input");
        fs::write(&p, &data).unwrap();
        f(&p)
    })
}

#[test]
fn fuzz_gpt() {
    fuzz_target(
        "gpt",
        &[b"EFI PART", b"\x5c\x00\x00\x00", b"\x00\x02\x00\x00"],
        1 << 20,
        None,
        &mut |input| on_file("gpt", input, |p| outcome(fuzzing::locate_root(p))),
    );
}

#[test]
fn fuzz_esp() {
    fuzz_target(
        "esp",
        &[
            b"EFI PART",
            b"FAT12   ",
            b"FAT16   ",
            b"BOOTX64 EFI",
            b"EFI        ",
            b"\x55\xaa",
        ],
        4 << 20,
        None,
        &mut |input| {
            on_file("esp", input, |p| match fuzzing::detect_platform(p) {
                Ok(Ok(platform)) => format!("ok {platform}"),
                Ok(Err(reason)) => format!("cannot tell: {}", error_outcome(&reason)),
                Err(e) => outcome::<String>(Err(e)),
            })
        },
    );
}

/// The files of a tar (None when it is no tar the `tar` crate reads).
fn tar_files(input: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut a = tar::Archive::new(input);
    let mut out = vec![];
    for e in a.entries().ok()? {
        let mut e = e.ok()?;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut data = vec![];
        std::io::Read::read_to_end(&mut e, &mut data).ok()?;
        out.push((name, data));
    }
    Some(out)
}

/// A tar of `files` (regular files, parents implied).
fn tar_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(vec![]);
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        if b.append_data(&mut h, name, &data[..]).is_err() {
            continue;
        }
    }
    b.into_inner().unwrap()
}

const JSON_DICT: &[&[u8]] = &[
    b"\"sha256:",
    b"\"mediaType\"",
    b"\"manifests\"",
    b"\"layers\"",
    b"\"config\"",
    b"\"Config\"",
    b"\"Layers\"",
    b"\"RepoTags\"",
    b"\"size\":",
    b"\"digest\":",
    b"\"rootfs\"",
    b"\"diff_ids\"",
    b"\"architecture\"",
    b"\"annotations\"",
    b"\"io.containerd.image.name\"",
    b"\"org.opencontainers.image.ref.name\"",
    b"\"type\":",
    b"\"payload\":",
    b"\"name_raw\":",
    b"\"position\":",
    b"application/vnd.oci.image.index.v1+json",
    b"application/vnd.oci.image.manifest.v1+json",
    b"application/vnd.docker.distribution.manifest.list.v2+json",
    b"null",
    b"[]",
    b"{}",
    b"-1",
    b"18446744073709551616",
    b"../",
    b"blobs/sha256/",
];

/// Archive mutations: at the file level (one file's bytes, a file dropped,
/// duplicated or renamed, the tar rebuilt) most of the time, else at the
/// byte level with the tar checksums fixed.
fn mutate_tar(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    if rng.chance(75) {
        if let Some(mut files) = tar_files(input) {
            if !files.is_empty() {
                let i = rng.below(files.len());
                match rng.below(8) {
                    0 => {
                        files.remove(i);
                    }
                    1 => {
                        let f = files[i].clone();
                        files.push(f);
                    }
                    2 => {
                        let mut name = files[i].0.clone().into_bytes();
                        havoc(rng, &mut name, &[], JSON_DICT);
                        files[i].0 = String::from_utf8_lossy(&name).into_owned();
                    }
                    3 => {
                        // Another file's content (a blob where JSON belongs).
                        let j = rng.below(files.len());
                        files[i].1 = files[j].1.clone();
                    }
                    _ => havoc(rng, &mut files[i].1, &[], JSON_DICT),
                }
                return tar_of(&files);
            }
        }
    }
    let mut v = input.to_vec();
    havoc(rng, &mut v, corpus, JSON_DICT);
    fix_tar_checksums(&mut v);
    v
}

fn archive_target(name: &'static str, kind: &'static str) {
    fuzz_target(
        name,
        JSON_DICT,
        1 << 20,
        Some(&mut mutate_tar),
        &mut |input| {
            let data = input.to_vec();
            guarded(name, input, move || {
                let tmp = tempfile::tempdir().unwrap();
                let p = tmp.path().join("input");
                if kind == "oci" {
                    // The layout directory: the tar's files, those whose
                    // names stay inside it.
                    fs::create_dir(&p).unwrap();
                    for (n, d) in tar_files(&data).unwrap_or_default() {
                        let n = n.trim_start_matches("./");
                        if n.is_empty()
                            || n.starts_with('/')
                            || n.split('/').any(|c| c == ".." || c.is_empty())
                        {
                            continue;
                        }
                        let f = p.join(n);
                        let ok = f.parent().is_some_and(|d| fs::create_dir_all(d).is_ok());
                        if ok {
                            let _ = fs::write(&f, d);
                        }
                    }
                } else {
                    fs::write(&p, &data).unwrap();
                }
                outcome(fuzzing::check_archive(kind, &p))
            })
        },
    );
}

#[test]
fn fuzz_docker_archive() {
    archive_target("docker-archive", "docker-archive");
}

#[test]
fn fuzz_oci_archive() {
    archive_target("oci-archive", "oci-archive");
}

#[test]
fn fuzz_oci_dir() {
    archive_target("oci-dir", "oci");
}

#[test]
fn fuzz_bolt() {
    fuzz_target(
        "bolt",
        &[
            b"\xed\xda\x0c\xed",
            b"\x02\x00\x00\x00",
            b"v1",
            b"images",
            b"content",
            b"snapshots",
            b"overlayfs",
            b"target",
            b"labels",
        ],
        1 << 20,
        None,
        &mut |input| {
            let data = input.to_vec();
            guarded("bolt", input, move || outcome(fuzzing::bolt_db(&data)))
        },
    );
}

/// Unpacks the case's tar (a tree below `/`) into `dir`; a `*.json.gz`
/// file that is not gzip is compressed (the seeds keep the tar-split
/// metadata as plain JSON, for the mutations to reach it).
fn unpack_tree(input: &[u8], dir: &Path) {
    // As far as it goes: a damaged tar leaves what came before it.
    let _ = tar::Archive::new(input).unpack(dir);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(p);
            } else if t.is_file() && p.to_string_lossy().ends_with(".json.gz") {
                if let Ok(data) = fs::read(&p) {
                    if !data.starts_with(&[0x1f, 0x8b]) {
                        let _ = fs::write(&p, gzip(&data));
                    }
                }
            }
        }
    }
}

#[test]
fn fuzz_docker_verify() {
    fuzz_target(
        "docker-verify",
        JSON_DICT,
        1 << 20,
        Some(&mut mutate_tar),
        &mut |input| {
            let data = input.to_vec();
            guarded("docker-verify", input, move || {
                let tmp = tempfile::tempdir().unwrap();
                unpack_tree(&data, tmp.path());
                outcome(fuzzing::verify_docker(tmp.path()))
            })
        },
    );
}

/// Text targets: the input as UTF-8 (lossy).
fn text_target(name: &'static str, dict: &[&[u8]], f: fn(&str) -> String) {
    fuzz_target(name, dict, 4096, None, &mut |input| {
        let s = String::from_utf8_lossy(input).into_owned();
        guarded(name, input, move || f(&s))
    });
}

#[test]
fn fuzz_list() {
    text_target(
        "list",
        &[
            b"docker://",
            b"docker-archive:",
            b"oci-archive:",
            b"oci:",
            b"docker-daemon:",
            b"#",
            b":latest",
            b"@sha256:",
            b"\n",
        ],
        |s| outcome(fuzzing::parse_list(s)),
    );
}

#[test]
fn fuzz_refs() {
    text_target(
        "refs",
        &[
            b"docker.io/",
            b"library/",
            b"localhost:5000/",
            b":latest",
            b"@sha256:",
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            b"__",
            b"--",
            b"[::1]",
        ],
        |s| outcome(fuzzing::parse_ref(s)),
    );
}

#[test]
fn fuzz_size() {
    text_target(
        "size",
        &[
            b"K",
            b"M",
            b"G",
            b"T",
            b"iB",
            b"B",
            b"18446744073709551615",
            b" ",
        ],
        |s| outcome(fuzzing::parse_size(s)),
    );
}

#[test]
fn fuzz_compress() {
    fuzz_target(
        "compress",
        &[
            b"\x1f\x8b\x08\x00",
            b"BZh9",
            b"\xfd7zXZ\x00",
            b"\x28\xb5\x2f\xfd",
        ],
        1 << 20,
        None,
        &mut |input| {
            let data = input.to_vec();
            guarded("compress", input, move || {
                // At most 64 MiB out: a bomb is bounded by the reader.
                outcome(
                    fuzzing::decompress(&data, 64 << 20).map(|(k, n)| format!("{k} {}", n.min(1))),
                )
            })
        },
    );
}

// The seed corpora: `FP_FUZZ_WRITE_SEEDS=1 cargo test --features test-hooks
// --test fuzz_parsers write_seeds -- --ignored` writes the generated ones
// (the bolt seed is tests/fixtures/containerd-meta.db.gz, a real
// containerd's database; the docker-verify seeds come from verify's own
// test fixture, see tests/fuzz/README.md).

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn layer_tar(content: &str) -> Vec<u8> {
    tar_of(&[("etc/fuzz".to_string(), content.as_bytes().to_vec())])
}

fn config_json(arch: &str, diff_ids: &[&[u8]]) -> Vec<u8> {
    let ids: Vec<String> = diff_ids
        .iter()
        .map(|l| format!("\"sha256:{}\"", sha(l)))
        .collect();
    format!(
        "{{\"architecture\":\"{arch}\",\"os\":\"linux\",\"config\":{{}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[{}]}}}}",
        ids.join(",")
    )
    .into_bytes()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// docker save's layout: legacy (`<id>/layer.tar`) or with blobs (Docker 25+).
fn docker_archive(blobs: bool, tags: &[&str], layers: &[Vec<u8>]) -> Vec<u8> {
    let refs: Vec<&[u8]> = layers.iter().map(|l| &l[..]).collect();
    let config = config_json("amd64", &refs);
    let mut files = vec![];
    let config_name = if blobs {
        format!("blobs/sha256/{}", sha(&config))
    } else {
        format!("{}.json", sha(&config))
    };
    files.push((config_name.clone(), config.clone()));
    let mut names = vec![];
    for l in layers {
        let n = if blobs {
            format!("blobs/sha256/{}", sha(l))
        } else {
            format!("{}/layer.tar", sha(l))
        };
        files.push((n.clone(), l.clone()));
        names.push(format!("\"{n}\""));
    }
    let tags: Vec<String> = tags.iter().map(|t| format!("\"{t}\"")).collect();
    let manifest = format!(
        "[{{\"Config\":\"{config_name}\",\"RepoTags\":[{}],\"Layers\":[{}]}}]",
        tags.join(","),
        names.join(",")
    );
    files.push(("manifest.json".into(), manifest.into_bytes()));
    if blobs {
        files.push((
            "oci-layout".into(),
            b"{\"imageLayoutVersion\":\"1.0.0\"}".to_vec(),
        ));
    }
    tar_of(&files)
}

/// An OCI layout: one image per architecture, in an index when several.
fn oci_layout(archs: &[&str], name: &str, gz_layers: bool) -> Vec<u8> {
    let mut files = vec![(
        "oci-layout".to_string(),
        b"{\"imageLayoutVersion\":\"1.0.0\"}".to_vec(),
    )];
    let blob = |files: &mut Vec<(String, Vec<u8>)>, b: Vec<u8>| {
        let d = sha(&b);
        let n = b.len();
        files.push((format!("blobs/sha256/{d}"), b));
        (format!("sha256:{d}"), n)
    };
    let mut manifests = vec![];
    for arch in archs {
        let layer = layer_tar(&format!("layer of {arch}\n"));
        let config = config_json(arch, &[&layer]);
        let (ld, ls) = if gz_layers {
            blob(&mut files, gzip(&layer))
        } else {
            blob(&mut files, layer)
        };
        let (cd, cs) = blob(&mut files, config);
        let lt = if gz_layers {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        let m = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"{cd}\",\"size\":{cs}}},\"layers\":[{{\"mediaType\":\"{lt}\",\"digest\":\"{ld}\",\"size\":{ls}}}]}}"
        );
        let (md, ms) = blob(&mut files, m.into_bytes());
        manifests.push(format!(
            "{{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"{md}\",\"size\":{ms},\"platform\":{{\"architecture\":\"{arch}\",\"os\":\"linux\"}}}}"
        ));
    }
    let ann = format!(
        "\"annotations\":{{\"io.containerd.image.name\":\"{name}\",\"org.opencontainers.image.ref.name\":\"1\"}}"
    );
    let top = if manifests.len() == 1 {
        manifests[0].replacen('{', &format!("{{{ann},"), 1)
    } else {
        let idx = format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{}]}}",
            manifests.join(",")
        );
        let (d, s) = blob(&mut files, idx.into_bytes());
        format!(
            "{{\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"digest\":\"{d}\",\"size\":{s},{ann}}}"
        )
    };
    files.push((
        "index.json".into(),
        format!("{{\"schemaVersion\":2,\"manifests\":[{top}]}}").into_bytes(),
    ));
    tar_of(&files)
}

fn sgdisk_disk(path: &Path, bytes: u64, args: &[&str]) {
    let f = fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
    drop(f);
    let out = std::process::Command::new("sgdisk")
        .args(args)
        .arg(path)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output()
        .expect("sgdisk");
    assert!(out.status.success(), "sgdisk: {out:?}");
}

const ROOT_TYPE: &str = "3884DD41-8582-4404-B9A8-E9B84F2DF50E";

#[test]
#[ignore = "writes the seed corpora (FP_FUZZ_WRITE_SEEDS=1)"]
fn write_seeds() {
    if std::env::var_os("FP_FUZZ_WRITE_SEEDS").is_none() {
        return;
    }
    let base = common::manifest_dir().join("tests/fuzz");
    let put = |target: &str, name: &str, data: &[u8]| {
        let d = base.join(target).join("corpus");
        fs::create_dir_all(&d).unwrap();
        fs::create_dir_all(base.join(target).join("regressions")).unwrap();
        fs::write(d.join(name), data).unwrap();
    };
    let tmp = tempfile::tempdir().unwrap();

    // GPT: Flatcar's ROOT as partition 9 (by type and name), other layouts.
    let disk = tmp.path().join("gpt.bin");
    for (name, args) in [
        (
            "root-p9.bin",
            vec![
                "-n",
                "1:34:63",
                "-t",
                "1:EF00",
                "-n",
                "9:64:191",
                "-t",
                &format!("9:{ROOT_TYPE}"),
                "-c",
                "9:ROOT",
            ],
        ),
        ("root-by-name.bin", vec!["-n", "9:64:191", "-c", "9:ROOT"]),
        ("no-p9.bin", vec!["-n", "1:34:191", "-t", "1:EF00"]),
    ] {
        sgdisk_disk(&disk, 256 * 512, &args);
        put("gpt", name, &fs::read(&disk).unwrap());
    }

    // ESP: a small disk whose p1 is a FAT ESP with EFI loaders.
    for (name, dirs, loaders) in [
        ("amd64.bin", ("EFI", "boot"), &["bootx64.efi"][..]),
        ("arm64-upper.bin", ("efi", "BOOT"), &["BOOTAA64.EFI"][..]),
        (
            "both.bin",
            ("EFI", "boot"),
            &["bootx64.efi", "bootaa64.efi"][..],
        ),
    ] {
        sgdisk_disk(&disk, 800 * 512, &["-n", "1:40:759", "-t", "1:EF00"]);
        common::esp::write_esp(&disk, common::esp::Fat::Auto, dirs, loaders, false);
        put("esp", name, &fs::read(&disk).unwrap());
    }

    // Image archives.
    let l1 = layer_tar("one\n");
    let l2 = layer_tar("two\n");
    put(
        "docker-archive",
        "legacy.tar",
        &docker_archive(false, &["fuzz/a:1"], &[l1.clone(), l2]),
    );
    put(
        "docker-archive",
        "blobs.tar",
        &docker_archive(true, &["fuzz/b:1", "fuzz/b:2"], std::slice::from_ref(&l1)),
    );
    for t in ["oci-archive", "oci-dir"] {
        put(
            t,
            "one.tar",
            &oci_layout(&["amd64"], "docker.io/fuzz/o:1", false),
        );
        put(
            t,
            "index-gz.tar",
            &oci_layout(&["amd64", "arm64"], "docker.io/fuzz/m:1", true),
        );
    }

    // containerd's meta.db.
    let mut db = vec![];
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(
            &fs::read(common::manifest_dir().join("tests/fixtures/containerd-meta.db.gz")).unwrap()
                [..],
        ),
        &mut db,
    )
    .unwrap();
    put("bolt", "containerd-1.6-meta.db", &db);

    // images.list, references, sizes.
    put(
        "list",
        "images.list",
        &fs::read(common::manifest_dir().join("images.list")).unwrap(),
    );
    put(
        "list",
        "transports.list",
        b"# every transport\ndocker://nginx:1.27\ndocker-archive:a.tar:fuzz/a:1\noci-archive:/x/o.tar\noci:dir:name:2\ndocker-daemon:busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
    );
    for (i, r) in [
        "nginx",
        "docker.io/library/nginx:1.27-alpine",
        "localhost:5000/a/b_c/d-e:tag",
        "ghcr.io/x/y@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "[::1]:5000/x:y",
    ]
    .iter()
    .enumerate()
    {
        put("refs", &format!("ref{i}"), r.as_bytes());
    }
    for (i, s) in ["16G", "512MiB", "4096", " 1t ", "3kb"].iter().enumerate() {
        put("size", &format!("size{i}"), s.as_bytes());
    }

    // Compressed inputs: each compression, and none.
    let data = b"a tar or a disk image, compressed\n".repeat(20);
    put("compress", "plain", &data);
    put("compress", "data.gz", &gzip(&data));
    let mut bz = bzip2::write::BzEncoder::new(vec![], bzip2::Compression::fast());
    bz.write_all(&data).unwrap();
    put("compress", "data.bz2", &bz.finish().unwrap());
    let mut xz = liblzma::write::XzEncoder::new(vec![], 1);
    xz.write_all(&data).unwrap();
    put("compress", "data.xz", &xz.finish().unwrap());
    put(
        "compress",
        "data.zst",
        &zstd::encode_all(&data[..], 1).unwrap(),
    );
}
