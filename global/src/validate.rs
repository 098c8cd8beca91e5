//! Validation of client requests, before anything is read or written.
//!
//! Owns the rules of the `.proto` comments for what clients send: every
//! violation is a [`GlobalError::Invalid`] naming the field by its proto path
//! (`spec.resources.cpu_millis`, `spec.allowed_regions[2]`). It must never
//! touch the store: checks that need stored state (is this region known?)
//! happen inside the writing transaction, so nothing is half-written.
//!
//! A spec over its encoded-size limit is refused naming the field that made
//! it too large (see [`oversized`]), before any other rule looks at it.

use std::collections::BTreeSet;

use meridian_proto::limits;
use meridian_proto::v1::{
    AffinityKind, JobSpec, JobState, LabelOperator, LabelRequirement, PlacementPolicy,
    RegionLossPolicy, SubmitJobRequest, TopologyDomain, task_template,
};
use prost::Message;

use crate::error::{GlobalError, Result};

/// Largest CPU request of one task: 1,024 cores.
pub const MAX_CPU_MILLIS: u64 = 1_024_000;
/// Largest memory request of one task: 16 TiB.
pub const MAX_MEMORY_BYTES: u64 = 16 << 40;
/// Largest GPU request of one task.
pub const MAX_GPU_COUNT: u32 = 64;
/// Longest simulated task: one week.
pub const MAX_SIMULATED_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most regions named in one list of a spec.
pub const MAX_REGIONS: usize = 64;
/// Most node constraints of a spec.
pub const MAX_CONSTRAINTS: usize = 64;
/// Most affinity terms of a spec.
pub const MAX_AFFINITIES: usize = 16;
/// Most arguments of a command.
pub const MAX_ARGS: usize = 1024;
/// Longest reason (cancel, drain), in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest job name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest tenant, in bytes.
pub const MAX_TENANT_BYTES: usize = 64;
/// Longest command program, in bytes.
pub const MAX_PROGRAM_BYTES: usize = 4096;
/// Longest region name, in bytes.
pub const MAX_REGION_NAME_BYTES: usize = 64;
/// Longest GPU type, in bytes.
pub const MAX_GPU_TYPE_BYTES: usize = 64;

fn invalid<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T> {
    Err(GlobalError::invalid(field, message))
}

fn check_len(field: &str, value: &str, min: usize, max: usize) -> Result<()> {
    if value.len() < min {
        return invalid(
            field,
            if min == 1 {
                "required".to_string()
            } else {
                format!("shorter than {min} bytes")
            },
        );
    }
    if value.len() > max {
        return invalid(field, format!("{} bytes, at most {max}", value.len()));
    }
    Ok(())
}

/// Checks a submit request (everything but whether named regions exist).
pub fn submit(req: &SubmitJobRequest) -> Result<()> {
    check_len(
        "request_id",
        &req.request_id,
        1,
        limits::MAX_REQUEST_ID_BYTES,
    )?;
    let Some(spec) = &req.spec else {
        return invalid("spec", "required");
    };
    // Computing the encoded size walks the message without copying it, so an
    // oversize spec is refused before any per-field rule runs on it.
    let size = spec.encoded_len();
    if size > limits::MAX_JOB_SPEC_BYTES {
        return Err(oversized(spec, size));
    }
    job_spec(spec)
}

/// One string of a spec weighed by [`oversized`]: its path, its length and
/// its own limit in bytes, if it has one.
struct Leaf {
    path: String,
    bytes: usize,
    limit: Option<usize>,
}

fn leaf(path: String, value: &str, limit: Option<usize>) -> Leaf {
    Leaf {
        path,
        bytes: value.len(),
        limit,
    }
}

