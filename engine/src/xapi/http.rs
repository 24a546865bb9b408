//! XAPI over HTTP(S): XML-RPC (the default) or JSON-RPC to a pool master, with
//! keep-alive, timeouts, certificate verification by default, and a base URL
//! the client moves to the master when a pool member answers HOST_IS_SLAVE.

use super::vhd_stream::VhdStream;
use super::{CallError, RawImage, Transport};
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xapi_proto::wire::{jsonrpc, xmlrpc};
use xapi_proto::{Value, XapiError};

/// Which XAPI encoding to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// XML-RPC at `/` (what XAPI has always served).
    #[default]
    XmlRpc,
    /// JSON-RPC 2.0 at `/jsonrpc`.
    JsonRpc,
}

/// How the server's certificate is checked (HTTPS only).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// Verify against the system's trusted roots.
    #[default]
    Verify,
    /// Also trust the PEM certificates in this file (a pool's self-signed
    /// certificate, or its hosts' certificates one after another).
    Trust(PathBuf),
    /// Accept any certificate (lab pools only).
    SkipVerification,
}

/// Longest a single XAPI call may take by default.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Settings of an HTTP transport.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub protocol: Protocol,
    pub tls: TlsPolicy,
    /// Longest a single call may take.
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            protocol: Protocol::XmlRpc,
            tls: TlsPolicy::Verify,
            call_timeout: CALL_TIMEOUT,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// How much of an unexpected reply an error message quotes.
const QUOTE_BYTES: usize = 200;

/// Carries XAPI calls to a pool master over HTTP(S).
pub struct HttpTransport {
    client: reqwest::Client,
    uploads: reqwest::Client,
    base: Mutex<reqwest::Url>,
    protocol: Protocol,
    next_id: AtomicU64,
}

