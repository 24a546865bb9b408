//! Delegate agents in a simulated pool: the real `abd-agent`, run in-process
//! for each booted delegate, reached through a simulated network.
//!
//! A request to an address goes to whoever answers there in the simulator:
//! nobody (unreachable), a foreign host (an HTTP answer that is not an
//! agent's), or a delegate, whose agent is built from what its guest reads in
//! xenstore (`vm-data/abd-token`) and serves the request through its real
//! router. The agent's disks are the simulator's VDIs plugged into that VM;
//! its data store is the engine's store service, in-process. Transfers take
//! the simulated time of their bytes at the SR's bandwidth.

use crate::sim_link::{SharedSim, SimClock, lock};
use abd_agent::devices::{DeviceSet, OnBytes};
use abd_agent::protocol::{Token, VM_DATA_STORE_URL, VM_DATA_TOKEN};
use abd_agent::{Agent, AgentConfig, Execution, ServiceLink, StoreLink};
use async_trait::async_trait;
use axum::http::{Request, Response, StatusCode};
use engine::agent::{AgentLink, LinkError};
use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use xapi_sim::faults::Delivery;
use xapi_sim::{ApplianceAnswer, AttachedDisk, PoolId};

/// Progress of a simulated transfer is reported in this many steps.
const PROGRESS_STEPS: u64 = 4;

/// The engine's data store service while an engine runs (None while it is
/// down: a new engine serves the store at the same address when it starts).
pub type StoreService = Arc<Mutex<Option<axum::Router>>>;

/// The network between the engine and one simulated pool's delegates.
pub struct SimAgentNet {
    pub sim: SharedSim,
    pub pool: PoolId,
    pub clock: SimClock,
    pub store: StoreService,
    /// Running agents by VM uuid, with the token and address they started with.
    agents: Mutex<BTreeMap<String, RunningAgent>>,
    /// Agents that crashed, by VM uuid: when their service is back.
    restarting: Mutex<BTreeMap<String, Instant>>,
}

struct RunningAgent {
    token: Token,
    ip: Ipv4Addr,
    agent: Arc<Agent>,
    router: axum::Router,
}

/// How long a crashed agent takes to be back (its service restarted).
const AGENT_RESTART: Duration = Duration::from_secs(8);

impl SimAgentNet {
    pub fn new(sim: SharedSim, pool: PoolId, clock: SimClock, store: StoreService) -> Self {
        Self {
            sim,
            pool,
            clock,
            store,
            agents: Mutex::new(BTreeMap::new()),
            restarting: Mutex::new(BTreeMap::new()),
        }
    }

    /// An `agent_crash` fault: the busy agent of `vm_uuid` dies now and its
    /// service is back after [`AGENT_RESTART`]. True when it crashed.
    fn maybe_crash(&self, vm_uuid: &str, ip: Ipv4Addr) -> bool {
        let mut agents = self.agents.lock().expect("agents lock");
        let busy = agents.get(vm_uuid).is_some_and(|a| a.agent.busy());
        if !busy || !lock(&self.sim).agent_crash(self.pool, self.clock.now(), ip) {
            return false;
        }
        if let Some(dead) = agents.remove(vm_uuid) {
            dead.agent.kill();
        }
        self.restarting
            .lock()
            .expect("restarting lock")
            .insert(vm_uuid.to_string(), Instant::now() + AGENT_RESTART);
        true
    }

    /// True while the agent of `vm_uuid` is restarting after a crash.
    fn restarting(&self, vm_uuid: &str) -> bool {
        let mut restarting = self.restarting.lock().expect("restarting lock");
        match restarting.get(vm_uuid) {
            Some(back) if Instant::now() < *back => true,
            Some(_) => {
                restarting.remove(vm_uuid);
                false
            }
            None => false,
        }
    }

    /// The agent of `vm_uuid` as its guest would start it, or `None` when the
    /// guest was given no usable token (the agent would not start).
    fn agent_for(
        &self,
        vm_uuid: &str,
        ip: Ipv4Addr,
        vm_data: &BTreeMap<String, String>,
    ) -> Option<axum::Router> {
        let token = vm_data.get(VM_DATA_TOKEN).and_then(|t| Token::parse(t))?;
        let mut agents = self.agents.lock().expect("agents lock");
        if let Some(running) = agents.get(vm_uuid)
            && running.token == token
            && running.ip == ip
        {
            return Some(running.router.clone());
        }
        let store_wait = StoreWait::default();
        let store = vm_data.get(VM_DATA_STORE_URL).map(|url| {
            Arc::new(SimStoreNet {
                url: url.clone(),
                service: Arc::clone(&self.store),
                sim: Arc::clone(&self.sim),
                pool: self.pool,
                waited: Arc::clone(&store_wait),
            }) as Arc<dyn StoreLink>
        });
        let agent = Agent::new(AgentConfig {
            vm_uuid: vm_uuid.to_string(),
            token: token.clone(),
            devices: Arc::new(SimDevices {
                sim: Arc::clone(&self.sim),
                pool: self.pool,
                clock: self.clock,
                ip,
                store_wait,
            }),
            store,
            execution: Execution::Inline,
        });
        let router = abd_agent::router(Arc::clone(&agent));
        agents.insert(
            vm_uuid.to_string(),
            RunningAgent {
                token,
                ip,
                agent,
                router: router.clone(),
            },
        );
        Some(router)
    }
}

