//! A region driven in process, for tests, benchmarks and the load suite.
//!
//! Owns the assembly of a region without servers: a store, the replica's
//! data path (memory, feed follower, write pipeline), every shard's lease
//! held by this process, and shard loops that the caller drives round by
//! round (on a manual clock in tests). Also the standard region of the
//! placement benchmark and load scenario, so both measure the same thing.
//! Must never be a second implementation of anything: every step goes
//! through the same code a replica runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_control::SharedClock;
use meridian_control::lease::{Acquired, Fence, Identity, Lease};
use meridian_proto::v1;
use meridian_store::Database;

use crate::error::{RegionalError, Result};
use crate::jobs::{Applied, simple_spec};
use crate::model::{Keys, NodeRecord};
use crate::pipeline::intake::Intake;
use crate::pipeline::node::Register;
use crate::pipeline::{Authority, Intent, Outcome};
use crate::placement::Solve;
use crate::placer::{PlacerConfig, PlacerCtx, ShardLoop};
use crate::replica::DataPath;
use crate::shard::{ShardTerm, ensure_layout, shard_of_node};

/// A region in process with every shard led by it.
pub struct Fixture {
    pub db: Database,
    pub keys: Keys,
    pub clock: SharedClock,
    pub path: DataPath,
    pub identity: Identity,
    pub config: PlacerConfig,
    /// What the shard loops decide with: the product's solver unless a test
    /// swaps it.
    pub solver: Arc<dyn Solve>,
    terms: BTreeMap<u32, ShardTerm>,
}

impl Fixture {
    /// Opens `db` as region `region` with `shards` shards and takes every
    /// shard's lease (held for an hour of `clock`).
    pub async fn open(
        db: Database,
        region: &str,
        shards: u32,
        clock: SharedClock,
        config: PlacerConfig,
    ) -> Result<Fixture> {
        let keys = Keys::new(region);
        ensure_layout(&db, &keys, shards).await?;
        let identity = Identity::new_boot("fixture");
        let path = DataPath::start(db.clone(), keys.clone(), clock.clone(), "fixture").await?;
        let mut terms = BTreeMap::new();
        for shard in 0..shards {
            let lease = Lease::new(
                db.clone(),
                keys.shard_lease(shard),
                identity.clone(),
                clock.clone(),
                Duration::from_secs(3600),
                Duration::from_secs(1),
            )
            .with_fence_in(db.clone(), keys.shard_fence(shard));
            let Acquired::Held(held) = lease.try_acquire().await? else {
                return Err(RegionalError::Internal(format!(
                    "shard {shard}'s lease is held by another owner"
                )));
            };
            terms.insert(
                shard,
                ShardTerm {
                    shard,
                    epoch: held.fence.epoch(),
                    fence: held.fence,
                },
            );
        }
        Ok(Fixture {
            db,
            keys,
            clock,
            path,
            identity,
            config,
            solver: Arc::new(crate::placement::solve),
            terms,
        })
    }

    /// The term of `shard` this fixture holds.
    pub fn term(&self, shard: u32) -> Result<ShardTerm> {
        self.terms
            .get(&shard)
            .cloned()
            .ok_or_else(|| RegionalError::invalid("shard", format!("{shard} is not led here")))
    }

    /// The fence of `shard`'s term.
    pub fn fence(&self, shard: u32) -> Result<Fence> {
        Ok(self.term(shard)?.fence)
    }

    /// The shard a node id belongs to.
    pub fn shard_of(&self, node: &str) -> u32 {
        shard_of_node(node, self.path.state.read().shard_count())
    }

    /// Registers a node (as its agent would) and marks it heard from now.
    pub async fn register(&self, req: v1::RegisterNodeRequest) -> Result<NodeRecord> {
        Register::validate(&req)?;
        let shard = self.shard_of(&req.node_id);
        let authority = Authority {
            fence: self.fence(shard)?,
            generation: None,
        };
        let out = self
            .path
            .pipeline
            .submit(
                Some(authority),
                Intent::Register(Register {
                    request: req,
                    now_unix_ms: self.clock.now_unix_ms(),
                }),
            )
            .await?;
        match out {
            Outcome::Node(Some(node)) => {
                self.path.beats.beat(&node.node_id, self.clock.now(), 0);
                Ok(*node)
            }
            other => Err(RegionalError::Internal(format!(
                "a registration answered {other:?}"
            ))),
        }
    }

