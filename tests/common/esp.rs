//! Fixture EFI system partitions: formats the ESP of a disk image file as
//! FAT (with the `fatfs` crate, no root, no loop device, no mkfs.fat or
//! mtools) and puts EFI loaders in `EFI/boot`, as Flatcar's image has
//! `EFI/boot/bootx64.efi` (amd64) or `bootaa64.efi` (arm64).
//!
//! Shared by the integration tests (`common::esp`) and the unit tests of
//! src/disk/esp.rs (included there by path), so it uses only std, fatfs and
//! gptman.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// GPT type GUID of an EFI system partition.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// How to make the ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fat {
    /// FAT12/16/32 as fatfs picks it for the size (mkfs.fat does the same:
    /// FAT16 for the old 128 MiB ESP, FAT32 for the current 1 GiB one).
    Auto,
    Fat16,
    Fat32,
}

/// A writable window of a file (fatfs wants a seekable volume from 0).
struct Window {
    f: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let n = self.f.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Window {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "end of the ESP"));
        }
        self.f.write_all_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let to = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = to.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}

/// Byte range of the first partition of type ESP in `disk`'s GPT.
pub fn esp_range(disk: &Path) -> (u64, u64) {
    let mut f = File::open(disk).unwrap();
    let gpt = gptman::GPT::find_from(&mut f).expect("reading the fixture's GPT");
    let (_, p) = gpt
        .iter()
        .find(|(_, p)| p.is_used() && guid(&p.partition_type_guid) == ESP_TYPE)
        .expect("the fixture disk has no EFI system partition");
    let start = p.starting_lba * gpt.sector_size;
    (start, (p.ending_lba + 1 - p.starting_lba) * gpt.sector_size)
}

fn guid(g: &[u8; 16]) -> String {
    let h = |r: &[u8]| r.iter().map(|b| format!("{b:02X}")).collect::<String>();
    let rev = |r: &[u8]| h(&r.iter().rev().copied().collect::<Vec<_>>());
    format!(
        "{}-{}-{}-{}-{}",
        rev(&g[0..4]),
        rev(&g[4..6]),
        rev(&g[6..8]),
        h(&g[8..10]),
        h(&g[10..])
    )
}

/// Formats the ESP of `disk` (FAT, label EFI-SYSTEM), then creates
/// `EFI/boot/NAME` for each of `loaders` (a few KiB of bytes each; the
/// directories are spelled as `dirs` says, e.g. ("EFI", "boot")). With
/// `dirty`, the volume's dirty flag is set afterwards, as a crash while
/// mounted leaves it.
pub fn write_esp(disk: &Path, fat: Fat, dirs: (&str, &str), loaders: &[&str], dirty: bool) {
    let (start, len) = esp_range(disk);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let win = || Window {
        f: f.try_clone().unwrap(),
        start,
        len,
        pos: 0,
    };
    let mut opts = fatfs::FormatVolumeOptions::new().volume_label(*b"EFI-SYSTEM ");
    match fat {
        Fat::Auto => {}
        Fat::Fat16 => opts = opts.fat_type(fatfs::FatType::Fat16),
        // FAT32 needs 65525 clusters: small clusters keep the ESP small.
        Fat::Fat32 => opts = opts.fat_type(fatfs::FatType::Fat32).bytes_per_cluster(512),
    }
    fatfs::format_volume(win(), opts).expect("formatting the ESP");
    {
        let fs = fatfs::FileSystem::new(win(), fatfs::FsOptions::new()).unwrap();
        let want = match fat {
            Fat::Auto => fs.fat_type(),
            Fat::Fat16 => fatfs::FatType::Fat16,
            Fat::Fat32 => fatfs::FatType::Fat32,
        };
        assert_eq!(fs.fat_type(), want, "the fixture ESP got another FAT type");
        let boot = fs
            .root_dir()
            .create_dir(dirs.0)
            .unwrap()
            .create_dir(dirs.1)
            .unwrap();
        for (i, name) in loaders.iter().enumerate() {
            let mut file = boot.create_file(name).unwrap();
            let bytes: Vec<u8> = (0..5000u32).map(|n| (n * 7 + i as u32) as u8).collect();
            file.write_all(b"MZ").unwrap();
            file.write_all(&bytes).unwrap();
        }
        // A file that is no loader, as Flatcar's ESP has grub and shim's helpers.
        boot.create_file("grub.cfg")
            .unwrap()
            .write_all(b"set timeout=1\n")
            .unwrap();
        drop(boot);
        // The first-boot flag a released image carries (without it the
        // image counts as booted before).
        fs.root_dir()
            .create_dir("flatcar")
            .unwrap()
            .create_file("first_boot")
            .unwrap();
        fs.unmount().unwrap();
    }
    if dirty {
        // The status flags byte of the boot sector (bit 0: dirty): offset
        // 0x41 on FAT32, 0x25 on FAT12/16 (fatfs reads them there too).
        let mut sector = [0u8; 512];
        f.read_exact_at(&mut sector, start).unwrap();
        // FAT32 has 0 root entries (bytes 17..19) and 0 16-bit FAT size.
        let fat32 = sector[17] == 0 && sector[18] == 0;
        let at = start + if fat32 { 0x41 } else { 0x25 };
        f.write_all_at(&[sector[(at - start) as usize] | 1], at)
            .unwrap();
        let fs = fatfs::FileSystem::new(win(), fatfs::FsOptions::new()).unwrap();
        assert!(
            fs.read_status_flags().unwrap().dirty(),
            "the fixture ESP is not flagged dirty"
        );
    }
}

/// The names of the files in `EFI/boot` of the ESP of `disk`, sorted
/// (panics unless the ESP is FAT with that directory).
pub fn loader_names(disk: &Path) -> Vec<String> {
    let (start, len) = esp_range(disk);
    let win = Window {
        f: File::open(disk).unwrap(),
        start,
        len,
        pos: 0,
    };
    let fs = fatfs::FileSystem::new(win, fatfs::FsOptions::new()).expect("p1 holds no FAT");
    let boot = fs
        .root_dir()
        .open_dir("EFI/boot")
        .expect("no EFI/boot on p1");
    let mut names: Vec<String> = boot
        .iter()
        .map(|e| e.unwrap())
        .filter(|e| e.is_file())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    names
}
