//! A disk image written out as a dynamic VHD, for a sparse upload
//! (`/import_raw_vdi?format=vhd`): the blocks the image announces empty are
//! left out of the stream, the others go out whole, in order.

use xapi_proto::vhd::{BLOCK_BYTES, VhdLayout};

/// Takes a disk image's writes, in order, and sends them as VHD bytes
/// through `send`. Ranges the writer skips read as zeros.
pub struct VhdStream<S: FnMut(Vec<u8>) -> std::io::Result<()>> {
    layout: VhdLayout,
    allocated: Vec<bool>,
    size: u64,
    /// Disk offset the stream has been written through.
    next: u64,
    /// The allocated block being filled.
    block: Vec<u8>,
    send: S,
}

impl<S: FnMut(Vec<u8>) -> std::io::Result<()>> VhdStream<S> {
    /// A VHD of a `size`-byte disk whose `allocated` blocks (of
    /// [`BLOCK_BYTES`]) hold data; the head goes out at once.
    pub fn start(
        size: u64,
        allocated: Vec<bool>,
        uuid: &str,
        mut send: S,
    ) -> std::io::Result<Self> {
        let layout = VhdLayout::new(size, uuid, allocated.clone(), None);
        send(layout.head())?;
        Ok(Self {
            layout,
            allocated,
            size,
            next: 0,
            block: vec![0; BLOCK_BYTES as usize],
            send,
        })
    }

    /// Disk bytes written through so far.
    pub fn written(&self) -> u64 {
        self.next
    }

    /// Zeros through the end of the disk, then the footer.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.advance(self.size, None)?;
        let footer = self.layout.footer();
        (self.send)(footer)
    }

    /// Takes the disk through `to`: from `data` (exactly that long) or zeros.
    fn advance(&mut self, to: u64, data: Option<&[u8]>) -> std::io::Result<()> {
        let from = self.next;
        while self.next < to {
            let block = self.next / BLOCK_BYTES;
            let block_start = block * BLOCK_BYTES;
            let block_end = (block_start + BLOCK_BYTES).min(self.size);
            let end = to.min(block_end);
            let piece = data.map(|d| &d[(self.next - from) as usize..(end - from) as usize]);
            if self.allocated[block as usize] {
                if let Some(piece) = piece {
                    let at = (self.next - block_start) as usize;
                    self.block[at..at + piece.len()].copy_from_slice(piece);
                }
                if end == block_end {
                    (self.send)(self.layout.block_prefix())?;
                    (self.send)(self.block.clone())?;
                    self.block.fill(0);
                }
            } else if piece.is_some_and(|p| p.iter().any(|b| *b != 0)) {
                return Err(std::io::Error::other(format!(
                    "data at disk offset {} falls in block {block}, announced empty",
                    self.next
                )));
            }
            self.next = end;
        }
        Ok(())
    }
}

impl<S: FnMut(Vec<u8>) -> std::io::Result<()>> ads::DiskTarget for VhdStream<S> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if offset < self.next || offset + data.len() as u64 > self.size {
            return Err(std::io::Error::other(format!(
                "a VHD upload is written in order: {} bytes at {offset}, after {} of {}",
                data.len(),
                self.next,
                self.size
            )));
        }
        self.advance(offset, None)?;
        self.advance(offset + data.len() as u64, Some(data))
    }

    fn zeroed(&self) -> bool {
        true
    }
}

/// Bytes the VHD of a `size`-byte disk with `allocated` blocks takes on the wire.
pub fn wire_bytes(size: u64, allocated: &[bool]) -> u64 {
    VhdLayout::new(size, "", allocated.to_vec(), None).total_bytes()
}

/// The blocks (of [`BLOCK_BYTES`]) of a `size`-byte disk that any of
/// `ranges` (offset, length) touches.
pub fn blocks_touched(size: u64, ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<bool> {
    let mut allocated = vec![false; size.div_ceil(BLOCK_BYTES) as usize];
    for (offset, len) in ranges.into_iter().filter(|(_, len)| *len > 0) {
        let last = (offset + len - 1).min(size.saturating_sub(1)) / BLOCK_BYTES;
        for block in offset / BLOCK_BYTES..=last {
            allocated[block as usize] = true;
        }
    }
    allocated
}

#[cfg(test)]
mod tests {
    use super::*;
    use ads::DiskTarget;
    use xapi_proto::vhd::VhdReceiver;

    #[test]
    fn what_goes_out_reads_back_as_the_disk_and_leaves_empty_blocks_out() {
        let size = 3 * BLOCK_BYTES + 4096;
        let allocated = vec![true, false, true, true];
        let mut wire = Vec::new();
        let mut stream = VhdStream::start(size, allocated.clone(), "uuid", |piece: Vec<u8>| {
            wire.extend(piece);
            Ok(())
        })
        .unwrap();
        // A write, a skipped (zero) stretch inside block 0, block 1 never
        // written, block 2 written in two pieces, block 3 left to zeros.
        stream.write_at(0, &[7; 1000]).unwrap();
        stream.write_at(BLOCK_BYTES - 10, &[8; 10]).unwrap();
        stream.write_at(2 * BLOCK_BYTES, &[9; 512]).unwrap();
        stream.write_at(2 * BLOCK_BYTES + 512, &[10; 512]).unwrap();
        stream.finish().unwrap();
        assert_eq!(wire.len() as u64, wire_bytes(size, &allocated));

        let mut disk = vec![0xEEu8; size as usize];
        let mut receiver = VhdReceiver::new(size);
        receiver
            .feed(&wire, &mut |offset, data| {
                disk[offset as usize..offset as usize + data.len()].copy_from_slice(data);
                Ok(())
            })
            .unwrap();
        for (offset, len) in receiver.unallocated().unwrap() {
            disk[offset as usize..(offset + len) as usize].fill(0);
        }
        assert_eq!(receiver.finish().unwrap(), size);
        let mut expected = vec![0u8; size as usize];
        expected[..1000].fill(7);
        expected[(BLOCK_BYTES - 10) as usize..BLOCK_BYTES as usize].fill(8);
        let b2 = 2 * BLOCK_BYTES as usize;
        expected[b2..b2 + 512].fill(9);
        expected[b2 + 512..b2 + 1024].fill(10);
        assert!(disk == expected);
    }

    #[test]
    fn data_in_a_block_announced_empty_or_out_of_order_is_refused() {
        let size = 2 * BLOCK_BYTES;
        let sink = |_: Vec<u8>| Ok(());
        let mut stream = VhdStream::start(size, vec![true, false], "uuid", sink).unwrap();
        let wrong = stream.write_at(BLOCK_BYTES, &[1; 10]).unwrap_err();
        assert!(wrong.to_string().contains("announced empty"), "{wrong}");
        // Zeros there are fine: they are what the block holds.
        let mut stream = VhdStream::start(size, vec![true, false], "uuid", sink).unwrap();
        stream.write_at(BLOCK_BYTES, &[0; 10]).unwrap();
        let back = stream.write_at(0, &[1; 10]).unwrap_err();
        assert!(back.to_string().contains("in order"), "{back}");
    }

    #[test]
    fn the_blocks_a_range_touches_are_allocated() {
        let size = 4 * BLOCK_BYTES;
        let touched = blocks_touched(size, [(BLOCK_BYTES - 1, 2), (3 * BLOCK_BYTES, 0)]);
        assert_eq!(touched, vec![true, true, false, false]);
    }
}
