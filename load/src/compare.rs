//! `--compare-insecure`: what mutual TLS and authentication cost a scenario.
//!
//! Owns running one scenario in both security modes of a federation it
//! starts (tls+auth as `meridian dev`, insecure as `meridian dev
//! --insecure`), pair by pair in alternating order (tls+auth then insecure,
//! insecure then tls+auth, ...) so that the machine's other work and its
//! drift fall on both modes alike, and writing every numeric result of both
//! modes with its ratio (tls+auth over insecure) per pair and as medians to
//! `load-<scenario>-vs-insecure.md` and `.json`. Must never compare figures
//! of two different pairs, and never judge a ratio: a cost is reported,
//! not failed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::error::{LoadError, Result};
use crate::federation::Security;
use crate::{Ctx, Report, Scenario};

/// Pairs of runs when `--pairs` is not given.
pub const DEFAULT_PAIRS: u32 = 3;

/// The modes of pair `pair` (0-based) in the order they run: tls+auth
/// first in even pairs, insecure first in odd ones.
pub fn order(pair: u32) -> [Security; 2] {
    if pair.is_multiple_of(2) {
        [Security::TlsAuth, Security::Insecure]
    } else {
        [Security::Insecure, Security::TlsAuth]
    }
}

/// One run of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Its pair, 1-based.
    pub pair: u32,
    /// Its mode.
    pub security: Security,
    /// Its whole report (its load average at start included).
    pub report: Report,
}

/// One figure of one pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairFigure {
    /// The pair, 1-based.
    pub pair: u32,
    /// With mutual TLS and tokens.
    pub tls_auth: f64,
    /// Insecure.
    pub insecure: f64,
    /// `tls_auth / insecure`; none when insecure is zero.
    pub ratio: Option<f64>,
}

/// One numeric result across every pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figure {
    /// Per pair, in pair order (only pairs where both runs report it).
    pub pairs: Vec<PairFigure>,
    /// Median over the pairs, tls+auth.
    pub tls_auth_median: f64,
    /// Median over the pairs, insecure.
    pub insecure_median: f64,
    /// Median of the per-pair ratios.
    pub ratio_median: Option<f64>,
}

/// The comparison's report.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Scenario name.
    pub scenario: String,
    /// The exact command.
    pub command: String,
    /// Machine, from the provenance probe.
    pub machine: String,
    /// Git revision.
    pub git_revision: String,
    /// Date (UTC) at the end of the last run.
    pub date: String,
    /// Pairs run.
    pub pairs: u32,
    /// Every numeric result (nested ones named `outer.inner`), by name.
    pub figures: BTreeMap<String, Figure>,
    /// Every run's invariant violations, prefixed with its pair and mode.
    pub violations: Vec<String>,
    /// The runs, in the order they ran.
    pub runs: Vec<Run>,
}

/// The numbers of `results`, nested objects flattened to `outer.inner`;
/// strings, booleans, arrays and nulls are left out.
pub fn numbers(results: &BTreeMap<String, serde_json::Value>) -> BTreeMap<String, f64> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
        match v {
            serde_json::Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.insert(prefix.to_string(), f);
                }
            }
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    walk(&format!("{prefix}.{k}"), v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    for (k, v) in results {
        walk(k, v, &mut out);
    }
    out
}

/// The median of `values` (mean of the middle two for an even count);
/// none for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

/// Every figure both runs of a pair report, over all pairs of `runs`.
pub fn figures(runs: &[Run]) -> BTreeMap<String, Figure> {
    let mut per_pair: BTreeMap<String, Vec<PairFigure>> = BTreeMap::new();
    let pairs: std::collections::BTreeSet<u32> = runs.iter().map(|r| r.pair).collect();
    for pair in pairs {
        let of = |s: Security| {
            runs.iter()
                .find(|r| r.pair == pair && r.security == s)
                .map(|r| numbers(&r.report.results))
        };
        let (Some(tls), Some(insecure)) = (of(Security::TlsAuth), of(Security::Insecure)) else {
            continue;
        };
        for (name, t) in tls {
            let Some(&i) = insecure.get(&name) else {
                continue;
            };
            per_pair.entry(name).or_default().push(PairFigure {
                pair,
                tls_auth: t,
                insecure: i,
                ratio: (i != 0.0).then(|| t / i),
            });
        }
    }
    per_pair
        .into_iter()
        .map(|(name, pairs)| {
            let column = |f: fn(&PairFigure) -> Option<f64>| -> Vec<f64> {
                pairs.iter().filter_map(f).collect()
            };
            let figure = Figure {
                tls_auth_median: median(&column(|p| Some(p.tls_auth))).unwrap_or(0.0),
                insecure_median: median(&column(|p| Some(p.insecure))).unwrap_or(0.0),
                ratio_median: median(&column(|p| p.ratio)),
                pairs,
            };
            (name, figure)
        })
        .collect()
}

fn num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{f:.0}")
    } else if f.abs() >= 100.0 {
        format!("{f:.1}")
    } else {
        format!("{f:.3}")
    }
}

