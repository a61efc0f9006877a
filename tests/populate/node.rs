//! The node's image beside the stores: Ignition and kernel arguments on OEM
//! (btrfs), files on the ESP (vfat), files, units and system extensions in
//! ROOT, booted images; each baked by one unprivileged `populate` and then
//! read back with the kernel (mounts) and the filesystems' own checkers.

use super::*;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Where partition `label` (GPT name) lies: (offset, size) in bytes.
fn part(disk: &Path, label: &str) -> (u64, u64) {
    let out = Command::new("sgdisk").arg("-p").arg(disk).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 7 && f.last() == Some(&label) && f[0].parse::<u32>().is_ok() {
            let start: u64 = f[1].parse().unwrap();
            let end: u64 = f[2].parse().unwrap();
            return (start * 512, (end + 1 - start) * 512);
        }
    }
    panic!("no partition {label} in {}", disk.display());
}

/// A partition's bytes copied out into `dir` (btrfs check and fsck.fat read
/// whole files).
fn extract(disk: &Path, label: &str, dir: &Path) -> PathBuf {
    let (off, size) = part(disk, label);
    let to = dir.join(format!("{label}.img"));
    let st = Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", to.display()))
        .args([
            "bs=1M",
            "iflag=skip_bytes,count_bytes",
            "conv=sparse",
            "status=none",
        ])
        .arg(format!("skip={off}"))
        .arg(format!("count={size}"))
        .status()
        .unwrap();
    assert!(st.success());
    to
}

/// A read-only loop mount of partition `label` (filesystem `fstype`).
struct PartMount {
    dir: tempfile::TempDir,
}

impl PartMount {
    fn new(disk: &Path, label: &str, fstype: &str) -> PartMount {
        let (off, size) = part(disk, label);
        let dir = tempfile::tempdir().unwrap();
        let o = Command::new("mount")
            .args(["-t", fstype, "-o"])
            .arg(format!("ro,loop,offset={off},sizelimit={size}"))
            .arg(disk)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "mount {label}: {}", stderr(&o));
        PartMount { dir }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }
}

