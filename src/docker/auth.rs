//! Registry credentials, found exactly where and how the docker CLI (28.x)
//! finds them for `docker pull`:
//!
//! - the client configuration `$DOCKER_CONFIG/config.json` (DOCKER_CONFIG set
//!   and non-empty), else `~/.docker/config.json`, or the file given with
//!   `--registry-config`; a missing default file is an empty configuration;
//! - the key of a registry: `https://index.docker.io/v1/` for Docker Hub
//!   (`docker.io`, `index.docker.io`), else `host[:port]` as in the image
//!   reference (`registry-1.docker.io` is a registry of its own to the CLI);
//! - the store for that key: `credHelpers[key]` when present (an empty name
//!   there means the file itself), else `credsStore`, else the file's `auths`;
//!   when the file holds no credentials settings at all, the CLI's default
//!   store (`pass` when `pass` and `docker-credential-pass` are on PATH, else
//!   `secretservice` when `docker-credential-secretservice` is);
//! - a helper store runs `docker-credential-NAME get` with the key on standard
//!   input; "credentials not found in native keychain" means anonymous, and
//!   the file's `auths` are then not used; a username `<token>` means the
//!   secret is an identity token;
//! - the file's `auths`: the exact key, else a key whose host part
//!   (`https://host:port/v1/`, `http://host`, `host/path`) is the key;
//!   `auth` is base64 of `user:password`, else `username`/`password`;
//!   `identitytoken` and `registrytoken` as given;
//! - `DOCKER_AUTH_CONFIG` (`{"auths": {KEY: {"auth": ...}}}`, exact keys only)
//!   before all of the above.
//!
//! Nothing here prints or formats a credential: errors name the file, the
//! registry key and the helper, never a value (helpers print no secrets on
//! failure, so their output is quoted).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::command::tail;

/// Docker Hub's key in config files and for credential helpers
/// (`registry.IndexServer`).
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// What a helper prints on standard output when it has nothing for a key.
const NOT_FOUND: &str = "credentials not found in native keychain";

/// The username by which a helper says its secret is an identity token.
const TOKEN_USERNAME: &str = "<token>";

const HELPER_PREFIX: &str = "docker-credential-";

/// What a registry gets: username+password, or an identity token (or, from
/// `auths`, a registry bearer token). Its Debug prints no secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub identity_token: Option<String>,
    /// A bearer token sent to the registry as is (`registrytoken` in `auths`).
    #[serde(default)]
    pub registry_token: Option<String>,
    /// As docker sends it: the key the credentials were found under, that is
    /// "https://index.docker.io/v1/" for Docker Hub, else the host[:port]
    /// (or the `auths` key in its URL form when that is what matched).
    pub server_address: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("identity_token", &redacted(&self.identity_token))
            .field("registry_token", &redacted(&self.registry_token))
            .field("server_address", &self.server_address)
            .finish()
    }
}

impl Credentials {
    /// Empty strings are absent, as docker omits them.
    fn new(
        username: String,
        password: String,
        identity_token: String,
        registry_token: String,
        server_address: String,
    ) -> Option<Credentials> {
        let some = |s: String| (!s.is_empty()).then_some(s);
        let c = Credentials {
            username: some(username),
            password: some(password),
            identity_token: some(identity_token),
            registry_token: some(registry_token),
            server_address,
        };
        let none = c.username.is_none()
            && c.password.is_none()
            && c.identity_token.is_none()
            && c.registry_token.is_none();
        (!none).then_some(c)
    }
}

/// One `auths` entry, `auth` already decoded.
#[derive(Clone, Default)]
struct AuthEntry {
    username: String,
    password: String,
    identity_token: String,
    registry_token: String,
}

/// Why a helper is used, for messages.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum HelperOrigin {
    CredHelpers,
    CredsStore,
    /// The CLI's platform default, picked because the file has no settings.
    Default,
}

/// The process environment the lookup depends on; tests pass their own.
struct Env {
    docker_config: Option<OsString>,
    home: Option<PathBuf>,
    docker_auth_config: Option<OsString>,
    /// Where helpers are looked up (PATH).
    path: Option<OsString>,
}

impl Env {
    fn from_process() -> Env {
        let home = match std::env::var_os("HOME") {
            Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
            // Like Go's os/user: the passwd entry when HOME is unset or empty.
            _ => std::env::home_dir().filter(|h| !h.as_os_str().is_empty()),
        };
        Env {
            docker_config: std::env::var_os("DOCKER_CONFIG"),
            home,
            docker_auth_config: std::env::var_os("DOCKER_AUTH_CONFIG"),
            path: std::env::var_os("PATH"),
        }
    }
}

/// The docker client configuration in use, loaded once.
pub struct ClientConfig {
    /// The file read; None when the default file does not exist.
    path: Option<PathBuf>,
    /// The file that was looked for (for messages when it is absent).
    wanted: PathBuf,
    auths: BTreeMap<String, AuthEntry>,
    creds_store: String,
    creds_store_origin: HelperOrigin,
    cred_helpers: BTreeMap<String, String>,
    /// DOCKER_AUTH_CONFIG's `auths`, consulted before everything else.
    env_auths: BTreeMap<String, AuthEntry>,
    search_path: Option<OsString>,
}

