//! Why a job waits, in a real browser (Debian's headless Chromium through
//! chromedriver): a real `meridian global` with a real linked `meridian
//! regional` whose nodes register through the real `AgentLink` proto (fake
//! agents), jobs submitted through the real Federation API.
//!
//! One job no node could ever run waits at the global tier; one that a
//! cordoned node could run is routed to the region, whose placer finds no
//! node for it. Both consoles show each reason, the same text `GetJob`
//! answers. Nothing sleeps to wait for a condition: the page is watched
//! with a `MutationObserver` until it shows what is expected, with a
//! timeout as a failure guard only.

use crate::console_support;

use console_support::{Browser, FakeAgent, GUARD, Global, Regional, spec};
use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::region_admin_client::RegionAdminClient;
use serde_json::json;
use tonic::transport::Channel;

fn constrained(name: &str, key: &str, value: &str) -> v1::JobSpec {
    let mut s = spec(name, "team-a", 2, 1000, 1_000, 0);
    s.node_constraints.push(v1::LabelRequirement {
        key: key.into(),
        op: v1::LabelOperator::In as i32,
        values: vec![value.into()],
    });
    s
}

async fn submit(federation: &mut FederationClient<Channel>, spec: v1::JobSpec) -> String {
    federation
        .submit_job(v1::SubmitJobRequest {
            request_id: format!("waiting-{}", spec.name),
            spec: Some(spec),
        })
        .await
        .expect("submit")
        .into_inner()
        .job_id
}

async fn waiting_reason(federation: &mut FederationClient<Channel>, job_id: &str) -> String {
    federation
        .get_job(v1::GetJobRequest {
            job_id: job_id.into(),
        })
        .await
        .expect("get job")
        .into_inner()
        .job
        .expect("job")
        .waiting_reason
}

/// A page predicate: the text of the element `css` once it contains
/// `needle`.
fn text_with(css: &str, needle: &str) -> String {
    format!(
        "const e = document.querySelector({css});
         return e && e.textContent.includes({needle}) ? e.textContent : null;",
        css = json!(css),
        needle = json!(needle)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_be_placed_shows_why_on_the_federation_job_page_and_in_the_regional_console()
 {
    let dir = tempfile::tempdir().expect("temp dir");
    let global = Global::start(&format!("sqlite:{}", dir.path().join("g.db").display()));
    // One shard: the job stays with the shard leader that explains it.
    let region = Regional::start(
        &format!("sqlite:{}", dir.path().join("r1.db").display()),
        "r1-a",
        1,
        Some(&global.grpc),
    );
    let run = async {
        FakeAgent::register(&region.grpc, "r1-plain", "zone-a", 4).await;
        FakeAgent::register_labelled(
            &region.grpc,
            "r1-special",
            "zone-a",
            4,
            &[("pool", "special")],
        )
        .await;
        RegionAdminClient::connect(format!("http://{}", region.grpc))
            .await
            .expect("connect to RegionAdmin")
            .cordon_node(v1::CordonNodeRequest {
                region: "r1".into(),
                node_id: "r1-special".into(),
                reason: "disk replacement".into(),
            })
            .await
            .expect("cordon");

        let browser = Browser::start().await;
        // The global tier judges jobs by the node classes of the region's
        // capacity report: wait until it reports both nodes, one cordoned.
        browser.goto(&format!("{}/console", global.http)).await;
        browser
            .wait_for(
                "region r1 reporting two nodes, one ready",
                "const r = document.querySelector('#regions tr[data-region=\"r1\"]');
                 return r && r.querySelector('.badge').dataset.state === 'ready'
                   && r.children[4].textContent === '1 / 2';",
            )
            .await;

        let mut federation = global.federation().await;
        let nowhere = submit(&mut federation, constrained("nowhere", "real", "nowhere")).await;
        let cordoned = submit(&mut federation, constrained("cordoned", "pool", "special")).await;

        // No node of any region could ever run it: it waits at the global tier.
        browser
            .goto(&format!("{}/console/jobs/{nowhere}", global.http))
            .await;
        let shown = browser
            .wait_for(
                "why the job waits at the global tier",
                &text_with("#job-waiting", "could ever run a task"),
            )
            .await;
        assert!(
            shown
                .as_str()
                .is_some_and(|t| t.contains("do not match real")),
            "{shown}"
        );
        assert_eq!(
            shown,
            json!(waiting_reason(&mut federation, &nowhere).await)
        );
        let state = browser
            .js("return document.querySelector('#job-state .badge').dataset.state;")
            .await;
        assert_eq!(state, json!("pending"));

        // A cordoned node could run it: routed to r1, whose placer says why
        // no node takes it.
        browser
            .goto(&format!("{}/console/jobs/{cordoned}", global.http))
            .await;
        let shown = browser
            .wait_for(
                "why the job waits in its region",
                &text_with("#job-waiting", "1 are cordoned"),
            )
            .await;
        assert!(
            shown.as_str().is_some_and(|t| t.starts_with("0/2 nodes: ")),
            "{shown}"
        );
        assert_eq!(
            shown,
            json!(waiting_reason(&mut federation, &cordoned).await)
        );

        // The federation's job list shows both under their state.
        browser.goto(&format!("{}/console", global.http)).await;
        let listed = browser
            .wait_for(
                "both reasons in the recent jobs",
                &format!(
                    "const why = id => {{
                       const e = document.querySelector('#recent tr[data-job=\"' + id + '\"] .waiting-reason');
                       return e ? e.textContent : null;
                     }};
                     const a = why({nowhere}), b = why({cordoned});
                     return a && b && b.includes('cordoned') ? [a, b] : null;",
                    nowhere = json!(nowhere),
                    cordoned = json!(cordoned)
                ),
            )
            .await;
        assert!(
            listed[0]
                .as_str()
                .is_some_and(|t| t.contains("could ever run")),
            "{listed}"
        );

        // The regional console lists the job it holds, with the same reason,
        // and not the one that never reached it.
        browser.goto(&region.console_url()).await;
        let row = browser
            .wait_for(
                "the waiting job in the regional console",
                &format!(
                    "const r = document.querySelector('#waiting tr[data-job=\"' + {cordoned} + '\"]');
                     const why = r && r.querySelector('.waiting-reason').textContent;
                     return why && why.includes('1 are cordoned')
                       ? [why, r.children[3].textContent] : null;",
                    cordoned = json!(cordoned)
                ),
            )
            .await;
        assert_eq!(
            row,
            json!([waiting_reason(&mut federation, &cordoned).await, "2 / 2"]),
            "the same reason, both tasks pending"
        );
        let others = browser
            .js("return document.querySelectorAll('#waiting tr[data-job]').length;")
            .await;
        assert_eq!(others, json!(1), "only the job the region holds");
    };
    tokio::time::timeout(GUARD * 2, run)
        .await
        .expect("the consoles showed why the jobs wait in time");
}
