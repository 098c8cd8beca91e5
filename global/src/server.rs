//! Assembly and lifetime of one global replica.
//!
//! Owns wiring: open the store, start the candidacy, the controller, the
//! schedules' ticker, the event logs' trimmer and the group-commit loop,
//! serve gRPC (Federation, RegionLink, health, reflection) and optionally
//! HTTP/JSON with `/metrics`, and shut all of it down gracefully (streams
//! end, the leader lease is released so a standby takes over at once). It
//! must never hold scheduling logic of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use meridian_control::lease::LeaseRuntime;
use meridian_control::net::Listener;
use meridian_control::tls::identity::{RoleKind, only};
use meridian_control::tls::stream::{HttpListener, secure_listener};
use meridian_control::{SharedClock, SystemClock};
use meridian_proto::v1::federation_server::FederationServer;
use meridian_proto::v1::region_link_server::RegionLinkServer;
use meridian_store::Database;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;

use crate::audit::Audit;
use crate::auth::grpc::AuthLayer;
use crate::auth::{Auth, Tokens};
use crate::config::GlobalConfig;
use crate::controller::Controller;
use crate::error::{GlobalError, Result};
use crate::federation::FederationService;
use crate::gate::Gate;
use crate::history::History;
use crate::jobs::Jobs;
use crate::keys::Keys;
use crate::leader::{Advertised, Leadership, Stores};
use crate::limits::Limits;
use crate::link::LinkService;
use crate::registry::Registry;
use crate::retention::Retention;
use crate::schedules::Schedules;
use crate::schedules::ticker::Ticker;
use crate::submitter::Submitter;
use crate::{http, metrics_endpoint};

