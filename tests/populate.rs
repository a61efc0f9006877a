//! `flatcar-preload populate` against real Docker: the test dockerd, local
//! registry and dind image of ci/docker-env.sh (run it first; ci/test.sh
//! does). The result is checked by starting a real Docker 28 on the
//! written store and running the fixture images.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

struct Env {
    docker_host: String,
    dind_image: String,
    registry_container: String,
    registry: String,
    test_user: String,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!(
                    "{k} is not set: these tests need the Docker test environment; \
                     run `. ci/docker-env.sh` (as root) first, or `ci/test.sh`"
                )
            })
        };
        Env {
            docker_host: var("DOCKER_HOST"),
            dind_image: var("FP_DIND_IMAGE"),
            registry_container: var("FP_REGISTRY_CONTAINER"),
            registry: var("FP_REGISTRY"),
            test_user: var("FP_TEST_USER"),
        }
    })
}

fn docker(args: &[&str]) -> Output {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", &env().docker_host)
        .output()
        .expect("running docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn docker_out(args: &[&str]) -> String {
    String::from_utf8_lossy(&docker(args).stdout)
        .trim()
        .to_string()
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// A layer tar: (path, content or special).
enum L<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Cap(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
    Sym(&'a str, &'a str),
}

const CAP_NET_BIND_SERVICE_EP: &[u8] = &[
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn layer(entries: &[L]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match e {
            L::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            L::File(p, data, mode) => {
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            L::Cap(p, data) => {
                b.append_pax_extensions([(
                    "SCHILY.xattr.security.capability",
                    CAP_NET_BIND_SERVICE_EP,
                )])
                .unwrap();
                h.set_mode(0o755);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            L::Link(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            L::Sym(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Loads an image made of `layers` into the test dockerd as `tag`, pushes
/// it, and returns its image ID and its digest reference.
fn make_image(tag: &str, layers: &[Vec<u8>]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut names = vec![];
    let mut diff_ids = vec![];
    for (i, l) in layers.iter().enumerate() {
        let name = format!("l{i}/layer.tar");
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(l.len() as u64);
        b.append_data(&mut h, &name, &l[..]).unwrap();
        names.push(name);
        diff_ids.push(sha256(l));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "flatcar-preload tests"})).collect::<Vec<_>>(),
    });
    let config = serde_json::to_vec(&config).unwrap();
    let id = sha256(&config);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(config.len() as u64);
    b.append_data(&mut h, "config.json", &config[..]).unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "config.json", "RepoTags": [tag], "Layers": names
    }]))
    .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(manifest.len() as u64);
    b.append_data(&mut h, "manifest.json", &manifest[..])
        .unwrap();
    let archive = dir.path().join("image.tar");
    fs::write(&archive, b.into_inner().unwrap()).unwrap();
    docker(&["load", "-q", "-i", archive.to_str().unwrap()]);
    docker(&["push", "-q", tag]);
    let repo_digest = docker_out(&["inspect", "--format", "{{index .RepoDigests 0}}", tag]);
    (id, repo_digest)
}

struct Fixtures {
    /// (reference as listed, expected image ID)
    listed: Vec<(String, String)>,
    unlisted: String,
    big: String,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let reg = &env().registry;
        let busybox = fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
        let base = layer(&[
            L::Dir("bin"),
            L::File("bin/busybox", &busybox, 0o755),
            L::Sym("bin/sh", "busybox"),
            L::Dir("capbin"),
            // busybox picks its applet by name: this one is grep.
            L::Cap("capbin/grep", &busybox),
            L::Dir("data"),
            L::Dir("data/a"),
            L::File("data/a/file1", b"old 1", 0o644),
            L::File("data/a/keep-not", b"old 2", 0o644),
            L::Dir("data/b"),
            L::File("data/b/gone", b"deleted later", 0o644),
            L::File("data/b/stays", b"stays", 0o644),
            L::File("data/hard1", b"hard", 0o640),
            L::Link("data/hard2", "data/hard1"),
            L::Sym("data/link", "b/stays"),
            L::File("data/sp ace ünï", b"odd", 0o600),
        ]);
        // Upper layer: /data/a deleted and recreated (opaque), a file
        // deleted (whiteout).
        let upper = layer(&[
            L::Dir("data"),
            L::Dir("data/a"),
            L::File("data/a/.wh..wh..opq", b"", 0o644),
            L::File("data/a/new", b"new", 0o644),
            L::Dir("data/b"),
            L::File("data/b/.wh.gone", b"", 0o644),
        ]);
        let layers_tag = format!("{reg}/fp/layers:1");
        let (layers_id, _) = make_image(&layers_tag, &[base.clone(), upper]);
        let second_tag = format!("{reg}/fp/second:2");
        let (second_id, second_digest) = make_image(
            &second_tag,
            &[base.clone(), layer(&[L::File("second", b"2", 0o644)])],
        );
        let (_, _) = make_image(
            &format!("{reg}/fp/unlisted:1"),
            &[layer(&[L::File("x", b"x", 0o644)])],
        );
        let mut big = vec![0u8; 96 << 20];
        let mut p = Prng::new(7, big.len() as u64);
        p.read_exact(&mut big).unwrap();
        let (_, _) = make_image(
            &format!("{reg}/fp/big:1"),
            &[base, layer(&[L::File("big", &big, 0o644)])],
        );
        // Pinned by digest and keeping its tag.
        let digest = second_digest.split_once('@').unwrap().1.to_string();
        Fixtures {
            listed: vec![
                (layers_tag, layers_id),
                (format!("{second_tag}@{digest}"), second_id),
            ],
            unlisted: format!("{reg}/fp/unlisted:1"),
            big: format!("{reg}/fp/big:1"),
        }
    })
}

