//! The data path in a simulated pool: a nightly backup of 12 VMs cloned from
//! one template on three days. Every version restores byte-identical to the
//! snapshot it was read from; day 1 stores far less than 12 disks' worth;
//! later days read only what CBT reports changed and add only that.

use abd::scenario::Scenario;

/// Runs a shipped scenario at its own seed; its checks and expectations hold.
fn run_shipped(name: &str) -> (String, abd::runner::RunOutput) {
    let path = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let scenario = Scenario::load(std::path::Path::new(&path)).unwrap();
    let (out, summary) = abd::run_and_check(&scenario, scenario.seed);
    assert!(summary.ok, "{}", summary.text());
    (path, out)
}

#[test]
fn nightly_backups_dedup_across_clones_and_days_and_restore_byte_identical() {
    let (_, out) = run_shipped("nightly-dedup");
    let data = out.data.clone().expect("the scenario has a data store");
    assert_eq!(data.versions, 36);
    assert_eq!(data.disks_restored, 36, "{:?}", data.problems);
    assert!(data.problems.is_empty(), "{:?}", data.problems);

    // New chunks per day, from the job logs ("stored X (N new of M chunks, ...)").
    let new_chunks_per_day: Vec<u64> = out
        .jobs
        .iter()
        .map(|job| {
            job.report
                .log
                .lines
                .iter()
                .filter_map(|l| {
                    l.text
                        .split(" new of ")
                        .next()?
                        .rsplit('(')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum()
        })
        .collect();
    assert_eq!(new_chunks_per_day.len(), 3);
    let disk_bytes = 64u64 << 20;
    // New chunks on day 1: shared OS blocks are stored once for the 12 clones.
    assert!(
        data.stored_bytes < 12 * disk_bytes / 2,
        "stored {} bytes",
        data.stored_bytes
    );
    // Days 2 and 3 add a few percent of day 1's chunks.
    assert!(
        new_chunks_per_day[1] * 5 < new_chunks_per_day[0],
        "{new_chunks_per_day:?}"
    );
    assert!(
        new_chunks_per_day[2] * 5 < new_chunks_per_day[0],
        "{new_chunks_per_day:?}"
    );
    let incremental = summary_lines(
        &out,
        "committed to the data store (incremental on version 2)",
    );
    assert_eq!(incremental, 12);
    // Days 2 and 3 read only the segments CBT reports changed, and say how many blocks.
    assert_eq!(
        summary_lines(&out, "[CBT] Disk 1: first backup with CBT"),
        12
    );
    assert_eq!(summary_lines(&out, "/1024 blocks changed"), 24);
    assert_eq!(summary_lines(&out, "falling back to a full read"), 0);
    let read_mib = |day: usize| -> f64 {
        out.jobs[day]
            .report
            .log
            .lines
            .iter()
            .filter_map(|l| {
                let read = l.text.strip_prefix("Read ")?;
                read.split(" MiB").next()?.parse::<f64>().ok()
            })
            .sum()
    };
    assert_eq!(read_mib(0), 12.0 * 64.0);
    assert!(
        read_mib(1) < read_mib(0) / 2.0,
        "{} vs {}",
        read_mib(1),
        read_mib(0)
    );
    assert!(
        read_mib(2) < read_mib(0) / 2.0,
        "{} vs {}",
        read_mib(2),
        read_mib(0)
    );
    // Each job ends with its totals: read, sent, stored.
    assert_eq!(summary_lines(&out, " MiB stored in "), 3);
}

fn summary_lines(out: &abd::runner::RunOutput, needle: &str) -> usize {
    out.jobs
        .iter()
        .flat_map(|j| j.report.log.lines.iter())
        .filter(|l| l.text.contains(needle))
        .count()
}

#[test]
fn restores_write_each_version_back_byte_identical_and_a_bad_request_leaves_nothing() {
    let (path, out) = run_shipped("restore");
    let data = out.data.clone().unwrap();
    assert_eq!(data.restored_vdis_checked, 6, "{:?}", data.problems);
    assert_eq!(out.pools["lab"].restored_vdis.len(), 6);

    // Asking for a version that does not exist fails each VM with the reason,
    // and creates no VDI.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("version = 1", "version = 9");
    let bad = Scenario::parse("restore-bad.toml", &text).unwrap();
    let (out, _) = abd::run_and_check(&bad, bad.seed);
    let restore = &out.jobs[2].report;
    assert_eq!(restore.status.to_string(), "failed");
    for vm in &restore.vms {
        let reason = vm.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("has no version 9 (versions: 1, 2)"),
            "{reason}"
        );
    }
    assert!(out.pools["lab"].restored_vdis.is_empty());
    // Checked before any delegate was spent: 6 backups' delegates only.
    assert_eq!(summary_lines(&out, "Nothing to write"), 3);
    assert!(
        out.pools["lab"].orphan_vdis.is_empty(),
        "{:?}",
        out.pools["lab"].orphan_vdis
    );
    assert!(
        abd::checks::check(&bad, &out).is_empty(),
        "{:?}",
        abd::checks::check(&bad, &out)
    );
}

#[test]
fn restores_by_upload_need_no_delegate_and_a_damaged_version_leaves_nothing() {
    let (path, out) = run_shipped("restore-upload");
    let data = out.data.clone().unwrap();
    assert_eq!(data.restored_vdis_checked, 6, "{:?}", data.problems);
    assert_eq!(out.pools["lab"].restored_vdis.len(), 6);
    // No VM was cloned or started for the restore: it is the engine's upload.
    let restore_start_ms = 7_200_000;
    let spent: Vec<_> = out
        .events
        .iter()
        .filter(|e| e.at.as_ms() >= restore_start_ms)
        .filter(|e| e.text.starts_with("VM.clone") || e.text.starts_with("VM.start"))
        .map(|e| e.text.clone())
        .collect();
    assert!(spent.is_empty(), "{spent:?}");
    for vm in &out.jobs[1].report.vms {
        assert_eq!(vm.delegate, None, "{vm:?}");
    }

    // A chunk damaged at rest before the restore: the versions that use it
    // fail to restore, naming it, and leave no VDI; the others restore.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[[job]]\nname = \"restore-upload\"",
        "[[fault]]\nkind = \"chunk_corrupt\"\npool = \"lab\"\nfrom_s = 7150\n\n\
         [[job]]\nname = \"restore-upload\"",
    );
    let damaged = Scenario::parse("restore-upload-damaged.toml", &text).unwrap();
    let (out, _) = abd::run_and_check(&damaged, damaged.seed);
    let restore = &out.jobs[1].report;
    let failed: Vec<_> = restore
        .vms
        .iter()
        .filter(|vm| vm.status == engine::job::VmStatus::Failed)
        .collect();
    assert!(!failed.is_empty(), "{restore:?}");
    for vm in &failed {
        let reason = vm.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("chunk"), "{reason}");
    }
    let restored = restore.vms.len() - failed.len();
    assert_eq!(out.pools["lab"].restored_vdis.len(), 2 * restored);
    assert!(
        out.pools["lab"].orphan_vdis.is_empty(),
        "{:?}",
        out.pools["lab"].orphan_vdis
    );
    assert!(
        abd::checks::check(&damaged, &out).is_empty(),
        "{:?}",
        abd::checks::check(&damaged, &out)
    );
}

