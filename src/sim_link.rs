//! Joins the engine to the simulator: an XAPI transport and a delegate-agent
//! channel that carry calls into the in-process simulator, taking the
//! simulated time each operation costs on tokio's (paused) clock.

use async_trait::async_trait;
use engine::agent::{
    AgentError, DelegateAgent, DiskProgress, ReadReport, RestoreSource, StoreTarget, WrittenDisk,
};
use engine::xapi::{CallError, Transport};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use xapi_proto::Value;
use xapi_sim::time::SimTime;
use xapi_sim::{ApplianceAnswer, PoolId, Sim};

/// The simulator shared by every link of a run.
pub type SharedSim = Arc<Mutex<Sim>>;

/// Simulated time: tokio time since the run started.
#[derive(Clone, Copy)]
pub struct SimClock {
    start: Instant,
}

impl SimClock {
    /// A clock whose zero is now.
    pub fn start() -> Self {
        SimClock {
            start: Instant::now(),
        }
    }

    /// The tokio instant at simulated time `t`.
    pub fn instant_at(&self, t: Duration) -> Instant {
        self.start + t
    }

    /// Simulated time now.
    pub fn now(&self) -> SimTime {
        SimTime::from(Instant::now().duration_since(self.start))
    }
}

fn lock(sim: &SharedSim) -> std::sync::MutexGuard<'_, Sim> {
    sim.lock().expect("simulator lock poisoned")
}

/// XAPI calls to one simulated pool master.
pub struct SimTransport {
    pub sim: SharedSim,
    pub pool: PoolId,
    pub clock: SimClock,
}

#[async_trait]
impl Transport for SimTransport {
    async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, CallError> {
        // The call takes its time first; its effect lands when it completes.
        let duration = lock(&self.sim).call_duration(method);
        tokio::time::sleep(duration).await;
        let now = self.clock.now();
        lock(&self.sim)
            .dispatch(self.pool, now, method, &params)
            .map_err(CallError::Xapi)
    }
}

/// Requests to appliance agents in one simulated pool.
pub struct SimAgent {
    pub sim: SharedSim,
    pub pool: PoolId,
    pub clock: SimClock,
}

/// Progress is reported at these fractions of each disk.
const PROGRESS_STEPS: u64 = 4;

impl SimAgent {
    async fn round_trip(&self) -> SimTime {
        let duration = lock(&self.sim).agent_duration();
        tokio::time::sleep(duration).await;
        self.clock.now()
    }
}

impl SimAgent {
    /// The disks plugged into the delegate at `ip`, after one round trip.
    async fn plugged_disks(&self, ip: Ipv4Addr) -> Result<Vec<xapi_sim::AttachedDisk>, AgentError> {
        let now = self.round_trip().await;
        lock(&self.sim)
            .appliance_disks(self.pool, now, ip)
            .ok_or(AgentError::Unreachable { ip })
    }

    /// Takes the simulated time of moving `bytes` of `disk` at its SR's
    /// bandwidth, reporting progress in steps. The disk must stay plugged
    /// throughout: a detach or a dead delegate fails the transfer.
    async fn take_disk_time(
        &self,
        ip: Ipv4Addr,
        disk: &xapi_sim::AttachedDisk,
        (index, count): (usize, usize),
        bytes: u64,
        what: &str,
        progress: &(dyn Fn(DiskProgress) + Send + Sync),
    ) -> Result<(), AgentError> {
        let total = Duration::from_secs_f64(bytes as f64 / disk.bandwidth_bytes_per_s);
        for step in 1..=PROGRESS_STEPS {
            tokio::time::sleep(total / PROGRESS_STEPS as u32).await;
            let still = lock(&self.sim)
                .appliance_disks(self.pool, self.clock.now(), ip)
                .is_some_and(|now| now.iter().any(|d| d.vdi_uuid == disk.vdi_uuid));
            if !still {
                return Err(AgentError::Failed {
                    ip,
                    message: format!("disk {} went away during the {what}", disk.userdevice),
                });
            }
            progress(DiskProgress {
                disk_index: index,
                disk_count: count,
                size_bytes: disk.virtual_size as u64,
                percent: (step * 100 / PROGRESS_STEPS) as u8,
            });
        }
        Ok(())
    }

    /// Backs up the attached disks into the store: real bytes from the
    /// simulator's disk content, chunked, deduplicated and sent.
    fn store_disks(
        &self,
        disks: &[xapi_sim::AttachedDisk],
        target: &StoreTarget<'_>,
    ) -> Result<(Vec<WrittenDisk>, ads::StoreStats), ads::AdsError> {
        target.store.write_chunks(|txn| {
            let config = txn.store().config().clone();
            let mut written = Vec::new();
            for (i, disk) in disks.iter().enumerate() {
                let size = disk.virtual_size as u64;
                let changed_segments =
                    target
                        .changed_blocks
                        .get(i)
                        .and_then(|c| c.as_deref())
                        .map(|blocks| {
                            ads::backup::changed_segments_from_blocks(
                                &config.chunking,
                                size,
                                blocks,
                            )
                        });
                let plan = ads::DiskPlan {
                    label: format!("disk {}", i + 1),
                    chunking: config.chunking,
                    compression: config.compression,
                    previous: target.previous.and_then(|p| p.disks.get(i)),
                    changed_segments: changed_segments.as_deref(),
                };
                let mut source = SimDisk {
                    sim: Arc::clone(&self.sim),
                    pool: self.pool,
                    vdi_uuid: disk.vdi_uuid.clone(),
                    size_bytes: disk.virtual_size as u64,
                };
                let (manifest, read) = ads::backup_disk(&plan, &mut source, txn, &mut |_, _| {})?;
                written.push(WrittenDisk {
                    userdevice: disk.userdevice.clone(),
                    vdi_uuid: disk.vdi_uuid.clone(),
                    manifest,
                    read,
                });
            }
            Ok(written)
        })
    }
}

