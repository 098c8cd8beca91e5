//! `meridian usage`: who used how much, per tenant and region, over a time
//! range (the global tier's GetUsage).
//!
//! Owns the command's flags, reading `--since` and `--until` (an age such
//! as `7d`, or a UTC date and time) into Unix milliseconds, and the table it
//! prints. Must never sum or judge usage itself: the totals and
//! percentiles are the server's, printed as returned.

use std::io::Write;

use meridian_proto::v1::{GetUsageRequest, GetUsageResponse, UsageRecord};

use crate::client::{Client, ConnectArgs};
use crate::error::{CliError, Result};
use crate::render::{self, Output, OutputArgs};

/// `meridian usage`.
#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Print JSON (the GetUsage response), as `--output json`.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub query: UsageQuery,
}

/// What `meridian usage` asks for.
#[derive(Debug, Clone, clap::Args)]
pub struct UsageQuery {
    /// Only this tenant (default: every tenant).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this region (default: every region).
    #[arg(long)]
    pub region: Option<String>,
    /// Start of the range: an age (`7d`, `36h`, `90m`, `30s`) before now,
    /// a UTC date (`2026-12-01`) or date and time (`2026-12-01T06:00:00Z`),
    /// or Unix milliseconds (`@1796000000000`). Rounded down to the hour.
    #[arg(long, default_value = "7d")]
    pub since: String,
    /// End of the range, in the same forms; default now. Rounded up to the
    /// hour.
    #[arg(long)]
    pub until: Option<String>,
    /// Also print one row per tenant, region and hour with usage.
    #[arg(long)]
    pub hourly: bool,
}

/// Runs `meridian usage`, printing to standard output.
pub async fn run(args: UsageArgs) -> Result<()> {
    let mut client = Client::new(&args.connect)?;
    let output = if args.json {
        Output::Json
    } else {
        args.output.output
    };
    let now = client.clock().now_unix_ms();
    run_into(
        &mut client,
        output,
        &args.query,
        now,
        &mut std::io::stdout(),
    )
    .await
}

/// The request the flags describe, with ages counted back from `now`.
pub fn request(query: &UsageQuery, now: u64) -> Result<GetUsageRequest> {
    Ok(GetUsageRequest {
        tenant: query.tenant.clone().unwrap_or_default(),
        region: query.region.clone().unwrap_or_default(),
        since_unix_ms: parse_time("--since", &query.since, now)?,
        until_unix_ms: match &query.until {
            Some(text) => parse_time("--until", text, now)?,
            None => 0,
        },
        hourly: query.hourly,
    })
}

/// Runs the command against `client`, writing what it prints to `out`.
pub async fn run_into(
    client: &mut Client,
    output: Output,
    query: &UsageQuery,
    now: u64,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let request = request(query, now)?;
    let response = client
        .call(|mut c| {
            let r = request.clone();
            async move { c.get_usage(r).await }
        })
        .await?;
    match output {
        Output::Json => render::write_json(out, &render::to_json("GetUsageResponse", &response)?),
        Output::Table => write_table(out, &response).map_err(render::written),
    }
}

/// A time flag: an age before `now`, a UTC date or date-time, or `@` and
/// Unix milliseconds.
pub fn parse_time(flag: &str, text: &str, now: u64) -> Result<u64> {
    let text = text.trim();
    let bad = |why: &str| {
        CliError::usage(format!(
            "{flag} {text:?}: {why} (expected an age such as 7d or 36h, a UTC date such as \
             2026-12-01 or 2026-12-01T06:00:00Z, or @ and Unix milliseconds)"
        ))
    };
    if let Some(ms) = text.strip_prefix('@') {
        return ms.parse().map_err(|_| bad("not a number of milliseconds"));
    }
    if text.len() >= 10 && text.as_bytes()[4] == b'-' {
        return parse_utc(text).ok_or_else(|| bad("not a valid UTC date"));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad("not a time"))?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(bad("the unit of an age is s, m, h, d or w")),
    };
    let age = n.saturating_mul(unit_ms);
    if age == 0 || age >= now {
        return Err(bad("the age must be more than zero and after 1970"));
    }
    Ok(now - age)
}

