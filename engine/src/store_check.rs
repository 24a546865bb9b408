//! Verifying the data store from the engine: re-hash every chunk, check every
//! version's references, log what is wrong with the versions it hurts, and
//! set corrupt chunks aside so the next backup that holds their bytes stores
//! them again (which mends every version that uses them).

use crate::datastore::DataStore;
use crate::error::EngineError;
use crate::joblog::format_bytes;
use crate::pool::VmLog;

/// What a verification found and did.
#[derive(Clone, Debug)]
pub struct StoreCheck {
    pub report: ads::VerifyReport,
    /// Corrupt chunks newly set aside.
    pub set_aside: usize,
}

/// Verifies `store`, logs the outcome on `log` and sets corrupt chunks aside.
pub fn verify_and_set_aside(store: &DataStore, log: &VmLog) -> Result<StoreCheck, EngineError> {
    let (report, set_aside) = store
        .verify_and_set_aside()
        .map_err(|e| EngineError::Store(e.to_string()))?;
    let summary = format!(
        "Data store verified: {} packs, {} chunks ({}), {} versions",
        report.packs,
        report.chunks,
        format_bytes(report.bytes_checked),
        report.versions
    );
    if report.is_clean() {
        log.ok(format!("{summary}: clean"));
    } else {
        log.fail(format!("{summary}: {} problem(s)", report.problems.len()));
    }
    for problem in &report.problems {
        match problem {
            ads::Problem::BadIndexFile { .. } => log.warn(format!("Data store: {problem}")),
            _ => log.fail(format!("Data store: {problem}")),
        }
    }
    if set_aside > 0 {
        log.warn(format!(
            "Data store: {set_aside} corrupt chunk(s) set aside; the next backup of an affected VM stores them again"
        ));
    }
    Ok(StoreCheck { report, set_aside })
}
