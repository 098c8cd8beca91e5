//! The router: which region each pending job goes to.
//!
//! Owns one pure decision function, [`route`], from a [`Snapshot`] (regions
//! with their reported free capacity, tenant usage and quotas) and the
//! pending jobs to one [`Decision`] per job. Order of consideration:
//! priority first, then weighted fair share across tenants (the tenant with
//! the lowest held CPU per unit of weight goes next), then job id. A job
//! goes to its first preferred region that qualifies, otherwise the
//! emptiest (spread) or fullest (pack) qualifying region. A region none of
//! whose nodes could ever run a task of the job (by the node classes it
//! reports, see [`crate::reach`]) never qualifies, and a job no allowed
//! region could ever run waits with the reason. It must never read
//! the store, the clock or a random source: the same input gives the same
//! decisions.

use std::collections::BTreeMap;

use meridian_proto::v1::LabelRequirement;

use crate::reach::{self, ClassView, Need};

/// How jobs spread over the qualifying regions when no preference decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionSpread {
    /// The region with the most free CPU left.
    Spread,
    /// The region with the least free CPU left that still fits the job.
    Pack,
}

/// A tenant's share and cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantQuota {
    /// Fair-share weight (at least 1).
    pub weight: u32,
    /// Most CPU (millis, over all tasks of unfinished jobs) the tenant may
    /// hold across regions; `None` for no cap.
    pub max_cpu_millis: Option<u64>,
}

impl Default for TenantQuota {
    fn default() -> Self {
        TenantQuota {
            weight: 1,
            max_cpu_millis: None,
        }
    }
}

/// An amount of resources (of one task, or free in a region).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Amount {
    /// CPU in millis.
    pub cpu_millis: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// GPUs (of any type).
    pub gpus: u64,
}

impl Amount {
    fn times(self, n: u32) -> Amount {
        let n = u64::from(n);
        Amount {
            cpu_millis: self.cpu_millis.saturating_mul(n),
            memory_bytes: self.memory_bytes.saturating_mul(n),
            gpus: self.gpus.saturating_mul(n),
        }
    }

    fn fits_in(self, other: Amount) -> bool {
        self.cpu_millis <= other.cpu_millis
            && self.memory_bytes <= other.memory_bytes
            && self.gpus <= other.gpus
    }

    fn minus(self, other: Amount) -> Amount {
        Amount {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }
}

/// The router's view of one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionView {
    /// Region name.
    pub name: String,
    /// Holds a live region lease.
    pub ready: bool,
    /// Drained: takes no new jobs.
    pub draining: bool,
    /// Free capacity reported (allocatable minus allocated).
    pub free: Amount,
    /// Free GPUs by type.
    pub free_gpus_by_type: BTreeMap<String, u64>,
    /// Largest free amount on any one node (per dimension).
    pub max_node_free: Amount,
    /// Its nodes grouped by label set; `None` when unknown.
    pub classes: Option<Vec<ClassView>>,
}

/// A pending job as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    /// Job id (also the last tie-breaker).
    pub job_id: String,
    /// Owning tenant.
    pub tenant: String,
    /// Higher goes first.
    pub priority: i32,
    /// Number of tasks it may run at once (all of them, or its
    /// parallelism): what must fit in a region.
    pub tasks: u32,
    /// Resources of each task.
    pub per_task: Amount,
    /// GPU type each task needs; empty for any.
    pub gpu_type: String,
    /// Allowed regions; empty for any.
    pub allowed: Vec<String>,
    /// Preferred regions, most preferred first.
    pub preferred: Vec<String>,
    /// Requirements on node labels.
    pub constraints: Vec<LabelRequirement>,
}

impl JobRequest {
    fn total(&self) -> Amount {
        self.per_task.times(self.tasks)
    }

    fn need(&self) -> Need<'_> {
        Need {
            per_task: self.per_task,
            gpu_type: &self.gpu_type,
            constraints: &self.constraints,
        }
    }
}

/// Everything the router decides from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Known regions.
    pub regions: Vec<RegionView>,
    /// CPU millis held per tenant by unfinished, routed jobs.
    pub tenant_usage: BTreeMap<String, u64>,
    /// Quotas by tenant (absent: weight 1, no cap).
    pub quotas: BTreeMap<String, TenantQuota>,
    /// Spread or pack.
    pub spread: RegionSpread,
}

/// What happens to one pending job now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Assign the job to the region.
    Assign {
        /// The job.
        job_id: String,
        /// The chosen region.
        region: String,
    },
    /// Leave the job pending for now.
    Wait {
        /// The job.
        job_id: String,
        /// Why, for the job's status.
        reason: WaitReason,
    },
}

/// Why a job stays pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// No allowed region holds a live lease and takes new jobs.
    NoRegion,
    /// No allowed, ready region has room for it now.
    NoCapacity,
    /// Its tenant would exceed its CPU cap.
    TenantQuota,
    /// No node of any allowed, ready region could ever run one of its
    /// tasks: which nodes fail what.
    NeverFits(String),
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WaitReason::NoRegion => "no allowed region is ready",
            WaitReason::NoCapacity => "no allowed region has capacity",
            WaitReason::TenantQuota => "tenant quota reached",
            WaitReason::NeverFits(why) => why,
        })
    }
}

