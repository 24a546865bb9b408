//! The engine's HTTP transport against the simulator's XAPI server on
//! loopback: calls share one kept-alive connection, and a server that never
//! answers is given up on at the call timeout, with an error that says so.

use axum::serve::ListenerExt;
use engine::xapi::{CallError, HttpOptions, HttpTransport, Transport};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xapi_sim::Sim;
use xapi_sim::server::{PoolServer, ServeClock, router};
use xapi_sim::spec::WorldSpec;

/// A served pool, and how many connections its server accepted so far.
async fn serve_counting() -> (String, Arc<AtomicUsize>) {
    let spec: WorldSpec = toml::from_str(
        "[[pool]]\nname = \"p\"\n[[pool.sr]]\nname = \"s\"\nsize_gib = 10\n[[pool.vms]]\nname = \"vm\"\ncount = 3\n",
    )
    .unwrap();
    let sim = Sim::new(&spec, 1).unwrap();
    let pool = sim.pool_id("p").unwrap();
    let server = PoolServer::new(Arc::new(Mutex::new(sim)), pool, ServeClock::new(1000.0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let listener = listener.tap_io(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, router(server)).await });
    (url, accepted)
}

#[tokio::test]
async fn calls_share_one_kept_alive_connection() {
    let (url, accepted) = serve_counting().await;
    let http = HttpTransport::new(&url, &HttpOptions::default()).unwrap();
    let session = http
        .call(
            "session.login_with_password",
            vec![json!("root"), json!("password")],
        )
        .await
        .unwrap();
    for _ in 0..20 {
        let vms = http
            .call("VM.get_all", vec![session.clone()])
            .await
            .unwrap();
        assert!(vms.as_array().is_some_and(|v| v.len() >= 3), "{vms}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "21 calls, one connection"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_given_up_on_at_the_call_timeout() {
    // Accepts connections and reads nothing back: no reply ever comes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let options = HttpOptions {
        call_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let http = HttpTransport::new(&url, &options).unwrap();
    let err = http
        .call(
            "session.login_with_password",
            vec![json!("root"), json!("x")],
        )
        .await
        .unwrap_err();
    // The request went out: it may have taken effect, so it is not a mere
    // "unreachable", and the message says it timed out.
    assert!(matches!(err, CallError::Transport(_)), "{err:?}");
    assert!(err.may_have_taken_effect(), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
}