/// Names the field that makes a spec of `size` encoded bytes too large.
///
/// The largest string over its own limit is named first (`spec.name:
/// 1048576 bytes, at most 256`); failing that, the largest string when it
/// holds at least half of the spec's bytes; otherwise the repeated or map
/// field holding the most bytes (many small `args`).
fn oversized(spec: &JobSpec, size: usize) -> GlobalError {
    let max = limits::MAX_JOB_SPEC_BYTES;
    let mut leaves = vec![
        leaf("spec.name".into(), &spec.name, Some(MAX_NAME_BYTES)),
        leaf("spec.tenant".into(), &spec.tenant, Some(MAX_TENANT_BYTES)),
    ];
    // Repeated and map fields by their total bytes.
    let mut lists: Vec<(String, usize)> = Vec::new();
    let map_path = |field: &str, key: &str| {
        // A key too long to be valid would make an unreadable path (and an
        // oversize status header): the map itself is named instead.
        if key.len() > limits::MAX_LABEL_KEY_BYTES {
            field.to_string()
        } else {
            format!("{field}[{key:?}]")
        }
    };
    for (key, value) in &spec.labels {
        let at = map_path("spec.labels", key);
        leaves.push(leaf(at.clone(), key, Some(limits::MAX_LABEL_KEY_BYTES)));
        leaves.push(leaf(at, value, Some(limits::MAX_LABEL_VALUE_BYTES)));
    }
    let entries = |m: &std::collections::BTreeMap<String, String>| {
        m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    };
    lists.push(("spec.labels".into(), entries(&spec.labels)));
    if let Some(task_template::Kind::Command(cmd)) =
        spec.task.as_ref().and_then(|t| t.kind.as_ref())
    {
        leaves.push(leaf(
            "spec.task.command.program".into(),
            &cmd.program,
            Some(MAX_PROGRAM_BYTES),
        ));
        leaves.push(leaf(
            "spec.task.command.working_dir".into(),
            &cmd.working_dir,
            None,
        ));
        for (i, arg) in cmd.args.iter().enumerate() {
            leaves.push(leaf(format!("spec.task.command.args[{i}]"), arg, None));
        }
        for (key, value) in &cmd.env {
            let at = map_path("spec.task.command.env", key);
            leaves.push(leaf(at.clone(), key, None));
            leaves.push(leaf(at, value, None));
        }
        lists.push((
            "spec.task.command.args".into(),
            cmd.args.iter().map(String::len).sum(),
        ));
        lists.push(("spec.task.command.env".into(), entries(&cmd.env)));
    }
    if let Some(r) = &spec.resources {
        leaves.push(leaf(
            "spec.resources.gpu_type".into(),
            &r.gpu_type,
            Some(MAX_GPU_TYPE_BYTES),
        ));
    }
    for (field, list) in [
        ("spec.allowed_regions", &spec.allowed_regions),
        ("spec.preferred_regions", &spec.preferred_regions),
    ] {
        for (i, name) in list.iter().enumerate() {
            leaves.push(leaf(
                format!("{field}[{i}]"),
                name,
                Some(MAX_REGION_NAME_BYTES),
            ));
        }
        lists.push((field.into(), list.iter().map(String::len).sum()));
    }
    selector_leaves("spec.node_constraints", &spec.node_constraints, &mut leaves);
    lists.push((
        "spec.node_constraints".into(),
        spec.node_constraints.iter().map(Message::encoded_len).sum(),
    ));
    for (i, term) in spec.affinities.iter().enumerate() {
        selector_leaves(
            &format!("spec.affinities[{i}].selector"),
            &term.selector,
            &mut leaves,
        );
    }
    lists.push((
        "spec.affinities".into(),
        spec.affinities.iter().map(Message::encoded_len).sum(),
    ));

    let whole = |field: String, bytes: usize| {
        GlobalError::invalid(
            field,
            format!("{bytes} bytes, making the spec {size} bytes encoded, at most {max}"),
        )
    };
    // The first of equally large strings (maps are ordered), so the same
    // spec always names the same field.
    let larger = |a: Leaf, b: Leaf| if b.bytes > a.bytes { b } else { a };
    let (over, within): (Vec<Leaf>, Vec<Leaf>) = leaves
        .into_iter()
        .partition(|l| l.limit.is_some_and(|limit| l.bytes > limit));
    // A string over its own limit is wrong whatever else the spec holds, so
    // it is named first: fixing anything else would not make the spec valid.
    if let Some(l) = over.into_iter().reduce(larger) {
        let limit = l.limit.unwrap_or(max);
        return GlobalError::invalid(l.path, format!("{} bytes, at most {limit}", l.bytes));
    }
    let largest = within.into_iter().reduce(larger);
    if let Some(l) = largest.as_ref().filter(|l| l.bytes * 2 >= size) {
        return whole(l.path.clone(), l.bytes);
    }
    match lists
        .into_iter()
        .reduce(|a, b| if b.1 > a.1 { b } else { a })
    {
        Some((field, bytes)) if bytes > 0 => whole(field, bytes),
        _ => match largest {
            Some(l) => whole(l.path, l.bytes),
            None => whole("spec".into(), size),
        },
    }
}

