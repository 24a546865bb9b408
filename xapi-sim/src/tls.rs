//! HTTPS for served pools, as a fresh XAPI host has it: a self-signed
//! certificate made at start (XAPI's `xapi-ssl.pem`), so clients can be tried
//! with verification on (and failing), with the certificate trusted, or with
//! verification skipped.

use axum::serve::Listener;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;

/// Longest a client may take over its TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const READY_BACKLOG: usize = 64;

/// Why HTTPS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot make a self-signed certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot set up TLS: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}

/// A self-signed certificate and the server side of TLS that presents it.
#[derive(Clone)]
pub struct SelfSigned {
    /// The certificate, PEM-encoded: what a client is told to trust.
    pub cert_pem: String,
    acceptor: TlsAcceptor,
}

impl SelfSigned {
    /// A new certificate valid for `names` (host names or IP addresses).
    pub fn new(names: &[String]) -> Result<Self, TlsError> {
        let made = rcgen::generate_simple_self_signed(names.to_vec())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![made.cert.der().clone()], key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(SelfSigned {
            cert_pem: made.cert.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// `listener`'s connections, each once its handshake is done.
    /// Connections `admission` refuses are reset before the handshake.
    pub fn listen(
        &self,
        listener: TcpListener,
        admission: crate::endpoints::Admission,
    ) -> io::Result<TlsListener> {
        TlsListener::new(listener, self.acceptor.clone(), admission)
    }
}

/// A TCP listener whose connections come out with TLS set up. Handshakes run
/// side by side, each bounded in time, so a silent client holds up no other.
/// Dropping it closes the socket.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        admission: crate::endpoints::Admission,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (hand_over, ready) = mpsc::channel(READY_BACKLOG);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("accepting a connection on {local}: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if !admission() {
                    crate::endpoints::refuse(tcp);
                    continue;
                }
                let (acceptor, hand_over) = (acceptor.clone(), hand_over.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = hand_over.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            ready,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task holds a sender until it is aborted on drop.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
