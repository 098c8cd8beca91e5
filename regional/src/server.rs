//! `meridian regional`: one replica of a region scheduler.
//!
//! Owns wiring and lifetime: open the region store, make the shard layout
//! match the configured count, run the shard manager (placement loops and
//! sweeps for the shards it wins), serve `AgentLink` and `RegionAdmin` over
//! gRPC (with server reflection) and Prometheus metrics over HTTP, run the
//! link to the global tier when one is configured, and shut all of it down
//! gracefully: shards are given away fence-first, so a standby takes over at
//! once. Must never hold scheduling logic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_control::lease::{Identity, LeaseRuntime};
use meridian_control::net::Listener;
use meridian_control::tls::Security;
use meridian_control::tls::identity::{RoleKind, only};
use meridian_control::tls::stream::{HttpListener, secure_listener};
use meridian_control::{SharedClock, SystemClock};
use meridian_proto::v1::agent_link_server::AgentLinkServer;
use meridian_proto::v1::region_admin_server::RegionAdminServer;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::server::NamedService;

use crate::agent::{AgentApiConfig, ApiParts, RegionApi};
use crate::error::{RegionalError, Result};
use crate::link::{LinkConfig, LinkCtx};
use crate::model::Keys;
use crate::placer::sweep::LivenessConfig;
use crate::placer::{Placer, PlacerConfig, PlacerCtx};
use crate::replica::DataPath;
use crate::shard::{Leading, ManagerConfig, ShardManager, ensure_layout};

/// Configuration of one replica.
#[derive(Debug, Clone)]
pub struct Config {
    pub region: String,
    /// Global tier endpoint; `None` runs the region standalone (work is
    /// given to it through [`crate::jobs::insert_job`]).
    pub global: Option<String>,
    /// Store URL (`sqlite:PATH`, `fdb:CLUSTER_FILE`).
    pub store: String,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub shards: u32,
    /// Stable replica name.
    pub replica: String,
    pub shard_lease: Duration,
    pub heartbeat_interval: Duration,
    /// Heartbeats per second the region accepts at most; larger regions
    /// tell their nodes to beat more slowly (see `agent::beat_every`).
    pub max_heartbeats_per_second: u32,
    pub node_timeout: Duration,
    pub node_grace: Duration,
    pub seed: u64,
    /// Renew leases on a thread and runtime of their own (production). The
    /// simulation runs everything on its one thread and turns this off.
    pub dedicated_lease_thread: bool,
    /// How long tombstones of retired jobs are kept (see `link::compact`).
    pub tombstone_retention: Duration,
    /// TLS on the gRPC and HTTP servers and on the calls this replica makes
    /// (to the global tier, to agents' log servers). Plain in
    /// [`Config::new`]; the `meridian region` binary needs TLS files or
    /// `--insecure`.
    pub security: Security,
}

impl Config {
    /// Defaults for everything but the required flags.
    pub fn new(region: &str, store: &str, listen: SocketAddr, shards: u32) -> Self {
        Config {
            region: region.to_string(),
            global: None,
            store: store.to_string(),
            listen,
            metrics_listen: None,
            shards,
            replica: format!("{region}-{}", std::process::id()),
            shard_lease: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(1),
            max_heartbeats_per_second: AgentApiConfig::default().max_heartbeats_per_second,
            node_timeout: Duration::from_secs(5),
            node_grace: Duration::from_secs(10),
            seed: 0,
            dedicated_lease_thread: true,
            tombstone_retention: crate::link::compact::DEFAULT_TOMBSTONE_RETENTION,
            security: Security::Insecure,
        }
    }
}

/// Server reflection over this server's services. The descriptor set holds
/// every `meridian.v1` service, so the served ones are named: a client must
/// not be told of a service (Federation, RegionLink) this server does not
/// answer. Both protocol versions are served: some clients still speak
/// only `v1alpha`.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
        .with_service_name(<AgentLinkServer<RegionApi> as NamedService>::NAME)
        .with_service_name(<RegionAdminServer<RegionApi> as NamedService>::NAME)
}

/// The replica's API services, each open to the role that may call it:
/// under TLS a caller's certificate names its role (docs/security.md), so
/// only node agents speak AgentLink and only the global tier calls
/// RegionAdmin. Served on a [`meridian_control::tls::stream::secure_listener`].
pub fn api_router(api: RegionApi) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .add_service(AgentLinkServer::with_interceptor(
            api.clone(),
            only(&[RoleKind::Agent], "AgentLink"),
        ))
        .add_service(RegionAdminServer::with_interceptor(
            api,
            only(&[RoleKind::Global], "RegionAdmin"),
        ))
}

fn server_error(e: impl std::fmt::Display) -> RegionalError {
    RegionalError::Store(meridian_store::StoreError::Backend(e.to_string()))
}

/// Runs one replica until `shutdown` resolves, then stops gracefully.
/// Prints `listening on ADDR` (and `metrics on ADDR`) once serving.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    if config.region.is_empty() {
        return Err(RegionalError::invalid("region", "must not be empty"));
    }
    let db = meridian_store::open(&config.store).await?;
    let lease_store = meridian_store::open_leases(&config.store, &db).await?;
    let stores = Stores {
        data: db,
        leases: lease_store,
    };
    run_with(config, stores, SystemClock::shared(), shutdown).await
}

