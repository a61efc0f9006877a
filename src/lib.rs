//! flatcar-preload: writes files (and, later, Docker's image store) into
//! the ROOT partition of a Flatcar Container Linux disk image, without
//! booting it, without root and without mounting anything.

pub mod cli;
pub mod disk;
pub mod docker;
pub mod ext4;
pub mod populate;
pub mod progress;
pub mod store;
pub mod unpack;
