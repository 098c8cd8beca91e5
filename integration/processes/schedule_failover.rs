//! A periodic job through kills of the global leader, with real processes:
//! `meridian dev` with two global replicas on one SQLite store, a schedule
//! ticking every 15 seconds (`*/15 * * * * *`, overlap ALLOW, missed ticks
//! RUN_ONCE). The global leader is killed with SIGKILL twice: as soon as the
//! first tick's job is listed (the leader may not have recorded the tick
//! yet), and again just before a later tick's time, so that tick is planned
//! by whichever replica leads next. Shows: each tick made exactly one job
//! (request id `schedule/<id>/<created>/<tick>`), no tick made two, and
//! every tick between the schedule's creation and its `handled_through`
//! either has its job or is counted in `skipped_ticks`, as the missed-tick
//! policy says.
//!
//! The clock is the real one (these are processes), so the kill lands near
//! a tick, not at an exact point of the ticker; the exact points (before
//! and after the tick's job commit) are proven in one process with a
//! manual clock in `global/tests/schedules.rs`. Ticks are 15 s apart, so
//! the scenario takes 20 to 50 s after the federation is up.
//!
//! Runs alone (`.config/nextest.toml`).

use crate::federation;
use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use federation::{Dev, GUARD, Sizes, Tracker, list_all, simulated_job};
use meridian_cli::client::Client;
use meridian_proto::v1;

const SCHEDULE: &str = "every-15s";
const CRON: &str = "*/15 * * * * *";
/// The time between ticks of `CRON`, which are multiples of it since 1970
/// (UTC).
const PERIOD_MS: u64 = 15_000;
/// How long before a tick's time the second kill lands.
const BEFORE_TICK: Duration = Duration::from_millis(300);
/// The least time from the first failover's end to the tick the second
/// kill lands before: room for the leader to be found before that.
const LEAD: u64 = 3_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

async fn schedule(client: &mut Client) -> v1::Schedule {
    let request = v1::GetScheduleRequest {
        schedule_id: SCHEDULE.into(),
    };
    client
        .call(|mut c| {
            let r = request.clone();
            async move { c.get_schedule(r).await }
        })
        .await
        .expect("get the schedule")
        .schedule
        .expect("a schedule")
}

/// The schedule's jobs by tick (from their request ids), every job of a
/// tick kept, so a duplicate shows.
async fn runs(client: &mut Client, created_at: u64) -> BTreeMap<u64, Vec<String>> {
    let prefix = format!("schedule/{SCHEDULE}/{created_at}/");
    let mut by_tick: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for job in list_all(client).await.into_values() {
        if let Some(tick) = job.request_id.strip_prefix(&prefix) {
            let tick: u64 = tick
                .parse()
                .unwrap_or_else(|_| panic!("request id {}", job.request_id));
            by_tick.entry(tick).or_default().push(job.job_id);
        }
    }
    by_tick
}

/// Waits until the WatchJobs stream shows the job of `tick` (its request
/// id names the tick).
async fn await_run(tracker: &mut Tracker, created_at: u64, tick: u64) {
    let request_id = format!("schedule/{SCHEDULE}/{created_at}/{tick}");
    tracker
        .until(&format!("the job of tick {tick}"), GUARD, |jobs| {
            jobs.values()
                .any(|j| j.request_id == request_id)
                .then_some(())
        })
        .await;
}

/// Reads the schedule until it has recorded `tick`, again at each write to
/// the global store's files in `data` (the record is a write there; nothing
/// else announces it).
async fn await_recorded(client: &mut Client, data: &std::path::Path, tick: u64) -> v1::Schedule {
    let mut writes = support::wait::DirWrites::watch(data);
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let s = schedule(client).await;
        if s.handled_through_unix_ms >= tick {
            return s;
        }
        assert!(
            writes.next(deadline).await,
            "tick {tick} recorded: not within {GUARD:?}"
        );
    }
}

/// The moments of the real clock this scenario acts at.
mod scenario {
    use std::time::Duration;

