//! The rules a schedule request follows, and the job a tick submits.
//!
//! Owns validation of `CreateScheduleRequest` and the schedule calls (every
//! violation names its proto path: `spec.cron`, `spec.job.resources.cpu_millis`)
//! and the deterministic making of a tick's submit: its request id from
//! (schedule id, creation time, tick time) and its spec from the template.
//! It must never touch the store, and never make a tick's request depend on
//! anything but the schedule record and the tick, so that every leader
//! builds the same request for the same tick.

use meridian_proto::v1::{
    CreateScheduleRequest, JobSpec, MissedTickPolicy, OverlapPolicy, Schedule, SubmitJobRequest,
};

use super::cadence::Cadence;
use crate::error::{GlobalError, Result};
use crate::validate;

/// Longest schedule id, in bytes (a DNS label, as Kubernetes names are).
pub const MAX_SCHEDULE_ID_BYTES: usize = 63;
/// Starting deadline when none is given: a minute.
pub const DEFAULT_STARTING_DEADLINE_MS: u64 = 60_000;
/// Longest starting deadline: a week.
pub const MAX_STARTING_DEADLINE_MS: u64 = 7 * 24 * 3600 * 1000;
/// The label every job of a schedule carries, valued with the schedule id.
pub const SCHEDULE_LABEL: &str = "meridian.schedule";

