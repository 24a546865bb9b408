//! The VHD container XAPI's disk endpoints speak (`format=vhd`): a dynamic
//! disk (zero blocks left out) or, relative to a base, a differencing disk
//! that holds only the blocks that differ from it. [`VhdLayout`] writes one
//! (the simulator's exports, the engine's sparse uploads); [`VhdReceiver`]
//! reads one as it streams in (the simulator's imports). Layout and fields
//! follow the VHD specification: footer copy, dynamic header, block
//! allocation table, blocks (sector bitmap + data), footer; all integers
//! big-endian.

mod receive;

pub use receive::{VhdError, VhdReceiver, WriteAt};

/// Bytes per VHD block (XAPI's and the spec's default).
pub const BLOCK_BYTES: u64 = 2 << 20;
const SECTOR: u64 = 512;
/// Sector bitmap of a block: one bit per sector, padded to a sector.
const BITMAP_BYTES: u64 = 512;
const FOOTER_BYTES: usize = 512;
const HEADER_BYTES: usize = 1024;
const UNALLOCATED: u32 = u32::MAX;

/// What kind of disk the container describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskType {
    Dynamic = 3,
    Differencing = 4,
}

/// A VHD being served: which blocks it holds, and where.
pub struct VhdLayout {
    size_bytes: u64,
    disk_type: DiskType,
    unique_id: [u8; 16],
    parent_id: [u8; 16],
    parent_name: String,
    /// Per block: allocated or not.
    allocated: Vec<bool>,
}

impl VhdLayout {
    /// A disk of `size_bytes` holding the blocks flagged in `allocated`.
    /// `parent` (uuid) makes it a differencing disk over that disk.
    pub fn new(size_bytes: u64, uuid: &str, allocated: Vec<bool>, parent: Option<&str>) -> Self {
        assert_eq!(allocated.len() as u64, size_bytes.div_ceil(BLOCK_BYTES));
        Self {
            size_bytes,
            disk_type: match parent {
                Some(_) => DiskType::Differencing,
                None => DiskType::Dynamic,
            },
            unique_id: uuid_bytes(uuid),
            parent_id: parent.map(uuid_bytes).unwrap_or_default(),
            parent_name: parent.unwrap_or_default().to_string(),
            allocated,
        }
    }

    fn bat_bytes(&self) -> u64 {
        (self.allocated.len() as u64 * 4).div_ceil(SECTOR) * SECTOR
    }

    fn data_start(&self) -> u64 {
        (FOOTER_BYTES + HEADER_BYTES) as u64 + self.bat_bytes()
    }

