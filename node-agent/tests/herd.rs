//! Thundering herd: 1,000 simulated agents cut off from their region and
//! then let back in spread their reconnects over the backoff window.
//!
//! Time is a manual clock moved in 100 ms steps; after each step the test
//! waits until every agent woken by that step has either reconnected or
//! started its next backoff (events, not sleeps), so arrivals per step are
//! exact and the run is reproducible from its seed.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeOptions, FakeRegion};
use meridian_agent::{AgentOptions, Host, NodeSpec, Probe};
use meridian_control::{BackoffConfig, ManualClock};
use meridian_proto::v1::Resources;

const AGENTS: usize = 1_000;
const STEP: Duration = Duration::from_millis(100);

/// Advances one step and waits until everyone it woke has settled; returns
/// how many timers fired.
async fn step(clock: &ManualClock, probe: &Probe) -> usize {
    let before = probe.snapshot();
    let fired = clock.advance(STEP);
    probe
        .wait_for(|s| {
            (s.backoffs - before.backoffs) as usize + s.connected.saturating_sub(before.connected)
                >= fired
        })
        .await;
    fired
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_an_outage_spread_over_the_backoff_window() {
    let clock = ManualClock::new();
    let fake = FakeRegion::start(clock.shared(), FakeOptions::default()).await;
    let probe = Arc::new(Probe::default());
    let cap = Duration::from_secs(5);
    let opts = AgentOptions {
        reconnect: BackoffConfig {
            base: Duration::from_millis(100),
            cap,
        },
        seed: 7,
        report_interval: Duration::ZERO,
        ..AgentOptions::default()
    };
    let base = NodeSpec {
        node_id: "herd".into(),
        allocatable: Resources::default(),
        labels: BTreeMap::new(),
        zone: String::new(),
        rack: String::new(),
    };
    let host = Host::simulated(
        &fake.url(),
        &base,
        AGENTS,
        opts,
        clock.shared(),
        probe.clone(),
    )
    .unwrap();
    probe.wait_for(|s| s.connected == AGENTS).await;

    // Cut everyone off and keep them out long enough to reach the cap.
    fake.set_available(false);
    probe.wait_for(|s| s.backing_off == AGENTS).await;
    for _ in 0..(4 * cap.as_millis() / STEP.as_millis()) {
        step(&clock, &probe).await;
    }
    assert_eq!(probe.snapshot().connected, 0);

    // Let them back in and count arrivals per 100 ms step.
    fake.reset_arrivals();
    fake.set_available(true);
    let start = clock.clone();
    let t0 = meridian_control::Clock::now(&start);
    let mut steps = 0;
    while probe.snapshot().connected < AGENTS {
        step(&clock, &probe).await;
        steps += 1;
        assert!(
            steps < 10 * cap.as_millis() / STEP.as_millis(),
            "everyone is back within a few caps"
        );
    }
    let mut bins: BTreeMap<u128, usize> = BTreeMap::new();
    for at in fake.arrivals().values() {
        *bins
            .entry((*at - t0).as_millis().saturating_sub(1) / STEP.as_millis())
            .or_default() += 1;
    }
    let last = *bins.keys().next_back().unwrap();
    let histogram: Vec<usize> = (0..=last)
        .map(|b| bins.get(&b).copied().unwrap_or(0))
        .collect();
    let total: usize = histogram.iter().sum();
    let mean = total as f64 / histogram.len() as f64;
    let peak = *histogram.iter().max().unwrap();
    println!(
        "arrivals per 100 ms after the region came back ({} bins, cap {cap:?}):",
        histogram.len()
    );
    for (i, n) in histogram.iter().enumerate() {
        println!("  {:>5} ms {:>4} {}", i * 100, n, "#".repeat(*n));
    }
    println!(
        "total {total}, mean {mean:.1}/bin, peak {peak} = {:.2}x mean",
        peak as f64 / mean
    );
    assert_eq!(total, AGENTS);
    assert!(
        histogram.len() as u128 >= cap.as_millis() / STEP.as_millis() / 2,
        "spread over the window"
    );
    assert!(
        (peak as f64) < 3.0 * mean,
        "peak {peak} must stay under 3x the mean {mean:.1}"
    );
    host.shutdown().await;
}

/// However long the outage, a node cut off from its region tries again at
/// least once per heartbeat interval the region gave it, never at the
/// reconnect backoff's (longer) cap: the region declares a node dead by the
/// beats it misses, so a node sleeping at the cap through a control-plane
/// failover could be declared dead while alive and able to reach the new
/// leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_node_tries_again_at_least_once_per_heartbeat_interval_not_at_the_backoff_cap() {
    const NODES: usize = 20;
    let clock = ManualClock::new();
    let fake = FakeRegion::start(
        clock.shared(),
        FakeOptions {
            heartbeat_interval_ms: 1_000,
            ..FakeOptions::default()
        },
    )
    .await;
    let probe = Arc::new(Probe::default());
    let opts = AgentOptions {
        reconnect: BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        },
        seed: 11,
        report_interval: Duration::ZERO,
        min_heartbeat: Duration::from_millis(500),
        ..AgentOptions::default()
    };
    let base = NodeSpec {
        node_id: "cut".into(),
        allocatable: Resources::default(),
        labels: BTreeMap::new(),
        zone: String::new(),
        rack: String::new(),
    };
    let host = Host::simulated(
        &fake.url(),
        &base,
        NODES,
        opts,
        clock.shared(),
        probe.clone(),
    )
    .unwrap();
    probe.wait_for(|s| s.connected == NODES).await;

    fake.set_available(false);
    probe.wait_for(|s| s.backing_off == NODES).await;
    // Long enough for the backoff alone to reach its 10 s cap.
    for _ in 0..200 {
        step(&clock, &probe).await;
    }
    let before = probe.snapshot().backoffs;
    for _ in 0..100 {
        step(&clock, &probe).await;
    }
    let tries = probe.snapshot().backoffs - before;
    println!("{tries} tries of {NODES} nodes in 10 s of outage (heartbeat interval 1 s)");
    assert!(
        tries >= (NODES * 10) as u64,
        "every node tries at least once a second: {tries} tries in 10 s"
    );
    host.shutdown().await;
}
