//! Console sign-in over the real routers: without a session a page sends
//! the browser to sign in and the API answers 401; a token the tier vouches
//! for opens a session held in an HttpOnly, SameSite=Strict cookie that
//! never carries the token; a viewer gets no controls and the server refuses
//! their actions; every action needs the session's CSRF token; a revoked
//! token ends its session at the next check, an idle session at its idle
//! time (a manual clock). The tier's token store is a table here; the real
//! one, over real TLS, is in the browser test of the processes suite.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use futures::future::BoxFuture;
use meridian_console::session::{IDLE, RECHECK};
use meridian_console::view::{
    ActionOutcome, Amount, EventView, LaneView, NodeAction, NodeState, NodeView, PlacementSample,
    RegionIdentity, ShardView, WaitingJobView,
};
use meridian_console::{
    Actor, ConsoleError, ConsoleRole, Gate, RegionConsoleSource, TokenCheck, Viewer, region_router,
};
use meridian_store::clock::ManualClock;
use parking_lot::Mutex;
use tower::ServiceExt;

use crate::common;

use common::csrf_in;

const OPERATOR: &str = "tok-operator";
const VIEWER: &str = "tok-viewer-a";

/// The tier's tokens: a table, with revocation.
#[derive(Default)]
struct Tokens {
    valid: Mutex<BTreeMap<String, Viewer>>,
    checks: Mutex<u32>,
}

impl Tokens {
    fn with_people() -> Arc<Tokens> {
        let t = Tokens::default();
        let person = |id: &str, role, tenants: &[&str]| Viewer {
            id: id.into(),
            name: format!("{id}-name"),
            role,
            tenants: tenants.iter().map(|s| s.to_string()).collect(),
        };
        t.valid
            .lock()
            .insert(OPERATOR.into(), person("op1", ConsoleRole::Operator, &[]));
        t.valid.lock().insert(
            VIEWER.into(),
            person("view1", ConsoleRole::Viewer, &["team-a"]),
        );
        Arc::new(t)
    }

    fn revoke(&self, token: &str) {
        self.valid.lock().remove(token);
    }
}

impl TokenCheck for Tokens {
    fn check<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Viewer, ConsoleError>> {
        Box::pin(async move {
            *self.checks.lock() += 1;
            self.valid
                .lock()
                .get(token)
                .cloned()
                .ok_or_else(|| ConsoleError::Unauthenticated("invalid or revoked token".into()))
        })
    }
}

/// A region with one node and two waiting jobs of two tenants; it records
/// who made each action.
#[derive(Default)]
struct Region {
    actions: Mutex<Vec<(String, Option<String>)>>,
}

impl RegionConsoleSource for Region {
    async fn identity(&self) -> Result<RegionIdentity, ConsoleError> {
        Ok(RegionIdentity {
            region: "r1".into(),
            replica: "a".into(),
            shard_count: 1,
            linked: true,
        })
    }
    async fn shards(&self) -> Result<Vec<ShardView>, ConsoleError> {
        Ok(Vec::new())
    }
    async fn nodes(&self) -> Result<Vec<NodeView>, ConsoleError> {
        Ok(vec![NodeView {
            node_id: "n-1".into(),
            zone: "z".into(),
            shard: 0,
            state: NodeState::Ready,
            liveness: NodeState::Ready,
            capacity: Amount::default(),
            usage: Amount::default(),
            running_tasks: 0,
            epoch: 1,
            reason: String::new(),
        }])
    }
    async fn pending_lanes(&self) -> Result<Vec<LaneView>, ConsoleError> {
        Ok(Vec::new())
    }
    async fn waiting_jobs(&self) -> Result<Vec<WaitingJobView>, ConsoleError> {
        let job = |id: &str, tenant: &str| WaitingJobView {
            job_id: id.into(),
            tenant: tenant.into(),
            reason: "no room".into(),
            ..WaitingJobView::default()
        };
        Ok(vec![job("ja", "team-a"), job("jb", "team-b")])
    }
    async fn placement(&self) -> Result<Vec<PlacementSample>, ConsoleError> {
        Ok(Vec::new())
    }
    async fn events(&self) -> Result<Vec<EventView>, ConsoleError> {
        Ok(Vec::new())
    }
    async fn node_action(
        &self,
        node: &str,
        action: NodeAction,
        _reason: &str,
        actor: &Actor,
    ) -> Result<ActionOutcome, ConsoleError> {
        self.actions
            .lock()
            .push((format!("{} {node}", action.as_str()), actor.bearer()));
        Ok(ActionOutcome {
            message: format!("{} {node}", action.as_str()),
        })
    }
    async fn drain_region(
        &self,
        _: &str,
        _: bool,
        actor: &Actor,
    ) -> Result<ActionOutcome, ConsoleError> {
        self.actions
            .lock()
            .push(("drain region".into(), actor.bearer()));
        Ok(ActionOutcome {
            message: "draining".into(),
        })
    }
}

