//! Periodic jobs: schedule records and the calls on them.
//!
//! Owns the schedule record (`keys::schedule`, one per id) and the calls
//! CreateSchedule, GetSchedule, ListSchedules, PauseSchedule,
//! ResumeSchedule and DeleteSchedule; the recording of what a tick did
//! ([`Schedules::record`]); and, in its children, the arithmetic of ticks
//! (`cadence`, pure), the rules of requests and the job a tick submits
//! (`rules`), and the leader's loop that acts on due ticks (`ticker`).
//!
//! Must never: write without the leader fence checked in the same
//! transaction; create a job itself (ticks submit through
//! [`crate::jobs::Jobs::submit`], whose request-id index makes a tick's job
//! once whichever leader submits it); rewrite a schedule's spec, which a
//! repeated CreateSchedule is judged against.

pub mod cadence;
pub mod rules;
pub mod runs;
pub mod ticker;

use std::sync::Arc;

use meridian_control::SharedClock;
use meridian_control::lease::Fence;
use meridian_proto::v1::{
    CreateScheduleRequest, CreateScheduleResponse, ListSchedulesRequest, ListSchedulesResponse,
    Schedule,
};
use meridian_store::{Database, RangeOption, Transaction};
use prost::Message;
use tokio::sync::Notify;

use crate::error::{GlobalError, Result};
use crate::keys::Keys;
use crate::validate;
use cadence::Cadence;

/// Reads a schedule record inside `tx` (as stored: no next tick).
pub async fn read_schedule(
    tx: &Transaction,
    keys: &Keys,
    schedule_id: &str,
) -> Result<Option<Schedule>> {
    match tx.get(&keys.schedule(schedule_id)).await? {
        Some(raw) => Ok(Some(Schedule::decode(raw.as_slice())?)),
        None => Ok(None),
    }
}

fn write_schedule(tx: &Transaction, keys: &Keys, schedule: &Schedule) -> Result<()> {
    // The next tick is computed when read, never stored: it would go stale.
    let stored = Schedule {
        next_tick_unix_ms: 0,
        ..schedule.clone()
    };
    tx.set(
        &keys.schedule(&schedule.schedule_id),
        &stored.encode_to_vec(),
    )?;
    Ok(())
}

/// The cadence of a stored schedule.
pub fn cadence_of(schedule: &Schedule) -> Result<Cadence> {
    let spec = schedule.spec.as_ref().ok_or_else(|| {
        GlobalError::Corrupt(format!("schedule {} has no spec", schedule.schedule_id))
    })?;
    Cadence::parse(&spec.cron, &spec.time_zone)
        .map_err(|e| GlobalError::Corrupt(format!("schedule {}: {e}", schedule.schedule_id)))
}

/// `schedule` with its next tick filled in (none while paused).
fn with_next_tick(mut schedule: Schedule) -> Schedule {
    schedule.next_tick_unix_ms = if schedule.paused {
        0
    } else {
        cadence_of(&schedule)
            .ok()
            .and_then(|c| c.next_after(schedule.handled_through_unix_ms))
            .unwrap_or(0)
    };
    schedule
}

/// What one tick did, to be recorded on its schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickRecord {
    /// The schedule's creation time, so a tick of a schedule deleted and
    /// created again meanwhile is not recorded on the new one.
    pub created_at: u64,
    /// Every tick at or before this is handled.
    pub handled_through: u64,
    /// The tick acted on.
    pub tick: u64,
    /// The job the tick created (or found created), if any.
    pub job_id: Option<String>,
    /// What happened, for people.
    pub outcome: String,
    /// Ticks that will never run, added to the schedule's count.
    pub skipped: u64,
}

/// The schedules of the global tier.
#[derive(Clone)]
pub struct Schedules {
    db: Database,
    keys: Keys,
    clock: SharedClock,
    /// Wakes the ticker when a schedule is created, resumed or deleted.
    wake: Arc<Notify>,
}

impl Schedules {
    /// Schedules in `db` under `keys`.
    pub fn new(db: Database, keys: Keys, clock: SharedClock) -> Self {
        Schedules {
            db,
            keys,
            clock,
            wake: Arc::new(Notify::new()),
        }
    }

