//! `flatcar-preload populate` against real Docker: the test dockerd, local
//! registry and dind images of ci/docker-env.sh (run it first; ci/test.sh
//! does). The result is checked by starting each Docker that Debian's
//! suites ship (FP_TARGET_DOCKERS: 26 from stable, the major of Flatcar
//! LTS; 28 or newer from unstable) on the written store and running the
//! fixture images. Without root or that environment every test skips with
//! the reason (and fails instead under CI=true).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

#[path = "populate/node.rs"]
mod node;

#[path = "populate/direct.rs"]
mod direct;
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
    /// crictl, the CRI client (ci/docker-env.sh unpacks it).
    crictl: String,
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
            crictl: var("FP_CRICTL"),
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
    let serial = require_docker_env().then(serial)?;
    temp_at_start();
    Some(serial)
}

/// A directory the unprivileged test user may write to.
fn user_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// The label every run of these tests gives what it makes (`--label`): this
/// test process's, so that what other runs on the engine make (another
/// suite, a bench, a user) is never counted or removed here.
fn test_label() -> &'static str {
    static LABEL: OnceLock<String> = OnceLock::new();
    LABEL.get_or_init(|| format!("fp-test-run={}", std::process::id()))
}

/// The names of the containers and volumes that the runs of these tests
/// left behind, by kind.
fn left_by_tests() -> [(&'static str, String); 2] {
    let filter = format!("label={}", test_label());
    let list = |cmd: &[&str]| {
        let mut a = cmd.to_vec();
        a.extend(["--filter", &filter]);
        docker_out(&a)
    };
    [
        ("container", list(&["ps", "-a", "--format", "{{.Names}}"])),
        ("volume", list(&["volume", "ls", "--format", "{{.Name}}"])),
    ]
}

/// The containers and volumes that runs of the tool (in these tests) left
/// behind.
fn leftovers() -> String {
    let [(_, containers), (_, volumes)] = left_by_tests();
    [containers, volumes]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Removes what runs of these tests left behind (a killed run cannot
/// remove its own).
fn remove_leftovers() {
    for (kind, names) in left_by_tests() {
        for name in names.split_whitespace() {
            docker_out(&[kind, "rm", "-f", name]);
        }
    }
    for dir in temp_left() {
        fs::remove_dir_all(&dir).unwrap();
    }
}

/// The temporary directories of the tool's runs as the test user (the
/// private directory of the export socket) that are there now and were
/// not when these tests started: a run removes its own unless it is
/// killed.
fn temp_left() -> Vec<std::path::PathBuf> {
    let before = temp_at_start();
    temp_dirs()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect()
}

/// What [`temp_left`] found when these tests started (the first
/// [`docker_test`]): other runs', this process does not count.
fn temp_at_start() -> &'static [std::path::PathBuf] {
    static AT_START: OnceLock<Vec<std::path::PathBuf>> = OnceLock::new();
    AT_START.get_or_init(temp_dirs)
}

fn temp_dirs() -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    static UID: OnceLock<u32> = OnceLock::new();
    let uid = *UID.get_or_init(|| {
        let id = run_ok(Command::new("id").args(["-u", &env().test_user]));
        id.trim().parse().unwrap()
    });
    fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("flatcar-preload-")
        })
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .map(|e| e.path())
        .collect()
}

/// A copy of the binary that the test user can reach wherever the
/// checkout lives.
fn user_bin() -> &'static Path {
    static BIN_COPY: OnceLock<(tempfile::TempDir, std::path::PathBuf)> = OnceLock::new();
    let (_, p) = BIN_COPY.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let p = d.path().join("flatcar-preload");
        fs::copy(bin(), &p).unwrap();
        (d, p)
    });
    p
}

