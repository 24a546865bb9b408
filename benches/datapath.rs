//! The data path's throughput on the simulator's seeded disk content (64 MiB):
//! a memcpy roofline, FastCDC chunking, BLAKE3 hashing, the fused
//! chunk + hash + index step, zstd-1 compression, a whole backup into a
//! fresh store (store writes), a verified restore, and a sparse upload's
//! VHD: written from a half-empty disk, and read back as the simulator's
//! import reads it.

use ads::{
    Access, ChunkId, ChunkingParams, Compression, DiskPlan, MemDisk, Store, StoreConfig,
    VersionDraft,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::collections::HashMap;
use std::hint::black_box;
use xapi_sim::content::{ContentProfile, DiskContent};

const BYTES: usize = 64 << 20;

fn content() -> Vec<u8> {
    let disk = DiskContent {
        seed: 1,
        lineage: 1,
        disk: 1,
        size_bytes: BYTES as u64,
        profile: ContentProfile::default(),
    };
    let mut data = vec![0u8; BYTES];
    disk.read_at(0, 0, &mut data);
    data
}

fn backup_into(dir: &std::path::Path, data: &MemDisk) -> ads::Manifest {
    let mut store = Store::open(dir, Access::Write).unwrap();
    let config = store.config().clone();
    let plan = DiskPlan {
        label: "bench".into(),
        chunking: config.chunking,
        compression: config.compression,
        previous: None,
        changed_segments: None,
    };
    let mut source = data.clone();
    let mut txn = store.begin().unwrap();
    let (disk, _) = ads::backup_disk(&plan, &mut source, &mut txn, &mut |_, _| {}).unwrap();
    txn.commit(VersionDraft {
        vm: "bench".into(),
        name: "bench".into(),
        taken_at: String::new(),
        parent_seq: None,
        vm_record: serde_json::Value::Null,
        disks: vec![disk],
    })
    .unwrap()
    .0
}

fn datapath(c: &mut Criterion) {
    let data = content();
    let params = ChunkingParams::default();
    let segment = params.segment_bytes as usize;
    let mut group = c.benchmark_group("datapath");
    group.throughput(Throughput::Bytes(BYTES as u64));
    group.sample_size(10);

    let mut copy = vec![0u8; BYTES];
    group.bench_function("memcpy_roofline", |b| {
        b.iter(|| copy.copy_from_slice(black_box(&data)))
    });
    group.bench_function("chunking_fastcdc", |b| {
        b.iter(|| {
            data.chunks(segment)
                .map(|s| fastcdc::v2020::FastCDC::new(s, 16 << 10, 64 << 10, 256 << 10).count())
                .sum::<usize>()
        })
    });
    group.bench_function("hashing_blake3_64k", |b| {
        b.iter(|| {
            data.chunks(64 << 10)
                .map(ChunkId::of)
                .fold(0u8, |a, id| a ^ id.0[0])
        })
    });
    group.bench_function("fused_chunk_hash_index", |b| {
        b.iter(|| {
            let mut index: HashMap<ChunkId, u32> = HashMap::new();
            for s in data.chunks(segment) {
                for span in ads::chunking::chunk_segment(&params, s) {
                    index.entry(span.id).or_insert(span.len);
                }
            }
            index.len()
        })
    });
    group.bench_function("compress_zstd1_64k", |b| {
        let zstd = Compression::Zstd { level: 1 };
        b.iter(|| {
            data.chunks(64 << 10)
                .map(|c| zstd.encode(c).1.len())
                .sum::<usize>()
        })
    });

    let disk = MemDisk(data.clone());
    group.bench_function("store_write_backup", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                Store::init(dir.path(), StoreConfig::default()).unwrap();
                dir
            },
            |dir| backup_into(dir.path(), &disk),
            BatchSize::PerIteration,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    Store::init(dir.path(), StoreConfig::default()).unwrap();
    let manifest = backup_into(dir.path(), &disk);
    let store = Store::open(dir.path(), Access::Read).unwrap();
    group.bench_function("restore_verified", |b| {
        b.iter(|| {
            let mut target = MemDisk(Vec::with_capacity(BYTES));
            ads::restore_disk(&store, &manifest, 0, &mut target, &mut |_, _| {}).unwrap();
            target.0.len()
        })
    });
    // A sparse upload: the back half of the disk never written.
    let mut half = data.clone();
    half[BYTES / 2..].fill(0);
    let block = xapi_proto::vhd::BLOCK_BYTES as usize;
    let allocated: Vec<bool> = half
        .chunks(block)
        .map(|b| b.iter().any(|x| *x != 0))
        .collect();
    let encode = |sink: &mut dyn FnMut(Vec<u8>)| {
        use ads::DiskTarget;
        let send = |piece: Vec<u8>| {
            sink(piece);
            Ok(())
        };
        let mut vhd = engine::xapi::vhd_stream::VhdStream::start(
            BYTES as u64,
            allocated.clone(),
            "bench",
            send,
        )
        .unwrap();
        for (i, b) in half.chunks(block).enumerate() {
            if allocated[i] {
                vhd.write_at((i * block) as u64, b).unwrap();
            }
        }
        vhd.finish().unwrap();
    };
    group.bench_function("vhd_encode_half_sparse", |b| {
        b.iter(|| {
            let mut sent = 0;
            encode(&mut |piece| sent += piece.len());
            sent
        })
    });
    let mut wire = Vec::new();
    encode(&mut |piece| wire.extend(piece));
    group.bench_function("vhd_receive_half_sparse", |b| {
        b.iter(|| {
            let mut receiver = xapi_proto::vhd::VhdReceiver::new(BYTES as u64);
            let mut landed = 0;
            for piece in wire.chunks(1 << 20) {
                receiver
                    .feed(piece, &mut |_, data| {
                        landed += data.len();
                        Ok(())
                    })
                    .unwrap();
            }
            receiver.finish().unwrap();
            landed
        })
    });
    group.finish();
}

criterion_group!(benches, datapath);
criterion_main!(benches);
