//! What `systemctl enable UNIT` links, computed without systemd.
//!
//! Enabling a unit in an image that has not booted means creating the
//! symlinks `systemctl enable --root=...` would create. This module reads
//! the unit file's `[Install]` section with systemd's syntax rules and turns
//! it into (link, target) pairs, following systemd's install logic
//! (`src/shared/install.c`) for templates, instances, aliases and the
//! install-time specifiers, so that the node boots with the same links as
//! if the unit had been enabled on it.

use anyhow::{anyhow, bail, Context, Result};

/// The systemd configuration directory the links go into, as for
/// `systemctl enable` (not `--runtime`).
const CONFIG_DIR: &str = "/etc/systemd/system";

/// Unit types that can be enabled (have unit files with `[Install]`).
const ENABLEABLE: &[&str] = &[
    "service",
    "socket",
    "timer",
    "path",
    "target",
    "mount",
    "automount",
    "swap",
    "slice",
];

/// Every unit type systemd knows; any of them can be the unit whose
/// `.wants`/`.requires`/`.upholds` directory a link goes in.
const ALL_TYPES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "path",
    "target",
    "mount",
    "automount",
    "swap",
    "slice",
    "scope",
    "device",
];

/// Unit types that may be templates (systemd's `unit_type_may_template`).
const MAY_TEMPLATE: &[&str] = &["service", "socket", "timer", "path", "target"];

/// Unit types that may have aliases (systemd's `unit_type_may_alias`;
/// `device` is there too but cannot be enabled).
const MAY_ALIAS: &[&str] = &["service", "socket", "timer", "path", "target"];

/// The `[Install]` section of a unit file, as `systemctl enable` reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Install {
    /// `WantedBy=`: units whose `.wants` directory gets a link.
    pub wanted_by: Vec<String>,
    /// `RequiredBy=`: units whose `.requires` directory gets a link.
    pub required_by: Vec<String>,
    /// `UpheldBy=`: units whose `.upholds` directory gets a link.
    pub upheld_by: Vec<String>,
    /// `Alias=`: extra names, each a link in the configuration directory.
    pub alias: Vec<String>,
    /// `Also=`: units `systemctl enable` enables together with this one.
    /// Not followed by [`enable_links`], which sees only this unit's file.
    pub also: Vec<String>,
    /// `DefaultInstance=`: the instance a template is enabled as.
    pub default_instance: Option<String>,
}

