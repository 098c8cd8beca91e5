//! Scenario tests of the placement solver: one behaviour per test, on
//! clusters small enough to reason about by hand.

use std::collections::BTreeMap;

use meridian_regional::placement::{
    Affinity, AntiAffinity, Binding, GangId, LabelConstraint, LabelOp, Node, NodeId, PendingTask,
    Policy, Preemption, Reason, Resources, Running, Scope, Snapshot, Solution, SolverConfig,
    TaskRef, TaskSelector, Violation, solve, verify,
};

const GIB: u64 = 1 << 30;

fn cpu(millis: u64) -> Resources {
    Resources::new(millis, GIB)
}

/// A node with `millis` of cpu and plenty of memory.
fn node(name: &str, millis: u64) -> Node {
    Node::new(name, Resources::new(millis, 64 * GIB))
}

fn task(job: &str, index: u32, tenant: &str, resources: Resources) -> PendingTask {
    PendingTask::new(TaskRef::new(job, index), tenant, resources)
}

fn run(snapshot: &Snapshot, pending: &[PendingTask]) -> Solution {
    let solution = solve(snapshot, pending, &SolverConfig::default());
    assert_eq!(verify(snapshot, pending, &solution), Ok(()));
    solution
}

fn placed(solution: &Solution) -> BTreeMap<TaskRef, String> {
    solution
        .bindings
        .iter()
        .map(|b| (b.task.clone(), b.node.0.clone()))
        .collect()
}

fn reason_of(solution: &Solution, t: &TaskRef) -> Option<Reason> {
    solution
        .unschedulable
        .iter()
        .find(|(u, _)| u == t)
        .map(|(_, r)| r.clone())
}

/// `zones` zones of `per_zone` nodes each, named `z{zone}-n{i}`, 4 cpus and
/// 16 GiB each, one rack per zone.
fn zoned_cluster(zones: usize, per_zone: usize) -> Vec<Node> {
    (0..zones)
        .flat_map(|z| {
            (0..per_zone).map(move |i| {
                Node::new(format!("z{z}-n{i}"), Resources::new(4000, 16 * GIB))
                    .in_domain(&format!("z{z}"), &format!("z{z}-r0"))
            })
        })
        .collect()
}

fn zone_of(node: &str) -> &str {
    node.split('-').next().unwrap()
}

#[test]
fn spread_puts_each_task_of_a_job_in_a_different_zone() {
    let snapshot = Snapshot::new(zoned_cluster(3, 3), vec![]);
    let pending: Vec<_> = (0..3).map(|i| task("web", i, "t", cpu(500))).collect();
    let solution = run(&snapshot, &pending);
    let zones: std::collections::BTreeSet<&str> = solution
        .bindings
        .iter()
        .map(|b| zone_of(&b.node.0))
        .collect();
    assert_eq!(zones.len(), 3, "{solution:?}");
}

#[test]
fn spread_balances_a_job_over_zones_when_it_has_more_tasks_than_zones() {
    let snapshot = Snapshot::new(zoned_cluster(3, 4), vec![]);
    let pending: Vec<_> = (0..9).map(|i| task("web", i, "t", cpu(500))).collect();
    let solution = run(&snapshot, &pending);
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for b in &solution.bindings {
        *per_zone.entry(zone_of(&b.node.0)).or_default() += 1;
    }
    assert_eq!(
        per_zone.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3]
    );
}

#[test]
fn spread_counts_the_jobs_running_tasks_when_choosing_a_zone() {
    let snapshot = Snapshot::new(
        zoned_cluster(2, 2),
        vec![Running::new(TaskRef::new("web", 0), "z0-n0", "t", cpu(500))],
    );
    let solution = run(&snapshot, &[task("web", 1, "t", cpu(500))]);
    assert_eq!(zone_of(&solution.bindings[0].node.0), "z1");
}

