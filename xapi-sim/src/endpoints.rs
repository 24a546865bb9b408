//! A served pool's hosts, each at its own address, as XAPI has them: the
//! master performs calls, members answer HOST_IS_SLAVE naming the master, so
//! clients that follow a moving master can be tried. On loopback, host `k` of
//! a pool (the configured master first) listens on `127.0.0.k`, all on one port.

use crate::server::{Endpoint, PoolServer, router};
use crate::tls::SelfSigned;
use axum::Router;
use axum::serve::Listener;
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// One host's endpoint, bound and ready to serve.
pub struct HostEndpoint {
    /// The host's name_label.
    pub host: String,
    /// The host's address in the model (`host.address`).
    pub address: String,
    /// Where it answers (`http://ADDR`, or `https://ADDR` with TLS).
    pub url: String,
    pub listener: TcpListener,
    pub app: Router,
    /// The certificate it presents, when it serves HTTPS.
    tls: Option<SelfSigned>,
    /// The pool, to see whether the endpoint should listen.
    server: PoolServer,
    /// True when it serves as the host at `address`; false for the one
    /// endpoint that answers as whoever is master.
    serves_one_host: bool,
}

/// How often a served host's endpoint looks whether its host went down or
/// came back.
const LIVENESS_POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl HostEndpoint {
    /// Serves HTTPS instead, presenting `certificate`.
    pub fn with_tls(mut self, certificate: SelfSigned) -> Self {
        if let Some(rest) = self.url.strip_prefix("http://") {
            self.url = format!("https://{rest}");
        }
        self.tls = Some(certificate);
        self
    }

    /// The IP address it listens on.
    pub fn ip(&self) -> io::Result<std::net::IpAddr> {
        Ok(self.listener.local_addr()?.ip())
    }

    /// Serves the endpoint as its host would. While the host is down in the
    /// model (crashed), or, for the master, while an `xapi_unreachable`
    /// fault refuses every connection, nothing listens at its address:
    /// clients are refused as by a dead host or a stopped toolstack, and
    /// kept-alive connections close. It listens again once the host or its
    /// XAPI is back. A connection a rated `xapi_unreachable` fault refuses
    /// is reset before any request is read. Requests under way when the
    /// endpoint stops listening are answered.
    pub async fn serve(self) -> io::Result<()> {
        let at = self.listener.local_addr()?;
        let watched = self.serves_one_host.then_some(self.address);
        let server = self.server;
        let mut listener = Some(self.listener);
        loop {
            while !server.listens_at(watched.as_deref()) {
                listener = None;
                tokio::time::sleep(LIVENESS_POLL).await;
            }
            let bound = match listener.take() {
                Some(bound) => bound,
                None => TcpListener::bind(at).await?,
            };
            let (still, address) = (server.clone(), watched.clone());
            let stops_listening = async move {
                while still.listens_at(address.as_deref()) {
                    tokio::time::sleep(LIVENESS_POLL).await;
                }
            };
            let (admits, address) = (server.clone(), watched.clone());
            let admission: Admission =
                Arc::new(move || admits.admits_connection(address.as_deref()));
            let app = self.app.clone();
            serve_until(bound, admission, app, self.tls.as_ref(), stops_listening).await?;
        }
    }
}

/// Whether a connection accepted now is let through to the server.
pub type Admission = Arc<dyn Fn() -> bool + Send + Sync>;

/// A TCP listener that resets the connections its [`Admission`] refuses, as
/// a host whose XAPI is not answering would.
struct Admitting {
    listener: TcpListener,
    admission: Admission,
}

impl Listener for Admitting {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, peer) = Listener::accept(&mut self.listener).await;
            if (self.admission)() {
                return (stream, peer);
            }
            refuse(stream);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// Drops `stream` with a reset (`SO_LINGER` 0), so its client hears no