/// Checks a schedule id (`field` names it in the error).
pub fn schedule_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(GlobalError::invalid(field, "required"));
    }
    if id.len() > MAX_SCHEDULE_ID_BYTES {
        return Err(GlobalError::invalid(
            field,
            format!("{} bytes, at most {MAX_SCHEDULE_ID_BYTES}", id.len()),
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !id.chars().all(allowed) || id.starts_with('-') {
        return Err(GlobalError::invalid(
            field,
            format!("{id:?}: lower-case letters, digits and '-', starting with a letter or digit"),
        ));
    }
    Ok(())
}

/// Checks a create request; returns the parsed cadence.
pub fn create(req: &CreateScheduleRequest) -> Result<Cadence> {
    schedule_id("schedule_id", &req.schedule_id)?;
    let Some(spec) = &req.spec else {
        return Err(GlobalError::invalid("spec", "required"));
    };
    if spec.tenant.is_empty() {
        return Err(GlobalError::invalid("spec.tenant", "required"));
    }
    if spec.tenant.len() > validate::MAX_TENANT_BYTES {
        return Err(GlobalError::invalid(
            "spec.tenant",
            format!(
                "{} bytes, at most {}",
                spec.tenant.len(),
                validate::MAX_TENANT_BYTES
            ),
        ));
    }
    let cadence = Cadence::parse(&spec.cron, &spec.time_zone)?;
    if OverlapPolicy::try_from(spec.overlap_policy).is_err() {
        return Err(GlobalError::invalid(
            "spec.overlap_policy",
            format!("unknown enum value {}", spec.overlap_policy),
        ));
    }
    if MissedTickPolicy::try_from(spec.missed_tick_policy).is_err() {
        return Err(GlobalError::invalid(
            "spec.missed_tick_policy",
            format!("unknown enum value {}", spec.missed_tick_policy),
        ));
    }
    if spec.starting_deadline_ms > MAX_STARTING_DEADLINE_MS {
        return Err(GlobalError::invalid(
            "spec.starting_deadline_ms",
            format!("at most {MAX_STARTING_DEADLINE_MS} (7 days)"),
        ));
    }
    let Some(job) = &spec.job else {
        return Err(GlobalError::invalid("spec.job", "required"));
    };
    if !job.tenant.is_empty() && job.tenant != spec.tenant {
        return Err(GlobalError::invalid(
            "spec.job.tenant",
            format!(
                "{:?} differs from the schedule's tenant {:?}: leave it empty or equal",
                job.tenant, spec.tenant
            ),
        ));
    }
    if !job.dependencies.is_empty() {
        return Err(GlobalError::invalid(
            "spec.job.dependencies",
            "not allowed in a schedule's job: each run would wait on the same jobs",
        ));
    }
    if job.labels.contains_key(SCHEDULE_LABEL) {
        return Err(GlobalError::invalid(
            format!("spec.job.labels[{SCHEDULE_LABEL:?}]"),
            "set by the schedule itself",
        ));
    }
    // The template is checked as the submit of a tick will be, with the
    // paths moved under `spec.job`.
    let sample = submit_for(&req.schedule_id, &spec.tenant, job, 0, 0);
    validate::submit(&sample).map_err(|err| match err {
        GlobalError::Invalid { field, message } => GlobalError::Invalid {
            field: match field.strip_prefix("spec") {
                Some(rest) => format!("spec.job{rest}"),
                None => field,
            },
            message,
        },
        other => other,
    })?;
    Ok(cadence)
}

/// The submit of `schedule`'s tick at `tick` (unix ms): the same request
/// on every leader, so the request-id index makes a tick's job once.
pub fn tick_submit(schedule: &Schedule, tick: u64) -> Result<SubmitJobRequest> {
    let spec = schedule.spec.as_ref().ok_or_else(|| {
        GlobalError::Corrupt(format!("schedule {} has no spec", schedule.schedule_id))
    })?;
    let job = spec.job.as_ref().ok_or_else(|| {
        GlobalError::Corrupt(format!("schedule {} has no job", schedule.schedule_id))
    })?;
    Ok(submit_for(
        &schedule.schedule_id,
        &spec.tenant,
        job,
        schedule.created_at_unix_ms,
        tick,
    ))
}

/// The request id of a tick: the schedule id, its creation time (a
/// schedule deleted and created again under the same id starts a new
/// series) and the tick time.
pub fn tick_request_id(schedule_id: &str, created_at: u64, tick: u64) -> String {
    format!("schedule/{schedule_id}/{created_at}/{tick}")
}

fn submit_for(
    schedule_id: &str,
    tenant: &str,
    template: &JobSpec,
    created_at: u64,
    tick: u64,
) -> SubmitJobRequest {
    let mut spec = template.clone();
    spec.tenant = tenant.to_string();
    if spec.name.is_empty() {
        spec.name = schedule_id.to_string();
    }
    spec.labels
        .insert(SCHEDULE_LABEL.to_string(), schedule_id.to_string());
    SubmitJobRequest {
        request_id: tick_request_id(schedule_id, created_at, tick),
        spec: Some(spec),
    }
}

/// The starting deadline of a spec, its default filled in.
pub fn starting_deadline_ms(spec: &meridian_proto::v1::ScheduleSpec) -> u64 {
    match spec.starting_deadline_ms {
        0 => DEFAULT_STARTING_DEADLINE_MS,
        ms => ms,
    }
}

#[cfg(test)]
mod tests {
    use meridian_proto::v1::{
        JobDependency, Resources, ScheduleSpec, Simulated, TaskTemplate, task_template,
    };

    use super::*;

    fn request() -> CreateScheduleRequest {
        CreateScheduleRequest {
            schedule_id: "nightly".into(),
            spec: Some(ScheduleSpec {
                tenant: "acme".into(),
                cron: "0 3 * * *".into(),
                time_zone: "Europe/Paris".into(),
                job: Some(JobSpec {
                    task_count: 1,
                    task: Some(TaskTemplate {
                        kind: Some(task_template::Kind::Simulated(Simulated {
                            duration_ms: 10,
                            exit_code: 0,
                        })),
                    }),
                    resources: Some(Resources {
                        cpu_millis: 100,
                        memory_bytes: 1 << 20,
                        ..Resources::default()
                    }),
                    ..JobSpec::default()
                }),
                ..ScheduleSpec::default()
            }),
            paused: false,
        }
    }

    fn field_of(req: &CreateScheduleRequest) -> String {
        create(req)
            .unwrap_err()
            .field()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn a_valid_request_passes_and_its_job_name_defaults_to_the_schedule_id() {
        let req = request();
        create(&req).unwrap();
        let schedule = Schedule {
            schedule_id: "nightly".into(),
            spec: req.spec.clone(),
            created_at_unix_ms: 5,
            ..Schedule::default()
        };
        let submit = tick_submit(&schedule, 1_000).unwrap();
        assert_eq!(submit.request_id, "schedule/nightly/5/1000");
        let spec = submit.spec.unwrap();
        assert_eq!(spec.name, "nightly");
        assert_eq!(spec.tenant, "acme");
        assert_eq!(
            spec.labels.get(SCHEDULE_LABEL).map(String::as_str),
            Some("nightly")
        );
        assert_eq!(
            tick_submit(&schedule, 1_000).unwrap().request_id,
            submit.request_id
        );
    }

    #[test]
    fn every_bad_field_is_refused_by_its_proto_path() {
        type Spoil = Box<dyn Fn(&mut CreateScheduleRequest)>;
        let cases: Vec<(&str, Spoil)> = vec![
            (
                "schedule_id",
                Box::new(|r| r.schedule_id = "Nightly".into()),
            ),
            ("schedule_id", Box::new(|r| r.schedule_id = "-x".into())),
            ("schedule_id", Box::new(|r| r.schedule_id = "x".repeat(64))),
            ("spec", Box::new(|r| r.spec = None)),
            (
                "spec.tenant",
                Box::new(|r| r.spec.as_mut().unwrap().tenant.clear()),
            ),
            (
                "spec.cron",
                Box::new(|r| r.spec.as_mut().unwrap().cron = "0 25 * * *".into()),
            ),
            (
                "spec.time_zone",
                Box::new(|r| r.spec.as_mut().unwrap().time_zone = "Nowhere/Else".into()),
            ),
            (
                "spec.overlap_policy",
                Box::new(|r| r.spec.as_mut().unwrap().overlap_policy = 9),
            ),
            (
                "spec.missed_tick_policy",
                Box::new(|r| r.spec.as_mut().unwrap().missed_tick_policy = 9),
            ),
            (
                "spec.starting_deadline_ms",
                Box::new(|r| {
                    r.spec.as_mut().unwrap().starting_deadline_ms = MAX_STARTING_DEADLINE_MS + 1
                }),
            ),
            (
                "spec.job",
                Box::new(|r| r.spec.as_mut().unwrap().job = None),
            ),
            (
                "spec.job.tenant",
                Box::new(|r| {
                    r.spec.as_mut().unwrap().job.as_mut().unwrap().tenant = "other".into()
                }),
            ),
            (
                "spec.job.task_count",
                Box::new(|r| r.spec.as_mut().unwrap().job.as_mut().unwrap().task_count = 0),
            ),
            (
                "spec.job.resources.cpu_millis",
                Box::new(|r| {
                    let job = r.spec.as_mut().unwrap().job.as_mut().unwrap();
                    job.resources.as_mut().unwrap().cpu_millis = 0;
                }),
            ),
            (
                "spec.job.dependencies",
                Box::new(|r| {
                    let job = r.spec.as_mut().unwrap().job.as_mut().unwrap();
                    job.dependencies.push(JobDependency::default());
                }),
            ),
            (
                "spec.job.labels[\"meridian.schedule\"]",
                Box::new(|r| {
                    let job = r.spec.as_mut().unwrap().job.as_mut().unwrap();
                    job.labels.insert(SCHEDULE_LABEL.into(), "x".into());
                }),
            ),
        ];
        for (field, spoil) in cases {
            let mut req = request();
            spoil(&mut req);
            assert_eq!(field_of(&req), field);
        }
    }
}
