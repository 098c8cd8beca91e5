//! The HTTP watch against the event log's retention, over a real socket on
//! a manual clock: a cursor whose events were trimmed is answered 410 Gone
//! with the JSON error body before any event, by `?cursor=` and by
//! `Last-Event-ID` alike, while a cursor at the trim point still resumes.

use crate::common;
use crate::sse;

use std::time::Duration;

use common::*;
use http::StatusCode;
use meridian_control::ManualClock;
use meridian_global::events::Trim;
use meridian_global::server::{Running, start_with};
use meridian_global::{GlobalConfig, GlobalError};
use sse::*;

const RETENTION: Duration = Duration::from_secs(60);

/// A leading replica with HTTP on, whose time is `clock`, keeping events
/// for `RETENTION`; leases long enough that moving the clock by minutes
/// costs nothing else.
async fn leader(clock: &ManualClock, dir: &tempfile::TempDir) -> Running {
    let url = format!("sqlite:{}", dir.path().join("global.db").display());
    let mut config = GlobalConfig::new(url.clone(), "127.0.0.1:0".parse().unwrap());
    config.http = Some("127.0.0.1:0".parse().unwrap());
    config.leader_lease = Duration::from_secs(3600);
    config.region_lease = Duration::from_secs(3600);
    config.controller_every = Duration::from_secs(3600);
    config.event_retention = RETENTION;
    let db = meridian_store::open(&url).await.unwrap();
    let running = start_with(config, db, clock.shared()).await.unwrap();
    guarded("leadership", running.wait_leader()).await;
    running
}

/// Awaits the job log's trim record reaching at least `through` (a store
/// watch on the record, no polling on time).
async fn trimmed_through(running: &Running, through: &[u8]) -> Trim {
    let key = running.keys.job_events_trim();
    guarded("the trim", async {
        loop {
            let key = key.clone();
            let (trim, changed) = running
                .db
                .run(|tx, _| {
                    let key = key.clone();
                    async move {
                        let trim = Trim::read(&tx, &key).await?;
                        Ok::<_, GlobalError>((trim, tx.watch(&key)?))
                    }
                })
                .await
                .unwrap();
            if let Some(trim) = trim
                && trim.through.as_slice() >= through
            {
                return trim;
            }
            changed.await.unwrap();
        }
    })
    .await
}

/// Decodes a cursor as the JSON API writes it (standard base64).
fn cursor_bytes(text: &str) -> Vec<u8> {
    let digit = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {text}"),
        }
    };
    let digits: Vec<u32> = text.bytes().filter(|&c| c != b'=').map(digit).collect();
    let mut out = Vec::new();
    for group in digits.chunks(4) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (d << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..group.len()]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_the_retained_history_is_answered_410_with_the_json_error_body() {
    let clock = ManualClock::new();
    let dir = tempfile::tempdir().unwrap();
    let running = leader(&clock, &dir).await;
    let addr = running.http_addr.unwrap();

    let mut all = watch(addr, "/v1/jobs/watch", None).await;
    let old = submit_http(addr, "old").await;
    let at_old = changes_until_created(&mut all, &old).await;
    let old_cursor = at_old.last().unwrap().id.clone().unwrap();
    let older = submit_http(addr, "older").await;
    let at_older = changes_until_created(&mut all, &older).await;
    let older_cursor = at_older.last().unwrap().id.clone().unwrap();

    // Both pass the retention; the trim takes them.
    clock.advance(RETENTION + Duration::from_secs(1));
    let young = submit_http(addr, "young").await;
    let trim = trimmed_through(&running, &cursor_bytes(&older_cursor)).await;
    assert!(trim.through.as_slice() >= cursor_bytes(&older_cursor).as_slice());

    let by_query = format!("/v1/jobs/watch?cursor={}", escape(&old_cursor));
    for (path, header) in [
        (by_query.as_str(), None),
        ("/v1/jobs/watch", Some(old_cursor.as_str())),
    ] {
        let (status, content_type, body) = get_json(addr, path, header).await;
        assert_eq!(status, StatusCode::GONE, "{path} {header:?}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        assert_eq!(body["code"], "OutOfRange", "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(body.get("field").is_some(), "{body}");
    }

    // The last trimmed position misses nothing after it: it still resumes,
    // at the young job.
    let through = escape(&base64(&trim.through));
    let mut resumed = watch(addr, &format!("/v1/jobs/watch?cursor={through}"), None).await;
    changes_until_created(&mut resumed, &young).await;
}

/// Encodes bytes as standard base64, as the JSON API writes a cursor.
fn base64(bytes: &[u8]) -> String {
    const DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= group.len() {
                out.push(DIGITS[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
