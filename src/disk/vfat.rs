//! The EFI system partition (vfat) of a raw disk image, read through the
//! `fatfs` crate and written with mtools, both at the partition's offset:
//! no root, no loop device, no mount.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::Partition;

/// The partition's byte range of the image file as one volume.
struct Slice {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let k = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += k as u64;
        Ok(k)
    }
}

impl Write for Slice {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the EFI system partition is only read here (see write_files)",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Slice {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let to = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match to {
            Some(to) if to <= self.len => {
                self.pos = to;
                Ok(to)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the EFI system partition",
            )),
        }
    }
}

type Fat = fatfs::FileSystem<Slice>;

/// The ESP of a raw image, opened for reading or writing.
pub struct Esp {
    fs: Fat,
    name: String,
}

fn fat_err(e: io::Error) -> anyhow::Error {
    anyhow!(e)
}

impl Esp {
    /// Opens the FAT filesystem of `part` in `image` for reading.
    pub fn open(image: &Path, part: &Partition) -> Result<Esp> {
        let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
        let name = format!(
            "the EFI system partition (partition {}) of {}",
            part.number,
            image.display()
        );
        let slice = Slice {
            file,
            start: part.offset,
            len: part.size,
            pos: 0,
        };
        let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new())
            .map_err(fat_err)
            .with_context(|| format!("{name} holds no FAT filesystem"))?;
        Ok(Esp { fs, name })
    }

    /// Whether a file or directory `path` ('/' separated, from the root,
    /// names matched without case as FAT does) exists.
    pub fn exists(&self, path: &str) -> Result<bool> {
        let rel = path.trim_start_matches('/');
        let root = self.fs.root_dir();
        if rel.is_empty() {
            return Ok(true);
        }
        if root.open_file(rel).is_ok() || root.open_dir(rel).is_ok() {
            return Ok(true);
        }
        Ok(false)
    }

    /// The content of file `path`, if it is there.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let rel = path.trim_start_matches('/');
        let Ok(mut f) = self.fs.root_dir().open_file(rel) else {
            return Ok(None);
        };
        let mut out = vec![];
        f.read_to_end(&mut out)
            .with_context(|| format!("reading {path} on {}", self.name))?;
        Ok(Some(out))
    }

    /// Free bytes on the filesystem.
    pub fn free_bytes(&self) -> Result<u64> {
        let stats = self
            .fs
            .stats()
            .map_err(fat_err)
            .with_context(|| format!("reading the free space of {}", self.name))?;
        Ok(u64::from(stats.free_clusters()) * u64::from(stats.cluster_size()))
    }
}

/// Writes host files into the ESP `part` of `image`: (host file, path on
/// the ESP), missing directories made, a file there replaced. Files keep
/// their host modification time, directories made get `stamp` (mtools's
/// SOURCE_DATE_EPOCH), so the same inputs give the same bytes. Through
/// mtools (`mmd`, `mcopy -i IMAGE@@OFFSET`): fatfs 0.3 writes a new
/// directory's `.` and `..` behind long-name entries, which fsck.fat
/// refuses.
pub fn write_files(
    image: &Path,
    part: &Partition,
    files: &[(&Path, &str)],
    stamp: i64,
) -> Result<()> {
    let mtools = |tool: &str, args: &[&str]| mtools(tool, args, stamp);
    let at = format!("{}@@{}", image.display(), part.offset);
    let mut made = std::collections::BTreeSet::new();
    for (src, dest) in files {
        let rel = dest.trim_start_matches('/');
        let mut dir = String::new();
        let parents: Vec<&str> = rel.split('/').collect();
        for p in &parents[..parents.len().saturating_sub(1)] {
            dir = format!("{dir}/{p}");
            if made.insert(dir.clone()) && !Esp::open(image, part)?.exists(&dir)? {
                mtools("mmd", &["-i", &at, &format!("::{dir}")])?;
            }
        }
        let src = src
            .to_str()
            .context("a host path of an ESP file is not UTF-8")?;
        mtools("mcopy", &["-o", "-m", "-i", &at, src, &format!("::/{rel}")])
            .with_context(|| format!("writing {dest} on the EFI system partition"))?;
    }
    Ok(())
}

