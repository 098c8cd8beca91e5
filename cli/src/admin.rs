//! `meridian region ...` and `meridian node ...`: operator commands.
//!
//! Owns listing and draining regions, and listing, cordoning and draining
//! nodes (the global tier forwards node calls to the region). Must never
//! talk to a region directly: everything goes through the federation API.

use meridian_proto::v1::{
    CordonNodeRequest, DrainNodeRequest, DrainRegionRequest, ListNodesRequest, ListRegionsRequest,
    NodeInfo, NodeState, RegionInfo, RegionState, UncordonNodeRequest, UndrainRegionRequest,
};

use crate::client::{Client, ConnectArgs};
use crate::error::Result;
use crate::render::{self, Output, OutputArgs};

/// `meridian region`.
#[derive(Debug, clap::Args)]
pub struct RegionArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: RegionCommand,
}

/// The region subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RegionCommand {
    /// List the regions with their state, capacity and load.
    List,
    /// Stop routing new jobs to a region (and with --evacuate move its jobs away).
    Drain {
        /// The region.
        region: String,
        /// Why, for the record.
        #[arg(long, default_value = "drained from the command line")]
        reason: String,
        /// Also move the region's unfinished jobs to other regions.
        #[arg(long)]
        evacuate: bool,
    },
    /// End a region drain.
    Undrain {
        /// The region.
        region: String,
    },
}

/// `meridian node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: NodeCommand,
}

/// The node subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// List a region's nodes.
    List {
        /// The region.
        #[arg(long, short = 'r')]
        region: String,
        /// At most this many nodes.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Stop placing new tasks on a node.
    Cordon {
        /// The node.
        node: String,
        /// Its region.
        #[arg(long, short = 'r')]
        region: String,
        /// Why, for the record.
        #[arg(long, default_value = "cordoned from the command line")]
        reason: String,
    },
    /// Allow placing tasks on a node again.
    Uncordon {
        /// The node.
        node: String,
        /// Its region.
        #[arg(long, short = 'r')]
        region: String,
    },
    /// Cordon a node and move its tasks elsewhere.
    Drain {
        /// The node.
        node: String,
        /// Its region.
        #[arg(long, short = 'r')]
        region: String,
        /// Why, for the record.
        #[arg(long, default_value = "drained from the command line")]
        reason: String,
        /// Kill a task still running this long after being asked to stop (0: the job's own grace).
        #[arg(long, default_value_t = 0)]
        deadline_ms: u64,
    },
}

/// Runs `meridian region ...`.
pub async fn region(args: RegionArgs) -> Result<()> {
    let mut client = Client::new(&args.connect)?;
    let output = args.output.output;
    let regions = match args.command {
        RegionCommand::List => {
            client
                .call(|mut c| async move { c.list_regions(ListRegionsRequest {}).await })
                .await?
                .regions
        }
        RegionCommand::Drain {
            region,
            reason,
            evacuate,
        } => {
            let request = DrainRegionRequest {
                region,
                reason,
                evacuate,
            };
            let r = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.drain_region(r).await }
                })
                .await?;
            r.region.into_iter().collect()
        }
        RegionCommand::Undrain { region } => {
            let request = UndrainRegionRequest { region };
            let r = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.undrain_region(r).await }
                })
                .await?;
            r.region.into_iter().collect()
        }
    };
    print_regions(output, &regions)
}

fn print_regions(output: Output, regions: &[RegionInfo]) -> Result<()> {
    if output == Output::Json {
        let items = regions
            .iter()
            .map(|r| render::to_json("RegionInfo", r))
            .collect::<Result<Vec<_>>>()?;
        return render::print_json(&serde_json::json!({ "regions": items }));
    }
    let mut t = render::table(&[
        "REGION", "STATE", "DRAIN", "JOBS", "NODES", "CPU FREE", "MEM FREE", "LEADER", "ADMIN",
    ]);
    for r in regions {
        let state = RegionState::try_from(r.state)
            .map(|s| render::short(s.as_str_name(), "REGION_STATE_"))
            .unwrap_or_else(|_| r.state.to_string());
        let drain = match (r.draining, r.evacuating) {
            (false, _) => "-".to_string(),
            (true, false) => "draining".to_string(),
            (true, true) => "evacuating".to_string(),
        };
        let cap = r.capacity.clone().unwrap_or_default();
        let cpu_free = cap
            .cpu_millis_allocatable
            .saturating_sub(cap.cpu_millis_allocated);
        let mem_free = cap
            .memory_bytes_allocatable
            .saturating_sub(cap.memory_bytes_allocated);
        t.add_row(vec![
            r.name.clone(),
            state,
            drain,
            r.assigned_jobs.to_string(),
            format!("{}/{}", cap.nodes_ready, cap.nodes_total),
            format!(
                "{}/{}",
                render::cores(cpu_free),
                render::cores(cap.cpu_millis_allocatable)
            ),
            format!(
                "{}/{}",
                render::bytes(mem_free),
                render::bytes(cap.memory_bytes_allocatable)
            ),
            r.leader
                .as_ref()
                .map(|l| l.replica_id.clone())
                .unwrap_or_else(|| "-".into()),
            r.admin_endpoint.clone(),
        ]);
    }
    render::print_table(&t);
    Ok(())
}

