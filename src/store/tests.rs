//! A store added in tests only, in a few dozen lines: `toy`, one file per
//! image under /var/lib/toy named by the sha256 of its bytes. The job's
//! rooms (`verify`, the cache's names, the protocol) take it as they take
//! Docker's and containerd's, with no change of theirs.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};

use super::verify_common::memfs::MemFs;
use super::*;
use crate::fsread::{join, Kind};

struct Toy;

const TOY: &str = "/var/lib/toy";

impl Backend for Toy {
    fn name(&self) -> &'static str {
        "toy"
    }
    fn tag(&self) -> &'static str {
        "toy-"
    }
    fn root(&self) -> &'static str {
        TOY
    }
    fn daemon(&self) -> Option<&dyn Daemon> {
        None
    }
    fn exports_part(&self) -> bool {
        true
    }
    fn export(
        &self,
        _: &Path,
        _: Option<&Selection>,
        _: i64,
        _: &mut dyn Write,
    ) -> Result<ExportStats> {
        bail!("toy has no daemon")
    }
    fn measure(&self, _: &Path, _: Option<&Selection>, _: u64) -> Result<Need> {
        bail!("toy has no daemon")
    }
    fn merge(&self, _: &dyn FsRead) -> Result<Option<Box<dyn Merge>>> {
        Ok(None)
    }
    fn layers(&self, fs: &dyn FsRead) -> Result<u64> {
        Ok(fs.read_dir(TOY.as_bytes())?.len() as u64)
    }
    fn inspect(&self, _: &dyn FsRead) -> Result<Option<Inventory>> {
        Ok(None)
    }
    fn verify_total(&self, fs: &dyn FsRead) -> Result<u64> {
        let mut total = 0;
        for name in fs.read_dir(TOY.as_bytes())? {
            total += fs.stat(&join(TOY.as_bytes(), &name))?.map_or(0, |s| s.size);
        }
        Ok(total)
    }
    fn verify(&self, fs: &dyn FsRead, progress: &mut dyn FnMut(u64)) -> Result<Report> {
        let (mut images, mut bytes_hashed, mut failures) = (0, 0, vec![]);
        for name in fs.read_dir(TOY.as_bytes())? {
            let path = join(TOY.as_bytes(), &name);
            let data = fs.read_all(&path)?;
            (images, bytes_hashed) = (images + 1, bytes_hashed + data.len() as u64);
            progress(data.len() as u64);
            if crate::digest::sha256_hex(&data).as_bytes() != &name[..] {
                failures.push(Failure {
                    image: Some(String::from_utf8_lossy(&name).into()),
                    layer: None,
                    path: Some(String::from_utf8_lossy(&path).into()),
                    problem: "its bytes do not hash to its name".into(),
                });
            }
        }
        let layers = images;
        Ok(Report {
            images,
            layers,
            bytes_hashed,
            failures,
        })
    }
}

#[test]
fn a_store_plugs_in_without_touching_the_job() {
    let mut fs = MemFs::default();
    let good = b"an image".as_slice();
    let name = crate::digest::sha256_hex(good);
    fs.put(&format!("{TOY}/{name}"), Kind::File, good, (0, 0));
    let bad = format!("{TOY}/{}", crate::digest::sha256_hex(b"other"));
    fs.put(&bad, Kind::File, b"tampered", (0, 0));

    // verify: the toy store beside the real ones, each checked by its own.
    let report = crate::verify::check_stores(&fs, &[&docker::Docker, &Toy]).unwrap();
    assert_eq!((report.images, report.bytes_hashed), (2, 16));
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].path.as_deref(), Some(bad.as_str()));

    // The cache's and the run's names keep the stores apart.
    let names: Vec<String> = [
        &docker::Docker as &dyn Backend,
        &containerd::Containerd,
        &Toy,
    ]
    .into_iter()
    .map(|b| crate::populate::cache::volume_name("ci", b))
    .collect();
    assert_eq!(
        names,
        [
            "flatcar-preload-cache-ci",
            "flatcar-preload-ctrd-cache-ci",
            "flatcar-preload-toy-cache-ci"
        ]
    );

    // An unknown store is refused by name.
    let request = |store: &str| StoreRequest {
        store: store.into(),
        options: StoreOptions {
            namespace: "k8s.io".into(),
            pin: false,
            containerd_version: ContainerdVersion::V2_1,
        },
        op: StoreOp::Prune,
    };
    let e = serve(request("nothing")).unwrap_err();
    assert!(
        format!("{e:#}").contains("no image store named \"nothing\""),
        "{e:#}"
    );
    // Requests reach the registry's backends only: the toy is not one, and
    // no daemon writes it.
    let e = serve(request("toy")).unwrap_err();
    assert!(format!("{e:#}").contains("\"toy\""), "{e:#}");
    assert!(Toy.daemon().is_none());
}
