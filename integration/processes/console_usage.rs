//! The federation console's usage page in a real browser (Debian's
//! headless Chromium through chromedriver): a real `meridian global` with a
//! real linked `meridian regional` whose fake agents (the real `AgentLink`
//! proto) run the jobs of three tenants submitted through the Federation
//! API. The page is watched with a `MutationObserver` until it shows what
//! is expected (the live stream updates it), with a timeout as a failure
//! guard only. With `MERIDIAN_CONSOLE_SCREENSHOTS=1` the screenshot is
//! written to `docs/console/usage.png`.

use crate::console_support;
use crate::support;

use console_support::{Browser, FakeAgent, GUARD, Global, Regional, screenshot_dir, spec};
use meridian_proto::v1;
use serde_json::json;

/// `(tenant, jobs, tasks per job, cpu millis per task, run ms per task)`.
const WORK: [(&str, u32, u32, u64, u64); 3] = [
    ("analytics", 3, 2, 1500, 600),
    ("search", 2, 3, 1000, 400),
    ("ml-training", 1, 2, 4000, 900),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_page_charts_each_tenants_usage_as_get_usage_answers_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let global = Global::start(&format!("sqlite:{}", dir.path().join("g.db").display()));
    let region = Regional::start(
        &format!("sqlite:{}", dir.path().join("r1.db").display()),
        "r1-a",
        1,
        Some(&global.grpc),
    );
    let run = async {
        for (node, zone) in [
            ("r1-n1", "zone-a"),
            ("r1-n2", "zone-a"),
            ("r1-n3", "zone-b"),
        ] {
            FakeAgent::register_labelled(&region.grpc, node, zone, 4, &[])
                .await
                .run();
        }
        let mut federation = global.federation().await;
        for (tenant, jobs, tasks, cpu, ms) in WORK {
            for i in 0..jobs {
                let s = spec(&format!("{tenant}-{i}"), tenant, tasks, cpu, ms, 0);
                support::retry::until_served(&format!("submit {tenant}-{i}"), || {
                    let (mut federation, s) = (federation.clone(), s.clone());
                    async move {
                        federation
                            .submit_job(v1::SubmitJobRequest {
                                request_id: format!("usage-{}", s.name),
                                spec: Some(s),
                            })
                            .await
                    }
                })
                .await;
            }
        }

        let browser = Browser::start().await;
        browser
            .goto(&format!(
                "{}/console/usage?range=1h&metric=cpu",
                global.http
            ))
            .await;
        // Every task's run is counted once the region reports it: the live
        // page reaches the task counts of the jobs submitted.
        let expected: Vec<(String, u64)> = WORK
            .iter()
            .map(|(t, jobs, tasks, _, _)| (t.to_string(), u64::from(jobs * tasks)))
            .collect();
        let shown = browser
            .wait_for(
                "every task counted on the usage page",
                &format!(
                    "const want = {want};
                     const rows = [...document.querySelectorAll('#usage-table tbody tr')];
                     const got = Object.fromEntries(rows.map(r => [r.dataset.tenant, Number(r.dataset.tasksRun)]));
                     if (!want.every(([t, n]) => got[t] === n)) return null;
                     const range = document.querySelector('#usage-range time');
                     return {{ since: Number(range.dataset.since), until: Number(range.dataset.until),
                       rows: rows.map(r => [r.dataset.tenant, r.dataset.region, Number(r.dataset.cpuSeconds),
                         Number(r.dataset.memoryGibSeconds), Number(r.dataset.tasksRun), Number(r.dataset.waitP50Ms)]) }};",
                    want = json!(expected)
                ),
            )
            .await;
        let since = shown["since"].as_u64().expect("since");
        let until = shown["until"].as_u64().expect("until");
        let answer = federation
            .get_usage(v1::GetUsageRequest {
                since_unix_ms: since,
                until_unix_ms: until,
                ..Default::default()
            })
            .await
            .expect("get usage")
            .into_inner();
        assert_eq!((answer.since_unix_ms, answer.until_unix_ms), (since, until));
        let from_api: Vec<serde_json::Value> = answer
            .records
            .iter()
            .map(|r| {
                json!([
                    r.tenant,
                    r.region,
                    r.cpu_seconds,
                    r.memory_gib_seconds,
                    r.tasks_run,
                    r.wait.unwrap_or_default().p50_ms
                ])
            })
            .collect();
        // Numbers compared as numbers: the page's 8 and the API's 8.0 are
        // one value, which JSON writes in two ways.
        assert_eq!(
            as_f64s(&shown["rows"]),
            as_f64s(&json!(from_api)),
            "the page shows GetUsage's records"
        );
        // Each task held its CPU at least as long as it ran.
        for r in &answer.records {
            let (_, jobs, tasks, cpu, ms) = WORK
                .iter()
                .find(|w| w.0 == r.tenant)
                .copied()
                .expect("a tenant of the test");
            let floor = f64::from(jobs * tasks) * (cpu as f64 / 1000.0) * (ms as f64 / 1000.0);
            assert!(
                r.cpu_seconds >= floor,
                "{} {} < {floor}",
                r.tenant,
                r.cpu_seconds
            );
            assert_eq!(r.region, "r1");
        }

        // The chart: each tenant's columns add up to its record.
        let chart = browser
            .js(
                "const svg = document.querySelector('#usage-chart svg');
                 const sums = {};
                 for (const r of svg.querySelectorAll('rect[data-tenant]'))
                   sums[r.dataset.tenant] = (sums[r.dataset.tenant] || 0) + Number(r.dataset.value);
                 return { label: svg.getAttribute('aria-label'), sums,
                   legend: [...document.querySelectorAll('.usage-legend [data-series]')].map(e => e.dataset.series),
                   range: document.querySelector('#usage-range-pick').value };",
            )
            .await;
        for r in &answer.records {
            let drawn = chart["sums"][&r.tenant]
                .as_f64()
                .expect("a column of the tenant");
            assert!(
                (drawn - r.cpu_seconds).abs() < 1e-6,
                "{}: drawn {drawn}, recorded {}",
                r.tenant,
                r.cpu_seconds
            );
        }
        assert_eq!(
            chart["range"],
            json!("1h"),
            "the form keeps the range asked for"
        );
        let mut legend: Vec<String> =
            serde_json::from_value(chart["legend"].clone()).expect("legend");
        legend.sort();
        assert_eq!(legend, ["analytics", "ml-training", "search"]);
        assert!(
            chart["label"]
                .as_str()
                .is_some_and(|l| l.starts_with("CPU (core-seconds) per hour")),
            "{chart}"
        );
        let png = browser.screenshot(&screenshot_dir(&dir), "usage.png").await;
        assert!(std::fs::metadata(&png).expect("screenshot").len() > 20_000);

        // A bad parameter is refused by name.
        browser
            .goto(&format!("{}/console/usage?range=8d", global.http))
            .await;
        let refused = browser
            .wait_for(
                "the refusal",
                "const p = document.querySelector('.problem'); return p ? p.textContent : null;",
            )
            .await;
        assert!(
            refused
                .as_str()
                .is_some_and(|t| t.contains("range: \"8d\"")),
            "{refused}"
        );
    };
    tokio::time::timeout(GUARD * 2, run)
        .await
        .expect("the usage page showed the usage in time");
}

/// `value` with every number turned into an `f64`, so that JSON's `8` and
/// `8.0` compare equal.
fn as_f64s(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Number(n) => n.as_f64().map_or(value.clone(), |f| json!(f)),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(as_f64s).collect())
        }
        other => other.clone(),
    }
}
