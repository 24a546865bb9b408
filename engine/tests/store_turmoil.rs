//! A delegate agent's store client (`abd_agent::RemoteStore`, as the agent's
//! backup and restore work use it) and the engine's store server
//! (`engine::store_server`) talking HTTP over turmoil's simulated network: a
//! partition shorter than the client's retries is ridden out, a longer one
//! fails the backup cleanly (nothing committed, the store verifies clean, and
//! the next backup sends only what the store still lacks), and a lossy, slow
//! network only slows the work. Every version restores byte-identical over
//! the same network.
//!
//! The agent's work is blocking code on a worker thread; here it runs in
//! lockstep with the simulation: the delegate's task blocks the simulation
//! while the worker computes and carries each request the worker makes over
//! the simulated network, so simulated time passes only on the network and
//! runs are a function of the seed.

use abd_agent::{RemoteStore, StoreLink, Token};
use ads::{ChunkSource, DiskManifest, MemDisk, VersionDraft};
use axum::http::{Request, Response};
use engine::agent::TokenRegistry;
use engine::datastore::DataStore;
use rand::{Rng, SeedableRng};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PORT: u16 = 7480;
const STORE_URL: &str = "http://engine:7480";
/// The disk backed up: 24 MiB of seeded data and 8 MiB of zeros.
const DISK_BYTES: usize = 32 << 20;

mod support {
    pub mod turmoil_http;
}
use support::turmoil_http::{self, Failure};

/// What the worker asks of the simulated network.
enum Ask {
    Send(
        Box<Request<Vec<u8>>>,
        mpsc::Sender<Result<Response<Vec<u8>>, String>>,
    ),
    Pause(Duration, mpsc::Sender<()>),
}

/// The worker's store link: each request waits for the delegate's task to
/// carry it over turmoil's network.
struct LockstepLink {
    asks: Mutex<mpsc::Sender<Ask>>,
}

impl StoreLink for LockstepLink {
    fn url(&self) -> String {
        STORE_URL.into()
    }

    fn send(&self, request: Request<Vec<u8>>) -> Result<Response<Vec<u8>>, String> {
        let (reply, answer) = mpsc::channel();
        self.asks
            .lock()
            .unwrap()
            .send(Ask::Send(Box::new(request), reply))
            .map_err(|_| "the simulation ended".to_string())?;
        answer
            .recv()
            .map_err(|_| "the simulation ended".to_string())?
    }

    fn pause(&self, pause: Duration) {
        let (done, waited) = mpsc::channel();
        if self
            .asks
            .lock()
            .unwrap()
            .send(Ask::Pause(pause, done))
            .is_ok()
        {
            let _ = waited.recv();
        }
    }
}

/// When the network between the delegate and the store breaks: after the
/// delegate's `after_request`-th request, for `lasting`.
#[derive(Clone, Copy)]
struct Cut {
    after_request: usize,
    lasting: Duration,
}

/// What one simulated run saw.
#[derive(Debug)]
struct Outcome<T> {
    result: T,
    /// Requests the delegate's task carried (retries included).
    requests: usize,
    /// Simulated time the work took.
    took: Duration,
}

/// A store in a directory of its own, served with one live delegate token.
struct Served {
    _dir: tempfile::TempDir,
    store: Arc<DataStore>,
    tokens: Arc<TokenRegistry>,
    /// What the delegate presents.
    token: Token,
}

