//! The run's one seeded random number generator.

use crate::spec::SecondsRange;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// Seeded randomness for everything the simulator decides: ids, MACs, durations.
/// ChaCha8 is specified bit for bit, so a seed means the same run on every machine.
pub struct SimRng {
    rng: ChaCha8Rng,
}

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A random (version 4) UUID in its canonical text form.
    pub fn uuid(&mut self) -> String {
        let mut b = [0u8; 16];
        self.rng.fill_bytes(&mut b);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// A locally administered unicast MAC address, as XAPI generates for VIFs.
    pub fn mac(&mut self) -> String {
        let mut b = [0u8; 6];
        self.rng.fill_bytes(&mut b);
        b[0] = (b[0] & 0xfc) | 0x02;
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// A duration drawn uniformly from `range`, at millisecond resolution.
    pub fn duration(&mut self, range: SecondsRange) -> Duration {
        let lo_ms = (range.0 * 1000.0).round() as u64;
        let hi_ms = (range.1 * 1000.0).round() as u64;
        if hi_ms <= lo_ms {
            return Duration::from_millis(lo_ms);
        }
        Duration::from_millis(self.rng.random_range(lo_ms..=hi_ms))
    }
}
