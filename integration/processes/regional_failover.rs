//! Two replicas of one region, as separate `meridian regional` processes on
//! one SQLite file, split the shards; one is killed with SIGKILL while jobs
//! keep arriving. Its shards get a new leader within two lease lengths, every
//! task ends up bound, and no task is ever bound twice.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use meridian_cli::dev::line::{LOOPBACK_ANY_PORT, RegionalLine};
use meridian_control::SystemClock;
use meridian_regional::jobs::{insert_job, simple_spec};
use meridian_regional::model::{CommandRecord, Keys, RegionView, decode};
use meridian_regional::pipeline::node::Register;
use meridian_regional::pipeline::{Intent, Outcome};
use meridian_regional::replica::DataPath;
use meridian_regional::shard::ensure_layout;
use meridian_regional::shard::observe_shard_leases;
use meridian_store::Database;
use support::{Proc, Regional};

const SHARDS: u32 = 4;
const LEASE_MS: u64 = 1_000;
const NODES: usize = 40;
const JOBS: usize = 120;
const TASKS_PER_JOB: u32 = 5;
const GIB: u64 = 1 << 30;
/// Failure guard only: no step waits this long when things work.
const GUARD: Duration = Duration::from_secs(60);

/// Starts replica `name` of region `r1` on the store at `url`.
fn replica(name: &str, url: &str) -> Proc {
    let line = RegionalLine::new("r1", url, LOOPBACK_ANY_PORT, SHARDS)
        .replica(name)
        .shard_lease_ms(LEASE_MS)
        // No agents in this test: nodes must not be declared dead.
        .node_timeout_ms(600_000);
    Regional::start(&line).proc
}

/// Awaits `cond`, re-checking whenever one of `watched` changes.
async fn wait_until<F, Fut>(db: &Database, watched: &[Vec<u8>], what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let watches = db
            .run(|tx, _| {
                let keys = watched.to_vec();
                async move {
                    let mut ws = Vec::new();
                    for k in &keys {
                        ws.push(tx.watch(k)?);
                    }
                    Ok::<_, meridian_store::StoreError>(ws)
                }
            })
            .await
            .expect("arm watches");
        if cond().await {
            return;
        }
        let any = futures_select_all(watches);
        if tokio::time::timeout_at(deadline, any).await.is_err() {
            panic!("timed out waiting for {what}");
        }
    }
}

async fn futures_select_all(ws: Vec<meridian_store::WatchFuture>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(ws.len().max(1));
    for w in ws {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = w.await;
            let _ = tx.send(()).await;
        });
    }
    let _ = rx.recv().await;
}

