//! The simulator's HTTP front: envelopes, content types and status codes as
//! XAPI has them, and clean refusals of bad bodies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xapi_sim::Sim;
use xapi_sim::server::{MAX_BODY_BYTES, PoolServer, ServeClock, router};
use xapi_sim::spec::WorldSpec;

async fn serve() -> std::net::SocketAddr {
    serve_world("", 1000.0).await
}

/// A pool `p` with an SR, and `more` (TOML), served at `speed`.
async fn serve_world(more: &str, speed: f64) -> std::net::SocketAddr {
    let text = format!("[[pool]]\nname = \"p\"\n[[pool.sr]]\nname = \"s\"\nsize_gib = 10\n{more}");
    let spec: WorldSpec = toml::from_str(&text).unwrap();
    let sim = Sim::new(&spec, 1).unwrap();
    let pool = sim.pool_id("p").unwrap();
    let server = PoolServer::new(Arc::new(Mutex::new(sim)), pool, ServeClock::new(speed));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(server)).await });
    addr
}

/// Sends one POST and returns (status, content-type, body).
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (status, content_type, body.to_string())
}

const LOGIN: &str = "<methodCall><methodName>session.login_with_password</methodName><params><param><value>root</value></param><param><value>password</value></param></params></methodCall>";

#[tokio::test]
async fn xml_rpc_on_every_path_json_rpc_on_jsonrpc() {
    let addr = serve().await;
    for path in ["/", "/RPC2", "/xmlrpc"] {
        let (status, content_type, body) = post(addr, path, LOGIN).await;
        assert_eq!((status, content_type.as_str()), (200, "text/xml"), "{path}");
        assert!(
            body.contains("<name>Status</name><value>Success</value>"),
            "{body}"
        );
    }
    let (status, content_type, body) = post(
        addr,
        "/jsonrpc",
        r#"{"jsonrpc":"2.0","method":"session.login_with_password","params":["root","x"],"id":3}"#,
    )
    .await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["message"], "SESSION_AUTHENTICATION_FAILED");
    assert_eq!(v["id"], 3);
}

#[tokio::test]
async fn bad_bodies_get_a_clean_error() {
    let addr = serve().await;
    let (status, _, body) = post(addr, "/", "<methodCall><oops").await;
    assert_eq!(status, 500);
    assert!(body.contains("malformed"), "{body}");
    let bomb =
        "<!DOCTYPE x [<!ENTITY a \"aaaa\">]><methodCall><methodName>&a;</methodName></methodCall>";
    let (status, _, body) = post(addr, "/", bomb).await;
    assert_eq!(status, 500);
    assert!(body.contains("DTD"), "{body}");
    let (status, _, _) = post(addr, "/jsonrpc", "{\"method\":").await;
    assert_eq!(status, 500);
    let huge = "x".repeat(MAX_BODY_BYTES + 1);
    let (status, _, _) = post(addr, "/", &huge).await;
    assert_eq!(status, 413);
    // The server is still there.
    assert_eq!(post(addr, "/", LOGIN).await.0, 200);
}

/// Sends one request with a binary body; returns (status, body bytes).
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&reply[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, reply[split + 4..].to_vec())
}

