//! The two scheduler tiers end to end, as real processes: a `meridian global`
//! and a `meridian regional --global ADDR`. Fake agents (this test, speaking
//! the real `AgentLink` proto) register nodes with the region; jobs submitted
//! through the Federation API are routed to the region, bound to the nodes
//! (RUN commands arrive on the agents' assignment streams), and the agents'
//! SUCCEEDED reports flow up to the jobs' state in `GetJob`.
//!
//! Nothing here sleeps to wait for a condition: progress is awaited on the
//! assignment streams and on the global tier's `WatchJobs` stream; a call
//! the region refuses while it does not lead yet is sent again as a real
//! agent sends it, by control's retry rule (`support::retry`).

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use meridian_cli::dev::line::{GlobalLine, LOOPBACK_ANY_PORT, RegionalLine};
use meridian_proto::v1;
use meridian_proto::v1::agent_link_client::AgentLinkClient;
use meridian_proto::v1::federation_client::FederationClient;
use support::{Global, Proc, Regional};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Failure guard only: no step waits this long when things work.
const GUARD: Duration = Duration::from_secs(60);
const GIB: u64 = 1 << 30;

/// One fake agent: registers its node, then forwards every command of its
/// assignment stream to `commands`.
struct FakeAgent {
    node: String,
    epoch: u64,
    client: AgentLinkClient<Channel>,
}

impl FakeAgent {
    async fn register(region: &str, node: &str) -> FakeAgent {
        let (client, epoch) = support::register_node(region, node, "z1", 4).await;
        FakeAgent {
            node: node.into(),
            epoch,
            client,
        }
    }

    /// Opens the assignment stream (retrying while the region has no shard
    /// leader yet) and forwards its commands.
    async fn follow(&self, commands: mpsc::UnboundedSender<(String, v1::AssignmentCommand)>) {
        let request = v1::NodeAssignmentsRequest {
            node_id: self.node.clone(),
            node_epoch: self.epoch,
            cursor: Vec::new(),
        };
        let mut stream =
            support::retry::until_served(&format!("assignments of {}", self.node), || {
                let (mut client, request) = (self.client.clone(), request.clone());
                async move { client.assignments(request).await }
            })
            .await
            .into_inner();
        let node = self.node.clone();
        tokio::spawn(async move {
            while let Ok(Some(cmd)) = stream.message().await {
                if commands.send((node.clone(), cmd)).is_err() {
                    return;
                }
            }
        });
    }

    async fn report(&self, attempt: &v1::TaskAttempt, state: v1::TaskState) {
        let answer = self
            .client
            .clone()
            .report_task_status(v1::ReportTaskStatusRequest {
                node_id: self.node.clone(),
                node_epoch: self.epoch,
                reports: vec![v1::TaskReport {
                    task: Some(attempt.clone()),
                    state: state as i32,
                    exit_code: (state == v1::TaskState::Succeeded).then_some(0),
                    ..Default::default()
                }],
            })
            .await
            .expect("report")
            .into_inner();
        assert_eq!(answer.verdict, v1::Verdict::Accepted as i32);
        assert_eq!(
            answer.results[0].verdict,
            v1::Verdict::Accepted as i32,
            "{:?}",
            answer.results[0]
        );
    }
}

