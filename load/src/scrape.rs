//! Reading the servers' Prometheus `/metrics` endpoints (and, with the same
//! plain GET, a page of a server's HTTP listener, such as its console).
//!
//! Owns one HTTP/1.0 GET (over TLS when the run's federation is TLS) and
//! the parsing of the text exposition
//! format into `(name, labels) -> value` sums. Must never fail a run: a
//! server that does not answer (it was just killed) reads as absent.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fetches `/metrics` from `addr`; `None` when it does not answer in time.
/// (`security()` reads the run's TLS files at each call: scrapes are seconds
/// apart.)
pub async fn fetch(addr: SocketAddr) -> Option<String> {
    fetch_path(addr, "/metrics").await
}

/// Fetches `path` from `addr`; `None` unless it answers 200 in time.
pub async fn fetch_path(addr: SocketAddr, path: &str) -> Option<String> {
    fetch_as(addr, path, None).await
}

/// Fetches a console page as the person whose session `cookie` names
/// (from [`console_session`]); `None` unless it answers 200 in time.
pub async fn fetch_as(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Option<String> {
    let head = match cookie {
        Some(c) => format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nCookie: {c}\r\n\r\n"),
        None => format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
    };
    let (status, _, body) = exchange(addr, head).await?;
    (status == 200).then_some(body)
}

/// Signs in to the console at `addr` with `token` and returns the session
/// cookie (`name=value`) to send with later page reads. `None` when the
/// console does not answer or refuses the token. A console served without
/// sign-in (`--insecure`) needs no cookie: callers pass `None` then.
pub async fn console_session(addr: SocketAddr, token: &str) -> Option<String> {
    let form = serde_urlencoded::to_string([("token", token), ("next", "/console")]).ok()?;
    let head = format!(
        "POST /console/login HTTP/1.0\r\nHost: {addr}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{form}",
        form.len()
    );
    let (status, headers, _) = exchange(addr, head).await?;
    if !(300..400).contains(&status) {
        return None;
    }
    headers.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.eq_ignore_ascii_case("set-cookie") {
            return None;
        }
        value.trim().split(';').next().map(str::to_string)
    })
}

/// One HTTP/1.0 request on a fresh connection: status, header block, body.
async fn exchange(addr: SocketAddr, request: String) -> Option<(u16, String, String)> {
    let go = async {
        // The run's TLS material: the servers' HTTP listeners are TLS when
        // their federation is.
        let security = crate::client::security().ok()?;
        let mut s = meridian_control::tls::stream::dial_http(addr, &security)
            .await
            .ok()?;
        s.write_all(request.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.ok()?;
        let text = String::from_utf8_lossy(&body).to_string();
        let (head, rest) = text.split_once("\r\n\r\n")?;
        let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, headers.to_string(), rest.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(2), go)
        .await
        .ok()
        .flatten()
}

/// The sum of every sample of metric `name` (all label sets) in `text`.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // `name{...} v` or `name v`; not `name_suffix ...`.
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if let Some(v) = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// The sum of the samples of metric `name` whose labels contain `label`
/// (for example `to="follower"`).
pub fn sum_where(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with('{'))
        .filter(|rest| {
            rest.split_once('}')
                .is_some_and(|(labels, _)| labels.contains(label))
        })
        .filter_map(|rest| rest.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

/// [`sum`] of metric `name` at `addr`, `None` if unreachable or absent.
pub async fn read(addr: SocketAddr, name: &str) -> Option<f64> {
    fetch(addr).await.and_then(|t| sum(&t, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_label_set_of_one_metric_only() {
        let text = "# TYPE q gauge\nq{shard=\"0\"} 3\nq{shard=\"1\"} 4\nq_total 100\nq 1\n";
        assert_eq!(sum(text, "q"), Some(8.0));
        assert_eq!(sum(text, "absent"), None);
    }

    #[test]
    fn sums_only_the_label_sets_that_match() {
        let text = "t{lease=\"a\",to=\"follower\"} 2\nt{lease=\"b\",to=\"leader\"} 5\nt{to=\"follower\"} 1\n";
        assert_eq!(sum_where(text, "t", "to=\"follower\""), 3.0);
    }
}
