//! Durable placement throughput: solve and commit through the store.
//!
//! `cargo bench -p meridian-regional --bench durable_placement` registers
//! 10,000 nodes and 100,000 pending tasks (10,000 jobs of 10) in a SQLite
//! file, takes the lease of the region's only shard, and times one placement
//! round of the shard leader's own code: read the region, build the
//! snapshot, `solve`, and commit every binding in batches (each batch one
//! transaction checking the shard fence, the layout generation and every
//! node's version). The full run rewrites `docs/bench/placement-durable.md`
//! (its own file: the pure solver's bench owns `placement.md`); `--quick`
//! runs a tenth of the size and only prints. `BATCH=N` overrides the batch
//! size (default: the shard leader's).

use std::time::{Duration, Instant};

use meridian_control::SystemClock;
use meridian_control::lease::{Acquired, Identity, Lease};
use meridian_proto::v1;
use meridian_regional::agent::nodes;
use meridian_regional::jobs::{apply_assign, simple_spec};
use meridian_regional::model::{Keys, RegionView};
use meridian_regional::placement::{SolverConfig, solve};
use meridian_regional::placer::PlacerConfig;
use meridian_regional::placer::commit::commit_batch;
use meridian_regional::placer::round::{batches, build_input};
use meridian_regional::shard::ensure_layout;

