//! Version skew: an agent of a newer build than its region's replica.
//!
//! Owns the rule for the host-level calls (`RegisterNodes`,
//! `HeartbeatNodes`, `ReportNodes`, `HostAssignments`) that a replica of an
//! older build does not serve. Such a replica answers UNIMPLEMENTED; the
//! agent then makes each node's own call (`Register`, `Heartbeat`,
//! `ReportTaskStatus`, `Assignments`), which every build serves, and tries
//! the host-level call again after [`RETRY_HOST_CALL_AFTER`], because the
//! replica may have been upgraded in the meantime. So a rolling upgrade may
//! take agents and regions in either order; it costs the older pair only
//! the per-node calls it always made.
//!
//! Must never take any status other than UNIMPLEMENTED for "older build":
//! a refusal, an overload or a broken connection is answered as the
//! host-level call's own.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;
use std::time::Instant;
use tonic::{Code, Status};

/// How long the per-node calls are used before the host-level call is
/// tried again.
pub const RETRY_HOST_CALL_AFTER: Duration = Duration::from_secs(60);

/// Per-node calls of one fallback in flight at most: a whole host's nodes
/// on one connection would otherwise open thousands of HTTP/2 streams at
/// once.
const SINGLE_CALLS_IN_FLIGHT: usize = 64;

/// Whether one kind of host-level call is served by one replica endpoint.
pub struct Skew {
    retry_after: Duration,
    served: Mutex<Served>,
}

enum Served {
    /// Not known yet (or again): a batch keeps a copy of its requests, to
    /// make the per-node calls with if the host-level call is refused.
    Unknown,
    /// A host-level call was answered: batches keep no copy. Should the
    /// replica be replaced by an older build, one batch is answered
    /// UNIMPLEMENTED (its nodes try again, as after any failed call) and
    /// the next goes per node.
    Yes,
    /// Per-node calls until then.
    No { until: Instant },
}

impl Default for Skew {
    fn default() -> Self {
        Skew::retrying_after(RETRY_HOST_CALL_AFTER)
    }
}

impl Skew {
    /// A skew that tries the host-level call again `retry_after` after it
    /// was found unserved.
    pub fn retrying_after(retry_after: Duration) -> Self {
        Skew {
            retry_after,
            served: Mutex::new(Served::Unknown),
        }
    }

    /// Whether to try the host-level call.
    pub fn host_call(&self) -> bool {
        self.next().is_some()
    }

    /// How the next call is made: per node (`None`), or host-level, with a
    /// copy of the requests kept until the endpoint is known to serve it
    /// (`Some(true)`) or without (`Some(false)`).
    fn next(&self) -> Option<bool> {
        let mut served = self.served.lock();
        match *served {
            Served::No { until } if Instant::now() < until => None,
            Served::No { .. } => {
                *served = Served::Unknown;
                Some(true)
            }
            Served::Unknown => Some(true),
            Served::Yes => Some(false),
        }
    }

    /// Takes note of a host-level call's failure: `true` when it says the
    /// replica does not serve the call, so the per-node call is to be made.
    pub fn older_build(&self, status: &Status) -> bool {
        if status.code() != Code::Unimplemented {
            return false;
        }
        *self.served.lock() = Served::No {
            until: Instant::now() + self.retry_after,
        };
        true
    }

