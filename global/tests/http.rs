//! The HTTP listener's guards over real sockets on loopback: every refusal
//! carries the JSON error body, a body that is not JSON is a 415, and a
//! client slow with its body or its headers is cut off after a timeout while
//! other connections are served.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer read off a raw connection.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not a JSON body ({e}): {}\n{}", self.head, self.body))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Reads a connection to its end and splits the answer.
async fn read_answer(conn: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(text.starts_with("HTTP/1.1 "), "no answer: {text:?}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Answer {
        status: text[9..12].parse().unwrap(),
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` on a fresh connection and reads the whole answer.
async fn exchange(addr: SocketAddr, head: &str, body: &str) -> Answer {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{head}\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    guarded("the answer", read_answer(&mut conn)).await
}

/// Asserts the JSON error body `{code, message, field}`.
fn assert_json_error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{}\n{}", answer.head, answer.body);
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "JSON content type: {}",
        answer.head
    );
    let err = answer.json();
    assert_eq!(err["code"], code, "{}", answer.body);
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message: {}",
        answer.body
    );
    assert!(err.get("field").is_some(), "a field key: {}", answer.body);
}

const GOOD: &str = r#"{"request_id":"h1","spec":{"name":"n","tenant":"t","task_count":1,"task":{"simulated":{"duration_ms":5}},"resources":{"cpu_millis":100,"memory_bytes":1}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_answer_a_json_error() {
    let h = Harness::start(|_| {}).await;
    let addr = h.running.http_addr.unwrap();

    let unknown = exchange(addr, "GET /v1/nothing-here HTTP/1.1", "").await;
    assert_json_error(&unknown, 404, "NotFound");

    let wrong = exchange(addr, "DELETE /v1/jobs HTTP/1.1", "").await;
    assert_json_error(&wrong, 405, "Unimplemented");
    let allow = wrong.header("allow").unwrap_or_default();
    assert!(
        allow.contains("POST") && allow.contains("GET"),
        "{}",
        wrong.head
    );

    let long = format!("GET /v1/jobs/{} HTTP/1.1", "x".repeat(9000));
    let too_long = exchange(addr, &long, "").await;
    assert_json_error(&too_long, 414, "InvalidArgument");

    // A refusal the API itself answers keeps its own JSON body.
    let missing = exchange(addr, "GET /v1/jobs/no-such-job HTTP/1.1", "").await;
    assert_json_error(&missing, 404, "NotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_refused_with_415() {
    let h = Harness::start(|_| {}).await;
    let addr = h.running.http_addr.unwrap();

    let text = exchange(
        addr,
        "POST /v1/jobs HTTP/1.1\r\nContent-Type: text/plain",
        GOOD,
    )
    .await;
    assert_json_error(&text, 415, "InvalidArgument");
    let untyped = exchange(addr, "POST /v1/jobs HTTP/1.1", GOOD).await;
    assert_json_error(&untyped, 415, "InvalidArgument");
    let form = exchange(
        addr,
        "POST /v1/jobs HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded",
        GOOD,
    )
    .await;
    assert_json_error(&form, 415, "InvalidArgument");
    assert_eq!(
        h.stored_keys().await,
        Vec::<Vec<u8>>::new(),
        "nothing was written"
    );

    let with_charset = exchange(
        addr,
        "POST /v1/jobs HTTP/1.1\r\nContent-Type: Application/JSON; charset=utf-8",
        GOOD,
    )
    .await;
    assert_eq!(with_charset.status, 200, "{}", with_charset.body);
    assert!(with_charset.json()["job_id"].is_string());

    // No body, no Content-Type needed.
    let list = exchange(addr, "GET /v1/jobs?tenant=t HTTP/1.1", "").await;
    assert_eq!(list.status, 200, "{}", list.body);
    let undrain = exchange(addr, "POST /v1/regions/r1/undrain HTTP/1.1", "").await;
    assert_ne!(undrain.status, 415, "{}", undrain.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http_body_is_cut_off_after_the_timeout_while_other_requests_are_served() {
    let timeout = Duration::from_millis(500);
    let h = Harness::start(|c| c.http_body_timeout = timeout).await;
    let addr = h.running.http_addr.unwrap();

    // Headers promise 100 bytes; 10 come, then the client waits.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let sent = Instant::now();
    slow.write_all(
        b"POST /v1/jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"request_\"",
    )
    .await
    .unwrap();
    let slow_answer = tokio::spawn(async move {
        let answer = read_answer(&mut slow).await;
        (answer, Instant::now())
    });

    // A read with a body of its own, so it passes the same body guard.
    let other = exchange(
        addr,
        "POST /v1/jobs/list HTTP/1.1\r\nContent-Type: application/json",
        r#"{"tenant":"t"}"#,
    )
    .await;
    let other_answered = Instant::now();
    assert_eq!(other.status, 200, "{}", other.body);

    let (answer, cut_off) = guarded("the slow body's answer", slow_answer)
        .await
        .unwrap();
    assert_json_error(&answer, 408, "DeadlineExceeded");
    assert_eq!(
        answer.header("connection").as_deref(),
        Some("close"),
        "{}",
        answer.head
    );
    assert!(
        cut_off.duration_since(sent) >= timeout,
        "cut off only after the timeout, not after {:?}",
        cut_off.duration_since(sent)
    );
    assert!(
        other_answered < cut_off,
        "the other request was answered while the slow body was pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected_after_the_timeout() {
    let timeout = Duration::from_millis(500);
    let h = Harness::start(|c| c.http_header_timeout = timeout).await;
    let addr = h.running.http_addr.unwrap();

    let mut slow = TcpStream::connect(addr).await.unwrap();
    let sent = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    let closed = tokio::spawn(async move {
        let mut raw = Vec::new();
        // A reset counts as a disconnect as much as an orderly close.
        let _ = slow.read_to_end(&mut raw).await;
        (raw, Instant::now())
    });

    let other = exchange(addr, "GET /healthz HTTP/1.1", "").await;
    let other_answered = Instant::now();
    assert_eq!(other.status, 200, "{}", other.body);

    let (raw, closed_at) = guarded("the slow client's disconnect", closed)
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&raw).contains("200 OK"),
        "the unfinished request was not served: {raw:?}"
    );
    assert!(
        closed_at.duration_since(sent) >= timeout,
        "disconnected only after the timeout, not after {:?}",
        closed_at.duration_since(sent)
    );
    assert!(
        other_answered < closed_at,
        "the other request was answered while the slow headers were pending"
    );
}
