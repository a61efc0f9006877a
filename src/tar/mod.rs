//! Tar streams: the strict reader (PAX records framed by their length, GNU
//! long names, global headers, GNU sparse files) that every tar the tool takes in goes
//! through, and the PAX writer of the tars it makes.

mod read;
mod write;

pub use read::{go_int, go_numeric, go_octal, Archive, Entry, EntryType, Meta};
pub use write::{Attrs, Device, Writer};