/// A started replica.
pub struct Running {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address, when HTTP is served.
    pub http_addr: Option<SocketAddr>,
    /// This replica's leadership.
    pub leadership: Arc<Leadership>,
    /// The store it uses.
    pub db: Database,
    /// Its key layout.
    pub keys: Keys,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Waits until this replica leads (or the guard future decides).
    pub async fn wait_leader(&self) {
        let mut status = self.leadership.subscribe();
        while !self.leadership.is_leader() {
            if status.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops this replica abruptly, for fault-injection tests: every task
    /// (controller, ticker, trimmer, servers) is aborted wherever it is,
    /// mid-pass, without the graceful shutdown's steps, so the store is
    /// left as a crash would leave it. The lease candidacy, finding its
    /// replica gone, gives the leader lease up, so a standby takes over
    /// without waiting for it to expire (a killed process's lease expires
    /// instead: `integration/processes/global_failover.rs`).
    pub fn kill(self) {
        for task in &self.tasks {
            task.abort();
        }
    }

    /// Stops serving: streams end, in-flight calls finish, the leader lease
    /// is released.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

fn io_error(what: &str, e: impl std::fmt::Display) -> GlobalError {
    GlobalError::Store(meridian_store::StoreError::Backend(format!("{what}: {e}")))
}

/// Starts a replica on the system clock, its leader lease in the lease
/// store beside `config.store_url` and renewed on a thread of its own.
pub async fn start(config: GlobalConfig) -> Result<Running> {
    let db = meridian_store::open(&config.store_url).await?;
    let stores = Stores {
        leases: meridian_store::open_leases(&config.store_url, &db).await?,
        data: db,
        runtime: LeaseRuntime::dedicated("meridian-global-lease")
            .map_err(|e| io_error("starting the lease thread", e))?,
    };
    start_on(config, stores, SystemClock::shared()).await
}

/// Starts a replica on a given store and clock, its leader lease in that
/// store and renewed on the caller's runtime (the simulation's way: one
/// thread, one store).
pub async fn start_with(config: GlobalConfig, db: Database, clock: SharedClock) -> Result<Running> {
    let stores = Stores {
        data: db.clone(),
        leases: db,
        runtime: LeaseRuntime::inline(),
    };
    start_on(config, stores, clock).await
}

async fn start_on(config: GlobalConfig, stores: Stores, clock: SharedClock) -> Result<Running> {
    let db = stores.data.clone();
    let keys = Keys::new(&config.namespace);
    let (grpc_listener, http_listener, http_addr) = bind(&config).await?;
    let grpc_addr = grpc_listener.local_addr;
    // Installed before anything records, so every series lands in it.
    let metrics = http_listener
        .as_ref()
        .and_then(|_| metrics_endpoint::handle());
    let (shutdown_tx, shutdown) = watch::channel(false);
    let stop = {
        let mut rx = shutdown.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (leadership, elector_task) = Leadership::start(
        &stores,
        keys.clone(),
        &config,
        clock.clone(),
        Advertised {
            grpc: format!("http://{grpc_addr}"),
            http: http_addr
                .map(|a| format!("{}://{a}", config.security.scheme()))
                .unwrap_or_default(),
        },
        stop,
    );
    let (federation, link, controller) =
        services(&config, &db, &keys, &clock, &leadership, &shutdown);
    bootstrap(&config, &federation).await?;
    let ticker = Ticker::new(
        clock.clone(),
        leadership.clone(),
        federation.jobs.clone(),
        federation.schedules.clone(),
        config.schedule_hook.clone(),
    );
    let mut tasks = vec![
        elector_task,
        tokio::spawn(controller.run(shutdown.clone())),
        tokio::spawn(ticker.run(shutdown.clone())),
    ];
    let retention = Retention::new(
        db.clone(),
        keys.clone(),
        clock.clone(),
        leadership.clone(),
        config.event_retention,
    );
    tasks.push(tokio::spawn(retention.run(shutdown.clone())));
    let history = History::new(
        db.clone(),
        keys.clone(),
        clock.clone(),
        leadership.clone(),
        config.job_retention,
    );
    tasks.push(tokio::spawn(history.run(shutdown.clone())));
    tasks.push(tokio::spawn(crate::audit::trim_loop(
        federation.auth.audit.clone(),
        leadership.clone(),
        config.audit_retention,
        shutdown.clone(),
    )));
    tasks.push(serve_grpc(federation.clone(), link, grpc_listener, shutdown.clone()).await?);
    if let Some(listener) = http_listener {
        let timeouts = http::HttpTimeouts {
            header: config.http_header_timeout,
            body: config.http_body_timeout,
        };
        let console = crate::console::router(federation.clone())?;
        tasks.push(serve_http(
            federation,
            metrics,
            listener,
            timeouts,
            shutdown.clone(),
            console,
        ));
    }
    tracing::info!(%grpc_addr, ?http_addr, name = %config.name, "global replica serving");
    Ok(Running {
        grpc_addr,
        http_addr,
        leadership,
        db,
        keys,
        shutdown: shutdown_tx,
        tasks,
    })
}

/// Stores the configured bootstrap token as an admin token (once), and
/// warns when calls are not authenticated.
async fn bootstrap(config: &GlobalConfig, federation: &FederationService) -> Result<()> {
    if !config.auth_enabled {
        tracing::warn!("authentication is off (--no-auth): every caller acts as an admin");
    }
    if let Some(token) = &config.bootstrap_token
        && federation.auth.tokens.bootstrap(&token.0).await?
    {
        tracing::info!(
            token_id = crate::auth::tokens::id_of(&token.0).unwrap_or_default(),
            "bootstrap admin token stored"
        );
    }
    Ok(())
}

/// Binds the gRPC address and, when configured, the HTTP one (with the
/// address it got).
async fn bind(
    config: &GlobalConfig,
) -> Result<(Listener, Option<HttpListener>, Option<SocketAddr>)> {
    // Through the network seam, so the simulation can run this replica on
    // its simulated network; production gets plain TCP.
    let grpc_listener = meridian_control::net::listen(config.listen)
        .await
        .map_err(|e| io_error("binding the gRPC address", e))?;
    let grpc_listener = secure_listener(grpc_listener, &config.security);
    let http_listener = match config.http {
        Some(addr) => Some(
            HttpListener::bind(addr, &config.security)
                .await
                .map_err(|e| io_error("binding the HTTP address", e))?,
        ),
        None => None,
    };
    let http_addr = http_listener.as_ref().map(HttpListener::local_addr);
    Ok((grpc_listener, http_listener, http_addr))
}

/// The two gRPC services and the controller, sharing one store, clock,
/// leadership and kick.
fn services(
    config: &GlobalConfig,
    db: &Database,
    keys: &Keys,
    clock: &SharedClock,
    leadership: &Arc<Leadership>,
    shutdown: &watch::Receiver<bool>,
) -> (FederationService, LinkService, Controller) {
    let kick = Arc::new(Notify::new());
    let jobs = Jobs::new(db.clone(), keys.clone(), clock.clone(), kick.clone());
    let registry = Registry::new(db.clone(), keys.clone(), clock.clone(), config.region_lease);
    let submitter = Submitter::start(jobs.clone(), leadership.clone());
    let gate = Gate::new(db.clone(), keys.clone(), clock.clone(), kick.clone());
    let federation = FederationService {
        db: db.clone(),
        keys: keys.clone(),
        clock: clock.clone(),
        leadership: leadership.clone(),
        jobs: jobs.clone(),
        submitter,
        gate,
        schedules: Schedules::new(db.clone(), keys.clone(), clock.clone()),
        registry: registry.clone(),
        bookmark_every: config.bookmark_every,
        shutdown: shutdown.clone(),
        auth: Auth {
            tokens: Tokens::new(db.clone(), keys, clock.clone()),
            audit: Audit::new(db.clone(), keys, clock.clone()),
            enabled: config.auth_enabled,
        },
        limits: Limits::new(
            config.tenant_limits,
            db.clone(),
            keys.clone(),
            clock.clone(),
        ),
        regions: crate::admin_channels::AdminChannels::new(config.security.clone()),
    };
    let link = LinkService {
        db: db.clone(),
        keys: keys.clone(),
        clock: clock.clone(),
        leadership: leadership.clone(),
        registry,
        kick: kick.clone(),
        bookmark_every: config.bookmark_every,
        shutdown: shutdown.clone(),
        auth: federation.auth.clone(),
    };
    let controller = Controller::new(
        db.clone(),
        keys.clone(),
        clock.clone(),
        leadership.clone(),
        kick,
        config.skew_margin,
        config.controller_every,
        config.spread,
        config.quotas.clone(),
        config.seed,
    );
    (federation, link, controller)
}

/// Server reflection over this server's services. The descriptor set holds
/// every `meridian.v1` service, so the served ones are named: a client must
/// not be told of a service (RegionAdmin, AgentLink) this server does not
/// answer. Both protocol versions are served: some clients still speak
/// only `v1alpha`.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(<FederationServer<FederationService> as NamedService>::NAME)
        .with_service_name(<RegionLinkServer<LinkService> as NamedService>::NAME)
        .with_service_name(<HealthServer<HealthService> as NamedService>::NAME)
}

/// Marks the services healthy and serves gRPC until shutdown.
async fn serve_grpc(
    federation: FederationService,
    link: LinkService,
    listener: Listener,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<FederationServer<FederationService>>()
        .await;
    health.set_serving::<RegionLinkServer<LinkService>>().await;
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| io_error("building gRPC reflection", e))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| io_error("building gRPC reflection", e))?;
    let grpc = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            crate::decode_errors::rewrite,
        ))
        .layer(AuthLayer::new(federation.auth.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Under TLS, a caller's certificate names its role
        // (docs/security.md): node agents have no business with the
        // federation API, and only regions may speak RegionLink.
        .add_service(FederationServer::with_interceptor(
            federation,
            only(
                &[RoleKind::Client, RoleKind::Region, RoleKind::Global],
                "the Federation API",
            ),
        ))
        .add_service(RegionLinkServer::with_interceptor(
            link,
            only(&[RoleKind::Region], "RegionLink"),
        ));
    Ok(tokio::spawn(async move {
        let serve = grpc.serve_with_incoming_shutdown(listener.incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        if let Err(err) = serve.await {
            tracing::error!(error = %err, "gRPC server failed");
        }
    }))
}

/// Serves the HTTP/JSON API, `/metrics` and the console until shutdown.
fn serve_http(
    federation: FederationService,
    metrics: Option<PrometheusHandle>,
    listener: HttpListener,
    timeouts: http::HttpTimeouts,
    stop: watch::Receiver<bool>,
    (console, gate): (axum::Router, Arc<meridian_console::Gate>),
) -> JoinHandle<()> {
    let router = http::router(federation, metrics, Some(gate)).merge(console);
    tokio::spawn(http::serve(listener, router, timeouts, stop))
}

/// Runs a replica until `shutdown` resolves, then stops it gracefully.
/// `on_ready` is called with the bound addresses once serving.
pub async fn run(
    config: GlobalConfig,
    on_ready: impl FnOnce(SocketAddr, Option<SocketAddr>),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let running = start(config).await?;
    on_ready(running.grpc_addr, running.http_addr);
    shutdown.await;
    running.shutdown().await;
    Ok(())
}
