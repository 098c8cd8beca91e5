//! Per-tenant submit limits over a real gRPC server and a real HTTP
//! server: a tenant over its rate or its queued cap is answered
//! RESOURCE_EXHAUSTED (429) with a retry hint, while another tenant is
//! served.

use crate::access_support;
use crate::common;

use access_support::{Secured, http};
use common::spec;
use meridian_global::limits::TenantLimits;
use meridian_proto::RETRY_AFTER_MS_METADATA_KEY;
use tonic::Code;

fn retry_after_ms(status: &tonic::Status) -> u64 {
    status
        .metadata()
        .get(RETRY_AFTER_MS_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no retry hint on {status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_rate_is_told_when_to_retry_while_another_is_served() {
    let s = Secured::start(|c| {
        c.tenant_limits = TenantLimits {
            // A rate so slow that no token comes back during the test.
            submits_per_sec: 0.001,
            burst: 3,
            max_queued: 0,
        };
    })
    .await;
    let mut api = s.api(Some(&s.admin)).await;
    for i in 0..3 {
        api.submit_job(common::submit(&format!("a{i}"), spec("a")))
            .await
            .unwrap();
    }
    let refused = api
        .submit_job(common::submit("a3", spec("a")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("submit rate"), "{refused:?}");
    assert!(retry_after_ms(&refused) > 1000);
    api.submit_job(common::submit("b0", spec("b")))
        .await
        .unwrap();

    let body = r#"{"request_id":"h1","spec":{"name":"x","tenant":"a","task_count":1,"task":{"simulated":{"duration_ms":10}},"resources":{"cpu_millis":100,"memory_bytes":"1000"}}}"#;
    let answer = http(s.http_addr(), Some(&s.admin), "POST", "/v1/jobs", body).await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    let seconds: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!(seconds >= 1);
    assert!(answer.body.contains("ResourceExhausted"), "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_queued_cap_is_refused_while_another_is_served() {
    let s = Secured::start(|c| {
        c.tenant_limits = TenantLimits {
            submits_per_sec: 0.0,
            burst: 0,
            max_queued: 2,
        };
    })
    .await;
    let mut api = s.api(Some(&s.admin)).await;
    let first = api
        .submit_job(common::submit("a0", spec("a")))
        .await
        .unwrap()
        .into_inner();
    api.submit_job(common::submit("a1", spec("a")))
        .await
        .unwrap();
    // A repeat of an accepted submit is still answered: it queues nothing.
    let repeat = api.submit_job(common::submit("a0", spec("a"))).await;
    let refused = api
        .submit_job(common::submit("a2", spec("a")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("queued"), "{refused:?}");
    assert_eq!(
        retry_after_ms(&refused),
        meridian_global::limits::QUEUED_RETRY_MS
    );
    api.submit_job(common::submit("b0", spec("b")))
        .await
        .unwrap();
    // A finished job leaves the queue: the tenant may submit again.
    api.cancel_job(meridian_proto::v1::CancelJobRequest {
        job_id: first.job_id.clone(),
        reason: "make room".into(),
    })
    .await
    .unwrap();
    api.submit_job(common::submit("a2", spec("a")))
        .await
        .unwrap();
    // The repeat came back as the first job or as a refusal at the cap,
    // never as a new job.
    if let Ok(r) = repeat {
        assert_eq!(r.into_inner().job_id, first.job_id);
    }
}
