//! SELinux labels for what the tool writes, as `setfiles` with Flatcar's
//! policy gives them: a `file_contexts` (regular expressions, an optional
//! file type, a context or `<<none>>`) looked up the way libselinux's
//! `selabel_lookup` does (label_file.c): the whole path must match; of the
//! specifications that match it and its type, one without regular
//! expression characters wins, else the last one in the file.
//!
//! The rules for the stores the tool writes are built in: refpolicy's
//! `container.fc` (policy/modules/services/container.fc, the same from
//! release 2.20220520 to 2.20260616; Flatcar builds that module, through
//! Gentoo's `sec-policy/selinux-container`, with policy type `mcs`, so the
//! level is `s0`), after `files.fc`'s `/var/lib(/.*)?`.

use anyhow::{bail, Context, Result};
use regex::bytes::Regex;

use crate::disk::ext4::{EntryKind, EntryMeta, Keep, Transform};
use crate::fsread::FsRead;

/// The type of an inode, as a file_contexts line can restrict it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
    Socket,
}

impl FileKind {
    /// The flag of a file_contexts line (`--`, `-d`, ...).
    fn from_flag(flag: &str) -> Option<FileKind> {
        Some(match flag {
            "--" => FileKind::File,
            "-d" => FileKind::Dir,
            "-l" => FileKind::Symlink,
            "-c" => FileKind::Char,
            "-b" => FileKind::Block,
            "-p" => FileKind::Fifo,
            "-s" => FileKind::Socket,
            _ => return None,
        })
    }
}

/// Whether to label what is written (`--selinux`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Label: every disk the tool writes is a Flatcar image, which ships
    /// the policy.
    Auto,
    On,
    Off,
}

struct Spec {
    regex: Regex,
    kind: Option<FileKind>,
    /// None for `<<none>>`: the path is not to be labelled.
    context: Option<String>,
    /// Whether the expression has regular expression characters.
    meta: bool,
}

/// The file contexts of a policy.
pub struct Contexts {
    specs: Vec<Spec>,
}

/// refpolicy's rules for the stores, as file_contexts lines.
const BUILTIN: &str = r#"
/var/lib(/.*)?	system_u:object_r:var_lib_t:s0
/var/lib/docker(/.*)?	system_u:object_r:container_var_lib_t:s0
/var/lib/docker/.*/config\.env	--	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/containers/.*/.*\.log	--	system_u:object_r:container_log_t:s0
/var/lib/docker/containers/.*/hostname	--	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/containers/.*/hosts	--	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/init(/.*)?	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/overlay(/.*)?	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/overlay2(/.*)?	system_u:object_r:container_ro_file_t:s0
/var/lib/docker/volumes/[^/]+/.*	system_u:object_r:container_file_t:s0
/var/lib/containerd(/.*)?	system_u:object_r:container_var_lib_t:s0
/var/lib/containerd/[^/]+/sandboxes(/.*)?	system_u:object_r:container_ro_file_t:s0
/var/lib/containerd/[^/]+/snapshots(/.*)?	system_u:object_r:container_ro_file_t:s0
"#;

/// Whether a file_contexts expression has regular expression characters
/// (libselinux's spec_hasMetaChars).
fn has_meta(re: &str) -> bool {
    re.bytes().any(|b| {
        matches!(
            b,
            b'.' | b'^' | b'$' | b'?' | b'*' | b'+' | b'|' | b'[' | b'(' | b'{' | b'\\'
        )
    })
}

impl Contexts {
    /// The built-in rules for the stores.
    pub fn builtin() -> Contexts {
        Contexts::parse(BUILTIN, "the built-in file contexts")
            .expect("the built-in file contexts parse")
    }

