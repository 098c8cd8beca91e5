//! The view structs a tier hands to the console.
//!
//! Owns the shape of what the pages show: plain values already in the
//! operator's terms (state names, millisecond times), serialisable so the
//! same data is also served as JSON. Must never carry store records or
//! anything a tier would have to import the other tier to build.

use serde::{Deserialize, Serialize};

/// Who serves a regional console.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionIdentity {
    /// Region name.
    pub region: String,
    /// Name of the replica serving the page.
    pub replica: String,
    /// Shard count of the current layout.
    pub shard_count: u32,
    /// Whether the region is linked to a global tier (region drain works).
    pub linked: bool,
}

/// One shard and its leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardView {
    pub shard: u32,
    /// Replica name of the lease holder; empty when nobody holds it.
    pub leader: String,
    /// Lease epoch (grows on every change of leader).
    pub epoch: u64,
    /// How long the current leader has held the lease, as far as the
    /// serving replica has observed (ms); 0 when unknown.
    pub held_for_ms: u64,
    /// Time left before the lease expires (ms); 0 when expired or released.
    pub expires_in_ms: u64,
}

/// Operator state of a node, most significant first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Ready,
    Suspect,
    Dead,
    Cordoned,
    Draining,
}

impl NodeState {
    /// The name shown in the page (and in `data-state`).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Suspect => "suspect",
            NodeState::Dead => "dead",
            NodeState::Cordoned => "cordoned",
            NodeState::Draining => "draining",
        }
    }
}

/// A resource amount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
}

/// One node of the region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node_id: String,
    pub zone: String,
    pub shard: u32,
    pub state: NodeState,
    /// Liveness alone (ready, suspect, dead), under a cordon or drain.
    pub liveness: NodeState,
    pub capacity: Amount,
    pub usage: Amount,
    pub running_tasks: u32,
    pub epoch: u64,
    /// Reason of the last cordon or drain.
    pub reason: String,
}

/// Pending work of one priority lane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneView {
    /// Job priority of the lane (higher is placed first).
    pub priority: i32,
    /// Jobs with pending tasks in the lane.
    pub jobs: u64,
    /// Pending tasks in the lane.
    pub tasks: u64,
}

/// One sample of placement activity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementSample {
    /// Wall time of the sample (ms).
    pub at_unix_ms: u64,
    /// Bindings committed per second over the sample interval.
    pub bindings_per_second: f64,
    /// Mean placement round latency over the interval (ms); `None` when no
    /// round ran.
    pub latency_ms: Option<f64>,
}

/// Kind of a recent event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    LeaderChange,
    FencingRejection,
    Preemption,
    NodeDeath,
    NodeSuspect,
    NodeState,
    Action,
}

impl EventKind {
    /// Short label shown in the page.
    pub fn label(self) -> &'static str {
        match self {
            EventKind::LeaderChange => "leader",
            EventKind::FencingRejection => "fenced",
            EventKind::Preemption => "preempt",
            EventKind::NodeDeath => "node dead",
            EventKind::NodeSuspect => "suspect",
            EventKind::NodeState => "node",
            EventKind::Action => "action",
        }
    }
}

/// One recent event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    pub at_unix_ms: u64,
    pub kind: EventKind,
    pub message: String,
}

/// A node action offered on the regional console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeAction {
    Cordon,
    Uncordon,
    Drain,
}

impl NodeAction {
    /// Parses the action segment of the URL.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cordon" => Some(NodeAction::Cordon),
            "uncordon" => Some(NodeAction::Uncordon),
            "drain" => Some(NodeAction::Drain),
            _ => None,
        }
    }

    /// The URL segment and button label.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAction::Cordon => "cordon",
            NodeAction::Uncordon => "uncordon",
            NodeAction::Drain => "drain",
        }
    }
}

/// What an action did, in one line for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub message: String,
}

/// A job of the region whose tasks wait for a node, with the reason its
/// placer found (`Job.waiting_reason`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingJobView {
    pub job_id: String,
    pub tenant: String,
    pub priority: i32,
    pub task_count: u32,
    /// Tasks not placed yet.
    pub pending_tasks: u32,
    /// `0/3 nodes: 2 do not match real=true, 1 have too little cpu`.
    pub reason: String,
}

/// Everything the regional console shows, in one consistent sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionSnapshot {
    pub identity: RegionIdentity,
    pub generated_at_unix_ms: u64,
    pub shards: Vec<ShardView>,
    pub nodes: Vec<NodeView>,
    pub lanes: Vec<LaneView>,
    /// Jobs whose tasks wait for a node, highest priority first.
    #[serde(default)]
    pub waiting: Vec<WaitingJobView>,
    /// Oldest first.
    pub placement: Vec<PlacementSample>,
    /// Newest first.
    pub events: Vec<EventView>,
}