/// Decides, for every pending job, a region or why it waits. Returns one
/// decision per job, in the order the jobs were considered.
pub fn route(snapshot: &Snapshot, pending: &[JobRequest]) -> Vec<Decision> {
    let mut free: BTreeMap<&str, (Amount, BTreeMap<String, u64>)> = snapshot
        .regions
        .iter()
        .map(|r| (r.name.as_str(), (r.free, r.free_gpus_by_type.clone())))
        .collect();
    let mut usage = snapshot.tenant_usage.clone();
    let mut decisions = Vec::with_capacity(pending.len());
    for job in fair_order(snapshot, pending) {
        let quota = snapshot
            .quotas
            .get(&job.tenant)
            .copied()
            .unwrap_or_default();
        let held = usage.get(&job.tenant).copied().unwrap_or(0);
        let need = job.total();
        if let Some(cap) = quota.max_cpu_millis
            && held.saturating_add(need.cpu_millis) > cap
        {
            decisions.push(wait(job, WaitReason::TenantQuota));
            continue;
        }
        let eligible: Vec<&RegionView> = snapshot
            .regions
            .iter()
            .filter(|r| r.ready && !r.draining)
            .filter(|r| job.allowed.is_empty() || job.allowed.contains(&r.name))
            .collect();
        if eligible.is_empty() {
            decisions.push(wait(job, WaitReason::NoRegion));
            continue;
        }
        let need_forever = job.need();
        let (able, never): (Vec<&RegionView>, Vec<&RegionView>) = eligible
            .into_iter()
            .partition(|r| reach::could_ever_run(r.classes.as_deref(), &need_forever));
        if able.is_empty() {
            let why = reach::never_runs(
                never.iter().filter_map(|r| r.classes.as_deref()),
                &need_forever,
            );
            decisions.push(wait(job, WaitReason::NeverFits(why)));
            continue;
        }
        let eligible = able;
        let fits = |r: &&RegionView| {
            let Some((room, gpus)) = free.get(r.name.as_str()) else {
                return false;
            };
            let typed_ok = job.gpu_type.is_empty()
                || gpus.get(&job.gpu_type).copied().unwrap_or(0) >= need.gpus;
            need.fits_in(*room) && job.per_task.fits_in(r.max_node_free) && typed_ok
        };
        let candidates: Vec<&RegionView> = eligible.into_iter().filter(fits).collect();
        let chosen = job
            .preferred
            .iter()
            .find_map(|p| candidates.iter().find(|r| &r.name == p))
            .or_else(|| {
                let left = |r: &&&RegionView| {
                    free.get(r.name.as_str())
                        .map_or(0, |(a, _)| a.cpu_millis.saturating_sub(need.cpu_millis))
                };
                match snapshot.spread {
                    // Most room left; ties to the smallest name.
                    RegionSpread::Spread => candidates
                        .iter()
                        .max_by(|a, b| left(a).cmp(&left(b)).then(b.name.cmp(&a.name))),
                    RegionSpread::Pack => candidates
                        .iter()
                        .min_by(|a, b| left(a).cmp(&left(b)).then(a.name.cmp(&b.name))),
                }
            });
        let Some(region) = chosen else {
            decisions.push(wait(job, WaitReason::NoCapacity));
            continue;
        };
        if let Some((room, gpus)) = free.get_mut(region.name.as_str()) {
            *room = room.minus(need);
            if !job.gpu_type.is_empty()
                && let Some(n) = gpus.get_mut(&job.gpu_type)
            {
                *n = n.saturating_sub(need.gpus);
            }
        }
        *usage.entry(job.tenant.clone()).or_default() += need.cpu_millis;
        decisions.push(Decision::Assign {
            job_id: job.job_id.clone(),
            region: region.name.clone(),
        });
    }
    decisions
}

fn wait(job: &JobRequest, reason: WaitReason) -> Decision {
    Decision::Wait {
        job_id: job.job_id.clone(),
        reason,
    }
}

/// Orders jobs: priority (high first); within a priority, repeatedly the
/// tenant with the least usage per weight takes its next job (by id).
/// Usage grows by each job's CPU as it is ordered, as if it were assigned.
fn fair_order<'a>(snapshot: &Snapshot, pending: &'a [JobRequest]) -> Vec<&'a JobRequest> {
    let mut by_priority: BTreeMap<std::cmp::Reverse<i32>, BTreeMap<&str, Vec<&JobRequest>>> =
        BTreeMap::new();
    for job in pending {
        by_priority
            .entry(std::cmp::Reverse(job.priority))
            .or_default()
            .entry(job.tenant.as_str())
            .or_default()
            .push(job);
    }
    let mut usage: BTreeMap<&str, u64> = snapshot
        .tenant_usage
        .iter()
        .map(|(t, u)| (t.as_str(), *u))
        .collect();
    let mut order = Vec::with_capacity(pending.len());
    for (_, mut tenants) in by_priority {
        for queue in tenants.values_mut() {
            queue.sort_by(|a, b| b.job_id.cmp(&a.job_id)); // pop() takes the smallest id
        }
        loop {
            let next = tenants
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .min_by(|(ta, _), (tb, _)| {
                    let share = |t: &str| {
                        let w = snapshot.quotas.get(t).map_or(1, |q| q.weight.max(1));
                        // Compare usage/weight without division: u_a * w_b vs u_b * w_a.
                        (usage.get(t).copied().unwrap_or(0) as u128, u128::from(w))
                    };
                    let (ua, wa) = share(ta);
                    let (ub, wb) = share(tb);
                    (ua * wb).cmp(&(ub * wa)).then(ta.cmp(tb))
                })
                .map(|(t, _)| *t);
            let Some(tenant) = next else { break };
            let Some(job) = tenants.get_mut(tenant).and_then(Vec::pop) else {
                break;
            };
            *usage.entry(tenant).or_default() += job.total().cpu_millis;
            order.push(job);
        }
    }
    order
}
