//! Raw disk images with the simulator's seeded content (`abd sim image`).

use anyhow::Context;
use std::io::Write;
use std::path::Path;
use xapi_sim::content::{ContentProfile, DiskContent};

/// Writes `size_bytes` of disk `disk` (lineage 1) as it is on `day`.
pub fn write(out: &Path, size_bytes: u64, seed: u64, day: u32, disk: u64) -> anyhow::Result<()> {
    let content = DiskContent {
        seed,
        lineage: 1,
        disk,
        size_bytes,
        profile: ContentProfile::default(),
    };
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(8 << 20, file);
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = 0;
    while offset < size_bytes {
        let len = (buf.len() as u64).min(size_bytes - offset) as usize;
        content.read_at(offset, day, &mut buf[..len]);
        writer
            .write_all(&buf[..len])
            .with_context(|| format!("writing {}", out.display()))?;
        offset += len as u64;
    }
    writer
        .flush()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Parses sizes such as `2GiB`, `512MiB`, `64KiB`, `4096` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 2GiB)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => return Err(format!("unknown unit {other:?} (B, KiB, MiB, GiB)")),
    };
    value
        .checked_shl(shift)
        .filter(|v| v >> shift == value)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("2PB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("GiB").is_err());
    }
}
