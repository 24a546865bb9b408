//! The engine's agent client and a real agent (`abd_agent::router`) talking
//! HTTP over turmoil's simulated network: a partition between the engine and
//! a delegate that heals is ridden out (the agent works on, the engine finds
//! the task finished and says how long it was out of reach), one that lasts
//! past the limit fails the work, and a lossy network only slows things down.
//! Deterministic: turmoil runs every host on one thread, on simulated time,
//! with a seeded RNG.

use abd_agent::{Agent, AgentConfig, BlockDevices, Execution};
use async_trait::async_trait;
use axum::http::{Request, Response};
use engine::agent::{AgentClient, AgentError, AgentLink, LinkError, TokenRegistry};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PORT: u16 = 7481;

mod support {
    pub mod turmoil_http;
}
use support::turmoil_http::{self, Failure};

/// The engine's side of the simulated network: one HTTP/1 connection per
/// request, as a connection-refusing or partitioned network shows it.
struct TurmoilLink;

#[async_trait]
impl AgentLink for TurmoilLink {
    async fn send(
        &self,
        ip: Ipv4Addr,
        request: Request<Vec<u8>>,
    ) -> Result<Response<Vec<u8>>, LinkError> {
        turmoil_http::exchange((IpAddr::V4(ip), PORT), request)
            .await
            .map_err(|failure| match failure {
                Failure::Unreachable(why) => LinkError::Unreachable(why),
                Failure::Broken(why) => LinkError::Broken(why),
            })
    }
}

/// Outcome of one simulated run: the read's result and when it ended.
type Outcome = Arc<Mutex<Option<(Result<(u64, Duration), AgentError>, Duration)>>>;

/// Runs a read of one 8 MiB disk on a delegate while `network` does its
/// worst between the engine and the delegate; returns what the engine saw.
fn run(
    seed: u64,
    fail_rate: f64,
    network: Vec<(Duration, bool)>,
) -> (Result<(u64, Duration), AgentError>, Duration) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("xvdb"), vec![7u8; 8 << 20]).unwrap();
    let tokens = Arc::new(TokenRegistry::seeded(seed));
    let token = tokens.issue();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(3600))
        .rng_seed(seed)
        .fail_rate(fail_rate)
        .build();
    let (devices, agent_token) = (dir.path().to_path_buf(), token.clone());
    sim.host("delegate", move || {
        let agent = Agent::new(AgentConfig {
            vm_uuid: "vm-delegate".into(),
            token: agent_token.clone(),
            devices: Arc::new(BlockDevices::new(&devices)),
            store: None,
            execution: Execution::Inline,
        });
        turmoil_http::serve(abd_agent::router(agent), PORT)
    });
    let outcome: Outcome = Arc::default();
    let seen = Arc::clone(&outcome);
    sim.client("engine", async move {
        let ip = match turmoil::lookup("delegate") {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => unreachable!("turmoil hands out IPv4 addresses by default"),
        };
        // The network's changes, at their times.
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for (at, cut) in network {
                tokio::time::sleep_until(start + at).await;
                if cut {
                    turmoil::partition("engine", "delegate");
                } else {
                    turmoil::repair("engine", "delegate");
                }
            }
        });
        let client = AgentClient::new(Arc::new(TurmoilLink), tokens);
        let started = tokio::time::Instant::now();
        let running = || -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> {
            Box::pin(async { true })
        };
        let read = client
            .read_disks(ip, &token, 1, None, &|_| {}, &running)
            .await
            .map(|r| (r.bytes_read, r.out_of_reach));
        *seen.lock().unwrap() = Some((read, started.elapsed()));
        Ok(())
    });
    sim.run().unwrap();
    outcome.lock().unwrap().take().expect("the engine finished")
}

#[test]
fn a_partition_that_heals_is_ridden_out_and_reported() {
    // The read takes a moment; the partition starts right after the task
    // does and lasts two minutes.
    let network = vec![
        (Duration::from_millis(50), true),
        (Duration::from_secs(120), false),
    ];
    let (read, _) = run(1, 0.0, network);
    let (bytes, out_of_reach) = read.expect("the read survives the partition");
    assert_eq!(bytes, 8 << 20);
    assert!(
        out_of_reach >= Duration::from_secs(60),
        "the engine says how long the agent was out of reach: {out_of_reach:?}"
    );
}

#[test]
fn a_partition_past_the_limit_fails_the_work_with_the_reason() {
    let (read, ended) = run(2, 0.0, vec![(Duration::from_millis(50), true)]);
    assert!(
        matches!(read, Err(AgentError::Unreachable { .. })),
        "{read:?}"
    );
    assert!(
        ended >= Duration::from_secs(300) && ended < Duration::from_secs(400),
        "gives up after its limit, not before and not much after: {ended:?}"
    );
}

#[test]
fn a_lossy_network_only_slows_the_work_and_runs_are_deterministic() {
    let first = run(3, 0.2, Vec::new());
    let second = run(3, 0.2, Vec::new());
    let (bytes, _) = first
        .0
        .as_ref()
        .expect("the read gets through a lossy network");
    assert_eq!(*bytes, 8 << 20);
    assert_eq!(
        format!("{first:?}"),
        format!("{second:?}"),
        "same seed, same run"
    );
}
