//! Command-line types (clap). The rest of the crate takes the plain config
//! structs these convert into.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use anyhow::{bail, Context, Result};

use crate::disk::{parse_size, Grow};
use crate::docker::{DindNetwork, RegistryOptions};
use crate::platform::Platform;
use crate::populate::lock::LockMode;
use crate::populate::{EngineChoice, PopulateConfig, StoreChoice, StoreImages};
use crate::protocol::ContainerdVersion;
use crate::protocol::StoreOptions;
use crate::source::{self, Listed, Source};
use crate::store::{ContainerdRecords as Records, StoreKind};
use crate::unpack::{Input, OutputMode, Space, UnpackConfig};

/// Bake files and container images into a Flatcar Container Linux disk
/// image before it ever boots.
#[derive(Debug, Parser)]
#[command(name = "flatcar-preload", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a tar archive into the ROOT partition of a Flatcar disk
    /// image, keeping owners, modes, hard links, devices and xattrs.
    Unpack(Box<UnpackArgs>),
    /// Pull container images in a docker:dind container and write its
    /// image store into ROOT (/var/lib/docker), ready for Docker at first
    /// boot.
    Populate(Box<PopulateArgs>),
    /// List the images a Flatcar disk image carries in ROOT (Docker's
    /// store and containerd's), offline and without root: names, IDs,
    /// platforms, sizes, and ROOT's free space.
    Inspect(CheckArgs),
    /// Prove that ROOT holds every byte of every image layer: image IDs,
    /// chain IDs, overlay2 links, each layer's tar stream rebuilt from
    /// tar-split against its diff ID, overlay xattrs and whiteouts, names.
    /// Exit status 0 only when all of it holds; each failure names the
    /// image, the layer and the path.
    Verify(VerifyArgs),
    /// See and remove the image caches of `populate --cache` (Docker volumes
    /// of the engine).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// (internal) What the tool runs inside its build container (see
    /// `protocol`).
    #[command(hide = true)]
    Internal(InternalArgs),
}

/// `internal`: one request of the tool to its helper.
#[derive(Debug, Args)]
pub struct InternalArgs {
    /// The request, as `protocol::Request::argv` writes it (JSON).
    #[arg(value_parser = crate::protocol::Request::parse, allow_hyphen_values = true)]
    pub request: crate::protocol::Request,
}

