//! The fixture disks whose EFI system partition says which platform they
//! are built for (`common::disk_copy_with_esp`), which the populate tests
//! rely on: p1 becomes a FAT filesystem with the loaders, nothing else of
//! the disk changes, and ROOT stays a clean ext4.

mod common;

use std::fs::File;
use std::io::Read;

use common::esp::{esp_range, loader_names as loaders};
use common::{assert_fsck_clean, disk_copy, disk_copy_with_esp};

#[test]
fn esp_fixture_holds_the_loaders_and_changes_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain_dir, esp_dir) = (tmp.path().join("plain"), tmp.path().join("esp"));
    std::fs::create_dir(&plain_dir).unwrap();
    std::fs::create_dir(&esp_dir).unwrap();
    let plain = disk_copy(&["--layout", "small"], &plain_dir);
    let disk = disk_copy_with_esp(
        &["--layout", "small"],
        &["bootaa64.efi", "BOOTX64.EFI"],
        &esp_dir,
    );
    assert_eq!(loaders(&disk), ["BOOTX64.EFI", "bootaa64.efi", "grub.cfg"]);

    // Byte for byte the plain fixture outside p1.
    let (start, len) = esp_range(&disk);
    let (mut a, mut b) = (vec![], vec![]);
    File::open(&plain).unwrap().read_to_end(&mut a).unwrap();
    File::open(&disk).unwrap().read_to_end(&mut b).unwrap();
    let (s, e) = (start as usize, (start + len) as usize);
    assert_eq!(a.len(), b.len());
    assert!(a[..s] == b[..s], "bytes before p1 changed");
    assert!(a[e..] == b[e..], "bytes after p1 changed");
    assert!(a[s..e] != b[s..e], "p1 was not written");
    assert_fsck_clean(&disk);

    // The current layout's 1 GiB ESP (FAT32, as on a Flatcar image).
    let big_dir = tmp.path().join("big");
    std::fs::create_dir(&big_dir).unwrap();
    let big = disk_copy_with_esp(&["--layout", "current"], &["bootx64.efi"], &big_dir);
    assert_eq!(loaders(&big), ["bootx64.efi", "grub.cfg"]);
}