    /// Allocated blocks, in order.
    pub fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.allocated
            .iter()
            .enumerate()
            .filter(|(_, a)| **a)
            .map(|(i, _)| i as u64)
    }

    /// Length of the whole container.
    pub fn total_bytes(&self) -> u64 {
        self.data_start()
            + self.blocks().count() as u64 * (BITMAP_BYTES + BLOCK_BYTES)
            + FOOTER_BYTES as u64
    }

    /// Footer copy, dynamic header and allocation table: what precedes the blocks.
    pub fn head(&self) -> Vec<u8> {
        let mut out = self.footer();
        out.extend(self.dynamic_header());
        let mut sector = self.data_start() / SECTOR;
        let mut bat = Vec::with_capacity(self.bat_bytes() as usize);
        for allocated in &self.allocated {
            let entry = if *allocated {
                let at = sector as u32;
                sector += (BITMAP_BYTES + BLOCK_BYTES) / SECTOR;
                at
            } else {
                UNALLOCATED
            };
            bat.extend_from_slice(&entry.to_be_bytes());
        }
        bat.resize(self.bat_bytes() as usize, 0xff);
        out.extend(bat);
        out
    }

    /// What precedes a block's data: its sector bitmap (every sector present).
    pub fn block_prefix(&self) -> Vec<u8> {
        vec![0xff; BITMAP_BYTES as usize]
    }

    /// The footer, also the container's last 512 bytes.
    pub fn footer(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(FOOTER_BYTES);
        f.extend_from_slice(b"conectix");
        f.extend_from_slice(&2u32.to_be_bytes()); // features: reserved bit
        f.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // format version
        f.extend_from_slice(&(FOOTER_BYTES as u64).to_be_bytes()); // dynamic header offset
        f.extend_from_slice(&0u32.to_be_bytes()); // timestamp
        f.extend_from_slice(b"abd "); // creator application
        f.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // creator version
        f.extend_from_slice(b"Lnux"); // creator host OS
        f.extend_from_slice(&self.size_bytes.to_be_bytes()); // original size
        f.extend_from_slice(&self.size_bytes.to_be_bytes()); // current size
        f.extend_from_slice(&geometry(self.size_bytes));
        f.extend_from_slice(&(self.disk_type as u32).to_be_bytes());
        let checksum_at = f.len();
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(&self.unique_id);
        f.push(0); // saved state
        f.resize(FOOTER_BYTES, 0);
        let sum = checksum(&f);
        f[checksum_at..checksum_at + 4].copy_from_slice(&sum.to_be_bytes());
        f
    }

    fn dynamic_header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_BYTES);
        h.extend_from_slice(b"cxsparse");
        h.extend_from_slice(&u64::MAX.to_be_bytes()); // data offset: unused
        h.extend_from_slice(&((FOOTER_BYTES + HEADER_BYTES) as u64).to_be_bytes()); // BAT
        h.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // header version
        h.extend_from_slice(&(self.allocated.len() as u32).to_be_bytes());
        h.extend_from_slice(&(BLOCK_BYTES as u32).to_be_bytes());
        let checksum_at = h.len();
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&self.parent_id);
        h.extend_from_slice(&0u32.to_be_bytes()); // parent timestamp
        h.extend_from_slice(&0u32.to_be_bytes()); // reserved
        let mut name = [0u8; 512];
        for (i, unit) in self.parent_name.encode_utf16().take(256).enumerate() {
            name[2 * i..2 * i + 2].copy_from_slice(&unit.to_be_bytes());
        }
        h.extend_from_slice(&name);
        h.resize(HEADER_BYTES, 0); // no parent locators; reserved
        let sum = checksum(&h);
        h[checksum_at..checksum_at + 4].copy_from_slice(&sum.to_be_bytes());
        h
    }
}

/// The spec's checksum: one's complement of the byte sum (checksum field zero).
fn checksum(bytes: &[u8]) -> u32 {
    !bytes
        .iter()
        .fold(0u32, |sum, b| sum.wrapping_add(*b as u32))
}

fn uuid_bytes(uuid: &str) -> [u8; 16] {
    let hex: Vec<u8> = uuid
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|c| (c as char).to_digit(16).expect("hex digit") as u8)
        .collect();
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).take(16).enumerate() {
        out[i] = pair[0] << 4 | pair.get(1).copied().unwrap_or(0);
    }
    out
}

/// Cylinders, heads, sectors per track, as the spec computes them.
fn geometry(size_bytes: u64) -> [u8; 4] {
    let total = (size_bytes / SECTOR).min(65535 * 16 * 255);
    let (mut spt, mut heads, mut cylinder_heads);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cylinder_heads = total / spt;
    } else {
        spt = 17;
        cylinder_heads = total / spt;
        heads = cylinder_heads.div_ceil(1024).max(4);
        if cylinder_heads >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            cylinder_heads = total / spt;
        }
        if cylinder_heads >= heads * 1024 {
            spt = 63;
            heads = 16;
            cylinder_heads = total / spt;
        }
    }
    let cylinders = (cylinder_heads / heads) as u16;
    let c = cylinders.to_be_bytes();
    [c[0], c[1], heads as u8, spt as u8]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_and_header_carry_valid_checksums_and_the_layout_adds_up() {
        let layout = VhdLayout::new(
            5 << 20,
            "6c9e7a3e-2a4b-4c1d-9e8f-0123456789ab",
            vec![true, false, true],
            None,
        );
        let head = layout.head();
        let footer = &head[..512];
        assert_eq!(&footer[..8], b"conectix");
        let stored = u32::from_be_bytes(footer[64..68].try_into().unwrap());
        let mut zeroed = footer.to_vec();
        zeroed[64..68].fill(0);
        assert_eq!(stored, checksum(&zeroed));
        assert_eq!(u32::from_be_bytes(footer[60..64].try_into().unwrap()), 3);
        assert_eq!(&head[512..520], b"cxsparse");
        // Footer + header + one BAT sector, then two blocks and the footer.
        assert_eq!(head.len(), 512 + 1024 + 512);
        assert_eq!(layout.total_bytes(), 2048 + 2 * (512 + (2 << 20)) + 512);
        let bat: Vec<u32> = head[1536..1548]
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(bat, vec![4, UNALLOCATED, 4 + 4097]);
    }
}
