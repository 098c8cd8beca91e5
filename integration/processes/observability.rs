//! Observability of the federation, as separate OS processes: a `meridian
//! global`, a `meridian regional --global ADDR` and a `meridian agent`
//! (real node, real processes).
//!
//! - one trace id per job, end to end: a job submitted with a `traceparent`
//!   (gRPC metadata, or the HTTP header) keeps that trace id in its global
//!   record, the region logs it when it
//!   takes the job in and when it binds the task, the agent logs it when it
//!   starts the attempt and hands it to the process as `MERIDIAN_TRACE_ID`
//!   (the process prints it; its output comes back through `GetTaskLogs`);
//! - every server's `/metrics` carries the documented series, and the rate
//!   series moved by the job (submits, routing, intake, bindings, task
//!   starts and finishes); the lease and fencing series are present;
//! - `--otlp-endpoint` exports the job's spans over OTLP/gRPC to a
//!   collector (here an in-test `TraceService`) under the job's trace id;
//!   a malformed endpoint is refused at start.
//!
//! Nothing waits by sleeping or polling: progress is awaited on process
//! output, on the captured logs (woken by each new line), and on the global
//! tier's `WatchJobs` stream; the failure guard only stops a hang.

use crate::support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_cli::dev::line::{AgentLine, GlobalLine, LOOPBACK_ANY_PORT, RegionalLine};
use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use support::{Agent, Global, Launch, Proc, Regional, Stderr};
use tonic::transport::Channel;

/// Failure guard only: no step waits this long when things work.
const GUARD: Duration = Duration::from_secs(90);
/// The trace id every test job is submitted under.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// Log filter of the processes: quiet, except the per-job trace events and
/// the line an agent logs once its node is registered.
const LOG: &str = "warn,meridian_trace=debug,meridian_agent::node=info";

/// One federation at a time on the machine (under plain `cargo test` the
/// tests of this file would otherwise start theirs side by side).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn traceparent() -> String {
    format!("00-{TRACE}-00f067aa0ba902b7-01")
}

/// How this file's processes run: the trace log filter, stderr captured
/// for [`await_log`], no span export unless the test asks for it (through
/// `env`, added last), and SIGINT then SIGKILL when dropped, so a failing
/// test leaves nothing behind.
fn observed(launch: Launch, env: &[(&str, &str)]) -> Launch {
    launch
        .env("RUST_LOG", LOG)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stderr(Stderr::Capture)
        .interrupt_on_drop()
        .envs(env)
}

/// Waits for a line of `proc`'s captured log with every one of `parts`.
async fn await_log(proc: &Proc, what: &str, parts: &[&str]) {
    if let Err(e) = proc.log().until(parts, GUARD).await {
        panic!("{what}: {e}");
    }
}

