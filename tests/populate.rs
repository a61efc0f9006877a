//! `flatcar-preload populate` against real Docker: the test dockerd, local
//! registry and dind images of ci/docker-env.sh (run it first; ci/test.sh
//! does). The result is checked by starting each Docker that Debian's
//! suites ship (FP_TARGET_DOCKERS: 26 from stable, the major of Flatcar
//! LTS; 28 or newer from unstable) on the written store and running the
//! fixture images. Without root or that environment every test skips with
//! the reason (and fails instead under CI=true).

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
    /// The dind images whose Docker is started on written stores, as
    /// Flatcar would (oldest first).
    target_dockers: Vec<String>,
    registry_container: String,
    registry: String,
    test_user: String,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        if let Some(reason) = docker_env_missing() {
            panic!("{reason}");
        }
        let var = |k: &str| std::env::var(k).unwrap();
        Env {
            docker_host: var("DOCKER_HOST"),
            dind_image: var("FP_DIND_IMAGE"),
            target_dockers: var("FP_TARGET_DOCKERS")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
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
    /// A file with this `security.capability` value.
    Cap(&'a str, &'a [u8], &'a [u8]),
    Link(&'a str, &'a str),
    Sym(&'a str, &'a str),
}

const CAP_NET_BIND_SERVICE_EP: &[u8] = &[
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
/// cap_dac_override,cap_fowner+ep: the mask 0x0a is a newline byte, which
/// tar readers that split PAX headers on newlines cannot read.
const CAP_DAC_OVERRIDE_FOWNER_EP: &[u8] = &[
    0x01, 0x00, 0x00, 0x02, 0x0a, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
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
            L::Cap(p, data, cap) => {
                b.append_pax_extensions([("SCHILY.xattr.security.capability", *cap)])
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
            L::Cap("capbin/grep", &busybox, CAP_NET_BIND_SERVICE_EP),
            // ... and this one cat.
            L::Cap("capbin/cat", &busybox, CAP_DAC_OVERRIDE_FOWNER_EP),
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

/// The start of every test: the Docker environment (or a printed skip, a
/// failure in CI), then the engine to ourselves.
fn docker_test() -> Option<std::sync::MutexGuard<'static, ()>> {
    require_docker_env().then(serial)
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

/// The major version in a target's tag: they are named by it
/// (`fp-dind:26`, `fp-dind:29`, `fp-dind:29-unstable`).
fn major_of(image: &str) -> u32 {
    image
        .rsplit_once(':')
        .and_then(|(_, tag)| tag.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| {
            panic!("FP_TARGET_DOCKERS: {image} is not named by its Docker major (fp-dind:MAJOR)")
        })
}

/// The tags the store's repositories.json holds, as `repo:tag id`: what
/// `docker images` must list on it.
fn stored_tags(store: &Path) -> Vec<String> {
    let p = store.join("image/overlay2/repositories.json");
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .unwrap();
    let mut tags = vec![];
    for refs in json["Repositories"].as_object().unwrap().values() {
        for (r, id) in refs.as_object().unwrap() {
            if !r.contains('@') {
                tags.push(format!("{r} {}", id.as_str().unwrap()));
            }
        }
    }
    tags.sort();
    tags
}

/// What one target Docker printed on a written store.
struct Verified {
    image: String,
    text: String,
}

/// Starts every target Docker (FP_TARGET_DOCKERS), one after the other,
/// each on its own copy of the store in ROOT of `disk`; checks that it
/// keeps the overlay2 store and lists every image the store holds, then
/// runs `script` with it and returns what each printed.
fn on_each_real_docker(disk: &Path, script: &str) -> Vec<Verified> {
    let targets = &env().target_dockers;
    assert!(!targets.is_empty(), "FP_TARGET_DOCKERS lists no image");
    let mut all = vec![];
    for image in targets {
        let major = major_of(image);
        // The daemon writes to its store: each gets a pristine copy.
        let copy_dir = tempfile::tempdir().unwrap();
        let copy = copy_dir.path().join("verify.bin");
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(disk)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success(), "copying {}", disk.display());
        let m = Mount::with(&copy, true);
        let store = m.dir.path().join("var/lib/docker");
        let want = stored_tags(&store);
        // Flatcar starts dockerd with no storage flag and no daemon.json.
        // From 29 on, that is how it must be started here too: Docker 29
        // picks the containerd image store on a fresh install, and the test
        // is that a store already in overlay2 keeps it on overlay2. Older
        // majors get the network flags a container here needs (no NAT
        // rules, no bridge); they do not touch the store.
        let flags = if major >= 29 {
            ""
        } else {
            "--iptables=false --ip6tables=false --bridge=none"
        };
        let full = format!(
            "dockerd {flags} >/tmp/dockerd.log 2>&1 &
             for i in $(seq 300); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
             docker info >/dev/null 2>&1 || {{ echo 'dockerd did not start:'; tail -n 30 /tmp/dockerd.log; exit 1; }}
             echo \"FPINFO $(docker info -f '{{{{.ServerVersion}}}} {{{{.Driver}}}}')\"
             docker images --no-trunc --format 'FPIMG {{{{.Repository}}}}:{{{{.Tag}}}} {{{{.ID}}}}'
             {script}"
        );
        let name = format!("fp-verify-{}", std::process::id());
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
            .args([image.as_str(), "sh", "-c", &full])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "verification with a real dockerd ({image}) failed:\n{text}"
        );
        let info = text
            .lines()
            .find_map(|l| l.strip_prefix("FPINFO "))
            .unwrap_or("");
        let (version, driver) = info.split_once(' ').unwrap_or((info, ""));
        assert_eq!(
            version.split('.').next(),
            Some(major.to_string().as_str()),
            "{image} started Docker {version:?}:\n{text}"
        );
        assert_eq!(
            driver, "overlay2",
            "Docker {version} ({image}) does not use the written overlay2 store:\n{text}"
        );
        let mut listed: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("FPIMG "))
            .filter(|l| !l.contains("<none>"))
            .map(str::to_string)
            .collect();
        listed.sort();
        assert_eq!(
            listed, want,
            "Docker {version} ({image}): `docker images` against the store's repositories.json:\n{text}"
        );
        drop(m);
        all.push(Verified {
            image: image.clone(),
            text,
        });
    }
    all
}

/// `on_each_real_docker`, with what each Docker printed in one text.
fn with_real_docker(disk: &Path, script: &str) -> String {
    on_each_real_docker(disk, script)
        .into_iter()
        .map(|v| format!("== {} ==\n{}", v.image, v.text))
        .collect()
}

#[test]
fn populate_truth() {
    let Some(_serial) = docker_test() else {
        return;
    };
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

    // The capability whose value holds a newline byte, byte for byte in the
    // layer's diff as the kernel reads it.
    {
        let m = Mount::new(&out);
        let overlay = m.dir.path().join("var/lib/docker/overlay2");
        let mut found = 0;
        for e in fs::read_dir(&overlay).unwrap() {
            let p = e.unwrap().path().join("diff/capbin/cat");
            if p.exists() {
                let mut buf = [0u8; 256];
                let n = rustix::fs::lgetxattr(&p, "security.capability", &mut buf[..])
                    .unwrap_or_else(|e| panic!("{}: no security.capability: {e}", p.display()));
                assert_eq!(&buf[..n], CAP_DAC_OVERRIDE_FOWNER_EP, "{}", p.display());
                found += 1;
            }
        }
        assert!(found > 0, "no layer holds capbin/cat");
    }

    // Each Docker of FP_TARGET_DOCKERS (Flatcar LTS's major and newer) on
    // the written store.
    let script = r#"
        docker images --no-trunc --format 'IMG {{.Repository}}:{{.Tag}} {{.ID}}'
        docker run --rm --network none LAYERS sh -c 'echo A=$(ls -A /data/a | tr "\n" " "); echo B=$(ls -A /data/b | tr "\n" " "); echo CAT=$(cat /data/a/new); echo LINK=$(cat /data/link); echo H=$(stat -c "%i %h" /data/hard1) $(stat -c "%i %h" /data/hard2); echo ODD=$(cat "/data/sp ace ünï")'
        docker run --rm --network none --user 1000 LAYERS /capbin/grep CapPrm /proc/self/status
        docker run --rm --network none --user 1000 LAYERS /capbin/cat /proc/self/status | grep CapPrm | sed 's/^/NL/'
        docker run --rm --network none SECOND /bin/busybox cat /second; echo
    "#
    .replace("LAYERS", &f.listed[0].0)
    .replace("SECOND", &f.listed[1].0);
    for Verified { image, text } in on_each_real_docker(&out, &script) {
        assert_truth(&image, &text, f);
    }
}

/// What the fixture images show when run by one target Docker.
fn assert_truth(image: &str, text: &str, f: &Fixtures) {
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
        "{image}: docker images on the preloaded store:\n{text}"
    );
    assert!(
        !text.contains(&f.unlisted),
        "an unlisted image was preloaded"
    );
    assert!(
        text.contains("A=new \n") || text.contains("A=new\n"),
        "{image}: opaque directory came back wrong:\n{text}"
    );
    assert!(text.contains("B=stays"), "{text}");
    assert!(
        !text.contains("gone"),
        "{image}: a deleted file came back:\n{text}"
    );
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
        "{image}: file capability lost:\n{text}"
    );
    // cap_dac_override and cap_fowner (bits 1 and 3: 0x0a).
    assert!(
        text.contains("NLCapPrm:\t000000000000000a"),
        "{image}: the capability holding a newline byte was lost:\n{text}"
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
    let Some(_serial) = docker_test() else {
        return;
    };
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
        skip("built without --features test-hooks, which pauses a run at a phase");
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
    let Some(_serial) = docker_test() else {
        return;
    };
    interrupt_at("pull");
}

