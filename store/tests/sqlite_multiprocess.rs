//! Several OS processes sharing one SQLite store file, the way the replicas
//! of a region share their store on one machine.
//!
//! The other processes are `meridian-store-worker` (src/bin), driven through
//! their command line and stdout. The tests wait for events — a line on a
//! child's stdout, a child's exit, a watch — never for time; timeouts are
//! failure guards only.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::conformance::{EVENT_GUARD, increment, read_i64, read_range};
use meridian_store::tuple::{Subspace, Versionstamp};
use meridian_store::{Database, RangeOption, StoreError};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const WORKER: &str = env!("CARGO_BIN_EXE_meridian-store-worker");

/// A store file in a temporary directory, opened (so created) by this process.
struct Store {
    _dir: tempfile::TempDir,
    path: PathBuf,
    url: String,
    db: Database,
}

async fn shared_store() -> Store {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("shared.db");
    let url = format!("sqlite:{}", path.display());
    let db = meridian_store::open(&url).await.expect("opening the store");
    Store {
        _dir: dir,
        path,
        url,
        db,
    }
}

fn spawn_worker(args: &[&str]) -> Child {
    Command::new(WORKER)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting meridian-store-worker")
}

/// A worker started with `--start stdin`, once it has opened the store and
/// said `ready`; writing a line to its stdin starts it.
struct Waiting {
    child: Child,
    stdin: tokio::process::ChildStdin,
    /// The lines it printed before `ready`.
    before: Vec<String>,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn spawn_ready_worker(args: &[&str]) -> Waiting {
    let mut child = Command::new(WORKER)
        .args(args)
        .args(["--start", "stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting meridian-store-worker");
    let stdin = child.stdin.take().expect("the worker's stdin");
    let stdout = child.stdout.take().expect("the worker's stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut before = Vec::new();
    loop {
        let line = tokio::time::timeout(EVENT_GUARD, lines.next_line())
            .await
            .expect("the worker says ready")
            .expect("reading the worker's stdout");
        match line {
            Some(line) if line == "ready" => break,
            Some(line) => before.push(line),
            None => {
                let output = child.wait_with_output().await.expect("the worker's output");
                panic!(
                    "the worker exited before it was ready: {}\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
    Waiting {
        child,
        stdin,
        before,
        lines,
    }
}

impl Waiting {
    async fn start(&mut self) {
        self.stdin
            .write_all(b"go\n")
            .await
            .expect("sending the start signal");
    }

    /// Waits for the worker to exit; the output holds all of its stdout.
    async fn finish(self) -> Output {
        let Waiting {
            child,
            stdin,
            before,
            mut lines,
        } = self;
        drop(stdin);
        let read_rest = async move {
            let mut all = before;
            while let Some(line) = lines
                .next_line()
                .await
                .expect("reading the worker's stdout")
            {
                all.push(line);
            }
            all
        };
        let (stdout, output) = tokio::time::timeout(EVENT_GUARD * 2, async {
            tokio::join!(read_rest, child.wait_with_output())
        })
        .await
        .expect("the worker exits");
        let mut output = output.expect("collecting the worker's output");
        output.stdout = (stdout.join("\n") + "\n").into_bytes();
        output
    }
}

async fn finish(child: Child) -> Output {
    tokio::time::timeout(EVENT_GUARD * 2, child.wait_with_output())
        .await
        .expect("the worker exits")
        .expect("collecting the worker's output")
}

/// The worker succeeded, reported no failed operation, and never saw the
/// database locked. Returns its stdout.
fn assert_clean(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "worker failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.lines().any(|l| l == "done errors=0"),
        "worker reported errors:\n{stdout}\n{stderr}"
    );
    assert!(
        !stderr.contains("database is locked") && !stdout.contains("database is locked"),
        "a worker saw the database locked:\n{stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_from_two_processes_and_local_tasks_lose_no_update() {
    const PER_WORKER: usize = 500;
    const LOCAL_TASKS: usize = 4;
    const PER_TASK: usize = 100;
    let store = shared_store().await;
    let count = PER_WORKER.to_string();
    let args = [
        "increment",
        "--url",
        &store.url,
        "--key",
        "counter",
        "--count",
        &count,
    ];
    // Both processes open the store first, then all start together.
    let mut workers = [
        spawn_ready_worker(&args).await,
        spawn_ready_worker(&args).await,
    ];
    for worker in &mut workers {
        worker.start().await;
    }

    let mut local = Vec::new();
    for _ in 0..LOCAL_TASKS {
        let db = store.db.clone();
        local.push(tokio::spawn(async move {
            for _ in 0..PER_TASK {
                increment(&db, b"counter").await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for task in local {
        task.await
            .expect("a local task panicked")
            .expect("local increments commit");
    }
    for worker in workers {
        let stdout = assert_clean(&worker.finish().await);
        assert!(
            stdout
                .lines()
                .any(|l| l == format!("increments={PER_WORKER}")),
            "{stdout}"
        );
    }
    assert_eq!(
        read_i64(&store.db, b"counter").await,
        (2 * PER_WORKER + LOCAL_TASKS * PER_TASK) as i64
    );
}

fn parse_stamps(stdout: &str) -> Vec<(u64, [u8; 10])> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("stamp "))
        .map(|rest| {
            let (seq, hex) = rest.split_once(' ').expect("`stamp SEQ HEX`");
            let mut stamp = [0u8; 10];
            assert_eq!(hex.len(), 20, "a 10-byte stamp in hex: {hex}");
            for (i, byte) in stamp.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
            }
            (seq.parse().expect("a sequence number"), stamp)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versionstamps_strictly_increase_in_commit_order_across_processes() {
    const PER_PROCESS: u64 = 200;
    let store = shared_store().await;
    let count = PER_PROCESS.to_string();
    let ids = ["a", "b"];
    let mut workers = Vec::new();
    for id in ids {
        let args = ["stamp", "--url", &store.url, "--id", id, "--count", &count];
        workers.push(spawn_ready_worker(&args).await);
    }
    for worker in &mut workers {
        worker.start().await;
    }

    // This process commits stamped keys at the same time, as "local".
    let space = Subspace::from_bytes(b"stamps".to_vec());
    let template = space.pack_with_versionstamp(&(Versionstamp::incomplete(0),));
    let mut printed: BTreeMap<String, Vec<(u64, [u8; 10])>> = BTreeMap::new();
    let mut local = Vec::new();
    for seq in 0..PER_PROCESS {
        let (_, info) =
            store
                .db
                .run_with_info(|tx, _| {
                    let template = template.clone();
                    async move {
                        tx.set_versionstamped_key(&template, format!("local:{seq}").as_bytes())
                    }
                })
                .await
                .expect("a local stamped commit");
        local.push((
            seq,
            info.versionstamp
                .expect("a stamped commit reports its stamp"),
        ));
    }
    printed.insert("local".into(), local);
    for (id, worker) in ids.iter().zip(workers) {
        let stdout = assert_clean(&worker.finish().await);
        printed.insert(id.to_string(), parse_stamps(&stdout));
    }

    for (id, stamps) in &printed {
        let seqs: Vec<u64> = stamps.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(
            seqs,
            (0..PER_PROCESS).collect::<Vec<_>>(),
            "{id} reported every commit"
        );
        assert!(
            stamps.windows(2).all(|w| w[0].1 < w[1].1),
            "{id}'s commit stamps strictly increase"
        );
    }
    let all_printed: BTreeSet<[u8; 10]> = printed.values().flatten().map(|(_, s)| *s).collect();
    assert_eq!(
        all_printed.len(),
        3 * PER_PROCESS as usize,
        "no two commits share a stamp"
    );

    // In key order (= stamp order), each process's commits keep their order,
    // and each key carries the stamp its commit reported.
    let kvs = read_range(&store.db, RangeOption::prefix(space.bytes())).await;
    assert_eq!(
        kvs.len(),
        3 * PER_PROCESS as usize,
        "every stamped key is distinct"
    );
    let mut in_key_order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for kv in &kvs {
        let (stamp,) = space
            .unpack::<(Versionstamp,)>(&kv.key)
            .expect("a versionstamped key");
        let value = String::from_utf8(kv.value.clone()).expect("an ID:SEQ value");
        let (id, seq) = value.split_once(':').expect("ID:SEQ");
        let seq: u64 = seq.parse().expect("a sequence number");
        let reported = printed[id][seq as usize].1;
        assert_eq!(
            stamp.transaction_version(),
            &reported[..],
            "{value} carries its commit's stamp"
        );
        in_key_order.entry(id.to_string()).or_default().push(seq);
    }
    for (id, seqs) in in_key_order {
        assert_eq!(
            seqs,
            (0..PER_PROCESS).collect::<Vec<_>>(),
            "{id}'s keys sort in its commit order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_fires_after_another_process_commits_a_change() {
    let store = shared_store().await;
    let db = &store.db;
    db.run(|tx, _| async move { tx.set(b"watched", b"before") })
        .await
        .expect("seeding the key");
    let tx = db.begin().await.expect("begin");
    let watch = tx.watch(b"watched").expect("watch");
    tx.commit().await.expect("committing the watch");

    let worker = spawn_worker(&[
        "set", "--url", &store.url, "--key", "watched", "--value", "after",
    ]);
    assert_clean(&finish(worker).await);
    tokio::time::timeout(EVENT_GUARD, watch)
        .await
        .expect("the watch fires after the other process commits")
        .expect("a fired watch reports success");
    let value = db
        .run(|tx, _| async move { tx.get(b"watched").await })
        .await
        .expect("reading the key");
    assert_eq!(value.as_deref(), Some(&b"after"[..]));
}

fn integrity_check(path: &Path) -> String {
    let conn = rusqlite::Connection::open(path).expect("opening the file directly");
    conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("running integrity_check")
}

/// True when another connection holds the file's write lock right now
/// (a write transaction cannot start, without waiting).
fn write_lock_is_held(path: &Path) -> bool {
    let conn = rusqlite::Connection::open(path).expect("opening the file directly");
    conn.busy_timeout(std::time::Duration::ZERO)
        .expect("not waiting for locks");
    match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;") {
        Ok(()) => false,
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            true
        }
        Err(e) => panic!("probing the write lock: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_transaction_leaves_the_store_consistent_and_usable() {
    const BATCH: usize = 1_000;
    let store = shared_store().await;
    let db = &store.db;
    db.run(|tx, _| async move { tx.set(b"before", b"committed") })
        .await
        .expect("seeding the store");

    // 1,000 keys of 4 KB: more than SQLite's page cache, so part of the
    // uncommitted batch is already in the WAL file when the writer dies.
    let batch = BATCH.to_string();
    let mut holder = Command::new(WORKER)
        .args([
            "hold", "--url", &store.url, "--prefix", "held/", "--count", &batch,
        ])
        .args(["--value-bytes", "4000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the holding worker");
    let stdout = holder.stdout.take().expect("the worker's stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = tokio::time::timeout(EVENT_GUARD, lines.next_line())
            .await
            .expect("the worker reports holding")
            .expect("reading the worker's stdout");
        match line.as_deref() {
            Some("holding") => break,
            Some(_) => continue,
            None => {
                let output = holder
                    .wait_with_output()
                    .await
                    .expect("the worker's output");
                panic!(
                    "the worker exited before holding: {}\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
    let path = store.path.clone();
    assert!(
        tokio::task::spawn_blocking(move || write_lock_is_held(&path))
            .await
            .expect("probe"),
        "the worker holds the write lock with its batch written"
    );

    holder.kill().await.expect("SIGKILL to the worker");
    let status = holder.wait().await.expect("the killed worker's status");
    assert_eq!(
        status.signal(),
        Some(9),
        "the worker died of SIGKILL: {status}"
    );

    let held = read_range(db, RangeOption::prefix(b"held/")).await;
    assert!(
        held.is_empty(),
        "{} keys of the killed batch are visible",
        held.len()
    );
    let path = store.path.clone();
    let integrity = tokio::task::spawn_blocking(move || integrity_check(&path))
        .await
        .expect("integrity check");
    assert_eq!(integrity, "ok");

    // Usable from this process...
    db.run(|tx, _| async move { tx.set(b"after/local", b"ok") })
        .await
        .expect("a new local transaction commits");
    // ...and from a new process.
    let worker = spawn_worker(&[
        "set",
        "--url",
        &store.url,
        "--key",
        "after/worker",
        "--value",
        "ok",
    ]);
    assert_clean(&finish(worker).await);

    let all = read_range(db, RangeOption::new(b"".to_vec(), b"\xff".to_vec())).await;
    let keys: Vec<&[u8]> = all.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, vec![&b"after/local"[..], b"after/worker", b"before"]);
    let path = store.path.clone();
    let integrity = tokio::task::spawn_blocking(move || integrity_check(&path))
        .await
        .expect("integrity check");
    assert_eq!(integrity, "ok");
}