    /// Returns at `at_unix_ms` of the wall clock: the kill is meant to land
    /// just before a cron tick's time, so the passing of real time up to
    /// that instant is the scenario, not a wait for a condition.
    pub async fn until_wall_clock(at_unix_ms: u64) {
        let now = super::now_ms();
        assert!(
            now < at_unix_ms,
            "{at_unix_ms} (ms since 1970) had passed already at {now}"
        );
        let until_the_instant = Duration::from_millis(at_unix_ms - now);
        tokio::time::sleep(until_the_instant).await;
    }
}

/// `kill -9` of the global leader; waits for a leader again and for
/// `meridian dev` to restart the killed replica. Returns the time from the
/// kill to a leader.
async fn kill_the_leader(dev: &Dev) -> Duration {
    let leader = dev.await_global_leader();
    let killed_at = Instant::now();
    let pid = dev.kill9(&leader);
    // The kill ended the killed replica's term; the next one logged is a
    // term after the kill.
    dev.await_global_leader();
    let failover = killed_at.elapsed();
    dev.await_restart(&leader, pid, killed_at);
    println!(
        "killed global leader {leader} (pid {pid}): a leader again after {:.0} ms",
        failover.as_secs_f64() * 1000.0
    );
    failover
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_makes_exactly_one_job_per_tick_through_kills_of_the_global_leader() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let dev = Dev::start(
        &data,
        Sizes {
            regions: 1,
            shards: 1,
            simulated_nodes: 10,
            base_port: 18700,
        },
    );
    assert_eq!(dev.globals().len(), 2, "two global replicas");
    let mut client = dev.client();
    // Watching before the schedule exists, so no job of a tick is missed.
    let mut tracker = Tracker::start(dev.client()).await;

    let request = v1::CreateScheduleRequest {
        schedule_id: SCHEDULE.into(),
        spec: Some(v1::ScheduleSpec {
            tenant: "e2e".into(),
            cron: CRON.into(),
            time_zone: String::new(),
            job: Some(simulated_job("tick", 100)),
            overlap_policy: v1::OverlapPolicy::Allow as i32,
            missed_tick_policy: v1::MissedTickPolicy::RunOnce as i32,
            starting_deadline_ms: 0,
        }),
        paused: false,
    };
    let created = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.create_schedule(r).await }
        })
        .await
        .expect("create the schedule")
        .schedule
        .expect("a schedule");
    let created_at = created.created_at_unix_ms;
    let first = created.next_tick_unix_ms;
    assert_eq!(first, (created_at / PERIOD_MS + 1) * PERIOD_MS);

    // Kill 1: as soon as the first tick's job is listed.
    await_run(&mut tracker, created_at, first).await;
    kill_the_leader(&dev).await;
    let second = ((now_ms() + LEAD) / PERIOD_MS + 1) * PERIOD_MS;

    // Kill 2: just before a later tick's time, so the replica that leads
    // after the kill plans it.
    scenario::until_wall_clock(second.saturating_sub(BEFORE_TICK.as_millis() as u64)).await;
    kill_the_leader(&dev).await;

    await_run(&mut tracker, created_at, second).await;
    let recorded = await_recorded(&mut client, &data, second).await;

    // Every tick in (created, handled_through] either has exactly one job
    // or is counted as skipped; no job is of another tick.
    let runs = runs(&mut client, created_at).await;
    let window: BTreeSet<u64> = (first..=recorded.handled_through_unix_ms)
        .step_by(PERIOD_MS as usize)
        .collect();
    let duplicates: Vec<_> = runs.iter().filter(|(_, jobs)| jobs.len() > 1).collect();
    assert!(duplicates.is_empty(), "ticks with two jobs: {duplicates:?}");
    let outside: Vec<_> = runs.keys().filter(|t| !window.contains(t)).collect();
    assert!(
        outside.is_empty(),
        "jobs of ticks outside {window:?}: {outside:?}"
    );
    let run: BTreeSet<u64> = runs.keys().copied().collect();
    assert!(run.contains(&first) && run.contains(&second), "{runs:?}");
    assert_eq!(
        recorded.skipped_ticks as usize,
        window.len() - run.len(),
        "every tick without a job is counted as skipped: {recorded:?}"
    );
    println!(
        "schedule {SCHEDULE}: ticks {window:?} made jobs {runs:?}, last outcome {:?}",
        recorded.last_outcome
    );
}