fn spec(tasks: u32) -> v1::JobSpec {
    v1::JobSpec {
        name: "e2e".into(),
        tenant: "team-a".into(),
        task_count: tasks,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Simulated(v1::Simulated {
                duration_ms: 10,
                exit_code: 0,
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis: 500,
            memory_bytes: GIB,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        ..Default::default()
    }
}

/// A running `meridian global` and one `meridian regional` linked to it.
struct Tiers {
    _global: Proc,
    _region: Proc,
    global: String,
    region: String,
    _dir: tempfile::TempDir,
}

impl Tiers {
    fn start() -> Tiers {
        let dir = tempfile::tempdir().expect("temp dir");
        let global_store = format!("sqlite:{}", dir.path().join("global.db").display());
        let region_store = format!("sqlite:{}", dir.path().join("r1.db").display());
        let global = Global::start(&GlobalLine::new(global_store, LOOPBACK_ANY_PORT));
        let region = Regional::start(
            &RegionalLine::new("r1", region_store, LOOPBACK_ANY_PORT, 1)
                .global(&global.grpc)
                .shard_lease_ms(500)
                // The fake agents do not heartbeat: nodes must not be declared dead.
                .node_timeout_ms(600_000),
        );
        Tiers {
            _global: global.proc,
            _region: region.proc,
            global: global.grpc,
            region: region.grpc,
            _dir: dir,
        }
    }

    async fn federation(&self) -> FederationClient<Channel> {
        FederationClient::connect(self.global.clone())
            .await
            .expect("connect to the global tier")
    }
}

/// Awaits the first event of `watch` showing `job_id` in `state`.
async fn await_state(
    watch: &mut tonic::Streaming<v1::JobEvent>,
    job_id: &str,
    state: v1::JobState,
) {
    loop {
        let event = watch
            .message()
            .await
            .expect("watch stream")
            .expect("watch stream open");
        if let Some(job) = event.job
            && job.job_id == job_id
            && job.state == state as i32
        {
            return;
        }
    }
}

/// Waits until every job of `jobs` was seen in `state` (events of one job
/// may come before or after those of another).
async fn await_all(
    watch: &mut tonic::Streaming<v1::JobEvent>,
    jobs: &BTreeSet<String>,
    state: v1::JobState,
) {
    let mut seen = BTreeSet::new();
    while seen.len() < jobs.len() {
        let event = watch
            .message()
            .await
            .expect("watch stream")
            .expect("watch stream open");
        if let Some(job) = event.job
            && jobs.contains(&job.job_id)
            && job.state == state as i32
        {
            seen.insert(job.job_id);
        }
    }
}

async fn get_job(federation: &mut FederationClient<Channel>, job_id: &str) -> v1::Job {
    federation
        .get_job(v1::GetJobRequest {
            job_id: job_id.into(),
        })
        .await
        .expect("get job")
        .into_inner()
        .job
        .expect("job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_submitted_to_the_global_tier_run_on_a_regions_agents_and_their_success_flows_back_up()
{
    let tiers = Tiers::start();

    let run = async {
        let agents = vec![
            FakeAgent::register(&tiers.region, "node-1").await,
            FakeAgent::register(&tiers.region, "node-2").await,
        ];
        let (cmd_tx, mut commands) = mpsc::unbounded_channel();
        for a in &agents {
            a.follow(cmd_tx.clone()).await;
        }
        let mut federation = tiers.federation().await;
        let mut watch = federation
            .watch_jobs(v1::WatchJobsRequest::default())
            .await
            .expect("watch jobs")
            .into_inner();

        let mut jobs: BTreeMap<String, u32> = BTreeMap::new();
        for (i, tasks) in [2u32, 1].into_iter().enumerate() {
            let job_id = federation
                .submit_job(v1::SubmitJobRequest {
                    request_id: format!("req-{i}"),
                    spec: Some(spec(tasks)),
                })
                .await
                .expect("submit")
                .into_inner()
                .job_id;
            jobs.insert(job_id, tasks);
        }

        // Every task gets exactly one RUN, on one of the agents; each agent
        // runs it and reports success.
        let want: usize = jobs.values().map(|n| *n as usize).sum();
        let mut ran: BTreeSet<(String, u32)> = BTreeSet::new();
        while ran.len() < want {
            let (node, cmd) = commands.recv().await.expect("agents' streams open");
            if cmd.kind != v1::CommandKind::Run as i32 {
                continue;
            }
            let attempt = cmd.task.clone().expect("task attempt");
            let task = attempt.task.clone().expect("task id");
            assert!(jobs.contains_key(&task.job_id), "RUN of an unknown job");
            assert_eq!(cmd.node_epoch, 1);
            assert!(cmd.template.is_some(), "a RUN carries the task template");
            assert!(
                ran.insert((task.job_id.clone(), task.index)),
                "task {task:?} sent twice"
            );
            let agent = agents.iter().find(|a| a.node == node).expect("agent");
            agent.report(&attempt, v1::TaskState::Running).await;
            agent.report(&attempt, v1::TaskState::Succeeded).await;
        }

        // The region's status reports move the jobs to SUCCEEDED, in
        // whatever order they finish.
        let ids: BTreeSet<String> = jobs.keys().cloned().collect();
        await_all(&mut watch, &ids, v1::JobState::Succeeded).await;
        for (job_id, tasks) in &jobs {
            let job = get_job(&mut federation, job_id).await;
            assert_eq!(job.state, v1::JobState::Succeeded as i32, "{job:?}");
            assert_eq!(job.region, "r1");
            assert!(job.region_acknowledged);
            let counts = job.task_counts.expect("task counts");
            assert_eq!(counts.succeeded, *tasks, "{counts:?}");
        }
    };
    tokio::time::timeout(GUARD, run)
        .await
        .expect("the federation converged in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_at_the_global_tier_stops_its_task_on_the_agent_and_ends_it_cancelled()
 {
    let tiers = Tiers::start();
    let run = async {
        let agent = FakeAgent::register(&tiers.region, "node-1").await;
        let (cmd_tx, mut commands) = mpsc::unbounded_channel();
        agent.follow(cmd_tx).await;
        let mut federation = tiers.federation().await;
        let mut watch = federation
            .watch_jobs(v1::WatchJobsRequest::default())
            .await
            .expect("watch jobs")
            .into_inner();
        let job_id = federation
            .submit_job(v1::SubmitJobRequest {
                request_id: "req-cancel".into(),
                spec: Some(spec(1)),
            })
            .await
            .expect("submit")
            .into_inner()
            .job_id;

        let run = loop {
            let (_, cmd) = commands.recv().await.expect("stream open");
            if cmd.kind == v1::CommandKind::Run as i32 {
                break cmd;
            }
        };
        let attempt = run.task.expect("task attempt");
        agent.report(&attempt, v1::TaskState::Running).await;
        await_state(&mut watch, &job_id, v1::JobState::Running).await;

        federation
            .cancel_job(v1::CancelJobRequest {
                job_id: job_id.clone(),
                reason: "changed my mind".into(),
            })
            .await
            .expect("cancel");
        let stop = loop {
            let (_, cmd) = commands.recv().await.expect("stream open");
            if cmd.kind == v1::CommandKind::Stop as i32 {
                break cmd;
            }
        };
        assert_eq!(stop.task.as_ref(), Some(&attempt));
        assert_eq!(stop.reason, "cancelled");
        agent.report(&attempt, v1::TaskState::Killed).await;

        await_state(&mut watch, &job_id, v1::JobState::Cancelled).await;
        let job = get_job(&mut federation, &job_id).await;
        assert_eq!(job.state, v1::JobState::Cancelled as i32, "{job:?}");
        assert!(job.cancel_requested);
    };
    tokio::time::timeout(GUARD, run)
        .await
        .expect("the cancel converged in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_fails_on_its_last_attempt_ends_the_job_failed_at_the_global_tier() {
    let tiers = Tiers::start();
    let run = async {
        let agent = FakeAgent::register(&tiers.region, "node-1").await;
        let (cmd_tx, mut commands) = mpsc::unbounded_channel();
        agent.follow(cmd_tx).await;
        let mut federation = tiers.federation().await;
        let mut watch = federation
            .watch_jobs(v1::WatchJobsRequest::default())
            .await
            .expect("watch jobs")
            .into_inner();
        let mut failing = spec(1);
        failing.retry = Some(v1::RetryPolicy {
            max_attempts: 2,
            ..Default::default()
        });
        let job_id = federation
            .submit_job(v1::SubmitJobRequest {
                request_id: "req-fail".into(),
                spec: Some(failing),
            })
            .await
            .expect("submit")
            .into_inner()
            .job_id;

        // Each attempt fails; the region places the task again once.
        let mut attempts = Vec::new();
        while attempts.len() < 2 {
            let (_, cmd) = commands.recv().await.expect("stream open");
            if cmd.kind != v1::CommandKind::Run as i32 {
                continue;
            }
            let attempt = cmd.task.expect("task attempt");
            attempts.push(attempt.attempt);
            agent.report(&attempt, v1::TaskState::Running).await;
            agent.report(&attempt, v1::TaskState::Failed).await;
        }
        assert_eq!(attempts, vec![1, 2]);

        await_state(&mut watch, &job_id, v1::JobState::Failed).await;
        let job = get_job(&mut federation, &job_id).await;
        assert_eq!(job.state, v1::JobState::Failed as i32, "{job:?}");
        assert_eq!(job.task_counts.expect("counts").failed, 1);
    };
    tokio::time::timeout(GUARD, run)
        .await
        .expect("the failure converged in time");
}
