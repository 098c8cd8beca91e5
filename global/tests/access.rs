//! Who may call what, over a real gRPC server and a real HTTP server on
//! loopback: for every Federation RPC and every HTTP route (checked
//! against the service descriptor and the router, so a new one without an
//! entry fails here), each principal's outcome: no token and a revoked
//! token are UNAUTHENTICATED (401), a role short of the call's is
//! PERMISSION_DENIED (403) naming the role, a token of another tenant gets
//! NOT_FOUND (404) for tenant a's job and schedule, and everything else
//! passes the access check.

use crate::access_support;
use crate::common;

use std::collections::BTreeSet;

use access_support::{Api, Secured, http};
use common::spec;
use meridian_global::auth::table::{self, Access};
use meridian_proto::v1::*;
use tonic::Code;

/// The callers of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Nobody,
    Revoked,
    Admin,
    ViewerA,
    SubmitterA,
    SubmitterB,
    Operator,
}

const EVERYONE: [Who; 7] = [
    Who::Nobody,
    Who::Revoked,
    Who::Admin,
    Who::ViewerA,
    Who::SubmitterA,
    Who::SubmitterB,
    Who::Operator,
];

/// What a call must come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Past the access check (whatever the call itself then answers).
    Allowed,
    Unauthenticated,
    Denied,
    /// NOT_FOUND, as for an unknown id.
    Hidden,
}

/// Operations that name tenant a's job or schedule.
fn names_object(op: &str) -> bool {
    matches!(
        op,
        "GetJob"
            | "CancelJob"
            | "HoldJob"
            | "ReleaseJob"
            | "SetJobPriority"
            | "ListJobTasks"
            | "GetTaskLogs"
            | "FollowTaskLogs"
            | "GetSchedule"
            | "PauseSchedule"
            | "ResumeSchedule"
            | "DeleteSchedule"
    )
}

fn expect(op: &str, who: Who) -> Expect {
    let access = table::access(op).unwrap_or_else(|| panic!("{op} has no access entry"));
    if access == Access::Public {
        return Expect::Allowed;
    }
    let allowed = |ok: bool| if ok { Expect::Allowed } else { Expect::Denied };
    match who {
        Who::Nobody | Who::Revoked => Expect::Unauthenticated,
        Who::Admin => Expect::Allowed,
        Who::ViewerA => allowed(matches!(access, Access::Authenticated | Access::View)),
        Who::SubmitterA => allowed(matches!(
            access,
            Access::Authenticated | Access::View | Access::Submit
        )),
        Who::Operator => allowed(matches!(access, Access::Authenticated | Access::Operate)),
        Who::SubmitterB => match access {
            Access::View | Access::Submit if names_object(op) => Expect::Hidden,
            // Tenant a's spec, submitted with a token of tenant b.
            Access::Submit if matches!(op, "SubmitJob" | "SubmitJobs" | "CreateSchedule") => {
                Expect::Denied
            }
            other => allowed(matches!(
                other,
                Access::Authenticated | Access::View | Access::Submit
            )),
        },
    }
}

/// Tenant a's objects a call acts on.
struct Fixture {
    job: String,
    schedule: String,
}