impl Served {
    fn fresh(seed: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DataStore::open_or_init(dir.path(), None, None).unwrap());
        let tokens = Arc::new(TokenRegistry::seeded(seed));
        let token = tokens.issue();
        Self {
            _dir: dir,
            store,
            tokens,
            token,
        }
    }

    /// Runs `work` through the store link, with the network's `fail_rate`
    /// and `cut`.
    fn run<T: Send + 'static>(
        &self,
        seed: u64,
        fail_rate: f64,
        cut: Option<Cut>,
        work: impl FnOnce(RemoteStore) -> T + Send + 'static,
    ) -> Outcome<T> {
        run(seed, fail_rate, cut, self, work)
    }

    fn commit(&self, vm: &str, disk: DiskManifest) -> u64 {
        self.store
            .commit(VersionDraft {
                vm: vm.into(),
                name: vm.into(),
                taken_at: "2026-12-02T00:00:00Z".into(),
                parent_seq: None,
                vm_record: serde_json::json!({ "name_label": vm }),
                disks: vec![disk],
            })
            .unwrap()
            .seq
    }

    fn verifies_clean(&self) {
        let report = self.store.with_store(ads::verify::verify).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// Runs `work` on a worker thread as a delegate's agent would, its store
/// link carried over turmoil to the engine's store server for `served`.
fn run<T: Send + 'static>(
    seed: u64,
    fail_rate: f64,
    cut: Option<Cut>,
    served: &Served,
    work: impl FnOnce(RemoteStore) -> T + Send + 'static,
) -> Outcome<T> {
    let (store, tokens, token) = (
        Arc::clone(&served.store),
        Arc::clone(&served.tokens),
        served.token.clone(),
    );
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(7200))
        .rng_seed(seed)
        .fail_rate(fail_rate)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(if fail_rate > 0.0 { 20 } else { 1 }))
        .build();
    sim.host("engine", move || {
        turmoil_http::serve(
            engine::store_server::router(Arc::clone(&store), Arc::clone(&tokens)),
            PORT,
        )
    });
    let outcome = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&outcome);
    sim.client("delegate", async move {
        let engine = (turmoil::lookup("engine"), PORT);
        let (asks, asked) = mpsc::channel();
        let link = Arc::new(LockstepLink {
            asks: Mutex::new(asks),
        });
        let worker = std::thread::spawn(move || work(RemoteStore::new(link, token)));
        let started = tokio::time::Instant::now();
        let mut requests = 0;
        // Blocks the simulation while the worker computes; ends when the
        // worker is done and its link dropped.
        while let Ok(ask) = asked.recv() {
            match ask {
                Ask::Send(request, reply) => {
                    requests += 1;
                    let answer =
                        turmoil_http::exchange(engine, *request)
                            .await
                            .map_err(|failure| match failure {
                                Failure::Unreachable(why) => why,
                                Failure::Broken(why) => format!("no answer: {why}"),
                            });
                    if let Some(cut) = cut
                        && requests == cut.after_request
                    {
                        turmoil::partition("delegate", "engine");
                        tokio::spawn(async move {
                            tokio::time::sleep(cut.lasting).await;
                            turmoil::repair("delegate", "engine");
                        });
                    }
                    let _ = reply.send(answer);
                }
                Ask::Pause(pause, done) => {
                    tokio::time::sleep(pause).await;
                    let _ = done.send(());
                }
            }
        }
        let result = worker.join().expect("the worker finished");
        *seen.lock().unwrap() = Some(Outcome {
            result,
            requests,
            took: started.elapsed(),
        });
        Ok(())
    });
    sim.run().unwrap();
    let outcome = outcome.lock().unwrap().take();
    outcome.expect("the delegate finished")
}

/// The disk: seeded data, then zeros.
fn disk(seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; DISK_BYTES];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut bytes[..24 << 20]);
    bytes
}

/// What a backup through the store link came back with.
type Backup = Result<(DiskManifest, u64, u64), String>;

/// Backs `disk` up through the store link as the agent does: the store's
/// settings first, then the disk's chunks. Returns the disk's manifest, the
/// bytes the store took and the requests sent again.
fn backup(disk: Vec<u8>) -> impl FnOnce(RemoteStore) -> Backup {
    move |mut remote| {
        let config = remote.config().map_err(|e| e.to_string())?;
        let plan = ads::DiskPlan {
            label: "disk 1".into(),
            chunking: config.chunking,
            compression: config.compression,
            previous: None,
            changed_segments: None,
        };
        let (manifest, _) =
            ads::backup_disk(&plan, &mut MemDisk(disk), &mut remote, &mut |_, _| {})
                .map_err(|e| e.to_string())?;
        Ok((manifest, remote.stats().bytes_received, remote.retries()))
    }
}