/// The tool run with `args` (on the engine of DOCKER_HOST, the tests'),
/// which must succeed: what it printed on stdout.
fn tool(args: &[&str]) -> String {
    let o = Command::new(bin()).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `flatcar-preload populate ARGS` as the unprivileged test user, through
/// the test dockerd, with the local registry reachable as 127.0.0.1:5000.
fn populate_cmd(args: &[&str]) -> Command {
    populate_cmd_with(&[], args)
}

/// `populate_cmd` with more environment (`envs`, e.g. DOCKER_CONFIG, PATH).
fn populate_cmd_with(envs: &[(&str, &str)], args: &[&str]) -> Command {
    let e = env();
    let mut c = Command::new("runuser");
    c.args(["-u", &e.test_user, "--", "env"]);
    // The tests' engine unless `envs` names another (the last wins).
    c.arg(format!("DOCKER_HOST={}", e.docker_host));
    for (k, v) in envs {
        c.arg(format!("{k}={v}"));
    }
    c.arg(user_bin())
        .arg("populate")
        .args(args)
        .args(["--label", test_label()]);
    // The tests' build image and network unless the test gives its own.
    let network = format!("container:{}", e.registry_container);
    for (option, default) in [
        ("--dind-image", &e.dind_image),
        ("--dind-network", &network),
    ] {
        if !args.contains(&option) {
            c.args([option, default]);
        }
    }
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
        let (_copy, m) = mounted_copy(disk);
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
        let mounts = [format!("{}:/var/lib/docker", store.display())];
        let (ok, text) = run_target(image, &mounts, &full);
        assert!(
            ok,
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

/// A writable loop mount of ROOT of a sparse copy of `disk` (the copy's
/// directory first: it must outlive the mount).
fn mounted_copy(disk: &Path) -> (tempfile::TempDir, Mount) {
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
    (copy_dir, m)
}

/// Runs `script` in a container of the target image `image` with the
/// rights its daemons need (no network, cgroups of the host) and the bind
/// `mounts`; whether it succeeded, and what it printed.
fn run_target(image: &str, mounts: &[String], script: &str) -> (bool, String) {
    run_target_on("none", image, mounts, script)
}

/// `run_target` on `network` (`container:fp-registry` reaches the registry).
fn run_target_on(network: &str, image: &str, mounts: &[String], script: &str) -> (bool, String) {
    let name = format!("fp-verify-{}", std::process::id());
    let mut c = Command::new("docker");
    c.env("DOCKER_HOST", &env().docker_host)
        .args(["run", "--rm", "--name", &name, "--network", network])
        .args(["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE"])
        .args(["--security-opt", "seccomp=unconfined"])
        .args(["--security-opt", "apparmor=unconfined"])
        .args(["--security-opt", "systempaths=unconfined"])
        .args(["--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup"]);
    for m in mounts {
        c.args(["-v", m]);
    }
    let out = c.args([image, "sh", "-c", script]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
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
    truth_of_a_run(&[], "socket", &[]);
}

/// The engine as a remote one (a `docker:dind` service beside a CI job):
/// the test dockerd's TLS endpoint on loopback, with DOCKER_TLS_VERIFY and
/// the client certificates of DOCKER_CERT_PATH (ci/docker-env.sh made
/// them). The export takes the attach stream, and its result passes the
/// same truth checks. Certificates that do not fit fail, naming them.
#[test]
fn remote_engine_over_tls() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let tls = tls_env();
    let envs: Vec<(&str, &str)> = tls.iter().map(|(k, v)| (*k, v.as_str())).collect();
    truth_of_a_run(&envs, "attach", &[]);

    // A CA that did not sign the engine's certificate, and a client
    // certificate from a CA the engine does not trust.
    let (tmp, disk, before, out) = disk_for_run("small");
    let (d, o_) = (disk.to_str().unwrap(), out.to_str().unwrap());
    let theirs = Path::new(&tls[2].1);
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    let ssl = |args: &[&str]| {
        run_ok(Command::new("openssl").args(args).current_dir(&other));
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=another CA",
    ]);
    for (name, ca, cert) in [("wrong-ca", true, false), ("wrong-cert", false, true)] {
        let dir = tmp.path().join(name);
        fs::create_dir(&dir).unwrap();
        for f in ["ca.pem", "cert.pem", "key.pem"] {
            fs::copy(theirs.join(f), dir.join(f)).unwrap();
        }
        if ca {
            fs::copy(other.join("ca.pem"), dir.join("ca.pem")).unwrap();
        }
        if cert {
            fs::copy(other.join("ca.pem"), dir.join("cert.pem")).unwrap();
            fs::copy(other.join("ca-key.pem"), dir.join("key.pem")).unwrap();
        }
        readable_by_all(&dir);
        let path = dir.to_str().unwrap();
        let mut envs = envs.clone();
        envs[2].1 = path;
        let o = populate_cmd_with(&envs, &[d, &fixtures().listed[0].0, "-o", o_])
            .output()
            .unwrap();
        let want = format!(
            "cannot reach the Docker engine at {} with the certificates of {path}",
            tls[0].1
        );
        assert_clean_failure(&o, &disk, before, &out, &want);
    }
}

/// The engine reached over ssh, as `docker -H ssh://HOST` reaches one: an
/// sshd of the test's own lets the test user in with a key (named in its
/// ~/.ssh/config, as a user's would be) and runs `docker system
/// dial-stdio` there against the test dockerd. The export takes the
/// attach stream, and the result passes the truth checks. A port in the
/// address (which the ssh transport cannot pass) is refused, saying what
/// to do instead.
#[test]
fn remote_engine_over_ssh() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let ssh = SshEngine::start();
    let host = "ssh://fp-ssh-engine";
    truth_of_a_run(&[("DOCKER_HOST", host), ("HOME", &ssh.home)], "attach", &[]);

    let (_tmp, disk, before, out) = disk_for_run("small");
    let (d, o_) = (disk.to_str().unwrap(), out.to_str().unwrap());
    let with_port = format!("ssh://{}@127.0.0.1:{}", env().test_user, ssh.port);
    let envs = [("DOCKER_HOST", with_port.as_str()), ("HOME", &ssh.home)];
    let o = populate_cmd_with(&envs, &[d, &fixtures().listed[0].0, "-o", o_])
        .output()
        .unwrap();
    let want = "a port in an ssh:// address is not supported; give it in ~/.ssh/config";
    assert_clean_failure(&o, &disk, before, &out, want);
}

/// An sshd on loopback for [`remote_engine_over_ssh`], and the test user's
/// ssh configuration for it (Host fp-ssh-engine); all removed on drop.
struct SshEngine {
    sshd: std::process::Child,
    port: u16,
    /// The test user's home.
    home: String,
    _dir: tempfile::TempDir,
}

impl SshEngine {
    fn start() -> SshEngine {
        let e = env();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // sshd reads the authorized keys as the user.
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        for key in ["host_key", "client_key"] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(d.join(key)),
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        fs::write(
            d.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_key\n\
                 AuthorizedKeysFile {d}/client_key.pub\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPidFile none\n\
                 AllowUsers {user}\nSetEnv DOCKER_HOST={host}\n",
                d = d.display(),
                user = e.test_user,
                host = e.docker_host,
            ),
        )
        .unwrap();
        // Its privilege separation directory.
        fs::create_dir_all("/run/sshd").unwrap();
        let sshd = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let home = run_ok(Command::new("getent").args(["passwd", &e.test_user]))
            .trim()
            .split(':')
            .nth(5)
            .unwrap()
            .to_string();
        let ssh_dir = Path::new(&home).join(".ssh");
        fs::create_dir_all(&ssh_dir).unwrap();
        fs::copy(d.join("client_key"), ssh_dir.join("fp-ssh-engine-key")).unwrap();
        fs::write(
            ssh_dir.join("config"),
            format!(
                "Host fp-ssh-engine\n  HostName 127.0.0.1\n  Port {port}\n  \
                 IdentityFile ~/.ssh/fp-ssh-engine-key\n  IdentitiesOnly yes\n  \
                 StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            ),
        )
        .unwrap();
        run_ok(
            Command::new("chown")
                .args(["-R", &format!("{}:", e.test_user)])
                .arg(&ssh_dir),
        );
        fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(
            ssh_dir.join("fp-ssh-engine-key"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let engine = SshEngine {
            sshd,
            port,
            home,
            _dir: dir,
        };
        // Up when the test user gets the engine's version through it.
        let start = Instant::now();
        loop {
            let o = Command::new("runuser")
                .args([
                    "-u",
                    &e.test_user,
                    "--",
                    "env",
                    &format!("HOME={}", engine.home),
                ])
                .args([
                    "ssh",
                    "fp-ssh-engine",
                    "docker",
                    "version",
                    "-f",
                    "{{.Server.Version}}",
                ])
                .output()
                .unwrap();
            if o.status.success() {
                break engine;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the test user cannot reach the engine over ssh: {}",
                stderr(&o)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for SshEngine {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        let ssh_dir = Path::new(&self.home).join(".ssh");
        let _ = fs::remove_file(ssh_dir.join("config"));
        let _ = fs::remove_file(ssh_dir.join("fp-ssh-engine-key"));
    }
}

/// DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH for the test
/// dockerd's TLS endpoint.
fn tls_env() -> [(&'static str, String); 3] {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: run ci/docker-env.sh"))
    };
    [
        ("DOCKER_HOST", var("FP_DOCKER_TLS_HOST")),
        ("DOCKER_TLS_VERIFY", "1".into()),
        ("DOCKER_CERT_PATH", var("FP_DOCKER_CERT_PATH")),
    ]
}

/// populate of the two listed fixtures with `envs` (the engine and how to
/// reach it): the summary (exported via `via`), the input, what is left,
/// the ext4, what must not travel, the capability with a newline byte, and
/// every target Docker running the images.
fn truth_of_a_run(envs: &[(&str, &str)], via: &str, more: &[&str]) {
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
    let o = populate_cmd_with(
        envs,
        &[
            disk.to_str().unwrap(),
            "-l",
            list.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--json",
            "--selinux",
            "on",
        ]
        .iter()
        .chain(more)
        .copied()
        .collect::<Vec<_>>(),
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "populate failed: {}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json output");
    assert_eq!(summary["images"].as_array().unwrap().len(), 2);
    assert_eq!(summary["images"][0]["id"], f.listed[0].1.as_str());
    assert!(summary["layers"].as_u64().unwrap() >= 3, "{summary}");
    assert_eq!(summary["export_via"], via, "{summary}");
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

    // Every inode labelled as setfiles with Flatcar's rules would.
    let labelled = assert_labels_as_matchpathcon(&out, &["/var/lib/docker"], STORE_FILE_CONTEXTS);
    assert!(labelled == 0 || labelled > 50, "{labelled} inodes checked");

    // Each Docker of FP_TARGET_DOCKERS (Flatcar LTS's major and newer) on
    // the labelled store.
    let script = docker_script(f);
    for Verified { image, text } in on_each_real_docker(&out, &script) {
        assert_truth(&image, &text, f, [&f.listed[0].1, &f.listed[1].1]);
    }
}

/// The fixture images listed and run by docker (`assert_truth` reads what
/// it prints).
fn docker_script(f: &Fixtures) -> String {
    r#"
        docker images --no-trunc --format 'IMG {{.Repository}}:{{.Tag}} {{.ID}}'
        docker run --rm --network none LAYERS sh -c 'echo A=$(ls -A /data/a | tr "\n" " "); echo B=$(ls -A /data/b | tr "\n" " "); echo CAT=$(cat /data/a/new); echo LINK=$(cat /data/link); echo H=$(stat -c "%i %h" /data/hard1) $(stat -c "%i %h" /data/hard2); echo ODD=$(cat "/data/sp ace ünï")'
        docker run --rm --network none --user 1000 LAYERS /capbin/grep CapPrm /proc/self/status
        docker run --rm --network none --user 1000 LAYERS /capbin/cat /proc/self/status | grep CapPrm | sed 's/^/NL/'
        docker run --rm --network none SECOND /bin/busybox cat /second; echo
    "#
    .replace("LAYERS", &f.listed[0].0)
    .replace("SECOND", &f.listed[1].0)
}

/// What the fixture images show when run by one target Docker, which
/// lists them with `ids` (their config digests on Docker's store, their
/// manifests' on containerd's).
fn assert_truth(image: &str, text: &str, f: &Fixtures, ids: [&str; 2]) {
    let mut images: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("IMG "))
        .map(str::to_string)
        .collect();
    images.sort();
    let second_tag = f.listed[1].0.split('@').next().unwrap();
    let mut want = vec![
        format!("{} {}", f.listed[0].0, ids[0]),
        format!("{second_tag} {}", ids[1]),
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
    assert_runs(image, text);
}

/// What the fixture images print when run (the script of `populate_truth`
/// or its containerd equivalent): opaque directories, whiteouts, hard
/// links, odd names and file capabilities as the layers have them.
fn assert_runs(image: &str, text: &str) {
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

/// A copy of the `layout` fixture in a directory the test user may write
/// to, for a run that may fail: the directory, the disk, its digest and
/// the OUTPUT path (not made).
fn disk_for_run(
    layout: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    u64,
    std::path::PathBuf,
) {
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", layout], tmp.path());
    let before = file_digest(&disk);
    let out = tmp.path().join("out.bin");
    (tmp, disk, before, out)
}

/// A failed run: clear error, no output, input unchanged, nothing left in
/// Docker.
fn assert_clean_failure(o: &Output, disk: &Path, before: u64, out: &Path, want: &str) {
    assert_clean_failure_but_left(o, disk, before, out, want);
    assert_eq!(leftovers(), "", "containers or volumes left behind");
}

#[test]
fn populate_failures() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let (tmp, disk, before, out) = disk_for_run("small");
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
fn interrupt_at(phase: &str, images: &[&str]) {
    if !cfg!(feature = "test-hooks") {
        skip("built without --features test-hooks, which pauses a run at a phase");
        return;
    }
    let (_tmp, disk, before, out) = disk_for_run("current");
    let mut args = vec![disk.to_str().unwrap()];
    args.extend(images);
    args.extend(["-o", out.to_str().unwrap()]);
    let o = signal_at(&args, phase, "INT");
    assert_clean_failure(&o, &disk, before, &out, "interrupted");
}

/// Runs populate with `args` until it pauses at `phase`, then sends it
/// `signal` (INT, KILL); what it printed and how it ended.
fn signal_at(args: &[&str], phase: &str, signal: &str) -> Output {
    paused_at(populate_cmd(args), phase, |child, _| {
        // The tool is runuser's child (runuser would turn SIGINT into
        // SIGTERM).
        let st = Command::new("pkill")
            .args([&format!("-{signal}"), "-P", &child.to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    })
}

/// Runs `cmd` (populate) until it pauses at `phase` (a test hook), then
/// calls `act` with its process ID and what it printed so far, and lets it
/// go on (unless `act` stopped it); what it printed and how it ended.
fn paused_at(mut cmd: Command, phase: &str, act: impl FnOnce(u32, &str)) -> Output {
    let resume = tempfile::tempdir().unwrap();
    let resume_file = resume.path().join("resume");
    let mut child = cmd
        .env("FLATCAR_PRELOAD_PAUSE_AT", phase)
        .env("FLATCAR_PRELOAD_RESUME_FILE", &resume_file)
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
    act(child.id(), &seen);
    fs::write(&resume_file, b"").unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    Output {
        status,
        stdout: vec![],
        stderr: format!("{seen}{rest}").into_bytes(),
    }
}

/// Two runs at once on one engine, one on a cache: both succeed, each
/// result holds its own image and verifies, and neither leaves anything
/// behind or takes the other's containers, volumes or cache.
#[test]
fn two_runs_at_once() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let d = disk.to_str().unwrap();
    let cache = format!("fptest-two-{}", std::process::id());
    let (out1, out2) = (tmp.path().join("one.bin"), tmp.path().join("two.bin"));
    let (o1, o2) = (out1.to_str().unwrap(), out2.to_str().unwrap());
    let spawn = |args: &[&str]| {
        populate_cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let one = spawn(&[d, &f.listed[0].0, "-o", o1, "--cache", &cache]);
    let two = spawn(&[d, &f.listed[1].0, "-o", o2]);
    let (one, two) = (
        one.wait_with_output().unwrap(),
        two.wait_with_output().unwrap(),
    );
    assert!(
        one.status.success(),
        "the run on the cache: {}",
        stderr(&one)
    );
    assert!(two.status.success(), "the other run: {}", stderr(&two));
    for (out, id) in [(&out1, &f.listed[0].1), (&out2, &f.listed[1].1)] {
        assert_fsck_clean(out);
        assert_eq!(
            stored_ids(out),
            std::slice::from_ref(id),
            "{}",
            out.display()
        );
        tool(&["verify", out.to_str().unwrap()]);
    }
    assert_eq!(leftovers(), "", "containers or volumes left behind");
    assert!(tool(&["cache", "ls"]).contains(&cache));
    tool(&["cache", "rm", &cache]);
}

/// `--in-place` killed (SIGKILL, nothing cleaned up) at each point where
/// it writes: while growing (the partition grown, not yet its filesystem),
/// before the first entry of the store and part way through it. Each time
/// ROOT carries the mark of the unfinished run, which `inspect` shows,
/// `verify` fails on, and a new `populate` or `unpack` refuses before
/// contacting the engine until `--force`; killed before writing (during
/// the pull), the image is as it was.
#[test]
fn in_place_killed_is_never_taken_for_finished() {
    let Some(_serial) = docker_test() else {
        return;
    };
    if !cfg!(feature = "test-hooks") {
        skip("built without --features test-hooks, which pauses a run at a phase");
        return;
    }
    let image = fixtures().listed[0].0.as_str();
    let tmp = user_dir();
    for point in ["pull", "grow", "write", "mid-write"] {
        let disk = disk_copy(&["--layout", "current"], tmp.path());
        // The tool runs as the test user.
        fs::set_permissions(&disk, fs::Permissions::from_mode(0o666)).unwrap();
        let d = disk.to_str().unwrap();
        let before = file_digest(&disk);
        let o = signal_at(&[d, image, "--in-place", "--grow", "+64M"], point, "KILL");
        assert!(!o.status.success(), "{point}: {}", stderr(&o));
        remove_leftovers();
        let untouched = file_digest(&disk) == before;
        let inspect = Command::new(bin()).args(["inspect", d]).output().unwrap();
        let verify = Command::new(bin()).args(["verify", d]).output().unwrap();
        let again = populate(&[d, image, "--in-place", "--merge"]);
        if point == "pull" {
            assert!(untouched, "killed before writing, yet changed");
            assert!(!String::from_utf8_lossy(&inspect.stdout).contains("UNFINISHED"));
            assert!(again.status.success(), "{}", stderr(&again));
            continue;
        }
        // Listed with the mark, or refused naming it when what was half
        // written cannot be read.
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&inspect.stdout),
            stderr(&inspect)
        );
        assert!(
            shown.contains("UNFINISHED: an interrupted run")
                || shown.contains("left unfinished by an interrupted run"),
            "{point}: {shown}"
        );
        assert!(!verify.status.success(), "{point}: verify passed");
        assert!(
            stderr(&verify).contains("left unfinished"),
            "{point}: {}",
            stderr(&verify)
        );
        let refused = "was left unfinished by an interrupted run";
        assert!(
            !again.status.success() && stderr(&again).contains(refused),
            "{point}: {}",
            stderr(&again)
        );
        assert!(
            !stderr(&again).contains("pull"),
            "{point}: {}",
            stderr(&again)
        );
        let tar = tmp.path().join("one.tar");
        fs::write(&tar, layer(&[L::File("f", b"x", 0o644)])).unwrap();
        let o = Command::new(bin())
            .args(["unpack", d, tar.to_str().unwrap(), "--in-place"])
            .output()
            .unwrap();
        assert!(
            !o.status.success() && stderr(&o).contains(refused),
            "{point}: {}",
            stderr(&o)
        );
        assert_eq!(leftovers(), "", "{point}");
        if point == "grow" {
            // Only the mark and a grown partition: a forced run finishes
            // the job and removes the mark.
            let o = populate(&[d, image, "--in-place", "--force"]);
            assert!(o.status.success(), "{}", stderr(&o));
            assert!(stderr(&o).contains("writing into it anyway (--force)"));
            assert_fsck_clean(&disk);
            tool(&["verify", d]);
            assert!(!tool(&["inspect", d]).contains("UNFINISHED"));
        }
    }
}

#[test]
fn interrupted_during_pull() {
    let Some(_serial) = docker_test() else {
        return;
    };
    interrupt_at("pull", &[&fixtures().listed[0].0]);
}

/// Ctrl-C while containerd's images are pulled: as for Docker's.
#[test]
fn interrupted_during_containerd_pull() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let layers = &fixtures().listed[0].0;
    interrupt_at(
        "pull",
        &["--containerd-image", layers, "--sandbox-image", "none"],
    );
}

#[test]
fn interrupted_during_write() {
    let Some(_serial) = docker_test() else {
        return;
    };
    interrupt_at("write", &[&fixtures().listed[0].0]);
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
    assert!(stderr(&o).contains("pulled on disk"), "{}", stderr(&o));
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
    assert_eq!(summary["stores"][0]["kind"], "memory", "{summary}");
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
    // Named by its digest: the populate's verify checks the content store
    // of a copied root too.
    let blob = format!(
        "io.containerd.content.v1.content/blobs/sha256/{}",
        &sha256(b"blob")[7..]
    );
    fs::write(src.join(&blob), b"blob").unwrap();
    fs::create_dir_all(src.join("io.containerd.metadata.v1.bolt")).unwrap();
    fs::write(src.join("io.containerd.metadata.v1.bolt/other"), b"db").unwrap();
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
        view.read("/var/lib/containerd/io.containerd.metadata.v1.bolt/other")
            .unwrap(),
        b"db"
    );
    assert_eq!(
        view.read(format!("/var/lib/containerd/{blob}").as_str())
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
    assert_eq!(summary["stores"][0]["kind"], "disk", "{summary}");
    assert_eq!(summary["stores"][0]["fell_back_to_disk"], true, "{summary}");
    assert_eq!(
        summary["stores"][0]["memory_cap_bytes"],
        40 << 20,
        "{summary}"
    );
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
        let o = Command::new(bin())
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
    // Registry settings are local inputs too.
    let missing_cfg = tmp.path().join("no-config.json");
    let err = run_with(
        &nowhere,
        &disk,
        &[
            "busybox".as_ref(),
            "--registry-config".as_ref(),
            missing_cfg.as_os_str(),
        ],
    );
    assert!(
        err.contains("no-config.json") && !err.contains("Docker engine"),
        "{err}"
    );
    let helper_cfg = tmp.path().join("helper.json");
    fs::write(&helper_cfg, r#"{"credsStore":"fp-absent-helper"}"#).unwrap();
    let err = run_with(
        &nowhere,
        &disk,
        &[
            "busybox".as_ref(),
            "--registry-config".as_ref(),
            helper_cfg.as_os_str(),
        ],
    );
    assert!(
        err.contains("docker-credential-fp-absent-helper")
            && err.contains("PATH")
            && !err.contains("Docker engine"),
        "{err}"
    );
    let err = run_with(
        &nowhere,
        &disk,
        &[
            "busybox".as_ref(),
            "--registry-certs".as_ref(),
            missing_cfg.as_os_str(),
        ],
    );
    assert!(
        err.contains("--registry-certs") && !err.contains("Docker engine"),
        "{err}"
    );
    for (flag, bad) in [
        ("--registry-mirror", "mirror.local"),
        ("--insecure-registry", "http://r.local"),
        ("--platform", "arm64"),
    ] {
        let err = run_with(
            &nowhere,
            &disk,
            &["busybox".as_ref(), flag.as_ref(), bad.as_ref()],
        );
        assert!(err.contains(bad) && !err.contains("Docker engine"), "{err}");
    }
    // A ROOT with a containerd store (one containerd 2.1 wrote): a --merge
    // that cannot add to it is refused before anything is pulled.
    let with_store = tmp.path().join("with-store.bin");
    fs::copy(&disk, &with_store).unwrap();
    let store = manifest_dir().join("tests/fixtures/containerd-store.tar.gz");
    tool(&[
        "unpack",
        with_store.to_str().unwrap(),
        store.to_str().unwrap(),
        "--target",
        "/var/lib/containerd",
        "--in-place",
    ]);
    let image = ["--containerd-image", "busybox"];
    for (args, want) in [
        (&image[..], "pass --merge"),
        (
            &[&image[..], &["--merge", "--containerd-version", "1.7"]].concat(),
            "(metadata schema 4)",
        ),
        (
            &[&image[..], &["--merge", "--cache", "c"]].concat(),
            "leave out --cache",
        ),
        (
            &["busybox", "--merge", "--containerd", "/"],
            "a whole containerd root",
        ),
    ] {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let err = run_with(&nowhere, &with_store, &args);
        assert!(
            err.contains("/var/lib/containerd") || err.contains("containerd store"),
            "{err}"
        );
        assert!(
            err.contains(want) && !err.contains("Docker engine"),
            "{args:?}: {err}"
        );
    }
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

// ---- faults: the engine, the build container, the registry, growing -------

/// The test hooks pause a run at a phase: without them (`--features
/// test-hooks`, as ci/test.sh builds) the fault tests that need one skip,
/// except in CI.
fn hooks_built() -> bool {
    cfg!(feature = "test-hooks")
        || !skip("built without --features test-hooks, which pauses a run at a phase")
}

/// Fails unless the run `o` ended within `limit` seconds (`took`).
fn assert_within(o: &Output, took: Duration, limit: u64) {
    assert!(
        took < Duration::from_secs(limit),
        "took {took:?}, more than {limit} s: {}",
        stderr(o)
    );
}

/// The build container named on the tool's stderr ("starting build
/// container NAME from IMAGE").
fn build_container(printed: &str) -> String {
    printed
        .lines()
        .find_map(|l| l.strip_prefix("starting build container "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no build container named in:\n{printed}"))
        .to_string()
}

/// A build image whose daemon does not start: `dockerd` and `containerd`
/// exit at once with 3 after a line on stderr (fp-bad-dind:exits), or the
/// image has no dockerd at all (fp-bad-dind:none). Built once from the
/// tests' dind image, without a network.
fn bad_build_image(which: &str) -> String {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let exits = dir.path().join("exits");
        fs::create_dir(&exits).unwrap();
        fs::write(
            exits.join("daemon"),
            "#!/bin/sh\necho \"daemon: no storage driver works here\" >&2\nexit 3\n",
        )
        .unwrap();
        fs::set_permissions(exits.join("daemon"), fs::Permissions::from_mode(0o755)).unwrap();
        let base = &env().dind_image;
        fs::write(
            exits.join("Dockerfile"),
            format!("FROM {base}\nCOPY daemon /usr/local/sbin/dockerd\nCOPY daemon /usr/local/bin/containerd\n"),
        )
        .unwrap();
        let none = dir.path().join("none");
        fs::create_dir(&none).unwrap();
        fs::write(
            none.join("Dockerfile"),
            format!("FROM {base}\nRUN rm $(command -v dockerd)\n"),
        )
        .unwrap();
        for (tag, d) in [("exits", &exits), ("none", &none)] {
            let name = format!("fp-bad-dind:{tag}");
            docker_out(&["build", "-q", "-t", &name, d.to_str().unwrap()]);
        }
    });
    format!("fp-bad-dind:{which}")
}

/// A build container whose daemon exits at once, or that has none, fails
/// the run within seconds (not after the readiness wait), naming the
/// container, its image and the daemon's last words; for both stores.
#[test]
fn build_container_that_does_not_start() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let image = fixtures().listed[0].0.as_str();
    let (_tmp, disk, before, out) = disk_for_run("small");
    let (d, o_) = (disk.to_str().unwrap(), out.to_str().unwrap());
    let exits = bad_build_image("exits");
    let none = bad_build_image("none");
    let cases: [(&[&str], &str); 3] = [
        (
            &[d, image, "-o", o_, "--dind-image", &exits],
            "the inner dockerd exited (code 3) before it answered",
        ),
        (
            &[d, image, "-o", o_, "--dind-image", &none],
            "starting dockerd in the dind container: No such file",
        ),
        (
            &[
                d,
                "--containerd-image",
                image,
                "--sandbox-image",
                "none",
                "-o",
                o_,
                "--containerd-build-image",
                &exits,
            ],
            "containerd exited (code 3) before it answered",
        ),
    ];
    for (args, want) in cases {
        let start = Instant::now();
        let o = populate(args);
        let err = stderr(&o);
        assert_within(&o, start.elapsed(), 30);
        assert_clean_failure(&o, &disk, before, &out, want);
        let container = build_container(&err);
        assert!(
            err.contains(&format!("the daemon of the build container {container}"))
                && err.contains("did not start"),
            "{err}"
        );
        if args.contains(&exits.as_str()) {
            assert!(
                err.contains("daemon: no storage driver works here"),
                "{err}"
            );
        }
    }
}

/// Holds every connection it accepts and never answers: a registry that
/// stalls. Its address.
fn stalling_registry() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = vec![];
        for c in listener.incoming() {
            held.push(c);
        }
    });
    addr
}

/// A registry that accepts and never answers: the pull fails after
/// `--pull-timeout` without progress, naming the registry and the option,
/// for both stores, with nothing left behind.
#[test]
fn registry_that_stalls_times_out() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let stall = stalling_registry();
    let image = format!("{stall}/fp/stalls:1");
    let (_tmp, disk, before, out) = disk_for_run("small");
    let (d, o_) = (disk.to_str().unwrap(), out.to_str().unwrap());
    // On the host's network, where the stalling registry listens.
    let common = [
        "-o",
        o_,
        "--dind-network",
        "host",
        "--insecure-registry",
        &stall,
        "--pull-timeout",
        "3s",
    ];
    let docker: Vec<&str> = [d, &image].into_iter().chain(common).collect();
    let containerd: Vec<&str> = [d, "--containerd-image", &image, "--sandbox-image", "none"]
        .into_iter()
        .chain(common)
        .collect();
    for args in [docker, containerd] {
        let start = Instant::now();
        let o = populate(&args);
        let want =
            format!("no progress for 3 s: registry {stall} stopped answering (--pull-timeout)");
        assert_within(&o, start.elapsed(), 60);
        assert_clean_failure(&o, &disk, before, &out, &want);
        assert!(stderr(&o).contains(&image), "{}", stderr(&o));
    }
}

/// resize2fs killed while it grows ROOT (a resize2fs first in PATH that
/// kills itself): the run fails naming it; to an OUTPUT, nothing is left
/// and the input is as it was; in place, ROOT is a clean filesystem that
/// carries the mark of the unfinished run, which a next run refuses.
#[test]
fn growing_fails_when_resize2fs_is_killed() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let image = fixtures().listed[0].0.as_str();
    let tmp = user_dir();
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::write(bin.join("resize2fs"), "#!/bin/sh\nkill -KILL $$\n").unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(bin.join("resize2fs"), fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        bin.display()
    );
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o666)).unwrap();
    let before = file_digest(&disk);
    let out = tmp.path().join("out.bin");
    let (d, o_) = (disk.to_str().unwrap(), out.to_str().unwrap());
    let with_path = [("PATH", path.as_str())];

    let o = populate_cmd_with(&with_path, &[d, image, "-o", o_, "--grow", "+64M"])
        .output()
        .unwrap();
    assert_clean_failure(&o, &disk, before, &out, "resize2fs");
    assert!(
        stderr(&o).contains("signal 9") || stderr(&o).contains("killed"),
        "{}",
        stderr(&o)
    );

    let o = populate_cmd_with(&with_path, &[d, image, "--in-place", "--grow", "+64M"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resize2fs"), "{}", stderr(&o));
    assert_eq!(leftovers(), "");
    assert_fsck_clean(&disk);
    assert!(tool(&["inspect", d]).contains("UNFINISHED: an interrupted run"));
    let again = populate(&[d, image, "--in-place", "--merge"]);
    assert!(
        !again.status.success()
            && stderr(&again).contains("was left unfinished by an interrupted run"),
        "{}",
        stderr(&again)
    );
}

/// The build container killed while its store is exported (the stream
/// cut part way): the run fails saying the container was killed; to an
/// OUTPUT nothing is left; in place ROOT is a clean filesystem marked
/// unfinished.
#[test]
fn export_cut_when_the_build_container_is_killed() {
    let Some(_serial) = docker_test() else {
        return;
    };
    if !hooks_built() {
        return;
    }
    // 96 MiB of layer: more than the pipes hold while the writer waits.
    let image = fixtures().big.as_str();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o666)).unwrap();
    let before = file_digest(&disk);
    let out = tmp.path().join("out.bin");
    let (d, o_) = (disk.to_str().unwrap(), out.to_str().unwrap());
    let kill = |_: u32, printed: &str| {
        docker_out(&["kill", &build_container(printed)]);
    };
    let o = paused_at(populate_cmd(&[d, image, "-o", o_]), "mid-write", kill);
    let killed = "is exited with code 137 (killed): exporting the store /var/lib/docker";
    assert_clean_failure(&o, &disk, before, &out, killed);

    let o = paused_at(populate_cmd(&[d, image, "--in-place"]), "mid-write", kill);
    assert!(
        !o.status.success() && stderr(&o).contains(killed),
        "{}",
        stderr(&o)
    );
    assert_eq!(leftovers(), "");
    assert_fsck_clean(&disk);
    assert!(tool(&["inspect", d]).contains("UNFINISHED: an interrupted run"));
}

