//! Fencing: stale shard epochs are refused; a node-epoch bump stops the
//! fenced tasks before the agent registers again.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeOptions, FakeRegion, attempt, run};
use meridian_agent::{AgentOptions, Host, NodeSpec, Probe};
use meridian_control::{Clock, ManualClock, SharedClock};
use meridian_proto::v1::task_template::Kind;
use meridian_proto::v1::{RegionLossPolicy, Resources, Simulated, TaskState, TaskTemplate};

fn simulated(ms: u64) -> TaskTemplate {
    TaskTemplate {
        kind: Some(Kind::Simulated(Simulated {
            duration_ms: ms,
            exit_code: 0,
        })),
    }
}

fn base() -> NodeSpec {
    NodeSpec {
        node_id: "sim".into(),
        allocatable: Resources::default(),
        labels: BTreeMap::new(),
        zone: String::new(),
        rack: String::new(),
    }
}

async fn one_node(clock: &SharedClock, fake: &FakeRegion, probe: Arc<Probe>) -> Host {
    // The manual clock does not move by itself: no spacing between reports.
    let opts = AgentOptions {
        report_interval: Duration::ZERO,
        ..AgentOptions::default()
    };
    Host::simulated(&fake.url(), &base(), 1, opts, clock.clone(), probe).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_with_a_stale_shard_epoch_is_refused() {
    let clock = ManualClock::new();
    let shared = clock.shared();
    let mut fake = FakeRegion::start(shared.clone(), FakeOptions::default()).await;
    let probe = Arc::new(Probe::default());
    let host = one_node(&shared, &fake, probe.clone()).await;
    let node = "sim-000000";
    fake.wait_stream(node, 1).await;
    let epoch = fake.epoch_of(node);
    let hour = 3_600_000;

    let first = attempt("j", 0, 1);
    fake.send(
        node,
        run(
            first.clone(),
            simulated(hour),
            epoch,
            5,
            RegionLossPolicy::KeepRunning,
            0,
        ),
    )
    .await;
    fake.wait_report(&first, |r| r.state == TaskState::Running as i32)
        .await;

    // A deposed shard leader (epoch 4) tries to place a task: refused.
    let stale = attempt("j", 1, 1);
    fake.send(
        node,
        run(
            stale.clone(),
            simulated(hour),
            epoch,
            4,
            RegionLossPolicy::KeepRunning,
            0,
        ),
    )
    .await;
    // The current leader (epoch 5) places another: runs. Commands are applied
    // in stream order, so once this one is reported the stale one was seen.
    let current = attempt("j", 2, 1);
    fake.send(
        node,
        run(
            current.clone(),
            simulated(hour),
            epoch,
            5,
            RegionLossPolicy::KeepRunning,
            0,
        ),
    )
    .await;
    let (_, seen) = fake
        .wait_report(&current, |r| r.state == TaskState::Running as i32)
        .await;

    assert!(
        seen.iter().all(|r| r.task.as_ref() != Some(&stale)),
        "no report about the refused attempt"
    );
    let snap = probe.snapshot();
    println!("probe after the stale command: {snap:?}");
    assert_eq!(snap.refused_commands, 1);
    assert_eq!(snap.launched, 2);
    assert_eq!(snap.running, 2);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_epoch_bump_stops_the_fenced_tasks_before_registering_again() {
    let clock = ManualClock::new();
    let shared = clock.shared();
    let fake = FakeRegion::start(shared.clone(), FakeOptions::default()).await;
    let probe = Arc::new(Probe::default());
    let observed = probe.clone();
    fake.observe_registers(move || observed.snapshot().running);
    let host = one_node(&shared, &fake, probe.clone()).await;
    let node = "sim-000000";
    fake.wait_stream(node, 1).await;
    let epoch = fake.epoch_of(node);
    for i in 0..3 {
        fake.send(
            node,
            run(
                attempt("j", i, 1),
                simulated(3_600_000),
                epoch,
                1,
                RegionLossPolicy::KeepRunning,
                0,
            ),
        )
        .await;
    }
    probe.wait_for(|p| p.running == 3).await;

    fake.bump_epoch(node);
    fake.wait_stream(node, epoch + 2).await;
    let regs = fake.registrations();
    println!("registrations (node, epoch, tasks running at that moment): {regs:?}");
    assert_eq!(regs.len(), 2);
    assert_eq!(
        regs[1].2, 0,
        "every fenced task had stopped before the agent registered again"
    );
    assert!(regs[1].1 > epoch + 1, "a fresh epoch above the bumped one");
    assert_eq!(probe.snapshot().fenced, 1);
    // Time never moved: the stops did not wait on a clock.
    assert_eq!(
        clock.now(),
        meridian_control::Instant::ZERO + Duration::ZERO
    );
    host.shutdown().await;
}

/// An attempt that finished while its SUCCEEDED report was still on its
/// way, then a fence (the region declared the node dead during a slow
/// reconnect): the end is not dropped with the fenced epoch's other
/// reports but delivered after the agent registers again, naming the epoch
/// the attempt ran under, so the region can finish the task instead of
/// running it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_unacknowledged_at_a_fence_is_delivered_after_registering_again_with_its_epoch() {
    let clock = ManualClock::new();
    let shared = clock.shared();
    let mut fake = FakeRegion::start(shared.clone(), FakeOptions::default()).await;
    let probe = Arc::new(Probe::default());
    let host = one_node(&shared, &fake, probe.clone()).await;
    let node = "sim-000000";
    fake.wait_stream(node, 1).await;
    let epoch = fake.epoch_of(node);

    fake.hold_reports(true);
    let done = attempt("j", 0, 1);
    fake.send(
        node,
        run(
            done.clone(),
            simulated(0),
            epoch,
            1,
            RegionLossPolicy::Failover,
            0,
        ),
    )
    .await;
    probe.wait_for(|p| p.launched == 1 && p.running == 0).await;
    fake.wait_held_reports(1).await;

    fake.bump_epoch(node);
    fake.wait_stream(node, epoch + 2).await;
    fake.hold_reports(false);
    let (end, _) = fake
        .wait_report(&done, |r| r.state == TaskState::Succeeded as i32)
        .await;
    assert_eq!(
        end.node_epoch, epoch,
        "the end names the epoch its attempt ran under"
    );
    assert_eq!(probe.snapshot().fenced, 1);
    host.shutdown().await;
}

/// A node whose region answered nothing for the node timeout it was told
/// at registration (a paused agent, resumed; a node cut off) may have
/// been declared dead, and its tasks placed on another node: a RUN it
/// reads then (one that waited unread in its connection during the pause)
/// is not started but reported KILLED, which a region that still counts
/// the node alive takes as the agent's own stop and places again. Once the
/// region answers a heartbeat again, RUNs start as before. Found by the
/// multi-process chaos test: a SIGSTOPped agent, resumed after its region
/// had placed its exclusive tasks elsewhere, started them beside the new
/// attempts for a few milliseconds before it learnt of the fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_read_after_the_node_timeout_without_an_answer_is_not_started() {
    let clock = ManualClock::new();
    let shared = clock.shared();
    // Beats every second, so the node timeout told at registration is 3 s;
    // the region lease (an hour) plays no part.
    let mut fake = FakeRegion::start(
        shared.clone(),
        FakeOptions {
            lease_remaining_ms: 3_600_000,
            heartbeat_interval_ms: 1_000,
            ..FakeOptions::default()
        },
    )
    .await;
    let probe = Arc::new(Probe::default());
    // Calls get an hour: a held heartbeat stays out, the session stays up.
    let opts = AgentOptions {
        report_interval: Duration::ZERO,
        call_timeout: Duration::from_secs(3_600),
        ..AgentOptions::default()
    };
    let host =
        Host::simulated(&fake.url(), &base(), 1, opts, shared.clone(), probe.clone()).unwrap();
    let node = "sim-000000";
    fake.wait_stream(node, 1).await;
    let epoch = fake.epoch_of(node);
    let keep = |job: &str| {
        run(
            attempt(job, 0, 1),
            simulated(3_600_000),
            epoch,
            1,
            RegionLossPolicy::KeepRunning,
            0,
        )
    };

    fake.send(node, keep("before")).await;
    probe.wait_for(|p| p.launched == 1).await;

    // 4 s pass with no answer from the region (its heartbeats are held).
    fake.hold_heartbeats(true);
    clock.advance(Duration::from_secs(4));
    fake.wait_held_heartbeats(1).await;
    let late = attempt("late", 0, 1);
    fake.send(node, keep("late")).await;
    let (report, _) = fake.wait_report(&late, |_| true).await;
    assert_eq!(
        TaskState::try_from(report.state),
        Ok(TaskState::Killed),
        "the first report of the late RUN: {report:?}"
    );
    assert_eq!(
        report.message,
        "not started: the region may have declared this node dead (no answer for its node timeout)"
    );
    assert_eq!(probe.snapshot().launched, 1, "the late RUN started nothing");

    // The held beat is answered: the node counts as alive again.
    let beats = probe.snapshot().heartbeats;
    fake.hold_heartbeats(false);
    probe.wait_for(|p| p.heartbeats > beats).await;
    fake.send(node, keep("after")).await;
    probe.wait_for(|p| p.launched == 2).await;
    host.shutdown().await;
}

