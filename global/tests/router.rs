//! The router as a pure function: unit cases and properties.

use std::collections::BTreeMap;

use meridian_global::reach::ClassView;
use meridian_global::router::*;
use meridian_proto::v1::{LabelOperator, LabelRequirement};
use proptest::prelude::*;

fn region(name: &str, cpu: u64) -> RegionView {
    RegionView {
        name: name.into(),
        ready: true,
        draining: false,
        free: Amount {
            cpu_millis: cpu,
            memory_bytes: 1 << 40,
            gpus: 0,
        },
        free_gpus_by_type: BTreeMap::new(),
        max_node_free: Amount {
            cpu_millis: cpu,
            memory_bytes: 1 << 40,
            gpus: 0,
        },
        classes: None,
    }
}

/// A class of `nodes` nodes with `labels`, each with `cpu` millis.
fn class(labels: &[(&str, &str)], nodes: u64, cpu: u64) -> ClassView {
    ClassView {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        nodes,
        max: Amount {
            cpu_millis: cpu,
            memory_bytes: 1 << 40,
            gpus: 0,
        },
        gpu_types: Vec::new(),
    }
}

fn label_in(key: &str, value: &str) -> LabelRequirement {
    LabelRequirement {
        key: key.into(),
        op: LabelOperator::In as i32,
        values: vec![value.into()],
    }
}

fn job(id: &str, tenant: &str, priority: i32, cpu: u64) -> JobRequest {
    JobRequest {
        job_id: id.into(),
        tenant: tenant.into(),
        priority,
        tasks: 1,
        per_task: Amount {
            cpu_millis: cpu,
            memory_bytes: 1,
            gpus: 0,
        },
        gpu_type: String::new(),
        allowed: vec![],
        preferred: vec![],
        constraints: vec![],
    }
}

fn snapshot(regions: Vec<RegionView>) -> Snapshot {
    Snapshot {
        regions,
        tenant_usage: BTreeMap::new(),
        quotas: BTreeMap::new(),
        spread: RegionSpread::Spread,
    }
}