/// The tests share one Docker engine and check that nothing is left in it,
/// so they run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A directory the unprivileged test user may write to.
fn user_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// The containers and volumes that runs of the tool left behind.
fn leftovers() -> String {
    let c = docker_out(&[
        "ps",
        "-a",
        "--filter",
        "label=org.flatcar-preload.run",
        "--format",
        "{{.Names}}",
    ]);
    let v = docker_out(&[
        "volume",
        "ls",
        "--filter",
        "label=org.flatcar-preload.run",
        "--format",
        "{{.Name}}",
    ]);
    format!("{c}{v}")
}

/// A copy of the binary that the test user can reach wherever the
/// checkout lives.
fn user_bin() -> &'static Path {
    static BIN_COPY: OnceLock<(tempfile::TempDir, std::path::PathBuf)> = OnceLock::new();
    let (_, p) = BIN_COPY.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let p = d.path().join("flatcar-preload");
        fs::copy(BIN, &p).unwrap();
        (d, p)
    });
    p
}

/// `flatcar-preload populate ARGS` as the unprivileged test user, through
/// the test dockerd, with the local registry reachable as 127.0.0.1:5000.
fn populate_cmd(args: &[&str]) -> Command {
    let e = env();
    let mut c = Command::new("runuser");
    c.args(["-u", &e.test_user, "--", "env"])
        .arg(format!("DOCKER_HOST={}", e.docker_host))
        .arg(user_bin())
        .arg("populate")
        .args(args)
        .args([
            "--dind-image",
            &e.dind_image,
            "--dind-network",
            &format!("container:{}", e.registry_container),
        ]);
    c
}

fn populate(args: &[&str]) -> Output {
    populate_cmd(args).output().unwrap()
}

