//! Reading a dynamic VHD as it streams in, as `PUT /import_raw_vdi?format=vhd`
//! receives one: footer copy, dynamic header, allocation table, then the
//! allocated blocks in the order they lie in the stream. Each block's present
//! sectors are handed out as writes at their disk offsets; blocks the table
//! leaves out are zeros, and are left to the caller.

use super::{FOOTER_BYTES, HEADER_BYTES, SECTOR, UNALLOCATED, checksum};

/// Takes a block's present data at its disk offset.
pub type WriteAt<'a> = dyn FnMut(u64, &[u8]) -> Result<(), String> + 'a;

/// Most bytes taken after the last block: the footer, and some slack.
const MAX_TRAILER_BYTES: u64 = 1 << 20;

/// Largest block a VHD may declare here (the spec's default is 2 MiB).
const MAX_BLOCK_BYTES: u64 = 64 << 20;

/// Why a VHD stream was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VhdError {
    /// A structure does not read as the specification has it.
    #[error("not a valid VHD: {0}")]
    Invalid(String),
    /// A valid VHD this import cannot take.
    #[error("unsupported VHD: {0}")]
    Unsupported(String),
    /// The disk the VHD describes is larger than where it goes.
    #[error("the VHD's disk of {size} bytes does not fit {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// The stream ended before every allocated block came.
    #[error("the VHD stopped at byte {at}: {missing} allocated block(s) never came")]
    Truncated { at: u64, missing: usize },
    /// Writing a block's data failed.
    #[error("writing at disk offset {offset}: {reason}")]
    Write { offset: u64, reason: String },
}

/// What the receiver waits for next.
#[derive(Clone, Copy, Debug)]
enum Part {
    Footer,
    Header,
    Table,
    /// The `n`th allocated block in stream order: its bitmap and data.
    Block(usize),
    /// Everything after the last block (the footer): read and dropped.
    Rest,
}

/// A dynamic VHD being received: feed it the stream's bytes in order, then
/// [`finish`](Self::finish) it.
pub struct VhdReceiver {
    limit: u64,
    /// Stream bytes consumed so far.
    at: u64,
    part: Part,
    /// Where the part starts in the stream, and how long it is.
    part_at: u64,
    part_len: usize,
    buffer: Vec<u8>,
    size: u64,
    block_bytes: u64,
    table_at: u64,
    table_entries: usize,
    /// Allocated blocks in stream order: (stream offset, block number).
    blocks: Vec<(u64, u64)>,
}

