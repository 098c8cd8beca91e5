//! The node agent against the real tiers, all as processes: a `meridian
//! global`, a `meridian regional --global ADDR` and a `meridian agent` (real
//! node, real processes). Jobs go in through the Federation API; what the
//! agent's processes do comes back out through it.
//!
//! - a real `sh` task's non-zero exit fails the job at the global tier with
//!   the task's exit code, and its output is served by `GetTaskLogs`;
//! - cancelling a job kills the task's whole process tree (the shell and
//!   the background child it started);
//! - static stability: with the regional process SIGKILLed, a `keep_running`
//!   task keeps running (it finishes while the region is away), and its
//!   final status reaches the global tier once the region is restarted on
//!   the same store;
//! - simulated nodes advertise `meridian.io/simulated=true`, a real node
//!   does not;
//! - an agent stopped with SIGTERM shuts down: it stops its running task,
//!   exits 0, and leaves none of its cgroups behind.
//!
//! Nothing waits by sleeping or polling: progress is awaited on process
//! output (the line each agent logs once a node is registered), on the
//! global tier's `WatchJobs` stream, on a FIFO a task writes its pids into,
//! and on pidfds for the task's processes to exit; the failure guard only
//! stops a hang.

use crate::support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_cli::dev::line::{AgentLine, GlobalLine, LOOPBACK_ANY_PORT, RegionalLine};
use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::region_admin_client::RegionAdminClient;
use support::{Agent, Global, Launch, Proc, Regional, Stderr};
use tonic::transport::Channel;

/// Failure guard only: no step waits this long when things work.
const GUARD: Duration = Duration::from_secs(90);
/// Log filter of the agents: warnings, and the line each node logs once the
/// region has registered it (what [`Tiers::await_nodes`] waits for).
const AGENT_LOG: &str = "warn,meridian_agent::node=info";
const GIB: u64 = 1 << 30;

/// How this file's processes run: SIGINT first when dropped (an agent
/// then stops its tasks), SIGKILL if they linger.
fn stop_gently(launch: Launch) -> Launch {
    launch.interrupt_on_drop()
}

/// A `meridian global`, and a `meridian regional` (region `r1`) on a fixed
/// port and store so that it can be killed and restarted.
struct Tiers {
    _global: Option<Proc>,
    region_proc: Option<Proc>,
    global: Option<String>,
    region_addr: SocketAddr,
    region_store: String,
    dir: tempfile::TempDir,
}

impl Tiers {
    fn start(with_global: bool) -> Tiers {
        let dir = tempfile::tempdir().expect("temp dir");
        let (global_proc, global) = if with_global {
            let store = format!("sqlite:{}", dir.path().join("global.db").display());
            let line = GlobalLine::new(store, LOOPBACK_ANY_PORT);
            let g = Global::start_with(&line, stop_gently);
            (Some(g.proc), Some(g.grpc))
        } else {
            (None, None)
        };
        let mut tiers = Tiers {
            _global: global_proc,
            region_proc: None,
            global,
            region_addr: support::free_loopback_addr(),
            region_store: format!("sqlite:{}", dir.path().join("r1.db").display()),
            dir,
        };
        tiers.start_region();
        tiers
    }

    fn start_region(&mut self) {
        let mut line = RegionalLine::new("r1", &self.region_store, self.region_addr, 1)
            .shard_lease_ms(500)
            // The outage of the static stability test must not make the
            // node dead once the region is back.
            .node_timeout_ms(60_000);
        line.global = self.global.clone();
        self.region_proc = Some(Regional::start_with(&line, stop_gently).proc);
    }

    /// SIGKILL: no shutdown of any kind.
    fn kill_region(&mut self) {
        if let Some(mut p) = self.region_proc.take() {
            p.kill_now();
        }
    }

    fn region_url(&self) -> String {
        format!("http://{}", self.region_addr)
    }

    /// The command line of a `meridian agent` of node `node` against the
    /// region: 2 cores, 4 GiB.
    fn agent_line(&self, node: &str) -> AgentLine {
        let work = self.dir.path().join(format!("agent-{node}"));
        AgentLine::new(vec![self.region_url()], node, work, 2.0, 4 * GIB)
    }

    /// Starts a `meridian agent` from `line`, its log captured.
    fn agent(&self, line: AgentLine) -> Proc {
        Agent::start_with(&line, |l| {
            stop_gently(l)
                .env("RUST_LOG", AGENT_LOG)
                .stderr(Stderr::Capture)
        })
        .proc
    }

    /// The directory tasks write their pids into (FIFOs the test makes in
    /// it). The agent runs as root, so its tasks run as `nobody`: they must
    /// reach and write the directory the test reads.
    fn pid_dir(&self) -> PathBuf {
        let pids = self.dir.path().join("pids");
        std::fs::create_dir_all(&pids).expect("pid dir");
        open_to_tasks(self.dir.path(), 0o711);
        open_to_tasks(&pids, 0o777);
        pids
    }

