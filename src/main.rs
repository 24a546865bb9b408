//! `abd`: runs scenarios on the embedded pool simulator.

use abd::scenario::Scenario;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "abd",
    version,
    about = "Backup delegates for XenServer / XCP-ng pools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a scenario on the embedded simulator under a virtual clock.
    Run {
        /// The scenario file (TOML).
        scenario: PathBuf,
        /// Seed of the run (default: the scenario's own).
        #[arg(long)]
        seed: Option<u64>,
        /// Print the summary as JSON instead of the job logs and summary text.
        #[arg(long)]
        json: bool,
        /// Print only the summary, not the job logs.
        #[arg(long)]
        quiet: bool,
        /// How the engine reaches the simulated pools: in process, or over HTTP
        /// on loopback (XML-RPC or JSON-RPC) through its real HTTP transport.
        #[arg(long, value_enum, default_value_t = Link::InProcess)]
        xapi: Link,
    },
    /// Runs a scenario over many seeds, each also drawing the scenario's fault
    /// rates and `[swarm]` topology; prints a table and, for each failing
    /// seed, the command that replays it. Exits 1 if any seed failed.
    Swarm {
        /// The scenario file (TOML).
        scenario: PathBuf,
        /// How many seeds.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        start: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Checks a real pool (or `abd sim serve`) without changing anything:
    /// API version, hosts, default SR, networks, template, what would block jobs.
    Validate {
        #[command(flatten)]
        pool: abd::real_pool::PoolArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runs the diagnostic job on a real pool: one delegate through every
    /// lifecycle step (clone, boot, address, agent), timed, then torn down.
    Diag {
        #[command(flatten)]
        pool: abd::real_pool::PoolArgs,
    },
    /// Backs up VMs of a real pool (one job), each through its own delegate.
    Backup {
        #[command(flatten)]
        pool: abd::real_pool::PoolArgs,
        /// A VM to back up, by name (repeat for more).
        #[arg(long = "vm", required = true)]
        vms: Vec<String>,
        /// VMs processed at once, each with its own delegate.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        /// Cancel the job (cleaning up) once it has run this many seconds.
        #[arg(long)]
        time_limit_s: Option<u64>,
        #[command(flatten)]
        store: abd::real_pool::StoreArgs,
    },
    /// Restores VMs' versions from the data store onto new VDIs of a real
    /// pool (one job), verified against each backup's digest.
    Restore {
        #[command(flatten)]
        pool: abd::real_pool::PoolArgs,
        /// A VM whose version to restore, by uuid or by name (repeat for more).
        #[arg(long = "vm", required = true)]
        vms: Vec<String>,
        /// Only VMs backed up from this pool (by name): tells apart VMs of
        /// one name in different pools.
        #[arg(long)]
        source_pool: Option<String>,
        /// The version to restore (default: each VM's newest).
        #[arg(long)]
        version: Option<u64>,
        /// The SR (by name) for the new VDIs (default: the pool's default SR).
        #[arg(long)]
        sr: Option<String>,
        /// `delegate`: a delegate writes each disk, reading the store itself;
        /// `import`: this engine uploads each disk to the pool master (no
        /// delegate; every byte crosses this machine's link to the pool).
        #[arg(long, value_enum, default_value_t = RestoreVia::Delegate)]
        via: RestoreVia,
        /// VMs processed at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        #[command(flatten)]
        store: abd::real_pool::StoreArgs,
    },
    /// The delegate template of a real pool.
    Template {
        #[command(subcommand)]
        action: TemplateAction,
    },
    /// The data store (ADS) on its own: init, backup an image, list, restore, verify, gc.
    Ads {
        #[command(subcommand)]
        command: abd::ads_cli::AdsCommand,
    },
    /// The pool simulator on its own.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
}

/// How `abd restore` writes the new VDIs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum RestoreVia {
    Delegate,
    Import,
}