/// A job the global tier took from the region and gave back is a new hold
/// there, whose attempts count from 1 again. The node ran the earlier
/// hold's attempt 1; it must run the new hold's attempt 1 too, not take it
/// for a repeat of the RUN it already carried out (which left the task
/// bound and never started).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_hold_of_a_job_runs_its_attempt_1_although_the_node_ran_an_earlier_holds() {
    let clock = ManualClock::new();
    let shared = clock.shared();
    let mut fake = FakeRegion::start(shared.clone(), FakeOptions::default()).await;
    let probe = Arc::new(Probe::default());
    let host = one_node(&shared, &fake, probe.clone()).await;
    let node = "sim-000000";
    fake.wait_stream(node, 1).await;
    let epoch = fake.epoch_of(node);

    let mut earlier = attempt("j", 0, 1);
    earlier.assignment_epoch = 2;
    let mut later = attempt("j", 0, 1);
    later.assignment_epoch = 3;
    for hold in [&earlier, &later] {
        fake.send(
            node,
            run(
                hold.clone(),
                simulated(10),
                epoch,
                5,
                RegionLossPolicy::KeepRunning,
                0,
            ),
        )
        .await;
        fake.wait_report(hold, |r| r.state == TaskState::Running as i32)
            .await;
        clock.advance(Duration::from_millis(10));
        fake.wait_report(hold, |r| r.state == TaskState::Succeeded as i32)
            .await;
    }
    assert_eq!(probe.snapshot().launched, 2, "each hold's attempt ran once");
    host.shutdown().await;
}
