//! A pool whose master moves, served over HTTP with one endpoint per host:
//! the old master answers HOST_IS_SLAVE naming where the new one answers, and
//! the engine's HTTP client follows it, logs in again and carries on. And a
//! client that starts while the master it was given is down finds the new
//! one through the pool's other hosts it was told of.

use engine::xapi::{
    CallError, Credentials, HttpOptions, HttpTransport, Reachability, Transport, XapiClient,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xapi_proto::Value;
use xapi_sim::Sim;
use xapi_sim::server::{PoolServer, ServeClock};

const WORLD: &str = r#"
[[pool]]
name = "lab"
hosts = 3
[[pool.sr]]
name = "nfs"
size_gib = 100
default = true

[[fault]]
kind = "master_change"
pool = "lab"
host = "lab-host-3"
from_s = 60
"#;

#[tokio::test]
async fn the_client_follows_a_master_that_moved() {
    let time_ms = Arc::new(AtomicU64::new(0));
    let endpoints = bind_world(WORLD, &time_ms).await;
    let urls: Vec<String> = endpoints.iter().map(|e| e.url.clone()).collect();
    assert_eq!(endpoints.len(), 3, "one endpoint per host: {urls:?}");
    assert!(urls[0].starts_with("http://127.0.0.1:"), "{urls:?}");
    for endpoint in endpoints {
        tokio::spawn(async move { axum::serve(endpoint.listener, endpoint.app).await });
    }

    // Before the move a member refuses, naming the master's endpoint.
    let member = HttpTransport::new(&urls[1], &HttpOptions::default()).unwrap();
    let refused = member.call("session.login_with_password", login()).await;
    let Err(CallError::Xapi(e)) = refused else {
        panic!("a member performed a call: {refused:?}");
    };
    assert_eq!(e.code, "HOST_IS_SLAVE");
    assert_eq!(e.params, vec!["127.0.0.1".to_string()]);

    let transport = Arc::new(HttpTransport::new(&urls[0], &HttpOptions::default()).unwrap());
    let credentials = Credentials {
        user: "root".into(),
        password: "password".into(),
    };
    let moves = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&moves);
    let client = XapiClient::login(transport.clone(), credentials, Duration::from_secs(1))
        .await
        .unwrap()
        .with_reachability_hook(Arc::new(move |change| seen.lock().unwrap().push(change)));
    assert!(!client.vm_get_all_records().await.unwrap().is_empty());

    // The master role moves to host 3; its toolstack restart loses the session.
    time_ms.store(61_000, Ordering::SeqCst);
    let pools = client.pool_get_all_records().await.unwrap();
    assert_eq!(pools.len(), 1);
    assert!(
        transport.url().starts_with("http://127.0.0.3:"),
        "{}",
        transport.url()
    );
    assert_eq!(
        *moves.lock().unwrap(),
        vec![Reachability::MasterMoved {
            address: "127.0.0.3".into()
        }]
    );
    // The old master now refuses too.
    let old = HttpTransport::new(&urls[0], &HttpOptions::default()).unwrap();
    let refused = old.call("session.login_with_password", login()).await;
    assert!(
        matches!(&refused, Err(CallError::Xapi(e)) if e.code == "HOST_IS_SLAVE" && e.params == ["127.0.0.3"]),
        "{refused:?}"
    );
}

/// Binds pool `lab` of `world` on loopback, one endpoint per host, its
/// simulated time read from `time_ms`.
async fn bind_world(
    world: &str,
    time_ms: &Arc<AtomicU64>,
) -> Vec<xapi_sim::endpoints::HostEndpoint> {
    let spec: xapi_sim::spec::WorldSpec = toml::from_str(world).unwrap();
    let sim = Arc::new(Mutex::new(Sim::new(&spec, 7).unwrap()));
    let pool = sim.lock().unwrap().pool_id("lab").unwrap();
    let server = PoolServer::new(sim, pool, ServeClock::External(Arc::clone(time_ms)));
    xapi_sim::endpoints::bind_pool(server, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn login() -> Vec<Value> {
    vec![Value::from("root"), Value::from("password")]
}

const HA_WORLD: &str = r#"
[[pool]]
name = "lab"
hosts = 3
ha = true
[[pool.sr]]
name = "nfs"
size_gib = 100
default = true

[[fault]]
kind = "host_crash"
pool = "lab"
host = "lab-host-1"
from_s = 10
"#;

#[tokio::test]
async fn a_client_started_while_the_master_is_down_finds_it_through_the_hosts_it_knows() {
    // Well after the crash: HA has handed the master role on.
    let time_ms = Arc::new(AtomicU64::new(600_000));
    let endpoints = bind_world(HA_WORLD, &time_ms).await;
    let urls: Vec<String> = endpoints.iter().map(|e| e.url.clone()).collect();
    for endpoint in endpoints {
        tokio::spawn(endpoint.serve());
    }
    let credentials = Credentials {
        user: "root".into(),
        password: "password".into(),
    };
    let limit = Duration::from_secs(1);

    // Told only of the dead master, the client gives up at its limit.
    let alone = Arc::new(HttpTransport::new(&urls[0], &HttpOptions::default()).unwrap());
    let failed = XapiClient::login(alone, credentials.clone(), limit).await;
    assert!(
        matches!(&failed, Err(CallError::Unreachable(_))),
        "{:?}",
        failed.err()
    );

    // Told of the other hosts too, it finds the new master and works there.
    let transport = Arc::new(HttpTransport::new(&urls[0], &HttpOptions::default()).unwrap());
    let hosts = vec!["127.0.0.2".to_string(), "127.0.0.3".to_string()];
    let client = XapiClient::login_knowing(transport.clone(), credentials, limit, hosts)
        .await
        .expect("the new master is found");
    assert!(
        !transport.url().starts_with("http://127.0.0.1:"),
        "calls go to the new master: {}",
        transport.url()
    );
    assert_eq!(client.pool_get_all_records().await.unwrap().len(), 1);
}