fn assigned(decisions: &[Decision]) -> BTreeMap<String, String> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Assign { job_id, region } => Some((job_id.clone(), region.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_preferred_region_wins_when_it_fits() {
    let s = snapshot(vec![region("a", 1000), region("b", 9000)]);
    let mut j = job("j1", "t", 0, 100);
    j.preferred = vec!["a".into()];
    assert_eq!(assigned(&route(&s, &[j]))["j1"], "a");
}

#[test]
fn spread_picks_the_emptiest_and_pack_the_fullest_region_that_fits() {
    let mut s = snapshot(vec![region("a", 1000), region("b", 9000)]);
    assert_eq!(assigned(&route(&s, &[job("j", "t", 0, 500)]))["j"], "b");
    s.spread = RegionSpread::Pack;
    assert_eq!(assigned(&route(&s, &[job("j", "t", 0, 500)]))["j"], "a");
}

#[test]
fn drained_unready_and_disallowed_regions_get_nothing() {
    let mut a = region("a", 9000);
    a.draining = true;
    let mut b = region("b", 9000);
    b.ready = false;
    let s = snapshot(vec![a, b, region("c", 9000)]);
    let mut j = job("j", "t", 0, 1);
    j.allowed = vec!["a".into(), "b".into()];
    assert_eq!(
        route(&s, &[j]),
        vec![Decision::Wait {
            job_id: "j".into(),
            reason: WaitReason::NoRegion
        }]
    );
}

#[test]
fn a_job_no_node_of_any_region_could_run_waits_and_says_which_nodes_fail_what() {
    let mut a = region("a", 100_000);
    a.classes = Some(vec![class(&[("real", "false")], 600, 4000)]);
    let mut b = region("b", 100_000);
    b.classes = Some(vec![class(&[("real", "true")], 3, 500)]);
    let s = snapshot(vec![a, b]);
    let mut j = job("j", "t", 0, 1000);
    j.constraints = vec![label_in("real", "true")];
    assert_eq!(
        route(&s, &[j]),
        vec![Decision::Wait {
            job_id: "j".into(),
            reason: WaitReason::NeverFits(
                "0/603 nodes of the allowed regions could ever run a task: \
                 600 do not match real=true, 3 have less cpu than a task asks"
                    .into()
            )
        }]
    );
}

#[test]
fn a_constrained_job_goes_only_to_a_region_with_a_matching_node_even_when_another_is_emptier() {
    let mut a = region("a", 900_000);
    a.classes = Some(vec![class(&[("real", "false")], 600, 4000)]);
    let mut b = region("b", 1000);
    b.classes = Some(vec![
        class(&[("real", "false")], 5, 4000),
        class(&[("real", "true")], 1, 4000),
    ]);
    let s = snapshot(vec![a, b]);
    let mut j = job("j", "t", 0, 100);
    j.constraints = vec![label_in("real", "true")];
    assert_eq!(assigned(&route(&s, &[j]))["j"], "b");
}

#[test]
fn a_region_whose_node_classes_are_unknown_gets_the_benefit_of_the_doubt() {
    let mut a = region("a", 1000);
    a.classes = Some(vec![class(&[("real", "false")], 600, 4000)]);
    let b = region("b", 1000);
    let s = snapshot(vec![a, b]);
    let mut j = job("j", "t", 0, 100);
    j.constraints = vec![label_in("real", "true")];
    assert_eq!(assigned(&route(&s, &[j]))["j"], "b");
}

#[test]
fn a_tenant_over_its_cap_waits() {
    let mut s = snapshot(vec![region("a", 100_000)]);
    s.quotas.insert(
        "t".into(),
        TenantQuota {
            weight: 1,
            max_cpu_millis: Some(1000),
        },
    );
    s.tenant_usage.insert("t".into(), 900);
    assert_eq!(
        route(&s, &[job("j", "t", 0, 200)]),
        vec![Decision::Wait {
            job_id: "j".into(),
            reason: WaitReason::TenantQuota
        }]
    );
}

#[test]
fn weighted_fair_share_gives_a_double_weight_tenant_twice_the_capacity() {
    let mut s = snapshot(vec![region("a", 3000)]);
    s.quotas.insert(
        "heavy".into(),
        TenantQuota {
            weight: 2,
            max_cpu_millis: None,
        },
    );
    let mut jobs = Vec::new();
    for i in 0..10 {
        jobs.push(job(&format!("h{i:02}"), "heavy", 0, 100));
        jobs.push(job(&format!("l{i:02}"), "light", 0, 100));
    }
    let got = assigned(&route(&s, &jobs[..]));
    // 20 jobs of 100 fit in 3000: all assigned; shrink to see the share.
    assert_eq!(got.len(), 20);
    s.regions = vec![region("a", 900)];
    let got = assigned(&route(&s, &jobs[..]));
    let heavy = got.keys().filter(|k| k.starts_with('h')).count();
    assert_eq!((heavy, got.len() - heavy), (6, 3));
}

fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
    let region = (0u64..20_000, any::<bool>(), any::<bool>(), 0u64..4000);
    // Unknown classes, or a mix of labelled classes with their own sizes.
    let classes = prop::option::of(prop::collection::vec(
        (any::<bool>(), 1u64..100, 0u64..4000),
        0..3,
    ));
    (
        prop::collection::vec((region, classes), 1..5),
        any::<bool>(),
        prop::option::of(0u64..10_000),
    )
        .prop_map(|(regions, pack, cap)| {
            let regions = regions
                .into_iter()
                .enumerate()
                .map(|(i, ((cpu, ready, draining, node), classes))| RegionView {
                    name: format!("r{i}"),
                    ready,
                    draining,
                    free: Amount {
                        cpu_millis: cpu,
                        memory_bytes: 1 << 40,
                        gpus: 0,
                    },
                    free_gpus_by_type: BTreeMap::new(),
                    max_node_free: Amount {
                        cpu_millis: node,
                        memory_bytes: 1 << 40,
                        gpus: 0,
                    },
                    classes: classes.map(|cs| {
                        cs.into_iter()
                            .map(|(real, nodes, cpu)| {
                                class(&[("real", if real { "true" } else { "false" })], nodes, cpu)
                            })
                            .collect()
                    }),
                })
                .collect();
            let mut quotas = BTreeMap::new();
            quotas.insert(
                "t0".to_string(),
                TenantQuota {
                    weight: 2,
                    max_cpu_millis: cap,
                },
            );
            Snapshot {
                regions,
                tenant_usage: BTreeMap::new(),
                quotas,
                spread: if pack {
                    RegionSpread::Pack
                } else {
                    RegionSpread::Spread
                },
            }
        })
}

fn arb_jobs() -> impl Strategy<Value = Vec<JobRequest>> {
    let one = (
        0usize..3,
        -2i32..3,
        1u64..3000,
        1u32..4,
        prop::collection::vec(0usize..5, 0..3),
        any::<bool>(),
    );
    prop::collection::vec(one, 0..40).prop_map(|jobs| {
        jobs.into_iter()
            .enumerate()
            .map(
                |(i, (tenant, priority, cpu, tasks, allowed, real))| JobRequest {
                    job_id: format!("j{i:03}"),
                    tenant: format!("t{tenant}"),
                    priority,
                    tasks,
                    per_task: Amount {
                        cpu_millis: cpu,
                        memory_bytes: 1,
                        gpus: 0,
                    },
                    gpu_type: String::new(),
                    allowed: allowed.into_iter().map(|r| format!("r{r}")).collect(),
                    preferred: vec![],
                    constraints: if real {
                        vec![label_in("real", "true")]
                    } else {
                        vec![]
                    },
                },
            )
            .collect()
    })
}

proptest! {
    #[test]
    fn every_job_gets_exactly_one_decision_and_the_same_input_the_same_decisions(s in arb_snapshot(), jobs in arb_jobs()) {
        let d = route(&s, &jobs);
        prop_assert_eq!(d.len(), jobs.len());
        let mut ids: Vec<&str> = d.iter().map(|d| match d {
            Decision::Assign { job_id, .. } | Decision::Wait { job_id, .. } => job_id.as_str(),
        }).collect();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), jobs.len());
        prop_assert_eq!(route(&s, &jobs), d);
    }

    #[test]
    fn assignments_respect_constraints_capacity_and_quotas(s in arb_snapshot(), jobs in arb_jobs()) {
        let got = assigned(&route(&s, &jobs));
        let by_id: BTreeMap<&str, &JobRequest> = jobs.iter().map(|j| (j.job_id.as_str(), j)).collect();
        let mut used: BTreeMap<&str, u64> = BTreeMap::new();
        let mut tenant: BTreeMap<&str, u64> = BTreeMap::new();
        for (job_id, region) in &got {
            let j = by_id[job_id.as_str()];
            let r = s.regions.iter().find(|r| &r.name == region).unwrap();
            prop_assert!(r.ready && !r.draining);
            prop_assert!(j.allowed.is_empty() || j.allowed.contains(region));
            prop_assert!(j.per_task.cpu_millis <= r.max_node_free.cpu_millis, "a task fits on some node");
            if let Some(classes) = &r.classes {
                let could = classes.iter().any(|c| {
                    j.per_task.cpu_millis <= c.max.cpu_millis
                        && j.constraints.iter().all(|req| c.labels.get(&req.key) == Some(&req.values[0]))
                });
                prop_assert!(could, "{} went to {} where no node could ever run it", j.job_id, r.name);
            }
            *used.entry(r.name.as_str()).or_default() += j.per_task.cpu_millis * u64::from(j.tasks);
            *tenant.entry(j.tenant.as_str()).or_default() += j.per_task.cpu_millis * u64::from(j.tasks);
        }
        for r in &s.regions {
            prop_assert!(used.get(r.name.as_str()).copied().unwrap_or(0) <= r.free.cpu_millis, "region {} overcommitted", r.name);
        }
        if let Some(cap) = s.quotas["t0"].max_cpu_millis {
            prop_assert!(tenant.get("t0").copied().unwrap_or(0) <= cap);
        }
    }

    #[test]
    fn with_identical_unconstrained_jobs_no_waiting_job_outranks_an_assigned_one(
        cpu in 1u64..20_000, n in 1usize..40, priorities in prop::collection::vec(-3i32..3, 40)
    ) {
        let s = snapshot(vec![region("a", cpu)]);
        let jobs: Vec<JobRequest> = (0..n).map(|i| job(&format!("j{i:03}"), "t", priorities[i], 700)).collect();
        let got = assigned(&route(&s, &jobs));
        let lowest_assigned = jobs.iter().filter(|j| got.contains_key(&j.job_id)).map(|j| j.priority).min();
        let highest_waiting = jobs.iter().filter(|j| !got.contains_key(&j.job_id)).map(|j| j.priority).max();
        if let (Some(low), Some(high)) = (lowest_assigned, highest_waiting) {
            prop_assert!(high <= low);
        }
    }
}
