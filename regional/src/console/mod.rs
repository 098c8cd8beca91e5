//! The region replica's side of the operator console: a
//! [`RegionConsoleSource`] fed by a sampler, with actions through
//! `RegionAdmin` and the federation API.
//!
//! Owns the sampler (once a second, slower when a sample is expensive): it
//! lists nodes through the same `RegionAdmin::list_nodes` the CLI uses,
//! observes the shard leases, reads the region view for the pending queue
//! and preemptions, reads the store's bindings counter for the placement
//! rate and this process's metrics for round latency and fencing
//! rejections, and turns differences between samples into recent events.
//! Actions call the `RegionAdmin` methods (node) or the global tier's
//! `DrainRegion` over gRPC (region), like the CLI does. Must never write to
//! the store itself.

mod sign_in;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use meridian_console::view::{
    ActionOutcome, Amount, EventKind, EventView, LaneView, NodeAction, NodeState, NodeView,
    PlacementSample, RegionIdentity, ShardView, WaitingJobView,
};
use meridian_console::{Actor, ConsoleError, RegionConsoleSource};
use meridian_proto::v1;
use meridian_proto::v1::region_admin_server::RegionAdmin;
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;
use tonic::Request;

use crate::agent::RegionApi;
use crate::shard::observe_shard_leases;

/// Samples kept for the charts (five minutes at one a second).
const SAMPLES: usize = 300;
/// Events kept.
const EVENTS: usize = 200;
/// Shortest time between two samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What the console of one replica needs.
#[derive(Clone)]
pub struct ConsoleDeps {
    /// The replica's API services (the console calls `RegionAdmin` on it).
    pub api: RegionApi,
    /// This replica's name.
    pub replica: String,
    /// Global tier endpoint, for draining the region; `None` standalone.
    pub global: Option<String>,
}

/// The console routes of a region replica; starts its sampler, which stops
/// once the routes are dropped.
pub fn router(
    deps: ConsoleDeps,
    metrics: Option<Arc<PrometheusHandle>>,
) -> Result<axum::Router, ConsoleError> {
    let gate = sign_in::gate(&deps)?;
    let console = Arc::new(RegionConsole {
        deps,
        metrics,
        state: Mutex::new(Tracker::default()),
    });
    tokio::spawn(sample_loop(Arc::downgrade(&console)));
    Ok(meridian_console::region_router(console, &gate))
}

/// The source behind a region replica's console.
pub struct RegionConsole {
    deps: ConsoleDeps,
    metrics: Option<Arc<PrometheusHandle>>,
    state: Mutex<Tracker>,
}

#[derive(Default)]
struct Tracker {
    sampled: bool,
    /// When the node list was last read (see [`RegionConsole::nodes_due`]).
    nodes_at: Option<meridian_control::Instant>,
    shard_count: u32,
    /// shard -> (leader, epoch, first seen at, expires at)
    shards: BTreeMap<u32, (String, u64, u64, u64)>,
    nodes: Vec<NodeView>,
    lanes: Vec<LaneView>,
    waiting: Vec<WaitingJobView>,
    samples: VecDeque<PlacementSample>,
    events: VecDeque<EventView>,
    preempting: BTreeSet<(String, u32)>,
    counters: Option<Counters>,
    error: Option<String>,
}

/// What the sampler reads from the region view's jobs.
struct Queue {
    lanes: BTreeMap<i32, LaneView>,
    preempting: BTreeSet<(String, u32)>,
    waiting: Vec<WaitingJobView>,
}

/// Cumulative figures, compared between samples.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    at_ms: u64,
    bound: u64,
    solve_sum: f64,
    solve_count: f64,
    stale_bindings: f64,
    stale_agents: f64,
}

impl Tracker {
    fn push_event(&mut self, at_unix_ms: u64, kind: EventKind, message: String) {
        self.events.push_front(EventView {
            at_unix_ms,
            kind,
            message,
        });
        self.events.truncate(EVENTS);
    }

    /// Takes the shard leases in, with an event for each change of epoch.
    fn note_leaders(&mut self, leases: Vec<Option<(String, u64, u64)>>, now: u64) {
        let mut shards = BTreeMap::new();
        for (shard, lease) in leases.into_iter().enumerate() {
            let shard = shard as u32;
            let (leader, epoch, expires) = lease.unwrap_or_default();
            let since = match self.shards.get(&shard) {
                Some((l, e, since, _)) if *l == leader && *e == epoch => *since,
                Some((l, e, _, _)) => {
                    if *e != epoch {
                        let msg = format!(
                            "shard {shard}: leader {} → {} (epoch {e} → {epoch})",
                            if l.is_empty() { "none" } else { l },
                            if leader.is_empty() { "none" } else { &leader }
                        );
                        self.push_event(now, EventKind::LeaderChange, msg);
                    }
                    now
                }
                None => now,
            };
            shards.insert(shard, (leader, epoch, since, expires));
        }
        self.shards = shards;
    }

