//! Hand-made histories, one pair per invariant: one that breaks it and one
//! that comes close without breaking it.

use super::*;
use crate::history::{Event, History, JobState, Resources, Scope, StopReason};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn history(events: Vec<Event>) -> History {
    History::from_events(
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (secs(i as u64), e)),
    )
}

fn started(node: &str, task: &str, exclusive: bool, keep_running: bool) -> Event {
    Event::TaskStarted {
        node: node.into(),
        task: task.into(),
        job: "j".into(),
        exclusive,
        keep_running,
    }
}

fn stopped(node: &str, task: &str, reason: StopReason) -> Event {
    Event::TaskStopped {
        node: node.into(),
        task: task.into(),
        reason,
    }
}

fn leader(scope: Scope, holder: &str, epoch: u64) -> Event {
    Event::LeaderChanged {
        scope,
        holder: holder.into(),
        epoch,
    }
}

fn write(scope: Scope, owner: &str, epoch: u64, committed: bool) -> Event {
    Event::WriteAttempt {
        scope,
        owner: owner.into(),
        epoch,
        committed,
    }
}

fn acked(request: &str, job: &str) -> Event {
    Event::SubmitAcked {
        request_id: request.into(),
        job_id: job.into(),
    }
}

fn observed(job: &str, request: &str, state: JobState) -> Event {
    Event::JobObserved {
        job_id: job.into(),
        request_id: request.into(),
        state,
    }
}

fn shard() -> Scope {
    Scope::Shard {
        region: "r1".into(),
        shard: 0,
    }
}

fn all(h: &History) -> Vec<Violation> {
    check(h, &CheckConfig::default())
}

#[test]
fn exclusive_task_started_on_a_second_node_before_the_first_stopped_is_reported() {
    let h = history(vec![
        started("n1", "t", true, false),
        started("n2", "t", true, false),
    ]);
    let v = all(&h);
    assert_eq!(
        v,
        vec![Violation::ExclusiveTaskOnTwoNodes {
            task: "t".into(),
            running_on: "n1".into(),
            started_on: "n2".into(),
            seq: 1
        }]
    );
}

#[test]
fn exclusive_task_moved_after_it_stopped_is_fine_and_so_is_a_non_exclusive_one() {
    let h = history(vec![
        started("n1", "t", true, false),
        stopped("n1", "t", StopReason::Stopped),
        started("n2", "t", true, false),
        started("n1", "u", false, false),
        started("n2", "u", false, false),
    ]);
    assert!(all(&h).is_empty());
}

#[test]
fn one_request_id_acknowledged_with_two_job_ids_is_reported() {
    let h = history(vec![acked("rq", "a"), acked("rq", "b")]);
    let v = all(&h);
    assert!(
        matches!(&v[..], [Violation::RequestIdCreatedTwoJobs { request_id, job_ids }]
        if request_id == "rq" && job_ids == &vec!["a".to_string(), "b".to_string()])
    );
}

#[test]
fn a_second_job_for_a_request_id_found_only_in_the_store_is_reported() {
    let h = history(vec![
        acked("rq", "a"),
        observed("a", "rq", JobState::Running),
        observed("b", "rq", JobState::Pending),
    ]);
    assert!(matches!(
        &all(&h)[..],
        [Violation::RequestIdCreatedTwoJobs { .. }]
    ));
}

#[test]
fn duplicate_acks_with_the_same_job_id_are_fine() {
    let h = history(vec![
        acked("rq", "a"),
        acked("rq", "a"),
        observed("a", "rq", JobState::Running),
    ]);
    assert!(all(&h).is_empty());
}

#[test]
fn acknowledged_job_missing_from_later_observations_is_lost() {
    let h = history(vec![
        observed("old", "r0", JobState::Running),
        acked("rq", "a"),
        observed("old", "r0", JobState::Running),
    ]);
    assert_eq!(
        all(&h),
        vec![Violation::AcknowledgedJobLost {
            request_id: "rq".into(),
            job_id: "a".into()
        }]
    );
}

#[test]
fn committed_write_under_an_epoch_already_superseded_is_reported() {
    let h = history(vec![
        leader(shard(), "p1", 1),
        write(shard(), "p1", 1, true),
        leader(shard(), "p2", 2),
        write(shard(), "p1", 1, true),
    ]);
    assert_eq!(
        all(&h),
        vec![Violation::FencedWriteCommitted {
            scope: shard(),
            owner: "p1".into(),
            epoch: 1,
            current_epoch: 2,
            seq: 3
        }]
    );
}

#[test]
fn rejected_stale_write_and_writes_in_other_scopes_are_fine() {
    let h = history(vec![
        leader(shard(), "p1", 1),
        leader(Scope::Global, "g1", 7),
        leader(shard(), "p2", 2),
        write(shard(), "p1", 1, false),
        write(shard(), "p2", 2, true),
        write(Scope::Global, "g1", 7, true),
    ]);
    assert!(all(&h).is_empty());
}

