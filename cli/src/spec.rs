//! Job specs from the command line and from spec files.
//!
//! Owns reading a spec file (TOML, JSON or YAML, chosen by extension, by the
//! proto3 JSON mapping of `meridian.v1.JobSpec`), applying `job submit`
//! flags on top of it, and parsing the small value syntaxes of the flags
//! (`k=v` labels, `512Mi` sizes, `0.5` cores). Must never validate what the
//! server validates: the server's `INVALID_ARGUMENT` names the field, and a
//! second, diverging set of rules here would only mislead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meridian_proto::v1::{
    Command, DependencyCondition, JobDependency, JobSpec, LabelOperator, LabelRequirement,
    PlacementPolicy, RegionLossPolicy, Resources, RetryPolicy, Simulated, TaskTemplate,
    job_dependency, task_template,
};

use crate::error::{CliError, Result};
use crate::render;

/// Flags of `meridian job submit` that describe the job.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SpecArgs {
    /// Spec file (`.toml`, `.json`, `.yaml`/`.yml`) holding a JobSpec in the
    /// proto3 JSON mapping; flags given as well override its fields.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Job name (default: the program name, or "simulated").
    #[arg(long)]
    pub name: Option<String>,
    /// Tenant owning the job (default "default").
    #[arg(long, env = "MERIDIAN_TENANT")]
    pub tenant: Option<String>,
    /// Priority: higher runs first.
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Start only once these jobs succeeded, every task of each (job ids,
    /// comma-separated or repeated); the job fails if one of them fails or
    /// is cancelled.
    #[arg(long = "after-ok", value_delimiter = ',', value_name = "JOB_ID")]
    pub after_ok: Vec<String>,
    /// Start only once these jobs ended, whatever their outcome.
    #[arg(long = "after-any", value_delimiter = ',', value_name = "JOB_ID")]
    pub after_any: Vec<String>,
    /// Start only once these jobs failed or were cancelled; the job fails
    /// if one of them succeeds.
    #[arg(long = "after-failed", value_delimiter = ',', value_name = "JOB_ID")]
    pub after_failed: Vec<String>,
    /// Number of tasks (an array job: each task finds its number in
    /// `MERIDIAN_TASK_INDEX`).
    #[arg(long, short = 'n')]
    pub count: Option<u32>,
    /// Most tasks of the job bound to nodes at once, across the region
    /// (like `%` in a Slurm array); 0 means no limit.
    #[arg(long)]
    pub parallelism: Option<u32>,
    /// CPU per task in cores, e.g. `0.5` (default 0.1).
    #[arg(long)]
    pub cpu: Option<f64>,
    /// Memory per task, e.g. `256Mi`, `1Gi`, `1000000` (default 64Mi).
    #[arg(long)]
    pub memory: Option<String>,
    /// GPUs per task.
    #[arg(long)]
    pub gpus: Option<u32>,
    /// Job label `key=value` (repeatable).
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// Region the job may run in (repeatable; default any).
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// Preferred region, most preferred first (repeatable).
    #[arg(long = "prefer")]
    pub preferred: Vec<String>,
    /// Node label requirement `key=value` (repeatable).
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// Placement within the region: `spread` or `pack`.
    #[arg(long, value_parser = ["spread", "pack"])]
    pub placement: Option<String>,
    /// At most one copy of each task runs at any time, across failures.
    #[arg(long)]
    pub exclusive: bool,
    /// Bind no task until every task can be bound.
    #[arg(long)]
    pub gang: bool,
    /// On region loss: `failover` (move the job) or `keep-running`.
    #[arg(long, value_parser = ["failover", "keep-running"])]
    pub on_region_loss: Option<String>,
    /// Attempts per task, including the first.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Graceful stop period in milliseconds.
    #[arg(long)]
    pub stop_grace_ms: Option<u64>,
    /// Run a simulated task lasting this many milliseconds instead of a command.
    #[arg(long, value_name = "MS", conflicts_with = "command")]
    pub simulate: Option<u64>,
    /// Exit code of the simulated task.
    #[arg(long, requires = "simulate", allow_negative_numbers = true)]
    pub exit_code: Option<i32>,
    /// Environment variable `KEY=VALUE` of the command (repeatable).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Working directory of the command on the node.
    #[arg(long)]
    pub workdir: Option<String>,
    /// The command to run, after `--`: `meridian job submit -- echo hello`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Parses `key=value` pairs.
pub fn parse_pairs(what: &str, items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--{what} {item:?}: expected KEY=VALUE")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Parses a byte size: a plain number, or one with a `K`/`M`/`G`/`T` suffix
/// (powers of 1000) or `Ki`/`Mi`/`Gi`/`Ti` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| CliError::usage(format!("size {text:?}: expected a number like 512Mi")))?;
    let scale: u64 = match unit.trim().trim_end_matches(['B', 'b']) {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => {
            return Err(CliError::usage(format!(
                "size {text:?}: unknown unit {other:?} (use K, M, G, T, Ki, Mi, Gi, Ti)"
            )));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| CliError::usage(format!("size {text:?} is too large")))
}

/// Reads a spec file into a JobSpec.
pub fn read_file(path: &Path) -> Result<JobSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("reading {}: {e}", path.display())))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let value: serde_json::Value = match ext.as_str() {
        "toml" => toml::from_str(&text)
            .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?,
        "yaml" | "yml" => serde_yaml_ng::from_str(&text)
            .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?,
        "json" => serde_json::from_str(&text)
            .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?,
        _ => {
            return Err(CliError::usage(format!(
                "{}: unknown spec format (use .toml, .json, .yaml or .yml)",
                path.display()
            )));
        }
    };
    render::from_json("JobSpec", value)
        .map_err(|e| CliError::usage(format!("{}: {e}", path.display())))
}

