//! The connection to the global tier, following its leader.
//!
//! Owns the list of known global endpoints, one lazily connected channel
//! each, and the loop that applies control's retry rule
//! ([`meridian_control::rpc`]) to every command: each attempt is bounded by
//! `--attempt-timeout-ms`, and a failed one is sent again, unchanged (so a
//! submit keeps its request id), where and when the rule says, until
//! `--timeout-secs`. Pauses are drawn from a seeded backoff and waited out
//! on the clock.
//!
//! Must never classify a status itself, retry a request the rule says to
//! fail, or change a request between attempts.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use meridian_control::rpc::{self, Replicas, RetryConfig, RpcVerdict};
use meridian_control::tls::Security;
use meridian_control::{SharedClock, SystemClock};
use meridian_proto::v1::federation_client::FederationClient;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::Bearer;
use crate::error::{CliError, Result};

/// Default global endpoint: where `meridian dev` serves its first global replica.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7400";

/// How a command reaches the global tier.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Global tier gRPC endpoint(s), comma-separated; the leader is followed
    /// from there.
    ///
    /// Default: the client config's endpoint, else
    /// `http://127.0.0.1:7400` (gRPC endpoints are spelled `http://`; the
    /// TLS material, not the scheme, decides how they are dialled).
    #[arg(long, env = "MERIDIAN_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// Give up on a call that no replica could serve after this many seconds.
    #[arg(long, default_value_t = 15, global = true)]
    pub timeout_secs: u64,
    /// Give up on one attempt after this many milliseconds and send the same
    /// request to the next replica (about a leader lease: a frozen leader
    /// costs one attempt, not the whole call).
    #[arg(long, default_value_t = default_attempt_ms(), global = true)]
    pub attempt_timeout_ms: u64,
    /// Bearer token presented to the global tier (`mrd_...`); without it,
    /// the admin token `meridian dev` wrote in its data directory, if any.
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// TLS material (docs/security.md).
    #[command(flatten)]
    pub tls: crate::tls::ClientTlsArgs,
}

const fn default_attempt_ms() -> u64 {
    rpc::DEFAULT_ATTEMPT_DEADLINE.as_millis() as u64
}

impl ConnectArgs {
    /// `endpoint` (comma-separated) with a call deadline of `timeout` and the
    /// default attempt deadline, in plain text (set `tls` for TLS).
    pub fn new(endpoint: impl Into<String>, timeout: Duration) -> ConnectArgs {
        ConnectArgs {
            endpoint: Some(endpoint.into()),
            tls: crate::tls::ClientTlsArgs::plain(),
            timeout_secs: timeout.as_secs().max(1),
            attempt_timeout_ms: default_attempt_ms(),
            token: None,
        }
    }
}

/// A leader-following client of the `Federation` service.
pub struct Client {
    channels: BTreeMap<String, Api>,
    bearer: Bearer,
    security: Security,
    replicas: Replicas,
    clock: SharedClock,
    deadline: Duration,
    attempt_deadline: Duration,
}

/// The Federation client of one replica, presenting the command's token.
pub type Api = FederationClient<InterceptedService<Channel, Bearer>>;

fn channel(url: &str, bearer: &Bearer, security: &Security) -> Result<Api> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| CliError::usage(format!("--endpoint {url}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    Ok(FederationClient::with_interceptor(
        meridian_control::tls::stream::channel(endpoint, security),
        bearer.clone(),
    )
    .max_decoding_message_size(64 << 20))
}

impl Client {
    /// A client of the comma-separated `endpoint` list; connects on first
    /// use. Its pauses are seeded from the process id.
    pub fn new(args: &ConnectArgs) -> Result<Client> {
        Client::seeded(args, u64::from(std::process::id()))
    }

    /// Like [`Client::new`], with the seed of its backoff given.
    pub fn seeded(args: &ConnectArgs, seed: u64) -> Result<Client> {
        let resolved = args.tls.resolve()?;
        let endpoint = args
            .endpoint
            .clone()
            .or(resolved.endpoint)
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let security = resolved.security;
        let given = rpc::parse_endpoints(&endpoint);
        if given.is_empty() {
            return Err(CliError::usage("--endpoint: no endpoint given"));
        }
        let bearer = Bearer::new(crate::auth::resolve(args.token.as_deref())?.as_deref())?;
        let mut channels = BTreeMap::new();
        for url in &given {
            channels.insert(url.clone(), channel(url, &bearer, &security)?);
        }
        let config = RetryConfig {
            attempt_deadline: Duration::from_millis(args.attempt_timeout_ms.max(1)),
            ..RetryConfig::default()
        };
        let replicas = Replicas::new(given, 0, config.backoff, seed)
            .map_err(|e| CliError::usage(format!("--endpoint: {e}")))?;
        Ok(Client {
            channels,
            bearer,
            security,
            replicas,
            clock: SystemClock::shared(),
            deadline: Duration::from_secs(args.timeout_secs.max(1)),
            attempt_deadline: config.attempt_deadline,
        })
    }

    /// The endpoint the next call goes to.
    pub fn endpoint(&self) -> &str {
        self.replicas.current()
    }

