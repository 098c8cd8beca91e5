//! What real tasks say about themselves: each task of a multi-process test
//! appends a `start` line when it begins and an `exit` (it finished) or
//! `term` (its agent signalled it) line when it ends, to one file all tasks
//! share, naming its task id, attempt, node (from `$HOME`, which the agent
//! sets to the attempt's directory under its own work directory), a
//! nanosecond wall-clock stamp, a flavour word, the resources its job
//! asked for and its shell's pid. From those lines (and, for a task killed
//! before it could write its end, the time its process was seen to end:
//! `task_exits`) this module derives each attempt's interval on its node,
//! how the attempts of one task sit against each other across nodes, and
//! the load each node carried at every start.
//!
//! Owns the script that writes the lines and their reading; it judges
//! nothing (the invariants are the checker's business) and asks no process
//! anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What a job asked for, as its task lines repeat it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ask {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Ask {
    fn add(&mut self, other: Ask) {
        self.cpu_millis += other.cpu_millis;
        self.memory_bytes += other.memory_bytes;
    }
}

/// How a line says an attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Start,
    /// It ran to its end.
    Exit,
    /// It was signalled (SIGTERM, SIGINT or SIGHUP) and ended at once.
    Term,
    /// No line: its process was seen to have ended (SIGKILL leaves no
    /// time for a line).
    Killed,
}

/// One line of the file.
#[derive(Debug, Clone)]
pub struct Line {
    pub kind: Kind,
    pub task: String,
    pub attempt: u32,
    pub node: String,
    pub at_ns: u128,
    pub flavour: String,
    pub ask: Ask,
}

/// `sh` script of a task that appends its `start` line and its `exit` or
/// `term` line to `file`, working `seconds` in between.
pub fn script(file: &Path, seconds: &str, flavour: &str, ask: Ask) -> String {
    let f = file.display();
    let line = |kind: &str| {
        format!(
            "echo \"{kind} $MERIDIAN_TASK_ID $MERIDIAN_ATTEMPT $HOME $(date +%s%N) {flavour} {} {} $$\" >> '{f}'",
            ask.cpu_millis, ask.memory_bytes
        )
    };
    // The work runs in the background so a TERM to the shell alone still
    // runs the trap at once.
    format!(
        "trap '{}; exit 143' TERM INT HUP; {}; sleep {seconds} & wait $!; {}",
        line("term").replace('\'', "'\\''"),
        line("start"),
        line("exit")
    )
}

/// Every well-formed line of `path`, in file order.
pub fn read(path: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter_map(parse).collect()
}

fn parse(line: &str) -> Option<Line> {
    parse_with_pid(line).map(|(l, _)| l)
}

/// A line and the pid of the shell that wrote it.
pub fn parse_with_pid(line: &str) -> Option<(Line, i32)> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let [kind, task, attempt, home, ns, flavour, cpu, memory, pid] = w[..] else {
        return None;
    };
    let kind = match kind {
        "start" => Kind::Start,
        "exit" => Kind::Exit,
        "term" => Kind::Term,
        _ => return None,
    };
    // `HOME` is `<data>/agents/<node>/tasks/...`.
    let node = home
        .split("/agents/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or(home)
        .to_string();
    let line = Line {
        kind,
        task: task.to_string(),
        attempt: attempt.parse().ok()?,
        node,
        at_ns: ns.parse().ok()?,
        flavour: flavour.to_string(),
        ask: Ask {
            cpu_millis: cpu.parse().ok()?,
            memory_bytes: memory.parse().ok()?,
        },
    };
    Some((line, pid.parse().ok()?))
}

/// One attempt of a task on one node, from its start line to its end line
/// (`None` while it runs, or if it never wrote one).
#[derive(Debug, Clone)]
pub struct Interval {
    pub task: String,
    pub attempt: u32,
    pub node: String,
    pub ask: Ask,
    pub flavour: String,
    pub start_ns: u128,
    pub end: Option<(Kind, u128)>,
}

/// The attempts the lines describe, in order of their start lines.
pub fn intervals(lines: &[Line]) -> Vec<Interval> {
    let mut out: Vec<Interval> = Vec::new();
    let mut open: BTreeMap<(String, u32, String), usize> = BTreeMap::new();
    for l in lines {
        let key = (l.task.clone(), l.attempt, l.node.clone());
        match l.kind {
            Kind::Start => {
                open.insert(key, out.len());
                out.push(Interval {
                    task: l.task.clone(),
                    attempt: l.attempt,
                    node: l.node.clone(),
                    ask: l.ask,
                    flavour: l.flavour.clone(),
                    start_ns: l.at_ns,
                    end: None,
                });
            }
            Kind::Exit | Kind::Term | Kind::Killed => {
                if let Some(i) = open.remove(&key) {
                    out[i].end = Some((l.kind, l.at_ns));
                }
            }
        }
    }
    out
}

/// Ends the intervals that have no end line with the time their process
/// was seen to have ended (`(task, attempt, node)` -> ns); returns how many.
pub fn close_with(
    intervals: &mut [Interval],
    ended: &BTreeMap<(String, u32, String), u128>,
) -> usize {
    let mut closed = 0;
    for i in intervals.iter_mut().filter(|i| i.end.is_none()) {
        if let Some(at) = ended.get(&(i.task.clone(), i.attempt, i.node.clone())) {
            i.end = Some((Kind::Killed, *at));
            closed += 1;
        }
    }
    closed
}