#[test]
fn replication_writes_whole_disks_once_then_only_what_changed() {
    let path = format!("{}/scenarios/replication.toml", env!("CARGO_MANIFEST_DIR"));
    let scenario = Scenario::load(std::path::Path::new(&path)).unwrap();
    let (out, summary) = abd::run_and_check(&scenario, scenario.seed);
    assert!(summary.ok, "{}", summary.text());
    // Every replica VDI holds its version's bytes (checked after the run).
    assert_eq!(out.data.as_ref().unwrap().restored_vdis_checked, 3);
    let written_mib = |job: usize| -> f64 {
        out.jobs[job]
            .report
            .log
            .lines
            .iter()
            .filter_map(|l| {
                l.text
                    .split(": ")
                    .nth(1)?
                    .strip_suffix(" MiB written (verified against the backup's digest)")?
                    .parse::<f64>()
                    .ok()
            })
            .sum()
    };
    assert_eq!(written_mib(1), 3.0 * 64.0);
    assert!(
        written_mib(3) > 0.0 && written_mib(3) < written_mib(1) / 2.0,
        "{}",
        written_mib(3)
    );
    let dr = &out.pools["dr"];
    assert_eq!(
        dr.restored_vdis.len(),
        3,
        "one replica disk per VM, updated in place"
    );
    // Each replica is one halted VM whose disk is its replica VDI, made from
    // the source VM's recorded configuration, kept across runs.
    let mut names: Vec<&str> = dr.replica_vms.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["app-01 (replica)", "app-02 (replica)", "app-03 (replica)"]
    );
    let source = &scenario.pools[0].vm_groups[0];
    for replica in &dr.replica_vms {
        assert!(replica.halted, "{replica:?}");
        assert!(replica.start_blocked.is_some(), "{replica:?}");
        assert_eq!(replica.disks.len(), 1, "{replica:?}");
        assert_eq!(
            replica.userdevices,
            ["0"],
            "where the source has it: {replica:?}"
        );
        assert!(dr.restored_vdis.contains(&replica.disks[0]), "{replica:?}");
        // eth0 mapped from net; app-01's second interface, added between
        // the days, reached its replica on the second run.
        let networks: &[&str] = match replica.name.as_str() {
            "app-01 (replica)" => &["dr-net", "backup-lan"],
            _ => &["dr-net"],
        };
        assert_eq!(replica.networks, networks, "{replica:?}");
        // The simulator gives protected VMs 2 vCPUs (a replica without a
        // recorded configuration would get 1).
        assert_eq!(replica.vcpus, 2, "{replica:?}");
        assert_eq!(
            replica.memory_static_max,
            (source.memory_gib * (1u64 << 30) as f64) as i64
        );
    }
    let log = |job: usize| {
        out.jobs[job]
            .report
            .log
            .lines
            .iter()
            .map(|l| l.text.clone())
    };
    assert_eq!(log(1).filter(|l| l.contains("Replica VM")).count(), 3);
    assert_eq!(
        log(3).filter(|l| l.contains("Replica VM")).count(),
        0,
        "the second run keeps the same VMs"
    );
}

