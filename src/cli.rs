//! Command-line types (clap). The rest of the crate takes the plain config
//! structs these convert into.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::unpack::{Input, OutputMode, UnpackConfig};

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
    /// Write a tar archive into the ROOT partition (9) of a Flatcar disk
    /// image, keeping owners, modes, hard links, devices and xattrs.
    Unpack(UnpackArgs),
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
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
}

/// Where the result goes.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct OutputArgs {
    /// Write a sparse copy of the disk image here; the input is not touched.
    #[arg(short = 'o', long, value_name = "output")]
    pub output: Option<PathBuf>,
    /// Modify the disk image itself.
    #[arg(long)]
    pub in_place: bool,
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
    pub fn into_config(self) -> UnpackConfig {
        let archive = if self.archive.as_os_str() == "-" {
            Input::Stdin
        } else {
            Input::File(self.archive)
        };
        UnpackConfig {
            disk: self.disk,
            archive,
            target: self.target.as_os_str().as_bytes().to_vec(),
            output: self.output.mode(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