#[tokio::test]
async fn raw_vdi_export_serves_the_disk_bytes_and_import_writes_them() {
    let spec: WorldSpec = toml::from_str(
        "[[pool]]\nname = \"p\"\n[[pool.sr]]\nname = \"s\"\nsize_gib = 10\n[[pool.vms]]\nname = \"vm\"\ndisks_mib = [6]\nrunning = false\n",
    )
    .unwrap();
    let sim = Arc::new(Mutex::new(Sim::new(&spec, 1).unwrap()));
    let pool = sim.lock().unwrap().pool_id("p").unwrap();
    let server = PoolServer::new(Arc::clone(&sim), pool, ServeClock::new(1000.0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(server)).await });
    let rpc = |method: &str, params: serde_json::Value| {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
                .to_string();
        async move {
            let (_, _, reply) = post(addr, "/jsonrpc", &body).await;
            serde_json::from_str::<serde_json::Value>(&reply).unwrap()["result"].clone()
        }
    };
    let session = rpc(
        "session.login_with_password",
        serde_json::json!(["root", "password"]),
    )
    .await;
    let session = session.as_str().unwrap().to_string();
    let vdis = rpc("VDI.get_all_records", serde_json::json!([session])).await;
    let (vdi_ref, vdi) = vdis.as_object().unwrap().iter().next().unwrap();
    let uuid = vdi["uuid"].as_str().unwrap();

    let (status, bytes) = request(
        addr,
        "GET",
        &format!("/export_raw_vdi?vdi={uuid}&format=raw&session_id={session}"),
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let mut expected = vec![0u8; 6 << 20];
    sim.lock()
        .unwrap()
        .read_vdi(pool, uuid, 0, &mut expected)
        .unwrap();
    assert!(bytes == expected, "exported {} bytes", bytes.len());
    let (status, _) = request(
        addr,
        "GET",
        &format!("/export_raw_vdi/?vdi={vdi_ref}&session_id=OpaqueRef:bad"),
        b"",
    )
    .await;
    assert_eq!(status, 401);
    // As a dynamic VHD: the same disk, zero blocks left out.
    let (status, vhd) = request(
        addr,
        "GET",
        &format!("/export_raw_vdi?vdi={uuid}&format=vhd&session_id={session}"),
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let (disk_type, blocks) = parse_vhd(&vhd);
    assert_eq!(disk_type, 3, "dynamic");
    assert!(reassemble(&blocks, &vec![0u8; expected.len()]) == expected);
    // A snapshot now is the base of a differencing export later.
    let vm = rpc("VM.get_by_name_label", serde_json::json!([session, "vm"])).await[0].clone();
    let snap = rpc("VM.snapshot", serde_json::json!([session, vm, "base"])).await;
    let snap_vbds = rpc("VM.get_VBDs", serde_json::json!([session, snap])).await;
    let base = rpc("VBD.get_VDI", serde_json::json!([session, snap_vbds[0]])).await;
    let base = base.as_str().unwrap().to_string();
    let (status, _) = request(
        addr,
        "GET",
        &format!("/export_raw_vdi?vdi={uuid}&format=raw&base={base}&session_id={session}"),
        b"",
    )
    .await;
    assert_eq!(status, 400, "a differencing export needs format=vhd");

    let image: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (status, _) = request(
        addr,
        "PUT",
        &format!("/import_raw_vdi?vdi={uuid}&format=raw&session_id={session}"),
        &image,
    )
    .await;
    assert_eq!(status, 200);
    let (_, bytes) = request(
        addr,
        "GET",
        &format!("/export_raw_vdi?vdi={uuid}&session_id={session}"),
        b"",
    )
    .await;
    assert!(bytes[..image.len()] == image[..] && bytes[image.len()..] == expected[image.len()..]);
    // Relative to the snapshot taken before the import: only block 0 changed.
    let (status, delta) = request(
        addr,
        "GET",
        &format!("/export_raw_vdi?vdi={uuid}&format=vhd&base={base}&session_id={session}"),
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let (disk_type, blocks) = parse_vhd(&delta);
    assert_eq!(disk_type, 4, "differencing");
    assert_eq!(blocks.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0]);
    assert!(reassemble(&blocks, &expected) == bytes);
    let too_big = vec![1u8; (6 << 20) + 1];
    let (status, _) = request(
        addr,
        "PUT",
        &format!("/import_raw_vdi?vdi={uuid}&session_id={session}"),
        &too_big,
    )
    .await;
    assert_eq!(status, 400);
}

/// Reads a VHD the way a consumer would: footer, dynamic header, allocation
/// table; returns the disk type and the allocated blocks (index, data).
fn parse_vhd(vhd: &[u8]) -> (u32, Vec<(usize, Vec<u8>)>) {
    let be32 = |b: &[u8]| u32::from_be_bytes(b[..4].try_into().unwrap());
    let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().unwrap());
    let footer = &vhd[vhd.len() - 512..];
    assert_eq!(&footer[..8], b"conectix");
    assert_eq!(footer, &vhd[..512], "the footer is copied at the start");
    let checksum = !footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |s, (_, b)| s.wrapping_add(*b as u32));
    assert_eq!(be32(&footer[64..]), checksum, "footer checksum");
    let header = &vhd[be64(&footer[16..]) as usize..];
    assert_eq!(&header[..8], b"cxsparse");
    let (bat_at, entries, block) = (
        be64(&header[16..]) as usize,
        be32(&header[28..]) as usize,
        be32(&header[32..]) as usize,
    );
    let blocks = (0..entries)
        .filter_map(|i| {
            let sector = be32(&vhd[bat_at + 4 * i..]);
            (sector != u32::MAX).then(|| {
                let start = sector as usize * 512 + 512;
                (i, vhd[start..start + block].to_vec())
            })
        })
        .collect();
    (be32(&footer[60..]), blocks)
}

/// The disk a VHD describes, over `under` (zeros, or the base's bytes).
fn reassemble(blocks: &[(usize, Vec<u8>)], under: &[u8]) -> Vec<u8> {
    let mut disk = under.to_vec();
    for (i, data) in blocks {
        let start = i * data.len();
        let end = (start + data.len()).min(disk.len());
        disk[start..end].copy_from_slice(&data[..end - start]);
    }
    disk
}

