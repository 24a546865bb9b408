//! XAPI over HTTP on loopback: calls per second through the engine's HTTP
//! transport to the served simulator, for a single record and for every VM
//! record of a 200-VM pool. Also prints the engine's XAPI calls per delegate
//! lifecycle (a count, measured on the quickstart scenario).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::xapi::{HttpOptions, HttpTransport, Protocol, Transport};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use xapi_sim::Sim;
use xapi_sim::server::{PoolServer, ServeClock, router};
use xapi_sim::spec::WorldSpec;

const WORLD: &str = r#"
[[pool]]
name = "bench"
hosts = 4
[[pool.sr]]
name = "nfs"
size_gib = 100000
[[pool.vms]]
name = "vm"
count = 200
"#;

fn calls(c: &mut Criterion) {
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let spec: WorldSpec = toml::from_str(WORLD).unwrap();
    let sim = Sim::new(&spec, 1).unwrap();
    let pool = sim.pool_id("bench").unwrap();
    let server = PoolServer::new(
        Arc::new(Mutex::new(sim)),
        pool,
        ServeClock::External(Arc::new(AtomicU64::new(0))),
    );
    let listener = io
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    io.spawn(async move { axum::serve(listener, router(server)).await });
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("xapi_over_http");
    group.throughput(Throughput::Elements(1));
    for protocol in [Protocol::XmlRpc, Protocol::JsonRpc] {
        let http = HttpTransport::new(
            &url,
            &HttpOptions {
                protocol,
                ..Default::default()
            },
        )
        .unwrap();
        let session = client
            .block_on(http.call(
                "session.login_with_password",
                vec![json!("root"), json!("password")],
            ))
            .unwrap();
        let vms = client
            .block_on(http.call("VM.get_all", vec![session.clone()]))
            .unwrap();
        let vm = vms[0].clone();
        let name = format!("{protocol:?}");
        group.bench_function(format!("{name}/VM.get_record"), |b| {
            b.iter(|| {
                client
                    .block_on(http.call("VM.get_record", vec![session.clone(), vm.clone()]))
                    .unwrap()
            })
        });
        group.bench_function(format!("{name}/VM.get_all_records (200 VMs)"), |b| {
            b.iter(|| {
                client
                    .block_on(http.call("VM.get_all_records", vec![session.clone()]))
                    .unwrap()
            })
        });
    }
    group.finish();

    // Calls one more delegate lifecycle costs (clone, configure, boot, wait
    // for the address, identity, snapshot, attach, read, detach, teardown):
    // quickstart at 12 VMs against the same at 6, so the template's deploy
    // and the job's own calls cancel out.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios/quickstart.toml");
    let scenario = abd::scenario::Scenario::load(&path).unwrap();
    let calls_with = |vms: u32| {
        let mut scenario = scenario.clone();
        scenario.pools[0].vm_groups[0].count = Some(vms);
        let (_, summary) = abd::run_and_check(&scenario, scenario.seed);
        assert!(summary.ok, "{}", summary.text());
        (summary.xapi_calls, summary.delegates_created)
    };
    let (many, many_delegates) = calls_with(12);
    let (few, few_delegates) = calls_with(6);
    eprintln!(
        "engine XAPI calls per delegate lifecycle (quickstart, 12 VMs against 6): {:.1} ({many} calls / {many_delegates} delegates, {few} / {few_delegates}; {:.1} per delegate including the template's deploy)",
        (many - few) as f64 / (many_delegates - few_delegates) as f64,
        many as f64 / many_delegates as f64,
    );
    io.shutdown_background();
}

criterion_group!(benches, calls);
criterion_main!(benches);
