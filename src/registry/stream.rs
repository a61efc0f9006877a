//! Response bodies checked while they stream: the stall limit between
//! chunks, the size and the sha256 digest at the end (an error, never a
//! clean end, when they do not match or the bytes stop short).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};

use super::{ErrorKind, RegistryError};
use crate::digest::hex;

pub type Chunks = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

fn err(kind: ErrorKind, msg: String) -> io::Error {
    io::Error::other(RegistryError::new(kind, msg))
}

/// A body of `size` bytes and digest `digest` (`sha256:<hex>`), from
/// `what` (for messages).
pub struct Verified {
    inner: Chunks,
    hasher: Sha256,
    got: u64,
    size: u64,
    digest: String,
    what: String,
    stall: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    done: bool,
}

impl Verified {
    pub fn new(
        inner: Chunks,
        size: u64,
        digest: &str,
        what: String,
        stall: Option<Duration>,
    ) -> Verified {
        Verified {
            inner,
            hasher: Sha256::new(),
            got: 0,
            size,
            digest: digest.to_string(),
            what,
            stall: stall.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            done: false,
        }
    }
}

impl Stream for Verified {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Pending => {
                if let Some((d, sleep)) = &mut this.stall {
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.done = true;
                        return Poll::Ready(Some(Err(err(
                            ErrorKind::Stalled,
                            format!(
                                "{}: no byte came for {}s (after {} of {} bytes); raise --pull-timeout for a slow registry",
                                this.what,
                                d.as_secs(),
                                this.got,
                                this.size
                            ),
                        ))));
                    }
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some((d, sleep)) = &mut this.stall {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *d);
                }
                this.got += chunk.len() as u64;
                if this.got > this.size {
                    this.done = true;
                    return Poll::Ready(Some(Err(err(
                        ErrorKind::DigestMismatch,
                        format!(
                            "{}: more bytes came than the {} its manifest says",
                            this.what, this.size
                        ),
                    ))));
                }
                this.hasher.update(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(err(
                    ErrorKind::Truncated,
                    format!(
                        "{}: the connection failed after {} of {} bytes: {e}",
                        this.what, this.got, this.size
                    ),
                ))))
            }
            Poll::Ready(None) => {
                this.done = true;
                if this.got < this.size {
                    return Poll::Ready(Some(Err(err(
                        ErrorKind::Truncated,
                        format!(
                            "{}: the registry sent {} of {} bytes and ended",
                            this.what, this.got, this.size
                        ),
                    ))));
                }
                let got = format!(
                    "sha256:{}",
                    hex(&std::mem::take(&mut this.hasher).finalize())
                );
                if got != this.digest {
                    return Poll::Ready(Some(Err(err(
                        ErrorKind::DigestMismatch,
                        format!(
                            "{}: the bytes sent have digest {got}, not {}: a broken mirror, proxy or registry",
                            this.what, this.digest
                        ),
                    ))));
                }
                Poll::Ready(None)
            }
        }
    }
}

/// A body of unknown digest read whole, at most `limit` bytes, each
/// chunk within the stall limit.
pub async fn read_all(
    mut inner: Chunks,
    limit: u64,
    what: &str,
    stall: Option<Duration>,
) -> anyhow::Result<Vec<u8>> {
    use futures_util::StreamExt;
    let mut out = vec![];
    loop {
        let next = match stall {
            Some(d) => tokio::time::timeout(d, inner.next()).await.map_err(|_| {
                RegistryError::new(
                    ErrorKind::Stalled,
                    format!(
                        "{what}: no byte came for {}s; raise --pull-timeout for a slow registry",
                        d.as_secs()
                    ),
                )
            })?,
            None => inner.next().await,
        };
        match next {
            None => return Ok(out),
            Some(Ok(chunk)) => {
                out.extend_from_slice(&chunk);
                if out.len() as u64 > limit {
                    return Err(RegistryError::new(
                        ErrorKind::InvalidManifest,
                        format!("{what}: more than {limit} bytes"),
                    )
                    .into());
                }
            }
            Some(Err(e)) => {
                return Err(RegistryError::new(
                    ErrorKind::Truncated,
                    format!("{what}: the connection failed: {e}"),
                )
                .into())
            }
        }
    }
}
