//! Console sign-in: who is looking at a console and what they may do there.
//!
//! Owns the [`Gate`] every console route passes: the sign-in page, the
//! sessions of this replica, the session cookie, the CSRF token of each
//! session, and the role a route needs. A session is opened by presenting a
//! token on `/console/login`; the tier vouches for it through
//! [`TokenCheck`] (the global tier's token store, directly or over a
//! region's link). The browser then holds only a random session id in an
//! HttpOnly, SameSite=Strict cookie (Secure when the console is served over
//! TLS); the token stays in this replica's memory, so actions can be made
//! on the tier's API as the person who signed in. Every state-changing
//! request must carry the session's CSRF token in `x-csrf-token` (the page
//! has it in a `<meta>`; another site's page cannot read it), besides the
//! JSON and origin rule of [`crate::csrf`].
//!
//! The principal is checked with the tier again every [`RECHECK`], so a
//! revoked token or a changed role holds within that time; a session ends
//! after [`IDLE`] without a request or [`MAX_AGE`] in all. Sessions live in
//! memory: a restarted replica asks everyone to sign in again.
//!
//! Must never: put a token in a cookie, a URL, a page or a log; let a
//! request through without a session while sign-in is on; trust a role
//! the tier did not vouch for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE, COOKIE, HOST, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use meridian_proto::v1::{CheckConsoleTokenResponse, Role};
use meridian_store::clock::{Instant, SharedClock};
use parking_lot::Mutex;
use rand::TryRngCore;
use serde::Deserialize;
use serde_json::json;

use crate::CONSOLE_PATH;
use crate::error::ConsoleError;
use crate::render::esc;

/// The cookie holding a session id.
pub const SESSION_COOKIE: &str = "meridian_console";
/// The header a state-changing request carries its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long the tier's word on a session's token is trusted.
pub const RECHECK: Duration = Duration::from_secs(10);
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(60 * 60);
/// A session ends this long after sign-in, used or not.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 60 * 60);
/// Most sessions one replica keeps; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;
/// Longest token accepted on the sign-in form.
const MAX_TOKEN_BYTES: usize = 256;
/// Random bytes of a session id and of a CSRF token.
const SECRET_BYTES: usize = 32;

/// What a console distinguishes among roles, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConsoleRole {
    /// Reads the jobs of its tenants.
    Viewer,
    /// Reads and changes the jobs of its tenants.
    Submitter,
    /// Drains and cordons regions and nodes.
    Operator,
    /// Everything.
    Admin,
}

impl ConsoleRole {
    /// The console's role of a token's role; `None` for none.
    pub fn of_token(role: Role) -> Option<ConsoleRole> {
        match role {
            Role::Viewer => Some(ConsoleRole::Viewer),
            Role::Submitter => Some(ConsoleRole::Submitter),
            Role::Operator => Some(ConsoleRole::Operator),
            Role::Admin => Some(ConsoleRole::Admin),
            Role::Unspecified => None,
        }
    }

    /// The token role this is.
    pub fn token_role(self) -> Role {
        match self {
            ConsoleRole::Viewer => Role::Viewer,
            ConsoleRole::Submitter => Role::Submitter,
            ConsoleRole::Operator => Role::Operator,
            ConsoleRole::Admin => Role::Admin,
        }
    }

    /// As the CLI and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleRole::Viewer => "viewer",
            ConsoleRole::Submitter => "submitter",
            ConsoleRole::Operator => "operator",
            ConsoleRole::Admin => "admin",
        }
    }
}

/// Who is signed in, as the tier vouched for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// The token's public id.
    pub id: String,
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: ConsoleRole,
    /// The tenants of a viewer or submitter.
    pub tenants: BTreeSet<String>,
}

impl Viewer {
    /// The viewer the tier's answer to `CheckConsoleToken` describes.
    pub fn of_check(answer: CheckConsoleTokenResponse) -> Result<Viewer, ConsoleError> {
        let role = Role::try_from(answer.role)
            .ok()
            .and_then(ConsoleRole::of_token)
            .ok_or_else(|| ConsoleError::Forbidden("the token has no role".into()))?;
        Ok(Viewer {
            id: answer.token_id,
            name: answer.name,
            role,
            tenants: answer.tenants.into_iter().collect(),
        })
    }