impl HttpTransport {
    /// A transport to the pool at `url` (`http://host[:port]` or `https://...`).
    pub fn new(url: &str, options: &HttpOptions) -> Result<Self, CallError> {
        let base = reqwest::Url::parse(url)
            .map_err(|e| CallError::Transport(format!("bad pool URL {url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(CallError::Transport(format!(
                "pool URL {url:?} is neither http nor https"
            )));
        }
        let client = build_client(options, true)?;
        // Uploads go on connections of their own, opened for each: a
        // streamed body cannot be sent again when a kept-alive connection
        // turns out to have been closed by the server.
        let uploads = build_client(options, false)?;
        Ok(HttpTransport {
            client,
            uploads,
            base: Mutex::new(base),
            protocol: options.protocol,
            next_id: AtomicU64::new(1),
        })
    }

    /// The master this transport talks to now.
    pub fn url(&self) -> String {
        self.base.lock().expect("url lock poisoned").to_string()
    }

    async fn post_once(
        &self,
        host: Option<&str>,
        method: &str,
        params: &[Value],
    ) -> Result<Result<Value, XapiError>, CallError> {
        let mut base = self.base.lock().expect("url lock poisoned").clone();
        if let Some(host) = host {
            base.set_host(Some(host))
                .map_err(|e| CallError::Transport(format!("bad host address {host:?}: {e}")))?;
        }
        let (url, content_type, body) = match self.protocol {
            Protocol::XmlRpc => (base, "text/xml", xmlrpc::render_call(method, params)),
            Protocol::JsonRpc => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let url = base
                    .join("/jsonrpc")
                    .map_err(|e| CallError::Transport(e.to_string()))?;
                (
                    url,
                    "application/json",
                    jsonrpc::render_request(method, params, id).to_string(),
                )
            }
        };
        let reply = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                // Not connected: the request never left, whatever the method.
                let unreachable = never_connected(&e);
                let what = format!("{method} to {url}: {}", describe(e));
                if unreachable {
                    CallError::Unreachable(what)
                } else {
                    CallError::Transport(what)
                }
            })?;
        let status = reply.status();
        let text = reply.text().await.map_err(|e| {
            CallError::Transport(format!("{method}: reading the reply: {}", describe(e)))
        })?;
        if !status.is_success() {
            let quote: String = text.chars().take(QUOTE_BYTES).collect();
            return Err(CallError::Transport(format!(
                "{method}: HTTP {status}: {quote}"
            )));
        }
        let parsed = match self.protocol {
            Protocol::XmlRpc => xmlrpc::parse_response(&text),
            Protocol::JsonRpc => jsonrpc::parse_response(&text),
        };
        parsed.map_err(|e| CallError::Decode {
            method: method.to_string(),
            detail: e.to_string(),
        })
    }

    /// `PUT /import_raw_vdi`: the image streamed as it is written (by a
    /// blocking task), raw or, for a sparse image, as a dynamic VHD
    /// (`format=vhd`), with its length announced, since XAPI reads either
    /// by its Content-Length.
    async fn put_image(&self, session: &str, vdi: &str, image: RawImage) -> Result<(), CallError> {
        let mut url = self
            .base
            .lock()
            .expect("url lock poisoned")
            .join("/import_raw_vdi")
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let (format, content_type) = match image.allocated {
            Some(_) => ("vhd", "application/vhd"),
            None => ("raw", "application/octet-stream"),
        };
        url.query_pairs_mut()
            .append_pair("session_id", session)
            .append_pair("vdi", vdi)
            .append_pair("format", format);
        let (pieces, body) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
        let wire = image.wire_bytes();
        let unique_id = vdi.to_string();
        let writer = tokio::task::spawn_blocking(move || {
            let mut sink = ImageStream {
                pieces,
                next: 0,
                size: wire,
                cut_off: false,
                on_sent: Arc::clone(&image.on_sent),
            };
            let written = match &image.allocated {
                None => (image.write)(&mut sink),
                Some(allocated) => {
                    let send = |piece: Vec<u8>| sink.push(piece);
                    VhdStream::start(image.size, allocated.to_vec(), &unique_id, send)
                        .map_err(|e| e.to_string())
                        .and_then(|mut vhd| {
                            (image.write)(&mut vhd)?;
                            vhd.finish().map_err(|e| e.to_string())
                        })
                }
            };
            match written {
                Ok(()) if sink.next == wire => Ok(()),
                Ok(()) => Err((
                    format!("the image stopped at {} of {wire} bytes", sink.next),
                    false,
                )),
                Err(e) => {
                    // The server must not take a short body for a whole one.
                    let _ = sink
                        .pieces
                        .blocking_send(Err(std::io::Error::other(e.clone())));
                    Err((e, sink.cut_off))
                }
            }
        });
        let stream = futures_util::stream::unfold(body, |mut body| async move {
            body.recv().await.map(|piece| (piece, body))
        });
        let sent = self
            .uploads
            .put(url.clone())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(reqwest::header::CONTENT_LENGTH, wire)
            .body(reqwest::Body::wrap_stream(stream))
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await;
        let written = writer
            .await
            .map_err(|e| CallError::Transport(format!("the image writer died: {e}")))?;
        // A writer that failed on its own broke the upload: its reason is
        // the one. One the upload cut off failed for the server's reason.
        if let Err((why, false)) = &written {
            return Err(CallError::Transport(format!(
                "writing the image of VDI {vdi}: {why}"
            )));
        }
        let reply = sent.map_err(|e| {
            let what = format!("uploading VDI {vdi}: {}", describe(e));
            CallError::Transport(what)
        })?;
        let status = reply.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(CallError::Xapi(XapiError::new(
                xapi_proto::codes::SESSION_INVALID,
                [session],
            )));
        }
        if !status.is_success() {
            let text = reply.text().await.unwrap_or_default();
            let quote: String = text.chars().take(QUOTE_BYTES).collect();
            return Err(CallError::Transport(format!(
                "uploading VDI {vdi}: HTTP {status}: {quote}"
            )));
        }
        if let Err((why, _)) = written {
            return Err(CallError::Transport(format!(
                "uploading VDI {vdi}: the server stopped reading ({why})"
            )));
        }
        Ok(())
    }

    /// Points the base URL at `master` (an address; scheme and port stay).
    fn redirect_to_master(&self, master: &str) -> Result<bool, CallError> {
        let mut base = self.base.lock().expect("url lock poisoned");
        let moved = base.host_str() != Some(master);
        base.set_host(Some(master)).map_err(|e| {
            CallError::Transport(format!("HOST_IS_SLAVE names a bad master {master:?}: {e}"))
        })?;
        Ok(moved)
    }
}

