//! Delegate agents for `abd sim serve` on loopback: each booted delegate's
//! real `abd-agent` listens at the delegate's address (a loopback address the
//! pool's DHCP hands out), on the agent port, as it would in a real pool. An
//! engine in real-pool mode pointed at the served pool provisions delegates,
//! talks to their agents over HTTP and backs up or restores the simulator's
//! disks through them into its data store.

use crate::sim_agents::{SimDisk, plugged_disk};
use abd_agent::devices::{DeviceSet, OnBytes};
use abd_agent::protocol::{AGENT_PORT, Token, VM_DATA_STORE_URL, VM_DATA_TOKEN};
use abd_agent::{Agent, AgentConfig, Execution, HttpStoreLink, StoreLink};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use xapi_sim::server::ServeClock;
use xapi_sim::time::SimTime;
use xapi_sim::{ApplianceAnswer, PoolId, Sim};

/// How often the served pool is looked at for delegates that booted or stopped.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Moves `pool`'s DHCP ranges into loopback, into `127.H.L.0/24` where H.L
/// is `port` (the pool's own port, so pools and processes do not share
/// addresses): `.1` to `.254` shared out evenly between its DHCP networks,
/// none overlapping. A range keeps its size up to its share.
pub fn dhcp_on_loopback(sim: &mut Sim, pool: PoolId, port: u16) {
    let networks = sim.dhcp_networks(pool).clamp(1, 254) as u32;
    let share = 254 / networks;
    let [high, low] = port.to_be_bytes();
    let base = u32::from(Ipv4Addr::new(127, high, low, 0));
    sim.move_dhcp_ranges(pool, |j, (first, last)| {
        let size = (u32::from(last).saturating_sub(u32::from(first)) + 1).min(share);
        let start = base + 1 + (j as u32).min(networks - 1) * share;
        (Ipv4Addr::from(start), Ipv4Addr::from(start + size - 1))
    });
}

/// One delegate's agent, listening.
struct Listening {
    vm_uuid: String,
    token: Token,
    agent: Arc<Agent>,
    serving: JoinHandle<()>,
    /// Cleared when the delegate stops: its connections break, its disks
    /// refuse reads and writes, as a dead VM's would.
    alive: Arc<AtomicBool>,
}

/// The agents of a served pool's delegates: one listens at each running
/// delegate's address, from the moment the address can be read.
pub struct AgentHost {
    pool: PoolId,
    /// Weak: the model's after-call hook holds this host.
    sim: std::sync::Weak<Mutex<Sim>>,
    runtime: tokio::runtime::Handle,
    listening: Mutex<BTreeMap<Ipv4Addr, Listening>>,
}

impl AgentHost {
    /// Agents for `pool`'s delegates, served on the current runtime.
    pub fn new(sim: &Arc<Mutex<Sim>>, pool: PoolId) -> Arc<Self> {
        Arc::new(AgentHost {
            pool,
            sim: Arc::downgrade(sim),
            runtime: tokio::runtime::Handle::current(),
            listening: Mutex::new(BTreeMap::new()),
        })
    }

    /// The hook that keeps agents in step after each XAPI call.
    pub fn after_call(self: &Arc<Self>) -> xapi_sim::server::AfterCall {
        let host = Arc::clone(self);
        Arc::new(move |sim: &mut Sim, _pool, now| host.sync(sim, now))
    }

    /// Keeps agents in step as simulated time passes without calls (a
    /// delegate that stops on its own). Runs until the process ends.
    pub async fn watch(self: Arc<Self>, clock: ServeClock) {
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let Some(sim) = self.sim.upgrade() else {
                return;
            };
            let mut sim = sim.lock().expect("simulator lock");
            // Calls under way may have taken the model past the clock.
            let now = clock.now().max(sim.now());
            self.sync(&mut sim, now);
        }
    }

    /// Starts an agent for each delegate that runs with an address and has
    /// none, and stops those whose delegate stopped (or changed).
    fn sync(&self, sim: &mut Sim, now: SimTime) {
        let running: BTreeMap<Ipv4Addr, (String, Token, Option<String>)> = sim
            .appliances(self.pool, now)
            .into_iter()
            .filter_map(|(ip, answer)| match answer {
                ApplianceAnswer::Appliance { vm_uuid, vm_data } => {
                    // Without a usable token the agent would not start.
                    let token = vm_data.get(VM_DATA_TOKEN).and_then(|t| Token::parse(t))?;
                    Some((
                        ip,
                        (vm_uuid, token, vm_data.get(VM_DATA_STORE_URL).cloned()),
                    ))
                }
                _ => None,
            })
            .collect();
        let mut listening = self.listening.lock().expect("agents lock");
        listening.retain(|ip, agent| {
            let same = running
                .get(ip)
                .is_some_and(|(uuid, token, _)| *uuid == agent.vm_uuid && *token == agent.token);
            if !same {
                tracing::info!("delegate {} at {ip} stopped: its agent too", agent.vm_uuid);
                agent.alive.store(false, Ordering::SeqCst);
                agent.agent.kill();
                agent.serving.abort();
            }
            same
        });
        for (ip, (vm_uuid, token, store_url)) in running {
            if listening.contains_key(&ip) {
                continue;
            }
            let alive = Arc::new(AtomicBool::new(true));
            match self.start_agent(ip, &vm_uuid, token.clone(), store_url, &alive) {
                Ok((agent, serving)) => {
                    let entry = Listening {
                        vm_uuid,
                        token,
                        agent,
                        serving,
                        alive,
                    };
                    listening.insert(ip, entry);
                }
                // Tried again on the next look.
                Err(e) => tracing::warn!("the agent of delegate {vm_uuid} at {ip}: {e}"),
            }
        }
    }

    /// Starts the agent of the delegate `vm_uuid` at `ip`, as its guest would
    /// from what it reads in xenstore.
    fn start_agent(
        &self,
        ip: Ipv4Addr,
        vm_uuid: &str,
        token: Token,
        store_url: Option<String>,
        alive: &Arc<AtomicBool>,
    ) -> Result<(Arc<Agent>, JoinHandle<()>), String> {
        let sim = self.sim.upgrade().ok_or("the simulator is gone")?;
        let _in_runtime = self.runtime.enter();
        let at = SocketAddr::from((ip, AGENT_PORT));
        let listener = std::net::TcpListener::bind(at)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|e| format!("cannot listen on {at}: {e}"))?;
        let store = match store_url {
            Some(url) => {
                Some(Arc::new(HttpStoreLink::new(&url, self.runtime.clone())?) as Arc<dyn StoreLink>)
            }
            None => None,
        };
        let agent = Agent::new(AgentConfig {
            vm_uuid: vm_uuid.to_string(),
            token,
            devices: Arc::new(ServedDevices {
                sim,
                pool: self.pool,
                ip,
                alive: Arc::clone(alive),
            }),
            store,
            execution: Execution::Worker,
        });
        tracing::info!("delegate {vm_uuid}: agent listening on {at}");
        let router = abd_agent::http::served_on_the_network(abd_agent::router(Arc::clone(&agent)));
        let listener = AgentListener {
            inner: listener,
            alive: Arc::clone(alive),
        };
        let serving = self.runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!("the agent on {at} stopped: {e}");
            }
        });
        Ok((agent, serving))
    }
}

