//! XML-RPC as XAPI writes it: int64 as untyped strings, `boolean` as 0/1,
//! void as an empty value, replies wrapped in `{Status, Value}` or
//! `{Status: "Failure", ErrorDescription}`.

use super::{MAX_DEPTH, WireError, malformed};
use crate::{Value, XapiError};
use quick_xml::XmlVersion;
use quick_xml::events::Event;
use quick_xml::reader::Reader;
use serde_json::Map;
use std::fmt::Write;

/// A simplified XML token: elements and merged text runs.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open(String),
    Close(String),
    Text(String),
}

fn tokenize(body: &str) -> Result<Vec<Token>, WireError> {
    let mut reader = Reader::from_str(body);
    let mut tokens = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, tokens: &mut Vec<Token>| {
        if !text.is_empty() {
            tokens.push(Token::Text(std::mem::take(text)));
        }
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| malformed("XML", format!("{e} at byte {}", reader.buffer_position())))?;
        match event {
            Event::Start(e) => {
                flush(&mut text, &mut tokens);
                tokens.push(Token::Open(e.name().as_ref().to_string()));
            }
            Event::End(e) => {
                flush(&mut text, &mut tokens);
                tokens.push(Token::Close(e.name().as_ref().to_string()));
            }
            Event::Empty(e) => {
                flush(&mut text, &mut tokens);
                let name = e.name().as_ref().to_string();
                tokens.push(Token::Open(name.clone()));
                tokens.push(Token::Close(name));
            }
            Event::Text(t) => text.push_str(&t.xml_content(XmlVersion::Implicit1_0)),
            Event::CData(c) => text.push_str(&c.into_inner()),
            Event::GeneralRef(r) => {
                if let Some(c) = r
                    .resolve_char_ref()
                    .map_err(|e| malformed("XML", e.to_string()))?
                {
                    text.push(c);
                } else {
                    let name = r.into_inner();
                    text.push(match name.as_ref() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "quot" => '"',
                        "apos" => '\'',
                        other => return Err(WireError::Entity(format!("&{other};"))),
                    });
                }
            }
            Event::DocType(_) => return Err(WireError::Entity("<!DOCTYPE>".into())),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    flush(&mut text, &mut tokens);
    Ok(tokens)
}

