//! The usage chart: one metric over time, one stacked column per hour (or
//! per day for ranges over two days), one colour per tenant, as inline SVG
//! drawn on the server.
//!
//! Owns the bucketing of hourly rows into columns and the drawing. Must
//! never sum anything the tier did not report: every column is the sum of
//! the hourly rows that fall in it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::render::{self, esc, nice_ceiling, num};
use crate::view::{UsageRow, UsageView};

/// Tenants drawn in their own colour; the rest share one.
const SERIES: usize = 7;
const HOUR_MS: u64 = 3_600_000;
const W: f64 = 1100.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// What the chart plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Cpu,
    Memory,
    Gpu,
    Tasks,
}

impl Metric {
    /// Parses the `metric` query parameter.
    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "" | "cpu" => Some(Metric::Cpu),
            "memory" => Some(Metric::Memory),
            "gpu" => Some(Metric::Gpu),
            "tasks" => Some(Metric::Tasks),
            _ => None,
        }
    }

    /// The query parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::Memory => "memory",
            Metric::Gpu => "gpu",
            Metric::Tasks => "tasks",
        }
    }

    /// What is plotted, with its unit.
    pub fn title(self) -> &'static str {
        match self {
            Metric::Cpu => "CPU (core-seconds)",
            Metric::Memory => "Memory (GiB-seconds)",
            Metric::Gpu => "GPU (GPU-seconds)",
            Metric::Tasks => "Tasks run",
        }
    }

    /// The metric's value in a row.
    pub fn of(self, r: &UsageRow) -> f64 {
        match self {
            Metric::Cpu => r.cpu_seconds,
            Metric::Memory => r.memory_gib_seconds,
            Metric::Gpu => r.gpu_seconds,
            Metric::Tasks => r.tasks_run as f64,
        }
    }
}

/// Column width for a range: an hour up to two days, else a day.
pub fn bucket_ms(since: u64, until: u64) -> u64 {
    if until.saturating_sub(since) <= 48 * HOUR_MS {
        HOUR_MS
    } else {
        24 * HOUR_MS
    }
}

/// The tenants drawn in their own colour, largest first, and whether
/// others share the last colour.
fn series(view: &UsageView, metric: Metric) -> (Vec<String>, bool) {
    let mut by_tenant: BTreeMap<&str, f64> = BTreeMap::new();
    for r in &view.records {
        *by_tenant.entry(r.tenant.as_str()).or_default() += metric.of(r);
    }
    let mut ranked: Vec<(&str, f64)> = by_tenant.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    let others = ranked.len() > SERIES;
    let named = ranked
        .into_iter()
        .take(if others { SERIES - 1 } else { SERIES })
        .map(|(t, _)| t.to_string())
        .collect();
    (named, others)
}