#[test]
fn pack_keeps_a_job_in_one_zone_and_fills_nodes_before_opening_new_ones() {
    let snapshot = Snapshot::new(zoned_cluster(3, 3), vec![]);
    let pending: Vec<_> = (0..6)
        .map(|i| {
            let mut t = task("batch", i, "t", cpu(1000));
            t.policy = Policy::Pack;
            t
        })
        .collect();
    let solution = run(&snapshot, &pending);
    let nodes = placed(&solution);
    let zones: std::collections::BTreeSet<&str> = nodes.values().map(|n| zone_of(n)).collect();
    assert_eq!(zones.len(), 1, "{nodes:?}");
    let distinct: std::collections::BTreeSet<&String> = nodes.values().collect();
    assert_eq!(
        distinct.len(),
        2,
        "6 tasks of 1 cpu fill two 4-cpu nodes: {nodes:?}"
    );
}

#[test]
fn pack_follows_the_zone_where_the_job_already_runs() {
    let snapshot = Snapshot::new(
        zoned_cluster(3, 2),
        vec![Running::new(
            TaskRef::new("batch", 0),
            "z2-n1",
            "t",
            cpu(3500),
        )],
    );
    let pending: Vec<_> = (1..4)
        .map(|i| {
            let mut t = task("batch", i, "t", cpu(1000));
            t.policy = Policy::Pack;
            t
        })
        .collect();
    let solution = run(&snapshot, &pending);
    assert!(
        solution.bindings.iter().all(|b| zone_of(&b.node.0) == "z2"),
        "{solution:?}"
    );
}

#[test]
fn pack_prefers_the_fullest_node_that_still_fits() {
    let mut nodes = zoned_cluster(1, 3);
    nodes[1].allocated = cpu(2000);
    nodes[2].allocated = cpu(3500);
    let snapshot = Snapshot::new(nodes, vec![]);
    let mut t = task("batch", 0, "t", cpu(1000));
    t.policy = Policy::Pack;
    let solution = run(&snapshot, &[t]);
    // z0-n2 is fuller but has only 500m left.
    assert_eq!(solution.bindings[0].node, NodeId::new("z0-n1"));
}

#[test]
fn a_gpu_task_lands_only_on_a_node_with_the_requested_gpu_type() {
    let snapshot = Snapshot::new(
        vec![
            Node::new(
                "a",
                Resources::new(8000, 64 * GIB).with_gpus(4, Some("a100")),
            ),
            Node::new(
                "h",
                Resources::new(8000, 64 * GIB).with_gpus(4, Some("h100")),
            ),
            Node::new("plain", Resources::new(8000, 64 * GIB)),
        ],
        vec![],
    );
    let wants = |i, kind: Option<&str>| task("train", i, "t", cpu(1000).with_gpus(2, kind));
    let pending = vec![
        wants(0, Some("h100")),
        wants(1, Some("a100")),
        wants(2, Some("v100")),
        wants(3, None),
        wants(4, Some("h100")),
        wants(5, Some("h100")),
    ];
    let solution = run(&snapshot, &pending);
    let nodes = placed(&solution);
    assert_eq!(nodes[&TaskRef::new("train", 0)], "h");
    assert_eq!(nodes[&TaskRef::new("train", 1)], "a");
    assert_eq!(
        reason_of(&solution, &TaskRef::new("train", 2)),
        Some(Reason::GpuType("v100".into()))
    );
    // Any GPU type will do; a and h tie and the lower id wins.
    assert_eq!(nodes[&TaskRef::new("train", 3)], "a");
    assert_eq!(nodes[&TaskRef::new("train", 4)], "h");
    assert_eq!(
        reason_of(&solution, &TaskRef::new("train", 5)),
        Some(Reason::InsufficientGpu)
    );
}

#[test]
fn a_cpu_only_task_prefers_a_node_without_gpus() {
    let snapshot = Snapshot::new(
        vec![
            Node::new(
                "a-gpu",
                Resources::new(8000, 64 * GIB).with_gpus(4, Some("a100")),
            ),
            Node::new("b-plain", Resources::new(8000, 64 * GIB)),
        ],
        vec![],
    );
    let solution = run(&snapshot, &[task("web", 0, "t", cpu(1000))]);
    assert_eq!(solution.bindings[0].node, NodeId::new("b-plain"));
}

