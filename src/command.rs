//! Running the external tools (e2fsck, resize2fs, qemu-img): one way, with
//! the command line and the tail of its output in the error.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Where e2fsprogs lives, which a Debian user's PATH lacks.
const SBIN: &[&str] = &["/usr/sbin", "/sbin"];

/// Runs `program` as PATH finds it, else from one of `fallback`, with
/// `env` added to its environment.
fn output<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    fallback: &[&str],
    env: &[(&str, &str)],
) -> std::io::Result<Output> {
    let run = |p: &OsStr| {
        Command::new(p)
            .args(args)
            .envs(env.iter().copied())
            .output()
    };
    match run(program.as_ref()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !program.contains('/') => {
            for dir in fallback {
                let p = std::path::Path::new(dir).join(program);
                if p.is_file() {
                    return run(p.as_os_str());
                }
            }
            Err(e)
        }
        other => other,
    }
}

/// Runs `program` with `args` to completion. An exit code outside `ok`
/// fails with the command line and the last lines of its output; a program
/// that cannot be started fails with `missing`, which says what to install.
pub(crate) fn run<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    ok: &[i32],
    missing: &str,
) -> Result<()> {
    run_with(program, args, ok, missing, &[])
}

/// [`run`] with `env` added to the program's environment.
pub(crate) fn run_with<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    ok: &[i32],
    missing: &str,
    env: &[(&str, &str)],
) -> Result<()> {
    let out = output(program, args, SBIN, env)
        .with_context(|| format!("running {program} ({missing})"))?;
    let code = out.status.code();
    if !code.is_some_and(|c| ok.contains(&c)) {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let line: Vec<String> = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let how = match (code, out.status.signal()) {
            (Some(code), _) => format!("failed (exit code {code})"),
            (None, Some(9)) => "was killed (signal 9, SIGKILL)".to_string(),
            (None, sig) => format!("was killed (signal {})", sig.unwrap_or(-1)),
        };
        let said = match tail(text.trim_end(), 10) {
            t if t.is_empty() => String::new(),
            t => format!(":\n{t}"),
        };
        bail!("{program} {} {how}{said}", line.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_program_is_said_killed() {
        let err = run("sh", &["-c", "kill -KILL $$"], &[0], "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("was killed (signal 9, SIGKILL)"), "{err}");
    }

    #[test]
    fn failure_names_the_command_and_its_output() {
        let err = run("sh", &["-c", "echo one; echo two >&2; exit 3"], &[0], "")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sh -c"), "{err}");
        assert!(err.contains("exit code 3"), "{err}");
        assert!(err.ends_with("one\ntwo"), "{err}");
        run("sh", &["-c", "exit 1"], &[0, 1], "").unwrap();
        let err = run::<&str>("/nonexistent/tool", &[], &[0], "install it").unwrap_err();
        assert!(format!("{err:#}").contains("install it"), "{err:#}");
    }

    #[test]
    fn tools_outside_path_are_found_in_the_fallback_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("fp-test-tool-not-in-path");
        std::fs::write(&tool, "#!/bin/sh\necho found \"$1\"\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let name = "fp-test-tool-not-in-path";
        let err = output(name, &["x"], &[], &[]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let fallback = [dir.path().to_str().unwrap()];
        let out = output(name, &["x"], &fallback, &[]).unwrap();
        assert_eq!(out.stdout, b"found x\n");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
