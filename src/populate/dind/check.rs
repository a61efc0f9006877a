//! The engine checked before anything is pulled: its architecture, the
//! images of the engine the list names, the build containers' images.

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use crate::docker::Engine;
use crate::populate::checks::Checked;
use crate::populate::config::PopulateConfig;
use crate::populate::report::TargetPlatform;
use crate::source::Source;

/// Checks the engine before pulling: its architecture, the images of the
/// engine the list names (present, of the target platform) and the dind
/// image (pulled when missing). Leaves nothing behind.
pub(crate) async fn check_engine(
    engine: &Engine,
    cfg: &PopulateConfig,
    platform: &TargetPlatform,
    mut prepared: Vec<Checked>,
    cancel: &CancellationToken,
) -> Result<Vec<Checked>> {
    engine.check_arch()?;
    let target = &platform.target;
    for (l, prepared) in cfg.all_lines().zip(prepared.iter_mut()) {
        let Source::Daemon(r) = &l.source else {
            continue;
        };
        let name = r.to_string();
        let (id, platform) = engine
            .image_platform(&name)
            .await
            .with_context(|| format!("{} ({})", l.source, l.origin))?;
        if !target.accepts(&platform) && !cfg.allow_platform_mismatch {
            bail!(
                "{} ({}): it is a {platform} image, but the target platform is {target}: it could not run there; \
                 pass --allow-platform-mismatch to preload it anyway",
                l.source,
                l.origin
            );
        }
        *prepared = Checked::Daemon(name, id);
    }
    let mut images: Vec<&str> = cfg.stores.iter().map(|s| &s.build_image[..]).collect();
    images.dedup();
    for image in images {
        match cancel.run_until_cancelled(engine.ensure_image(image)).await {
            Some(ensured) => ensured?,
            None => bail!("interrupted"),
        }
    }
    Ok(prepared)
}
