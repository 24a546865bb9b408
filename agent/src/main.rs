//! `abd-agent`: runs inside a backup delegate and serves the engine.
//!
//! By default it reads its token and the data store's URL from xenstore
//! (`vm-data/abd-token`, `vm-data/abd-store`, written by the engine at
//! provisioning) and its VM uuid from xenstore's `vm` key.

use abd_agent::protocol::{AGENT_PORT, VM_DATA_STORE_URL, VM_DATA_TOKEN};
use abd_agent::{Agent, AgentConfig, BlockDevices, Execution, HttpStoreLink, StoreLink, Token};
use anyhow::{Context, bail};
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "abd-agent",
    version,
    about = "The agent inside an abd backup delegate"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value_t = format!("0.0.0.0:{AGENT_PORT}"))]
    listen: String,
    /// Where the Xen block devices are (`xvdb` is disk 1).
    #[arg(long, default_value = "/dev")]
    devices: PathBuf,
    /// File holding the token (default: xenstore `vm-data/abd-token`).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The data store's URL (default: xenstore `vm-data/abd-store`).
    #[arg(long)]
    store_url: Option<String>,
    /// This VM's uuid (default: from xenstore `vm`).
    #[arg(long)]
    vm_uuid: Option<String>,
}

fn xenstore_read(key: &str) -> anyhow::Result<String> {
    let out = std::process::Command::new("xenstore-read")
        .arg(key)
        .output()
        .with_context(|| format!("running xenstore-read {key}"))?;
    if !out.status.success() {
        bail!(
            "xenstore-read {key}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let token_text = match &args.token_file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => xenstore_read(VM_DATA_TOKEN)?,
    };
    let token = Token::parse(&token_text).context("the delegate token is not 64 hex digits")?;
    let vm_uuid = match args.vm_uuid {
        Some(uuid) => uuid,
        None => xenstore_read("vm")?
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    let store_url = match args.store_url {
        Some(url) => Some(url),
        None => xenstore_read(VM_DATA_STORE_URL).ok(),
    };
    let store = match store_url {
        Some(url) => Some(Arc::new(
            HttpStoreLink::new(&url, tokio::runtime::Handle::current())
                .map_err(anyhow::Error::msg)?,
        ) as Arc<dyn StoreLink>),
        None => None,
    };
    let agent = Agent::new(AgentConfig {
        vm_uuid: vm_uuid.clone(),
        token,
        devices: Arc::new(BlockDevices::new(&args.devices)),
        store,
        execution: Execution::Worker,
    });
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!(
        "abd-agent (VM {vm_uuid}) listening on {}",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        abd_agent::http::served_on_the_network(abd_agent::router(agent)),
    )
    .await
    .context("serving")?;
    Ok(())
}