async fn holders(db: &Database, keys: &Keys) -> Vec<Option<(String, u64, u64)>> {
    observe_shard_leases(db, keys, SHARDS)
        .await
        .expect("observe leases")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn bound_count(db: &Database, keys: &Keys) -> i64 {
    let v = db
        .run(|tx, _| {
            let k = keys.bound_counter();
            async move { tx.get(&k).await }
        })
        .await
        .expect("read counter");
    v.map(|b| {
        let mut a = [0u8; 8];
        a[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
        i64::from_le_bytes(a)
    })
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replica_processes_split_the_shards_and_survive_a_kill_without_binding_a_task_twice() {
    let dir = std::env::temp_dir().join(format!(
        "meridian-failover-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite:{}", dir.join("region.db").display());
    let db = meridian_store::open(&url).await.expect("open store");
    let keys = Keys::new("r1");
    // This process writes as a third party (as an operator's tool would):
    // its writes reach the replicas through the region's change feed.
    ensure_layout(&db, &keys, SHARDS).await.expect("layout");
    let clock = SystemClock::shared();
    let path = DataPath::start(db.clone(), keys.clone(), clock.clone(), "test")
        .await
        .expect("data path");
    for i in 0..NODES {
        let request = register(&format!("node-{i:03}"), 64_000, 256 * GIB);
        let out = path
            .pipeline
            .submit(
                None,
                Intent::Register(Register {
                    request,
                    now_unix_ms: clock.now_unix_ms(),
                }),
            )
            .await
            .expect("register node");
        assert!(matches!(out, Outcome::Node(Some(_))), "{out:?}");
    }

    let a = replica("a", &url);
    let mut b = replica("b", &url);
    // The replicas keep their shard leases in a store of their own.
    let leases = meridian_store::open_leases(&url, &db)
        .await
        .expect("open the lease store");
    let lease_keys: Vec<Vec<u8>> = (0..SHARDS).map(|s| keys.shard_lease(s)).collect();

    // Both replicas lead some shards, and every shard has a live leader.
    wait_until(
        &leases,
        &lease_keys,
        "the replicas to split the shards",
        || async {
            let h = holders(&leases, &keys).await;
            let now = now_ms();
            let live: Vec<&str> = h
                .iter()
                .filter_map(|x| {
                    x.as_ref()
                        .filter(|(_, _, exp)| *exp > now)
                        .map(|(n, _, _)| n.as_str())
                })
                .collect();
            live.len() == SHARDS as usize
                && live.iter().filter(|n| **n == "a").count() == (SHARDS / 2) as usize
                && live.iter().filter(|n| **n == "b").count() == (SHARDS / 2) as usize
        },
    )
    .await;

    // Load: jobs keep arriving while replica b is killed.
    let loader = {
        let pipeline = path.pipeline.clone();
        tokio::spawn(async move {
            for j in 0..JOBS {
                let spec = simple_spec("tenant", TASKS_PER_JOB, 100, GIB / 8);
                insert_job(&pipeline, &format!("job-{j:04}"), 1, &spec, now_ms())
                    .await
                    .expect("insert job");
                tokio::task::yield_now().await;
            }
        })
    };
    let counter = vec![keys.bound_counter()];
    wait_until(&db, &counter, "some bindings before the kill", || async {
        bound_count(&db, &keys).await >= 50
    })
    .await;

    let before = holders(&leases, &keys).await;
    let b_shards: BTreeMap<u32, u64> = before
        .iter()
        .enumerate()
        .filter_map(|(s, h)| {
            h.as_ref()
                .filter(|(n, _, _)| n == "b")
                .map(|(_, e, _)| (s as u32, *e))
        })
        .collect();
    assert!(!b_shards.is_empty(), "b leads nothing: {before:?}");
    let killed_at = Instant::now();
    b.kill_now();

    wait_until(
        &leases,
        &lease_keys,
        "a new leader for b's shards",
        || async {
            let h = holders(&leases, &keys).await;
            b_shards.iter().all(|(s, old)| {
                h[*s as usize]
                    .as_ref()
                    .is_some_and(|(n, e, _)| n == "a" && e > old)
            })
        },
    )
    .await;
    let failover = killed_at.elapsed();
    println!("failover of {} shard(s) took {failover:?}", b_shards.len());
    assert!(
        failover < Duration::from_millis(2 * LEASE_MS),
        "failover took {failover:?}, more than two lease lengths"
    );

    loader.await.expect("loader");
    let total = (JOBS as i64) * i64::from(TASKS_PER_JOB);
    wait_until(&db, &counter, "every task bound", || async {
        bound_count(&db, &keys).await >= total
    })
    .await;

    // No task was ever bound twice: the counter, the task records and the
    // nodes' command logs all say each task got exactly one RUN.
    assert_eq!(bound_count(&db, &keys).await, total);
    let view = db
        .run(|tx, _| {
            let keys = keys.clone();
            async move { RegionView::read(&tx, &keys).await }
        })
        .await
        .expect("view");
    // (job, task index) -> every RUN seen for it as (node, shard, shard epoch).
    type Runs = BTreeMap<(String, u32), Vec<(String, u32, u64)>>;
    let mut runs: Runs = BTreeMap::new();
    for node in view.nodes.keys() {
        let log = db
            .run(|tx, _| {
                let range = keys.commands(node);
                async move { tx.get_range(range).await }
            })
            .await
            .expect("read log");
        for kv in log {
            let cmds: Vec<CommandRecord> = decode("command", &kv.value).expect("decode");
            for c in cmds {
                runs.entry((c.job.clone(), c.index)).or_default().push((
                    node.clone(),
                    c.shard,
                    c.shard_epoch,
                ));
            }
        }
    }
    assert_eq!(runs.len() as i64, total, "tasks with a RUN command");
    let twice: Vec<_> = runs.iter().filter(|(_, r)| r.len() != 1).collect();
    assert!(twice.is_empty(), "tasks bound more than once: {twice:?}");
    let mut placed = 0;
    for block in view.blocks.values() {
        for t in &block.tasks {
            assert_eq!(t.attempt, 1, "a task was placed more than once: {t:?}");
            placed += 1;
        }
    }
    assert_eq!(placed, total);
    let epochs_after_kill: BTreeSet<u64> = runs
        .values()
        .flatten()
        .filter(|(_, s, _)| b_shards.contains_key(s))
        .map(|(_, _, e)| *e)
        .collect();
    println!("shard epochs seen in commands of b's former shards: {epochs_after_kill:?}");

    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

fn register(id: &str, cpu: u64, mem: u64) -> meridian_proto::v1::RegisterNodeRequest {
    meridian_proto::v1::RegisterNodeRequest {
        node_id: id.into(),
        boot_id: format!("boot-{id}"),
        allocatable: Some(meridian_proto::v1::Resources {
            cpu_millis: cpu,
            memory_bytes: mem,
            ..Default::default()
        }),
        ..Default::default()
    }
}
