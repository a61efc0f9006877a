//! Container image platforms (`os/arch[/variant]`), named and compared as
//! Docker and the OCI image spec do.

use std::fmt;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// An image platform, normalized: `linux/amd64`, `linux/arm64`,
/// `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// None when the platform has no variant (or its default one: `v8`
    /// for arm64).
    pub variant: Option<String>,
}

impl Platform {
    /// A platform from the fields of an image config or a manifest list
    /// entry, normalized (`x86_64` is `amd64`, `aarch64` is `arm64`, and
    /// arm64's default variant `v8` is left out).
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        let os = os.to_ascii_lowercase();
        let (architecture, variant) = match (architecture.to_ascii_lowercase().as_str(), variant) {
            ("x86_64" | "x86-64", _) => ("amd64".to_string(), None),
            ("aarch64" | "arm64", Some("v8") | None) => ("arm64".to_string(), None),
            ("aarch64", Some(v)) => ("arm64".to_string(), Some(v.to_string())),
            ("armhf", _) => ("arm".to_string(), Some("v7".to_string())),
            ("armel", _) => ("arm".to_string(), Some("v6".to_string())),
            ("i386" | "386", _) => ("386".to_string(), None),
            (a, v) => (
                a.to_string(),
                v.filter(|v| !v.is_empty()).map(str::to_string),
            ),
        };
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// The platform of this machine (and of this build of the tool).
    pub fn of_host() -> Platform {
        Platform::new("linux", std::env::consts::ARCH, None)
    }

    /// Whether an image of platform `image` is what `self` asks for: the
    /// same OS and architecture, and the same variant when `self` names one.
    pub fn accepts(&self, image: &Platform) -> bool {
        self.os == image.os
            && self.architecture == image.architecture
            && (self.variant.is_none() || self.variant == image.variant)
    }
}

/// Serializes a platform as its `os/arch[/variant]` string (for reports).
pub fn as_string<S: serde::Serializer>(p: &Platform, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(p)
}

impl std::str::FromStr for Platform {
    type Err = anyhow::Error;

    /// `os/arch[/variant]`, as `docker pull --platform` takes it.
    fn from_str(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        match parts[..] {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform::new(os, arch, None)),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => {
                Ok(Platform::new(os, arch, Some(variant)))
            }
            _ => bail!(
                "{s:?} is not a platform: write os/arch[/variant], e.g. linux/amd64, linux/arm64 or linux/arm/v7"
            ),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Platform;

    #[test]
    fn parse_normalize_compare() {
        let p = |s: &str| s.parse::<Platform>().unwrap();
        assert_eq!(p("linux/arm64").to_string(), "linux/arm64");
        assert_eq!(p("linux/arm64/v8").to_string(), "linux/arm64");
        assert_eq!(p("linux/aarch64"), p("linux/arm64"));
        assert_eq!(p("linux/x86_64").to_string(), "linux/amd64");
        assert_eq!(p("linux/arm/v7").to_string(), "linux/arm/v7");
        assert!(p("linux/arm").accepts(&p("linux/arm/v7")));
        assert!(!p("linux/arm/v6").accepts(&p("linux/arm/v7")));
        assert!(!p("linux/amd64").accepts(&p("linux/arm64")));
        for bad in [
            "",
            "linux",
            "amd64",
            "linux/",
            "/amd64",
            "linux/arm/v7/x",
            "linux/am d64",
        ] {
            assert!(bad.parse::<Platform>().is_err(), "{bad:?}");
        }
        assert_eq!(
            Platform::new("linux", "aarch64", None).to_string(),
            "linux/arm64"
        );
        assert_eq!(Platform::of_host().os, "linux");
    }
}
