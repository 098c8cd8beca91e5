//! The processes of the simulated federation: what each host runs.
//!
//! Owns starting a global replica, a region replica and an agent node on a
//! `turmoil` host, each on its own [`SimClock`], its store handle (the
//! tier's shared store, behind the process's pause gate) and the real
//! product code. A host's software ends only when the simulation crashes
//! it. Must never hold product logic.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use meridian_agent::exec::simulated::SimulatedExecutor;
use meridian_agent::{AgentOptions, Host, NodeSpec, Probe};
use meridian_store::{Backend, Database, RetryOptions};

use crate::clock::SimClock;
use crate::exec::{RecordingExecutor, Running};
use crate::gate::PauseGate;
use crate::history::Recorder;

/// Port every global replica serves gRPC on.
pub const GLOBAL_PORT: u16 = 7000;
/// Port every region replica serves gRPC on.
pub const REGION_PORT: u16 = 7100;

/// What one process needs besides its name.
#[derive(Clone)]
pub struct Process {
    pub name: String,
    pub store: Arc<dyn Backend>,
    pub gate: PauseGate,
    pub skew_ms: Arc<AtomicI64>,
    pub seed: u64,
}

impl Process {
    fn db(&self) -> Database {
        Database::with_options(
            self.gate.wrap(self.store.clone()),
            RetryOptions::default(),
            self.seed,
        )
    }
}

type HostResult = Result<(), Box<dyn std::error::Error>>;

fn own_addr(name: &str, port: u16) -> SocketAddr {
    let ip: IpAddr = turmoil::lookup(name);
    SocketAddr::new(ip, port)
}

/// A global replica, until crashed.
pub async fn global(p: Process, lease: Duration, region_lease: Duration) -> HostResult {
    let mut config = meridian_global::GlobalConfig::new("memory:", own_addr(&p.name, GLOBAL_PORT));
    config.name = p.name.clone();
    config.seed = p.seed;
    config.leader_lease = lease;
    config.leader_safety_margin = lease / 5;
    config.region_lease = region_lease;
    config.skew_margin = Duration::from_secs(1);
    let clock = SimClock::shared(p.skew_ms.clone(), p.gate.clone());
    let db = p.db().with_clock(clock.clone());
    match meridian_global::server::start_with(config, db, clock).await {
        Ok(_running) => std::future::pending::<()>().await,
        Err(e) => tracing::error!(error = %e, host = %p.name, "global replica did not start"),
    }
    Ok(())
}

/// A region replica, until crashed.
pub async fn regional(p: Process, region: String, globals: String, shards: u32) -> HostResult {
    let mut config = meridian_regional::server::Config::new(
        &region,
        "memory:",
        own_addr(&p.name, REGION_PORT),
        shards,
    );
    config.global = Some(globals);
    config.replica = p.name.clone();
    config.seed = p.seed;
    config.shard_lease = Duration::from_secs(1);
    config.heartbeat_interval = Duration::from_millis(500);
    config.node_timeout = Duration::from_secs(3);
    config.node_grace = Duration::from_secs(2);
    // One thread only: a lease thread of its own would escape the seed.
    config.dedicated_lease_thread = false;
    let clock = SimClock::shared(p.skew_ms.clone(), p.gate.clone());
    let db = p.db().with_clock(clock.clone());
    if let Err(e) = meridian_regional::server::run_with(
        config,
        meridian_regional::server::Stores::single(db),
        clock,
        std::future::pending(),
    )
    .await
    {
        tracing::error!(error = %e, host = %p.name, "region replica ended");
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// Capacity of every simulated node.
pub fn node_capacity() -> meridian_proto::v1::Resources {
    meridian_proto::v1::Resources {
        // Room for every job of a run at once, so a job waits only for
        // faults, never for capacity, and convergence has a bound.
        cpu_millis: 16_000,
        memory_bytes: 32 << 30,
        ..Default::default()
    }
}

/// The node id an agent host gets.
pub fn node_id(host: &str) -> String {
    NodeSpec {
        node_id: host.to_string(),
        allocatable: node_capacity(),
        labels: Default::default(),
        zone: String::new(),
        rack: String::new(),
    }
    .simulated(0)
    .node_id
}

/// One agent node, until crashed.
pub async fn agent(
    p: Process,
    regions: String,
    recorder: Recorder,
    running: Running,
) -> HostResult {
    let spec = NodeSpec {
        node_id: p.name.clone(),
        allocatable: node_capacity(),
        labels: Default::default(),
        zone: format!("z{}", p.seed % 2),
        rack: String::new(),
    };
    let clock = SimClock::shared(p.skew_ms.clone(), p.gate.clone());
    let node = node_id(&p.name);
    // A crash ended every task of the previous boot (they live in the
    // process); the harness recorded their stops.
    running.lock().clear();
    let executor = Arc::new(RecordingExecutor::new(
        SimulatedExecutor::new(clock.clone(), Some(Duration::from_secs(1))),
        &node,
        recorder,
        running,
    ));
    let opts = AgentOptions {
        seed: p.seed,
        ..AgentOptions::default()
    };
    match Host::simulated_with(
        &regions,
        &spec,
        1,
        opts,
        clock,
        Arc::new(Probe::default()),
        executor,
    ) {
        Ok(mut host) => host.join().await,
        Err(e) => tracing::error!(error = %e, host = %p.name, "agent did not start"),
    }
    std::future::pending::<()>().await;
    Ok(())
}