/// Starts Docker 28 (the dind image) on the store in ROOT of `disk` and
/// runs `script` with it; returns its output.
fn with_real_docker(disk: &Path, script: &str) -> String {
    // The checks start a daemon that writes to its store.
    let m = Mount::with(disk, true);
    let store = m.dir.path().join("var/lib/docker");
    let name = format!("fp-verify-{}", std::process::id());
    let full = format!(
        "dockerd --iptables=false --ip6tables=false --bridge=none >/tmp/dockerd.log 2>&1 &
         for i in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
         {script}"
    );
    let out = Command::new("docker")
        .env("DOCKER_HOST", &env().docker_host)
        .args(["run", "--rm", "--name", &name, "--network", "none"])
        .args(["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE"])
        .args([
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
        ])
        .args([
            "--security-opt",
            "systempaths=unconfined",
            "--cgroupns",
            "host",
        ])
        .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup"])
        .arg("-v")
        .arg(format!("{}:/var/lib/docker", store.display()))
        .args([&env().dind_image, "sh", "-c", &full])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "verification with a real dockerd failed:\n{text}"
    );
    text
}

#[test]
fn populate_truth() {
    let _serial = serial();
    let f = fixtures();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o444)).unwrap();
    let before = file_digest(&disk);
    let list = tmp.path().join("images.list");
    fs::write(
        &list,
        format!(
            "# fixtures\n\n  {}  \n{} # pinned\n",
            f.listed[0].0, f.listed[1].0
        ),
    )
    .unwrap();
    let out = tmp.path().join("out.bin");
    let o = populate(&[
        disk.to_str().unwrap(),
        "-l",
        list.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "populate failed: {}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json output");
    assert_eq!(summary["images"].as_array().unwrap().len(), 2);
    assert_eq!(summary["images"][0]["id"], f.listed[0].1.as_str());
    assert!(summary["layers"].as_u64().unwrap() >= 3, "{summary}");
    assert_eq!(summary["export_via"], "socket", "{summary}");
    assert!(stderr(&o).contains("ROOT:"), "{}", stderr(&o));
    assert_eq!(
        file_digest(&disk),
        before,
        "the input disk image was modified"
    );
    assert_eq!(leftovers(), "", "containers or volumes left behind");
    assert_fsck_clean(&out);

    // What must not travel: the build machine's daemon state.
    let view = ext4_view(&out);
    for gone in [
        "engine-id",
        "network",
        "containers",
        "swarm",
        "buildkit",
        "tmp",
        "runtimes",
        "plugins",
        "containerd",
        "volumes",
    ] {
        let p = format!("/var/lib/docker/{gone}");
        assert!(!view.exists(p.as_str()).unwrap(), "{p} was written");
    }
    assert!(view
        .exists("/var/lib/docker/image/overlay2/repositories.json")
        .unwrap());
    drop(view);

    // A real Docker 28 on the written store.
    let script = r#"
        docker images --no-trunc --format 'IMG {{.Repository}}:{{.Tag}} {{.ID}}'
        docker run --rm --network none LAYERS sh -c 'echo A=$(ls -A /data/a | tr "\n" " "); echo B=$(ls -A /data/b | tr "\n" " "); echo CAT=$(cat /data/a/new); echo LINK=$(cat /data/link); echo H=$(stat -c "%i %h" /data/hard1) $(stat -c "%i %h" /data/hard2); echo ODD=$(cat "/data/sp ace ünï")'
        docker run --rm --network none --user 1000 LAYERS /capbin/grep CapPrm /proc/self/status
        docker run --rm --network none SECOND /bin/busybox cat /second; echo
    "#
    .replace("LAYERS", &f.listed[0].0)
    .replace("SECOND", &f.listed[1].0);
    let text = with_real_docker(&out, &script);
    let mut images: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("IMG "))
        .map(str::to_string)
        .collect();
    images.sort();
    let second_tag = f.listed[1].0.split('@').next().unwrap();
    let mut want = vec![
        format!("{} {}", f.listed[0].0, f.listed[0].1),
        format!("{second_tag} {}", f.listed[1].1),
    ];
    want.sort();
    assert_eq!(
        images, want,
        "docker images on the preloaded store:\n{text}"
    );
    assert!(
        !text.contains(&f.unlisted),
        "an unlisted image was preloaded"
    );
    assert!(
        text.contains("A=new \n") || text.contains("A=new\n"),
        "opaque directory came back wrong:\n{text}"
    );
    assert!(text.contains("B=stays"), "{text}");
    assert!(!text.contains("gone"), "a deleted file came back:\n{text}");
    assert!(
        text.contains("CAT=new") && text.contains("LINK=stays") && text.contains("ODD=odd"),
        "{text}"
    );
    let h = text.lines().find(|l| l.starts_with("H=")).unwrap();
    let v: Vec<&str> = h[2..].split_whitespace().collect();
    assert_eq!((v[0], v[1], v[3]), (v[2], "2", "2"), "hard links: {h}");
    // cap_net_bind_service (bit 10) in the permitted set of a non-root user.
    assert!(
        text.contains("CapPrm:\t0000000000000400"),
        "file capability lost:\n{text}"
    );
    assert!(text.contains("\n2\n") || text.ends_with("2\n"), "{text}");
}