    /// What the ticker waits on besides its timer.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// CreateSchedule: idempotent per id, judged against the stored spec.
    pub async fn create(
        &self,
        fence: &Fence,
        req: &CreateScheduleRequest,
    ) -> Result<CreateScheduleResponse> {
        rules::create(req)?;
        let keys = self.keys.clone();
        let now = self.clock.now_unix_ms();
        let response = self
            .db
            .run(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    if let Some(existing) = read_schedule(&tx, &keys, &req.schedule_id).await? {
                        let same = existing.spec.as_ref().map(Message::encode_to_vec)
                            == req.spec.as_ref().map(Message::encode_to_vec);
                        if !same {
                            return Err(GlobalError::AlreadyExists(format!(
                                "schedule {} exists with another spec; delete it first \
                                 or choose another id",
                                req.schedule_id
                            )));
                        }
                        return Ok(CreateScheduleResponse {
                            schedule: Some(existing),
                            created: false,
                        });
                    }
                    let schedule = Schedule {
                        schedule_id: req.schedule_id.clone(),
                        spec: req.spec.clone(),
                        paused: req.paused,
                        created_at_unix_ms: now,
                        updated_at_unix_ms: now,
                        // Ticks after creation run, none before.
                        handled_through_unix_ms: now,
                        ..Schedule::default()
                    };
                    write_schedule(&tx, &keys, &schedule)?;
                    Ok(CreateScheduleResponse {
                        schedule: Some(schedule),
                        created: true,
                    })
                }
            })
            .await?;
        self.wake.notify_one();
        Ok(CreateScheduleResponse {
            schedule: response.schedule.map(with_next_tick),
            ..response
        })
    }

    /// GetSchedule.
    pub async fn get(&self, schedule_id: &str) -> Result<Schedule> {
        rules::schedule_id("schedule_id", schedule_id)?;
        let keys = self.keys.clone();
        let found = self
            .db
            .run(|tx, _| {
                let keys = keys.clone();
                async move { read_schedule(&tx, &keys, schedule_id).await }
            })
            .await?;
        found
            .map(with_next_tick)
            .ok_or_else(|| GlobalError::NotFound(format!("schedule {schedule_id}")))
    }

    /// Every schedule, in id order (the ticker's reading).
    pub async fn all(&self) -> Result<Vec<Schedule>> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self
                .list(&ListSchedulesRequest {
                    page_size: 1000,
                    page_token: token,
                    ..ListSchedulesRequest::default()
                })
                .await?;
            all.extend(page.schedules);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
    }

    /// ListSchedules: one page in id order, optionally of one tenant.
    pub async fn list(&self, req: &ListSchedulesRequest) -> Result<ListSchedulesResponse> {
        let page_size = validate::page_size(req.page_size)?;
        let after = decode_page_token(&req.page_token)?;
        let subspace = self.keys.schedules();
        let (begin, end) = subspace.range();
        let mut from = match &after {
            Some(id) => {
                let mut key = self.keys.schedule(id);
                key.push(0);
                key
            }
            None => begin,
        };
        let mut schedules = Vec::new();
        loop {
            let rows = self
                .db
                .run(|tx, _| {
                    let (from, end) = (from.clone(), end.clone());
                    async move { tx.get_range(RangeOption::new(from, end).limit(500)).await }
                })
                .await?;
            let exhausted = rows.len() < 500;
            for kv in rows {
                from = kv.key.clone();
                from.push(0);
                let schedule = Schedule::decode(kv.value.as_slice())?;
                let tenant = schedule.spec.as_ref().map_or("", |s| s.tenant.as_str());
                if !req.tenant.is_empty() && tenant != req.tenant {
                    continue;
                }
                schedules.push(with_next_tick(schedule));
                if schedules.len() == page_size {
                    let token = schedules
                        .last()
                        .map(|s| encode_page_token(&s.schedule_id))
                        .unwrap_or_default();
                    return Ok(ListSchedulesResponse {
                        schedules,
                        next_page_token: token,
                    });
                }
            }
            if exhausted {
                return Ok(ListSchedulesResponse {
                    schedules,
                    next_page_token: String::new(),
                });
            }
        }
    }

    /// PauseSchedule (`paused = true`) and ResumeSchedule (`false`); a
    /// schedule resumed runs no tick that passed while it was paused.
    pub async fn set_paused(
        &self,
        fence: &Fence,
        schedule_id: &str,
        paused: bool,
    ) -> Result<Schedule> {
        rules::schedule_id("schedule_id", schedule_id)?;
        let keys = self.keys.clone();
        let now = self.clock.now_unix_ms();
        let schedule = self
            .db
            .run(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    let Some(mut schedule) = read_schedule(&tx, &keys, schedule_id).await? else {
                        return Err(GlobalError::NotFound(format!("schedule {schedule_id}")));
                    };
                    if schedule.paused == paused {
                        return Ok(schedule);
                    }
                    schedule.paused = paused;
                    schedule.updated_at_unix_ms = now;
                    if !paused {
                        schedule.handled_through_unix_ms =
                            schedule.handled_through_unix_ms.max(now);
                    }
                    write_schedule(&tx, &keys, &schedule)?;
                    Ok(schedule)
                }
            })
            .await?;
        self.wake.notify_one();
        Ok(with_next_tick(schedule))
    }

    /// DeleteSchedule; the jobs it created are kept.
    pub async fn delete(&self, fence: &Fence, schedule_id: &str) -> Result<Schedule> {
        rules::schedule_id("schedule_id", schedule_id)?;
        let keys = self.keys.clone();
        let schedule = self
            .db
            .run(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    let Some(schedule) = read_schedule(&tx, &keys, schedule_id).await? else {
                        return Err(GlobalError::NotFound(format!("schedule {schedule_id}")));
                    };
                    tx.clear(&keys.schedule(schedule_id))?;
                    Ok(schedule)
                }
            })
            .await?;
        self.wake.notify_one();
        Ok(Schedule {
            next_tick_unix_ms: 0,
            ..schedule
        })
    }

    /// Records what a tick did, unless the schedule is gone, was created
    /// again, or another leader recorded this tick already (then nothing is
    /// written: the first record stands). Returns whether it wrote.
    pub async fn record(
        &self,
        fence: &Fence,
        schedule_id: &str,
        tick: &TickRecord,
    ) -> Result<bool> {
        let keys = self.keys.clone();
        let now = self.clock.now_unix_ms();
        self.db
            .run(|tx, _| {
                let (keys, fence) = (keys.clone(), fence.clone());
                async move {
                    fence.check(&tx).await?;
                    let Some(mut schedule) = read_schedule(&tx, &keys, schedule_id).await? else {
                        return Ok(false);
                    };
                    if schedule.created_at_unix_ms != tick.created_at
                        || schedule.handled_through_unix_ms >= tick.handled_through
                    {
                        return Ok(false);
                    }
                    schedule.handled_through_unix_ms = tick.handled_through;
                    schedule.last_tick_unix_ms = tick.tick;
                    if let Some(job_id) = &tick.job_id {
                        schedule.last_job_id.clone_from(job_id);
                        schedule.last_run_tick_unix_ms = tick.tick;
                    }
                    schedule.last_outcome.clone_from(&tick.outcome);
                    schedule.skipped_ticks = schedule.skipped_ticks.saturating_add(tick.skipped);
                    schedule.updated_at_unix_ms = now;
                    write_schedule(&tx, &keys, &schedule)?;
                    Ok(true)
                }
            })
            .await
    }
}

const TOKEN_PREFIX: &str = "s1.";

fn encode_page_token(schedule_id: &str) -> String {
    format!("{TOKEN_PREFIX}{schedule_id}")
}

fn decode_page_token(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || GlobalError::invalid("page_token", "not a token issued by this server");
    let id = token.strip_prefix(TOKEN_PREFIX).ok_or_else(bad)?;
    rules::schedule_id("page_token", id).map_err(|_| bad())?;
    Ok(Some(id.to_string()))
}