#[test]
fn two_holders_of_one_epoch_are_reported_per_scope() {
    let h = history(vec![
        leader(Scope::Region("r1".into()), "a", 3),
        leader(Scope::Region("r2".into()), "b", 3),
        leader(Scope::Region("r1".into()), "c", 3),
    ]);
    assert_eq!(
        all(&h),
        vec![Violation::TwoLeadersInOneEpoch {
            scope: Scope::Region("r1".into()),
            epoch: 3,
            holders: vec!["a".into(), "c".into()]
        }]
    );
}

#[test]
fn the_same_holder_renewing_an_epoch_is_fine() {
    let h = history(vec![
        leader(Scope::Global, "a", 3),
        leader(Scope::Global, "a", 3),
    ]);
    assert!(all(&h).is_empty());
}

#[test]
fn placed_resources_beyond_capacity_in_any_dimension_are_overcommit() {
    let cap = Resources {
        cpu_millis: 1000,
        memory_bytes: 100,
        gpus: 0,
    };
    let full = Event::NodeLoad {
        node: "n".into(),
        capacity: cap,
        placed: cap,
    };
    let over = Event::NodeLoad {
        node: "n".into(),
        capacity: cap,
        placed: Resources {
            memory_bytes: 101,
            ..cap
        },
    };
    let h = history(vec![full, over]);
    assert!(matches!(
        &all(&h)[..],
        [Violation::NodeOvercommitted { seq: 1, .. }]
    ));
}

#[test]
fn job_seen_converged_within_the_bound_after_heal_passes() {
    let h = History::from_events(vec![
        (secs(1), acked("rq", "a")),
        (secs(2), Event::Healed),
        (secs(5), observed("a", "rq", JobState::Pending)),
        (secs(9), observed("a", "rq", JobState::Running)),
    ]);
    let cfg = CheckConfig {
        convergence_bound: secs(10),
        ..CheckConfig::default()
    };
    assert!(check(&h, &cfg).is_empty());
}

#[test]
fn job_still_pending_at_the_bound_after_heal_does_not_converge() {
    let h = History::from_events(vec![
        (secs(1), acked("rq", "a")),
        (secs(1), observed("a", "rq", JobState::Running)),
        (secs(2), Event::Healed),
        (secs(5), observed("a", "rq", JobState::Pending)),
        (secs(20), observed("a", "rq", JobState::Running)),
    ]);
    let cfg = CheckConfig {
        convergence_bound: secs(10),
        ..CheckConfig::default()
    };
    assert_eq!(
        check(&h, &cfg),
        vec![Violation::JobDidNotConverge {
            job_id: "a".into(),
            last_seen: Some(JobState::Running),
            bound: secs(10)
        }]
    );
}

#[test]
fn keep_running_task_stopped_while_the_control_plane_is_down_is_reported() {
    let h = history(vec![
        started("n1", "k", false, true),
        Event::ControlPlaneDown,
        stopped("n1", "k", StopReason::Stopped),
        Event::ControlPlaneUp,
    ]);
    assert!(matches!(
        &all(&h)[..],
        [Violation::KeepRunningTaskStopped { seq: 2, .. }]
    ));
}

#[test]
fn keep_running_task_exiting_by_itself_or_stopped_after_recovery_is_fine() {
    let h = history(vec![
        started("n1", "k", false, true),
        started("n1", "k2", false, true),
        started("n1", "f", false, false),
        Event::ControlPlaneDown,
        stopped("n1", "k", StopReason::Exited),
        stopped("n1", "f", StopReason::Stopped),
        Event::ControlPlaneUp,
        stopped("n1", "k2", StopReason::Stopped),
    ]);
    assert!(all(&h).is_empty());
}

