//! What the pulling daemon needs to reach private registries, prepared on
//! the build machine before any engine is contacted: the credentials of
//! each registry of the list (docker's client configuration), the
//! certificates of /etc/docker/certs.d, insecure registries and mirrors.
//! None of it is written into the disk image: the inner daemon keeps its
//! certificates in /etc/docker of the dind, and credentials only travel
//! over the pull helper's standard input.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::auth::ClientConfig;
use super::helper::PullSecrets;
use crate::source::refs::{ImageRef, DOCKER_HUB};

/// Where dockerd looks for registry certificates.
pub const DEFAULT_CERTS_DIR: &str = "/etc/docker/certs.d";

/// The registry options of the command line, checked for form.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// --registry-config (None: where the docker CLI looks).
    config: Option<PathBuf>,
    /// --registry-certs (None: [`DEFAULT_CERTS_DIR`] when it exists).
    certs: Option<PathBuf>,
    insecure: Vec<String>,
    /// (registry, mirror URL); Docker Hub's as `docker.io`.
    mirrors: Vec<(String, String)>,
}

/// Where containerd's client looks for the registries' configuration in
/// the build container (containerd's hosts directory layout:
/// HOST[:PORT]/hosts.toml and the certificates it names).
pub const CONTAINERD_HOSTS_DIR: &str = "/etc/fp-containerd/certs.d";

/// One registry's directory of [`CONTAINERD_HOSTS_DIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `host[:port]`, `docker.io` for Docker Hub.
    pub host: String,
    /// Files of the directory: name and content (hosts.toml, certificates).
    pub files: Vec<(String, Vec<u8>)>,
}

/// What the run gives the pulling daemon.
pub struct RegistryAccess {
    /// For the pull helper's standard input.
    pub secrets: PullSecrets,
    /// Where each registry's credentials came from (for messages).
    pub sources: BTreeMap<String, String>,
    /// The docker client configuration read (None: there is none).
    pub config_path: Option<PathBuf>,
    /// certs.d directories as a tar to unpack at / in the dind (None when
    /// there are none).
    pub certs: Option<Vec<u8>>,
    /// Flags of the inner dockerd.
    pub daemon_args: Vec<String>,
    /// containerd's registry configuration (mirrors, plain HTTP,
    /// certificates), for [`CONTAINERD_HOSTS_DIR`].
    pub containerd_hosts: Vec<RegistryHost>,
}

/// A `host[:port]` or CIDR, as dockerd's --insecure-registry takes it.
fn check_insecure(s: &str) -> Result<()> {
    if s.contains("://") {
        bail!("--insecure-registry {s:?}: give HOST[:PORT] or a CIDR, without a scheme");
    }
    let host_ok = |h: &str| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    };
    let ok = match s.split_once('/') {
        Some((ip, bits)) => {
            ip.parse::<std::net::IpAddr>().is_ok() && bits.parse::<u8>().is_ok_and(|b| b <= 128)
        }
        None => host_ok(s),
    };
    if !ok {
        bail!("--insecure-registry {s:?} is not HOST[:PORT] or a CIDR (e.g. registry.local:5000, 10.0.0.0/8)");
    }
    Ok(())
}

/// A --registry-mirror: `URL` (Docker Hub's, as dockerd takes it) or
/// `HOST=URL` (any registry's, as containerd's hosts.toml has it), as
/// (registry, URL).
fn parse_mirror(s: &str) -> Result<(String, String)> {
    let (host, url) = match s.split_once('=') {
        Some((h, u)) if !h.contains("://") => (h, u),
        _ => (DOCKER_HUB, s),
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        bail!("--registry-mirror {s:?}: give URL (a mirror of Docker Hub) or HOST[:PORT]=URL");
    }
    mirror_host(url)?;
    let host = if host == "index.docker.io" {
        DOCKER_HUB
    } else {
        host
    };
    Ok((host.to_string(), url.trim_end_matches('/').to_string()))
}