/// Reads version `seq` of `vm` back through the store link.
fn restore(vm: &'static str, seq: u64) -> impl FnOnce(RemoteStore) -> Result<Vec<u8>, String> {
    move |remote| {
        let manifest = remote.manifest(vm, seq).map_err(|e| e.to_string())?;
        let mut out = MemDisk::default();
        ads::restore_disk(
            &remote as &dyn ChunkSource,
            &manifest,
            0,
            &mut out,
            &mut |_, _| {},
        )
        .map_err(|e| e.to_string())?;
        Ok(out.0)
    }
}

/// The link cut after the delegate's first chunk upload (its third request).
fn cut_after_upload(lasting: Duration) -> Option<Cut> {
    Some(Cut {
        after_request: 3,
        lasting,
    })
}

#[test]
fn a_short_partition_is_ridden_out_and_the_version_restores_over_the_network() {
    let served = Served::fresh(1);
    let source = disk(1);
    let lasting = Duration::from_secs(12);
    let backed_up = served.run(1, 0.0, cut_after_upload(lasting), backup(source.clone()));
    let (manifest, _, retries) = backed_up
        .result
        .expect("the backup rides out the partition");
    assert!(retries > 0, "requests were sent again");
    assert!(
        backed_up.took >= lasting,
        "it waited the partition out: {:?}",
        backed_up.took
    );
    let seq = served.commit("web-01", manifest);
    served.verifies_clean();
    let restored = served.run(2, 0.0, None, restore("web-01", seq));
    let restored = restored.result.expect("the restore gets through");
    assert!(restored == source, "the version restores byte-identical");
}

#[test]
fn a_long_partition_fails_the_backup_cleanly_and_the_next_one_sends_only_what_is_missing() {
    let served = Served::fresh(2);
    let source = disk(2);
    let lasting = Duration::from_secs(600);
    let failed = served.run(3, 0.0, cut_after_upload(lasting), backup(source.clone()));
    let error = failed.result.expect_err("the backup cannot get through");
    assert!(
        error.contains(STORE_URL) && error.contains("5 attempts"),
        "the error names the store and says it was retried: {error}"
    );
    assert!(
        failed.took < lasting,
        "gives up within its retries: {:?}",
        failed.took
    );
    assert!(
        served.store.latest("web-02").unwrap().is_none(),
        "nothing committed"
    );
    served.verifies_clean();
    // Healed: the next backup finds the chunks the first one sent.
    let healed = served.run(4, 0.0, None, backup(source.clone()));
    let (manifest, sent, _) = healed.result.expect("the backup gets through");
    let (_, full, _) = Served::fresh(2)
        .run(5, 0.0, None, backup(source.clone()))
        .result
        .unwrap();
    assert!(
        sent < full,
        "the chunks stored before the partition are not sent again: {sent} of {full} bytes"
    );
    let seq = served.commit("web-02", manifest);
    served.verifies_clean();
    let restored = served.run(6, 0.0, None, restore("web-02", seq));
    assert!(restored.result.unwrap() == source);
}

#[test]
fn a_lossy_slow_network_only_slows_the_backup_and_runs_are_deterministic() {
    let once = || {
        let outcome = Served::fresh(3).run(7, 0.2, None, backup(disk(3)));
        let (manifest, sent, _) = outcome
            .result
            .expect("the backup gets through a lossy network");
        (manifest.digest, sent, outcome.requests, outcome.took)
    };
    let (first, second) = (once(), once());
    assert_eq!(first, second, "same seed, same run");
    let calm = Served::fresh(3).run(7, 0.0, None, backup(disk(3)));
    assert!(
        first.2 > calm.requests,
        "lost requests were sent again: {} requests, {} on a calm network",
        first.2,
        calm.requests
    );
    assert_eq!(
        first.0,
        calm.result.unwrap().0.digest,
        "the same disk stored"
    );
}

#[test]
fn the_store_refuses_a_delegate_without_a_live_token() {
    let mut served = Served::fresh(4);
    served.token = TokenRegistry::seeded(99).issue();
    let outcome = served.run(8, 0.0, None, backup(disk(4)));
    let error = outcome.result.expect_err("refused");
    assert!(error.contains("401"), "{error}");
    assert_eq!(outcome.requests, 1, "a refusal is not retried");
}