#[async_trait]
impl AgentLink for SimAgentNet {
    async fn send(
        &self,
        ip: Ipv4Addr,
        request: Request<Vec<u8>>,
    ) -> Result<Response<Vec<u8>>, LinkError> {
        let duration = lock(&self.sim).agent_duration();
        tokio::time::sleep(duration).await;
        let link = xapi_sim::faults::NetworkLink::EngineDelegates;
        let to = ip.to_string();
        let delivery = lock(&self.sim).network_delivery(self.pool, self.clock.now(), link, &to);
        match delivery {
            Delivery::Delivered(delay) => tokio::time::sleep(delay).await,
            Delivery::Lost => {
                tokio::time::sleep(crate::sim_link::CONNECT_TIMEOUT).await;
                return Err(LinkError::Unreachable(format!(
                    "connecting to {ip} timed out"
                )));
            }
        }
        let answer = lock(&self.sim).appliance_at(self.pool, self.clock.now(), ip);
        let router = match answer {
            ApplianceAnswer::Nobody => {
                return Err(LinkError::Unreachable(format!("no host answers at {ip}")));
            }
            ApplianceAnswer::Foreign => {
                // Some other web server: an answer, but not an agent's.
                return Ok(Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(b"Not Found".to_vec())
                    .expect("a response"));
            }
            ApplianceAnswer::Appliance { vm_uuid, vm_data } => {
                if self.restarting(&vm_uuid) || self.maybe_crash(&vm_uuid, ip) {
                    return Err(LinkError::Unreachable(format!(
                        "the agent at {ip} is restarting (connection refused)"
                    )));
                }
                self.agent_for(&vm_uuid, ip, &vm_data).ok_or_else(|| {
                    LinkError::Unreachable(format!("the agent at {ip} did not start (no token)"))
                })?
            }
        };
        abd_agent::http::call_service(&router, request)
            .await
            .map_err(LinkError::Broken)
    }
}

/// The network between a simulated delegate and the engine's data store: a
/// `network` fault on `delegates_store` loses requests (the agent's call
/// fails as a timed-out connection would, after the connect timeout), and
/// while no engine runs the connection is refused. The agent's work runs off
/// the simulated clock, so its requests go one after another on a timeline
/// of their own: the time its requests waited so far (latency, lost
/// connections, pauses before retries) past the present. Faults are those of
/// that moment, and the next transfer's pacing takes the wait on the clock.
struct SimStoreNet {
    url: String,
    /// Whichever engine serves the store now.
    service: StoreService,
    sim: SharedSim,
    pool: PoolId,
    /// What the store's link made the requests sent so far wait.
    waited: StoreWait,
}

/// Latency of the store link a delegate's agent met (its requests go one
/// after another), not yet taken on the simulated clock: the agent's work
/// runs off the clock, so the next transfer's pacing takes it.
type StoreWait = Arc<Mutex<Duration>>;

