//! The operator consoles in a real browser: Debian's headless Chromium,
//! driven through chromedriver, against real `meridian regional` and
//! `meridian global` processes. Nodes register through the real
//! `AgentLink` proto (fake agents in this test); jobs go through the real
//! Federation API and run on the fake agents.
//!
//! Nothing sleeps to wait for a condition: the page is watched with a
//! `MutationObserver` until it shows what is expected (the live stream
//! updates it), with a timeout as a failure guard only.

use crate::console_support;
use crate::support;

use std::time::Instant;

use console_support::{
    Browser, FakeAgent, FakeRegion, GUARD, Global, Regional, now_ms, screenshot_dir, spec,
};
use meridian_proto::v1;
use meridian_proto::v1::region_admin_client::RegionAdminClient;
use serde_json::json;

async fn admin_nodes(region_grpc: &str) -> Vec<v1::NodeInfo> {
    RegionAdminClient::connect(format!("http://{region_grpc}"))
        .await
        .expect("connect to RegionAdmin")
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .expect("list nodes")
        .into_inner()
        .nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_regional_console_lists_the_nodes_registered_through_the_agent_link() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite:{}", dir.path().join("r1.db").display());
    let region = Regional::start(&store, "ra", 2, None);
    let run = async {
        for (node, zone) in [("n-1", "zone-a"), ("n-2", "zone-a"), ("n-3", "zone-b")] {
            FakeAgent::register(&region.grpc, node, zone, 4).await;
        }
        let browser = Browser::start().await;
        browser.goto(&region.console_url()).await;
        let rows = browser
            .wait_for(
                "the three registered nodes",
                "const rows = [...document.querySelectorAll('#nodes tr[data-node]')];
                 if (rows.length !== 3) return null;
                 return rows.map(r => [r.dataset.node, r.children[1].textContent,
                   r.querySelector('.state .badge').dataset.state, r.querySelector('meter') !== null]);",
            )
            .await;
        assert_eq!(
            rows,
            json!([
                ["n-1", "zone-a", "ready", true],
                ["n-2", "zone-a", "ready", true],
                ["n-3", "zone-b", "ready", true]
            ])
        );
        // Every control has an accessible name; every input a label.
        let unlabelled = browser
            .js(
                "return [...document.querySelectorAll('button, input')].filter(e =>
                   !(e.getAttribute('aria-label') || e.textContent.trim() ||
                     (e.id && document.querySelector('label[for=\"' + e.id + '\"]')) ||
                     e.closest('label'))).map(e => e.outerHTML);",
            )
            .await;
        assert_eq!(unlabelled, json!([]), "controls without an accessible name");
        browser
            .wait_for(
                "the live stream",
                "return document.getElementById('live').classList.contains('on');",
            )
            .await;
    };
    tokio::time::timeout(GUARD * 2, run)
        .await
        .expect("the console showed the nodes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordoning_a_node_in_the_page_after_confirming_changes_its_state_in_the_region_admin_api() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite:{}", dir.path().join("r1.db").display());
    let region = Regional::start(&store, "ra", 2, None);
    let run = async {
        for node in ["n-1", "n-2", "n-3"] {
            FakeAgent::register(&region.grpc, node, "zone-a", 4).await;
        }
        let browser = Browser::start().await;
        browser.goto(&region.console_url()).await;
        browser
            .wait_for(
                "the cordon buttons",
                "return document.querySelectorAll('#nodes button[data-action=\"cordon\"]').length === 3;",
            )
            .await;

        // Cancelling the confirmation does nothing.
        browser
            .click("tr[data-node='n-3'] button[data-action='cordon']")
            .await;
        browser
            .wait_for(
                "the confirmation dialog",
                "return document.getElementById('confirm').open;",
            )
            .await;
        browser.click("#confirm-cancel").await;
        browser
            .wait_for(
                "the dialog to close",
                "return !document.getElementById('confirm').open;",
            )
            .await;

        // Confirming cordons the node through RegionAdmin.
        browser
            .click("tr[data-node='n-2'] button[data-action='cordon']")
            .await;
        let text = browser
            .wait_for(
                "the confirmation dialog",
                "const d = document.getElementById('confirm');
                 return d.open ? document.getElementById('confirm-text').textContent : null;",
            )
            .await;
        assert!(text.as_str().is_some_and(|t| t.contains("n-2")), "{text}");
        browser
            .type_into("#confirm-reason", "disk replacement")
            .await;
        browser.click("#confirm-ok").await;
        let outcome = browser
            .wait_for(
                "the action's result",
                "const t = document.getElementById('action-result');
                 return t.dataset.outcome && !t.textContent.endsWith('…')
                   ? [t.dataset.outcome, t.textContent] : null;",
            )
            .await;
        assert_eq!(outcome[0], "ok", "{outcome}");
        assert!(
            outcome[1].as_str().is_some_and(|t| t.contains("cordoned")),
            "{outcome}"
        );

        let nodes = admin_nodes(&region.grpc).await;
        let by_id = |id: &str| nodes.iter().find(|n| n.node_id == id).expect("node");
        assert!(by_id("n-2").cordoned, "{:?}", by_id("n-2"));
        assert_eq!(by_id("n-2").cordon_reason, "disk replacement");
        assert!(!by_id("n-3").cordoned, "the cancelled action did nothing");
        assert!(!by_id("n-1").cordoned);

        // The page follows without a reload, and offers to undo it.
        browser
            .wait_for(
                "n-2 shown as cordoned",
                "const r = document.querySelector('tr[data-node=\"n-2\"]');
                 return r && r.querySelector('.state .badge').dataset.state === 'cordoned'
                   && r.querySelector('button[data-action=\"uncordon\"]') !== null;",
            )
            .await;
    };
    tokio::time::timeout(GUARD * 2, run)
        .await
        .expect("the cordon went through in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_shard_leader_process_shows_the_new_leader_and_epoch_on_the_page_without_a_reload()
 {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite:{}", dir.path().join("r1.db").display());
    let survivor = Regional::start(&store, "ra", 4, None);
    let mut victim = Regional::start(&store, "rb", 4, None);
    let run = async {
        let browser = Browser::start().await;
        browser.goto(&survivor.console_url()).await;
        // Both replicas lead shards (rb takes its share from ra).
        let before = browser
            .wait_for(
                "the shards split between ra and rb",
                "const rows = [...document.querySelectorAll('#shards tr[data-shard]')];
                 if (rows.length !== 4) return null;
                 const m = rows.map(r => [r.dataset.shard, r.querySelector('.leader').textContent,
                                          Number(r.querySelector('.epoch').textContent)]);
                 return m.some(x => x[1] === 'rb') && m.some(x => x[1] === 'ra') ? m : null;",
            )
            .await;
        let victims: Vec<(String, u64)> = before
            .as_array()
            .expect("rows")
            .iter()
            .filter(|r| r[1] == "rb")
            .map(|r| {
                (
                    r[0].as_str().expect("shard").to_string(),
                    r[2].as_u64().expect("epoch"),
                )
            })
            .collect();
        browser
            .js("window.__consoleMarker = 'no reload'; return true;")
            .await;

        victim.proc.kill_now();
        let killed = Instant::now();
        let wanted = json!(victims);
        let after = browser
            .wait_for(
                "ra leading rb's shards at a higher epoch",
                &format!(
                    "const want = {wanted};
                     const out = [];
                     for (const [shard, epoch] of want) {{
                       const r = document.querySelector('#shards tr[data-shard=\"' + shard + '\"]');
                       const leader = r.querySelector('.leader').textContent;
                       const e = Number(r.querySelector('.epoch').textContent);
                       if (leader !== 'ra' || e <= epoch) return null;
                       out.push([shard, leader, e]);
                     }}
                     return out;"
                ),
            )
            .await;
        let took = killed.elapsed();
        println!("new leaders shown {took:?} after the kill: {after}");
        assert!(took.as_secs_f64() < 10.0, "shown after {took:?}");
        assert_eq!(
            browser.js("return window.__consoleMarker;").await,
            json!("no reload"),
            "the page was not reloaded"
        );
        let events = browser
            .wait_for(
                "the leader change events",
                &format!(
                    "const text = document.getElementById('events').textContent;
                     return {wanted}.every(([s]) => text.includes('shard ' + s + ': leader rb → ra')) ? text : null;"
                ),
            )
            .await;
        assert!(events.as_str().is_some());
    };
    tokio::time::timeout(GUARD * 2, run)
        .await
        .expect("the failover was shown in time");
}

/// The job detail page, driven the way a region drives a job: the test
/// speaks the real `RegionLink` proto to a real `meridian global` (the
/// region link reports job-level counts only so far, so per-task times come
/// from here), reporting each step while the page follows it live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_detail_page_shows_a_finished_jobs_task_timeline_with_the_region_and_node_of_each_task()
 {
    let dir = tempfile::tempdir().expect("temp dir");
    let global = Global::start(&format!("sqlite:{}", dir.path().join("g.db").display()));
    let run = async {
        let mut region = FakeRegion::register(&global.grpc, "r1").await;
        let mut federation = global.federation().await;
        let job_id = federation
            .submit_job(v1::SubmitJobRequest {
                request_id: "timeline-1".into(),
                spec: Some(spec("nightly-report", "team-a", 3, 1000, 300, 0)),
            })
            .await
            .expect("submit")
            .into_inner()
            .job_id;
        let epoch = region.accept(&job_id).await;

        let browser = Browser::start().await;
        browser
            .goto(&format!("{}/console/jobs/{job_id}", global.http))
            .await;
        let nodes = ["r1-node-a", "r1-node-b", "r1-node-a"];
        let step = |state: &'static str| {
            format!(
                "const s = document.querySelector('#job-state .badge');
                 return s && s.dataset.state === '{state}';"
            )
        };
        let placed = now_ms();
        region
            .report(
                &job_id,
                epoch,
                1,
                v1::JobState::Placed,
                &nodes,
                placed,
                0,
                0,
            )
            .await;
        browser
            .wait_for("the job shown placed", &step("placed"))
            .await;
        let started = now_ms();
        region
            .report(
                &job_id,
                epoch,
                2,
                v1::JobState::Running,
                &nodes,
                placed,
                started,
                0,
            )
            .await;
        browser
            .wait_for("the job shown running", &step("running"))
            .await;
        let finished = now_ms();
        region
            .report(
                &job_id,
                epoch,
                3,
                v1::JobState::Succeeded,
                &nodes,
                placed,
                started,
                finished,
            )
            .await;
        browser
            .wait_for("the job shown succeeded", &step("succeeded"))
            .await;

        let rows = browser
            .wait_for(
                "three finished task rows in the timeline",
                "const rows = [...document.querySelectorAll('#timeline g.task-row')];
                 if (rows.length !== 3 || document.querySelectorAll('#timeline g.task-row rect.s-succeeded').length !== 3) return null;
                 return rows.map(g => g.querySelector('text').textContent);",
            )
            .await;
        assert_eq!(
            rows,
            json!([
                "task 0 · r1-node-a",
                "task 1 · r1-node-b",
                "task 2 · r1-node-a"
            ])
        );
        let tasks = browser
            .js("return [...document.querySelectorAll('#tasks tr[data-task]')].map(r =>
                   [r.dataset.task, r.querySelector('.state .badge').dataset.state,
                    r.querySelector('.region').textContent, r.querySelector('.node').textContent]);")
            .await;
        let job = federation
            .get_job(v1::GetJobRequest {
                job_id: job_id.clone(),
            })
            .await
            .expect("get job")
            .into_inner()
            .job
            .expect("job");
        let expected: Vec<_> = job
            .tasks
            .iter()
            .map(|t| json!([t.index.to_string(), "succeeded", t.region, t.node_id]))
            .collect();
        assert_eq!(tasks, json!(expected), "the page shows what GetJob says");
        assert_eq!(tasks[1], json!(["1", "succeeded", "r1", "r1-node-b"]));
        let history = browser
            .js(
                "return [...document.querySelectorAll('#history tr.transition')].map(r =>
                   r.children[2].textContent);",
            )
            .await;
        let history: Vec<String> = serde_json::from_value(history).expect("history");
        assert_eq!(
            history,
            ["pending", "routed", "placed", "running", "succeeded"],
            "every transition, in order"
        );
        let png = browser.screenshot(&screenshot_dir(&dir), "job.png").await;
        assert!(std::fs::metadata(&png).expect("screenshot").len() > 20_000);
    };
    tokio::time::timeout(GUARD * 2, run)
        .await
        .expect("the job finished and was shown in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_consoles_render_under_load_and_are_captured_as_screenshots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shots = screenshot_dir(&dir);
    let global = Global::start(&format!("sqlite:{}", dir.path().join("g.db").display()));
    let region = Regional::start(
        &format!("sqlite:{}", dir.path().join("r1.db").display()),
        "r1-a",
        2,
        Some(&global.grpc),
    );
    let run = async {
        let nodes = [
            ("r1-node-01", "zone-a"),
            ("r1-node-02", "zone-a"),
            ("r1-node-03", "zone-a"),
            ("r1-node-04", "zone-b"),
            ("r1-node-05", "zone-b"),
            ("r1-node-06", "zone-b"),
        ];
        for (node, zone) in nodes {
            // The only TPU node is cordoned below: the TPU jobs reach the
            // region (a node could run them) and wait in its queue.
            let labels: &[(&str, &str)] = if node == "r1-node-06" {
                &[("accelerator", "tpu")]
            } else {
                &[]
            };
            FakeAgent::register_labelled(&region.grpc, node, zone, 4, labels)
                .await
                .run();
        }
        RegionAdminClient::connect(format!("http://{}", region.grpc))
            .await
            .expect("connect to RegionAdmin")
            .cordon_node(v1::CordonNodeRequest {
                region: "r1".into(),
                node_id: "r1-node-06".into(),
                reason: "kernel upgrade".into(),
            })
            .await
            .expect("cordon");
        let mut federation = global.federation().await;
        let tenants = ["analytics", "search", "ml-training"];
        for i in 0..36u32 {
            let (tasks, ms, priority) = match i % 4 {
                0 => (3, 400, 50),
                1 => (2, 6_000, 10),
                2 => (4, 9_000, 0),
                _ => (1, 12_000, 10),
            };
            federation
                .submit_job(v1::SubmitJobRequest {
                    request_id: format!("load-{i}"),
                    spec: Some(spec(
                        &format!("batch-{i:02}"),
                        tenants[i as usize % 3],
                        tasks,
                        1000,
                        ms,
                        priority,
                    )),
                })
                .await
                .expect("submit");
        }
        // Jobs only the cordoned node could run stay in the region's
        // queue: placement is quick enough that work that fits never
        // queues there for long.
        for i in 0..2u32 {
            let mut waiting = spec(&format!("gpu-{i}"), tenants[0], 2, 1000, 1_000, 5);
            waiting.node_constraints.push(v1::LabelRequirement {
                key: "accelerator".into(),
                op: v1::LabelOperator::In as i32,
                values: vec!["tpu".into()],
            });
            federation
                .submit_job(v1::SubmitJobRequest {
                    request_id: format!("waiting-{i}"),
                    spec: Some(waiting),
                })
                .await
                .expect("submit");
        }

        let browser = Browser::start().await;
        browser.goto(&region.console_url()).await;
        browser
            .wait_for(
                "placement activity, busy nodes and a pending queue",
                "const busy = [...document.querySelectorAll('#nodes tr[data-node]')]
                   .filter(r => Number(r.children[6].textContent) > 0).length;
                 const lanes = document.querySelectorAll('#lanes tr[data-lane]').length;
                 const peak = document.querySelector('#charts svg').getAttribute('aria-label');
                 const samples = (document.querySelector('#charts path.line').getAttribute('d').match(/L/g) || []).length;
                 return busy >= 4 && lanes >= 1 && !/peak 0 /.test(peak) && samples >= 8
                   && document.querySelectorAll('#events li').length >= 2;",
            )
            .await;
        let regional_png = browser.screenshot(&shots, "regional.png").await;

        browser.goto(&format!("{}/console", global.http)).await;
        browser
            .wait_for(
                "the region and the jobs",
                "const r = document.querySelector('#regions tr[data-region=\"r1\"] .badge');
                 return r && r.dataset.state === 'ready'
                   && document.querySelectorAll('#recent tr[data-job]').length >= 20
                   && document.querySelectorAll('#tenants tr[data-tenant]').length === 3
                   && /running|placed/.test(document.getElementById('job-states').textContent)
                   && /succeeded/.test(document.getElementById('job-states').textContent);",
            )
            .await;
        let overview_png = browser.screenshot(&shots, "federation.png").await;

        for png in [regional_png, overview_png] {
            let size = std::fs::metadata(&png).expect("screenshot").len();
            assert!(size > 20_000, "{} is only {size} bytes", png.display());
        }
    };
    tokio::time::timeout(GUARD * 3, run)
        .await
        .expect("the consoles rendered under load in time");
}

