//! Helpers of the console browser tests: real `meridian` processes, fake
//! agents speaking the real `AgentLink` proto, and Debian's headless
//! Chromium driven through chromedriver (WebDriver, with `fantoccini`).
//!
//! Waiting on the page never sleeps: [`Browser::wait_for`] runs a predicate
//! in the page and, until it holds, re-runs it on every DOM mutation (a
//! `MutationObserver`), with a timeout as a failure guard only.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use meridian_cli::dev::line::{GlobalLine, LOOPBACK_ANY_PORT, RegionalLine};
use meridian_proto::v1;
use meridian_proto::v1::agent_link_client::AgentLinkClient;
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::support::{self, Launch, Proc, Stderr};

/// Failure guard only: no step waits this long when things work.
pub const GUARD: Duration = Duration::from_secs(60);
/// How many times in a row an element may be replaced by a re-render
/// between its find and the action on it before a click or typing fails:
/// a page that re-renders that fast is broken.
const RE_RENDERS: usize = 5;
pub const GIB: u64 = 1 << 30;

/// A `meridian regional` replica of region `r1` with its console.
pub struct Regional {
    pub proc: Proc,
    /// gRPC address (AgentLink, RegionAdmin).
    pub grpc: String,
    /// HTTP address (`/metrics`, `/console`).
    pub http: String,
}

impl Regional {
    pub fn start(store: &str, replica: &str, shards: u32, global: Option<&str>) -> Regional {
        let mut line = RegionalLine::new("r1", store, LOOPBACK_ANY_PORT, shards)
            .metrics_listen(LOOPBACK_ANY_PORT)
            .replica(replica)
            .shard_lease_ms(1000)
            // Fake agents heartbeat only when told to: nodes must not die.
            .node_timeout_ms(600_000);
        line.global = global.map(str::to_string);
        let started = support::Regional::start_with(&line, quiet);
        Regional {
            proc: started.proc,
            grpc: started.grpc,
            http: started.metrics.expect("the metrics address"),
        }
    }

    pub fn console_url(&self) -> String {
        format!("http://{}/console", self.http)
    }
}

/// A `meridian global` replica serving HTTP.
pub struct Global {
    pub proc: Proc,
    /// gRPC endpoint, `http://ADDR`.
    pub grpc: String,
    /// HTTP endpoint, `http://ADDR`.
    pub http: String,
}

impl Global {
    pub fn start(store: &str) -> Global {
        let line = GlobalLine::new(store, LOOPBACK_ANY_PORT)
            .http(LOOPBACK_ANY_PORT)
            .name("g1");
        let started = support::Global::start_with(&line, quiet);
        Global {
            proc: started.proc,
            grpc: started.grpc,
            http: started.http.expect("the http address"),
        }
    }

    /// A Federation API client of this replica.
    pub async fn federation(&self) -> FederationClient<Channel> {
        FederationClient::connect(self.grpc.clone())
            .await
            .expect("connect to the global tier")
    }
}

/// The servers' logs would drown the browser test's own output.
fn quiet(launch: Launch) -> Launch {
    launch.stderr(Stderr::Null)
}

/// One fake agent: registers its node through the real `AgentLink`.
#[derive(Clone)]
pub struct FakeAgent {
    pub node: String,
    pub epoch: u64,
    pub client: AgentLinkClient<Channel>,
}

impl FakeAgent {
    pub async fn register(region_grpc: &str, node: &str, zone: &str, cores: u64) -> FakeAgent {
        let (client, epoch) = support::register_node(region_grpc, node, zone, cores).await;
        FakeAgent {
            node: node.into(),
            epoch,
            client,
        }
    }

