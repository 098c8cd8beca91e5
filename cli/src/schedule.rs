//! `meridian schedule create|list|get|pause|resume|delete`: periodic jobs.
//!
//! Owns these commands' flags (the job of a schedule is described with the
//! same flags as `meridian job submit`) and what each prints. Must never
//! judge a cron expression, a time zone or a tick itself: the global tier
//! validates the schedule (a bad field comes back naming it) and decides
//! every tick.

use std::io::Write;
use std::time::Duration;

use meridian_proto::v1::{
    CreateScheduleRequest, DeleteScheduleRequest, GetScheduleRequest, ListSchedulesRequest,
    MissedTickPolicy, OverlapPolicy, PauseScheduleRequest, ResumeScheduleRequest, Schedule,
    ScheduleSpec,
};

use crate::client::{Client, ConnectArgs};
use crate::error::{CliError, Result};
use crate::render::{self, Output, OutputArgs};
use crate::spec::{self, SpecArgs};

/// `meridian schedule`.
#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: ScheduleCommand,
}

/// The schedule subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: the job described (as for `job submit`) is
    /// created at every tick of a cron expression.
    Create(Box<CreateArgs>),
    /// List schedules.
    List {
        /// Only this tenant's schedules.
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many schedules.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one schedule: its cron, policies, next tick and last run.
    Get {
        /// The schedule id.
        schedule_id: String,
    },
    /// Stop a schedule's ticks.
    Pause {
        /// The schedule id.
        schedule_id: String,
    },
    /// Start a paused schedule's ticks again from now (ticks that passed
    /// while it was paused are not run).
    Resume {
        /// The schedule id.
        schedule_id: String,
    },
    /// Delete a schedule; the jobs it created are kept.
    Delete {
        /// The schedule id.
        schedule_id: String,
    },
}

/// Flags of `meridian schedule create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The schedule's id: lower-case letters, digits and `-`. Creating the
    /// same id with the same flags again changes nothing.
    pub schedule_id: String,
    /// Cron expression of five fields (`30 2 * * *`), of six with seconds
    /// first (`*/15 * * * * *`), or a nickname (`@daily`).
    #[arg(long)]
    pub cron: String,
    /// IANA time zone the expression is read in (`Europe/Paris`); default
    /// UTC.
    #[arg(long = "time-zone", visible_alias = "tz")]
    pub time_zone: Option<String>,
    /// While the previous run has not ended: `allow` another run, `forbid`
    /// (skip the tick) or `replace` (cancel the previous run).
    #[arg(long, value_parser = ["allow", "forbid", "replace"], default_value = "allow")]
    pub overlap: String,
    /// Ticks missed during an outage: `run-once` (the latest, however
    /// late) or `skip` (only within --starting-deadline).
    #[arg(long, value_parser = ["run-once", "skip"], default_value = "run-once")]
    pub missed: String,
    /// How late a tick may still start (`90s`, `5m`, `1h`); default 60s.
    #[arg(long, value_parser = parse_deadline)]
    pub starting_deadline: Option<Duration>,
    /// Create it paused.
    #[arg(long)]
    pub paused: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
}

/// A `--starting-deadline` value: a number with `ms`, `s`, `m` or `h`
/// (seconds without a unit).
fn parse_deadline(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 90s, 5m or 1h"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
    };
    if ms == 0 {
        return Err("--starting-deadline must be longer than zero".into());
    }
    Ok(Duration::from_millis(ms))
}

/// Runs `meridian schedule ...`, printing to standard output.
pub async fn run(args: ScheduleArgs) -> Result<()> {
    let mut client = Client::new(&args.connect)?;
    run_into(
        &mut client,
        args.output.output,
        args.command,
        &mut std::io::stdout(),
    )
    .await
}