/// `inspect` and `verify`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The Flatcar disk image (raw, compressed, qcow2 or vmdk); read only.
    #[arg(value_name = "disk")]
    pub disk: PathBuf,
    /// Print a machine-readable report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub check: CheckArgs,
    /// Also fail on whatever would need a network at first boot: Ignition
    /// configs with remote sources, an opt-in Flatcar extension listed but
    /// not baked, and an image that was booted.
    #[arg(long)]
    pub air_gapped: bool,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the caches: name, when made, whether a run is using it, volume.
    Ls,
    /// Remove caches (their volumes); refused while a run is using one.
    Rm {
        #[arg(required = true, value_name = "name")]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct PopulateArgs {
    #[command(flatten)]
    pub selinux: SelinuxArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    /// The Flatcar disk image (raw, e.g. flatcar_production_image.bin).
    #[arg(value_name = "disk")]
    pub disk: PathBuf,
    /// Images, in addition to --list: registry references (nginx,
    /// nginx:1.27, ghcr.io/o/r:tag, name@sha256:..., name:tag@sha256:...,
    /// docker://REF), image archives (docker-archive:PATH[:NAME], a `docker
    /// save` tar, compressed or not; oci-archive:PATH[:NAME] and
    /// oci:DIR[:NAME], an OCI image layout as a tar or a directory; NAME is
    /// the name the image gets, default the names the archive carries), or
    /// docker-daemon:REF, an image of the Docker engine the tool uses.
    #[arg(value_name = "image")]
    pub images: Vec<String>,
    /// A file with one image per line, written as the image arguments
    /// (# comments; relative archive paths are taken from the list's
    /// directory). Default: images.list in the current directory when no
    /// image is given.
    #[arg(short = 'l', long = "list", value_name = "list")]
    pub list: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub space: SpaceArgs,
    /// How the images come in: `dind`, a Docker engine's build container
    /// whose daemon pulls them (Docker's and containerd's stores, every
    /// source); `direct`, the tool's own registry client writing Docker's
    /// store straight into ROOT, with no Docker, no root and no privileged
    /// container (registry images for Docker's store only, so far).
    #[arg(long, value_name = "engine", value_enum, default_value_t = EngineArg::Dind)]
    pub engine: EngineArg,
    /// With --engine direct: the blob cache, an OCI image layout holding
    /// every layer fetched, kept between runs and safe for runs at once
    /// (default: $XDG_CACHE_HOME/flatcar-preload/blobs, ~/.cache/...).
    #[arg(long, value_name = "dir")]
    pub blob_cache: Option<PathBuf>,
    /// The dind image that pulls (its dockerd runs with overlay2).
    #[arg(long, value_name = "image", default_value = "docker:28-dind")]
    pub dind_image: String,
    /// Network of the dind container: bridge, host, none, container:NAME
    /// or a network name. In host mode the inner daemon gets no
    /// NET_ADMIN and touches no interface or firewall.
    #[arg(long, value_name = "mode", default_value = "bridge")]
    pub dind_network: DindNetwork,
    /// Run the dind privileged (default: only CAP_SYS_ADMIN and
    /// apparmor=unconfined, which is enough to pull).
    #[arg(long)]
    pub privileged: bool,
    /// Add to a /var/lib/docker (and /var/lib/containerd) already in ROOT
    /// instead of refusing.
    #[arg(long)]
    pub merge: bool,
    /// A containerd root (directory or tar) to write to /var/lib/containerd
    /// as it is (see --containerd-image to have the tool make one).
    #[arg(long, value_name = "src")]
    pub containerd: Option<PathBuf>,
    #[command(flatten)]
    pub containerd_store: ContainerdArgs,
    /// Keep the dind containers and volumes (their names are printed).
    #[arg(long)]
    pub keep_dind: bool,
    /// A label (KEY=VALUE, or KEY for an empty value) on the containers
    /// and volumes this run makes, besides its own
    /// org.flatcar-preload.run=ID (e.g. to find or remove a CI job's with
    /// `docker ps --filter label=KEY`). Repeatable.
    #[arg(long = "label", value_name = "key=value", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Where the inner daemon keeps its store while pulling: `memory` (a
    /// tmpfs of the dind container, the fastest), `disk` (a Docker volume)
    /// or `auto` (memory when the engine's machine has enough memory to
    /// spare). A store that outgrows the memory cap is pulled again on
    /// disk, saying so.
    #[arg(long, value_name = "where", value_enum, default_value_t = StoreArg::Auto)]
    pub store: StoreArg,
    /// The most memory the in-memory store may take (default: half of the
    /// engine's memory, and no more than this machine has available less
    /// 1 GiB when the engine runs here).
    #[arg(long, value_name = "size", value_parser = parse_size_arg)]
    pub store_memory_cap: Option<u64>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Keep the pulling daemon's store between runs in the Docker volume
    /// of this cache (made when missing): a later run with the same cache
    /// downloads only the layers it does not have. The store is then on
    /// disk, whatever --store says. Images of the cache that are not in
    /// this run's list are not written into DISK (containerd's store is
    /// written whole: they leave its cache). One run at a time per cache.
    /// See `flatcar-preload cache ls|rm`.
    #[arg(long, value_name = "name", value_parser = parse_cache_name)]
    pub cache: Option<String>,
    /// With --cache: remove the images of the cache that are not in this
    /// run's list from it.
    #[arg(long, requires = "cache")]
    pub cache_prune: bool,
    /// The platform of the images (os/arch[/variant], e.g. linux/arm64):
    /// a multi-platform image is pulled for it, a single-platform image of
    /// another platform is refused. Default: the platform of DISK, from the
    /// EFI loader on its EFI system partition (bootx64.efi: linux/amd64,
    /// bootaa64.efi: linux/arm64); when that cannot be read, the Docker
    /// engine's platform, with a warning.
    #[arg(long, value_name = "os/arch")]
    pub platform: Option<Platform>,
    /// Preload a single-platform image even when it is not for the target
    /// platform (with a warning).
    #[arg(long)]
    pub allow_platform_mismatch: bool,
    /// Do not verify what was written (by default the run ends with
    /// `verify` of ROOT, and a failure leaves no output).
    #[arg(long)]
    pub no_verify: bool,
    /// Fail the pull of an image that makes no progress for this long (a
    /// registry that stalls): seconds, or with a unit (90s, 5m, 1h); 0
    /// waits forever.
    #[arg(long, value_name = "duration", default_value = "5m", value_parser = parse_duration)]
    pub pull_timeout: std::time::Duration,
    /// Images pulled at the same time (the inner daemon also downloads
    /// this many layers at once).
    #[arg(long, value_name = "n", default_value_t = 6)]
    pub jobs: usize,
    /// Print a machine-readable summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Give the sha256 of the written disk image in the summary (and
    /// --json's `output_sha256`), as `sha256sum` prints it. It reads the
    /// whole image once more, holes included (about 1 s per GB): libext2fs
    /// writes blocks where they belong, out of order, so it cannot be
    /// hashed while written.
    #[arg(long)]
    pub sha256: bool,
    /// Write what each image resolved to (its source, the digest its tag
    /// named, platform, image ID) to this JSON file after the run; with
    /// --locked, read it instead.
    #[arg(long, value_name = "file")]
    pub lock: Option<PathBuf>,
    /// Pull exactly the digests of the --lock file (as cargo's --locked):
    /// a tag that moved since is named, not followed, and a line the lock
    /// lacks is refused, before anything is pulled.
    #[arg(long, requires = "lock")]
    pub locked: bool,
}

