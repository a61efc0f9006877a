// Builds the small C layer over libext2fs (src/disk/ext4/shim.c) and links
// libext2fs and libcom_err, both found through pkg-config. Set
// FLATCAR_PRELOAD_STATIC=1 (as .cargo/config.toml does) to link the static
// archives (for a binary that runs in a container without libc).

/// What to install, per distribution, when pkg-config cannot find libext2fs.
/// One line: cargo prints it as the build's only error.
const INSTALL_HINT: &str =
    "libext2fs (e2fsprogs' library) was not found through pkg-config; install both: \
     Debian/Ubuntu `apt-get install libext2fs-dev pkg-config` (or run ci/setup.sh as root), \
     Fedora `dnf install e2fsprogs-devel e2fsprogs-static glibc-static pkgconf-pkg-config`, \
     Arch `pacman -S e2fsprogs pkgconf`";

fn main() {
    println!("cargo:rerun-if-changed=src/disk/ext4/shim.c");
    println!("cargo:rerun-if-env-changed=FLATCAR_PRELOAD_STATIC");
    let statik = std::env::var_os("FLATCAR_PRELOAD_STATIC").is_some();
    // The pkg-config crate reruns the build script when PKG_CONFIG_PATH and
    // friends change; cargo_metadata(false) because the link lines below
    // differ from its own for static archives in system directories.
    let ext2fs = match pkg_config::Config::new()
        .statik(statik)
        .cargo_metadata(false)
        .env_metadata(true)
        .probe("ext2fs")
    {
        Ok(lib) => lib,
        Err(e) => {
            // pkg-config's own message spans many lines: say which of the
            // two things is missing instead.
            let what = match e {
                pkg_config::Error::Command { .. } => "the pkg-config program could not be run",
                _ => "pkg-config has no ext2fs.pc",
            };
            println!("cargo::error={INSTALL_HINT} ({what})");
            return;
        }
    };

    let mut cc = cc::Build::new();
    cc.file("src/disk/ext4/shim.c")
        .warnings(true)
        .flag_if_supported("-Wno-unused-parameter");
    for dir in &ext2fs.include_paths {
        cc.include(dir);
    }
    cc.compile("fpshim");

    // pkg-config leaves out -L for the system's own library directory
    // (Debian's multiarch dir, where libext2fs-dev puts both the .so and
    // the .a): add it from the .pc file so that the static archives are
    // found there too.
    if let Ok(libdir) = pkg_config::get_variable("ext2fs", "libdir") {
        if !libdir.is_empty() {
            println!("cargo:rustc-link-search=native={libdir}");
        }
    }
    for dir in &ext2fs.link_paths {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    let kind = if statik { "static" } else { "dylib" };
    // `--static --libs ext2fs` gives ext2fs and its private com_err; the
    // shim calls both.
    let mut libs = ext2fs.libs.clone();
    if !libs.iter().any(|l| l == "com_err") {
        libs.push("com_err".into());
    }
    for lib in &libs {
        println!("cargo:rustc-link-lib={kind}={lib}");
    }
}
