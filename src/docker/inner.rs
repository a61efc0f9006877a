//! The helper side, run inside the dind container (`__pull`): drives the
//! inner daemon through its unix socket and reports progress to the outer
//! tool as JSON lines on stdout.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bollard::query_parameters::{CreateImageOptions, TagImageOptions};
use bollard::Docker;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::refs::ImageRef;

/// One progress report of the pull helper, a JSON line on its stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum PullEvent {
    /// Bytes of one layer of image number `image` (index in the list).
    Layer {
        image: usize,
        layer: String,
        current: u64,
        total: u64,
    },
    Done {
        image: usize,
        id: String,
    },
    Failed {
        image: usize,
        message: String,
    },
}

fn emit(ev: &PullEvent) {
    let mut out = std::io::stdout().lock();
    if let Ok(s) = serde_json::to_string(ev) {
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }
}

/// Connects once the inner dockerd has made its socket and answers.
async fn connect_when_ready(socket: &str) -> Result<Docker> {
    let start = Instant::now();
    loop {
        let attempt = async {
            let docker = Docker::connect_with_unix(socket, 4 * 3600, bollard::API_DEFAULT_VERSION)?;
            docker.ping().await?;
            Ok::<_, bollard::errors::Error>(docker)
        };
        match attempt.await {
            Ok(d) => return Ok(d),
            Err(e) if start.elapsed() > Duration::from_secs(90) => {
                bail!("the inner dockerd did not answer on {socket} within 90 s: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn pull_one(docker: &Docker, index: usize, r: &ImageRef) -> Result<String> {
    let (from, tag) = r.pull_spec();
    let mut s = docker.create_image(
        Some(CreateImageOptions {
            from_image: Some(from.clone()),
            tag,
            ..Default::default()
        }),
        None,
        None,
    );
    while let Some(item) = s.next().await {
        let item = item.map_err(|e| match e {
            bollard::errors::Error::DockerResponseServerError { message, .. } => {
                anyhow::anyhow!(message)
            }
            e => anyhow::anyhow!(e),
        })?;
        if let Some(msg) = item.error_detail.and_then(|d| d.message) {
            bail!(msg);
        }
        if let (Some(layer), Some(p)) = (item.id, item.progress_detail) {
            if let (Some(cur), Some(total)) = (p.current, p.total) {
                if item.status.as_deref() == Some("Downloading") {
                    emit(&PullEvent::Layer {
                        image: index,
                        layer,
                        current: cur.max(0) as u64,
                        total: total.max(0) as u64,
                    });
                }
            }
        }
    }
    let pulled = match r.digest {
        Some(_) => from.clone(),
        None => r.to_string(),
    };
    let id = docker
        .inspect_image(&pulled)
        .await
        .with_context(|| format!("inspecting {pulled} after the pull"))?
        .id
        .unwrap_or_default();
    // name:tag@digest pulls by digest, which leaves the image untagged.
    if let (Some(_), Some(tag)) = (&r.digest, &r.tag) {
        docker
            .tag_image(
                &id,
                Some(TagImageOptions {
                    repo: Some(r.name.clone()),
                    tag: Some(tag.clone()),
                }),
            )
            .await
            .with_context(|| format!("tagging {} as {}:{tag}", id, r.name))?;
    }
    Ok(id)
}

/// Pulls every reference with at most `jobs` at once. Returns an error
/// when any pull failed (each failure was reported as an event).
pub async fn pull_images(socket: &str, refs: &[ImageRef], jobs: usize) -> Result<()> {
    let docker = connect_when_ready(socket).await?;
    let docker = docker
        .negotiate_version()
        .await
        .context("talking to the inner dockerd")?;
    let results: Vec<bool> = futures_util::stream::iter(refs.iter().enumerate())
        .map(|(i, r)| {
            let docker = &docker;
            async move {
                match pull_one(docker, i, r).await {
                    Ok(id) => {
                        emit(&PullEvent::Done { image: i, id });
                        true
                    }
                    Err(e) => {
                        emit(&PullEvent::Failed {
                            image: i,
                            message: format!("{e:#}"),
                        });
                        false
                    }
                }
            }
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    if results.iter().any(|ok| !ok) {
        bail!("some pulls failed");
    }
    Ok(())
}
