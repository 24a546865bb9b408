//! Real-pool mode: the engine against any XAPI endpoint over HTTP(S) — a real
//! pool master, or `abd sim serve`. Commands that need no delegate agent:
//! `validate` (read-only) and the template operations.

use engine::agent::{AgentError, DelegateAgent, DiskProgress, ReadReport};
use engine::xapi::{Credentials, HttpOptions, HttpTransport, Protocol, TlsPolicy};
use engine::{Engine, EngineConfig, PoolConfig, PoolConnection};
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to reach and use one pool.
#[derive(clap::Args, Clone, Debug)]
pub struct PoolArgs {
    /// The pool master's URL (http:// or https://).
    #[arg(long)]
    pub pool: String,
    /// XAPI user.
    #[arg(long, default_value = "root")]
    pub user: String,
    /// File holding the password (its first line). The password is never printed.
    #[arg(long)]
    pub password_file: PathBuf,
    /// Speak JSON-RPC instead of XML-RPC.
    #[arg(long)]
    pub json_rpc: bool,
    /// Trust this PEM certificate (a pool's self-signed certificate).
    #[arg(long, conflicts_with = "insecure")]
    pub trust_cert: Option<PathBuf>,
    /// Accept any certificate (lab pools only).
    #[arg(long)]
    pub insecure: bool,
    /// Engine settings: `[engine]` and `[delegates]` tables (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The `--config` file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    engine: EngineConfig,
    delegates: Option<PoolConfig>,
}

/// The agent channel of real-pool mode for commands that never reach a delegate.
struct NoAgent;

#[async_trait::async_trait]
impl DelegateAgent for NoAgent {
    async fn identity(&self, ip: Ipv4Addr) -> Result<String, AgentError> {
        Err(AgentError::Failed {
            ip,
            message: "this command does not talk to delegates".into(),
        })
    }
    async fn read_disks(
        &self,
        ip: Ipv4Addr,
        _target: Option<engine::agent::StoreTarget<'_>>,
        _: &(dyn Fn(DiskProgress) + Send + Sync),
    ) -> Result<ReadReport, AgentError> {
        Err(AgentError::Failed {
            ip,
            message: "this command does not talk to delegates".into(),
        })
    }

    async fn write_disks(
        &self,
        ip: Ipv4Addr,
        _source: engine::agent::RestoreSource<'_>,
        _: &(dyn Fn(DiskProgress) + Send + Sync),
    ) -> Result<ReadReport, AgentError> {
        Err(AgentError::Failed {
            ip,
            message: "this command does not talk to delegates".into(),
        })
    }
}

fn read_password(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the password file {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Connects the engine to the pool without changing anything.
pub async fn connect(args: &PoolArgs) -> anyhow::Result<(Engine, String)> {
    let config: ConfigFile = match &args.config {
        None => ConfigFile::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
    };
    let options = HttpOptions {
        protocol: if args.json_rpc {
            Protocol::JsonRpc
        } else {
            Protocol::XmlRpc
        },
        tls: match (&args.trust_cert, args.insecure) {
            (Some(pem), _) => TlsPolicy::Trust(pem.clone()),
            (None, true) => TlsPolicy::SkipVerification,
            (None, false) => TlsPolicy::Verify,
        },
        ..Default::default()
    };
    let transport = HttpTransport::new(&args.pool, &options)?;
    let host = url_host(&args.pool);
    let pool_config = config.delegates.unwrap_or_else(|| PoolConfig::new(&host));
    let name = pool_config.name.clone();
    let connection = PoolConnection {
        config: pool_config,
        transport: Arc::new(transport),
        agent: Arc::new(NoAgent),
        credentials: Credentials {
            user: args.user.clone(),
            password: read_password(&args.password_file)?,
        },
    };
    let engine = Engine::connect(config.engine, vec![connection]).await?;
    Ok((engine, name))
}

/// The host part of a pool URL, to name the pool in messages.
fn url_host(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or(url)
        .to_string()
}

/// Runs `job` on a real-time runtime.
pub fn block_on<T>(job: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(job)
}