/// One region as the global tier sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSummary {
    pub name: String,
    /// `ready` or `unreachable`.
    pub lease_state: String,
    pub lease_epoch: u64,
    /// Time left on the region lease (ms); 0 when expired.
    pub lease_expires_in_ms: u64,
    pub leader: String,
    pub draining: bool,
    pub evacuating: bool,
    pub capacity: Amount,
    /// Capacity in use (capacity minus free, from the last report).
    pub used: Amount,
    pub nodes_ready: u32,
    pub nodes_total: u32,
    pub assigned_jobs: u64,
    pub pending_tasks: u64,
    pub running_tasks: u64,
    /// Age of the last capacity report (ms); `None` when never reported.
    pub report_age_ms: Option<u64>,
}

/// Job counts of one tenant, by state name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantJobs {
    pub tenant: String,
    /// `(state, count)`, states in lifecycle order, zero counts left out.
    pub by_state: Vec<(String, u64)>,
    pub total: u64,
}

/// One job in a list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRow {
    pub job_id: String,
    pub name: String,
    pub tenant: String,
    pub state: String,
    pub region: String,
    pub priority: i32,
    pub task_count: u32,
    pub tasks_done: u32,
    pub created_at_unix_ms: u64,
    /// Why the job waits (`Job.waiting_reason`); empty when nothing waits.
    #[serde(default)]
    pub waiting_reason: String,
    /// True while held (HoldJob): not routed until released.
    #[serde(default)]
    pub held: bool,
    /// How many jobs this job names as dependencies.
    #[serde(default)]
    pub dependencies: u32,
    /// Kept at the global tier because a dependency is not met yet (as the
    /// tier judges it; not set for a held job).
    #[serde(default)]
    pub blocked: bool,
}

impl JobRow {
    /// Still at the global tier because a dependency is not met yet.
    pub fn waits_on_dependencies(&self) -> bool {
        self.blocked && !self.held
    }
}

/// Everything the federation overview shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationSnapshot {
    /// Name of the global replica serving the page.
    pub replica: String,
    /// Whether that replica is the leader.
    pub leader: bool,
    pub generated_at_unix_ms: u64,
    pub regions: Vec<RegionSummary>,
    /// `(state, count)` over the jobs scanned, lifecycle order.
    pub jobs_by_state: Vec<(String, u64)>,
    pub tenants: Vec<TenantJobs>,
    /// Jobs scanned for the counts (the overview caps the scan).
    pub jobs_scanned: u64,
    /// True when there were more jobs than the scan covered.
    pub scan_truncated: bool,
    /// Most recent jobs, newest first.
    pub recent: Vec<JobRow>,
    /// Jobs kept at the global tier by a hold or unmet dependencies, among
    /// the jobs scanned, oldest first (at most a page of them).
    #[serde(default)]
    pub gated: Vec<JobRow>,
}

/// One task of a job, with the attempt's times.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    pub index: u32,
    pub state: String,
    pub region: String,
    pub node: String,
    pub attempt: u32,
    pub placed_at_unix_ms: u64,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: u64,
    pub exit_code: Option<i32>,
    pub message: String,
}

/// One recorded change of a job's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRow {
    pub at_unix_ms: u64,
    pub from: String,
    pub to: String,
    pub region: String,
    pub epoch: u64,
    pub reason: String,
}

/// A job with its tasks and history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDetail {
    pub job: JobRow,
    pub request_id: String,
    pub failure_reason: String,
    pub assignment_epoch: u64,
    pub cancel_requested: bool,
    pub updated_at_unix_ms: u64,
    pub tasks: Vec<TaskRow>,
    pub history: Vec<TransitionRow>,
    /// Reason given with the hold; empty when not held or none was given.
    #[serde(default)]
    pub hold_reason: String,
    /// The jobs this job waits for, in the spec's order, each judged now.
    #[serde(default)]
    pub dependencies: Vec<DependencyRow>,
    /// Jobs waiting on this one while it has not ended (their edges are
    /// forgotten once its end has been judged for them).
    #[serde(default)]
    pub dependents: Vec<String>,
    /// True when there were more dependents than listed.
    #[serde(default)]
    pub dependents_truncated: bool,
    /// `(task state, count)` over every task of the job, in lifecycle order
    /// (`Job.task_counts`), for a job of any size.
    #[serde(default)]
    pub task_counts: Vec<(String, u32)>,
    /// Most tasks of an array run at once; 0 when not capped.
    #[serde(default)]
    pub parallelism: u32,
}

/// Which page of a job's tasks to list (`ListJobTasks`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPageQuery {
    /// Only tasks in these states (names as in [`TaskRow::state`]); empty
    /// means every state.
    pub states: Vec<String>,
    /// Token of the page, as the previous page gave it; empty for the first.
    pub page_token: String,
    /// Most tasks on the page.
    pub page_size: u32,
}