/// The test dockerd stopped while a run pulls, and while it exports: the
/// run fails saying that the engine no longer answers, names what it could
/// not remove (and how), leaves no OUTPUT and the input as it was. Once
/// the engine is back, what is left of the run is exactly what it named.
#[test]
fn engine_stopped_during_pull_and_export() {
    let Some(_serial) = docker_test() else {
        return;
    };
    if !hooks_built() {
        return;
    }
    let (_tmp, disk, before, out) = disk_for_run("current");
    let (d, o_) = (disk.to_str().unwrap(), out.to_str().unwrap());
    let f = fixtures();
    for (phase, image) in [("pull", &f.listed[0].0), ("mid-write", &f.big)] {
        // On disk: a volume too, which must be named.
        let cmd = populate_cmd(&[d, image, "-o", o_, "--store", "disk"]);
        let o = paused_at(cmd, phase, |_, _| stop_test_dockerd());
        restart_test_dockerd();
        let err = stderr(&o);
        let want = format!(
            "the Docker engine at {} no longer answers",
            env().docker_host
        );
        assert_clean_failure_but_left(&o, &disk, before, &out, &want);
        let named: Vec<&str> = err
            .lines()
            .find_map(|l| l.split_once("may be left on the engine; remove them with: "))
            .map(|(_, cmds)| {
                cmds.split("; ")
                    .filter_map(|c| c.split(' ').next_back())
                    .collect()
            })
            .unwrap_or_else(|| panic!("{phase}: nothing named:\n{err}"));
        let mut named: Vec<String> = named.iter().map(|s| s.to_string()).collect();
        let mut left: Vec<String> = leftovers().lines().map(str::to_string).collect();
        named.sort();
        left.sort();
        assert_eq!(
            left, named,
            "{phase}: what is left is not what was named:\n{err}"
        );
        assert_eq!(named.len(), 2, "{phase}: a container and a volume:\n{err}");
        remove_leftovers();
        assert_eq!(leftovers(), "");
    }
}

/// As [`assert_clean_failure`], except for what is left in the engine
/// (which went away, and is checked by the caller).
fn assert_clean_failure_but_left(o: &Output, disk: &Path, before: u64, out: &Path, want: &str) {
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
    assert_eq!(
        temp_left(),
        Vec::<std::path::PathBuf>::new(),
        "temporary files left behind"
    );
}

/// Stops the test dockerd (as `systemctl stop docker` would: SIGTERM, and
/// wait until it has exited).
fn stop_test_dockerd() {
    let pid = fs::read_to_string("/run/fp-docker/dockerd.pid").unwrap();
    let pid = pid.trim();
    assert!(Command::new("kill")
        .args(["-TERM", pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "dockerd did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the test dockerd and its registry again (ci/docker-env.sh, which
/// reuses everything it made).
fn restart_test_dockerd() {
    let o = Command::new("bash")
        .arg(manifest_dir().join("ci/docker-env.sh"))
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "ci/docker-env.sh: {}", stderr(&o));
}

// ---- private registries (TLS, logins) and platforms -------------------------

/// Runs `populate ARGS` as the test user with extra environment `envs`
/// (e.g. DOCKER_CONFIG, PATH).
fn populate_env(envs: &[(&str, &str)], args: &[&str]) -> Output {
    populate_cmd_with(envs, args).output().unwrap()
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A registry behind TLS (a CA made here) and basic auth, serving the same
/// storage as the test registry. It shares the test registry's network
/// namespace, as the dinds of the tests do, and is reached at that
/// namespace's bridge address: not a loopback one, which Docker would
/// treat as insecure (no certificate check).
struct TlsRegistry {
    /// host:port as the dind reaches it.
    host: String,
    dir: tempfile::TempDir,
    name: String,
}

const REG_USER: &str = "fp-user";
/// A password with a ':' (auth is base64("user:password")) and a marker
/// to search for.
const REG_PASSWORD: &str = "PW-7q2:x9Zk-secret";

impl TlsRegistry {
    fn start() -> TlsRegistry {
        let e = env();
        let ip = docker_out(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &e.registry_container,
        ]);
        assert!(!ip.is_empty() && !ip.starts_with("127."), "{ip}");
        let host = format!("{ip}:5443");
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        let ssl = |args: &[&str]| {
            run_ok(Command::new("openssl").args(args).current_dir(d));
        };
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=flatcar-preload test CA",
        ]);
        ssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=fp-tls-registry",
        ]);
        fs::write(d.join("san.ext"), format!("subjectAltName=IP:{ip}\n")).unwrap();
        ssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let hash = bcrypt::hash(REG_PASSWORD, 5).unwrap();
        fs::write(d.join("htpasswd"), format!("{REG_USER}:{hash}\n")).unwrap();
        fs::write(
            d.join("config.yml"),
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/docker-registry\n\
             http:\n  addr: :5443\n  tls:\n    certificate: /fp-tls/server.crt\n    key: /fp-tls/server.key\n\
             auth:\n  htpasswd:\n    realm: fp-realm\n    path: /fp-tls/htpasswd\n",
        )
        .unwrap();
        for f in ["server.key", "ca.key"] {
            fs::set_permissions(d.join(f), fs::Permissions::from_mode(0o644)).unwrap();
        }
        let name = "fp-tls-registry".to_string();
        let _ = Command::new("docker")
            .env("DOCKER_HOST", &e.docker_host)
            .args(["rm", "-f", &name])
            .output();
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &format!("container:{}", e.registry_container),
            "-v",
            "fp-registry-data:/var/lib/docker-registry",
            "-v",
            &format!("{}:/fp-tls:ro", d.display()),
            &e.dind_image,
            "docker-registry",
            "serve",
            "/fp-tls/config.yml",
        ]);
        let reg = TlsRegistry { host, dir, name };
        // Up when it answers TLS with a 401 (it wants a login).
        let url = format!("https://{}/v2/", reg.host);
        let ca = reg.dir.path().join("ca.crt");
        for _ in 0..100 {
            let o = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(&ca)
                .arg(&url)
                .output()
                .unwrap();
            if o.stdout == b"401" {
                return reg;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the TLS registry does not answer on {url}: {}",
            docker_out(&["logs", "--tail", "20", &reg.name])
        );
    }

    /// A certs.d directory with this registry's CA.
    fn certs_d(&self, under: &Path) -> std::path::PathBuf {
        let certs = under.join("certs.d");
        fs::create_dir_all(certs.join(&self.host)).unwrap();
        fs::copy(
            self.dir.path().join("ca.crt"),
            certs.join(&self.host).join("ca.crt"),
        )
        .unwrap();
        certs
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .env("DOCKER_HOST", &env().docker_host)
            .args(["rm", "-f", &self.name])
            .output();
    }
}

fn base64(b: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | (x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Whether `needle` occurs in the bytes of ROOT of `disk`.
fn root_holds(disk: &Path, needle: &[u8]) -> bool {
    let r = root(disk);
    let mut f = fs::File::open(disk).unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(r.offset)).unwrap();
    let mut f = f.take(r.size);
    let mut buf = vec![0u8; 8 << 20];
    let mut carry: Vec<u8> = vec![];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return false;
        }
        let mut hay = std::mem::take(&mut carry);
        hay.extend_from_slice(&buf[..n]);
        if hay.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        carry = hay[hay.len().saturating_sub(needle.len())..].to_vec();
    }
}

