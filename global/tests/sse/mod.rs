//! Server-sent events over a real socket, for the tests of the HTTP watch
//! route: a client that reads events as they arrive, and helpers to open a
//! watch, read a JSON answer and submit over HTTP.
#![allow(dead_code)]

use std::net::SocketAddr;

use axum::body::{Body, BodyDataStream};
use futures::StreamExt;
use http::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::common::{guarded, http};

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Value,
}

impl SseEvent {
    pub fn kind(&self) -> &str {
        self.data["kind"].as_str().unwrap_or_default()
    }

    pub fn is_bookmark(&self) -> bool {
        self.kind() == "JOB_EVENT_KIND_BOOKMARK"
    }

    pub fn job_id(&self) -> &str {
        self.data["job"]["job_id"].as_str().unwrap_or_default()
    }
}

/// An open event stream, read as it arrives.
pub struct EventStream {
    body: BodyDataStream,
    buffer: String,
}

impl EventStream {
    /// The next event; fails the test if the stream ends first.
    pub async fn next(&mut self) -> SseEvent {
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
    pub async fn next_change(&mut self) -> SseEvent {
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
pub fn escape(value: &str) -> String {
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
pub async fn get(
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

pub async fn watch(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> EventStream {
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
pub async fn get_json(
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

pub async fn submit_http(addr: SocketAddr, request_id: &str) -> String {
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
pub async fn changes_until_created(stream: &mut EventStream, job: &str) -> Vec<SseEvent> {
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
