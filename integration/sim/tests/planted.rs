//! Planted bugs, each caught by the world of several regions within its CI
//! seeds (docs/simulation.md, "Planted bugs"): one per invariant the world
//! can see break (7.1, 7.2, 7.3, 7.5, 7.6, 7.7; that document says why
//! 7.4 has none).
//!
//! Each test turns one [`Bug`] on for its runs of
//! [`SimConfig::federation()`], goes through the CI seeds in order and
//! stops at the first seed whose history the checker finds breaking that
//! bug's invariant. A bug no CI seed catches fails its test: the world
//! would then pass the invariant without looking at it.

#![cfg(feature = "planted-bugs-for-tests")]

use meridian_sim::world::{SimConfig, run};
use meridian_sim::{Bug, Violation};

/// The seeds `tests/federation.rs` runs in CI.
const CI_SEEDS: u64 = 100;

/// The first CI seed at which the federation world, with `bug` on, reports
/// a violation `breaks` accepts; panics naming the bug if none does.
fn first_seed_catching(bug: Bug, breaks: fn(&Violation) -> bool) -> u64 {
    let cfg = SimConfig {
        planted_bug: Some(bug),
        ..SimConfig::federation()
    };
    for seed in 0..CI_SEEDS {
        let outcome = run(seed, &cfg).expect("the run completes");
        let caught: Vec<&Violation> = outcome.violations.iter().filter(|v| breaks(v)).collect();
        if let Some(first) = caught.first() {
            eprintln!(
                "{bug:?} caught at seed {seed}: {} violation(s) of its invariant, first: {first}",
                caught.len()
            );
            return seed;
        }
    }
    panic!("no CI seed of the federation world caught the planted bug {bug:?}");
}

/// 7.1: an agent that keeps failover tasks past the region lease still
/// runs an exclusive task of a lost region when another region starts it.
#[test]
fn an_agent_ignoring_its_region_lease_is_caught_within_the_ci_seeds() {
    first_seed_catching(Bug::AgentIgnoresRegionLease, |v| {
        matches!(v, Violation::ExclusiveTaskOnTwoNodes { .. })
    });
}

/// 7.7: an agent that stops `keep_running` tasks when the region lease
/// runs out stops them while the control plane is down.
#[test]
fn an_agent_stopping_keep_running_tasks_on_lease_loss_is_caught_within_the_ci_seeds() {
    first_seed_catching(Bug::AgentStopsKeepRunningOnLeaseLoss, |v| {
        matches!(v, Violation::KeepRunningTaskStopped { .. })
    });
}

/// 7.2: a global tier that does not look a request id up makes a second
/// job when the client submits the same request again.
#[test]
fn a_submit_that_ignores_its_request_id_is_caught_within_the_ci_seeds() {
    first_seed_catching(Bug::SubmitIgnoresRequestId, |v| {
        matches!(v, Violation::RequestIdCreatedTwoJobs { .. })
    });
}

/// 7.6: a task its agent stopped for the lease, taken as ended for good,
/// leaves its job unconverged after the heal.
#[test]
fn a_region_taking_an_agents_own_stop_as_final_is_caught_within_the_ci_seeds() {
    first_seed_catching(Bug::AgentStopTakenAsFinal, |v| {
        matches!(v, Violation::JobDidNotConverge { .. })
    });
}

/// 7.3: the binding commit without its shard fence check (the planted bug
/// of `tests/simulation.rs`), caught in the federation world too.
#[cfg(feature = "unfenced-writes-for-tests")]
#[test]
fn a_binding_commit_without_its_fence_check_is_caught_within_the_federation_ci_seeds() {
    let cfg = SimConfig {
        unfenced_binding_commit: true,
        ..SimConfig::federation()
    };
    let caught = (0..CI_SEEDS).find_map(|seed| {
        let outcome = run(seed, &cfg).expect("the run completes");
        outcome
            .violations
            .into_iter()
            .find(|v| matches!(v, Violation::FencedWriteCommitted { .. }))
            .map(|v| (seed, v))
    });
    let (seed, first) =
        caught.expect("no CI seed of the federation world caught the unfenced binding commit");
    eprintln!("the unfenced binding commit caught at seed {seed}: {first}");
}

/// A planted bug is per run: the federation's first seeds are clean again
/// after a run with one on.
#[test]
fn a_planted_bug_stays_off_in_the_runs_that_do_not_ask_for_it() {
    let buggy = SimConfig {
        planted_bug: Some(Bug::AgentStopsKeepRunningOnLeaseLoss),
        ..SimConfig::federation()
    };
    run(0, &buggy).expect("the run completes");
    for seed in 0..3 {
        let outcome = run(seed, &SimConfig::federation()).expect("the run completes");
        assert!(
            outcome.violations.is_empty(),
            "seed {seed} broke invariants after a planted-bug run: {:?}",
            outcome.violations
        );
    }
}

/// 7.5: a placer that leaves memory out of its fit check puts a big task
/// beside another on one node, whose memory is then overcommitted.
#[test]
fn a_placer_ignoring_memory_is_caught_within_the_ci_seeds() {
    first_seed_catching(Bug::PlacerIgnoresMemory, |v| {
        matches!(v, Violation::NodeOvercommitted { .. })
    });
}