/// The rest of the node's image: OEM (Ignition, kernel arguments), the EFI
/// system partition, files, units and system extensions in ROOT.
#[derive(Debug, Args)]
#[command(next_help_heading = "The node's image beside the stores")]
pub struct NodeArgs {
    /// An Ignition config (JSON, spec 3.0-3.5 or 2.x) written to OEM as
    /// /config.ign: the config Flatcar's Ignition prefers, even over
    /// userdata. Checked first: a Butane YAML is refused (run butane), and
    /// so is a config that would wipe ROOT.
    #[arg(long, value_name = "file")]
    pub ignition: Option<PathBuf>,
    /// An Ignition config written to OEM as /base/base.ign (always applied).
    #[arg(long, value_name = "file")]
    pub ignition_base: Option<PathBuf>,
    /// An Ignition config written to OEM as /base/default.ign.
    #[arg(long, value_name = "file")]
    pub ignition_default: Option<PathBuf>,
    /// A kernel argument appended to linux_append in OEM's grub.cfg (the
    /// lines there are kept). Repeatable. Refused on a UKI layout.
    #[arg(long = "kernel-arg", value_name = "arg")]
    pub kernel_args: Vec<String>,
    /// A file or directory (SRC:DEST) written to OEM (btrfs; its content,
    /// label and UUID are kept). Repeatable.
    #[arg(long = "oem-file", value_name = "src:dest", value_parser = parse_file_arg)]
    pub oem_files: Vec<crate::node::FileArg>,
    /// A file or directory (SRC:DEST) written to the EFI system partition
    /// (vfat), e.g. firmware. Repeatable.
    #[arg(long = "esp-file", value_name = "src:dest", value_parser = parse_file_arg)]
    pub esp_files: Vec<crate::node::FileArg>,
    /// A file or directory (SRC:DEST; a directory's content goes under
    /// DEST) written to ROOT, owner root, modes kept. Repeatable.
    #[arg(long = "root-file", value_name = "src:dest", value_parser = parse_file_arg)]
    pub root_files: Vec<crate::node::FileArg>,
    /// A systemd unit enabled as `systemctl enable` would (the links its
    /// [Install] section names). Its file comes with --root-file or is in
    /// ROOT's /etc/systemd/system. Repeatable.
    #[arg(long = "enable-unit", value_name = "unit")]
    pub enable_units: Vec<String>,
    /// A system extension (sysext-bakery's NAME-VERSION-ARCH.raw) placed at
    /// /opt/extensions/NAME/ and linked from /etc/extensions/NAME.raw; its
    /// extension-release must fit the image. Repeatable.
    #[arg(long = "sysext", value_name = "file.raw[:name]", value_parser = parse_sysext_arg)]
    pub sysexts: Vec<crate::node::SysextArg>,
    /// One of Flatcar's own opt-in extensions (flatcar-NAME.raw of the very
    /// release of the image), placed at /etc/flatcar/sysext/ and listed in
    /// /etc/flatcar/enabled-sysext.conf, so first boot downloads nothing.
    /// Repeatable.
    #[arg(long = "flatcar-sysext", value_name = "file.raw")]
    pub flatcar_sysexts: Vec<PathBuf>,
    /// Bake into an image that was booted before (machine-id, SSH host
    /// keys, first-boot flag gone), with a warning.
    #[arg(long, conflicts_with = "reset_first_boot")]
    pub allow_booted: bool,
    /// Undo what a boot left: remove /etc/machine-id and the SSH host keys
    /// from ROOT, put the first-boot flag back on the ESP.
    #[arg(long)]
    pub reset_first_boot: bool,
}