    /// The clock every wait of this client goes through.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    fn current(&mut self) -> Result<Api> {
        let url = self.replicas.current().to_string();
        if let Some(c) = self.channels.get(&url) {
            return Ok(c.clone());
        }
        let c = channel(&url, &self.bearer, &self.security).map_err(|e| {
            CliError::other(format!("a replica named an unusable leader {url:?}: {e}"))
        })?;
        self.channels.insert(url, c.clone());
        Ok(c)
    }

    /// Runs `call` against the current endpoint, each attempt bounded by
    /// the attempt deadline, sending it again where and when the retry rule
    /// says until the call's deadline. `call` must send the same request
    /// every time.
    pub async fn call<T, F, Fut>(&mut self, mut call: F) -> Result<T>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let started = self.clock.now();
        let mut last: Option<Status> = None;
        loop {
            let left = self.deadline.saturating_sub(self.clock.now() - started);
            if left.is_zero() {
                break;
            }
            let client = self.current()?;
            let bound = self.attempt_deadline.min(left);
            let status = match rpc::attempt(self.clock.as_ref(), bound, call(client)).await {
                Ok(response) => {
                    self.replicas.answered();
                    return Ok(response.into_inner());
                }
                Err(status) => status,
            };
            let Some(step) = self.replicas.after(&RpcVerdict::of(&status)) else {
                return Err(status.into());
            };
            // A tenant over its limit is told when a retry may pass: no
            // sooner than that, and not at all past the call's deadline.
            let wait = step.wait.max(retry_hint(&status));
            last = Some(status);
            if self.clock.now() - started + wait >= self.deadline {
                break;
            }
            self.clock.sleep(wait).await;
        }
        let detail = last.map(|s| s.message().to_string()).unwrap_or_default();
        Err(CliError::Unavailable(format!(
            "no global replica could serve the request within {} s (endpoints: {}): {detail}",
            self.deadline.as_secs(),
            self.replicas.given().join(", ")
        )))
    }

    /// Moves as the retry rule says after `status` ended a stream this
    /// client's caller paces itself; a refusal moves on too, since a stream
    /// that answered before can be opened again elsewhere.
    pub fn move_after(&mut self, status: &Status) {
        match RpcVerdict::of(status) {
            RpcVerdict::Fail => self.move_on(),
            verdict => self.replicas.move_for(&verdict),
        }
    }

    /// Moves to the next known replica (a stream that ended or went silent).
    pub fn move_on(&mut self) {
        self.replicas
            .move_for(&RpcVerdict::Backoff { move_on: true });
    }

    /// Marks the current replica as not answering in time and moves on.
    pub fn move_from_silent(&mut self) {
        self.replicas.move_for(&RpcVerdict::RetryNow);
    }
}

/// The `retry-after-ms` hint of an answer (a tenant over its submit rate
/// or queued cap); zero without one.
fn retry_hint(status: &Status) -> Duration {
    status
        .metadata()
        .get(meridian_proto::RETRY_AFTER_MS_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_overloaded_leader_is_asked_again_after_a_pause_without_moving_on() {
        let args = ConnectArgs::new(
            "http://127.0.0.1:1,http://127.0.0.1:2",
            Duration::from_secs(30),
        );
        let mut client = Client::new(&args).expect("client");
        let tries = std::sync::atomic::AtomicU32::new(0);
        let answer: u32 = client
            .call(|_| {
                let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err(Status::resource_exhausted("overloaded: retry with backoff"))
                    } else {
                        Ok(tonic::Response::new(n))
                    }
                }
            })
            .await
            .expect("answered on the third try");
        assert_eq!(answer, 2);
        assert_eq!(
            client.endpoint(),
            "http://127.0.0.1:1",
            "stays with the replica that shed the call"
        );
    }

    #[tokio::test]
    async fn a_retry_hint_past_the_deadline_ends_the_call_without_asking_again() {
        let args = ConnectArgs::new("http://127.0.0.1:1", Duration::from_secs(1));
        let mut client = Client::new(&args).expect("client");
        let tries = std::sync::atomic::AtomicU32::new(0);
        let answer: Result<u32> = client
            .call(|_| {
                tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    let mut status = Status::resource_exhausted("tenant limit: over its rate");
                    status.metadata_mut().insert(
                        meridian_proto::RETRY_AFTER_MS_METADATA_KEY,
                        "60000".parse().expect("metadata"),
                    );
                    Err(status)
                }
            })
            .await;
        assert!(
            matches!(answer, Err(CliError::Unavailable(_))),
            "{answer:?}"
        );
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_comma_separated_list_gives_one_endpoint_each() {
        let args = ConnectArgs::new("http://127.0.0.1:1,127.0.0.1:2,", Duration::from_secs(1));
        let client = Client::new(&args).expect("client");
        assert_eq!(client.replicas.given().len(), 2);
        assert_eq!(client.endpoint(), "http://127.0.0.1:1");
    }

    #[tokio::test]
    async fn a_refused_request_is_not_sent_again_even_if_its_message_says_transport_error() {
        let args = ConnectArgs::new(
            "http://127.0.0.1:1,http://127.0.0.1:2",
            Duration::from_secs(30),
        );
        let mut client = Client::new(&args).expect("client");
        let tries = std::sync::atomic::AtomicU32::new(0);
        let answer: Result<u32> = client
            .call(|_| {
                tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Err(Status::unknown("transport error")) }
            })
            .await;
        assert!(matches!(answer, Err(CliError::Status(_))), "{answer:?}");
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_attempt_that_does_not_answer_in_time_goes_to_the_next_replica_unchanged() {
        let args = ConnectArgs {
            attempt_timeout_ms: 100,
            ..ConnectArgs::new(
                "http://127.0.0.1:1,http://127.0.0.1:2",
                Duration::from_secs(30),
            )
        };
        let mut client = Client::new(&args).expect("client");
        let tries = std::sync::atomic::AtomicU32::new(0);
        let answer: u32 = client
            .call(|_| {
                let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if n == 0 {
                        std::future::pending().await
                    } else {
                        Ok(tonic::Response::new(n))
                    }
                }
            })
            .await
            .expect("answered by the second replica");
        assert_eq!(answer, 1);
        assert_eq!(client.endpoint(), "http://127.0.0.1:2");
    }
}
