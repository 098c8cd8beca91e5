//! Property tests of the placement solver on random regions: small clusters
//! (so that capacity is often short and preemption, gangs and anti-affinity
//! all come into play) with zones, racks, labels, GPU models, priorities and
//! preemptible running tasks.
//!
//! Each safety property is checked directly here, independently of `verify`,
//! and `verify` must also accept every solution.

use std::collections::{BTreeMap, BTreeSet};

use meridian_regional::placement::{
    Affinity, AntiAffinity, GangId, LabelConstraint, LabelOp, Node, PendingTask, Policy, Resources,
    Running, Scope, Snapshot, Solution, SolverConfig, TaskRef, TaskSelector, solve, verify,
};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;
const GPU_TYPES: [Option<&str>; 3] = [None, Some("a100"), Some("h100")];

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    (
        prop::option::of(prop::sample::select(vec!["ssd", "hdd"])),
        prop::option::of(prop::sample::select(vec!["web", "db", "cache"])),
    )
        .prop_map(|(disk, app)| {
            let mut m = BTreeMap::new();
            if let Some(d) = disk {
                m.insert("disk".to_string(), d.to_string());
            }
            if let Some(a) = app {
                m.insert("app".to_string(), a.to_string());
            }
            m
        })
}

fn node(i: usize) -> impl Strategy<Value = Node> {
    (
        1u64..=8,
        1u64..=16,
        0u32..=4,
        prop::sample::select(GPU_TYPES.to_vec()),
        0u64..=2,
        labels(),
        prop::option::of(0u8..3),
        prop::option::of(0u8..2),
        prop::bool::weighted(0.9),
        1u64..100,
    )
        .prop_map(
            move |(
                cores,
                mem,
                gpus,
                gpu_type,
                allocated,
                labels,
                zone,
                rack,
                schedulable,
                version,
            )| {
                let gpu_type = if gpus == 0 { None } else { gpu_type };
                Node {
                    id: meridian_regional::placement::NodeId(format!("n{i:02}")),
                    version,
                    capacity: Resources::new(cores * 1000, mem * GIB).with_gpus(gpus, gpu_type),
                    allocated: Resources::new(allocated * 500, allocated * GIB),
                    labels,
                    zone: zone.map(|z| format!("z{z}")),
                    rack: rack.map(|r| format!("r{r}")),
                    schedulable,
                }
            },
        )
}

fn request() -> impl Strategy<Value = Resources> {
    (
        1u64..=6,
        0u64..=6,
        prop::sample::select(vec![0u32, 0, 0, 1, 2]),
        prop::sample::select(GPU_TYPES.to_vec()),
    )
        .prop_map(|(halves, mem, gpus, gpu_type)| {
            Resources::new(halves * 500, mem * GIB).with_gpus(gpus, gpu_type)
        })
}

fn selector() -> impl Strategy<Value = TaskSelector> {
    prop_oneof![
        (0u8..4).prop_map(|j| TaskSelector::job(&format!("j{j}"))),
        prop::sample::select(vec!["web", "db", "cache"])
            .prop_map(|a| TaskSelector::label("app", a)),
    ]
}

fn scope() -> impl Strategy<Value = Scope> {
    prop::sample::select(vec![Scope::Node, Scope::Node, Scope::Rack, Scope::Zone])
}

fn constraint() -> impl Strategy<Value = LabelConstraint> {
    (
        prop::sample::select(vec!["disk", "app"]),
        prop::sample::select(vec![
            LabelOp::In,
            LabelOp::NotIn,
            LabelOp::Exists,
            LabelOp::DoesNotExist,
        ]),
        prop::sample::select(vec!["ssd", "hdd", "web"]),
    )
        .prop_map(|(key, op, value)| LabelConstraint::new(key, op, &[value]))
}