/// `GET http://ADDR/metrics`, parsed into `series -> value` (the series
/// is the name with its labels exactly as rendered).
fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let addr = addr
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    stream.set_read_timeout(Some(GUARD)).expect("read timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read /metrics");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// `POST http://ADDR{path}` with `headers` and a JSON `body`; the answer's
/// body.
fn http_post(addr: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let addr = addr.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the HTTP API");
    stream.set_read_timeout(Some(GUARD)).expect("read timeout");
    let mut request = format!(
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read answer");
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of `series`, failing with the scrape when it is missing.
fn value(metrics: &BTreeMap<String, f64>, series: &str) -> f64 {
    match metrics.get(series) {
        Some(v) => *v,
        None => panic!(
            "no series {series}; scraped:\n{}",
            metrics.keys().cloned().collect::<Vec<_>>().join("\n")
        ),
    }
}

/// Whether some series of metric `name` is present.
fn has_metric(metrics: &BTreeMap<String, f64>, name: &str) -> bool {
    metrics
        .keys()
        .any(|k| k == name || k.starts_with(&format!("{name}{{")))
}

/// The job whose one task prints its `MERIDIAN_TRACE_ID`.
fn echo_trace_job() -> v1::JobSpec {
    v1::JobSpec {
        name: "echo-trace".into(),
        tenant: "team-a".into(),
        task_count: 1,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Command(v1::Command {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), "printf %s \"$MERIDIAN_TRACE_ID\"".into()],
                ..Default::default()
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis: 500,
            memory_bytes: 1 << 28,
            ..Default::default()
        }),
        retry: Some(v1::RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Submits `spec` with this file's `traceparent` metadata, retrying (with
/// the same request id) while the replica is not the leader yet.
async fn submit_traced(federation: &mut FederationClient<Channel>, spec: v1::JobSpec) -> String {
    let submit = v1::SubmitJobRequest {
        request_id: format!("req-{}", spec.name),
        spec: Some(spec),
    };
    // A replica that has just started may not lead yet: the submit is sent
    // again, same request id, as the product's clients send it.
    support::retry::until_served("submit", || {
        let mut request = tonic::Request::new(submit.clone());
        request.metadata_mut().insert(
            "traceparent",
            traceparent().parse().expect("ascii traceparent"),
        );
        let mut federation = federation.clone();
        async move { federation.submit_job(request).await }
    })
    .await
    .into_inner()
    .job_id
}

fn is_terminal(state: i32) -> bool {
    [
        v1::JobState::Succeeded,
        v1::JobState::Failed,
        v1::JobState::Cancelled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

async fn get_job(federation: &mut FederationClient<Channel>, job_id: &str) -> v1::Job {
    federation
        .get_job(v1::GetJobRequest {
            job_id: job_id.into(),
        })
        .await
        .expect("get job")
        .into_inner()
        .job
        .expect("job")
}

/// Awaits the job's terminal state on the global tier's `WatchJobs`
/// stream; the stream is opened before the job is read once, so no change
/// falls between the two.
async fn await_terminal(federation: &mut FederationClient<Channel>, job_id: &str) -> v1::Job {
    let mut events = federation
        .watch_jobs(v1::WatchJobsRequest::default())
        .await
        .expect("watch jobs")
        .into_inner();
    let wait = async {
        let job = get_job(federation, job_id).await;
        if is_terminal(job.state) {
            return job;
        }
        loop {
            let event = events
                .message()
                .await
                .expect("watch stream")
                .expect("watch stream open");
            if let Some(j) = event.job
                && j.job_id == job_id
                && is_terminal(j.state)
            {
                return get_job(federation, job_id).await;
            }
        }
    };
    tokio::time::timeout(GUARD, wait)
        .await
        .unwrap_or_else(|_| panic!("job {job_id} not terminal within {GUARD:?}"))
}

/// Awaits the line the agent logs once the region has registered its node
/// (the region stores the node READY before it answers).
async fn await_ready_node(agent: &Proc, node: &str) {
    let field = format!("node={node}");
    await_log(agent, "the node registers", &["registered", &field]).await;
}

/// The three tiers, each its own process.
struct Federation {
    global: Proc,
    global_grpc: String,
    global_http: String,
    region: Proc,
    region_metrics: String,
    agent: Proc,
    agent_metrics: String,
    _dir: tempfile::TempDir,
}

/// Starts the three tiers, each with `env` added to its environment.
fn start_federation(env: &[(&str, &str)]) -> Federation {
    let dir = tempfile::tempdir().expect("temp dir");
    let global_store = format!("sqlite:{}", dir.path().join("global.db").display());
    let global = Global::start_with(
        &GlobalLine::new(global_store, LOOPBACK_ANY_PORT).http(LOOPBACK_ANY_PORT),
        |l| observed(l, env),
    );
    let global_http = global.http.expect("http address");
    let region_store = format!("sqlite:{}", dir.path().join("r1.db").display());
    let region_addr = support::free_loopback_addr();
    let region = Regional::start_with(
        &RegionalLine::new("r1", region_store, region_addr, 1)
            .global(&global.grpc)
            .metrics_listen(LOOPBACK_ANY_PORT),
        |l| observed(l, env),
    );
    let region_metrics = region.metrics.expect("metrics address");
    let region_url = format!("http://{region_addr}");
    let work = dir.path().join("agent");
    let agent = Agent::start_with(
        &AgentLine::new(vec![region_url.clone()], "n1", work, 2.0, 4 << 30)
            .metrics_listen(LOOPBACK_ANY_PORT),
        |l| observed(l, env),
    );
    let agent_metrics = agent.metrics.expect("metrics address");
    Federation {
        global: global.proc,
        global_grpc: global.grpc,
        global_http,
        region: region.proc,
        region_metrics,
        agent: agent.proc,
        agent_metrics,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_id_follows_a_job_from_submit_through_region_to_the_agents_process() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = start_federation(&[]);
    await_ready_node(&f.agent, "n1").await;
    let mut federation = FederationClient::connect(f.global_grpc.clone())
        .await
        .expect("connect to the global tier");
    let job_id = submit_traced(&mut federation, echo_trace_job()).await;
    let job = await_terminal(&mut federation, &job_id).await;
    assert_eq!(job.state, v1::JobState::Succeeded as i32, "{job:?}");

    // The global record keeps the caller's trace id.
    assert_eq!(job.trace_id, TRACE);
    // The agent handed it to the process, which printed it.
    let logs = federation
        .get_task_logs(v1::GetTaskLogsRequest {
            task: Some(v1::TaskId {
                job_id: job_id.clone(),
                index: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("task logs")
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&logs.stdout_tail), TRACE);

    // The HTTP API takes the header the same way.
    let other = "0af7651916cd43dd8448eb211c80319c";
    let body = r#"{"request_id":"http-1","spec":{"name":"h","tenant":"t","task_count":1,"task":{"simulated":{"duration_ms":5}},"resources":{"cpu_millis":100,"memory_bytes":1}}}"#;
    let answer = http_post(
        &f.global_http,
        "/v1/jobs",
        &[("traceparent", &format!("00-{other}-b7ad6b7169203331-01"))],
        body,
    );
    let http_job =
        serde_json::from_str::<serde_json::Value>(&answer).expect("JSON answer")["job_id"]
            .as_str()
            .expect("job_id in the answer")
            .to_string();
    let stored = federation
        .get_job(v1::GetJobRequest { job_id: http_job })
        .await
        .expect("get job")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(stored.trace_id, other);

    // Each process logged its step of the job under the same trace id.
    let trace = format!("trace_id={TRACE}");
    let job_field = format!("job_id={job_id}");
    for (proc, step, line) in [
        (&f.global, "submit", "submit: job accepted"),
        (&f.global, "route", "route: job assigned to region"),
        (
            &f.global,
            "ack",
            "route: region acknowledged the assignment",
        ),
        (
            &f.region,
            "intake",
            "intake: assignment stored by the region",
        ),
        (&f.region, "place", "place: tasks bound to nodes"),
        (&f.agent, "run", "run: task attempt started"),
    ] {
        await_log(proc, step, &[line, &trace, &job_field]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_serves_the_documented_metrics_and_a_job_moves_the_rates() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = start_federation(&[]);
    await_ready_node(&f.agent, "n1").await;
    let mut federation = FederationClient::connect(f.global_grpc.clone())
        .await
        .expect("connect to the global tier");
    let job_id = submit_traced(&mut federation, echo_trace_job()).await;
    let job = await_terminal(&mut federation, &job_id).await;
    assert_eq!(job.state, v1::JobState::Succeeded as i32, "{job:?}");

    let global = scrape(&format!("{}/metrics", f.global_http));
    assert!(
        value(
            &global,
            "meridian_global_submits_total{outcome=\"created\"}"
        ) >= 1.0
    );
    assert!(value(&global, "meridian_global_jobs_routed_total") >= 1.0);
    assert!(
        value(
            &global,
            "meridian_control_lease_transitions_total{lease=\"global\",to=\"leader\"}"
        ) >= 1.0
    );
    assert!(
        value(
            &global,
            "meridian_global_region_items_total{kind=\"ack\",verdict=\"VERDICT_ACCEPTED\"}"
        ) >= 1.0
    );
    for name in [
        "meridian_global_submit_queue_depth",
        "meridian_global_route_pending_jobs",
        "meridian_global_fencing_rejections_total",
        "meridian_control_fenced_writes_total",
        "meridian_control_lease_renew_failures_total",
        "meridian_store_retries_total",
    ] {
        assert!(has_metric(&global, name), "global /metrics lacks {name}");
    }

    let region = scrape(&f.region_metrics);
    assert!(value(&region, "meridian_regional_bindings_total{shard=\"0\"}") >= 1.0);
    assert!(
        value(
            &region,
            "meridian_regional_assignments_total{kind=\"assign\",outcome=\"changed\"}"
        ) >= 1.0
    );
    // The agent keeps only the latest unsent report of an attempt, so a task
    // this short may reach the region as SUCCEEDED alone: its RUNNING report
    // is counted at most once, never required. The agent counts the start.
    assert!(
        region
            .get("meridian_regional_task_reports_total{state=\"running\"}")
            .copied()
            .unwrap_or(0.0)
            <= 1.0
    );
    assert!(
        value(
            &region,
            "meridian_regional_task_reports_total{state=\"succeeded\"}"
        ) >= 1.0
    );
    assert!(
        value(
            &region,
            "meridian_control_lease_transitions_total{lease=\"shard-0\",to=\"leader\"}"
        ) >= 1.0
    );
    for name in [
        "meridian_regional_queue_depth",
        "meridian_regional_fencing_rejections_total",
        "meridian_control_fenced_writes_total",
        "meridian_control_lease_renew_failures_total",
        "meridian_store_retries_total",
    ] {
        assert!(has_metric(&region, name), "regional /metrics lacks {name}");
    }

    let agent = scrape(&f.agent_metrics);
    assert_eq!(
        value(
            &agent,
            "meridian_agent_task_starts_total{outcome=\"started\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &agent,
            "meridian_agent_task_finishes_total{state=\"succeeded\"}"
        ),
        1.0
    );
    assert!(has_metric(
        &agent,
        "meridian_agent_fencing_rejections_total"
    ));
}

/// An OTLP/gRPC trace collector keeping `(trace id hex, span name,
/// service name)` of every span it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("collector lock");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let hex: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    spans.push((hex, span.name, service.clone()));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves the collector on a free loopback port; returns its endpoint.
    async fn start(&self) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let endpoint = format!(
            "http://{}",
            listener.local_addr().expect("collector address")
        );
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        let task = tokio::spawn(async move {
            let _ = server.await;
        });
        (endpoint, task)
    }

    /// Whether a span named `name` of trace [`TRACE`] came from `service`.
    fn has(&self, name: &str, service: &str) -> bool {
        self.spans
            .lock()
            .expect("collector lock")
            .iter()
            .any(|(t, n, s)| t == TRACE && n == name && s.contains(service))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_sends_the_submit_span_under_the_jobs_trace_id() {
    let _one = ONE_AT_A_TIME.lock().await;
    let collector = Collector::default();
    let (endpoint, server) = collector.start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite:{}", dir.path().join("global.db").display());
    let mut global = Global::start_with(
        &GlobalLine::new(store, LOOPBACK_ANY_PORT).otlp_endpoint(&endpoint),
        |l| observed(l, &[]),
    );
    let grpc = global.grpc.clone();
    let mut federation = FederationClient::connect(grpc)
        .await
        .expect("connect to the global tier");
    // No region exists: the job stays pending, which is enough for the
    // submit step of its trace.
    let mut spec = echo_trace_job();
    spec.name = "otlp".into();
    submit_traced(&mut federation, spec).await;
    // A stopping server flushes the spans it still holds.
    global.proc.interrupt();
    let spans = collector.spans.lock().expect("collector lock").clone();
    server.abort();
    assert!(
        spans.iter().any(|(trace, name, service)| trace == TRACE
            && name == "submit"
            && service.contains("meridian-global")),
        "no submit span of trace {TRACE} from meridian-global among {spans:?}"
    );
}

#[test]
fn a_malformed_otlp_endpoint_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args([
            "global",
            "--store",
            "sqlite::memory:",
            "--otlp-endpoint",
            "collector:4317",
        ])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run meridian global");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("expected an http:// or https:// URL"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_one_job_from_every_process_share_its_trace_in_otlp() {
    let _one = ONE_AT_A_TIME.lock().await;
    let collector = Collector::default();
    let (endpoint, server) = collector.start().await;
    // The standard variable, not the flag: every tier reads it.
    let mut f = start_federation(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    await_ready_node(&f.agent, "n1").await;
    let mut federation = FederationClient::connect(f.global_grpc.clone())
        .await
        .expect("connect to the global tier");
    let job_id = submit_traced(&mut federation, echo_trace_job()).await;
    let job = await_terminal(&mut federation, &job_id).await;
    assert_eq!(job.state, v1::JobState::Succeeded as i32, "{job:?}");
    // Stopping flushes what each process still holds.
    f.agent.interrupt();
    f.region.interrupt();
    f.global.interrupt();
    server.abort();
    for (name, service) in [
        ("submit", "meridian-global"),
        ("route", "meridian-global"),
        ("intake", "meridian-regional"),
        ("place", "meridian-regional"),
        ("run", "meridian-agent"),
    ] {
        assert!(
            collector.has(name, service),
            "no {name} span of trace {TRACE} from {service}: {:?}",
            collector.spans.lock().expect("collector lock")
        );
    }
}
