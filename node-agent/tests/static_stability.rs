//! Static stability: the region goes away while real tasks run.
//! `keep_running` tasks go on (and their final status, buffered, arrives
//! once the region is back); `failover` tasks are stopped so that they have
//! exited by the region-lease deadline.

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeOptions, FakeRegion, attempt, run};
use meridian_agent::{AgentOptions, Host, NodeSpec, Probe};
use meridian_control::{Clock, ManualClock};
use meridian_proto::v1::task_template::Kind;
use meridian_proto::v1::{
    Command, RegionLossPolicy, Resources, TaskAttempt, TaskState, TaskTemplate,
};

fn sh(script: &str, env: &[(&str, &str)]) -> TaskTemplate {
    TaskTemplate {
        kind: Some(Kind::Command(Command {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            working_dir: String::new(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_running_tasks_survive_an_outage_and_failover_tasks_stop_at_the_lease_deadline() {
    let clock = ManualClock::new();
    let lease = Duration::from_secs(30);
    let OneNode {
        mut fake,
        host,
        probe,
        epoch,
        work,
    } = one_node(&clock, lease.as_millis() as u64, 60_000, None).await;

    // keep_running: blocks on a FIFO until the test lets it finish.
    let fifo = common::wait::task_fifo(work.path(), "go");
    let keep = attempt("keep", 0, 1);
    let script = "read line < \"$GO\"; echo \"finished $line\"; exit 7";
    fake.send(
        "n1",
        run(
            keep.clone(),
            sh(script, &[("GO", fifo.to_str().unwrap())]),
            epoch,
            1,
            RegionLossPolicy::KeepRunning,
            1000,
        ),
    )
    .await;
    let grace_ms = 2_000;
    let fail = send_failover_task(&fake, epoch, grace_ms).await;
    // Its process exists (RUNNING is reported once it is spawned) before the
    // clock moves: a RUN spawned past its start deadline would not start.
    fake.wait_report(&fail, |r| r.state == TaskState::Running as i32)
        .await;
    probe.wait_for(|p| p.running == 2).await;

    // The region goes away.
    fake.stop().await;
    probe.wait_for(|p| p.backing_off == 1).await;

    // Just before the lease deadline minus the grace period nothing stops.
    let stop_at = lease - Duration::from_millis(grace_ms);
    let mut before = probe.snapshot();
    while clock.now().since_epoch() + Duration::from_secs(1) < stop_at {
        clock.advance(Duration::from_secs(1));
        // Whoever woke (a backoff retry) has tried and gone back to waiting.
        probe
            .wait_for(|p| p.backoffs > before.backoffs || p.backing_off == 1)
            .await;
        before = probe.snapshot();
    }
    assert_eq!(
        probe.snapshot().running,
        2,
        "both still run before the deadline"
    );
    clock
        .advance_to(meridian_control::Instant::from_epoch(stop_at))
        .unwrap();
    let stopped = probe.wait_for(|p| p.running == 1).await;
    println!(
        "at {:?} (lease {lease:?}, grace {grace_ms} ms): {stopped:?}",
        clock.now()
    );
    assert_eq!(stopped.region_loss_stops, 1);

    // The keep_running task finishes while the region is still away.
    let fifo_path = fifo.clone();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(fifo_path)
            .unwrap();
        writeln!(f, "ok").unwrap();
    })
    .await
    .unwrap();
    probe.wait_for(|p| p.running == 0).await;

    // The region comes back; the agent reconnects after its backoff.
    fake.restart().await;
    let sessions = probe.snapshot().sessions;
    while probe.snapshot().sessions == sessions {
        let b = probe.snapshot().backoffs;
        clock.advance(Duration::from_secs(10));
        probe
            .wait_for(|p| p.backoffs > b || p.sessions > sessions)
            .await;
    }
    let mut finals = BTreeMap::new();
    while finals.len() < 2 {
        let (_, r) = fake.next_report().await;
        if r.finished_at_unix_ms != 0 {
            finals.insert(r.task.clone().unwrap().task.unwrap().job_id, r);
        }
    }
    let k = &finals["keep"];
    let f = &finals["fail"];
    println!(
        "keep: state {} exit {:?} out {:?}",
        k.state,
        k.exit_code,
        String::from_utf8_lossy(&k.stdout_tail)
    );
    println!(
        "fail: state {} signal {:?} message {:?}",
        f.state, f.signal, f.message
    );
    assert_eq!(k.state, TaskState::Failed as i32);
    assert_eq!(k.exit_code, Some(7));
    assert_eq!(k.stdout_tail, b"finished ok\n");
    assert_eq!(f.state, TaskState::Killed as i32);
    assert_eq!(f.signal, Some(15));
    host.shutdown().await;
}

/// One node `n1` with a stream open to a fake region answering
/// `lease_remaining_ms` and `heartbeat_interval_ms`, on `clock`.
struct OneNode {
    fake: FakeRegion,
    host: Host,
    probe: Arc<Probe>,
    epoch: u64,
    work: tempfile::TempDir,
}

/// Advances the clock by a second and waits for the heartbeat that must
/// come by then.
async fn advance_to_a_beat(clock: &ManualClock, probe: &Probe, what: &str) {
    let before = probe.snapshot().heartbeats;
    clock.advance(Duration::from_secs(1));
    tokio::time::timeout(
        Duration::from_secs(30),
        probe.wait_for(|p| p.heartbeats > before),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{what} (failure guard) at {:?}: {:?}",
            clock.now(),
            probe.snapshot()
        )
    });
}

/// The node's one `failover` task runs and was never stopped for the lease.
fn assert_still_running(probe: &Probe) {
    let now = probe.snapshot();
    assert_eq!(now.region_loss_stops, 0, "{now:?}");
    assert_eq!(now.running, 1, "{now:?}");
}

/// Sends node `n1` a long-running `failover` task with a stop grace of
/// `grace_ms`; returns its attempt.
async fn send_failover_task(fake: &FakeRegion, epoch: u64, grace_ms: u64) -> TaskAttempt {
    let fail = attempt("fail", 0, 1);
    fake.send(
        "n1",
        run(
            fail.clone(),
            sh("exec sleep 1000", &[]),
            epoch,
            1,
            RegionLossPolicy::Failover,
            grace_ms,
        ),
    )
    .await;
    fail
}

async fn one_node(
    clock: &ManualClock,
    lease_remaining_ms: u64,
    heartbeat_interval_ms: u64,
    call_timeout: Option<Duration>,
) -> OneNode {
    let fake = FakeRegion::start(
        clock.shared(),
        FakeOptions {
            lease_remaining_ms,
            heartbeat_interval_ms,
            ..FakeOptions::default()
        },
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let probe = Arc::new(Probe::default());
    let defaults = AgentOptions::default();
    let opts = AgentOptions {
        work_dir: Some(work.path().to_path_buf()),
        report_interval: Duration::ZERO,
        call_timeout: call_timeout.unwrap_or(defaults.call_timeout),
        ..defaults
    };
    let spec = NodeSpec {
        node_id: "n1".into(),
        allocatable: Resources::default(),
        labels: BTreeMap::new(),
        zone: String::new(),
        rack: String::new(),
    };
    let host = Host::real(&fake.url(), spec, opts, clock.shared(), probe.clone())
        .await
        .unwrap();
    fake.wait_stream("n1", 1).await;
    let epoch = fake.epoch_of("n1");
    OneNode {
        fake,
        host,
        probe,
        epoch,
        work,
    }
}

/// Regression: a region that holds no lease at the global tier (not linked,
/// or not relinked yet after a restart) answers `region_lease_remaining_ms =
/// 0`. That is no deadline, not an expired one: a `failover` task started
/// right after registering keeps running, through heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_task_keeps_running_when_the_region_reports_no_lease_at_registration() {
    let clock = ManualClock::new();
    let OneNode {
        mut fake,
        host,
        probe,
        epoch,
        work: _work,
    } = one_node(&clock, 0, 1_000, Some(Duration::from_secs(3_600))).await;
    let fail = send_failover_task(&fake, epoch, 2_000).await;
    fake.wait_report(&fail, |r| r.state == TaskState::Running as i32)
        .await;

    // Heartbeats come and go (each answered "no lease"); every STOP of an
    // unknown attempt is answered LOST only after the agent's loop has gone
    // round since the beat's answer, with the failover deadline (if any)
    // armed. Calls get an hour: heartbeats run beside the loop, so the
    // test's clock moves on while one is out.
    for i in 0..5u32 {
        advance_to_a_beat(&clock, &probe, "a heartbeat answered \"no lease\"").await;
        let probe_attempt = attempt("unknown", i, 1);
        fake.send("n1", common::stop(probe_attempt.clone(), epoch, 1, 0))
            .await;
        fake.wait_report(&probe_attempt, |r| r.state == TaskState::Lost as i32)
            .await;
    }
    assert_still_running(&probe);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_the_region_is_slow_to_answer_holds_back_neither_heartbeats_nor_the_region_lease()
{
    let clock = ManualClock::new();
    // The held report must not simply time out while the test runs.
    let OneNode {
        mut fake,
        host,
        probe,
        epoch,
        work: _work,
    } = one_node(&clock, 3_000, 1_000, Some(Duration::from_secs(3_600))).await;

    // The region answers no report for now; the task's RUNNING report waits.
    fake.hold_reports(true);
    let fail = send_failover_task(&fake, epoch, 1_000).await;
    fake.wait_held_reports(1).await;

    // Three lease lengths pass while that report is held: the node goes on
    // heartbeating, each answer extends its view of the region lease, and
    // its failover task keeps running.
    for _ in 0..9 {
        advance_to_a_beat(&clock, &probe, "a heartbeat while a report is held").await;
    }
    assert_still_running(&probe);

    fake.hold_reports(false);
    fake.wait_report(&fail, |r| r.state == TaskState::Running as i32)
        .await;
    host.shutdown().await;
}

/// Sends node `n1` a task `job` that ends at once; returns its attempt.
async fn send_quick_task(fake: &FakeRegion, epoch: u64, job: &str) -> TaskAttempt {
    let quick = attempt(job, 0, 1);
    let cmd = run(
        quick.clone(),
        sh("exit 0", &[]),
        epoch,
        1,
        RegionLossPolicy::KeepRunning,
        1_000,
    );
    fake.send("n1", cmd).await;
    quick
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_the_region_is_slow_to_answer_holds_back_no_task_report() {
    let clock = ManualClock::new();
    // The held heartbeat must not simply time out while the test runs.
    let OneNode {
        mut fake,
        host,
        probe,
        epoch,
        work: _work,
    } = one_node(&clock, 3_000, 1_000, Some(Duration::from_secs(3_600))).await;
    let guard = Duration::from_secs(30);
    // A first task's report shows the node's loop is running, so the clock
    // moved below reaches its heartbeat timer.
    let first = send_quick_task(&fake, epoch, "first").await;
    tokio::time::timeout(
        guard,
        fake.wait_report(&first, |r| r.state == TaskState::Succeeded as i32),
    )
    .await
    .expect("a first task ran (failure guard)");

    // The region answers no heartbeat for now; the node's next beat waits.
    fake.hold_heartbeats(true);
    let beats = probe.snapshot().heartbeats;
    clock.advance(Duration::from_secs(2));
    tokio::time::timeout(guard, fake.wait_held_heartbeats(1))
        .await
        .expect("a beat sent and held (failure guard)");

    // Another quick task: its start and its end reach the region while
    // that beat is out.
    let quick = send_quick_task(&fake, epoch, "quick").await;
    tokio::time::timeout(
        guard,
        fake.wait_report(&quick, |r| r.state == TaskState::Succeeded as i32),
    )
    .await
    .expect("the task's end reported while a beat was out (failure guard)");
    assert_eq!(probe.snapshot().heartbeats, beats, "the beat is still out");

    fake.hold_heartbeats(false);
    tokio::time::timeout(guard, probe.wait_for(|p| p.heartbeats > beats))
        .await
        .expect("the held beat answered once let through (failure guard)");
    host.shutdown().await;
}

/// A region whose lease is fine but whose answers leave a node's view of
/// it only a little longer than a task's stop grace plus the heartbeat
/// pace: the node beats early, before it would stop its failover task, and
/// the task keeps running. (At the plain 16 s pace, 12 to 16 s with its
/// spread, the task, with its 12 s lease view and 1 s grace, would stop at
/// 11 s.) Calls get an hour here: the test's clock moves a second at a time
/// while the node's calls take real milliseconds, and a call timing out on
/// that clock would end the session, which is not the point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_beats_early_when_its_lease_view_would_stop_a_failover_task_before_the_next_answer()
{
    let clock = ManualClock::new();
    let OneNode {
        mut fake,
        host,
        probe,
        epoch,
        work: _work,
    } = one_node(&clock, 12_000, 16_000, Some(Duration::from_secs(3_600))).await;
    let fail = send_failover_task(&fake, epoch, 1_000).await;
    fake.wait_report(&fail, |r| r.state == TaskState::Running as i32)
        .await;
    probe.wait_for(|p| p.running == 1).await;

    // Each answer puts the stop point 11 s after the beat: the node beats
    // every 8 s (half its pace, the soonest it beats ahead), never waiting
    // for its 16 s pace.
    for _ in 0..5 {
        for _ in 0..7 {
            clock.advance(Duration::from_secs(1));
        }
        advance_to_a_beat(&clock, &probe, "an early heartbeat").await;
    }
    assert_still_running(&probe);
    host.shutdown().await;
}

/// A RUN of a `failover` task that arrives when the node's view of the
/// region lease has run out (or would within the task's stop grace) is not
/// started: once the lease ran out the global tier may have handed the job
/// to another region. The node reports it KILLED, as a stop of its own. A
/// `keep_running` task is started as always.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_task_whose_run_arrives_after_the_region_lease_ran_out_is_not_started() {
    let clock = ManualClock::new();
    let OneNode {
        mut fake,
        host,
        probe,
        epoch,
        work: _work,
    } = one_node(&clock, 5_000, 60_000, Some(Duration::from_secs(3_600))).await;
    // Registered with 5 s of lease left; no heartbeat renews it.
    clock.advance(Duration::from_secs(6));
    let fail = send_failover_task(&fake, epoch, 500).await;
    let (report, _) = fake
        .wait_report(&fail, |r| r.finished_at_unix_ms != 0)
        .await;
    assert_eq!(report.state, TaskState::Killed as i32);
    assert_eq!(
        report.message,
        "not started: region lease ran out (failover)"
    );
    assert_eq!(probe.snapshot().launched, 0, "nothing was started");

    let keep = attempt("keep", 0, 1);
    fake.send(
        "n1",
        run(
            keep.clone(),
            sh("exec sleep 1000", &[]),
            epoch,
            1,
            RegionLossPolicy::KeepRunning,
            500,
        ),
    )
    .await;
    probe.wait_for(|p| p.launched == 1 && p.running == 1).await;
    host.shutdown().await;
}