    /// Everyone on a console without sign-in.
    fn open() -> Viewer {
        Viewer {
            id: "open".into(),
            name: String::new(),
            role: ConsoleRole::Admin,
            tenants: BTreeSet::new(),
        }
    }

    /// May drain and cordon.
    pub fn may_operate(&self) -> bool {
        self.role >= ConsoleRole::Operator
    }

    /// Sees the jobs of `tenant` on an operations page (operators see every
    /// tenant's waiting jobs: they decide where capacity goes).
    pub fn sees_tenant(&self, tenant: &str) -> bool {
        self.role >= ConsoleRole::Operator || self.tenants.contains(tenant)
    }

    /// `Forbidden` naming the role when this viewer's is lower.
    pub fn require(&self, role: ConsoleRole) -> Result<(), ConsoleError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(format!(
                "role {} required; signed in as {} ({})",
                role.as_str(),
                self.name,
                self.role.as_str()
            )))
        }
    }
}

/// Who makes an action: the viewer, and the token they signed in with, for
/// a source that makes the action on the tier's API in their name.
#[derive(Clone)]
pub struct Actor {
    /// Who.
    pub viewer: Viewer,
    token: Option<String>,
}

impl Actor {
    /// An actor without a token (a console without sign-in, tests).
    pub fn without_token(viewer: Viewer) -> Actor {
        Actor {
            viewer,
            token: None,
        }
    }

    /// `Bearer <token>`, for the tier's API; `None` without sign-in.
    pub fn bearer(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("viewer", &self.viewer)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What a request that passed the gate carries (a request extension).
#[derive(Clone)]
pub struct SignedIn {
    /// Who, with their token.
    pub actor: Actor,
    /// The session's CSRF token, for the page.
    pub csrf: String,
    /// False on a console without sign-in.
    pub signed_in: bool,
    /// The gate and the session id, to ask whether it still holds.
    session: Option<(Arc<Gate>, String)>,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("actor", &self.actor)
            .field("signed_in", &self.signed_in)
            .finish_non_exhaustive()
    }
}

impl SignedIn {
    /// Who.
    pub fn viewer(&self) -> &Viewer {
        &self.actor.viewer
    }

    /// Whether the session still holds (checked with the tier as any
    /// request's is): a live page's stream ends once it does not.
    pub async fn still_signed_in(&self) -> bool {
        match &self.session {
            None => true,
            Some((gate, id)) => matches!(gate.by_id(id).await, Ok(Some(_))),
        }
    }
}

/// `stream` until `who`'s session ends (revoked, expired, signed out): a
/// page left open stops receiving data within a check interval, and its
/// script then finds the sign-in page on reconnecting.
pub fn while_signed_in<S: futures::Stream>(
    who: SignedIn,
    stream: S,
) -> impl futures::Stream<Item = S::Item> {
    use futures::StreamExt;
    stream.take_while(move |_| {
        let who = who.clone();
        async move { who.still_signed_in().await }
    })
}

/// How a tier vouches for a token.
pub trait TokenCheck: Send + Sync + 'static {
    /// The principal of `token`: `Unauthenticated` for an unknown or
    /// revoked token, `Unavailable` when the tier cannot answer now.
    fn check<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Viewer, ConsoleError>>;
}

struct Session {
    token: String,
    viewer: Viewer,
    csrf: String,
    opened: Instant,
    used: Instant,
    checked: Instant,
}

enum Mode {
    Open,
    SignIn {
        check: Arc<dyn TokenCheck>,
        clock: SharedClock,
        secure_cookie: bool,
    },
}

/// The gate in front of a console's routes.
pub struct Gate {
    mode: Mode,
    /// The lowest role that may see the console.
    least: ConsoleRole,
    /// The CSRF token of the console without sign-in (one per process).
    open_csrf: String,
    sessions: Mutex<BTreeMap<String, Session>>,
}

