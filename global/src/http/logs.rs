//! FollowTaskLogs over HTTP, as server-sent events.
//!
//! Owns reading the follow request (path, query string, and the
//! `Last-Event-ID` an `EventSource` sends when it reconnects) and writing
//! the stream: each `TaskLogChunk` is one event whose `data:` is the chunk
//! as JSON (bytes in base64) and whose `id:` is the position after it,
//! `ATTEMPT.STDOUT_OFFSET.STDERR_OFFSET`, so a reconnection resumes where
//! the client was; the attempt's end is an `end` event. The stream is the
//! one the gRPC service returns (`FederationService::follow_logs`): this
//! module must never buffer, filter or invent a chunk.

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use meridian_proto::v1::{FollowTaskLogsRequest, LogStream, TaskLogChunk};
use serde_json::{Value, json};
use tonic::Status;

use super::AppState;
use super::errors::{ApiError, ErrorBody, fail};
use super::query::QueryMessage;
use super::watch::LAST_EVENT_ID;
use crate::error::GlobalError;
use crate::json;
use crate::openapi::proto;

/// FollowTaskLogs.
#[utoipa::path(
    get,
    path = "/v1/jobs/{job_id}/tasks/{index}/logs/follow",
    tag = "jobs",
    operation_id = "FollowTaskLogs",
    params(
        ("job_id" = String, Path, description = "The job"),
        ("index" = u32, Path, description = "Index of the task within its job"),
        ("attempt" = Option<u32>, Query, description = "Attempt to follow; 0 or absent: \
            the latest, then each next attempt until the task ends"),
        ("tail_bytes" = Option<u32>, Query, description = "Trailing bytes of each stream to \
            start with (0 or absent: 4096, at most 65536)"),
        ("stdout_offset" = Option<u64>, Query, description = "Resume standard output at \
            this byte offset instead of the tail"),
        ("stderr_offset" = Option<u64>, Query, description = "Resume standard error at \
            this byte offset"),
        ("offsets_attempt" = Option<u32>, Query, description = "The attempt the offsets \
            belong to"),
        ("Last-Event-ID" = Option<String>, Header, description = "`ATTEMPT.STDOUT.STDERR`, \
            the `id:` of the last event received; wins over the offsets of the query (an \
            EventSource sends it when it reconnects)"),
    ),
    responses(
        (status = 200, description = "Server-sent events: each `data:` is a `TaskLogChunk` \
            as JSON (`data` in base64) and its `id:` the position after it; the end of an \
            attempt is an `end` event; an `error` event with the error body ends the stream",
            content_type = "text/event-stream", body = proto::TaskLogChunk),
        (status = 400, description = "A field is invalid (named in `field`)", body = ErrorBody),
        (status = 404, description = "No such job, task or attempt", body = ErrorBody),
        (status = 412, description = "The task is not routed to a region yet, or its node \
            serves no live output", body = ErrorBody),
        (status = 503, description = "The task's region cannot be reached", body = ErrorBody),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn follow(
    State(s): State<AppState>,
    Path((job_id, index)): Path<(String, String)>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let index = index
        .parse::<u32>()
        .map_or(Value::String(index), Value::from);
    let resume = match headers.get(LAST_EVENT_ID).map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) if text.trim().is_empty() => None,
        Some(Ok(text)) => match position(text.trim()) {
            Some(p) => Some(p),
            None => {
                let e = GlobalError::invalid(
                    "Last-Event-ID",
                    "must be ATTEMPT.STDOUT_OFFSET.STDERR_OFFSET as sent in an event's id",
                );
                return fail(&s, e).await.into_response();
            }
        },
        Some(Err(_)) => {
            let e = GlobalError::invalid("Last-Event-ID", "must be ASCII");
            return fail(&s, e).await.into_response();
        }
    };
    let req = QueryMessage::read("FollowTaskLogsRequest", pairs, &[]).and_then(|mut m| {
        m.set("task", json!({ "job_id": job_id, "index": index }));
        m.into_message::<FollowTaskLogsRequest>()
    });
    let mut req = match req {
        Ok(req) => req,
        Err(e) => return fail(&s, e).await.into_response(),
    };
    if let Some((attempt, out, err)) = resume {
        req.offsets_attempt = attempt;
        req.stdout_offset = Some(out);
        req.stderr_offset = Some(err);
    }
    let start = (
        req.offsets_attempt,
        req.stdout_offset.unwrap_or(0),
        req.stderr_offset.unwrap_or(0),
    );
    match s.api.follow_logs(req).await {
        Ok(stream) => Sse::new(events(stream, start)).into_response(),
        Err(status) => ApiError::from(status).into_response(),
    }
}

/// `ATTEMPT.STDOUT.STDERR` read back.
fn position(text: &str) -> Option<(u32, u64, u64)> {
    let mut parts = text.split('.');
    let attempt = parts.next()?.parse().ok()?;
    let out = parts.next()?.parse().ok()?;
    let err = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((attempt, out, err))
}

/// The chunks as events, each with the position after it.
fn events(
    stream: impl Stream<Item = Result<TaskLogChunk, Status>>,
    start: (u32, u64, u64),
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream.scan(start, |at, item| {
        let event = match item {
            Ok(chunk) => {
                if chunk.attempt != at.0 {
                    *at = (chunk.attempt, 0, 0);
                }
                let next = chunk.offset + chunk.data.len() as u64;
                match LogStream::try_from(chunk.stream) {
                    Ok(LogStream::Stdout) => at.1 = next,
                    Ok(LogStream::Stderr) => at.2 = next,
                    _ => {}
                }
                chunk_event(&chunk, *at)
            }
            Err(status) => error_event(&ApiError::from(status).body()),
        };
        std::future::ready(Some(Ok(event)))
    })
}

fn chunk_event(chunk: &TaskLogChunk, at: (u32, u64, u64)) -> Event {
    let value = match json::render("TaskLogChunk", chunk) {
        Ok(v) => v,
        Err(e) => return error_event(&ApiError::from(e).body()),
    };
    let event = Event::default()
        .data(value.to_string())
        .id(format!("{}.{}.{}", at.0, at.1, at.2));
    if chunk.end { event.event("end") } else { event }
}

fn error_event(body: &ErrorBody) -> Event {
    let data = serde_json::to_string(body)
        .unwrap_or_else(|_| r#"{"code":"Internal","message":"error","field":null}"#.into());
    Event::default().event("error").data(data)
}

#[cfg(test)]
mod tests {
    use super::position;

    #[test]
    fn a_position_reads_back_and_anything_else_is_refused() {
        assert_eq!(position("2.120.7"), Some((2, 120, 7)));
        assert_eq!(position("2.120"), None);
        assert_eq!(position("2.120.7.1"), None);
        assert_eq!(position("x.1.2"), None);
    }
}
