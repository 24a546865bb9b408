//! The engine's XAPI client and the simulator's XAPI server (`xapi_sim::server`,
//! XML-RPC at `/`) talking over turmoil's simulated network, as the engine
//! talks to a pool master: a partition that heals is waited out and reported,
//! one that lasts past the limit fails the call naming it, a task cut off
//! by a partition is followed again once it heals, a reply lost in flight is
//! an error that says the call may have taken effect (and it did),
//! and latency and loss change timings but not the outcome of a seed.
//! Deterministic: turmoil runs every host on one thread, on simulated time,
//! with a seeded RNG.

use async_trait::async_trait;
use axum::http::Request;
use engine::xapi::{CallError, Credentials, Reachability, Transport, XapiClient};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xapi_proto::Value;
use xapi_proto::wire::xmlrpc;
use xapi_sim::Sim;
use xapi_sim::server::{PoolServer, ServeClock, router};

mod support {
    pub mod turmoil_http;
}
use support::turmoil_http::{self, Failure};

const PORT: u16 = 80;
/// How long the client waits out an unreachable master.
const LIMIT: Duration = Duration::from_secs(300);

/// XML-RPC to the master over the simulated network, one connection per
/// call, with the HTTP transport's rules: a connection that cannot be made
/// is `Unreachable` (nothing was sent), a reply that does not come is
/// `Transport` (the call may have run).
struct TurmoilXapi;

#[async_trait]
impl Transport for TurmoilXapi {
    async fn call(&self, method: &str, params: Vec<Value>) -> Result<Value, CallError> {
        let request = Request::post("/")
            .header("host", "master")
            .header("content-type", "text/xml")
            .body(xmlrpc::render_call(method, &params).into_bytes())
            .expect("a well-formed request");
        let master = turmoil::lookup("master");
        let reply = turmoil_http::exchange((master, PORT), request)
            .await
            .map_err(|failure| match failure {
                Failure::Unreachable(why) => CallError::Unreachable(format!("master {why}")),
                Failure::Broken(why) => CallError::Transport(format!("{method}: {why}")),
            })?;
        let text = String::from_utf8_lossy(reply.body());
        match xmlrpc::parse_response(&text) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(CallError::Xapi(e)),
            Err(e) => Err(CallError::Decode {
                method: method.into(),
                detail: e.to_string(),
            }),
        }
    }
}

/// Serves the pool `lab` of `sim` on the simulated network, in simulated
/// real time (turmoil's clock).
async fn serve(sim: Arc<Mutex<Sim>>) -> turmoil::Result {
    let pool = sim.lock().unwrap().pool_id("lab").expect("the pool");
    turmoil_http::serve(
        router(PoolServer::new(sim, pool, ServeClock::new(1.0))),
        PORT,
    )
    .await
}

/// The pool `lab` with the VM `db`, and the `faults` given (TOML).
fn pool_with_a_vm(seed: u64, faults: &str) -> Arc<Mutex<Sim>> {
    let spec = toml::from_str(&format!(
        r#"
[[pool]]
name = "lab"
hosts = 2
[[pool.sr]]
name = "nfs"
size_gib = 100
default = true
[[pool.network]]
name = "net"
management = true
[[pool.vms]]
name = "db"
disks_mib = [16]
{faults}"#
    ))
    .unwrap();
    Arc::new(Mutex::new(Sim::new(&spec, seed).unwrap()))
}

/// What the engine saw in one run.
#[derive(Debug, Default)]
struct Seen {
    /// Each step's result, as text, and when it ended.
    steps: Vec<(String, Result<String, CallError>, Duration)>,
    reachability: Vec<(Reachability, Duration)>,
    calls: u64,
}

type Shared = Arc<Mutex<Seen>>;

/// A network change: at this time, cut (true) or heal (false) the link.
type Network = Vec<(Duration, bool)>;