/// Reads the [Install] section of a unit file (systemd.syntax: `#`/`;`
/// comments, `\` line continuation, values split on whitespace, an empty
/// assignment resets the list, section names case-sensitive, keys
/// case-sensitive). Err when not UTF-8, or a line outside any section;
/// Ok(None) when there is no [Install] section or it names nothing to link
/// (no WantedBy/RequiredBy/UpheldBy/Alias).
///
/// Unknown keys in `[Install]` are ignored, as systemd does (it warns).
/// Specifiers are kept as written: systemd expands them when linking, with
/// the name the unit is enabled under, so [`enable_links`] does.
pub fn parse_install(text: &[u8]) -> Result<Option<Install>> {
    let text = std::str::from_utf8(text).map_err(|e| {
        anyhow!("the unit file is not UTF-8 ({e}); systemd would not read it either")
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser::default();
    // A logical line being continued: (its first line number, its text).
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let number = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        // Comment lines are skipped even inside a continuation: systemd
        // joins the continued line with whatever follows the comments.
        if raw.trim_start().starts_with(['#', ';']) {
            continue;
        }
        let (start, mut line) = match pending.take() {
            Some((start, mut acc)) => {
                acc.push_str(raw);
                (start, acc)
            }
            None => (number, raw.to_owned()),
        };
        let trailing = line.len() - line.trim_end_matches('\\').len();
        if trailing % 2 == 1 {
            line.pop();
            line.push(' ');
            pending = Some((start, line));
            continue;
        }
        parser.line(start, &line)?;
    }
    if let Some((start, line)) = pending {
        parser.line(start, &line)?;
    }
    let install = parser.install;
    let links = !(install.wanted_by.is_empty()
        && install.required_by.is_empty()
        && install.upheld_by.is_empty()
        && install.alias.is_empty());
    Ok((parser.seen_install && links).then_some(install))
}

#[derive(Default)]
struct Parser {
    section: Option<String>,
    seen_install: bool,
    install: Install,
}

impl Parser {
    /// Handles one logical line (continuations joined), `number` being
    /// where it started, for messages.
    fn line(&mut self, number: usize, line: &str) -> Result<()> {
        let line = line.trim_matches([' ', '\t', '\n', '\r']);
        if line.is_empty() {
            return Ok(());
        }
        if let Some(header) = line.strip_prefix('[') {
            let name = header.strip_suffix(']').ok_or_else(|| {
                anyhow!("line {number}: invalid section header {line:?} (expected [Name])")
            })?;
            self.seen_install |= name == "Install";
            self.section = Some(name.to_owned());
            return Ok(());
        }
        let Some(section) = &self.section else {
            bail!(
                "line {number}: {line:?} is outside any section; unit files start with a \
                 section header such as [Unit]"
            );
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| anyhow!("line {number}: {line:?} is not KEY=VALUE"))?;
        if section != "Install" {
            return Ok(());
        }
        let (key, value) = (key.trim_end(), value.trim_start());
        let i = &mut self.install;
        let list = match key {
            "WantedBy" => &mut i.wanted_by,
            "RequiredBy" => &mut i.required_by,
            "UpheldBy" => &mut i.upheld_by,
            "Alias" => &mut i.alias,
            "Also" => &mut i.also,
            "DefaultInstance" => {
                i.default_instance = (!value.is_empty()).then(|| value.to_owned());
                return Ok(());
            }
            _ => return Ok(()),
        };
        if value.is_empty() {
            list.clear();
        } else {
            list.extend(words(value).with_context(|| format!("line {number}: {key}="))?);
        }
        Ok(())
    }
}

/// Splits a list value into words the way systemd's `config_parse_strv`
/// does: on whitespace, with `"`/`'` quoting removed and backslash escapes
/// kept as written.
fn words(value: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                word.push('\\');
                if let Some(n) = chars.next() {
                    word.push(n);
                }
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        bail!("unterminated quote in {value:?}");
    }
    if in_word {
        out.push(word);
    }
    Ok(out)
}

/// A unit name taken apart: `prefix[@instance].suffix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Name<'a> {
    prefix: &'a str,
    /// None for a plain unit, `Some("")` for a template.
    instance: Option<&'a str>,
    suffix: &'a str,
}

impl Name<'_> {
    fn is_template(&self) -> bool {
        self.instance == Some("")
    }
}

/// Parses a unit name as systemd's `unit_name_is_valid` does, accepting the
/// given suffixes; the reason when it is not valid.
fn parse_name<'a>(name: &'a str, types: &[&str]) -> Result<Name<'a>, String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 255 {
        return Err(format!(
            "is {} bytes long; unit names have at most 255",
            name.len()
        ));
    }
    if name.contains('/') {
        return Err("contains `/`; give the unit's file name, not a path".into());
    }
    let Some((stem, suffix)) = name.rsplit_once('.').filter(|(stem, _)| !stem.is_empty()) else {
        return Err(format!(
            "has no unit type suffix (one of .{})",
            types.join(" .")
        ));
    };
    if !types.contains(&suffix) {
        let why = match suffix {
            "scope" | "device" => {
                format!(".{suffix} units are created at runtime and cannot be enabled")
            }
            _ => format!(
                "has an unknown suffix .{suffix} (expected one of .{})",
                types.join(" .")
            ),
        };
        return Err(why);
    }
    if let Some(c) = stem
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        return Err(format!(
            "contains {c:?}; unit names use only ASCII letters, digits and `:-_.\\@` \
             (use systemd-escape for other characters)"
        ));
    }
    let (prefix, instance) = match stem.split_once('@') {
        Some(("", _)) => return Err("starts with `@`".into()),
        Some((prefix, instance)) => (prefix, Some(instance)),
        None => (stem, None),
    };
    Ok(Name {
        prefix,
        instance,
        suffix,
    })
}

