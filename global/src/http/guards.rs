//! The HTTP listener and its guards, which run before any route.
//!
//! Owns serving connections (HTTP/1 and HTTP/2) until shutdown, and the
//! guards: every error the listener or the router answers (unknown route,
//! wrong method, URL too long, body too large, body not JSON, body too
//! slow) carries the JSON error body, and a client that is slow with its
//! headers or its body is cut off after a timeout so it cannot hold a
//! connection and a handler forever. Those timeouts are I/O deadlines on
//! tokio's timer, not scheduling time, so they never read the replica's
//! `Clock`. It must never look inside a request beyond its headers and the
//! size and arrival of its body: what a body means is the routes' business.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use meridian_control::tls::stream::HttpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::errors::refusal;

/// Longest request target (path and query) routed; a longer one is a 414.
/// Below the HTTP parser's own limit (64 KiB), so the answer is ours and
/// carries the JSON body.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Largest request body read; a larger one is a 413. The same limit axum's
/// body extractors apply by default, so moving the read here changes no
/// accepted size.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Deadlines of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// Time a client has to send a request's headers, from its first byte
    /// (or from the end of the previous request); then the connection is
    /// closed without an answer.
    pub header: Duration,
    /// Time a client has to send a request's whole body once its headers
    /// are in; then it is answered 408 and the connection is closed.
    pub body: Duration,
}

/// Whether a response's body is plain text or absent, i.e. one of axum's
/// own refusals (404, 405, extractor rejections) rather than a JSON answer
/// or a console page.
fn is_bare(response: &Response) -> bool {
    match response.headers().get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => v
            .to_str()
            .map(|t| t.trim_start().starts_with("text/plain"))
            .unwrap_or(false),
    }
}

/// Gives every bare error answer the JSON error body, keeping its status
/// and headers (`Allow` of a 405) and its text as the message.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || !is_bare(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // The texts of axum's rejections are short; a failing read only loses
    // the detail, the status still says what happened.
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut answer = refusal(status, &message);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// Whether a request carries a body, judged from its headers so nothing is
/// read: a GET without a body needs no Content-Type.
fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// Whether a Content-Type names JSON, parameters (`; charset=utf-8`)
/// allowed.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// A refusal after which the connection must not be reused: the unread
/// rest of the body would be taken for the next request.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Refuses a URL too long, a body that is not JSON (but for the console's
/// sign-in form) or too large, and a body
/// that does not arrive in time; otherwise hands the request on with its
/// body read whole, so no handler ever waits on a slow client.
async fn guard(body_timeout: Duration, request: Request, next: Next) -> Response {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return refusal(
            StatusCode::URI_TOO_LONG,
            &format!("the URL has {uri_len} bytes; at most {MAX_URI_BYTES} are accepted"),
        );
    }
    if !has_body(request.headers()) {
        return next.run(request).await;
    }
    // The one form a browser posts: the console's sign-in page (its own
    // origin check is in the console's gate).
    let sign_in_form = request.uri().path() == "/console/login"
        && request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !sign_in_form && !is_json(request.headers().get(header::CONTENT_TYPE)) {
        return closing(refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a request body must be JSON: send Content-Type: application/json",
        ));
    }
    let (parts, body) = request.into_parts();
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buffered = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                refusal(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the body failed: {e}"),
                )
            })?;
            if buffered.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the body exceeds {MAX_BODY_BYTES} bytes"),
                ));
            }
            buffered.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buffered))
    };
    match tokio::time::timeout(body_timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(refusal)) => closing(refusal),
        Err(_) => closing(refusal(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the request body did not arrive within {} ms",
                body_timeout.as_millis()
            ),
        )),
    }
}

/// Wraps a router (the API merged with the console) in the listener's
/// guards; unknown routes and wrong methods get the JSON error body too.
pub fn with_guards(router: Router, body_timeout: Duration) -> Router {
    router
        .layer(middleware::from_fn(move |request, next| {
            guard(body_timeout, request, next)
        }))
        .layer(middleware::from_fn(json_errors))
}

/// Serves `app` on `listener` until `stop` turns true, then lets the
/// connections finish their requests. Headers must arrive within
/// `timeouts.header` (HTTP/1; hyper closes the connection), bodies within
/// `timeouts.body` (408).
pub async fn serve(
    mut listener: HttpListener,
    app: Router,
    timeouts: HttpTimeouts,
    mut stop: watch::Receiver<bool>,
) {
    let app = with_guards(app, timeouts.body);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    let mut connections = JoinSet::new();
    loop {
        let (stream, info) = tokio::select! {
            accepted = listener.accept_conn() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        // Each request carries what is known of its connection (TLS, the
        // client certificate if one was presented), for the routes that
        // ask who called.
        let service =
            tower::ServiceExt::map_request(app.clone(), move |mut r: axum::http::Request<_>| {
                r.extensions_mut().insert(info.clone());
                r
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "HTTP connection ended");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => connection.as_mut().graceful_shutdown(),
            }
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "HTTP connection ended");
            }
        });
    }
    while connections.join_next().await.is_some() {}
}
