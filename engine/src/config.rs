//! What the operator configures: the engine, each pool, each job.

use crate::address::StaticAddress;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Engine-wide settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Identifies this engine's objects in every pool (`abd:engine-id`).
    pub engine_id: String,
    /// Where pools import the delegate appliance from (`VM.import`).
    pub appliance_url: String,
    /// How long a booted delegate may take to report its address.
    pub address_timeout_s: u64,
    /// How often the engine looks for the delegate's address.
    pub address_poll_interval_s: u64,
    /// How long a VM may wait in the queue for a free static address.
    pub address_wait_limit_s: u64,
    /// Attempts to get one delegate ready before the VM fails.
    pub provision_attempts: u32,
    /// Pause before the second attempt; doubles each time.
    pub retry_backoff_s: u64,
    /// The data store directory (created when new). Without one, delegates
    /// only read their disks (a timing model, as in most scenarios).
    pub store_dir: Option<std::path::PathBuf>,
    /// Where delegates reach the engine's data store (`http://10.0.0.5:7480`),
    /// handed to each delegate in `xenstore_data`. Needed with `store_dir`.
    pub store_url: Option<String>,
    /// The job journal file (created when new): job runs recorded as they
    /// happen, so that a restarted engine closes and resumes what a crash
    /// interrupted. Without one, the journal lives only as long as the process.
    pub journal_file: Option<std::path::PathBuf>,
    /// The most the data store's packs may take (the disk it is on, less what
    /// must stay free): a backup that would need more fails, saying so, and
    /// what is stored is kept. None: up to the disk.
    pub store_capacity_bytes: Option<u64>,
    /// Backups that would leave less than this free on the data store's
    /// filesystem fail, saying so, before the disk itself runs out (read from
    /// the filesystem as chunks come). None: no check. Simulated runs always
    /// run without it (a real disk's free space is not part of a scenario).
    pub store_keep_free_bytes: Option<u64>,
    /// How long one XAPI call waits out a pool that cannot be reached (its
    /// master rebooting, the network down) before it fails.
    pub xapi_unreachable_limit_s: u64,
    /// Retention: after a backup job, keep the newest this many versions of
    /// each VM in the data store and reclaim what no version uses any more.
    /// Only backups that succeeded make versions, so failed runs never push
    /// good versions out. None: keep every version.
    pub keep_versions: Option<usize>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            engine_id: "abd-engine".into(),
            appliance_url: "file:///opt/abd/abd-appliance.xva".into(),
            address_timeout_s: 120,
            address_poll_interval_s: 2,
            address_wait_limit_s: 1800,
            provision_attempts: 3,
            retry_backoff_s: 10,
            store_dir: None,
            store_url: None,
            journal_file: None,
            store_capacity_bytes: None,
            store_keep_free_bytes: Some(ads::DEFAULT_KEEP_FREE_BYTES),
            xapi_unreachable_limit_s: 300,
            keep_versions: None,
        }
    }
}

impl EngineConfig {
    /// `address_timeout_s` as a Duration.
    pub fn address_timeout(&self) -> Duration {
        Duration::from_secs(self.address_timeout_s)
    }
    /// `address_poll_interval_s` as a Duration.
    pub fn address_poll_interval(&self) -> Duration {
        Duration::from_secs(self.address_poll_interval_s.max(1))
    }
    /// `xapi_unreachable_limit_s` as a Duration.
    pub fn xapi_unreachable_limit(&self) -> Duration {
        Duration::from_secs(self.xapi_unreachable_limit_s)
    }
    /// `address_wait_limit_s` as a Duration.
    pub fn address_wait_limit(&self) -> Duration {
        Duration::from_secs(self.address_wait_limit_s)
    }
}

/// How delegates of a pool get their address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", tag = "mode", deny_unknown_fields)]
pub enum Addressing {
    /// DHCP on the chosen network.
    #[default]
    Dhcp,
    /// One address per delegate from this list.
    Static {
        /// The addresses, with netmask, gateway and DNS.
        addresses: Vec<StaticAddress>,
    },
}