/// The chart with its legend, as a `<figure>`.
pub fn usage_chart(view: &UsageView, metric: Metric) -> String {
    let (since, until) = (
        view.since_unix_ms,
        view.until_unix_ms.max(view.since_unix_ms + 1),
    );
    let step = bucket_ms(since, until);
    let columns = until.saturating_sub(since).div_ceil(step).max(1) as usize;
    let (named, others) = series(view, metric);
    let slot = |tenant: &str| {
        named
            .iter()
            .position(|t| t == tenant)
            .unwrap_or(named.len())
    };
    // stacks[column][series]
    let mut stacks = vec![vec![0.0_f64; named.len() + 1]; columns];
    for r in &view.hours {
        let column = (r.start_unix_ms.saturating_sub(since) / step) as usize;
        if let Some(stack) = stacks.get_mut(column) {
            stack[slot(&r.tenant)] += metric.of(r);
        }
    }
    let peak = stacks
        .iter()
        .map(|s| s.iter().sum::<f64>())
        .fold(0.0_f64, f64::max);
    let top = nice_ceiling(peak);
    let unit = if step == HOUR_MS { "hour" } else { "day" };
    let total: f64 = view.records.iter().map(|r| metric.of(r)).sum();
    let mut label = format!(
        "{} per {unit}, {} to {} UTC: total {}",
        metric.title(),
        render::datetime(since),
        render::datetime(until),
        num(total)
    );
    let mut names = named.clone();
    if others {
        names.push("other tenants".into());
    }
    for (i, name) in names.iter().enumerate() {
        let sum: f64 = stacks.iter().map(|s| s[i]).sum();
        let _ = write!(label, "; {name} {}", num(sum));
    }
    let mut svg = format!(
        "<svg class=\"chart usage\" id=\"usage-svg\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{l}\" \
         data-columns=\"{columns}\" data-peak=\"{peak}\"><title>{l}</title>",
        l = esc(&label)
    );
    let plot_h = H - TOP - BOTTOM;
    for i in 0..=4 {
        let y = TOP + plot_h * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            num(top * f64::from(4 - i) / 4.0)
        );
    }
    let col_w = (W - LEFT - RIGHT) / columns as f64;
    let bar_w = (col_w * 0.8).max(1.0);
    for (c, stack) in stacks.iter().enumerate() {
        let x = LEFT + col_w * c as f64 + (col_w - bar_w) / 2.0;
        let mut base = TOP + plot_h;
        let start = since + step * c as u64;
        for (i, v) in stack.iter().enumerate() {
            if *v <= 0.0 {
                continue;
            }
            let h = (plot_h * v / top).max(1.0);
            base -= h;
            let _ = write!(
                svg,
                "<rect class=\"u{i}\" x=\"{x:.1}\" y=\"{base:.1}\" width=\"{bar_w:.1}\" height=\"{h:.1}\" \
                 data-tenant=\"{}\" data-start=\"{start}\" data-value=\"{v}\"><title>{}: {} at {} UTC</title></rect>",
                esc(&names[i]),
                esc(&names[i]),
                num(*v),
                esc(&render::datetime(start))
            );
        }
    }
    // Times under the first, middle and last columns.
    let mut ticks = vec![0, columns / 2, columns - 1];
    ticks.dedup();
    for c in ticks {
        let x = LEFT + col_w * (c as f64 + 0.5);
        let at = render::datetime(since + step * c as u64);
        let text = if step == HOUR_MS {
            at.get(5..16).unwrap_or("").to_string()
        } else {
            at.get(..10).unwrap_or("").to_string()
        };
        let _ = write!(
            svg,
            "<text class=\"axis\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            H - 8.0,
            esc(&text)
        );
    }
    if view.hours.is_empty() {
        let _ = write!(
            svg,
            "<text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no usage in this range</text>",
            LEFT + (W - LEFT - RIGHT) / 2.0,
            TOP + plot_h / 2.0
        );
    }
    svg.push_str("</svg>");
    let mut legend = String::from("<p class=\"legend usage-legend\">");
    for (i, name) in names.iter().enumerate() {
        let _ = write!(
            legend,
            "<span class=\"key u{i}\"></span><span data-series=\"{}\">{}</span>",
            esc(name),
            esc(name)
        );
    }
    legend.push_str("</p>");
    format!(
        "<figure class=\"chart-box\"><figcaption>{} per {unit} by tenant \
         <span class=\"latest\">total {}</span></figcaption>{svg}{legend}</figure>",
        esc(metric.title()),
        esc(&num(total))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour(tenant: &str, start: u64, cpu: f64) -> UsageRow {
        UsageRow {
            tenant: tenant.into(),
            region: "r1".into(),
            start_unix_ms: start,
            end_unix_ms: start + HOUR_MS,
            cpu_seconds: cpu,
            tasks_run: 1,
            ..UsageRow::default()
        }
    }

    #[test]
    fn each_hour_is_a_column_stacked_by_tenant_and_the_label_sums_them() {
        let since = 1_796_565_600_000;
        let view = UsageView {
            since_unix_ms: since,
            until_unix_ms: since + 3 * HOUR_MS,
            records: vec![hour("a", since, 30.0), hour("b", since, 2.5)],
            total: UsageRow::default(),
            hours: vec![
                hour("a", since, 10.0),
                hour("b", since, 2.5),
                hour("a", since + 2 * HOUR_MS, 20.0),
            ],
        };
        let svg = usage_chart(&view, Metric::Cpu);
        assert!(svg.contains("data-columns=\"3\""), "{svg}");
        assert_eq!(svg.matches("<rect ").count(), 3, "{svg}");
        assert!(svg.contains("class=\"u0\"") && svg.contains("data-tenant=\"b\""));
        assert!(svg.contains("total 32.5; a 30; b 2.50"), "{svg}");
    }

    #[test]
    fn a_long_range_is_drawn_per_day_and_small_tenants_share_a_colour() {
        let since = 1_796_515_200_000;
        let records: Vec<UsageRow> = (0..9)
            .map(|i| hour(&format!("t{i}"), since, f64::from(10 - i)))
            .collect();
        let view = UsageView {
            since_unix_ms: since,
            until_unix_ms: since + 7 * 24 * HOUR_MS,
            hours: records.clone(),
            records,
            total: UsageRow::default(),
        };
        let svg = usage_chart(&view, Metric::Cpu);
        assert!(svg.contains("data-columns=\"7\""), "{svg}");
        assert!(svg.contains("per day"), "{svg}");
        assert!(
            svg.contains("t5 5; other tenants 9\""),
            "t6 + t7 + t8 = 4 + 3 + 2: {svg}"
        );
    }
}