fn selector_leaves(field: &str, reqs: &[LabelRequirement], leaves: &mut Vec<Leaf>) {
    for (i, req) in reqs.iter().enumerate() {
        let at = format!("{field}[{i}]");
        leaves.push(leaf(
            format!("{at}.key"),
            &req.key,
            Some(limits::MAX_LABEL_KEY_BYTES),
        ));
        for (j, v) in req.values.iter().enumerate() {
            leaves.push(leaf(
                format!("{at}.values[{j}]"),
                v,
                Some(limits::MAX_LABEL_VALUE_BYTES),
            ));
        }
    }
}

/// Checks a job spec; field paths start with `spec.`.
pub fn job_spec(spec: &JobSpec) -> Result<()> {
    check_len("spec.name", &spec.name, 1, MAX_NAME_BYTES)?;
    check_len("spec.tenant", &spec.tenant, 1, MAX_TENANT_BYTES)?;
    labels("spec.labels", spec.labels.iter())?;
    if spec.task_count == 0 {
        return invalid("spec.task_count", "must be at least 1");
    }
    if spec.task_count > limits::MAX_TASK_COUNT {
        return invalid(
            "spec.task_count",
            format!("at most {} tasks", limits::MAX_TASK_COUNT),
        );
    }
    parallelism(spec)?;
    task(spec)?;
    resources(spec)?;
    regions(spec)?;
    if spec.node_constraints.len() > MAX_CONSTRAINTS {
        return invalid(
            "spec.node_constraints",
            format!("at most {MAX_CONSTRAINTS} entries"),
        );
    }
    selector("spec.node_constraints", &spec.node_constraints)?;
    affinities(spec)?;
    crate::dependencies::validate(spec)?;
    if PlacementPolicy::try_from(spec.placement).is_err() {
        return invalid(
            "spec.placement",
            format!("unknown enum value {}", spec.placement),
        );
    }
    if RegionLossPolicy::try_from(spec.on_region_loss).is_err() {
        return invalid(
            "spec.on_region_loss",
            format!("unknown enum value {}", spec.on_region_loss),
        );
    }
    if let Some(retry) = &spec.retry {
        if retry.max_attempts > limits::MAX_ATTEMPTS {
            return invalid(
                "spec.retry.max_attempts",
                format!("at most {}", limits::MAX_ATTEMPTS),
            );
        }
        if retry.backoff_base_ms != 0
            && retry.backoff_cap_ms != 0
            && retry.backoff_cap_ms < retry.backoff_base_ms
        {
            return invalid("spec.retry.backoff_cap_ms", "below backoff_base_ms");
        }
    }
    if spec.stop_grace_period_ms > limits::MAX_STOP_GRACE_PERIOD_MS {
        return invalid(
            "spec.stop_grace_period_ms",
            format!("at most {} ms", limits::MAX_STOP_GRACE_PERIOD_MS),
        );
    }
    Ok(())
}

