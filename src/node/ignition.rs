//! Validates an Ignition config before it is written to the OEM partition.
//!
//! A config baked into the image only runs at first boot, when a mistake is
//! expensive to find (the node does not come up) or destructive (a config
//! that reformats ROOT erases everything this tool baked into it). So the
//! checks here are the ones that can be made without booting: that the file
//! is a JSON Ignition config in a spec version Flatcar's Ignition (2.24)
//! reads, that it does not wipe ROOT, and which remote sources it would
//! fetch at first boot (reported, not refused: the node may well have
//! network access, but the user should know it needs it).
//!
//! The config is walked as a `serde_json::Value` rather than deserialised
//! into typed structs: only a few paths matter here, and Ignition itself
//! remains the authority on everything else in the config.

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};

/// What the config's owner is: the file names flags (for messages).
///
/// Identifies the ROOT filesystem and partition of the image, so that a
/// config reformatting it can be recognised by any of the names Ignition
/// accepts for it.
#[derive(Debug, Clone, Copy)]
pub struct Root<'a> {
    /// The ROOT filesystem's label ("ROOT" on Flatcar).
    pub fs_label: &'a str,
    /// The ROOT partition's GPT label ("ROOT" on Flatcar).
    pub part_label: &'a str,
    /// The ROOT filesystem's UUID, when known.
    pub fs_uuid: Option<&'a str>,
    /// The ROOT partition's GPT unique GUID, when known.
    pub part_uuid: Option<&'a str>,
}

impl<'a> Root<'a> {
    /// Flatcar's ROOT: labelled ROOT (partition and filesystem), with its
    /// partition's GUID when the disk has been read.
    pub fn flatcar(part_uuid: Option<&'a str>) -> Root<'a> {
        Root {
            fs_label: crate::disk::layout::ROOT_LABEL,
            part_label: crate::disk::layout::ROOT_LABEL,
            fs_uuid: None,
            part_uuid,
        }
    }
}

/// A config that passed [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// `ignition.version` as written in the config.
    pub version: String,
    /// URLs of remote sources (http, https, tftp, s3, gs, arn, ...; not data:
    /// URLs and not empty) the config would fetch at first boot, each with
    /// where it is, e.g.
    /// "storage.files[/opt/bin/kubectl].contents.source: https://...".
    pub remote: Vec<String>,
}

/// The spec 3 versions Flatcar's Ignition 2.24 reads as stable.
const SPEC3: &[&str] = &["3.0.0", "3.1.0", "3.2.0", "3.3.0", "3.4.0", "3.5.0"];
/// The spec 2 versions Flatcar's Ignition translates to spec 3 at boot.
const SPEC2: &[&str] = &["2.0.0", "2.1.0", "2.2.0", "2.3.0", "2.4.0"];

/// Checks an Ignition config (`bytes`, read from the file `what` names,
/// e.g. `--ignition ./config.ign`) and returns its version and the remote
/// sources it would fetch. Every error starts with `what`.
pub fn check(bytes: &[u8], what: &str, root: &Root) -> Result<Checked> {
    check_inner(bytes, root).map_err(|e| anyhow!("{what}: {e:#}"))
}

/// Which spec family a config is in; the paths checked differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    V2,
    V3,
}

fn check_inner(bytes: &[u8], root: &Root) -> Result<Checked> {
    const BUTANE: &str = "this is a Butane config (it has `variant:`), not an Ignition config; \
                          Flatcar's Ignition reads only JSON. Translate it first: \
                          butane --strict --pretty < FILE > FILE.ign, then pass FILE.ign";
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            if looks_like_butane(bytes) {
                bail!("{BUTANE}");
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                bail!("the file is empty; an Ignition config is a JSON object");
            }
            bail!("not valid JSON: {e}");
        }
    };
    let Value::Object(config) = &value else {
        bail!(
            "an Ignition config is a JSON object, but this is {}",
            kind(&value)
        );
    };
    // YAML is a superset of JSON, so a Butane config can be written as JSON.
    if config.contains_key("variant") && !config.contains_key("ignition") {
        bail!("{BUTANE}");
    }
    let (version, spec) = version(config)?;
    check_no_root_wipe(config, spec, root)?;
    let remote = remote_sources(config, spec)?;
    Ok(Checked { version, remote })
}