fn mtools(tool: &str, args: &[&str], stamp: i64) -> Result<()> {
    let out = std::process::Command::new(tool)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", stamp.to_string())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => anyhow!(
                "{tool} is not installed: writing the EFI system partition needs mtools (Debian/Ubuntu: apt-get install mtools)"
            ),
            _ => anyhow!(e).context(format!("running {tool}")),
        })?;
    if !out.status.success() {
        bail!(
            "{tool} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A FAT32 made by mkfs.fat at 1 MiB into a file, as the ESP of a disk.
    fn esp(dir: &Path) -> Option<(std::path::PathBuf, Partition)> {
        let img = dir.join("disk.bin");
        let fat = dir.join("fat.img");
        File::create(&fat).unwrap().set_len(64 << 20).unwrap();
        let made = Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "EFI-SYSTEM"])
            .arg(&fat)
            .output();
        if !made.is_ok_and(|o| o.status.success()) {
            crate::testing::skipped("vfat tests", "mkfs.vfat (dosfstools) is not installed");
            return None;
        }
        let data = std::fs::read(&fat).unwrap();
        let f = File::create(&img).unwrap();
        f.set_len(66 << 20).unwrap();
        f.write_all_at(&data, 1 << 20).unwrap();
        let part = Partition {
            number: 1,
            offset: 1 << 20,
            size: 64 << 20,
            label: "EFI-SYSTEM".into(),
            type_guid: super::super::layout::ESP_TYPE.into(),
            uuid: String::new(),
        };
        Some((img, part))
    }

    #[test]
    fn the_same_files_and_stamp_give_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let Some((img, part)) = esp(dir.path()) else {
            return;
        };
        let fw = dir.path().join("fw");
        std::fs::write(&fw, b"firmware").unwrap();
        let mut images = vec![];
        for n in 0..2 {
            let copy = dir.path().join(format!("copy{n}"));
            std::fs::copy(&img, &copy).unwrap();
            write_files(&copy, &part, &[(&fw, "/firmware/a/fw.bin")], 1_700_000_000).unwrap();
            images.push(std::fs::read(&copy).unwrap());
            // Another second: what mtools would stamp with the clock.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        let first = images[0].iter().zip(&images[1]).position(|(a, b)| a != b);
        assert_eq!(first, None, "the ESP's bytes differ (first at this offset)");
    }

    #[test]
    fn writes_what_fsck_fat_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let Some((img, part)) = esp(dir.path()) else {
            return;
        };
        let host = |name: &str, data: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            p
        };
        let big = vec![7u8; 3 << 20];
        let (fw, dtbo, flag, dt) = (
            host("fw", &big),
            host("dtbo", b"dtbo"),
            host("flag", b""),
            host("dt", b"dt"),
        );
        let files: [(&Path, &str); 4] = [
            (&fw, "/firmware/RPI_EFI.fd"),
            (&dtbo, "/firmware/overlays/x.dtbo"),
            (&flag, "/flatcar/first_boot"),
            // Replacing keeps one entry.
            (&dt, "/firmware/overlays/x.dtbo"),
        ];
        write_files(&img, &part, &files, 1_700_000_000).unwrap();
        let esp = Esp::open(&img, &part).unwrap();
        assert_eq!(esp.read("/firmware/RPI_EFI.fd").unwrap().unwrap(), big);
        assert_eq!(
            esp.read("/FIRMWARE/overlays/X.DTBO").unwrap().unwrap(),
            b"dt"
        );
        assert!(esp.exists("flatcar/first_boot").unwrap());
        assert!(!esp.exists("flatcar/nothing").unwrap());
        drop(esp);
        let part_file = dir.path().join("part.img");
        let data = std::fs::read(&img).unwrap();
        std::fs::write(&part_file, &data[1 << 20..(65 << 20)]).unwrap();
        let fsck = Command::new("fsck.fat")
            .arg("-n")
            .arg(&part_file)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "fsck.fat: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        // Too big: mcopy's error, not a panic.
        let huge = dir.path().join("huge");
        File::create(&huge).unwrap().set_len(80 << 20).unwrap();
        let err = write_files(&img, &part, &[(&huge, "/huge")], 0).unwrap_err();
        assert!(format!("{err:#}").contains("mcopy"), "{err:#}");
    }
}