/// Pending tasks `j{0..4}/{0..40}`: few enough names that duplicates and
/// tasks that are already running occur too.
fn pending_task() -> impl Strategy<Value = PendingTask> {
    (
        (0u8..4, 0u32..40, 0u8..3, -1i32..4, request(), labels()),
        (
            prop::collection::vec(constraint(), 0..2),
            prop::collection::vec((selector(), scope()), 0..2),
            prop::collection::vec((selector(), scope(), 1u32..10), 0..2),
            prop::bool::ANY,
            prop::option::of(0u8..3),
            prop::bool::ANY,
            0u64..60_000,
        ),
    )
        .prop_map(
            |(
                (job, index, tenant, priority, resources, labels),
                (constraints, anti, affinity, pack, gang, preemptible, drain),
            )| {
                let mut t = PendingTask::new(
                    TaskRef::new(format!("j{job}"), index),
                    &format!("t{tenant}"),
                    resources,
                );
                t.priority = priority;
                t.labels = labels;
                t.constraints = constraints;
                t.anti_affinity = anti
                    .into_iter()
                    .map(|(s, sc)| AntiAffinity::new(s, sc))
                    .collect();
                t.affinity = affinity
                    .into_iter()
                    .map(|(s, sc, w)| Affinity::new(s, sc, w))
                    .collect();
                t.policy = if pack { Policy::Pack } else { Policy::Spread };
                // Gangs are per job, as a job's tasks form one.
                t.gang = gang.map(|g| GangId::new(format!("j{job}-g{g}")));
                t.preemptible = preemptible;
                t.drain_grace_ms = drain;
                t
            },
        )
}

fn running_task(nodes: usize) -> impl Strategy<Value = Running> {
    (
        (0u8..6, 0u32..12, 0..nodes, 0u8..3, -2i32..4, request()),
        (
            labels(),
            prop::bool::weighted(0.7),
            0u64..60_000,
            prop::collection::vec((selector(), scope()), 0..=1),
        ),
    )
        .prop_map(
            |(
                (job, index, node, tenant, priority, resources),
                (labels, preemptible, drain, anti),
            )| {
                let mut r = Running::new(
                    TaskRef::new(format!("j{job}"), index),
                    &format!("n{node:02}"),
                    &format!("t{tenant}"),
                    Resources {
                        gpus: 0,
                        gpu_type: None,
                        ..resources
                    },
                );
                r.priority = priority;
                r.labels = labels;
                r.preemptible = preemptible;
                r.drain_grace_ms = drain;
                r.anti_affinity = anti
                    .into_iter()
                    .map(|(s, sc)| AntiAffinity::new(s, sc))
                    .collect();
                r
            },
        )
}

fn region() -> impl Strategy<Value = (Snapshot, Vec<PendingTask>)> {
    (1usize..10)
        .prop_flat_map(|n| {
            (
                (0..n).map(node).collect::<Vec<_>>(),
                prop::collection::vec(running_task(n), 0..14),
                prop::collection::vec(pending_task(), 0..28),
            )
        })
        .prop_map(|(nodes, running, pending)| {
            // One entry per running task.
            let mut seen = BTreeSet::new();
            let running = running
                .into_iter()
                .filter(|r| seen.insert(r.task.clone()))
                .collect();
            (Snapshot::new(nodes, running), pending)
        })
}

fn config() -> impl Strategy<Value = SolverConfig> {
    (
        1usize..5,
        prop::bool::weighted(0.8),
        prop::sample::select(vec![1usize, 16, 4096]),
    )
        .prop_map(|(k, preemption, combos)| SolverConfig {
            max_scored_candidates: k,
            preemption,
            max_victim_combinations: combos,
        })
}

/// (task, node, labels, anti-affinity, whether newly bound) of a task placed
/// after the solve.
type Placed<'a> = (
    &'a TaskRef,
    &'a Node,
    &'a BTreeMap<String, String>,
    &'a [AntiAffinity],
    bool,
);

fn first_entries(pending: &[PendingTask]) -> BTreeMap<&TaskRef, &PendingTask> {
    let mut m = BTreeMap::new();
    for p in pending {
        m.entry(&p.task).or_insert(p);
    }
    m
}

