// Builds the small C layer over libext2fs (src/ext4/shim.c) and links
// libext2fs and libcom_err. Set FLATCAR_PRELOAD_STATIC=1 to link the static
// archives (for a binary that runs in a container without libc).
fn main() {
    println!("cargo:rerun-if-changed=src/ext4/shim.c");
    println!("cargo:rerun-if-env-changed=FLATCAR_PRELOAD_STATIC");
    cc::Build::new()
        .file("src/ext4/shim.c")
        .warnings(true)
        .flag_if_supported("-Wno-unused-parameter")
        .compile("fpshim");
    let kind = if std::env::var_os("FLATCAR_PRELOAD_STATIC").is_some() {
        // Debian's -dev packages put the .a archives in the multiarch dir.
        let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
        let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
        let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
        println!("cargo:rustc-link-search=native=/usr/lib/{arch}-{os}-{env}");
        "static"
    } else {
        "dylib"
    };
    println!("cargo:rustc-link-lib={kind}=ext2fs");
    println!("cargo:rustc-link-lib={kind}=com_err");
}
