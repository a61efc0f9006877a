//! flatcar-preload: writes files (and, later, Docker's image store) into
//! the ROOT partition of a Flatcar Container Linux disk image, without
//! booting it, without root and without mounting anything.

pub mod cli;
pub mod disk;
pub mod ext4;
pub mod progress;
pub mod unpack;