/// A `meridian dev` federation as a user starts it: mutual TLS and tokens
/// on, two global replicas (the default: the region's console walks the
/// `--global` list, a standby names the leader), one region replica with
/// simulated nodes.
fn start_dev(data: &std::path::Path) -> support::Dev {
    support::Dev::on(data)
        .base_port(support::dev::base_port_of_process(20_000, 0))
        .regions(1)
        .region_replicas(1)
        .simulated_nodes(3)
        .real_agents(0)
        .stderr(support::Stderr::Null)
        .start()
}

/// A new token (the last line `meridian token create` prints).
fn token(dev: &support::Dev, args: &[&str]) -> String {
    let mut all = vec!["token", "create"];
    all.extend_from_slice(args);
    dev.cli(&all)
        .lines()
        .last()
        .expect("a token line")
        .trim()
        .to_string()
}

/// Signs in on the console's sign-in page with `token`; waits for the
/// console page with its nodes listed.
async fn sign_in(browser: &Browser, token: &str) {
    // The sign-in page may be on its way (a redirect, or the script's
    // navigation after signing out): the driver's wait outlives a page
    // change, a script in the old page would not.
    browser
        .client
        .wait()
        .at_most(GUARD)
        .for_element(fantoccini::Locator::Css("#token"))
        .await
        .expect("the sign-in page");
    browser.type_into("#token", token).await;
    browser.click("#sign-in").await;
    // The form's post navigates to the console page: a script started
    // before the new page loads would die with the old one, so the
    // driver's own wait for the new page's element comes first.
    if let Err(e) = browser
        .client
        .wait()
        .at_most(GUARD)
        .for_element(fantoccini::Locator::Css(
            "main tr[data-node], #sign-in-error",
        ))
        .await
    {
        let text = browser.js("return document.body.innerText;").await;
        panic!("after signing in: {e}; the page shows {text}");
    }
    browser
        .wait_for(
            "the console with its three nodes",
            "return document.querySelectorAll('tr[data-node]').length >= 3 || null;",
        )
        .await;
}