/// What Docker shows of the run labelled `run_label` that started at
/// `since` (unix seconds): `docker inspect` of its containers, its events
/// (which name each exec's command line) and the inspect of every exec
/// (finished execs are no longer listed by their container, but the
/// daemon keeps them for inspection; their IDs are in the events).
fn inspect_run(run_label: &str, since: u64) -> String {
    let mut text = String::new();
    for id in docker_out(&["ps", "-aq", "--filter", &format!("label={run_label}")]).lines() {
        text.push_str(&docker_out(&["inspect", id]));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let events = docker_out(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &now.to_string(),
        "--filter",
        &format!("label={run_label}"),
        "--format",
        "{{json .}}",
    ]);
    let sock = env().docker_host.trim_start_matches("unix://").to_string();
    for line in events.lines() {
        let ev: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(exec) = ev["Actor"]["Attributes"]["execID"].as_str() {
            text.push_str(&run_ok(Command::new("curl").args([
                "-sS",
                "-f",
                "--unix-socket",
                &sock,
                &format!("http://docker/exec/{exec}/json"),
            ])));
        }
    }
    text.push_str(&events);
    text
}

/// Pulls from a registry behind TLS and a login: credentials from
/// `auths`, from a credential store helper and from `credHelpers` for that
/// host only; a wrong password and a missing CA fail naming the registry,
/// the image and the problem. No credential bytes in ROOT, in `docker
/// inspect` of the run's containers and execs, or in the output.
#[test]
fn private_registry_with_tls_and_login() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let reg = TlsRegistry::start();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let before = file_digest(&disk);
    let certs = reg.certs_d(tmp.path());
    let image = format!("{}/fp/layers:1", reg.host);
    let want_id = &f.listed[0].1;
    let auth = base64(format!("{REG_USER}:{REG_PASSWORD}").as_bytes());
    let secrets = [REG_PASSWORD.to_string(), auth.clone()];
    let no_secret_in = |what: &str, text: &str| {
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "a credential shows in {what}:\n{text}"
            );
        }
    };
    let write = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    // A credential helper: `get` answers for this registry only.
    let bin = tmp.path().join("bin");
    fs::create_dir(&bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let helper = bin.join("docker-credential-fptest");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r url\n\
             if [ \"$url\" = '{}' ]; then printf '{{\"ServerURL\":\"%s\",\"Username\":\"{REG_USER}\",\"Secret\":\"{REG_PASSWORD}\"}}' \"$url\"; \
             else echo 'credentials not found in native keychain'; exit 1; fi\n",
            reg.host
        ),
    )
    .unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let out = tmp.path().join("out.bin");
    let (d, o_, c_) = (
        disk.to_str().unwrap(),
        out.to_str().unwrap(),
        certs.to_str().unwrap(),
    );
    let check_ok = |o: &Output, how: &str| {
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(o));
        assert!(o.status.success(), "{how}: populate failed:\n{text}");
        no_secret_in(&format!("the output of the run ({how})"), &text);
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(summary["images"][0]["id"], want_id.as_str(), "{how}");
        assert_eq!(summary["images"][0]["reference"], image.as_str(), "{how}");
        assert_fsck_clean(&out);
        for s in &secrets {
            assert!(
                !root_holds(&out, s.as_bytes()),
                "{how}: ROOT holds a credential"
            );
        }
        assert!(
            !root_holds(&out, b"BEGIN CERTIFICATE"),
            "{how}: ROOT holds a certificate"
        );
        fs::remove_file(&out).unwrap();
    };

    // 1. `auths` of $DOCKER_CONFIG/config.json; the run's containers kept
    //    to inspect them and their execs.
    let cfg_dir = tmp.path().join("docker-config");
    fs::create_dir(&cfg_dir).unwrap();
    fs::set_permissions(&cfg_dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        cfg_dir.join("config.json"),
        format!("{{\"auths\":{{\"{}\":{{\"auth\":\"{auth}\"}}}}}}", reg.host),
    )
    .unwrap();
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let o = populate_env(
        &[("DOCKER_CONFIG", cfg_dir.to_str().unwrap())],
        &[
            d,
            &image,
            "-o",
            o_,
            "--registry-certs",
            c_,
            "--json",
            "--keep-dind",
        ],
    );
    let kept = stderr(&o)
        .lines()
        .find_map(|l| l.strip_prefix("keeping containers "))
        .and_then(|l| l.split([',', ' ']).next())
        .map(|c| c.trim().to_string());
    if let Some(c) = &kept {
        let run_id = docker_out(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"org.flatcar-preload.run\"}}",
            c,
        ]);
        let label = format!("org.flatcar-preload.run={run_id}");
        let inspected = inspect_run(&label, since);
        // The request is one JSON argument, escaped in docker's JSON.
        let pulled = inspected.contains("\"ProcessConfig\"")
            && inspected.contains("\"internal\"")
            && inspected.contains(r#"\"op\":{\"pull\":"#);
        // The build image has no unpigz: the tool's own is in the container,
        // where the daemon's PATH starts (see src/unpigz.rs), and inflates.
        let inflated = docker_out(&[
            "exec",
            c,
            "sh",
            "-c",
            "printf 'layer bytes' | gzip -c | /fp-helper/bin/unpigz -d -c",
        ]);
        for c in docker_out(&["ps", "-aq", "--filter", &format!("label={label}")]).lines() {
            docker(&["rm", "-f", "-v", c]);
        }
        for v in docker_out(&["volume", "ls", "-q", "--filter", &format!("label={label}")]).lines()
        {
            docker(&["volume", "rm", v]);
        }
        // After the clean-up: a failure leaves nothing behind.
        assert!(pulled, "no exec of the pull:\n{inspected}\n{}", stderr(&o));
        no_secret_in(
            "docker inspect of the run's containers and execs",
            &inspected,
        );
        assert_eq!(inflated.trim(), "layer bytes", "the provided unpigz in {c}");
    }
    check_ok(&o, "auths");
    assert!(kept.is_some(), "no kept container named:\n{}", stderr(&o));

    // `populate DISK IMAGE -o OUT --registry-certs CERTS --registry-config
    // CONFIG` with the helper on PATH.
    let with_config = |config: &Path| {
        let config = config.to_str().unwrap();
        let args = [d, &image, "-o", o_, "--registry-certs", c_, "--json"];
        populate_env(
            &[("PATH", &path)],
            &[&args[..], &["--registry-config", config]].concat(),
        )
    };

    // 2. A credential store (credsStore) helper, config from --registry-config.
    let o = with_config(&write("store.json", "{\"credsStore\":\"fptest\"}"));
    check_ok(&o, "credsStore");

    // 3. credHelpers for this host only: it wins over a wrong `auths` entry.
    let wrong = base64(format!("{REG_USER}:wrong-password").as_bytes());
    let o = with_config(&write(
        "helpers.json",
        &format!(
            "{{\"auths\":{{\"{h}\":{{\"auth\":\"{wrong}\"}}}},\"credHelpers\":{{\"{h}\":\"fptest\"}}}}",
            h = reg.host
        ),
    ));
    check_ok(&o, "credHelpers");

    // 4. A wrong password: fails naming the registry and the image.
    let o = with_config(&write(
        "wrong.json",
        &format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"{wrong}\"}}}}}}",
            reg.host
        ),
    ));
    assert_clean_failure(&o, &disk, before, &out, &image);
    let err = stderr(&o);
    eprintln!("a wrong password:\n{err}");
    assert!(err.contains(&format!("registry {}", reg.host)), "{err}");
    assert!(
        !err.contains("wrong-password") && !err.contains(&wrong),
        "{err}"
    );

    // 5. The CA missing: the certificate problem is named.
    let o = populate_env(
        &[("DOCKER_CONFIG", cfg_dir.to_str().unwrap())],
        &[d, &image, "-o", o_],
    );
    assert_clean_failure(&o, &disk, before, &out, &image);
    let err = stderr(&o);
    eprintln!("no CA:\n{err}");
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains(&format!("{}/ca.crt", reg.host)), "{err}");
    no_secret_in("the output of a failed run", &err);
}

/// Uploads `data` as a blob of `repo` in the test registry (its HTTP API)
/// and returns its digest.
fn push_blob(repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let base = format!("http://{}", env().registry);
    let head = run_ok(Command::new("curl").args([
        "-sS",
        "-f",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-X",
        "POST",
        &format!("{base}/v2/{repo}/blobs/uploads/"),
    ]));
    let loc = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no upload location:\n{head}"));
    let loc = if loc.starts_with('/') {
        format!("{base}{loc}")
    } else {
        loc
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let tmp = tempfile::NamedTempFile::new().unwrap();
    fs::write(tmp.path(), data).unwrap();
    run_ok(
        Command::new("curl")
            .args([
                "-sS",
                "-f",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", tmp.path().display()))
            .arg(format!("{loc}{sep}digest={digest}")),
    );
    digest
}

/// Puts a manifest of `media_type` as `repo:reference` and returns its
/// descriptor (size, digest).
fn push_manifest(repo: &str, reference: &str, media_type: &str, body: &[u8]) -> (usize, String) {
    let tmp = tempfile::NamedTempFile::new().unwrap();
    fs::write(tmp.path(), body).unwrap();
    run_ok(
        Command::new("curl")
            .args(["-sS", "-f", "-X", "PUT", "-H"])
            .arg(format!("Content-Type: {media_type}"))
            .arg("--data-binary")
            .arg(format!("@{}", tmp.path().display()))
            .arg(format!(
                "http://{}/v2/{repo}/manifests/{reference}",
                env().registry
            )),
    );
    (body.len(), sha256(body))
}

const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// One image for `arch` made of files only (a file /arch saying which),
/// pushed by digest into `repo`: (image ID, manifest size, manifest digest).
fn push_arch_image(repo: &str, arch: &str, variant: Option<&str>) -> (String, usize, String) {
    let text = format!("{arch}\n");
    let tar = layer(&[L::File("arch", text.as_bytes(), 0o644)]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let mut config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
        "history": [{"created_by": "flatcar-preload tests"}],
    });
    if let Some(v) = variant {
        config["variant"] = v.into();
    }
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = push_blob(repo, &config);
    let layer_digest = push_blob(repo, &gz);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST_V2,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_digest},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": gz.len(), "digest": layer_digest}],
    }))
    .unwrap();
    let (size, digest) = push_manifest(repo, &sha256(&manifest), MANIFEST_V2, &manifest);
    (config_digest, size, digest)
}

/// A multi-platform image (linux/amd64 and linux/arm64 under one index)
/// in the test registry: (reference, amd64 image ID, arm64 image ID).
fn multi_arch_fixture() -> &'static (String, String, String) {
    static F: OnceLock<(String, String, String)> = OnceLock::new();
    F.get_or_init(|| {
        let repo = "fp/multi";
        let (amd_id, amd_size, amd_digest) = push_arch_image(repo, "amd64", None);
        let (arm_id, arm_size, arm_digest) = push_arch_image(repo, "arm64", Some("v8"));
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": MANIFEST_LIST,
            "manifests": [
                {"mediaType": MANIFEST_V2, "size": amd_size, "digest": amd_digest,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": MANIFEST_V2, "size": arm_size, "digest": arm_digest,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            ],
        }))
        .unwrap();
        push_manifest(repo, "1", MANIFEST_LIST, &index);
        (format!("{}/{repo}:1", env().registry), amd_id, arm_id)
    })
}

/// The `architecture` of image `id` in the image database of ROOT.
fn stored_architecture(disk: &Path, id: &str) -> String {
    let view = ext4_view(disk);
    let p = format!(
        "/var/lib/docker/image/overlay2/imagedb/content/sha256/{}",
        id.trim_start_matches("sha256:")
    );
    let config: serde_json::Value =
        serde_json::from_slice(&view.read(p.as_str()).unwrap()).unwrap();
    config["architecture"].as_str().unwrap().to_string()
}

/// The target platform: from --platform, from the EFI loader of the disk
/// (an arm64 disk picks the arm64 image of a multi-platform index by
/// itself), and a single-platform image of another platform refused
/// unless --allow-platform-mismatch.
#[test]
fn platform_from_option_and_from_the_disk() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let (multi, amd_id, arm_id) = multi_arch_fixture();
    let tmp = user_dir();
    let out = tmp.path().join("out.bin");
    let o_ = out.to_str().unwrap();
    let json = |o: &Output| -> serde_json::Value {
        assert!(o.status.success(), "populate failed: {}", stderr(o));
        serde_json::from_slice(&o.stdout).unwrap()
    };

    // --platform linux/arm64 on a disk that does not say (no ESP loader).
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let o = populate(&[
        disk.to_str().unwrap(),
        multi,
        "-o",
        o_,
        "--platform",
        "linux/arm64",
        "--json",
    ]);
    let s = json(&o);
    assert_eq!(s["images"][0]["id"], arm_id.as_str(), "{s}");
    assert_eq!(s["images"][0]["platform"], "linux/arm64", "{s}");
    assert_eq!(s["platform"]["from"], "option", "{s}");
    assert_eq!(stored_architecture(&out, arm_id), "arm64");
    let text = with_real_docker(
        &out,
        &format!(
            "docker image inspect -f 'ARCH {{{{.Os}}}}/{{{{.Architecture}}}} {{{{.Id}}}}' {multi}"
        ),
    );
    assert_eq!(
        text.matches(&format!("ARCH linux/arm64 {arm_id}")).count(),
        env().target_dockers.len(),
        "{text}"
    );
    fs::remove_file(&out).unwrap();

    // A multi-platform image with no image for the platform asked for.
    let before = file_digest(&disk);
    let o = populate(&[
        disk.to_str().unwrap(),
        multi,
        "-o",
        o_,
        "--platform",
        "linux/s390x",
    ]);
    assert_clean_failure(&o, &disk, before, &out, "has no image for linux/s390x");
    assert!(
        stderr(&o).contains("linux/amd64, linux/arm64"),
        "{}",
        stderr(&o)
    );

    // A disk whose ESP holds EFI/boot/bootaa64.efi: arm64 by itself.
    let arm_dir = user_dir();
    let arm_disk = disk_copy_with_esp(&["--layout", "small"], &["bootaa64.efi"], arm_dir.path());
    let a = arm_disk.to_str().unwrap();
    let o = populate(&[a, multi, "-o", o_, "--json"]);
    let s = json(&o);
    assert_eq!(s["platform"]["target"], "linux/arm64", "{s}");
    assert_eq!(s["platform"]["from"], "disk", "{s}");
    assert_eq!(s["images"][0]["id"], arm_id.as_str(), "{s}");
    assert_eq!(stored_architecture(&out, arm_id), "arm64");
    assert_fsck_clean(&out);
    fs::remove_file(&out).unwrap();

    // An amd64-only image into the arm64 disk: refused naming both ...
    let before = file_digest(&arm_disk);
    let amd_only = &f.listed[0].0;
    let o = populate(&[a, amd_only, "-o", o_]);
    assert_clean_failure(&o, &arm_disk, before, &out, "--allow-platform-mismatch");
    let err = stderr(&o);
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );
    assert!(err.contains(amd_only.as_str()), "{err}");
    // ... unless allowed.
    let o = populate(&[a, amd_only, "-o", o_, "--allow-platform-mismatch", "--json"]);
    let s = json(&o);
    assert_eq!(s["images"][0]["platform"], "linux/amd64", "{s}");
    assert_eq!(s["images"][0]["id"], f.listed[0].1.as_str(), "{s}");
    assert!(stderr(&o).contains("warning"), "{}", stderr(&o));
    fs::remove_file(&out).unwrap();

    // A disk that does not say and no --platform: this machine's platform
    // (amd64 here), with a warning.
    let o = populate(&[disk.to_str().unwrap(), multi, "-o", o_, "--json"]);
    let s = json(&o);
    assert_eq!(s["platform"]["from"], "host", "{s}");
    assert_eq!(s["images"][0]["id"], amd_id.as_str(), "{s}");
    assert!(
        stderr(&o).contains("cannot tell the platform"),
        "{}",
        stderr(&o)
    );
    assert_eq!(leftovers(), "");
}