/// The spec described by a file (if any) and the flags on top of it.
pub fn build(args: &SpecArgs) -> Result<JobSpec> {
    let mut spec = match &args.file {
        Some(path) => read_file(path)?,
        None => JobSpec::default(),
    };
    apply_task(&mut spec, args)?;
    apply_identity(&mut spec, args);
    apply_resources(&mut spec, args)?;
    apply_placement(&mut spec, args)?;
    apply_failure_policies(&mut spec, args);
    apply_dependencies(&mut spec, args);
    Ok(spec)
}

/// The jobs this one waits for, after those of the file, by condition
/// (after_ok, after_any, after_failed), each in the order given.
fn apply_dependencies(spec: &mut JobSpec, args: &SpecArgs) {
    for (condition, ids) in [
        (DependencyCondition::AfterOk, &args.after_ok),
        (DependencyCondition::AfterAny, &args.after_any),
        (DependencyCondition::AfterFailed, &args.after_failed),
    ] {
        for id in ids.iter().map(|id| id.trim()).filter(|id| !id.is_empty()) {
            spec.dependencies.push(JobDependency {
                condition: condition as i32,
                target: Some(job_dependency::Target::JobId(id.to_string())),
            });
        }
    }
}

/// The task: a simulated one or a command from the flags (replacing the
/// file's), then the command's environment and working directory.
fn apply_task(spec: &mut JobSpec, args: &SpecArgs) -> Result<()> {
    if let Some(ms) = args.simulate {
        spec.task = Some(TaskTemplate {
            kind: Some(task_template::Kind::Simulated(Simulated {
                duration_ms: ms,
                exit_code: args.exit_code.unwrap_or(0),
            })),
        });
    } else if let Some((program, rest)) = args.command.split_first() {
        spec.task = Some(TaskTemplate {
            kind: Some(task_template::Kind::Command(Command {
                program: program.clone(),
                args: rest.to_vec(),
                env: BTreeMap::new(),
                working_dir: String::new(),
            })),
        });
    }
    if !args.env.is_empty() || args.workdir.is_some() {
        let Some(TaskTemplate {
            kind: Some(task_template::Kind::Command(command)),
        }) = spec.task.as_mut()
        else {
            return Err(CliError::usage(
                "--env and --workdir need a command (after `--`)",
            ));
        };
        command.env.extend(parse_pairs("env", &args.env)?);
        if let Some(dir) = &args.workdir {
            command.working_dir = dir.clone();
        }
    }
    if spec.task.is_none() {
        return Err(CliError::usage(
            "nothing to run: give a command after `--` (e.g. `meridian job submit -- echo hello`), \
             --simulate MS, or --file SPEC",
        ));
    }
    Ok(())
}