/// One page of a job's tasks, as the job's region holds them now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPage {
    /// Tasks of the page, in index order.
    pub tasks: Vec<TaskRow>,
    /// Token of the next page; empty when this is the last.
    pub next_page_token: String,
}

/// Whether one dependency is met, as the global tier judges it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyStatus {
    /// The condition holds.
    Met,
    /// It may still hold: the named job has not ended.
    #[default]
    Pending,
    /// It can never hold: the named job ended otherwise, or is gone.
    Never,
}

impl DependencyStatus {
    /// The name shown in the page (and in `data-status`).
    pub fn as_str(self) -> &'static str {
        match self {
            DependencyStatus::Met => "met",
            DependencyStatus::Pending => "pending",
            DependencyStatus::Never => "never",
        }
    }
}

/// One job a job waits for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyRow {
    /// The job named.
    pub job_id: String,
    /// `after_ok`, `after_any` or `after_failed`.
    pub condition: String,
    /// The named job's state now; `removed` once past the retention period,
    /// `unknown` when not even its tombstone is left.
    pub job_state: String,
    pub status: DependencyStatus,
    /// What the judgement says: what it waits for, or why never.
    pub reason: String,
}

/// One schedule of periodic jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRow {
    pub schedule_id: String,
    pub tenant: String,
    /// Name of the job each tick creates.
    pub job_name: String,
    /// Five-field cron expression.
    pub cron: String,
    /// IANA time zone the expression is read in; `UTC` when none was given.
    pub time_zone: String,
    /// `allow`, `forbid` or `replace`.
    pub overlap: String,
    /// `run_once` or `skip`.
    pub missed: String,
    /// How late a tick may still start (ms).
    pub starting_deadline_ms: u64,
    pub paused: bool,
    pub created_at_unix_ms: u64,
    /// The next tick acted on; 0 while paused.
    pub next_tick_unix_ms: u64,
    /// The last tick handled; 0 before the first.
    pub last_tick_unix_ms: u64,
    /// The job of the last tick that created one; empty before.
    pub last_job_id: String,
    pub last_run_tick_unix_ms: u64,
    /// What the last tick did.
    pub last_outcome: String,
    /// Ticks never run (missed in an outage, skipped by the overlap policy).
    pub skipped_ticks: u64,
}

/// A schedule with the jobs its ticks created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleDetail {
    pub schedule: ScheduleRow,
    /// The latest runs, newest first.
    pub runs: Vec<JobRow>,
    /// True when the schedule has more runs than the page lists.
    pub runs_truncated: bool,
}

/// What the usage page asks for: a range ending now, optionally one tenant
/// or one region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageQuery {
    /// Empty for every tenant.
    pub tenant: String,
    /// Empty for every region.
    pub region: String,
    /// Start of the range (Unix ms); the tier rounds it down to the hour.
    pub since_unix_ms: u64,
    /// End of the range (Unix ms); 0 means now.
    pub until_unix_ms: u64,
}

/// Usage of one tenant in one region over a range or one hour of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub tenant: String,
    pub region: String,
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    /// Allocated CPU times run time, core-seconds.
    pub cpu_seconds: f64,
    /// Allocated memory times run time, GiB-seconds.
    pub memory_gib_seconds: f64,
    /// Allocated GPUs times run time, GPU-seconds.
    pub gpu_seconds: f64,
    /// Task attempts that ran, retries included.
    pub tasks_run: u64,
    /// Their total run time (ms).
    pub task_run_ms: u64,
    /// Jobs whose wait (submit to first task running) is counted.
    pub wait_jobs: u64,
    pub wait_p50_ms: u64,
    pub wait_p90_ms: u64,
    pub wait_p99_ms: u64,
    pub wait_max_ms: u64,
    pub wait_mean_ms: u64,
}

/// Usage over a range: per tenant and region, the total, and per hour.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageView {
    /// The range covered, after the tier rounded it to hours.
    pub since_unix_ms: u64,
    pub until_unix_ms: u64,
    /// One row per (tenant, region) with usage, by tenant then region.
    pub records: Vec<UsageRow>,
    /// The sum over `records`.
    pub total: UsageRow,
    /// One row per (tenant, region, hour) with usage, by hour.
    pub hours: Vec<UsageRow>,
}

/// An action on a schedule offered on its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleAction {
    Pause,
    Resume,
    Delete,
}

impl ScheduleAction {
    /// Parses the action segment of the URL.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(ScheduleAction::Pause),
            "resume" => Some(ScheduleAction::Resume),
            "delete" => Some(ScheduleAction::Delete),
            _ => None,
        }
    }

    /// The URL segment.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleAction::Pause => "pause",
            ScheduleAction::Resume => "resume",
            ScheduleAction::Delete => "delete",
        }
    }
}