/// A simulated VDI as a delegate's agent writes it on restore.
struct SimDiskTarget {
    sim: SharedSim,
    pool: PoolId,
    vdi_uuid: String,
}

impl ads::DiskTarget for SimDiskTarget {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        lock(&self.sim)
            .write_vdi(self.pool, &self.vdi_uuid, offset, data)
            .map_err(std::io::Error::other)
    }
}

/// A simulated VDI as a delegate's agent reads it (`/dev/xvdX` in a real delegate).
struct SimDisk {
    sim: SharedSim,
    pool: PoolId,
    vdi_uuid: String,
    size_bytes: u64,
}

impl ads::DiskSource for SimDisk {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        lock(&self.sim)
            .read_vdi(self.pool, &self.vdi_uuid, offset, buf)
            .map_err(std::io::Error::other)
    }
}

#[async_trait]
impl DelegateAgent for SimAgent {
    async fn identity(&self, ip: Ipv4Addr) -> Result<String, AgentError> {
        let now = self.round_trip().await;
        match lock(&self.sim).appliance_at(self.pool, now, ip) {
            ApplianceAnswer::Appliance { vm_uuid } => Ok(vm_uuid),
            ApplianceAnswer::Foreign => Err(AgentError::Foreign { ip }),
            ApplianceAnswer::Nobody => Err(AgentError::Unreachable { ip }),
        }
    }

    async fn read_disks(
        &self,
        ip: Ipv4Addr,
        target: Option<StoreTarget<'_>>,
        progress: &(dyn Fn(DiskProgress) + Send + Sync),
    ) -> Result<ReadReport, AgentError> {
        let disks = self.plugged_disks(ip).await?;
        let mut report = ReadReport::default();
        if let Some(target) = target {
            // The real bytes go into the store now; the read then takes its
            // simulated time below, and can still fail (the engine commits
            // the version only if it does not).
            let (written, stored) =
                self.store_disks(&disks, &target)
                    .map_err(|e| AgentError::Failed {
                        ip,
                        message: format!("data store: {e}"),
                    })?;
            report.written = written;
            report.stored = stored;
        }
        for (i, disk) in disks.iter().enumerate() {
            // Reading takes the time of the bytes really read (CBT skips clean segments).
            let bytes = report
                .written
                .get(i)
                .map_or(disk.virtual_size as u64, |w| w.read.bytes_read);
            self.take_disk_time(ip, disk, (i + 1, disks.len()), bytes, "read", progress)
                .await?;
            report.disks += 1;
            report.bytes_read += bytes;
        }
        Ok(report)
    }

    async fn write_disks(
        &self,
        ip: Ipv4Addr,
        source: RestoreSource<'_>,
        progress: &(dyn Fn(DiskProgress) + Send + Sync),
    ) -> Result<ReadReport, AgentError> {
        let disks = self.plugged_disks(ip).await?;
        if disks.len() != source.manifest.disks.len() {
            return Err(AgentError::Failed {
                ip,
                message: format!(
                    "{} disk(s) plugged, the version has {}",
                    disks.len(),
                    source.manifest.disks.len()
                ),
            });
        }
        let mut report = ReadReport::default();
        for (i, disk) in disks.iter().enumerate() {
            let mut target = SimDiskTarget {
                sim: Arc::clone(&self.sim),
                pool: self.pool,
                vdi_uuid: disk.vdi_uuid.clone(),
            };
            let written = source
                .store
                .with_store(|store| {
                    let base = source.base.and_then(|b| b.disks.get(i));
                    ads::restore_disk_over(
                        store,
                        source.manifest,
                        i,
                        base,
                        &mut target,
                        &mut |_, _| {},
                    )
                })
                .map_err(|e| AgentError::Failed {
                    ip,
                    message: format!("restore of disk {}: {e}", i + 1),
                })?;
            self.take_disk_time(ip, disk, (i + 1, disks.len()), written, "write", progress)
                .await?;
            report.disks += 1;
            report.bytes_read += written;
        }
        Ok(report)
    }
}

/// XAPI calls to a simulated pool served over HTTP on loopback, through the
/// engine's real HTTP transport and wire codec.
///
/// The call's simulated duration is still taken on the paused clock; then the
/// served pools' clock is set to "now" and this thread blocks until the reply
/// is in, so simulated time cannot move while the call is on the wire. Same
/// calls at the same simulated times: the run is the in-process run, byte for byte.
pub struct HttpLink {
    pub sim: SharedSim,
    pub clock: SimClock,
    /// The served pools' simulated time, in milliseconds.
    pub served_time_ms: Arc<std::sync::atomic::AtomicU64>,
    pub http: Arc<engine::xapi::HttpTransport>,
    /// The real-time runtime the HTTP client and the servers run on.
    pub io: tokio::runtime::Handle,
}

#[async_trait]
impl Transport for HttpLink {
    async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, CallError> {
        let duration = lock(&self.sim).call_duration(method);
        tokio::time::sleep(duration).await;
        self.served_time_ms.store(
            self.clock.now().as_ms(),
            std::sync::atomic::Ordering::SeqCst,
        );
        let (reply_tx, reply_rx) = std::sync::mpsc::sync_channel(1);
        let (http, method) = (Arc::clone(&self.http), method.to_string());
        self.io.spawn(async move {
            let _ = reply_tx.send(http.call(&method, params).await);
        });
        reply_rx
            .recv()
            .unwrap_or_else(|_| Err(CallError::Transport("the HTTP worker stopped".into())))
    }
}
