//! The one retry rule for calls between Meridian processes.
//!
//! Owns, for every client of a replicated service (the CLI and the load
//! suite towards the global tier, a node towards its region, a region's
//! link towards the global tier):
//!
//! - [`RpcVerdict::of`], the classification of a failed call from its gRPC
//!   code, its `meridian-leader` hint ([`leader_hint`]) and whether the
//!   failure happened on the way (a transport error carried as its source);
//! - [`normalize`] and [`parse_endpoints`], the one spelling of an endpoint;
//! - [`attempt`], the per-attempt deadline (about a lease length, see
//!   [`DEFAULT_ATTEMPT_DEADLINE`]): a replica that does not answer in time
//!   (paused, partitioned, a half-open connection) costs one deadline, then
//!   the call moves on;
//! - [`Replicas`], where the next attempt goes and how long to wait first.
//!
//! The rule: an `UNAVAILABLE` answer naming the leader is sent again, now,
//! to that leader; an attempt that ran out of its deadline (or was cut off)
//! is sent again, now, to the next replica; an answer that says nobody can
//! serve the call right now (`UNAVAILABLE` without a hint, a broken
//! connection, `ABORTED`, `RESOURCE_EXHAUSTED`) is sent again after a
//! full-jitter backoff; anything else fails. A hint naming a replica whose
//! last attempt ran out of time is followed only when it is named again
//! after a pause. Immediate moves are free only
//! once per known replica in a row; past that they back off too, so a hint
//! that bounces between replicas never spins.
//!
//! Must never: look at a status message's text, change a request between
//! attempts (callers resend the same request, so a submit keeps its request
//! id), read time except through a [`Clock`], or draw from an unseeded RNG.

use std::collections::BTreeSet;
use std::error::Error as _;
use std::future::Future;
use std::time::Duration;

use meridian_proto::LEADER_METADATA_KEY;
use tonic::{Code, Status};

use crate::backoff::{Backoff, BackoffConfig, BackoffConfigError};
use crate::clock::Clock;

/// The default bound on one attempt: a little over the global leader lease
/// (2 s), so by the time an attempt to a frozen leader gives up, another
/// replica can have taken the lease over.
pub const DEFAULT_ATTEMPT_DEADLINE: Duration = Duration::from_secs(3);

/// What to do after a failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcVerdict {
    /// The replica does not lead and named the one that does (normalized):
    /// send the same request there, now.
    RetryAt(String),
    /// The replica did not answer within the attempt's deadline, or the call
    /// was cut off: send the same request to the next replica, now.
    RetryNow,
    /// Nobody can serve the call right now (an election is under way, the
    /// replica is down or sheds load): send the same request again after a
    /// backoff delay, to the next replica when `move_on`, else to this one
    /// (it leads, but is busy).
    Backoff { move_on: bool },
    /// The server refused the request: sending it again cannot help.
    Fail,
}

impl RpcVerdict {
    /// The verdict on `status`.
    pub fn of(status: &Status) -> RpcVerdict {
        match status.code() {
            Code::Unavailable => match leader_hint(status) {
                Some(leader) => RpcVerdict::RetryAt(leader),
                None => RpcVerdict::Backoff { move_on: true },
            },
            Code::DeadlineExceeded | Code::Cancelled => RpcVerdict::RetryNow,
            Code::ResourceExhausted | Code::Aborted => RpcVerdict::Backoff { move_on: false },
            // A status built on this side from a failure on the way (a
            // connection that broke mid-call) carries that failure as its
            // source; an UNKNOWN answered by a server carries none.
            Code::Unknown if status.source().is_some() => RpcVerdict::Backoff { move_on: true },
            _ => RpcVerdict::Fail,
        }
    }

    /// The verdict on a channel that could not be built or connected.
    pub fn of_transport(_: &tonic::transport::Error) -> RpcVerdict {
        RpcVerdict::Backoff { move_on: true }
    }

    /// Whether the same request may succeed if sent again.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, RpcVerdict::Fail)
    }
}

