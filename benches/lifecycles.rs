//! Simulated delegate lifecycles per wall second: a whole scenario (clone,
//! boot, address, identity, snapshot, read, teardown for every VM) on the
//! paused clock, at a fixed seed.

use abd::scenario::Scenario;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::path::PathBuf;

fn load(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn lifecycles(c: &mut Criterion) {
    let mut group = c.benchmark_group("delegate_lifecycles");
    group.sample_size(10);
    for name in ["quickstart.toml", "large.toml"] {
        let scenario = load(name);
        let (_, summary) = abd::run_and_check(&scenario, scenario.seed);
        assert!(summary.ok, "{}", summary.text());
        group.throughput(Throughput::Elements(summary.delegates_created as u64));
        group.bench_function(scenario.name.clone(), |b| {
            b.iter(|| abd::runner::run(&scenario, scenario.seed))
        });
    }
    group.finish();
}

criterion_group!(benches, lifecycles);
criterion_main!(benches);
