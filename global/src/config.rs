//! Configuration of one global replica.
//!
//! Owns the knobs and their defaults (lease lengths chosen for a failover
//! under 3 s). It must never read the environment or the command line: the
//! binary does that and fills this in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use meridian_control::tls::Security;

use crate::limits::TenantLimits;
use crate::router::{RegionSpread, TenantQuota};
use crate::schedules::ticker::StageHook;

/// Configuration of one replica of the global tier.
#[derive(Debug, Clone)]
pub struct GlobalConfig {
    /// Store URL (`sqlite:PATH`, `sqlite::memory:`, `fdb:CLUSTER_FILE`).
    pub store_url: String,
    /// gRPC listen address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// HTTP/JSON listen address, if the HTTP API is wanted.
    pub http: Option<SocketAddr>,
    /// Stable replica name (the lease holder's name).
    pub name: String,
    /// Namespace of the keys in the store (several deployments can share
    /// one store under different namespaces).
    pub namespace: String,
    /// Global leader lease length.
    pub leader_lease: Duration,
    /// Part of the leader lease the leader never uses (clock-rate margin).
    pub leader_safety_margin: Duration,
    /// Region lease length granted to region link leaders.
    pub region_lease: Duration,
    /// Extra wait after a region lease expired before its jobs move.
    pub skew_margin: Duration,
    /// Period of the leader's controller pass (routing, loss detection).
    pub controller_every: Duration,
    /// Period of bookmark events on idle streams.
    pub bookmark_every: Duration,
    /// How long job and assignment events are kept before the leader trims
    /// them; a watch resuming from a trimmed cursor gets OUT_OF_RANGE.
    /// Must be longer than zero.
    pub event_retention: Duration,
    /// How long a finished job (SUCCEEDED, FAILED, CANCELLED) is kept
    /// before the leader removes it with its records (`history.rs`); GetJob
    /// of it then answers NOT_FOUND saying so. Must be longer than zero.
    pub job_retention: Duration,
    /// How jobs spread over regions.
    pub spread: RegionSpread,
    /// Per-tenant quotas and fair-share weights; absent tenants get weight 1
    /// and no cap.
    pub quotas: BTreeMap<String, TenantQuota>,
    /// Seed of every random choice of this replica.
    pub seed: u64,
    /// Time an HTTP client has to send a request's headers before its
    /// connection is closed.
    pub http_header_timeout: Duration,
    /// Time an HTTP client has to send a request's body once its headers
    /// are in before it is answered 408 and its connection closed.
    pub http_body_timeout: Duration,
    /// Awaited at each stage of a schedule's tick: a fault-injection test's
    /// way to stop a replica at an exact point. None in production.
    pub schedule_hook: Option<StageHook>,
    /// TLS on the gRPC and HTTP servers and on calls to regions
    /// ([`Security::Insecure`] in [`GlobalConfig::new`]: in-process tests
    /// and the simulation; the `meridian global` binary needs TLS files or
    /// `--insecure`).
    pub security: Security,
    /// Whether calls need a bearer token (`auth`). Off in [`GlobalConfig::new`]
    /// (in-process tests and the simulation); the `meridian global` binary
    /// turns it on unless started with `--no-auth`.
    pub auth_enabled: bool,
    /// A token stored as the first admin token at start (unless its id is
    /// stored already): how a new deployment gets its first admin.
    pub bootstrap_token: Option<crate::auth::Secret>,
    /// Per-tenant submit rate and queued-jobs cap.
    pub tenant_limits: TenantLimits,
    /// How long audit records are kept before the leader trims them.
    pub audit_retention: Duration,
}

impl GlobalConfig {
    /// Defaults for a replica serving gRPC on `listen` over `store_url`.
    pub fn new(store_url: impl Into<String>, listen: SocketAddr) -> Self {
        GlobalConfig {
            store_url: store_url.into(),
            listen,
            http: None,
            name: "global".to_string(),
            namespace: "default".to_string(),
            leader_lease: Duration::from_millis(2000),
            leader_safety_margin: Duration::from_millis(400),
            region_lease: Duration::from_secs(30),
            skew_margin: Duration::from_secs(2),
            controller_every: Duration::from_millis(100),
            bookmark_every: Duration::from_secs(5),
            event_retention: Duration::from_secs(7 * 24 * 3600),
            job_retention: Duration::from_secs(7 * 24 * 3600),
            spread: RegionSpread::Spread,
            quotas: BTreeMap::new(),
            seed: 0,
            http_header_timeout: Duration::from_secs(10),
            http_body_timeout: Duration::from_secs(10),
            schedule_hook: None,
            security: Security::Insecure,
            auth_enabled: false,
            bootstrap_token: None,
            tenant_limits: TenantLimits::default(),
            audit_retention: Duration::from_secs(90 * 24 * 3600),
        }
    }
}
