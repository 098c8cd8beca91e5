//! Connections to the federation under load.
//!
//! Owns building gRPC channels to the global tier (raw, for throughput, and
//! leader-following through the CLI's client, which applies control's retry
//! rule, for probes that must survive a failover) and the job specs the
//! scenarios submit. Must never retry a submit with a changed request: a
//! retry keeps its request id, and never classify a status itself.

use std::time::Duration;

use meridian_cli::auth::Bearer;
use meridian_cli::tls::ClientTlsArgs;
use meridian_control::tls::Security;
use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use parking_lot::Mutex;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::{LoadError, Result};

/// The TLS material of this run's clients: the started federation's, or
/// the flags given with `--endpoint`. One run, one federation, so one
/// setting for the process; plain until set.
static TLS: Mutex<Option<ClientTlsArgs>> = Mutex::new(None);

/// Makes every client of this run dial with `tls`.
pub fn use_tls(tls: ClientTlsArgs) {
    *TLS.lock() = Some(tls);
}

fn tls_args() -> ClientTlsArgs {
    TLS.lock().clone().unwrap_or_else(ClientTlsArgs::plain)
}

/// The bearer token of this run's clients: the started federation's admin
/// token, or none for a federation started `--insecure` (its global tier
/// runs without auth), else `MERIDIAN_TOKEN`, else `meridian dev`'s
/// (`meridian_cli::auth`). The outer `None`: not decided by a started
/// federation.
static TOKEN: Mutex<Option<Option<String>>> = Mutex::new(None);

/// Makes every client of this run present `token`, or no token at all.
/// Set again by every federation a run starts, so the runs of
/// `--compare-insecure` never inherit each other's.
pub fn use_token(token: Option<String>) {
    *TOKEN.lock() = Some(token);
}

/// The token this run's clients present, for a child command too.
pub fn token() -> Result<Option<String>> {
    if let Some(t) = TOKEN.lock().clone() {
        return Ok(t);
    }
    meridian_cli::auth::resolve(std::env::var("MERIDIAN_TOKEN").ok().as_deref())
        .map_err(|e| LoadError::Usage(e.to_string()))
}

/// The environment a `meridian` child command of this run needs to reach
/// the federation as this run's clients do: its token and TLS material.
pub fn child_env() -> Result<Vec<(&'static str, std::ffi::OsString)>> {
    let mut env = Vec::new();
    if let Some(token) = token()? {
        env.push(("MERIDIAN_TOKEN", token.into()));
    }
    let tls = tls_args();
    let files = [
        ("MERIDIAN_CA_CERT", tls.ca_cert),
        ("MERIDIAN_CLIENT_CERT", tls.client_cert),
        ("MERIDIAN_CLIENT_KEY", tls.client_key),
        ("MERIDIAN_CONFIG", tls.config),
    ];
    for (name, path) in files {
        if let Some(path) = path {
            env.push((name, path.into_os_string()));
        }
    }
    if tls.insecure {
        env.push(("MERIDIAN_INSECURE", "1".into()));
    }
    Ok(env)
}

/// A raw Federation client presenting this run's token.
pub type Api = FederationClient<InterceptedService<Channel, Bearer>>;

/// What this run's raw channels dial with.
pub fn security() -> Result<Security> {
    tls_args()
        .resolve()
        .map(|r| r.security)
        .map_err(|e| LoadError::Usage(e.to_string()))
}

/// A lazily connected channel to `endpoint` with this run's TLS material.
pub fn channel(endpoint: Endpoint) -> Result<Channel> {
    Ok(meridian_control::tls::stream::channel(
        endpoint,
        &security()?,
    ))
}

/// A raw client of one global endpoint (no leader following, no retry:
/// the throughput scenarios count every failure as it comes).
pub fn federation(url: &str, timeout: Duration) -> Result<Api> {
    let url = meridian_control::rpc::normalize(url);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| LoadError::Usage(format!("endpoint {url}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .tcp_nodelay(true);
    let bearer = Bearer::new(token()?.as_deref()).map_err(|e| LoadError::Usage(e.to_string()))?;
    Ok(
        FederationClient::with_interceptor(channel(endpoint)?, bearer)
            .max_decoding_message_size(64 << 20),
    )
}

/// A client that follows the global leader across `endpoints`
/// (comma-separated), retrying unavailable calls for up to `timeout`.
pub fn following(endpoints: &str, timeout: Duration) -> Result<meridian_cli::client::Client> {
    let args = meridian_cli::ConnectArgs {
        tls: tls_args(),
        token: token()?,
        ..meridian_cli::ConnectArgs::new(endpoints, timeout)
    };
    meridian_cli::client::Client::new(&args).map_err(|e| LoadError::Federation(e.to_string()))
}

/// The endpoint of the current global leader: the one a leader-following
/// client lands on after one read.
pub async fn leader(endpoints: &str) -> Result<String> {
    let mut c = following(endpoints, Duration::from_secs(30))?;
    c.call(|mut f| async move { f.list_regions(v1::ListRegionsRequest {}).await })
        .await
        .map_err(|e| LoadError::Federation(format!("finding the global leader: {e}")))?;
    // A standby serves reads, so a write decides who leads.
    let probe = v1::GetJobRequest {
        job_id: "load-leader-probe".into(),
    };
    let _ = c
        .call(|mut f| {
            let p = probe.clone();
            async move { f.get_job(p).await }
        })
        .await;
    Ok(c.endpoint().to_string())
}

/// A job of `tasks` simulated tasks lasting `duration_ms`, small enough
/// that capacity never bounds a load run (tenant `load`).
pub fn simulated_job(name: &str, tasks: u32, duration_ms: u64) -> v1::JobSpec {
    v1::JobSpec {
        name: name.to_string(),
        tenant: "load".into(),
        task_count: tasks,
        task: Some(v1::TaskTemplate {
            kind: Some(v1::task_template::Kind::Simulated(v1::Simulated {
                duration_ms,
                exit_code: 0,
            })),
        }),
        resources: Some(v1::Resources {
            cpu_millis: 10,
            memory_bytes: 1 << 20,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        ..Default::default()
    }
}

/// The request id of submit `n` of `stream` in a run seeded `seed`: the
/// same run submits the same ids.
pub fn request_id(seed: u64, stream: &str, n: u64) -> String {
    format!("load-{seed:x}-{stream}-{n}")
}