/// Checks a unit file name: a valid systemd unit name with a known suffix
/// (.service .socket .timer .path .target .mount .automount .swap .slice;
/// not .scope or .device, which have no unit files to enable), no '/', at
/// most 255 bytes, and a template or instance only for the types systemd
/// allows them for.
pub fn check_name(unit: &str) -> Result<()> {
    let name = parse_name(unit, ENABLEABLE).map_err(|why| anyhow!("unit name {unit:?} {why}"))?;
    if name.instance.is_some() && !MAY_TEMPLATE.contains(&name.suffix) {
        bail!(
            "unit name {unit:?}: .{} units cannot be templates or instances (no `@`)",
            name.suffix
        );
    }
    Ok(())
}

/// The symlinks `systemctl enable` makes for `unit` (its file name, e.g.
/// "kubelet.service" or "getty@.service" / "getty@tty1.service") whose file
/// lives at `unit_path` inside the root (e.g.
/// "/etc/systemd/system/kubelet.service"): (link path, target) pairs, e.g.
/// ("/etc/systemd/system/multi-user.target.wants/kubelet.service",
/// "/etc/systemd/system/kubelet.service"); .requires for RequiredBy,
/// .upholds for UpheldBy; Alias= links at /etc/systemd/system/ALIAS. A
/// template unit "x@.service" is enabled as its DefaultInstance
/// ("x@tty1.service" in the .wants dir, pointing at the template's file); a
/// template without DefaultInstance is an error saying to enable an instance
/// (x@NAME.service). An instance name "x@a.service" given directly links
/// x@a.service -> the template file x@.service.
///
/// Links are in systemd's order (aliases, then .wants, .requires,
/// .upholds), without duplicates. Specifiers %n %N %p %i %% are expanded as
/// systemd does at install time; `Also=` is not followed (the caller has
/// the other units' files). A link for the unit file itself (when it lives
/// outside systemd's search path) is the caller's business too.
pub fn enable_links(
    unit: &str,
    unit_path: &str,
    install: &Install,
) -> Result<Vec<(String, String)>> {
    check_name(unit)?;
    if !unit_path.starts_with('/') {
        bail!("the unit file path {unit_path:?} for {unit} must be absolute inside the image");
    }
    let name = parse_name(unit, ENABLEABLE).map_err(|why| anyhow!("unit name {unit:?} {why}"))?;
    let no_instance = || {
        anyhow!(
            "{unit} is a template unit without DefaultInstance=, so it cannot be enabled as \
             such; enable an instance instead ({}@NAME.{})",
            name.prefix,
            name.suffix
        )
    };

    // The name the unit is enabled under: a template with a default
    // instance is enabled as that instance.
    let mut default_instance = None;
    if name.is_template() {
        if let Some(di) = &install.default_instance {
            let di = expand(di, unit, name, None).context("DefaultInstance=")?;
            if di.is_empty()
                || !di
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
            {
                bail!(
                    "{unit}: DefaultInstance={di:?} is not a valid instance name (ASCII letters, \
                     digits and `:-_.\\@`; use systemd-escape)"
                );
            }
            default_instance = Some(di);
        }
    }
    let enabled_as = match &default_instance {
        Some(di) => format!("{}@{di}.{}", name.prefix, name.suffix),
        None => unit.to_owned(),
    };

    let mut links: Vec<(String, String)> = Vec::new();
    let mut add = |link: String| {
        if !links.iter().any(|(l, _)| *l == link) {
            links.push((link, unit_path.to_owned()));
        }
    };

    for alias in &install.alias {
        let dst = expand(alias, unit, name, default_instance.as_deref())
            .with_context(|| format!("{unit}: Alias={alias}"))?;
        if let Some(dst) = alias_name(unit, name, &dst)? {
            add(format!("{CONFIG_DIR}/{dst}"));
        }
    }

    let lists = [
        ("WantedBy", &install.wanted_by, ".wants"),
        ("RequiredBy", &install.required_by, ".requires"),
        ("UpheldBy", &install.upheld_by, ".upholds"),
    ];
    for (key, list, dir) in lists {
        for target in list {
            let dst = expand(target, unit, name, default_instance.as_deref())
                .with_context(|| format!("{unit}: {key}={target}"))?;
            let parsed = parse_name(&dst, ALL_TYPES)
                .map_err(|why| anyhow!("{unit}: {key}={target} names {dst:?}, which {why}"))?;
            // A template enabled without an instance can only go into a
            // template's directory (systemd: "foo@.target.wants/x@.service").
            if name.is_template() && default_instance.is_none() && !parsed.is_template() {
                return Err(no_instance());
            }
            add(format!("{CONFIG_DIR}/{dst}{dir}/{enabled_as}"));
        }
    }
    Ok(links)
}

