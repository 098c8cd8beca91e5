//! HTML helpers shared by both consoles: escaping, number and time
//! formats, the page shell, usage meters and inline SVG charts.
//!
//! Owns how values look. Must never emit text from a source without
//! escaping it, or reference anything outside the binary.

use std::fmt::Write as _;

use crate::CONSOLE_PATH;
use crate::session::SignedIn;
use crate::view::Amount;

/// Escapes text for an HTML element body or a quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment.
pub fn url_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `1.5 GiB`, `512 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 || (v - v.round()).abs() < 0.05 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// CPU millis as cores: `2`, `0.5`.
pub fn cores(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{:.1}", millis as f64 / 1000.0)
    }
}

/// A duration in ms as `850 ms`, `12.3 s`, `4m 05s`, `2h 10m`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// Wall time of day (UTC) as `HH:MM:SS.mmm`; `—` for 0.
pub fn clock(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "—".into();
    }
    let s = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        unix_ms % 1000
    )
}

/// Wall date and time (UTC) as `2026-12-06 14:05:00`; `—` for 0.
pub fn datetime(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "—".into();
    }
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_date((secs / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (the
/// well-known era arithmetic: 400-year eras of 146,097 days).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The federation console's navigation, `current` marked for assistive
/// technology.
pub fn federation_nav(current: &str) -> String {
    let mut s = String::from("<nav class=\"tabs\" aria-label=\"Console pages\">");
    for (name, href) in [
        ("Overview", CONSOLE_PATH.to_string()),
        ("Schedules", format!("{CONSOLE_PATH}/schedules")),
        ("Usage", format!("{CONSOLE_PATH}/usage")),
    ] {
        let here = if name == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(s, "<a href=\"{href}\"{here}>{name}</a>");
    }
    s.push_str("</nav>");
    s
}

/// Number with thousands separators.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A labelled usage meter: `used / total` with a bar.
pub fn meter(label: &str, used: f64, total: f64, text: &str) -> String {
    let pct = if total > 0.0 {
        (used / total * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    let level = if pct >= 90.0 {
        "high"
    } else if pct >= 70.0 {
        "mid"
    } else {
        "low"
    };
    format!(
        "<div class=\"meter\"><meter class=\"{level}\" min=\"0\" max=\"100\" value=\"{pct:.0}\" \
         aria-label=\"{label}: {pct:.0}% used\"></meter><span>{text}</span></div>",
        label = esc(label),
        text = esc(text)
    )
}

/// `used / capacity` text for an amount.
pub fn amount_text(used: &Amount, cap: &Amount) -> (String, String) {
    (
        format!(
            "{} / {} cores",
            cores(used.cpu_millis),
            cores(cap.cpu_millis)
        ),
        format!("{} / {}", bytes(used.memory_bytes), bytes(cap.memory_bytes)),
    )
}

/// A state badge; `state` is also the `data-state` value tests select on.
pub fn badge(state: &str) -> String {
    let s = esc(state);
    format!("<span class=\"badge s-{s}\" data-state=\"{s}\">{s}</span>")
}

/// A line chart of `points` (x: wall ms, y: value) as inline SVG.
pub fn line_chart(title: &str, unit: &str, points: &[(u64, Option<f64>)]) -> String {
    let values: Vec<f64> = points.iter().filter_map(|p| p.1).collect();
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let top = nice_ceiling(max);
    let last = values.last().copied();
    let summary = match last {
        Some(v) => format!(
            "{title}: latest {} {unit}, peak {} {unit}",
            num(v),
            num(max)
        ),
        None => format!("{title}: no data yet"),
    };
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {CHART_W} {CHART_H}\" role=\"img\" aria-label=\"{}\">\
         <title>{}</title>",
        esc(&summary),
        esc(&summary)
    );
    y_grid(&mut svg, top);
    if let (Some(first), Some(end)) = (points.first(), points.last()) {
        plot(&mut svg, points, *first, *end, top);
    }
    svg.push_str("</svg>");
    format!(
        "<figure class=\"chart-box\"><figcaption>{} <span class=\"latest\">{}</span></figcaption>{svg}</figure>",
        esc(title),
        esc(&last
            .map(|v| format!("{} {unit}", num(v)))
            .unwrap_or_else(|| "—".into()))
    )
}

/// Width, height and margins of a line chart.
const CHART_W: f64 = 560.0;
const CHART_H: f64 = 150.0;
const CHART_LEFT: f64 = 48.0;
const CHART_BOTTOM: f64 = 20.0;
const CHART_TOP: f64 = 10.0;

/// The horizontal grid lines of a line chart, labelled from `top` down to 0.
fn y_grid(svg: &mut String, top: f64) {
    for i in 0..=4 {
        let y = CHART_TOP + (CHART_H - CHART_TOP - CHART_BOTTOM) * f64::from(i) / 4.0;
        let v = top * f64::from(4 - i) / 4.0;
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{CHART_LEFT}\" x2=\"{CHART_W}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text class=\"axis\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            CHART_LEFT - 6.0,
            y + 4.0,
            num(v)
        );
    }
}

/// The line of `points` (broken where a value is missing), the area under
/// it, and the times of its first and last points.
fn plot(
    svg: &mut String,
    points: &[(u64, Option<f64>)],
    first: (u64, Option<f64>),
    end: (u64, Option<f64>),
    top: f64,
) {
    let span = (end.0.saturating_sub(first.0)).max(1) as f64;
    let x = |t: u64| {
        CHART_LEFT + (CHART_W - CHART_LEFT - 4.0) * (t.saturating_sub(first.0)) as f64 / span
    };
    let y = |v: f64| CHART_TOP + (CHART_H - CHART_TOP - CHART_BOTTOM) * (1.0 - v / top);
    let mut path = String::new();
    let mut area = String::new();
    let mut pen_down = false;
    for p in points {
        match p.1 {
            Some(v) => {
                let cmd = if pen_down { 'L' } else { 'M' };
                let _ = write!(path, "{cmd}{:.1},{:.1} ", x(p.0), y(v));
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    let coords: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.1.map(|v| (x(p.0), y(v))))
        .collect();
    if let (Some(a), Some(b)) = (coords.first(), coords.last()) {
        let _ = write!(area, "M{:.1},{:.1} ", a.0, CHART_H - CHART_BOTTOM);
        for (cx, cy) in &coords {
            let _ = write!(area, "L{cx:.1},{cy:.1} ");
        }
        let _ = write!(area, "L{:.1},{:.1} Z", b.0, CHART_H - CHART_BOTTOM);
        let _ = write!(svg, "<path class=\"area\" d=\"{area}\"/>");
    }
    let _ = write!(svg, "<path class=\"line\" d=\"{}\"/>", path.trim_end());
    let _ = write!(
        svg,
        "<text class=\"axis\" x=\"{CHART_LEFT}\" y=\"{CHART_H}\">{}</text>\
         <text class=\"axis\" x=\"{CHART_W}\" y=\"{CHART_H}\" text-anchor=\"end\">{}</text>",
        clock(first.0).get(..8).unwrap_or(""),
        clock(end.0).get(..8).unwrap_or("")
    );
}

/// Horizontal bars, one per `(label, value, class)`, as inline SVG.
pub fn bar_chart(title: &str, bars: &[(String, u64, String)]) -> String {
    const W: f64 = 560.0;
    const ROW: f64 = 24.0;
    const LABEL: f64 = 110.0;
    let h = (bars.len().max(1) as f64) * ROW + 4.0;
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1) as f64;
    let summary: Vec<String> = bars.iter().map(|b| format!("{} {}", b.0, b.1)).collect();
    let label = if summary.is_empty() {
        format!("{title}: none")
    } else {
        format!("{title}: {}", summary.join(", "))
    };
    let mut svg = format!(
        "<svg class=\"chart bars\" viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"{}\"><title>{}</title>",
        esc(&label),
        esc(&label)
    );
    if bars.is_empty() {
        let _ = write!(svg, "<text class=\"axis\" x=\"4\" y=\"16\">none</text>");
    }
    for (i, (name, value, class)) in bars.iter().enumerate() {
        let y = i as f64 * ROW + 2.0;
        let w =
            ((W - LABEL - 70.0) * (*value as f64) / max).max(if *value > 0 { 2.0 } else { 0.0 });
        let _ = write!(
            svg,
            "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar {}\" x=\"{LABEL}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" rx=\"3\"/>\
             <text class=\"value\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            LABEL - 8.0,
            y + 15.0,
            esc(name),
            esc(class),
            y + 3.0,
            ROW - 8.0,
            LABEL + w + 6.0,
            y + 15.0,
            count(*value)
        );
    }
    svg.push_str("</svg>");
    svg
}

pub(crate) fn num(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        count(v.round() as u64)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(crate) fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// The page shell: head with the embedded stylesheet, a header, the body,
/// the confirmation dialog and the script.
pub fn page(title: &str, header: &str, stream: &str, body: &str, who: &SignedIn) -> String {
    let viewer = who.viewer();
    let account = if who.signed_in {
        format!(
            "<p id=\"account\" class=\"account\">Signed in as <strong id=\"account-name\">{}</strong> \
<span id=\"account-role\" class=\"muted\">{}</span> \
<button type=\"button\" id=\"sign-out\" data-url=\"{CONSOLE_PATH}/logout\">Sign out</button></p>",
            esc(&viewer.name),
            viewer.role.as_str()
        )
    } else {
        String::new()
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"csrf-token\" content=\"{csrf}\">\
<title>{title}</title><link rel=\"stylesheet\" href=\"{CONSOLE_PATH}/assets/console.css\"></head>\
<body data-stream=\"{stream}\"><header class=\"top\">{header}{account}\
<p id=\"live\" class=\"live\" role=\"status\" aria-live=\"polite\">Connecting…</p></header>\
<main>{body}</main>\
<div id=\"action-result\" class=\"toast\" role=\"status\" aria-live=\"assertive\" hidden></div>\
<dialog id=\"confirm\" aria-labelledby=\"confirm-title\" aria-describedby=\"confirm-text\">\
<form method=\"dialog\"><h2 id=\"confirm-title\">Confirm</h2><p id=\"confirm-text\"></p>\
<label for=\"confirm-reason\">Reason (recorded with the change)</label>\
<input id=\"confirm-reason\" name=\"reason\" type=\"text\" maxlength=\"1024\" autocomplete=\"off\">\
<label class=\"check\" id=\"confirm-evacuate-row\" hidden><input id=\"confirm-evacuate\" type=\"checkbox\"> \
Also move the region's unfinished jobs to other regions (evacuate)</label>\
<div class=\"buttons\"><button type=\"submit\" value=\"cancel\" id=\"confirm-cancel\">Cancel</button>\
<button type=\"button\" id=\"confirm-ok\" class=\"danger\">Confirm</button></div></form></dialog>\
<script src=\"{CONSOLE_PATH}/assets/console.js\"></script></body></html>",
        title = esc(title),
        stream = esc(stream),
        csrf = esc(&who.csrf),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn sizes_and_counts_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
        assert_eq!(cores(2000), "2");
        assert_eq!(cores(1500), "1.5");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(duration(65_000), "1m 05s");
    }

    #[test]
    fn dates_are_civil_dates_in_utc() {
        assert_eq!(datetime(0), "—");
        assert_eq!(datetime(1_000), "1970-01-01 00:00:01");
        // 2024 is a leap year; 2100 is not.
        assert_eq!(datetime(1_709_164_800_000), "2024-02-29 00:00:00");
        assert_eq!(datetime(4_107_542_400_000), "2100-03-01 00:00:00");
        assert_eq!(datetime(1_796_565_600_000), "2026-12-06 14:00:00");
    }

    #[test]
    fn a_chart_with_gaps_still_renders_a_labelled_svg() {
        let svg = line_chart(
            "rate",
            "/s",
            &[(1000, Some(1.0)), (2000, None), (3000, Some(4.0))],
        );
        assert!(svg.contains("role=\"img\""));
        assert!(svg.contains("latest 4 /s"));
    }
}
