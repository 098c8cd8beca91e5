//! When a schedule ticks, and what one look at a schedule decides (pure).
//!
//! Owns the arithmetic of ticks: a cron expression read in an IANA time
//! zone ([`Cadence`], on `croner` with the tz database bundled in `jiff`,
//! so every machine gives the same answers), which ticks are due at a
//! given time and which of them run under the missed-tick policy
//! ([`plan`]), and what the overlap policy makes of the previous run
//! ([`overlap`]). It must never read a clock or the store: callers pass
//! the time and the previous run's state in, so the tests can walk a
//! schedule across DST changes and outages without waiting.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use meridian_proto::v1::{JobState, MissedTickPolicy, OverlapPolicy};

use crate::error::{GlobalError, Result};
use crate::lifecycle;

/// Missed ticks counted one by one at most in one look; an outage longer
/// than that many ticks adds this many to the count (the count is for
/// people, the decision never depends on it).
pub const MAX_COUNTED: u64 = 1000;

/// A cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct Cadence {
    cron: Cron,
    zone: TimeZone,
}

impl Cadence {
    /// Parses `expr` (five fields, six with seconds first, or a nickname
    /// such as `@daily`) read in the IANA zone `zone` (empty: UTC). Errors
    /// name `spec.cron` or `spec.time_zone`.
    pub fn parse(expr: &str, zone: &str) -> Result<Cadence> {
        let zone = if zone.is_empty() {
            TimeZone::UTC
        } else {
            TimeZone::get(zone).map_err(|_| {
                GlobalError::invalid(
                    "spec.time_zone",
                    format!("unknown time zone {zone:?}: name an IANA zone such as Europe/Paris"),
                )
            })?
        };
        if expr.trim().is_empty() {
            return Err(GlobalError::invalid("spec.cron", "required"));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| {
                GlobalError::invalid(
                    "spec.cron",
                    format!(
                        "not a cron expression of five fields (minute hour day-of-month \
                         month day-of-week), or six with seconds first: {e}"
                    ),
                )
            })?;
        Ok(Cadence { cron, zone })
    }

    /// The first tick strictly after `unix_ms`, if there is one.
    pub fn next_after(&self, unix_ms: u64) -> Option<u64> {
        let from = self.zoned(unix_ms)?;
        let next = self.cron.find_next_occurrence(&from, false).ok()?;
        u64::try_from(next.timestamp().as_millisecond()).ok()
    }

    /// The last tick at or before `unix_ms`, if there is one.
    pub fn latest_at_or_before(&self, unix_ms: u64) -> Option<u64> {
        let from = self.zoned(unix_ms)?;
        let previous = self.cron.find_previous_occurrence(&from, true).ok()?;
        u64::try_from(previous.timestamp().as_millisecond()).ok()
    }

    fn zoned(&self, unix_ms: u64) -> Option<jiff::Zoned> {
        let ms = i64::try_from(unix_ms).ok()?;
        Some(
            Timestamp::from_millisecond(ms)
                .ok()?
                .to_zoned(self.zone.clone()),
        )
    }
}

/// What one look at a schedule at `now` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The tick to run now (subject to the overlap policy), if any.
    pub run: Option<u64>,
    /// The latest due tick, run or not; `None` when no tick is due.
    pub tick: Option<u64>,
    /// Every tick at or before this is handled once the plan is recorded.
    pub handled_through: u64,
    /// Due ticks that will never run (missed in an outage).
    pub missed: u64,
    /// The first tick after `handled_through`.
    pub next_tick: Option<u64>,
}