fn parse_file_arg(s: &str) -> Result<crate::node::FileArg, String> {
    crate::node::FileArg::parse(s)
}

fn parse_sysext_arg(s: &str) -> Result<crate::node::SysextArg, String> {
    crate::node::SysextArg::parse(s)
}

impl NodeArgs {
    pub(crate) fn config(self) -> crate::node::Config {
        let ignition = [
            ("/config.ign", self.ignition, "--ignition"),
            ("/base/base.ign", self.ignition_base, "--ignition-base"),
            (
                "/base/default.ign",
                self.ignition_default,
                "--ignition-default",
            ),
        ]
        .into_iter()
        .filter_map(|(dest, p, flag)| p.map(|p| (dest, p, flag)))
        .collect();
        crate::node::Config {
            ignition,
            kernel_args: self.kernel_args,
            oem_files: self.oem_files,
            esp_files: self.esp_files,
            root_files: self.root_files,
            enable_units: self.enable_units,
            sysexts: self.sysexts,
            flatcar_sysexts: self.flatcar_sysexts,
            booted: match (self.allow_booted, self.reset_first_boot) {
                (_, true) => crate::node::Booted::Reset,
                (true, _) => crate::node::Booted::Allow,
                _ => crate::node::Booted::Refuse,
            },
        }
    }
}

/// SELinux labels of what is written.
#[derive(Debug, Args)]
#[command(next_help_heading = "SELinux")]
pub struct SelinuxArgs {
    /// Label every inode written (`security.selinux`) as setfiles with
    /// Flatcar's policy would. auto (the default) labels: every Flatcar
    /// image ships the policy and does not relabel at first boot.
    #[arg(long, value_name = "mode", value_enum, default_value = "auto")]
    pub selinux: crate::selinux::Mode,
    /// A file_contexts (as setfiles takes it) for the paths the built-in
    /// rules (Docker's and containerd's stores) do not cover; where both
    /// match, it wins.
    #[arg(long, value_name = "file")]
    pub selinux_file_contexts: Option<PathBuf>,
}

impl SelinuxArgs {
    fn config(self) -> Result<crate::selinux::Config> {
        crate::selinux::Config::new(self.selinux, self.selinux_file_contexts)
    }
}