    /// Registers `node` as [`FakeAgent::register`] does, with node labels
    /// (for jobs' node constraints).
    pub async fn register_labelled(
        region_grpc: &str,
        node: &str,
        zone: &str,
        cores: u64,
        labels: &[(&str, &str)],
    ) -> FakeAgent {
        let client = AgentLinkClient::connect(format!("http://{region_grpc}"))
            .await
            .expect("connect to the region");
        let request = v1::RegisterNodeRequest {
            node_id: node.into(),
            boot_id: format!("boot-{node}"),
            allocatable: Some(v1::Resources {
                cpu_millis: cores * 1000,
                memory_bytes: cores * 2 * GIB,
                gpu_count: 0,
                gpu_type: String::new(),
            }),
            zone: zone.into(),
            agent_version: "fake".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        // The replica answers once it leads the node's shard, just after it
        // starts listening; an agent sends the registration again until
        // then, by control's retry rule, and so does this.
        let epoch = support::retry::until_served(&format!("register {node}"), || {
            let (mut client, request) = (client.clone(), request.clone());
            async move { client.register(request).await }
        })
        .await
        .into_inner()
        .node_epoch;
        FakeAgent {
            node: node.into(),
            epoch,
            client,
        }
    }

    /// Follows the node's assignment stream and "runs" every RUN: reports
    /// RUNNING, lets the task's simulated duration pass (the work itself,
    /// as the real agent's simulated tasks do), then reports SUCCEEDED.
    pub fn run(self) {
        tokio::spawn(async move {
            let request = v1::NodeAssignmentsRequest {
                node_id: self.node.clone(),
                node_epoch: self.epoch,
                cursor: Vec::new(),
            };
            let mut stream =
                support::retry::until_served(&format!("assignments of {}", self.node), || {
                    let (mut client, request) = (self.client.clone(), request.clone());
                    async move { client.assignments(request).await }
                })
                .await
                .into_inner();
            while let Ok(Some(cmd)) = stream.message().await {
                if cmd.kind != v1::CommandKind::Run as i32 {
                    continue;
                }
                let Some(attempt) = cmd.task.clone() else {
                    continue;
                };
                let duration = match cmd.template.and_then(|t| t.kind) {
                    Some(v1::task_template::Kind::Simulated(s)) => s.duration_ms,
                    _ => 0,
                };
                let agent = self.clone();
                tokio::spawn(async move {
                    let started = now_ms();
                    agent
                        .report_started(&attempt, v1::TaskState::Running, started)
                        .await;
                    run_simulated_task(Duration::from_millis(duration)).await;
                    // As a real agent's end report, it carries the start
                    // (the region's accounting reads the run time from it).
                    agent
                        .report_started(&attempt, v1::TaskState::Succeeded, started)
                        .await;
                });
            }
        });
    }

    pub async fn report(&self, attempt: &v1::TaskAttempt, state: v1::TaskState) {
        let started = if state == v1::TaskState::Running {
            now_ms()
        } else {
            0
        };
        self.report_started(attempt, state, started).await;
    }

    /// Reports `state` of the attempt that started at `started` (0: not
    /// known), as the agent's status report carries it.
    pub async fn report_started(
        &self,
        attempt: &v1::TaskAttempt,
        state: v1::TaskState,
        started: u64,
    ) {
        let now = now_ms();
        let _ = self
            .client
            .clone()
            .report_task_status(v1::ReportTaskStatusRequest {
                node_id: self.node.clone(),
                node_epoch: self.epoch,
                reports: vec![v1::TaskReport {
                    task: Some(attempt.clone()),
                    state: state as i32,
                    exit_code: (state == v1::TaskState::Succeeded).then_some(0),
                    started_at_unix_ms: started,
                    finished_at_unix_ms: if state == v1::TaskState::Succeeded {
                        now
                    } else {
                        0
                    },
                    observed_at_unix_ms: now,
                    ..Default::default()
                }],
            })
            .await;
    }
}

/// A job spec of simulated tasks.
pub fn spec(
    name: &str,
    tenant: &str,
    tasks: u32,
    cpu_millis: u64,
    ms: u64,
    priority: i32,
) -> v1::JobSpec {
    v1::JobSpec {
        name: name.into(),
        tenant: tenant.into(),
        priority,
        task_count: tasks,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Simulated(v1::Simulated {
                duration_ms: ms,
                exit_code: 0,
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis,
            memory_bytes: GIB / 2,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        ..Default::default()
    }
}

/// Headless Chromium behind its chromedriver. Dropping it ends the
/// WebDriver session (chromedriver then quits the browser), even when a
/// test fails, then stops chromedriver.
pub struct Browser {
    pub client: Client,
    driver: Proc,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        use std::io::{Read, Write};
        // A plain blocking request: Drop cannot await the async client.
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.port
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
            }
        }
        self.driver.kill_now();
    }
}

impl Browser {
    pub async fn start() -> Browser {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("port").port()
        };
        let (driver, _) = Launch::program("/usr/bin/chromedriver", vec![format!("--port={port}")])
            .stderr(Stderr::Null)
            .own_group()
            .start(&["started successfully"]);
        let profile = tempfile::tempdir().expect("profile dir");
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1440,900".into(),
            // A console served over TLS with a test's own CA (as
            // `meridian dev` serves them) opens without a warning page.
            "--ignore-certificate-errors".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("start a Chromium session");
        client
            .update_timeouts(TimeoutConfiguration::new(Some(GUARD), Some(GUARD), None))
            .await
            .expect("set timeouts");
        let session = client
            .session_id()
            .await
            .expect("session id")
            .expect("a session");
        Browser {
            client,
            driver,
            port,
            session,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("open the page");
    }