    /// Parses a file_contexts; `origin` names it in errors, with the line.
    pub fn parse(text: &str, origin: &str) -> Result<Contexts> {
        let mut specs = vec![];
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{origin}, line {}: {line:?}", i + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (re, kind, context) = match fields[..] {
                [re, context] => (re, None, context),
                [re, flag, context] => {
                    let Some(kind) = FileKind::from_flag(flag) else {
                        bail!(
                            "{}: {flag:?} is not a file type (--, -d, -l, -c, -b, -p, -s)",
                            at()
                        );
                    };
                    (re, Some(kind), context)
                }
                _ => bail!(
                    "{}: a line is a path expression, an optional file type and a context",
                    at()
                ),
            };
            let regex = Regex::new(&format!("^(?:{re})$"))
                .with_context(|| format!("{}: the path expression does not parse", at()))?;
            let context = match context {
                "<<none>>" => None,
                c if c.split(':').count() >= 4 => Some(c.to_string()),
                c => bail!("{}: {c:?} is not a context (user:role:type:level)", at()),
            };
            specs.push(Spec {
                regex,
                kind,
                context,
                meta: has_meta(re),
            });
        }
        Ok(Contexts { specs })
    }

    /// These rules, then `more` (which wins where both match, as the later
    /// lines of one file).
    pub fn then(mut self, more: Contexts) -> Contexts {
        self.specs.extend(more.specs);
        self
    }

    /// The context of `path` (absolute) of type `kind`, None when no rule
    /// matches or the rule says `<<none>>`.
    pub fn lookup(&self, path: &[u8], kind: FileKind) -> Option<&str> {
        let fits = |s: &&Spec| s.kind.is_none_or(|k| k == kind) && s.regex.is_match(path);
        let exact = self.specs.iter().rev().filter(|s| !s.meta).find(fits);
        let spec = exact.or_else(|| self.specs.iter().rev().filter(|s| s.meta).find(fits))?;
        spec.context.as_deref()
    }

    /// The `security.selinux` value for `path`: the context and a NUL, as
    /// setfiles writes it.
    pub fn xattr(&self, path: &[u8], kind: FileKind) -> Option<Vec<u8>> {
        self.lookup(path, kind).map(|c| {
            let mut v = c.as_bytes().to_vec();
            v.push(0);
            v
        })
    }
}

/// The xattr that holds an inode's label.
pub const XATTR: &str = "security.selinux";

/// The SELinux labels of the stores in ROOT (`inspect`).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Labels {
    /// Inodes below /var/lib/docker and /var/lib/containerd.
    pub inodes: u64,
    /// Those with a `security.selinux`.
    pub labelled: u64,
    /// How many inodes carry each label.
    pub by_label: std::collections::BTreeMap<String, u64>,
    /// `verify`: the first inode whose label is not the one the built-in
    /// rules give it (when the stores are labelled at all).
    #[serde(skip)]
    pub first_wrong: Option<(String, String)>,
}

/// The stores whose labels `inspect` counts and `verify` checks.
const STORES: &[&str] = &["/var/lib/docker", "/var/lib/containerd"];

/// Reads the labels of every inode of the stores in `fs` and checks each
/// against the built-in rules.
pub fn survey(fs: &dyn FsRead) -> Result<Labels> {
    use crate::fsread::Kind;
    let rules = Contexts::builtin();
    let mut out = Labels::default();
    let mut seen = std::collections::HashSet::new();
    let mut todo: Vec<Vec<u8>> = vec![];
    for s in STORES {
        if fs.stat(s.as_bytes())?.is_some() {
            todo.push(s.as_bytes().to_vec());
        }
    }
    // (path, label read, label the rules give) of the first mismatch.
    let mut wrong = None;
    while let Some(path) = todo.pop() {
        let Some(st) = fs.stat(&path)? else { continue };
        if st.kind == Kind::Dir {
            let mut names = fs.read_dir(&path)?;
            names.sort();
            for n in names.into_iter().rev() {
                todo.push([path.as_slice(), b"/", &n].concat());
            }
        }
        // An inode of several names has one label: counted and checked once.
        if !seen.insert(st.ino) {
            continue;
        }
        out.inodes += 1;
        let label = fs
            .xattrs(&path)?
            .into_iter()
            .find(|(n, _)| n == XATTR)
            .map(|(_, v)| String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(&v)).into_owned());
        let kind = match st.kind {
            Kind::Dir => FileKind::Dir,
            Kind::File => FileKind::File,
            Kind::Symlink => FileKind::Symlink,
            Kind::CharDev => FileKind::Char,
            Kind::BlockDev => FileKind::Block,
            Kind::Fifo => FileKind::Fifo,
            Kind::Socket => FileKind::Socket,
        };
        let want = rules.lookup(&path, kind).map(str::to_string);
        if let Some(l) = &label {
            out.labelled += 1;
            *out.by_label.entry(l.clone()).or_default() += 1;
        }
        if wrong.is_none() && label != want {
            wrong = Some((path.clone(), label, want));
        }
    }
    // Stores written with --selinux off carry no label: nothing to check.
    if out.labelled > 0 {
        out.first_wrong = wrong.map(|(path, got, want)| {
            let show = |l: Option<String>| l.unwrap_or_else(|| "none".into());
            (
                String::from_utf8_lossy(&path).into_owned(),
                format!(
                    "its SELinux label is {}, the policy's rules give {}",
                    show(got),
                    show(want)
                ),
            )
        });
    }
    Ok(out)
}