/// The cap on tasks bound at once: at most the job's task count (a larger
/// cap would mean nothing), and never with a gang, which needs every task
/// bound at once.
fn parallelism(spec: &JobSpec) -> Result<()> {
    if spec.parallelism == 0 {
        return Ok(());
    }
    if spec.parallelism > spec.task_count {
        return invalid(
            "spec.parallelism",
            format!(
                "at most spec.task_count ({}); 0 means no limit",
                spec.task_count
            ),
        );
    }
    if spec.gang && spec.parallelism < spec.task_count {
        return invalid(
            "spec.parallelism",
            "a gang job binds every task at once: leave parallelism at 0",
        );
    }
    Ok(())
}

fn labels<'a>(
    field: &str,
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<()> {
    if labels.len() > limits::MAX_LABELS {
        return invalid(field, format!("at most {} labels", limits::MAX_LABELS));
    }
    for (key, value) in labels {
        check_len(
            &format!("{field}[{key:?}]"),
            key,
            1,
            limits::MAX_LABEL_KEY_BYTES,
        )?;
        check_len(
            &format!("{field}[{key:?}]"),
            value,
            0,
            limits::MAX_LABEL_VALUE_BYTES,
        )?;
    }
    Ok(())
}

fn task(spec: &JobSpec) -> Result<()> {
    let kind = spec.task.as_ref().and_then(|t| t.kind.as_ref());
    match kind {
        None => invalid("spec.task", "required: a command or a simulated task"),
        Some(task_template::Kind::Command(cmd)) => {
            if cmd.program.trim().is_empty() {
                return invalid("spec.task.command.program", "required");
            }
            check_len(
                "spec.task.command.program",
                &cmd.program,
                1,
                MAX_PROGRAM_BYTES,
            )?;
            if cmd.args.len() > MAX_ARGS {
                return invalid(
                    "spec.task.command.args",
                    format!("at most {MAX_ARGS} arguments"),
                );
            }
            for key in cmd.env.keys() {
                if key.is_empty() || key.contains('=') || key.contains('\0') {
                    return invalid(
                        format!("spec.task.command.env[{key:?}]"),
                        "keys are non-empty and contain no '=' or NUL",
                    );
                }
            }
            Ok(())
        }
        Some(task_template::Kind::Simulated(sim)) => {
            if sim.duration_ms > MAX_SIMULATED_MS {
                return invalid(
                    "spec.task.simulated.duration_ms",
                    format!("at most {MAX_SIMULATED_MS} ms"),
                );
            }
            Ok(())
        }
    }
}

fn resources(spec: &JobSpec) -> Result<()> {
    let Some(r) = &spec.resources else {
        return invalid("spec.resources", "required");
    };
    if r.cpu_millis == 0 {
        return invalid("spec.resources.cpu_millis", "must be above 0");
    }
    if r.cpu_millis > MAX_CPU_MILLIS {
        return invalid(
            "spec.resources.cpu_millis",
            format!("at most {MAX_CPU_MILLIS}"),
        );
    }
    if r.memory_bytes == 0 {
        return invalid("spec.resources.memory_bytes", "must be above 0");
    }
    if r.memory_bytes > MAX_MEMORY_BYTES {
        return invalid(
            "spec.resources.memory_bytes",
            format!("at most {MAX_MEMORY_BYTES}"),
        );
    }
    if r.gpu_count > MAX_GPU_COUNT {
        return invalid(
            "spec.resources.gpu_count",
            format!("at most {MAX_GPU_COUNT}"),
        );
    }
    if !r.gpu_type.is_empty() && r.gpu_count == 0 {
        return invalid("spec.resources.gpu_type", "set while gpu_count is 0");
    }
    check_len(
        "spec.resources.gpu_type",
        &r.gpu_type,
        0,
        MAX_GPU_TYPE_BYTES,
    )
}

/// Checks a region name: 1 to 64 bytes of lowercase letters, digits and `-`.
pub fn region_name(field: &str, name: &str) -> Result<()> {
    check_len(field, name, 1, MAX_REGION_NAME_BYTES)?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid(field, "only lowercase letters, digits and '-'");
    }
    Ok(())
}

