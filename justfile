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

# Criterion bench: simulated delegate lifecycles per wall second.
bench:
    cargo bench --bench lifecycles

# Formatting and clippy, as CI runs them.
lint:
    cargo fmt --all -- --check && cargo clippy --workspace --all-targets -- -D warnings

# Everything CI runs.
ci:
    bash .ci/run