/// `--selinux` and `--selinux-file-contexts`, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// A file_contexts for paths the built-in rules do not cover (it
    /// wins where both match): its path and text, parsed once already.
    pub file_contexts: Option<(std::path::PathBuf, String)>,
}

impl Config {
    /// Reads and checks the file_contexts (a syntax error names its line)
    /// before anything is written.
    pub fn new(mode: Mode, file_contexts: Option<std::path::PathBuf>) -> Result<Config> {
        let file_contexts = match file_contexts {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("reading --selinux-file-contexts {}", path.display())
                })?;
                Contexts::parse(&text, &path.display().to_string())?;
                Some((path, text))
            }
        };
        if mode == Mode::Off && file_contexts.is_some() {
            bail!("--selinux-file-contexts labels what is written: it cannot be given with --selinux off");
        }
        Ok(Config {
            mode,
            file_contexts,
        })
    }

    /// The labeller for what is written under `target`, None when
    /// nothing is to be labelled (`--selinux off`). `auto` labels: every
    /// disk the tool writes is a Flatcar image (its ROOT found by Flatcar's
    /// partition type or name, an ext4 labelled ROOT), and every Flatcar
    /// image ships the policy (permissive by default; enforcing is a
    /// documented switch), which does not relabel at first boot.
    pub fn labeler(&self, target: &[u8]) -> Result<Option<Labeler>> {
        if self.mode == Mode::Off {
            return Ok(None);
        }
        let mut contexts = Contexts::builtin();
        if let Some((path, text)) = &self.file_contexts {
            contexts = contexts.then(Contexts::parse(text, &path.display().to_string())?);
        }
        Ok(Some(Labeler {
            contexts,
            target: target.to_vec(),
            labelled: 0,
        }))
    }
}

/// Gives every entry written the label its path gets ([`Contexts`]),
/// replacing one the archive carries (Docker and containerd would write a
/// layer's own `security.selinux` as it is; setfiles replaces it). An
/// entry no rule covers gets none.
pub struct Labeler {
    contexts: Contexts,
    /// The absolute directory entries are written under.
    target: Vec<u8>,
    /// How many entries got a label.
    pub labelled: u64,
}

impl Labeler {
    /// The `security.selinux` xattr of `path`, if a rule gives it one.
    fn label(&mut self, path: &[u8], kind: FileKind) -> Vec<(Vec<u8>, Vec<u8>)> {
        match self.contexts.xattr(path, kind) {
            Some(label) => {
                self.labelled += 1;
                vec![(XATTR.as_bytes().to_vec(), label)]
            }
            None => vec![],
        }
    }
}

