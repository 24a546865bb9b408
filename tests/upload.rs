//! `PUT /import_raw_vdi` from the engine's HTTP transport to the served
//! simulator: a whole image lands byte for byte, an expired session is logged
//! into again, and an image that breaks, comes out of order or does not fit
//! is refused with the reason.

use engine::xapi::{CallError, Credentials, HttpOptions, HttpTransport, RawImage, XapiClient};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use xapi_proto::records::{VdiCreate, VdiType};
use xapi_sim::Sim;
use xapi_sim::server::{PoolServer, ServeClock, router};

const MIB: u64 = 1 << 20;

/// A pattern image of `size` bytes written in 1 MiB pieces; `fail_at` makes
/// the writer give up there, `skip_at` leaves a hole there.
fn image(size: u64, fail_at: Option<u64>, skip_at: Option<u64>) -> RawImage {
    RawImage::new(
        size,
        Arc::new(move |target| {
            let mut offset = 0;
            while offset < size {
                if Some(offset) == fail_at {
                    return Err("the store broke".into());
                }
                if Some(offset) == skip_at {
                    offset += MIB;
                    continue;
                }
                let piece: Vec<u8> = (offset..offset + MIB.min(size - offset))
                    .map(|i| (i % 253) as u8)
                    .collect();
                target.write_at(offset, &piece).map_err(|e| e.to_string())?;
                offset += piece.len() as u64;
            }
            Ok(())
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_whole_survive_an_expired_session_and_refuse_broken_images() {
    let spec = toml::from_str(
        "[[pool]]\nname = \"p\"\n[[pool.sr]]\nname = \"s\"\nsize_gib = 10\ndefault = true\n",
    )
    .unwrap();
    let sim = Arc::new(Mutex::new(Sim::new(&spec, 1).unwrap()));
    let pool = sim.lock().unwrap().pool_id("p").unwrap();
    let server = PoolServer::new(Arc::clone(&sim), pool, ServeClock::new(1000.0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(server)).await });

    let transport = Arc::new(HttpTransport::new(&url, &HttpOptions::default()).unwrap());
    let credentials = Credentials {
        user: "root".into(),
        password: "password".into(),
    };
    let client = XapiClient::login(transport, credentials, Duration::from_secs(5))
        .await
        .unwrap();
    let (sr, _) = client
        .sr_get_all_records()
        .await
        .unwrap()
        .into_iter()
        .find(|(_, r)| r.name_label == "s")
        .unwrap();
    let size = 8 * MIB;
    let vdi = client
        .vdi_create(&VdiCreate {
            name_label: "target".into(),
            sr,
            virtual_size: size as i64,
            vdi_type: VdiType::User,
            ..Default::default()
        })
        .await
        .unwrap();
    let uuid = client.vdi_get_record(&vdi).await.unwrap().uuid;
    let read_back = || {
        let mut bytes = vec![0u8; size as usize];
        sim.lock()
            .unwrap()
            .read_vdi(pool, &uuid, 0, &mut bytes)
            .unwrap();
        bytes
    };
    let expected: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();

    // The session is gone (logged out): the upload logs in again and lands.
    client.logout().await.unwrap();
    let before = client.call_count();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let hearing = Arc::clone(&heard);
    let reporting =
        image(size, None, None).reporting(Arc::new(move |sent| hearing.lock().unwrap().push(sent)));
    client.vdi_import_raw(&vdi, &reporting).await.unwrap();
    assert!(read_back() == expected, "the image landed byte for byte");
    let heard = heard.lock().unwrap().clone();
    assert_eq!(
        heard,
        (1..=8).map(|i| i * MIB).collect::<Vec<_>>(),
        "progress is told as each piece goes out"
    );
    assert_eq!(
        client.call_count() - before,
        4,
        "a refused check of the VDI, login, the check again, the upload"
    );

    // A writer that breaks halfway fails the upload, naming why.
    let broken = client
        .vdi_import_raw(&vdi, &image(size, Some(4 * MIB), None))
        .await;
    match broken {
        Err(CallError::Transport(why)) => assert!(why.contains("the store broke"), "{why}"),
        other => panic!("a broken image was taken: {other:?}"),
    }
    // An image written with a hole is never sent as a whole one.
    let holed = client
        .vdi_import_raw(&vdi, &image(size, None, Some(2 * MIB)))
        .await;
    match holed {
        Err(CallError::Transport(why)) => assert!(why.contains("in order"), "{why}"),
        other => panic!("an image with a hole was taken: {other:?}"),
    }
    // An image larger than the VDI is refused before anything is written.
    let snapshot = read_back();
    let too_big = client
        .vdi_import_raw(&vdi, &image(size + MIB, None, None))
        .await;
    match too_big {
        Err(CallError::Transport(why)) => assert!(why.contains("do not fit"), "{why}"),
        other => panic!("an image larger than its VDI was taken: {other:?}"),
    }
    assert!(read_back() == snapshot, "a refused upload writes nothing");

    // Sparse: a VHD of blocks 0 and 2 (2 MiB each) over the full VDI. The
    // blocks left out read as zeros after, and fewer bytes went out.
    let pattern = |i: u64| (i % 253) as u8;
    let sparse_image = |stray: bool| {
        RawImage::new(
            size,
            Arc::new(move |target| {
                assert!(target.zeroed(), "a sparse upload's writer may skip zeros");
                for block in [0, 2] {
                    let start = block * 2 * MIB;
                    let piece: Vec<u8> = (start..start + 2 * MIB).map(pattern).collect();
                    target.write_at(start, &piece).map_err(|e| e.to_string())?;
                }
                if stray {
                    target.write_at(6 * MIB, &[1]).map_err(|e| e.to_string())?;
                }
                Ok(())
            }),
        )
        .sparse(vec![true, false, true, false])
    };
    let sent = Arc::new(Mutex::new(0));
    let counting = Arc::clone(&sent);
    let sparse = sparse_image(false).reporting(Arc::new(move |n| *counting.lock().unwrap() = n));
    assert!(sparse.wire_bytes() < 5 * MIB, "two of four blocks go out");
    client.vdi_import_raw(&vdi, &sparse).await.unwrap();
    assert_eq!(*sent.lock().unwrap(), sparse.wire_bytes());
    let mut expected = vec![0u8; size as usize];
    for block in [0u64, 2] {
        let start = block * 2 * MIB;
        for i in start..start + 2 * MIB {
            expected[i as usize] = pattern(i);
        }
    }
    assert!(
        read_back() == expected,
        "the blocks sent landed, the ones left out read as zeros"
    );
    // Data in a block announced empty is the writer's error, named.
    match client.vdi_import_raw(&vdi, &sparse_image(true)).await {
        Err(CallError::Transport(why)) => assert!(why.contains("announced empty"), "{why}"),
        other => panic!("data outside the announced blocks was taken: {other:?}"),
    }
}