#[test]
fn latency_between_delegates_and_the_store_lengthens_backups() {
    let path = format!(
        "{}/scenarios/fault-network.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    // The same backups with no faults, then with 2 s added to every request
    // an agent sends to the store.
    let calm_text = text[..text.find("[[fault]]").unwrap()].to_string();
    let slow_text = format!(
        "{calm_text}\n[[fault]]\nkind = \"network\"\nlink = \"delegates_store\"\npool = \"lab\"\n\
         rate = 0.0\nlatency_s = 2.0\nfrom_s = 0\nuntil_s = 100000\n"
    );
    let run = |text: &str| {
        let scenario = Scenario::parse("latency.toml", text).unwrap();
        let (out, summary) = abd::run_and_check(&scenario, scenario.seed);
        assert!(summary.ok, "{}", summary.text());
        out
    };
    let (calm, slow) = (run(&calm_text), run(&slow_text));
    let took = |out: &abd::runner::RunOutput| {
        let r = &out.jobs[0].report;
        r.finished_ms - r.started_ms
    };
    // Each VM's backup asks the store at least twice per batch of segments:
    // six VMs, one 64 MiB batch each, over two delegates at a time.
    assert!(
        took(&slow) >= took(&calm) + 3 * 2 * 2_000,
        "calm {} ms, slow {} ms",
        took(&calm),
        took(&slow)
    );
    assert_eq!(slow.data.unwrap().versions, calm.data.unwrap().versions);
}

#[test]
fn replicas_failed_over_to_or_cloned_by_the_operator_are_theirs() {
    let (_, out) = run_shipped("replication-failover");
    let dr = &out.pools["dr"];
    // app-01's replica: started, then shut down by the operator; still theirs.
    let failed_over = dr
        .replica_vms
        .iter()
        .find(|r| r.name == "app-01 (replica)")
        .unwrap();
    assert!(failed_over.halted && failed_over.start_blocked.is_none());
    // The clone of app-02's replica is not a replica of ours, and its disk
    // was not taken for part of one (nothing was rewritten whole).
    assert!(dr.vm_names.iter().any(|n| n == "app-02 (replica) clone"));
    assert!(!dr.replica_vms.iter().any(|r| r.name.ends_with("clone")));
    let second = &out.jobs[3].report.log.lines;
    assert!(!second.iter().any(|l| l.text.contains("rewriting it whole")));
    let updated = second
        .iter()
        .filter(|l| l.text.starts_with("Updating the replica"))
        .count();
    assert_eq!(updated, 2, "app-02 and app-03, in place");
}