#[test]
fn label_constraints_follow_in_notin_exists_and_doesnotexist() {
    let snapshot = Snapshot::new(
        vec![
            node("ssd", 4000).with_label("disk", "ssd"),
            node("hdd", 4000).with_label("disk", "hdd"),
            node("bare", 4000),
        ],
        vec![],
    );
    let with = |i, c: LabelConstraint| {
        let mut t = task("j", i, "t", cpu(100));
        t.constraints = vec![c];
        t
    };
    let pending = vec![
        with(0, LabelConstraint::new("disk", LabelOp::In, &["ssd"])),
        with(
            1,
            LabelConstraint::new("disk", LabelOp::NotIn, &["ssd", "hdd"]),
        ),
        with(2, LabelConstraint::new("disk", LabelOp::DoesNotExist, &[])),
        with(3, LabelConstraint::new("gpu", LabelOp::Exists, &[])),
        with(4, LabelConstraint::new("disk", LabelOp::In, &["hdd"])),
    ];
    let solution = run(&snapshot, &pending);
    let nodes = placed(&solution);
    assert_eq!(nodes[&TaskRef::new("j", 0)], "ssd");
    assert_eq!(nodes[&TaskRef::new("j", 1)], "bare");
    assert_eq!(nodes[&TaskRef::new("j", 2)], "bare");
    assert_eq!(
        reason_of(&solution, &TaskRef::new("j", 3)),
        Some(Reason::Constraint)
    );
    assert_eq!(nodes[&TaskRef::new("j", 4)], "hdd");
}

#[test]
fn anti_affinity_to_its_own_job_puts_at_most_one_task_per_node() {
    let snapshot = Snapshot::new(zoned_cluster(1, 2), vec![]);
    let pending: Vec<_> = (0..3)
        .map(|i| {
            let mut t = task("db", i, "t", cpu(100));
            t.anti_affinity = vec![AntiAffinity::new(TaskSelector::job("db"), Scope::Node)];
            t
        })
        .collect();
    let solution = run(&snapshot, &pending);
    assert_eq!(solution.bindings.len(), 2);
    assert_ne!(solution.bindings[0].node, solution.bindings[1].node);
    assert_eq!(
        solution.unschedulable,
        vec![(TaskRef::new("db", 2), Reason::AntiAffinity)]
    );
}

#[test]
fn anti_affinity_at_zone_scope_keeps_whole_zones_apart() {
    let snapshot = Snapshot::new(
        zoned_cluster(2, 2),
        vec![{
            let mut r = Running::new(TaskRef::new("noisy", 0), "z0-n0", "t", cpu(100));
            r.labels.insert("kind".into(), "noisy".into());
            r
        }],
    );
    let mut quiet = task("quiet", 0, "t", cpu(100));
    quiet.policy = Policy::Pack;
    quiet.anti_affinity = vec![AntiAffinity::new(
        TaskSelector::label("kind", "noisy"),
        Scope::Zone,
    )];
    let solution = run(&snapshot, &[quiet]);
    assert_eq!(zone_of(&solution.bindings[0].node.0), "z1");
}

#[test]
fn a_running_tasks_anti_affinity_keeps_matching_new_tasks_away() {
    let mut guard = Running::new(TaskRef::new("guard", 0), "z0-n0", "t", cpu(100));
    guard.anti_affinity = vec![AntiAffinity::new(TaskSelector::job("web"), Scope::Node)];
    let snapshot = Snapshot::new(zoned_cluster(1, 2), vec![guard]);
    let mut web = task("web", 0, "t", cpu(100));
    web.policy = Policy::Pack; // would otherwise prefer the fuller z0-n0
    let solution = run(&snapshot, &[web]);
    assert_eq!(solution.bindings[0].node, NodeId::new("z0-n1"));
}

#[test]
fn affinity_prefers_the_node_running_the_selected_tasks() {
    let mut cache = Running::new(TaskRef::new("cache", 0), "z1-n1", "t", cpu(100));
    cache.labels.insert("app".into(), "cache".into());
    let snapshot = Snapshot::new(zoned_cluster(2, 2), vec![cache]);
    let mut web = task("web", 0, "t", cpu(100));
    web.affinity = vec![Affinity::new(
        TaskSelector::label("app", "cache"),
        Scope::Node,
        10,
    )];
    let solution = run(&snapshot, &[web]);
    assert_eq!(solution.bindings[0].node, NodeId::new("z1-n1"));
}