/// Whether unparseable input is YAML with a top-level `variant:` key, the
/// mark of a Butane config, which users often pass by mistake because
/// Flatcar's docs write configs in Butane.
fn looks_like_butane(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    text.lines().any(|line| {
        line.strip_prefix("variant:")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    })
}

/// A JSON value's kind, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads and checks `ignition.version`.
fn version(config: &Map<String, Value>) -> Result<(String, Spec)> {
    let accepted = || format!("{} (or 2.x: {})", SPEC3.join(", "), SPEC2.join(", "));
    if config.contains_key("ignitionVersion") {
        bail!(
            "this is an Ignition spec 1 config (`ignitionVersion`), which Flatcar's Ignition does \
             not read; write it in spec 3 (`\"ignition\": {{\"version\": \"3.4.0\"}}`, e.g. from a \
             Butane config)"
        );
    }
    let Some(ignition) = opt_obj(config, "ignition", "ignition")? else {
        bail!(
            "`ignition.version` is missing; every Ignition config needs it, e.g. \
             {{\"ignition\": {{\"version\": \"3.4.0\"}}}} (accepted: {})",
            accepted()
        );
    };
    let Some(version) = opt_str(ignition, "version", "ignition.version")? else {
        bail!(
            "`ignition.version` is missing; accepted versions are {}",
            accepted()
        );
    };
    if SPEC3.contains(&version) {
        return Ok((version.to_owned(), Spec::V3));
    }
    if SPEC2.contains(&version) {
        return Ok((version.to_owned(), Spec::V2));
    }
    if version.ends_with("-experimental") {
        bail!(
            "`ignition.version` is {version:?}, an experimental spec: experimental specs are not \
             stable and differ between Ignition releases, so the one on the node may read it \
             differently or not at all; use a stable version: {}",
            accepted()
        );
    }
    bail!(
        "`ignition.version` {version:?} is not a spec version Flatcar's Ignition reads; \
         accepted: {}",
        accepted()
    );
}

/// Refuses configs that would reformat the ROOT filesystem or delete the
/// ROOT partition at first boot: that erases everything baked into ROOT
/// (the image stores), silently undoing this tool's work.
fn check_no_root_wipe(config: &Map<String, Value>, spec: Spec, root: &Root) -> Result<()> {
    let Some(storage) = opt_obj(config, "storage", "storage")? else {
        return Ok(());
    };
    let consequence = "it would erase everything baked into ROOT (the image stores) at first \
                       boot; remove that entry, or bake nothing into ROOT";
    for (i, fs) in opt_arr(storage, "filesystems", "storage.filesystems")?
        .iter()
        .enumerate()
    {
        let path = format!("storage.filesystems[{i}]");
        let fs = as_obj(fs, &path)?;
        let (fs, path) = match spec {
            Spec::V3 => (fs, path),
            Spec::V2 => {
                let path = format!("{path}.mount");
                match opt_obj(fs, "mount", &path)? {
                    Some(m) => (m, path),
                    None => continue,
                }
            }
        };
        let mut wipe =
            opt_bool(fs, "wipeFilesystem", &format!("{path}.wipeFilesystem"))?.unwrap_or(false);
        if spec == Spec::V2 {
            // Spec 2.0's form of wipeFilesystem: `create` with `force`.
            if let Some(create) = opt_obj(fs, "create", &format!("{path}.create"))? {
                wipe |=
                    opt_bool(create, "force", &format!("{path}.create.force"))?.unwrap_or(false);
            }
        }
        if !wipe {
            continue;
        }
        if let Some(device) = opt_str(fs, "device", &format!("{path}.device"))? {
            if names_root(device, root) {
                bail!(
                    "`{path}` reformats ROOT (device {device:?} with wipeFilesystem): {consequence}"
                );
            }
        }
        if let Some(label) = opt_str(fs, "label", &format!("{path}.label"))? {
            if label == root.fs_label {
                bail!(
                    "`{path}` creates a new filesystem labelled {label:?} with wipeFilesystem, \
                     which is how Flatcar reformats ROOT: {consequence}"
                );
            }
        }
    }
    if spec == Spec::V3 {
        for (d, disk) in opt_arr(storage, "disks", "storage.disks")?
            .iter()
            .enumerate()
        {
            let dpath = format!("storage.disks[{d}]");
            let disk = as_obj(disk, &dpath)?;
            let parts = opt_arr(disk, "partitions", &format!("{dpath}.partitions"))?;
            for (p, part) in parts.iter().enumerate() {
                let path = format!("{dpath}.partitions[{p}]");
                let part = as_obj(part, &path)?;
                let label = opt_str(part, "label", &format!("{path}.label"))?;
                if label != Some(root.part_label) {
                    continue;
                }
                let wipe = opt_bool(
                    part,
                    "wipePartitionEntry",
                    &format!("{path}.wipePartitionEntry"),
                )?
                .unwrap_or(false);
                let gone =
                    opt_bool(part, "shouldExist", &format!("{path}.shouldExist"))? == Some(false);
                if wipe || gone {
                    let how = if gone { "deletes" } else { "may recreate" };
                    bail!(
                        "`{path}` {how} the partition labelled {:?} (ROOT): {consequence}",
                        root.part_label
                    );
                }
            }
        }
    }
    Ok(())
}