impl ClientConfig {
    /// `explicit` (--registry-config FILE) or, like the docker CLI:
    /// $DOCKER_CONFIG/config.json when DOCKER_CONFIG is set and non-empty,
    /// else ~/.docker/config.json ($HOME). A missing default file is an empty
    /// config; a missing explicit file, an unreadable file or bad JSON is an
    /// error naming the file (never quoting it).
    pub fn load(explicit: Option<&Path>) -> Result<ClientConfig> {
        Self::load_with(explicit, &Env::from_process())
    }

    fn load_with(explicit: Option<&Path>, env: &Env) -> Result<ClientConfig> {
        let wanted = match explicit {
            Some(p) => p.to_path_buf(),
            None => default_path(env)?,
        };
        let text = match std::fs::read(&wanted) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => None,
            // As the CLI's LoadDefaultConfigFile: the default file that
            // cannot be read is a warning, and no configuration.
            Err(e) if explicit.is_none() => {
                eprintln!(
                    "warning: cannot read the docker client configuration {}: {e}; pulling without its credentials",
                    wanted.display()
                );
                None
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "reading the docker client configuration {}",
                        wanted.display()
                    )
                })
            }
        };
        let mut cfg = ClientConfig {
            path: text.as_ref().map(|_| wanted.clone()),
            wanted,
            auths: BTreeMap::new(),
            creds_store: String::new(),
            creds_store_origin: HelperOrigin::CredsStore,
            cred_helpers: BTreeMap::new(),
            env_auths: BTreeMap::new(),
            search_path: env.path.clone(),
        };
        if let Some(bytes) = text {
            cfg.parse(&String::from_utf8_lossy(&bytes))
                .with_context(|| {
                    format!(
                        "in the docker client configuration {}",
                        cfg.wanted.display()
                    )
                })?;
        }
        // The CLI's LoadDefaultConfigFile: no credentials settings at all
        // means the platform's default helper when it is installed.
        if cfg.creds_store.is_empty() && cfg.cred_helpers.is_empty() && cfg.auths.is_empty() {
            if let Some(name) = default_store(env.path.as_deref()) {
                cfg.creds_store = name.to_string();
                cfg.creds_store_origin = HelperOrigin::Default;
            }
        }
        if let Some(v) = &env.docker_auth_config {
            if !v.is_empty() {
                cfg.env_auths = parse_env_auths(v).context("in DOCKER_AUTH_CONFIG")?;
            }
        }
        Ok(cfg)
    }

    /// Reads what the lookup uses from the file's text, as Go's JSON decoder
    /// does: the first JSON value counts, field names match case-insensitively
    /// (an exact match first), null is absent, nothing at all is empty.
    fn parse(&mut self, text: &str) -> Result<()> {
        let first = serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .next();
        let root = match first {
            None => return Ok(()),
            Some(v) => v.context("not valid JSON")?,
        };
        let root = match root {
            Value::Null => return Ok(()),
            Value::Object(m) => m,
            _ => bail!("the top level is not a JSON object"),
        };
        if let Some(auths) = object_field(&root, "auths")? {
            for (key, entry) in auths {
                let e = parse_auth_entry(entry)
                    .with_context(|| format!("registry {key:?} in \"auths\""))?;
                self.auths.insert(key.clone(), e);
            }
        }
        self.creds_store = string_field(&root, "credsStore")?.unwrap_or_default();
        if let Some(helpers) = object_field(&root, "credHelpers")? {
            for (key, v) in helpers {
                let name = match v {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    _ => bail!("registry {key:?} in \"credHelpers\" is not a string"),
                };
                self.cred_helpers.insert(key.clone(), name);
            }
        }
        Ok(())
    }

    /// Where it came from (for messages), None when no file.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The credentials for registry `host` ("docker.io" for Docker Hub, else
    /// "host[:port]" as in the image reference), and a short description of
    /// where they came from, for messages ("credential helper
    /// docker-credential-pass (from credsStore of FILE)", "auths of FILE",
    /// "DOCKER_AUTH_CONFIG"). Ok(None) when there are none (anonymous pull).
    pub fn credentials(&self, host: &str) -> Result<Option<(Credentials, String)>> {
        let key = auth_config_key(host);
        if let Some(e) = self.env_auths.get(key) {
            let found = Credentials::new(
                e.username.clone(),
                e.password.clone(),
                String::new(),
                String::new(),
                key.to_string(),
            );
            return Ok(found.map(|c| (c, "DOCKER_AUTH_CONFIG".to_string())));
        }
        let (helper, origin) = match self.cred_helpers.get(key) {
            Some(name) => (name.as_str(), HelperOrigin::CredHelpers),
            None => (self.creds_store.as_str(), self.creds_store_origin),
        };
        if helper.is_empty() {
            let found = self.file_lookup(key).and_then(|(server, e)| {
                Credentials::new(
                    e.username.clone(),
                    e.password.clone(),
                    e.identity_token.clone(),
                    e.registry_token.clone(),
                    server.to_string(),
                )
            });
            let from = format!("auths of {}", self.wanted.display());
            return Ok(found.map(|c| (c, from)));
        }
        let from = format!(
            "credential helper {HELPER_PREFIX}{helper} (from {})",
            self.origin_text(origin)
        );
        let program = format!("{HELPER_PREFIX}{helper}");
        let exe = (!helper.contains('/'))
            .then(|| find_on_path(&program, self.search_path.as_deref()))
            .flatten()
            .with_context(|| {
                format!("{from} is not on PATH (it holds the credentials for registry {key})")
            })?;
        let got = helper_get(&exe, &program, key)
            .with_context(|| format!("getting the credentials for {key} from {from}"))?;
        // The CLI's native store keeps only the file entry's registry token.
        let registry_token = self
            .file_lookup(key)
            .map(|(_, e)| e.registry_token.clone())
            .unwrap_or_default();
        let found = match got {
            None => Credentials::new(
                String::new(),
                String::new(),
                String::new(),
                registry_token,
                String::new(),
            ),
            Some(h) if h.username == TOKEN_USERNAME => Credentials::new(
                String::new(),
                String::new(),
                h.secret,
                registry_token,
                key.to_string(),
            ),
            Some(h) => Credentials::new(
                h.username,
                h.secret,
                String::new(),
                registry_token,
                key.to_string(),
            ),
        };
        Ok(found.map(|c| (c, from)))
    }

    /// The file store's Get: the exact key, else the first key (in sorted
    /// order; Go's is random) whose host part is `key`.
    fn file_lookup(&self, key: &str) -> Option<(&str, &AuthEntry)> {
        if let Some((k, e)) = self.auths.get_key_value(key) {
            return Some((k.as_str(), e));
        }
        self.auths
            .iter()
            .find(|(k, _)| convert_to_hostname(k) == key)
            .map(|(k, e)| (k.as_str(), e))
    }

    fn origin_text(&self, origin: HelperOrigin) -> String {
        let file = self.wanted.display();
        match origin {
            HelperOrigin::CredHelpers => format!("credHelpers of {file}"),
            HelperOrigin::CredsStore => format!("credsStore of {file}"),
            HelperOrigin::Default if self.path.is_some() => {
                format!("the default store docker uses when {file} has no credentials settings")
            }
            HelperOrigin::Default => {
                format!("the default store docker uses when there is no {file}")
            }
        }
    }
}

