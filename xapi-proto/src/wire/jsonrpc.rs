//! JSON-RPC as XAPI serves it at `/jsonrpc`: v2 when the request says
//! `"jsonrpc": "2.0"` (bare `result`, errors as `{code: 1, message, data}`),
//! v1 otherwise (`error: [code, params...]`).

use super::{MAX_DEPTH, WireError, malformed};
use crate::{Value, XapiError};
use serde_json::json;

/// A parsed JSON-RPC request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    pub params: Vec<Value>,
    pub id: Value,
    /// True for JSON-RPC 2.0.
    pub v2: bool,
}

/// Parses a request body.
pub fn parse_request(body: &str) -> Result<Request, WireError> {
    let v: Value = serde_json::from_str(body).map_err(|e| malformed("JSON", e.to_string()))?;
    if depth(&v) > MAX_DEPTH {
        return Err(WireError::TooDeep);
    }
    let method = v
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("JSON-RPC", "no \"method\" string"))?
        .to_string();
    let params = match v.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(other) => {
            return Err(malformed(
                "JSON-RPC",
                format!("\"params\" must be an array, not {other}"),
            ));
        }
    };
    Ok(Request {
        method,
        params,
        id: v.get("id").cloned().unwrap_or(Value::Null),
        v2: v.get("jsonrpc").and_then(Value::as_str) == Some("2.0"),
    })
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Renders the reply to `request`.
pub fn render_response(request: &Request, result: &Result<Value, XapiError>) -> Value {
    // JSON-RPC carries datetimes as their text.
    let result = &result.clone().map(|mut v| {
        super::plain_datetimes(&mut v);
        v
    });
    match (request.v2, result) {
        (true, Ok(v)) => json!({"jsonrpc": "2.0", "result": v, "id": request.id}),
        (true, Err(e)) => {
            json!({"jsonrpc": "2.0", "error": {"code": 1, "message": e.code, "data": e.params}, "id": request.id})
        }
        (false, Ok(v)) => json!({"result": v, "error": null, "id": request.id}),
        (false, Err(e)) => json!({"result": null, "error": e.description(), "id": request.id}),
    }
}

/// Renders a JSON-RPC 2.0 call.
pub fn render_request(method: &str, params: &[Value], id: u64) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id})
}

/// Parses a reply (v1 or v2) into XAPI's result.
pub fn parse_response(body: &str) -> Result<Result<Value, XapiError>, WireError> {
    let v: Value = serde_json::from_str(body).map_err(|e| malformed("JSON", e.to_string()))?;
    match v.get("error") {
        None | Some(Value::Null) => Ok(Ok(v.get("result").cloned().unwrap_or(Value::Null))),
        Some(Value::Object(e)) => {
            let code = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("INTERNAL_ERROR");
            let params = super::strings(e.get("data"));
            Ok(Err(XapiError::new(code, params)))
        }
        Some(array @ Value::Array(_)) => {
            let d = super::strings(Some(array));
            Ok(Err(XapiError::from_description(&d)))
        }
        Some(other) => Err(malformed(
            "JSON-RPC",
            format!("unexpected error value {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_envelopes() {
        let v2 = parse_request(r#"{"jsonrpc":"2.0","method":"VM.get_all","params":["s"],"id":7}"#)
            .unwrap();
        assert!(v2.v2);
        let err = Err(XapiError::new("SESSION_INVALID", ["s"]));
        assert_eq!(
            render_response(&v2, &err),
            json!({"jsonrpc":"2.0","error":{"code":1,"message":"SESSION_INVALID","data":["s"]},"id":7})
        );
        let v1 = parse_request(r#"{"method":"VM.get_all","params":["s"],"id":"a"}"#).unwrap();
        assert_eq!(
            render_response(&v1, &err),
            json!({"result":null,"error":["SESSION_INVALID","s"],"id":"a"})
        );
        assert_eq!(
            parse_response(&render_response(&v1, &err).to_string()).unwrap(),
            err
        );
        assert_eq!(
            parse_response(&render_response(&v2, &err).to_string()).unwrap(),
            err
        );
        assert_eq!(
            parse_response(&render_response(&v2, &Ok(json!(3))).to_string()).unwrap(),
            Ok(json!(3))
        );
    }

    #[test]
    fn rejects_bad_requests() {
        assert!(parse_request("{").is_err());
        assert!(parse_request(r#"{"params":[]}"#).is_err());
        assert!(parse_request(r#"{"method":"x","params":{}}"#).is_err());
        let deep = format!(
            "{{\"method\":\"x\",\"params\":{}{}}}",
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(parse_request(&deep).is_err());
    }
}