/// Private registries: how the pull finds credentials, certificates and
/// mirrors. Nothing of it is written into the disk image.
#[derive(Debug, Args)]
#[command(next_help_heading = "Registries")]
pub struct RegistryArgs {
    /// The docker client configuration with the registry credentials
    /// (`auths`, `credsStore`, `credHelpers`, read as the docker CLI reads
    /// them; credential helpers `docker-credential-NAME` are run from
    /// PATH). Default: $DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json. Credentials reach the pull over a private
    /// pipe: they are not written anywhere, and do not show in `docker
    /// inspect`.
    #[arg(long, value_name = "file")]
    pub registry_config: Option<PathBuf>,
    /// Registry certificates laid out as /etc/docker/certs.d (the default):
    /// HOST[:PORT]/ca.crt (a CA to trust), client.cert and client.key (a
    /// client certificate). The directories of the registries and mirrors
    /// this run pulls from are given to the pulling daemon.
    #[arg(long, value_name = "dir")]
    pub registry_certs: Option<PathBuf>,
    /// A registry to reach over plain HTTP or with an unverified
    /// certificate (HOST[:PORT] or a CIDR), as dockerd's
    /// --insecure-registry. May be repeated.
    #[arg(long = "insecure-registry", value_name = "host[:port]")]
    pub insecure_registries: Vec<String>,
    /// A mirror of Docker Hub (http(s)://HOST[:PORT]), as dockerd's
    /// --registry-mirror. May be repeated.
    #[arg(long = "registry-mirror", value_name = "url")]
    pub registry_mirrors: Vec<String>,
}

/// Images for containerd's store (/var/lib/containerd), as a Kubernetes
/// node's kubelet (namespace k8s.io) or Docker 29's containerd image store
/// (namespace moby) reads it.
#[derive(Debug, Args)]
pub struct ContainerdArgs {
    /// An image for containerd's store, in any form the image arguments
    /// take. May be repeated. With this or --containerd-list and no Docker
    /// image (argument or --list), no Docker store is written.
    #[arg(long = "containerd-image", value_name = "image")]
    pub containerd_images: Vec<String>,
    /// A file of images for containerd's store, written as images.list.
    #[arg(long = "containerd-list", value_name = "list")]
    pub containerd_list: Option<PathBuf>,
    /// The containerd namespace the images go to: k8s.io for the kubelet
    /// (left as a CRI pull leaves them), moby for Docker 29's containerd
    /// image store (as Docker's pull does: no CRI records or labels, no
    /// sandbox image).
    #[arg(
        long = "containerd-namespace",
        value_name = "name",
        default_value = "k8s.io"
    )]
    pub containerd_namespace: String,
    /// Do not pin the images (io.cri-containerd.pinned=pinned keeps the
    /// kubelet's image garbage collection off them). Not for moby.
    #[arg(long)]
    pub no_pin: bool,
    /// The sandbox (pause) image, baked and pinned under this name so that
    /// a pod's first start needs no registry; `none` to leave it out.
    /// Default: the target containerd's own (registry.k8s.io/pause:3.8 for
    /// 1.7, 3.10 for 2.1, 3.10.1 for 2.2); none for namespace moby.
    #[arg(long, value_name = "ref")]
    pub sandbox_image: Option<String>,
    /// The target's containerd: 1.7 (Flatcar LTS), 2.1 (stable), 2.2 (beta,
    /// alpha). A build containerd whose store it cannot read is refused.
    #[arg(long = "containerd-version", value_name = "version", value_enum, default_value_t = ContainerdVersion::V2_1)]
    pub containerd_version: ContainerdVersion,
    /// The image whose containerd (and ctr) writes containerd's store
    /// (default: --dind-image).
    #[arg(long = "containerd-build-image", value_name = "image")]
    pub containerd_build_image: Option<String>,
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    #[command(flatten)]
    pub selinux: SelinuxArgs,
    #[command(flatten)]
    pub node: NodeArgs,
    /// The Flatcar disk image (raw, e.g. flatcar_production_image.bin).
    #[arg(value_name = "disk")]
    pub disk: PathBuf,
    /// A tar or gzip-compressed tar archive; `-` reads standard input.
    #[arg(value_name = "archive")]
    pub archive: PathBuf,
    /// Absolute directory inside ROOT to unpack under (created if missing).
    #[arg(long, value_name = "dir", default_value = "/")]
    pub target: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub space: SpaceArgs,
}

/// Where the result goes.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct OutputArgs {
    /// Write a new image here (a sparse copy of DISK; a compressed DISK is
    /// decompressed, a qcow2/vmdk one converted); DISK is not touched.
    #[arg(short = 'o', long, value_name = "output")]
    pub output: Option<PathBuf>,
    /// Modify the disk image itself (raw images only).
    #[arg(long)]
    pub in_place: bool,
}

