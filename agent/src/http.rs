//! One HTTP exchange with whole bodies, shared by every link between the
//! engine, its agents and its store: over the network (reqwest), or to an
//! axum service in the same process (no socket, same requests).

use axum::http::{HeaderMap, Request, Response, header};

/// Sends `request` (its URI holds path and query only) to `base` and reads
/// the whole answer.
pub async fn exchange(
    client: &reqwest::Client,
    base: &str,
    request: Request<Vec<u8>>,
) -> Result<Response<Vec<u8>>, reqwest::Error> {
    let (parts, body) = request.into_parts();
    let reply = client
        .request(parts.method, format!("{base}{}", parts.uri))
        .headers(parts.headers)
        .body(body)
        .send()
        .await?;
    let (status, headers) = (reply.status(), reply.headers().clone());
    let mut response = Response::new(reply.bytes().await?.to_vec());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Longest a request body may go without a byte arriving at a server on a
/// real network (the agent's, the data store's): a stalled or trickling peer
/// gets an error answer and cannot hold a connection for good.
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `router` as served on a real network: with [`BODY_IDLE_TIMEOUT`]. (Not
/// in simulation, where requests go to the router in-process on a clock
/// that jumps ahead while nothing is ready.)
pub fn served_on_the_network(router: axum::Router) -> axum::Router {
    router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        BODY_IDLE_TIMEOUT,
    ))
}

/// Serves `request` with `service` in this process and reads the whole answer.
pub async fn call_service(
    service: &axum::Router,
    request: Request<Vec<u8>>,
) -> Result<Response<Vec<u8>>, String> {
    use tower::ServiceExt;
    let response = service
        .clone()
        .oneshot(request.map(axum::body::Body::from))
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Response::from_parts(parts, bytes.to_vec()))
}

/// The `Authorization` header a request presents (empty when none).
pub fn presented_bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_server_on_the_network_answers_a_stalled_body_after_the_idle_limit() {
        let echo =
            axum::Router::new().route("/", axum::routing::put(|body: String| async { body }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, served_on_the_network(echo)).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this";
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut reply = vec![0u8; 1024];
        let n = tokio::time::timeout(BODY_IDLE_TIMEOUT * 10, stream.read(&mut reply))
            .await
            .expect("the server waits for good")
            .unwrap();
        let status = String::from_utf8_lossy(&reply[..n]);
        assert!(status.starts_with("HTTP/1.1 4"), "{status}");
        assert!(
            started.elapsed() >= BODY_IDLE_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
    }
}