/// A cursor over tokens that skips whitespace between elements.
struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn skip_space(&mut self) {
        while let Some(Token::Text(t)) = self.tokens.get(self.at) {
            if !t.trim().is_empty() {
                break;
            }
            self.at += 1;
        }
    }

    fn open(&mut self, name: &str) -> Result<(), WireError> {
        self.skip_space();
        match self.tokens.get(self.at) {
            Some(Token::Open(n)) if n == name => {
                self.at += 1;
                Ok(())
            }
            other => Err(malformed(
                "XML-RPC",
                format!("expected <{name}>, found {other:?}"),
            )),
        }
    }

    fn close(&mut self, name: &str) -> Result<(), WireError> {
        self.skip_space();
        match self.tokens.get(self.at) {
            Some(Token::Close(n)) if n == name => {
                self.at += 1;
                Ok(())
            }
            other => Err(malformed(
                "XML-RPC",
                format!("expected </{name}>, found {other:?}"),
            )),
        }
    }

    fn peek_open(&mut self) -> Option<String> {
        self.skip_space();
        match self.tokens.get(self.at) {
            Some(Token::Open(n)) => Some(n.clone()),
            _ => None,
        }
    }

    /// Text up to the closing tag (empty if none), without skipping whitespace.
    fn text(&mut self) -> String {
        match self.tokens.get(self.at) {
            Some(Token::Text(t)) => {
                self.at += 1;
                t.clone()
            }
            _ => String::new(),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, WireError> {
        if depth > MAX_DEPTH {
            return Err(WireError::TooDeep);
        }
        self.open("value")?;
        // An untyped value is a string; look past whitespace for a type element.
        let start = self.at;
        let typed = self.peek_open();
        let v = match typed.as_deref() {
            None => {
                self.at = start;
                Value::String(self.text())
            }
            Some(kind) => self.typed(kind.to_string(), depth)?,
        };
        self.close("value")?;
        Ok(v)
    }

    fn typed(&mut self, kind: String, depth: usize) -> Result<Value, WireError> {
        self.open(&kind)?;
        let v = match kind.as_str() {
            "string" | "dateTime.iso8601" | "base64" => Value::String(self.text()),
            "int" | "i4" | "i8" => {
                let t = self.text();
                let n: i64 = t.trim().parse().map_err(|_| {
                    malformed("XML-RPC", format!("<{kind}>{t}</{kind}> is not an integer"))
                })?;
                Value::from(n)
            }
            "boolean" => match self.text().trim() {
                "1" => Value::Bool(true),
                "0" => Value::Bool(false),
                t => {
                    return Err(malformed(
                        "XML-RPC",
                        format!("<boolean>{t}</boolean> is not 0 or 1"),
                    ));
                }
            },
            "double" => {
                let t = self.text();
                let f: f64 = t.trim().parse().map_err(|_| {
                    malformed("XML-RPC", format!("<double>{t}</double> is not a number"))
                })?;
                serde_json::Number::from_f64(f)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
            "nil" => Value::Null,
            "array" => {
                self.open("data")?;
                let mut items = Vec::new();
                while self.peek_open().as_deref() == Some("value") {
                    items.push(self.value(depth + 1)?);
                }
                self.close("data")?;
                Value::Array(items)
            }
            "struct" => {
                let mut map = Map::new();
                while self.peek_open().as_deref() == Some("member") {
                    self.open("member")?;
                    self.open("name")?;
                    let name = self.text();
                    self.close("name")?;
                    let v = self.value(depth + 1)?;
                    self.close("member")?;
                    map.insert(name, v);
                }
                Value::Object(map)
            }
            other => {
                return Err(malformed(
                    "XML-RPC",
                    format!("unknown value type <{other}>"),
                ));
            }
        };
        self.close(&kind)?;
        Ok(v)
    }

    fn end(&mut self) -> Result<(), WireError> {
        self.skip_space();
        match self.tokens.get(self.at) {
            None => Ok(()),
            Some(t) => Err(malformed(
                "XML-RPC",
                format!("unexpected {t:?} after the document"),
            )),
        }
    }
}

/// Parses a `methodCall`: the method name and its parameters.
pub fn parse_call(body: &str) -> Result<(String, Vec<Value>), WireError> {
    let mut p = Parser {
        tokens: tokenize(body)?,
        at: 0,
    };
    p.open("methodCall")?;
    p.open("methodName")?;
    let method = p.text().trim().to_string();
    p.close("methodName")?;
    let mut params = Vec::new();
    if p.peek_open().as_deref() == Some("params") {
        p.open("params")?;
        while p.peek_open().as_deref() == Some("param") {
            p.open("param")?;
            params.push(p.value(0)?);
            p.close("param")?;
        }
        p.close("params")?;
    }
    p.close("methodCall")?;
    p.end()?;
    if method.is_empty() {
        return Err(malformed("XML-RPC", "empty methodName"));
    }
    Ok((method, params))
}

/// Parses a `methodResponse` carrying XAPI's `{Status, Value | ErrorDescription}`
/// (or, for `system.listMethods`, a bare value).
pub fn parse_response(body: &str) -> Result<Result<Value, XapiError>, WireError> {
    let mut p = Parser {
        tokens: tokenize(body)?,
        at: 0,
    };
    p.open("methodResponse")?;
    let v = if p.peek_open().as_deref() == Some("fault") {
        p.open("fault")?;
        let v = p.value(0)?;
        p.close("fault")?;
        let text = v
            .get("faultString")
            .and_then(Value::as_str)
            .unwrap_or("XML-RPC fault")
            .to_string();
        return Ok(Err(XapiError::internal(text)));
    } else {
        p.open("params")?;
        p.open("param")?;
        let v = p.value(0)?;
        p.close("param")?;
        p.close("params")?;
        v
    };
    p.close("methodResponse")?;
    p.end()?;
    Ok(unwrap_status(v))
}

/// Parses one `<value>` element on its own, as a task's `result` carries
/// its call's result; empty text (a call that returns nothing) is null.
pub fn parse_value(text: &str) -> Result<Value, WireError> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    let mut p = Parser {
        tokens: tokenize(text)?,
        at: 0,
    };
    let v = p.value(0)?;
    p.end()?;
    Ok(v)
}

/// Unwraps XAPI's `{Status, Value}` envelope; a bare value passes through.
fn unwrap_status(v: Value) -> Result<Value, XapiError> {
    match v.get("Status").and_then(Value::as_str) {
        Some("Success") => Ok(v.get("Value").cloned().unwrap_or(Value::Null)),
        Some(_) => {
            let description = super::strings(v.get("ErrorDescription"));
            Err(XapiError::from_description(&description))
        }
        None => Ok(v),
    }
}

/// Renders a reply as XAPI does: `{Status: Success, Value}` or
/// `{Status: Failure, ErrorDescription}`.
pub fn render_response(result: &Result<Value, XapiError>) -> String {
    let envelope = match result {
        Ok(v) => serde_json::json!({"Status": "Success", "Value": v}),
        Err(e) => serde_json::json!({"Status": "Failure", "ErrorDescription": e.description()}),
    };
    render_bare_response(&envelope)
}

/// Renders a reply without the Status envelope (`system.listMethods`).
pub fn render_bare_response(v: &Value) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodResponse><params><param>");
    write_value(&mut out, v);
    out.push_str("</param></params></methodResponse>\n");
    out
}

/// Renders a `methodCall`.
pub fn render_call(method: &str, params: &[Value]) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?>\n<methodCall><methodName>");
    escape_into(&mut out, method);
    out.push_str("</methodName><params>");
    for p in params {
        out.push_str("<param>");
        write_value(&mut out, p);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>\n");
    out
}