/// Whether an Ignition `device` path names the ROOT filesystem or partition
/// through one of udev's stable links. UUIDs compare case-insensitively
/// because udev writes them lower-case while users copy them from tools
/// that print upper-case.
fn names_root(device: &str, root: &Root) -> bool {
    let device = device.trim_end_matches('/');
    if let Some(label) = device.strip_prefix("/dev/disk/by-label/") {
        return label == root.fs_label;
    }
    if let Some(label) = device.strip_prefix("/dev/disk/by-partlabel/") {
        return label == root.part_label;
    }
    if let Some(uuid) = device.strip_prefix("/dev/disk/by-uuid/") {
        return root.fs_uuid.is_some_and(|u| u.eq_ignore_ascii_case(uuid));
    }
    if let Some(uuid) = device.strip_prefix("/dev/disk/by-partuuid/") {
        return root.part_uuid.is_some_and(|u| u.eq_ignore_ascii_case(uuid));
    }
    false
}

/// The remote sources the config would fetch at first boot, each as
/// "PATH: URL".
fn remote_sources(config: &Map<String, Value>, spec: Spec) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Some(ignition) = opt_obj(config, "ignition", "ignition")? {
        if let Some(cfg) = opt_obj(ignition, "config", "ignition.config")? {
            let list = match spec {
                Spec::V3 => "merge",
                Spec::V2 => "append",
            };
            let base = format!("ignition.config.{list}");
            for (i, item) in opt_arr(cfg, list, &base)?.iter().enumerate() {
                source_of(item, &format!("{base}[{i}]"), &mut out)?;
            }
            if let Some(replace) = cfg.get("replace").filter(|v| !v.is_null()) {
                source_of(replace, "ignition.config.replace", &mut out)?;
            }
        }
        if let Some(security) = opt_obj(ignition, "security", "ignition.security")? {
            if let Some(tls) = opt_obj(security, "tls", "ignition.security.tls")? {
                let base = "ignition.security.tls.certificateAuthorities";
                for (i, item) in opt_arr(tls, "certificateAuthorities", base)?
                    .iter()
                    .enumerate()
                {
                    source_of(item, &format!("{base}[{i}]"), &mut out)?;
                }
            }
        }
    }
    if let Some(storage) = opt_obj(config, "storage", "storage")? {
        for (i, file) in opt_arr(storage, "files", "storage.files")?
            .iter()
            .enumerate()
        {
            let index_path = format!("storage.files[{i}]");
            let file = as_obj(file, &index_path)?;
            // Name the file by its path when it has one: "files[7]" means
            // nothing to someone reading the warning.
            let path = match opt_str(file, "path", &format!("{index_path}.path"))? {
                Some(p) if !p.is_empty() => format!("storage.files[{p}]"),
                _ => index_path,
            };
            if let Some(contents) = file.get("contents").filter(|v| !v.is_null()) {
                source_of(contents, &format!("{path}.contents"), &mut out)?;
            }
            // Spec 2.x's `append` is a boolean, not a list of sources.
            if spec == Spec::V3 {
                let base = format!("{path}.append");
                for (j, item) in opt_arr(file, "append", &base)?.iter().enumerate() {
                    source_of(item, &format!("{base}[{j}]"), &mut out)?;
                }
            }
        }
    }
    Ok(out)
}