/// A client with `options`' timeouts and certificate policy; `keep_alive`
/// keeps idle connections for later requests.
fn build_client(options: &HttpOptions, keep_alive: bool) -> Result<reqwest::Client, CallError> {
    let mut builder = reqwest::Client::builder()
        .timeout(options.call_timeout)
        .connect_timeout(options.connect_timeout);
    builder = match keep_alive {
        true => builder.pool_idle_timeout(Duration::from_secs(90)),
        false => builder.pool_max_idle_per_host(0),
    };
    match &options.tls {
        TlsPolicy::Verify => {}
        TlsPolicy::Trust(pem) => {
            let bytes = std::fs::read(pem).map_err(|e| {
                CallError::Transport(format!("cannot read certificate {}: {e}", pem.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&bytes).map_err(|e| {
                CallError::Transport(format!("bad certificate {}: {e}", pem.display()))
            })?;
            if certs.is_empty() {
                return Err(CallError::Transport(format!(
                    "{} holds no PEM certificate",
                    pem.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        TlsPolicy::SkipVerification => builder = builder.danger_accept_invalid_certs(true),
    }
    builder
        .build()
        .map_err(|e| CallError::Transport(e.to_string()))
}

/// The body of an upload: pieces in order, as the image's writer makes them.
struct ImageStream {
    pieces: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    /// Where the next piece must start.
    next: u64,
    size: u64,
    /// The upload stopped taking pieces (the server answered or hung up).
    cut_off: bool,
    on_sent: Arc<super::OnSent>,
}

impl ads::DiskTarget for ImageStream {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if offset != self.next || offset + data.len() as u64 > self.size {
            return Err(std::io::Error::other(format!(
                "an upload is written in order: {} bytes at {offset}, expected {} of {}",
                data.len(),
                self.next,
                self.size
            )));
        }
        self.push(data.to_vec())
    }
}

impl ImageStream {
    /// Sends the next piece of the body.
    fn push(&mut self, piece: Vec<u8>) -> std::io::Result<()> {
        let len = piece.len() as u64;
        if self.pieces.blocking_send(Ok(piece)).is_err() {
            self.cut_off = true;
            return Err(std::io::Error::other("the upload stopped"));
        }
        self.next += len;
        (self.on_sent)(self.next);
        Ok(())
    }
}

/// True when the connection itself failed (refused, no route, connect
/// timeout), so the request was never sent. TLS and name errors are not
/// this: they do not pass by waiting.
fn never_connected(e: &reqwest::Error) -> bool {
    use std::io::ErrorKind;
    if !e.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkDown
                    | ErrorKind::TimedOut
                    | ErrorKind::AddrNotAvailable
            );
        }
        source = err.source();
    }
    // A connect timeout carries no I/O error.
    e.is_timeout()
}

/// A reqwest error, with the causes under it (where a refused connection or
/// an untrusted certificate is named), without the request URL's query
/// (which may carry a session).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    let e = e.without_url();
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[async_trait]
impl Transport for HttpTransport {
    async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, CallError> {
        self.post_once(None, method, &params)
            .await?
            .map_err(CallError::Xapi)
    }

    async fn call_to(
        &self,
        address: &str,
        method: &str,
        params: Vec<Value>,
    ) -> Result<Value, CallError> {
        self.post_once(Some(address), method, &params)
            .await?
            .map_err(CallError::Xapi)
    }

    fn redirect(&self, address: &str) -> Result<bool, CallError> {
        self.redirect_to_master(address)
    }

    async fn import_raw_vdi(
        &self,
        session: &str,
        vdi: &str,
        image: RawImage,
    ) -> Result<(), CallError> {
        self.put_image(session, vdi, image).await
    }

    fn address(&self) -> Option<String> {
        let base = self.base.lock().expect("url lock poisoned");
        base.host_str().map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_a_bad_reply_is_not() {
        // A port nobody listens on: refused, so the call was never sent.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let transport = HttpTransport::new(&url, &HttpOptions::default()).unwrap();
        let refused = transport.call("VM.get_all", vec![]).await;
        assert!(
            matches!(&refused, Err(CallError::Unreachable(_))),
            "{refused:?}"
        );
        // Something listens but does not speak XAPI: it was reached.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut socket, _) = listener.accept().await.unwrap();
            let _ = socket
                .write_all(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let transport = HttpTransport::new(&url, &HttpOptions::default()).unwrap();
        let broken = transport.call("VM.get_all", vec![]).await;
        assert!(
            matches!(&broken, Err(CallError::Transport(_))),
            "{broken:?}"
        );
    }
}
