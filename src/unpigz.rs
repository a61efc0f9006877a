//! The tool as `unpigz -d -c`: what the build container's daemon runs to
//! decompress a gzip layer when the container image has no unpigz of its
//! own (Debian's dind images do not; the official `docker:dind` does).
//!
//! dockerd (moby's go-archive) and containerd look `unpigz` up on their
//! PATH once and then run `unpigz -d -c` with the compressed layer on
//! standard input, reading the tar from standard output; without one they
//! inflate with Go's compress/gzip, several times slower. The helper's init
//! puts a link named `unpigz` to this executable first on the daemon's PATH
//! ([`provided_path`]); `main.rs` sends an executable called `unpigz` here.
//!
//! Inflate is zlib-rs (through flate2), the same bytes as gzip's: a
//! multi-member stream is read whole, and anything after the last member
//! that is not another member is an error, as Go's gzip reader says too.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::process::ExitCode;

/// The name the daemons look up.
pub const NAME: &str = "unpigz";

/// The only invocation supported: decompress standard input to standard
/// output. pigz's options that change nothing here are accepted too.
fn check_args(args: &[OsString]) -> Result<(), String> {
    let mut args = args.iter().map(|a| a.to_string_lossy());
    while let Some(a) = args.next() {
        match a.as_ref() {
            "--decompress" | "--stdout" | "--to-stdout" | "--keep" | "--quiet" => {}
            "-p" | "--processes" => {
                args.next();
            }
            s if s.len() > 1 && s.starts_with('-') && !s.starts_with("--") => {
                if let Some(c) = s[1..].chars().find(|c| !"dckq".contains(*c)) {
                    return Err(format!("option -{c} is not supported"));
                }
            }
            other => return Err(format!("{other:?}: only standard input is read")),
        }
    }
    Ok(())
}

/// Inflates the gzip stream `input` (every member) into `out`; returns
/// the bytes written.
pub fn inflate(input: impl Read, out: impl Write) -> io::Result<u64> {
    let mut gz = flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, input));
    // io::copy inflates straight into the BufWriter's buffer.
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let n = io::copy(&mut gz, &mut out)?;
    out.flush()?;
    Ok(n)
}

/// Runs as `unpigz ARGS`: 0 once the whole stream is inflated, else 1 with
/// the reason on stderr (the daemon puts it in the pull's error).
pub fn main(args: &[OsString]) -> ExitCode {
    if let Err(e) = check_args(args) {
        eprintln!(
            "unpigz (flatcar-preload): {e}; only `unpigz -d -c` (stdin to stdout) is supported"
        );
        return ExitCode::from(1);
    }
    match inflate(io::stdin().lock(), io::stdout().lock()) {
        Ok(_) => ExitCode::SUCCESS,
        // The reader went away (the daemon cancelled the pull).
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::from(1),
        Err(e) => {
            eprintln!("unpigz (flatcar-preload): inflating standard input: {e}");
            ExitCode::from(1)
        }
    }
}

/// Whether `argv0` names this program as unpigz.
pub fn called_as(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name() == Some(OsStr::new(NAME))
}

/// The PATH a container gets when its image sets none (runc's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The PATH for the build container's daemon: None (keep it) when one of
/// its directories holds an executable `unpigz` (the image's own is used),
/// else `dir` (where the link to this program is) first, then `path` (or
/// the default one when unset: the daemon still finds containerd and runc).
pub fn provided_path(path: Option<&OsStr>, dir: &Path) -> Option<OsString> {
    let path = path.unwrap_or(OsStr::new(DEFAULT_PATH));
    if std::env::split_paths(path).any(|d| is_executable(&d.join(NAME))) {
        return None;
    }
    let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(path));
    std::env::join_paths(dirs).ok()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn inflates_every_member() {
        let a: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let b = b"second member\n".repeat(1000);
        let mut input = gz(&a, 6);
        input.extend(gz(&b, 1));
        input.extend(gz(b"", 9));
        let mut out = vec![];
        let n = inflate(&input[..], &mut out).unwrap();
        assert_eq!(n as usize, a.len() + b.len());
        assert_eq!(out, [a, b].concat());
    }

    #[test]
    fn refuses_what_is_not_gzip() {
        let mut input = gz(b"data", 6);
        input.extend(b"trailing garbage");
        assert!(inflate(&input[..], &mut vec![]).is_err());
        let mut cut = gz(&b"data".repeat(1000), 6);
        cut.truncate(cut.len() - 4);
        assert!(inflate(&cut[..], &mut vec![]).is_err());
        assert!(inflate(&b"plain text"[..], &mut vec![]).is_err());
    }

    #[test]
    fn takes_the_daemons_arguments_only() {
        let ok = |a: &[&str]| check_args(&a.iter().map(OsString::from).collect::<Vec<_>>());
        assert!(ok(&["-d", "-c"]).is_ok());
        assert!(ok(&["-dc", "-p", "4"]).is_ok());
        assert!(ok(&["--decompress", "--stdout"]).is_ok());
        assert!(ok(&["-d", "layer.gz"]).is_err());
        assert!(ok(&["-z"]).is_err());
    }

    #[test]
    fn the_images_own_unpigz_wins() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ours = Path::new("/fp-helper/bin");
        let plain = std::env::join_paths([a.path(), b.path()]).unwrap();
        let with_ours = |rest: &OsStr| {
            let mut p = OsString::from("/fp-helper/bin:");
            p.push(rest);
            p
        };
        assert_eq!(provided_path(Some(&plain), ours), Some(with_ours(&plain)));
        // No PATH: the default one comes after ours, unless it has an unpigz.
        let default_has = std::env::split_paths(DEFAULT_PATH).any(|d| is_executable(&d.join(NAME)));
        assert_eq!(
            provided_path(None, ours),
            (!default_has).then(|| with_ours(OsStr::new(DEFAULT_PATH)))
        );
        let exe = b.path().join(NAME);
        std::fs::write(&exe, b"#!/bin/sh\n").unwrap();
        // Not executable: not a command.
        assert_eq!(provided_path(Some(&plain), ours), Some(with_ours(&plain)));
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(provided_path(Some(&plain), ours), None);
    }
}
