//! The wire codecs XAPI speaks: XML-RPC (the default) and JSON-RPC (v1 and v2).
//! Used by the simulator's HTTP server and by the engine's HTTP transport.

pub mod jsonrpc;
pub mod xmlrpc;

/// A body that is not a well-formed call or reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not well-formed, or not the expected shape; says what and where.
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("values nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A DTD or an entity other than XML's five (no entity expansion, ever).
    #[error("DTDs and custom entities are not accepted ({0})")]
    Entity(String),
}

/// How deep arrays and structs may nest in one body.
pub const MAX_DEPTH: usize = 64;

pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> WireError {
    WireError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// The strings of an array value (non-strings as their JSON text); empty if absent.
pub(crate) fn strings(v: Option<&crate::Value>) -> Vec<String> {
    v.and_then(crate::Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}