/// A turmoil simulation with the master and its network plan; the client
/// is added by the caller.
fn simulation(
    seed: u64,
    fail_rate: f64,
    latency: Duration,
    sim: &Arc<Mutex<Sim>>,
) -> turmoil::Sim<'static> {
    let mut net = turmoil::Builder::new();
    net.simulation_duration(Duration::from_secs(3600))
        .rng_seed(seed)
        .fail_rate(fail_rate)
        .min_message_latency(latency)
        .max_message_latency(latency * 2);
    let mut net = net.build();
    let served = Arc::clone(sim);
    net.host("master", move || serve(Arc::clone(&served)));
    net
}

/// Plays `network` from the start of the client's run.
fn play(network: Network) {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for (at, cut) in network {
            tokio::time::sleep_until(start + at).await;
            if cut {
                turmoil::partition("engine", "master");
            } else {
                turmoil::repair("engine", "master");
            }
        }
    });
}

/// Logs in, then reads the VMs and snapshots `db` (the snapshot named `copy`), recording
/// each step.
fn run(seed: u64, fail_rate: f64, latency: Duration, network: Network) -> Seen {
    run_with_faults(seed, fail_rate, latency, network, "")
}

/// [`run`] on a pool with `faults` (TOML `[[fault]]` entries).
fn run_with_faults(
    seed: u64,
    fail_rate: f64,
    latency: Duration,
    network: Network,
    faults: &str,
) -> Seen {
    let sim = pool_with_a_vm(seed, faults);
    let mut net = simulation(seed, fail_rate, latency, &sim);
    let seen: Shared = Arc::default();
    let out = Arc::clone(&seen);
    net.client("engine", async move {
        let started = tokio::time::Instant::now();
        let at = move || started.elapsed();
        let credentials = Credentials {
            user: "root".into(),
            password: "password".into(),
        };
        let client = match XapiClient::login(Arc::new(TurmoilXapi), credentials, LIMIT).await {
            Ok(client) => client,
            Err(e) => {
                out.lock()
                    .unwrap()
                    .steps
                    .push(("login".into(), Err(e), at()));
                return Ok(());
            }
        };
        let heard = Arc::clone(&out);
        let client = client.with_reachability_hook(Arc::new(move |change| {
            heard.lock().unwrap().reachability.push((change, at()));
        }));
        play(network);
        let step = |name: &str, result: Result<String, CallError>| {
            out.lock().unwrap().steps.push((name.into(), result, at()));
        };
        let vms = client.vm_get_by_name_label("db").await;
        let vm = vms.as_ref().ok().and_then(|refs| refs.first().cloned());
        step("find db", vms.map(|refs| format!("{} VM(s)", refs.len())));
        if let Some(vm) = vm {
            let copy = client.vm_snapshot(&vm, "copy").await;
            step(
                "snapshot db",
                copy.map(|r| format!("{r:?}").len().to_string()),
            );
        }
        // Whatever happened, the pool is asked again once the network is
        // whole (a reply lost in flight leaves the caller not knowing).
        tokio::time::sleep(Duration::from_secs(200)).await;
        let copies = client.vm_get_by_name_label("copy").await;
        step(
            "find copy",
            copies.map(|refs| format!("{} VM(s)", refs.len())),
        );
        out.lock().unwrap().calls = client.call_count();
        Ok(())
    });
    net.run().unwrap();
    Arc::try_unwrap(seen)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_else(|shared| std::mem::take(&mut *shared.lock().unwrap()))
}

fn result_of<'a>(seen: &'a Seen, name: &str) -> &'a Result<String, CallError> {
    &seen
        .steps
        .iter()
        .find(|(step, ..)| step == name)
        .unwrap_or_else(|| panic!("step {name} ran: {seen:?}"))
        .1
}