/// Random hex from the operating system's generator.
fn random_hex() -> Result<String, ConsoleError> {
    let mut buf = [0u8; SECRET_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| ConsoleError::Failed(format!("the system's random source failed: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Equal without a timing side channel on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Gate {
    /// A console without sign-in: everyone may do everything. Only for a
    /// replica started with `--insecure` or without a tier to vouch for
    /// tokens; actions still need the page's CSRF token.
    pub fn open() -> Result<Arc<Gate>, ConsoleError> {
        Ok(Arc::new(Gate {
            mode: Mode::Open,
            least: ConsoleRole::Viewer,
            open_csrf: random_hex()?,
            sessions: Mutex::new(BTreeMap::new()),
        }))
    }

    /// A console behind sign-in: `least` is the lowest role that may see
    /// it; `secure_cookie` when it is served over TLS.
    pub fn sign_in(
        check: Arc<dyn TokenCheck>,
        least: ConsoleRole,
        clock: SharedClock,
        secure_cookie: bool,
    ) -> Result<Arc<Gate>, ConsoleError> {
        Ok(Arc::new(Gate {
            mode: Mode::SignIn {
                check,
                clock,
                secure_cookie,
            },
            least,
            open_csrf: random_hex()?,
            sessions: Mutex::new(BTreeMap::new()),
        }))
    }

    /// `Bearer <token>` of the signed-in session `headers` present, for a
    /// read of the tier's API from a console page (the job page's live
    /// output); `None` without a live session or without sign-in. Only
    /// for safe methods: a change is made through the console's actions,
    /// which want the CSRF token.
    pub async fn bearer_of(&self, headers: &HeaderMap) -> Option<String> {
        match self.session(headers).await {
            Ok(Some(s)) if s.signed_in && s.viewer().require(self.least).is_ok() => {
                s.actor.bearer()
            }
            _ => None,
        }
    }

    /// Open sessions (for tests and metrics).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// `router` behind this gate, with the sign-in and sign-out routes.
    pub fn guard(self: &Arc<Self>, router: Router) -> Router {
        let sign_in = Router::new()
            .route("/console/login", get(login_page).post(login))
            .with_state(self.clone());
        let sign_out = Router::new()
            .route("/console/logout", post(logout))
            .with_state(self.clone());
        // The layer covers the routes merged before it: everything but the
        // sign-in page itself.
        router
            .merge(sign_out)
            .layer(axum::middleware::from_fn_with_state(self.clone(), admit))
            .merge(sign_in)
            .layer(axum::middleware::from_fn(host_from_authority))
    }

    /// The session named by the request's cookie, checked: `None` when
    /// there is none, it ended, or the tier no longer vouches for it.
    async fn session(&self, headers: &HeaderMap) -> Result<Option<SignedIn>, ConsoleError> {
        let Mode::SignIn { .. } = &self.mode else {
            return Ok(Some(SignedIn {
                actor: Actor::without_token(Viewer::open()),
                csrf: self.open_csrf.clone(),
                signed_in: false,
                session: None,
            }));
        };
        let Some(id) = cookie(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        self.by_id(&id).await
    }

    /// The session `id`, checked (see [`Gate::session`]).
    async fn by_id(&self, id: &str) -> Result<Option<SignedIn>, ConsoleError> {
        let Mode::SignIn { check, clock, .. } = &self.mode else {
            return Ok(None);
        };
        let id = id.to_string();
        let now = clock.now();
        let recheck = {
            let mut sessions = self.sessions.lock();
            let Some(s) = sessions.get_mut(&id) else {
                return Ok(None);
            };
            if now.saturating_duration_since(s.used) >= IDLE
                || now.saturating_duration_since(s.opened) >= MAX_AGE
            {
                sessions.remove(&id);
                return Ok(None);
            }
            s.used = now;
            (now.saturating_duration_since(s.checked) >= RECHECK).then(|| s.token.clone())
        };
        if let Some(token) = recheck {
            match check.check(&token).await {
                Ok(viewer) => {
                    if let Some(s) = self.sessions.lock().get_mut(&id) {
                        s.viewer = viewer;
                        s.checked = now;
                    }
                }
                Err(ConsoleError::Unauthenticated(_)) => {
                    self.sessions.lock().remove(&id);
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.sessions.lock().get(&id).map(|s| SignedIn {
            actor: Actor {
                viewer: s.viewer.clone(),
                token: Some(s.token.clone()),
            },
            csrf: s.csrf.clone(),
            signed_in: true,
            session: None,
        }))
    }

    /// Opens a session for `token`; its id.
    async fn open_session(&self, token: &str) -> Result<(String, Viewer), ConsoleError> {
        let Mode::SignIn { check, clock, .. } = &self.mode else {
            return Err(ConsoleError::Invalid(
                "this console has no sign-in: it is open".into(),
            ));
        };
        let viewer = check.check(token).await?;
        viewer.require(self.least)?;
        let id = random_hex()?;
        let now = clock.now();
        let session = Session {
            token: token.to_string(),
            viewer: viewer.clone(),
            csrf: random_hex()?,
            opened: now,
            used: now,
            checked: now,
        };
        let mut sessions = self.sessions.lock();
        if sessions.len() >= MAX_SESSIONS {
            // The least recently used goes (a linear scan: this happens only
            // at the cap, once per sign-in).
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), session);
        Ok((id, viewer))
    }

    fn cookie(&self, value: &str, max_age: Option<u64>) -> HeaderValue {
        let secure = matches!(
            self.mode,
            Mode::SignIn {
                secure_cookie: true,
                ..
            }
        );
        let mut c =
            // Path `/`: the job page's live output is the API's follow stream
            // (`/v1/...`), which a signed-in browser reads with its session.
            format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
        if secure {
            c.push_str("; Secure");
        }
        if let Some(age) = max_age {
            c.push_str(&format!("; Max-Age={age}"));
        }
        // Only hex, '=', ';' and ASCII words: always a valid header value.
        HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// HTTP/2 carries the host in the `:authority` pseudo-header, which the
/// server puts in the URI, not in a `Host` header: the origin checks
/// compare against `Host`, so it is filled in from the URI when absent.
async fn host_from_authority(mut req: Request, next: Next) -> Response {
    if !req.headers().contains_key(HOST)
        && let Some(value) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(HOST, value);
    }
    next.run(req).await
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

/// Whether a refused request should be sent to the sign-in page (a page a
/// browser navigates to) rather than answered 401 (the API and streams).
fn wants_page(req: &Request) -> bool {
    let path = req.uri().path();
    req.method() == Method::GET
        && !path.starts_with("/console/api/")
        && !path.ends_with("/stream")
        && req
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|a| a.contains("text/html") || a.contains("*/*"))
}

fn to_sign_in(req: &Request) -> Response {
    let next = req
        .uri()
        .path_and_query()
        .map_or(CONSOLE_PATH.to_string(), |p| p.as_str().to_string());
    let location = format!(
        "{CONSOLE_PATH}/login?next={}",
        crate::render::url_segment(&next)
    );
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, location)],
        "sign in to the console",
    )
        .into_response()
}

/// The middleware: admits a request with a live session (and, for a
/// state-changing one, its CSRF token), else sends it to sign in.
async fn admit(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/console/assets/") || !path.starts_with(CONSOLE_PATH) {
        return next.run(req).await;
    }
    let signed = match gate.session(req.headers()).await {
        Ok(Some(mut s)) => {
            if s.signed_in
                && let Some(id) = cookie(req.headers(), SESSION_COOKIE)
            {
                s.session = Some((gate.clone(), id));
            }
            s
        }
        Ok(None) if wants_page(&req) => return to_sign_in(&req),
        Ok(None) => {
            return ConsoleError::Unauthenticated(
                "no console session: sign in at /console/login".into(),
            )
            .into_response();
        }
        Err(e) => return e.into_response(),
    };
    if let Err(e) = signed.viewer().require(gate.least) {
        return e.into_response();
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let presented = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same_secret(presented, &signed.csrf) {
            return ConsoleError::Forbidden(format!(
                "{CSRF_HEADER}: missing or not this session's; reload the console page"
            ))
            .into_response();
        }
    }
    req.extensions_mut().insert(signed);
    next.run(req).await
}

#[derive(Debug, Default, Deserialize)]
struct Next_ {
    #[serde(default)]
    next: String,
}

/// Where to go after sign-in: a console path of this server, never
/// another site (`//evil`, `/\evil`, a scheme).
fn safe_next(next: &str) -> String {
    let ok = next.starts_with(CONSOLE_PATH)
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.contains("://")
        && !next.starts_with("/console/login");
    if ok {
        next.to_string()
    } else {
        CONSOLE_PATH.to_string()
    }
}

fn login_html(next: &str, message: Option<&str>) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Sign in · Meridian</title><link rel=\"stylesheet\" href=\"{CONSOLE_PATH}/assets/console.css\"></head>\
<body><main class=\"sign-in\"><h1>Sign in to the Meridian console</h1>{}\
<form method=\"post\" action=\"{CONSOLE_PATH}/login\">\
<label for=\"token\">Token</label>\
<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required maxlength=\"{MAX_TOKEN_BYTES}\">\
<input type=\"hidden\" name=\"next\" value=\"{}\">\
<p class=\"muted\">A token from <code>meridian token create</code> (<code>meridian dev</code> writes an admin token to <code>data/dev/admin.token</code>).</p>\
<div class=\"buttons\"><button type=\"submit\" id=\"sign-in\">Sign in</button></div></form></main></body></html>",
        message.map_or(String::new(), |m| format!(
            "<p class=\"problem\" role=\"alert\" id=\"sign-in-error\">{}</p>",
            esc(m)
        )),
        esc(&safe_next(next)),
    )
}

