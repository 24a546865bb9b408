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