    /// Registers many nodes at once (their registrations commit together).
    pub async fn register_many(&self, reqs: Vec<v1::RegisterNodeRequest>) -> Result<()> {
        for chunk in reqs.chunks(1_000) {
            let all = chunk.iter().map(|r| self.register(r.clone()));
            futures::future::try_join_all(all).await?;
        }
        Ok(())
    }

    /// Marks every node heard from now (what their agents' heartbeats do).
    pub fn beat_all(&self) {
        let ids: Vec<String> = self.path.state.read().nodes.keys().cloned().collect();
        let now = self.clock.now();
        for id in ids {
            self.path.beats.beat(&id, now, 0);
        }
    }

    /// Gives the region jobs as ASSIGNs at epoch 1, in batches of 500 (one
    /// intake transaction each, as the link takes them in).
    pub async fn insert_jobs(&self, jobs: Vec<(String, v1::JobSpec)>) -> Result<Vec<Applied>> {
        let mut out = Vec::with_capacity(jobs.len());
        let now = self.clock.now_unix_ms();
        for chunk in jobs.chunks(500) {
            let events = chunk
                .iter()
                .map(|(id, spec)| v1::AssignmentEvent {
                    kind: v1::AssignmentEventKind::Assign as i32,
                    job_id: id.clone(),
                    assignment_epoch: 1,
                    spec: Some(spec.clone()),
                    job_created_at_unix_ms: now,
                    ..Default::default()
                })
                .collect();
            match self
                .path
                .pipeline
                .submit(
                    None,
                    Intent::Intake(Intake {
                        events,
                        cursor: None,
                        now_unix_ms: now,
                    }),
                )
                .await?
            {
                Outcome::Intake(applied) => out.extend(applied),
                other => {
                    return Err(RegionalError::Internal(format!(
                        "an intake answered {other:?}"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// What shard loops of this fixture share.
    pub fn placer_ctx(&self) -> PlacerCtx {
        PlacerCtx {
            pipeline: self.path.pipeline.clone(),
            state: self.path.state.clone(),
            tailer: self.path.tailer.clone(),
            beats: self.path.beats.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            solver: self.solver.clone(),
        }
    }

    /// Starts the placement loop of `shard` (driven by its caller through
    /// [`ShardLoop::round`]).
    pub async fn shard_loop(&self, shard: u32) -> Result<ShardLoop> {
        ShardLoop::start(self.placer_ctx(), self.term(shard)?).await
    }
}

/// Node `i` of the benchmark region: 32 cores, 128 GiB, in one of 4 zones
/// and 100 racks.
pub fn bench_node(i: usize) -> v1::RegisterNodeRequest {
    v1::RegisterNodeRequest {
        node_id: format!("node-{i:05}"),
        boot_id: "boot".into(),
        allocatable: Some(v1::Resources {
            cpu_millis: 32_000,
            memory_bytes: 128 << 30,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        zone: format!("zone-{}", i % 4),
        rack: format!("rack-{}", i % 100),
        ..Default::default()
    }
}

/// Job `j` of the benchmark's workload: `tasks` tasks of one of four shapes
/// (250m/512MiB, 1/2GiB, 4/8GiB, 500m/1GiB), 40 % packed, tenants spread.
pub fn bench_job(j: usize, tasks: u32) -> v1::JobSpec {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let shapes = [
        (250, 512 * MIB),
        (1_000, 2 * GIB),
        (4_000, 8 * GIB),
        (500, GIB),
    ];
    let (cpu, mem) = shapes[j % shapes.len()];
    let mut spec = simple_spec(&format!("tenant-{}", j % 20), tasks, cpu, mem);
    if j % 5 < 2 {
        spec.placement = v1::PlacementPolicy::Pack as i32;
    }
    spec
}