    async fn federation(&self) -> FederationClient<Channel> {
        FederationClient::connect(self.global.clone().expect("a global tier"))
            .await
            .expect("connect to the global tier")
    }

    /// The region's nodes once every one of `nodes` is registered: each
    /// agent logs a node's registration once the region has answered it
    /// (the region stores the node READY before it answers), and the wait
    /// is on those lines; then the region is asked once.
    async fn await_nodes(&self, nodes: &[(&Proc, &str)]) -> Vec<v1::NodeInfo> {
        for (agent, node) in nodes {
            let field = format!("node={node}");
            agent
                .log()
                .until(&["registered", &field], GUARD)
                .await
                .unwrap_or_else(|e| panic!("{node} registered: {e}"));
        }
        let mut admin = RegionAdminClient::connect(self.region_url())
            .await
            .expect("connect to the region");
        let listed = admin
            .list_nodes(v1::ListNodesRequest::default())
            .await
            .expect("list nodes")
            .into_inner()
            .nodes;
        for (_, node) in nodes {
            assert!(
                listed
                    .iter()
                    .any(|n| n.node_id == *node && n.state == v1::NodeState::Ready as i32),
                "{node} is READY once registered: {listed:?}"
            );
        }
        listed
    }
}

fn sh_job(
    name: &str,
    script: &str,
    env: &[(&str, &str)],
    policy: v1::RegionLossPolicy,
) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        tenant: "team-a".into(),
        task_count: 1,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Command(v1::Command {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                working_dir: String::new(),
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis: 500,
            memory_bytes: GIB / 4,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        on_region_loss: policy as i32,
        retry: Some(v1::RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }),
        stop_grace_period_ms: 2_000,
        ..Default::default()
    }
}

async fn submit(federation: &mut FederationClient<Channel>, spec: v1::JobSpec) -> String {
    federation
        .submit_job(v1::SubmitJobRequest {
            request_id: format!("req-{}", spec.name),
            spec: Some(spec),
        })
        .await
        .expect("submit")
        .into_inner()
        .job_id
}