/// What a failed call means to a caller whose next step depends on more
/// than retrying: a cursor to give up, a fenced node, a missing object.
/// Read here from the code, beside [`RpcVerdict`], so no caller reads codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request is malformed (INVALID_ARGUMENT).
    Invalid,
    /// What it names does not exist (NOT_FOUND).
    NotFound,
    /// The caller's cursor is older than what the server keeps
    /// (OUT_OF_RANGE): start again from a snapshot.
    CursorExpired,
    /// The caller acted under an epoch that was superseded
    /// (FAILED_PRECONDITION): it is fenced.
    Fenced,
    /// Nobody served the call, or not in time (UNAVAILABLE,
    /// DEADLINE_EXCEEDED).
    Unavailable,
    /// Anything else.
    Other,
}

impl Refusal {
    /// What `status` means.
    pub fn of(status: &Status) -> Refusal {
        match status.code() {
            Code::InvalidArgument => Refusal::Invalid,
            Code::NotFound => Refusal::NotFound,
            Code::OutOfRange => Refusal::CursorExpired,
            Code::FailedPrecondition => Refusal::Fenced,
            Code::Unavailable | Code::DeadlineExceeded => Refusal::Unavailable,
            _ => Refusal::Other,
        }
    }
}

/// The replica named by the `meridian-leader` metadata of `status`,
/// normalized; `None` when there is no usable hint.
pub fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.trim().is_empty())
        .map(normalize)
}

/// The one spelling of an endpoint: trimmed, without a trailing slash, and
/// with `http://` when no scheme is given.
pub fn normalize(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// A comma-separated endpoint list, normalized, duplicates dropped, in the
/// order given; empty entries are skipped.
pub fn parse_endpoints(list: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for url in list.split(',').filter(|u| !u.trim().is_empty()) {
        let url = normalize(url);
        if !out.contains(&url) {
            out.push(url);
        }
    }
    out
}

/// Runs one attempt of a call, failing it with `DEADLINE_EXCEEDED` when it
/// has not answered within `deadline` on `clock`.
pub async fn attempt<T, F>(clock: &dyn Clock, deadline: Duration, call: F) -> Result<T, Status>
where
    F: Future<Output = Result<T, Status>>,
{
    let expired = clock.sleep(deadline);
    tokio::select! {
        answer = call => answer,
        () = expired => Err(Status::deadline_exceeded(format!(
            "no answer within the attempt deadline of {} ms",
            deadline.as_millis()
        ))),
    }
}

/// A seed derived from a text (a job id, a request id, a node id), stable
/// across runs and platforms (FNV-1a), for RNGs that must not be unseeded.
pub fn seed_of(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Parameters of a client's retry rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Bound on one attempt.
    pub attempt_deadline: Duration,
    /// Pauses between attempts that back off.
    pub backoff: BackoffConfig,
}

impl Default for RetryConfig {
    /// 3 s attempts; pauses from 50 ms doubling up to 1 s, short against an
    /// election (about a lease) so a client finds the new leader soon.
    fn default() -> Self {
        RetryConfig {
            attempt_deadline: DEFAULT_ATTEMPT_DEADLINE,
            backoff: BackoffConfig {
                base: Duration::from_millis(50),
                cap: Duration::from_secs(1),
            },
        }
    }
}

/// Why a [`Replicas`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicasError {
    #[error("no endpoint given")]
    NoEndpoint,
    #[error("backoff: {0}")]
    Backoff(#[from] BackoffConfigError),
}

/// Where the next attempt goes, and how long to wait before sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The endpoint of the next attempt.
    pub to: String,
    /// Pause before it (zero: send at once).
    pub wait: Duration,
}

/// A client's view of a replicated service: the endpoints it was given,
/// the one it talks to now (which a hint may have named), and the state of
/// the retry rule between two answers.
#[derive(Debug, Clone)]
pub struct Replicas {
    given: Vec<String>,
    current: String,
    backoff: Backoff,
    /// Backoff delays drawn since the last answer.
    backoffs: u32,
    /// Immediate moves in a row since the last answer or backoff.
    quick: u32,
    /// Replicas whose last attempt ran out of its deadline since the last
    /// answer: not worth a hint's immediate move, nor a turn of the list.
    unresponsive: BTreeSet<String>,
}

impl Replicas {
    /// Starts at `given[first % len]`, so the clients of one host can be
    /// spread over the replicas. `given` should come from
    /// [`parse_endpoints`].
    pub fn new(
        given: Vec<String>,
        first: usize,
        backoff: BackoffConfig,
        seed: u64,
    ) -> Result<Replicas, ReplicasError> {
        let current = given
            .get(first % given.len().max(1))
            .cloned()
            .ok_or(ReplicasError::NoEndpoint)?;
        Ok(Replicas {
            given,
            current,
            backoff: Backoff::new(backoff, seed)?,
            backoffs: 0,
            quick: 0,
            unresponsive: BTreeSet::new(),
        })
    }

