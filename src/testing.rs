//! What the unit tests share across modules.

use std::io::Write;

/// Says that a test, or `what` part of it, is skipped and why:
/// `SKIPPED what: why` straight to stderr, past libtest's capture of a
/// passing test's output, where `cargo test` shows it (as `skip` of
/// tests/common/mod.rs does for the integration tests).
pub(crate) fn skipped(what: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
}
