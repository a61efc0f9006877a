//! Kernel arguments in the OEM partition's `grub.cfg`.
//!
//! Flatcar's GRUB script sets `linux_append=""` and then sources
//! `(oem)/grub.cfg` when it exists, so that file is where a node's extra
//! kernel command line lives (OEM images already put e.g.
//! `set oem_id="qemu"` and `set linux_append="flatcar.autologin"` there).
//! We only ever append a line in the form Flatcar's documentation uses,
//! `set linux_append="$linux_append ARG..."`, so whatever the image already
//! sets survives, and Ignition's kargs helper (which edits unconditional,
//! non-indented `^set linux_append="` lines) can still find and edit it.

use anyhow::{bail, Result};

/// The comment written above the line we add, so a person reading the
/// file on the node knows where it came from.
const MARKER: &str = "# kernel arguments added by flatcar-preload";

/// The prefix of the lines GRUB-evaluated here and edited by Ignition's
/// kargs helper: unconditional, not indented, double-quoted.
const SET_PREFIX: &str = "set linux_append=\"";

/// The new grub.cfg: `existing` kept byte for byte (a missing final newline
/// added), then a comment line `# kernel arguments added by flatcar-preload`
/// and one line `set linux_append="$linux_append ARG1 ARG2"`.
///
/// Appending rather than rewriting keeps the OEM's own settings (`oem_id`,
/// console arguments) exactly as the image shipped them. Every argument is
/// checked with [`check_arg`] first, because the line is evaluated by GRUB
/// inside double quotes where `$`, `"` and `\` are special.
pub fn append_kernel_args(existing: Option<&[u8]>, args: &[String]) -> Result<Vec<u8>> {
    if args.is_empty() {
        bail!("no kernel arguments to add to the OEM grub.cfg");
    }
    for arg in args {
        check_arg(arg)?;
    }
    let existing = existing.unwrap_or_default();
    let mut out = Vec::with_capacity(existing.len() + 80);
    out.extend_from_slice(existing);
    if !existing.is_empty() && !existing.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(MARKER.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(SET_PREFIX.as_bytes());
    out.extend_from_slice(b"$linux_append");
    for arg in args {
        out.push(b' ');
        out.extend_from_slice(arg.as_bytes());
    }
    out.extend_from_slice(b"\"\n");
    Ok(out)
}

/// The kernel arguments a grub.cfg appends, evaluated as GRUB would for the
/// unconditional, non-indented `set linux_append="..."` lines in order
/// (with `$linux_append`/`${linux_append}` substituted), split on blanks;
/// for inspect/verify.
///
/// Only the line form Flatcar and Ignition use is understood: lines inside
/// `if`/`for`/`while`/`until` blocks or `{ }` bodies (menuentry, function)
/// are skipped because whether they run depends on the boot, and other
/// variables (`$oem_id`, ...) are left as written because their values come
/// from Flatcar's main GRUB script, which this file cannot see. Starting
/// from the empty value matches Flatcar's script, which sets
/// `linux_append=""` before sourcing the OEM file.
pub fn kernel_args(text: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    let mut value = String::new();
    let mut depth: usize = 0;
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if depth == 0 {
            if let Some(rest) = line.strip_prefix(SET_PREFIX) {
                if let Some(new) = evaluate_quoted(rest, &value) {
                    value = new;
                }
                // The rest of the line (after the closing quote) could
                // still hold `; if ...`; fall through to count it.
            }
        }
        depth = block_depth(line, depth);
    }
    value
        .split([' ', '\t', '\n'])
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Evaluates the inside of a GRUB double-quoted string that starts at
/// `rest` (just after the opening quote), substituting `linux_append`.
/// Inside GRUB's double quotes a backslash escapes only `$`, `"`, `\` and a
/// newline; other backslashes stay. `None` when the quote is not closed on
/// this line: such a line is not one we wrote nor one Ignition edits.
fn evaluate_quoted(rest: &str, current: &str) -> Option<String> {
    let mut out = String::new();
    let mut i = 0;
    while let Some(c) = rest[i..].chars().next() {
        let tail = &rest[i..];
        match c {
            '"' => return Some(out),
            '\\' => match tail[1..].chars().next() {
                Some(n @ ('$' | '"' | '\\')) => {
                    out.push(n);
                    i += 2;
                    continue;
                }
                _ => out.push('\\'),
            },
            '$' => {
                if let Some(len) = linux_append_ref(tail) {
                    out.push_str(current);
                    i += len;
                    continue;
                }
                out.push('$');
            }
            _ => out.push(c),
        }
        i += c.len_utf8();
    }
    None
}

/// The length of a `$linux_append` or `${linux_append}` reference at the
/// start of `s` (GRUB variable names run on over letters, digits and `_`,
/// so `$linux_appendx` is another variable).
fn linux_append_ref(s: &str) -> Option<usize> {
    if s.starts_with("${linux_append}") {
        return Some("${linux_append}".len());
    }
    let rest = s.strip_prefix("$linux_append")?;
    if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some("$linux_append".len())
}

/// The block nesting depth after `line`, counting GRUB's compound commands
/// by their keywords outside quotes and comments. Approximate on purpose:
/// it only has to tell top-level lines from lines inside a block.
fn block_depth(line: &str, mut depth: usize) -> usize {
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    let mut words = Vec::new();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '\\') => {
                chars.next();
                word.push('x');
            }
            (None, '#') if word.is_empty() => break,
            (None, ' ' | '\t' | ';') => words.push(std::mem::take(&mut word)),
            (None, c) => word.push(c),
        }
    }
    words.push(word);
    for w in words {
        match w.as_str() {
            "if" | "for" | "while" | "until" | "{" => depth += 1,
            "fi" | "done" | "}" => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    depth
}

/// Checks one `--kernel-arg` value before it goes inside GRUB's double
/// quotes: it must stay one argument and mean literally what was typed.
pub fn check_arg(arg: &str) -> Result<()> {
    if arg.is_empty() {
        bail!("kernel argument is empty; give a value such as --kernel-arg flatcar.autologin");
    }
    for c in arg.chars() {
        let why = match c {
            '\n' | '\r' => "contains a line break, which would end the grub.cfg line",
            c if c.is_whitespace() => {
                "contains whitespace; pass one argument per --kernel-arg (quoted kernel \
                 arguments with spaces are not supported)"
            }
            '"' | '\\' | '$' | '`' | ';' | '\'' | '{' | '}' => {
                return Err(anyhow::anyhow!(
                    "kernel argument {arg:?} contains `{c}`, which GRUB would interpret inside \
                     the double-quoted `set linux_append=\"...\"` line (quote, escape, variable \
                     or command syntax); remove it"
                ));
            }
            c if c.is_ascii_control() => {
                "contains a non-printable character, which GRUB's script would not pass on intact"
            }
            c if !c.is_ascii() => "contains a non-ASCII character; kernel arguments must be ASCII",
            _ => continue,
        };
        bail!("kernel argument {arg:?} {why}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn append_keeps_existing_bytes_and_adds_newline() {
        let old = b"set oem_id=\"qemu\"\r\nset linux_append=\"flatcar.autologin\"";
        let new = append_kernel_args(Some(old), &args(&["console=ttyS0", "a=b"])).unwrap();
        assert!(new.starts_with(old));
        let tail = &new[old.len()..];
        assert_eq!(
            tail,
            b"\n# kernel arguments added by flatcar-preload\n\
              set linux_append=\"$linux_append console=ttyS0 a=b\"\n"
        );
    }

    #[test]
    fn append_without_existing_file_or_to_empty_file() {
        let expected = "# kernel arguments added by flatcar-preload\n\
                        set linux_append=\"$linux_append x\"\n";
        for existing in [None, Some(&b""[..])] {
            let new = append_kernel_args(existing, &args(&["x"])).unwrap();
            assert_eq!(String::from_utf8(new).unwrap(), expected);
        }
    }

    #[test]
    fn append_output_evaluates_to_old_and_new_args() {
        let old = b"set oem_id=\"qemu\"\nset linux_append=\"flatcar.autologin\"\n";
        let new = append_kernel_args(Some(old), &args(&["console=ttyS0,115200", "quiet"])).unwrap();
        assert_eq!(
            kernel_args(&new),
            ["flatcar.autologin", "console=ttyS0,115200", "quiet"]
        );
        // Appending twice keeps all.
        let again = append_kernel_args(Some(&new), &args(&["x=1"])).unwrap();
        assert_eq!(
            kernel_args(&again),
            ["flatcar.autologin", "console=ttyS0,115200", "quiet", "x=1"]
        );
    }

    #[test]
    fn append_refuses_bad_args_and_empty_list() {
        assert!(append_kernel_args(None, &[]).is_err());
        let err = append_kernel_args(None, &args(&["ok", "a b"])).unwrap_err();
        assert!(
            err.to_string().contains("one argument per --kernel-arg"),
            "{err}"
        );
    }

    #[test]
    fn kernel_args_evaluates_like_grub() {
        let cfg = br#"# comment set linux_append="no"
set linux_append="a b"
set linux_append="${linux_append}	c"
  set linux_append="indented"
if [ "$x" = y ]; then
set linux_append="$linux_append conditional"
fi
menuentry "m" {
set linux_append="in-menu"
}
set linux_append="$linux_append d=\"q\" \$linux_append $oem_id $linux_appendx" # tail
set linux_append="unterminated
set other="z"
"#;
        assert_eq!(
            kernel_args(cfg),
            [
                "a",
                "b",
                "c",
                "d=\"q\"",
                "$linux_append",
                "$oem_id",
                "$linux_appendx"
            ]
        );
    }

    #[test]
    fn kernel_args_reset_and_empty() {
        assert!(kernel_args(b"").is_empty());
        assert!(kernel_args(b"set oem_id=\"qemu\"\n").is_empty());
        assert_eq!(
            kernel_args(b"set linux_append=\"a\"\nset linux_append=\"b\"\n"),
            ["b"]
        );
    }

    #[test]
    fn check_arg_accepts_ordinary_args() {
        for a in [
            "quiet",
            "console=ttyS0,115200n8",
            "flatcar.autologin=tty1",
            "a-b_c.d/e:f@g",
        ] {
            check_arg(a).unwrap();
        }
    }

    #[test]
    fn check_arg_refusals_say_why() {
        let cases = [
            ("", "empty"),
            ("a b", "whitespace"),
            ("a\tb", "whitespace"),
            ("a\nb", "line break"),
            ("a\"b", "GRUB would interpret"),
            ("a\\b", "GRUB would interpret"),
            ("$x", "GRUB would interpret"),
            ("a`b", "GRUB would interpret"),
            ("a;b", "GRUB would interpret"),
            ("a'b", "GRUB would interpret"),
            ("a{b", "GRUB would interpret"),
            ("a}b", "GRUB would interpret"),
            ("a\u{7f}", "non-printable"),
            ("a\u{1}", "non-printable"),
            ("é", "non-ASCII"),
        ];
        for (arg, why) in cases {
            let err = check_arg(arg).unwrap_err().to_string();
            assert!(err.contains(why), "{arg:?}: {err}");
        }
    }
}