/// What the server answers a POST the page's script did not make: sent
/// with the browser's session cookie, as another page could make the
/// browser send it, with the given extra headers.
async fn post_from_page(browser: &Browser, url: &str, headers: serde_json::Value) -> (u64, String) {
    let script = r#"const [url, extra, done] = arguments;
const headers = Object.assign({ "content-type": "application/json" }, extra);
fetch(url, { method: "POST", headers, body: "{}", credentials: "include" })
  .then(r => r.text().then(t => done([r.status, t])))
  .catch(e => done([0, String(e)]));"#;
    let answer = browser
        .client
        .execute_async(script, vec![json!(url), headers])
        .await
        .expect("the forged request");
    (
        answer[0].as_u64().expect("a status"),
        answer[1].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_drain_button_a_forged_post_is_refused_and_an_operator_drains_a_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = start_dev(&dir.path().join("dev"));
    let viewer = token(
        &dev,
        &["--role", "viewer", "--tenant", "a", "--name", "watcher"],
    );
    let operator = token(&dev, &["--role", "operator", "--name", "night-shift"]);
    let run = async {
        let browser = Browser::start().await;
        browser.goto(&dev.address("us-east-1", "console")).await;
        sign_in(&browser, &viewer).await;
        assert_eq!(
            browser
                .js("return document.getElementById('account-role').textContent;")
                .await,
            json!("viewer")
        );
        assert_eq!(
            browser
                .js("return document.querySelectorAll('button[data-action]').length;")
                .await,
            json!(0),
            "a viewer sees no drain, cordon or region drain button"
        );
        let node = browser
            .js("return document.querySelector('tr[data-node]').dataset.node;")
            .await
            .as_str()
            .expect("a node id")
            .to_string();
        let drain = format!("/console/api/nodes/{node}/drain");
        // Without the page's CSRF token (what another site's page would
        // send with the browser's cookie): refused before any role check.
        let (status, body) = post_from_page(&browser, &drain, json!({})).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("x-csrf-token"), "{body}");
        // With it, from the viewer's own page: refused for the role.
        let csrf = browser
            .js("return document.querySelector('meta[name=csrf-token]').content;")
            .await;
        let (status, body) =
            post_from_page(&browser, &drain, json!({ "x-csrf-token": csrf })).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("role operator required"), "{body}");

        browser.click("#sign-out").await;
        sign_in(&browser, &operator).await;
        assert_eq!(
            browser
                .js("return document.getElementById('account-name').textContent;")
                .await,
            json!("night-shift")
        );
        browser
            .click(&format!("button[aria-label='Drain node {node}']"))
            .await;
        browser.click("#confirm-ok").await;
        let outcome = browser
            .wait_for(
                "the drain's outcome",
                "const t = document.getElementById('action-result'); \
                 return t && !t.hidden && t.dataset.outcome && !t.textContent.endsWith('…') \
                   ? [t.dataset.outcome, t.textContent] : null;",
            )
            .await;
        assert_eq!(outcome[0], json!("ok"), "{outcome}");
        browser
            .wait_for(
                "the node shown draining",
                &format!("return document.querySelector(\"tr[data-node='{node}'] [data-state='draining']\") ? true : null;"),
            )
            .await;
    };
    tokio::time::timeout(GUARD * 3, run)
        .await
        .expect("the sign-in test finished in time");
    // The drain went through the federation API as the operator: the
    // global tier recorded it under the operator's token.
    let audit = dev.cli(&["audit", "list"]);
    let line = audit
        .lines()
        .find(|l| l.contains("DrainNode"))
        .unwrap_or_else(|| panic!("no DrainNode in the audit log:\n{audit}"));
    assert!(line.contains("night-shift"), "{line}");
}