/// Seeds 394 and 993 of the federation world: stops the control plane
/// decided before it went down, carried out during the outage.
#[test]
fn keep_running_task_stopped_in_the_outage_by_a_decision_taken_before_it_is_fine() {
    let binding = |task: &str, node: &str| Event::Binding {
        task: task.into(),
        node: node.into(),
        shard: 0,
        epoch: 1,
    };
    let drained = |action: &str| Event::AdminAcked {
        action: action.into(),
    };
    let h = history(vec![
        started("agent-0-000000", "moved", false, true),
        started("agent-r3-0-000000", "in-drained-region", false, true),
        started("agent-1-000000", "on-drained-node", false, true),
        started("agent-1-000000", "kept", false, true),
        // Placed again elsewhere while its node was silent.
        binding("moved", "agent-r2-0-000000"),
        drained(r#"DrainRegion("r3")"#),
        drained(r#"DrainNode("r1", "agent-1-000000")"#),
        Event::ControlPlaneDown,
        stopped("agent-0-000000", "moved", StopReason::Stopped),
        stopped(
            "agent-r3-0-000000",
            "in-drained-region",
            StopReason::Stopped,
        ),
        stopped("agent-1-000000", "on-drained-node", StopReason::Stopped),
        stopped("agent-1-000000", "kept", StopReason::Exited),
        Event::ControlPlaneUp,
    ]);
    let cfg = CheckConfig {
        agent_regions: [("agent-r3-0".to_string(), "r3".to_string())].into(),
        ..CheckConfig::default()
    };
    assert_eq!(check(&h, &cfg), vec![]);
}

#[test]
fn keep_running_task_stopped_in_the_outage_after_its_drain_was_undone_is_reported() {
    let h = history(vec![
        started("agent-r3-0-000000", "k", false, true),
        Event::AdminAcked {
            action: r#"DrainRegion("r3")"#.into(),
        },
        Event::AdminAcked {
            action: r#"UndrainRegion("r3")"#.into(),
        },
        // Bound elsewhere only once the outage began: not decided before.
        Event::ControlPlaneDown,
        Event::Binding {
            task: "k".into(),
            node: "agent-0-000000".into(),
            shard: 0,
            epoch: 1,
        },
        stopped("agent-r3-0-000000", "k", StopReason::Stopped),
        Event::ControlPlaneUp,
    ]);
    let cfg = CheckConfig {
        agent_regions: [("agent-r3-0".to_string(), "r3".to_string())].into(),
        ..CheckConfig::default()
    };
    assert!(matches!(
        &check(&h, &cfg)[..],
        [Violation::KeepRunningTaskStopped { seq: 5, .. }]
    ));
}

fn timed(events: Vec<(u64, Event)>) -> History {
    History::from_events(
        events
            .into_iter()
            .map(|(ms, e)| (Duration::from_millis(ms), e)),
    )
}

fn paused(node: &str) -> Event {
    Event::NodePaused { node: node.into() }
}

fn resumed(node: &str) -> Event {
    Event::NodeResumed { node: node.into() }
}

#[test]
fn a_frozen_nodes_task_resuming_while_it_runs_elsewhere_must_be_stopped_at_once() {
    let frozen_then_stopped_late = timed(vec![
        (0, started("a", "t", true, false)),
        (1_000, paused("a")),
        (9_000, started("b", "t", true, false)),
        (12_000, resumed("a")),
        (12_500, stopped("a", "t", StopReason::Stopped)),
    ]);
    let v = all(&frozen_then_stopped_late);
    assert!(
        matches!(v.as_slice(), [Violation::ExclusiveTaskOnTwoNodes { running_on, started_on, .. }]
            if running_on == "b" && started_on == "a"),
        "{v:?}"
    );
    let never_stopped = timed(vec![
        (0, started("a", "t", true, false)),
        (1_000, paused("a")),
        (9_000, started("b", "t", true, false)),
        (12_000, resumed("a")),
        (20_000, Event::Healed),
    ]);
    assert_eq!(all(&never_stopped).len(), 1);
}

#[test]
fn a_frozen_nodes_task_stopped_as_its_host_resumes_is_not_on_two_nodes() {
    let h = timed(vec![
        (0, started("a", "t", true, false)),
        (1_000, paused("a")),
        (9_000, started("b", "t", true, false)),
        (12_000, resumed("a")),
        (12_010, stopped("a", "t", StopReason::Stopped)),
        (20_000, Event::Healed),
    ]);
    assert!(all(&h).is_empty(), "{:?}", all(&h));
    // A pause does not excuse a start elsewhere after the node resumed.
    let after = timed(vec![
        (0, started("a", "t", true, false)),
        (1_000, paused("a")),
        (2_000, resumed("a")),
        (3_000, started("b", "t", true, false)),
    ]);
    assert_eq!(all(&after).len(), 1);
}

/// Seeds 5309 and 6198 of the federation world: the region that took the
/// task over while its node was frozen started it in the very tick the
/// node woke; the resumed agent stopped its own copy in that tick.
#[test]
fn a_start_elsewhere_in_the_tick_a_frozen_node_wakes_owes_the_same_stop_by_the_same_deadline() {
    let stopped_in_time = timed(vec![
        (0, started("a", "t", true, false)),
        (1_000, paused("a")),
        (9_000, resumed("a")),
        (9_000, started("b", "t", true, false)),
        (9_000, stopped("a", "t", StopReason::Stopped)),
        (20_000, Event::Healed),
    ]);
    assert!(
        all(&stopped_in_time).is_empty(),
        "{:?}",
        all(&stopped_in_time)
    );
    let stopped_late = timed(vec![
        (0, started("a", "t", true, false)),
        (1_000, paused("a")),
        (9_000, resumed("a")),
        (9_050, started("b", "t", true, false)),
        (9_200, stopped("a", "t", StopReason::Stopped)),
        (20_000, Event::Healed),
    ]);
    let v = all(&stopped_late);
    assert!(
        matches!(v.as_slice(), [Violation::ExclusiveTaskOnTwoNodes { running_on, started_on, .. }]
            if running_on == "b" && started_on == "a"),
        "{v:?}"
    );
}