/// The host[:port] of a mirror URL `http(s)://HOST[:PORT][/]`, as dockerd's
/// --registry-mirror takes it.
pub fn mirror_host(s: &str) -> Result<&str> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .with_context(|| format!("--registry-mirror {s:?}: give a URL, http(s)://HOST[:PORT]"))?;
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() || host.contains(['/', '@', '?', '#']) {
        bail!("--registry-mirror {s:?}: give http(s)://HOST[:PORT], with no path, user or query");
    }
    Ok(host)
}

impl RegistryOptions {
    pub fn new(
        config: Option<PathBuf>,
        certs: Option<PathBuf>,
        insecure: Vec<String>,
        mirrors: Vec<String>,
    ) -> Result<RegistryOptions> {
        for i in &insecure {
            check_insecure(i)?;
        }
        let mirrors = mirrors
            .iter()
            .map(|m| parse_mirror(m))
            .collect::<Result<Vec<_>>>()?;
        Ok(RegistryOptions {
            config,
            certs,
            insecure,
            mirrors,
        })
    }

    /// --registry-certs, when given.
    pub fn certs_dir(&self) -> Option<&Path> {
        self.certs.as_deref()
    }

    /// The certs.d directory in use: --registry-certs (which must exist),
    /// else [`DEFAULT_CERTS_DIR`] when it exists; and whether it was given.
    pub fn certs_dir_in_use(&self) -> Option<(&Path, bool)> {
        match &self.certs {
            Some(dir) => Some((dir.as_path(), true)),
            None if Path::new(DEFAULT_CERTS_DIR).is_dir() => {
                Some((Path::new(DEFAULT_CERTS_DIR), false))
            }
            None => None,
        }
    }