    /// Events for nodes that registered or changed state, and for tasks
    /// newly preempted, since the last sample.
    fn note_node_changes(
        &mut self,
        nodes: &[NodeView],
        preempting: &BTreeSet<(String, u32)>,
        now: u64,
    ) {
        let before: BTreeMap<&str, &NodeView> =
            self.nodes.iter().map(|n| (n.node_id.as_str(), n)).collect();
        let mut events = Vec::new();
        for n in nodes {
            match before.get(n.node_id.as_str()) {
                None => events.push((
                    EventKind::NodeState,
                    format!(
                        "node {} registered (zone {}, epoch {})",
                        n.node_id, n.zone, n.epoch
                    ),
                )),
                Some(b) if b.liveness != n.liveness => {
                    let kind = match n.liveness {
                        NodeState::Dead => EventKind::NodeDeath,
                        NodeState::Suspect => EventKind::NodeSuspect,
                        _ => EventKind::NodeState,
                    };
                    let what = match n.liveness {
                        NodeState::Dead => format!("declared dead (epoch now {})", n.epoch),
                        NodeState::Suspect => "suspect: heartbeats late".to_string(),
                        _ => format!("ready again (epoch {})", n.epoch),
                    };
                    events.push((kind, format!("node {} {what}", n.node_id)));
                }
                Some(b) if b.state != n.state => events.push((
                    EventKind::NodeState,
                    format!(
                        "node {} {} → {}{}",
                        n.node_id,
                        b.state.as_str(),
                        n.state.as_str(),
                        if n.reason.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", n.reason)
                        }
                    ),
                )),
                Some(_) => {}
            }
        }
        for (kind, msg) in events {
            self.push_event(now, kind, msg);
        }
        let fresh: Vec<_> = preempting.difference(&self.preempting).cloned().collect();
        if !fresh.is_empty() {
            let jobs: BTreeSet<&str> = fresh.iter().map(|(j, _)| j.as_str()).collect();
            let msg = format!(
                "{} task(s) preempted for higher-priority work (jobs {})",
                fresh.len(),
                jobs.into_iter().take(5).collect::<Vec<_>>().join(", ")
            );
            self.push_event(now, EventKind::Preemption, msg);
        }
    }

    /// A chart sample (placement rate, round latency) and fencing rejection
    /// events, from the difference with the last sample's figures.
    fn note_rates(&mut self, counters: &Counters, now: u64) {
        if let Some(prev) = self.counters {
            let secs = (now.saturating_sub(prev.at_ms) as f64 / 1000.0).max(0.001);
            let rounds = counters.solve_count - prev.solve_count;
            let sample = PlacementSample {
                at_unix_ms: now,
                bindings_per_second: counters.bound.saturating_sub(prev.bound) as f64 / secs,
                latency_ms: (rounds > 0.0)
                    .then(|| (counters.solve_sum - prev.solve_sum) / rounds * 1000.0),
            };
            self.samples.push_back(sample);
            while self.samples.len() > SAMPLES {
                self.samples.pop_front();
            }
            let stale = counters.stale_bindings - prev.stale_bindings;
            if stale > 0.0 {
                self.push_event(
                now,
                EventKind::FencingRejection,
                format!("{stale:.0} binding(s) refused at commit (stale node version or fenced shard epoch)"),
            );
            }
            let agents = counters.stale_agents - prev.stale_agents;
            if agents > 0.0 {
                self.push_event(
                    now,
                    EventKind::FencingRejection,
                    format!("{agents:.0} agent call(s) refused: stale node epoch"),
                );
            }
        }
    }
}

async fn sample_loop(console: Weak<RegionConsole>) {
    loop {
        let Some(c) = console.upgrade() else {
            return;
        };
        let clock = c.deps.api.clock.clone();
        let started = clock.now();
        if let Err(e) = c.sample().await {
            tracing::debug!(error = %e, "console sample failed");
            c.state.lock().error = Some(e.to_string());
        }
        let took = clock.now().saturating_duration_since(started);
        drop(c);
        clock.sleep(SAMPLE_EVERY.max(took * 2)).await;
    }
}