/// `YYYY-MM-DD`, optionally followed by `THH:MM[:SS]` and `Z`, as Unix ms.
fn parse_utc(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut secs = 0u64;
    if let Some(time) = time {
        let fields: Vec<&str> = time.split(':').collect();
        if !(2..=3).contains(&fields.len()) {
            return None;
        }
        let h: u64 = fields[0].parse().ok()?;
        let m: u64 = fields[1].parse().ok()?;
        let s: u64 = fields.get(2).map_or(Some(0), |s| s.parse().ok())?;
        if h > 23 || m > 59 || s > 59 {
            return None;
        }
        secs = h * 3600 + m * 60 + s;
    }
    let days = days_from_civil(year, month, day);
    let ms = (days * 86_400 + secs as i64).checked_mul(1000)?;
    u64::try_from(ms).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the era-based
/// calendar arithmetic: 400-year eras of 146,097 days).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A number with at most three decimals, without trailing zeros.
fn amount(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}

/// A wait in ms as seconds.
fn wait(ms: u64) -> String {
    amount(ms as f64 / 1000.0)
}

fn row(table: &mut comfy_table::Table, first: &str, second: &str, r: &UsageRecord) {
    let w = r.wait.unwrap_or_default();
    table.add_row(vec![
        first.to_string(),
        second.to_string(),
        r.tasks_run.to_string(),
        amount(r.task_run_ms as f64 / 1000.0),
        amount(r.cpu_seconds),
        amount(r.memory_gib_seconds),
        amount(r.gpu_seconds),
        w.jobs.to_string(),
        wait(w.p50_ms),
        wait(w.p90_ms),
        wait(w.p99_ms),
    ]);
}

const HEADER: [&str; 11] = [
    "TENANT",
    "REGION",
    "TASKS",
    "RUN-S",
    "CPU-S",
    "MEM-GIB-S",
    "GPU-S",
    "JOBS",
    "WAIT-P50-S",
    "WAIT-P90-S",
    "WAIT-P99-S",
];

/// The usage table: one row per tenant and region, then the total.
pub fn write_table(out: &mut dyn Write, response: &GetUsageResponse) -> std::io::Result<()> {
    writeln!(
        out,
        "usage from {} to {} (UTC, whole hours)",
        utc(response.since_unix_ms),
        utc(response.until_unix_ms)
    )?;
    let mut table = render::table(&HEADER);
    for r in &response.records {
        row(&mut table, &r.tenant, &r.region, r);
    }
    let total = response.total.clone().unwrap_or_default();
    row(&mut table, "TOTAL", "", &total);
    render::write_table(out, &table)?;
    if !response.hours.is_empty() {
        writeln!(out)?;
        let mut header = HEADER;
        header[0] = "HOUR (UTC)";
        let mut table = render::table(&header);
        for r in &response.hours {
            let who = format!("{} {}", r.tenant, r.region);
            row(&mut table, &utc(r.start_unix_ms), &who, r);
        }
        render::write_table(out, &table)?;
    }
    Ok(())
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_ages_dates_or_milliseconds() {
        let now = 1_796_000_000_000;
        assert_eq!(
            parse_time("--since", "7d", now).unwrap(),
            now - 7 * 86_400_000
        );
        assert_eq!(
            parse_time("--since", "36h", now).unwrap(),
            now - 36 * 3_600_000
        );
        assert_eq!(parse_time("--since", "@12345", now).unwrap(), 12345);
        assert_eq!(
            parse_time("--since", "1970-01-02", now).unwrap(),
            86_400_000
        );
        assert_eq!(
            parse_time("--since", "2026-12-06T12:30:00Z", now).unwrap(),
            1_796_560_200_000
        );
        for bad in ["7", "7y", "", "2026-13-01", "2026-12-01T25:00", "0d"] {
            let err = parse_time("--since", bad, now).unwrap_err().to_string();
            assert!(err.contains("--since"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_time_prints_back_as_the_date_it_was_read_from() {
        for text in [
            "2026-12-06T12:30:00Z",
            "2000-02-29T00:00:00Z",
            "1970-01-01T00:00:00Z",
        ] {
            let ms = parse_time("--until", text, u64::MAX).unwrap();
            assert_eq!(utc(ms), text);
        }
    }
}