/// Name, tenant, priority and task count, with their defaults.
fn apply_identity(spec: &mut JobSpec, args: &SpecArgs) {
    if let Some(name) = &args.name {
        spec.name = name.clone();
    } else if spec.name.is_empty() {
        spec.name = match spec.task.as_ref().and_then(|t| t.kind.as_ref()) {
            Some(task_template::Kind::Command(c)) => Path::new(&c.program)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("job")
                .to_string(),
            _ => "simulated".to_string(),
        };
    }
    if let Some(tenant) = &args.tenant {
        spec.tenant = tenant.clone();
    } else if spec.tenant.is_empty() {
        spec.tenant = "default".to_string();
    }
    if let Some(p) = args.priority {
        spec.priority = p;
    }
    if let Some(n) = args.count {
        spec.task_count = n;
    } else if spec.task_count == 0 {
        spec.task_count = 1;
    }
    if let Some(p) = args.parallelism {
        spec.parallelism = p;
    }
}

/// Cores, memory and GPUs per task, with their defaults.
fn apply_resources(spec: &mut JobSpec, args: &SpecArgs) -> Result<()> {
    let resources = spec.resources.get_or_insert_with(Resources::default);
    if let Some(cpu) = args.cpu {
        if !cpu.is_finite() || cpu < 0.0 {
            return Err(CliError::usage(format!(
                "--cpu {cpu}: expected cores, e.g. 0.5"
            )));
        }
        // Rounded to thousandths of a core; checked finite and positive above.
        resources.cpu_millis = (cpu * 1000.0).round() as u64;
    } else if resources.cpu_millis == 0 {
        resources.cpu_millis = 100;
    }
    if let Some(m) = &args.memory {
        resources.memory_bytes = parse_size(m)?;
    } else if resources.memory_bytes == 0 {
        resources.memory_bytes = 64 << 20;
    }
    if let Some(g) = args.gpus {
        resources.gpu_count = g;
    }
    Ok(())
}

/// Labels, regions, node constraints and the placement policy.
fn apply_placement(spec: &mut JobSpec, args: &SpecArgs) -> Result<()> {
    spec.labels.extend(parse_pairs("label", &args.labels)?);
    spec.allowed_regions.extend(args.regions.iter().cloned());
    spec.preferred_regions
        .extend(args.preferred.iter().cloned());
    for (key, value) in parse_pairs("constraint", &args.constraints)? {
        spec.node_constraints.push(LabelRequirement {
            key,
            op: LabelOperator::In as i32,
            values: vec![value],
        });
    }
    match args.placement.as_deref() {
        Some("spread") => spec.placement = PlacementPolicy::Spread as i32,
        Some("pack") => spec.placement = PlacementPolicy::Pack as i32,
        _ => {}
    }
    spec.exclusive |= args.exclusive;
    spec.gang |= args.gang;
    Ok(())
}