#[test]
fn a_partition_that_heals_is_waited_out_and_reported() {
    // The link is cut before the first call and heals two minutes later.
    let network = vec![(Duration::ZERO, true), (Duration::from_secs(120), false)];
    let seen = run(1, 0.0, Duration::from_millis(1), network);
    assert_eq!(result_of(&seen, "find db").as_ref().unwrap(), "1 VM(s)");
    assert!(result_of(&seen, "snapshot db").is_ok(), "{seen:?}");
    assert_eq!(result_of(&seen, "find copy").as_ref().unwrap(), "1 VM(s)");
    let (lost, back) = (&seen.reachability[0], &seen.reachability[1]);
    assert!(
        matches!(&lost.0, Reachability::Lost { limit, .. } if *limit == LIMIT),
        "{seen:?}"
    );
    match &back.0 {
        Reachability::Back { after } => assert!(
            *after >= Duration::from_secs(110) && *after <= Duration::from_secs(180),
            "out of reach for about the partition's length: {after:?}"
        ),
        other => panic!("the client says the master answers again: {other:?}"),
    }
}

#[test]
fn a_partition_past_the_limit_fails_the_call_naming_it() {
    let seen = run(
        2,
        0.0,
        Duration::from_millis(1),
        vec![(Duration::ZERO, true)],
    );
    let (_, found, ended) = &seen.steps[0];
    match found {
        Err(CallError::Unreachable(why)) => assert!(why.contains("of trying"), "{why}"),
        other => panic!("the call fails as unreachable: {other:?}"),
    }
    assert!(
        *ended >= LIMIT && *ended < LIMIT + Duration::from_secs(60),
        "gives up at its limit, not before and not much after: {ended:?}"
    );
    assert!(seen.steps.iter().all(|(_, result, _)| result.is_err()));
}

#[test]
fn a_partition_while_a_task_works_is_waited_out_and_its_result_arrives() {
    // VM.snapshot runs as a task for a few seconds; the link is cut while it
    // works (its task already answered) and heals a minute and a half later.
    let network = vec![
        (Duration::from_millis(500), true),
        (Duration::from_secs(90), false),
    ];
    let seen = run(3, 0.0, Duration::from_millis(1), network);
    assert_eq!(result_of(&seen, "find db").as_ref().unwrap(), "1 VM(s)");
    assert!(
        result_of(&seen, "snapshot db").is_ok(),
        "the task is followed again once the link heals: {seen:?}"
    );
    assert_eq!(result_of(&seen, "find copy").as_ref().unwrap(), "1 VM(s)");
}

#[test]
fn a_reply_lost_in_flight_says_the_call_may_have_run_and_it_did() {
    // The reply to Async.VM.snapshot (its task) never comes back.
    let lost =
        "[[fault]]\nkind = \"reply_lost\"\npool = \"lab\"\nmethod = \"VM.snapshot\"\ncount = 1\n";
    let seen = run_with_faults(3, 0.0, Duration::from_millis(1), Vec::new(), lost);
    assert_eq!(result_of(&seen, "find db").as_ref().unwrap(), "1 VM(s)");
    match result_of(&seen, "snapshot db") {
        Err(CallError::Transport(why)) => assert!(why.contains("VM.snapshot"), "{why}"),
        other => panic!("a lost reply is not taken for a refusal: {other:?}"),
    }
    assert_eq!(
        result_of(&seen, "find copy").as_ref().unwrap(),
        "1 VM(s)",
        "the snapshot was taken: whoever sent the call must look for it by name"
    );
}

#[test]
fn latency_and_loss_change_timings_not_a_seeds_outcome() {
    let slow = run(4, 0.0, Duration::from_millis(200), Vec::new());
    assert!(
        slow.steps.iter().all(|(_, result, _)| result.is_ok()),
        "{slow:?}"
    );
    let quick = run(4, 0.0, Duration::from_millis(1), Vec::new());
    let end = |seen: &Seen| seen.steps.last().unwrap().2;
    assert!(end(&slow) > end(&quick), "latency shows in the timings");
    assert_eq!(slow.calls, quick.calls, "and not in the calls made");

    let lossy = run(5, 0.05, Duration::from_millis(20), Vec::new());
    let again = run(5, 0.05, Duration::from_millis(20), Vec::new());
    assert!(
        result_of(&lossy, "find db").is_ok() && result_of(&lossy, "find copy").is_ok(),
        "a read whose reply was lost is asked again: {lossy:?}"
    );
    assert_eq!(
        format!("{lossy:?}"),
        format!("{again:?}"),
        "same seed, same run"
    );
}