fn evicted(solution: &Solution) -> BTreeSet<&TaskRef> {
    solution.preemptions.iter().map(|p| &p.victim).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn verify_accepts_every_solution((snapshot, pending) in region(), config in config()) {
        let solution = solve(&snapshot, &pending, &config);
        prop_assert_eq!(verify(&snapshot, &pending, &solution), Ok(()));
    }

    #[test]
    fn the_same_input_always_gives_the_same_solution((snapshot, pending) in region(), config in config()) {
        let first = solve(&snapshot, &pending, &config);
        let second = solve(&snapshot.clone(), &pending.clone(), &config);
        prop_assert_eq!(first, second);
    }

    #[test]
    fn no_node_is_ever_overcommitted((snapshot, pending) in region(), config in config()) {
        let solution = solve(&snapshot, &pending, &config);
        let tasks = first_entries(&pending);
        let gone = evicted(&solution);
        let touched: BTreeSet<_> = solution.bindings.iter().map(|b| &b.node).collect();
        for id in touched {
            let node = &snapshot.nodes[id];
            let on_node = snapshot.running.iter().filter(|r| r.node == *id);
            let (mut cpu, mut mem, mut gpus) = (0u64, 0u64, 0u64);
            let (mut vcpu, mut vmem, mut vgpus) = (0u64, 0u64, 0u64);
            for r in on_node {
                cpu += r.resources.cpu_millis;
                mem += r.resources.memory_bytes;
                gpus += u64::from(r.resources.gpus);
                if gone.contains(&r.task) {
                    vcpu += r.resources.cpu_millis;
                    vmem += r.resources.memory_bytes;
                    vgpus += u64::from(r.resources.gpus);
                }
            }
            cpu = cpu.max(node.allocated.cpu_millis) - vcpu;
            mem = mem.max(node.allocated.memory_bytes) - vmem;
            gpus = gpus.max(u64::from(node.allocated.gpus)) - vgpus;
            for b in solution.bindings.iter().filter(|b| b.node == *id) {
                let r = &tasks[&b.task].resources;
                cpu += r.cpu_millis;
                mem += r.memory_bytes;
                gpus += u64::from(r.gpus);
            }
            prop_assert!(cpu <= node.capacity.cpu_millis, "{id} cpu {cpu}");
            prop_assert!(mem <= node.capacity.memory_bytes, "{id} memory {mem}");
            prop_assert!(gpus <= u64::from(node.capacity.gpus), "{id} gpus {gpus}");
        }
    }

    #[test]
    fn no_binding_breaks_a_constraint_or_gpu_type_or_lands_on_an_unschedulable_node(
        (snapshot, pending) in region(),
        config in config(),
    ) {
        let solution = solve(&snapshot, &pending, &config);
        let tasks = first_entries(&pending);
        for b in &solution.bindings {
            let node = &snapshot.nodes[&b.node];
            let task = tasks[&b.task];
            prop_assert!(node.schedulable);
            prop_assert_eq!(b.node_version, node.version);
            prop_assert!(task.constraints.iter().all(|c| c.matches(&node.labels)));
            if let (1.., Some(t)) = (task.resources.gpus, &task.resources.gpu_type) {
                prop_assert_eq!(node.capacity.gpu_type.as_ref(), Some(t));
            }
        }
    }

    #[test]
    fn no_binding_shares_a_domain_with_a_task_excluded_by_anti_affinity(
        (snapshot, pending) in region(),
        config in config(),
    ) {
        let solution = solve(&snapshot, &pending, &config);
        let tasks = first_entries(&pending);
        let gone = evicted(&solution);
        let mut placed: Vec<Placed<'_>> =
            snapshot
                .running
                .iter()
                .filter(|r| !gone.contains(&r.task))
                .filter_map(|r| {
                    snapshot.nodes.get(&r.node).map(|n| {
                        (&r.task, n, &r.labels, r.anti_affinity.as_slice(), false)
                    })
                })
                .collect();
        for b in &solution.bindings {
            let t = tasks[&b.task];
            placed.push((&b.task, &snapshot.nodes[&b.node], &t.labels, t.anti_affinity.as_slice(), true));
        }
        let same = |scope: Scope, a: &Node, b: &Node| scope.same_domain(&a.id, a, &b.id, b);
        for (i, a) in placed.iter().enumerate().filter(|(_, p)| p.4) {
            for (j, b) in placed.iter().enumerate() {
                if i == j {
                    continue;
                }
                for rule in a.3 {
                    prop_assert!(
                        !(rule.selector.matches(b.0, b.2) && same(rule.scope, a.1, b.1)),
                        "{} next to {}", a.0, b.0
                    );
                }
                for rule in b.3 {
                    prop_assert!(
                        !(rule.selector.matches(a.0, a.2) && same(rule.scope, a.1, b.1)),
                        "{} next to {}", a.0, b.0
                    );
                }
            }
        }
    }

    #[test]
    fn every_gang_is_bound_completely_or_not_at_all((snapshot, pending) in region(), config in config()) {
        let solution = solve(&snapshot, &pending, &config);
        let running: BTreeSet<_> = snapshot.running.iter().map(|r| &r.task).collect();
        let bound: BTreeSet<_> = solution.bindings.iter().map(|b| &b.task).collect();
        let mut gangs: BTreeMap<&GangId, (usize, usize)> = BTreeMap::new();
        for (task, p) in first_entries(&pending) {
            if let (Some(g), false) = (&p.gang, running.contains(task)) {
                let e = gangs.entry(g).or_default();
                e.0 += usize::from(bound.contains(task));
                e.1 += 1;
            }
        }
        for (g, (b, members)) in gangs {
            prop_assert!(b == 0 || b == members, "gang {} bound {} of {}", g, b, members);
        }
    }

    #[test]
    fn a_task_is_only_ever_preempted_by_a_strictly_higher_priority_one(
        (snapshot, pending) in region(),
        config in config(),
    ) {
        let solution = solve(&snapshot, &pending, &config);
        let tasks = first_entries(&pending);
        let running: BTreeMap<_, _> = snapshot.running.iter().map(|r| (&r.task, r)).collect();
        let bound: BTreeMap<_, _> = solution.bindings.iter().map(|b| (&b.task, &b.node)).collect();
        for p in &solution.preemptions {
            let victim = running[&p.victim];
            prop_assert!(victim.preemptible);
            prop_assert!(victim.priority < tasks[&p.for_task].priority);
            prop_assert_eq!(&victim.node, &p.node);
            prop_assert_eq!(bound.get(&p.for_task), Some(&&p.node));
            prop_assert_eq!(p.grace_ms, victim.drain_grace_ms);
        }
        if !config.preemption {
            prop_assert!(solution.preemptions.is_empty());
        }
    }

    #[test]
    fn every_pending_task_is_bound_at_most_once_and_has_an_outcome(
        (snapshot, pending) in region(),
        config in config(),
    ) {
        let solution = solve(&snapshot, &pending, &config);
        let mut bound = BTreeSet::new();
        for b in &solution.bindings {
            prop_assert!(bound.insert(&b.task), "{} bound twice", b.task);
        }
        let reported: BTreeSet<_> = solution.unschedulable.iter().map(|(t, _)| t).collect();
        for p in &pending {
            prop_assert!(bound.contains(&p.task) || reported.contains(&p.task));
        }
        prop_assert_eq!(solution.bindings.len() + solution.unschedulable.len(), pending.len());
    }
}