/// Per-pool settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The pool's name (as the operator knows it).
    pub name: String,
    /// Network (by name_label) delegates are attached to; default: the management network.
    #[serde(default)]
    pub network: Option<String>,
    /// DHCP or a static list.
    #[serde(default)]
    pub addressing: Addressing,
    /// Keep ready delegates idle for reuse instead of destroying them.
    #[serde(default)]
    pub persistent: bool,
    /// How long an idle persistent delegate lives.
    #[serde(default = "default_idle_limit_s")]
    pub idle_limit_s: u64,
    /// Delegates booting at once on one host.
    #[serde(default = "default_boot_cap_per_host")]
    pub boot_cap_per_host: usize,
    /// Delegates booting at once in the pool.
    #[serde(default = "default_boot_cap_per_pool")]
    pub boot_cap_per_pool: usize,
    /// SR (by name_label) for the template; default: the pool's default SR.
    #[serde(default)]
    pub template_sr: Option<String>,
}

fn default_idle_limit_s() -> u64 {
    600
}
fn default_boot_cap_per_host() -> usize {
    2
}
fn default_boot_cap_per_pool() -> usize {
    4
}

impl PoolConfig {
    /// Settings with every default, for `name`.
    pub fn new(name: &str) -> Self {
        PoolConfig {
            name: name.to_string(),
            network: None,
            addressing: Addressing::Dhcp,
            persistent: false,
            idle_limit_s: default_idle_limit_s(),
            boot_cap_per_host: default_boot_cap_per_host(),
            boot_cap_per_pool: default_boot_cap_per_pool(),
            template_sr: None,
        }
    }

    /// `idle_limit_s` as a Duration.
    pub fn idle_limit(&self) -> Duration {
        Duration::from_secs(self.idle_limit_s)
    }
}

/// A backup job: which VMs, in which pool, how many at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Job name, unique among the engine's jobs.
    pub name: String,
    /// Pool (by name) the VMs live in.
    pub pool: String,
    /// VMs by name_label, processed in this order. A restore or replication
    /// names VMs of the data store: by the name they were backed up under (one
    /// VM's alone, see `source_pool`), or by uuid.
    pub vms: Vec<String>,
    /// VMs processed at once, each with its own delegate.
    pub concurrency: usize,
    /// Set for a restore job: each VM's version is written back to new VDIs.
    #[serde(default)]
    pub restore: Option<RestoreSpec>,
    /// Set for a replication job: each VM's newest version is kept as VDIs in
    /// this job's pool, written whole the first time, then only what changed.
    #[serde(default)]
    pub replicate: Option<ReplicateSpec>,
    /// The job is cancelled when it has run this long (seconds); VMs not done
    /// by then fail with the reason, and their delegates are cleaned up.
    #[serde(default)]
    pub time_limit_s: Option<u64>,
}

/// Where a replication job keeps its copies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicateSpec {
    /// SR (by name) for the replica VDIs (default: the pool's default SR).
    pub sr: Option<String>,
    /// Only VMs backed up from this pool (by name): tells apart VMs of one
    /// name in different pools. A VM may also be named by its uuid.
    #[serde(default)]
    pub source_pool: Option<String>,
    /// Network (by name) for a replica VM's interfaces whose network has no
    /// namesake in this pool (default: such interfaces are left out).
    #[serde(default)]
    pub network: Option<String>,
}

/// What a restore job writes, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSpec {
    /// Version to restore (default: each VM's newest).
    pub version: Option<u64>,
    /// SR (by name) for the new VDIs (default: the pool's default SR).
    pub sr: Option<String>,
    /// Only VMs backed up from this pool (by name): tells apart VMs of one
    /// name in different pools. A VM may also be named by its uuid.
    #[serde(default)]
    pub source_pool: Option<String>,
    /// How the bytes get onto the new VDIs.
    #[serde(default)]
    pub via: RestoreVia,
}

/// How a restore writes its VDIs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreVia {
    /// A delegate writes each disk through a read-write VBD, fetching chunks
    /// from the store itself (the default: the engine's link to the pool
    /// carries nothing).
    #[default]
    Delegate,
    /// The engine uploads each disk whole to the pool master
    /// (`PUT /import_raw_vdi`): no delegate, no template needed, but every
    /// byte (zeros too) crosses the engine's link to the pool.
    Import,
}
