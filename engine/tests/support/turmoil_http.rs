//! HTTP/1 over turmoil's simulated TCP, for the tests that put the engine's
//! clients and real servers on a simulated network: a server loop for an
//! axum router, and one request per connection on the client side, failing
//! as the engine's links tell failures apart.

use axum::http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Longest wait for a connection before the peer counts as unreachable.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// Longest wait for a reply once the request went out.
const REPLY_LIMIT: Duration = Duration::from_secs(60);

/// Why a request got no answer.
#[derive(Debug)]
pub enum Failure {
    /// No connection: nothing was sent.
    Unreachable(String),
    /// Sent, but the exchange broke or no reply came: it may have been acted on.
    Broken(String),
}

/// Serves `router` on `port` of this host, each connection in its own task.
pub async fn serve(router: axum::Router, port: u16) -> turmoil::Result {
    let listener =
        turmoil::net::TcpListener::bind((IpAddr::from(Ipv4Addr::UNSPECIFIED), port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Sends `request` to `host:port` on a connection of its own.
pub async fn exchange(
    host: (IpAddr, u16),
    request: Request<Vec<u8>>,
) -> Result<Response<Vec<u8>>, Failure> {
    let peer = host.0;
    let connect = turmoil::net::TcpStream::connect(host);
    let stream = match tokio::time::timeout(CONNECT_LIMIT, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(Failure::Unreachable(format!(
                "{peer}: cannot connect ({e})"
            )));
        }
        Err(_) => return Err(Failure::Unreachable(format!("{peer}: connect timed out"))),
    };
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, Full::new(bytes::Bytes::from(body)));
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>(Response::from_parts(parts, body.to_vec()))
    };
    match tokio::time::timeout(REPLY_LIMIT, exchange).await {
        Ok(result) => result.map_err(Failure::Broken),
        Err(_) => Err(Failure::Broken(format!(
            "{peer}: no reply in {} s",
            REPLY_LIMIT.as_secs()
        ))),
    }
}