// ---- sources without a registry, and the cache ---------------------------

/// GET `path` of the test registry with `accept`, as bytes.
fn registry_get(path: &str, accept: &str) -> Vec<u8> {
    let o = Command::new("curl")
        .args(["-sS", "-f", "-H"])
        .arg(format!("Accept: {accept}"))
        .arg(format!("http://{}/v2/{path}", env().registry))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "GET {path}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// Writes `repo:tag` of the test registry (an image, or an index and the
/// images it lists) as an OCI image layout in `dir`, with
/// `org.opencontainers.image.ref.name` = `ref_name` on its index entry.
fn oci_layout_from_registry(repo: &str, tag: &str, dir: &Path, ref_name: &str) {
    const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha256(bytes);
        fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes).unwrap();
        digest
    };
    // A manifest and its blobs; returns (media type, digest, size).
    let manifest = |reference: &str| -> (String, String, usize) {
        let m = registry_get(&format!("{repo}/manifests/{reference}"), ACCEPT);
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        (
            v["mediaType"].as_str().unwrap().to_string(),
            put(&m),
            m.len(),
        )
    };
    let (media, digest, size) = manifest(tag);
    let top: serde_json::Value = serde_json::from_slice(
        &fs::read(blobs.join(digest.trim_start_matches("sha256:"))).unwrap(),
    )
    .unwrap();
    let mut image_manifests = vec![];
    match top["manifests"].as_array() {
        Some(list) => {
            for m in list {
                let (_, d, _) = manifest(m["digest"].as_str().unwrap());
                image_manifests.push(d);
            }
        }
        None => image_manifests.push(digest.clone()),
    }
    for d in image_manifests {
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(blobs.join(d.trim_start_matches("sha256:"))).unwrap())
                .unwrap();
        let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_string()];
        for l in m["layers"].as_array().unwrap() {
            digests.push(l["digest"].as_str().unwrap().to_string());
        }
        for b in digests {
            let bytes = registry_get(&format!("{repo}/blobs/{b}"), "*/*");
            assert_eq!(put(&bytes), b);
        }
    }
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": media, "digest": digest, "size": size,
                       "annotations": {"org.opencontainers.image.ref.name": ref_name}}],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A tar of the directory `dir` (its contents at the top).