    /// Awaits a page condition: `predicate` is a JavaScript function body
    /// returning a truthy value once the condition holds; that value is
    /// returned. Re-checked on every DOM change; `GUARD` guards failure.
    pub async fn wait_for(&self, what: &str, predicate: &str) -> Value {
        let script = format!(
            r#"const done = arguments[arguments.length - 1];
const check = () => {{ try {{ return (function () {{ {predicate} }})(); }} catch (e) {{ return null; }} }};
const first = check();
if (first) {{ done(first); return; }}
const observer = new MutationObserver(() => {{
  const v = check();
  if (v) {{ observer.disconnect(); done(v); }}
}});
observer.observe(document, {{ subtree: true, childList: true, characterData: true, attributes: true }});"#
        );
        match tokio::time::timeout(GUARD, self.client.execute_async(&script, vec![])).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("waiting for {what}: {e}"),
            Err(_) => {
                // What the page showed, so a failure says why.
                let text = self
                    .client
                    .execute("return document.body.innerText.slice(0, 4000);", vec![])
                    .await
                    .unwrap_or_default();
                panic!("waiting for {what}: not within {GUARD:?}; the page shows:\n{text}")
            }
        }
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    pub async fn click(&self, css: &str) {
        self.act_on(css, "click", |e| async move { e.click().await })
            .await;
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        self.act_on(css, "type into", |e| async move { e.send_keys(text).await })
            .await;
    }

    /// Finds `css` and does `act` to it. When the page re-rendered that part
    /// between the find and the action (a live update of what it shows),
    /// the element found is gone and its replacement is what a user would
    /// act on: it is found again, up to [`RE_RENDERS`] times.
    async fn act_on<F, Fut>(&self, css: &str, what: &str, act: F)
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        for _ in 0..RE_RENDERS {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("find {css}: {e}"));
            match act(element).await {
                Ok(()) => return,
                Err(e) if e.is_stale_element_reference() => continue,
                Err(e) => panic!("{what} {css}: {e}"),
            }
        }
        panic!("{what} {css}: replaced by a re-render {RE_RENDERS} times in a row");
    }

    /// A PNG of the whole page at laptop width into `dir/name`.
    pub async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let height = self
            .js("return Math.min(2400, Math.max(900, document.documentElement.scrollHeight));")
            .await
            .as_u64()
            .unwrap_or(900) as u32;
        // The outer window adds the browser's own frame in headless mode too.
        self.client
            .set_window_size(1440, height + 90)
            .await
            .expect("resize the window");
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("write the screenshot");
        self.client
            .set_window_size(1440, 900)
            .await
            .expect("resize the window back");
        path
    }
}

/// Where screenshots go: `docs/console/` when `MERIDIAN_CONSOLE_SCREENSHOTS`
/// is set (to refresh the documentation), otherwise a temporary directory.
pub fn screenshot_dir(tmp: &tempfile::TempDir) -> PathBuf {
    if std::env::var_os("MERIDIAN_CONSOLE_SCREENSHOTS").is_some() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
        std::fs::create_dir_all(&dir).expect("docs/console");
        dir
    } else {
        tmp.path().to_path_buf()
    }
}

/// The work of a simulated task a fake agent runs: the task's own runtime
/// (as a real agent's timer for a simulated task), not a wait of the test.
async fn run_simulated_task(runtime: Duration) {
    tokio::time::sleep(runtime).await;
}

/// Wall time in ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A region as the global tier sees one: the test speaks `RegionLink`.
pub struct FakeRegion {
    pub name: String,
    pub lease: u64,
    pub link: RegionLinkClient<Channel>,
    assignments: tonic::Streaming<v1::AssignmentEvent>,
}

