//! The global tier's trace ids and metrics, in process: a submit's
//! `traceparent` reaches the region's ASSIGN event; a region write under a
//! superseded lease, and an item under a superseded assignment epoch, are
//! each counted as a fencing rejection on `/metrics`. One test per binary:
//! the Prometheus recorder is the process's.

use crate::common;

use common::{Harness, assignments, guarded, http, register, spec, submit};
use futures::StreamExt;
use meridian_proto::v1::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assign_event_carries_the_submit_trace_and_stale_lease_and_epoch_writes_are_counted() {
    let h = Harness::start(|_| {}).await;
    let mut link = h.link().await;
    let lease = register(&mut link, "region-a").await;
    let mut stream = assignments(&mut link, "region-a", lease).await;
    let mut request = tonic::Request::new(submit("traced", spec("acme")));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE}-b7ad6b7169203331-01")
            .parse()
            .expect("ascii"),
    );
    let job_id = h
        .federation()
        .await
        .submit_job(request)
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    let assign = guarded("the ASSIGN event", async {
        loop {
            let event = stream.next().await.expect("stream open").expect("event");
            if event.kind == AssignmentEventKind::Assign as i32 {
                return event;
            }
        }
    })
    .await;
    assert_eq!(assign.job_id, job_id);
    assert_eq!(assign.trace_id, TRACE);

    // A write under a lease epoch that is not the region's current one.
    let stale = link
        .ack_assignments(AckAssignmentsRequest {
            region: "region-a".into(),
            region_lease_epoch: lease + 1,
            acks: vec![JobEpoch {
                job_id: job_id.clone(),
                assignment_epoch: assign.assignment_epoch,
            }],
        })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(stale.verdict, Verdict::StaleEpoch as i32);

    // Under the current lease, an item naming an epoch older than the job's
    // assignment epoch.
    assert!(assign.assignment_epoch >= 1);
    let old_item = link
        .ack_assignments(AckAssignmentsRequest {
            region: "region-a".into(),
            region_lease_epoch: lease,
            acks: vec![JobEpoch {
                job_id: job_id.clone(),
                assignment_epoch: assign.assignment_epoch - 1,
            }],
        })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(old_item.verdict, Verdict::Accepted as i32);
    assert_eq!(old_item.results.len(), 1);
    assert_eq!(old_item.results[0].verdict, Verdict::StaleEpoch as i32);

    let addr = h.running.http_addr.expect("HTTP is on");
    let (status, body) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let value = |series: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    assert_eq!(
        value("meridian_global_fencing_rejections_total{epoch=\"region_lease\"} "),
        1.0
    );
    assert_eq!(
        value("meridian_global_fencing_rejections_total{epoch=\"assignment\"} "),
        1.0
    );
    assert_eq!(
        value("meridian_global_submits_total{outcome=\"created\"} "),
        1.0
    );
}