fn regions(spec: &JobSpec) -> Result<()> {
    for (field, list) in [
        ("spec.allowed_regions", &spec.allowed_regions),
        ("spec.preferred_regions", &spec.preferred_regions),
    ] {
        if list.len() > MAX_REGIONS {
            return invalid(field, format!("at most {MAX_REGIONS} entries"));
        }
        let mut seen = BTreeSet::new();
        for (i, name) in list.iter().enumerate() {
            region_name(&format!("{field}[{i}]"), name)?;
            if !seen.insert(name) {
                return invalid(format!("{field}[{i}]"), "duplicate region");
            }
        }
    }
    if !spec.allowed_regions.is_empty() {
        for (i, name) in spec.preferred_regions.iter().enumerate() {
            if !spec.allowed_regions.contains(name) {
                return invalid(
                    format!("spec.preferred_regions[{i}]"),
                    "not in allowed_regions",
                );
            }
        }
    }
    Ok(())
}

/// Checks a label selector; entries are named `field[i]`.
pub fn selector(field: &str, reqs: &[LabelRequirement]) -> Result<()> {
    for (i, req) in reqs.iter().enumerate() {
        let at = format!("{field}[{i}]");
        check_len(
            &format!("{at}.key"),
            &req.key,
            1,
            limits::MAX_LABEL_KEY_BYTES,
        )?;
        let op = match LabelOperator::try_from(req.op) {
            Ok(LabelOperator::Unspecified) => return invalid(format!("{at}.op"), "required"),
            Ok(op) => op,
            Err(_) => return invalid(format!("{at}.op"), format!("unknown enum value {}", req.op)),
        };
        let needs_values = matches!(op, LabelOperator::In | LabelOperator::NotIn);
        if needs_values && req.values.is_empty() {
            return invalid(
                format!("{at}.values"),
                "at least one value for IN and NOT_IN",
            );
        }
        if !needs_values && !req.values.is_empty() {
            return invalid(
                format!("{at}.values"),
                "must be empty for EXISTS and DOES_NOT_EXIST",
            );
        }
        if req.values.len() > 64 {
            return invalid(format!("{at}.values"), "at most 64 values");
        }
        for (j, v) in req.values.iter().enumerate() {
            check_len(
                &format!("{at}.values[{j}]"),
                v,
                0,
                limits::MAX_LABEL_VALUE_BYTES,
            )?;
        }
    }
    Ok(())
}

fn affinities(spec: &JobSpec) -> Result<()> {
    if spec.affinities.len() > MAX_AFFINITIES {
        return invalid(
            "spec.affinities",
            format!("at most {MAX_AFFINITIES} entries"),
        );
    }
    for (i, term) in spec.affinities.iter().enumerate() {
        let at = format!("spec.affinities[{i}]");
        match AffinityKind::try_from(term.kind) {
            Ok(AffinityKind::Unspecified) => return invalid(format!("{at}.kind"), "required"),
            Ok(_) => {}
            Err(_) => {
                return invalid(
                    format!("{at}.kind"),
                    format!("unknown enum value {}", term.kind),
                );
            }
        }
        if term.selector.is_empty() {
            return invalid(format!("{at}.selector"), "must not be empty");
        }
        selector(&format!("{at}.selector"), &term.selector)?;
        if TopologyDomain::try_from(term.topology).is_err() {
            return invalid(
                format!("{at}.topology"),
                format!("unknown enum value {}", term.topology),
            );
        }
        if !term.required && !(1..=100).contains(&term.weight) {
            return invalid(format!("{at}.weight"), "1 to 100 for a soft rule");
        }
    }
    Ok(())
}

/// Checks a list of job states used as a filter.
pub fn states(field: &str, states: &[i32]) -> Result<Vec<JobState>> {
    states
        .iter()
        .enumerate()
        .map(|(i, s)| match JobState::try_from(*s) {
            Ok(JobState::Unspecified) | Err(_) => {
                invalid(format!("{field}[{i}]"), format!("unknown job state {s}"))
            }
            Ok(state) => Ok(state),
        })
        .collect()
}