/// Making room in ROOT.
#[derive(Debug, Args)]
pub struct SpaceArgs {
    /// When the data does not fit in ROOT: `auto` grows the image, partition
    /// 9 and the filesystem as needed (plus headroom), `no` fails saying how
    /// much is missing, `16G` sets the final disk size, `+4G` adds to it.
    #[arg(long, value_name = "mode", default_value = "auto")]
    pub grow: Grow,
    /// Free space to leave after growing (default: 10% of the data, at
    /// least 256M).
    #[arg(long, value_name = "size", value_parser = parse_size_arg)]
    pub headroom: Option<u64>,
    /// Format of OUTPUT for qcow2/vmdk input.
    #[arg(long, value_name = "format", value_enum, default_value_t = OutputFormat::Same)]
    pub output_format: OutputFormat,
    /// Write into a ROOT that an interrupted run left unfinished (it has
    /// /.flatcar-preload-unfinished); what that run wrote stays, and a
    /// successful run removes the mark.
    #[arg(long)]
    pub force: bool,
}

/// How the images come in (--engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// A build container's daemon pulls, the tool exports its store.
    Dind,
    /// The tool's own registry client, no daemon.
    Direct,
}

/// Where the inner daemon's store lives while pulling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreArg {
    /// Memory when it can be spared, else disk.
    Auto,
    /// A tmpfs (falls back to disk when the images outgrow the cap).
    Memory,
    /// A Docker volume.
    Disk,
}

/// The format of OUTPUT when DISK is a qcow2 or vmdk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The format of DISK.
    Same,
    /// A raw image.
    Raw,
}

/// A cache name: what a Docker volume name may hold.
fn parse_cache_name(s: &str) -> Result<String, String> {
    let ok = s.len() <= 64
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(format!(
            "{s:?}: a cache name is letters, digits, '_', '.' and '-' (at most 64, starting with a letter or digit)"
        ));
    }
    Ok(s.to_string())
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (key, value) = s.split_once('=').unwrap_or((s, ""));
    if key.is_empty() || key.chars().any(char::is_whitespace) {
        return Err(format!(
            "{s:?}: a label is KEY=VALUE (or KEY), with a key and no blank in it"
        ));
    }
    if key.starts_with("org.flatcar-preload.") {
        return Err(format!(
            "{s:?}: labels org.flatcar-preload.* are the tool's own"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if scale > 0 => Ok(std::time::Duration::from_secs(n.saturating_mul(scale))),
        _ => Err(format!(
            "{s:?}: a duration is a number of seconds, or of minutes or hours with m or h (90s, 5m, 1h)"
        )),
    }
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| format!("{e:#}"))
}

impl SpaceArgs {
    fn config(&self) -> Space {
        Space {
            grow: self.grow,
            headroom: self.headroom,
            raw_output: self.output_format == OutputFormat::Raw,
            force: self.force,
        }
    }
}

impl OutputArgs {
    fn mode(self) -> OutputMode {
        match self.output {
            Some(p) => OutputMode::Copy(p),
            None => OutputMode::InPlace,
        }
    }
}

impl UnpackArgs {
    pub(crate) fn into_config(self) -> Result<UnpackConfig> {
        let archive = if self.archive.as_os_str() == "-" {
            Input::Stdin
        } else {
            Input::File(self.archive)
        };
        Ok(UnpackConfig {
            selinux: self.selinux.config()?,
            disk: self.disk,
            archive,
            target: self.target.as_os_str().as_bytes().to_vec(),
            space: self.space.config(),
            output: self.output.mode(),
            node: self.node.config(),
        })
    }
}