impl VhdReceiver {
    /// A receiver for a VHD whose disk must fit `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            at: 0,
            part: Part::Footer,
            part_at: 0,
            part_len: FOOTER_BYTES,
            buffer: Vec::new(),
            size: 0,
            block_bytes: 0,
            table_at: 0,
            table_entries: 0,
            blocks: Vec::new(),
        }
    }

    /// The disk's blocks the allocation table leaves out (they read as
    /// zeros), as (offset, length) ranges; known once the table has been read.
    pub fn unallocated(&self) -> Option<Vec<(u64, u64)>> {
        if matches!(self.part, Part::Footer | Part::Header | Part::Table) {
            return None;
        }
        let mut allocated: Vec<u64> = self.blocks.iter().map(|(_, block)| *block).collect();
        allocated.sort_unstable();
        let count = self.size.div_ceil(self.block_bytes);
        let ranges = (0..count)
            .filter(|block| allocated.binary_search(block).is_err())
            .map(|block| {
                let start = block * self.block_bytes;
                (start, self.block_bytes.min(self.size - start))
            });
        Some(ranges.collect())
    }

    /// Takes the next `bytes` of the stream; `write(offset, data)` gets the
    /// data of each allocated block's present sectors.
    pub fn feed(&mut self, mut bytes: &[u8], write: &mut WriteAt<'_>) -> Result<(), VhdError> {
        while !bytes.is_empty() {
            if matches!(self.part, Part::Rest) {
                self.at += bytes.len() as u64;
                if self.at - self.part_at > MAX_TRAILER_BYTES {
                    return Err(VhdError::Invalid(format!(
                        "more than {MAX_TRAILER_BYTES} bytes after its last block \
                         (a VHD ends with its 512-byte footer)"
                    )));
                }
                return Ok(());
            }
            if self.at < self.part_at {
                let skip = (self.part_at - self.at).min(bytes.len() as u64) as usize;
                self.at += skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (self.part_len - self.buffer.len()).min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..take]);
            self.at += take as u64;
            bytes = &bytes[take..];
            if self.buffer.len() == self.part_len {
                let part = std::mem::take(&mut self.buffer);
                self.take_part(&part, write)?;
            }
        }
        Ok(())
    }

    /// The stream ended: every allocated block must have come. Returns the
    /// disk's size.
    pub fn finish(self) -> Result<u64, VhdError> {
        let missing = match self.part {
            Part::Rest => 0,
            Part::Block(n) => self.blocks.len() - n,
            Part::Footer | Part::Header | Part::Table => {
                return Err(VhdError::Invalid(format!(
                    "the stream ended at byte {} inside its {:?}",
                    self.at, self.part
                )));
            }
        };
        if missing > 0 {
            return Err(VhdError::Truncated {
                at: self.at,
                missing,
            });
        }
        Ok(self.size)
    }

    fn take_part(&mut self, part: &[u8], write: &mut WriteAt<'_>) -> Result<(), VhdError> {
        match self.part {
            Part::Footer => {
                let header_at = self.read_footer(part)?;
                self.next(Part::Header, header_at, HEADER_BYTES)
            }
            Part::Header => {
                self.read_header(part)?;
                let len = self.table_entries * 4;
                self.next(Part::Table, self.table_at, len)
            }
            Part::Table => {
                self.read_table(part)?;
                self.next_block(0)
            }
            Part::Block(n) => {
                self.write_block(n, part, write)?;
                self.next_block(n + 1)
            }
            Part::Rest => Ok(()),
        }
    }

    /// Waits for `part` at stream offset `at`, which must not lie behind.
    fn next(&mut self, part: Part, at: u64, len: usize) -> Result<(), VhdError> {
        if at < self.at {
            return Err(VhdError::Unsupported(format!(
                "its {part:?} lies at byte {at}, before byte {} already streamed \
                 (only a VHD laid out in order can be streamed)",
                self.at
            )));
        }
        (self.part, self.part_at, self.part_len) = (part, at, len);
        Ok(())
    }

    fn next_block(&mut self, n: usize) -> Result<(), VhdError> {
        match self.blocks.get(n) {
            Some(&(at, _)) => {
                let len = (self.bitmap_bytes() + self.block_bytes) as usize;
                self.next(Part::Block(n), at, len)
            }
            None => {
                (self.part, self.part_at) = (Part::Rest, self.at);
                Ok(())
            }
        }
    }

    fn bitmap_bytes(&self) -> u64 {
        (self.block_bytes / SECTOR).div_ceil(8).div_ceil(SECTOR) * SECTOR
    }

    /// Checks the footer copy; returns where the dynamic header is.
    fn read_footer(&mut self, f: &[u8]) -> Result<u64, VhdError> {
        if &f[..8] != b"conectix" {
            return Err(VhdError::Invalid(
                "no footer cookie \"conectix\" at byte 0".into(),
            ));
        }
        check_sum(f, 64, "footer")?;
        let disk_type = be32(f, 60);
        match disk_type {
            3 => {}
            2 => {
                return Err(VhdError::Unsupported(
                    "a fixed VHD: upload its disk as format=raw".into(),
                ));
            }
            4 => {
                return Err(VhdError::Unsupported(
                    "a differencing VHD: its parent is not here".into(),
                ));
            }
            other => return Err(VhdError::Invalid(format!("disk type {other}"))),
        }
        self.size = be64(f, 48);
        if self.size > self.limit {
            return Err(VhdError::TooLarge {
                size: self.size,
                limit: self.limit,
            });
        }
        Ok(be64(f, 16))
    }

    fn read_header(&mut self, h: &[u8]) -> Result<(), VhdError> {
        if &h[..8] != b"cxsparse" {
            return Err(VhdError::Invalid(format!(
                "no dynamic header cookie \"cxsparse\" at byte {}",
                self.part_at
            )));
        }
        check_sum(h, 36, "dynamic header")?;
        self.table_at = be64(h, 16);
        self.table_entries = be32(h, 28) as usize;
        self.block_bytes = be32(h, 32) as u64;
        if !self.block_bytes.is_power_of_two()
            || self.block_bytes < SECTOR
            || self.block_bytes > MAX_BLOCK_BYTES
        {
            return Err(VhdError::Invalid(format!(
                "block size {} (a power of two from 512 bytes to 64 MiB)",
                self.block_bytes
            )));
        }
        let needed = self.size.div_ceil(self.block_bytes);
        if (self.table_entries as u64) < needed {
            return Err(VhdError::Invalid(format!(
                "{} table entries for a disk of {needed} blocks",
                self.table_entries
            )));
        }
        Ok(())
    }

    fn read_table(&mut self, table: &[u8]) -> Result<(), VhdError> {
        let count = self.size.div_ceil(self.block_bytes);
        let mut blocks: Vec<(u64, u64)> = (0..count)
            .filter_map(|block| {
                let sector = be32(table, block as usize * 4);
                (sector != UNALLOCATED).then_some((sector as u64 * SECTOR, block))
            })
            .collect();
        blocks.sort_unstable();
        let span = self.bitmap_bytes() + self.block_bytes;
        if let Some(pair) = blocks.windows(2).find(|w| w[0].0 + span > w[1].0) {
            return Err(VhdError::Invalid(format!(
                "blocks {} and {} overlap in the file",
                pair[0].1, pair[1].1
            )));
        }
        self.blocks = blocks;
        Ok(())
    }

    /// Hands out the present sectors of the `n`th block, clipped to the disk.
    fn write_block(&self, n: usize, part: &[u8], write: &mut WriteAt<'_>) -> Result<(), VhdError> {
        let (bitmap, data) = part.split_at(self.bitmap_bytes() as usize);
        let start = self.blocks[n].1 * self.block_bytes;
        let len = self.block_bytes.min(self.size - start) as usize;
        let present = |sector: usize| bitmap[sector / 8] & (0x80 >> (sector % 8)) != 0;
        let sectors = len.div_ceil(SECTOR as usize);
        let mut sector = 0;
        while sector < sectors {
            if !present(sector) {
                sector += 1;
                continue;
            }
            let first = sector;
            while sector < sectors && present(sector) {
                sector += 1;
            }
            let from = first * SECTOR as usize;
            let to = (sector * SECTOR as usize).min(len);
            let offset = start + from as u64;
            write(offset, &data[from..to]).map_err(|reason| VhdError::Write { offset, reason })?;
        }
        Ok(())
    }
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks the checksum stored at `at` of a footer or header.
fn check_sum(bytes: &[u8], at: usize, what: &str) -> Result<(), VhdError> {
    let stored = be32(bytes, at);
    let mut zeroed = bytes.to_vec();
    zeroed[at..at + 4].fill(0);
    let computed = checksum(&zeroed);
    if stored != computed {
        return Err(VhdError::Invalid(format!(
            "{what} checksum {stored:#010x}, computed {computed:#010x}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{BLOCK_BYTES, VhdLayout};
    use super::*;

    const UUID: &str = "6c9e7a3e-2a4b-4c1d-9e8f-0123456789ab";

    /// A disk of `size` bytes whose allocated blocks hold a pattern, and
    /// its VHD as the layout writes it.
    fn disk_and_vhd(size: u64, allocated: &[bool]) -> (Vec<u8>, Vec<u8>) {
        let mut disk = vec![0u8; size as usize];
        let layout = VhdLayout::new(size, UUID, allocated.to_vec(), None);
        let mut vhd = layout.head();
        for block in layout.blocks() {
            let start = (block * BLOCK_BYTES) as usize;
            let end = (start + BLOCK_BYTES as usize).min(size as usize);
            for (i, byte) in disk[start..end].iter_mut().enumerate() {
                *byte = ((start + i) % 251) as u8 | 1;
            }
            vhd.extend(layout.block_prefix());
            let mut data = disk[start..end].to_vec();
            data.resize(BLOCK_BYTES as usize, 0);
            vhd.extend(data);
        }
        vhd.extend(layout.footer());
        assert_eq!(vhd.len() as u64, layout.total_bytes());
        (disk, vhd)
    }

    fn receive(vhd: &[u8], piece: usize, limit: u64) -> Result<Vec<u8>, VhdError> {
        let mut receiver = VhdReceiver::new(limit);
        let mut disk = Vec::new();
        let mut write = |offset: u64, data: &[u8]| {
            let end = offset as usize + data.len();
            if disk.len() < end {
                disk.resize(end, 0);
            }
            disk[offset as usize..end].copy_from_slice(data);
            Ok(())
        };
        for bytes in vhd.chunks(piece) {
            receiver.feed(bytes, &mut write)?;
        }
        let size = receiver.finish()?;
        disk.resize(size as usize, 0);
        Ok(disk)
    }

    #[test]
    fn what_the_layout_writes_reads_back_in_any_piece_size() {
        // Five blocks, the last one partial; blocks 1 and 3 left out.
        let size = 4 * BLOCK_BYTES + 300 * 1024;
        let (disk, vhd) = disk_and_vhd(size, &[true, false, true, false, true]);
        for piece in [1 << 20, 4096, 511, 3] {
            assert!(receive(&vhd, piece, size).unwrap() == disk, "{piece}");
        }
        let mut receiver = VhdReceiver::new(size);
        receiver.feed(&vhd[..4096], &mut |_, _| Ok(())).unwrap();
        assert_eq!(
            receiver.unallocated().unwrap(),
            vec![(BLOCK_BYTES, BLOCK_BYTES), (3 * BLOCK_BYTES, BLOCK_BYTES)]
        );
    }

    #[test]
    fn bad_streams_are_refused_naming_what_is_wrong() {
        let size = 3 * BLOCK_BYTES;
        let (_, vhd) = disk_and_vhd(size, &[true, false, true]);
        assert!(matches!(
            receive(&vhd, 4096, size - 1),
            Err(VhdError::TooLarge { .. })
        ));
        let cut = receive(&vhd[..vhd.len() - 512 - BLOCK_BYTES as usize], 4096, size);
        assert!(
            matches!(cut, Err(VhdError::Truncated { missing: 1, .. })),
            "{cut:?}"
        );
        let mut flipped = vhd.clone();
        flipped[40] ^= 1;
        match receive(&flipped, 4096, size) {
            Err(VhdError::Invalid(why)) => assert!(why.contains("footer checksum"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut endless = vhd.clone();
        endless.extend(vec![0u8; 2 << 20]);
        match receive(&endless, 4096, size) {
            Err(VhdError::Invalid(why)) => assert!(why.contains("after its last block"), "{why}"),
            other => panic!("{other:?}"),
        }
        let raw = vec![0u8; 4096];
        match receive(&raw, 4096, size) {
            Err(VhdError::Invalid(why)) => assert!(why.contains("conectix"), "{why}"),
            other => panic!("{other:?}"),
        }
        let differencing = VhdLayout::new(size, UUID, vec![true; 3], Some(UUID)).head();
        assert!(matches!(
            receive(&differencing, 4096, size),
            Err(VhdError::Unsupported(_))
        ));
    }

    #[test]
    fn sectors_the_bitmap_leaves_out_are_not_written() {
        let size = BLOCK_BYTES;
        let (_, mut vhd) = disk_and_vhd(size, &[true]);
        // The block's bitmap starts after footer, header and one table sector.
        let bitmap = 512 + 1024 + 512;
        vhd[bitmap] = 0b0111_1111; // sector 0 absent
        let mut writes = Vec::new();
        let mut receiver = VhdReceiver::new(size);
        receiver
            .feed(&vhd, &mut |offset, data| {
                writes.push((offset, data.len()));
                Ok(())
            })
            .unwrap();
        assert_eq!(writes, vec![(512, BLOCK_BYTES as usize - 512)]);
    }
}
