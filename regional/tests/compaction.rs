//! Compaction of the region's unbounded records (`link::compact`): the
//! nodes' command logs, cleared up to the trim cut, with agents that resume
//! from a cursor in the cleared part brought up to date by a snapshot; and
//! the tombstones of retired jobs, forgotten with their output after the
//! tombstone retention and not before.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use meridian_proto::v1;
use meridian_regional::agent::AgentApiConfig;
use meridian_regional::agent::stream::read_log;
use meridian_regional::jobs::simple_spec;
use meridian_regional::link::Reported;
use meridian_regional::link::compact;
use meridian_regional::pipeline::upward::{Accepted, RecordStatus};
use meridian_regional::pipeline::{Intent, Outcome};
use meridian_regional::state::Stamp;
use support::{GIB, Region, agent_client, registration, report};
use tokio_stream::StreamExt;

/// Longest wait for a stream message that must come (a guard against a
/// hang, not a pause: every wait returns as soon as the message arrives).
const GUARD: Duration = Duration::from_secs(30);

/// The change feed's head: the stamp the link leader notes and, one
/// retention later, trims to.
async fn feed_head(region: &Region) -> Stamp {
    region
        .db
        .run(|tx, _| {
            let key = region.keys.feed_head();
            async move { tx.get(&key).await }
        })
        .await
        .expect("read")
        .and_then(|v| v.get(..10).and_then(|b| b.try_into().ok()))
        .expect("the feed has a head")
}

async fn stored(region: &Region, key: Vec<u8>) -> bool {
    region
        .db
        .run(|tx, _| {
            let key = key.clone();
            async move { tx.get(&key).await }
        })
        .await
        .expect("read")
        .is_some()
}

/// `(job, index)` of every RUN until the bookmark, and the bookmark.
async fn runs_until_bookmark(
    stream: &mut tonic::Streaming<v1::AssignmentCommand>,
) -> (BTreeSet<(String, u32)>, v1::AssignmentCommand) {
    let mut runs = BTreeSet::new();
    loop {
        let cmd = tokio::time::timeout(GUARD, stream.next())
            .await
            .expect("the stream sends the bound set and a bookmark")
            .expect("message")
            .expect("ok");
        if cmd.kind == v1::CommandKind::Bookmark as i32 {
            return (runs, cmd);
        }
        assert_eq!(cmd.kind, v1::CommandKind::Run as i32, "{cmd:?}");
        let task = cmd.task.and_then(|a| a.task).expect("task");
        runs.insert((task.job_id, task.index));
    }
}

#[tokio::test]
async fn an_agent_resuming_from_a_cursor_in_the_cleared_log_gets_a_snapshot_then_reads_the_log_again()
 {
    let region = Region::new().await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;
    let epoch = agent
        .register(registration("node-a", "boot-1"))
        .await
        .expect("register")
        .into_inner()
        .node_epoch;
    let open = |cursor: Vec<u8>| {
        let mut agent = agent.clone();
        async move {
            agent
                .assignments(v1::NodeAssignmentsRequest {
                    node_id: "node-a".into(),
                    node_epoch: epoch,
                    cursor,
                })
                .await
                .expect("open")
                .into_inner()
        }
    };
    let mut placer = region.shard_loop(0).await;
    region
        .insert("job-1", simple_spec("t", 2, 500, GIB / 4))
        .await;
    assert_eq!(placer.round().await.expect("round").outcome.bound.len(), 2);
    let mut first = open(Vec::new()).await;
    let (_, bookmark) = runs_until_bookmark(&mut first).await;
    let acked = bookmark.cursor;
    drop(first);

    // A binding the agent has not seen, then the log cleared past it.
    region
        .insert("job-2", simple_spec("t", 1, 500, GIB / 4))
        .await;
    assert_eq!(placer.round().await.expect("round").outcome.bound.len(), 1);
    assert_eq!(
        read_log(&region.db, &region.keys, "node-a", None)
            .await
            .expect("log")
            .len(),
        3
    );
    region.fx.path.tailer.catch_up().await.expect("catch up");
    let cut = feed_head(&region).await;
    let fence = region.fx.fence(0).expect("fence");
    let nodes = compact::command_logs(&region.db, &region.keys, &region.fx.path.state, &fence, cut)
        .await
        .expect("compact");
    assert_eq!(nodes, 1, "node-a's log was the one to clear");
    assert!(
        read_log(&region.db, &region.keys, "node-a", None)
            .await
            .expect("log")
            .is_empty(),
        "every entry up to the cut is gone"
    );

    // Resuming from before the cut: the whole bound set, not a gap.
    let mut resumed = open(acked).await;
    let (runs, bookmark) = runs_until_bookmark(&mut resumed).await;
    let want: BTreeSet<(String, u32)> = [("job-1", 0), ("job-1", 1), ("job-2", 0)]
        .into_iter()
        .map(|(j, i)| (j.to_string(), i))
        .collect();
    assert_eq!(
        runs, want,
        "the snapshot holds the binding the cleared log held"
    );
    drop(resumed);

    // From the snapshot's bookmark the log is read again: only what is new.
    let mut again = open(bookmark.cursor.clone()).await;
    region
        .insert("job-3", simple_spec("t", 1, 500, GIB / 4))
        .await;
    assert_eq!(placer.round().await.expect("round").outcome.bound.len(), 1);
    let next = tokio::time::timeout(GUARD, again.next())
        .await
        .expect("the new binding arrives")
        .expect("message")
        .expect("ok");
    assert_eq!(next.kind, v1::CommandKind::Run as i32);
    let task = next.task.and_then(|a| a.task).expect("task");
    assert_eq!(
        (task.job_id.as_str(), task.index),
        ("job-3", 0),
        "no second snapshot after the first one's bookmark"
    );
    assert!(next.cursor > bookmark.cursor);

    // A second pass with nothing new past the last one clears nothing.
    let again = compact::command_logs(&region.db, &region.keys, &region.fx.path.state, &fence, cut)
        .await
        .expect("compact");
    assert_eq!(again, 0);
}

