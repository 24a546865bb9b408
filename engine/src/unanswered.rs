//! Calls that failed but may have taken effect (no reply came, or XAPI's
//! INTERNAL_ERROR): before the work is retried, what such a call would have
//! made is looked for, by a name or id unique to that call, and used; when
//! the pool cannot be asked now, the name goes to the background removals.

use crate::pool::{PoolRuntime, VmLog};
use crate::reclaim::Leftover;
use crate::xapi::CallError;
use std::future::Future;
use xapi_proto::OpaqueRef;

/// What the call that failed with `error` made, if it may have made
/// anything: `look` asks the pool. Found: `used` is logged as a warning.
/// When `look` fails, `unfound` goes to the background removals and nothing
/// is returned.
pub(crate) async fn made_anyway(
    pool: &PoolRuntime,
    error: &CallError,
    look: impl Future<Output = Result<Vec<OpaqueRef>, CallError>>,
    used: impl FnOnce() -> String,
    unfound: impl FnOnce() -> Leftover,
    log: &VmLog,
) -> Vec<OpaqueRef> {
    if !error.may_have_taken_effect() {
        return Vec::new();
    }
    match look.await {
        Ok(found) => {
            if !found.is_empty() {
                log.warn(used());
            }
            found
        }
        Err(e) => {
            let leftover = unfound();
            tracing::warn!("cannot look for what an unanswered call made ({error}): {e}");
            crate::reclaim::retry_later(pool, leftover, log);
            Vec::new()
        }
    }
}
