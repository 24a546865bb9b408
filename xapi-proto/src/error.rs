//! XAPI errors: a code and its string parameters, exactly as XAPI sends them.

use serde::{Deserialize, Serialize};
use std::fmt;

/// XAPI error codes used by the engine and the simulator (exact strings).
pub mod codes {
    pub const SESSION_AUTHENTICATION_FAILED: &str = "SESSION_AUTHENTICATION_FAILED";
    pub const SESSION_INVALID: &str = "SESSION_INVALID";
    pub const HANDLE_INVALID: &str = "HANDLE_INVALID";
    pub const UUID_INVALID: &str = "UUID_INVALID";
    pub const VM_BAD_POWER_STATE: &str = "VM_BAD_POWER_STATE";
    pub const VM_IS_TEMPLATE: &str = "VM_IS_TEMPLATE";
    pub const OTHER_OPERATION_IN_PROGRESS: &str = "OTHER_OPERATION_IN_PROGRESS";
    pub const HOST_NOT_ENOUGH_FREE_MEMORY: &str = "HOST_NOT_ENOUGH_FREE_MEMORY";
    pub const SR_FULL: &str = "SR_FULL";
    pub const OPERATION_NOT_ALLOWED: &str = "OPERATION_NOT_ALLOWED";
    pub const OPERATION_BLOCKED: &str = "OPERATION_BLOCKED";
    pub const MEMORY_CONSTRAINT_VIOLATION: &str = "MEMORY_CONSTRAINT_VIOLATION";
    pub const MESSAGE_METHOD_UNKNOWN: &str = "MESSAGE_METHOD_UNKNOWN";
    pub const MESSAGE_PARAMETER_COUNT_MISMATCH: &str = "MESSAGE_PARAMETER_COUNT_MISMATCH";
    pub const HOST_OFFLINE: &str = "HOST_OFFLINE";
    pub const HOST_DISABLED: &str = "HOST_DISABLED";
    pub const NO_HOSTS_AVAILABLE: &str = "NO_HOSTS_AVAILABLE";
    pub const VM_REQUIRES_SR: &str = "VM_REQUIRES_SR";
    pub const VM_REQUIRES_NETWORK: &str = "VM_REQUIRES_NETWORK";
    pub const VDI_IN_USE: &str = "VDI_IN_USE";
    pub const VDI_MISSING: &str = "VDI_MISSING";
    pub const VDI_NO_CBT_METADATA: &str = "VDI_NO_CBT_METADATA";
    pub const DEVICE_ALREADY_ATTACHED: &str = "DEVICE_ALREADY_ATTACHED";
    pub const DEVICE_ALREADY_DETACHED: &str = "DEVICE_ALREADY_DETACHED";
    pub const DEVICE_ALREADY_EXISTS: &str = "DEVICE_ALREADY_EXISTS";
    pub const INVALID_DEVICE: &str = "INVALID_DEVICE";
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
    pub const TASK_CANCELLED: &str = "TASK_CANCELLED";
    pub const INTERNAL_ERROR: &str = "INTERNAL_ERROR";
    pub const HOST_IS_SLAVE: &str = "HOST_IS_SLAVE";
    pub const IMPORT_ERROR: &str = "IMPORT_ERROR";
    pub const FIELD_TYPE_ERROR: &str = "FIELD_TYPE_ERROR";
    pub const MAP_DUPLICATE_KEY: &str = "MAP_DUPLICATE_KEY";
}

/// An error as XAPI reports it: `ErrorDescription = [code, param, ...]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct XapiError {
    /// The error code, e.g. `HANDLE_INVALID`.
    pub code: String,
    /// The parameters, all strings, in XAPI's order.
    pub params: Vec<String>,
}

impl XapiError {
    /// An error with the given code and parameters.
    pub fn new<S: Into<String>>(code: &str, params: impl IntoIterator<Item = S>) -> Self {
        XapiError {
            code: code.to_string(),
            params: params.into_iter().map(Into::into).collect(),
        }
    }

    /// `HANDLE_INVALID [class, ref]`.
    pub fn handle_invalid(class: &str, reference: &str) -> Self {
        Self::new(codes::HANDLE_INVALID, [class, reference])
    }

    /// `UUID_INVALID [class, uuid]`.
    pub fn uuid_invalid(class: &str, uuid: &str) -> Self {
        Self::new(codes::UUID_INVALID, [class, uuid])
    }

    /// `VM_BAD_POWER_STATE [vm, expected, actual]` (states lowercase, as XAPI sends).
    pub fn vm_bad_power_state(vm: &str, expected: &str, actual: &str) -> Self {
        Self::new(
            codes::VM_BAD_POWER_STATE,
            [
                vm.to_string(),
                expected.to_lowercase(),
                actual.to_lowercase(),
            ],
        )
    }

    /// `INTERNAL_ERROR [msg]`.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL_ERROR, [msg.into()])
    }

    /// `OPERATION_NOT_ALLOWED [reason]`.
    pub fn not_allowed(reason: impl Into<String>) -> Self {
        Self::new(codes::OPERATION_NOT_ALLOWED, [reason.into()])
    }

    /// True when the code is `code`.
    pub fn is(&self, code: &str) -> bool {
        self.code == code
    }

    /// The whole description as XAPI sends it: `[code, params...]`.
    pub fn description(&self) -> Vec<String> {
        std::iter::once(self.code.clone())
            .chain(self.params.iter().cloned())
            .collect()
    }

    /// Rebuilds an error from an `ErrorDescription` array.
    pub fn from_description(description: &[String]) -> Self {
        match description.split_first() {
            Some((code, params)) => XapiError {
                code: code.clone(),
                params: params.to_vec(),
            },
            None => XapiError::internal("empty ErrorDescription"),
        }
    }
}

impl fmt::Display for XapiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code)?;
        for p in &self.params {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}