/// Adds `resource.source` to `out` when it is a remote URL. A non-empty
/// source without a URL scheme is an error: Ignition refuses it at first
/// boot, so it is better found now.
fn source_of(resource: &Value, path: &str, out: &mut Vec<String>) -> Result<()> {
    let resource = as_obj(resource, path)?;
    let spath = format!("{path}.source");
    let Some(source) = opt_str(resource, "source", &spath)? else {
        return Ok(());
    };
    if source.is_empty() {
        return Ok(());
    }
    match scheme(source) {
        Some(s) if s.eq_ignore_ascii_case("data") => {}
        Some(_) => out.push(format!("{spath}: {source}")),
        None => bail!(
            "`{spath}` is {source:?}, which is not a URL; Ignition needs a URL such as \
             data:,TEXT or https://HOST/PATH"
        ),
    }
    Ok(())
}

/// The scheme of a URL (RFC 3986: a letter, then letters, digits, `+`, `-`
/// or `.`, then `:`), if it has one.
fn scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

// Typed access to optional members. Ignition's Go decoder treats `null` as
// absent, so these do too; any other wrong type is an error naming the path.

fn as_obj<'v>(v: &'v Value, path: &str) -> Result<&'v Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| anyhow!("`{path}` must be an object, but is {}", kind(v)))
}

fn member<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn opt_obj<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'v Map<String, Value>>> {
    member(obj, key).map(|v| as_obj(v, path)).transpose()
}

fn opt_arr<'v>(obj: &'v Map<String, Value>, key: &str, path: &str) -> Result<&'v [Value]> {
    match member(obj, key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => bail!("`{path}` must be a list, but is {}", kind(v)),
    }
}