/// Runs one schedule command, writing what it prints to `out`.
pub async fn run_into(
    client: &mut Client,
    output: Output,
    command: ScheduleCommand,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    match command {
        ScheduleCommand::Create(args) => create(client, output, *args, out).await,
        ScheduleCommand::List { tenant, limit } => list(client, output, tenant, limit, out).await,
        ScheduleCommand::Get { schedule_id } => {
            let request = GetScheduleRequest { schedule_id };
            let response = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.get_schedule(r).await }
                })
                .await?;
            let schedule = response.schedule.unwrap_or_default();
            match output {
                Output::Json => render::write_json(out, &render::to_json("Schedule", &schedule)?),
                Output::Table => write_schedule(out, &schedule).map_err(render::written),
            }
        }
        ScheduleCommand::Pause { schedule_id } => {
            let request = PauseScheduleRequest { schedule_id };
            let response = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.pause_schedule(r).await }
                })
                .await?;
            changed(
                output,
                &response.schedule.unwrap_or_default(),
                "paused",
                out,
            )
        }
        ScheduleCommand::Resume { schedule_id } => {
            let request = ResumeScheduleRequest { schedule_id };
            let response = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.resume_schedule(r).await }
                })
                .await?;
            changed(
                output,
                &response.schedule.unwrap_or_default(),
                "resumed",
                out,
            )
        }
        ScheduleCommand::Delete { schedule_id } => {
            let request = DeleteScheduleRequest { schedule_id };
            let response = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.delete_schedule(r).await }
                })
                .await?;
            let schedule = response.schedule.unwrap_or_default();
            match output {
                Output::Json => render::write_json(out, &render::to_json("Schedule", &schedule)?),
                Output::Table => writeln!(
                    out,
                    "deleted schedule {}; the jobs it created are kept",
                    schedule.schedule_id
                )
                .map_err(render::written),
            }
        }
    }
}

/// The create request the flags describe: the job as `job submit` builds
/// it, owned by its tenant.
pub fn request(args: &CreateArgs) -> Result<CreateScheduleRequest> {
    let job = spec::build(&args.spec)?;
    let overlap = match args.overlap.as_str() {
        "forbid" => OverlapPolicy::Forbid,
        "replace" => OverlapPolicy::Replace,
        _ => OverlapPolicy::Allow,
    };
    let missed = match args.missed.as_str() {
        "skip" => MissedTickPolicy::Skip,
        _ => MissedTickPolicy::RunOnce,
    };
    let starting_deadline_ms = match args.starting_deadline {
        Some(d) => u64::try_from(d.as_millis())
            .map_err(|_| CliError::usage("--starting-deadline is too long"))?,
        None => 0,
    };
    Ok(CreateScheduleRequest {
        schedule_id: args.schedule_id.clone(),
        spec: Some(ScheduleSpec {
            tenant: job.tenant.clone(),
            cron: args.cron.clone(),
            time_zone: args.time_zone.clone().unwrap_or_default(),
            job: Some(job),
            overlap_policy: overlap.into(),
            missed_tick_policy: missed.into(),
            starting_deadline_ms,
        }),
        paused: args.paused,
    })
}

async fn create(
    client: &mut Client,
    output: Output,
    args: CreateArgs,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let request = request(&args)?;
    let response = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.create_schedule(r).await }
        })
        .await?;
    if output == Output::Json {
        return render::write_json(out, &render::to_json("CreateScheduleResponse", &response)?);
    }
    let schedule = response.schedule.unwrap_or_default();
    let what = if response.created {
        "created"
    } else {
        "exists already with this spec"
    };
    changed(output, &schedule, what, out)
}