    /// The endpoint the next attempt goes to.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// The endpoints this client was given.
    pub fn given(&self) -> &[String] {
        &self.given
    }

    /// The current replica answered: the rule starts over.
    pub fn answered(&mut self) {
        self.backoffs = 0;
        self.quick = 0;
        self.unresponsive.clear();
    }

    /// Applies the rule to a failed attempt: `None` when the call must fail,
    /// otherwise where to send it again and after what pause.
    pub fn after(&mut self, verdict: &RpcVerdict) -> Option<Step> {
        if *verdict != RpcVerdict::RetryNow {
            // It answered, if only to refuse.
            self.unresponsive.remove(&self.current);
        }
        let wait = match verdict {
            RpcVerdict::Fail => return None,
            RpcVerdict::RetryAt(leader) if *leader == self.current => self.back_off(),
            RpcVerdict::RetryAt(leader) if self.unresponsive.remove(leader) => {
                // Named a replica whose last attempt ran out of time (a
                // frozen leader is named until its lease runs out): ask
                // here again after a pause rather than wait out another
                // deadline. The doubt is spent: named again, it is
                // believed, so a leader that was once slow is not shunned
                // for as long as it leads.
                self.back_off()
            }
            RpcVerdict::RetryAt(leader) => {
                self.current = leader.clone();
                self.quick_move()
            }
            RpcVerdict::RetryNow => {
                self.unresponsive.insert(self.current.clone());
                self.next();
                self.quick_move()
            }
            RpcVerdict::Backoff { move_on } => {
                if *move_on {
                    self.next();
                }
                self.back_off()
            }
        };
        Some(Step {
            to: self.current.clone(),
            wait,
        })
    }

    /// Moves as `verdict` says without drawing a pause, for a caller that
    /// paces itself (a stream that broke after it had answered).
    pub fn move_for(&mut self, verdict: &RpcVerdict) {
        match verdict {
            RpcVerdict::RetryAt(leader) if !self.unresponsive.remove(leader) => {
                self.current = leader.clone();
            }
            RpcVerdict::RetryNow => {
                self.unresponsive.insert(self.current.clone());
                self.next();
            }
            RpcVerdict::Backoff { move_on: false } | RpcVerdict::Fail => {}
            RpcVerdict::RetryAt(_) | RpcVerdict::Backoff { move_on: true } => self.next(),
        }
    }

    /// The pause of the next backoff, counted as one.
    pub fn back_off(&mut self) -> Duration {
        self.quick = 0;
        let delay = self.backoff.delay(self.backoffs);
        self.backoffs = self.backoffs.saturating_add(1);
        delay
    }

    /// A pause drawn at the backoff's cap, for a long-lived client (a node,
    /// a region's link) that must try again even after a refusal the rule
    /// fails: it does so, but no sooner than a full backoff would.
    pub fn pause_at_cap(&mut self) -> Duration {
        self.quick = 0;
        self.backoff.delay(u32::MAX)
    }

    /// An immediate move is free once per given replica in a row; past
    /// that, moves keep their target but wait like a backoff.
    fn quick_move(&mut self) -> Duration {
        self.quick = self.quick.saturating_add(1);
        let free = u32::try_from(self.given.len()).unwrap_or(u32::MAX).max(1);
        if self.quick <= free {
            Duration::ZERO
        } else {
            let delay = self.backoff.delay(self.backoffs);
            self.backoffs = self.backoffs.saturating_add(1);
            delay
        }
    }

    /// The given replica after the current one (the first given one when
    /// the current came from a hint), passing over the unresponsive ones
    /// unless all of them are.
    fn next(&mut self) {
        let len = self.given.len();
        let from = self
            .given
            .iter()
            .position(|u| *u == self.current)
            .map_or(0, |i| i + 1);
        let candidates = (0..len).map(|k| &self.given[(from + k) % len]);
        let pick = candidates
            .clone()
            .find(|u| !self.unresponsive.contains(*u))
            .or_else(|| candidates.clone().next());
        if let Some(url) = pick {
            self.current = url.clone();
        }
    }
}

#[cfg(test)]
mod tests;