/// The file name an `Alias=` value (specifiers expanded) gives the unit,
/// checked as systemd's `unit_file_verify_alias` does; None for an alias to
/// the unit itself, which systemd skips.
fn alias_name(unit: &str, name: Name, alias: &str) -> Result<Option<String>> {
    if !MAY_ALIAS.contains(&name.suffix) {
        bail!(
            "{unit}: Alias= is not allowed for .{} units (systemd ignores it); remove the \
             Alias= line",
            name.suffix
        );
    }
    if alias.contains('/') {
        bail!(
            "{unit}: Alias={alias} is a path; an alias is a unit name (for .wants links use \
             WantedBy=)"
        );
    }
    if alias == unit {
        return Ok(None);
    }
    let parsed =
        parse_name(alias, ALL_TYPES).map_err(|why| anyhow!("{unit}: Alias={alias:?} {why}"))?;
    // An instance enabled with a template alias gets the alias's instance
    // of the same name ("instance propagation").
    let alias = match (name.instance, parsed.instance) {
        (Some(i), Some("")) if !i.is_empty() => {
            format!("{}@{i}.{}", parsed.prefix, parsed.suffix)
        }
        _ => alias.to_owned(),
    };
    let parsed =
        parse_name(&alias, ALL_TYPES).map_err(|why| anyhow!("{unit}: Alias={alias:?} {why}"))?;
    if parsed.suffix != name.suffix {
        bail!(
            "{unit}: Alias={alias} must have the same type as the unit (.{})",
            name.suffix
        );
    }
    if alias == unit {
        return Ok(None);
    }
    let kind = |n: Name| match n.instance {
        None => "a plain unit",
        Some("") => "a template",
        Some(_) => "an instance",
    };
    // A plain unit takes plain aliases; a template takes templates or any
    // instance of another name; an instance takes the same instance.
    let fits = match (name.instance, parsed.instance) {
        (None, None) => true,
        (Some(""), Some(_)) => true,
        (Some(i), Some(j)) => i == j,
        _ => false,
    };
    if !fits {
        bail!(
            "{unit}: Alias={alias} is {} but {unit} is {}; an alias must be the same kind of \
             name (an instance alias of an instance with the same instance)",
            kind(parsed),
            kind(name)
        );
    }
    Ok(Some(alias))
}