/// A failed run: clear error, no output, input unchanged, nothing left in
/// Docker.
fn assert_clean_failure(o: &Output, disk: &Path, before: u64, out: &Path, want: &str) {
    assert!(!o.status.success(), "should fail: {}", stderr(o));
    let err = stderr(o);
    assert!(err.contains(want), "error should mention {want:?}:\n{err}");
    assert!(!out.exists(), "output left behind");
    let partial = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains("partial"));
    assert!(!partial, "partial output left behind");
    assert_eq!(file_digest(disk), before, "input modified");
    assert_eq!(leftovers(), "", "containers or volumes left behind");
}

#[test]
fn populate_failures() {
    let _serial = serial();
    let f = fixtures();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let before = file_digest(&disk);
    let out = tmp.path().join("out.bin");
    let d = disk.to_str().unwrap();
    let o_ = out.to_str().unwrap();
    let reg = &env().registry;

    let nope = format!("{reg}/fp/does-not-exist:1");
    let o = populate(&[d, &nope, "-o", o_]);
    assert_clean_failure(&o, &disk, before, &out, &nope);

    let o = populate(&[d, "127.0.0.1:5999/fp/unreachable:1", "-o", o_]);
    assert_clean_failure(&o, &disk, before, &out, "127.0.0.1:5999/fp/unreachable:1");

    // 96 MiB of layer into a 64 MiB ROOT, not allowed to grow.
    let o = populate(&[d, &f.big, "-o", o_, "--grow", "no"]);
    assert_clean_failure(&o, &disk, before, &out, "too small");

    let o = populate(&[d, "BAD REF", "-o", o_]);
    assert_clean_failure(&o, &disk, before, &out, "not a valid image reference");

    let junk = tmp.path().join("junk.bin");
    fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    let o = populate(&[junk.to_str().unwrap(), &f.listed[0].0, "-o", o_]);
    assert_clean_failure(&o, &junk, file_digest(&junk), &out, "no valid GPT");
}