/// What happens when a region is lost, how often a task is retried and how
/// long it is given to stop.
fn apply_failure_policies(spec: &mut JobSpec, args: &SpecArgs) {
    match args.on_region_loss.as_deref() {
        Some("failover") => spec.on_region_loss = RegionLossPolicy::Failover as i32,
        Some("keep-running") => spec.on_region_loss = RegionLossPolicy::KeepRunning as i32,
        _ => {}
    }
    if let Some(n) = args.max_attempts {
        spec.retry
            .get_or_insert_with(RetryPolicy::default)
            .max_attempts = n;
    }
    if let Some(ms) = args.stop_grace_ms {
        spec.stop_grace_period_ms = ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_decimal_and_binary_units() {
        assert_eq!(parse_size("512Mi").ok(), Some(512 << 20));
        assert_eq!(parse_size("2G").ok(), Some(2_000_000_000));
        assert_eq!(parse_size("1000").ok(), Some(1000));
        assert!(parse_size("12parsecs").is_err());
    }

    #[test]
    fn a_trailing_command_becomes_the_task_with_defaults_filled_in() {
        let args = SpecArgs {
            command: vec!["echo".into(), "hello".into()],
            ..SpecArgs::default()
        };
        let spec = build(&args).expect("spec");
        assert_eq!(spec.name, "echo");
        assert_eq!(spec.tenant, "default");
        assert_eq!(spec.task_count, 1);
        let Some(task_template::Kind::Command(c)) = spec.task.and_then(|t| t.kind) else {
            panic!("not a command");
        };
        assert_eq!(
            (c.program.as_str(), c.args),
            ("echo", vec!["hello".to_string()])
        );
    }

    #[test]
    fn count_and_parallelism_make_an_array_job_with_a_cap() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            spec: SpecArgs,
        }
        let cli = Cli::parse_from([
            "submit",
            "-n",
            "100000",
            "--parallelism",
            "1000",
            "--",
            "true",
        ]);
        let spec = build(&cli.spec).expect("spec");
        assert_eq!((spec.task_count, spec.parallelism), (100_000, 1000));
    }

    #[test]
    fn after_flags_become_dependencies_by_job_id_in_flag_order() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            spec: SpecArgs,
        }
        let cli = Cli::parse_from([
            "submit",
            "--after-ok",
            "j1,j2",
            "--after-any",
            "j3",
            "--after-failed",
            "j4",
            "--after-ok",
            "j5",
            "--simulate",
            "10",
        ]);
        let spec = build(&cli.spec).expect("spec");
        let got: Vec<(i32, String)> = spec
            .dependencies
            .iter()
            .map(|d| match &d.target {
                Some(job_dependency::Target::JobId(id)) => (d.condition, id.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        let ok = DependencyCondition::AfterOk as i32;
        assert_eq!(
            got,
            vec![
                (ok, "j1".to_string()),
                (ok, "j2".to_string()),
                (ok, "j5".to_string()),
                (DependencyCondition::AfterAny as i32, "j3".to_string()),
                (DependencyCondition::AfterFailed as i32, "j4".to_string()),
            ]
        );
    }

    #[test]
    fn spec_files_in_toml_yaml_and_json_read_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = [
            (
                "a.toml",
                "name = \"x\"\ntenant = \"t\"\ntask_count = 3\n[task.simulated]\ndurationMs = 5\n",
            ),
            (
                "a.yaml",
                "name: x\ntenant: t\ntask_count: 3\ntask:\n  simulated:\n    duration_ms: 5\n",
            ),
            (
                "a.json",
                r#"{"name":"x","tenant":"t","taskCount":3,"task":{"simulated":{"durationMs":"5"}}}"#,
            ),
        ];
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            let spec = read_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((spec.name.as_str(), spec.task_count), ("x", 3), "{name}");
        }
    }

    #[test]
    fn an_unknown_field_in_a_spec_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.json");
        std::fs::write(&path, r#"{"name":"x","task_cuont":3}"#).expect("write");
        let err = read_file(&path).expect_err("must fail").to_string();
        assert!(err.contains("task_cuont"), "{err}");
    }
}
