//! WatchJobs over HTTP, as server-sent events.
//!
//! Owns reading the watch request (query string, and the `Last-Event-ID`
//! header an `EventSource` sends when it reconnects) and writing the
//! stream: each `JobEvent`, bookmarks included, is one event whose `id:` is
//! its cursor in the JSON API's encoding of bytes (base64) and whose
//! `data:` is the event as JSON. A request the stream cannot start from
//! (a forged cursor, one older than the retained history) is answered with
//! the JSON error body before any event; an error after the stream started
//! is sent as an `error` event carrying that body, and ends the stream.
//! The stream itself is `crate::events::watch_jobs`, the same one the gRPC
//! service returns; this module must never filter, reorder or invent an
//! event.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use meridian_proto::v1::{JobEvent, WatchJobsRequest};
use serde_json::Value;
use tonic::Status;

use super::AppState;
use super::errors::{ApiError, ErrorBody, fail};
use super::query::QueryMessage;
use crate::events;
use crate::json;
use crate::openapi::proto;

/// The header an `EventSource` resends on reconnection with the `id:` of
/// the last event it received.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// WatchJobs.
#[utoipa::path(
    get,
    path = "/v1/jobs/watch",
    tag = "jobs",
    operation_id = "WatchJobs",
    params(
        ("cursor" = Option<String>, Query, description = "Resume right after this cursor: \
            the `id:` of an event received earlier, sent back unchanged (percent-encode it: \
            base64 has `+` and `/`). Absent: only changes committed after the call. Opaque: \
            never build or edit one."),
        ("Last-Event-ID" = Option<String>, Header, description = "Same as `cursor`, and \
            wins over it: an EventSource sends it when it reconnects"),
        ("tenant" = Option<String>, Query, description = "Only jobs of this tenant"),
        ("job_ids" = Option<Vec<String>>, Query, description = "Only these jobs (at most \
            1000), repeated or comma-separated; `job_id` works too"),
        ("region" = Option<String>, Query, description = "Only jobs held by this region"),
        ("label_selector" = Option<Vec<String>>, Query, description = "A `LabelRequirement` \
            as JSON (or a JSON array of them), repeated"),
        ("include_task_events" = Option<bool>, Query, description = "Also send \
            TASK_CHANGED events"),
    ),
    responses(
        (status = 200, description = "Server-sent events: each `data:` is a `JobEvent` as \
            JSON (bookmarks included) and its `id:` the event's cursor; an `error` event \
            with the error body ends the stream", content_type = "text/event-stream",
            body = proto::JobEvent),
        (status = 400, description = "A filter is invalid, or the cursor is not one this \
            federation issued (`field` is `cursor`)", body = ErrorBody),
        (status = 410, description = "The cursor is older than the retained history: list \
            the jobs again, then watch without a cursor", body = ErrorBody),
        (status = "4XX", description = "Refused", body = ErrorBody),
        (status = "5XX", description = "Failed", body = ErrorBody),
    )
)]
pub async fn watch(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    // The header is newer than the URL's cursor: an EventSource reconnects
    // to the URL it was opened with, cursor included.
    let last_event_id = headers
        .get(LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let req = QueryMessage::read("WatchJobsRequest", pairs, &[("job_id", "job_ids")]).and_then(
        |mut m| {
            if let Some(cursor) = last_event_id {
                m.set("cursor", Value::String(cursor));
            }
            m.into_message::<WatchJobsRequest>()
        },
    );
    let req = match req {
        Ok(req) => req,
        Err(e) => return fail(&s, e).await.into_response(),
    };
    let api = &s.api;
    let opened = events::watch_jobs(
        api.db.clone(),
        api.keys.clone(),
        req,
        api.clock.clone(),
        api.bookmark_every,
        api.shutdown.clone(),
    )
    .await;
    match opened {
        Ok(stream) => Sse::new(sse(stream)).into_response(),
        Err(e) => fail(&s, e).await.into_response(),
    }
}

/// The events of a watch stream as server-sent events.
fn sse(
    stream: impl Stream<Item = Result<JobEvent, Status>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream.map(|item| {
        Ok(match item {
            Ok(event) => job_event(&event),
            Err(status) => error_event(&ApiError::from(status).body()),
        })
    })
}

/// One job event: `id:` is the cursor as the JSON mapping writes it, so a
/// client resumes with exactly the text it was given.
fn job_event(event: &JobEvent) -> Event {
    let value = match json::render("JobEvent", event) {
        Ok(v) => v,
        Err(e) => return error_event(&ApiError::from(e).body()),
    };
    let mut sse = Event::default().data(value.to_string());
    // An empty cursor (a bookmark before the log has any event) is no
    // position; leaving `id:` out keeps the client's last one.
    if let Some(cursor) = value.get("cursor").and_then(Value::as_str) {
        sse = sse.id(cursor);
    }
    sse
}

fn error_event(body: &ErrorBody) -> Event {
    let data = serde_json::to_string(body)
        .unwrap_or_else(|_| r#"{"code":"Internal","message":"error","field":null}"#.into());
    Event::default().event("error").data(data)
}