/// Expands the specifiers systemd expands in `[Install]` values. `unit` is
/// the unit's file name; a template with a default instance stands for
/// that instance, as in systemd's install-time specifiers.
fn expand(value: &str, unit: &str, name: Name, default_instance: Option<&str>) -> Result<String> {
    let (full, instance) = match (name.is_template(), default_instance) {
        (true, Some(di)) => (format!("{}@{di}.{}", name.prefix, name.suffix), di),
        _ => (unit.to_owned(), name.instance.unwrap_or("")),
    };
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push_str(&full),
            Some('N') => out.push_str(&full[..full.len() - name.suffix.len() - 1]),
            Some('p') => out.push_str(name.prefix),
            Some('i') => out.push_str(instance),
            Some('%') => out.push('%'),
            Some(other) => bail!(
                "specifier %{other} in {value:?} is not supported here (only %n %N %p %i %%); \
                 write the value out"
            ),
            None => bail!("{value:?} ends in a lone `%`; write %% for a literal percent sign"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(text: &str) -> Install {
        parse_install(text.as_bytes()).unwrap().unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn parse_basic_and_syntax() {
        let i = install(
            "\u{feff}# comment\n[Unit]\nDescription=x [Install]\nWantedBy=ignored.target\n\
             [Install]\n; comment\nWantedBy = a.target  b.target\nWantedBy=c.target\n\
             RequiredBy=r.target\r\nUpheldBy=u.target\nAlias=\"x y.service\" z.service\n\
             Also=other.socket\nDefaultInstance= tty1 \nwantedby=lower.target\n",
        );
        assert_eq!(i.wanted_by, ["a.target", "b.target", "c.target"]);
        assert_eq!(i.required_by, ["r.target"]);
        assert_eq!(i.upheld_by, ["u.target"]);
        assert_eq!(i.alias, ["x y.service", "z.service"]);
        assert_eq!(i.also, ["other.socket"]);
        assert_eq!(i.default_instance.as_deref(), Some("tty1"));
    }

    #[test]
    fn parse_reset_and_continuation() {
        let i = install(
            "[Install]\nWantedBy=a.target\nWantedBy=\nWantedBy=b.target \\\n# skipped\n  c.target\n\
             Alias=x.service \\\\\nAlias=y.service\\\n",
        );
        assert_eq!(i.wanted_by, ["b.target", "c.target"]);
        // `\\` at the end is an escaped backslash, not a continuation; a
        // continuation at the end of the file still counts.
        assert_eq!(i.alias, ["x.service", "\\\\", "y.service"]);
    }

    #[test]
    fn parse_nothing_to_link() {
        for text in [
            "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n",
            "[Install]\nAlso=a.service\nDefaultInstance=x\n",
            "[install]\nWantedBy=multi-user.target\n",
            "[Install]\nWantedBy=a.target\nWantedBy=\n",
            "",
        ] {
            assert_eq!(parse_install(text.as_bytes()).unwrap(), None, "{text:?}");
        }
    }

    #[test]
    fn parse_errors() {
        let e = parse_install(b"WantedBy=a.target\n[Install]\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(e.to_string().contains("outside any section"), "{e}");
        let e = parse_install(b"[Install\nWantedBy=a.target\n").unwrap_err();
        assert!(e.to_string().contains("invalid section header"), "{e}");
        let e = parse_install(b"[Install]\nWantedBy a.target\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse_install(b"[Install]\nWantedBy=\"a.target\n").unwrap_err();
        assert!(format!("{e:#}").contains("unterminated quote"), "{e:#}");
        let e = parse_install(b"[Install]\nWantedBy=\xff.target\n").unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn check_name_rules() {
        for ok in [
            "kubelet.service",
            "getty@.service",
            "getty@tty1.service",
            "a\\x2db.mount",
            "x@a@b.c.socket",
            "docker.socket",
            "t.timer",
            "s.slice",
            "sw.swap",
        ] {
            check_name(ok).unwrap();
        }
        let cases = [
            ("", "empty"),
            ("kubelet", "no unit type suffix"),
            (".service", "no unit type suffix"),
            ("a.scope", "cannot be enabled"),
            ("a.device", "cannot be enabled"),
            ("a.conf", "unknown suffix"),
            ("etc/a.service", "contains `/`"),
            ("@a.service", "starts with `@`"),
            ("a b.service", "contains ' '"),
            ("é.service", "contains 'é'"),
            ("m@x.mount", "cannot be templates"),
        ];
        for (name, why) in cases {
            let e = check_name(name).unwrap_err().to_string();
            assert!(e.contains(why), "{name:?}: {e}");
        }
        let long = format!("{}.service", "a".repeat(248));
        assert_eq!(long.len(), 256);
        assert!(check_name(&long)
            .unwrap_err()
            .to_string()
            .contains("at most 255"));
        check_name(&long[1..]).unwrap();
    }

    #[test]
    fn links_plain_unit() {
        let i = install(
            "[Install]\nWantedBy=multi-user.target %N-extra.target\nRequiredBy=r.target\n\
             UpheldBy=u.target\nAlias=kube.service kubelet.service\nWantedBy=multi-user.target\n",
        );
        let p = "/etc/systemd/system/kubelet.service";
        assert_eq!(
            enable_links("kubelet.service", p, &i).unwrap(),
            pairs(&[
                ("/etc/systemd/system/kube.service", p),
                (
                    "/etc/systemd/system/multi-user.target.wants/kubelet.service",
                    p
                ),
                (
                    "/etc/systemd/system/kubelet-extra.target.wants/kubelet.service",
                    p
                ),
                ("/etc/systemd/system/r.target.requires/kubelet.service", p),
                ("/etc/systemd/system/u.target.upholds/kubelet.service", p),
            ])
        );
    }

    #[test]
    fn links_template_with_default_instance() {
        let i = install(
            "[Install]\nWantedBy=getty.target %i.target %p-%N.target\nDefaultInstance=tty1\n\
             Alias=console@.service\n",
        );
        let p = "/usr/lib/systemd/system/getty@.service";
        assert_eq!(
            enable_links("getty@.service", p, &i).unwrap(),
            pairs(&[
                ("/etc/systemd/system/console@.service", p),
                (
                    "/etc/systemd/system/getty.target.wants/getty@tty1.service",
                    p
                ),
                (
                    "/etc/systemd/system/tty1.target.wants/getty@tty1.service",
                    p
                ),
                (
                    "/etc/systemd/system/getty-getty@tty1.target.wants/getty@tty1.service",
                    p
                ),
            ])
        );
    }

    #[test]
    fn links_instance_given_directly() {
        let i = install(
            "[Install]\nWantedBy=multi-user.target\nAlias=tty@.service\nDefaultInstance=tty1\n",
        );
        let p = "/etc/systemd/system/getty@.service";
        assert_eq!(
            enable_links("getty@ttyS0.service", p, &i).unwrap(),
            pairs(&[
                ("/etc/systemd/system/tty@ttyS0.service", p),
                (
                    "/etc/systemd/system/multi-user.target.wants/getty@ttyS0.service",
                    p
                ),
            ])
        );
    }

    #[test]
    fn alias_kinds() {
        let p = "/etc/systemd/system/y@.service";
        let i = install("[Install]\nAlias=b@z.service c@.service y@.service\n");
        // A template (even without DefaultInstance) takes template or
        // instance aliases; an alias to itself is skipped.
        assert_eq!(
            enable_links("y@.service", p, &i).unwrap(),
            pairs(&[
                ("/etc/systemd/system/b@z.service", p),
                ("/etc/systemd/system/c@.service", p),
            ])
        );
        // An instance only takes its own instance (or a template, which
        // gets the instance); `c@.service` becomes `c@q.service`.
        let i = install("[Install]\nAlias=c@.service y@.service\n");
        assert_eq!(
            enable_links("y@q.service", p, &i).unwrap(),
            pairs(&[("/etc/systemd/system/c@q.service", p)])
        );
        for alias in ["b@z.service", "b.service"] {
            let i = install(&format!("[Install]\nAlias={alias}\n"));
            let e = enable_links("y@q.service", p, &i).unwrap_err();
            assert!(e.to_string().contains("same kind of name"), "{alias}: {e}");
        }
    }

    #[test]
    fn links_template_without_default_instance() {
        let i = install("[Install]\nWantedBy=multi-user.target\n");
        let e = enable_links("x@.service", "/etc/systemd/system/x@.service", &i).unwrap_err();
        assert!(
            e.to_string()
                .contains("enable an instance instead (x@NAME.service)"),
            "{e}"
        );
        // Into a template target's directory it works, as in systemd.
        let i = install("[Install]\nWantedBy=foo@.target\n");
        assert_eq!(
            enable_links("x@.service", "/p/x@.service", &i).unwrap(),
            pairs(&[(
                "/etc/systemd/system/foo@.target.wants/x@.service",
                "/p/x@.service"
            )])
        );
    }

    #[test]
    fn links_refusals() {
        let p = "/etc/systemd/system/a.service";
        let cases = [
            ("[Install]\nWantedBy=%H.target\n", "specifier %H"),
            ("[Install]\nWantedBy=a%\n", "lone `%`"),
            ("[Install]\nWantedBy=multi-user\n", "no unit type suffix"),
            ("[Install]\nAlias=b.socket\n", "same type"),
            (
                "[Install]\nAlias=b@.service\n",
                "is a template but a.service is a plain unit",
            ),
            ("[Install]\nAlias=x/b.service\n", "is a path"),
        ];
        for (text, why) in cases {
            let e = enable_links("a.service", p, &install(text)).unwrap_err();
            assert!(format!("{e:#}").contains(why), "{text:?}: {e:#}");
        }
        let i = install("[Install]\nAlias=b.mount\n");
        let e = enable_links("a.mount", "/etc/systemd/system/a.mount", &i).unwrap_err();
        assert!(e.to_string().contains("not allowed for .mount"), "{e}");
        let i = install("[Install]\nWantedBy=m.target\n");
        assert!(enable_links("a.service", "etc/a.service", &i).is_err());
        assert!(enable_links("a.scope", "/a.scope", &i).is_err());
        let i = install("[Install]\nWantedBy=m.target\nDefaultInstance=a/b\n");
        let e = enable_links("x@.service", "/x@.service", &i).unwrap_err();
        assert!(e.to_string().contains("not a valid instance name"), "{e}");
    }

    #[test]
    fn specifier_expansion() {
        let plain = parse_name("a-b.service", ENABLEABLE).unwrap();
        let e = |v| expand(v, "a-b.service", plain, None).unwrap();
        assert_eq!(e("100%%-%p/%N/%n/[%i]"), "100%-a-b/a-b/a-b.service/[]");
        let tmpl = parse_name("x@.socket", ENABLEABLE).unwrap();
        let e = |v, di| expand(v, "x@.socket", tmpl, di).unwrap();
        assert_eq!(e("%p|%i|%n|%N", None), "x||x@.socket|x@");
        assert_eq!(e("%p|%i|%n|%N", Some("d")), "x|d|x@d.socket|x@d");
        let inst = parse_name("x@a.b.timer", ENABLEABLE).unwrap();
        assert_eq!(
            expand("%p|%i|%n|%N", "x@a.b.timer", inst, Some("d")).unwrap(),
            "x|a.b|x@a.b.timer|x@a.b"
        );
    }

    /// Compares with the real `systemctl enable --root=DIR UNIT` when this
    /// machine has it, so the install logic above cannot drift from
    /// systemd's unnoticed.
    #[test]
    fn same_links_as_systemctl() {
        use std::path::{Path, PathBuf};
        use std::process::Command;

        let Ok(version) = Command::new("systemctl").arg("--version").output() else {
            eprintln!("skipped: systemctl is not installed here");
            return;
        };
        if !version.status.success() {
            eprintln!("skipped: `systemctl --version` failed");
            return;
        }
        // `UpheldBy=` in [Install] is understood by systemctl from systemd
        // 254 on (Flatcar ships newer); older ones ignore it with a warning.
        let upheld = String::from_utf8_lossy(&version.stdout)
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|v| v >= 254);
        if !upheld {
            eprintln!("note: this systemctl predates UpheldBy= in [Install]; not compared");
        }
        let kubelet = format!(
            "[Unit]\nDescription=k\n[Service]\nExecStart=/bin/true\n[Install]\n\
             WantedBy=multi-user.target %N-extra.target\nRequiredBy=r.target\n\
             Alias=kube.service\n{}",
            if upheld { "UpheldBy=u.target\n" } else { "" }
        );
        let cases: &[(&str, &str, &str)] = &[
            ("kubelet.service", "kubelet.service", &kubelet),
            (
                "getty@.service",
                "getty@.service",
                "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=getty.target %i.target\n\
                 DefaultInstance=tty1\nAlias=console@.service tty@tty9.service\n",
            ),
            (
                "serial@ttyS0.service",
                "serial@.service",
                "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n\
                 Alias=ser@.service\n",
            ),
            (
                "x.socket",
                "x.socket",
                "[Socket]\nListenStream=/run/x.sock\n[Install]\nWantedBy=sockets.target\n",
            ),
        ];
        fn symlinks(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path).unwrap();
                    let rel = path.strip_prefix(root).unwrap();
                    out.push((
                        format!("/{}", rel.display()),
                        target.to_string_lossy().into_owned(),
                    ));
                } else if meta.is_dir() {
                    symlinks(root, &path, out);
                }
            }
        }
        let base: PathBuf =
            std::env::temp_dir().join(format!("flatcar-preload-unit-test-{}", std::process::id()));
        for (n, (unit, file, text)) in cases.iter().enumerate() {
            let root = base.join(n.to_string());
            let dir = root.join("etc/systemd/system");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), text).unwrap();
            let out = Command::new("systemctl")
                .arg("enable")
                .arg(format!("--root={}", root.display()))
                .arg(unit)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "systemctl enable {unit}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut real = Vec::new();
            symlinks(&root, &root, &mut real);
            real.sort();
            let i = parse_install(text.as_bytes()).unwrap().unwrap();
            let mut ours = enable_links(unit, &format!("/etc/systemd/system/{file}"), &i).unwrap();
            ours.sort();
            assert_eq!(ours, real, "{unit}");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
