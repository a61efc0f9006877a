//! What a new user sees when the build cannot find libext2fs: one line
//! naming the packages to install, from build.rs, before anything else
//! fails (instead of a C compiler error about a missing header).

use std::process::Command;

#[test]
fn missing_libext2fs_names_the_packages_in_one_line() {
    let manifest = env!("CARGO_MANIFEST_DIR");
    // A crate of nothing but this repository's build.rs (and its build
    // dependencies, at the versions of Cargo.lock), so that the check needs
    // none of the tool's dependencies; in cargo's directory for the tests'
    // files (the checkout itself may belong to another user), reused by
    // later runs.
    let probe = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-libext2fs");
    std::fs::create_dir_all(probe.join("src")).unwrap();
    std::fs::write(probe.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        probe.join("Cargo.toml"),
        format!(
            "[package]\nname = \"build-probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             build = \"{manifest}/build.rs\"\n\
             [build-dependencies]\ncc = \"1\"\npkg-config = \"0.3\"\n\
             [workspace]\n"
        ),
    )
    .unwrap();
    std::fs::copy(format!("{manifest}/Cargo.lock"), probe.join("Cargo.lock")).unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["check", "--quiet", "--manifest-path"])
        .arg(probe.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", probe.join("target"))
        .env("PKG_CONFIG_PATH", "/nonexistent")
        .env("PKG_CONFIG_LIBDIR", "/nonexistent")
        .env_remove("PKG_CONFIG_SYSROOT_DIR")
        .output()
        .expect("running cargo");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build should fail:\n{err}");
    let line = err
        .lines()
        .find(|l| l.contains("libext2fs"))
        .unwrap_or_else(|| panic!("no line names libext2fs:\n{err}"));
    for want in [
        "libext2fs-dev",
        "Debian/Ubuntu",
        "e2fsprogs-devel",
        "Fedora",
        "Arch",
        "pacman -S e2fsprogs",
    ] {
        assert!(line.contains(want), "{want:?} missing from: {line}");
    }
    assert!(
        !err.contains("shim.c") && !err.contains("com_err.h"),
        "the build went on to the C compiler:\n{err}"
    );
}