impl PopulateArgs {
    pub(crate) fn into_config(self) -> Result<PopulateConfig> {
        let mut images = vec![];
        for s in &self.images {
            let origin = format!("argument {s:?}");
            let source = Source::parse(s, Path::new("")).with_context(|| origin.clone())?;
            images.push(Listed { source, origin });
        }
        let ctrd = &self.containerd_store;
        let for_containerd = !ctrd.containerd_images.is_empty() || ctrd.containerd_list.is_some();
        let list = match (&self.list, images.is_empty() && !for_containerd) {
            (Some(l), _) => Some(l.clone()),
            (None, true) => Some(PathBuf::from("images.list")),
            (None, false) => None,
        };
        if let Some(l) = list {
            images.extend(source::read_list(&l)?);
        }
        let (containerd_images, store_options, containerd_build_image) =
            self.containerd_store.into_config()?;
        let lock = match (self.lock, self.locked) {
            (None, _) => None,
            (Some(p), false) => Some(LockMode::Write(p)),
            (Some(p), true) => Some(LockMode::Locked(p)),
        };
        if let Some(LockMode::Write(path)) = &lock {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if dir.is_some_and(|d| !d.is_dir()) {
                bail!(
                    "--lock {}: its directory does not exist (the lock file is written there after the run)",
                    path.display()
                );
            }
        }
        let pinned = match &lock {
            Some(LockMode::Locked(path)) => {
                if !containerd_images.is_empty() {
                    bail!("--locked pins the images of Docker's store; it cannot be given with --containerd-image or --containerd-list yet");
                }
                let file = crate::populate::lock::read(path)?;
                crate::populate::lock::pin(&mut images, &file, path)?
            }
            _ => Default::default(),
        };
        if !containerd_images.is_empty() && self.containerd.is_some() {
            bail!("--containerd copies a containerd root as it is: it cannot be given with --containerd-image or --containerd-list, which make one");
        }
        if self.privileged && self.dind_network == DindNetwork::Host {
            bail!("--privileged with --dind-network host would let the inner daemon change the host's network; use one of them");
        }
        let containerd_build_image = containerd_build_image.unwrap_or(self.dind_image.clone());
        let stores = [
            (StoreKind::Docker, images, self.dind_image),
            (
                StoreKind::Containerd,
                containerd_images,
                containerd_build_image,
            ),
        ]
        .into_iter()
        .filter(|(_, lines, _)| !lines.is_empty())
        .map(|(kind, lines, build_image)| StoreImages {
            backend: crate::store::backend(kind),
            lines,
            build_image,
        })
        .collect();
        Ok(PopulateConfig {
            node: self.node.config(),
            disk: self.disk,
            stores,
            space: self.space.config(),
            output: self.output.mode(),
            dind_network: self.dind_network,
            privileged: self.privileged,
            merge: self.merge,
            containerd: self.containerd,
            store_options,
            keep_dind: self.keep_dind,
            labels: self.labels,
            store: match self.store {
                StoreArg::Auto => StoreChoice::Auto,
                StoreArg::Memory => StoreChoice::Memory,
                StoreArg::Disk => StoreChoice::Disk,
            },
            store_memory_cap: self.store_memory_cap,
            jobs: self.jobs.max(1),
            pull_timeout: self.pull_timeout,
            registry: RegistryOptions::new(
                self.registry.registry_config,
                self.registry.registry_certs,
                self.registry.insecure_registries,
                self.registry.registry_mirrors,
            )?,
            platform: self.platform,
            allow_platform_mismatch: self.allow_platform_mismatch,
            cache: self.cache,
            cache_prune: self.cache_prune,
            engine: match self.engine {
                EngineArg::Dind => EngineChoice::Dind,
                EngineArg::Direct => EngineChoice::Direct,
            },
            blob_cache: self.blob_cache,
            verify: !self.no_verify,
            sha256: self.sha256,
            selinux: self.selinux.config()?,
            lock,
            pinned,
        })
    }
}