impl Drop for PartMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn sh(script: &str) {
    let o = Command::new("bash")
        .args(["-euc", script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{script}: {}", stderr(&o));
}

fn btrfs_super(img: &Path) -> (String, String) {
    let o = Command::new("btrfs")
        .args(["inspect-internal", "dump-super"])
        .arg(img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (field("label"), field("fsid"))
}

/// The host inputs of a node: an Ignition config, a unit, a binary, a
/// bakery sysext (squashfs), a Flatcar sysext (a GPT image with an erofs
/// root) of `version`, firmware for the ESP.
struct Inputs {
    dir: tempfile::TempDir,
}

impl Inputs {
    fn new(version: &str, arch: &str) -> Inputs {
        let dir = user_dir();
        let d = dir.path().display().to_string();
        sh(&format!(
            r#"cd {d}
cat > config.ign <<'EOF'
{{"ignition":{{"version":"3.4.0"}},"storage":{{"files":[{{"path":"/etc/hostname","contents":{{"source":"data:,edge-1"}}}}]}}}}
EOF
cat > hello.service <<'EOF'
[Unit]
Description=hello
[Service]
ExecStart=/opt/bin/hello
[Install]
WantedBy=multi-user.target
EOF
mkdir -p bin && printf '#!/bin/sh\necho hello\n' > bin/hello
mkdir -p k8s/usr/lib/extension-release.d k8s/usr/bin
printf 'ID=_any\nARCHITECTURE={arch}\n' > k8s/usr/lib/extension-release.d/extension-release.kubernetes
printf 'kubelet' > k8s/usr/bin/kubelet
mksquashfs k8s kubernetes-v1.33.0-{arch}.raw -all-root -noappend -quiet >/dev/null
mkdir -p podman/usr/lib/extension-release.d
printf 'ID=flatcar\nVERSION_ID={version}\nARCHITECTURE={arch}\nSYSEXT_ID=podman\n' > podman/usr/lib/extension-release.d/extension-release.flatcar-podman
mkfs.erofs --quiet podman.erofs podman >/dev/null
truncate -s 8M flatcar-podman.raw
sgdisk -n 1:2048:+4M -t 1:4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709 -c 1:root-x86-64 flatcar-podman.raw >/dev/null
dd if=podman.erofs of=flatcar-podman.raw bs=512 seek=2048 conv=notrunc status=none
mkdir -p fw/overlays && printf 'firmware' > fw/RPI_EFI.fd && printf 'dtbo' > fw/overlays/x.dtbo
chmod -R a+rX .
chmod 0754 bin/hello
"#
        ));
        Inputs { dir }
    }
    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// One unprivileged run bakes images of both stores and the whole node;
/// then the kernel and the checkers find everything as asked.
fn bake_the_whole_node(layout: &str) {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let tmp = user_dir();
    let disk = disk_copy(&["--layout", layout, "--node"], tmp.path());
    let before = file_digest(&disk);
    let out = tmp.path().join("out.bin");
    let inputs = Inputs::new("4230.2.0", "x86-64");
    let oem_before = btrfs_super(&extract(&disk, "OEM", tmp.path()));
    let uki = layout == "uki";
    let (layers, second) = (&f.listed[0].0, &f.listed[1].0);
    // The kubelet's sandbox image, but on the UKI layout (verify
    // --air-gapped then names it missing).
    let pause = format!("{}/pause:3.10", env().registry);
    make_image(
        &pause,
        &[layer(&[L::Dir("bin"), L::File("pause", b"pause", 0o755)])],
    );
    let sandbox = if uki { "none" } else { pause.as_str() };
    let mut args: Vec<String> = [
        disk.to_str().unwrap(),
        layers,
        "--containerd-image",
        second,
        "--sandbox-image",
        sandbox,
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, value) in [
        ("--ignition", inputs.p("config.ign")),
        ("--ignition-base", inputs.p("config.ign")),
        (
            "--sysext",
            inputs.p("kubernetes-v1.33.0-x86-64.raw:kubernetes"),
        ),
        ("--flatcar-sysext", inputs.p("flatcar-podman.raw")),
        ("--esp-file", format!("{}:/firmware", inputs.p("fw"))),
        ("--root-file", format!("{}:/opt/bin", inputs.p("bin"))),
        (
            "--root-file",
            format!(
                "{}:/etc/systemd/system/hello.service",
                inputs.p("hello.service")
            ),
        ),
        ("--enable-unit", "hello.service".to_string()),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    if !uki {
        args.extend(["--kernel-arg".into(), "console=ttyS0".into()]);
    } else {
        // An enabled-sysext.conf of the user's, listing an extension that
        // is not baked: kept, podman added; verify --air-gapped names it.
        fs::write(inputs.dir.path().join("enabled-sysext.conf"), "python\n").unwrap();
        args.extend([
            "--root-file".into(),
            format!(
                "{}:/etc/flatcar/enabled-sysext.conf",
                inputs.p("enabled-sysext.conf")
            ),
        ]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = populate(&argv);
    assert!(o.status.success(), "populate failed: {}", stderr(&o));
    assert_eq!(
        file_digest(&disk),
        before,
        "the input disk image was modified"
    );
    assert_eq!(leftovers(), "", "containers or volumes left behind");
    assert_fsck_clean(&out);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json output");
    let node = &summary["node"];
    assert_eq!(node["ignition"].as_array().unwrap().len(), 2, "{node}");
    assert_eq!(
        node["unit_links"][0],
        "/etc/systemd/system/multi-user.target.wants/hello.service"
    );
    assert_eq!(
        node["flatcar_sysexts"][0],
        "/etc/flatcar/sysext/flatcar-podman-4230.2.0.raw"
    );
    // inspect lists it, verify checks it (also as air-gapped: the config
    // fetches nothing, the Flatcar extension is baked).
    let inv: serde_json::Value =
        serde_json::from_str(&tool(&["inspect", "--json", out.to_str().unwrap()])).unwrap();
    let n = &inv["node"];
    assert_eq!(n["root_partition"], if uki { 7 } else { 9 }, "{n}");
    assert_eq!(n["ignition"].as_array().unwrap().len(), 2, "{n}");
    let args: Vec<&str> = n["kernel_args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    match uki {
        true => assert_eq!(args, ["flatcar.autologin"], "{n}"),
        false => assert_eq!(args, ["flatcar.autologin", "console=ttyS0"], "{n}"),
    }
    let enabled = match uki {
        true => serde_json::json!(["python", "podman"]),
        false => serde_json::json!(["podman"]),
    };
    assert_eq!(n["flatcar_sysexts_enabled"], enabled, "{n}");
    assert_eq!(n["flatcar_version"], "4230.2.0", "{n}");
    assert_eq!(n["booted"].as_array().unwrap().len(), 0, "{n}");
    tool(&["verify", out.to_str().unwrap()]);
    let v = Command::new(bin())
        .args(["verify", "--air-gapped", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(v.status.success(), !uki, "{}", stderr(&v));
    for said in [
        "no sandbox (pause) image",
        "flatcar-python-4230.2.0.raw is not baked",
    ] {
        assert_eq!(stderr(&v).contains(said), uki, "{}", stderr(&v));
    }
    if !require_root("loop-mounting ROOT, OEM and the ESP") {
        return;
    }
    // ROOT, with the kernel.
    let m = Mount::new(&out);
    let r = |p: &str| m.dir.path().join(p.trim_start_matches('/'));
    assert!(r("/var/lib/docker/image/overlay2/repositories.json").exists());
    assert!(r("/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db").exists());
    let hello = fs::symlink_metadata(r("/opt/bin/hello")).unwrap();
    assert_eq!(
        (hello.uid(), hello.gid(), hello.mode() & 0o7777),
        (0, 0, 0o754)
    );
    assert_eq!(
        fs::read(r("/opt/bin/hello")).unwrap(),
        fs::read(inputs.p("bin/hello")).unwrap()
    );
    assert_eq!(
        fs::read_link(r(
            "/etc/systemd/system/multi-user.target.wants/hello.service"
        ))
        .unwrap(),
        Path::new("/etc/systemd/system/hello.service")
    );
    let raw = "/opt/extensions/kubernetes/kubernetes-v1.33.0-x86-64.raw";
    assert_eq!(
        fs::read(r(raw)).unwrap(),
        fs::read(inputs.p("kubernetes-v1.33.0-x86-64.raw")).unwrap()
    );
    assert_eq!(
        fs::read_link(r("/etc/extensions/kubernetes.raw")).unwrap(),
        Path::new(raw)
    );
    assert_eq!(
        fs::read(r("/etc/flatcar/sysext/flatcar-podman-4230.2.0.raw")).unwrap(),
        fs::read(inputs.p("flatcar-podman.raw")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(r("/etc/flatcar/enabled-sysext.conf")).unwrap(),
        if uki { "python\npodman\n" } else { "podman\n" }
    );
    drop(m);
    // OEM, with the kernel: the new files, and the old ones as they were.
    let oem = PartMount::new(&out, "OEM", "btrfs");
    assert_eq!(
        fs::read(oem.path("config.ign")).unwrap(),
        fs::read(inputs.p("config.ign")).unwrap()
    );
    assert!(oem.path("base/base.ign").exists());
    let grub = fs::read_to_string(oem.path("grub.cfg")).unwrap();
    assert!(
        grub.starts_with("set oem_id=\"qemu\"\nset linux_append=\"flatcar.autologin\"\n"),
        "{grub}"
    );
    assert_eq!(grub.contains("console=ttyS0"), !uki, "{grub}");
    let sysext = fs::metadata(oem.path("sysext/oem-qemu.raw")).unwrap();
    assert_eq!(
        (sysext.uid(), sysext.gid(), sysext.mode() & 0o7777),
        (1234, 55, 0o640)
    );
    let xattr = Command::new("getfattr")
        .args(["--only-values", "-n", "user.fp"])
        .arg(oem.path("oem-release"))
        .output()
        .unwrap();
    assert_eq!(xattr.stdout, [0x00, 0x0a, 0x01, 0x41, 0xff], "user.fp");
    let prop = Command::new("btrfs")
        .args(["property", "get"])
        .arg(oem.dir.path())
        .arg("compression")
        .output()
        .unwrap();
    let prop = String::from_utf8_lossy(&prop.stdout).into_owned();
    assert!(
        prop.contains("compression=zlib"),
        "compression property: {prop:?}"
    );
    assert_eq!(node["oem_lost_xattrs"], serde_json::json!([]), "{node}");
    drop(oem);
    let img = extract(&out, "OEM", tmp.path());
    assert_eq!(btrfs_super(&img), oem_before, "OEM label and UUID");
    let check = Command::new("btrfs")
        .args(["check", "--readonly"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(check.status.success(), "btrfs check: {}", stderr(&check));
    // The ESP: with the kernel where it has vfat, else with mtools; and
    // fsck.fat.
    let files = [
        ("firmware/RPI_EFI.fd", &b"firmware"[..]),
        ("firmware/overlays/x.dtbo", b"dtbo"),
        ("flatcar/first_boot", b""),
        ("EFI/boot/bootx64.efi", b"MZ fake loader"),
    ];
    let vfat = fs::read_to_string("/proc/filesystems")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("vfat"));
    if vfat {
        let esp = PartMount::new(&out, "EFI-SYSTEM", "vfat");
        for (p, want) in files {
            assert_eq!(fs::read(esp.path(p)).unwrap(), want, "{p}");
        }
    } else {
        eprintln!("the kernel has no vfat: reading the ESP with mtools");
        let (off, _) = part(&out, "EFI-SYSTEM");
        for (p, want) in files {
            let o = Command::new("mtype")
                .args([
                    "-i",
                    &format!("{}@@{off}", out.display()),
                    &format!("::/{p}"),
                ])
                .output()
                .unwrap();
            assert!(o.status.success(), "mtype {p}: {}", stderr(&o));
            assert_eq!(o.stdout, want, "{p}");
        }
    }
    let img = extract(&out, "EFI-SYSTEM", tmp.path());
    let fsck = Command::new("fsck.fat")
        .arg("-n")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "fsck.fat: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        stderr(&fsck)
    );
}

#[test]
fn whole_node_in_one_run() {
    bake_the_whole_node("current");
}

#[test]
fn whole_node_on_the_uki_layout() {
    bake_the_whole_node("uki");
}

#[test]
fn whole_node_on_the_older_layout() {
    bake_the_whole_node("old");
}

/// Each refusal fails before anything is written: a clear message, the
/// input unchanged, no output, nothing left in Docker.
#[test]
fn node_refusals() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let tmp = user_dir();
    let arm = Inputs::new("4230.2.0", "arm64");
    let older = Inputs::new("4081.1.0", "x86-64");
    let t = tmp.path();
    let write = |name: &str, text: &str| {
        let p = t.join(name);
        fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let bad_json = write("bad.ign", "{\"ignition\": {\"version\": \"3.4.0\"");
    let butane = write("butane.ign", "variant: flatcar\nversion: 1.0.0\n");
    let wipe = write(
        "wipe.ign",
        r#"{"ignition":{"version":"3.4.0"},"storage":{"filesystems":[{"device":"/dev/disk/by-label/ROOT","format":"btrfs","wipeFilesystem":true,"label":"ROOT"}]}}"#,
    );
    // ROOT wiped by its partition UUID: known only from the disk.
    let fixture = fixture(&["--layout", "current", "--node"]);
    let info = Command::new("sgdisk")
        .args(["-i", "9"])
        .arg(&fixture)
        .output()
        .unwrap();
    let part_uuid = String::from_utf8_lossy(&info.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Partition unique GUID: "))
        .unwrap()
        .trim()
        .to_lowercase();
    let wipe_uuid = write(
        "wipe-uuid.ign",
        &format!(
            r#"{{"ignition":{{"version":"3.4.0"}},"storage":{{"filesystems":[{{"device":"/dev/disk/by-partuuid/{part_uuid}","format":"ext4","wipeFilesystem":true}}]}}}}"#
        ),
    );
    let big = t.join("big.bin");
    fs::File::create(&big).unwrap().set_len(300 << 20).unwrap();
    fs::set_permissions(&big, fs::Permissions::from_mode(0o644)).unwrap();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("current", vec!["--ignition".into(), bad_json], "--ignition"),
        ("current", vec!["--ignition".into(), butane], "butane"),
        ("current", vec!["--ignition-base".into(), wipe], "ROOT"),
        ("current", vec!["--ignition".into(), wipe_uuid], &part_uuid),
        (
            "current",
            vec![
                "--sysext".into(),
                arm.p("kubernetes-v1.33.0-arm64.raw:kubernetes"),
            ],
            "ARCHITECTURE=arm64",
        ),
        (
            "current",
            vec!["--flatcar-sysext".into(), older.p("flatcar-podman.raw")],
            "4081.1.0",
        ),
        (
            "uki",
            vec!["--oem-file".into(), format!("{}:/big.bin", big.display())],
            "OEM",
        ),
        (
            "uki",
            vec!["--esp-file".into(), format!("{}:/big.bin", big.display())],
            "the EFI system partition",
        ),
        (
            "uki",
            vec!["--kernel-arg".into(), "console=ttyS0".into()],
            "unified kernel image",
        ),
        (
            "current",
            vec!["--enable-unit".into(), "nothere.service".into()],
            "nothere.service",
        ),
    ];
    for (layout, extra, want) in cases {
        let dir = user_dir();
        let disk = disk_copy(&["--layout", layout, "--node"], dir.path());
        let before = file_digest(&disk);
        let out = dir.path().join("out.bin");
        let mut args = vec![
            disk.to_str().unwrap().to_string(),
            f.listed[0].0.clone(),
            "-o".into(),
            out.to_str().unwrap().into(),
        ];
        args.extend(extra.iter().cloned());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = populate(&argv);
        assert_clean_failure(&o, &disk, before, &out, want);
    }
}

/// A booted image (machine-id, a host key, no first-boot flag) is refused,
/// each trap named; --reset-first-boot undoes them; --allow-booted bakes
/// as it is.
#[test]
fn booted_images() {
    let Some(_serial) = docker_test() else {
        return;
    };
    let f = fixtures();
    let dir = user_dir();
    let disk = disk_copy(&["--layout", "current", "--node"], dir.path());
    let (root_off, _) = part(&disk, "ROOT");
    let (esp_off, _) = part(&disk, "EFI-SYSTEM");
    let tmp = dir.path().display().to_string();
    sh(&format!(
        r#"cd {tmp}
printf '0123456789abcdef0123456789abcdef\n' > machine-id
printf 'KEY' > key
debugfs -w -f - '{d}?offset={root_off}' >/dev/null 2>&1 <<'EOF'
cd /
mkdir etc
mkdir etc/ssh
write machine-id etc/machine-id
write key etc/ssh/ssh_host_ed25519_key
EOF
mdel -i '{d}@@{esp_off}' ::/flatcar/first_boot
chmod a+r {d}
"#,
        d = disk.display()
    ));
    let before = file_digest(&disk);
    let out = dir.path().join("out.bin");
    let (d, o_) = (disk.to_str().unwrap(), out.to_str().unwrap());
    let image = &f.listed[0].0;
    let o = populate(&[d, image, "-o", o_]);
    assert_clean_failure(&o, &disk, before, &out, "was booted before");
    let err = stderr(&o);
    for trap in [
        "/etc/machine-id",
        "/etc/ssh/ssh_host_ed25519_key",
        "flatcar/first_boot",
    ] {
        assert!(err.contains(trap), "{trap} not named:\n{err}");
    }
    let o = populate(&[d, image, "-o", o_, "--reset-first-boot"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("removed /etc/machine-id"), "{err}");
    let view = ext4_view(&out);
    assert!(!view.exists("/etc/machine-id").unwrap());
    assert!(!view.exists("/etc/ssh/ssh_host_ed25519_key").unwrap());
    let flag = Command::new("mdir")
        .args(["-i", &format!("{o_}@@{esp_off}"), "::/flatcar"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&flag.stdout).contains("first_boot"),
        "{}",
        String::from_utf8_lossy(&flag.stdout)
    );
    fs::remove_file(&out).unwrap();
    let o = populate(&[d, image, "-o", o_, "--allow-booted"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(ext4_view(&out).exists("/etc/machine-id").unwrap());
    // verify --air-gapped names what the boot left; plain verify does not
    // look at it.
    tool(&["verify", o_]);
    let v = Command::new(bin())
        .args(["verify", "--air-gapped", o_])
        .output()
        .unwrap();
    assert!(!v.status.success());
    for trap in ["/etc/machine-id", "flatcar/first_boot"] {
        assert!(stderr(&v).contains(trap), "{}", stderr(&v));
    }
    assert_eq!(file_digest(&disk), before);
}
