//! Encoding and decoding of the wire types.

use std::collections::BTreeMap;

use meridian_proto::v1::{
    AffinityKind, Command, DependencyCondition, Job, JobDependency, JobSpec, JobState,
    LabelOperator, LabelRequirement, PlacementPolicy, RegionLossPolicy, Resources, RetryPolicy,
    Simulated, TaskAffinity, TaskTemplate, TopologyDomain, job_dependency, task_template,
};
use prost::Message;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn requirement(key: &str, op: LabelOperator, values: &[&str]) -> LabelRequirement {
    LabelRequirement {
        key: key.to_owned(),
        op: op.into(),
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    }
}

/// A spec with every field set to a non-default value.
fn full_spec(kind: task_template::Kind) -> JobSpec {
    JobSpec {
        name: "nightly-etl".to_owned(),
        tenant: "analytics".to_owned(),
        priority: -7,
        labels: map(&[("team", "data"), ("tier", "batch")]),
        task_count: 12,
        parallelism: 4,
        task: Some(TaskTemplate { kind: Some(kind) }),
        resources: Some(Resources {
            cpu_millis: 1500,
            memory_bytes: 2 << 30,
            gpu_count: 2,
            gpu_type: "a100".to_owned(),
        }),
        allowed_regions: vec!["eu-west".to_owned(), "us-east".to_owned()],
        preferred_regions: vec!["eu-west".to_owned()],
        node_constraints: vec![
            requirement("arch", LabelOperator::In, &["amd64", "arm64"]),
            requirement("spot", LabelOperator::NotIn, &["true"]),
            requirement("ssd", LabelOperator::Exists, &[]),
            requirement("legacy", LabelOperator::DoesNotExist, &[]),
        ],
        affinities: vec![
            TaskAffinity {
                kind: AffinityKind::AntiAffinity.into(),
                selector: vec![requirement("team", LabelOperator::In, &["data"])],
                topology: TopologyDomain::Zone.into(),
                required: false,
                weight: 80,
            },
            TaskAffinity {
                kind: AffinityKind::Affinity.into(),
                selector: vec![requirement("cache", LabelOperator::Exists, &[])],
                topology: TopologyDomain::Rack.into(),
                required: true,
                weight: 0,
            },
        ],
        placement: PlacementPolicy::Pack.into(),
        exclusive: true,
        gang: true,
        on_region_loss: RegionLossPolicy::KeepRunning.into(),
        retry: Some(RetryPolicy {
            max_attempts: 5,
            backoff_base_ms: 250,
            backoff_cap_ms: 30_000,
        }),
        stop_grace_period_ms: 15_000,
        dependencies: vec![
            JobDependency {
                condition: DependencyCondition::AfterOk.into(),
                target: Some(job_dependency::Target::JobId("j1-1".to_owned())),
            },
            JobDependency {
                condition: DependencyCondition::AfterFailed.into(),
                target: Some(job_dependency::Target::RequestId("step-a".to_owned())),
            },
        ],
    }
}

fn command() -> task_template::Kind {
    task_template::Kind::Command(Command {
        program: "/usr/bin/etl".to_owned(),
        args: vec!["--date".to_owned(), "2024-01-01".to_owned()],
        env: map(&[("RUST_LOG", "info"), ("MODE", "full")]),
        working_dir: "/srv/etl".to_owned(),
    })
}

#[test]
fn a_fully_populated_job_spec_survives_an_encode_decode_round_trip() {
    let simulated = task_template::Kind::Simulated(Simulated {
        duration_ms: 1234,
        exit_code: 3,
    });
    for spec in [full_spec(command()), full_spec(simulated)] {
        let bytes = spec.encode_to_vec();
        let decoded = JobSpec::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded, spec);
        assert_eq!(decoded.placement(), PlacementPolicy::Pack);
        assert_eq!(decoded.on_region_loss(), RegionLossPolicy::KeepRunning);
        assert!(bytes.len() <= meridian_proto::limits::MAX_JOB_SPEC_BYTES);
    }
}