impl ContainerdArgs {
    /// The images for containerd (the sandbox image last, unless listed or
    /// `none`) and the options; no images when none is asked for.
    /// Also the build container's image for containerd's store, if given.
    fn into_config(self) -> Result<(Vec<Listed>, StoreOptions, Option<String>)> {
        let mut images = vec![];
        for s in &self.containerd_images {
            let origin = format!("--containerd-image {s:?}");
            let source = Source::parse(s, Path::new("")).with_context(|| origin.clone())?;
            images.push(Listed { source, origin });
        }
        if let Some(l) = &self.containerd_list {
            images.extend(source::read_list(l)?);
        }
        if !is_namespace(&self.containerd_namespace) {
            bail!(
                "--containerd-namespace {:?}: a containerd namespace is letters and digits, joined by single '.', '_' or '-'",
                self.containerd_namespace
            );
        }
        let records = Records::of(&self.containerd_namespace);
        if records == Records::Docker && self.no_pin {
            bail!(
                "--no-pin: Docker's images in namespace {} carry no CRI labels, pinned or not",
                self.containerd_namespace
            );
        }
        let sandbox = match self.sandbox_image.as_deref() {
            Some("none") => None,
            Some(r) => Some((r.to_string(), format!("--sandbox-image {r:?}"))),
            None if records == Records::Docker => None,
            None => Some((
                crate::store::sandbox_image(self.containerd_version).to_string(),
                format!(
                    "the sandbox image of containerd {} (--sandbox-image)",
                    self.containerd_version
                ),
            )),
        };
        if let (Some((r, origin)), false) = (sandbox, images.is_empty()) {
            let parsed = source::ImageRef::parse(&r).with_context(|| origin.clone())?;
            let listed = images.iter().any(|l| {
                l.source
                    .registry_ref()
                    .is_some_and(|x| x.normalized() == parsed.normalized())
            });
            if !listed {
                images.push(Listed {
                    source: Source::Registry(parsed),
                    origin,
                });
            }
        }
        let options = StoreOptions {
            namespace: self.containerd_namespace,
            pin: !self.no_pin,
            containerd_version: self.containerd_version,
        };
        Ok((images, options, self.containerd_build_image))
    }
}

/// containerd's namespace names (identifiers.Validate):
/// `[A-Za-z0-9]+([._-][A-Za-z0-9]+)*`, at most 76 characters.
fn is_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 76
        && s.split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn containerd_namespaces() {
        for ok in ["k8s.io", "moby", "default", "a-b_c.d9"] {
            assert!(is_namespace(ok), "{ok}");
        }
        for bad in ["", "k8s..io", "-a", "a/b", "a b", ".x"] {
            assert!(!is_namespace(bad), "{bad}");
        }
    }

    /// What `populate ARGS`'s containerd options give: the images' origins
    /// and the namespace.
    fn containerd(args: &[&str]) -> Result<(Vec<String>, String)> {
        let cli = Cli::try_parse_from(
            ["flatcar-preload", "populate", "d.bin", "-o", "o.bin"]
                .iter()
                .chain(args),
        )?;
        let Command::Populate(p) = cli.command else {
            unreachable!()
        };
        let (images, opts, _) = p.containerd_store.into_config()?;
        Ok((
            images.into_iter().map(|l| l.origin).collect(),
            opts.namespace,
        ))
    }

    #[test]
    fn sandbox_image_by_namespace_and_version() {
        let (images, ns) = containerd(&["--containerd-image", "a:1"]).unwrap();
        assert_eq!(ns, "k8s.io");
        assert_eq!(
            images[1],
            "the sandbox image of containerd 2.1 (--sandbox-image)"
        );
        let (images, _) =
            containerd(&["--containerd-image", "a:1", "--sandbox-image", "none"]).unwrap();
        assert_eq!(images.len(), 1);
        // Docker's namespace: Docker's pull, no sandbox, nothing to pin.
        let moby = [
            "--containerd-image",
            "a:1",
            "--containerd-namespace",
            "moby",
        ];
        let (images, ns) = containerd(&moby).unwrap();
        assert_eq!((images.len(), ns.as_str()), (1, "moby"));
        let err = containerd(&[&moby[..], &["--no-pin"]].concat()).unwrap_err();
        assert!(err.to_string().contains("no CRI labels"), "{err}");
        // No image, no sandbox image either.
        assert!(containerd(&[]).unwrap().0.is_empty());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unpack_needs_an_output_choice() {
        let err = Cli::try_parse_from(["flatcar-preload", "unpack", "d.bin", "a.tar"]).unwrap_err();
        assert!(err.to_string().contains("--output"), "{err}");
        assert!(Cli::try_parse_from([
            "flatcar-preload",
            "unpack",
            "d.bin",
            "a.tar",
            "-o",
            "x",
            "--in-place"
        ])
        .is_err());
    }
}