#[test]
fn preemption_evicts_the_fewest_victims_of_the_lowest_priority() {
    let full = |job: &str, node: &str, priority: i32, millis: u64| {
        let mut r = Running::new(TaskRef::new(job, 0), node, "t", cpu(millis));
        r.priority = priority;
        r.drain_grace_ms = 30_000;
        r
    };
    let snapshot = Snapshot::new(
        vec![node("a", 4000), node("b", 4000), node("c", 4000)],
        vec![
            // a: two victims needed.
            full("a1", "a", 0, 2000),
            full("a2", "a", 0, 2000),
            // b: one victim, priority 5.
            full("b1", "b", 5, 4000),
            // c: one victim, priority 1: the cheapest plan.
            full("c1", "c", 1, 3000),
            full("c2", "c", 2, 1000),
        ],
    );
    let mut urgent = task("urgent", 0, "t", cpu(3000));
    urgent.priority = 10;
    let solution = run(&snapshot, &[urgent]);
    assert_eq!(
        solution.bindings,
        vec![Binding {
            task: TaskRef::new("urgent", 0),
            node: NodeId::new("c"),
            node_version: 1,
        }]
    );
    assert_eq!(
        solution.preemptions,
        vec![Preemption {
            victim: TaskRef::new("c1", 0),
            node: NodeId::new("c"),
            for_task: TaskRef::new("urgent", 0),
            grace_ms: 30_000,
        }]
    );
}

#[test]
fn preemption_on_one_node_takes_the_lowest_priorities_among_equal_sized_sets() {
    let victim = |job: &str, priority: i32| {
        let mut r = Running::new(TaskRef::new(job, 0), "n", "t", cpu(1000));
        r.priority = priority;
        r
    };
    let snapshot = Snapshot::new(
        vec![node("n", 4000)],
        vec![
            victim("p3", 3),
            victim("p1", 1),
            victim("p4", 4),
            victim("p2", 2),
        ],
    );
    let mut t = task("urgent", 0, "t", cpu(2000));
    t.priority = 9;
    let solution = run(&snapshot, &[t]);
    let victims: Vec<&str> = solution
        .preemptions
        .iter()
        .map(|p| p.victim.job_id.as_str())
        .collect();
    assert_eq!(victims, vec!["p1", "p2"]);
}

#[test]
fn preemption_never_evicts_equal_or_higher_priority_or_non_preemptible_tasks() {
    let mut equal = Running::new(TaskRef::new("equal", 0), "a", "t", cpu(4000));
    equal.priority = 5;
    let mut pinned = Running::new(TaskRef::new("pinned", 0), "b", "t", cpu(4000));
    pinned.priority = 0;
    pinned.preemptible = false;
    let snapshot = Snapshot::new(vec![node("a", 4000), node("b", 4000)], vec![equal, pinned]);
    let mut t = task("new", 0, "t", cpu(1000));
    t.priority = 5;
    let solution = run(&snapshot, &[t]);
    assert!(solution.preemptions.is_empty());
    assert_eq!(
        solution.unschedulable,
        vec![(TaskRef::new("new", 0), Reason::InsufficientCpu)]
    );
}

#[test]
fn no_preemption_happens_when_it_is_disabled() {
    let snapshot = Snapshot::new(
        vec![node("a", 1000)],
        vec![Running::new(TaskRef::new("low", 0), "a", "t", cpu(1000))],
    );
    let mut t = task("high", 0, "t", cpu(1000));
    t.priority = 1;
    let config = SolverConfig {
        preemption: false,
        ..SolverConfig::default()
    };
    let solution = solve(&snapshot, &[t], &config);
    assert!(solution.bindings.is_empty() && solution.preemptions.is_empty());
}

#[test]
fn a_gang_that_cannot_fully_fit_binds_nothing_and_frees_its_room_for_others() {
    let snapshot = Snapshot::new(vec![node("a", 4000), node("b", 4000)], vec![]);
    let mut pending: Vec<_> = (0..3)
        .map(|i| {
            let mut t = task("mpi", i, "t", cpu(3000));
            t.gang = Some(GangId::new("mpi"));
            t
        })
        .collect();
    pending.push(task("web", 0, "t", cpu(4000)));
    let solution = run(&snapshot, &pending);
    let nodes = placed(&solution);
    assert_eq!(nodes.len(), 1, "{solution:?}");
    assert!(nodes.contains_key(&TaskRef::new("web", 0)));
    assert_eq!(
        reason_of(&solution, &TaskRef::new("mpi", 2)),
        Some(Reason::InsufficientCpu)
    );
    for i in 0..2 {
        assert_eq!(
            reason_of(&solution, &TaskRef::new("mpi", i)),
            Some(Reason::GangIncomplete {
                gang: GangId::new("mpi"),
                blocking: TaskRef::new("mpi", 2),
            })
        );
    }
}

