//! Where images come from: sources in skopeo's transport syntax, and the
//! images.list format that lists them.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::archive::ArchiveKind;
use super::refs::ImageRef;

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
