# abd: common tasks. `just --list` shows them.

# Run a scenario on the simulator, e.g. `just run scenarios/two-jobs.toml --seed 7 --json`.
run scenario="scenarios/quickstart.toml" *args:
    cargo run --release -- run {{scenario}} {{args}}

# Every test of every crate.
test:
    cargo test --workspace

# Run every scenario (release, summaries only); stop at the first failure.
scenarios:
    #!/usr/bin/env bash
    set -euo pipefail
    for scenario in scenarios/*.toml; do
        echo "== $scenario"
        cargo run --release --quiet -- run "$scenario" --quiet
    done

# Criterion benches: delegate lifecycles, XAPI over HTTP, the data path.
bench:
    cargo bench --bench lifecycles --bench xmlrpc --bench datapath

# abd vs restic on the same seeded 2 GiB disk image (needs restic).
compare-restic:
    benches/compare-restic.sh

# Dedup ratio by chunk size on the simulator's seeded content.
dedup-ratio:
    cargo run --release --example dedup_ratio

# Formatting and clippy, as CI runs them.
lint:
    cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings

# Everything CI runs.
ci:
    bash .ci/run