impl FakeRegion {
    /// Registers the region, reports ample capacity, opens its stream.
    pub async fn register(global_grpc: &str, name: &str) -> FakeRegion {
        let mut link = RegionLinkClient::connect(global_grpc.to_string())
            .await
            .expect("connect to RegionLink");
        let request = v1::RegisterRegionRequest {
            region: name.into(),
            replica: Some(v1::ReplicaIdentity {
                replica_id: format!("{name}-a"),
                boot_id: format!("boot-{name}"),
                ..Default::default()
            }),
            leader_epoch: 1,
            zones: vec!["zone-a".into(), "zone-b".into()],
            ..Default::default()
        };
        // The global replica leads just after it starts listening; a region
        // sends its registration again until then, by control's retry rule,
        // and so does this one.
        let lease = support::retry::until_served(&format!("register region {name}"), || {
            let (mut link, request) = (link.clone(), request.clone());
            async move { link.register_region(request).await }
        })
        .await
        .into_inner()
        .region_lease_epoch;
        link.report_capacity(v1::ReportCapacityRequest {
            region: name.into(),
            region_lease_epoch: lease,
            capacity: Some(v1::RegionCapacity {
                nodes_total: 2,
                nodes_ready: 2,
                cpu_millis_allocatable: 8_000,
                memory_bytes_allocatable: 16 * GIB,
                max_node_free: Some(v1::Resources {
                    cpu_millis: 4_000,
                    memory_bytes: 8 * GIB,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("report capacity");
        let assignments = link
            .assignments(v1::AssignmentsRequest {
                region: name.into(),
                region_lease_epoch: lease,
                cursor: Vec::new(),
            })
            .await
            .expect("open the assignment stream")
            .into_inner();
        FakeRegion {
            name: name.into(),
            lease,
            link,
            assignments,
        }
    }

    /// Awaits the ASSIGN of `job_id` on the stream and acknowledges it;
    /// returns the assignment epoch.
    pub async fn accept(&mut self, job_id: &str) -> u64 {
        let epoch = loop {
            let event = self
                .assignments
                .message()
                .await
                .expect("assignment stream")
                .expect("stream open");
            if event.kind == v1::AssignmentEventKind::Assign as i32 && event.job_id == job_id {
                break event.assignment_epoch;
            }
        };
        let answer = self
            .link
            .ack_assignments(v1::AckAssignmentsRequest {
                region: self.name.clone(),
                region_lease_epoch: self.lease,
                acks: vec![v1::JobEpoch {
                    job_id: job_id.into(),
                    assignment_epoch: epoch,
                }],
            })
            .await
            .expect("ack")
            .into_inner();
        assert_eq!(answer.verdict, v1::Verdict::Accepted as i32, "{answer:?}");
        epoch
    }

    /// Reports the job's state with one status per task (task `i` on
    /// `nodes[i]`), as a region's link does.
    #[allow(clippy::too_many_arguments)]
    pub async fn report(
        &mut self,
        job_id: &str,
        epoch: u64,
        version: u64,
        state: v1::JobState,
        nodes: &[&str],
        placed: u64,
        started: u64,
        finished: u64,
    ) {
        let task_state = match state {
            v1::JobState::Placed => v1::TaskState::Placed,
            v1::JobState::Running => v1::TaskState::Running,
            _ => v1::TaskState::Succeeded,
        };
        let n = nodes.len() as u32;
        let mut counts = v1::TaskCounts::default();
        match task_state {
            v1::TaskState::Placed => counts.placed = n,
            v1::TaskState::Running => counts.running = n,
            _ => counts.succeeded = n,
        }
        let tasks = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| v1::TaskStatus {
                index: i as u32,
                state: task_state as i32,
                node_id: (*node).into(),
                region: self.name.clone(),
                attempt: 1,
                exit_code: (task_state == v1::TaskState::Succeeded).then_some(0),
                placed_at_unix_ms: placed,
                // Tasks start and end a little apart, as real ones do.
                started_at_unix_ms: if started > 0 {
                    started + 40 * i as u64
                } else {
                    0
                },
                finished_at_unix_ms: if finished > 0 {
                    finished - 60 * (2 - i as u64 % 3)
                } else {
                    0
                },
                updated_at_unix_ms: now_ms(),
                ..Default::default()
            })
            .collect();
        let answer = self
            .link
            .report_status(v1::ReportStatusRequest {
                region: self.name.clone(),
                region_lease_epoch: self.lease,
                updates: vec![v1::JobStatusUpdate {
                    job_id: job_id.into(),
                    assignment_epoch: epoch,
                    status_version: version,
                    state: state as i32,
                    tasks,
                    task_counts: Some(counts),
                    observed_at_unix_ms: now_ms(),
                    ..Default::default()
                }],
            })
            .await
            .expect("report status")
            .into_inner();
        assert_eq!(answer.verdict, v1::Verdict::Accepted as i32, "{answer:?}");
        self.link
            .renew_region_lease(v1::RenewRegionLeaseRequest {
                region: self.name.clone(),
                region_lease_epoch: self.lease,
            })
            .await
            .expect("renew the region lease");
    }
}
