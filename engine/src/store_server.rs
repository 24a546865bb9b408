//! The engine's data store served over HTTP to delegate agents: which chunks
//! it lacks, chunk uploads (checked against their addresses), chunk reads for
//! restore, and manifests. Only live delegate tokens are accepted.

use crate::agent::TokenRegistry;
use crate::datastore::DataStore;
use abd_agent::protocol::{self, ManifestRequest, paths};
use abd_agent::server::error;
use ads::AdsError;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use std::sync::Arc;

/// Largest request body (a chunk upload batch, with room to spare).
const BODY_LIMIT: usize = 64 << 20;

#[derive(Clone)]
struct Served {
    store: Arc<DataStore>,
    tokens: Arc<TokenRegistry>,
}

/// The store's API for agents.
pub fn router(store: Arc<DataStore>, tokens: Arc<TokenRegistry>) -> Router {
    let served = Served { store, tokens };
    Router::new()
        .route(paths::STORE_CONFIG, post(config))
        .route(paths::STORE_MISSING, post(missing))
        .route(paths::STORE_CHUNKS, post(put_chunks))
        .route(paths::STORE_READ, post(read_chunks))
        .route(paths::STORE_MANIFEST, post(manifest))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(middleware::from_fn_with_state(served.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(served)
}

fn store_error(e: AdsError) -> Response {
    let status = match &e {
        AdsError::NoSuchVm { .. } | AdsError::NoSuchVersion { .. } => StatusCode::NOT_FOUND,
        AdsError::Invalid(_) => StatusCode::BAD_REQUEST,
        AdsError::Full { .. } | AdsError::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

fn octets(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

async fn authenticate(State(served): State<Served>, request: Request, next: Next) -> Response {
    if !served
        .tokens
        .accepts(abd_agent::http::presented_bearer(request.headers()))
    {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing or unknown delegate token".into(),
        );
    }
    next.run(request).await
}

async fn config(State(served): State<Served>) -> Response {
    Json(served.store.config()).into_response()
}

async fn missing(State(served): State<Served>, body: Bytes) -> Response {
    match protocol::decode_ids(&body) {
        Ok(ids) => octets(
            served
                .store
                .missing(&ids)
                .into_iter()
                .map(u8::from)
                .collect(),
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

async fn put_chunks(State(served): State<Served>, body: Bytes) -> Response {
    let blobs = match protocol::decode_blobs(&body) {
        Ok(blobs) => blobs,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match served.store.put(blobs) {
        Ok(stats) => Json(stats).into_response(),
        Err(e) => store_error(e),
    }
}

async fn read_chunks(State(served): State<Served>, body: Bytes) -> Response {
    let ids = match protocol::decode_ids(&body) {
        Ok(ids) => ids,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match served.store.read_chunks(&ids) {
        Ok(chunks) => octets(protocol::encode_frames(&chunks)),
        Err(e) => store_error(e),
    }
}

async fn manifest(
    State(served): State<Served>,
    request: Result<Json<ManifestRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match request {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("manifest request: {e}")),
    };
    match served.store.manifest(&request.vm, Some(request.seq)) {
        Ok(manifest) => Json(manifest).into_response(),
        Err(e) => store_error(e),
    }
}
