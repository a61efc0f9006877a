//! What a new user sees when the build cannot find libext2fs: one line
//! naming the packages to install, from build.rs, before anything else
//! fails (instead of a C compiler error about a missing header).

use std::process::Command;

#[test]
fn missing_libext2fs_names_the_packages_in_one_line() {
    let manifest = env!("CARGO_MANIFEST_DIR");
    // A separate target dir (kept under target/ so that later runs reuse
    // the dependencies built there) and a pkg-config that finds nothing.
    let out = Command::new(env!("CARGO"))
        .args(["check", "--lib", "--quiet", "--manifest-path"])
        .arg(format!("{manifest}/Cargo.toml"))
        .env(
            "CARGO_TARGET_DIR",
            format!("{manifest}/target/no-libext2fs"),
        )
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