#[derive(Subcommand)]
enum TemplateAction {
    /// Finds the template, or deploys one on the pool's default shared SR.
    Deploy {
        #[command(flatten)]
        pool: abd::real_pool::PoolArgs,
    },
    /// Replaces the template with a fresh one (refused while delegates exist).
    Redeploy {
        #[command(flatten)]
        pool: abd::real_pool::PoolArgs,
    },
    /// Deletes the template (only ours; refused while delegates exist).
    Delete {
        #[command(flatten)]
        pool: abd::real_pool::PoolArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Link {
    InProcess,
    XmlRpc,
    JsonRpc,
}

impl From<Link> for abd::runner::XapiLink {
    fn from(link: Link) -> Self {
        use engine::xapi::Protocol;
        match link {
            Link::InProcess => abd::runner::XapiLink::InProcess,
            Link::XmlRpc => abd::runner::XapiLink::Http(Protocol::XmlRpc),
            Link::JsonRpc => abd::runner::XapiLink::Http(Protocol::JsonRpc),
        }
    }
}

#[derive(Subcommand)]
enum SimCommand {
    /// Serves the scenario's pools over HTTP as XAPI pool masters (XML-RPC and JSON-RPC).
    Serve {
        /// The scenario file (TOML); only its pools are used.
        scenario: PathBuf,
        /// Address of the first pool; pool i listens on port + i (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// XAPI user (default: the scenario's, else root).
        #[arg(long)]
        user: Option<String>,
        /// XAPI password (default: the scenario's, else "password").
        #[arg(long)]
        password: Option<String>,
        /// Seed of the simulated world (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Simulated seconds per real second.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Serve HTTPS, as XAPI does: each pool gets a fresh self-signed
        /// certificate, written to DIR/<pool>.pem (for `--trust-cert`).
        #[arg(long, value_name = "DIR")]
        tls: Option<PathBuf>,
    },
    /// Writes a raw disk image with the simulator's seeded disk content
    /// (what a simulated VDI holds), for benchmarks and `abd ads backup`.
    Image {
        /// The file to write (replaced if it exists).
        out: PathBuf,
        /// Size, e.g. 2GiB, 512MiB or bytes.
        #[arg(long, value_parser = abd::disk_image::parse_size)]
        size: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The day the disk is read on (0: as deployed; each day rewrites ~2%).
        #[arg(long, default_value_t = 0)]
        day: u32,
        /// Which disk of the lineage (disks share their OS blocks).
        #[arg(long, default_value_t = 1)]
        disk: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Against a real pool an operator sees warnings (a pool that cannot be
    // reached, retries) as they happen; a simulated run reports its own.
    let talks_to_a_pool = matches!(
        cli.command,
        Command::Validate { .. }
            | Command::Diag { .. }
            | Command::Backup { .. }
            | Command::Restore { .. }
            | Command::Template { .. }
    );
    let default_level = match talks_to_a_pool {
        true => tracing_subscriber::filter::LevelFilter::WARN,
        false => tracing_subscriber::filter::LevelFilter::ERROR,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::builder()
                .with_default_directive(default_level.into())
                .with_env_var("ABD_LOG")
                .from_env_lossy(),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run {
            scenario,
            seed,
            json,
            quiet,
            xapi,
        } => run(&scenario, seed, json, quiet, xapi.into()),
        Command::Swarm {
            scenario,
            seeds,
            start,
            json,
        } => swarm(&scenario, start, seeds, json),
        Command::Validate { pool, json } => real_pool(validate(pool, json)),
        Command::Template { action } => real_pool(template(action)),
        Command::Diag { pool } => real_pool(diag(pool)),
        Command::Backup {
            pool,
            vms,
            concurrency,
            time_limit_s,
            store,
        } => real_pool(backup(pool, vms, concurrency, time_limit_s, store)),
        Command::Restore {
            pool,
            vms,
            version,
            sr,
            via,
            source_pool,
            concurrency,
            store,
        } => {
            let via = match via {
                RestoreVia::Delegate => engine::config::RestoreVia::Delegate,
                RestoreVia::Import => engine::config::RestoreVia::Import,
            };
            let restore = engine::config::RestoreSpec {
                version,
                sr,
                via,
                source_pool,
            };
            real_pool(restore_vms(pool, vms, concurrency, restore, store))
        }
        Command::Sim {
            command:
                SimCommand::Serve {
                    scenario,
                    listen,
                    user,
                    password,
                    seed,
                    speed,
                    tls,
                },
        } => serve(
            &scenario,
            abd::serve::ServeOptions {
                listen,
                user,
                password,
                seed,
                speed,
                tls_dir: tls,
            },
        ),
        Command::Sim {
            command:
                SimCommand::Image {
                    out,
                    size,
                    seed,
                    day,
                    disk,
                },
        } => report(abd::disk_image::write(&out, size, seed, day, disk).map(|()| true)),
        Command::Ads { command } => report(abd::ads_cli::run(command)),
    }
}

fn run(
    path: &std::path::Path,
    seed: Option<u64>,
    json: bool,
    quiet: bool,
    link: abd::runner::XapiLink,
) -> ExitCode {
    let scenario = match load(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let seed = seed.unwrap_or(scenario.seed);
    let (out, summary) = abd::run_and_check_with(&scenario, seed, link);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).expect("summary serializes")
        );
    } else {
        if !quiet {
            print_logs(&out);
        }
        print!("{}", summary.text());
    }
    if summary.ok {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "FAILED: scenario {} seed {seed}; replay with: abd run {} --seed {seed}",
            scenario.name,
            path.display()
        );
        ExitCode::FAILURE
    }
}

fn swarm(path: &std::path::Path, start: u64, seeds: u64, json: bool) -> ExitCode {
    let scenario = match load(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let report = abd::swarm::run(&scenario, start, seeds);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{}", report.text(path));
    }
    match report.failures().next() {
        None => ExitCode::SUCCESS,
        Some(_) => ExitCode::FAILURE,
    }
}

fn serve(path: &std::path::Path, options: abd::serve::ServeOptions) -> ExitCode {
    let scenario = match load(path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match abd::serve::serve(&scenario, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn report(outcome: anyhow::Result<bool>) -> ExitCode {
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_pool(job: impl std::future::Future<Output = anyhow::Result<bool>>) -> ExitCode {
    match abd::real_pool::block_on(job) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn validate(args: abd::real_pool::PoolArgs, json: bool) -> anyhow::Result<bool> {
    let (engine, name) = abd::real_pool::check(&args).await?;
    let report = engine.validate(&name).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("Pool {} (XAPI {})", args.pool, report.api_version);
        report.hosts.iter().for_each(|h| println!("  host {h}"));
        println!(
            "  default SR: {}",
            report.default_sr.as_deref().unwrap_or("none")
        );
        println!("  networks: {}", report.networks.join(", "));
        println!(
            "  delegate network: {}",
            report.delegate_network.as_deref().unwrap_or("?")
        );
        match &report.template {
            Some(sr) => println!("  delegate template: present on SR {sr:?}"),
            None => println!("  delegate template: not deployed (a job deploys it)"),
        }
        match report.delegates_allowed {
            Some(n) => println!("  delegates at once: {n} (static addresses)"),
            None => println!("  delegates at once: as many as the DHCP range allows"),
        }
        match report.blockers.as_slice() {
            [] => println!("Nothing blocks jobs."),
            blockers => blockers.iter().for_each(|b| println!("BLOCKS JOBS: {b}")),
        }
    }
    engine.shutdown().await;
    Ok(report.blockers.is_empty())
}

async fn diag(args: abd::real_pool::PoolArgs) -> anyhow::Result<bool> {
    let (engine, name) = abd::real_pool::start(&args, None).await?;
    let report = engine.run_diag(&name).await?;
    report.log.lines.iter().for_each(|line| println!("{line}"));
    for step in &report.steps {
        println!(
            "  {:<14} {:<4} {:>7} ms  {}",
            step.name,
            if step.passed { "ok" } else { "FAIL" },
            step.duration_ms,
            step.detail
        );
    }
    println!(
        "Diagnostic of pool {name}: {}",
        if report.passed { "passed" } else { "FAILED" }
    );
    engine.shutdown().await;
    Ok(report.passed)
}

async fn backup(
    args: abd::real_pool::PoolArgs,
    vms: Vec<String>,
    concurrency: usize,
    time_limit_s: Option<u64>,
    store: abd::real_pool::StoreArgs,
) -> anyhow::Result<bool> {
    let (engine, name) = abd::real_pool::start(&args, Some(&store)).await?;
    let spec = engine::JobSpec {
        name: "backup".into(),
        pool: name,
        vms,
        concurrency,
        restore: None,
        replicate: None,
        time_limit_s,
    };
    run_job(engine, spec).await
}

async fn restore_vms(
    args: abd::real_pool::PoolArgs,
    vms: Vec<String>,
    concurrency: usize,
    restore: engine::config::RestoreSpec,
    store: abd::real_pool::StoreArgs,
) -> anyhow::Result<bool> {
    let Some(dir) = &store.store else {
        anyhow::bail!("restore needs --store: the data store the versions are in");
    };
    let (engine, name) = match restore.via {
        engine::config::RestoreVia::Import => {
            abd::real_pool::start_without_delegates(&args, dir).await?
        }
        engine::config::RestoreVia::Delegate => abd::real_pool::start(&args, Some(&store)).await?,
    };
    let spec = engine::JobSpec {
        name: "restore".into(),
        pool: name,
        vms,
        concurrency,
        restore: Some(restore),
        replicate: None,
        time_limit_s: None,
    };
    run_job(engine, spec).await
}

/// Runs one job on a started engine, printing its log; Ctrl-C cancels it
/// with cleanup. True when it succeeded (with warnings or not).
async fn run_job(engine: engine::Engine, spec: engine::JobSpec) -> anyhow::Result<bool> {
    // A run a crash interrupted (with `journal_file` set): its leftovers are
    // gone; this command runs the VMs it is given, not that run's.
    for run in engine.take_interrupted_runs() {
        eprintln!(
            "job {} (run {}) was interrupted with {} VM(s) not done; closing it",
            run.spec.name,
            run.run,
            run.remaining().len()
        );
        engine.abandon(&run)?;
    }
    let run = engine.run_job(&spec);
    tokio::pin!(run);
    // Ctrl-C cancels the job: its VMs stop at their next wait and clean up
    // (detach, remove snapshots and half-written VDIs, destroy delegates)
    // before the command ends.
    let report = tokio::select! {
        biased;
        report = &mut run => report,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted: cancelling the job and cleaning up its delegates and snapshots");
            let _ = engine.cancel(&spec.name, None, "interrupted by the operator (Ctrl-C)");
            run.await
        }
    };
    report.log.lines.iter().for_each(|line| println!("{line}"));
    engine.shutdown().await;
    Ok(matches!(
        report.status,
        engine::joblog::JobStatus::Success | engine::joblog::JobStatus::SuccessWithWarnings
    ))
}

async fn template(action: TemplateAction) -> anyhow::Result<bool> {
    let args = match &action {
        TemplateAction::Deploy { pool }
        | TemplateAction::Redeploy { pool }
        | TemplateAction::Delete { pool } => pool,
    };
    let (engine, name) = abd::real_pool::connect(args).await?;
    let result = match action {
        TemplateAction::Deploy { .. } => {
            engine
                .template_deploy(&name)
                .await
                .map(|(info, outcome)| match outcome {
                    engine::template::TemplateOutcome::Deployed => {
                        format!("deployed on SR {:?}", info.sr_name)
                    }
                    _ => format!("already present on SR {:?}", info.sr_name),
                })
        }
        TemplateAction::Redeploy { .. } => engine
            .template_redeploy(&name)
            .await
            .map(|info| format!("redeployed on SR {:?}", info.sr_name)),
        TemplateAction::Delete { .. } => {
            engine
                .template_delete(&name)
                .await
                .map(|deleted| match deleted {
                    true => "deleted".to_string(),
                    false => "none to delete".to_string(),
                })
        }
    };
    engine.shutdown().await;
    println!("delegate template: {}", result?);
    Ok(true)
}

/// Loads a scenario; an invalid one is reported (file, line, field) with exit code 2.
fn load(path: &std::path::Path) -> Result<Scenario, ExitCode> {
    Scenario::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn print_logs(out: &abd::runner::RunOutput) {
    println!("== engine ==");
    for line in &out.engine_log.lines {
        println!("{line}");
    }
    for job in &out.jobs {
        println!("== job {} (pool {}) ==", job.report.name, job.report.pool);
        for line in &job.report.log.lines {
            println!("{line}");
        }
    }
    println!();
}
