//! How the engine reaches an agent: one HTTP request to a delegate's address.
//! Real HTTP here; the simulator supplies an in-process link.

use async_trait::async_trait;
use axum::http::{Request, Response};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Why a request did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Nothing listens at the address (refused, no route, connect timeout).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The connection broke or the answer was unreadable.
    #[error("{0}")]
    Broken(String),
}

/// Carries one request to the agent at an address.
#[async_trait]
pub trait AgentLink: Send + Sync {
    /// Sends `request` (its URI holds path and query only) to the agent at `ip`.
    async fn send(
        &self,
        ip: Ipv4Addr,
        request: Request<Vec<u8>>,
    ) -> Result<Response<Vec<u8>>, LinkError>;
}

/// Agents over real HTTP on their port.
pub struct HttpAgentLink {
    client: reqwest::Client,
    port: u16,
}

impl HttpAgentLink {
    /// Agents listening on `port` (normally [`abd_agent::protocol::AGENT_PORT`]).
    pub fn new(port: u16) -> Result<Self, String> {
        // Delegates are on the pool's network: never through a proxy.
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            // A status long poll waits 30 s: a reply that has not come in
            // a minute is lost.
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { client, port })
    }
}

#[async_trait]
impl AgentLink for HttpAgentLink {
    async fn send(
        &self,
        ip: Ipv4Addr,
        request: Request<Vec<u8>>,
    ) -> Result<Response<Vec<u8>>, LinkError> {
        let base = format!("http://{ip}:{}", self.port);
        abd_agent::http::exchange(&self.client, &base, request)
            .await
            .map_err(|e| match e.is_connect() {
                true => LinkError::Unreachable(e.to_string()),
                false => LinkError::Broken(e.to_string()),
            })
    }
}