fn from_status(s: tonic::Status) -> ConsoleError {
    use meridian_control::rpc::Refusal;
    match s.code() {
        tonic::Code::Unauthenticated => {
            return ConsoleError::Unauthenticated(s.message().to_string());
        }
        tonic::Code::PermissionDenied => return ConsoleError::Forbidden(s.message().to_string()),
        _ => {}
    }
    match Refusal::of(&s) {
        Refusal::NotFound => ConsoleError::NotFound(s.message().to_string()),
        Refusal::Invalid => ConsoleError::Invalid(s.message().to_string()),
        Refusal::Unavailable => ConsoleError::Unavailable(s.message().to_string()),
        _ => ConsoleError::Failed(s.message().to_string()),
    }
}

fn node_view(n: &v1::NodeInfo) -> NodeView {
    let liveness = match v1::NodeState::try_from(n.state) {
        Ok(v1::NodeState::Down) => NodeState::Dead,
        Ok(v1::NodeState::Unhealthy) => NodeState::Suspect,
        _ => NodeState::Ready,
    };
    let state = match liveness {
        NodeState::Dead => NodeState::Dead,
        _ if n.draining => NodeState::Draining,
        _ if n.cordoned => NodeState::Cordoned,
        other => other,
    };
    let amount = |r: &Option<v1::Resources>| {
        let r = r.clone().unwrap_or_default();
        Amount {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            gpus: r.gpu_count,
        }
    };
    NodeView {
        node_id: n.node_id.clone(),
        zone: n.zone.clone(),
        shard: n.shard_id,
        state,
        liveness,
        capacity: amount(&n.allocatable),
        usage: amount(&n.allocated),
        running_tasks: n.running_tasks,
        epoch: n.node_epoch,
        reason: n.cordon_reason.clone(),
    }
}

/// Sums the samples of one metric in Prometheus text (optionally only the
/// series whose labels contain `filter`).
fn metric_sum(text: &str, name: &str, filter: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let end = r.find('}')?;
                    (&r[..end], r[end + 1..].trim())
                }
                None if rest.starts_with(' ') => ("", rest.trim()),
                None => return None,
            };
            if filter.is_some_and(|f| !labels.contains(f)) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