#[test]
fn a_gang_that_fits_is_bound_completely() {
    let snapshot = Snapshot::new(vec![node("a", 4000), node("b", 4000)], vec![]);
    let pending: Vec<_> = (0..4)
        .map(|i| {
            let mut t = task("mpi", i, "t", cpu(2000));
            t.gang = Some(GangId::new("mpi"));
            t
        })
        .collect();
    let solution = run(&snapshot, &pending);
    assert_eq!(solution.bindings.len(), 4);
}

#[test]
fn a_rolled_back_gang_also_restores_the_tasks_it_preempted() {
    let mut low = Running::new(TaskRef::new("low", 0), "a", "t", cpu(4000));
    low.priority = 0;
    let snapshot = Snapshot::new(vec![node("a", 4000)], vec![low]);
    let pending: Vec<_> = (0..2)
        .map(|i| {
            let mut t = task("gang", i, "t", cpu(4000));
            t.priority = 5;
            t.gang = Some(GangId::new("g"));
            t
        })
        .collect();
    let solution = run(&snapshot, &pending);
    assert!(solution.bindings.is_empty());
    assert!(solution.preemptions.is_empty());
}

#[test]
fn equal_priority_tenants_are_interleaved_when_capacity_is_short() {
    let snapshot = Snapshot::new(vec![node("a", 3000), node("b", 3000)], vec![]);
    // Tenant "early" queues all of its tasks before "late" queues any.
    let mut pending: Vec<_> = (0..6).map(|i| task("e", i, "early", cpu(1000))).collect();
    pending.extend((0..6).map(|i| task("l", i, "late", cpu(1000))));
    let solution = run(&snapshot, &pending);
    let order: Vec<&str> = solution
        .bindings
        .iter()
        .map(|b| b.task.job_id.as_str())
        .collect();
    assert_eq!(order, vec!["e", "l", "e", "l", "e", "l"]);
    // FIFO within each tenant: the first three of each were bound.
    let nodes = placed(&solution);
    for i in 0..3 {
        assert!(nodes.contains_key(&TaskRef::new("e", i)));
        assert!(nodes.contains_key(&TaskRef::new("l", i)));
    }
}

#[test]
fn a_tenant_already_holding_more_of_the_region_waits_for_the_others() {
    let snapshot = Snapshot::new(
        vec![node("a", 4000), node("b", 4000)],
        vec![Running::new(TaskRef::new("old", 0), "a", "big", cpu(3000))],
    );
    let mut pending: Vec<_> = (0..3).map(|i| task("b", i, "big", cpu(1000))).collect();
    pending.extend((0..3).map(|i| task("s", i, "small", cpu(1000))));
    let solution = run(&snapshot, &pending);
    let order: Vec<&str> = solution
        .bindings
        .iter()
        .map(|b| b.task.job_id.as_str())
        .collect();
    // "small" catches up to 3000m before "big" gets another task.
    assert_eq!(order, vec!["s", "s", "s", "b", "b"]);
}

#[test]
fn higher_priority_is_placed_first_whatever_the_queue_order() {
    let snapshot = Snapshot::new(vec![node("a", 1000)], vec![]);
    let low = task("low", 0, "t", cpu(1000));
    let mut high = task("high", 0, "t", cpu(1000));
    high.priority = 3;
    let solution = run(&snapshot, &[low, high]);
    assert_eq!(solution.bindings[0].task, TaskRef::new("high", 0));
    assert_eq!(
        solution.unschedulable,
        vec![(TaskRef::new("low", 0), Reason::InsufficientCpu)]
    );
}