/// Runs job `job`'s one task to SUCCEEDED on n1 and has the region retire
/// it as the link does once the global tier accepted that final state.
async fn retire(region: &Region, job: &str) {
    let mut placer = region.shard_loop(0).await;
    region.insert(job, simple_spec("t", 1, 500, GIB / 4)).await;
    assert_eq!(placer.round().await.expect("round").outcome.bound.len(), 1);
    let task = region.task(job, 0).await;
    for state in [v1::TaskState::Running, v1::TaskState::Succeeded] {
        region
            .report_as(
                "n1",
                task.node_epoch,
                vec![report(job, 0, task.attempt, state)],
            )
            .await;
    }
    let mut digest = vec![0u32; 9];
    digest[v1::TaskState::Succeeded as usize] = 1;
    let out = region
        .submit(
            0,
            Intent::Status(RecordStatus {
                accepted: vec![Accepted {
                    job: job.into(),
                    epoch: 1,
                    reported: Reported {
                        version: 1,
                        digest,
                        waiting: String::new(),
                    },
                    last: true,
                }],
                now_unix_ms: region.now_ms(),
            }),
        )
        .await
        .expect("record status");
    assert!(matches!(out, Outcome::Retired(1)), "{out:?}");
}

#[tokio::test]
async fn a_retired_job_s_tombstone_and_output_are_forgotten_after_the_retention_and_not_before() {
    let region = Region::new().await;
    region.register("n1", "boot-1").await;
    retire(&region, "job-1").await;
    let output = region.keys.logs("job-1", 0, 1);
    region
        .db
        .run(|tx, _| {
            let key = output.clone();
            async move {
                tx.set(&key, b"hello\n")?;
                Ok::<_, meridian_store::StoreError>(())
            }
        })
        .await
        .expect("write output");
    let fence = region.fx.fence(0).expect("fence");
    let retention = Duration::from_secs(8 * 24 * 3600);
    let cutoff = |region: &Region| region.now_ms() - retention.as_millis() as u64;

    region.clock.advance(retention - Duration::from_secs(1));
    let forgotten = compact::tombstones(&region.db, &region.keys, &fence, cutoff(&region))
        .await
        .expect("compact");
    assert_eq!(forgotten, 0, "a second short of the retention");
    assert!(stored(&region, region.keys.retired("job-1")).await);
    assert!(stored(&region, output.clone()).await);

    region.clock.advance(Duration::from_secs(2));
    let forgotten = compact::tombstones(&region.db, &region.keys, &fence, cutoff(&region))
        .await
        .expect("compact");
    assert_eq!(forgotten, 1);
    assert!(!stored(&region, region.keys.retired("job-1")).await);
    assert!(!stored(&region, region.keys.retired_time("job-1")).await);
    assert!(
        !stored(&region, output).await,
        "the output goes with the tombstone"
    );
    let index = region.keys.retired_before(u64::MAX);
    let left = region
        .db
        .run(|tx, _| {
            let range = index.clone();
            async move { tx.get_range(range).await }
        })
        .await
        .expect("read");
    assert!(left.is_empty(), "the time index entry is gone too");
}

#[tokio::test]
async fn tombstones_without_a_time_are_indexed_once_and_forgotten_one_retention_later() {
    let region = Region::new().await;
    // A tombstone as an older build wrote it: the epoch, no time.
    let old = region.keys.retired("job-old");
    region
        .db
        .run(|tx, _| {
            let key = old.clone();
            async move {
                tx.set(&key, b"1")?;
                Ok::<_, meridian_store::StoreError>(())
            }
        })
        .await
        .expect("write tombstone");
    let fence = region.fx.fence(0).expect("fence");
    let now = region.now_ms();
    let indexed = compact::index_old_tombstones(&region.db, &region.keys, &fence, now)
        .await
        .expect("index");
    assert_eq!(indexed, 1);
    let again = compact::index_old_tombstones(&region.db, &region.keys, &fence, now)
        .await
        .expect("index");
    assert_eq!(again, 0, "indexing runs once");
    let kept = compact::tombstones(&region.db, &region.keys, &fence, now)
        .await
        .expect("compact");
    assert_eq!(kept, 0, "indexed now: kept a whole retention from now");
    let forgotten = compact::tombstones(&region.db, &region.keys, &fence, now + 1)
        .await
        .expect("compact");
    assert_eq!(forgotten, 1);
    assert!(!stored(&region, old).await);
}

#[test]
fn a_cursor_needs_a_snapshot_only_when_commands_after_it_may_have_been_cleared() {
    use meridian_regional::agent::stream::Cursor;
    let trim: Stamp = [0, 0, 0, 0, 0, 0, 0, 5, 0, 0];
    let at = |commit: u8, index: u32| {
        let mut stamp = [0u8; 12];
        stamp[7] = commit;
        Cursor { stamp, index }
    };
    assert!(at(4, u32::MAX).before_trim(trim), "an older commit");
    assert!(
        at(5, 0).before_trim(trim),
        "within the trimmed commit: the rest of its entry is gone"
    );
    assert!(
        !Cursor::after_entry(trim).before_trim(trim),
        "just after the trimmed commit: nothing after it was cleared"
    );
    assert!(!at(6, 0).before_trim(trim), "a later commit");
}
