//! Job dependencies over a real socket: a dependent job waits PENDING at the
//! global tier with the reason shown and is routed once its dependency is
//! met; a dependency that can never be met fails its dependents, down the
//! whole chain, each naming the job it waited for; unknown dependencies and
//! cycles are refused at submit naming the field. Regions are played by the
//! test through RegionLink; every wait is on the job's watch stream.

use crate::common;

use common::*;
use meridian_proto::v1::federation_client::FederationClient;
use meridian_proto::v1::job_dependency::Target;
use meridian_proto::v1::region_link_client::RegionLinkClient;
use meridian_proto::v1::submit_job_result::Outcome;
use meridian_proto::v1::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Follows `job`'s events until one shows it as `pred` wants; returns it.
async fn await_job(
    client: &mut FederationClient<Channel>,
    job: &str,
    what: &str,
    pred: impl Fn(&Job) -> bool,
) -> Job {
    let mut stream = client
        .watch_jobs(WatchJobsRequest {
            job_ids: vec![job.to_string()],
            ..WatchJobsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The event may have passed before the watch opened.
    let now = get(client, job).await;
    if pred(&now) {
        return now;
    }
    loop {
        let event = guarded(what, stream.next()).await.unwrap().unwrap();
        if let Some(j) = event.job
            && pred(&j)
        {
            return j;
        }
    }
}

async fn get(client: &mut FederationClient<Channel>, job: &str) -> Job {
    client
        .get_job(GetJobRequest { job_id: job.into() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

fn after(condition: DependencyCondition, target: Target) -> JobDependency {
    JobDependency {
        condition: condition as i32,
        target: Some(target),
    }
}

fn after_ok(job: &str) -> JobDependency {
    after(DependencyCondition::AfterOk, Target::JobId(job.into()))
}

fn with(deps: Vec<JobDependency>) -> JobSpec {
    let mut s = spec("t");
    s.dependencies = deps;
    s
}

async fn submit_job(client: &mut FederationClient<Channel>, id: &str, s: JobSpec) -> String {
    client
        .submit_job(submit(id, s))
        .await
        .unwrap()
        .into_inner()
        .job_id
}

/// Reports `job` (routed to `region` under `lease`) ended in `state`.
async fn report_end(
    link: &mut RegionLinkClient<Channel>,
    region: &str,
    lease: u64,
    job: &Job,
    state: JobState,
    why: &str,
) {
    let out = link
        .report_status(ReportStatusRequest {
            region: region.into(),
            region_lease_epoch: lease,
            updates: vec![JobStatusUpdate {
                job_id: job.job_id.clone(),
                assignment_epoch: job.assignment_epoch,
                status_version: 1,
                state: state as i32,
                failure_reason: why.into(),
                ..JobStatusUpdate::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.results[0].verdict, Verdict::Accepted as i32, "{out:?}");
}

fn routed(j: &Job) -> bool {
    j.state == JobState::Routed as i32
}

fn failed(j: &Job) -> bool {
    j.state == JobState::Failed as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_job_waits_with_its_reason_and_is_routed_once_its_dependency_succeeds() {
    let h = Harness::start(|_| {}).await;
    let mut link = h.link().await;
    let mut client = h.federation().await;
    let lease = register(&mut link, "r1").await;
    let a = submit_job(&mut client, "a", spec("t")).await;
    let b = submit_job(&mut client, "b", with(vec![after_ok(&a)])).await;
    let waiting = get(&mut client, &b).await;
    assert_eq!(waiting.state, JobState::Pending as i32);
    assert_eq!(
        waiting.waiting_reason,
        format!("waits for job {a} to succeed")
    );
    assert_eq!(waiting.dependencies, vec![after_ok(&a)]);
    let a_routed = await_job(&mut client, &a, "a routed", routed).await;
    // Routed in the pass that routed A, had B been routable: B still waits.
    let still = get(&mut client, &b).await;
    assert_eq!(still.state, JobState::Pending as i32);
    assert_eq!(still.region, "");
    report_end(&mut link, "r1", lease, &a_routed, JobState::Succeeded, "").await;
    let b_routed = await_job(&mut client, &b, "b routed", routed).await;
    assert_eq!(b_routed.region, "r1");
    assert_eq!(b_routed.waiting_reason, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_dependency_fails_the_whole_chain_fails_each_naming_the_job_it_waited_for() {
    let h = Harness::start(|_| {}).await;
    let mut link = h.link().await;
    let mut client = h.federation().await;
    let lease = register(&mut link, "r1").await;
    let a = submit_job(&mut client, "a", spec("t")).await;
    let b = submit_job(&mut client, "b", with(vec![after_ok(&a)])).await;
    let c = submit_job(&mut client, "c", with(vec![after_ok(&b)])).await;
    // D runs only if A fails: the same failure meets its condition.
    let d = submit_job(
        &mut client,
        "d",
        with(vec![after(
            DependencyCondition::AfterFailed,
            Target::JobId(a.clone()),
        )]),
    )
    .await;
    assert_eq!(
        get(&mut client, &c).await.waiting_reason,
        format!("waits for job {b} to succeed")
    );
    let a_routed = await_job(&mut client, &a, "a routed", routed).await;
    report_end(
        &mut link,
        "r1",
        lease,
        &a_routed,
        JobState::Failed,
        "task 0 exited 3",
    )
    .await;
    let c_failed = await_job(&mut client, &c, "c failed", failed).await;
    assert_eq!(
        c_failed.failure_reason,
        format!(
            "dependency {b} (after_ok) ended FAILED: dependency {a} (after_ok) ended FAILED: \
             task 0 exited 3"
        )
    );
    let b_failed = get(&mut client, &b).await;
    assert!(failed(&b_failed));
    assert!(
        b_failed.failure_reason.contains(&a),
        "{}",
        b_failed.failure_reason
    );
    assert_eq!(b_failed.region, "", "B was never routed");
    await_job(&mut client, &d, "d routed", routed).await;
    // A dependent submitted after its dependency failed fails at once.
    let late = submit_job(&mut client, "late", with(vec![after_ok(&a)])).await;
    let late = get(&mut client, &late).await;
    assert!(failed(&late));
    assert!(late.failure_reason.contains(&a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_dependency_fails_an_after_ok_dependent_and_meets_an_after_any_one() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    // No region: A stays pending, so its cancel ends it at once.
    let a = submit_job(&mut client, "a", spec("t")).await;
    let ok = submit_job(&mut client, "ok", with(vec![after_ok(&a)])).await;
    let any = submit_job(
        &mut client,
        "any",
        with(vec![after(
            DependencyCondition::AfterAny,
            Target::JobId(a.clone()),
        )]),
    )
    .await;
    client
        .cancel_job(CancelJobRequest {
            job_id: a.clone(),
            reason: "not needed".into(),
        })
        .await
        .unwrap();
    let ok = await_job(&mut client, &ok, "ok failed", failed).await;
    assert_eq!(
        ok.failure_reason,
        format!("dependency {a} (after_ok) ended CANCELLED")
    );
    // Met: it joins the router's queue, where it waits for a region.
    let any = await_job(&mut client, &any, "any unblocked", |j| {
        j.waiting_reason.starts_with("no ") || j.waiting_reason.contains("region")
    })
    .await;
    assert_eq!(any.state, JobState::Pending as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_submitted_in_one_batch_names_its_steps_by_request_id_and_runs_in_order() {
    let h = Harness::start(|_| {}).await;
    let mut link = h.link().await;
    let mut client = h.federation().await;
    let lease = register(&mut link, "r1").await;
    let by_request = |r: &str| after(DependencyCondition::AfterOk, Target::RequestId(r.into()));
    let out = client
        .submit_jobs(SubmitJobsRequest {
            items: vec![
                submit("step-a", spec("t")),
                submit("step-b", with(vec![by_request("step-a")])),
                submit("step-c", with(vec![by_request("step-b")])),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = out
        .results
        .iter()
        .map(|r| match &r.outcome {
            Some(Outcome::Accepted(a)) => a.job_id.clone(),
            other => panic!("refused: {other:?}"),
        })
        .collect();
    let (a, b, c) = (&ids[0], &ids[1], &ids[2]);
    // Request ids are resolved to job ids at submit.
    assert_eq!(get(&mut client, b).await.dependencies, vec![after_ok(a)]);
    assert_eq!(get(&mut client, c).await.dependencies, vec![after_ok(b)]);
    let a_routed = await_job(&mut client, a, "a routed", routed).await;
    report_end(&mut link, "r1", lease, &a_routed, JobState::Succeeded, "").await;
    let b_routed = await_job(&mut client, b, "b routed", routed).await;
    assert_eq!(get(&mut client, c).await.state, JobState::Pending as i32);
    report_end(&mut link, "r1", lease, &b_routed, JobState::Succeeded, "").await;
    await_job(&mut client, c, "c routed", routed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_dependencies_and_cycles_are_refused_at_submit_naming_the_field() {
    let h = Harness::start(|_| {}).await;
    let mut client = h.federation().await;
    let unknown = client
        .submit_job(submit(
            "u",
            with(vec![after_ok("j0000000001-000000000999")]),
        ))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(
        unknown
            .message()
            .starts_with("spec.dependencies[0].job_id: no job j0000000001-000000000999"),
        "{}",
        unknown.message()
    );
    // Another tenant's job is unknown to this one.
    let other = submit_job(&mut client, "other", spec("someone-else")).await;
    let foreign = client
        .submit_job(submit("f", with(vec![after_ok(&other)])))
        .await
        .unwrap_err();
    assert!(foreign.message().starts_with("spec.dependencies[0].job_id"));
    // A job naming its own request id: it does not exist before itself.
    let own = after(DependencyCondition::AfterOk, Target::RequestId("me".into()));
    let selfish = client
        .submit_job(submit("me", with(vec![own])))
        .await
        .unwrap_err();
    assert!(
        selfish
            .message()
            .starts_with("spec.dependencies[0].request_id"),
        "{}",
        selfish.message()
    );
    let by_request = |r: &str| after(DependencyCondition::AfterAny, Target::RequestId(r.into()));
    let out = client
        .submit_jobs(SubmitJobsRequest {
            items: vec![
                submit("x", with(vec![by_request("y")])),
                submit("y", with(vec![by_request("x")])),
                submit("z", spec("t")),
                submit("bad", with(vec![JobDependency::default()])),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let error = |i: usize| match &out.results[i].outcome {
        Some(Outcome::Error(e)) => e.clone(),
        other => panic!("item {i} not refused: {other:?}"),
    };
    for (i, cycle) in [(0, "x -> y -> x"), (1, "y -> x -> y")] {
        let e = error(i);
        assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
        assert_eq!(e.field, "spec.dependencies[0].request_id");
        assert!(e.message.contains(cycle), "{}", e.message);
    }
    assert!(matches!(out.results[2].outcome, Some(Outcome::Accepted(_))));
    assert_eq!(error(3).field, "spec.dependencies[0].condition");
    // Nothing was written for the refused items.
    let listed = client
        .list_jobs(ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(listed.len(), 2, "the other tenant's job and z");
    // The same over HTTP: 400 naming the field.
    let body = r#"{"request_id":"h","spec":{"name":"n","tenant":"t","task_count":1,
            "task":{"simulated":{"duration_ms":1}},
            "resources":{"cpu_millis":100,"memory_bytes":1024},
            "dependencies":[{"condition":"DEPENDENCY_CONDITION_AFTER_OK","job_id":"nope"}]}}"#;
    let (status, answer) = http(h.running.http_addr.unwrap(), "POST", "/v1/jobs", body).await;
    assert_eq!(status, 400, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["field"], "spec.dependencies[0].job_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_of_two_jobs_says_what_is_left_and_one_held_meanwhile_is_judged_at_release() {
    let h = Harness::start(|_| {}).await;
    let mut link = h.link().await;
    let mut client = h.federation().await;
    let lease = register(&mut link, "r1").await;
    let a = submit_job(&mut client, "a", spec("t")).await;
    let b = submit_job(&mut client, "b", spec("t")).await;
    let both = submit_job(&mut client, "both", with(vec![after_ok(&a), after_ok(&b)])).await;
    let held = submit_job(&mut client, "held", with(vec![after_ok(&a)])).await;
    assert_eq!(
        get(&mut client, &both).await.waiting_reason,
        format!("waits for job {a} to succeed, job {b} to succeed")
    );
    client
        .hold_job(HoldJobRequest {
            job_id: held.clone(),
            reason: String::new(),
        })
        .await
        .unwrap();
    let a_routed = await_job(&mut client, &a, "a routed", routed).await;
    report_end(&mut link, "r1", lease, &a_routed, JobState::Succeeded, "").await;
    let narrowed = await_job(&mut client, &both, "the reason narrowed", |j| {
        j.waiting_reason == format!("waits for job {b} to succeed")
    })
    .await;
    assert_eq!(narrowed.state, JobState::Pending as i32);
    // Held while its dependency ended: still held, and met once released.
    let still = get(&mut client, &held).await;
    assert!(still.held);
    assert_eq!(still.state, JobState::Pending as i32);
    client
        .release_job(ReleaseJobRequest {
            job_id: held.clone(),
        })
        .await
        .unwrap();
    await_job(&mut client, &held, "held routed after release", routed).await;
    let b_routed = await_job(&mut client, &b, "b routed", routed).await;
    report_end(&mut link, "r1", lease, &b_routed, JobState::Succeeded, "").await;
    await_job(&mut client, &both, "both routed", routed).await;
}