/// reply at all, as from a refused connection.
pub(crate) fn refuse(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Serves `app` on `listener` (over TLS with `tls`) until `stop` completes,
/// letting through the connections `admission` admits.
async fn serve_until(
    listener: TcpListener,
    admission: Admission,
    app: Router,
    tls: Option<&SelfSigned>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    match tls {
        None => {
            let listener = Admitting {
                listener,
                admission,
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(certificate) => {
            axum::serve(certificate.listen(listener, admission)?, app)
                .with_graceful_shutdown(stop)
                .await
        }
    }
}

/// Tries to bind the pool's endpoints this many times when a free port was
/// asked for and a member's address already had it taken.
const BIND_ATTEMPTS: usize = 8;

/// Binds `server`'s pool at `addr`. On `127.0.0.1` every host gets an
/// endpoint (`127.0.0.k`, same port; the configured master's first); on any
/// other address there is one endpoint, answering as whoever is master.
pub async fn bind_pool(server: PoolServer, addr: SocketAddr) -> io::Result<Vec<HostEndpoint>> {
    let hosts = hosts_in_order(&server);
    let port = addr.port();
    if addr.ip() != Ipv4Addr::LOCALHOST {
        let listener = TcpListener::bind(addr).await?;
        let url = format!("http://{}", listener.local_addr()?);
        return Ok(vec![HostEndpoint {
            host: hosts
                .first()
                .map(|(name, _)| name.clone())
                .unwrap_or_default(),
            address: hosts
                .first()
                .map(|(_, address)| address.clone())
                .unwrap_or_default(),
            url,
            listener,
            app: router(server.clone()),
            tls: None,
            server,
            serves_one_host: false,
        }]);
    }
    let served: Arc<BTreeMap<String, String>> = Arc::new(
        hosts
            .iter()
            .enumerate()
            .map(|(k, (_, address))| (address.clone(), loopback(k).to_string()))
            .collect(),
    );
    let mut last_error = None;
    for _ in 0..BIND_ATTEMPTS {
        match bind_all(&server, &hosts, &served, port).await {
            Ok(endpoints) => return Ok(endpoints),
            Err(e) if port == 0 && e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("could not bind the pool's hosts")))
}

async fn bind_all(
    server: &PoolServer,
    hosts: &[(String, String)],
    served: &Arc<BTreeMap<String, String>>,
    port: u16,
) -> io::Result<Vec<HostEndpoint>> {
    let mut endpoints = Vec::with_capacity(hosts.len());
    let mut port = port;
    for (k, (name, address)) in hosts.iter().enumerate() {
        let listener = TcpListener::bind(SocketAddr::from((loopback(k), port))).await?;
        port = listener.local_addr()?.port();
        let endpoint = Endpoint::Host {
            address: address.clone(),
            served: Arc::clone(served),
        };
        endpoints.push(HostEndpoint {
            host: name.clone(),
            address: address.clone(),
            url: format!("http://{}", listener.local_addr()?),
            listener,
            app: router(server.clone().answering_as(endpoint)),
            tls: None,
            server: server.clone(),
            serves_one_host: true,
        });
    }
    Ok(endpoints)
}

/// Readdresses `server`'s pool for serving on loopback: host `k` (the
/// configured master first) gets `127.0.0.k`, in its records too, so a client
/// that reads host addresses (to fail over to a member) finds the endpoints.
pub fn readdress_for_loopback(server: &PoolServer) {
    let moves: Vec<(String, String)> = hosts_in_order(server)
        .into_iter()
        .enumerate()
        .map(|(k, (_, address))| (address, loopback(k).to_string()))
        .collect();
    server
        .sim
        .lock()
        .expect("simulator lock poisoned")
        .readdress_hosts(server.pool, &moves);
}

/// The loopback address of the pool's `k`-th host (from 0).
fn loopback(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + k as u8)
}

/// (name_label, address) of the pool's hosts: the configured master's first,
/// then by address.
fn hosts_in_order(server: &PoolServer) -> Vec<(String, String)> {
    let sim = server.sim.lock().expect("simulator lock poisoned");
    let configured = sim.configured_address(server.pool);
    let mut hosts: Vec<(String, String)> = sim
        .pool(server.pool)
        .hosts
        .values()
        .map(|h| (h.name_label.clone(), h.address.clone()))
        .collect();
    hosts.sort_by_key(|(_, address)| (*address != configured, address.clone()));
    hosts
}
