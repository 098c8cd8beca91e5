//! Calls to a replica that may not serve yet (it has just started and does
//! not lead, or its leader was just killed), sent again as the product's own
//! clients send them: after each refusal, control's retry rule
//! ([`meridian_control::rpc`]) says whether and after what pause, the same
//! rule a `meridian agent`, a region's link and the CLI follow.
//!
//! No replica announces that it now leads (no line, no stream), so there is
//! no event to wait on; the refusal is the only answer there is. The pauses
//! are the rule's backoff (50 ms doubling to 1 s, seeded), drawn and waited
//! out on the clock in one place, [`until_served`]; a test never sleeps
//! between attempts itself, and asserts nothing about the time they take.

use std::future::Future;
use std::time::{Duration, Instant};

use meridian_control::rpc::{Replicas, RetryConfig, RpcVerdict, seed_of};
use meridian_control::{Clock, SystemClock};

/// Failure guard: a call no replica serves for this long fails the test.
pub const SERVE_GUARD: Duration = Duration::from_secs(60);

/// Sends `call` until it is answered, pausing between refusals as the
/// product's retry rule says; panics on a refusal the rule fails (a bad
/// request) or after [`SERVE_GUARD`]. `call` must send the same request
/// every time.
pub async fn until_served<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let clock = SystemClock::new();
    let mut rule = Replicas::new(
        vec![what.to_string()],
        0,
        RetryConfig::default().backoff,
        seed_of(what),
    )
    .expect("one replica and the default backoff");
    let deadline = Instant::now() + SERVE_GUARD;
    loop {
        let status = match call().await {
            Ok(answer) => return answer,
            Err(status) => status,
        };
        let Some(step) = rule.after(&RpcVerdict::of(&status)) else {
            panic!("{what}: refused for good: {status:?}");
        };
        assert!(
            Instant::now() + step.wait < deadline,
            "{what}: not served within {SERVE_GUARD:?}; last refusal {status:?}"
        );
        // The retry rule's pause between two attempts, as every client of
        // the product takes it: not a wait for a condition of the test.
        clock.sleep(step.wait).await;
    }
}
