//! The check every state-changing console request passes first, so a page
//! of another site cannot make an operator's browser send one (cross-site
//! request forgery).
//!
//! Owns the rule: an action is a POST whose body is JSON
//! (`Content-Type: application/json`, which no HTML form can send and a
//! script of another origin can send only after a CORS preflight the
//! console never grants), and whose `Origin`, when the browser sends one,
//! is the console's own (the request's `Host`); a browser's
//! `Sec-Fetch-Site: cross-site` is refused too. Must never let an action
//! through on a missing check: every action handler calls [`check`] before
//! anything else.

use axum::http::HeaderMap;
use axum::http::header::{CONTENT_TYPE, HOST, ORIGIN};

use crate::error::ConsoleError;

/// Refuses a request that may come from another site's page.
pub fn check(headers: &HeaderMap) -> Result<(), ConsoleError> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let json = text(CONTENT_TYPE.as_str()).is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json {
        return Err(ConsoleError::Invalid(
            "content-type: an action's body must be application/json".into(),
        ));
    }
    same_origin(headers)
}

/// Refuses a request a browser says comes from another site, or whose
/// `Origin`, when it has one, is not the console's own (the request's
/// `Host`). Also the sign-in form's check.
pub fn same_origin(headers: &HeaderMap) -> Result<(), ConsoleError> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if text("sec-fetch-site").is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) {
        return Err(ConsoleError::Invalid(
            "sec-fetch-site: an action must come from the console's own page".into(),
        ));
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        // `scheme://host[:port]`; the console serves plain HTTP on its
        // listener, so the host part must equal the Host header.
        let host = origin.split_once("://").map_or("", |(_, h)| h);
        if text(HOST.as_str()).is_none_or(|h| !h.eq_ignore_ascii_case(host)) {
            return Err(ConsoleError::Invalid(format!(
                "origin: {origin:?} is not this console's origin"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn only_json_from_the_consoles_own_origin_passes() {
        let own = [
            ("content-type", "application/json"),
            ("host", "10.0.0.5:7480"),
            ("origin", "http://10.0.0.5:7480"),
        ];
        assert_eq!(check(&headers(&own)), Ok(()));
        // A client that is not a browser sends no Origin.
        assert_eq!(
            check(&headers(&[(
                "content-type",
                "application/json; charset=utf-8"
            )])),
            Ok(())
        );
        let refused = |pairs: &[(&str, &str)]| check(&headers(pairs)).unwrap_err().to_string();
        assert!(refused(&[("content-type", "text/plain")]).contains("content-type:"));
        assert!(refused(&[("host", "10.0.0.5:7480")]).contains("content-type:"));
        assert!(
            refused(&[
                ("content-type", "application/json"),
                ("host", "10.0.0.5:7480"),
                ("origin", "http://evil.example"),
            ])
            .contains("origin: \"http://evil.example\"")
        );
        assert!(
            refused(&[
                ("content-type", "application/json"),
                ("sec-fetch-site", "cross-site"),
            ])
            .contains("sec-fetch-site:")
        );
    }
}