const DOC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/bench/placement-durable.md"
);
const COMMAND: &str = "cargo bench -p meridian-regional --bench durable_placement";
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const TARGET: f64 = 50_000.0;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick =
        std::env::args().any(|a| a == "--quick") || std::env::var("PLACEMENT_BENCH_QUICK").is_ok();
    let (n_nodes, n_jobs, per_job) = if quick {
        (1_000, 1_000, 10)
    } else {
        (10_000, 10_000, 10)
    };
    let batch_size: usize = std::env::var("BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(PlacerConfig::default().batch_size);
    // Probed before the work, so the load average is the one it ran under.
    let provenance = meridian_bench_report::provenance(
        COMMAND,
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    let dir = std::env::temp_dir().join(format!("meridian-durable-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite:{}", dir.join("region.db").display());
    let db = meridian_store::open(&url).await.expect("open");
    let keys = Keys::new("bench");
    ensure_layout(&db, &keys, 1).await.expect("layout");

    let setup = Instant::now();
    for i in 0..n_nodes {
        let zone = i % 4;
        let rack = i % 100;
        let req = v1::RegisterNodeRequest {
            node_id: format!("node-{i:05}"),
            boot_id: "boot".into(),
            allocatable: Some(v1::Resources {
                cpu_millis: 32_000,
                memory_bytes: 128 * GIB,
                gpu_count: 0,
                gpu_type: String::new(),
            }),
            zone: format!("zone-{zone}"),
            rack: format!("rack-{rack}"),
            ..Default::default()
        };
        nodes::register(&db, &keys, &req, now_ms())
            .await
            .expect("register");
    }
    let shapes = [
        (250, 512 * MIB),
        (1_000, 2 * GIB),
        (4_000, 8 * GIB),
        (500, GIB),
    ];
    for chunk in (0..n_jobs).collect::<Vec<_>>().chunks(500) {
        db.run(|tx, _| {
            let keys = keys.clone();
            let chunk = chunk.to_vec();
            async move {
                for j in chunk {
                    let (cpu, mem) = shapes[j % shapes.len()];
                    let mut spec = simple_spec(&format!("tenant-{}", j % 20), per_job, cpu, mem);
                    if j % 5 < 2 {
                        spec.placement = v1::PlacementPolicy::Pack as i32;
                    }
                    apply_assign(&tx, &keys, &format!("job-{j:06}"), 1, "", &spec, 0).await?;
                }
                Ok::<_, meridian_regional::RegionalError>(())
            }
        })
        .await
        .expect("insert jobs");
    }
    let setup = setup.elapsed();

    let lease = Lease::new(
        db.clone(),
        keys.shard_lease(0),
        Identity::new_boot("bench"),
        SystemClock::shared(),
        Duration::from_secs(600),
        Duration::from_secs(1),
    );
    let Acquired::Held(held) = lease.try_acquire().await.expect("acquire") else {
        panic!("lease busy");
    };

    let t0 = Instant::now();
    let view = db
        .run(|tx, _| {
            let keys = keys.clone();
            async move { RegionView::read(&tx, &keys).await }
        })
        .await
        .expect("view");
    let t_read = t0.elapsed();
    let jobs = view.pending.keys().cloned().collect();
    let input = build_input(&view, 0, &jobs, now_ms());
    let t_build = t0.elapsed() - t_read;
    let t1 = Instant::now();
    let solution = solve(&input.snapshot, &input.pending, &SolverConfig::default());
    let t_solve = t1.elapsed();
    let t2 = Instant::now();
    let mut bound = 0usize;
    let mut stale = 0usize;
    let plan = batches(&input, &solution, batch_size);
    let n_batches = plan.len();
    for batch in plan {
        let out = commit_batch(
            &db,
            &keys,
            &held.fence,
            0,
            input.generation,
            &batch.bindings,
            &batch.stops,
            now_ms(),
        )
        .await
        .expect("commit");
        bound += out.bound.len();
        stale += out.stale.len();
    }
    let t_commit = t2.elapsed();
    let total = t0.elapsed();
    let rate = bound as f64 / total.as_secs_f64();
    let commit_rate = bound as f64 / t_commit.as_secs_f64();
    let ms = |d: Duration| d.as_millis();
    let report = format!(
        "# Durable placement benchmark: solve and commit through the store\n\n\
Generated by `regional/benches/durable_placement.rs`; do not edit by hand. The pure solver \
alone is in [placement.md](placement.md).\n\n\
{provenance}\
- region: {n_nodes} nodes (32 cores, 128 GiB; 4 zones, 100 racks), {} pending tasks in {n_jobs} jobs of {per_job} \
(shapes 250m/512MiB, 1/2GiB, 4/8GiB, 500m/1GiB; 40% Pack), one shard\n\
- store: SQLite file (WAL, synchronous=NORMAL) through meridian-store, in-process; batch size {batch_size} bindings \
({n_batches} transactions)\n\
- setup (not timed): {:.1} s\n\n\
| phase | time |\n|---|---:|\n\
| read the region (one transaction) | {} ms |\n\
| build the snapshot | {} ms |\n\
| solve | {} ms |\n\
| commit all batches (fence, layout, node versions, task states checked) | {} ms |\n\
| **total** | **{} ms** |\n\n\
Bindings committed: {bound} (stale: {stale}, unschedulable: {}).\n\n\
**Durable bindings/s (whole round): {:.0}** — target >= 50,000: {}. Commit phase alone: {:.0} bindings/s.\n\n\
## What is measured\n\n\
One placement round of the shard leader's own code (`RegionView::read`, `build_input`, `solve`, \
`batches`, `commit_batch`), timed from the first read to the last commit, on a store holding the \
whole region. The solve here is easier than the pure bench's (no GPUs, labels or preemption), so \
the round is dominated by the store.\n\n\
## What bounds it\n\n\
The commit. Each batch is one transaction that re-reads the shard fence, the layout generation, \
every node record (one range read: a binding's node version and epoch are checked against it) and \
the task blocks of the batch's jobs (one range read: batches are cut along job ids, so a batch's \
jobs are contiguous in key order and each block is read and decoded once per round), then writes \
one task block per job (256 tasks per record), one command-log entry per node touched (all RUN \
commands of the batch for that node) with the node's head key set to the entry's stamp (a blind \
write, no read), the pending index and one atomic counter. So rows written grow with jobs and \
nodes, not with tasks: here 10,000 task blocks and 10,000 pending-marker clears per round, and \
two rows (log entry, head) per node per batch. The hot records (task blocks, command entries, nodes) are protobuf, a few tens \
of bytes per task, so a batch of 50,000 bindings stays far below the 10 MB transaction limit. What \
is left is SQLite itself: applying the batch's rows (B-tree upserts with WAL page writes) is \
most of the commit phase, and a larger batch saves one log row per node per batch.\n",
        input.pending.len(),
        setup.as_secs_f64(),
        ms(t_read),
        ms(t_build),
        ms(t_solve),
        ms(t_commit),
        ms(total),
        solution.unschedulable.len(),
        rate,
        if rate >= TARGET { "met" } else { "not met" },
        commit_rate,
    );
    println!("{report}");
    if !quick {
        std::fs::write(DOC, &report).expect("write the report");
        println!("wrote {DOC}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
