//! One node's agent loop: register, pull commands, run attempts, report.
//!
//! Owns the session life cycle of a node over `AgentLink`: prove the current
//! registration with a Heartbeat (or Register when there is none), open its
//! command stream from the last applied cursor (on the host's call to the
//! replica, [`crate::downlink`]), then multiplex commands,
//! task exits, jittered heartbeats, batched reports and the region-lease
//! deadline until the link breaks. Where and when the next session starts
//! is control's retry rule, applied by the [`RegionLink`]: a call refused
//! with a `meridian-leader` hint moves the node to the hinted replica at
//! once (so a node whose shard moved reaches the new leader without waiting
//! out a backoff), a call that ran out of its deadline moves it to the next
//! given replica at once, and a broken link moves it there after a
//! full-jitter backoff, while tasks keep running (static stability); a
//! fence stops every task of the old epoch *before* registering again.
//!
//! Must never: run a command refused by fencing, block on anything but the
//! node's own events, read time except through the clock, or leave a task
//! it started without either a report queued or a stop requested.

use std::sync::Arc;
use std::time::Duration;

use meridian_control::rpc::Refusal;
use meridian_control::{Instant, RpcVerdict, SharedClock};
use meridian_proto::limits::MAX_BATCH_ITEMS;
use meridian_proto::v1::{
    AssignmentCommand, CommandKind, HeartbeatResponse, NodeAssignmentsRequest, RegionLossPolicy,
    RegisterNodeRequest, ReportTaskStatusRequest, ReportTaskStatusResponse, TaskAttempt,
    TaskReport, TaskState, Verdict,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::{mpsc, watch};

use crate::beside::{self, InFlight};
use crate::config::{AgentOptions, NodeSpec};
use crate::downlink::NodeStream;
use crate::error::AgentError;
use crate::exec::{Executor, ExitTx, Launch, ProcessIds, TaskEvent, TaskExit};
use crate::fence::ShardEpochs;
use crate::link::RegionLink;
use crate::persist::{PersistedEnd, PersistedState, PersistedTask, Persister, StateFile};
use crate::probe::Probe;
use crate::tasks::{LiveTask, StopReason, TaskTable};

mod lease;

/// How much longer a node waits before its next report call when the region
/// said it reports too fast.
const REPORT_BACK_OFF: Duration = Duration::from_millis(100);

/// Version string sent at registration.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How a session ended.
#[derive(Debug)]
enum SessionEnd {
    /// A call failed; the retry rule says where the next session goes.
    Failed(AgentError),
    Fenced,
    Shutdown,
}

/// Everything one node needs besides its own state.
pub struct NodeContext {
    pub spec: NodeSpec,
    pub opts: Arc<AgentOptions>,
    pub clock: SharedClock,
    pub executor: Arc<dyn Executor>,
    /// The region's replicas and the one this node talks to.
    pub link: RegionLink,
    pub probe: Arc<Probe>,
    /// Becomes `true` to stop the node.
    pub shutdown: watch::Receiver<bool>,
    /// Seed of this node's heartbeat jitter and boot id (the link's backoff
    /// has its own seed).
    pub seed: u64,
    /// State file of a real node; `None` for a simulated one.
    pub state_file: Option<StateFile>,
}

/// The agent of one node.
pub struct NodeAgent {
    spec: NodeSpec,
    opts: Arc<AgentOptions>,
    boot_id: String,
    clock: SharedClock,
    executor: Arc<dyn Executor>,
    link: RegionLink,
    probe: Arc<Probe>,
    shutdown: watch::Receiver<bool>,
    persister: Option<Persister>,
    exits_tx: ExitTx,
    exits_rx: mpsc::UnboundedReceiver<TaskEvent>,
    epoch: u64,
    cursor: Vec<u8>,
    shards: ShardEpochs,
    tasks: TaskTable,
    lease_deadline: Option<Instant>,
    /// The node timeout its region told it at registration: a region that
    /// hears nothing from the node for that long may declare it dead.
    node_timeout: Option<Duration>,
    /// Until when the region surely counts the node alive: the send time of
    /// the last answered registration or heartbeat, plus `node_timeout`.
    alive_until: Option<Instant>,
    heartbeat_every: Duration,
    rng: ChaCha8Rng,
}

impl NodeAgent {
    /// A node with a fresh boot id (a UUID drawn from the node's seeded RNG
    /// mixed with the host's process-wide boot UUID).
    pub fn new(ctx: NodeContext, boot_id: String) -> Result<Self, AgentError> {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Ok(NodeAgent {
            link: ctx.link,
            heartbeat_every: ctx.opts.default_heartbeat.max(ctx.opts.min_heartbeat),
            tasks: TaskTable::new(ctx.opts.finished_memory),
            rng: ChaCha8Rng::seed_from_u64(ctx.seed ^ 0x9e37_79b9_7f4a_7c15),
            spec: ctx.spec,
            opts: ctx.opts,
            boot_id,
            clock: ctx.clock,
            executor: ctx.executor,
            probe: ctx.probe,
            shutdown: ctx.shutdown,
            persister: ctx.state_file.map(Persister::start),
            exits_tx,
            exits_rx,
            epoch: 0,
            cursor: Vec::new(),
            lease_deadline: None,
            node_timeout: None,
            alive_until: None,
            shards: ShardEpochs::default(),
        })
    }

    /// Restores the shard epochs remembered by a previous boot.
    pub fn restore_shard_epochs(&mut self, shards: ShardEpochs) {
        self.shards = shards;
    }

    /// Queues reports (e.g. LOST for attempts of a previous boot) to be sent
    /// once connected.
    pub fn queue_reports(&mut self, reports: Vec<TaskReport>) {
        for r in reports {
            self.tasks.queue(r);
        }
    }

    /// Runs until shutdown: sessions, and the pauses the retry rule puts
    /// between them.
    pub async fn run(mut self) {
        loop {
            if self.shutting_down() {
                break;
            }
            match self.session().await {
                SessionEnd::Shutdown => break,
                SessionEnd::Fenced => self.fence().await,
                SessionEnd::Failed(e) => {
                    let verdict = e.verdict();
                    let from = self.link.current().to_string();
                    // Never longer than a heartbeat interval between two
                    // tries: the region judges a node by the beats it
                    // misses, and a node that could reach a new leader
                    // must not sleep through its own death sentence. The
                    // interval is paced by the region for all its nodes, so
                    // a down region still sees no more tries than beats.
                    let delay = self.link.after(&verdict).min(self.jittered_heartbeat());
                    if matches!(verdict, RpcVerdict::RetryAt(_)) {
                        self.probe.update(|p| p.redirects += 1);
                    }
                    tracing::debug!(node = %self.spec.node_id, error = %e, ?verdict, ?delay, %from, to = %self.link.current(), "session ended");
                    if !delay.is_zero() && !self.wait_out(delay).await {
                        break;
                    }
                }
            }
        }
        self.stop_all_for_shutdown().await;
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    async fn session(&mut self) -> SessionEnd {
        if self.epoch != 0 {
            match self.heartbeat().await {
                Ok(()) => {}
                Err(AgentError::Fenced { .. }) => return SessionEnd::Fenced,
                Err(e) => return SessionEnd::Failed(e),
            }
        }
        if self.epoch == 0
            && let Err(e) = self.register().await
        {
            return SessionEnd::Failed(e);
        }
        let request = NodeAssignmentsRequest {
            node_id: self.spec.node_id.clone(),
            node_epoch: self.epoch,
            cursor: self.cursor.clone(),
        };
        let downlink = match self.link.downlink() {
            Ok(d) => d,
            Err(e) => return SessionEnd::Failed(e),
        };
        let opened = self
            .call(async move { downlink.open(request).await.map(tonic::Response::new) })
            .await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => return self.on_stream_error(e),
        };
        self.link.answered();
        self.probe.update(|p| {
            p.connected += 1;
            p.sessions += 1;
        });
        let end = self.connected(&mut stream).await;
        self.probe.update(|p| p.connected -= 1);
        end
    }

    fn on_stream_error(&mut self, e: AgentError) -> SessionEnd {
        match &e {
            AgentError::Rpc(s) if Refusal::of(s) == Refusal::Fenced => SessionEnd::Fenced,
            AgentError::Rpc(s) if Refusal::of(s) == Refusal::CursorExpired => {
                // The region no longer retains our cursor: start from a snapshot.
                self.cursor.clear();
                SessionEnd::Failed(e)
            }
            _ => SessionEnd::Failed(e),
        }
    }

    async fn connected(&mut self, stream: &mut NodeStream) -> SessionEnd {
        let mut next_heartbeat = self.clock.now() + self.jittered_heartbeat();
        let mut last_beat = self.clock.now();
        let mut last_report: Option<Instant> = None;
        // Reports and heartbeats go beside the loop (beside.rs): a slow call
        // of one must not hold back the other, commands or the region lease.
        let mut inflight: Option<InFlight<Vec<TaskReport>, ReportTaskStatusResponse>> = None;
        let mut beating: Option<InFlight<Instant, HeartbeatResponse>> = None;
        loop {
            if self.shutting_down() {
                return SessionEnd::Shutdown;
            }
            let beat_at = self
                .early_beat(last_beat)
                .map_or(next_heartbeat, |early| early.min(next_heartbeat));
            let heartbeat = beating.is_none().then(|| self.clock.sleep_until(beat_at));
            let report_due = match (self.tasks.outbox_len(), last_report, &inflight) {
                (0, _, _) | (_, _, Some(_)) => None,
                (_, None, None) => Some(self.clock.sleep(Duration::ZERO)),
                (_, Some(at), None) => Some(self.clock.sleep_until(at + self.opts.report_interval)),
            };
            let failover = self.failover_sleep();
            tokio::select! {
                changed = self.shutdown.changed() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        return SessionEnd::Shutdown;
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(cmd)) => self.apply(cmd),
                    Ok(None) => {
                        return SessionEnd::Failed(AgentError::Rpc(tonic::Status::unavailable(
                            "assignment stream ended",
                        )));
                    }
                    Err(status) => return self.on_stream_error(AgentError::Rpc(status)),
                },
                Some(event) = self.exits_rx.recv() => self.on_event(event),
                () = maybe(heartbeat) => match self.link.uplink() {
                    Ok(uplink) => {
                        let request = self.heartbeat_request();
                        beating = Some(beside::send(
                            self.clock.now(),
                            async move { uplink.heartbeat(request).await },
                            self.clock.clone(),
                            self.opts.call_timeout,
                        ));
                    }
                    Err(e) => return SessionEnd::Failed(e),
                },
                (sent_at, answer) = beside::answer(&mut beating) => {
                    beating = None;
                    match answer.and_then(|resp| self.heartbeat_answered(sent_at, resp)) {
                        Ok(()) => {
                            last_beat = self.clock.now();
                            next_heartbeat = last_beat + self.jittered_heartbeat();
                            self.probe.update(|p| p.heartbeats += 1);
                        }
                        Err(AgentError::Fenced { .. }) => return SessionEnd::Fenced,
                        Err(e) => return SessionEnd::Failed(e),
                    }
                }
                () = maybe(report_due) => {
                    last_report = Some(self.clock.now());
                    match self.send_reports().await {
                        Ok(call) => inflight = call,
                        Err(e) => return SessionEnd::Failed(e),
                    }
                }
                (batch, answer) = beside::answer(&mut inflight) => {
                    inflight = None;
                    match answer.and_then(|resp| self.reports_answered(&batch, &resp)) {
                        Ok(()) => {}
                        Err(AgentError::Fenced { .. }) => return SessionEnd::Fenced,
                        Err(e) if e.verdict() == (RpcVerdict::Backoff { move_on: false }) => {
                            // The replica leads but sheds load (it asks this
                            // node to report more slowly): the reports stay
                            // queued (and keep coalescing) and go with the
                            // next call, to the same replica.
                            last_report = Some(self.clock.now() + REPORT_BACK_OFF);
                        }
                        Err(e) => return SessionEnd::Failed(e),
                    }
                }
                () = maybe(failover) => self.enforce_region_lease(),
            }
        }
    }

    /// Waits out a backoff delay while tasks keep running. `false` on
    /// shutdown.
    async fn wait_out(&mut self, delay: Duration) -> bool {
        self.probe.update(|p| {
            p.backing_off += 1;
            p.backoffs += 1;
        });
        let mut until = self.clock.sleep(delay);
        let keep_going = loop {
            let failover = self.failover_sleep();
            tokio::select! {
                changed = self.shutdown.changed() => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        break false;
                    }
                }
                () = &mut until => break true,
                Some(event) = self.exits_rx.recv() => self.on_event(event),
                () = maybe(failover) => self.enforce_region_lease(),
            }
        };
        self.probe.update(|p| p.backing_off -= 1);
        keep_going
    }

    /// Runs one unary call with the call timeout, enforcing the region
    /// lease while it is pending.
    async fn call<T, F>(&mut self, fut: F) -> Result<T, AgentError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut timeout = self.clock.sleep(self.opts.call_timeout);
        tokio::pin!(fut);
        loop {
            let failover = self.failover_sleep();
            tokio::select! {
                r = &mut fut => return r.map(tonic::Response::into_inner).map_err(AgentError::from),
                () = &mut timeout => return Err(AgentError::Timeout),
                () = maybe(failover) => self.enforce_region_lease(),
            }
        }
    }

    async fn register(&mut self) -> Result<(), AgentError> {
        let request = RegisterNodeRequest {
            node_id: self.spec.node_id.clone(),
            boot_id: self.boot_id.clone(),
            allocatable: Some(self.spec.allocatable.clone()),
            labels: self.spec.labels.clone(),
            zone: self.spec.zone.clone(),
            rack: self.spec.rack.clone(),
            agent_version: AGENT_VERSION.to_string(),
            logs_endpoint: self.opts.logs_endpoint.clone(),
        };
        let sent_at = self.clock.now();
        let uplink = self.link.uplink()?;
        let resp = self
            .call(async move { uplink.register(request).await.map(tonic::Response::new) })
            .await?;
        if resp.node_epoch == 0 {
            return Err(AgentError::Rpc(tonic::Status::internal(
                "region issued node epoch 0",
            )));
        }
        if resp.node_epoch != self.epoch {
            self.cursor.clear();
        }
        self.epoch = resp.node_epoch;
        self.set_heartbeat_interval(resp.heartbeat_interval_ms);
        self.set_lease(sent_at, resp.region_lease_remaining_ms);
        self.node_timeout =
            (resp.node_timeout_ms > 0).then(|| Duration::from_millis(resp.node_timeout_ms));
        self.heard(sent_at);
        tracing::info!(node = %self.spec.node_id, epoch = self.epoch, region = %resp.region, "registered");
        self.persist();
        Ok(())
    }

    /// Sends the pending reports and waits for the answer (at shutdown,
    /// when nothing else is left to do).
    async fn flush_reports(&mut self) -> Result<(), AgentError> {
        let Some(call) = self.send_reports().await? else {
            return Ok(());
        };
        let (batch, answer) = call.await;
        self.reports_answered(&batch, &answer?)
    }

    /// Starts a call with the pending reports, if there are any.
    async fn send_reports(
        &mut self,
    ) -> Result<Option<InFlight<Vec<TaskReport>, ReportTaskStatusResponse>>, AgentError> {
        let batch = self.tasks.pending_reports(MAX_BATCH_ITEMS);
        if batch.is_empty() {
            return Ok(None);
        }
        // An attempt the region hears of is one a restarted agent finds:
        // the state file holds every change made before these reports.
        if let Some(p) = self.persister.as_mut() {
            p.flush().await;
        }
        let request = ReportTaskStatusRequest {
            node_id: self.spec.node_id.clone(),
            node_epoch: self.epoch,
            reports: batch.clone(),
        };
        let uplink = self.link.uplink()?;
        Ok(Some(beside::send(
            batch,
            async move { uplink.report(request).await },
            self.clock.clone(),
            self.opts.call_timeout,
        )))
    }

    /// Takes the region's answer to the reports of `batch`.
    fn reports_answered(
        &mut self,
        batch: &[TaskReport],
        resp: &ReportTaskStatusResponse,
    ) -> Result<(), AgentError> {
        if resp.verdict != Verdict::Accepted as i32 {
            return Err(AgentError::Fenced { epoch: self.epoch });
        }
        for (i, sent) in batch.iter().enumerate() {
            let verdict = resp
                .results
                .get(i)
                .map_or(Verdict::Accepted as i32, |r| r.verdict);
            self.tasks.acknowledge(sent);
            if verdict == Verdict::NotFound as i32
                && let Some(attempt) = &sent.task
            {
                let grace = self.grace_of(attempt);
                self.tasks.stop(attempt, StopReason::Orphan, grace);
            }
        }
        Ok(())
    }

    /// Applies one command (or refuses it), then advances the cursor.
    fn apply(&mut self, cmd: AssignmentCommand) {
        let cursor = cmd.cursor.clone();
        let kind = CommandKind::try_from(cmd.kind).unwrap_or(CommandKind::Unspecified);
        if matches!(kind, CommandKind::Run | CommandKind::Stop) {
            match self
                .shards
                .admit(cmd.shard_id, cmd.shard_epoch, cmd.node_epoch, self.epoch)
            {
                Ok(()) if kind == CommandKind::Run => self.run_task(cmd),
                Ok(()) => self.stop_task(cmd),
                Err(refusal) => {
                    crate::metrics::refused(&refusal);
                    tracing::warn!(node = %self.spec.node_id, ?refusal, task = ?cmd.task, "command refused");
                    self.probe.update(|p| p.refused_commands += 1);
                }
            }
        }
        if !cursor.is_empty() {
            self.cursor = cursor;
        }
    }

    fn run_task(&mut self, cmd: AssignmentCommand) {
        let Some(attempt) = cmd.task else { return };
        if self.tasks.knows(&attempt) {
            return;
        }
        for older in self.tasks.older_attempts(&attempt) {
            let grace = self.grace_of(&older);
            self.tasks.stop(&older, StopReason::Replaced, grace);
        }
        let _span = crate::trace::run_span(&self.spec.node_id, &attempt, &cmd.trace_id).entered();
        let now_ms = self.clock.now_unix_ms();
        let grace = self.grace_ms(cmd.stop_grace_period_ms);
        let policy =
            RegionLossPolicy::try_from(cmd.on_region_loss).unwrap_or(RegionLossPolicy::Unspecified);
        if self.may_be_declared_dead() {
            // Nothing answered for the region's node timeout (the agent was
            // paused, or cut off): the region may have declared the node
            // dead and placed this attempt's task elsewhere, and this RUN
            // may have waited unread since. Ended as a stop of the agent's
            // own: where the node is still alive the task is placed again
            // without using a retry; where it was fenced the report is
            // refused with the epoch.
            tracing::warn!(node = %self.spec.node_id, task = ?attempt, "no answer for the node timeout: task not started");
            self.not_started(attempt, now_ms, "not started: the region may have declared this node dead (no answer for its node timeout)");
            return;
        }
        if self.lease_ran_out_for(policy, grace) {
            // The region's lease ran out (or will, within the task's stop
            // grace) before this RUN arrived: the global tier may have
            // handed the job to another region, so starting it could run it
            // twice. Ended as a stop on the agent's own, which puts it back
            // to pending without using a retry where the job still is.
            tracing::warn!(node = %self.spec.node_id, task = ?attempt, "region lease ran out: failover task not started");
            self.not_started(
                attempt,
                now_ms,
                "not started: region lease ran out (failover)",
            );
            return;
        }
        let launch = Launch {
            attempt: attempt.clone(),
            template: cmd.template.unwrap_or_default(),
            resources: cmd.resources.unwrap_or_default(),
            dir: self.opts.work_dir.as_ref().map(|w| {
                let task = attempt.task.clone().unwrap_or_default();
                w.join("tasks")
                    .join(sanitize(&task.job_id))
                    .join(crate::exec::attempt_dir_name(&attempt))
            }),
            trace_id: cmd.trace_id.clone(),
            start_by: self.start_by(policy, grace),
        };
        match self.executor.launch(launch, self.exits_tx.clone()) {
            Ok(started) => {
                crate::trace::started(&cmd.trace_id, &attempt);
                crate::metrics::task_started(true);
                self.probe.update(|p| {
                    p.launched += 1;
                    p.running += 1;
                });
                self.tasks.insert_live(
                    attempt.clone(),
                    LiveTask {
                        node_epoch: self.epoch,
                        policy,
                        grace,
                        control: started.control,
                        process: started.process,
                        started_at_unix_ms: now_ms,
                        stop_reason: None,
                    },
                );
                if started.running {
                    self.tasks.queue(report(
                        &attempt,
                        TaskState::Running,
                        now_ms,
                        now_ms,
                        String::new(),
                    ));
                }
            }
            Err(e) => {
                crate::metrics::task_started(false);
                let r = report(
                    &attempt,
                    TaskState::Failed,
                    0,
                    now_ms,
                    format!("could not start: {e}"),
                );
                let mut r = r;
                r.finished_at_unix_ms = now_ms;
                self.tasks.remember_finished(attempt, r.clone());
                self.tasks.queue(r);
            }
        }
        self.persist();
    }

    /// Reports an attempt whose RUN was refused as KILLED with `why`.
    fn not_started(&mut self, attempt: TaskAttempt, now_ms: u64, why: &str) {
        let mut r = report(&attempt, TaskState::Killed, 0, now_ms, why.into());
        r.finished_at_unix_ms = now_ms;
        self.tasks.remember_finished(attempt, r.clone());
        self.tasks.queue(r);
    }

    fn stop_task(&mut self, cmd: AssignmentCommand) {
        let Some(attempt) = cmd.task else { return };
        let grace = self.grace_ms(cmd.stop_grace_period_ms);
        if self
            .tasks
            .stop(&attempt, StopReason::Command(cmd.reason), grace)
        {
            return;
        }
        let now_ms = self.clock.now_unix_ms();
        match self.tasks.finished_report(&attempt).cloned() {
            Some(last) => self.tasks.queue(last),
            None => {
                let r = report(
                    &attempt,
                    TaskState::Lost,
                    0,
                    now_ms,
                    "never ran on this node".into(),
                );
                self.tasks.remember_finished(attempt, r.clone());
                self.tasks.queue(r);
            }
        }
    }

    fn on_event(&mut self, event: TaskEvent) {
        match event {
            TaskEvent::Spawned { attempt, process } => self.on_spawned(&attempt, process),
            TaskEvent::Exited(exit) => self.on_exit(exit),
        }
    }

    /// The attempt's process exists: remember where, and report it running.
    fn on_spawned(&mut self, attempt: &TaskAttempt, process: ProcessIds) {
        let Some(started_at) = self.tasks.set_process(attempt, process) else {
            return;
        };
        let now_ms = self.clock.now_unix_ms();
        self.tasks.queue(report(
            attempt,
            TaskState::Running,
            started_at,
            now_ms,
            String::new(),
        ));
        self.persist();
    }

    fn on_exit(&mut self, exit: TaskExit) {
        let now_ms = self.clock.now_unix_ms();
        if let Some(report) = self.tasks.finish(&exit.attempt, exit.exit, now_ms) {
            crate::metrics::task_finished(
                TaskState::try_from(report.state).unwrap_or(TaskState::Failed),
            );
            self.probe.update(|p| p.running -= 1);
            self.persist();
        }
    }

    /// Stops every task started under the fenced epoch, waits for them to
    /// exit, and only then forgets the registration (so the next session
    /// registers again).
    async fn fence(&mut self) {
        let old = self.epoch;
        tracing::warn!(node = %self.spec.node_id, epoch = old, "node epoch fenced: stopping its tasks before re-registering");
        self.probe.update(|p| p.fenced += 1);
        let fenced: Vec<(TaskAttempt, Duration)> = self
            .tasks
            .live()
            .iter()
            .filter(|(_, t)| t.node_epoch <= old)
            .map(|(a, t)| (a.clone(), t.grace))
            .collect();
        for (a, grace) in &fenced {
            self.tasks.stop(a, StopReason::Fenced, *grace);
        }
        while fenced
            .iter()
            .any(|(a, _)| self.tasks.live().contains_key(a))
        {
            match self.exits_rx.recv().await {
                Some(event) => self.on_event(event),
                None => break,
            }
        }
        let (carried, dropped) = self.tasks.carry_outbox(old);
        if carried + dropped > 0 {
            tracing::info!(node = %self.spec.node_id, carried, dropped, "reports of the fenced epoch: ends carried to the next registration, the rest dropped");
        }
        self.epoch = 0;
        self.cursor.clear();
        self.persist();
    }

    async fn stop_all_for_shutdown(&mut self) {
        let live: Vec<(TaskAttempt, Duration)> = self
            .tasks
            .live()
            .iter()
            .map(|(a, t)| (a.clone(), t.grace))
            .collect();
        for (a, grace) in &live {
            self.tasks.stop(a, StopReason::Shutdown, *grace);
        }
        while !self.tasks.live().is_empty() {
            match self.exits_rx.recv().await {
                Some(event) => self.on_event(event),
                None => break,
            }
        }
        if self.epoch != 0
            && self.tasks.outbox_len() > 0
            && let Err(e) = self.flush_reports().await
        {
            tracing::warn!(node = %self.spec.node_id, error = %e, "final reports not delivered");
        }
        // What the next boot finds must be this state, not an older one.
        if let Some(p) = self.persister.as_mut() {
            p.flush().await;
        }
    }

    /// The heartbeat interval scaled by a uniform factor in [0.75, 1]: never
    /// later than the region asked, spread so that nodes do not beat in step.
    fn jittered_heartbeat(&mut self) -> Duration {
        meridian_control::backoff::spread(self.heartbeat_every, 0.25, &mut self.rng)
    }

    fn grace_ms(&self, ms: u64) -> Duration {
        if ms == 0 {
            self.opts.default_grace
        } else {
            Duration::from_millis(ms)
        }
    }

    fn grace_of(&self, attempt: &TaskAttempt) -> Duration {
        self.tasks
            .live()
            .get(attempt)
            .map_or(self.opts.default_grace, |t| t.grace)
    }

    fn persist(&mut self) {
        let Some(persister) = self.persister.as_mut() else {
            return;
        };
        let state = PersistedState {
            node_id: self.spec.node_id.clone(),
            boot_id: self.boot_id.clone(),
            node_epoch: self.epoch,
            shard_epochs: self.shards.clone(),
            tasks: self
                .tasks
                .live()
                .iter()
                .map(|(a, t)| {
                    let task = a.task.clone().unwrap_or_default();
                    PersistedTask {
                        job_id: task.job_id,
                        index: task.index,
                        attempt: a.attempt,
                        assignment_epoch: a.assignment_epoch,
                        process: t.process,
                        started_at_unix_ms: t.started_at_unix_ms,
                    }
                })
                .collect(),
            ends: self
                .tasks
                .unsent_ends(self.epoch)
                .iter()
                .filter_map(PersistedEnd::of)
                .collect(),
        };
        persister.save(state);
    }
}

/// A report of `state` observed now.
pub(crate) fn report(
    attempt: &TaskAttempt,
    state: TaskState,
    started_at_unix_ms: u64,
    now_unix_ms: u64,
    message: String,
) -> TaskReport {
    TaskReport {
        task: Some(attempt.clone()),
        state: state as i32,
        message,
        started_at_unix_ms,
        observed_at_unix_ms: now_unix_ms,
        ..TaskReport::default()
    }
}

/// A job id made safe as one path component.
fn sanitize(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".into()
    } else {
        cleaned
    }
}

/// A sleep that never completes when there is none.
async fn maybe(sleep: Option<meridian_control::Sleep>) {
    match sleep {
        Some(s) => s.await,
        None => std::future::pending().await,
    }
}
