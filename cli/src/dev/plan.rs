//! The processes of a local federation and their command lines.
//!
//! Owns, for a [`Layout`], which `meridian` processes make a federation
//! (global replicas sharing one store; each region's scheduler replicas
//! sharing the region's store; per region one agent hosting the simulated
//! nodes and the real-process agents), their names, stores and work
//! directories under the data directory, flags and seeds, and the order in
//! which they start (global tier, regions, agents). `meridian dev` plans on
//! fixed ports from its base port, so a restart finds everything where it
//! was; the load suite plans on free ports. Both start the plan with
//! [`super::child::start_in_order`]. Each process's arguments are built by
//! [`super::line`], which alone spells a role's flags.
//!
//! Must never start or wait for anything: it only describes.

use std::net::SocketAddr;
use std::path::Path;

use super::child::ChildSpec;
use super::line::{AgentLine, GlobalLine, RegionalLine};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Replicas of the global tier.
    pub global_replicas: u16,
    /// Region names, in order.
    pub regions: Vec<String>,
    /// Scheduler replicas per region.
    pub region_replicas: u16,
    /// Shards per region.
    pub shards: u32,
    /// Simulated nodes per region, hosted by one agent process (0: none).
    pub simulated_nodes: u32,
    /// Real-process agents per region (4 cores, 8 GiB, label `real=true`).
    pub real_agents: u32,
    /// Shard lease in ms; the regional default when `None`.
    pub shard_lease_ms: Option<u64>,
}

/// An address a planned process listens on, for the caller to choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// gRPC of global replica `replica` (0-based).
    GlobalGrpc { replica: u32 },
    /// HTTP (API, console, metrics) of global replica `replica`.
    GlobalHttp { replica: u32 },
    /// gRPC of scheduler replica `replica` of region `region` (0-based).
    RegionGrpc { region: u32, replica: u32 },
    /// Metrics and console of scheduler replica `replica` of `region`.
    RegionMetrics { region: u32, replica: u32 },
}

/// What a planned process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Global,
    Regional {
        region: String,
    },
    /// `simulated`: the agent hosting the region's simulated nodes.
    Agent {
        region: String,
        simulated: bool,
    },
}

/// One process of the plan.
#[derive(Debug, Clone)]
pub struct Process {
    pub spec: ChildSpec,
    pub role: Role,
    /// Its gRPC address (global and regional replicas).
    pub grpc: Option<SocketAddr>,
    /// Its HTTP address: a global replica's API and console, a regional
    /// replica's metrics and console.
    pub http: Option<SocketAddr>,
}

impl Process {
    /// The gRPC endpoint as clients dial it.
    pub fn endpoint(&self) -> Option<String> {
        self.grpc.map(|a| format!("http://{a}"))
    }

    /// One line saying where to reach it; its gRPC and HTTP servers
    /// speak `http_scheme` (`https` under TLS), as a client such as
    /// grpcurl or a browser must dial them.
    pub fn summary(&self, simulated_nodes: u32, http_scheme: &str) -> String {
        let name = &self.spec.name;
        let s = http_scheme;
        match (&self.role, self.grpc, self.http) {
            (Role::Global, Some(grpc), Some(http)) => {
                format!("{name} grpc={s}://{grpc} http={s}://{http} console={s}://{http}/console")
            }
            (Role::Regional { .. }, Some(grpc), Some(http)) => format!(
                "{name} grpc={s}://{grpc} metrics={s}://{http}/metrics console={s}://{http}/console"
            ),
            (
                Role::Agent {
                    simulated: true, ..
                },
                _,
                _,
            ) => {
                format!("{name}: {simulated_nodes} simulated nodes")
            }
            (Role::Agent { .. }, _, _) => format!("{name}: real processes"),
            _ => name.clone(),
        }
    }
}

/// A federation's processes, tier by tier.
#[derive(Debug, Clone)]
pub struct Plan {
    pub globals: Vec<Process>,
    pub regionals: Vec<Process>,
    pub agents: Vec<Process>,
}

