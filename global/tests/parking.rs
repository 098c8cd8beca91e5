//! Per-key error isolation of the leader's controller, over real gRPC: a
//! pending job whose stored record cannot be decoded is parked and counted,
//! and the jobs behind it are routed as if it were not there. One test per
//! binary: it reads the process's `/metrics`.

use crate::common;

use common::{Harness, assignments, guarded, http, register, spec, submit};
use futures::StreamExt;
use meridian_proto::v1::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_job_whose_record_cannot_be_decoded_is_parked_and_counted_while_others_are_routed()
 {
    let h = Harness::start(|_| {}).await;
    let mut link = h.link().await;
    let lease = register(&mut link, "region-a").await;
    let mut stream = assignments(&mut link, "region-a", lease).await;

    // A pending job whose record is garbage, ahead of every real id in the
    // pending index ("j-" sorts before "j0").
    let keys = h.running.keys.clone();
    h.running
        .db
        .run(|tx, _| {
            let keys = keys.clone();
            async move {
                tx.set(&keys.job("j-broken"), b"\xff\xff\xff not a job")?;
                tx.set(&keys.pending("j-broken"), b"")?;
                Ok::<_, meridian_store::StoreError>(())
            }
        })
        .await
        .expect("write the broken record");

    let good = h
        .federation()
        .await
        .submit_job(submit("good", spec("acme")))
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    let routed = loop {
        let event = guarded("the good job's ASSIGN", stream.next())
            .await
            .expect("stream open")
            .expect("event");
        if event.kind == AssignmentEventKind::Assign as i32 {
            break event;
        }
    };
    assert_eq!(routed.job_id, good);

    let (status, metrics) = http(h.running.http_addr.expect("http"), "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    assert!(value("meridian_global_jobs_parked_total ") >= 1.0);
    assert_eq!(value("meridian_global_jobs_parked "), 1.0);

    // Parked, not dropped: the job is still in the pending index.
    let keys = h.running.keys.clone();
    let still_pending = h
        .running
        .db
        .run(|tx, _| {
            let keys = keys.clone();
            async move { tx.get(&keys.pending("j-broken")).await }
        })
        .await
        .expect("read");
    assert!(still_pending.is_some());
}
