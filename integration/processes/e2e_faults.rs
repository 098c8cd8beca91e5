//! A whole federation under faults: while 2,000 exclusive real tasks run,
//! `kill -9` of the region scheduler replica that leads most of a region's
//! shards, then of the global leader; `meridian dev` restarts both. Every
//! task appends `MERIDIAN_TASK_ID MERIDIAN_ATTEMPT` to one shared file, so
//! the file is the ground truth of what ran.
//!
//! Shows: every task id appears exactly once (no exclusive task ran twice,
//! none was lost), every acknowledged job reached a final state, and prints
//! the measured failover times (kill -> every shard the victim led has a
//! leader under a higher epoch, from the line its new holder logs when it
//! becomes leader; kill -> a global replica accepts a write).
//!
//! Runs alone (`.config/nextest.toml`).

use crate::federation;
use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use federation::{Dev, Sizes, Tracker, file_for_tasks, sh_job, states, submit_all};
use meridian_proto::v1;

const JOBS: usize = 2_000;
const REGION: &str = "us-east";

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the shared file has at least `n` lines, looking again at
/// each write the kernel reports.
async fn await_lines(path: &Path, n: usize) {
    support::wait::file_until(path, &format!("{n} tasks ran"), federation::GUARD, || {
        (lines(path).len() >= n).then_some(())
    })
    .await;
}

/// Time from `since` until a write (UndrainRegion, idempotent) succeeds at
/// whichever global replica leads: the other one, or the killed one's next
/// incarnation (`meridian dev` restarts it within a second or two, and it
/// may win the election). The client follows `meridian-leader` hints.
async fn await_global_write(dev: &Dev, since: Instant) -> Duration {
    let mut client = dev.client();
    let request = v1::UndrainRegionRequest {
        region: REGION.into(),
    };
    client
        .call(|mut c| {
            let r = request.clone();
            async move { c.undrain_region(r).await }
        })
        .await
        .expect("a global replica accepts a write");
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_regional_then_the_global_leader_under_two_thousand_exclusive_tasks_runs_each_exactly_once()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = file_for_tasks(dir.path(), "ran.txt");
    let started = Instant::now();
    let dev = Dev::start(
        &dir.path().join("dev"),
        Sizes {
            regions: 3,
            shards: 4,
            simulated_nodes: 0,
            base_port: 17400,
        },
    );
    let script = format!(
        "echo \"$MERIDIAN_TASK_ID $MERIDIAN_ATTEMPT\" >> '{}'",
        ran.display()
    );
    let specs: Vec<v1::JobSpec> = (0..JOBS)
        .map(|i| sh_job(&format!("exclusive-{i}"), &script, true))
        .collect();
    let mut client = dev.client();
    let mut tracker = Tracker::start(dev.client()).await;
    let mut submit_client = dev.client();
    let submitting =
        tokio::spawn(async move { submit_all(&mut submit_client, "faults", specs, 50).await });

    // Fault 1: the region replica leading most of us-east's shards.
    await_lines(&ran, 150).await;
    let (victim, before) = dev.busiest_replica(REGION);
    let killed_at = Instant::now();
    let old_pid = dev.kill9(&victim);
    // Re-acquired = every shard the victim led has a leader again under a
    // higher epoch (meridian dev restarts the victim within a second, so the
    // new holder may be the survivor or the victim's next incarnation).
    let after = dev.leaders.until(
        "every shard of the victim has a new term",
        federation::GUARD,
        |terms| {
            let s = terms.shards(REGION);
            before
                .iter()
                .filter(|(_, (leader, _))| *leader == victim)
                .all(|(shard, (_, epoch))| s.get(shard).is_some_and(|(_, e)| e > epoch))
                .then_some(s)
        },
    );
    let shard_failover = killed_at.elapsed();
    let regional_restart = dev.await_restart(&victim, old_pid, killed_at);
    println!(
        "regional: killed {victim} (led {} of {} shards); its shards had new terms after {} ms; \
         restarted by meridian dev {} ms after the kill; \
         (leader, epoch) by shard {before:?} -> {after:?}",
        before.values().filter(|(l, _)| *l == victim).count(),
        before.len(),
        shard_failover.as_millis(),
        regional_restart.as_millis(),
    );

    // Fault 2: the global leader.
    await_lines(&ran, lines(&ran).len() + 100).await;
    let leader = dev.await_global_leader();
    let killed_at = Instant::now();
    let old_pid = dev.kill9(&leader);
    let global_failover = await_global_write(&dev, killed_at).await;
    let global_restart = dev.await_restart(&leader, old_pid, killed_at);
    println!(
        "global: killed {leader}; a write was accepted {} ms after the kill (leader now {:?}); \
         restarted {} ms after the kill",
        global_failover.as_millis(),
        dev.global_leader_now(),
        global_restart.as_millis()
    );

    let acked = submitting.await.expect("submitter");
    assert_eq!(acked.len(), JOBS, "every submit was acknowledged");
    let ids: BTreeSet<String> = acked.values().cloned().collect();
    assert_eq!(
        ids.len(),
        JOBS,
        "distinct job ids == submitted request count"
    );
    let (jobs, waited) = tracker
        .await_all_final(&mut client, &ids, Duration::from_secs(300))
        .await;

    // The file: one line per task that ran.
    let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines(&ran) {
        let mut words = line.split_whitespace();
        let task = words.next().unwrap_or_default().to_string();
        let attempt = words.next().unwrap_or_default().to_string();
        runs.entry(task).or_default().push(attempt);
    }
    let expected: BTreeSet<String> = ids.iter().map(|id| format!("{id}/0")).collect();
    let twice: Vec<(&String, &Vec<String>)> = runs.iter().filter(|(_, a)| a.len() > 1).collect();
    let never: Vec<&String> = expected.iter().filter(|t| !runs.contains_key(*t)).collect();
    let strangers: Vec<&String> = runs.keys().filter(|t| !expected.contains(*t)).collect();
    println!(
        "2,000 exclusive real tasks: {} lines, all final {:.1} s after the wait began, \
         {:.1} s in total; states {:?}",
        lines(&ran).len(),
        waited.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        states(&jobs)
    );
    println!(
        "failover: shard {} ms, global {} ms",
        shard_failover.as_millis(),
        global_failover.as_millis()
    );
    // Why a task ran again: its job's tasks and history, for the first few.
    for (task, _) in twice.iter().take(3) {
        let job_id = task.split('/').next().unwrap_or_default().to_string();
        let request = v1::GetJobRequest { job_id };
        if let Ok(r) = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.get_job(r).await }
            })
            .await
        {
            let job = r.job.unwrap_or_default();
            println!("ran twice: {task}: tasks {:#?}", job.tasks);
            println!("ran twice: {task}: history {:#?}", job.history);
        }
    }
    assert!(twice.is_empty(), "tasks that ran more than once: {twice:?}");
    assert!(
        never.is_empty(),
        "{} tasks never ran (first: {:?})",
        never.len(),
        never.first()
    );
    assert!(
        strangers.is_empty(),
        "lines of unknown tasks: {strangers:?}"
    );
}