fn default_path(env: &Env) -> Result<PathBuf> {
    if let Some(dir) = env.docker_config.as_ref().filter(|d| !d.is_empty()) {
        return Ok(Path::new(dir).join("config.json"));
    }
    let home = env.home.as_ref().context(
        "cannot find the home directory for ~/.docker/config.json: set HOME or DOCKER_CONFIG, \
         or pass --registry-config",
    )?;
    Ok(home.join(".docker").join("config.json"))
}

/// The key credentials are stored under (`getAuthConfigKey`).
fn auth_config_key(host: &str) -> &str {
    match host {
        "docker.io" | "index.docker.io" => DOCKER_HUB_KEY,
        other => other,
    }
}

/// A field of a JSON object as Go's decoder finds it: the exact name, else
/// one that differs only in ASCII case.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn object_field<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => bail!("{name:?} is not a JSON object"),
    }
}

fn string_field(obj: &Map<String, Value>, name: &str) -> Result<Option<String>> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => bail!("{name:?} is not a string"),
    }
}

fn parse_auth_entry(v: &Value) -> Result<AuthEntry> {
    let obj = match v {
        Value::Null => return Ok(AuthEntry::default()),
        Value::Object(m) => m,
        _ => bail!("not a JSON object"),
    };
    let mut e = AuthEntry {
        username: string_field(obj, "username")?.unwrap_or_default(),
        password: string_field(obj, "password")?.unwrap_or_default(),
        identity_token: string_field(obj, "identitytoken")?.unwrap_or_default(),
        registry_token: string_field(obj, "registrytoken")?.unwrap_or_default(),
    };
    // The fields docker reads and ignores must still be strings.
    for ignored in ["email", "serveraddress"] {
        string_field(obj, ignored)?;
    }
    let auth = string_field(obj, "auth")?.unwrap_or_default();
    if !auth.is_empty() {
        let (user, password) = decode_auth(&auth)?;
        e.username = user;
        e.password = password;
    }
    Ok(e)
}

/// `auth` = base64("user:password"), as the CLI's decodeAuth reads it: the
/// first ':' splits (a password may hold more), NULs around the password are
/// dropped, the user must not be empty.
fn decode_auth(auth: &str) -> Result<(String, String)> {
    let bytes = decode_base64(auth).context("its \"auth\" is not valid base64")?;
    let text = String::from_utf8_lossy(&bytes);
    match text.split_once(':') {
        Some((user, password)) if !user.is_empty() => {
            Ok((user.to_string(), password.trim_matches('\0').to_string()))
        }
        _ => bail!("its \"auth\" does not decode to user:password"),
    }
}