/// Checks a page size: 0 means the default, otherwise 1 to the maximum.
pub fn page_size(size: u32) -> Result<usize> {
    match size {
        0 => Ok(limits::DEFAULT_PAGE_SIZE as usize),
        s if s > limits::MAX_PAGE_SIZE => {
            invalid("page_size", format!("at most {}", limits::MAX_PAGE_SIZE))
        }
        s => Ok(s as usize),
    }
}

/// Checks a free-text reason.
pub fn reason(field: &str, reason: &str) -> Result<()> {
    check_len(field, reason, 0, MAX_REASON_BYTES)
}

/// Checks a job id given by a client.
pub fn job_id(field: &str, id: &str) -> Result<()> {
    check_len(field, id, 1, 64)
}

/// Whether labels satisfy every requirement of a selector.
pub fn matches(
    labels: &std::collections::BTreeMap<String, String>,
    selector: &[LabelRequirement],
) -> bool {
    selector.iter().all(|req| {
        let value = labels.get(&req.key);
        match LabelOperator::try_from(req.op) {
            Ok(LabelOperator::In) => value.is_some_and(|v| req.values.contains(v)),
            Ok(LabelOperator::NotIn) => value.is_none_or(|v| !req.values.contains(v)),
            Ok(LabelOperator::Exists) => value.is_some(),
            Ok(LabelOperator::DoesNotExist) => value.is_none(),
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use meridian_proto::v1::{Command, Resources, TaskTemplate};

    use super::*;

    fn request(f: impl FnOnce(&mut JobSpec)) -> SubmitJobRequest {
        let mut spec = JobSpec {
            name: "n".into(),
            tenant: "t".into(),
            task_count: 1,
            task: Some(TaskTemplate {
                kind: Some(task_template::Kind::Command(Command {
                    program: "echo".into(),
                    ..Command::default()
                })),
            }),
            resources: Some(Resources {
                cpu_millis: 1,
                memory_bytes: 1,
                ..Resources::default()
            }),
            ..JobSpec::default()
        };
        f(&mut spec);
        SubmitJobRequest {
            request_id: "r".into(),
            spec: Some(spec),
        }
    }

    fn field_of(req: &SubmitJobRequest) -> String {
        submit(req).unwrap_err().to_string()
    }

    fn command(spec: &mut JobSpec) -> &mut Command {
        match spec.task.as_mut().and_then(|t| t.kind.as_mut()) {
            Some(task_template::Kind::Command(c)) => c,
            _ => unreachable!("the test spec runs a command"),
        }
    }

    #[test]
    fn many_small_arguments_are_reported_as_the_list() {
        let req = request(|s| command(s).args = vec!["xx".into(); 30_000]);
        assert!(
            field_of(&req).starts_with("spec.task.command.args:"),
            "{}",
            field_of(&req)
        );
    }

    #[test]
    fn an_array_of_100000_tasks_with_a_parallelism_is_accepted_and_bad_caps_are_named() {
        let ok = request(|s| {
            s.task_count = 100_000;
            s.parallelism = 1_000;
        });
        assert!(submit(&ok).is_ok(), "{:?}", submit(&ok));
        let too_many = request(|s| s.task_count = 100_001);
        assert!(field_of(&too_many).starts_with("spec.task_count:"));
        let over = request(|s| {
            s.task_count = 10;
            s.parallelism = 11;
        });
        assert!(
            field_of(&over).starts_with("spec.parallelism:"),
            "{}",
            field_of(&over)
        );
        let gang = request(|s| {
            s.task_count = 10;
            s.parallelism = 5;
            s.gang = true;
        });
        assert!(field_of(&gang).starts_with("spec.parallelism:"));
    }

    #[test]
    fn a_string_over_its_own_limit_is_named_before_a_larger_one_without() {
        let req = request(|s| {
            s.labels.insert("k".into(), "v".repeat(40_000));
            command(s).args = vec!["x".repeat(50_000)];
        });
        assert!(
            field_of(&req).starts_with("spec.labels[\"k\"]:"),
            "{}",
            field_of(&req)
        );
    }
}
