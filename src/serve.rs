//! `abd sim serve`: the scenario's simulated pools served over HTTP as XAPI
//! pool masters, one port per pool, in real time (or sped up). On 127.0.0.1
//! each member host also answers, at 127.0.0.k on the same port, and each
//! booted delegate's agent at its (loopback) address: an engine in real-pool
//! mode can run whole jobs against it.

use crate::scenario::Scenario;
use crate::served_agents::{self, AgentHost};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use xapi_sim::Sim;
use xapi_sim::endpoints::bind_pool;
use xapi_sim::server::{PoolServer, ServeClock};
use xapi_sim::tls::SelfSigned;

/// How to serve.
pub struct ServeOptions {
    /// First address; pool `i` listens on port + i (port 0: any free port each).
    pub listen: SocketAddr,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Seed of the simulated world (default: the scenario's).
    pub seed: Option<u64>,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Serve HTTPS, each pool with a fresh self-signed certificate written
    /// to `<dir>/<pool>.pem`.
    pub tls_dir: Option<PathBuf>,
}

/// Serves until the process is stopped. Prints `pool <name> xapi http://ADDR`
/// per pool (`https://` with TLS, then `  certificate <file>`).
pub fn serve(scenario: &Scenario, options: ServeOptions) -> anyhow::Result<()> {
    let mut world = scenario.world();
    if let Some(user) = options.user {
        world.credentials.user = user;
    }
    if let Some(password) = options.password {
        world.credentials.password = password;
    }
    let on_loopback = options.listen.ip() == std::net::Ipv4Addr::LOCALHOST;
    let sim = Arc::new(Mutex::new(Sim::new(
        &world,
        options.seed.unwrap_or(scenario.seed),
    )?));
    // Agents read and write disks on worker threads, and reach the data
    // store from there through the runtime.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let clock = ServeClock::new(options.speed);
        let mut servers = Vec::new();
        for (i, pool) in world.pools.iter().enumerate() {
            let mut addr = options.listen;
            if addr.port() != 0 {
                addr.set_port(addr.port() + i as u16);
            }
            let id = sim
                .lock()
                .expect("simulator lock")
                .pool_id(&pool.name)
                .expect("pool exists");
            let mut server = PoolServer::new(Arc::clone(&sim), id, clock.clone());
            let agents = on_loopback.then(|| AgentHost::new(&sim, id));
            if let Some(agents) = &agents {
                xapi_sim::endpoints::readdress_for_loopback(&server);
                server = server.after_each_call(agents.after_call());
            }
            let mut endpoints = bind_pool(server, addr).await?;
            if let Some(agents) = agents {
                let port = endpoints[0].listener.local_addr()?.port();
                served_agents::dhcp_on_loopback(&mut sim.lock().expect("simulator lock"), id, port);
                tokio::spawn(agents.watch(clock.clone()));
            }
            let certificate = match &options.tls_dir {
                Some(dir) => Some(certify(&pool.name, &mut endpoints, dir)?),
                None => None,
            };
            for (k, endpoint) in endpoints.into_iter().enumerate() {
                // A caller may read only the lines it needs and close the
                // pipe: serving goes on regardless.
                let mut out = std::io::stdout();
                let _ = if k == 0 {
                    writeln!(out, "pool {} xapi {}", pool.name, endpoint.url).and_then(|()| {
                        match &certificate {
                            Some(file) => writeln!(out, "  certificate {}", file.display()),
                            None => Ok(()),
                        }
                    })
                } else {
                    writeln!(out, "  member {} xapi {}", endpoint.host, endpoint.url)
                };
                servers.push(tokio::spawn(endpoint.serve()));
            }
        }
        let _ = std::io::stdout().flush();
        for server in servers {
            server.await??;
        }
        Ok(())
    })
}

/// Gives the pool's endpoints one new self-signed certificate, valid for
/// `localhost` and each endpoint's address, and writes it to `<dir>/<pool>.pem`.
fn certify(
    pool: &str,
    endpoints: &mut Vec<xapi_sim::endpoints::HostEndpoint>,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let mut names = vec!["localhost".to_string()];
    for endpoint in endpoints.iter() {
        names.push(endpoint.ip()?.to_string());
    }
    let certificate = SelfSigned::new(&names)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let file = dir.join(format!("{pool}.pem"));
    std::fs::write(&file, &certificate.cert_pem)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))?;
    *endpoints = std::mem::take(endpoints)
        .into_iter()
        .map(|endpoint| endpoint.with_tls(certificate.clone()))
        .collect();
    Ok(file)
}
