//! Which partition of a Flatcar disk image is which, found by GPT type and
//! label, never by number alone: ROOT is partition 9 on the usual layout
//! (`disk_layout.json`) and 7 on the UKI layout (`disk_layout_uki.json`,
//! the Discoverable Partitions root type), and numbers are not a contract.

use anyhow::{bail, Context, Result};
use gptman::GPT;

use super::guid_to_string;

/// Flatcar's ROOT type ("flatcar-resize", grown at first boot).
pub const FLATCAR_RESIZE: &str = "3884DD41-8582-4404-B9A8-E9B84F2DF50E";
/// The Discoverable Partitions root types Flatcar's UKI layout gives ROOT.
pub const DPS_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
pub const DPS_ROOT_ARM64: &str = "B921B045-1DF0-41C3-AF44-4C6F280D3FAE";
/// Linux data: OEM, and ROOT in the UKI layout's "container" variant.
pub const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// The EFI system partition.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// "flatcar-rootfs": USR-A and USR-B.
pub const FLATCAR_USR: &str = "5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6";
/// GRUB's BIOS boot partition: only the GRUB layouts have one.
pub const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";

/// The label ROOT (GPT name and ext4 label), OEM (GPT name and btrfs
/// label: GRUB finds it by the first, the initrd by the second).
pub const ROOT_LABEL: &str = "ROOT";
pub const OEM_LABEL: &str = "OEM";
pub const USR_A_LABEL: &str = "USR-A";

/// One partition of the disk image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Its number in the GPT (1-based).
    pub number: u32,
    /// Byte offset of its first byte in the image.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// The GPT partition name.
    pub label: String,
    /// Type GUID, upper case.
    pub type_guid: String,
    /// Unique partition GUID (what /dev/disk/by-partuuid names), lower case.
    pub uuid: String,
}

/// How the image boots, which decides where kernel arguments go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Boot {
    /// GRUB, which reads `grub.cfg` of OEM (`linux_append`).
    Grub,
    /// A unified kernel image on the ESP: its command line is signed into
    /// it, and no `grub.cfg` is read.
    Uki,
}

/// The partitions of a Flatcar disk image that the tool reads or writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub root: Partition,
    pub oem: Option<Partition>,
    pub esp: Option<Partition>,
    pub usr_a: Option<Partition>,
    pub boot: Boot,
}

impl Layout {
    /// Reads the layout from a GPT of a disk image `len` bytes long;
    /// `name` names the image in messages.
    pub fn of(gpt: &GPT, len: u64, name: &str) -> Result<Layout> {
        let parts = partitions(gpt, len, name)?;
        let root = find_root(&parts, name)?.clone();
        let by_label = |label: &str| parts.iter().find(|p| p.label == label).cloned();
        let oem = by_label(OEM_LABEL);
        let esp = parts.iter().find(|p| p.type_guid == ESP_TYPE).cloned();
        let usr_a = by_label(USR_A_LABEL)
            .or_else(|| parts.iter().find(|p| p.type_guid == FLATCAR_USR).cloned());
        let dps_root = [DPS_ROOT_X86_64, DPS_ROOT_ARM64].contains(&root.type_guid.as_str());
        let bios = parts.iter().any(|p| p.type_guid == BIOS_BOOT);
        let boot = match dps_root || (!bios && root.type_guid == LINUX_DATA) {
            true => Boot::Uki,
            false => Boot::Grub,
        };
        Ok(Layout {
            root,
            oem,
            esp,
            usr_a,
            boot,
        })
    }