/// Go's base64.StdEncoding.Decode: padded standard alphabet, CR and LF
/// ignored, non-zero trailing bits accepted. The error says where, never what.
fn decode_base64(s: &str) -> Result<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let input: Vec<u8> = s.bytes().filter(|&b| b != b'\r' && b != b'\n').collect();
    if !input.len().is_multiple_of(4) {
        bail!("its length is not a multiple of 4");
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let quads = input.len() / 4;
    for (i, q) in input.chunks(4).enumerate() {
        let last = i + 1 == quads;
        let pad = q.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            bail!("misplaced padding near byte {}", i * 4);
        }
        let mut n = 0u32;
        for (j, &c) in q[..4 - pad].iter().enumerate() {
            let v = value(c).with_context(|| format!("illegal character at byte {}", i * 4 + j))?;
            n |= v << (18 - 6 * j);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

/// The CLI's ConvertToHostname: the host[:port] of a key written as a URL
/// (`https://host:port/v1/`) or with a path (`host/v1/`).
fn convert_to_hostname(key: &str) -> String {
    if let Some((scheme, rest)) = key.split_once("://") {
        if let Some(h) = url_host(scheme, rest) {
            return h;
        }
        if let Some(h) = host_fallback(rest) {
            return h;
        }
    }
    key.split('/').next().unwrap_or_default().to_string()
}

/// What Go's url.Parse gives as net.JoinHostPort(u.Hostname(), u.Port()),
/// or None where it fails or finds no host.
fn url_host(scheme: &str, rest: &str) -> Option<String> {
    let mut sc = scheme.bytes();
    let scheme_ok = sc.next().is_some_and(|b| b.is_ascii_alphabetic())
        && sc.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner.split_once(']')?;
        let port = match after {
            "" => "",
            p => p.strip_prefix(':')?,
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            // Go rejects an unbracketed IPv6 literal.
            Some((h, _)) if h.contains(':') => return None,
            Some((h, p)) => (h, p),
            None => (hostport, ""),
        }
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) || host.is_empty() {
        return None;
    }
    Some(join_host_port(host, port))
}

/// The CLI's hostFromURLFallback, for keys url.Parse rejects.
fn host_fallback(rest: &str) -> Option<String> {
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return None;
    }
    if host.matches(':').count() > 1 && !host.starts_with('[') {
        if let Some((addr, port)) = host.rsplit_once(':') {
            if !addr.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                return Some(join_host_port(addr, port));
            }
        }
    }
    Some(host.to_string())
}

fn join_host_port(host: &str, port: &str) -> String {
    match (port.is_empty(), host.contains(':')) {
        (true, _) => host.to_string(),
        (false, true) => format!("[{host}]:{port}"),
        (false, false) => format!("{host}:{port}"),
    }
}

/// The CLI's DetectDefaultStore on Linux.
fn default_store(search_path: Option<&OsStr>) -> Option<&'static str> {
    let name = if find_on_path("pass", search_path).is_some() {
        "pass"
    } else {
        "secretservice"
    };
    find_on_path(&format!("{HELPER_PREFIX}{name}"), search_path).map(|_| name)
}