#[test]
fn equal_specs_encode_to_identical_bytes_whatever_the_map_insertion_order() {
    let a = full_spec(command());
    let mut b = a.clone();
    b.labels = map(&[("tier", "batch"), ("team", "data")]);
    assert_eq!(a.encode_to_vec(), b.encode_to_vec());
}

#[test]
fn a_job_status_view_survives_an_encode_decode_round_trip() {
    use meridian_proto::v1::{JobTransition, TaskCounts, TaskState, TaskStatus};

    let job = Job {
        job_id: "01J0000000000000000000000".to_owned(),
        request_id: "req-1".to_owned(),
        spec: Some(full_spec(command())),
        state: JobState::Running.into(),
        failure_reason: String::new(),
        region: "eu-west".to_owned(),
        assignment_epoch: 3,
        region_acknowledged: true,
        cancel_requested: true,
        cancel_reason: "superseded".to_owned(),
        tasks: vec![TaskStatus {
            index: 0,
            state: TaskState::Failed.into(),
            node_id: "node-17".to_owned(),
            region: "eu-west".to_owned(),
            attempt: 2,
            exit_code: Some(0),
            signal: Some(9),
            message: "killed".to_owned(),
            placed_at_unix_ms: 1,
            started_at_unix_ms: 2,
            finished_at_unix_ms: 3,
            updated_at_unix_ms: 4,
        }],
        task_counts: Some(TaskCounts {
            failed: 1,
            running: 11,
            ..Default::default()
        }),
        history: vec![JobTransition {
            from: JobState::Pending.into(),
            to: JobState::Routed.into(),
            at_unix_ms: 10,
            reason: "routed to eu-west".to_owned(),
            region: "eu-west".to_owned(),
            assignment_epoch: 3,
        }],
        created_at_unix_ms: 5,
        updated_at_unix_ms: 6,
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
        waiting_reason: "0/3 nodes: 3 do not match real=true".to_owned(),
        dependencies: vec![JobDependency {
            condition: DependencyCondition::AfterAny.into(),
            target: Some(job_dependency::Target::JobId("j1-1".to_owned())),
        }],
        held: true,
        hold_reason: "waiting for the data".to_owned(),
        priority: Some(-3),
        has_dependents: true,
    };
    let decoded = Job::decode(job.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, job);
    // An exit code of 0 is distinguishable from "not exited yet".
    assert_eq!(decoded.tasks[0].exit_code, Some(0));
}

#[test]
fn a_fully_populated_schedule_survives_an_encode_decode_round_trip() {
    use meridian_proto::v1::{MissedTickPolicy, OverlapPolicy, Schedule, ScheduleSpec};
    let schedule = Schedule {
        schedule_id: "nightly-etl".to_owned(),
        spec: Some(ScheduleSpec {
            tenant: "analytics".to_owned(),
            cron: "30 2 * * MON-FRI".to_owned(),
            time_zone: "Europe/Paris".to_owned(),
            job: Some(full_spec(command())),
            overlap_policy: OverlapPolicy::Replace.into(),
            missed_tick_policy: MissedTickPolicy::Skip.into(),
            starting_deadline_ms: 300_000,
        }),
        paused: true,
        created_at_unix_ms: 1_700_000_000_000,
        updated_at_unix_ms: 1_700_000_100_000,
        handled_through_unix_ms: 1_700_000_060_000,
        last_tick_unix_ms: 1_700_000_060_000,
        last_job_id: "j0000000002-000000000007".to_owned(),
        last_run_tick_unix_ms: 1_700_000_000_000,
        last_outcome: "created job j0000000002-000000000007".to_owned(),
        skipped_ticks: 3,
        next_tick_unix_ms: 1_700_000_120_000,
    };
    let decoded = Schedule::decode(schedule.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, schedule);
    let spec = decoded.spec.expect("spec");
    assert_eq!(spec.overlap_policy(), OverlapPolicy::Replace);
    assert_eq!(spec.missed_tick_policy(), MissedTickPolicy::Skip);
}
