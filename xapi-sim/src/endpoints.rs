//! A served pool's hosts, each at its own address, as XAPI has them: the
//! master performs calls, members answer HOST_IS_SLAVE naming the master, so
//! clients that follow a moving master can be tried. On loopback, host `k` of
//! a pool (the configured master first) listens on `127.0.0.k`, all on one port.

use crate::server::{Endpoint, PoolServer, router};
use crate::tls::SelfSigned;
use axum::Router;
use std::collections::BTreeMap;
use std::future::pending;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpListener;

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
    /// The pool, to see whether the host is up; `None` for the one endpoint
    /// that answers as whoever is master.
    host_of: Option<PoolServer>,
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

    /// Serves the endpoint as its host would: while the host is down in the
    /// model (crashed), nothing listens at its address, so clients are
    /// refused as by a dead host; it listens again once the host is back.
    /// Requests under way when the host goes down are answered.
    pub async fn serve(self) -> io::Result<()> {
        let Some(server) = self.host_of else {
            return serve_until(self.listener, self.app, self.tls.as_ref(), pending()).await;
        };
        let at = self.listener.local_addr()?;
        let mut listener = Some(self.listener);
        loop {
            while !server.host_is_up(&self.address) {
                listener = None;
                tokio::time::sleep(LIVENESS_POLL).await;
            }
            let bound = match listener.take() {
                Some(bound) => bound,
                None => TcpListener::bind(at).await?,
            };
            let (watched, address) = (server.clone(), self.address.clone());
            let gone_down = async move {
                while watched.host_is_up(&address) {
                    tokio::time::sleep(LIVENESS_POLL).await;
                }
            };
            serve_until(bound, self.app.clone(), self.tls.as_ref(), gone_down).await?;
        }
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `stop` completes.
async fn serve_until(
    listener: TcpListener,
    app: Router,
    tls: Option<&SelfSigned>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(certificate) => {
            axum::serve(certificate.listen(listener)?, app)
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
            app: router(server),
            tls: None,
            host_of: None,
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
            host_of: Some(server.clone()),
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
