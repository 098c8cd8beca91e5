//! The audit log over a real gRPC server: every mutating call is listed by
//! ListAuditRecords with its principal, target and outcome; a refused call
//! is recorded too; filters and pages narrow the list.

use crate::access_support;
use crate::common;

use access_support::{Api, Secured};
use common::spec;
use meridian_proto::v1::*;

/// Every record `request` matches, page after page, in the order listed.
async fn every_page(admin: &mut Api, mut request: ListAuditRecordsRequest) -> Vec<AuditRecord> {
    let mut records = Vec::new();
    loop {
        let page = admin
            .list_audit_records(request.clone())
            .await
            .unwrap()
            .into_inner();
        records.extend(page.records);
        if page.next_page_token.is_empty() {
            return records;
        }
        request.page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_call_and_a_refusal_are_in_the_audit_log() {
    let s = Secured::start(|_| {}).await;
    let (submitter, sub_info) = s.token("sub-a", Role::Submitter, &["a"]).await;
    let (viewer, viewer_info) = s.token("view-a", Role::Viewer, &["a"]).await;
    let mut api = s.api(Some(&submitter)).await;
    let job = api
        .submit_job(common::submit("r1", spec("a")))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let batch = api
        .submit_jobs(SubmitJobsRequest {
            items: vec![common::submit("r2", spec("a"))],
        })
        .await
        .unwrap()
        .into_inner();
    let Some(submit_job_result::Outcome::Accepted(batched)) = &batch.results[0].outcome else {
        panic!("{batch:?}");
    };
    let reason = "audit".to_string();
    api.hold_job(HoldJobRequest {
        job_id: job.clone(),
        reason: reason.clone(),
    })
    .await
    .unwrap();
    api.set_job_priority(SetJobPriorityRequest {
        job_id: job.clone(),
        priority: 7,
    })
    .await
    .unwrap();
    api.release_job(ReleaseJobRequest {
        job_id: job.clone(),
    })
    .await
    .unwrap();
    api.cancel_job(CancelJobRequest {
        job_id: job.clone(),
        reason,
    })
    .await
    .unwrap();
    let mut sched = spec("a");
    sched.tenant.clear();
    api.create_schedule(CreateScheduleRequest {
        schedule_id: "nightly".into(),
        spec: Some(ScheduleSpec {
            tenant: "a".into(),
            cron: "0 0 * * *".into(),
            job: Some(sched),
            ..ScheduleSpec::default()
        }),
        paused: false,
    })
    .await
    .unwrap();
    for call in ["pause", "resume", "delete"] {
        let schedule_id = "nightly".to_string();
        match call {
            "pause" => api
                .pause_schedule(PauseScheduleRequest { schedule_id })
                .await
                .map(|_| ()),
            "resume" => api
                .resume_schedule(ResumeScheduleRequest { schedule_id })
                .await
                .map(|_| ()),
            _ => api
                .delete_schedule(DeleteScheduleRequest { schedule_id })
                .await
                .map(|_| ()),
        }
        .unwrap();
    }
    let mut admin = s.api(Some(&s.admin)).await;
    // Region and node calls: no region r1 is known, so they fail after the
    // access check; their outcome is recorded as it is.
    let drained = admin
        .drain_region(DrainRegionRequest {
            region: "r1".into(),
            ..DrainRegionRequest::default()
        })
        .await
        .unwrap_err();
    admin
        .undrain_region(UndrainRegionRequest {
            region: "r1".into(),
        })
        .await
        .unwrap_err();
    for call in ["cordon", "uncordon", "drain"] {
        let (region, node_id) = ("r1".to_string(), "n1".to_string());
        let r = match call {
            "cordon" => admin
                .cordon_node(CordonNodeRequest {
                    region,
                    node_id,
                    reason: String::new(),
                })
                .await
                .map(|_| ()),
            "uncordon" => admin
                .uncordon_node(UncordonNodeRequest { region, node_id })
                .await
                .map(|_| ()),
            _ => admin
                .drain_node(DrainNodeRequest {
                    region,
                    node_id,
                    ..DrainNodeRequest::default()
                })
                .await
                .map(|_| ()),
        };
        assert!(r.is_err());
    }
    admin
        .revoke_token(RevokeTokenRequest {
            token_id: viewer_info.token_id.clone(),
        })
        .await
        .unwrap();
    // A refusal: a viewer may not cancel (its token revoked above, so use a
    // fresh one).
    let (viewer2, viewer2_info) = s.token("view-b", Role::Viewer, &["a"]).await;
    let _ = viewer;
    let refused = s
        .api(Some(&viewer2))
        .await
        .cancel_job(CancelJobRequest {
            job_id: batched.job_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    let records = admin
        .list_audit_records(ListAuditRecordsRequest {
            limit: 1000,
            ..ListAuditRecordsRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let has = |action: &str, principal: &str, target: &str, outcome: &str| {
        records.iter().any(|r| {
            r.action == action
                && r.principal == principal
                && r.target == target
                && r.outcome == outcome
        })
    };
    let sub = sub_info.token_id.as_str();
    let admin_id = meridian_global::auth::tokens::id_of(&s.admin).unwrap();
    let expected = [
        ("SubmitJob", sub, job.as_str(), "OK"),
        ("SubmitJobs", sub, batched.job_id.as_str(), "OK"),
        ("HoldJob", sub, job.as_str(), "OK"),
        ("SetJobPriority", sub, job.as_str(), "OK"),
        ("ReleaseJob", sub, job.as_str(), "OK"),
        ("CancelJob", sub, job.as_str(), "OK"),
        ("CreateSchedule", sub, "nightly", "OK"),
        ("PauseSchedule", sub, "nightly", "OK"),
        ("ResumeSchedule", sub, "nightly", "OK"),
        ("DeleteSchedule", sub, "nightly", "OK"),
        ("DrainRegion", admin_id, "r1", "NOT_FOUND"),
        ("UndrainRegion", admin_id, "r1", "NOT_FOUND"),
        ("CordonNode", admin_id, "r1/n1", "NOT_FOUND"),
        ("UncordonNode", admin_id, "r1/n1", "NOT_FOUND"),
        ("DrainNode", admin_id, "r1/n1", "NOT_FOUND"),
        ("CreateToken", admin_id, sub, "OK"),
        ("RevokeToken", admin_id, viewer_info.token_id.as_str(), "OK"),
        (
            "CancelJob",
            viewer2_info.token_id.as_str(),
            "",
            "PERMISSION_DENIED",
        ),
    ];
    assert_eq!(drained.code(), tonic::Code::NotFound, "{drained:?}");
    let missing: Vec<_> = expected
        .iter()
        .filter(|(a, p, t, o)| !has(a, p, t, o))
        .collect();
    assert!(missing.is_empty(), "missing {missing:?} in {records:#?}");
    for r in &records {
        assert!(!r.detail.contains(&submitter), "a secret in {r:?}");
    }

    // Filters, and pages that follow each other.
    let cancels = admin
        .list_audit_records(ListAuditRecordsRequest {
            action: "CancelJob".into(),
            principal: sub.into(),
            ..ListAuditRecordsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancels.records.len(), 1);
    assert_eq!(cancels.records[0].target, job);
    let seen: Vec<_> = every_page(
        &mut admin,
        ListAuditRecordsRequest {
            limit: 5,
            ..ListAuditRecordsRequest::default()
        },
    )
    .await
    .into_iter()
    .map(|r| r.record_id)
    .collect();
    let all: Vec<_> = records.iter().map(|r| r.record_id.clone()).collect();
    assert_eq!(seen, all);
}

/// The items of one batched call are recorded together (a transaction per
/// group of records, not one after another), and each still has its own
/// record: the accepted ones with their job, a refused one with its
/// refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_of_a_batched_submit_has_its_own_record_accepted_or_refused() {
    let s = Secured::start(|_| {}).await;
    let (submitter, sub_info) = s.token("sub-a", Role::Submitter, &["a"]).await;
    let mut api = s.api(Some(&submitter)).await;
    let mut items: Vec<SubmitJobRequest> = (0..600)
        .map(|i| common::submit(&format!("batch-{i}"), spec("a")))
        .collect();
    items.push(common::submit("other-tenant", spec("b")));
    let results = api
        .submit_jobs(SubmitJobsRequest { items })
        .await
        .unwrap()
        .into_inner()
        .results;
    let mut accepted = Vec::new();
    for result in &results[..600] {
        let Some(submit_job_result::Outcome::Accepted(a)) = &result.outcome else {
            panic!("{result:?}");
        };
        accepted.push(a.job_id.clone());
    }
    assert!(
        matches!(
            &results[600].outcome,
            Some(submit_job_result::Outcome::Error(e)) if e.code == tonic::Code::PermissionDenied as i32
        ),
        "{:?}",
        results[600]
    );

    let mut admin = s.api(Some(&s.admin)).await;
    let records = every_page(
        &mut admin,
        ListAuditRecordsRequest {
            action: "SubmitJobs".into(),
            limit: 1000,
            ..ListAuditRecordsRequest::default()
        },
    )
    .await;
    let sub = sub_info.token_id.as_str();
    let ok: std::collections::BTreeSet<&str> = records
        .iter()
        .filter(|r| r.principal == sub && r.outcome == "OK")
        .map(|r| r.target.as_str())
        .collect();
    let expected: std::collections::BTreeSet<&str> = accepted.iter().map(String::as_str).collect();
    assert_eq!(ok, expected, "one OK record per accepted job");
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r.outcome == "PERMISSION_DENIED")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].target, "b/other-tenant");
    assert_eq!(records.len(), 601, "no other record of the call");
}
