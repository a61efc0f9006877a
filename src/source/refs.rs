//! Image references as Docker accepts them, and the one normalization
//! (Docker's familiar-name expansion) every comparison of names goes through.

use std::fmt;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

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

/// A repository name split where Docker splits it: its first component is
/// a registry host when it has a `.` or a `:` or is `localhost` (and more
/// follows); else the name is a path on Docker Hub (`None`).
fn split_domain(name: &str) -> Option<(&str, &str)> {
    name.split_once('/')
        .filter(|(first, _)| first.contains(['.', ':']) || *first == "localhost")
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
        let path = match split_domain(name) {
            Some((domain, path)) => {
                if !is_domain(domain) {
                    bail!("{s:?}: {domain:?} is not a valid registry host");
                }
                path
            }
            None => name,
        };
        if name.is_empty() || path.split('/').any(|c| !is_path_component(c)) {
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
        split_domain(&self.name).map_or(DOCKER_HUB, |(domain, _)| domain)
    }

    /// The name as Docker compares names (its familiar-name expansion):
    /// `domain/path@digest`, else `domain/path:tag` (`latest` when none),
    /// with Docker Hub as `docker.io` (also when written
    /// `index.docker.io`) and its official images under `library/`. Docker
    /// keeps only the digest of `name:tag@digest`, so this does too.
    pub fn normalized(&self) -> String {
        let repo = self.repository();
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{repo}@{d}"),
            (None, Some(t)) => format!("{repo}:{t}"),
            (None, None) => format!("{repo}:latest"),
        }
    }

    /// The repository as Docker compares it: registry and path
    /// (`docker.io/library/busybox`), without tag or digest.
    pub fn repository(&self) -> String {
        let (domain, path) = match split_domain(&self.name) {
            Some(("index.docker.io", path)) => (DOCKER_HUB, path),
            Some((domain, path)) => (domain, path),
            None => (DOCKER_HUB, self.name.as_str()),
        };
        let library = if domain == DOCKER_HUB && !path.contains('/') {
            "library/"
        } else {
            ""
        };
        format!("{domain}/{library}{path}")
    }

    /// The repository as Docker names it to users and in
    /// `repositories.json`: Docker Hub's without `docker.io/` (and its
    /// official images without `library/`), others as [`Self::repository`].
    pub fn familiar_repository(&self) -> String {
        let repo = self.repository();
        match repo.strip_prefix("docker.io/") {
            Some(path) => path.strip_prefix("library/").unwrap_or(path).to_string(),
            None => repo,
        }
    }

    /// The repository's path on its registry, as the registry API names
    /// it: `library/busybox` for Docker Hub's `busybox`, `team/app` for
    /// `registry.local:5000/team/app`.
    pub fn remote_path(&self) -> String {
        let repo = self.repository();
        match repo.split_once('/') {
            Some((_, path)) => path.to_string(),
            None => repo,
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
    fn normalized_as_docker_compares_names() {
        for (s, normalized) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            ("library/nginx", "docker.io/library/nginx:latest"),
            ("docker.io/nginx:1", "docker.io/library/nginx:1"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("index.docker.io/o/r:2", "docker.io/o/r:2"),
            ("o/r", "docker.io/o/r:latest"),
            ("localhost/a", "localhost/a:latest"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("ghcr.io/o/r:tag", "ghcr.io/o/r:tag"),
            ("127.0.0.1:5000/fp/x:1", "127.0.0.1:5000/fp/x:1"),
        ] {
            assert_eq!(ImageRef::parse(s).unwrap().normalized(), normalized, "{s}");
        }
        // The digest wins over the tag, as Docker keeps only it.
        let r = ImageRef::parse(&format!("nginx:1.27@{D}")).unwrap();
        assert_eq!(r.normalized(), format!("docker.io/library/nginx@{D}"));
        let r = ImageRef::parse(&format!("localhost:5000/x@{D}")).unwrap();
        assert_eq!(r.normalized(), format!("localhost:5000/x@{D}"));
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
}
