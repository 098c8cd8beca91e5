//! The in-memory backend replays exactly: the same operations, in the same
//! order, give the same versionstamps, conflicts and data — in a plain
//! runtime and inside a turmoil simulation whose simulated processes share
//! one backend.

use std::sync::Arc;
use std::time::Duration;

use meridian_store::memory::MemoryBackend;
use meridian_store::tuple::{Subspace, Versionstamp};
use meridian_store::{Database, KeyValue, RangeOption, RetryOptions, StoreError};
use parking_lot::Mutex;

fn dump_all(backend: &MemoryBackend) -> Vec<KeyValue> {
    let db = Database::new(Arc::new(backend.clone()));
    futures::executor::block_on(async {
        let tx = db.begin().await.expect("begin");
        tx.get_range(RangeOption::new(Vec::new(), vec![0xff]))
            .await
            .expect("range")
    })
}

/// A fixed script of interleaved transactions, with conflicts, atomic adds,
/// clears and versionstamped keys; returns every commit's outcome.
async fn scripted(db: &Database) -> Vec<Result<Option<[u8; 10]>, StoreError>> {
    let log = Subspace::all().subspace(&("log",));
    let template = log.pack_with_versionstamp(&(Versionstamp::incomplete(0),));
    let mut outcomes = Vec::new();
    for round in 0..10u8 {
        let a = db.begin().await.expect("begin");
        let b = db.begin().await.expect("begin");
        a.get(b"shared").await.expect("get");
        b.get(b"shared").await.expect("get");
        a.set(b"shared", &[round, b'a']).expect("set");
        b.set(b"shared", &[round, b'b']).expect("set");
        a.set_versionstamped_key(&template, &[round])
            .expect("stamped set");
        b.add_i64(b"adds", 1).expect("add");
        // Alternate which one commits first: the loser conflicts.
        let (first, second) = if round % 2 == 0 { (a, b) } else { (b, a) };
        outcomes.push(first.commit().await.map(|i| i.versionstamp));
        outcomes.push(second.commit().await.map(|i| i.versionstamp));
        let c = db.begin().await.expect("begin");
        c.clear_range(b"r", b"s").expect("clear_range");
        c.set(format!("r{round}").as_bytes(), b"x").expect("set");
        c.request_versionstamp();
        outcomes.push(c.commit().await.map(|i| i.versionstamp));
    }
    outcomes
}

#[test]
fn the_same_operations_give_the_same_versionstamps_and_data() {
    let run = || {
        let backend = MemoryBackend::new();
        let db = Database::new(Arc::new(backend.clone()));
        let outcomes = futures::executor::block_on(scripted(&db));
        (outcomes, dump_all(&backend))
    };
    let (first_outcomes, first_data) = run();
    let (second_outcomes, second_data) = run();
    assert_eq!(first_outcomes, second_outcomes);
    assert_eq!(first_data, second_data);
    let conflicts = first_outcomes
        .iter()
        .filter(|o| matches!(o, Err(StoreError::NotCommitted)))
        .count();
    assert_eq!(conflicts, 10, "one loser per round: {first_outcomes:?}");
    let stamps: Vec<[u8; 10]> = first_outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok().copied().flatten())
        .collect();
    assert_eq!(stamps.len(), 20);
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");
}

/// The gap between an increment's read and its write, in turmoil's simulated
/// time. It is the scenario itself (it makes the processes' transactions
/// overlap, so they conflict), not a wait for a condition.
const READ_WRITE_GAP: Duration = Duration::from_millis(1);

async fn pause_between_read_and_write() {
    tokio::time::sleep(READ_WRITE_GAP).await;
}

/// One simulated process: increments a shared counter by read-modify-write,
/// pausing (in simulated time) between the read and the write so the
/// processes interleave and conflict, and logs each increment under a
/// versionstamped key.
async fn process(db: Database, name: String, transcript: Arc<Mutex<Vec<String>>>) {
    let log = Subspace::all().subspace(&("log",));
    let template = log.pack_with_versionstamp(&(Versionstamp::incomplete(0),));
    for op in 0..10u32 {
        let attempts = Arc::new(Mutex::new(0u32));
        let (seen, info) = db
            .run_with_info(|tx, _| {
                let (template, name, attempts) = (template.clone(), name.clone(), attempts.clone());
                async move {
                    *attempts.lock() += 1;
                    let seen = tx
                        .get(b"counter")
                        .await?
                        .map(|v| u32::from_le_bytes(v.try_into().unwrap_or([0; 4])))
                        .unwrap_or(0);
                    pause_between_read_and_write().await;
                    tx.set(b"counter", &(seen + 1).to_le_bytes())?;
                    tx.set_versionstamped_key(&template, name.as_bytes())?;
                    Ok::<_, StoreError>(seen)
                }
            })
            .await
            .expect("an increment commits");
        let stamp = info.versionstamp.expect("a writing commit has a stamp");
        transcript.lock().push(format!(
            "{name} op {op}: saw {seen} after {} attempts, stamp {stamp:02x?}",
            attempts.lock()
        ));
    }
}

fn simulate(seed: u64) -> (Vec<String>, Vec<KeyValue>) {
    const PROCESSES: u64 = 4;
    let backend = MemoryBackend::new();
    let transcript = Arc::new(Mutex::new(Vec::new()));
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(600))
        .build();
    for p in 0..PROCESSES {
        let retry = RetryOptions::default();
        let db = Database::with_options(Arc::new(backend.clone()), retry, seed + p);
        let name = format!("process-{p}");
        let transcript = transcript.clone();
        sim.client(name.clone(), async move {
            process(db, name, transcript).await;
            Ok(())
        });
    }
    sim.run().expect("the simulation completes");
    let transcript = transcript.lock().clone();
    (transcript, dump_all(&backend))
}

#[test]
fn a_turmoil_simulation_sharing_one_backend_replays_exactly() {
    let (first, first_data) = simulate(42);
    let (second, second_data) = simulate(42);
    assert_eq!(first, second);
    assert_eq!(first_data, second_data);
    assert_eq!(first.len(), 40);
    let counter = first_data
        .iter()
        .find(|kv| kv.key == b"counter")
        .expect("the counter exists");
    assert_eq!(counter.value, 40u32.to_le_bytes(), "no increment was lost");
    assert!(
        first.iter().any(|line| !line.contains("after 1 attempts")),
        "the processes interleaved and some increments conflicted: {first:#?}"
    );
}