impl Plan {
    /// The tiers in start order.
    pub fn tiers(&self) -> [&[Process]; 3] {
        [&self.globals, &self.regionals, &self.agents]
    }

    /// Every process, in start order.
    pub fn processes_mut(&mut self) -> impl Iterator<Item = &mut Process> {
        self.globals
            .iter_mut()
            .chain(self.regionals.iter_mut())
            .chain(self.agents.iter_mut())
    }

    /// The global replicas' endpoints, comma-separated (`MERIDIAN_ENDPOINT`).
    pub fn global_endpoints(&self) -> String {
        self.globals
            .iter()
            .filter_map(Process::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn sqlite(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

/// Plans `layout` with its stores, logs and work directories under `data`;
/// `listen` chooses every address.
pub fn plan<E>(
    layout: &Layout,
    data: &Path,
    mut listen: impl FnMut(Listen) -> Result<SocketAddr, E>,
) -> Result<Plan, E> {
    let mut plan = Plan {
        globals: plan_globals(layout, data, &mut listen)?,
        regionals: Vec::new(),
        agents: Vec::new(),
    };
    let globals = plan.global_endpoints();
    for (r, region) in (0u32..).zip(&layout.regions) {
        let at = Region {
            index: r,
            name: region,
            data,
        };
        let replicas = plan_region_replicas(layout, &at, &globals, &mut listen)?;
        let endpoints: Vec<String> = replicas.iter().filter_map(Process::endpoint).collect();
        plan.regionals.extend(replicas);
        plan_agents(layout, &at, &endpoints, &mut plan.agents);
    }
    Ok(plan)
}

/// Where one region's processes go.
struct Region<'a> {
    index: u32,
    name: &'a String,
    data: &'a Path,
}

fn log(data: &Path, name: &str) -> std::path::PathBuf {
    data.join("logs").join(format!("{name}.log"))
}

fn plan_globals<E>(
    layout: &Layout,
    data: &Path,
    listen: &mut impl FnMut(Listen) -> Result<SocketAddr, E>,
) -> Result<Vec<Process>, E> {
    let mut globals = Vec::new();
    for replica in 0..u32::from(layout.global_replicas) {
        let name = format!("global-{}", replica + 1);
        let grpc = listen(Listen::GlobalGrpc { replica })?;
        let http = listen(Listen::GlobalHttp { replica })?;
        let line = GlobalLine::new(sqlite(&data.join("global.db")), grpc)
            .http(http)
            .name(name.clone());
        globals.push(Process {
            spec: ChildSpec {
                args: line.args(),
                ready: Some("meridian global: serving"),
                log: log(data, &name),
                name,
            },
            role: Role::Global,
            grpc: Some(grpc),
            http: Some(http),
        });
    }
    Ok(globals)
}

fn plan_region_replicas<E>(
    layout: &Layout,
    at: &Region<'_>,
    globals: &str,
    listen: &mut impl FnMut(Listen) -> Result<SocketAddr, E>,
) -> Result<Vec<Process>, E> {
    let (r, region) = (at.index, at.name);
    let store = sqlite(&at.data.join("regions").join(format!("{region}.db")));
    let mut replicas = Vec::new();
    for replica in 0..u32::from(layout.region_replicas) {
        let name = format!("{region}-{}", replica + 1);
        let grpc = listen(Listen::RegionGrpc { region: r, replica })?;
        let metrics = listen(Listen::RegionMetrics { region: r, replica })?;
        let mut line = RegionalLine::new(region.clone(), store.clone(), grpc, layout.shards)
            .global(globals)
            .metrics_listen(metrics)
            .replica(name.clone())
            .seed(u64::from(r * 100 + replica));
        line.shard_lease_ms = layout.shard_lease_ms;
        replicas.push(Process {
            spec: ChildSpec {
                args: line.args(),
                ready: Some("listening on"),
                log: log(at.data, &name),
                name,
            },
            role: Role::Regional {
                region: region.clone(),
            },
            grpc: Some(grpc),
            http: Some(metrics),
        });
    }
    Ok(replicas)
}

/// The region's agents, appended to `agents` (every agent so far, so seeds
/// and first replicas differ across the whole plan).
fn plan_agents(layout: &Layout, at: &Region<'_>, endpoints: &[String], agents: &mut Vec<Process>) {
    let region = at.name;
    // `simulate`: how many simulated nodes the agent hosts; a real node
    // when `None`. `cpu` and `memory` are per node.
    let mut agent = |name: String, simulate: Option<u32>, cpu: f64, memory: u64, labels: String| {
        // Every replica of the region, starting at a different one per
        // agent: the agent moves on when one dies and follows each shard
        // leader's hint, so no replica is a single point of loss.
        let first = agents.len() % endpoints.len().max(1);
        let order = endpoints[first..]
            .iter()
            .chain(&endpoints[..first])
            .cloned()
            .collect();
        let work_dir = at.data.join("agents").join(&name);
        let mut line = AgentLine::new(order, name.clone(), work_dir, cpu, memory)
            .seed(u64::from(at.index * 100 + agents.len() as u32))
            .labels(labels);
        line.simulate = simulate;
        agents.push(Process {
            spec: ChildSpec {
                args: line.args(),
                ready: None,
                log: log(at.data, &name),
                name,
            },
            role: Role::Agent {
                region: region.clone(),
                simulated: simulate.is_some(),
            },
            grpc: None,
            http: None,
        });
    };
    if layout.simulated_nodes > 0 {
        agent(
            format!("{region}-sim"),
            Some(layout.simulated_nodes),
            8.0,
            32 << 30,
            format!("zone={region}-a"),
        );
    }
    for k in 0..layout.real_agents {
        agent(
            format!("{region}-node-{}", k + 1),
            None,
            4.0,
            8 << 30,
            format!("zone={region}-b,real=true"),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;

    fn layout() -> Layout {
        Layout {
            global_replicas: 2,
            regions: vec!["a".into(), "b".into()],
            region_replicas: 2,
            shards: 4,
            simulated_nodes: 10,
            real_agents: 1,
            shard_lease_ms: Some(1_000),
        }
    }

    fn numbered() -> impl FnMut(Listen) -> Result<SocketAddr, Infallible> {
        let mut next = 9_000u16;
        move |_| {
            next += 1;
            Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, next)))
        }
    }

    #[test]
    fn every_region_gets_its_replicas_a_simulated_agent_and_its_real_agents_on_one_store() {
        let plan = plan(&layout(), Path::new("/d"), numbered()).expect("plan");
        assert_eq!(plan.globals.len(), 2);
        assert_eq!(plan.regionals.len(), 4);
        assert_eq!(plan.agents.len(), 4);
        let stores: Vec<&String> = plan
            .regionals
            .iter()
            .filter(|p| p.role == Role::Regional { region: "a".into() })
            .map(|p| &p.spec.args[6])
            .collect();
        assert_eq!(stores, ["sqlite:/d/regions/a.db", "sqlite:/d/regions/a.db"]);
        assert!(
            plan.regionals
                .iter()
                .all(|p| p.spec.args[4] == plan.global_endpoints())
        );
        assert!(
            plan.regionals[0]
                .spec
                .args
                .ends_with(&["--shard-lease-ms".into(), "1000".into()])
        );
    }

    #[test]
    fn agents_of_a_region_start_at_different_replicas_and_have_distinct_seeds() {
        let plan = plan(&layout(), Path::new("/d"), numbered()).expect("plan");
        let first_replica = |p: &Process| p.spec.args[2].split(',').next().map(str::to_string);
        let (sim, real) = (&plan.agents[0], &plan.agents[1]);
        assert_ne!(first_replica(sim), first_replica(real));
        let seeds: std::collections::BTreeSet<&String> =
            plan.agents.iter().map(|p| &p.spec.args[8]).collect();
        assert_eq!(seeds.len(), plan.agents.len());
        assert!(sim.spec.args.contains(&"--simulate".to_string()));
        assert!(real.spec.args.iter().any(|a| a.contains("real=true")));
    }
}