fn opt_str<'v>(obj: &'v Map<String, Value>, key: &str, path: &str) -> Result<Option<&'v str>> {
    match member(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => bail!("`{path}` must be a string, but is {}", kind(v)),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<bool>> {
    match member(obj, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => bail!("`{path}` must be true or false, but is {}", kind(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHAT: &str = "--ignition ./config.ign";

    fn root() -> Root<'static> {
        Root {
            fs_label: "ROOT",
            part_label: "ROOT",
            fs_uuid: Some("aabbccdd-0000-1111-2222-333344445555"),
            part_uuid: Some("B921B045-1DF0-41C3-AF44-4C6F280D3FAE"),
        }
    }

    fn ok(json: &str) -> Checked {
        check(json.as_bytes(), WHAT, &root()).unwrap()
    }

    fn err(input: &str) -> String {
        let e = check(input.as_bytes(), WHAT, &root())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(WHAT), "error does not start with what: {e}");
        e
    }

    #[test]
    fn minimal_configs_pass() {
        for v in SPEC3.iter().chain(SPEC2) {
            let c = ok(&format!(r#"{{"ignition": {{"version": "{v}"}}}}"#));
            assert_eq!(c.version, *v);
            assert!(c.remote.is_empty());
        }
    }

    #[test]
    fn butane_is_recognised() {
        let e = err("variant: flatcar\nversion: 1.1.0\nstorage:\n  files: []\n");
        assert!(e.contains("Butane"), "{e}");
        assert!(
            e.contains("butane --strict --pretty < FILE > FILE.ign"),
            "{e}"
        );
        assert!(e.contains("only JSON"), "{e}");
        let e = err("# c\nversion: 1.5.0\nvariant: fcos\n");
        assert!(e.contains("Butane"), "{e}");
        let e = err(r#"{"variant": "flatcar", "version": "1.1.0"}"#);
        assert!(e.contains("Butane"), "{e}");
    }

    #[test]
    fn invalid_json_gives_position() {
        let e = err("{\n  \"ignition\": {\"version\": \"3.4.0\"},\n  oops\n}");
        assert!(e.contains("not valid JSON"), "{e}");
        assert!(e.contains("line 3 column 3"), "{e}");
        assert!(!e.contains("Butane"), "{e}");
        assert!(err("").contains("empty"));
        assert!(err("   \n").contains("empty"));
        assert!(err("[1]").contains("JSON object, but this is an array"));
    }

    #[test]
    fn versions_refused() {
        let e = err(r#"{"ignition": {"version": "3.6.0-experimental"}}"#);
        assert!(e.contains("experimental"), "{e}");
        assert!(e.contains("differ between Ignition releases"), "{e}");
        let e = err(r#"{"ignition": {"version": "3.6.0"}}"#);
        assert!(
            e.contains("accepted: 3.0.0, 3.1.0, 3.2.0, 3.3.0, 3.4.0, 3.5.0"),
            "{e}"
        );
        assert!(e.contains("2.4.0"), "{e}");
        for v in ["3.4", "2.5.0", "2.2.1", "1.0.0", ""] {
            let e = err(&format!(r#"{{"ignition": {{"version": "{v}"}}}}"#));
            assert!(e.contains("not a spec version"), "{v}: {e}");
        }
        let e = err(r#"{"ignitionVersion": 1}"#);
        assert!(e.contains("spec 1"), "{e}");
        assert!(err(r#"{}"#).contains("`ignition.version` is missing"));
        assert!(err(r#"{"ignition": {}}"#).contains("`ignition.version` is missing"));
        assert!(err(r#"{"ignition": {"version": 3}}"#)
            .contains("`ignition.version` must be a string, but is a number"));
        assert!(err(r#"{"ignition": "3.4.0"}"#).contains("`ignition` must be an object"));
    }

    #[test]
    fn root_wipe_refused_v3() {
        let devices = [
            "/dev/disk/by-label/ROOT",
            "/dev/disk/by-partlabel/ROOT",
            "/dev/disk/by-uuid/AABBCCDD-0000-1111-2222-333344445555",
            "/dev/disk/by-partuuid/b921b045-1df0-41c3-af44-4c6f280d3fae",
        ];
        for dev in devices {
            let e = err(&format!(
                r#"{{"ignition": {{"version": "3.4.0"}}, "storage": {{"filesystems": [
                    {{"device": "/dev/vdb", "format": "ext4", "wipeFilesystem": true}},
                    {{"device": "{dev}", "format": "ext4", "wipeFilesystem": true, "label": "data"}}
                ]}}}}"#
            ));
            assert!(e.contains("storage.filesystems[1]"), "{dev}: {e}");
            assert!(e.contains("erase everything baked into ROOT"), "{dev}: {e}");
        }
        // Flatcar's documented way: a new device labelled ROOT.
        let e = err(
            r#"{"ignition": {"version": "3.4.0"}, "storage": {"filesystems": [
            {"device": "/dev/md/root", "format": "ext4", "wipeFilesystem": true, "label": "ROOT"}]}}"#,
        );
        assert!(e.contains("labelled \"ROOT\""), "{e}");
        // Without wipeFilesystem, or another device, it is fine.
        ok(
            r#"{"ignition": {"version": "3.4.0"}, "storage": {"filesystems": [
            {"device": "/dev/disk/by-label/ROOT", "format": "ext4", "path": "/"},
            {"device": "/dev/disk/by-label/DATA", "format": "ext4", "wipeFilesystem": true, "label": "DATA"},
            {"device": "/dev/disk/by-uuid/00000000-0000-0000-0000-000000000000", "wipeFilesystem": true}]}}"#,
        );
        let e = err(
            r#"{"ignition": {"version": "3.4.0"}, "storage": {"filesystems": [
            {"device": "/dev/vdb", "wipeFilesystem": "yes"}]}}"#,
        );
        assert!(
            e.contains("`storage.filesystems[0].wipeFilesystem` must be true or false"),
            "{e}"
        );
    }

    #[test]
    fn root_uuid_unknown_is_not_matched() {
        let root = Root {
            fs_uuid: None,
            part_uuid: None,
            ..root()
        };
        let json = r#"{"ignition": {"version": "3.4.0"}, "storage": {"filesystems": [
            {"device": "/dev/disk/by-uuid/aabbccdd-0000-1111-2222-333344445555", "wipeFilesystem": true}]}}"#;
        check(json.as_bytes(), WHAT, &root).unwrap();
    }

    #[test]
    fn root_partition_removal_refused_v3() {
        for field in [r#""wipePartitionEntry": true"#, r#""shouldExist": false"#] {
            let e = err(&format!(
                r#"{{"ignition": {{"version": "3.4.0"}}, "storage": {{"disks": [
                    {{"device": "/dev/vda", "partitions": [{{"label": "ROOT", {field}}}]}}]}}}}"#
            ));
            assert!(e.contains("storage.disks[0].partitions[0]"), "{e}");
            assert!(e.contains("erase everything baked into ROOT"), "{e}");
        }
        ok(r#"{"ignition": {"version": "3.4.0"}, "storage": {"disks": [
            {"device": "/dev/vda", "partitions": [{"label": "ROOT", "resize": true},
             {"label": "DATA", "wipePartitionEntry": true}]}]}}"#);
    }

    #[test]
    fn root_wipe_refused_v2() {
        let e = err(
            r#"{"ignition": {"version": "2.3.0"}, "storage": {"filesystems": [
            {"name": "root", "mount": {"device": "/dev/disk/by-label/ROOT", "format": "ext4",
             "wipeFilesystem": true}}]}}"#,
        );
        assert!(e.contains("storage.filesystems[0].mount"), "{e}");
        let e = err(
            r#"{"ignition": {"version": "2.0.0"}, "storage": {"filesystems": [
            {"name": "r", "mount": {"device": "/dev/sdb", "format": "ext4", "label": "ROOT",
             "create": {"force": true}}}]}}"#,
        );
        assert!(e.contains("erase everything"), "{e}");
        // In 2.x the fields live under `mount`; a top-level path is fine.
        ok(
            r#"{"ignition": {"version": "2.2.0"}, "storage": {"filesystems": [
            {"name": "oem", "path": "/usr/share/oem"}]}}"#,
        );
    }

    #[test]
    fn remote_sources_v3() {
        let c = ok(r#"{"ignition": {"version": "3.4.0",
              "config": {"merge": [{"source": "https://example.com/a.ign"}, {"source": "data:,{}"}],
                         "replace": {"source": null}},
              "security": {"tls": {"certificateAuthorities": [{"source": "s3://bucket/ca.pem"}]}}},
            "storage": {"files": [
              {"path": "/opt/bin/kubectl", "contents": {"source": "https://dl.example/kubectl"},
               "append": [{"source": "tftp://10.0.0.1/x"}, {"source": "DATA:,y"}]},
              {"path": "/etc/hostname", "contents": {"source": "data:,node1"}},
              {"path": "/etc/empty", "contents": {"source": ""}},
              {"path": "/etc/none"}]}}"#);
        assert_eq!(c.version, "3.4.0");
        assert_eq!(
            c.remote,
            [
                "ignition.config.merge[0].source: https://example.com/a.ign",
                "ignition.security.tls.certificateAuthorities[0].source: s3://bucket/ca.pem",
                "storage.files[/opt/bin/kubectl].contents.source: https://dl.example/kubectl",
                "storage.files[/opt/bin/kubectl].append[0].source: tftp://10.0.0.1/x",
            ]
        );
    }

    #[test]
    fn remote_sources_v2() {
        let c = ok(r#"{"ignition": {"version": "2.2.0",
              "config": {"append": [{"source": "gs://b/o"}], "replace": {"source": "http://x/y"}}},
            "storage": {"files": [{"filesystem": "root", "path": "/etc/a", "append": true,
              "contents": {"source": "arn:aws:s3:::bucket/key"}}]}}"#);
        assert_eq!(
            c.remote,
            [
                "ignition.config.append[0].source: gs://b/o",
                "ignition.config.replace.source: http://x/y",
                "storage.files[/etc/a].contents.source: arn:aws:s3:::bucket/key",
            ]
        );
    }

    #[test]
    fn wrong_types_at_source_paths() {
        let e = err(r#"{"ignition": {"version": "3.4.0"}, "storage": {"files": [
            {"path": "/a", "contents": {"source": 5}}]}}"#);
        assert!(
            e.contains("`storage.files[/a].contents.source` must be a string"),
            "{e}"
        );
        let e = err(r#"{"ignition": {"version": "3.4.0"}, "storage": {"files": {}}}"#);
        assert!(e.contains("`storage.files` must be a list"), "{e}");
        let e =
            err(r#"{"ignition": {"version": "3.4.0"}, "storage": {"files": [{"contents": []}]}}"#);
        assert!(
            e.contains("`storage.files[0].contents` must be an object"),
            "{e}"
        );
        let e = err(
            r#"{"ignition": {"version": "3.4.0", "config": {"merge": [{"source": "a.ign"}]}}}"#,
        );
        assert!(e.contains("not a URL"), "{e}");
    }

    #[test]
    fn scheme_parsing() {
        assert_eq!(scheme("https://x"), Some("https"));
        assert_eq!(scheme("data:,x"), Some("data"));
        assert_eq!(scheme("s3://b"), Some("s3"));
        assert_eq!(scheme("/abs/path"), None);
        assert_eq!(scheme("1x:y"), None);
        assert_eq!(scheme(":x"), None);
    }
}
