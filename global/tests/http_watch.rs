//! WatchJobs over HTTP as server-sent events, over real sockets: events
//! arrive with their cursor as `id:`, a resume by `?cursor=` or by
//! `Last-Event-ID` receives exactly the events after it, bookmarks come as
//! events, and a cursor the server never issued is refused with the JSON
//! error body before any event.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, BodyDataStream};
use common::*;
use futures::StreamExt;
use http::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: Value,
}

impl SseEvent {
    fn kind(&self) -> &str {
        self.data["kind"].as_str().unwrap_or_default()
    }

    fn is_bookmark(&self) -> bool {
        self.kind() == "JOB_EVENT_KIND_BOOKMARK"
    }

    fn job_id(&self) -> &str {
        self.data["job"]["job_id"].as_str().unwrap_or_default()
    }
}

/// An open event stream, read as it arrives.
struct EventStream {
    body: BodyDataStream,
    buffer: String,
}

impl EventStream {
    /// The next event; fails the test if the stream ends first.
    async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse(&block) {
                    return event;
                }
                continue;
            }
            let chunk = guarded("an event", self.body.next())
                .await
                .expect("the stream ended")
                .expect("the stream failed");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event that is not a bookmark.
    async fn next_change(&mut self) -> SseEvent {
        loop {
            let event = self.next().await;
            if !event.is_bookmark() {
                return event;
            }
        }
    }
}

fn parse(block: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data) = (None, None, Vec::new());
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "id" => id = Some(value),
            "event" => event = Some(value),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    let data = serde_json::from_str(&data.join("\n")).unwrap();
    Some(SseEvent { id, event, data })
}

/// Percent-encodes a query value (a cursor's base64 has `+`, `/`, `=`).
fn escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A GET of `path` with an optional `Last-Event-ID`, over a fresh
/// connection: (status, content type, body stream).
async fn get(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<&str>,
) -> (StatusCode, String, BodyDataStream) {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::get(format!("http://{addr}{path}"));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = guarded(
        "the answer's head",
        client.request(request.body(Body::empty()).unwrap()),
    )
    .await
    .unwrap();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        response.status(),
        content_type,
        Body::new(response.into_body()).into_data_stream(),
    )
}

async fn watch(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> EventStream {
    let (status, content_type, body) = get(addr, path, last_event_id).await;
    assert_eq!(status, StatusCode::OK, "{path}");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    EventStream {
        body,
        buffer: String::new(),
    }
}

/// A whole non-streamed answer: (status, content type, JSON body).
async fn get_json(
    addr: SocketAddr,
    path: &str,
    last_event_id: Option<&str>,
) -> (StatusCode, String, Value) {
    let (status, content_type, mut body) = get(addr, path, last_event_id).await;
    let mut raw = Vec::new();
    while let Some(chunk) = guarded("the body", body.next()).await {
        raw.extend_from_slice(&chunk.unwrap());
    }
    (status, content_type, serde_json::from_slice(&raw).unwrap())
}

async fn submit_http(addr: SocketAddr, request_id: &str) -> String {
    let body = format!(
        r#"{{"request_id":"{request_id}","spec":{{"name":"n","tenant":"t","task_count":1,"task":{{"simulated":{{"duration_ms":5}}}},"resources":{{"cpu_millis":100,"memory_bytes":1}}}}}}"#
    );
    let (status, body) = http(addr, "POST", "/v1/jobs", &body).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Reads `stream` until the CREATED event of `job`, returning every change
/// event read (bookmarks left out), that one included.
async fn changes_until_created(stream: &mut EventStream, job: &str) -> Vec<SseEvent> {
    let mut seen = Vec::new();
    loop {
        let event = stream.next_change().await;
        let done = event.job_id() == job && event.kind() == "JOB_EVENT_KIND_CREATED";
        seen.push(event);
        if done {
            return seen;
        }
    }
}

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