async fn watch(federation: &mut FederationClient<Channel>) -> tonic::Streaming<v1::JobEvent> {
    federation
        .watch_jobs(v1::WatchJobsRequest::default())
        .await
        .expect("watch jobs")
        .into_inner()
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

async fn logs(federation: &mut FederationClient<Channel>, job_id: &str) -> v1::GetTaskLogsResponse {
    federation
        .get_task_logs(v1::GetTaskLogsRequest {
            task: Some(v1::TaskId {
                job_id: job_id.into(),
                index: 0,
            }),
            attempt: 0,
            max_bytes: 0,
        })
        .await
        .expect("get task logs")
        .into_inner()
}

/// The pid a task writes into the FIFO at `path`.
async fn read_pid(path: &Path) -> i32 {
    let line = support::wait::fifo_line(path, GUARD).await;
    line.trim()
        .parse()
        .unwrap_or_else(|e| panic!("a pid in {}: {line:?}: {e}", path.display()))
}

/// True while `pid` is a live process (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_task_that_exits_non_zero_fails_its_job_and_its_output_is_served_by_the_global_tier()
{
    let tiers = Tiers::start(true);
    let agent = tiers.agent(tiers.agent_line("node-1"));
    let run = async {
        tiers.await_nodes(&[(&agent, "node-1")]).await;
        let mut federation = tiers.federation().await;
        let mut events = watch(&mut federation).await;
        let job_id = submit(
            &mut federation,
            sh_job(
                "exit3",
                "echo out; echo \"err $GREETING\" >&2; exit 3",
                &[("GREETING", "hello")],
                v1::RegionLossPolicy::Failover,
            ),
        )
        .await;
        await_state(&mut events, &job_id, v1::JobState::Failed).await;

        // The non-zero exit failed the task (no retry) and so the job; the
        // task's exit code and node reach the job at the global tier.
        let job = get_job(&mut federation, &job_id).await;
        println!("job: state {} counts {:?}", job.state, job.task_counts);
        let counts = job.task_counts.expect("task counts");
        assert_eq!(counts.failed, 1, "{counts:?}");
        assert_eq!(counts.succeeded, 0, "{counts:?}");
        let task = job.tasks.first().expect("the task's status");
        assert_eq!(task.exit_code, Some(3), "{task:?}");
        assert_eq!(task.node_id, "node-1", "{task:?}");
        assert!(
            job.failure_reason.contains("task 0"),
            "{}",
            job.failure_reason
        );

        let out = logs(&mut federation, &job_id).await;
        println!(
            "logs: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout_tail),
            String::from_utf8_lossy(&out.stderr_tail)
        );
        assert_eq!(out.node_id, "node-1");
        assert_eq!(out.stdout_tail, b"out\n");
        assert_eq!(out.stderr_tail, b"err hello\n");
        assert!(!out.stdout_truncated && !out.stderr_truncated);
    };
    tokio::time::timeout(GUARD, run)
        .await
        .expect("the task's result reached the global tier in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_job_kills_the_whole_process_tree_of_its_task_on_the_agent() {
    let tiers = Tiers::start(true);
    let agent = tiers.agent(tiers.agent_line("node-1"));
    let pids = tiers.pid_dir();
    // The task writes each pid into a FIFO the test reads: reading is the
    // wait, no file is polled.
    let shell_fifo = support::wait::task_fifo(&pids, "shell");
    let child_fifo = support::wait::task_fifo(&pids, "child");
    let run = async {
        tiers.await_nodes(&[(&agent, "node-1")]).await;
        let mut federation = tiers.federation().await;
        let mut events = watch(&mut federation).await;
        // The shell starts a background child, records both pids, and waits.
        let script = "sleep 1000 & echo $! > \"$PIDS/child\"; echo $$ > \"$PIDS/shell\"; wait";
        let job_id = submit(
            &mut federation,
            sh_job(
                "tree",
                script,
                &[("PIDS", pids.to_str().expect("utf-8 temp dir"))],
                v1::RegionLossPolicy::Failover,
            ),
        )
        .await;
        await_state(&mut events, &job_id, v1::JobState::Running).await;
        // Both FIFOs are open for reading at once: the shell writes the
        // child's pid first and blocks until that one has a reader.
        let (shell, child) = tokio::join!(read_pid(&shell_fifo), read_pid(&child_fifo));
        assert!(alive(shell) && alive(child), "both run before the cancel");

        federation
            .cancel_job(v1::CancelJobRequest {
                job_id: job_id.clone(),
                reason: "test cancel".into(),
            })
            .await
            .expect("cancel");
        await_state(&mut events, &job_id, v1::JobState::Cancelled).await;
        for pid in [shell, child] {
            assert!(
                support::wait::process_exit(pid, GUARD).await,
                "{pid} still runs after the cancel"
            );
        }
        let job = get_job(&mut federation, &job_id).await;
        println!(
            "shell {shell} and child {child} gone; job state {} counts {:?}",
            job.state, job.task_counts
        );
        assert!(job.cancel_requested);
        let counts = job.task_counts.expect("task counts");
        assert_eq!(counts.killed, 1, "{counts:?}");
    };
    tokio::time::timeout(GUARD, run)
        .await
        .expect("the cancel converged in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_running_task_outlives_a_killed_region_and_its_final_status_arrives_after_the_restart()
 {
    let mut tiers = Tiers::start(true);
    let agent = tiers.agent(tiers.agent_line("node-1"));
    let fifo: PathBuf = tiers.dir.path().join("go");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // The task runs as `nobody` (the agent runs as root): it must open it.
    open_to_tasks(tiers.dir.path(), 0o711);
    open_to_tasks(&fifo, 0o666);
    let run = async {
        tiers.await_nodes(&[(&agent, "node-1")]).await;
        let mut federation = tiers.federation().await;
        let mut events = watch(&mut federation).await;
        // Blocks reading the FIFO until the test writes to it.
        let job_id = submit(
            &mut federation,
            sh_job(
                "steady",
                "read line < \"$GO\"; echo \"finished $line\"",
                &[("GO", fifo.to_str().expect("utf-8 temp dir"))],
                v1::RegionLossPolicy::KeepRunning,
            ),
        )
        .await;
        await_state(&mut events, &job_id, v1::JobState::Running).await;

        tiers.kill_region();
        println!("regional process SIGKILLed");

        // Opening the FIFO for writing completes only when the task has it
        // open for reading: the task still runs with the region gone. It
        // then finishes while the region is still away.
        let path = fifo.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .expect("open the FIFO");
            writeln!(f, "ok").expect("write the FIFO");
        })
        .await
        .expect("FIFO writer");
        println!("the keep_running task read from its FIFO with the region down");
        let job = get_job(&mut federation, &job_id).await;
        assert_eq!(
            job.state,
            v1::JobState::Running as i32,
            "no final status can arrive while the region is down: {job:?}"
        );

        tiers.start_region();
        println!("regional process restarted on the same store");
        await_state(&mut events, &job_id, v1::JobState::Succeeded).await;
        let job = get_job(&mut federation, &job_id).await;
        println!(
            "after the restart: job state {} counts {:?}",
            job.state, job.task_counts
        );
        assert_eq!(job.task_counts.expect("task counts").succeeded, 1);
        let out = logs(&mut federation, &job_id).await;
        assert_eq!(out.attempt, 1, "the same attempt, never re-placed");
        assert_eq!(out.node_id, "node-1");
        assert_eq!(out.stdout_tail, b"finished ok\n");
    };
    tokio::time::timeout(GUARD, run)
        .await
        .expect("the final status arrived in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_nodes_advertise_the_simulated_label_and_a_real_node_does_not() {
    let tiers = Tiers::start(false);
    let real = tiers.agent(tiers.agent_line("real").labels("zone=z1"));
    let sim = tiers.agent(tiers.agent_line("sim").simulate(2).labels("zone=z1"));
    let run = async {
        let nodes = tiers
            .await_nodes(&[(&real, "real"), (&sim, "sim-000000"), (&sim, "sim-000001")])
            .await;
        let labels: BTreeMap<String, BTreeMap<String, String>> = nodes
            .into_iter()
            .map(|n| (n.node_id, n.labels.into_iter().collect()))
            .collect();
        println!("{labels:?}");
        assert_eq!(labels["real"].get(meridian_agent_label()), None);
        for sim in ["sim-000000", "sim-000001"] {
            assert_eq!(
                labels[sim].get(meridian_agent_label()).map(String::as_str),
                Some("true")
            );
            assert_eq!(labels[sim]["zone"], "z1");
        }
    };
    tokio::time::timeout(GUARD, run)
        .await
        .expect("the nodes registered in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_stopped_with_sigterm_stops_its_task_and_removes_its_cgroups() {
    let tiers = Tiers::start(true);
    let mut agent = tiers.agent(tiers.agent_line("node-1"));
    let pids = tiers.pid_dir();
    let shell_fifo = support::wait::task_fifo(&pids, "shell");
    let run = async {
        tiers.await_nodes(&[(&agent, "node-1")]).await;
        let mut federation = tiers.federation().await;
        let script = "echo $$ > \"$PIDS/shell\"; exec sleep 1000";
        submit(
            &mut federation,
            sh_job(
                "held",
                script,
                &[("PIDS", pids.to_str().expect("utf-8 temp dir"))],
                v1::RegionLossPolicy::Failover,
            ),
        )
        .await;
        read_pid(&shell_fifo).await
    };
    let shell = tokio::time::timeout(GUARD, run)
        .await
        .expect("the task started in time");
    let cgroups = task_cgroup_dirs(shell);
    println!("task {shell} runs in {cgroups:?}");
    assert!(!cgroups.is_empty(), "the task runs in the agent's cgroups");

    let status = tokio::task::block_in_place(|| agent.stop_with(nix::sys::signal::Signal::SIGTERM));
    assert!(
        status.success(),
        "the agent shut down and exited 0: {status:?}"
    );
    assert!(
        support::wait::process_exit(shell, GUARD).await,
        "the task was stopped with the agent"
    );
    for dir in &cgroups {
        let scope = dir.parent().expect("the agent's scope");
        assert!(!dir.exists(), "{} is removed", dir.display());
        assert!(!scope.exists(), "{} is removed", scope.display());
    }
}

/// The directories of the agent's task cgroups `pid` is in, one per
/// hierarchy, from `/proc/PID/cgroup` and the cgroup mounts.
fn task_cgroup_dirs(pid: i32) -> Vec<PathBuf> {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("the task's cgroups");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !path.contains("/meridian-node-1-") {
            continue;
        }
        // mountinfo: id parent dev root point options... - fstype source super
        let mount = mounts.lines().find_map(|m| {
            let (head, tail) = m.split_once(" - ")?;
            let fields: Vec<&str> = head.split(' ').collect();
            let tail: Vec<&str> = tail.split(' ').collect();
            let fits = match (id, tail.first().copied()) {
                ("0", Some("cgroup2")) => true,
                (_, Some("cgroup")) if id != "0" => tail
                    .get(2)
                    .is_some_and(|o| controllers.split(',').all(|c| o.split(',').any(|x| x == c))),
                _ => false,
            };
            (fits && path.starts_with(fields[3])).then(|| (fields[3], fields[4]))
        });
        if let Some((root, point)) = mount {
            let rel = path[root.len()..].trim_start_matches('/');
            dirs.push(Path::new(point).join(rel));
        }
    }
    dirs
}

/// The label key simulated nodes carry (spelled out: this test checks the
/// wire, not the agent's constant).
fn meridian_agent_label() -> &'static str {
    "meridian.io/simulated"
}

/// Gives `path` the mode `mode`, so that a task running as the agent's
/// unprivileged run-as user can reach what the test shares with it.
fn open_to_tasks(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}
