//! Small pieces of file data gathered into shared blocks. Each piece keeps an extent of its own
//! that points into the pack, so 10,000 random 4 KiB writes become a few chunker-sized blocks
//! instead of 10,000 tiny objects (one PUT and one GET each on S3).

use super::{Core, FsResult};
use crate::domain::extent::Extent;
use crate::meta::pins::Pinned;

/// Pieces shorter than this are packed rather than stored as blocks of their own.
pub(crate) const PACK_BELOW: usize = 64 << 10;

#[derive(Default)]
pub(crate) struct Pack {
    buf: Vec<u8>,
    /// (file offset, offset in `buf`, length)
    pieces: Vec<(u64, usize, usize)>,
}

impl Pack {
    /// Adds the piece at file offset `offset`; once the pack reaches the chunker's target size
    /// it is stored and its pieces' extents are pushed to `out`.
    pub fn add(
        &mut self,
        core: &Core,
        offset: u64,
        data: &[u8],
        out: &mut Vec<Extent>,
        pins: &Pinned,
    ) -> FsResult<()> {
        self.pieces.push((offset, self.buf.len(), data.len()));
        self.buf.extend_from_slice(data);
        if self.buf.len() >= core.cfg.chunker.target_block() as usize {
            self.seal(core, out, pins)
        } else {
            Ok(())
        }
    }

    /// Stores what the pack holds as one block and pushes one extent per piece to `out`.
    /// The block is pinned in `pins` until the caller's commit.
    pub fn seal(&mut self, core: &Core, out: &mut Vec<Extent>, pins: &Pinned) -> FsResult<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let key = core.put_block(&self.buf, pins)?;
        out.extend(self.pieces.drain(..).map(|(offset, at, len)| Extent {
            offset,
            key,
            block_offset: at as u32,
            len: len as u32,
        }));
        self.buf.clear();
        Ok(())
    }
}
