//! Thousands of jobs through a whole federation of real processes, as
//! `meridian dev` runs it: 2 global replicas, 3 regions of 2 scheduler
//! replicas (4 shards each), per region one agent hosting simulated nodes
//! and one agent running real processes.
//!
//! Runs alone (`.config/nextest.toml`).

use crate::federation;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use federation::{Dev, Sizes, Tracker, list_all, sh_job, simulated_job, states, submit_all};
use meridian_proto::v1;

/// Jobs of the mixed run.
const JOBS: usize = 2_000;
/// Every this-many-th job runs a real process; the rest are simulated.
const REAL_EVERY: usize = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_mixed_jobs_through_the_federation_all_succeed_once_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let dev = Dev::start(
        &dir.path().join("dev"),
        Sizes {
            regions: 3,
            shards: 4,
            simulated_nodes: 100,
            base_port: 17100,
        },
    );
    let up = started.elapsed();
    let specs: Vec<v1::JobSpec> = (0..JOBS)
        .map(|i| {
            if i % REAL_EVERY == 0 {
                sh_job(&format!("real-{i}"), "echo \"$MERIDIAN_TASK_ID\"", false)
            } else {
                simulated_job(&format!("sim-{i}"), 20 + (i as u64 % 10) * 20)
            }
        })
        .collect();
    let real = specs
        .iter()
        .filter(|s| {
            matches!(
                s.task.as_ref().and_then(|t| t.kind.as_ref()),
                Some(v1::task_template::Kind::Command(_))
            )
        })
        .count();
    let mut client = dev.client();
    let mut tracker = Tracker::start(dev.client()).await;
    let submit_started = Instant::now();
    let acked = submit_all(&mut client, "mixed", specs, 100).await;
    let submitted_in = submit_started.elapsed();
    assert_eq!(acked.len(), JOBS, "every request was acknowledged");
    let ids: BTreeSet<String> = acked.values().cloned().collect();
    assert_eq!(
        ids.len(),
        JOBS,
        "distinct job ids == submitted request count"
    );

    let (jobs, finished_in) = tracker
        .await_all_final(&mut client, &ids, Duration::from_secs(240))
        .await;
    let counts = states(&jobs);
    println!(
        "2,000 mixed jobs ({real} real, {} simulated): federation up in {:.1} s, \
         submitted in {:.2} s, all final {:.1} s after the last ack; states {counts:?}",
        JOBS - real,
        up.as_secs_f64(),
        submitted_in.as_secs_f64(),
        finished_in.as_secs_f64()
    );
    let not_succeeded: Vec<&v1::Job> = ids
        .iter()
        .filter_map(|id| jobs.get(id))
        .filter(|j| j.state != v1::JobState::Succeeded as i32)
        .take(5)
        .collect();
    assert!(
        not_succeeded.is_empty(),
        "jobs that did not succeed (first 5): {not_succeeded:#?}"
    );
    // Nothing but the acknowledged jobs exists: no request id made two.
    let listed = list_all(&mut client).await;
    assert_eq!(listed.len(), JOBS, "jobs listed == submitted request count");
    assert_eq!(listed.keys().cloned().collect::<BTreeSet<_>>(), ids);
}
