//! The traits a tier implements to feed a console.
//!
//! Owns the contract between a tier and the pages: reads return view
//! structs, actions return a one-line outcome or a [`ConsoleError`] shown in
//! the page. Must never be implemented with logic of its own for an action:
//! an implementation calls the same code as the tier's API and CLI.

use std::future::Future;

use crate::error::ConsoleError;
use crate::session::Actor;
use crate::view::{
    ActionOutcome, EventView, FederationSnapshot, JobDetail, LaneView, NodeAction, NodeView,
    PlacementSample, RegionIdentity, ScheduleAction, ScheduleDetail, ScheduleRow, ShardView,
    TaskPage, TaskPageQuery, UsageQuery, UsageView, WaitingJobView,
};

/// Result of a source call.
pub type SourceResult<T> = Result<T, ConsoleError>;

/// What a region replica gives its console.
pub trait RegionConsoleSource: Send + Sync + 'static {
    /// Region, serving replica and layout.
    fn identity(&self) -> impl Future<Output = SourceResult<RegionIdentity>> + Send;
    /// Every shard with its leader, epoch and lease age.
    fn shards(&self) -> impl Future<Output = SourceResult<Vec<ShardView>>> + Send;
    /// Every node with capacity, usage, state and zone.
    fn nodes(&self) -> impl Future<Output = SourceResult<Vec<NodeView>>> + Send;
    /// Pending tasks per priority lane, highest priority first.
    fn pending_lanes(&self) -> impl Future<Output = SourceResult<Vec<LaneView>>> + Send;
    /// Jobs whose tasks wait for a node, with why, highest priority first.
    fn waiting_jobs(&self) -> impl Future<Output = SourceResult<Vec<WaitingJobView>>> + Send;
    /// Placement rate and latency over the last minutes, oldest first.
    fn placement(&self) -> impl Future<Output = SourceResult<Vec<PlacementSample>>> + Send;
    /// Recent events, newest first.
    fn events(&self) -> impl Future<Output = SourceResult<Vec<EventView>>> + Send;
    /// Cordons, uncordons or drains a node through the tier's admin API,
    /// as `actor` (whose role the console has checked).
    fn node_action(
        &self,
        node: &str,
        action: NodeAction,
        reason: &str,
        actor: &Actor,
    ) -> impl Future<Output = SourceResult<ActionOutcome>> + Send;
    /// Drains the whole region through the federation API, as `actor`.
    fn drain_region(
        &self,
        reason: &str,
        evacuate: bool,
        actor: &Actor,
    ) -> impl Future<Output = SourceResult<ActionOutcome>> + Send;
}

/// What a global replica gives its federation overview.
pub trait FederationConsoleSource: Send + Sync + 'static {
    /// Regions, job counts by state and tenant, recent jobs.
    fn overview(&self) -> impl Future<Output = SourceResult<FederationSnapshot>> + Send;
    /// One job with its tasks and history; `NotFound` for an unknown id.
    fn job(&self, job_id: &str) -> impl Future<Output = SourceResult<JobDetail>> + Send;
    /// One page of a job's tasks, read from the region holding the job;
    /// `NotFound` for a job no region holds (not routed yet, or ended and
    /// forgotten by its region), `Invalid` naming the field for a bad query.
    fn job_tasks(
        &self,
        job_id: &str,
        query: &TaskPageQuery,
    ) -> impl Future<Output = SourceResult<TaskPage>> + Send {
        let _ = (job_id, query);
        async { Err(unserved("task pages")) }
    }
    /// Every schedule of periodic jobs, in id order. A source without
    /// schedules answers `Unavailable`, shown in the page.
    fn schedules(&self) -> impl Future<Output = SourceResult<Vec<ScheduleRow>>> + Send {
        async { Err(unserved("schedules")) }
    }
    /// One schedule with its latest runs; `NotFound` for an unknown id.
    fn schedule(
        &self,
        schedule_id: &str,
    ) -> impl Future<Output = SourceResult<ScheduleDetail>> + Send {
        let _ = schedule_id;
        async { Err(unserved("schedules")) }
    }
    /// Pauses, resumes or deletes a schedule through the tier's API, as
    /// `actor`.
    fn schedule_action(
        &self,
        schedule_id: &str,
        action: ScheduleAction,
        actor: &Actor,
    ) -> impl Future<Output = SourceResult<ActionOutcome>> + Send {
        let _ = (schedule_id, action, actor);
        async { Err(unserved("schedule actions")) }
    }
    /// Usage per tenant and region over a range, with hourly rows for the
    /// chart; `Invalid` naming the field for a bad query.
    fn usage(&self, query: &UsageQuery) -> impl Future<Output = SourceResult<UsageView>> + Send {
        let _ = query;
        async { Err(unserved("usage")) }
    }
}

/// The error of a page whose data this source does not serve.
fn unserved(what: &str) -> ConsoleError {
    ConsoleError::Unavailable(format!("this server does not serve {what}"))
}
