//! Text form of task ids.

use std::collections::BTreeSet;

use meridian_proto::v1::{TaskAttempt, TaskId};

#[test]
fn a_task_id_displays_as_job_id_slash_index_and_parses_back() {
    let id = TaskId::new("01HZX", 7);
    assert_eq!(id.to_string(), "01HZX/7");
    assert_eq!("01HZX/7".parse::<TaskId>(), Ok(id));
}

#[test]
fn a_job_id_containing_a_slash_splits_at_the_last_one() {
    let id: TaskId = "team/job/12".parse().expect("parses");
    assert_eq!(id, TaskId::new("team/job", 12));
}

#[test]
fn malformed_task_ids_are_rejected() {
    for bad in [
        "",
        "job",
        "/3",
        "job/",
        "job/-1",
        "job/+1",
        "job/x",
        "job/99999999999",
    ] {
        assert!(bad.parse::<TaskId>().is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn a_task_attempt_displays_with_its_attempt_number() {
    let attempt = TaskAttempt {
        task: Some(TaskId::new("j", 0)),
        assignment_epoch: 0,
        attempt: 3,
    };
    assert_eq!(attempt.to_string(), "j/0#3");
}

#[test]
fn task_ids_order_by_job_then_index() {
    let set: BTreeSet<TaskId> = [
        TaskId::new("b", 0),
        TaskId::new("a", 10),
        TaskId::new("a", 2),
    ]
    .into_iter()
    .collect();
    let ordered: Vec<String> = set.iter().map(ToString::to_string).collect();
    assert_eq!(ordered, ["a/2", "a/10", "b/0"]);
}