#[test]
fn unschedulable_nodes_get_nothing_and_bindings_carry_the_node_version() {
    let mut cordoned = node("a", 4000);
    cordoned.schedulable = false;
    let mut open = node("b", 4000);
    open.version = 42;
    let snapshot = Snapshot::new(vec![cordoned, open], vec![]);
    let solution = run(&snapshot, &[task("j", 0, "t", cpu(100))]);
    assert_eq!(solution.bindings[0].node, NodeId::new("b"));
    assert_eq!(solution.bindings[0].node_version, 42);

    let only_cordoned = Snapshot::new(
        vec![{
            let mut n = node("a", 4000);
            n.schedulable = false;
            n
        }],
        vec![],
    );
    let solution = run(&only_cordoned, &[task("j", 0, "t", cpu(100))]);
    assert_eq!(
        solution.unschedulable,
        vec![(TaskRef::new("j", 0), Reason::NoSchedulableNode)]
    );
}

#[test]
fn the_larger_of_allocated_and_running_is_what_a_node_has_in_use() {
    let mut node = Node::new("a", Resources::new(4000, 8 * GIB));
    node.allocated = Resources::new(1000, 7 * GIB);
    let snapshot = Snapshot::new(
        vec![node],
        vec![Running::new(
            TaskRef::new("r", 0),
            "a",
            "t",
            Resources::new(3000, GIB),
        )],
    );
    // In use: 3000m (running) and 7 GiB (allocated); 1000m and 1 GiB remain.
    let pending = vec![
        task("first", 0, "t", Resources::new(500, GIB)),
        task("nomem", 0, "t", Resources::new(100, GIB)),
        task("cpuonly", 0, "t", Resources::new(500, 0)),
    ];
    let solution = run(&snapshot, &pending);
    let nodes = placed(&solution);
    assert!(nodes.contains_key(&TaskRef::new("first", 0)));
    assert!(nodes.contains_key(&TaskRef::new("cpuonly", 0)));
    assert_eq!(
        reason_of(&solution, &TaskRef::new("nomem", 0)),
        Some(Reason::InsufficientMemory)
    );
}

#[test]
fn a_task_short_of_memory_says_so() {
    let snapshot = Snapshot::new(vec![Node::new("a", Resources::new(4000, GIB))], vec![]);
    let solution = run(
        &snapshot,
        &[task("j", 0, "t", Resources::new(100, 2 * GIB))],
    );
    assert_eq!(
        solution.unschedulable,
        vec![(TaskRef::new("j", 0), Reason::InsufficientMemory)]
    );
}

#[test]
fn running_and_duplicate_entries_are_reported_not_bound() {
    let snapshot = Snapshot::new(
        vec![node("a", 4000)],
        vec![Running::new(TaskRef::new("r", 0), "a", "t", cpu(100))],
    );
    let pending = vec![
        task("r", 0, "t", cpu(100)),
        task("j", 0, "t", cpu(100)),
        task("j", 0, "t", cpu(100)),
    ];
    let solution = run(&snapshot, &pending);
    assert_eq!(placed(&solution).len(), 1);
    assert_eq!(
        solution.unschedulable,
        vec![
            (TaskRef::new("r", 0), Reason::AlreadyRunning),
            (TaskRef::new("j", 0), Reason::DuplicatePending),
        ]
    );
}

#[test]
fn the_same_input_gives_the_same_solution() {
    let snapshot = Snapshot::new(zoned_cluster(3, 5), vec![]);
    let pending: Vec<_> = (0..40)
        .map(|i| {
            let mut t = task(&format!("j{}", i % 4), i, &format!("t{}", i % 3), cpu(700));
            t.policy = if i % 2 == 0 {
                Policy::Pack
            } else {
                Policy::Spread
            };
            t
        })
        .collect();
    let first = run(&snapshot, &pending);
    assert_eq!(first, solve(&snapshot, &pending, &SolverConfig::default()));
}

#[test]
fn verify_rejects_an_overcommitting_solution() {
    let snapshot = Snapshot::new(vec![node("a", 1000)], vec![]);
    let pending = vec![task("j", 0, "t", cpu(800)), task("j", 1, "t", cpu(800))];
    let bind = |i| Binding {
        task: TaskRef::new("j", i),
        node: NodeId::new("a"),
        node_version: 1,
    };
    let bad = Solution {
        bindings: vec![bind(0), bind(1)],
        ..Solution::default()
    };
    assert!(matches!(
        verify(&snapshot, &pending, &bad),
        Err(Violation::Overcommitted {
            resource: "cpu",
            ..
        })
    ));
}