async fn fixture(api: &mut Api, n: usize) -> Fixture {
    let job = api
        .submit_job(common::submit(&format!("fixture-{n}"), spec("a")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let schedule = format!("sched-{n}");
    api.create_schedule(schedule_request(&schedule))
        .await
        .unwrap();
    Fixture { job, schedule }
}

fn schedule_request(id: &str) -> CreateScheduleRequest {
    let mut job = spec("a");
    job.tenant.clear();
    CreateScheduleRequest {
        schedule_id: id.into(),
        spec: Some(ScheduleSpec {
            tenant: "a".into(),
            cron: "0 0 * * *".into(),
            job: Some(job),
            ..ScheduleSpec::default()
        }),
        paused: false,
    }
}

fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// Calls `op` over gRPC; its code and message.
async fn call(op: &str, api: &mut Api, fx: &Fixture, n: usize) -> (Code, String) {
    let job = fx.job.clone();
    let task = Some(TaskId {
        job_id: job.clone(),
        index: 0,
    });
    let sched = fx.schedule.clone();
    match op {
        "SubmitJob" => code(
            api.submit_job(common::submit(&format!("c{n}"), spec("a")))
                .await,
        ),
        "SubmitJobs" => match api
            .submit_jobs(SubmitJobsRequest {
                items: vec![common::submit(&format!("b{n}"), spec("a"))],
            })
            .await
        {
            Ok(r) => match &r.get_ref().results[0].outcome {
                Some(submit_job_result::Outcome::Error(e)) => {
                    (Code::from_i32(e.code), e.message.clone())
                }
                _ => (Code::Ok, String::new()),
            },
            Err(s) => (s.code(), s.message().to_string()),
        },
        "GetJob" => code(api.get_job(GetJobRequest { job_id: job }).await),
        "ListJobs" => code(api.list_jobs(ListJobsRequest::default()).await),
        "CancelJob" => code(
            api.cancel_job(CancelJobRequest {
                job_id: job,
                reason: "test".into(),
            })
            .await,
        ),
        "HoldJob" => code(
            api.hold_job(HoldJobRequest {
                job_id: job,
                reason: "test".into(),
            })
            .await,
        ),
        "ReleaseJob" => code(api.release_job(ReleaseJobRequest { job_id: job }).await),
        "SetJobPriority" => code(
            api.set_job_priority(SetJobPriorityRequest {
                job_id: job,
                priority: 5,
            })
            .await,
        ),
        "WatchJobs" => code(api.watch_jobs(WatchJobsRequest::default()).await),
        "ListJobTasks" => code(
            api.list_job_tasks(ListJobTasksRequest {
                job_id: job,
                ..ListJobTasksRequest::default()
            })
            .await,
        ),
        "GetTaskLogs" => code(
            api.get_task_logs(GetTaskLogsRequest {
                task,
                ..GetTaskLogsRequest::default()
            })
            .await,
        ),
        "FollowTaskLogs" => code(
            api.follow_task_logs(FollowTaskLogsRequest {
                task,
                ..FollowTaskLogsRequest::default()
            })
            .await,
        ),
        "ListRegions" => code(api.list_regions(ListRegionsRequest {}).await),
        "DrainRegion" => code(
            api.drain_region(DrainRegionRequest {
                region: "r1".into(),
                ..DrainRegionRequest::default()
            })
            .await,
        ),
        "UndrainRegion" => code(
            api.undrain_region(UndrainRegionRequest {
                region: "r1".into(),
            })
            .await,
        ),
        "ListNodes" => code(
            api.list_nodes(ListNodesRequest {
                region: "r1".into(),
                ..ListNodesRequest::default()
            })
            .await,
        ),
        "CordonNode" => code(
            api.cordon_node(CordonNodeRequest {
                region: "r1".into(),
                node_id: "n1".into(),
                reason: String::new(),
            })
            .await,
        ),
        "UncordonNode" => code(
            api.uncordon_node(UncordonNodeRequest {
                region: "r1".into(),
                node_id: "n1".into(),
            })
            .await,
        ),
        "DrainNode" => code(
            api.drain_node(DrainNodeRequest {
                region: "r1".into(),
                node_id: "n1".into(),
                ..DrainNodeRequest::default()
            })
            .await,
        ),
        "CreateSchedule" => code(
            api.create_schedule(schedule_request(&format!("new-{n}")))
                .await,
        ),
        "GetSchedule" => code(
            api.get_schedule(GetScheduleRequest { schedule_id: sched })
                .await,
        ),
        "ListSchedules" => code(api.list_schedules(ListSchedulesRequest::default()).await),
        "PauseSchedule" => code(
            api.pause_schedule(PauseScheduleRequest { schedule_id: sched })
                .await,
        ),
        "ResumeSchedule" => code(
            api.resume_schedule(ResumeScheduleRequest { schedule_id: sched })
                .await,
        ),
        "DeleteSchedule" => code(
            api.delete_schedule(DeleteScheduleRequest { schedule_id: sched })
                .await,
        ),
        "GetUsage" => code(api.get_usage(GetUsageRequest::default()).await),
        "CreateToken" => code(
            api.create_token(CreateTokenRequest {
                name: format!("t{n}"),
                role: Role::Viewer as i32,
                tenants: vec!["a".into()],
            })
            .await,
        ),
        "ListTokens" => code(api.list_tokens(ListTokensRequest::default()).await),
        "RevokeToken" => code(
            api.revoke_token(RevokeTokenRequest {
                token_id: "00000000000000ff".into(),
            })
            .await,
        ),
        "ListAuditRecords" => code(
            api.list_audit_records(ListAuditRecordsRequest::default())
                .await,
        ),
        other => panic!("no gRPC case for {other}: add one"),
    }
}

/// The HTTP request of `op`: method, path, body.
fn request(op: &str, fx: &Fixture, n: usize) -> (&'static str, String, String) {
    let submit = |id: String| {
        format!(
            r#"{{"request_id":"{id}","spec":{{"name":"x","tenant":"a","task_count":1,"task":{{"simulated":{{"duration_ms":10}}}},"resources":{{"cpu_millis":100,"memory_bytes":"1000"}}}}}}"#
        )
    };
    let (job, sched) = (&fx.job, &fx.schedule);
    let empty = String::new();
    match op {
        "SubmitJob" => ("POST", "/v1/jobs".into(), submit(format!("h{n}"))),
        "SubmitJobs" => (
            "POST",
            "/v1/jobs/batch".into(),
            format!(r#"{{"items":[{}]}}"#, submit(format!("hb{n}"))),
        ),
        "ListJobs" => ("GET", "/v1/jobs".into(), empty),
        "ListJobsByBody" => ("POST", "/v1/jobs/list".into(), "{}".into()),
        "WatchJobs" => ("GET", "/v1/jobs/watch".into(), empty),
        "GetJob" => ("GET", format!("/v1/jobs/{job}"), empty),
        "CancelJob" => ("POST", format!("/v1/jobs/{job}/cancel"), "{}".into()),
        "HoldJob" => ("POST", format!("/v1/jobs/{job}/hold"), "{}".into()),
        "ReleaseJob" => ("POST", format!("/v1/jobs/{job}/release"), "{}".into()),
        "SetJobPriority" => (
            "POST",
            format!("/v1/jobs/{job}/priority"),
            r#"{"priority":5}"#.into(),
        ),
        "ListJobTasks" => ("GET", format!("/v1/jobs/{job}/tasks"), empty),
        "GetTaskLogs" => ("GET", format!("/v1/jobs/{job}/tasks/0/logs"), empty),
        "FollowTaskLogs" => ("GET", format!("/v1/jobs/{job}/tasks/0/logs/follow"), empty),
        "ListRegions" => ("GET", "/v1/regions".into(), empty),
        "DrainRegion" => ("POST", "/v1/regions/r1/drain".into(), "{}".into()),
        "UndrainRegion" => ("POST", "/v1/regions/r1/undrain".into(), "{}".into()),
        "ListNodes" => ("GET", "/v1/regions/r1/nodes".into(), empty),
        "CordonNode" => ("POST", "/v1/regions/r1/nodes/n1/cordon".into(), "{}".into()),
        "UncordonNode" => (
            "POST",
            "/v1/regions/r1/nodes/n1/uncordon".into(),
            "{}".into(),
        ),
        "DrainNode" => ("POST", "/v1/regions/r1/nodes/n1/drain".into(), "{}".into()),
        "CreateSchedule" => (
            "POST",
            "/v1/schedules".into(),
            format!(
                r#"{{"schedule_id":"hnew-{n}","spec":{{"tenant":"a","cron":"0 0 * * *","job":{{"name":"x","task_count":1,"task":{{"simulated":{{"duration_ms":10}}}},"resources":{{"cpu_millis":100,"memory_bytes":"1000"}}}}}}}}"#
            ),
        ),
        "ListSchedules" => ("GET", "/v1/schedules".into(), empty),
        "GetSchedule" => ("GET", format!("/v1/schedules/{sched}"), empty),
        "DeleteSchedule" => ("DELETE", format!("/v1/schedules/{sched}"), empty),
        "PauseSchedule" => ("POST", format!("/v1/schedules/{sched}/pause"), "{}".into()),
        "ResumeSchedule" => ("POST", format!("/v1/schedules/{sched}/resume"), "{}".into()),
        "GetUsage" => ("GET", "/v1/usage".into(), empty),
        "CreateToken" => (
            "POST",
            "/v1/tokens".into(),
            format!(r#"{{"name":"h{n}","role":"ROLE_VIEWER","tenants":["a"]}}"#),
        ),
        "ListTokens" => ("GET", "/v1/tokens".into(), empty),
        "RevokeToken" => ("POST", "/v1/tokens/00000000000000ff/revoke".into(), empty),
        "ListAuditRecords" => ("GET", "/v1/audit".into(), empty),
        "Metrics" => ("GET", "/metrics".into(), empty),
        "Healthz" => ("GET", "/healthz".into(), empty),
        "OpenApi" => ("GET", "/openapi.json".into(), empty),
        other => panic!("no HTTP case for {other}: add one"),
    }
}

/// The tokens of every caller of the table.
struct Callers {
    tokens: Vec<(Who, Option<String>)>,
}

impl Callers {
    async fn make(s: &Secured) -> Callers {
        let (viewer, _) = s.token("viewer-a", Role::Viewer, &["a"]).await;
        let (submitter_a, _) = s.token("submitter-a", Role::Submitter, &["a"]).await;
        let (submitter_b, _) = s.token("submitter-b", Role::Submitter, &["b"]).await;
        let (operator, _) = s.token("operator", Role::Operator, &[]).await;
        let (revoked, info) = s.token("revoked", Role::Submitter, &["a"]).await;
        s.api(Some(&s.admin))
            .await
            .revoke_token(RevokeTokenRequest {
                token_id: info.token_id,
            })
            .await
            .unwrap();
        let tokens = EVERYONE
            .iter()
            .map(|who| {
                let token = match who {
                    Who::Nobody => None,
                    Who::Revoked => Some(revoked.clone()),
                    Who::Admin => Some(s.admin.clone()),
                    Who::ViewerA => Some(viewer.clone()),
                    Who::SubmitterA => Some(submitter_a.clone()),
                    Who::SubmitterB => Some(submitter_b.clone()),
                    Who::Operator => Some(operator.clone()),
                };
                (*who, token)
            })
            .collect();
        Callers { tokens }
    }
}

fn judge(op: &str, who: Who, got: Code, message: &str) -> Option<String> {
    let want = expect(op, who);
    let ok = match want {
        Expect::Allowed => {
            let refused = matches!(got, Code::Unauthenticated | Code::PermissionDenied);
            let hidden = names_object(op) && got == Code::NotFound;
            !refused && !hidden
        }
        Expect::Unauthenticated => got == Code::Unauthenticated,
        Expect::Denied => got == Code::PermissionDenied && message.contains("role "),
        Expect::Hidden => got == Code::NotFound,
    };
    (!ok).then(|| format!("{op} as {who:?}: want {want:?}, got {got:?} ({message})"))
}

fn federation_methods() -> BTreeSet<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(meridian_proto::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "Federation")
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect()
}

#[test]
fn every_rpc_and_every_http_route_has_an_access_entry() {
    let table: BTreeSet<String> = table::TABLE.iter().map(|(n, _)| n.to_string()).collect();
    for method in federation_methods() {
        assert!(table.contains(&method), "RPC {method} has no access entry");
    }
    let routes = meridian_global::auth::http::routes();
    assert!(routes.len() >= 30, "{routes:?}");
    for (method, path, op) in routes {
        assert!(
            table.contains(&op),
            "{method} {path} ({op}) has no access entry"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_its_outcome_on_every_rpc() {
    let s = Secured::start(|_| {}).await;
    let callers = Callers::make(&s).await;
    let mut admin = s.api(Some(&s.admin)).await;
    let shared = fixture(&mut admin, 0).await;
    let mut failures = Vec::new();
    let mut n = 1;
    for op in federation_methods() {
        for (who, token) in &callers.tokens {
            n += 1;
            let fresh;
            let fx = if table::is_mutating(&op) {
                fresh = fixture(&mut admin, n).await;
                &fresh
            } else {
                &shared
            };
            let mut api = s.api(token.as_deref()).await;
            let (got, message) = call(&op, &mut api, fx, n).await;
            failures.extend(judge(&op, *who, got, &message));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_gets_its_outcome_on_every_http_route() {
    let s = Secured::start(|_| {}).await;
    let callers = Callers::make(&s).await;
    let mut admin = s.api(Some(&s.admin)).await;
    let shared = fixture(&mut admin, 0).await;
    let mut failures = Vec::new();
    let mut n = 1;
    for (_, _, op) in meridian_global::auth::http::routes() {
        for (who, token) in &callers.tokens {
            n += 1;
            let fresh;
            let fx = if table::is_mutating(&op) {
                fresh = fixture(&mut admin, n).await;
                &fresh
            } else {
                &shared
            };
            let (method, path, body) = request(&op, fx, n);
            let answer = http(s.http_addr(), token.as_deref(), method, &path, &body).await;
            let (got, message) = match answer.status {
                401 => (Code::Unauthenticated, answer.body.clone()),
                403 => (Code::PermissionDenied, answer.body.clone()),
                404 => (Code::NotFound, answer.body.clone()),
                200 if op == "SubmitJobs" => {
                    let v: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
                    match v["results"][0]["error"]["code"].as_i64() {
                        Some(c) => (Code::from_i32(c as i32), answer.body.clone()),
                        None => (Code::Ok, String::new()),
                    }
                }
                _ => (Code::Ok, answer.body.clone()),
            };
            failures.extend(judge(&op, *who, got, &message));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_lists_only_its_tenants_jobs() {
    let s = Secured::start(|_| {}).await;
    let (viewer_a, _) = s.token("viewer-a", Role::Viewer, &["a"]).await;
    let (submitter_b, _) = s.token("submitter-b", Role::Submitter, &["b"]).await;
    let mut b = s.api(Some(&submitter_b)).await;
    let job_b = b
        .submit_job(common::submit("b1", spec("b")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let mut admin = s.api(Some(&s.admin)).await;
    let job_a = admin
        .submit_job(common::submit("a1", spec("a")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let ids =
        |r: ListJobsResponse| -> Vec<String> { r.jobs.into_iter().map(|j| j.job_id).collect() };
    let seen_b = ids(b
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner());
    assert_eq!(seen_b, vec![job_b.clone()]);
    let mut a = s.api(Some(&viewer_a)).await;
    let seen_a = ids(a
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner());
    assert_eq!(seen_a, vec![job_a.clone()]);
    // Naming the other tenant lists nothing rather than its jobs.
    let named = ids(a
        .list_jobs(ListJobsRequest {
            tenant: "b".into(),
            ..ListJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner());
    assert!(named.is_empty(), "{named:?}");
    let all = ids(admin
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner());
    assert_eq!(all.len(), 2);
    // Another tenant's job and an unknown one read the same.
    let hidden = a
        .get_job(GetJobRequest { job_id: job_b })
        .await
        .unwrap_err();
    let unknown = a
        .get_job(GetJobRequest {
            job_id: "0000000000000000-0000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    assert_eq!(unknown.code(), hidden.code());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_on_its_next_call() {
    let s = Secured::start(|_| {}).await;
    let (token, info) = s.token("soon-gone", Role::Submitter, &["a"]).await;
    let mut api = s.api(Some(&token)).await;
    api.list_jobs(ListJobsRequest::default()).await.unwrap();
    s.api(Some(&s.admin))
        .await
        .revoke_token(RevokeTokenRequest {
            token_id: info.token_id.clone(),
        })
        .await
        .unwrap();
    let refused = api.list_jobs(ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(!refused.message().contains(&token), "the secret is echoed");
    let listed = s
        .api(Some(&s.admin))
        .await
        .list_tokens(ListTokensRequest {
            include_revoked: true,
        })
        .await
        .unwrap()
        .into_inner();
    let stored = listed
        .tokens
        .iter()
        .find(|t| t.token_id == info.token_id)
        .unwrap();
    assert!(stored.revoked_at_unix_ms > 0);
    // Only the hash is stored: the secret appears in no stored value.
    let secret = token.rsplit('_').next().unwrap().as_bytes().to_vec();
    let keys = s.harness.running.keys.clone();
    let rows = s
        .harness
        .running
        .db
        .run(|tx, _| {
            let range = keys.root().range();
            async move { tx.get_range(meridian_store::RangeOption::from(range)).await }
        })
        .await
        .unwrap();
    for row in rows {
        assert!(
            !row.value
                .windows(secret.len())
                .any(|w| w == secret.as_slice()),
            "a stored value holds the secret"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_only_its_tenants_jobs() {
    let s = Secured::start(|_| {}).await;
    let (viewer_a, _) = s.token("viewer-a", Role::Viewer, &["a"]).await;
    let mut a = s.api(Some(&viewer_a)).await;
    let mut events = a
        .watch_jobs(WatchJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut admin = s.api(Some(&s.admin)).await;
    let job_b = admin
        .submit_job(common::submit("wb", spec("b")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let job_a = admin
        .submit_job(common::submit("wa", spec("a")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    // b's job was created first: the first job event seen must be a's.
    let first = common::guarded("a's job event", async {
        loop {
            let event = events.message().await.unwrap().expect("an event");
            if let Some(job) = event.job {
                return job.job_id;
            }
        }
    })
    .await;
    assert_eq!(first, job_a);
    assert_ne!(first, job_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_the_leader_holds_on_the_next_call_to_a_standby() {
    let s = Secured::start(|_| {}).await;
    let url = format!(
        "sqlite:{}",
        s.harness.dir.path().join("global.db").display()
    );
    let mut config =
        meridian_global::GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
    config.name = "standby".into();
    config.auth_enabled = true;
    let db = meridian_store::open(&url).await.unwrap();
    let standby =
        meridian_global::server::start_with(config, db, meridian_control::SystemClock::shared())
            .await
            .unwrap();
    assert!(!standby.leadership.is_leader());
    let (token, info) = s.token("short-lived", Role::Viewer, &["a"]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", standby.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut on_standby = meridian_proto::v1::federation_client::FederationClient::with_interceptor(
        channel,
        meridian_cli::auth::Bearer::new(Some(&token)).unwrap(),
    );
    on_standby
        .list_jobs(ListJobsRequest::default())
        .await
        .expect("the standby serves a read to a valid token");
    s.api(Some(&s.admin))
        .await
        .revoke_token(RevokeTokenRequest {
            token_id: info.token_id,
        })
        .await
        .unwrap();
    let refused = on_standby
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    standby.shutdown().await;
}
