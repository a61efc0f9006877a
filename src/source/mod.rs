//! What to preload: image references, where each image comes from (a
//! registry, an archive, the engine) as images.list and the arguments give
//! it, and the image archives read from files. Nothing here talks to
//! Docker: `docker` and `populate` take what this module parses.

pub mod archive;
pub mod list;
pub mod refs;

pub use list::{read_list, Listed, Source};
pub use refs::ImageRef;
