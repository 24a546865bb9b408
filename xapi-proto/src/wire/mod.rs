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

/// A datetime value, as a server holds it before rendering: XML-RPC sends it
/// as `<dateTime.iso8601>`, JSON-RPC as its plain text (as XAPI does). A
/// reply parsed from the wire gives the text as a string.
pub const DATETIME_KEY: &str = "$dateTime.iso8601";

/// `text` (XAPI's `20240101T00:00:00Z` form) marked as a datetime.
pub fn datetime(text: &str) -> crate::Value {
    let mut map = serde_json::Map::new();
    map.insert(DATETIME_KEY.into(), crate::Value::from(text));
    crate::Value::Object(map)
}

/// The text of a value [`datetime`] marked.
pub fn as_datetime(v: &crate::Value) -> Option<&str> {
    match v {
        crate::Value::Object(map) if map.len() == 1 => map.get(DATETIME_KEY)?.as_str(),
        _ => None,
    }
}

/// Turns every marked datetime in `v` back into its plain text.
pub fn plain_datetimes(v: &mut crate::Value) {
    if let Some(text) = as_datetime(v) {
        *v = crate::Value::from(text);
        return;
    }
    match v {
        crate::Value::Array(items) => items.iter_mut().for_each(plain_datetimes),
        crate::Value::Object(map) => map.values_mut().for_each(plain_datetimes),
        _ => {}
    }
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
