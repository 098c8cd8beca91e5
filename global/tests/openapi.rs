//! The OpenAPI document at `/openapi.json`, over a real socket: it parses
//! as an OpenAPI 3.1 document (the `oas3` crate), every reference in it
//! resolves, every operation is complete, and the (method, path) pairs it
//! lists are exactly those the router serves, found without the document:
//! paths from the router's own route table, methods from the `Allow` header
//! of each path's 405. A route added without its `#[utoipa::path]` fails
//! here.

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::*;
use oas3::spec::{ObjectOrReference, ParameterIn};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a bodiless request and returns (status, head, body).
async fn raw(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    guarded("the answer", conn.read_to_end(&mut answer))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        text[9..12].parse().unwrap(),
        head.to_string(),
        body.to_string(),
    )
}

/// Every path of a route table as axum's `Debug` prints it
/// (`RouteId(3): "/v1/jobs/{job_id}"`), in its path router: the fallback
/// router after it holds axum's own catch-all routes.
fn routed_paths(table: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let routes = table
        .split_once("fallback_router:")
        .map_or(table, |(routes, _)| routes);
    let mut rest = routes;
    while let Some(at) = rest.find("RouteId(") {
        rest = &rest[at + "RouteId(".len()..];
        if let Some(quoted) = rest
            .split_once("): \"")
            .filter(|(id, _)| id.bytes().all(|b| b.is_ascii_digit()))
            .map(|(_, after)| after)
            && let Some((path, _)) = quoted.split_once('"')
        {
            paths.insert(path.to_string());
        }
    }
    paths
}

/// A concrete URL for a path template.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "x"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every `$ref` in a JSON document.
fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => found.push(r.clone()),
                    _ => references(v, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| references(v, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_lists_exactly_the_routes_the_router_serves() {
    let h = Harness::start(|_| {}).await;
    let addr = h.running.http_addr.unwrap();
    let (status, head, body) = raw(addr, "GET", "/openapi.json").await;
    assert_eq!(status, 200, "{head}\n{body}");

    // A valid OpenAPI 3.1 document.
    let spec = oas3::from_json(&body).expect("the document parses as OpenAPI 3.1");
    let version = spec
        .validate_version()
        .expect("a supported OpenAPI version");
    assert_eq!((version.major, version.minor), (3, 1));
    let document: Value = serde_json::from_str(&body).unwrap();
    let mut refs = Vec::new();
    references(&document, &mut refs);
    assert!(!refs.is_empty());
    for reference in &refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} points outside the document"));
        assert!(
            document.pointer(pointer).is_some(),
            "{reference} resolves in the document"
        );
    }
    let mut operation_ids = BTreeSet::new();
    let mut documented = BTreeSet::new();
    for (path, method, operation) in spec.operations() {
        let what = format!("{method} {path}");
        let id = operation.operation_id.clone().expect(&what);
        assert!(operation_ids.insert(id.clone()), "{what}: {id} is unique");
        let parameters = operation.parameters(&spec).expect(&what);
        let declared: BTreeSet<String> = parameters
            .iter()
            .filter(|p| p.location == ParameterIn::Path)
            .map(|p| p.name.clone())
            .collect();
        let templated: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        assert_eq!(declared, templated, "{what}: path parameters");
        operation.request_body(&spec).expect(&what);
        let responses = operation.responses.clone().unwrap_or_default();
        assert!(
            responses.contains_key("200"),
            "{what} documents its success"
        );
        for (code, response) in &responses {
            assert!(
                matches!(response, ObjectOrReference::Object(_)) || response.resolve(&spec).is_ok(),
                "{what} {code} resolves"
            );
        }
        assert_eq!(operation.responses(&spec).len(), responses.len(), "{what}");
        documented.insert((method.to_string(), path));
    }

    // What the router serves, learnt without the document: the paths of its
    // route table, and for each the methods its 405 allows.
    let paths = routed_paths(&meridian_global::http::route_table());
    assert!(paths.contains("/v1/jobs/watch"), "{paths:?}");
    let mut served = BTreeSet::new();
    for path in &paths {
        let (status, head, body) = raw(addr, "PROBE", &concrete(path)).await;
        assert_eq!(status, 405, "{path}: {head}\n{body}");
        let allow = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("allow")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{path}: an Allow header\n{head}"));
        for method in allow.split(',').map(str::trim) {
            // HEAD comes with every GET; it is not an operation of its own.
            if method != "HEAD" {
                served.insert((method.to_string(), path.clone()));
            }
        }
    }
    assert_eq!(
        served, documented,
        "the router serves exactly the documented operations"
    );
}
