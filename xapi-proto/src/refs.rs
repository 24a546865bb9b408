//! XAPI object references (`OpaqueRef:<uuid>`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A reference to an XAPI object, as XAPI writes it: `OpaqueRef:<uuid>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpaqueRef(pub String);

impl Default for OpaqueRef {
    /// XAPI's default for a reference field is the null reference.
    fn default() -> Self {
        OpaqueRef::null()
    }
}

impl OpaqueRef {
    /// The null reference, `OpaqueRef:NULL`.
    pub const NULL_STR: &'static str = "OpaqueRef:NULL";

    /// The null reference.
    pub fn null() -> Self {
        OpaqueRef(Self::NULL_STR.to_string())
    }

    /// A reference built from a uuid.
    pub fn from_uuid(uuid: &str) -> Self {
        OpaqueRef(format!("OpaqueRef:{uuid}"))
    }

    /// True for `OpaqueRef:NULL` (and for the empty string some clients send).
    pub fn is_null(&self) -> bool {
        self.0 == Self::NULL_STR || self.0.is_empty()
    }

    /// The reference as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OpaqueRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for OpaqueRef {
    fn from(s: &str) -> Self {
        OpaqueRef(s.to_string())
    }
}