/// The disks plugged into a served delegate: the simulator's VDIs, read and
/// written as they are asked for (in real time: no pacing).
struct ServedDevices {
    sim: Arc<Mutex<Sim>>,
    pool: PoolId,
    ip: Ipv4Addr,
    alive: Arc<AtomicBool>,
}

impl ServedDevices {
    fn open(&self, device: u32) -> io::Result<ServedDisk> {
        let disk = {
            let mut sim = self.sim.lock().expect("simulator lock");
            let now = sim.now();
            plugged_disk(&mut sim, self.pool, now, self.ip, device)?
        };
        Ok(ServedDisk {
            disk: SimDisk::new(Arc::clone(&self.sim), self.pool, disk),
            alive: Arc::clone(&self.alive),
        })
    }
}

#[async_trait]
impl DeviceSet for ServedDevices {
    fn open_read(&self, device: u32) -> io::Result<Box<dyn ads::DiskSource>> {
        Ok(Box::new(self.open(device)?))
    }

    fn open_write(&self, device: u32) -> io::Result<Box<dyn ads::DiskTarget + Send>> {
        Ok(Box::new(self.open(device)?))
    }

    async fn read_through(&self, device: u32, progress: OnBytes<'_>) -> io::Result<u64> {
        use ads::DiskSource;
        let mut disk = self.open(device)?;
        // A long read: the runtime's other work moves off this thread meanwhile.
        tokio::task::block_in_place(|| {
            let size = disk.size_bytes();
            let mut buf = vec![0; 4 << 20];
            let mut offset = 0;
            while offset < size {
                let len = buf.len().min((size - offset) as usize);
                disk.read_at(offset, &mut buf[..len])?;
                offset += len as u64;
                progress(offset);
            }
            Ok(size)
        })
    }
}

/// A served delegate's disk, readable and writable while the delegate lives.
struct ServedDisk {
    disk: SimDisk,
    alive: Arc<AtomicBool>,
}

impl ServedDisk {
    fn check_alive(&self) -> io::Result<()> {
        match self.alive.load(Ordering::SeqCst) {
            true => Ok(()),
            false => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the delegate stopped: its disk is gone",
            )),
        }
    }
}

impl ads::DiskSource for ServedDisk {
    fn size_bytes(&self) -> u64 {
        self.disk.size_bytes()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check_alive()?;
        self.disk.read_at(offset, buf)
    }
}

impl ads::DiskTarget for ServedDisk {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_alive()?;
        self.disk.write_at(offset, data)
    }
}

/// A served agent's listener: its connections break once its delegate stops
/// (kept-alive ones included), as a dead VM's would.
struct AgentListener {
    inner: tokio::net::TcpListener,
    alive: Arc<AtomicBool>,
}

impl axum::serve::Listener for AgentListener {
    type Io = Breakable;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let alive = Arc::clone(&self.alive);
                    return (Breakable { stream, alive }, peer);
                }
                Err(e) => {
                    tracing::debug!("accepting an agent connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails every read and write once `alive` is cleared.
struct Breakable {
    stream: tokio::net::TcpStream,
    alive: Arc<AtomicBool>,
}

impl Breakable {
    fn broken(&self) -> Option<io::Error> {
        (!self.alive.load(Ordering::SeqCst))
            .then(|| io::Error::new(io::ErrorKind::ConnectionReset, "the delegate stopped"))
    }
}

impl tokio::io::AsyncRead for Breakable {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.broken() {
            Some(e) => std::task::Poll::Ready(Err(e)),
            None => std::pin::Pin::new(&mut this.stream).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Breakable {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.broken() {
            Some(e) => std::task::Poll::Ready(Err(e)),
            None => std::pin::Pin::new(&mut this.stream).poll_write(cx, data),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