/// What is due at `now` for a schedule whose ticks up to `handled_through`
/// are handled. The latest due tick runs when it is at most
/// `deadline_ms` late, or however late under RUN_ONCE; earlier due ticks
/// never run (a schedule runs at most one job per look, so an outage of a
/// day does not start a day of jobs at once).
pub fn plan(
    cadence: &Cadence,
    handled_through: u64,
    now: u64,
    policy: MissedTickPolicy,
    deadline_ms: u64,
) -> Plan {
    let latest = cadence
        .latest_at_or_before(now)
        .filter(|t| *t > handled_through);
    let Some(latest) = latest else {
        return Plan {
            run: None,
            tick: None,
            handled_through,
            missed: 0,
            next_tick: cadence.next_after(handled_through.max(now)),
        };
    };
    let mut missed = 0;
    let mut at = handled_through;
    while missed < MAX_COUNTED {
        match cadence.next_after(at) {
            Some(t) if t < latest => {
                missed += 1;
                at = t;
            }
            _ => break,
        }
    }
    let on_time = now.saturating_sub(latest) <= deadline_ms;
    let run = (on_time || policy != MissedTickPolicy::Skip).then_some(latest);
    if run.is_none() {
        missed += 1;
    }
    Plan {
        run,
        tick: Some(latest),
        handled_through: latest,
        missed,
        next_tick: cadence.next_after(latest),
    }
}

/// What a tick does about the schedule's previous run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlap {
    /// Create the tick's job.
    Run,
    /// Skip the tick, for this reason.
    Skip(String),
    /// Cancel this job (the previous run), then create the tick's job.
    Replace(String),
}

/// The overlap policy applied to the previous run (`job id`, state), if the
/// schedule has one.
pub fn overlap(policy: OverlapPolicy, previous: Option<(&str, JobState)>) -> Overlap {
    let Some((job_id, state)) = previous else {
        return Overlap::Run;
    };
    if lifecycle::is_terminal(state) {
        return Overlap::Run;
    }
    match policy {
        OverlapPolicy::Unspecified | OverlapPolicy::Allow => Overlap::Run,
        OverlapPolicy::Forbid => Overlap::Skip(format!(
            "skipped: previous run {job_id} is {} (overlap policy FORBID)",
            state_name(state)
        )),
        OverlapPolicy::Replace => Overlap::Replace(job_id.to_string()),
    }
}

fn state_name(state: JobState) -> &'static str {
    state
        .as_str_name()
        .strip_prefix("JOB_STATE_")
        .unwrap_or(state.as_str_name())
}

