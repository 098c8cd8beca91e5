use meridian_proto::v1;

use super::*;
use crate::jobs::simple_spec;
use crate::model::{TaskRecord, job_from_spec};

fn stamp(n: u8) -> Stamp {
    let mut s = [0u8; 10];
    s[7] = n;
    s
}

fn node(id: &str, cpu: u64, version: u64) -> NodeRecord {
    NodeRecord {
        version,
        ..NodeRecord::ready_for_tests(id, cpu, 1 << 30)
    }
}

fn job(id: &str, tasks: u32, cpu: u64) -> JobRecord {
    job_from_spec(id, 1, "", &simple_spec("t", tasks, cpu, 1), 0).expect("job")
}

fn block(states: &[(i32, &str)]) -> TaskBlock {
    TaskBlock {
        first: 0,
        tasks: states
            .iter()
            .map(|(s, n)| {
                let mut t = TaskRecord::new_pending();
                t.state = *s;
                t.node = n.to_string();
                t.attempt = 1;
                t.node_epoch = 1;
                t
            })
            .collect(),
    }
}

#[test]
fn a_record_is_never_replaced_by_one_read_at_an_older_stamp() {
    let mut s = RegionState::default();
    let mut d = Delta::default();
    s.put_node("n1", Some(node("n1", 1000, 2)), stamp(5), &mut d);
    s.put_node("n1", Some(node("n1", 1000, 1)), stamp(3), &mut d);
    assert_eq!(s.nodes["n1"].record.as_ref().map(|r| r.version), Some(2));
    s.put_node("n1", Some(node("n1", 1000, 3)), stamp(6), &mut d);
    assert_eq!(s.nodes["n1"].record.as_ref().map(|r| r.version), Some(3));
}

#[test]
fn bound_tasks_count_against_their_node_and_their_end_frees_it() {
    let mut s = RegionState::default();
    let mut d = Delta::default();
    s.put_node("n1", Some(node("n1", 1000, 1)), stamp(1), &mut d);
    s.put_job("j", Some((job("j", 3, 100), None)), stamp(1), &mut d);
    let placed = v1::TaskState::Placed as i32;
    let pending = v1::TaskState::Pending as i32;
    let done = v1::TaskState::Succeeded as i32;
    s.put_block(
        "j",
        0,
        Some(block(&[(placed, "n1"), (placed, "n1"), (pending, "")])),
        stamp(2),
        &mut d,
    );
    assert_eq!(s.nodes["n1"].allocated.cpu, 200);
    assert_eq!(s.nodes["n1"].bound.len(), 2);
    assert_eq!(s.jobs["j"].pending, 1);
    assert!(s.pending_jobs.contains("j"));
    let mut d = Delta::default();
    s.put_block(
        "j",
        0,
        Some(block(&[(done, "n1"), (placed, "n1"), (placed, "n1")])),
        stamp(3),
        &mut d,
    );
    assert_eq!(s.nodes["n1"].allocated.cpu, 200);
    assert!(d.freed.contains("n1"), "an ended task frees its node");
    assert!(!s.pending_jobs.contains("j"));
    let mut d = Delta::default();
    s.put_job("j", None, stamp(4), &mut d);
    assert_eq!(s.nodes["n1"].allocated.cpu, 0, "a retired job's tasks go");
    assert!(s.nodes["n1"].bound.is_empty());
}

#[test]
fn a_removed_job_is_not_brought_back_by_an_older_read_but_is_by_a_newer_one() {
    let mut s = RegionState::default();
    let mut d = Delta::default();
    s.put_job("j", Some((job("j", 1, 1), None)), stamp(2), &mut d);
    s.put_job("j", None, stamp(5), &mut d);
    s.put_job("j", Some((job("j", 1, 1), None)), stamp(4), &mut d);
    assert!(!s.jobs.contains_key("j"));
    s.put_job("j", Some((job("j", 1, 1), None)), stamp(7), &mut d);
    assert!(s.jobs.contains_key("j"), "held again under a newer stamp");
}

#[test]
fn a_layout_change_moves_nodes_to_their_new_shards() {
    let mut s = RegionState::default();
    let mut d = Delta::default();
    for i in 0..50 {
        let id = format!("n{i}");
        s.put_node(&id, Some(node(&id, 1, 1)), stamp(1), &mut d);
    }
    assert!(s.nodes.values().all(|n| n.shard == 0));
    s.put_layout(
        Some(Layout {
            count: 4,
            generation: 1,
        }),
        stamp(2),
        &mut d,
    );
    assert!(d.layout);
    let shards: std::collections::BTreeSet<u32> = s.nodes.values().map(|n| n.shard).collect();
    assert_eq!(shards.len(), 4);
    for (id, n) in &s.nodes {
        assert_eq!(n.shard, shard_of_node(id, 4));
    }
}

#[test]
fn a_jobs_kept_counts_equal_a_recount_after_blocks_change_and_go() {
    let mut s = RegionState::default();
    let mut d = Delta::default();
    s.put_job("j", Some((job("j", 512, 100), None)), stamp(1), &mut d);
    let placed = v1::TaskState::Placed as i32;
    let pending = v1::TaskState::Pending as i32;
    let running = v1::TaskState::Running as i32;
    let done = v1::TaskState::Succeeded as i32;
    let mut second = block(&[(running, "n1"), (done, ""), (pending, "")]);
    second.first = 256;
    s.put_block(
        "j",
        0,
        Some(block(&[(placed, "n1"), (pending, "")])),
        stamp(2),
        &mut d,
    );
    s.put_block("j", 1, Some(second), stamp(2), &mut d);
    s.put_block(
        "j",
        0,
        Some(block(&[(done, ""), (running, "n2")])),
        stamp(3),
        &mut d,
    );
    let recount =
        |s: &RegionState| crate::jobs::task_counts(s.jobs["j"].blocks.values().map(|b| &b.block));
    let j = &s.jobs["j"];
    assert_eq!(j.counts, recount(&s));
    assert_eq!((j.pending, j.bound()), (1, 2));
    s.put_block("j", 1, None, stamp(4), &mut d);
    let j = &s.jobs["j"];
    assert_eq!(j.counts, recount(&s));
    assert_eq!((j.pending, j.bound()), (0, 1));
    assert!(!s.pending_jobs.contains("j"));
}

#[test]
fn a_jobs_kept_run_time_equals_the_sum_over_its_tasks() {
    let mut s = RegionState::default();
    let mut d = Delta::default();
    s.put_job("j", Some((job("j", 512, 100), None)), stamp(1), &mut d);
    let done = v1::TaskState::Succeeded as i32;
    let ran = |ms: u64, runs: u32| {
        let mut b = block(&[(done, ""), (done, "")]);
        for t in &mut b.tasks {
            t.ran_ms = ms;
            t.runs = runs;
        }
        b
    };
    s.put_block("j", 0, Some(ran(100, 1)), stamp(2), &mut d);
    let mut second = ran(30, 2);
    second.first = 256;
    s.put_block("j", 1, Some(second), stamp(2), &mut d);
    assert_eq!(s.jobs["j"].ran, (260, 6));
    s.put_block("j", 0, Some(ran(150, 2)), stamp(3), &mut d);
    assert_eq!(s.jobs["j"].ran, (360, 8));
    s.put_block("j", 1, None, stamp(4), &mut d);
    assert_eq!(s.jobs["j"].ran, (300, 4));
}
