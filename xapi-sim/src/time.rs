//! Simulated time: milliseconds since the start of a run.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A point in simulated time, in milliseconds since the run started.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct SimTime(pub u64);

impl SimTime {
    /// The start of a run.
    pub const ZERO: SimTime = SimTime(0);

    /// Milliseconds since the start.
    pub fn as_ms(self) -> u64 {
        self.0
    }

    /// This time moved forward by `d` (saturating, millisecond resolution).
    pub fn after(self, d: Duration) -> SimTime {
        SimTime(self.0.saturating_add(d.as_millis() as u64))
    }

    /// Time since `earlier` (zero if `earlier` is later).
    pub fn since(self, earlier: SimTime) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl From<Duration> for SimTime {
    fn from(d: Duration) -> Self {
        SimTime(d.as_millis() as u64)
    }
}

impl fmt::Display for SimTime {
    /// `HH:MM:SS.mmm`; hours keep counting past 24.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0 % 1000;
        let s = self.0 / 1000;
        write!(
            f,
            "{:02}:{:02}:{:02}.{:03}",
            s / 3600,
            (s / 60) % 60,
            s % 60,
            ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_clock_time() {
        assert_eq!(SimTime(0).to_string(), "00:00:00.000");
        assert_eq!(SimTime(3_723_004).to_string(), "01:02:03.004");
        assert_eq!(SimTime(90_000_000).to_string(), "25:00:00.000");
    }
}