impl RegionConsole {
    async fn list_nodes(&self) -> Result<Vec<v1::NodeInfo>, ConsoleError> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = RegionAdmin::list_nodes(
                &self.deps.api,
                Request::new(v1::ListNodesRequest {
                    region: self.deps.api.region.clone(),
                    page_size: 1000,
                    page_token: token.clone(),
                    ..v1::ListNodesRequest::default()
                }),
            )
            .await
            .map_err(from_status)?
            .into_inner();
            out.extend(page.nodes);
            token = page.next_page_token;
            if token.is_empty() {
                return Ok(out);
            }
        }
    }

    /// Reads everything once and records what changed since the last
    /// sample.
    async fn sample(&self) -> Result<(), ConsoleError> {
        let api = &self.deps.api;
        let now = api.clock.now_unix_ms();
        let failed = |e: crate::RegionalError| ConsoleError::Failed(e.to_string());
        let nodes: Option<Vec<NodeView>> = if self.nodes_due() {
            Some(self.list_nodes().await?.iter().map(node_view).collect())
        } else {
            None
        };
        let bound = self.read_bound().await?;
        let count = api.state.read().layout.map_or(0, |l| l.count);
        let leases = observe_shard_leases(&api.lease_store, &api.keys, count)
            .await
            .map_err(failed)?;
        let Queue {
            lanes,
            preempting,
            waiting,
        } = self.queue();
        let counters = self.counters(now, bound);

        let mut st = self.state.lock();
        let first = !st.sampled;
        st.note_leaders(leases, now);
        st.shard_count = count;
        if let Some(nodes) = nodes {
            if !first {
                st.note_node_changes(&nodes, &preempting, now);
            }
            st.nodes = nodes;
            st.nodes_at = Some(api.clock.now());
        }
        st.note_rates(&counters, now);
        st.counters = Some(counters);
        st.lanes = lanes.into_values().rev().collect();
        st.waiting = waiting;
        st.preempting = preempting;
        st.sampled = true;
        st.error = None;
        Ok(())
    }

    /// Whether the node list is due again. Nodes change state no faster
    /// than their heartbeats are judged, so the list is read at half the
    /// pace the region gives its agents (every second in a small region,
    /// every 5 s at 10,000 nodes), while the queue and the rates are
    /// sampled every second: building every node's view each second cost a
    /// large region more than all its heartbeats.
    fn nodes_due(&self) -> bool {
        let api = &self.deps.api;
        let pace = (api.heartbeat_every() / 2).max(SAMPLE_EVERY);
        let now = api.clock.now();
        self.state
            .lock()
            .nodes_at
            .is_none_or(|t| now.saturating_duration_since(t) >= pace)
    }

    /// The store's count of bindings ever made (zero before the first).
    async fn read_bound(&self) -> Result<u64, ConsoleError> {
        let api = &self.deps.api;
        let failed = |e: crate::RegionalError| ConsoleError::Failed(e.to_string());
        let bound = api
            .db
            .run(|tx, _| {
                let keys = api.keys.clone();
                async move { Ok::<_, crate::RegionalError>(tx.get(&keys.bound_counter()).await?) }
            })
            .await
            .map_err(failed)?;
        let bound = bound.map_or(0, |b| {
            let mut le = [0u8; 8];
            let n = b.len().min(8);
            le[..n].copy_from_slice(&b[..n]);
            u64::from_le_bytes(le)
        });
        Ok(bound)
    }

    /// The pending queue by priority lane, the tasks being preempted and
    /// the jobs waiting for a node with why.
    fn queue(&self) -> Queue {
        let api = &self.deps.api;
        let mut lanes: BTreeMap<i32, LaneView> = BTreeMap::new();
        let mut preempting = BTreeSet::new();
        let mut waiting = Vec::new();
        {
            let state = api.state.read();
            for (job_id, job) in &state.jobs {
                if !job.record.waiting_reason.is_empty()
                    && job.record.state == crate::model::JobPhase::Active
                {
                    waiting.push(WaitingJobView {
                        job_id: job_id.clone(),
                        tenant: job.record.tenant.clone(),
                        priority: job.record.priority,
                        task_count: job.record.task_count,
                        pending_tasks: job.pending,
                        reason: job.record.waiting_reason.clone(),
                    });
                }
                if job.pending > 0 {
                    let lane = lanes.entry(job.record.priority).or_insert(LaneView {
                        priority: job.record.priority,
                        ..LaneView::default()
                    });
                    lane.tasks += u64::from(job.pending);
                    if state.pending_jobs.contains(job_id) {
                        lane.jobs += 1;
                    }
                }
                // A preempted task is still bound: the blocks without a
                // bound task (most of a large array's) are skipped.
                for (index, t) in job.tasks_of_bound_blocks() {
                    if t.stopping == "preempted" {
                        preempting.insert((job_id.clone(), index));
                    }
                }
            }
        }
        waiting.sort_by(|a, b| (b.priority, &a.job_id).cmp(&(a.priority, &b.job_id)));
        Queue {
            lanes,
            preempting,
            waiting,
        }
    }

    /// This sample's cumulative figures, from the store's counter and this
    /// process's metrics.
    fn counters(&self, now: u64, bound: u64) -> Counters {
        let text = self
            .metrics
            .as_ref()
            .map(|h| h.render())
            .unwrap_or_default();
        Counters {
            at_ms: now,
            bound,
            solve_sum: metric_sum(&text, "meridian_regional_solve_seconds_sum", None),
            solve_count: metric_sum(&text, "meridian_regional_solve_seconds_count", None),
            stale_bindings: metric_sum(&text, "meridian_regional_stale_bindings_total", None),
            stale_agents: metric_sum(
                &text,
                "meridian_regional_agent_calls_total",
                Some("outcome=\"stale_epoch\""),
            ),
        }
    }

    fn checked<T>(&self, read: impl FnOnce(&Tracker) -> T) -> Result<T, ConsoleError> {
        let st = self.state.lock();
        match (&st.error, st.sampled) {
            (Some(e), _) => Err(ConsoleError::Unavailable(e.clone())),
            (None, false) => Err(ConsoleError::Unavailable(
                "first sample not taken yet".into(),
            )),
            (None, true) => Ok(read(&st)),
        }
    }

    fn record_action(&self, message: &str) {
        let now = self.deps.api.clock.now_unix_ms();
        self.state
            .lock()
            .push_event(now, EventKind::Action, message.to_string());
    }
}

impl RegionConsoleSource for RegionConsole {
    async fn identity(&self) -> Result<RegionIdentity, ConsoleError> {
        let st = self.state.lock();
        Ok(RegionIdentity {
            region: self.deps.api.region.clone(),
            replica: self.deps.replica.clone(),
            shard_count: st.shard_count,
            linked: self.deps.global.is_some(),
        })
    }