/// Guards the generators: random regions must actually reach the paths the
/// properties are about, or the properties prove little.
#[test]
fn the_generated_regions_exercise_preemption_gangs_and_anti_affinity() {
    use meridian_regional::placement::Reason;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = (region(), config());
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..300 {
        let ((snapshot, pending), config) = strategy.new_tree(&mut runner).unwrap().current();
        let solution = solve(&snapshot, &pending, &config);
        let tasks = first_entries(&pending);
        let mut note = |what| *seen.entry(what).or_default() += 1;
        if !solution.bindings.is_empty() {
            note("bindings");
        }
        if !solution.preemptions.is_empty() {
            note("preemptions");
        }
        if solution
            .bindings
            .iter()
            .any(|b| tasks[&b.task].gang.is_some())
        {
            note("gang bound");
        }
        for (_, reason) in &solution.unschedulable {
            note(match reason {
                Reason::GangIncomplete { .. } => "gang rejected",
                Reason::AntiAffinity => "anti-affinity",
                Reason::Constraint => "constraint",
                Reason::GpuType(_) => "gpu type",
                Reason::InsufficientCpu | Reason::InsufficientMemory | Reason::InsufficientGpu => {
                    "insufficient"
                }
                _ => "other",
            });
        }
    }
    for what in [
        "bindings",
        "preemptions",
        "gang bound",
        "gang rejected",
        "anti-affinity",
        "constraint",
        "gpu type",
        "insufficient",
    ] {
        assert!(
            seen.get(what).copied().unwrap_or(0) >= 5,
            "{what} too rare: {seen:?}"
        );
    }
}