impl StoreLink for SimStoreNet {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn send(&self, request: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, String> {
        let link = xapi_sim::faults::NetworkLink::DelegatesStore;
        // The agent's work may call from a worker thread, off the simulated
        // clock: it happens at the simulator's present.
        let mut sim = lock(&self.sim);
        let (now, ahead) = (sim.now(), *self.waited.lock().expect("store wait lock"));
        let delivery = sim.network_delivery_ahead(self.pool, now, ahead, link, "the data store");
        drop(sim);
        let waited = match delivery {
            Delivery::Lost => abd_agent::store_link::CONNECT_TIMEOUT,
            Delivery::Delivered(delay) => delay,
        };
        *self.waited.lock().expect("store wait lock") += waited;
        if delivery == Delivery::Lost {
            return Err(format!("connecting to {} timed out", self.url));
        }
        let service = self.service.lock().expect("store service lock").clone();
        match service {
            Some(service) => ServiceLink {
                name: self.url.clone(),
                service,
            }
            .send(request),
            None => Err(format!(
                "connecting to {}: connection refused (the engine is down)",
                self.url
            )),
        }
    }

    fn pause(&self, pause: Duration) {
        *self.waited.lock().expect("store wait lock") += pause;
    }
}

/// The disks plugged into a simulated delegate: the simulator's VDI content.
struct SimDevices {
    sim: SharedSim,
    pool: PoolId,
    clock: SimClock,
    ip: Ipv4Addr,
    /// Shared with the agent's store link.
    store_wait: StoreWait,
}

impl SimDevices {
    fn plugged(&self, device: u32) -> io::Result<AttachedDisk> {
        plugged_disk(
            &mut lock(&self.sim),
            self.pool,
            self.clock.now(),
            self.ip,
            device,
        )
    }
}

/// The disk plugged as `device` into the delegate answering at `ip`, at `now`.
pub(crate) fn plugged_disk(
    sim: &mut xapi_sim::Sim,
    pool: PoolId,
    now: xapi_sim::time::SimTime,
    ip: Ipv4Addr,
    device: u32,
) -> io::Result<AttachedDisk> {
    let disks = sim
        .appliance_disks(pool, now, ip)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the delegate is not running"))?;
    disks
        .into_iter()
        .find(|d| d.userdevice == device.to_string())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no disk is plugged as device {device}"),
            )
        })
}

impl SimDevices {
    fn open(&self, device: u32) -> io::Result<SimDisk> {
        let disk = self.plugged(device)?;
        // A transfer starts: latency left over from one that failed is not its.
        *self.store_wait.lock().expect("store wait lock") = Duration::ZERO;
        Ok(SimDisk::new(Arc::clone(&self.sim), self.pool, disk))
    }
}

#[async_trait]
impl DeviceSet for SimDevices {
    fn open_read(&self, device: u32) -> io::Result<Box<dyn ads::DiskSource>> {
        Ok(Box::new(self.open(device)?))
    }

    fn open_write(&self, device: u32) -> io::Result<Box<dyn ads::DiskTarget + Send>> {
        Ok(Box::new(self.open(device)?))
    }

    /// Takes the simulated time of `bytes` at the SR's bandwidth, plus the
    /// latency the store link added to the transfer's requests, in steps,
    /// reporting the position reached on the disk. The disk must stay
    /// plugged throughout: a detach or a dead delegate fails the transfer.
    async fn pace(&self, device: u32, bytes: u64, progress: OnBytes<'_>) -> io::Result<()> {
        let disk = self.plugged(device)?;
        let store_wait = std::mem::take(&mut *self.store_wait.lock().expect("store wait lock"));
        let total = Duration::from_secs_f64(bytes as f64 / disk.bandwidth_bytes_per_s) + store_wait;
        let size = disk.virtual_size as u64;
        for step in 1..=PROGRESS_STEPS {
            tokio::time::sleep(total / PROGRESS_STEPS as u32).await;
            let still = self
                .plugged(device)
                .is_ok_and(|d| d.vdi_uuid == disk.vdi_uuid);
            if !still {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("disk {device} went away during the transfer"),
                ));
            }
            progress(size * step / PROGRESS_STEPS);
        }
        Ok(())
    }

    /// A read test in simulation reads nothing: it takes the disk's time.
    async fn read_through(&self, device: u32, progress: OnBytes<'_>) -> io::Result<u64> {
        let size = self.plugged(device)?.virtual_size as u64;
        self.pace(device, size, progress).await?;
        Ok(size)
    }
}

/// A simulated VDI as a delegate's agent sees it (`/dev/xvdX` in a real
/// delegate); served delegates' agents read it too.
pub(crate) struct SimDisk {
    sim: SharedSim,
    pool: PoolId,
    vdi_uuid: String,
    size_bytes: u64,
}

impl SimDisk {
    /// The VDI plugged as `disk` into a delegate of `pool`.
    pub(crate) fn new(sim: SharedSim, pool: PoolId, disk: AttachedDisk) -> Self {
        SimDisk {
            sim,
            pool,
            vdi_uuid: disk.vdi_uuid,
            size_bytes: disk.virtual_size as u64,
        }
    }
}

impl ads::DiskSource for SimDisk {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        lock(&self.sim)
            .read_vdi(self.pool, &self.vdi_uuid, offset, buf)
            .map_err(io::Error::other)
    }
}

impl ads::DiskTarget for SimDisk {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        lock(&self.sim)
            .write_vdi(self.pool, &self.vdi_uuid, offset, data)
            .map_err(io::Error::other)
    }
}