/// One `<value>` element, as XAPI writes task results.
pub fn render_value(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    out.push_str("<value>");
    match v {
        Value::Null => {}
        Value::String(s) => escape_into(out, s),
        Value::Bool(b) => {
            let _ = write!(out, "<boolean>{}</boolean>", u8::from(*b));
        }
        Value::Number(n) => match n.as_i64() {
            // XAPI sends int64 as untyped strings.
            Some(i) => {
                let _ = write!(out, "{i}");
            }
            None => {
                let _ = write!(out, "<double>{}</double>", n.as_f64().unwrap_or(0.0));
            }
        },
        Value::Array(items) => {
            out.push_str("<array><data>");
            items.iter().for_each(|i| write_value(out, i));
            out.push_str("</data></array>");
        }
        Value::Object(_) if super::as_datetime(v).is_some() => {
            out.push_str("<dateTime.iso8601>");
            escape_into(out, super::as_datetime(v).unwrap_or_default());
            out.push_str("</dateTime.iso8601>");
        }
        Value::Object(map) => {
            out.push_str("<struct>");
            for (k, v) in map {
                out.push_str("<member><name>");
                escape_into(out, k);
                out.push_str("</name>");
                write_value(out, v);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_task_result_parses_back_to_the_value_it_was_rendered_from() {
        for v in [
            Value::from("OpaqueRef:5a1c"),
            serde_json::json!({"a": ["x", true, "3"]}),
        ] {
            assert_eq!(parse_value(&render_value(&v)).unwrap(), v);
        }
        assert_eq!(parse_value("").unwrap(), Value::Null);
        assert!(parse_value("<value>x</value><value>y</value>").is_err());
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn parses_what_python_sends() {
        let body = r#"<?xml version='1.0'?>
<methodCall>
<methodName>VM.start</methodName>
<params>
<param><value><string>OpaqueRef:s</string></value></param>
<param><value>OpaqueRef:vm &amp; co</value></param>
<param><value><boolean>0</boolean></value></param>
<param><value><int>7</int></value></param>
<param><value><struct><member><name>k</name><value><array><data><value><i8>-3</i8></value><value/></data></array></value></member></struct></value></param>
</params>
</methodCall>"#;
        let (method, params) = parse_call(body).unwrap();
        assert_eq!(method, "VM.start");
        assert_eq!(
            params,
            vec![
                json!("OpaqueRef:s"),
                json!("OpaqueRef:vm & co"),
                json!(false),
                json!(7),
                json!({"k": [-3, ""]})
            ]
        );
    }

    #[test]
    fn renders_like_xapi_and_round_trips() {
        let ok = render_response(&Ok(
            json!({"memory": 268435456, "live": true, "progress": 0.5, "name": "a<b"}),
        ));
        assert!(
            ok.contains("<name>memory</name><value>268435456</value>"),
            "int64 as untyped string: {ok}"
        );
        assert!(ok.contains("<boolean>1</boolean>"));
        assert!(ok.contains("a&lt;b"));
        let back = parse_response(&ok).unwrap().unwrap();
        assert_eq!(back["memory"], "268435456");
        assert_eq!(back["progress"], 0.5);
        let err = render_response(&Err(XapiError::handle_invalid("VM", "OpaqueRef:x")));
        assert_eq!(
            parse_response(&err).unwrap(),
            Err(XapiError::handle_invalid("VM", "OpaqueRef:x"))
        );
        let call = render_call("VM.clone", &[json!("s"), json!("ABD 1")]);
        assert_eq!(
            parse_call(&call).unwrap(),
            ("VM.clone".to_string(), vec![json!("s"), json!("ABD 1")])
        );
    }

    #[test]
    fn rejects_entities_deep_nesting_and_garbage() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><methodCall><methodName>&lol2;</methodName></methodCall>"#;
        assert!(matches!(parse_call(bomb), Err(WireError::Entity(_))));
        let custom = "<methodCall><methodName>&custom;</methodName></methodCall>";
        assert_eq!(
            parse_call(custom),
            Err(WireError::Entity("&custom;".into()))
        );
        let deep = format!(
            "<methodCall><methodName>m</methodName><params><param>{}{}</param></params></methodCall>",
            "<value><array><data>".repeat(100),
            "</data></array></value>".repeat(100)
        );
        assert_eq!(parse_call(&deep), Err(WireError::TooDeep));
        assert!(matches!(
            parse_call("<methodCall><methodName>m</methodCall>"),
            Err(WireError::Malformed { .. })
        ));
        assert!(matches!(
            parse_call("not xml at all"),
            Err(WireError::Malformed { .. })
        ));
        assert!(matches!(
            parse_call(
                "<methodCall><methodName>m</methodName><params><param><value><int>x</int></value></param></params></methodCall>"
            ),
            Err(WireError::Malformed { .. })
        ));
    }
}