/// A unix time in RFC 3339, for messages.
pub fn rfc3339(unix_ms: u64) -> String {
    i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .map_or_else(|| format!("{unix_ms} ms"), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;
    const HOUR: u64 = 60 * MINUTE;

    /// Unix ms of an RFC 3339 instant.
    fn at(s: &str) -> u64 {
        u64::try_from(s.parse::<Timestamp>().unwrap().as_millisecond()).unwrap()
    }

    fn cadence(expr: &str, zone: &str) -> Cadence {
        Cadence::parse(expr, zone).unwrap()
    }

    #[test]
    fn a_daily_expression_ticks_at_that_wall_time_in_its_time_zone() {
        let c = cadence("30 2 * * *", "Asia/Tokyo");
        // 02:30 in Tokyo (UTC+9) is 17:30 UTC the day before.
        assert_eq!(
            c.next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2026-03-01T17:30:00Z"))
        );
        let utc = cadence("30 2 * * *", "");
        assert_eq!(
            utc.next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2026-03-01T02:30:00Z"))
        );
    }

    #[test]
    fn the_next_tick_is_strictly_after_the_given_time_and_the_latest_may_be_at_it() {
        let c = cadence("*/15 * * * *", "UTC");
        let t = at("2026-05-05T10:15:00Z");
        assert_eq!(c.next_after(t), Some(t + 15 * MINUTE));
        assert_eq!(c.latest_at_or_before(t), Some(t));
        assert_eq!(c.latest_at_or_before(t - 1), Some(t - 15 * MINUTE));
    }

    #[test]
    fn a_six_field_expression_reads_its_first_field_as_seconds() {
        let c = cadence("*/15 * * * * *", "UTC");
        let t = at("2026-05-05T10:15:00Z");
        assert_eq!(c.next_after(t), Some(t + 15_000));
        assert_eq!(c.next_after(t + 59_000), Some(t + MINUTE));
        // Five fields still start with the minute: ticks a minute apart.
        let minutely = cadence("* * * * *", "UTC");
        assert_eq!(minutely.next_after(t), Some(t + MINUTE));
    }

    #[test]
    fn a_wall_time_skipped_by_the_spring_dst_change_runs_at_the_first_instant_after_the_gap() {
        // Europe/Paris jumps from 02:00 CET to 03:00 CEST on 2026-03-29:
        // 02:30 does not exist that day.
        let c = cadence("30 2 * * *", "Europe/Paris");
        let night_before = at("2026-03-28T12:00:00Z");
        // 03:00 CEST is 01:00 UTC.
        assert_eq!(c.next_after(night_before), Some(at("2026-03-29T01:00:00Z")));
        // The day after, 02:30 CEST again (00:30 UTC): one run per day.
        assert_eq!(
            c.next_after(at("2026-03-29T01:00:00Z")),
            Some(at("2026-03-30T00:30:00Z"))
        );
    }

    #[test]
    fn a_wall_time_repeated_by_the_autumn_dst_change_runs_once() {
        // Europe/Paris falls back from 03:00 CEST to 02:00 CET on
        // 2026-10-25: 02:30 happens twice (00:30 and 01:30 UTC).
        let c = cadence("30 2 * * *", "Europe/Paris");
        let first = c.next_after(at("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, at("2026-10-25T00:30:00Z"));
        assert_eq!(c.next_after(first), Some(at("2026-10-26T01:30:00Z")));
    }

    #[test]
    fn an_hourly_schedule_keeps_one_hour_of_real_time_between_ticks_across_dst() {
        let c = cadence("0 * * * *", "America/New_York");
        // New York springs forward at 02:00 EST (07:00 UTC) on 2026-03-08.
        let mut t = at("2026-03-08T05:00:00Z");
        for _ in 0..4 {
            let next = c.next_after(t).unwrap();
            assert_eq!(next - t, HOUR);
            t = next;
        }
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_naming_the_field() {
        for bad in [
            "",
            "  ",
            "61 * * * *",
            "* * *",
            "61 * * * * *",
            "0 0 0 * * * *",
            "every day",
        ] {
            let err = Cadence::parse(bad, "").unwrap_err();
            assert_eq!(err.field(), Some("spec.cron"), "{bad:?}: {err}");
        }
        let err = Cadence::parse("0 * * * *", "Mars/Olympus_Mons").unwrap_err();
        assert_eq!(err.field(), Some("spec.time_zone"));
        assert!(err.to_string().contains("Mars/Olympus_Mons"), "{err}");
        assert!(Cadence::parse("@daily", "Europe/Paris").is_ok());
        assert!(Cadence::parse("0 9 * * MON-FRI", "America/Sao_Paulo").is_ok());
    }

    #[test]
    fn nothing_is_due_before_the_first_tick_and_the_next_tick_is_told() {
        let c = cadence("0 * * * *", "UTC");
        let created = at("2026-01-01T10:20:00Z");
        let p = plan(
            &c,
            created,
            created + MINUTE,
            MissedTickPolicy::RunOnce,
            MINUTE,
        );
        assert_eq!(p.run, None);
        assert_eq!(p.tick, None);
        assert_eq!(p.handled_through, created);
        assert_eq!(p.next_tick, Some(at("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn a_tick_seen_on_time_runs_under_both_policies() {
        let c = cadence("0 * * * *", "UTC");
        let tick = at("2026-01-01T11:00:00Z");
        for policy in [MissedTickPolicy::RunOnce, MissedTickPolicy::Skip] {
            let p = plan(&c, tick - 40 * MINUTE, tick + 5_000, policy, MINUTE);
            assert_eq!(p.run, Some(tick));
            assert_eq!(p.missed, 0);
            assert_eq!(p.handled_through, tick);
            assert_eq!(p.next_tick, Some(tick + HOUR));
        }
    }

    #[test]
    fn after_an_outage_run_once_runs_only_the_latest_missed_tick() {
        let c = cadence("0 * * * *", "UTC");
        let handled = at("2026-01-01T10:00:00Z");
        // Down from 10:30 to 15:20: ticks 11, 12, 13, 14 and 15 passed.
        let now = at("2026-01-01T15:20:00Z");
        let p = plan(&c, handled, now, MissedTickPolicy::RunOnce, MINUTE);
        assert_eq!(p.run, Some(at("2026-01-01T15:00:00Z")));
        assert_eq!(p.missed, 4);
        assert_eq!(p.handled_through, at("2026-01-01T15:00:00Z"));
        assert_eq!(p.next_tick, Some(at("2026-01-01T16:00:00Z")));
        // Looked at again a moment later, nothing more is due.
        let again = plan(
            &c,
            p.handled_through,
            now + 1,
            MissedTickPolicy::RunOnce,
            MINUTE,
        );
        assert_eq!(again.run, None);
    }

    #[test]
    fn after_an_outage_skip_runs_nothing_late_and_waits_for_the_next_tick() {
        let c = cadence("0 * * * *", "UTC");
        let handled = at("2026-01-01T10:00:00Z");
        let now = at("2026-01-01T15:20:00Z");
        let p = plan(&c, handled, now, MissedTickPolicy::Skip, MINUTE);
        assert_eq!(p.run, None);
        assert_eq!(p.tick, Some(at("2026-01-01T15:00:00Z")));
        assert_eq!(p.missed, 5);
        assert_eq!(p.handled_through, at("2026-01-01T15:00:00Z"));
        assert_eq!(p.next_tick, Some(at("2026-01-01T16:00:00Z")));
        // A tick still within the starting deadline runs under SKIP too.
        let p = plan(&c, handled, now, MissedTickPolicy::Skip, 30 * MINUTE);
        assert_eq!(p.run, Some(at("2026-01-01T15:00:00Z")));
        assert_eq!(p.missed, 4);
    }

    #[test]
    fn a_very_long_outage_counts_at_most_the_bound_of_missed_ticks() {
        let c = cadence("* * * * *", "UTC");
        let handled = at("2026-01-01T00:00:00Z");
        let now = handled + 10 * 24 * HOUR;
        let p = plan(&c, handled, now, MissedTickPolicy::RunOnce, MINUTE);
        assert_eq!(p.run, Some(now));
        assert_eq!(p.missed, MAX_COUNTED);
    }

    #[test]
    fn overlap_allow_runs_forbid_skips_and_replace_cancels_an_unfinished_previous_run() {
        let running = Some(("j1", JobState::Running));
        assert_eq!(overlap(OverlapPolicy::Allow, running), Overlap::Run);
        assert_eq!(overlap(OverlapPolicy::Unspecified, running), Overlap::Run);
        assert_eq!(
            overlap(OverlapPolicy::Forbid, running),
            Overlap::Skip("skipped: previous run j1 is RUNNING (overlap policy FORBID)".into())
        );
        assert_eq!(
            overlap(OverlapPolicy::Replace, Some(("j1", JobState::Pending))),
            Overlap::Replace("j1".into())
        );
    }

    #[test]
    fn every_overlap_policy_runs_when_the_previous_run_ended_or_there_is_none() {
        for policy in [
            OverlapPolicy::Allow,
            OverlapPolicy::Forbid,
            OverlapPolicy::Replace,
        ] {
            assert_eq!(overlap(policy, None), Overlap::Run);
            for ended in [JobState::Succeeded, JobState::Failed, JobState::Cancelled] {
                assert_eq!(overlap(policy, Some(("j1", ended))), Overlap::Run);
            }
        }
    }
}