/// Node -> attempts running there now (started, no end line yet).
pub fn running_per_node(intervals: &[Interval]) -> BTreeMap<String, usize> {
    let mut running = BTreeMap::new();
    for i in intervals.iter().filter(|i| i.end.is_none()) {
        *running.entry(i.node.clone()).or_insert(0) += 1;
    }
    running
}

/// How the attempts of each task sit against each other across nodes: what
/// makes a check of "one exclusive task never on two nodes at once" more
/// than vacuous.
#[derive(Debug, Default)]
pub struct AcrossNodes {
    /// Distinct tasks that started at least once.
    pub tasks: usize,
    /// Start lines.
    pub attempts: usize,
    /// Tasks that started on two nodes or more.
    pub moved: usize,
    /// Pairs of attempts of one task on two different nodes (each such pair
    /// is one comparison of two intervals).
    pub pairs: usize,
    /// Pairs whose intervals overlap (an open interval runs to the end).
    pub overlapping: usize,
    /// The pair that came closest: (task, the node it ended on, the node
    /// it started on next, ns from that end to that start).
    pub closest: Option<(String, String, String, i128)>,
}

/// Compares every pair of attempts of one task on different nodes.
pub fn across_nodes(intervals: &[Interval]) -> AcrossNodes {
    let mut by_task: BTreeMap<&str, Vec<&Interval>> = BTreeMap::new();
    for i in intervals {
        by_task.entry(&i.task).or_default().push(i);
    }
    let mut out = AcrossNodes {
        tasks: by_task.len(),
        attempts: intervals.len(),
        ..AcrossNodes::default()
    };
    for attempts in by_task.values() {
        let mut nodes: Vec<&str> = attempts.iter().map(|i| i.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.len() > 1 {
            out.moved += 1;
        }
        for (k, a) in attempts.iter().enumerate() {
            for b in &attempts[k + 1..] {
                if a.node == b.node {
                    continue;
                }
                out.pairs += 1;
                let (first, then) = if a.start_ns <= b.start_ns {
                    (a, b)
                } else {
                    (b, a)
                };
                let gap = match first.end {
                    Some((_, end)) => then.start_ns as i128 - end as i128,
                    None => i128::MIN,
                };
                if gap < 0 {
                    out.overlapping += 1;
                }
                if out.closest.as_ref().is_none_or(|c| gap < c.3) {
                    out.closest = Some((
                        first.task.clone(),
                        first.node.clone(),
                        then.node.clone(),
                        gap,
                    ));
                }
            }
        }
    }
    out
}

/// The tasks that started on two nodes or more.
pub fn moved_tasks(intervals: &[Interval]) -> BTreeSet<String> {
    let mut nodes: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for i in intervals {
        nodes.entry(&i.task).or_default().insert(&i.node);
    }
    nodes
        .into_iter()
        .filter(|(_, n)| n.len() > 1)
        .map(|(t, _)| t.to_string())
        .collect()
}

/// One look at a node's load: at a start line, what every attempt
/// running on that node then (that one included) asked for together.
#[derive(Debug, Clone)]
pub struct Load {
    pub at_ns: u128,
    pub node: String,
    pub placed: Ask,
    pub running: usize,
}

/// The load of the node of every start line, right after that start. The
/// load of a node only grows at a start, so these are all its peaks. An
/// attempt ends at its end line; one with none still runs.
pub fn loads(intervals: &[Interval]) -> Vec<Load> {
    let mut out = Vec::new();
    for i in intervals {
        let mut placed = Ask::default();
        let mut running = 0;
        for other in intervals.iter().filter(|o| o.node == i.node) {
            let began = other.start_ns <= i.start_ns;
            let not_ended = other.end.is_none_or(|(_, end)| end > i.start_ns);
            if began && not_ended {
                placed.add(other.ask);
                running += 1;
            }
        }
        out.push(Load {
            at_ns: i.start_ns,
            node: i.node.clone(),
            placed,
            running,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &str, task: &str, node: &str, ns: u128, cpu: u64) -> Line {
        parse(&format!(
            "{kind} {task} 1 /d/agents/{node}/tasks/x/work {ns} plain {cpu} 100 7"
        ))
        .expect("a well-formed line")
    }

    #[test]
    fn an_attempt_that_starts_on_a_second_node_before_it_ended_on_the_first_overlaps() {
        let lines = [
            line("start", "j/0", "a", 10, 1000),
            line("start", "j/0", "b", 20, 1000),
            line("exit", "j/0", "a", 30, 1000),
            line("exit", "j/0", "b", 40, 1000),
        ];
        let across = across_nodes(&intervals(&lines));
        assert_eq!((across.moved, across.pairs, across.overlapping), (1, 1, 1));
        assert_eq!(across.closest.map(|c| c.3), Some(-10));
    }

    #[test]
    fn the_load_at_a_start_counts_what_runs_on_that_node_and_nothing_ended() {
        let lines = [
            line("start", "j/0", "a", 10, 1000),
            line("start", "j/1", "a", 20, 2000),
            line("exit", "j/0", "a", 30, 1000),
            line("start", "j/2", "a", 40, 1000),
            line("start", "j/3", "b", 41, 4000),
        ];
        let cpu: Vec<u64> = loads(&intervals(&lines))
            .iter()
            .map(|l| l.placed.cpu_millis)
            .collect();
        assert_eq!(cpu, [1000, 3000, 3000, 4000]);
    }
}
