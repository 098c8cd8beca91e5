//! The connection to the global tier, following its leader.
//!
//! Owns the list of known global endpoints, one lazily connected channel
//! each, and the retry rule every command shares: a call answered
//! `UNAVAILABLE` is sent again, unchanged (so a submit keeps its request
//! id), to the replica named by the `meridian-leader` hint, otherwise to the
//! next known endpoint after a short jittered backoff, until the deadline;
//! one answered `RESOURCE_EXHAUSTED` (the leader shedding load) is sent
//! again to the same replica after the backoff.
//! Must never retry a request the server refused for another reason, and
//! never change a request between attempts.

use std::future::Future;
use std::time::{Duration, Instant};

use meridian_proto::LEADER_METADATA_KEY;
use meridian_proto::v1::federation_client::FederationClient;
use rand::Rng;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::{CliError, Result};

/// Default global endpoint: where `meridian dev` serves its first global replica.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7400";

/// How a command reaches the global tier.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Global tier gRPC endpoint(s), comma-separated; the leader is followed
    /// from there.
    #[arg(
        long,
        env = "MERIDIAN_ENDPOINT",
        default_value = DEFAULT_ENDPOINT,
        global = true
    )]
    pub endpoint: String,
    /// Give up on a call that no replica could serve after this many seconds.
    #[arg(long, default_value_t = 15, global = true)]
    pub timeout_secs: u64,
}

/// A leader-following client of the `Federation` service.
pub struct Client {
    endpoints: Vec<(String, FederationClient<Channel>)>,
    current: usize,
    deadline: Duration,
}

fn channel(url: &str) -> Result<FederationClient<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| CliError::usage(format!("--endpoint {url}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    Ok(FederationClient::new(endpoint.connect_lazy()).max_decoding_message_size(64 << 20))
}

fn normalize(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

impl Client {
    /// A client of the comma-separated `endpoint` list; connects on first use.
    pub fn new(args: &ConnectArgs) -> Result<Client> {
        let mut client = Client {
            endpoints: Vec::new(),
            current: 0,
            deadline: Duration::from_secs(args.timeout_secs.max(1)),
        };
        for url in args.endpoint.split(',').filter(|u| !u.trim().is_empty()) {
            client.index_of(&normalize(url))?;
        }
        if client.endpoints.is_empty() {
            return Err(CliError::usage("--endpoint: no endpoint given"));
        }
        Ok(client)
    }

    fn index_of(&mut self, url: &str) -> Result<usize> {
        if let Some(i) = self.endpoints.iter().position(|(u, _)| u == url) {
            return Ok(i);
        }
        self.endpoints.push((url.to_string(), channel(url)?));
        Ok(self.endpoints.len() - 1)
    }

    /// The endpoint the next call goes to.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.current].0
    }

    /// Runs `call` against the current endpoint, following the leader hint
    /// and retrying on `UNAVAILABLE` until the deadline. `call` must send the
    /// same request every time.
    pub async fn call<T, F, Fut>(&mut self, mut call: F) -> Result<T>
    where
        F: FnMut(FederationClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        let mut last: Option<Status>;
        loop {
            let client = self.endpoints[self.current].1.clone();
            let status = match call(client).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            if !retryable(&status) {
                return Err(status.into());
            }
            // An overloaded leader is still the leader: stay, and back off.
            let hinted = status.code() != Code::ResourceExhausted && self.move_after(&status)?;
            last = Some(status);
            if started.elapsed() >= self.deadline {
                break;
            }
            if !hinted {
                // Nobody known to lead (an election is under way, or the
                // endpoint is down): back off with full jitter.
                let pause = rand::rng().random_range(Duration::ZERO..=delay);
                tokio::time::sleep(pause).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
        let detail = last.map(|s| s.message().to_string()).unwrap_or_default();
        Err(CliError::Unavailable(format!(
            "no global replica could serve the request within {} s (endpoints: {}): {detail}",
            self.deadline.as_secs(),
            self.endpoints
                .iter()
                .map(|(u, _)| u.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

impl Client {
    /// Moves to the replica `status` names in its `meridian-leader` hint,
    /// or else to the next known endpoint; `true` when a hint was followed.
    /// For a failure the caller handles itself (a broken stream).
    pub fn move_after(&mut self, status: &Status) -> Result<bool> {
        let hint = status
            .metadata()
            .get(LEADER_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(normalize)
            .filter(|h| !h.is_empty());
        Ok(match hint {
            Some(h) if h != self.endpoints[self.current].0 => {
                self.current = self.index_of(&h)?;
                true
            }
            _ => {
                self.current = (self.current + 1) % self.endpoints.len();
                false
            }
        })
    }
}

/// Whether a status means "try again, maybe elsewhere".
pub fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::ResourceExhausted)
        || (status.code() == Code::Unknown && status.message().contains("transport error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_a_scheme_get_http() {
        assert_eq!(normalize("127.0.0.1:7400/"), "http://127.0.0.1:7400");
        assert_eq!(normalize(" http://a:1 "), "http://a:1");
    }

    #[tokio::test]
    async fn an_overloaded_leader_is_asked_again_after_a_pause_without_moving_on() {
        let args = ConnectArgs {
            endpoint: "http://127.0.0.1:1,http://127.0.0.1:2".into(),
            timeout_secs: 30,
        };
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
    async fn a_comma_separated_list_gives_one_endpoint_each() {
        let args = ConnectArgs {
            endpoint: "http://127.0.0.1:1,127.0.0.1:2,".into(),
            timeout_secs: 1,
        };
        let client = Client::new(&args).expect("client");
        assert_eq!(client.endpoints.len(), 2);
        assert_eq!(client.endpoint(), "http://127.0.0.1:1");
    }
}
