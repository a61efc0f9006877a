//! Image references as Docker accepts them, and the images.list format.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::source::archive::ArchiveKind;

/// `[registry/]path[:tag][@sha256:hex]`, checked against Docker's grammar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Repository name as written (registry included when given).
    pub name: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Docker Hub's registry name.
pub const DOCKER_HUB: &str = "docker.io";

fn is_path_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && matches!(b[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok || sep.is_empty() {
            return false;
        }
    }
    true
}

fn is_domain(c: &str) -> bool {
    let (host, port) = match c.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (c, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

fn is_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", hex)) => {
            hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        Some(("sha512", hex)) => {
            hex.len() == 128
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        _ => false,
    }
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !is_digest(d) {
                    bail!("{s:?}: {d:?} is not a digest (sha256: and 64 lowercase hex digits)");
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag (one before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !is_tag(t) {
                bail!("{s:?}: {t:?} is not a valid tag");
            }
        }
        let mut comps: Vec<&str> = name.split('/').collect();
        if comps.len() > 1 && (comps[0].contains(['.', ':']) || comps[0] == "localhost") {
            if !is_domain(comps[0]) {
                bail!("{s:?}: {:?} is not a valid registry host", comps[0]);
            }
            comps.remove(0);
        }
        if name.is_empty() || comps.iter().any(|c| !is_path_component(c)) {
            bail!(
                "{s:?} is not a valid image reference (repository names are lowercase letters, digits and . _ - separators)"
            );
        }
        Ok(ImageRef {
            name: name.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The registry the image comes from, as its credentials are looked
    /// up: `host[:port]` when the name starts with one, else `docker.io`.
    pub fn registry(&self) -> &str {
        match self.name.split_once('/') {
            Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
            _ => DOCKER_HUB,
        }
    }

    /// What to ask the daemon to pull: the digest when pinned, else the tag
    /// (latest when none).
    pub fn pull_spec(&self) -> (String, Option<String>) {
        match &self.digest {
            Some(d) => (format!("{}@{d}", self.name), None),
            None => (
                self.name.clone(),
                Some(self.tag.clone().unwrap_or_else(|| "latest".into())),
            ),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Where an image comes from: a line of images.list or an argument, in
/// skopeo's transport syntax; a plain reference is a registry pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `REF` or `docker://REF`.
    Registry(ImageRef),
    /// `docker-archive:PATH[:REF]`, `oci-archive:PATH[:REF]`,
    /// `oci:DIR[:REF]`: REF is the name the image gets (default: the names
    /// the archive carries).
    Archive {
        format: ArchiveKind,
        path: PathBuf,
        name: Option<ImageRef>,
    },
    /// `docker-daemon:REF`: an image of the engine the tool talks to.
    Daemon(ImageRef),
}

impl Source {
    /// Parses one source; relative archive paths are taken from `base`.
    pub fn parse(s: &str, base: &Path) -> Result<Source> {
        let archive = |format: ArchiveKind, rest: &str| -> Result<Source> {
            // PATH[:REF]: paths with ':' are not supported, as in skopeo.
            let (path, name) = match rest.split_once(':') {
                Some((p, r)) => (p, Some(r)),
                None => (rest, None),
            };
            if path.is_empty() {
                bail!("{s:?}: the {} transport needs a path", format);
            }
            let name = match name {
                Some(r) => Some(
                    ImageRef::parse(r)
                        .with_context(|| format!("{s:?}: the name after the path"))?,
                ),
                None => None,
            };
            Ok(Source::Archive {
                format,
                path: base.join(path),
                name,
            })
        };
        Ok(match s.split_once(':') {
            Some(("docker-archive", rest)) => archive(ArchiveKind::DockerArchive, rest)?,
            Some(("oci-archive", rest)) => archive(ArchiveKind::OciArchive, rest)?,
            Some(("oci", rest)) => archive(ArchiveKind::OciDir, rest)?,
            Some(("docker-daemon", rest)) => Source::Daemon(ImageRef::parse(rest)?),
            Some(("docker", rest)) => match rest.strip_prefix("//") {
                Some(r) => Source::Registry(ImageRef::parse(r)?),
                None => bail!("{s:?}: write docker://REF for a registry image"),
            },
            _ => Source::Registry(ImageRef::parse(s)?),
        })
    }

    /// The registry reference, for a registry pull.
    pub fn registry_ref(&self) -> Option<&ImageRef> {
        match self {
            Source::Registry(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Registry(r) => write!(f, "{r}"),
            Source::Archive { format, path, name } => {
                write!(f, "{format}:{}", path.display())?;
                match name {
                    Some(n) => write!(f, ":{n}"),
                    None => Ok(()),
                }
            }
            Source::Daemon(r) => write!(f, "docker-daemon:{r}"),
        }
    }
}

/// A source and where it was given (`images.list, line 3`, or
/// `argument 2`), for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub source: Source,
    pub origin: String,
}

/// Parses an images.list: one source per line, `#` comments and blank
/// lines ignored, spaces around trimmed. Relative archive paths are taken
/// from `base` (the list's directory).
pub fn parse_list(text: &str, origin: &str, base: &Path) -> Result<Vec<Listed>> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let origin = format!("{origin}, line {}", i + 1);
        let source = Source::parse(line, base).with_context(|| origin.clone())?;
        out.push(Listed { source, origin });
    }
    Ok(out)
}

pub fn read_list(path: &Path) -> Result<Vec<Listed>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the image list {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_list(&text, &path.display().to_string(), base)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn accepts_what_docker_accepts() {
        for (s, name, tag, digest) in [
            ("nginx", "nginx", None::<&str>, None::<&str>),
            ("nginx:1.27", "nginx", Some("1.27"), None),
            ("ghcr.io/o/r:tag", "ghcr.io/o/r", Some("tag"), None),
            ("localhost:5000/a/b", "localhost:5000/a/b", None, None),
            (
                "127.0.0.1:5000/fp/x:1",
                "127.0.0.1:5000/fp/x",
                Some("1"),
                None,
            ),
            ("my_org/some-image__x", "my_org/some-image__x", None, None),
        ] {
            let r = ImageRef::parse(s).unwrap();
            assert_eq!(
                (r.name.as_str(), r.tag.as_deref(), r.digest.as_deref()),
                (name, tag, digest)
            );
            assert_eq!(r.to_string(), s);
        }
        let r = ImageRef::parse(&format!("nginx:1.27@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1.27"));
        assert_eq!(r.pull_spec(), (format!("nginx@{D}"), None));
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.pull_spec(), ("busybox".into(), Some("latest".into())));
        assert_eq!(r.registry(), "docker.io");
        for (s, registry) in [
            ("library/nginx", "docker.io"),
            ("ghcr.io/o/r:tag", "ghcr.io"),
            ("localhost/a", "localhost"),
            ("10.0.0.1:5443/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "10.0.0.1:5443"),
        ] {
            assert_eq!(ImageRef::parse(s).unwrap().registry(), registry, "{s}");
        }
    }

    #[test]
    fn refuses_malformed() {
        for s in [
            "",
            "Nginx",
            "nginx:",
            "nginx@sha256:12",
            "a//b",
            "-a",
            "nginx:tag with space",
            "a:b:c",
            "ghcr.io:x/y",
        ] {
            assert!(ImageRef::parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn list_format() {
        let base = Path::new("/lists");
        let l = parse_list("# comment\n\n  nginx:1.27  \nredis # trailing\n", "x", base).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].origin, "x, line 4");
        let e = parse_list("nginx\n\nBAD REF\n", "images.list", base).unwrap_err();
        assert!(format!("{e:#}").contains("images.list, line 3"), "{e:#}");
    }

    #[test]
    fn transports() {
        let base = Path::new("/lists");
        let p = |s: &str| Source::parse(s, base).unwrap();
        assert_eq!(
            p("nginx:1"),
            Source::Registry(ImageRef::parse("nginx:1").unwrap())
        );
        assert_eq!(p("docker://nginx:1"), p("nginx:1"));
        assert_eq!(
            p("docker-archive:img.tar.gz:reg.local:5000/a/b:2"),
            Source::Archive {
                format: ArchiveKind::DockerArchive,
                path: "/lists/img.tar.gz".into(),
                name: Some(ImageRef::parse("reg.local:5000/a/b:2").unwrap()),
            }
        );
        assert_eq!(
            p("oci:/abs/layout"),
            Source::Archive {
                format: ArchiveKind::OciDir,
                path: "/abs/layout".into(),
                name: None,
            }
        );
        assert_eq!(
            p("oci-archive:x.tar").to_string(),
            "oci-archive:/lists/x.tar"
        );
        assert_eq!(
            p("docker-daemon:app:dev"),
            Source::Daemon(ImageRef::parse("app:dev").unwrap())
        );
        for bad in [
            "docker-archive:",
            "oci:x:BAD NAME",
            "docker-daemon:",
            "docker:nginx",
        ] {
            assert!(Source::parse(bad, base).is_err(), "{bad:?}");
        }
    }
}