#[test]
fn interrupted_during_write() {
    let Some(_serial) = docker_test() else {
        return;
    };
    interrupt_at("write");
}

#[test]
fn merge_adds_to_an_existing_store() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    let d = disk.to_str().unwrap();
    let first = tmp.path().join("first.bin");
    // This store is pulled on disk (a Docker volume), the second one in
    // memory.
    let o = populate(&[
        d,
        &f.listed[0].0,
        "-o",
        first.to_str().unwrap(),
        "--store",
        "disk",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("store: pulled on disk"),
        "{}",
        stderr(&o)
    );
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
        "--store",
        "memory",
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
    assert_eq!(summary["store"]["kind"], "memory", "{summary}");
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
    let Some(_serial) = docker_test() else {
        return;
    };
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
    let Some(_serial) = docker_test() else {
        return;
    };
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
    let script = format!(
        "docker run --rm --network none {} /bin/busybox wc -c /big",
        f.big
    );
    for Verified { image, text } in on_each_real_docker(&raw, &script) {
        assert!(
            text.contains(&format!("{} /big", 96 << 20)),
            "{image}:\n{text}"
        );
    }
}

#[test]
fn memory_store_outgrown_is_pulled_again_on_disk() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    let out = tmp.path().join("out.bin");
    // 96 MiB of layers into a 40 MiB tmpfs: the pull runs out of space,
    // and the tool pulls again on disk by itself.
    let o = populate(&[
        disk.to_str().unwrap(),
        &f.big,
        &f.listed[0].0,
        "-o",
        out.to_str().unwrap(),
        "--store",
        "memory",
        "--store-memory-cap",
        "40M",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("do not fit in the store in memory"),
        "{}",
        stderr(&o)
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["store"]["kind"], "disk", "{summary}");
    assert_eq!(summary["store"]["fell_back_to_disk"], true, "{summary}");
    assert_eq!(summary["store"]["memory_cap_bytes"], 40 << 20, "{summary}");
    assert_eq!(summary["images"][1]["id"], f.listed[0].1.as_str());
    assert_eq!(leftovers(), "", "containers or volumes left behind");
    assert_fsck_clean(&out);
    let script = format!(
        "docker images --no-trunc --format 'IMG {{{{.Repository}}}}:{{{{.Tag}}}} {{{{.ID}}}}'\n\
         docker run --rm --network none {} /bin/busybox wc -c /big\n\
         docker run --rm --network none {} /bin/busybox cat /data/a/new /data/b/stays",
        f.big, f.listed[0].0
    );
    for Verified { image, text } in on_each_real_docker(&out, &script) {
        assert!(
            text.contains(&format!("{} /big", 96 << 20)),
            "{image}:\n{text}"
        );
        assert!(text.contains("newstays"), "{image}:\n{text}");
        assert!(
            text.contains(&format!("IMG {} {}", f.listed[0].0, f.listed[0].1)),
            "{image}:\n{text}"
        );
    }
}