/// The region as the shard leader sees it right after `solution` commits:
/// bound tasks run where they were bound and count in their nodes'
/// allocation; victims still run until their agents report them stopped, so
/// they keep their room and can be asked to stop only once.
fn applied(
    snapshot: &Snapshot,
    pending: &[PendingTask],
    solution: &Solution,
) -> (Snapshot, Vec<PendingTask>) {
    let tasks = first_entries(pending);
    let gone = evicted(solution);
    let mut next = snapshot.clone();
    for id in next.nodes.keys().cloned().collect::<Vec<_>>() {
        let mut used = Resources::default();
        for r in snapshot.running.iter().filter(|r| r.node == id) {
            used.cpu_millis += r.resources.cpu_millis;
            used.memory_bytes += r.resources.memory_bytes;
            used.gpus += r.resources.gpus;
        }
        let node = next.nodes.get_mut(&id).expect("node");
        node.allocated.cpu_millis = node.allocated.cpu_millis.max(used.cpu_millis);
        node.allocated.memory_bytes = node.allocated.memory_bytes.max(used.memory_bytes);
        node.allocated.gpus = node.allocated.gpus.max(used.gpus);
    }
    for r in next.running.iter_mut().filter(|r| gone.contains(&r.task)) {
        r.preemptible = false;
    }
    for b in &solution.bindings {
        let p = tasks[&b.task];
        let node = next.nodes.get_mut(&b.node).expect("bound node");
        node.allocated.cpu_millis += p.resources.cpu_millis;
        node.allocated.memory_bytes += p.resources.memory_bytes;
        node.allocated.gpus += p.resources.gpus;
        let mut running = Running::new(b.task.clone(), &b.node.0, &p.tenant, p.resources.clone());
        running.priority = p.priority;
        running.labels = p.labels.clone();
        running.preemptible = p.preemptible;
        running.drain_grace_ms = p.drain_grace_ms;
        running.anti_affinity = p.anti_affinity.clone();
        next.running.push(running);
    }
    // Entries for tasks that were running stay out: a preempted task is
    // pending again only once its agent reports it stopped, a later change.
    // Gangs stay out too: members are placed one by one, best node first,
    // and a gang whose first members took the room a later one needed can
    // fit on a later solve that finds the nodes in another order.
    let bound: BTreeSet<&TaskRef> = solution.bindings.iter().map(|b| &b.task).collect();
    let was_running: BTreeSet<&TaskRef> = snapshot.running.iter().map(|r| &r.task).collect();
    let in_gang: BTreeSet<&TaskRef> = pending
        .iter()
        .filter(|p| p.gang.is_some())
        .map(|p| &p.task)
        .collect();
    let left = pending
        .iter()
        .filter(|p| {
            !bound.contains(&p.task) && !was_running.contains(&p.task) && !in_gang.contains(&p.task)
        })
        .cloned()
        .collect();
    (next, left)
}

/// Gives every member of a gang the priority and preemptibility of its
/// first member, as in a region, where a gang is one job and a job's tasks
/// share both. (A gang is tried at its highest member's priority, so a
/// member of lower priority could be bound before a task it does not
/// outrank, and be preempted by it on the next solve.)
fn uniform_gangs(mut pending: Vec<PendingTask>) -> Vec<PendingTask> {
    let mut first: BTreeMap<GangId, (i32, bool)> = BTreeMap::new();
    for p in &mut pending {
        if let Some(gang) = &p.gang {
            let (priority, preemptible) = *first
                .entry(gang.clone())
                .or_insert((p.priority, p.preemptible));
            p.priority = priority;
            p.preemptible = preemptible;
        }
    }
    pending
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A solve leaves nothing undone that it could have done: a task it did
    /// not bind still cannot be bound once its decisions are applied, so a
    /// placer that solves its queue again after a commit finds no work.
    #[test]
    fn solving_again_after_applying_a_solution_binds_nothing_new(
        (snapshot, pending) in region(),
        config in config(),
    ) {
        let pending = uniform_gangs(pending);
        let solution = solve(&snapshot, &pending, &config);
        let (next, left) = applied(&snapshot, &pending, &solution);
        let again = solve(&next, &left, &config);
        prop_assert_eq!(verify(&next, &left, &again), Ok(()));
        prop_assert!(
            again.bindings.is_empty(),
            "second solve bound {:?} (first bound {:?}, preempted {:?})",
            again.bindings,
            solution.bindings,
            solution.preemptions
        );
    }
}