fn tar_dir(dir: &Path, out: &Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

/// The same fixture image from every transport: a `docker save` tar
/// (gzip-compressed), an OCI layout made from the registry's blobs (as a
/// directory and as a tar) and the engine's own copy. Each gets the image
/// ID the registry pull gives, under the name asked for, and a real Docker
/// on the result lists and runs them.
#[test]
fn images_from_archives_and_the_engine() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let (layers_ref, layers_id) = (&f.listed[0].0, &f.listed[0].1);
    let tmp = user_dir();
    let d = tmp.path();
    // docker save, gzip-compressed.
    let saved = d.join("saved.tar");
    docker(&["save", "-o", saved.to_str().unwrap(), layers_ref]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &fs::read(&saved).unwrap()).unwrap();
    fs::write(d.join("saved.tar.gz"), gz.finish().unwrap()).unwrap();
    // An OCI layout of the registry's blobs, as a directory and a tar.
    let layout = d.join("layout");
    oci_layout_from_registry("fp/layers", "1", &layout, "1");
    tar_dir(&layout, &d.join("layout.tar"));
    readable_by_all(d);
    let list = d.join("images.list");
    fs::write(
        &list,
        format!(
            "# every transport, relative paths from the list's directory\n\
             docker-archive:saved.tar.gz:fp/from-save:1\n\
             oci:layout:fp/from-oci:1\n\
             oci-archive:layout.tar:fp/from-oci-archive:1\n\
             docker-daemon:{layers_ref}\n"
        ),
    )
    .unwrap();
    let disk = disk_copy(&["--layout", "small"], d);
    let out = d.join("out.bin");
    let o = populate(&[
        disk.to_str().unwrap(),
        "-l",
        list.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "populate failed: {}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let images = s["images"].as_array().unwrap();
    assert_eq!(images.len(), 4, "{s}");
    for (img, source) in images
        .iter()
        .zip(["archive", "archive", "archive", "daemon"])
    {
        assert_eq!(img["id"], layers_id.as_str(), "{s}");
        assert_eq!(img["source"], source, "{s}");
    }
    assert_eq!(leftovers(), "");
    assert_fsck_clean(&out);
    let m = Mount::new(&out);
    let mut tags: Vec<String> = stored_tags(&m.dir.path().join("var/lib/docker"))
        .into_iter()
        .map(|t| t.split(' ').next().unwrap().to_string())
        .collect();
    drop(m);
    tags.sort();
    let mut want = vec![
        "fp/from-oci-archive:1".to_string(),
        "fp/from-oci:1".to_string(),
        "fp/from-save:1".to_string(),
        layers_ref.clone(),
    ];
    want.sort();
    assert_eq!(tags, want);
    let text = with_real_docker(
        &out,
        "docker run --rm --network none fp/from-oci:1 /bin/busybox cat /data/a/new; echo",
    );
    assert_eq!(
        text.matches("\nnew\n").count(),
        env().target_dockers.len(),
        "{text}"
    );
}

/// Makes everything below `dir` readable by the test user (what root
/// made there, e.g. `docker save -o`, is 0600).
fn readable_by_all(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let mode = if p.is_dir() { 0o755 } else { 0o644 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        if p.is_dir() {
            readable_by_all(&p);
        }
    }
}

/// Bad sources fail before anything is written, naming their line: a
/// missing file, a truncated archive, an OCI index with no image for the
/// platform, an unnamed archive without `:NAME`, an image the engine does
/// not have.
#[test]
fn bad_sources_fail_naming_their_line() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    multi_arch_fixture();
    let tmp = user_dir();
    let d = tmp.path();
    let saved = d.join("saved.tar");
    docker(&["save", "-o", saved.to_str().unwrap(), &f.listed[0].0]);
    let bytes = fs::read(&saved).unwrap();
    fs::write(d.join("truncated.tar"), &bytes[..bytes.len() / 2]).unwrap();
    let unnamed = d.join("unnamed");
    oci_layout_from_registry("fp/layers", "1", &unnamed, "1");
    let multi = d.join("multi");
    oci_layout_from_registry("fp/multi", "1", &multi, "1");
    readable_by_all(d);
    let disk = disk_copy(&["--layout", "small"], d);
    let before = file_digest(&disk);
    let out = d.join("out.bin");
    for (line, extra, want) in [
        ("docker-archive:missing.tar:fp/x:1", None, "missing.tar"),
        ("docker-archive:truncated.tar:fp/x:1", None, "truncated.tar"),
        ("oci:multi:fp/m:1", Some("linux/s390x"), "linux/s390x"),
        ("oci:unnamed", None, "unnamed"),
        (
            "docker-daemon:fp/not-on-the-engine:1",
            None,
            "fp/not-on-the-engine:1",
        ),
    ] {
        let list = d.join("images.list");
        fs::write(&list, format!("{}\n# the bad one\n{line}\n", f.listed[0].0)).unwrap();
        let mut args = vec![
            disk.to_str().unwrap(),
            "-l",
            list.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        if let Some(p) = extra {
            args.extend(["--platform", p]);
        }
        let o = populate(&args);
        assert_clean_failure(&o, &disk, before, &out, want);
        let err = stderr(&o);
        assert!(err.contains("images.list, line 3"), "{line}: {err}");
        assert!(
            !err.contains("pulled"),
            "{line}: something was pulled first: {err}"
        );
    }
}

/// The layers each image of a `--json` summary downloaded.
fn downloaded(s: &serde_json::Value) -> Vec<usize> {
    s["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["downloaded_layers"].as_array().unwrap().len())
        .collect()
}

/// The image IDs in the image database of ROOT.
fn stored_ids(disk: &Path) -> Vec<String> {
    let view = ext4_view(disk);
    let mut ids: Vec<String> = view
        .read_dir("/var/lib/docker/image/overlay2/imagedb/content/sha256")
        .unwrap()
        .map(|e| e.unwrap().file_name().as_str().unwrap().to_string())
        .filter(|n| n != "." && n != "..")
        .map(|n| format!("sha256:{n}"))
        .collect();
    ids.sort();
    ids
}

/// `--cache NAME`: a cold run, a warm run of the same list (nothing
/// downloaded), a run with one image changed (only its layer downloaded);
/// every result holds exactly the listed images and passes the truth
/// checks; a second run on a cache in use fails clearly and the cache
/// still works after; `cache ls` and `cache rm`.
#[test]
fn cache_downloads_only_what_changed() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let reg = &env().registry;
    let changing = format!("{reg}/fp/cached:1");
    let busybox = fs::read("/bin/busybox").unwrap();
    let base = layer(&[L::Dir("bin"), L::File("bin/busybox", &busybox, 0o755)]);
    let (id_a, _) = make_image(
        &changing,
        &[base.clone(), layer(&[L::File("v", b"A", 0o644)])],
    );
    let cache = format!("fptest-{}", std::process::id());
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let list = tmp.path().join("images.list");
    fs::write(&list, format!("{}\n{changing}\n", f.listed[0].0)).unwrap();
    let out = tmp.path().join("out.bin");
    let (d, l, o_) = (
        disk.to_str().unwrap(),
        list.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let run = |what: &str| -> serde_json::Value {
        let _ = fs::remove_file(&out);
        let o = populate(&[d, "-l", l, "-o", o_, "--cache", &cache, "--json"]);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        assert_eq!(leftovers(), "", "{what}");
        assert_fsck_clean(&out);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let cold = run("cold");
    assert!(downloaded(&cold).iter().all(|&n| n > 0), "{cold}");
    assert_eq!(cold["stores"][0]["kind"], "cache", "{cold}");
    let warm = run("warm");
    assert_eq!(downloaded(&warm), [0, 0], "{warm}");
    for i in warm["images"].as_array().unwrap() {
        assert_eq!(i["source"], "cache", "{warm}");
    }
    let mut want = vec![f.listed[0].1.clone(), id_a.clone()];
    want.sort();
    assert_eq!(stored_ids(&out), want);
    on_each_real_docker(&out, "true");
    // One image changed: only its new layer comes down, and its old
    // version, still in the cache, is not written.
    let (id_b, _) = make_image(&changing, &[base, layer(&[L::File("v", b"B", 0o644)])]);
    let changed = run("one changed");
    assert_eq!(downloaded(&changed), [0, 1], "{changed}");
    assert_eq!(changed["images"][1]["id"], id_b.as_str());
    let mut want = vec![f.listed[0].1.clone(), id_b.clone()];
    want.sort();
    assert_eq!(stored_ids(&out), want, "the old version was exported too");
    let text = with_real_docker(
        &out,
        &format!("docker run --rm --network none {changing} /bin/busybox cat /v; echo"),
    );
    assert_eq!(
        text.matches("\nB\n").count(),
        env().target_dockers.len(),
        "{text}"
    );

    // A run on the cache while another has it: refused, naming the cache.
    let mut first = populate_cmd(&[d, "-l", l, "-o", o_, "--cache", &cache])
        .env("FLATCAR_PRELOAD_PAUSE_AT", "pull")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(first.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("paused at pull") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "the first run ended early"
        );
    }
    let out2 = tmp.path().join("out2.bin");
    let o = populate(&[d, "-l", l, "-o", out2.to_str().unwrap(), "--cache", &cache]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("in use by another run"),
        "{}",
        stderr(&o)
    );
    assert!(!out2.exists());
    Command::new("pkill")
        .args(["-INT", "-P", &first.id().to_string()])
        .status()
        .unwrap();
    first.wait().unwrap();
    // ... and the cache is intact.
    let again = run("after the refused run");
    assert_eq!(downloaded(&again), [0, 0], "{again}");

    assert!(tool(&["cache", "ls"]).contains(&cache));
    tool(&["cache", "rm", &cache]);
    assert!(!tool(&["cache", "ls"]).contains(&cache));
}

// ---- inspect and verify ------------------------------------------------------

/// `flatcar-preload ARGS` as the unprivileged test user.
fn as_user(args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", &env().test_user, "--"])
        .arg(user_bin())
        .args(args)
        .output()
        .unwrap()
}

/// The first path below `dir` (depth first) for which `pick` holds.
fn find_below(dir: &Path, pick: &dyn Fn(&Path) -> bool) -> Option<std::path::PathBuf> {
    for e in fs::read_dir(dir).ok()? {
        let p = e.unwrap().path();
        if pick(&p) {
            return Some(p);
        }
        let is_dir = fs::symlink_metadata(&p)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            if let Some(found) = find_below(&p, pick) {
                return Some(found);
            }
        }
    }
    None
}

/// `inspect` lists exactly what populate pulled; `verify` passes, as the
/// unprivileged user, on the result; then, each in its own copy, one byte
/// of a layer file changed, an opaque xattr removed, a SELinux label
/// changed, an `l/` symlink deleted, a tar-split truncated and an image
/// config edited: `verify` fails naming exactly that.
#[test]
fn inspect_and_verify_the_result() {
    let Some(_serial) = docker_test() else {
        return;
    };
    if !require_root("the corrupted copies are made through a loop mount") {
        return;
    }
    let f = fixtures();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "small"], tmp.path());
    let out = tmp.path().join("out.bin");
    let o = populate(&[
        disk.to_str().unwrap(),
        &f.listed[0].0,
        &f.listed[1].0,
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["verified"]["images"], 2, "{s}");

    let o = as_user(&["inspect", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let inv: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut listed: Vec<(String, String)> = inv["docker"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| {
            let id = i["id"].as_str().unwrap().to_string();
            i["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |t| (t.as_str().unwrap().to_string(), id.clone()))
        })
        .collect();
    listed.sort();
    let second_tag = f.listed[1].0.split('@').next().unwrap().to_string();
    let mut want = vec![
        (f.listed[0].0.clone(), f.listed[0].1.clone()),
        (second_tag, f.listed[1].1.clone()),
    ];
    want.sort();
    assert_eq!(listed, want, "{inv}");
    assert!(inv["root"]["free_bytes"].as_u64().unwrap() > 0, "{inv}");
    let o = as_user(&["verify", out.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "verify of a good result: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("all checks hold"), "{}", stderr(&o));

    // Each corruption in its own copy: (what, how, what the report names).
    type Corrupt = Box<dyn Fn(&Path) -> String>;
    let cases: Vec<(&str, Corrupt)> = vec![
        (
            "a layer file changed",
            Box::new(|store: &Path| {
                let p = find_below(&store.join("overlay2"), &|p| p.ends_with("diff/data/a/new"))
                    .expect("data/a/new in a layer");
                fs::write(&p, b"NEW").unwrap();
                "/data/a/new".to_string()
            }),
        ),
        (
            "an opaque xattr removed",
            Box::new(|store: &Path| {
                let p = find_below(&store.join("overlay2"), &|p| {
                    let mut b = [0u8; 8];
                    p.is_dir()
                        && rustix::fs::lgetxattr(p, "trusted.overlay.opaque", &mut b[..]).is_ok()
                })
                .expect("an opaque directory");
                rustix::fs::lremovexattr(&p, "trusted.overlay.opaque").unwrap();
                let rel = p.strip_prefix(store).unwrap();
                format!("/var/lib/docker/{}", rel.display())
            }),
        ),
        (
            "an l/ symlink deleted",
            Box::new(|store: &Path| {
                let l = store.join("overlay2/l");
                let p = fs::read_dir(&l).unwrap().next().unwrap().unwrap().path();
                fs::remove_file(&p).unwrap();
                format!(
                    "/var/lib/docker/overlay2/l/{}",
                    p.file_name().unwrap().to_str().unwrap()
                )
            }),
        ),
        (
            "a tar-split truncated",
            Box::new(|store: &Path| {
                let p = find_below(&store.join("image/overlay2/layerdb/sha256"), &|p| {
                    p.ends_with("tar-split.json.gz") && fs::metadata(p).unwrap().len() > 100
                })
                .expect("a tar-split");
                let b = fs::read(&p).unwrap();
                fs::write(&p, &b[..b.len() / 2]).unwrap();
                let rel = p.strip_prefix(store).unwrap();
                format!("/var/lib/docker/{}", rel.display())
            }),
        ),
        (
            "a SELinux label changed",
            Box::new(|store: &Path| {
                let p = find_below(&store.join("overlay2"), &|p| p.ends_with("diff/data/a/new"))
                    .expect("data/a/new in a layer");
                rustix::fs::lsetxattr(
                    &p,
                    "security.selinux",
                    b"system_u:object_r:file_t:s0\0",
                    rustix::fs::XattrFlags::empty(),
                )
                .unwrap();
                let rel = p.strip_prefix(store).unwrap();
                format!("/var/lib/docker/{}", rel.display())
            }),
        ),
        (
            "an image config edited",
            Box::new(|store: &Path| {
                let dir = store.join("image/overlay2/imagedb/content/sha256");
                let p = fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
                let text = fs::read_to_string(&p).unwrap();
                fs::write(&p, text.replacen("amd64", "arm64", 1)).unwrap();
                format!("sha256:{}", p.file_name().unwrap().to_str().unwrap())
            }),
        ),
    ];
    for (what, corrupt) in cases {
        let copy = tmp.path().join("corrupt.bin");
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&out)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success());
        let named = {
            let m = Mount::with(&copy, true);
            corrupt(&m.dir.path().join("var/lib/docker"))
        };
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).unwrap();
        let o = as_user(&["verify", copy.to_str().unwrap(), "--json"]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{what}: verify passed:\n{err}");
        assert!(
            err.contains("FAILED") && err.contains(&named),
            "{what}: the report does not name {named}:\n{err}"
        );
        fs::remove_file(&copy).unwrap();
    }
}

/// Starts the containerd of `target` (a dind image: its own containerd,
/// the version its Debian suite ships) on a copy of /var/lib/containerd in
/// ROOT of `disk`, configured as Flatcar's (CRI with its defaults, the
/// overlayfs snapshotter), lists the images through the CRI with crictl,
/// runs `script` (ctr and crictl at hand) and, after garbage collections
/// have run, counts the content blobs and snapshots left. Returns what it
/// printed and the (blobs, snapshots) the copy held before.
fn on_real_containerd(disk: &Path, target: &str, script: &str) -> (String, (usize, usize)) {
    let (_copy, m) = mounted_copy(disk);
    let root = m.dir.path().join("var/lib/containerd");
    let count = |p: &str| fs::read_dir(root.join(p)).map_or(0, |d| d.count());
    let before = (
        count("io.containerd.content.v1.content/blobs/sha256"),
        count("io.containerd.snapshotter.v1.overlayfs/snapshots"),
    );
    let full = format!(
        r#"printf 'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  snapshotter = "overlayfs"\n' >/tmp/config.toml
        containerd --config /tmp/config.toml >/tmp/containerd.log 2>&1 &
        for i in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
        ctr version >/dev/null 2>&1 || {{ echo 'containerd did not start:'; tail -n 30 /tmp/containerd.log; exit 1; }}
        echo "FPVER $(ctr version | sed -n '/Server/,$p' | grep -m1 Version)"
        for i in $(seq 50); do crictl images -q >/dev/null 2>&1 && break; sleep 0.2; done
        echo "CRI $(crictl images -o json | tr -d '\n')"
        {script}
        sleep 2
        echo "LEFT $(ls /var/lib/containerd/io.containerd.content.v1.content/blobs/sha256 | wc -l) $(ls /var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots | wc -l)"
        grep -iE 'level=(error|fatal)' /tmp/containerd.log | grep -v 'cni' | sed 's/^/LOGERR /' || true"#
    );
    let mounts = [
        format!("{}:/usr/local/bin/crictl:ro", env().crictl),
        format!("{}:/var/lib/containerd", root.display()),
    ];
    let full =
        format!("export CONTAINER_RUNTIME_ENDPOINT=unix:///run/containerd/containerd.sock\n{full}");
    let (ok, text) = run_target(target, &mounts, &full);
    assert!(
        ok,
        "containerd of {target} on the written store failed:\n{text}"
    );
    drop(m);
    (text, before)
}

/// The images crictl listed: (repo tags, repo digests, id, pinned) by
/// first tag (or digest).
fn cri_images(text: &str) -> Vec<(Vec<String>, Vec<String>, String, bool)> {
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("CRI "))
        .unwrap_or_else(|| panic!("no crictl output:\n{text}"));
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("crictl JSON: {e}:\n{text}"));
    let strings = |x: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = x
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut out: Vec<_> = v["images"]
        .as_array()
        .unwrap_or_else(|| panic!("crictl: no images array:\n{text}"))
        .iter()
        .map(|i| {
            (
                strings(&i["repoTags"]),
                strings(&i["repoDigests"]),
                i["id"].as_str().unwrap_or("").to_string(),
                i["pinned"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    out
}

/// The fixture images run by ctr (what `populate_truth` runs with docker);
/// `second` is `repo:tag@digest`, which ctr knows as `repo@digest`.
fn ctr_script(layers: &str, second: &str) -> String {
    let (tagged, digest) = second.split_once('@').unwrap();
    let second = format!("{}@{digest}", tagged.rsplit_once(':').unwrap().0);
    r#"
    ctr -n k8s.io run --rm LAYERS t1 sh -c 'echo A=$(ls -A /data/a | tr "\n" " "); echo B=$(ls -A /data/b | tr "\n" " "); echo CAT=$(cat /data/a/new); echo LINK=$(cat /data/link); echo H=$(stat -c "%i %h" /data/hard1) $(stat -c "%i %h" /data/hard2); echo ODD=$(cat "/data/sp ace ünï")'
    ctr -n k8s.io run --rm --user 1000 LAYERS t2 /capbin/grep CapPrm /proc/self/status
    ctr -n k8s.io run --rm --user 1000 LAYERS t3 /capbin/cat /proc/self/status | grep CapPrm | sed 's/^/NL/'
    ctr -n k8s.io run --rm SECOND t4 /bin/busybox cat /second; echo
    "#
    .replace("LAYERS", layers)
    .replace("SECOND", &second)
}

/// The containerd store for a Kubernetes node, in the same run as Docker's:
/// the build image's containerd pulls (the sandbox image through a mirror
/// of registry.k8s.io that keeps its name), and the target's containerd
/// (2.1 here, Flatcar stable's major.minor) lists every image through the
/// CRI with its tag, digest and pinned, runs them as Docker does, and its
/// garbage collection removes nothing baked. Then Flatcar LTS's 1.7,
/// written by a 1.7 build image, and the refusal of a 2.1 build for it.
#[test]
fn containerd_store_for_kubernetes() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let reg = &env().registry;
    let base = layer(&[L::Dir("bin"), L::File("pause", b"pause", 0o755)]);
    let mut pause = vec![];
    for v in ["3.8", "3.10"] {
        pause.push(make_image(
            &format!("{reg}/pause:{v}"),
            std::slice::from_ref(&base),
        ));
    }
    let (tmp, disk, before, out) = disk_for_run("current");
    let mirror = format!("registry.k8s.io=http://{reg}");
    let (layers, second) = (&f.listed[0].0, &f.listed[1].0);
    let o = populate(&[
        disk.to_str().unwrap(),
        layers,
        "--containerd-image",
        layers,
        "--containerd-image",
        second,
        "--registry-mirror",
        &mirror,
        "-o",
        out.to_str().unwrap(),
        "--json",
        "--selinux",
        "on",
    ]);
    assert!(o.status.success(), "populate failed: {}", stderr(&o));
    assert_eq!(
        file_digest(&disk),
        before,
        "the input disk image was modified"
    );
    assert_eq!(leftovers(), "", "containers or volumes left behind");
    assert_fsck_clean(&out);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json output");
    assert_eq!(summary["images"].as_array().unwrap().len(), 4, "{summary}");
    // The report of a mixed run: one object and one line per store, each
    // image with its store, the totals the sums of the stores'.
    let images = summary["images"].as_array().unwrap();
    let per_image: Vec<&str> = images
        .iter()
        .map(|i| i["store"].as_str().unwrap())
        .collect();
    assert_eq!(
        per_image,
        ["docker", "containerd", "containerd", "containerd"],
        "{summary}"
    );
    let reported = summary["stores"].as_array().expect("stores");
    let names: Vec<(&str, &str, u64)> = reported
        .iter()
        .map(|s| {
            let n = s["images"].as_u64().unwrap();
            (s["store"].as_str().unwrap(), s["root"].as_str().unwrap(), n)
        })
        .collect();
    assert_eq!(
        names,
        [
            ("docker", "/var/lib/docker", 1),
            ("containerd", "/var/lib/containerd", 3)
        ],
        "{summary}"
    );
    for key in ["entries_written", "bytes_written", "layers"] {
        let sum: u64 = reported.iter().map(|s| s[key].as_u64().unwrap()).sum();
        assert_eq!(summary[key].as_u64(), Some(sum), "{key}: {summary}");
        assert!(
            reported.iter().all(|s| s[key].as_u64() > Some(0)),
            "{key}: {summary}"
        );
    }
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("store: ")).collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("store: docker (/var/lib/docker): 1 image(s)"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("store: containerd (/var/lib/containerd): 3 image(s)"),
        "{lines:?}"
    );
    let stores = ["/var/lib/docker", "/var/lib/containerd"];
    let labelled = assert_labels_as_matchpathcon(&out, &stores, STORE_FILE_CONTEXTS);
    assert!(labelled == 0 || labelled > 50, "{labelled} inodes checked");

    // Both stores, and none of the build machine's state.
    let view = ext4_view(&out);
    assert!(view
        .exists("/var/lib/docker/image/overlay2/repositories.json")
        .unwrap());
    for gone in [
        "tmpmounts",
        "io.containerd.runtime.v2.task",
        "io.containerd.grpc.v1.cri",
        "io.containerd.grpc.v1.introspection",
        "io.containerd.content.v1.content/ingest",
        "io.containerd.snapshotter.v1.native",
    ] {
        let p = format!("/var/lib/containerd/{gone}");
        assert!(!view.exists(p.as_str()).unwrap(), "{p} was written");
    }
    drop(view);
    {
        use std::os::unix::fs::MetadataExt;
        let m = Mount::new(&out);
        let md = fs::metadata(m.dir.path().join("var/lib/containerd")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o700, 0, 0),
            "/var/lib/containerd must be root's, 0700"
        );
    }
    let inv = tool(&["inspect", "--json", out.to_str().unwrap()]);
    assert!(
        inv.contains("k8s.io") && inv.contains("registry.k8s.io/pause:3.10"),
        "{inv}"
    );
    // Every inode of both stores labelled, and counted so.
    let v: serde_json::Value = serde_json::from_str(&inv).unwrap();
    let l = &v["selinux"];
    assert!(l["inodes"].as_u64().unwrap() > 50, "{l}");
    assert_eq!(l["labelled"], l["inodes"], "{l}");
    assert!(
        l["by_label"]["system_u:object_r:container_ro_file_t:s0"].as_u64() > Some(0),
        "{l}"
    );
    tool(&["verify", out.to_str().unwrap()]);

    // The target's containerd: the CRI sees every image, tagged, by digest,
    // pinned; the images run as they do under Docker.
    let target = &env().dind_image;
    let (text, (blobs, snaps)) = on_real_containerd(&out, target, &ctr_script(layers, second));
    let listed = cri_images(&text);
    let second_repo = second.split('@').next().unwrap().to_string();
    let mut want_tags: Vec<Vec<String>> = vec![
        vec![layers.clone()],
        vec![second_repo],
        vec!["registry.k8s.io/pause:3.10".to_string()],
    ];
    want_tags.sort();
    let mut got_tags: Vec<Vec<String>> = listed.iter().map(|i| i.0.clone()).collect();
    got_tags.sort();
    assert_eq!(got_tags, want_tags, "crictl images:\n{text}");
    for (tags, digests, id, pinned) in &listed {
        assert!(*pinned, "{tags:?} is not pinned:\n{text}");
        assert_eq!(digests.len(), 1, "{tags:?}: repo digests {digests:?}");
        assert!(id.starts_with("sha256:"), "{id}");
    }
    let ids: Vec<&str> = listed.iter().map(|i| i.2.as_str()).collect();
    assert!(
        ids.contains(&f.listed[0].1.as_str()) && ids.contains(&f.listed[1].1.as_str()),
        "{ids:?}"
    );
    assert!(
        ids.contains(&pause[1].0.as_str()),
        "{ids:?} lacks pause {}",
        pause[1].0
    );
    assert_runs(target, &text);
    assert!(text.contains("\n2\n"), "{text}");
    let left = text.lines().find_map(|l| l.strip_prefix("LEFT ")).unwrap();
    assert_eq!(
        left,
        format!("{blobs} {snaps}"),
        "garbage collection removed baked content or snapshots:\n{text}"
    );
    assert!(
        !text.contains("LOGERR"),
        "containerd logged errors:\n{text}"
    );
    let refs = [
        layers.as_str(),
        second.as_str(),
        "registry.k8s.io/pause:3.10",
    ];
    baked_equals_a_direct_cri_pull(&out, target, &refs);

    // An image the registry lacks: named with its line, nothing written.
    let failed = tmp.path().join("failed.bin");
    let missing = format!("{reg}/fp/nope:1");
    let o = populate(&[
        disk.to_str().unwrap(),
        "--containerd-image",
        &missing,
        "--sandbox-image",
        "none",
        "-o",
        failed.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, &disk, before, &failed, &missing);
    assert!(stderr(&o).contains("not found"), "{}", stderr(&o));

    // Flatcar LTS: containerd 1.7 cannot be given a 2.x store...
    let lts = env()
        .target_dockers
        .iter()
        .find(|i| major_of(i) == 26)
        .expect("FP_TARGET_DOCKERS has Docker 26 (containerd 1.7)")
        .clone();
    let refused = tmp.path().join("refused.bin");
    let o = populate(&[
        disk.to_str().unwrap(),
        "--containerd-image",
        layers,
        "--containerd-version",
        "1.7",
        "--sandbox-image",
        "none",
        "-o",
        refused.to_str().unwrap(),
    ]);
    assert_clean_failure(&o, &disk, before, &refused, "containerd 1.7");
    // ... and reads what its own writes, the sandbox image its default.
    let o = populate(&[
        disk.to_str().unwrap(),
        "--containerd-image",
        layers,
        "--containerd-image",
        second,
        "--containerd-version",
        "1.7",
        "--containerd-build-image",
        &lts,
        "--registry-mirror",
        &mirror,
        "-o",
        refused.to_str().unwrap(),
    ]);
    assert!(
        o.status.success(),
        "populate for 1.7 failed: {}",
        stderr(&o)
    );
    let (text, (blobs, snaps)) = on_real_containerd(&refused, &lts, &ctr_script(layers, second));
    let listed = cri_images(&text);
    assert_eq!(listed.len(), 3, "crictl images:\n{text}");
    assert!(listed.iter().all(|i| i.3), "not all pinned:\n{text}");
    assert!(
        listed.iter().any(|i| i.0 == ["registry.k8s.io/pause:3.8"]),
        "{text}"
    );
    assert_runs(&lts, &text);
    let left = text.lines().find_map(|l| l.strip_prefix("LEFT ")).unwrap();
    assert_eq!(left, format!("{blobs} {snaps}"), "{text}");
    assert_eq!(leftovers(), "", "containers or volumes left behind");
}

/// Docker 29 (Flatcar alpha) on containerd's image store: images baked into
/// namespace moby, with no Docker store written, are what a Docker 29
/// sharing that containerd (as Flatcar's docker.service shares the
/// system's) lists and runs; the records are Docker's own (no CRI records,
/// labels or sandbox image).
#[test]
fn docker29_runs_images_baked_into_namespace_moby() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let target = env()
        .target_dockers
        .iter()
        .find(|i| major_of(i) == 29)
        .expect("FP_TARGET_DOCKERS has Docker 29 (ci/docker-env.sh builds fp-dind:29)")
        .clone();
    let (_tmp, disk, before, out) = disk_for_run("current");
    let (layers, second) = (&f.listed[0].0, &f.listed[1].0);
    let o = populate(&[
        disk.to_str().unwrap(),
        "--containerd-namespace",
        "moby",
        "--containerd-image",
        layers,
        "--containerd-image",
        second,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "populate failed: {}", stderr(&o));
    assert_eq!(
        file_digest(&disk),
        before,
        "the input disk image was modified"
    );
    assert_eq!(leftovers(), "", "containers or volumes left behind");
    assert_fsck_clean(&out);
    let view = ext4_view(&out);
    assert!(
        !view.exists("/var/lib/docker/image").unwrap(),
        "a Docker store was written without a Docker image"
    );
    drop(view);

    let (_copy, m) = mounted_copy(&out);
    let root = m.dir.path().join("var/lib/containerd");
    let script = format!(
        r#"printf 'version = 2\n' >/tmp/config.toml
        containerd --config /tmp/config.toml >/tmp/containerd.log 2>&1 &
        for i in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
        ctr -n moby images ls | sed 's/^/REC /'
        dockerd --containerd=/run/containerd/containerd.sock >/tmp/dockerd.log 2>&1 &
        for i in $(seq 300); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
        docker info >/dev/null 2>&1 || {{ echo 'dockerd did not start:'; tail -n 30 /tmp/dockerd.log; exit 1; }}
        echo "FPINFO $(docker info -f '{{{{.ServerVersion}}}} {{{{.Driver}}}} {{{{.DriverStatus}}}}')"
        {}"#,
        docker_script(f)
    );
    let mounts = [format!("{}:/var/lib/containerd", root.display())];
    let (ok, text) = run_target(&target, &mounts, &script);
    assert!(ok, "Docker 29 ({target}) on namespace moby failed:\n{text}");
    let info = text
        .lines()
        .find_map(|l| l.strip_prefix("FPINFO "))
        .unwrap_or("");
    assert!(
        info.starts_with("29.") && info.contains("io.containerd.snapshotter"),
        "{target}: not Docker 29 on containerd's image store: {info:?}\n{text}"
    );
    let records: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("REC "))
        .collect();
    assert!(records.len() > 1, "ctr lists no record:\n{text}");
    for r in &records[1..] {
        assert!(
            !r.starts_with("sha256:") && !r.contains("io.cri-containerd"),
            "a CRI record or label in Docker's namespace: {r}\n{text}"
        );
    }
    // Docker lists an image of containerd's store by its manifest's digest.
    let target_of = |name: &str| {
        records
            .iter()
            .find_map(|r| {
                let mut cols = r.split_whitespace();
                (cols.next() == Some(name)).then(|| cols.nth(1).unwrap_or("").to_string())
            })
            .unwrap_or_else(|| panic!("no record {name}:\n{text}"))
    };
    let second_tag = second.split('@').next().unwrap();
    let ids = [target_of(layers), target_of(second_tag)];
    assert_truth(&target, &text, f, [&ids[0], &ids[1]]);
}

/// containerd's images fail as Docker's do: a platform the index lacks, an
/// amd64-only image for an arm64 target, an unreachable registry; each a
/// clear error naming the image, no output, nothing left in Docker.
#[test]
fn containerd_failures() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let (multi, _, _) = multi_arch_fixture();
    let (_tmp, disk, before, out) = disk_for_run("current");
    let (d, o_) = (disk.to_str().unwrap(), out.to_str().unwrap());
    let ctrd = |image: &str, extra: &[&str]| {
        let mut args = vec![d, "--containerd-image", image, "--sandbox-image", "none"];
        args.extend(extra);
        args.extend(["-o", o_]);
        populate(&args)
    };
    let o = ctrd(multi, &["--platform", "linux/s390x"]);
    assert_clean_failure(&o, &disk, before, &out, multi);
    assert!(stderr(&o).contains("linux/s390x"), "{}", stderr(&o));
    let o = ctrd(&f.listed[0].0, &["--platform", "linux/arm64"]);
    assert_clean_failure(&o, &disk, before, &out, "--allow-platform-mismatch");
    let unreachable = "127.0.0.1:5999/fp/unreachable:1";
    let o = ctrd(unreachable, &[]);
    assert_clean_failure(&o, &disk, before, &out, unreachable);
}

/// One line per entry below `dir` (sorted by path): type, mode, owner,
/// size, device, link target, mtime, every xattr but the SELinux label
/// (the policy's, checked by `assert_labels_as_matchpathcon`) and the
/// content's sha256, as the kernel reads them.
fn tree_listing(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = format!("{rel}/{}", name.to_string_lossy());
            let md = fs::symlink_metadata(&path).unwrap();
            let ft = md.file_type();
            let what = if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link->{}", fs::read_link(&path).unwrap().display())
            } else if ft.is_char_device() || ft.is_block_device() {
                format!("dev{}", md.rdev())
            } else if ft.is_file() {
                format!("file {} {}", md.len(), sha256(&fs::read(&path).unwrap()))
            } else {
                "other".to_string()
            };
            let mut buf = vec![0u8; 4096];
            let n = rustix::fs::llistxattr(&path, &mut buf[..]).unwrap_or(0);
            let mut xattrs: Vec<String> = buf[..n]
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty() && *n != b"security.selinux")
                .map(|n| {
                    let n = String::from_utf8_lossy(n).into_owned();
                    let mut v = vec![0u8; 4096];
                    let len = rustix::fs::lgetxattr(&path, n.as_str(), &mut v[..]).unwrap_or(0);
                    format!("{n}={:02x?}", &v[..len])
                })
                .collect();
            xattrs.sort();
            // A directory's mtime is when the unpack last changed it, and
            // a whiteout's when the unpack made it (containerd gives it no
            // time of the layer's): only other entries' are compared.
            let mtime = if ft.is_dir() || ft.is_char_device() {
                0
            } else {
                md.mtime()
            };
            out.push(format!(
                "{rel} {what} {:o} {}:{} t{mtime} {}",
                md.mode() & 0o7777,
                md.uid(),
                md.gid(),
                xattrs.join(",")
            ));
            if ft.is_dir() {
                walk(&path, &rel, out);
            }
        }
    }
    let mut out = vec![];
    walk(dir, "", &mut out);
    out
}