    /// Answers `requests` with the host-level call `host` where the replica
    /// serves it, else with the per-node call `single` for each request;
    /// either way one answer per request, in order.
    pub async fn call<Req, Resp, H, HF, S, SF>(
        &self,
        requests: Vec<Req>,
        host: H,
        single: S,
    ) -> Result<Vec<Result<Resp, Status>>, Status>
    where
        Req: Clone,
        H: FnOnce(Vec<Req>) -> HF,
        HF: Future<Output = Result<Vec<Result<Resp, Status>>, Status>>,
        S: Fn(Req) -> SF,
        SF: Future<Output = Result<Resp, Status>>,
    {
        match self.next() {
            Some(false) => {
                let answered = host(requests).await;
                if let Err(status) = &answered {
                    self.older_build(status);
                }
                return answered;
            }
            Some(true) => match host(requests.clone()).await {
                Err(status) if self.older_build(&status) => {}
                answered => {
                    if answered.is_ok() {
                        *self.served.lock() = Served::Yes;
                    }
                    return answered;
                }
            },
            None => {}
        }
        Ok(futures::stream::iter(requests.into_iter().map(single))
            .buffered(SINGLE_CALLS_IN_FLIGHT)
            .collect()
            .await)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    async fn ask(skew: &Skew, host_calls: &AtomicUsize) -> Vec<Option<u32>> {
        let answers = skew
            .call(
                vec![1u32, 2, 3],
                |_| {
                    host_calls.fetch_add(1, Ordering::SeqCst);
                    async { Err(Status::unimplemented("unknown method")) }
                },
                |n| async move { Ok(n * 10) },
            )
            .await
            .expect("answered per node");
        answers.into_iter().map(Result::ok).collect()
    }

    #[tokio::test]
    async fn an_unimplemented_host_call_is_answered_per_node_in_order_and_not_tried_again_at_once()
    {
        let skew = Skew::default();
        let host_calls = AtomicUsize::new(0);
        assert_eq!(
            ask(&skew, &host_calls).await,
            [Some(10), Some(20), Some(30)]
        );
        assert_eq!(host_calls.load(Ordering::SeqCst), 1);
        // Within the minute: straight to the per-node calls.
        assert_eq!(
            ask(&skew, &host_calls).await,
            [Some(10), Some(20), Some(30)]
        );
        assert_eq!(host_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_host_call_is_tried_again_once_its_wait_has_passed() {
        // A wait of zero has passed by the next call: the replica may have
        // been upgraded, so the host call is made again.
        let skew = Skew::retrying_after(Duration::ZERO);
        let host_calls = AtomicUsize::new(0);
        ask(&skew, &host_calls).await;
        ask(&skew, &host_calls).await;
        assert_eq!(host_calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn any_other_failure_of_the_host_call_is_its_own_answer() {
        let skew = Skew::default();
        let singles = AtomicUsize::new(0);
        let answer = skew
            .call(
                vec![1u32],
                |_| async {
                    Err::<Vec<Result<u32, Status>>, _>(Status::unavailable("not the leader"))
                },
                |n| {
                    singles.fetch_add(1, Ordering::SeqCst);
                    async move { Ok(n) }
                },
            )
            .await;
        assert_eq!(answer.map_err(|s| s.code()).err(), Some(Code::Unavailable));
        assert_eq!(singles.load(Ordering::SeqCst), 0);
        assert!(skew.host_call(), "the next call is a host call again");
    }

    #[tokio::test]
    async fn once_served_a_refusal_answers_its_batch_and_the_next_batch_goes_per_node() {
        let skew = Skew::default();
        let refuse = std::sync::atomic::AtomicBool::new(false);
        let host_calls = AtomicUsize::new(0);
        let ask = || {
            skew.call(
                vec![1u32, 2],
                |reqs| {
                    host_calls.fetch_add(1, Ordering::SeqCst);
                    let refused = refuse.load(Ordering::SeqCst);
                    async move {
                        if refused {
                            Err(Status::unimplemented("unknown method"))
                        } else {
                            Ok(reqs.into_iter().map(Ok).collect())
                        }
                    }
                },
                |n| async move { Ok(n * 10) },
            )
        };
        let first = ask().await.expect("served");
        assert_eq!(
            first.into_iter().map(Result::ok).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
        // The replica is replaced by an older build.
        refuse.store(true, Ordering::SeqCst);
        let refused = ask().await.map(|_| ()).map_err(|s| s.code());
        assert_eq!(
            refused,
            Err(Code::Unimplemented),
            "no copy was kept to answer per node"
        );
        let next = ask().await.expect("per node");
        assert_eq!(
            next.into_iter().map(Result::ok).collect::<Vec<_>>(),
            [Some(10), Some(20)]
        );
        assert_eq!(host_calls.load(Ordering::SeqCst), 2);
    }
}
