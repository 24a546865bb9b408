//! The engine and a delegate agent over real HTTP on loopback, as against a
//! real pool: the agent (`abd_agent::router` over block devices that are image
//! files) backs a disk up into the engine's data store (served by
//! `store_server`), the engine commits the version, and another agent restores
//! it byte for byte. Tokens are checked at both ends.

use abd_agent::{Agent, AgentConfig, BlockDevices, Execution, HttpStoreLink, StoreLink, Token};
use engine::agent::{
    AgentClient, AgentError, DiskProgress, HttpAgentLink, RestoreSource, StoreTarget, TokenRegistry,
};
use engine::datastore::DataStore;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// The delegate is always running here (only asked when its agent cannot be reached).
fn running() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'static>> {
    Box::pin(async { true })
}

/// Serves `router` on an ephemeral loopback port.
async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A disk image with zeros, repeats and noise: 24 MiB.
fn write_image(path: &Path) -> Vec<u8> {
    let mut data = vec![0u8; 24 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
        match i % 3 {
            0 => {}
            1 => chunk.fill(i as u8),
            _ => chunk.iter_mut().for_each(|b| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }),
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

/// An agent serving the block devices in `dir`, reaching the store at `store_url`.
async fn start_agent(dir: &Path, token: Token, store_url: &str, vm_uuid: &str) -> SocketAddr {
    let store: Arc<dyn StoreLink> =
        Arc::new(HttpStoreLink::new(store_url, tokio::runtime::Handle::current()).unwrap());
    let agent = Agent::new(AgentConfig {
        vm_uuid: vm_uuid.into(),
        token,
        devices: Arc::new(BlockDevices::new(dir)),
        store: Some(store),
        execution: Execution::Worker,
    });
    serve(abd_agent::router(agent)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_through_agents_over_http() {
    let work = tempfile::tempdir().unwrap();
    let store = Arc::new(DataStore::open_or_init(&work.path().join("ads"), None, None).unwrap());
    let tokens = Arc::new(TokenRegistry::from_entropy());
    let store_addr = serve(engine::store_server::router(
        Arc::clone(&store),
        Arc::clone(&tokens),
    ))
    .await;
    let store_url = format!("http://{store_addr}");

    // The source delegate: disk 1 is xvdb.
    let source_dir = work.path().join("source");
    std::fs::create_dir(&source_dir).unwrap();
    let original = write_image(&source_dir.join("xvdb"));
    let token = tokens.issue();
    let addr = start_agent(&source_dir, token.clone(), &store_url, "vm-source").await;
    let client = AgentClient::new(
        Arc::new(HttpAgentLink::new(addr.port()).unwrap()),
        Arc::clone(&tokens),
    );

    // Identity needs the delegate's own token.
    assert_eq!(
        client.identity(LOOPBACK, &token).await.unwrap(),
        "vm-source"
    );
    let stranger = Token::from_bytes([7; 32]);
    assert_eq!(
        client.identity(LOOPBACK, &stranger).await,
        Err(AgentError::Foreign { ip: LOOPBACK }),
        "a wrong token is refused: whoever answers is not this delegate"
    );

    // Backup into the store, with progress, then the engine commits.
    let seen = Mutex::new(Vec::new());
    let on_progress = |p: DiskProgress| seen.lock().unwrap().push(p.percent);
    let target = StoreTarget {
        vm_id: "web-01",
        previous: None,
        changed_blocks: vec![None],
    };
    let report = client
        .read_disks(LOOPBACK, &token, 1, Some(target), &on_progress, &running)
        .await
        .unwrap();
    assert_eq!(report.bytes_read, original.len() as u64);
    assert_eq!(report.written.len(), 1);
    assert!(report.stored.chunks_new > 0);
    assert_eq!(*seen.lock().unwrap(), vec![25, 50, 75, 100]);
    let manifest = store
        .commit(ads::VersionDraft {
            vm: "web-01".into(),
            name: "web-01".into(),
            taken_at: "test".into(),
            parent_seq: None,
            vm_record: serde_json::json!({}),
            disks: report.written.iter().map(|d| d.manifest.clone()).collect(),
        })
        .unwrap();

    // A second backup sends nothing new: the store has every chunk.
    let target = StoreTarget {
        vm_id: "web-01",
        previous: Some(&manifest),
        changed_blocks: vec![None],
    };
    let again = client
        .read_disks(LOOPBACK, &token, 1, Some(target), &|_| {}, &running)
        .await
        .unwrap();
    assert_eq!(again.stored.chunks_new, 0);
    assert_eq!(again.written[0].read.bytes_sent, 0);

    // Restore onto another delegate's blank disk.
    let target_dir = work.path().join("target");
    std::fs::create_dir(&target_dir).unwrap();
    std::fs::write(target_dir.join("xvdb"), vec![0xffu8; original.len()]).unwrap();
    let restorer_token = tokens.issue();
    let addr = start_agent(&target_dir, restorer_token.clone(), &store_url, "vm-target").await;
    let restorer = AgentClient::new(
        Arc::new(HttpAgentLink::new(addr.port()).unwrap()),
        Arc::clone(&tokens),
    );
    let written = restorer
        .write_disks(
            LOOPBACK,
            &restorer_token,
            RestoreSource {
                manifest: &manifest,
                base: None,
            },
            &|_| {},
            &running,
        )
        .await
        .unwrap();
    assert_eq!(written.bytes_read, original.len() as u64);
    assert!(std::fs::read(target_dir.join("xvdb")).unwrap() == original);

    // Once the delegate's token is revoked, the store refuses its agent.
    tokens.revoke(&token);
    let target = StoreTarget {
        vm_id: "web-01",
        previous: None,
        changed_blocks: vec![None],
    };
    let refused = client
        .read_disks(LOOPBACK, &token, 1, Some(target), &|_| {}, &running)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("unknown delegate token"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_refuses_bad_input_and_keeps_its_data() {
    use abd_agent::protocol::{self, paths};
    let work = tempfile::tempdir().unwrap();
    let store = Arc::new(DataStore::open_or_init(&work.path().join("ads"), None, None).unwrap());
    let tokens = Arc::new(TokenRegistry::from_entropy());
    let token = tokens.issue();
    let addr = serve(engine::store_server::router(
        Arc::clone(&store),
        Arc::clone(&tokens),
    ))
    .await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Vec<u8>, auth: Option<String>| {
        let mut request = http.post(format!("http://{addr}{path}")).body(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    // No token, and a token never issued.
    let reply = post(paths::STORE_MISSING, Vec::new(), None).await.unwrap();
    assert_eq!(reply.status(), 401);
    let reply = post(
        paths::STORE_MISSING,
        Vec::new(),
        Some(Token::from_bytes([1; 32]).bearer()),
    )
    .await
    .unwrap();
    assert_eq!(reply.status(), 401);
    // A blob whose content does not match its address is refused, whole batch.
    let good = b"good chunk".to_vec();
    let blobs = vec![
        ads::Blob {
            id: ads::ChunkId::of(&good),
            raw_len: good.len() as u32,
            codec: ads::codec::BlobCodec::Raw,
            data: good.clone(),
        },
        ads::Blob {
            id: ads::ChunkId::of(b"something else"),
            raw_len: 4,
            codec: ads::codec::BlobCodec::Raw,
            data: b"evil".to_vec(),
        },
    ];
    let reply = post(
        paths::STORE_CHUNKS,
        protocol::encode_blobs(&blobs),
        Some(token.bearer()),
    )
    .await
    .unwrap();
    assert_eq!(reply.status(), 400);
    assert!(
        reply
            .text()
            .await
            .unwrap()
            .contains("does not match its address")
    );
    assert_eq!(store.missing(&[ads::ChunkId::of(&good)]), vec![true]);
    // A truncated frame and a ragged id list are named.
    let reply = post(paths::STORE_CHUNKS, vec![1, 2, 3], Some(token.bearer()))
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    assert!(reply.text().await.unwrap().contains("truncated"));
    let reply = post(paths::STORE_MISSING, vec![0; 31], Some(token.bearer()))
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    // The good blob alone is taken.
    let reply = post(
        paths::STORE_CHUNKS,
        protocol::encode_blobs(&blobs[..1]),
        Some(token.bearer()),
    )
    .await
    .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(store.missing(&[ads::ChunkId::of(&good)]), vec![false]);
    // An unknown version is a 404 naming it.
    let reply = http
        .post(format!("http://{addr}{}", paths::STORE_MANIFEST))
        .header("authorization", token.bearer())
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&protocol::ManifestRequest {
                vm: "nobody".into(),
                seq: 3,
            })
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 404);
    assert!(reply.text().await.unwrap().contains("nobody"));
}