fn ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into())
}

impl Comparison {
    /// The comparison of `runs` (`pairs` pairs) of `ctx`'s scenario.
    pub fn new(ctx: &Ctx, pairs: u32, runs: Vec<Run>) -> Comparison {
        let first = runs.first().map(|r| &r.report);
        let violations = runs
            .iter()
            .flat_map(|r| {
                r.report
                    .violations
                    .iter()
                    .map(move |v| format!("pair {} ({}): {v}", r.pair, r.security.name()))
            })
            .collect();
        Comparison {
            scenario: ctx.args.scenario.name().into(),
            command: ctx.command.clone(),
            machine: first.map(|r| r.machine.clone()).unwrap_or_default(),
            git_revision: first.map(|r| r.git_revision.clone()).unwrap_or_default(),
            date: runs
                .last()
                .map(|r| r.report.date.clone())
                .unwrap_or_default(),
            pairs,
            figures: figures(&runs),
            violations,
            runs,
        }
    }

    /// The stem of its files.
    pub fn stem(&self) -> String {
        format!("load-{}-vs-insecure", self.scenario)
    }

    /// The markdown page: runs with their load averages, then every figure
    /// that is not zero in both modes.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# Load scenario `{}`: tls+auth against insecure\n",
            self.scenario
        );
        let _ = writeln!(
            md,
            "Generated by `meridian load {} --compare-insecure`; do not edit by hand. Each run \
             starts its own federation: `tls+auth` as `meridian dev` (mutual TLS on every link, \
             the load client presenting the admin token), `insecure` as `meridian dev --insecure` \
             (plain text, the global tier without auth). The modes alternate pair by pair. \
             Ratio: tls+auth over insecure (above 1: the figure is higher with TLS and auth; \
             for a rate that is better, for a latency or a cost worse). The load client's CPU \
             is its own per run; its peak memory is the load process's over every run so far.\n",
            self.scenario
        );
        let _ = writeln!(md, "Command: `{}`\n", self.command);
        let _ = writeln!(md, "- machine: {}", self.machine);
        let _ = writeln!(md, "- git revision: {}", self.git_revision);
        let _ = writeln!(md, "- date (UTC): {}", self.date);
        let _ = writeln!(md, "- pairs: {}\n", self.pairs);
        let _ = writeln!(
            md,
            "## Runs\n\n| # | pair | security | load average at start | violations |\n|---|---|---|---|---|"
        );
        for (n, r) in self.runs.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                n + 1,
                r.pair,
                r.security.name(),
                r.report.load_average,
                r.report.violations.len()
            );
        }
        let _ = writeln!(md, "\n## Invariants\n");
        if self.violations.is_empty() {
            let _ = writeln!(md, "No violation found in any run.\n");
        } else {
            for v in &self.violations {
                let _ = writeln!(md, "- VIOLATION: {v}");
            }
            md.push('\n');
        }
        let _ = writeln!(
            md,
            "## Figures\n\n| figure | tls+auth (median) | insecure (median) | median ratio | ratio per pair (tls+auth / insecure) |\n|---|---|---|---|---|"
        );
        for (name, f) in &self.figures {
            if f.pairs
                .iter()
                .all(|p| p.tls_auth == 0.0 && p.insecure == 0.0)
            {
                continue;
            }
            let per_pair = f
                .pairs
                .iter()
                .map(|p| {
                    format!(
                        "{}: {} / {} = {}",
                        p.pair,
                        num(p.tls_auth),
                        num(p.insecure),
                        ratio(p.ratio)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {per_pair} |",
                num(f.tls_auth_median),
                num(f.insecure_median),
                ratio(f.ratio_median)
            );
        }
        let _ = writeln!(
            md,
            "\nEvery run's whole report is in [{0}.json]({0}.json).",
            self.stem()
        );
        md
    }

    /// Writes `<dir>/load-<scenario>-vs-insecure.json` and `.md`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LoadError::io(format!("creating {}", dir.display()), e))?;
        let base = dir.join(self.stem());
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        for (ext, text) in [("json", json), ("md", self.markdown())] {
            let path = base.with_extension(ext);
            std::fs::write(&path, text)
                .map_err(|e| LoadError::io(format!("writing {}", path.display()), e))?;
        }
        Ok(())
    }
}

