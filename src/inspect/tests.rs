use std::path::Path;

use sha2::{Digest, Sha256};

use super::*;
use crate::fsread::HostDir;
use crate::store::{fixture_meta_db as meta_db, DockerStore};

const DIFF_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DIFF_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
/// sha256("<DIFF_A> <DIFF_B>"), computed with sha256sum.
const CHAIN_AB: &str = "ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c";

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

struct Fixture {
    dir: tempfile::TempDir,
    app_id: String,
    arm_id: String,
}

/// A Docker store with a tagged two-layer amd64 image, an untagged arm64/v8
/// one, and a repositories.json entry whose image is gone.
fn docker_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let app = format!(
        r#"{{"architecture":"amd64","os":"linux","created":"2024-05-01T12:34:56.789Z","rootfs":{{"type":"layers","diff_ids":["{DIFF_A}","{DIFF_B}"]}}}}"#
    );
    let arm = format!(
        r#"{{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{{"type":"layers","diff_ids":["{DIFF_B}"]}}}}"#
    );
    let app_hex = format!("{:x}", Sha256::digest(app.as_bytes()));
    let arm_hex = format!("{:x}", Sha256::digest(arm.as_bytes()));
    let img = "var/lib/docker/image/overlay2";
    write(
        r,
        &format!("{img}/imagedb/content/sha256/{app_hex}"),
        app.as_bytes(),
    );
    write(
        r,
        &format!("{img}/imagedb/content/sha256/{arm_hex}"),
        arm.as_bytes(),
    );
    let a_hex = &DIFF_A[7..];
    let b_hex = &DIFF_B[7..];
    write(r, &format!("{img}/layerdb/sha256/{a_hex}/size"), b"1500000");
    write(
        r,
        &format!("{img}/layerdb/sha256/{CHAIN_AB}/size"),
        b"2500000\n",
    );
    write(r, &format!("{img}/layerdb/sha256/{b_hex}/size"), b"42");
    let repos = format!(
        r#"{{"Repositories":{{
            "registry.example/app":{{
                "registry.example/app:1.0":"sha256:{app_hex}",
                "registry.example/app:latest":"sha256:{app_hex}",
                "registry.example/app@sha256:{d}":"sha256:{app_hex}"}},
            "gone":{{"gone:1":"sha256:{gone}"}}}}}}"#,
        d = "d".repeat(64),
        gone = "e".repeat(64),
    );
    write(r, &format!("{img}/repositories.json"), repos.as_bytes());
    std::fs::create_dir_all(r.join("var/lib/docker/overlay2/l")).unwrap();
    Fixture {
        dir,
        app_id: format!("sha256:{app_hex}"),
        arm_id: format!("sha256:{arm_hex}"),
    }
}

fn users(d: &DockerStore) -> Vec<(u32, bool)> {
    d.used_by.iter().map(|u| (u.docker, u.uses_store)).collect()
}

#[test]
fn lists_the_images_of_a_docker_store() {
    let f = docker_fixture();
    let inv = inventory(&HostDir(f.dir.path().into())).unwrap();
    assert!(inv.stores.containerd.is_none());
    let d = inv.stores.docker.expect("a docker store");
    assert_eq!(d.driver, "overlay2");
    assert_eq!(d.images.len(), 2, "{:#?}", d.images);

    let app = &d.images[0];
    assert_eq!(app.id, f.app_id);
    assert_eq!(
        app.tags,
        ["registry.example/app:1.0", "registry.example/app:latest"]
    );
    assert_eq!(
        app.digests,
        [format!("registry.example/app@sha256:{}", "d".repeat(64))]
    );
    assert_eq!(app.platform, "linux/amd64");
    assert_eq!(app.created.as_deref(), Some("2024-05-01T12:34:56.789Z"));
    assert_eq!(app.layers, 2);
    assert_eq!(app.size_bytes, 4_000_000);

    let arm = &d.images[1];
    assert_eq!(arm.id, f.arm_id);
    assert!(arm.tags.is_empty() && arm.digests.is_empty());
    assert_eq!(arm.platform, "linux/arm64/v8");
    assert_eq!(arm.created, None);
    assert_eq!((arm.layers, arm.size_bytes), (1, 42));

    // overlay2/ has content: Docker 29 keeps the graph driver.
    assert_eq!(users(&d), [(26, true), (28, true), (29, true)]);
}

#[test]
fn docker_29_takes_containerd_when_overlay2_is_empty() {
    let f = docker_fixture();
    std::fs::remove_dir(f.dir.path().join("var/lib/docker/overlay2/l")).unwrap();
    let d = inventory(&HostDir(f.dir.path().into()))
        .unwrap()
        .stores
        .docker
        .unwrap();
    assert_eq!(users(&d), [(26, true), (28, true), (29, false)]);
    assert!(
        d.used_by[2].why.contains("fresh install"),
        "{:?}",
        d.used_by[2]
    );
}

#[test]
fn a_daemon_json_that_turns_on_the_snapshotter_is_honoured() {
    let f = docker_fixture();
    write(
        f.dir.path(),
        "etc/docker/daemon.json",
        br#"{"features":{"containerd-snapshotter":true}}"#,
    );
    let d = inventory(&HostDir(f.dir.path().into()))
        .unwrap()
        .stores
        .docker
        .unwrap();
    assert_eq!(users(&d), [(26, false), (28, false), (29, false)]);
}

#[test]
fn no_store_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(&HostDir(dir.path().into())).unwrap();
    assert!(inv.stores.docker.is_none() && inv.stores.containerd.is_none());
    let mut out = vec![];
    print_table(&inv, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("Docker: no image store"), "{out}");
    assert!(out.contains("containerd: none"), "{out}");
}