#[test]
fn a_refused_solve_binds_nothing_and_every_task_waits_with_the_broken_rule() {
    let snapshot = Snapshot::new(vec![node("a", 1000)], vec![]);
    let pending = vec![task("j", 0, "t", cpu(800)), task("j", 1, "t", cpu(800))];
    let bad = Solution {
        bindings: (0..2)
            .map(|i| Binding {
                task: TaskRef::new("j", i),
                node: NodeId::new("a"),
                node_version: 1,
            })
            .collect(),
        ..Solution::default()
    };
    let violation = verify(&snapshot, &pending, &bad).expect_err("overcommits");
    let refused = Solution::refused(&pending, &violation);
    assert!(refused.bindings.is_empty() && refused.preemptions.is_empty());
    assert_eq!(refused.unschedulable.len(), 2);
    assert_eq!(refused.refusal(), Some(violation.to_string().as_str()));
    let (_, reason) = &refused.unschedulable[0];
    assert!(
        reason.to_string().contains("a is overcommitted on cpu"),
        "{reason}"
    );
    assert_eq!(verify(&snapshot, &pending, &refused), Ok(()));
    assert_eq!(
        solve(&snapshot, &pending, &SolverConfig::default()).refusal(),
        None
    );
}

#[test]
fn verify_rejects_a_split_gang_a_stale_version_and_an_illegal_victim() {
    let mut high = Running::new(TaskRef::new("high", 0), "a", "t", cpu(100));
    high.priority = 9;
    let snapshot = Snapshot::new(vec![node("a", 4000)], vec![high]);
    let mut pending: Vec<_> = (0..2)
        .map(|i| {
            let mut t = task("g", i, "t", cpu(100));
            t.gang = Some(GangId::new("g"));
            t
        })
        .collect();
    let bind = |i, version| Binding {
        task: TaskRef::new("g", i),
        node: NodeId::new("a"),
        node_version: version,
    };
    let split = Solution {
        bindings: vec![bind(0, 1)],
        unschedulable: vec![(TaskRef::new("g", 1), Reason::InsufficientCpu)],
        ..Solution::default()
    };
    assert!(matches!(
        verify(&snapshot, &pending, &split),
        Err(Violation::GangSplit {
            bound: 1,
            members: 2,
            ..
        })
    ));
    let stale = Solution {
        bindings: vec![bind(0, 7), bind(1, 7)],
        ..Solution::default()
    };
    assert!(matches!(
        verify(&snapshot, &pending, &stale),
        Err(Violation::StaleNodeVersion {
            expected: 1,
            got: 7,
            ..
        })
    ));
    pending[0].priority = 9;
    let equal_priority_victim = Solution {
        bindings: vec![bind(0, 1), bind(1, 1)],
        preemptions: vec![Preemption {
            victim: TaskRef::new("high", 0),
            node: NodeId::new("a"),
            for_task: TaskRef::new("g", 0),
            grace_ms: 0,
        }],
        ..Solution::default()
    };
    assert!(matches!(
        verify(&snapshot, &pending, &equal_priority_victim),
        Err(Violation::IllegalPreemption { .. })
    ));
}

#[test]
fn verify_rejects_an_anti_affinity_breach_between_two_new_bindings() {
    let snapshot = Snapshot::new(vec![node("a", 4000)], vec![]);
    let pending: Vec<_> = (0..2)
        .map(|i| {
            let mut t = task("db", i, "t", cpu(100));
            t.anti_affinity = vec![AntiAffinity::new(TaskSelector::job("db"), Scope::Node)];
            t
        })
        .collect();
    let bad = Solution {
        bindings: (0..2)
            .map(|i| Binding {
                task: TaskRef::new("db", i),
                node: NodeId::new("a"),
                node_version: 1,
            })
            .collect(),
        ..Solution::default()
    };
    assert!(matches!(
        verify(&snapshot, &pending, &bad),
        Err(Violation::AntiAffinity { .. })
    ));
}