struct Console {
    router: axum::Router,
    tokens: Arc<Tokens>,
    source: Arc<Region>,
    clock: ManualClock,
    gate: Arc<Gate>,
}

impl Console {
    fn new() -> Console {
        let tokens = Tokens::with_people();
        let clock = ManualClock::new();
        let gate =
            Gate::sign_in(tokens.clone(), ConsoleRole::Viewer, clock.shared(), true).expect("gate");
        let source = Arc::new(Region::default());
        Console {
            router: region_router(source.clone(), &gate),
            tokens,
            source,
            clock,
            gate,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("response");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Signs in with `token` through the form; the session cookie.
    async fn sign_in(&self, token: &str) -> String {
        let reply = self.login(token, "/console").await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
        let cookie = reply.headers[header::SET_COOKIE]
            .to_str()
            .expect("ascii")
            .to_string();
        cookie.split(';').next().expect("name=value").to_string()
    }

    async fn login(&self, token: &str, next: &str) -> Reply {
        self.send(
            Request::post("/console/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("host", "console.example:7590")
                .header("origin", "https://console.example:7590")
                .body(Body::from(format!(
                    "token={}&next={}",
                    token,
                    next.replace('/', "%2F")
                )))
                .expect("request"),
        )
        .await
    }

    async fn get(&self, uri: &str, cookie: Option<&str>) -> Reply {
        let mut request = Request::get(uri).header("accept", "text/html");
        if let Some(c) = cookie {
            request = request.header(header::COOKIE, c);
        }
        self.send(request.body(Body::empty()).expect("request"))
            .await
    }

    async fn act(&self, uri: &str, cookie: &str, csrf: Option<&str>) -> Reply {
        let mut request = Request::post(uri)
            .header("content-type", "application/json")
            .header(header::COOKIE, cookie);
        if let Some(t) = csrf {
            request = request.header("x-csrf-token", t);
        }
        self.send(request.body(Body::from("{}")).expect("request"))
            .await
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

#[tokio::test]
async fn without_a_session_a_page_sends_the_browser_to_sign_in_and_the_api_answers_401() {
    let c = Console::new();
    let page = c.get("/console", None).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(
        page.headers[header::LOCATION],
        "/console/login?next=%2Fconsole"
    );
    let api = c.get("/console/api/snapshot", None).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    assert!(api.body.contains("sign in"), "{}", api.body);
    let stream = c
        .get("/console/stream", Some("meridian_console=made-up"))
        .await;
    assert_eq!(stream.status, StatusCode::UNAUTHORIZED);
    let action = c.act("/console/api/nodes/n-1/drain", "", None).await;
    assert_eq!(action.status, StatusCode::UNAUTHORIZED);
    // The sign-in page and the assets need no session.
    let login = c.get("/console/login", None).await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains("type=\"password\""), "{}", login.body);
    assert_eq!(
        c.get("/console/assets/console.js", None).await.status,
        StatusCode::OK
    );
    assert!(c.source.actions.lock().is_empty());
}

#[tokio::test]
async fn signing_in_sets_an_http_only_strict_secure_cookie_that_does_not_carry_the_token() {
    let c = Console::new();
    let reply = c.login(OPERATOR, "/console/api/snapshot").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.headers[header::LOCATION], "/console/api/snapshot");
    let set = reply.headers[header::SET_COOKIE].to_str().expect("ascii");
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/;"] {
        assert!(set.contains(attribute), "{attribute} in {set}");
    }
    assert!(!set.contains(OPERATOR), "the token is not in the cookie");
    let cookie = set.split(';').next().expect("name=value");
    let page = c.get("/console", Some(cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("op1-name"), "who is signed in is shown");
    assert!(
        !page.body.contains(OPERATOR),
        "the token is not in the page"
    );
    // After sign-in only a path of this console is followed.
    let reply = c.login(OPERATOR, "https://evil.example/console").await;
    assert_eq!(reply.headers[header::LOCATION], "/console");
}

#[tokio::test]
async fn a_wrong_token_or_a_sign_in_posted_by_another_site_opens_no_session() {
    let c = Console::new();
    let wrong = c.login("tok-nobody", "/console").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.body.contains("sign-in-error"), "{}", wrong.body);
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());
    let forged = c
        .send(
            Request::post("/console/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("host", "console.example:7590")
                .header("origin", "https://evil.example")
                .body(Body::from(format!("token={OPERATOR}")))
                .expect("request"),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.headers.get(header::SET_COOKIE).is_none());
    assert_eq!(c.gate.session_count(), 0);
}

#[tokio::test]
async fn a_viewer_sees_no_controls_only_their_tenants_jobs_and_their_actions_are_refused() {
    let c = Console::new();
    let cookie = c.sign_in(VIEWER).await;
    let page = c.get("/console", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("data-node=\"n-1\""),
        "the node is listed"
    );
    assert!(
        !page.body.contains("data-action"),
        "no controls for a viewer"
    );
    assert!(page.body.contains("data-job=\"ja\""), "team-a's job");
    assert!(!page.body.contains("data-job=\"jb\""), "not team-b's");
    let csrf = csrf_in(&page.body);
    for uri in ["/console/api/nodes/n-1/drain", "/console/api/drain-region"] {
        let refused = c.act(uri, &cookie, Some(&csrf)).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{uri}");
        assert!(
            refused.body.contains("role operator required"),
            "{}",
            refused.body
        );
    }
    assert!(
        c.source.actions.lock().is_empty(),
        "nothing reached the tier"
    );

    let cookie = c.sign_in(OPERATOR).await;
    let page = c.get("/console", Some(&cookie)).await;
    assert!(page.body.contains("aria-label=\"Drain node n-1\""));
    assert!(page.body.contains("data-action=\"drain-region\""));
    assert!(page.body.contains("data-job=\"jb\""), "operators see all");
}

#[tokio::test]
async fn an_action_needs_its_own_sessions_csrf_token_and_runs_with_the_signed_in_token() {
    let c = Console::new();
    let cookie = c.sign_in(OPERATOR).await;
    let other = c.sign_in(OPERATOR).await;
    let own = csrf_in(&c.get("/console", Some(&cookie)).await.body);
    let theirs = csrf_in(&c.get("/console", Some(&other)).await.body);
    assert_ne!(own, theirs, "one token per session");
    let uri = "/console/api/nodes/n-1/drain";
    for csrf in [None, Some("0000"), Some(theirs.as_str())] {
        let refused = c.act(uri, &cookie, csrf).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{csrf:?}");
        assert!(refused.body.contains("x-csrf-token"), "{}", refused.body);
    }
    assert!(c.source.actions.lock().is_empty());
    let done = c.act(uri, &cookie, Some(&own)).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    assert_eq!(
        *c.source.actions.lock(),
        vec![("drain n-1".to_string(), Some(format!("Bearer {OPERATOR}")))]
    );
    // Signing out needs the token too, and ends the session.
    assert_eq!(
        c.act("/console/logout", &cookie, None).await.status,
        StatusCode::FORBIDDEN
    );
    let out = c.act("/console/logout", &cookie, Some(&own)).await;
    assert_eq!(out.status, StatusCode::OK);
    assert!(
        out.headers[header::SET_COOKIE]
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0")
    );
    assert_eq!(
        c.get("/console", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn a_revoked_token_ends_its_session_at_the_next_check() {
    let c = Console::new();
    let cookie = c.sign_in(OPERATOR).await;
    let checks = *c.tokens.checks.lock();
    c.tokens.revoke(OPERATOR);
    // Within the check interval the tier's word still holds, and the tier
    // is not asked on every request.
    assert_eq!(
        c.get("/console", Some(&cookie)).await.status,
        StatusCode::OK
    );
    assert_eq!(*c.tokens.checks.lock(), checks);
    c.clock.advance(RECHECK);
    assert_eq!(
        c.get("/console", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(c.gate.session_count(), 0);
}

#[tokio::test]
async fn a_session_unused_for_its_idle_time_ends() {
    let c = Console::new();
    let cookie = c.sign_in(VIEWER).await;
    c.clock.advance(IDLE - Duration::from_secs(1));
    assert_eq!(
        c.get("/console", Some(&cookie)).await.status,
        StatusCode::OK
    );
    c.clock.advance(IDLE);
    assert_eq!(
        c.get("/console", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn a_console_that_needs_a_role_refuses_a_lower_one_at_sign_in() {
    let tokens = Tokens::with_people();
    let gate = Gate::sign_in(
        tokens,
        ConsoleRole::Admin,
        ManualClock::new().shared(),
        false,
    )
    .expect("gate");
    let router = region_router(Arc::new(Region::default()), &gate);
    let response = router
        .oneshot(
            Request::post("/console/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(format!("token={OPERATOR}")))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let bytes = to_bytes(response.into_body(), 1 << 20).await.expect("body");
    assert!(String::from_utf8_lossy(&bytes).contains("role admin required"));
    assert_eq!(gate.session_count(), 0);
}

#[tokio::test]
async fn over_http2_the_origin_is_compared_with_the_requests_authority() {
    // An HTTP/2 request has no Host header: its authority is in the URI.
    let c = Console::new();
    let reply = c
        .send(
            Request::post("https://console.example:7590/console/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("origin", "https://console.example:7590")
                .body(Body::from(format!("token={OPERATOR}")))
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let forged = c
        .send(
            Request::post("https://console.example:7590/console/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("origin", "https://evil.example")
                .body(Body::from(format!("token={OPERATOR}")))
                .expect("request"),
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_live_page_stops_receiving_once_its_session_is_revoked() {
    let c = Console::new();
    let cookie = c.sign_in(OPERATOR).await;
    let response = c
        .router
        .clone()
        .oneshot(
            Request::get("/console/stream")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let first = futures::StreamExt::next(&mut body)
        .await
        .expect("a first event")
        .expect("bytes");
    assert!(String::from_utf8_lossy(&first).starts_with("event: sections"));
    c.tokens.revoke(OPERATOR);
    c.clock.advance(RECHECK);
    // The stream's next section finds the session gone and ends instead.
    let rest: Vec<_> =
        tokio::time::timeout(Duration::from_secs(30), futures::StreamExt::collect(body))
            .await
            .expect("the stream ended (failure guard only)");
    assert!(rest.is_empty(), "nothing after the revocation: {rest:?}");
    assert_eq!(c.gate.session_count(), 0);
}
