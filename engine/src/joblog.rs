//! The job log users read: ordered, timestamped lines with a status, and the
//! job's final status. A product artefact with stable wording, not debug tracing.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Status of one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineStatus {
    Ok,
    Warn,
    Fail,
    InProgress,
}

impl LineStatus {
    fn tag(self) -> &'static str {
        match self {
            LineStatus::Ok => "ok  ",
            LineStatus::Warn => "warn",
            LineStatus::Fail => "fail",
            LineStatus::InProgress => "....",
        }
    }
}

/// One line of a job log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Engine time of the line, milliseconds since the engine started.
    pub at_ms: u64,
    pub status: LineStatus,
    /// The protected VM the line is about, if any.
    pub vm: Option<String>,
    pub text: String,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] ", format_clock(self.at_ms), self.status.tag())?;
        if let Some(vm) = &self.vm {
            write!(f, "{vm}: ")?;
        }
        f.write_str(&self.text)
    }
}

/// Final status of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Success,
    SuccessWithWarnings,
    Partial,
    Failed,
    /// Cancelled by the operator or at its time limit before every VM was done.
    Cancelled,
}

impl JobStatus {
    /// The status a job ends with, from how its VMs went.
    pub fn from_counts(ok: usize, warned: usize, failed: usize) -> JobStatus {
        match (ok + warned, failed) {
            (0, _) => JobStatus::Failed,
            (_, 0) if warned == 0 => JobStatus::Success,
            (_, 0) => JobStatus::SuccessWithWarnings,
            _ => JobStatus::Partial,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobStatus::Success => "success",
            JobStatus::SuccessWithWarnings => "success with warnings",
            JobStatus::Partial => "partial",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        })
    }
}

/// An append-only job log.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobLog {
    pub lines: Vec<LogLine>,
}

impl JobLog {
    /// Appends a line at engine time `at`.
    pub fn push(
        &mut self,
        at: Duration,
        status: LineStatus,
        vm: Option<&str>,
        text: impl Into<String>,
    ) {
        let at_ms = at.as_millis() as u64;
        debug_assert!(
            self.lines.last().is_none_or(|l| l.at_ms <= at_ms),
            "job log went back in time"
        );
        let line = LogLine {
            at_ms,
            status,
            vm: vm.map(str::to_string),
            text: text.into(),
        };
        tracing::info!(target: "abd::joblog", "{line}");
        self.lines.push(line);
    }

    /// True when any line has the given status.
    pub fn has(&self, status: LineStatus) -> bool {
        self.lines.iter().any(|l| l.status == status)
    }
}

/// `HH:MM:SS.mmm` for milliseconds; hours keep counting past 24.
pub fn format_clock(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

/// A short human duration: `850 ms`, `23.4 s`, `4m 05s`, `1h 02m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// A size in binary units: `20.0 GiB`, `256 MiB`.
pub fn format_bytes(bytes: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.0} MiB", b / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_status_follows_the_vm_outcomes() {
        let check = |ok, warned, failed, expect| {
            assert_eq!(JobStatus::from_counts(ok, warned, failed), expect)
        };
        check(3, 0, 0, JobStatus::Success);
        check(2, 1, 0, JobStatus::SuccessWithWarnings);
        check(2, 0, 1, JobStatus::Partial);
        check(0, 1, 1, JobStatus::Partial);
        check(0, 0, 3, JobStatus::Failed);
        check(0, 0, 0, JobStatus::Failed);
    }

    #[test]
    fn formats_are_stable() {
        assert_eq!(format_duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(format_duration(Duration::from_millis(23_400)), "23.4 s");
        assert_eq!(format_duration(Duration::from_secs(245)), "4m 05s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h 02m");
        assert_eq!(format_bytes(20 << 30), "20.0 GiB");
        assert_eq!(format_bytes(256 << 20), "256 MiB");
        assert_eq!(format_clock(3_723_004), "01:02:03.004");
    }
}