/// The listing of every snapshot of an overlayfs snapshotter in `root`
/// (a containerd root), sorted: snapshots are numbered in the order they
/// were made, so the multiset is what compares.
fn snapshot_trees(root: &Path) -> Vec<String> {
    let dir = root.join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    let mut all: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| tree_listing(&e.unwrap().path().join("fs")).join("\n"))
        .collect();
    all.sort();
    all
}

/// The same images pulled through the CRI (`crictl pull`, what the
/// kubelet does) by the containerd of `target` into an empty root give
/// the image records, content labels, snapshot chains and snapshot file
/// trees that the baked store holds. What differs on purpose: the baked
/// images are all pinned (a CRI pull pins the sandbox image only), and an
/// image given as `repo:tag@digest` keeps its tag record; by chance, the
/// repository a shared layer is labelled as fetched from (which pull got
/// it first: the bake pulls side by side).
fn baked_equals_a_direct_cri_pull(disk: &Path, target: &str, refs: &[&str]) {
    let (_copy, m) = mounted_copy(disk);
    let baked = m.dir.path().join("var/lib/containerd");
    let fresh = tempfile::tempdir().unwrap();
    let reg = &env().registry;
    // Both containerds: the same config, Flatcar's defaults; the direct one
    // reaches the registries through hosts.toml as the tool's mirror
    // option does.
    let dump = r#"
        ctr -n k8s.io images ls | tail -n +2 | sort | sed "s/^/$1 IMG /"
        ctr -n k8s.io content ls | tail -n +2 | awk '{print $1, $2, $NF}' | sort | sed "s/^/$1 BLOB /"
        ctr -n k8s.io snapshots ls | tail -n +2 | sort | sed "s/^/$1 SNAP /""#;
    let script = format!(
        r#"dump() {{ {dump}
        }}
        start() {{
            printf 'version = 2\nroot = "%s"\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/fp-hosts"\n' "$1" >/tmp/config.toml
            containerd --config /tmp/config.toml >/tmp/containerd.log 2>&1 &
            pid=$!
            for i in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
            for i in $(seq 50); do crictl images -q >/dev/null 2>&1 && break; sleep 0.2; done
        }}
        mkdir -p /etc/fp-hosts/registry.k8s.io /etc/fp-hosts/{reg}
        printf 'server = "https://registry.k8s.io"\n[host."http://{reg}"]\n  capabilities = ["pull", "resolve"]\n' >/etc/fp-hosts/registry.k8s.io/hosts.toml
        printf 'server = "http://{reg}"\n' >/etc/fp-hosts/{reg}/hosts.toml
        export CONTAINER_RUNTIME_ENDPOINT=unix:///run/containerd/containerd.sock
        start /var/lib/containerd
        sleep 1
        dump BAKED
        kill $pid; wait $pid
        start /var/lib/fresh
        for r in {refs}; do crictl pull "$r" >/dev/null || {{ echo "crictl pull $r failed"; tail -n 20 /tmp/containerd.log; exit 1; }}; done
        sleep 1
        dump DIRECT
        kill $pid; wait $pid"#,
        refs = refs.join(" ")
    );
    let mounts = [
        format!("{}:/usr/local/bin/crictl:ro", env().crictl),
        format!("{}:/var/lib/containerd", baked.display()),
        format!("{}:/var/lib/fresh", fresh.path().display()),
    ];
    let network = format!("container:{}", env().registry_container);
    let (ok, text) = run_target_on(&network, target, &mounts, &script);
    assert!(ok, "containerd of {target}, baked then direct:\n{text}");
    let of = |who: &str, what: &str| -> Vec<String> {
        let prefix = format!("{who} {what} ");
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|l| {
                // Columns as words; labels without the pinned one.
                l.split_whitespace()
                    .map(|w| {
                        w.split(',')
                            .filter(|x| *x != "io.cri-containerd.pinned=pinned")
                            // A layer two images share was fetched with
                            // whichever pulled it first: its repository is
                            // the order of the pulls.
                            .map(|x| match x.split_once('=') {
                                Some((k, _))
                                    if k.starts_with("containerd.io/distribution.source.") =>
                                {
                                    k
                                }
                                _ => x,
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        v.sort();
        v
    };
    let tag_of_digest_ref: Vec<String> = refs
        .iter()
        .filter_map(|r| r.split_once('@').map(|(tagged, _)| tagged.to_string()))
        .collect();
    let baked_images: Vec<String> = of("BAKED", "IMG")
        .into_iter()
        .filter(|l| {
            !tag_of_digest_ref
                .iter()
                .any(|t| l.starts_with(&format!("{t} ")))
        })
        .collect();
    assert_eq!(
        baked_images,
        of("DIRECT", "IMG"),
        "image records, baked vs a CRI pull:\n{text}"
    );
    assert_eq!(
        of("BAKED", "BLOB"),
        of("DIRECT", "BLOB"),
        "content and its labels, baked vs a CRI pull:\n{text}"
    );
    assert_eq!(
        of("BAKED", "SNAP"),
        of("DIRECT", "SNAP"),
        "snapshot chains, baked vs a CRI pull:\n{text}"
    );
    let (b, d) = (snapshot_trees(&baked), snapshot_trees(fresh.path()));
    assert_eq!(b.len(), d.len(), "snapshot counts");
    for (b, d) in b.iter().zip(&d) {
        assert_eq!(b, d, "a snapshot's files, baked vs a CRI pull");
    }
    drop(m);
}

/// `--merge` over containerd's store: the build container's containerd
/// starts on a copy of the store in ROOT, adds the new images (Docker's
/// store gets its own in the same run), and its store replaces the old
/// one: the target's containerd lists and runs the images of both runs,
/// pinned, and the snapshots of the first are as they were. A target
/// that cannot read the store, and a --cache, are refused before any pull.
#[test]
fn merge_adds_to_a_containerd_store() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let (layers, second) = (f.listed[0].0.as_str(), f.listed[1].0.as_str());
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    let first = tmp.path().join("first.bin");
    let (d, o1) = (disk.to_str().unwrap(), first.to_str().unwrap());
    let none = ["--sandbox-image", "none"];
    let o = populate(
        &[
            &[d, layers, "--containerd-image", layers, "-o", o1][..],
            &none,
        ]
        .concat(),
    );
    assert!(o.status.success(), "first run: {}", stderr(&o));
    let before = file_digest(&first);

    // Without --merge, and where the merge cannot be done: refused before
    // anything is pulled, nothing written.
    let out = tmp.path().join("out.bin");
    let o_ = out.to_str().unwrap();
    let add = [o1, "--containerd-image", second, "-o", o_];
    let o = populate(&[&add[..], &none].concat());
    assert_clean_failure(&o, &first, before, &out, "pass --merge");
    for (more, want) in [
        (
            &["--containerd-version", "1.7"][..],
            "written by containerd 2.x (metadata schema 4)",
        ),
        (&["--cache", "fptest-merge"][..], "leave out --cache"),
    ] {
        let o = populate(&[&add[..], &none, &["--merge"], more].concat());
        assert_clean_failure(&o, &first, before, &out, want);
    }

    let o = populate(&[&add[..], &none, &["--merge", second]].concat());
    assert!(o.status.success(), "merge: {}", stderr(&o));
    assert_eq!(
        file_digest(&first),
        before,
        "the input disk image was modified"
    );
    assert_eq!(leftovers(), "", "containers or volumes left behind");
    assert_fsck_clean(&out);
    let mut want = vec![f.listed[0].1.clone(), f.listed[1].1.clone()];
    want.sort();
    assert_eq!(stored_ids(&out), want, "Docker's store, merged");
    tool(&["verify", out.to_str().unwrap()]);

    // The snapshots of the first run, file by file, owners, modes, times
    // and xattrs, as they were.
    let snapshots = "var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";
    let (m1, m2) = (Mount::new(&first), Mount::new(&out));
    let (s1, s2) = (m1.dir.path().join(snapshots), m2.dir.path().join(snapshots));
    let old: Vec<_> = fs::read_dir(&s1)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(!old.is_empty());
    for n in &old {
        assert_eq!(
            tree_listing(&s1.join(n)),
            tree_listing(&s2.join(n)),
            "snapshot {n:?} changed"
        );
    }
    assert!(
        fs::read_dir(&s2).unwrap().count() > old.len(),
        "no new snapshot"
    );
    drop((m1, m2));

    let target = &env().dind_image;
    let (text, (blobs, snaps)) = on_real_containerd(&out, target, &ctr_script(layers, second));
    let listed = cri_images(&text);
    assert_eq!(listed.len(), 2, "crictl images:\n{text}");
    assert!(listed.iter().all(|i| i.3), "not all pinned:\n{text}");
    let got: Vec<&str> = listed.iter().map(|i| i.2.as_str()).collect();
    for want in [&f.listed[0].1, &f.listed[1].1] {
        assert!(got.contains(&want.as_str()), "{want} missing: {got:?}");
    }
    assert_runs(target, &text);
    assert!(text.contains("\n2\n"), "{text}");
    let left = text.lines().find_map(|l| l.strip_prefix("LEFT ")).unwrap();
    assert_eq!(
        left,
        format!("{blobs} {snaps}"),
        "garbage collected:\n{text}"
    );
}

/// `--cache` for containerd's store: a second run downloads nothing it
/// has; as containerd's store is written whole, the images of earlier runs
/// that this one does not list leave the cache (and so the output); the
/// cache lists as containerd's and is removed with its name.
#[test]
fn containerd_cache_keeps_the_run_images() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let (layers, second) = (&f.listed[0].0, &f.listed[1].0);
    let cache = format!("fpctrd-{}", std::process::id());
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", "current"], tmp.path());
    let out = tmp.path().join("out.bin");
    let (d, o_) = (disk.to_str().unwrap(), out.to_str().unwrap());
    let run = |what: &str, images: &[&str]| -> (serde_json::Value, String) {
        let _ = fs::remove_file(&out);
        let mut args = vec![d, "-o", o_, "--cache", &cache, "--json"];
        args.extend(["--sandbox-image", "none"]);
        for i in images {
            args.extend(["--containerd-image", i]);
        }
        let o = populate(&args);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        assert_eq!(leftovers(), "", "{what}");
        assert_fsck_clean(&out);
        (serde_json::from_slice(&o.stdout).unwrap(), stderr(&o))
    };
    let (cold, _) = run("cold", &[layers]);
    assert_eq!(cold["stores"][0]["kind"], "cache", "{cold}");
    assert_eq!(cold["images"][0]["source"], "registry", "{cold}");
    assert!(downloaded(&cold)[0] >= 2, "{cold}");
    let (warm, _) = run("warm", &[layers, second]);
    assert_eq!(warm["images"][0]["source"], "cache", "{warm}");
    assert_eq!(warm["images"][1]["source"], "registry", "{warm}");
    // The second image shares its base layer with the first.
    let d_warm = downloaded(&warm);
    assert_eq!(d_warm[0], 0, "{warm}");
    assert!(d_warm[1] >= 1, "{warm}");
    let (only, err) = run("the second alone", &[second]);
    assert_eq!(downloaded(&only), [0], "{only}");
    assert!(
        err.contains(&format!(
            "removed {layers} from the cache (the store is written whole)"
        )),
        "{err}"
    );
    let inv = tool(&["inspect", "--json", out.to_str().unwrap()]);
    let second_repo = second.split(':').next().unwrap();
    assert!(
        !inv.contains("fp/layers") && inv.contains(second_repo),
        "the first run's image was written: {inv}"
    );
    tool(&["verify", out.to_str().unwrap()]);

    let listed = tool(&["cache", "ls"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&cache) && l.contains("containerd")),
        "{listed}"
    );
    tool(&["cache", "rm", &cache]);
    assert!(!tool(&["cache", "ls"]).contains(&cache));
}

/// The sha256 of a file, as `sha256sum` gives it.
fn file_sha256(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    format!("{:x}", h.finalize())
}

/// Every entry below /var/lib/docker in ROOT of `disk`: path -> (mode,
/// owner, size, link target, content hash of small files, mtime, ctime).
type Entries = BTreeMap<String, (u32, u32, u64, String, String, i64, i64)>;

fn docker_entries(disk: &Path) -> Entries {
    use std::os::unix::fs::MetadataExt;
    let m = Mount::new(disk);
    let root = m.dir.path().join("var/lib/docker");
    let mut out = BTreeMap::new();
    let mut todo = vec![root.clone()];
    while let Some(p) = todo.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(&root).unwrap().display().to_string();
        let target = fs::read_link(&p).map_or(String::new(), |t| t.display().to_string());
        let content = match md.is_file() && md.len() < 4096 {
            true => sha256(&fs::read(&p).unwrap()),
            false => String::new(),
        };
        out.insert(
            rel,
            (
                md.mode(),
                md.uid(),
                md.len(),
                target,
                content,
                md.mtime(),
                md.ctime(),
            ),
        );
        if md.is_dir() {
            todo.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

/// Issue 19: the same images by digest give the same bytes, whatever the
/// time, the cache (cold, or warm with other images), the store medium
/// and the jobs; a lock file pins what a tag resolved to, and --locked
/// names a tag that moved since. SOURCE_DATE_EPOCH changes only the times
/// the tool stamps. (Every output is made so: `populate_truth` runs the
/// images of one with Docker 26, 28 and 29.)
#[test]
fn the_same_images_give_the_same_bytes() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let reg = &env().registry;
    // A tag of this test's own, set to image A (again, on a rerun).
    let tag = format!("{reg}/fp/locked:1");
    let (id_a, digest_a) = make_image(&tag, &[layer(&[L::File("a", b"image A", 0o644)])]);
    let (tmp, disk, before, _) = disk_for_run("current");
    let list = tmp.path().join("images.list");
    fs::write(&list, format!("{tag}\n{}\n", f.listed[0].0)).unwrap();
    let lock = tmp.path().join("images.lock");
    let out = |name: &str| tmp.path().join(name);
    let (list_s, lock_s) = (list.to_str().unwrap(), lock.to_str().unwrap());
    let run = |envs: &[(&str, &str)], out: &Path, more: &[&str]| {
        let mut args = vec![disk.to_str().unwrap(), "-l", list_s, "-o"];
        args.push(out.to_str().unwrap());
        args.extend(["--json", "--lock", lock_s]);
        args.extend(more);
        let o = populate_env(envs, &args);
        assert!(
            o.status.success(),
            "populate {more:?} failed: {}",
            stderr(&o)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json output");
        v["output_sha256"].as_str().unwrap_or("").to_string()
    };
    // Cold, in memory, one image at a time.
    let first = run(
        &[],
        &out("1.bin"),
        &["--store", "memory", "--jobs", "1", "--sha256"],
    );
    assert_eq!(
        first,
        file_sha256(&out("1.bin")),
        "--sha256 is not sha256sum's"
    );
    assert_eq!(
        file_digest(&disk),
        before,
        "the input disk image was modified"
    );
    let locked: serde_json::Value = serde_json::from_slice(&fs::read(&lock).unwrap()).unwrap();
    let entry = &locked["images"][0];
    assert_eq!(entry["source"], tag.as_str(), "{locked}");
    assert_eq!(
        entry["digest"].as_str().unwrap(),
        digest_a.split_once('@').unwrap().1,
        "{locked}"
    );
    assert_eq!(entry["id"].as_str().unwrap(), id_a, "{locked}");
    assert_eq!(entry["platform"], "linux/amd64", "{locked}");

    // Warm: a cache that holds other images (one shares the base layer of
    // a listed one, from another repository), on disk, six at a time, a
    // few seconds later, the lock followed.
    let cache = format!("fp-test-repro-{}", std::process::id());
    let other = populate(&[
        disk.to_str().unwrap(),
        &f.unlisted,
        &f.listed[1].0,
        "--cache",
        &cache,
        "-o",
        out("other.bin").to_str().unwrap(),
    ]);
    assert!(other.status.success(), "{}", stderr(&other));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let warm = [
        "--cache", &cache, "--store", "disk", "--jobs", "6", "--locked", "--sha256",
    ];
    let second = run(&[], &out("2.bin"), &warm);
    tool(&["cache", "rm", &cache]);
    assert_eq!(second, first, "a warm run gave other bytes than a cold one");

    // SOURCE_DATE_EPOCH: only the times the tool stamps differ.
    let (t1, t2) = (1_700_000_000i64, 1_700_000_100i64);
    let at = |t: i64, name: &str| {
        let t = t.to_string();
        run(
            &[("SOURCE_DATE_EPOCH", t.as_str())],
            &out(name),
            &["--locked"],
        );
        docker_entries(&out(name))
    };
    let (e1, e2) = (at(t1, "t1.bin"), at(t2, "t2.bin"));
    assert_ne!(file_sha256(&out("t1.bin")), file_sha256(&out("t2.bin")));
    assert_eq!(e1.keys().collect::<Vec<_>>(), e2.keys().collect::<Vec<_>>());
    let mut kept = 0;
    for (path, a) in &e1 {
        let b = &e2[path];
        assert_eq!(
            (a.0, a.1, a.2, &a.3, &a.4),
            (b.0, b.1, b.2, &b.3, &b.4),
            "{path}"
        );
        assert_eq!(
            (a.6, b.6),
            (t1, t2),
            "{path}: ctime is not SOURCE_DATE_EPOCH"
        );
        match a.5 == b.5 {
            // A file of a layer keeps its time.
            true => {
                assert!(path.contains("/diff/"), "{path}: {} is not stamped", a.5);
                kept += 1;
            }
            false => assert_eq!((a.5, b.5), (t1, t2), "{path}: mtime"),
        }
    }
    assert!(kept > 5, "no layer file kept its time");
    assert_fsck_clean(&out("t1.bin"));

    // The tag moves: --locked names it and writes nothing.
    make_image(&tag, &[layer(&[L::File("a", b"image B", 0o644)])]);
    let moved = out("moved.bin");
    let mut args = vec![disk.to_str().unwrap(), "-l", list_s, "-o"];
    args.push(moved.to_str().unwrap());
    args.extend(["--lock", lock_s, "--locked"]);
    let o = populate(&args);
    assert_clean_failure(&o, &disk, before, &moved, &format!("the tag {tag} moved"));
    // The old digest, pinned in the list, still gives the first bytes.
    let pinned = format!("{tag}@{}", digest_a.split_once('@').unwrap().1);
    fs::write(&list, format!("{pinned}\n{}\n", f.listed[0].0)).unwrap();
    let again = run(&[], &out("3.bin"), &["--sha256"]);
    assert_eq!(again, first, "the locked digest gave other bytes");
    // A line the lock lacks is refused before anything is pulled.
    let lock_of_pinned = fs::read_to_string(&lock).unwrap();
    assert!(lock_of_pinned.contains(&pinned), "{lock_of_pinned}");
    fs::write(
        &list,
        format!("{pinned}\n{}\n{}\n", f.listed[0].0, f.unlisted),
    )
    .unwrap();
    let o = populate(&[
        disk.to_str().unwrap(),
        "-l",
        list_s,
        "-o",
        moved.to_str().unwrap(),
        "--lock",
        lock_s,
        "--locked",
    ]);
    assert_clean_failure(&o, &disk, before, &moved, "has no entry for");
    assert!(stderr(&o).contains(&f.unlisted), "{}", stderr(&o));
}