    /// --registry-config, when given.
    pub fn config_file(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// --insecure-registry: `host[:port]` or CIDRs, checked for form.
    pub fn insecure(&self) -> &[String] {
        &self.insecure
    }

    /// --registry-mirror as (registry, mirror URL without a trailing /),
    /// in the order given; Docker Hub's under `docker.io`.
    pub fn mirrors(&self) -> &[(String, String)] {
        &self.mirrors
    }

    /// Reads everything the pull of `refs` needs from the build machine:
    /// runs credential helpers and reads certificates. Fails naming the
    /// file or helper that is wrong; contacts no engine.
    pub fn prepare(&self, refs: &[ImageRef]) -> Result<RegistryAccess> {
        let registries: BTreeSet<&str> = refs.iter().map(ImageRef::registry).collect();
        let config = ClientConfig::load(self.config.as_deref())?;
        let mut secrets = PullSecrets::default();
        let mut sources = BTreeMap::new();
        for r in &registries {
            if let Some((creds, from)) = config
                .credentials(r)
                .with_context(|| format!("looking up the credentials of registry {r}"))?
            {
                secrets.credentials.insert(r.to_string(), creds);
                sources.insert(r.to_string(), from);
            }
        }
        // The certs.d directories dockerd reads for these registries: their
        // names, Docker Hub's endpoint, the mirrors.
        let mut hosts: BTreeSet<&str> = registries.clone();
        if registries.contains(DOCKER_HUB) {
            hosts.insert("registry-1.docker.io");
            hosts.insert("index.docker.io");
        }
        for (_, url) in &self.mirrors {
            hosts.insert(mirror_host(url)?);
        }
        let certs_dir = self.certs_dir_in_use();
        let certs = match certs_dir {
            Some((dir, explicit)) => read_certs(dir, &hosts, explicit)?,
            None => None,
        };
        let mut containerd_hosts = vec![];
        let mut registries_and_mirrors: BTreeSet<&str> = registries.clone();
        registries_and_mirrors.extend(self.mirrors.iter().map(|(h, _)| h.as_str()));
        for r in registries_and_mirrors {
            if let Some(h) = self.containerd_host(r, certs_dir.map(|(d, _)| d))? {
                containerd_hosts.push(h);
            }
        }
        let daemon_args = self
            .insecure
            .iter()
            .map(|i| format!("--insecure-registry={i}"))
            .chain(
                self.mirrors
                    .iter()
                    .filter(|(h, _)| h == DOCKER_HUB)
                    .map(|(_, m)| format!("--registry-mirror={m}")),
            )
            .collect();
        Ok(RegistryAccess {
            secrets,
            sources,
            config_path: config.path().map(Path::to_path_buf),
            certs,
            daemon_args,
            containerd_hosts,
        })
    }

    /// Registries whose images dockerd cannot pull as asked: dockerd
    /// mirrors Docker Hub only, so a `HOST=URL` mirror of another registry
    /// is for containerd's images.
    pub fn check_docker_refs(&self, refs: &[ImageRef]) -> Result<()> {
        for r in refs {
            let registry = r.registry();
            if let Some((_, url)) = self
                .mirrors
                .iter()
                .find(|(h, _)| h == registry && registry != DOCKER_HUB)
            {
                bail!(
                    "{r}: --registry-mirror {registry}={url} cannot be used by Docker, whose daemon mirrors Docker Hub only; bake it for containerd (--containerd-image), or pull it from {registry}"
                );
            }
        }
        Ok(())
    }

    /// The hosts directory of `registry` for containerd's client: its
    /// mirrors first, plain HTTP when it is an insecure registry, its
    /// certificates from the certs.d directory `certs`. None when it
    /// needs nothing but the defaults.
    fn containerd_host(
        &self,
        registry: &str,
        certs: Option<&Path>,
    ) -> Result<Option<RegistryHost>> {
        let cert_files = |host: &str| certs.map_or(Ok(vec![]), |d| host_certs(&d.join(host)));
        // As dockerd: the listed ones, and loopback (127.0.0.0/8, ::1,
        // localhost) always.
        let insecure = |host: &str| {
            let name = match host.rsplit_once(':') {
                Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => host,
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            self.insecure.iter().any(|i| i == host)
                || name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        };
        // The TOML keys of one host's certificates, copied beside hosts.toml.
        let tls =
            |host: &str, files: &mut Vec<(String, Vec<u8>)>, prefix: &str| -> Result<String> {
                let own = cert_files(host)?;
                let dir = format!("{CONTAINERD_HOSTS_DIR}/{registry}");
                let mut toml = String::new();
                let path = |n: &str| format!("{dir}/{prefix}{n}");
                let cas: Vec<String> = own
                    .iter()
                    .filter(|(n, _)| n.ends_with(".crt"))
                    .map(|(n, _)| format!("{:?}", path(n)))
                    .collect();
                if !cas.is_empty() {
                    toml += &format!("  ca = [{}]\n", cas.join(", "));
                }
                let clients: Vec<String> = own
                    .iter()
                    .filter_map(|(n, _)| n.strip_suffix(".cert"))
                    .map(|stem| {
                        format!(
                            "[{:?}, {:?}]",
                            path(&format!("{stem}.cert")),
                            path(&format!("{stem}.key"))
                        )
                    })
                    .collect();
                if !clients.is_empty() {
                    toml += &format!("  client = [{}]\n", clients.join(", "));
                }
                files.extend(own.into_iter().map(|(n, d)| (format!("{prefix}{n}"), d)));
                Ok(toml)
            };
        let mut files = vec![];
        let mut toml = String::new();
        let mirrors: Vec<&String> = self
            .mirrors
            .iter()
            .filter(|(h, _)| h == registry)
            .map(|(_, u)| u)
            .collect();
        for (i, url) in mirrors.iter().enumerate() {
            toml += &format!("[host.{url:?}]\n  capabilities = [\"pull\", \"resolve\"]\n");
            toml += &tls(mirror_host(url)?, &mut files, &format!("mirror{i}-"))?;
        }
        let server_host = if registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if insecure(registry) { "http" } else { "https" };
        let server = format!("{scheme}://{server_host}");
        let own = tls(registry, &mut files, "")?;
        if mirrors.is_empty() && own.is_empty() && !insecure(registry) {
            return Ok(None);
        }
        let mut text = format!("server = {server:?}\n");
        text += &own;
        text += &toml;
        files.insert(0, ("hosts.toml".to_string(), text.into_bytes()));
        Ok(Some(RegistryHost {
            host: registry.to_string(),
            files,
        }))
    }
}

/// The certificate files dockerd reads in a certs.d host directory.
fn is_cert_file(name: &str) -> bool {
    name.ends_with(".crt") || name.ends_with(".cert") || name.ends_with(".key")
}

/// A certificate file's mode: keys private.
pub fn cert_mode(name: &str) -> u32 {
    if name.ends_with(".key") {
        0o600
    } else {
        0o644
    }
}

/// The certificate files of one host directory of a certs.d directory
/// (none when it does not exist), by name, followed through symlinks
/// (certs.d often links to the system's CA files). A client certificate
/// needs its key and the other way round, as dockerd checks.
pub fn host_certs(hdir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    if !hdir.is_dir() {
        return Ok(vec![]);
    }
    let mut names = vec![];
    for e in std::fs::read_dir(hdir).with_context(|| format!("reading {}", hdir.display()))? {
        let e = e.with_context(|| format!("reading {}", hdir.display()))?;
        if let Some(n) = e.file_name().to_str().filter(|n| is_cert_file(n)) {
            names.push(n.to_string());
        }
    }
    names.sort();
    for n in &names {
        let pair = match n.strip_suffix(".cert") {
            Some(stem) => Some(format!("{stem}.key")),
            None => n.strip_suffix(".key").map(|stem| format!("{stem}.cert")),
        };
        if let Some(p) = pair.filter(|p| !names.contains(p)) {
            bail!(
                "{}: {n} has no {p} beside it (a client certificate needs its key and the key its certificate)",
                hdir.display()
            );
        }
    }
    names
        .into_iter()
        .map(|n| {
            let p = hdir.join(&n);
            let data = std::fs::read(&p).with_context(|| {
                format!(
                    "reading the registry certificate {} (make it readable for this user, or give another directory with --registry-certs)",
                    p.display()
                )
            })?;
            Ok((n, data))
        })
        .collect()
}

/// Reads the directories of `hosts` in the certs.d directory `dir` into a
/// tar for the dind's /etc/docker/certs.d (None when none of them exists).
/// Files are followed through symlinks (certs.d often links to the
/// system's CA files). A client certificate needs its key and the other
/// way round, as dockerd checks. `explicit`: `dir` was given, so it must
/// exist.
fn read_certs(dir: &Path, hosts: &BTreeSet<&str>, explicit: bool) -> Result<Option<Vec<u8>>> {
    if explicit && !dir.is_dir() {
        bail!("--registry-certs {}: not a directory", dir.display());
    }
    let mut b = crate::tar::Writer::new(Vec::new());
    let mut any = false;
    let add_dir = |b: &mut crate::tar::Writer<Vec<u8>>, path: &str| -> Result<()> {
        b.dir(path.as_bytes(), &crate::tar::Attrs::root_owned(0o755))
            .context("making the certificates archive")
    };
    for host in hosts {
        let files = host_certs(&dir.join(host))?;
        if files.is_empty() {
            continue;
        }
        if !any {
            add_dir(&mut b, "etc/docker")?;
            add_dir(&mut b, "etc/docker/certs.d")?;
            any = true;
        }
        add_dir(&mut b, &format!("etc/docker/certs.d/{host}"))?;
        for (n, data) in &files {
            let path = format!("etc/docker/certs.d/{host}/{n}");
            b.file_bytes(
                path.as_bytes(),
                &crate::tar::Attrs::root_owned(cert_mode(n)),
                data,
            )
            .context("making the certificates archive")?;
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(b.finish().context("making the certificates archive")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_and_mirror_forms() {
        for ok in [
            "registry.local:5000",
            "10.1.2.3",
            "10.0.0.0/8",
            "[::1]:5000",
            "fd00::/8",
        ] {
            check_insecure(ok).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        }
        for bad in ["http://r:5000", "r/x", "10.0.0.0/200", "", "a b"] {
            assert!(check_insecure(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            mirror_host("https://mirror.local:5000/").unwrap(),
            "mirror.local:5000"
        );
        assert_eq!(mirror_host("http://10.0.0.1").unwrap(), "10.0.0.1");
        for bad in [
            "mirror.local",
            "https://",
            "https://m/v2",
            "https://u@m",
            "ftp://m",
        ] {
            assert!(mirror_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn containerd_hosts_for_mirrors_plain_http_and_certificates() {
        assert_eq!(
            parse_mirror("https://m.local/").unwrap(),
            ("docker.io".into(), "https://m.local".into())
        );
        assert_eq!(
            parse_mirror("registry.k8s.io=http://10.0.0.1:5000").unwrap(),
            ("registry.k8s.io".into(), "http://10.0.0.1:5000".into())
        );
        assert!(parse_mirror("a/b=http://m").is_err());
        assert!(parse_mirror("reg=m.local").is_err());
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("tls.local")).unwrap();
        std::fs::write(d.path().join("tls.local/ca.crt"), b"CA").unwrap();
        let opts = RegistryOptions::new(
            None,
            Some(d.path().to_path_buf()),
            vec!["plain.local:5000".into()],
            vec!["registry.k8s.io=http://127.0.0.1:5000".into()],
        )
        .unwrap();
        let host = |r: &str| opts.containerd_host(r, Some(d.path())).unwrap();
        assert_eq!(host("quay.io"), None, "defaults need no hosts.toml");
        let toml = |h: RegistryHost| String::from_utf8(h.files[0].1.clone()).unwrap();
        let k8s = toml(host("registry.k8s.io").unwrap());
        assert!(
            k8s.starts_with("server = \"https://registry.k8s.io\"\n"),
            "{k8s}"
        );
        assert!(
            k8s.contains(
                "[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]"
            ),
            "{k8s}"
        );
        assert!(toml(host("plain.local:5000").unwrap())
            .starts_with("server = \"http://plain.local:5000\""));
        assert!(
            toml(host("127.0.0.1:5000").unwrap()).starts_with("server = \"http://127.0.0.1:5000\"")
        );
        let tls = host("tls.local").unwrap();
        assert_eq!(tls.files[1], ("ca.crt".to_string(), b"CA".to_vec()));
        let t = toml(tls);
        assert!(
            t.contains(&format!(
                "ca = [\"{CONTAINERD_HOSTS_DIR}/tls.local/ca.crt\"]"
            )),
            "{t}"
        );
        let e = opts
            .check_docker_refs(&[ImageRef::parse("registry.k8s.io/pause:3.10").unwrap()])
            .unwrap_err();
        assert!(format!("{e}").contains("mirrors Docker Hub only"), "{e}");
    }

    #[test]
    fn certs_of_the_registries_pulled_from_only() {
        let d = tempfile::tempdir().unwrap();
        let reg = d.path().join("reg.local:5443");
        std::fs::create_dir(&reg).unwrap();
        std::fs::write(reg.join("ca.crt"), b"CA").unwrap();
        std::fs::write(reg.join("README"), b"not a cert").unwrap();
        let other = d.path().join("other.local");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("ca.crt"), b"OTHER").unwrap();
        let hosts = BTreeSet::from(["reg.local:5443", "absent.local"]);
        let tar = read_certs(d.path(), &hosts, true).unwrap().unwrap();
        let mut names = vec![];
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(
            names,
            [
                "etc/docker",
                "etc/docker/certs.d",
                "etc/docker/certs.d/reg.local:5443",
                "etc/docker/certs.d/reg.local:5443/ca.crt"
            ]
        );
        assert!(read_certs(d.path(), &BTreeSet::from(["x"]), true)
            .unwrap()
            .is_none());
        std::fs::write(reg.join("client.cert"), b"C").unwrap();
        let e = read_certs(d.path(), &hosts, true).unwrap_err();
        assert!(format!("{e:#}").contains("client.key"), "{e:#}");
        assert!(read_certs(&d.path().join("nope"), &hosts, true).is_err());
    }
}