/// Local inputs are checked before any engine is contacted: with no engine
/// at all (DOCKER_HOST pointing nowhere), a missing disk, a disk that is not
/// Flatcar's and a bad list line each fail naming themselves. An empty
/// DOCKER_HOST means the default socket, as for docker. Needs no Docker.
#[test]
fn local_inputs_fail_before_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let out = tmp.path().join("out.bin");
    let nowhere = format!("unix://{}/no-engine.sock", tmp.path().display());
    // `populate DISK IMAGES... -o OUT` with DOCKER_HOST=host: its stderr.
    let run_with = |host: &str, disk: &Path, images: &[&std::ffi::OsStr]| -> String {
        let o = Command::new(BIN)
            .arg("populate")
            .arg(disk)
            .args(images)
            .arg("-o")
            .arg(&out)
            .env("DOCKER_HOST", host)
            .output()
            .unwrap();
        assert!(!o.status.success(), "should fail: {}", stderr(&o));
        assert!(!out.exists(), "a failed run left its output");
        stderr(&o)
    };
    let busybox = ["busybox".as_ref()];
    let missing = tmp.path().join("missing.bin");
    let err = run_with(&nowhere, &missing, &busybox);
    assert!(
        err.contains("missing.bin") && !err.contains("Docker engine"),
        "{err}"
    );
    let junk = tmp.path().join("junk.bin");
    fs::write(&junk, vec![0u8; 1 << 20]).unwrap();
    let err = run_with(&nowhere, &junk, &busybox);
    assert!(
        err.contains("no valid GPT") && !err.contains("Docker engine"),
        "{err}"
    );
    let list = tmp.path().join("images.list");
    fs::write(&list, "busybox\n\nnot a reference\n").unwrap();
    let err = run_with(&nowhere, &disk, &["-l".as_ref(), list.as_os_str()]);
    assert!(
        err.contains("line 3") && !err.contains("Docker engine"),
        "{err}"
    );
    // Good local inputs: only now is the engine contacted.
    let err = run_with(&nowhere, &disk, &busybox);
    assert!(err.contains("no-engine.sock"), "{err}");
    if Path::new("/var/run/docker.sock").exists() {
        eprintln!(
            "not checked: a daemon listens on /var/run/docker.sock, which an empty DOCKER_HOST would reach"
        );
        return;
    }
    let err = run_with("", &disk, &busybox);
    assert!(err.contains("unix:///var/run/docker.sock"), "{err}");
}