/// Runs `ctx`'s scenario `--pairs` times in each mode, alternating, and
/// writes the comparison; returns the last run's report, or the
/// violations of any run as [`LoadError::Invariant`] after writing.
pub async fn run(ctx: &Ctx) -> Result<Report> {
    if matches!(ctx.args.scenario, Scenario::Placement | Scenario::History) {
        return Err(LoadError::Usage(format!(
            "{} runs its tier inside this process, with no links to secure; \
             --compare-insecure needs a scenario that starts a federation",
            ctx.args.scenario.name()
        )));
    }
    let pairs = ctx.args.pairs.unwrap_or(DEFAULT_PAIRS);
    let scenario = ctx.args.scenario.name();
    let mut runs = Vec::new();
    for pair in 0..pairs {
        for security in order(pair) {
            let mut args = ctx.args.clone();
            args.compare_insecure = false;
            args.pairs = None;
            args.tls.insecure = security.insecure();
            let one = Ctx {
                args,
                command: ctx.command.clone(),
            };
            eprintln!(
                "meridian load {scenario}: pair {} of {pairs}, {} (load average {})",
                pair + 1,
                security.name(),
                crate::report::load_average()
            );
            let report = crate::run_once(&one).await?;
            println!(
                "meridian load {scenario}: pair {} {}: results {}",
                pair + 1,
                security.name(),
                serde_json::to_string(&report.results).unwrap_or_default()
            );
            runs.push(Run {
                pair: pair + 1,
                security,
                report,
            });
        }
    }
    let last = runs.last().map(|r| r.report.clone());
    let comparison = Comparison::new(ctx, pairs, runs);
    if let Some(dir) = crate::out_dir(&ctx.args) {
        comparison.write(&dir)?;
        println!(
            "meridian load: comparison in {}",
            dir.join(format!("{}.md", comparison.stem())).display()
        );
    }
    for (name, f) in &comparison.figures {
        println!(
            "meridian load {scenario}: {name}: tls+auth {} insecure {} (median ratio {})",
            num(f.tls_auth_median),
            num(f.insecure_median),
            ratio(f.ratio_median)
        );
    }
    if !comparison.violations.is_empty() {
        return Err(LoadError::Invariant(comparison.violations.clone()));
    }
    println!("meridian load {scenario}: no invariant violated");
    last.ok_or_else(|| LoadError::Usage("--pairs must be at least 1".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pair: u32, security: Security, results: serde_json::Value) -> Run {
        let mut report = Report::new("e2e", "s", true, 1, "meridian load e2e");
        report.security = security.name().into();
        if let serde_json::Value::Object(m) = results {
            report.results = m.into_iter().collect();
        }
        Run {
            pair,
            security,
            report,
        }
    }

    #[test]
    fn the_modes_alternate_pair_by_pair() {
        let sequence: Vec<&str> = (0..3).flat_map(order).map(Security::name).collect();
        assert_eq!(
            sequence,
            [
                "tls+auth", "insecure", "insecure", "tls+auth", "tls+auth", "insecure"
            ]
        );
    }

    #[test]
    fn figures_are_compared_within_each_pair_and_summarised_by_medians() {
        use serde_json::json;
        let runs = vec![
            run(
                1,
                Security::TlsAuth,
                json!({"rate": 90, "lat": {"p99_ms": 12.0}}),
            ),
            run(
                1,
                Security::Insecure,
                json!({"rate": 100, "lat": {"p99_ms": 10.0}}),
            ),
            run(
                2,
                Security::Insecure,
                json!({"rate": 50, "lat": {"p99_ms": 20.0}}),
            ),
            run(
                2,
                Security::TlsAuth,
                json!({"rate": 40, "lat": {"p99_ms": 30.0}}),
            ),
            run(
                3,
                Security::TlsAuth,
                json!({"rate": 70, "only_here": 1, "name": "x"}),
            ),
            run(
                3,
                Security::Insecure,
                json!({"rate": 100, "lat": {"p99_ms": 1.0}}),
            ),
        ];
        let f = figures(&runs);
        assert_eq!(
            f.keys().collect::<Vec<_>>(),
            ["lat.p99_ms", "rate"],
            "a figure missing from one run of a pair is not compared in that pair"
        );
        let rate = &f["rate"];
        let ratios: Vec<Option<f64>> = rate.pairs.iter().map(|p| p.ratio).collect();
        assert_eq!(ratios, [Some(0.9), Some(0.8), Some(0.7)]);
        assert_eq!(rate.tls_auth_median, 70.0);
        assert_eq!(rate.insecure_median, 100.0);
        assert_eq!(rate.ratio_median, Some(0.8));
        let p99 = &f["lat.p99_ms"];
        assert_eq!(p99.pairs.len(), 2);
        assert_eq!(p99.ratio_median, Some((1.2 + 1.5) / 2.0));
    }

    #[test]
    fn a_zero_insecure_figure_has_no_ratio_and_the_page_shows_a_dash() {
        use serde_json::json;
        let runs = vec![
            run(1, Security::TlsAuth, json!({"errors": 3})),
            run(1, Security::Insecure, json!({"errors": 0})),
        ];
        let f = figures(&runs);
        assert_eq!(f["errors"].pairs[0].ratio, None);
        assert_eq!(f["errors"].ratio_median, None);
        let cmp = Comparison {
            scenario: "e2e".into(),
            command: "meridian load e2e --compare-insecure".into(),
            machine: "m".into(),
            git_revision: "r".into(),
            date: "d".into(),
            pairs: 1,
            figures: f,
            violations: vec![],
            runs,
        };
        let md = cmp.markdown();
        assert!(md.contains("| errors | 3 | 0 | - | 1: 3 / 0 = - |"), "{md}");
        assert!(md.contains("| 2 | 1 | insecure |"), "{md}");
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }
}
