//! Pure domain types: block keys, chunkers, extent maps and range sets. No I/O here.

pub mod chunker;
pub mod extent;
pub mod frames;
pub mod groups;
pub mod key;
pub mod ranges;

pub use chunker::{Chunker, DEFAULT_CHUNKER};
pub use extent::Extent;
pub use key::{BlockKey, HashAlgo};
pub use ranges::RangeSet;