/// Sends SIGINT once the tool has reached `phase` (a test hook pauses it
/// there so that the signal cannot miss). The hook is compiled in with the
/// `test-hooks` feature only (`cargo test --features test-hooks`, as
/// ci/test.sh runs): without it, the test skips, except in CI.
fn interrupt_at(phase: &str) {
    if !cfg!(feature = "test-hooks") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the tests with --features test-hooks"
        );
        eprintln!("SKIP interrupted_during_{phase}: built without --features test-hooks");
        return;
    }
    let f = fixtures();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    let before = file_digest(&disk);
    let out = tmp.path().join("out.bin");
    let mut child = populate_cmd(&[
        disk.to_str().unwrap(),
        &f.listed[0].0,
        "-o",
        out.to_str().unwrap(),
    ])
    .env("FLATCAR_PRELOAD_PAUSE_AT", phase)
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The tool prints this line when it reaches the pause.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let start = Instant::now();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 || start.elapsed() > Duration::from_secs(120) {
            panic!("never reached {phase}:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains(&format!("paused at {phase}")) {
            break;
        }
    }
    // The tool is runuser's child (runuser would turn SIGINT into SIGTERM).
    let st = Command::new("pkill")
        .args(["-INT", "-P", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let o = Output {
        status,
        stdout: vec![],
        stderr: format!("{seen}{rest}").into_bytes(),
    };
    assert_clean_failure(&o, &disk, before, &out, "interrupted");
}

#[test]
fn interrupted_during_pull() {
    let _serial = serial();
    interrupt_at("pull");
}

#[test]
fn interrupted_during_write() {
    let _serial = serial();
    interrupt_at("write");
}

#[test]
fn merge_adds_to_an_existing_store() {
    let _serial = serial();
    let f = fixtures();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    let d = disk.to_str().unwrap();
    let first = tmp.path().join("first.bin");
    let o = populate(&[d, &f.listed[0].0, "-o", first.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Without --merge, a second run refuses before pulling anything.
    let second = tmp.path().join("second.bin");
    let o = populate(&[
        first.to_str().unwrap(),
        &f.listed[1].0,
        "-o",
        second.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, &first, file_digest(&first), &second, "--merge");
    // With the test hooks, this run exports through the attach stream, as
    // with a remote daemon.
    let o = populate_cmd(&[
        first.to_str().unwrap(),
        &f.listed[1].0,
        "-o",
        second.to_str().unwrap(),
        "--merge",
        "--json",
    ])
    .env("FLATCAR_PRELOAD_NO_EXPORT_SOCKET", "1")
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json output");
    let via = if cfg!(feature = "test-hooks") {
        "attach"
    } else {
        "socket"
    };
    assert_eq!(summary["export_via"], via, "{summary}");
    assert_fsck_clean(&second);
    let text = with_real_docker(
        &second,
        "docker images --format 'IMG {{.Repository}}:{{.Tag}}'",
    );
    let second_tag = f.listed[1].0.split('@').next().unwrap();
    assert!(text.contains(&format!("IMG {}", f.listed[0].0)), "{text}");
    assert!(text.contains(&format!("IMG {second_tag}")), "{text}");
}

#[test]
fn containerd_root_is_written() {
    let _serial = serial();
    let f = fixtures();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    let src = tmp.path().join("containerd");
    fs::create_dir_all(src.join("io.containerd.content.v1.content/blobs/sha256")).unwrap();
    fs::write(
        src.join("io.containerd.content.v1.content/blobs/sha256/abc"),
        b"blob",
    )
    .unwrap();
    fs::create_dir_all(src.join("io.containerd.metadata.v1.bolt")).unwrap();
    fs::write(src.join("io.containerd.metadata.v1.bolt/meta.db"), b"db").unwrap();
    let out = tmp.path().join("out.bin");
    let o = populate(&[
        disk.to_str().unwrap(),
        &f.listed[0].0,
        "--containerd",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_fsck_clean(&out);
    let view = ext4_view(&out);
    assert_eq!(
        view.read("/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db")
            .unwrap(),
        b"db"
    );
    assert_eq!(
        view.read("/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256/abc")
            .unwrap(),
        b"blob"
    );
}

#[test]
fn qcow2_input_grows_to_fit() {
    let _serial = serial();
    let f = fixtures();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let qcow = tmp.path().join("disk.qcow2");
    qemu_convert("raw", "qcow2", &disk, &qcow);
    fs::set_permissions(&qcow, fs::Permissions::from_mode(0o644)).unwrap();
    let out = tmp.path().join("out.qcow2");
    // 96 MiB of layers into a 64 MiB ROOT: grown on the way.
    let o = populate(&[
        qcow.to_str().unwrap(),
        &f.big,
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        summary["grown"]["root_bytes_after"].as_u64().unwrap() > 96 << 20,
        "{summary}"
    );
    assert_eq!(leftovers(), "");
    let raw = tmp.path().join("back.raw");
    qemu_convert("qcow2", "raw", &out, &raw);
    assert_fsck_clean(&raw);
    let text = with_real_docker(
        &raw,
        &format!(
            "docker run --rm --network none {} /bin/busybox wc -c /big",
            f.big
        ),
    );
    assert!(text.contains(&format!("{} /big", 96 << 20)), "{text}");
}