/// Serves every host of the one-pool world `faults` adds to (two hosts) on
/// loopback, on a clock the test sets (`time_ms`): the endpoints' addresses,
/// master first.
async fn serve_hosts(faults: &str) -> (Vec<std::net::SocketAddr>, Arc<AtomicU64>) {
    let spec: WorldSpec = toml::from_str(&format!(
        r#"
[[pool]]
name = "lab"
hosts = 2
[[pool.sr]]
name = "nfs"
size_gib = 10
default = true
{faults}
"#
    ))
    .unwrap();
    let sim = Sim::new(&spec, 1).unwrap();
    let pool = sim.pool_id("lab").unwrap();
    let time_ms = Arc::new(AtomicU64::new(0));
    let server = PoolServer::new(
        Arc::new(Mutex::new(sim)),
        pool,
        ServeClock::External(Arc::clone(&time_ms)),
    );
    let endpoints = xapi_sim::endpoints::bind_pool(server, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addrs = endpoints
        .iter()
        .map(|e| e.url["http://".len()..].parse().unwrap())
        .collect();
    for endpoint in endpoints {
        tokio::spawn(endpoint.serve());
    }
    (addrs, time_ms)
}

/// True when nothing listens at `addr`.
async fn refused(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::net::TcpStream::connect(addr).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Waits (the endpoint looks every 100 ms) until `addr` is `refusing` or not.
async fn until_refusing(addr: std::net::SocketAddr, refusing: bool, what: &str) {
    let mut looks = 0;
    while refused(addr).await != refusing {
        looks += 1;
        assert!(looks < 200, "{what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A served member host that crashes stops listening: clients are refused as
/// by a dead host, until it is back.
#[tokio::test]
async fn a_crashed_hosts_endpoint_refuses_connections_until_the_host_is_back() {
    let crash = r#"
[[fault]]
kind = "host_crash"
pool = "lab"
host = "lab-host-2"
from_s = 10
until_s = 20
"#;
    let (addrs, time_ms) = serve_hosts(crash).await;
    let member = addrs[1];
    // Up: it answers (as a member, HOST_IS_SLAVE).
    let (status, _, body) = post(member, "/", LOGIN).await;
    assert_eq!(status, 200);
    assert!(body.contains("HOST_IS_SLAVE"), "{body}");
    time_ms.store(15_000, Ordering::SeqCst);
    until_refusing(member, true, "the crashed host's endpoint still listens").await;
    time_ms.store(25_000, Ordering::SeqCst);
    let back = "the host is back but its endpoint does not listen";
    until_refusing(member, false, back).await;
    let (status, _, body) = post(member, "/", LOGIN).await;
    assert_eq!(status, 200);
    assert!(body.contains("HOST_IS_SLAVE"), "{body}");
}

/// While `xapi_unreachable` holds, the served master refuses connections
/// (its toolstack is down) and its members still answer; it listens again
/// once the fault ends.
#[tokio::test]
async fn an_unreachable_masters_endpoint_refuses_connections_until_the_fault_ends() {
    let outage = r#"
[[fault]]
kind = "xapi_unreachable"
pool = "lab"
from_s = 10
until_s = 20
"#;
    let (addrs, time_ms) = serve_hosts(outage).await;
    let (master, member) = (addrs[0], addrs[1]);
    let (status, _, body) = post(master, "/", LOGIN).await;
    assert_eq!(status, 200);
    assert!(body.contains("OpaqueRef:"), "{body}");
    time_ms.store(15_000, Ordering::SeqCst);
    until_refusing(master, true, "the unreachable master still listens").await;
    let (_, _, body) = post(member, "/", LOGIN).await;
    assert!(body.contains("HOST_IS_SLAVE"), "{body}");
    time_ms.store(25_000, Ordering::SeqCst);
    until_refusing(
        master,
        false,
        "the fault ended but the master does not listen",
    )
    .await;
    let (status, _, body) = post(master, "/", LOGIN).await;
    assert_eq!(status, 200);
    assert!(body.contains("OpaqueRef:"), "{body}");
}

/// An `xapi_unreachable` fault with a count refuses that many connections,
/// each reset before a request is read, and then lets connections through.
#[tokio::test]
async fn a_counted_unreachable_fault_resets_that_many_connections() {
    let twice = r#"
[[fault]]
kind = "xapi_unreachable"
pool = "lab"
from_s = 0
count = 2
"#;
    let (addrs, _) = serve_hosts(twice).await;
    let master = addrs[0];
    for attempt in 1..=2 {
        let mut stream = tokio::net::TcpStream::connect(master).await.unwrap();
        let _ = stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut reply = Vec::new();
        let read = stream.read_to_end(&mut reply).await;
        assert!(
            read.is_err() || reply.is_empty(),
            "connection {attempt} was answered: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    let (status, _, body) = post(master, "/", LOGIN).await;
    assert_eq!(status, 200);
    assert!(body.contains("OpaqueRef:"), "{body}");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stops_arriving_is_answered_not_waited_for() {
    use xapi_sim::server::BODY_IDLE_TIMEOUT;
    let addr = serve().await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Promises 1000 bytes, sends 10, then nothing (the connection stays open).
    let head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n<methodCal";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut reply = Vec::new();
    let answer = async {
        let mut buf = [0u8; 4096];
        while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(BODY_IDLE_TIMEOUT * 10, answer)
        .await
        .expect("the server waits for the rest of the body for good");
    let waited = started.elapsed();
    let head = String::from_utf8_lossy(&reply).to_string();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!((400..500).contains(&status), "{head}");
    assert!(
        waited >= BODY_IDLE_TIMEOUT && waited < BODY_IDLE_TIMEOUT * 2,
        "answered after {waited:?}"
    );
    // The server goes on answering.
    assert_eq!(post(addr, "/", LOGIN).await.0, 200);
}

/// A pool with a VM `vm`, served in real time (paused here), with `faults`
/// (TOML `[[fault]]` entries).
async fn serve_with_faults(faults: &str) -> std::net::SocketAddr {
    serve_world(&format!("[[pool.vms]]\nname = \"vm\"\n{faults}"), 1.0).await
}

/// The value of an XML-RPC reply (`<value>...</value>` inside `Value`).
fn xml_value(body: &str) -> String {
    let after = body.split("<name>Value</name>").nth(1).unwrap_or_default();
    let inner = after.split("<value>").nth(1).unwrap_or_default();
    inner
        .split("</value>")
        .next()
        .unwrap_or_default()
        .to_string()
}

fn xml_call(method: &str, params: &[&str]) -> String {
    let params: String = params
        .iter()
        .map(|p| format!("<param><value>{p}</value></param>"))
        .collect();
    format!("<methodCall><methodName>{method}</methodName><params>{params}</params></methodCall>")
}

/// A session on the served pool, and its VM `vm`.
async fn session_and_vm(addr: std::net::SocketAddr) -> (String, String) {
    let session = xml_value(&post(addr, "/", LOGIN).await.2);
    let call = xml_call("VM.get_by_name_label", &[&session, "vm"]);
    let vms = post(addr, "/", &call).await.2;
    let start = vms.find("OpaqueRef:").expect("a VM ref");
    let vm = vms[start..].split('<').next().unwrap().to_string();
    (session, vm)
}

#[tokio::test(start_paused = true)]
async fn served_in_real_time_a_lost_reply_never_comes_but_the_call_took_effect() {
    let addr = serve_with_faults(
        "[[fault]]\nkind = \"reply_lost\"\npool = \"p\"\nmethod = \"VM.set_name_label\"\nrate = 1.0\n",
    )
    .await;
    let (session, vm) = session_and_vm(addr).await;
    let rename = xml_call("VM.set_name_label", &[&session, &vm, "renamed"]);
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(600),
        post(addr, "/", &rename),
    )
    .await;
    assert!(waited.is_err(), "a reply came: {waited:?}");
    // Yet the VM was renamed.
    let name = post(addr, "/", &xml_call("VM.get_name_label", &[&session, &vm]))
        .await
        .2;
    assert_eq!(xml_value(&name), "renamed", "{name}");
}

#[tokio::test(start_paused = true)]
async fn served_in_real_time_a_partition_loses_requests_until_it_heals() {
    // From 10 to 120 s every request to the master is lost: a call sent then
    // gets no answer and does nothing.
    let addr = serve_with_faults(
        "[[fault]]\nkind = \"network\"\npool = \"p\"\nlink = \"engine_master\"\nrate = 1.0\nfrom_s = 10\nuntil_s = 120\n",
    )
    .await;
    let (session, vm) = session_and_vm(addr).await;
    tokio::time::sleep(std::time::Duration::from_secs(20)).await;
    let rename = xml_call("VM.set_name_label", &[&session, &vm, "renamed"]);
    let lost =
        tokio::time::timeout(std::time::Duration::from_secs(60), post(addr, "/", &rename)).await;
    assert!(lost.is_err(), "an answer crossed the partition: {lost:?}");
    // Healed: calls are answered again, and the lost one never happened.
    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    let name = post(addr, "/", &xml_call("VM.get_name_label", &[&session, &vm]))
        .await
        .2;
    assert_eq!(xml_value(&name), "vm", "{name}");
}
