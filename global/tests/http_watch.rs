//! WatchJobs over HTTP as server-sent events, over real sockets: events
//! arrive with their cursor as `id:`, a resume by `?cursor=` or by
//! `Last-Event-ID` receives exactly the events after it, bookmarks come as
//! events, and a cursor the server never issued is refused with the JSON
//! error body before any event.

use crate::common;
use crate::sse;

use std::time::Duration;

use common::*;
use http::StatusCode;
use sse::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_by_cursor_or_last_event_id_receives_exactly_the_missed_events() {
    let h = Harness::start(|_| {}).await;
    let addr = h.running.http_addr.unwrap();
    // Sees everything from before the first submit: the reference for what
    // each resumed watch must receive.
    let mut reference = watch(addr, "/v1/jobs/watch", None).await;
    let mut first = watch(addr, "/v1/jobs/watch", None).await;

    let a = submit_http(addr, "sse-a").await;
    let from_first = changes_until_created(&mut first, &a).await;
    let at_a = from_first.last().unwrap().clone();
    let cursor_a = at_a.id.clone().expect("an event has an id");
    assert_eq!(
        at_a.data["cursor"].as_str(),
        Some(cursor_a.as_str()),
        "the id is the event's cursor as the JSON API writes it"
    );
    // The client goes away; what happens next it misses.
    drop(first);
    let b = submit_http(addr, "sse-b").await;
    let c = submit_http(addr, "sse-c").await;
    let mut all = changes_until_created(&mut reference, &c).await;
    let last = submit_http(addr, "sse-last").await;
    all.extend(changes_until_created(&mut reference, &last).await);
    let position = all
        .iter()
        .position(|e| e.id.as_deref() == Some(cursor_a.as_str()))
        .expect("the reference saw event a");
    let missed = all[position + 1..].to_vec();
    let missed_jobs: Vec<&str> = missed
        .iter()
        .filter(|e| e.kind() == "JOB_EVENT_KIND_CREATED")
        .map(SseEvent::job_id)
        .collect();
    assert_eq!(missed_jobs, vec![b.as_str(), c.as_str(), last.as_str()]);
    for event in &all {
        assert_eq!(event.id.as_deref(), event.data["cursor"].as_str());
        assert_eq!(event.event, None, "job events are plain messages");
    }

    let by_query = format!("/v1/jobs/watch?cursor={}", escape(&cursor_a));
    let mut resumed = watch(addr, &by_query, None).await;
    assert_eq!(
        changes_until_created(&mut resumed, &last).await,
        missed,
        "resumed by ?cursor= right after a, without a re-list"
    );

    // An EventSource reconnects to the URL it opened, with the id of the
    // last event it got in Last-Event-ID: the header wins over the URL.
    let cursor_c = all
        .iter()
        .find(|e| e.job_id() == c)
        .and_then(|e| e.id.clone())
        .unwrap();
    let stale_url = format!("/v1/jobs/watch?cursor={}", escape(&cursor_c));
    let mut reconnected = watch(addr, &stale_url, Some(&cursor_a)).await;
    assert_eq!(
        changes_until_created(&mut reconnected, &last).await,
        missed,
        "resumed by Last-Event-ID right after a"
    );

    // Filters come from the query string, as the gRPC request's fields.
    let only_b = format!("/v1/jobs/watch?cursor={}&job_id={b}", escape(&cursor_a));
    let mut filtered = watch(addr, &only_b, None).await;
    let event = filtered.next_change().await;
    assert_eq!(
        (event.job_id(), event.kind()),
        (b.as_str(), "JOB_EVENT_KIND_CREATED")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_over_http_receives_bookmarks_as_events_whose_id_resumes_it() {
    let h = Harness::start(|c| c.bookmark_every = Duration::from_millis(200)).await;
    let addr = h.running.http_addr.unwrap();
    submit_http(addr, "before").await;
    let mut quiet = watch(addr, "/v1/jobs/watch?tenant=nobody", None).await;
    let bookmark = quiet.next().await;
    assert!(bookmark.is_bookmark(), "{bookmark:?}");
    let id = bookmark
        .id
        .clone()
        .expect("a bookmark past an event has an id");
    assert_eq!(bookmark.data["cursor"].as_str(), Some(id.as_str()));

    let mut resumed = watch(addr, "/v1/jobs/watch", Some(&id)).await;
    let job = submit_http(addr, "after").await;
    let event = resumed.next_change().await;
    assert_eq!(
        (event.job_id(), event.kind()),
        (job.as_str(), "JOB_EVENT_KIND_CREATED"),
        "a resume from a bookmark starts after what it had scanned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_unreadable_cursor_is_refused_with_400_json_before_any_event() {
    let h = Harness::start(|_| {}).await;
    let addr = h.running.http_addr.unwrap();
    submit_http(addr, "one").await;
    // Twelve zero bytes: the shape of a cursor, never issued.
    let forged = "AAAAAAAAAAAAAAAA";
    let cases = [
        (format!("/v1/jobs/watch?cursor={forged}"), None),
        ("/v1/jobs/watch?cursor=not-base64!".to_string(), None),
        ("/v1/jobs/watch?cursor=AQID".to_string(), None),
        ("/v1/jobs/watch".to_string(), Some(forged)),
    ];
    for (path, header) in cases {
        let (status, content_type, body) = get_json(addr, &path, header).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {header:?}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        assert_eq!(body["code"], "InvalidArgument", "{body}");
        assert_eq!(body["field"], "cursor", "{path} {header:?}: {body}");
    }
    let (status, _, body) = get_json(addr, "/v1/jobs/watch?colour=blue", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "colour", "{body}");
}