    async fn shards(&self) -> Result<Vec<ShardView>, ConsoleError> {
        let now = self.deps.api.clock.now_unix_ms();
        self.checked(|st| {
            st.shards
                .iter()
                .map(|(shard, (leader, epoch, since, expires))| ShardView {
                    shard: *shard,
                    leader: leader.clone(),
                    epoch: *epoch,
                    held_for_ms: if leader.is_empty() {
                        0
                    } else {
                        now.saturating_sub(*since)
                    },
                    expires_in_ms: expires.saturating_sub(now),
                })
                .collect()
        })
    }

    async fn nodes(&self) -> Result<Vec<NodeView>, ConsoleError> {
        self.checked(|st| st.nodes.clone())
    }

    async fn pending_lanes(&self) -> Result<Vec<LaneView>, ConsoleError> {
        self.checked(|st| st.lanes.clone())
    }

    async fn waiting_jobs(&self) -> Result<Vec<WaitingJobView>, ConsoleError> {
        self.checked(|st| st.waiting.clone())
    }

    async fn placement(&self) -> Result<Vec<PlacementSample>, ConsoleError> {
        self.checked(|st| st.samples.iter().copied().collect())
    }

    async fn events(&self) -> Result<Vec<EventView>, ConsoleError> {
        Ok(self.state.lock().events.iter().cloned().collect())
    }

    async fn node_action(
        &self,
        node: &str,
        action: NodeAction,
        reason: &str,
        actor: &Actor,
    ) -> Result<ActionOutcome, ConsoleError> {
        let api = &self.deps.api;
        let region = api.region.clone();
        let node_id = node.to_string();
        let reason = if reason.is_empty() {
            format!("{} from the console", action.as_str())
        } else {
            reason.to_string()
        };
        // Signed in: through the federation API with the operator's token,
        // which checks the role and records the change in the audit log,
        // as `meridian node drain` does. Without sign-in: this replica's
        // own admin service.
        let result = match actor.bearer() {
            Some(bearer) => {
                sign_in::node_action(&self.deps, action, node_id, reason, &bearer).await
            }
            None => match action {
                NodeAction::Cordon => RegionAdmin::cordon_node(
                    api,
                    Request::new(v1::CordonNodeRequest {
                        region,
                        node_id,
                        reason,
                    }),
                )
                .await
                .map(|r| r.into_inner().node),
                NodeAction::Uncordon => RegionAdmin::uncordon_node(
                    api,
                    Request::new(v1::UncordonNodeRequest { region, node_id }),
                )
                .await
                .map(|r| r.into_inner().node),
                NodeAction::Drain => RegionAdmin::drain_node(
                    api,
                    Request::new(v1::DrainNodeRequest {
                        region,
                        node_id,
                        reason,
                        deadline_ms: 0,
                    }),
                )
                .await
                .map(|r| r.into_inner().node),
            },
        };
        let message = match result {
            Ok(Some(info)) => {
                let v = node_view(&info);
                format!(
                    "{} {}: node {node} is now {} (epoch {})",
                    action.as_str(),
                    "done",
                    v.state.as_str(),
                    v.epoch
                )
            }
            Ok(None) => format!("{} done: node {node}", action.as_str()),
            Err(status) => {
                let e = from_status(status);
                self.record_action(&format!("{} node {node} failed: {e}", action.as_str()));
                return Err(e);
            }
        };
        self.record_action(&format!("{message} by {}", who(actor)));
        Ok(ActionOutcome { message })
    }

    async fn drain_region(
        &self,
        reason: &str,
        evacuate: bool,
        actor: &Actor,
    ) -> Result<ActionOutcome, ConsoleError> {
        let region = self.deps.api.region.clone();
        let outcome = sign_in::drain_region(&self.deps, reason, evacuate, actor).await;
        match outcome {
            Ok(message) => {
                self.record_action(&format!("{message} by {}", who(actor)));
                Ok(ActionOutcome { message })
            }
            Err(e) => {
                self.record_action(&format!("drain region {region} failed: {e}"));
                Err(e)
            }
        }
    }
}

/// How the recent events name who made an action.
fn who(actor: &Actor) -> String {
    if actor.viewer.name.is_empty() {
        "the console".to_string()
    } else {
        format!("{} ({})", actor.viewer.name, actor.viewer.role.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sums_add_every_series_and_honour_the_label_filter() {
        let text = "# TYPE x counter\nx_total{shard=\"0\"} 2\nx_total{shard=\"1\"} 3\nx_total_other 9\n\
                    calls{call=\"hb\",outcome=\"stale_epoch\"} 4\ncalls{call=\"hb\",outcome=\"ok\"} 7\n";
        assert_eq!(metric_sum(text, "x_total", None), 5.0);
        assert_eq!(
            metric_sum(text, "calls", Some("outcome=\"stale_epoch\"")),
            4.0
        );
    }
}