impl Transform for Labeler {
    fn entry(&mut self, e: &mut EntryMeta) -> Result<Keep> {
        let kind = match e.kind() {
            EntryKind::Dir => FileKind::Dir,
            EntryKind::File { .. } => FileKind::File,
            EntryKind::Symlink { .. } => FileKind::Symlink,
            EntryKind::Char { .. } => FileKind::Char,
            EntryKind::Block { .. } => FileKind::Block,
            EntryKind::Fifo => FileKind::Fifo,
            // The inode is labelled where its first name was written.
            EntryKind::HardLink { .. } => return Ok(Keep::Write),
        };
        let mut path = self.target.clone();
        for c in e.path.split(|&b| b == b'/') {
            if c.is_empty() || c == b"." {
                continue;
            }
            if path.last() != Some(&b'/') {
                path.push(b'/');
            }
            path.extend_from_slice(c);
        }
        e.xattrs.retain(|(n, _)| n != XATTR.as_bytes());
        e.xattrs.extend(self.label(&path, kind));
        Ok(Keep::Write)
    }

    fn made_dir(&mut self, path: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.label(path, FileKind::Dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_as_libselinux() {
        let c = Contexts::builtin();
        let t = |p: &str, k| {
            c.lookup(p.as_bytes(), k)
                .unwrap()
                .split(':')
                .nth(2)
                .unwrap()
        };
        let docker = "/var/lib/docker";
        let snapshots = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs";
        for (path, kind, want) in [
            (docker.to_string(), FileKind::Dir, "container_var_lib_t"),
            (
                format!("{docker}/image/overlay2/repositories.json"),
                FileKind::File,
                "container_var_lib_t",
            ),
            (
                format!("{docker}/overlay2"),
                FileKind::Dir,
                "container_ro_file_t",
            ),
            (
                format!("{docker}/overlay2/x/diff/etc/passwd"),
                FileKind::File,
                "container_ro_file_t",
            ),
            (
                format!("{docker}/overlay2/x/diff/a.log"),
                FileKind::File,
                "container_ro_file_t",
            ),
            (
                format!("{docker}/containers/c/c-json.log"),
                FileKind::File,
                "container_log_t",
            ),
            (
                format!("{docker}/containers/c/c-json.log"),
                FileKind::Dir,
                "container_var_lib_t",
            ),
            (snapshots.to_string(), FileKind::Dir, "container_var_lib_t"),
            (
                format!("{snapshots}/snapshots/1/fs/x"),
                FileKind::File,
                "container_ro_file_t",
            ),
        ] {
            assert_eq!(t(&path, kind), want, "{path} ({kind:?})");
        }
        assert_eq!(t("/var/lib/other", FileKind::Dir), "var_lib_t");
        assert_eq!(c.lookup(b"/etc/x", FileKind::File), None);
        assert_eq!(
            c.xattr(b"/var/lib/docker", FileKind::Dir).unwrap(),
            b"system_u:object_r:container_var_lib_t:s0\0"
        );
        // A later line wins; an exact path wins over expressions.
        let user = Contexts::parse(
            "/opt(/.*)? system_u:object_r:usr_t:s0\n/opt/x -d system_u:object_r:etc_t:s0\n/opt/.* <<none>>\n",
            "fc",
        )
        .unwrap();
        let c = Contexts::builtin().then(user);
        assert_eq!(
            c.lookup(b"/opt/x", FileKind::Dir),
            Some("system_u:object_r:etc_t:s0")
        );
        assert_eq!(c.lookup(b"/opt/x", FileKind::File), None);
        assert_eq!(
            c.lookup(b"/opt", FileKind::Dir),
            Some("system_u:object_r:usr_t:s0")
        );
    }

    #[test]
    fn a_bad_file_contexts_names_its_line() {
        for (text, want) in [
            (
                "/a system_u:object_r:t:s0\n/b( system_u:object_r:t:s0\n",
                "fc, line 2",
            ),
            ("/a -x system_u:object_r:t:s0\n", "is not a file type"),
            ("/a nocontext\n", "is not a context"),
            ("/a b c d\n", "a line is a path expression"),
        ] {
            let e = format!("{:#}", Contexts::parse(text, "fc").err().unwrap());
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