/// Go's exec.LookPath: an executable non-directory in an absolute PATH entry
/// (relative entries, "." included, are refused by Go since 1.19).
fn find_on_path(name: &str, search_path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(search_path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| !m.is_dir() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What a helper answers to `get` (its JSON field names, matched as Go
/// matches them).
struct HelperAnswer {
    username: String,
    secret: String,
}

/// Runs helper `exe` (named `program`) as `program get` with `key` on
/// standard input. Ok(None) when it has no credentials for `key`.
fn helper_get(exe: &Path, program: &str, key: &str) -> Result<Option<HelperAnswer>> {
    let mut child = Command::new(exe)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper may exit without reading its input.
        match stdin.write_all(key.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(e).with_context(|| format!("writing to {program}"));
            }
            _ => {}
        }
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if stdout.trim() == NOT_FOUND {
            return Ok(None);
        }
        let text = format!(
            "{}\n{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        bail!(
            "{program} get failed ({}): {}",
            out.status,
            tail(text.trim(), 10)
        );
    }
    let answer = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .next();
    let obj = match answer {
        Some(Ok(Value::Object(m))) => m,
        _ => bail!("{program} get did not answer with a JSON object"),
    };
    let get = |name: &str| match field(&obj, name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => bail!("{program} get answered a {name} that is not a string"),
    };
    Ok(Some(HelperAnswer {
        username: get("Username")?,
        secret: get("Secret")?,
    }))
}

/// DOCKER_AUTH_CONFIG as the CLI reads it: one object with only `auths`,
/// whose entries hold only a non-empty `auth`.
fn parse_env_auths(v: &OsStr) -> Result<BTreeMap<String, AuthEntry>> {
    let text = v.to_str().context("it is not UTF-8")?;
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let root = match values.next() {
        None => return Ok(BTreeMap::new()),
        Some(v) => v.context("not valid JSON")?,
    };
    if values.next().is_some() {
        bail!("it holds more than one JSON object");
    }
    let root = match root {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(m) => m,
        _ => bail!("the top level is not a JSON object"),
    };
    if let Some(k) = root.keys().find(|k| !k.eq_ignore_ascii_case("auths")) {
        bail!("unknown field {k:?} (only \"auths\" is allowed)");
    }
    let mut out = BTreeMap::new();
    let empty = Map::new();
    if let Some(auths) = object_field(&root, "auths")? {
        for (key, entry) in auths {
            let e = (|| {
                let obj = match entry {
                    Value::Object(m) => m,
                    Value::Null => &empty,
                    _ => bail!("not a JSON object"),
                };
                if let Some(k) = obj.keys().find(|k| !k.eq_ignore_ascii_case("auth")) {
                    bail!("unknown field {k:?} (only \"auth\" is allowed)");
                }
                let auth = string_field(obj, "auth")?.unwrap_or_default();
                if auth.is_empty() {
                    bail!("\"auth\" is missing");
                }
                let (username, password) = decode_auth(&auth)?;
                Ok(AuthEntry {
                    username,
                    password,
                    ..AuthEntry::default()
                })
            })()
            .with_context(|| format!("registry {key:?} in \"auths\""))?;
            out.insert(key.clone(), e);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// base64 of `s`, for writing fixtures (the test's own encoder).
    fn b64(s: &str) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in s.as_bytes().chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn config(&self, json: &str) -> PathBuf {
            let p = self.dir.path().join("config.json");
            std::fs::write(&p, json).unwrap();
            p
        }

        fn bin(&self) -> PathBuf {
            let b = self.dir.path().join("bin");
            std::fs::create_dir_all(&b).unwrap();
            b
        }

        /// A `docker-credential-NAME` script in bin/ running `body`, which
        /// gets the key on standard input.
        fn helper(&self, name: &str, body: &str) {
            self.exe(&format!("docker-credential-{name}"), body);
        }

        /// An executable script bin/NAME.
        fn exe(&self, name: &str, body: &str) {
            let p = self.bin().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn env(&self) -> Env {
            Env {
                docker_config: None,
                home: Some(self.dir.path().join("home")),
                docker_auth_config: None,
                path: Some(self.bin().into_os_string()),
            }
        }

        fn load(&self, json: &str) -> ClientConfig {
            let p = self.config(json);
            ClientConfig::load_with(Some(&p), &self.env()).unwrap()
        }
    }

    /// A helper that answers user "u-KEY" and secret "s3cret" for any key.
    const ECHO_HELPER: &str = r#"key=$(cat)
printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s3cret"}' "$key" "$key""#;

    const NOT_FOUND_HELPER: &str =
        "cat >/dev/null; echo 'credentials not found in native keychain'; exit 1";

    fn userpass(c: &Credentials) -> (Option<&str>, Option<&str>) {
        (c.username.as_deref(), c.password.as_deref())
    }

    #[test]
    fn auths_auth_gives_user_and_password_with_colons() {
        let f = Fixture::new();
        let auth = b64("alice:pa:ss:word");
        let cfg = f.load(&format!(
            r#"{{"auths": {{"reg.example:5000": {{"auth": "{auth}"}}}}}}"#
        ));
        let (c, from) = cfg.credentials("reg.example:5000").unwrap().unwrap();
        assert_eq!(userpass(&c), (Some("alice"), Some("pa:ss:word")));
        assert_eq!(c.identity_token, None);
        assert_eq!(c.server_address, "reg.example:5000");
        assert_eq!(
            from,
            format!("auths of {}", f.dir.path().join("config.json").display())
        );
        assert!(cfg.credentials("other.example").unwrap().is_none());
        // Another port is another registry.
        assert!(cfg.credentials("reg.example").unwrap().is_none());
    }

    #[test]
    fn auths_username_password_fields_and_identity_token() {
        let f = Fixture::new();
        let cfg = f.load(
            r#"{"auths": {
                "a.example": {"username": "bob", "password": "pw"},
                "b.example": {"auth": "", "identitytoken": "tok-123"},
                "c.example": {},
                "d.example": {"registrytoken": "bearer-1"}
            }}"#,
        );
        let (a, _) = cfg.credentials("a.example").unwrap().unwrap();
        assert_eq!(userpass(&a), (Some("bob"), Some("pw")));
        let (b, _) = cfg.credentials("b.example").unwrap().unwrap();
        assert_eq!(b.identity_token.as_deref(), Some("tok-123"));
        assert_eq!(userpass(&b), (None, None));
        // An empty entry (what `docker login` leaves with a credsStore) is anonymous.
        assert!(cfg.credentials("c.example").unwrap().is_none());
        let (d, _) = cfg.credentials("d.example").unwrap().unwrap();
        assert_eq!(d.registry_token.as_deref(), Some("bearer-1"));
    }

    #[test]
    fn auth_overrides_username_and_password_fields() {
        let f = Fixture::new();
        let auth = b64("real:secret");
        let cfg = f.load(&format!(
            r#"{{"auths": {{"r.example": {{"auth": "{auth}", "username": "x", "password": "y"}}}}}}"#
        ));
        let (c, _) = cfg.credentials("r.example").unwrap().unwrap();
        assert_eq!(userpass(&c), (Some("real"), Some("secret")));
    }

    #[test]
    fn url_form_keys_match_their_host() {
        let f = Fixture::new();
        let cfg = f.load(&format!(
            r#"{{"auths": {{
                "https://reg.example:5000/v1/": {{"auth": "{}"}},
                "http://plain.example": {{"auth": "{}"}},
                "path.example/v2/": {{"auth": "{}"}},
                "https://[fd00::1]:443/": {{"auth": "{}"}}
            }}}}"#,
            b64("u1:p1"),
            b64("u2:p2"),
            b64("u3:p3"),
            b64("u4:p4"),
        ));
        let (c, _) = cfg.credentials("reg.example:5000").unwrap().unwrap();
        assert_eq!(userpass(&c), (Some("u1"), Some("p1")));
        // Docker sends the key it found.
        assert_eq!(c.server_address, "https://reg.example:5000/v1/");
        let (c, _) = cfg.credentials("plain.example").unwrap().unwrap();
        assert_eq!(userpass(&c), (Some("u2"), Some("p2")));
        let (c, _) = cfg.credentials("path.example").unwrap().unwrap();
        assert_eq!(userpass(&c), (Some("u3"), Some("p3")));
        let (c, _) = cfg.credentials("[fd00::1]:443").unwrap().unwrap();
        assert_eq!(userpass(&c), (Some("u4"), Some("p4")));
        assert!(cfg.credentials("reg.example").unwrap().is_none());
    }

    #[test]
    fn convert_to_hostname_like_the_cli() {
        for (key, host) in [
            ("https://reg.example:5000/v1/", "reg.example:5000"),
            ("http://reg.example", "reg.example"),
            ("https://user@reg.example/x", "reg.example"),
            ("reg.example:5000/v1/", "reg.example:5000"),
            ("reg.example", "reg.example"),
            ("https://[::1]:5000/", "[::1]:5000"),
            ("https://[::1]/", "::1"),
            ("https://::1:5000/", "[::1]:5000"),
            ("https://index.docker.io/v1/", "index.docker.io"),
        ] {
            assert_eq!(convert_to_hostname(key), host, "{key}");
        }
    }

    #[test]
    fn docker_hub_uses_the_index_key() {
        let f = Fixture::new();
        let cfg = f.load(&format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "registry-1.docker.io": {{"auth": "{}"}}
            }}}}"#,
            b64("hubuser:hubpw"),
            b64("r1user:r1pw"),
        ));
        for host in ["docker.io", "index.docker.io"] {
            let (c, _) = cfg.credentials(host).unwrap().unwrap();
            assert_eq!(userpass(&c), (Some("hubuser"), Some("hubpw")), "{host}");
            assert_eq!(c.server_address, DOCKER_HUB_KEY);
        }
        // As in the CLI, registry-1.docker.io is a key of its own.
        let (c, _) = cfg.credentials("registry-1.docker.io").unwrap().unwrap();
        assert_eq!(userpass(&c), (Some("r1user"), Some("r1pw")));

        // "docker.io" or "index.docker.io" as a key is not Docker Hub's key.
        let f = Fixture::new();
        let cfg = f.load(&format!(
            r#"{{"auths": {{"docker.io": {{"auth": "{}"}}}}}}"#,
            b64("a:b")
        ));
        assert!(cfg.credentials("docker.io").unwrap().is_none());
    }

    #[test]
    fn hub_key_goes_to_the_helper() {
        let f = Fixture::new();
        f.helper("echo", ECHO_HELPER);
        let cfg = f.load(r#"{"credsStore": "echo"}"#);
        let (c, from) = cfg.credentials("docker.io").unwrap().unwrap();
        assert_eq!(c.username.as_deref(), Some("u-https://index.docker.io/v1/"));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.server_address, DOCKER_HUB_KEY);
        let file = f.dir.path().join("config.json");
        assert_eq!(
            from,
            format!(
                "credential helper docker-credential-echo (from credsStore of {})",
                file.display()
            )
        );
    }

    #[test]
    fn cred_helpers_win_over_creds_store_and_auths() {
        let f = Fixture::new();
        f.helper("per-host", ECHO_HELPER);
        f.helper(
            "store",
            &NOT_FOUND_HELPER.replace("exit 1", "exit 1 # store"),
        );
        let cfg = f.load(&format!(
            r#"{{"credsStore": "store",
                "credHelpers": {{"reg.example": "per-host", "file.example": ""}},
                "auths": {{
                    "reg.example": {{"auth": "{a}"}},
                    "file.example": {{"auth": "{b}"}},
                    "other.example": {{"auth": "{c}"}}
                }}}}"#,
            a = b64("fileuser:filepw"),
            b = b64("fu2:fp2"),
            c = b64("fu3:fp3"),
        ));
        let (c, from) = cfg.credentials("reg.example").unwrap().unwrap();
        assert_eq!(userpass(&c), (Some("u-reg.example"), Some("s3cret")));
        assert!(
            from.contains("docker-credential-per-host (from credHelpers of"),
            "{from}"
        );
        // An empty helper name sends that registry to the file's auths.
        let (c, from) = cfg.credentials("file.example").unwrap().unwrap();
        assert_eq!(userpass(&c), (Some("fu2"), Some("fp2")));
        assert!(from.starts_with("auths of "), "{from}");
        // With a credsStore, the file's auths are not used for lookup: the
        // store has nothing for other.example, so it is anonymous.
        assert!(cfg.credentials("other.example").unwrap().is_none());
    }

    #[test]
    fn helper_not_found_is_anonymous() {
        let f = Fixture::new();
        f.helper("empty", NOT_FOUND_HELPER);
        let cfg = f.load(r#"{"credsStore": "empty", "auths": {"reg.example": {}}}"#);
        assert!(cfg.credentials("reg.example").unwrap().is_none());
        assert!(cfg.credentials("docker.io").unwrap().is_none());
    }

    #[test]
    fn helper_token_is_an_identity_token() {
        let f = Fixture::new();
        f.helper(
            "tok",
            r#"cat >/dev/null; echo '{"ServerURL":"x","Username":"<token>","Secret":"id-tok"}'"#,
        );
        let cfg = f.load(r#"{"credHelpers": {"reg.example": "tok"}}"#);
        let (c, _) = cfg.credentials("reg.example").unwrap().unwrap();
        assert_eq!(c.identity_token.as_deref(), Some("id-tok"));
        assert_eq!(userpass(&c), (None, None));
        assert_eq!(c.server_address, "reg.example");
        // Only that host uses the helper.
        assert!(cfg.credentials("else.example").unwrap().is_none());
    }

    #[test]
    fn missing_helper_says_so() {
        let f = Fixture::new();
        let cfg = f.load(r#"{"credsStore": "nosuch"}"#);
        let err = format!("{:#}", cfg.credentials("reg.example").unwrap_err());
        let file = f.dir.path().join("config.json");
        let want = format!(
            "credential helper docker-credential-nosuch (from credsStore of {}) is not on PATH",
            file.display()
        );
        assert!(err.contains(&want), "{err}");
        assert!(err.contains("reg.example"), "{err}");

        let cfg = f.load(r#"{"credHelpers": {"reg.example": "gone"}}"#);
        let err = format!("{:#}", cfg.credentials("reg.example").unwrap_err());
        assert!(
            err.contains("docker-credential-gone (from credHelpers of")
                && err.contains("is not on PATH"),
            "{err}"
        );
    }

    #[test]
    fn failing_helper_error_quotes_its_output() {
        let f = Fixture::new();
        f.helper(
            "broken",
            "cat >/dev/null; echo 'gpg: decryption failed: No secret key' >&2; exit 2",
        );
        let cfg = f.load(r#"{"credsStore": "broken"}"#);
        let err = format!("{:#}", cfg.credentials("reg.example").unwrap_err());
        assert!(err.contains("docker-credential-broken get failed"), "{err}");
        assert!(
            err.contains("gpg: decryption failed: No secret key"),
            "{err}"
        );
        assert!(err.contains("exit status: 2"), "{err}");

        f.helper("garbage", "cat >/dev/null; echo 'not json s3cret'");
        let cfg = f.load(r#"{"credsStore": "garbage"}"#);
        let err = format!("{:#}", cfg.credentials("reg.example").unwrap_err());
        assert!(err.contains("did not answer with a JSON object"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn malformed_auth_names_file_and_key_not_value() {
        let f = Fixture::new();
        let p = f.config(r#"{"auths": {"reg.example": {"auth": "c2VjcmV0!!c2VjcmV0"}}}"#);
        let err = ClientConfig::load_with(Some(&p), &f.env()).err().unwrap();
        let err = format!("{err:#}");
        assert!(err.contains(&p.display().to_string()), "{err}");
        assert!(err.contains("\"reg.example\""), "{err}");
        assert!(err.contains("not valid base64"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");

        // Valid base64 without a ':' (or with an empty user).
        for bad in [b64("justasecret"), b64(":secretpw")] {
            let p = f.config(&format!(
                r#"{{"auths": {{"reg.example": {{"auth": "{bad}"}}}}}}"#
            ));
            let err = format!(
                "{:#}",
                ClientConfig::load_with(Some(&p), &f.env()).err().unwrap()
            );
            assert!(err.contains("does not decode to user:password"), "{err}");
            assert!(!err.contains(&bad) && !err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn base64_like_go() {
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert_eq!(decode_base64("YWI=").unwrap(), b"ab");
        assert_eq!(decode_base64("YWJj").unwrap(), b"abc");
        assert_eq!(decode_base64("YW\r\nJj").unwrap(), b"abc");
        // Go's non-strict decoder ignores non-zero trailing bits.
        assert_eq!(decode_base64("YR==").unwrap(), b"a");
        for bad in ["YQ", "YQ=", "Y===", "YQ==YWJj", "YW-j", "YWJ=j==="] {
            assert!(decode_base64(bad).is_err(), "{bad}");
        }
        assert_eq!(
            decode_auth(&b64("u:p\0\0")).unwrap(),
            ("u".into(), "p".into())
        );
    }

    #[test]
    fn explicit_missing_file_is_an_error_default_missing_is_empty() {
        let f = Fixture::new();
        let p = f.dir.path().join("nope.json");
        let err = format!(
            "{:#}",
            ClientConfig::load_with(Some(&p), &f.env()).err().unwrap()
        );
        assert!(err.contains(&p.display().to_string()), "{err}");
        assert!(err.contains("No such file"), "{err}");

        let cfg = ClientConfig::load_with(None, &f.env()).unwrap();
        assert_eq!(cfg.path(), None);
        assert!(cfg.credentials("docker.io").unwrap().is_none());
    }

    #[test]
    fn bad_json_names_the_file_without_its_content() {
        let f = Fixture::new();
        for text in [
            r#"{"auths": {"r": {"auth": "s3cret"#,
            r#"{"auths": {"r": {"password": 12345}}}"#,
            r#"{"auths": ["s3cret"]}"#,
            r#"["s3cret"]"#,
        ] {
            let p = f.config(text);
            let err = format!(
                "{:#}",
                ClientConfig::load_with(Some(&p), &f.env()).err().unwrap()
            );
            assert!(err.contains(&p.display().to_string()), "{err}");
            assert!(!err.contains("s3cret") && !err.contains("12345"), "{err}");
        }
        // Empty, null and trailing data after the first value are fine in Go.
        for text in ["", "  \n", "null", r#"{"auths": {}} trailing"#] {
            let p = f.config(text);
            ClientConfig::load_with(Some(&p), &f.env()).unwrap();
        }
    }

    #[test]
    fn field_names_match_case_insensitively() {
        let f = Fixture::new();
        let cfg = f.load(&format!(
            r#"{{"Auths": {{"r.example": {{"Auth": "{}"}}}}}}"#,
            b64("u:p")
        ));
        let (c, _) = cfg.credentials("r.example").unwrap().unwrap();
        assert_eq!(userpass(&c), (Some("u"), Some("p")));
    }

    #[test]
    fn docker_config_and_home_pick_the_file() {
        let f = Fixture::new();
        let in_dir = |dir: &Path, user: &str| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(
                dir.join("config.json"),
                format!(
                    r#"{{"auths": {{"r.example": {{"auth": "{}"}}}}}}"#,
                    b64(&format!("{user}:pw"))
                ),
            )
            .unwrap();
        };
        let home = f.dir.path().join("home");
        let dc = f.dir.path().join("dc");
        in_dir(&home.join(".docker"), "homeuser");
        in_dir(&dc, "dcuser");
        let user = |env: &Env| {
            let cfg = ClientConfig::load_with(None, env).unwrap();
            let (c, from) = cfg.credentials("r.example").unwrap().unwrap();
            (c.username.unwrap(), from, cfg.path().map(Path::to_path_buf))
        };

        let mut env = f.env();
        let (u, from, path) = user(&env);
        assert_eq!(u, "homeuser");
        assert_eq!(path, Some(home.join(".docker/config.json")));
        assert!(from.ends_with("home/.docker/config.json"), "{from}");

        env.docker_config = Some(OsString::new());
        assert_eq!(user(&env).0, "homeuser", "empty DOCKER_CONFIG is unset");

        env.docker_config = Some(dc.clone().into_os_string());
        let (u, _, path) = user(&env);
        assert_eq!(u, "dcuser");
        assert_eq!(path, Some(dc.join("config.json")));

        // An explicit file wins over both.
        let p = f.config(&format!(
            r#"{{"auths": {{"r.example": {{"auth": "{}"}}}}}}"#,
            b64("x:y")
        ));
        let cfg = ClientConfig::load_with(Some(&p), &env).unwrap();
        assert_eq!(
            cfg.credentials("r.example")
                .unwrap()
                .unwrap()
                .0
                .username
                .as_deref(),
            Some("x")
        );

        // DOCKER_CONFIG pointing at an empty directory: no file, no credentials.
        env.docker_config = Some(f.dir.path().join("empty").into_os_string());
        let cfg = ClientConfig::load_with(None, &env).unwrap();
        assert!(cfg.path().is_none());
        assert!(cfg.credentials("r.example").unwrap().is_none());

        // No home and no DOCKER_CONFIG.
        env.docker_config = None;
        env.home = None;
        let err = format!("{:#}", ClientConfig::load_with(None, &env).err().unwrap());
        assert!(err.contains("set HOME or DOCKER_CONFIG"), "{err}");
    }

    #[test]
    fn default_store_only_without_credentials_settings() {
        let f = Fixture::new();
        f.helper("secretservice", ECHO_HELPER);
        // No file at all: docker uses the installed default helper.
        let cfg = ClientConfig::load_with(None, &f.env()).unwrap();
        let (c, from) = cfg.credentials("r.example").unwrap().unwrap();
        assert_eq!(c.username.as_deref(), Some("u-r.example"));
        assert!(
            from.contains("docker-credential-secretservice (from the default store"),
            "{from}"
        );
        // A file with auths: no default store.
        let cfg = f.load(r#"{"auths": {"other.example": {}}}"#);
        assert!(cfg.credentials("r.example").unwrap().is_none());
        // `pass` on PATH makes `pass` the default, which is not installed here.
        f.exe("pass", "exit 0");
        let cfg = ClientConfig::load_with(None, &f.env()).unwrap();
        assert!(cfg.credentials("r.example").unwrap().is_none());
    }

    #[test]
    fn docker_auth_config_comes_first_with_exact_keys() {
        let f = Fixture::new();
        f.helper("echo", ECHO_HELPER);
        let p = f.config(r#"{"credsStore": "echo"}"#);
        let mut env = f.env();
        env.docker_auth_config = Some(
            format!(
                r#"{{"auths": {{"r.example": {{"auth": "{}"}}, "https://index.docker.io/v1/": {{"auth": "{}"}}}}}}"#,
                b64("envuser:envpw"),
                b64("hub:pw")
            )
            .into(),
        );
        let cfg = ClientConfig::load_with(Some(&p), &env).unwrap();
        let (c, from) = cfg.credentials("r.example").unwrap().unwrap();
        assert_eq!(userpass(&c), (Some("envuser"), Some("envpw")));
        assert_eq!(from, "DOCKER_AUTH_CONFIG");
        assert_eq!(
            cfg.credentials("docker.io")
                .unwrap()
                .unwrap()
                .0
                .username
                .as_deref(),
            Some("hub")
        );
        // Other keys fall back to the store.
        let (c, _) = cfg.credentials("s.example").unwrap().unwrap();
        assert_eq!(c.username.as_deref(), Some("u-s.example"));

        for bad in [
            r#"{"auths": {"r.example": {"auth": "*!*!"}}}"#,
            r#"{"auths": {"r.example": {"username": "u"}}}"#,
            r#"{"auths": {"r.example": {}}}"#,
            r#"{"other": 1}"#,
            r#"{} {}"#,
        ] {
            env.docker_auth_config = Some(bad.into());
            let err = format!(
                "{:#}",
                ClientConfig::load_with(Some(&p), &env).err().unwrap()
            );
            assert!(err.contains("DOCKER_AUTH_CONFIG"), "{err}");
            assert!(!err.contains("*!*!"), "{err}");
        }
    }

    #[test]
    fn debug_and_errors_print_no_secret() {
        let c = Credentials {
            username: Some("alice".into()),
            password: Some("hunter2".into()),
            identity_token: Some("idtok".into()),
            registry_token: None,
            server_address: "r.example".into(),
        };
        let d = format!("{c:?}");
        assert!(d.contains("alice") && d.contains("<redacted>"), "{d}");
        assert!(!d.contains("hunter2") && !d.contains("idtok"), "{d}");
        // It crosses the process boundary as JSON.
        let back: Credentials = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
