//! Real-pool mode: the engine against any XAPI endpoint over HTTP(S) — a real
//! pool master, or `abd sim serve`: connecting, and starting the engine for
//! work with the data store served to delegates (or, for restores by
//! upload, only opened).

use engine::agent::{AgentClient, HttpAgentLink, TokenRegistry};
use engine::xapi::{Credentials, HttpOptions, HttpTransport, Protocol, TlsPolicy};
use engine::{Engine, EngineConfig, PoolConfig, PoolConnection};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How to reach and use one pool.
#[derive(clap::Args, Clone, Debug)]
pub struct PoolArgs {
    /// The pool master's URL (http:// or https://).
    #[arg(long)]
    pub pool: String,
    /// Another host of the pool (an address), asked where the master is
    /// when the master cannot be reached (HA may have moved it while the
    /// engine was not running). Repeatable.
    #[arg(long = "pool-host", value_name = "ADDRESS")]
    pub pool_hosts: Vec<String>,
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

fn read_password(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the password file {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// Where a real-pool backup keeps its data, and how delegates reach it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// The data store directory (created when new). Without it, delegates
    /// only read their disks (a read test).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Address the engine serves the store on, for delegates.
    #[arg(long, default_value = "0.0.0.0:7480")]
    pub store_listen: String,
    /// The URL delegates use to reach the store (this machine's address on
    /// the delegates' network, e.g. http://10.0.0.5:7480).
    #[arg(long)]
    pub store_url: Option<String>,
}

/// Longest `check` waits for a pool that cannot be reached, in seconds.
const CHECK_UNREACHABLE_LIMIT_S: u64 = 15;

/// Connects the engine to the pool for a read-only check (`validate`): it
/// waits at most 15 s for a pool that cannot be reached.
pub async fn check(args: &PoolArgs) -> anyhow::Result<(Engine, String)> {
    open(args, None, Open::Check).await
}

/// Connects the engine to the pool without reclaiming anything (the
/// operator's template commands).
pub async fn connect(args: &PoolArgs) -> anyhow::Result<(Engine, String)> {
    open(args, None, Open::Connect).await
}

/// Starts the engine on the pool for work: reclaims this engine's leftovers,
/// and with `store` serves the data store to delegates.
pub async fn start(args: &PoolArgs, store: Option<&StoreArgs>) -> anyhow::Result<(Engine, String)> {
    open(args, store, Open::Start).await
}

/// Starts the engine on the pool for work that no delegate does (restores
/// by upload): the data store is opened, not served.
pub async fn start_without_delegates(
    args: &PoolArgs,
    store: &Path,
) -> anyhow::Result<(Engine, String)> {
    let store = StoreArgs {
        store: Some(store.to_path_buf()),
        ..Default::default()
    };
    open(args, Some(&store), Open::Start).await
}

/// How `open` connects.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    /// Read-only, and soon told when the pool cannot be reached.
    Check,
    /// Without reclaiming leftovers.
    Connect,
    /// For work: leftovers of earlier runs are reclaimed.
    Start,
}

async fn open(
    args: &PoolArgs,
    store: Option<&StoreArgs>,
    how: Open,
) -> anyhow::Result<(Engine, String)> {
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
        agent: Arc::new(AgentClient::new(
            Arc::new(
                HttpAgentLink::new(abd_agent::protocol::AGENT_PORT).map_err(anyhow::Error::msg)?,
            ),
            Arc::new(TokenRegistry::from_entropy()),
        )),
        credentials: Credentials {
            user: args.user.clone(),
            password: read_password(&args.password_file)?,
        },
        other_hosts: args.pool_hosts.clone(),
    };
    let mut engine_config = config.engine;
    if how == Open::Check {
        // An operator's one-off check should say soon that the pool cannot be
        // reached, not wait as long as a job would.
        engine_config.xapi_unreachable_limit_s = engine_config
            .xapi_unreachable_limit_s
            .min(CHECK_UNREACHABLE_LIMIT_S);
    }
    let store = store.filter(|s| s.store.is_some());
    // Without a listen address the store is the engine's own (no delegate
    // reaches it).
    let served = store.filter(|s| !s.store_listen.is_empty());
    if let Some(store) = store {
        engine_config.store_dir = store.store.clone();
    }
    if let Some(store) = served {
        engine_config.store_url = Some(store.store_url.clone().ok_or_else(|| {
            anyhow::anyhow!("--store needs --store-url: the address delegates reach this engine at")
        })?);
    }
    let tokens = Arc::clone(connection.agent.tokens());
    let verifying = options.tls == TlsPolicy::Verify;
    let engine = match how == Open::Start {
        true => {
            let options = engine::StartOptions {
                wall_clock_now: Some(std::time::SystemTime::now()),
                ..Default::default()
            };
            Engine::start_with(engine_config, vec![connection], options).await
        }
        false => Engine::connect(engine_config, vec![connection]).await,
    }
    .map_err(
        |e| match verifying && e.to_string().contains("certificate") {
            true => anyhow::anyhow!(
                "{e} (the pool's certificate is not trusted here: pass --trust-cert with its PEM \
             file, or --insecure for a lab pool)"
            ),
            false => e.into(),
        },
    )?;
    if let (Some(args), Some(data)) = (served, engine.data_store()) {
        let listener = tokio::net::TcpListener::bind(&args.store_listen)
            .await
            .map_err(|e| anyhow::anyhow!("serving the data store on {}: {e}", args.store_listen))?;
        let service = abd_agent::http::served_on_the_network(engine::store_server::router(
            Arc::clone(data),
            tokens,
        ));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, service).await {
                tracing::error!("the data store service stopped: {e}");
            }
        });
    }
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