    /// Reads the GPT of `image` (refusing a damaged one before gptman
    /// reads it) and its layout.
    pub fn read(image: &std::path::Path) -> Result<Layout> {
        let mut f = std::fs::File::open(image)
            .with_context(|| format!("opening disk image {}", image.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading the size of {}", image.display()))?
            .len();
        let gpt = read_gpt(&mut f, &image.display().to_string())?;
        Layout::of(&gpt, len, &image.display().to_string())
    }
}

/// The GPT of a disk image, refused when damaged.
pub fn read_gpt<F: std::io::Read + std::io::Seek>(f: &mut F, name: &str) -> Result<GPT> {
    if let Some(why) =
        super::gpt_too_large(f).with_context(|| format!("reading the GPT of {name}"))?
    {
        bail!("{name}: {why}: not a Flatcar disk image");
    }
    GPT::find_from(f).with_context(|| {
        format!("{name} has no valid GPT partition table: not a Flatcar disk image")
    })
}

/// The used partitions of `gpt`, in number order, each checked to lie
/// within the image.
fn partitions(gpt: &GPT, len: u64, name: &str) -> Result<Vec<Partition>> {
    let sector = gpt.sector_size;
    let mut out = vec![];
    for (number, p) in gpt.iter().filter(|(_, p)| p.is_used()) {
        let offset = p
            .starting_lba
            .checked_mul(sector)
            .context("partition offset overflow")?;
        let size = (p.ending_lba + 1)
            .checked_sub(p.starting_lba)
            .and_then(|n| n.checked_mul(sector))
            .with_context(|| format!("partition {number} of {name} ends before it starts"))?;
        if offset.checked_add(size).is_none_or(|end| end > len) {
            bail!(
                "partition {number} ({:?}) of {name} ends at byte {} but the file has only {len} bytes: truncated image?",
                p.partition_name.as_str(),
                offset.saturating_add(size)
            );
        }
        out.push(Partition {
            number,
            offset,
            size,
            label: p.partition_name.as_str().to_string(),
            type_guid: guid_to_string(&p.partition_type_guid),
            uuid: guid_to_string(&p.unique_partition_guid).to_ascii_lowercase(),
        });
    }
    Ok(out)
}

/// ROOT: the partition labelled ROOT; else the one partition of a ROOT
/// type (flatcar-resize, or the Discoverable Partitions root type).
fn find_root<'a>(parts: &'a [Partition], name: &str) -> Result<&'a Partition> {
    let labelled: Vec<_> = parts.iter().filter(|p| p.label == ROOT_LABEL).collect();
    let typed: Vec<_> = parts
        .iter()
        .filter(|p| {
            [FLATCAR_RESIZE, DPS_ROOT_X86_64, DPS_ROOT_ARM64].contains(&p.type_guid.as_str())
        })
        .collect();
    let list = |ps: &[&Partition]| {
        ps.iter()
            .map(|p| format!("{} {:?} ({})", p.number, p.label, p.type_guid))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (&labelled[..], &typed[..]) {
        ([one], _) => Ok(one),
        ([], [one]) => Ok(one),
        ([], []) => {
            let all: Vec<_> = parts.iter().collect();
            bail!(
                "{name} has no ROOT partition (none labelled {ROOT_LABEL:?}, none of type \
                 flatcar-resize {FLATCAR_RESIZE} or the Discoverable Partitions root type); \
                 found: {}: not a Flatcar disk image (not Flatcar's ROOT)",
                match all.is_empty() {
                    true => "no partitions".to_string(),
                    false => list(&all),
                }
            )
        }
        ([], many) => bail!(
            "{name} has more than one partition of a ROOT type and none labelled {ROOT_LABEL:?}: {}",
            list(many)
        ),
        (many, _) => bail!(
            "{name} has more than one partition labelled {ROOT_LABEL:?}: {}",
            list(many)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, label: &str, type_guid: &str) -> Partition {
        Partition {
            number,
            offset: u64::from(number) << 20,
            size: 1 << 20,
            label: label.into(),
            type_guid: type_guid.into(),
            uuid: String::new(),
        }
    }

    #[test]
    fn root_by_label_then_type() {
        // The usual layout, the UKI one (p7 of the DPS type), the UKI
        // "container" variant (linux data, found by its label).
        let base = [
            part(1, "EFI-SYSTEM", ESP_TYPE),
            part(6, "OEM", LINUX_DATA),
            part(9, "ROOT", FLATCAR_RESIZE),
        ];
        assert_eq!(find_root(&base, "d").unwrap().number, 9);
        let uki = [
            part(1, "EFI-SYSTEM", ESP_TYPE),
            part(6, "OEM", LINUX_DATA),
            part(7, "ROOT", DPS_ROOT_X86_64),
        ];
        assert_eq!(find_root(&uki, "d").unwrap().number, 7);
        let container = [part(6, "OEM", LINUX_DATA), part(7, "ROOT", LINUX_DATA)];
        assert_eq!(find_root(&container, "d").unwrap().number, 7);
        // Renamed, but of Flatcar's type.
        let renamed = [part(6, "OEM", LINUX_DATA), part(9, "DATA", FLATCAR_RESIZE)];
        assert_eq!(find_root(&renamed, "d").unwrap().number, 9);
        // Neither: not Flatcar's.
        let err = find_root(&[part(9, "DATA", LINUX_DATA)], "d").unwrap_err();
        assert!(err.to_string().contains("no ROOT partition"), "{err}");
        let err = find_root(&[], "d").unwrap_err();
        assert!(err.to_string().contains("no partitions"), "{err}");
        let two = [part(7, "ROOT", LINUX_DATA), part(9, "ROOT", FLATCAR_RESIZE)];
        assert!(find_root(&two, "d").is_err());
    }
}
