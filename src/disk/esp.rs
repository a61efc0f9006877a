//! PLACEHOLDER until the `esp` branch is merged (issue 10).
use std::path::Path;

use anyhow::Result;

use crate::platform::Platform;

pub(crate) fn detect_platform(_disk: &Path) -> Result<std::result::Result<Platform, String>> {
    Ok(Err("not implemented".into()))
}