/// Runs `meridian node ...`.
pub async fn node(args: NodeArgs) -> Result<()> {
    let mut client = Client::new(&args.connect)?;
    let output = args.output.output;
    let nodes = match args.command {
        NodeCommand::List { region, limit } => list_nodes(&mut client, &region, limit).await?,
        NodeCommand::Cordon {
            node,
            region,
            reason,
        } => {
            let request = CordonNodeRequest {
                region,
                node_id: node,
                reason,
            };
            let r = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.cordon_node(r).await }
                })
                .await?;
            r.node.into_iter().collect()
        }
        NodeCommand::Uncordon { node, region } => {
            let request = UncordonNodeRequest {
                region,
                node_id: node,
            };
            let r = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.uncordon_node(r).await }
                })
                .await?;
            r.node.into_iter().collect()
        }
        NodeCommand::Drain {
            node,
            region,
            reason,
            deadline_ms,
        } => {
            let request = DrainNodeRequest {
                region,
                node_id: node,
                reason,
                deadline_ms,
            };
            let r = client
                .call(|mut c| {
                    let r = request.clone();
                    async move { c.drain_node(r).await }
                })
                .await?;
            r.node.into_iter().collect()
        }
    };
    print_nodes(output, &nodes)
}

/// Lists up to `limit` nodes of `region`, page by page.
async fn list_nodes(client: &mut Client, region: &str, limit: usize) -> Result<Vec<NodeInfo>> {
    let mut nodes = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListNodesRequest {
            region: region.to_string(),
            page_size: (limit - nodes.len()).clamp(1, 1000) as u32,
            page_token: page_token.clone(),
            ..ListNodesRequest::default()
        };
        let page = client
            .call(|mut c| {
                let r = request.clone();
                async move { c.list_nodes(r).await }
            })
            .await?;
        nodes.extend(page.nodes);
        page_token = page.next_page_token;
        if page_token.is_empty() || nodes.len() >= limit {
            break;
        }
    }
    nodes.truncate(limit);
    Ok(nodes)
}

fn print_nodes(output: Output, nodes: &[NodeInfo]) -> Result<()> {
    if output == Output::Json {
        let items = nodes
            .iter()
            .map(|n| render::to_json("NodeInfo", n))
            .collect::<Result<Vec<_>>>()?;
        return render::print_json(&serde_json::json!({ "nodes": items }));
    }
    let mut t = render::table(&[
        "NODE", "REGION", "STATE", "SCHED", "SHARD", "TASKS", "CPU USED", "MEM USED", "ZONE",
    ]);
    for n in nodes {
        let state = NodeState::try_from(n.state)
            .map(|s| render::short(s.as_str_name(), "NODE_STATE_"))
            .unwrap_or_else(|_| n.state.to_string());
        let sched = match (n.cordoned, n.draining) {
            (_, true) => "draining",
            (true, false) => "cordoned",
            _ => "ok",
        };
        let alloc = n.allocatable.clone().unwrap_or_default();
        let used = n.allocated.clone().unwrap_or_default();
        t.add_row(vec![
            n.node_id.clone(),
            n.region.clone(),
            state,
            sched.to_string(),
            n.shard_id.to_string(),
            n.running_tasks.to_string(),
            format!(
                "{}/{}",
                render::cores(used.cpu_millis),
                render::cores(alloc.cpu_millis)
            ),
            format!(
                "{}/{}",
                render::bytes(used.memory_bytes),
                render::bytes(alloc.memory_bytes)
            ),
            if n.zone.is_empty() {
                "-".into()
            } else {
                n.zone.clone()
            },
        ]);
    }
    render::print_table(&t);
    Ok(())
}