async fn login_page(Query(q): Query<Next_>) -> Html<String> {
    Html(login_html(&q.next, None))
}

#[derive(Debug, Default, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

async fn login(State(gate): State<Arc<Gate>>, headers: HeaderMap, body: String) -> Response {
    let form_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let refuse = |status: StatusCode, next: &str, message: &str| {
        (status, Html(login_html(next, Some(message)))).into_response()
    };
    // A form post from another site's page may not sign a browser in
    // (login CSRF).
    if !form_type || crate::csrf::same_origin(&headers).is_err() {
        return refuse(
            StatusCode::FORBIDDEN,
            "",
            "sign-in must come from this console's own form",
        );
    }
    let form: LoginForm = match serde_urlencoded::from_str(&body) {
        Ok(f) => f,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "", &format!("form: {e}")),
    };
    let token = form.token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return refuse(
            StatusCode::BAD_REQUEST,
            &form.next,
            &format!("token: required, at most {MAX_TOKEN_BYTES} bytes"),
        );
    }
    match gate.open_session(token).await {
        Ok((id, _)) => (
            StatusCode::SEE_OTHER,
            [
                (SET_COOKIE, gate.cookie(&id, None)),
                (
                    LOCATION,
                    HeaderValue::from_str(&safe_next(&form.next))
                        .unwrap_or_else(|_| HeaderValue::from_static(CONSOLE_PATH)),
                ),
            ],
        )
            .into_response(),
        Err(e) => refuse(e.status(), &form.next, &e.to_string()),
    }
}

/// Ends the session (behind the gate: it needs the session's CSRF token).
async fn logout(State(gate): State<Arc<Gate>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        gate.sessions.lock().remove(&id);
    }
    (
        StatusCode::OK,
        [(SET_COOKIE, gate.cookie("", Some(0)))],
        axum::Json(json!({ "ok": true, "message": "signed out" })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_sign_in_only_a_console_path_of_this_server_is_followed() {
        assert_eq!(safe_next("/console/jobs/j1"), "/console/jobs/j1");
        for bad in [
            "https://evil.example/console",
            "//evil.example/console",
            "/console\\@evil",
            "/elsewhere",
            "/console/login?next=/console",
            "",
        ] {
            assert_eq!(safe_next(bad), CONSOLE_PATH, "{bad}");
        }
    }

    #[test]
    fn secrets_compare_equal_only_when_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }
}