/// The stores a replica works on.
#[derive(Clone)]
pub struct Stores {
    /// The region's records.
    pub data: meridian_store::Database,
    /// The region's lease records (`meridian_store::open_leases`).
    pub leases: meridian_store::Database,
}

impl Stores {
    /// Leases kept beside the data, in one store.
    pub fn single(db: meridian_store::Database) -> Self {
        Stores {
            data: db.clone(),
            leases: db,
        }
    }
}

/// [`run`] on given stores and clock (`config.store` is not opened): the
/// simulation shares one store among a region's replicas and drives time.
pub async fn run_with(
    config: Config,
    stores: Stores,
    clock: SharedClock,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let Stores {
        data: db,
        leases: lease_store,
    } = stores;
    if config.region.is_empty() {
        return Err(RegionalError::invalid("region", "must not be empty"));
    }
    let keys = Keys::new(&config.region);
    let identity = Identity::new_boot(config.replica.clone());
    let layout = ensure_layout(&db, &keys, config.shards).await?;
    tracing::info!(region = %config.region, shards = layout.count, generation = layout.generation, replica = %identity, "region replica starting");
    let leases = if config.dedicated_lease_thread {
        LeaseRuntime::dedicated("meridian-leases").map_err(server_error)?
    } else {
        LeaseRuntime::inline()
    };

    // Through the network seam, so the simulation can run this replica on
    // its simulated network; production gets plain TCP.
    let listener = meridian_control::net::listen(config.listen)
        .await
        .map_err(server_error)?;
    let listener = secure_listener(listener, &config.security);
    let local = listener.local_addr;
    // gRPC endpoints are spelled `http://` whatever the security: the
    // configured TLS decides how they are dialled, and one spelling keeps
    // leader hints equal to the endpoints agents were given.
    let endpoint = format!("http://{local}");

    // The recorder goes in before any elector runs, so the lease
    // transitions of the first shard terms are counted, not lost.
    let prometheus = match config.metrics_listen {
        Some(_) => Some(install_recorder()?),
        None => None,
    };

    let path = DataPath::start(
        db.clone(),
        keys.clone(),
        clock.clone(),
        &identity.to_string(),
    )
    .await?;
    let wiring = Wiring {
        db,
        lease_store,
        keys,
        clock,
        identity,
        leases,
        endpoint,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks = wiring
        .start(&config, &path, listener, prometheus, &stop_rx)
        .await?;

    shutdown.await;
    tracing::info!("shutting down: giving shards away");
    let _ = stop_tx.send(true);
    tasks.stop().await;
    drop(path);
    Ok(())
}

/// What the parts of a replica share.
struct Wiring {
    db: meridian_store::Database,
    lease_store: meridian_store::Database,
    keys: Keys,
    clock: SharedClock,
    identity: Identity,
    leases: LeaseRuntime,
    /// This replica's gRPC endpoint, as others reach it.
    endpoint: String,
}

impl Wiring {
    /// Starts the shard manager, the gRPC and metrics servers, the link and
    /// the background upkeep, all stopping when `stop` flips.
    async fn start(
        &self,
        config: &Config,
        path: &DataPath,
        listener: Listener,
        prometheus: Option<PrometheusHandle>,
        stop_rx: &watch::Receiver<bool>,
    ) -> Result<Tasks> {
        let manager = self.shard_manager(config, path);
        let leading = manager.leading();
        let api = self.api(config, path, leading.clone());
        let pruner = tokio::spawn(path.streams.clone().keep_pruned(
            path.state.clone(),
            leading.clone(),
            self.clock.clone(),
        ));

        let console = crate::console::ConsoleDeps {
            api: api.clone(),
            replica: config.replica.clone(),
            global: config.global.clone(),
        };
        let manager_task = tokio::spawn(manager.run(stopped(stop_rx.clone())));
        let grpc = api_router(api)
            .add_service(reflection().build_v1().map_err(server_error)?)
            .add_service(reflection().build_v1alpha().map_err(server_error)?)
            .serve_with_incoming_shutdown(listener.incoming, stopped(stop_rx.clone()));
        let grpc_task = tokio::spawn(grpc);
        println!("listening on {}", listener.local_addr);

        let metrics_task = match (config.metrics_listen, prometheus) {
            (Some(addr), Some(handle)) => Some(
                spawn_metrics(
                    addr,
                    &config.security,
                    handle,
                    console,
                    stopped(stop_rx.clone()),
                )
                .await?,
            ),
            _ => None,
        };
        let link_task = self.spawn_link(config, path, stop_rx);
        let shards_gauge = spawn_shards_gauge(leading, self.clock.clone(), stop_rx.clone());
        Ok(Tasks {
            manager: manager_task,
            link: link_task,
            grpc: grpc_task,
            metrics: metrics_task,
            shards_gauge,
            pruner,
        })
    }

    /// The shard manager, with the placer it runs for each shard it wins.
    fn shard_manager(&self, config: &Config, path: &DataPath) -> ShardManager {
        let placer = Placer::new(PlacerCtx {
            solver: Arc::new(crate::placement::solve),
            pipeline: path.pipeline.clone(),
            state: path.state.clone(),
            tailer: path.tailer.clone(),
            beats: path.beats.clone(),
            clock: self.clock.clone(),
            config: PlacerConfig {
                liveness: LivenessConfig {
                    suspect_after: config.node_timeout,
                    dead_after: config.node_timeout + config.node_grace,
                    exclusive_wait: config.node_timeout,
                },
                seed: config.seed,
                // Under a global tier the region places only while it holds
                // its lease there and has caught up with its assignments.
                requires_region_lease: config.global.is_some(),
                ..PlacerConfig::default()
            },
        });
        ShardManager::new(
            self.db.clone(),
            self.keys.clone(),
            self.clock.clone(),
            self.identity.clone(),
            ManagerConfig {
                replica: config.replica.clone(),
                endpoint: self.endpoint.clone(),
                lease: config.shard_lease,
                safety_margin: config.shard_lease / 10,
                seed: config.seed,
                leases: self.leases.clone(),
                lease_store: self.lease_store.clone(),
            },
            placer,
        )
    }

    /// The `AgentLink` and `RegionAdmin` services.
    fn api(&self, config: &Config, path: &DataPath, leading: Leading) -> RegionApi {
        RegionApi::new(ApiParts {
            db: self.db.clone(),
            lease_store: self.lease_store.clone(),
            keys: self.keys.clone(),
            clock: self.clock.clone(),
            region: config.region.clone(),
            identity: self.identity.clone(),
            leading,
            config: AgentApiConfig {
                heartbeat_interval: config.heartbeat_interval,
                max_heartbeats_per_second: config.max_heartbeats_per_second,
                node_timeout: config.node_timeout + config.node_grace,
                ..AgentApiConfig::default()
            },
            pipeline: path.pipeline.clone(),
            state: path.state.clone(),
            beats: path.beats.clone(),
            streams: path.streams.clone(),
        })
        .with_security(config.security.clone())
    }

    /// The link to the global tier, when one is configured.
    fn spawn_link(
        &self,
        config: &Config,
        path: &DataPath,
        stop: &watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        config.global.clone().map(|global| {
            tokio::spawn(crate::link::run(
                LinkCtx {
                    db: self.db.clone(),
                    keys: self.keys.clone(),
                    clock: self.clock.clone(),
                    identity: self.identity.clone(),
                    pipeline: path.pipeline.clone(),
                    state: path.state.clone(),
                    leases: self.leases.clone(),
                    lease_store: self.lease_store.clone(),
                },
                LinkConfig {
                    region: config.region.clone(),
                    global,
                    replica: config.replica.clone(),
                    endpoint: self.endpoint.clone(),
                    lease: config.shard_lease * 2,
                    report_every: Duration::from_secs(1),
                    tombstone_retention: config.tombstone_retention,
                    security: config.security.clone(),
                },
                stopped(stop.clone()),
            ))
        })
    }
}

/// A serving replica's tasks.
struct Tasks {
    manager: JoinHandle<()>,
    link: Option<JoinHandle<()>>,
    grpc: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    metrics: Option<JoinHandle<()>>,
    shards_gauge: JoinHandle<()>,
    pruner: JoinHandle<()>,
}

impl Tasks {
    /// Waits, once stop was sent, for the shards to be given away and the
    /// link and servers to end; the upkeep tasks are simply aborted.
    async fn stop(self) {
        let _ = self.manager.await;
        if let Some(t) = self.link {
            let _ = t.await;
        }
        if let Ok(Err(e)) = self.grpc.await {
            tracing::warn!(error = %e, "gRPC server ended with an error");
        }
        if let Some(t) = self.metrics {
            let _ = t.await;
        }
        self.shards_gauge.abort();
        self.pruner.abort();
    }
}

/// Resolves once `true` is sent on the stop channel.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Keeps the shards-led gauge current until the replica stops.
fn spawn_shards_gauge(
    leading: Leading,
    clock: SharedClock,
    rx: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !*rx.borrow() {
            crate::metrics::shards_led(leading.lock().len());
            clock.sleep(Duration::from_millis(500)).await;
        }
    })
}

/// Installs the process's Prometheus recorder and shows the rare-event
/// series at zero.
fn install_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(server_error)?;
    crate::metrics::register_series();
    Ok(handle)
}

async fn spawn_metrics(
    addr: SocketAddr,
    security: &Security,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    console: crate::console::ConsoleDeps,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>> {
    let handle = Arc::new(handle);
    let console = crate::console::router(console, Some(handle.clone())).map_err(server_error)?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .merge(console);
    let listener = HttpListener::bind(addr, security)
        .await
        .map_err(server_error)?;
    println!("metrics on {}", listener.local_addr());
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics server ended with an error");
        }
    }))
}
