//! `verify`: proves that the image stores in ROOT are intact, each by its
//! backend (`store::Backend::verify`), reading ROOT through libext2fs.

use anyhow::{bail, Context, Result};

use crate::fsread::FsRead;
use crate::store::{self, Backend, Report};

/// Verifies the image stores in ROOT of `root` (see [`check_stores`],
/// with every backend of the registry) and their SELinux labels; the
/// report of all, whatever it found (Err: ROOT cannot be read).
pub fn check_root(root: &crate::disk::ext4::Root) -> Result<Report> {
    let fs = root.open_read()?;
    let mut report = check_stores(&fs, &store::BACKENDS)?;
    if let Some((path, problem)) = crate::selinux::survey(&fs)?.first_wrong {
        report.failures.push(store::Failure {
            image: None,
            layer: None,
            path: Some(path),
            problem,
        });
    }
    Ok(report)
}

/// Verifies the stores of `backends` in `fs` (each there is; the first
/// when none is, which says so) with a progress bar by bytes, each by its
/// backend.
pub fn check_stores(fs: &dyn FsRead, backends: &[&'static dyn Backend]) -> Result<Report> {
    let mut report = Report {
        images: 0,
        layers: 0,
        bytes_hashed: 0,
        failures: vec![],
    };
    let mut present = vec![];
    for &backend in backends {
        if fs.stat(backend.root().as_bytes())?.is_some() {
            present.push(backend);
        }
    }
    if present.is_empty() {
        present.extend(backends.first());
    }
    for backend in present {
        let total = backend.verify_total(fs)?;
        let mut bar = crate::progress::Bar::bytes("verifying layers", Some(total));
        let one = backend.verify(fs, &mut |n| bar.inc(n))?;
        bar.finish();
        report.images += one.images;
        report.layers += one.layers;
        report.bytes_hashed += one.bytes_hashed;
        report.failures.extend(one.failures);
    }
    Ok(report)
}

/// `flatcar-preload verify DISK [--json]`: exit 0 only when every check
/// holds; each failure names the image, the layer and the path.
pub fn run(disk: &std::path::Path, json: bool, air_gapped: bool) -> Result<()> {
    let opened = crate::disk::open_for_reading(disk)?;
    let root = opened.prepared.fs();
    let mark = crate::disk::unfinished(&root.open_read()?)?;
    let mut report = match (check_root(&root), &mark) {
        (Err(e), Some(said)) => {
            return Err(e.context(format!(
                "ROOT was left unfinished by an interrupted run ({said})"
            )))
        }
        (report, _) => report?,
    };
    if let Some(said) = mark {
        report.failures.insert(
            0,
            store::Failure {
                image: None,
                layer: None,
                path: Some(crate::disk::UNFINISHED.into()),
                problem: format!(
                    "ROOT was left unfinished by an interrupted run ({said}): what it holds may be half-written"
                ),
            },
        );
    }
    // Beside the stores: what OEM and ROOT hold holds together.
    let mut problems = vec![];
    let fs = root.open_read()?;
    let k8s = crate::store::kubelet_images(&fs)?;
    let node = crate::node::survey::survey(
        &opened.prepared.image,
        &opened.prepared.layout,
        &fs,
        air_gapped,
        &k8s,
        &mut problems,
    )?;
    for w in &node.warnings {
        eprintln!("warning: {w}");
    }
    report
        .failures
        .extend(problems.into_iter().map(|(path, problem)| store::Failure {
            image: None,
            layer: None,
            path: Some(path),
            problem,
        }));
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
            .context("writing the report to standard output")?;
    }
    for f in &report.failures {
        eprintln!("FAILED {f}");
    }
    eprintln!(
        "{}: {} image(s), {} layer(s), {} of layer data hashed: {}",
        disk.display(),
        report.images,
        report.layers,
        indicatif::HumanBytes(report.bytes_hashed),
        match report.failures.len() {
            0 => "all checks hold".to_string(),
            n => format!("{n} check(s) failed"),
        }
    );
    if !report.failures.is_empty() {
        bail!(
            "{} does not hold what its store says: {} check(s) failed",
            disk.display(),
            report.failures.len()
        );
    }
    Ok(())
}