async fn list(
    client: &mut Client,
    output: Output,
    tenant: Option<String>,
    limit: usize,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let mut schedules: Vec<Schedule> = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListSchedulesRequest {
            tenant: tenant.clone().unwrap_or_default(),
            page_size: limit.saturating_sub(schedules.len()).clamp(1, 1000) as u32,
            page_token: page_token.clone(),
        };
        let page = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.list_schedules(r).await }
            })
            .await?;
        schedules.extend(page.schedules);
        page_token = page.next_page_token;
        if page_token.is_empty() || schedules.len() >= limit {
            break;
        }
    }
    schedules.truncate(limit);
    if output == Output::Json {
        let items = schedules
            .iter()
            .map(|s| render::to_json("Schedule", s))
            .collect::<Result<Vec<_>>>()?;
        return render::write_json(out, &serde_json::json!({ "schedules": items }));
    }
    let mut table = render::table(&[
        "ID", "TENANT", "CRON", "ZONE", "STATE", "NEXT", "LAST JOB", "LAST",
    ]);
    for s in &schedules {
        let spec = s.spec.clone().unwrap_or_default();
        table.add_row(vec![
            s.schedule_id.clone(),
            spec.tenant,
            spec.cron,
            zone(&spec.time_zone).to_string(),
            if s.paused { "paused" } else { "active" }.to_string(),
            utc(s.next_tick_unix_ms),
            dash(&s.last_job_id),
            render::ellipsis(&s.last_outcome, 50),
        ]);
    }
    render::write_table(out, &table).map_err(render::written)
}

/// One line saying what a call did, or the schedule as JSON.
fn changed(
    output: Output,
    schedule: &Schedule,
    what: &str,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    match output {
        Output::Json => render::write_json(out, &render::to_json("Schedule", schedule)?),
        Output::Table => {
            let next = if schedule.paused {
                "paused".to_string()
            } else {
                format!("next tick {}", utc(schedule.next_tick_unix_ms))
            };
            writeln!(out, "schedule {} {what} ({next})", schedule.schedule_id)
                .map_err(render::written)
        }
    }
}

fn write_schedule(out: &mut dyn Write, s: &Schedule) -> std::io::Result<()> {
    let spec = s.spec.clone().unwrap_or_default();
    // Named as the flags of `schedule create` name them; unset is the
    // server's default.
    let overlap = match OverlapPolicy::try_from(spec.overlap_policy) {
        Ok(OverlapPolicy::Forbid) => "forbid",
        Ok(OverlapPolicy::Replace) => "replace",
        _ => "allow",
    };
    let missed = match MissedTickPolicy::try_from(spec.missed_tick_policy) {
        Ok(MissedTickPolicy::Skip) => "skip",
        _ => "run-once",
    };
    writeln!(out, "schedule:  {}", s.schedule_id)?;
    writeln!(out, "tenant:    {}", spec.tenant)?;
    writeln!(out, "cron:      {} ({})", spec.cron, zone(&spec.time_zone))?;
    writeln!(out, "overlap:   {overlap}")?;
    let deadline = match spec.starting_deadline_ms {
        0 => 60_000,
        ms => ms,
    };
    writeln!(
        out,
        "missed:    {missed} (starting deadline {} s)",
        deadline / 1000
    )?;
    writeln!(
        out,
        "state:     {}",
        if s.paused { "paused" } else { "active" }
    )?;
    writeln!(out, "next:      {}", utc(s.next_tick_unix_ms))?;
    writeln!(out, "last tick: {}", utc(s.last_tick_unix_ms))?;
    writeln!(out, "last job:  {}", dash(&s.last_job_id))?;
    if !s.last_outcome.is_empty() {
        writeln!(out, "outcome:   {}", s.last_outcome)?;
    }
    writeln!(out, "skipped:   {} ticks", s.skipped_ticks)?;
    writeln!(out, "created:   {}", utc(s.created_at_unix_ms))
}

fn zone(name: &str) -> &str {
    if name.is_empty() { "UTC" } else { name }
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC); `-` for 0.
pub fn utc(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    let secs = unix_ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian
    // calendar, as in Howard Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_milliseconds_are_written_as_utc_dates() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_767_225_599_999), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn a_starting_deadline_takes_a_unit_and_must_be_longer_than_zero() {
        assert_eq!(parse_deadline("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_deadline("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_deadline("0s").is_err());
        assert!(parse_deadline("5d").is_err());
    }
}