#[test]
fn a_broken_config_names_the_image() {
    let f = docker_fixture();
    let hex = &f.arm_id[7..];
    write(
        f.dir.path(),
        &format!("var/lib/docker/image/overlay2/imagedb/content/sha256/{hex}"),
        b"{not json",
    );
    let err = inventory(&HostDir(f.dir.path().into())).unwrap_err();
    assert!(format!("{err:#}").contains(&f.arm_id), "{err:#}");
}

#[test]
fn reads_containerd_images_from_a_real_meta_db() {
    let f = docker_fixture();
    write(
        f.dir.path(),
        "var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db",
        &meta_db(),
    );
    let inv = inventory(&HostDir(f.dir.path().into())).unwrap();
    let c = inv.stores.containerd.expect("containerd store");
    let got: Vec<(String, String, String, String)> = c
        .namespaces
        .iter()
        .flat_map(|ns| {
            ns.images.iter().map(|i| {
                (
                    ns.name.clone(),
                    i.name.clone(),
                    i.digest.clone(),
                    i.media_type.clone(),
                )
            })
        })
        .collect();
    let s = |x: &str| x.to_string();
    let manifest = s("application/vnd.docker.distribution.manifest.v2+json");
    let second = s("sha256:919e4425f5ca505216673714e1f24e498de2275d64b0f89c7114b453b5ea5e8e");
    assert_eq!(
        got,
        [
            (
                s("k8s.io"),
                s("127.0.0.1:5000/fp/second:2"),
                second.clone(),
                manifest.clone()
            ),
            (
                s("k8s.io"),
                s("sha256:96439aab829ffc76fabf38979afaac9c6f70f069c186e594c2eb4d3af68f0ede"),
                second,
                manifest.clone()
            ),
            (
                s("ns1"),
                s("127.0.0.1:5000/fp/multi:1"),
                s("sha256:63149973289d6ceed58a3092c677cec8db2cd96646491de1a965d782d021213d"),
                s("application/vnd.docker.distribution.manifest.list.v2+json")
            ),
            (
                s("ns1"),
                s("127.0.0.1:5000/fp/test:1"),
                s("sha256:63059b2fc38864367430f2a8217401fdfaf4d2fed8b46805a4cd360639ab1467"),
                manifest
            ),
        ]
    );
}

#[test]
fn containerd_without_a_database_has_no_images() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("var/lib/containerd")).unwrap();
    let inv = inventory(&HostDir(dir.path().into())).unwrap();
    assert!(inv.stores.containerd.unwrap().namespaces.is_empty());
}

#[test]
fn the_table_shows_what_a_user_needs() {
    let f = docker_fixture();
    write(
        f.dir.path(),
        "var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db",
        &meta_db(),
    );
    let mut inv = inventory(&HostDir(f.dir.path().into())).unwrap();
    inv.root = RootSpace {
        size_bytes: 2_000_000_000,
        free_bytes: 1_500_000_000,
    };
    let mut out = vec![];
    print_table(&inv, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let row = lines
        .iter()
        .find(|l| l.starts_with("registry.example/app:1.0, registry.example/app:latest"))
        .unwrap_or_else(|| panic!("{out}"));
    for cell in [
        &f.app_id[7..19],
        "linux/amd64",
        "2024-05-01 12:34:56",
        " 2 ",
        "3.81 MiB",
    ] {
        assert!(row.contains(cell), "{cell:?} missing in {row:?}");
    }
    let row = lines
        .iter()
        .find(|l| l.starts_with("<none>"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("linux/arm64/v8") && row.contains("42 B"),
        "{row}"
    );
    assert!(out.contains(&format!(
        "  {}  registry.example/app@sha256:{}",
        &f.app_id[7..19],
        "d".repeat(64)
    )));
    assert!(out.contains("Docker 29 (alpha): yes"), "{out}");
    let header = lines
        .iter()
        .find(|l| l.starts_with("NAMESPACE"))
        .unwrap_or_else(|| panic!("{out}"));
    fn last2(l: &str) -> Vec<&str> {
        l.split_whitespace().rev().take(2).collect()
    }
    assert_eq!(last2(header), ["UNPACKED", "PINNED"], "{header}");
    // Pulled with ctr, not pinned; its blobs are not in the fixture.
    let row = lines
        .iter()
        .find(|l| l.starts_with("ns1") && l.contains("127.0.0.1:5000/fp/test:1"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(last2(row), ["no", "no"], "{row}");
    assert!(
        out.contains("ROOT: 1.86 GiB in all, 1.40 GiB free"),
        "{out}"
    );
}

#[test]
fn json_field_names_are_the_documented_ones() {
    let f = docker_fixture();
    let inv = inventory(&HostDir(f.dir.path().into())).unwrap();
    let v = serde_json::to_value(&inv).unwrap();
    let img = &v["docker"]["images"][0];
    for k in [
        "id",
        "tags",
        "digests",
        "platform",
        "created",
        "layers",
        "size_bytes",
    ] {
        assert!(img.get(k).is_some(), "{k} missing in {img}");
    }
    let user = &v["docker"]["used_by"][0];
    for k in ["docker", "channels", "uses_store", "why"] {
        assert!(user.get(k).is_some(), "{k} missing in {user}");
    }
    assert_eq!(v["docker"]["driver"], "overlay2");
    assert!(v["containerd"].is_null());
    assert_eq!(v["root"]["size_bytes"], 0);
    assert_eq!(v["root"]["free_bytes"], 0);
}
