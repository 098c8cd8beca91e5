//! Output: tables for people, JSON for programs.
//!
//! Owns the `--output` flag, converting wire messages to and from JSON by
//! the proto3 JSON mapping (with proto field names, like the HTTP API), the
//! table style, and short names of enum values. Must never invent fields:
//! `--output json` shows exactly the messages the server returned.

use std::io::Write;
use std::sync::OnceLock;

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value;

use crate::error::{CliError, Result};

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    #[default]
    Table,
    /// JSON (proto3 mapping, proto field names); one document per result,
    /// one line per event when watching.
    Json,
}

/// The `--output` flag, shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();

fn descriptor(name: &str) -> Result<MessageDescriptor> {
    let pool = POOL
        .get_or_init(|| DescriptorPool::decode(meridian_proto::FILE_DESCRIPTOR_SET).ok())
        .as_ref()
        .ok_or_else(|| CliError::other("the embedded protocol descriptors do not decode"))?;
    pool.get_message_by_name(&format!("meridian.v1.{name}"))
        .ok_or_else(|| CliError::other(format!("no message meridian.v1.{name}")))
}

/// Message `name` (e.g. `Job`) as JSON with proto field names.
pub fn to_json<M: Message>(name: &str, message: &M) -> Result<Value> {
    let dynamic = DynamicMessage::decode(descriptor(name)?, message.encode_to_vec().as_slice())
        .map_err(|e| CliError::other(format!("re-decoding {name}: {e}")))?;
    let options = SerializeOptions::new().use_proto_field_name(true);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| CliError::other(format!("rendering {name}: {e}")))
}

/// A JSON value (proto3 mapping) as message `name`; the error names the field.
pub fn from_json<M: Message + Default>(name: &str, value: Value) -> Result<M> {
    let dynamic = DynamicMessage::deserialize(descriptor(name)?, value)
        .map_err(|e| CliError::usage(e.to_string()))?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| CliError::usage(e.to_string()))
}

/// Prints a JSON value, pretty.
pub fn print_json(value: &Value) -> Result<()> {
    write_json(&mut std::io::stdout().lock(), value)
}

/// Writes a JSON value, pretty, on its own lines.
pub fn write_json(out: &mut dyn Write, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::other(format!("writing JSON: {e}")))?;
    writeln!(out, "{text}").map_err(written)
}

/// The error of a failed write to the command's output.
pub fn written(e: std::io::Error) -> CliError {
    CliError::other(format!("writing the output: {e}"))
}

/// Prints message `name` as JSON.
pub fn print_message<M: Message>(name: &str, message: &M) -> Result<()> {
    print_json(&to_json(name, message)?)
}

/// A table with the given header, in the plain style.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().map(|h| h.to_string()));
    t
}

/// Prints a table (columns two spaces apart, no margin), trimming the
/// trailing spaces of each line.
pub fn print_table(table: &Table) {
    // Standard output gone (a closed pipe) leaves nobody to tell.
    let _ = write_table(&mut std::io::stdout().lock(), table);
}

/// Writes a table as [`print_table`] prints it.
pub fn write_table(out: &mut dyn Write, table: &Table) -> std::io::Result<()> {
    let mut table = table.clone();
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in table.to_string().lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `text` cut to at most `max` characters, the cut marked with `…`, for
/// table cells; `get` and JSON show the whole text.
pub fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", kept.trim_end())
}

/// The short name of an enum value: `JOB_STATE_RUNNING` -> `RUNNING`.
pub fn short(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix).unwrap_or(full).to_string()
}

/// A job state's short name.
pub fn job_state(state: i32) -> String {
    meridian_proto::v1::JobState::try_from(state)
        .map(|s| short(s.as_str_name(), "JOB_STATE_"))
        .unwrap_or_else(|_| state.to_string())
}

/// A task state's short name.
pub fn task_state(state: i32) -> String {
    meridian_proto::v1::TaskState::try_from(state)
        .map(|s| short(s.as_str_name(), "TASK_STATE_"))
        .unwrap_or_else(|_| state.to_string())
}

/// Milliseconds since the epoch as an age relative to now (`12s`, `3m`, `2h`, `5d`).
pub fn age(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(unix_ms);
    let secs = now.saturating_sub(unix_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// CPU millis as cores (`1.5`).
pub fn cores(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        format!("{:.1}", millis as f64 / 1000.0)
    }
}

/// Bytes with a binary unit (`512Mi`).
pub fn bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size {
            let v = n as f64 / size as f64;
            return if n.is_multiple_of(size) {
                format!("{}{unit}", n / size)
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_proto::v1::{Job, JobState};

    #[test]
    fn json_output_uses_proto_field_names_and_enum_names() {
        let job = Job {
            job_id: "j1-1".into(),
            state: JobState::Running as i32,
            ..Job::default()
        };
        let v = to_json("Job", &job).expect("json");
        assert_eq!(v["job_id"], "j1-1");
        assert_eq!(v["state"], "JOB_STATE_RUNNING");
    }

    #[test]
    fn sizes_and_cores_print_compactly() {
        assert_eq!(bytes(64 << 20), "64Mi");
        assert_eq!(bytes(1536 << 20), "1.5Gi");
        assert_eq!(cores(2500), "2.5");
        assert_eq!(cores(4000), "4");
        assert_eq!(job_state(JobState::Succeeded as i32), "SUCCEEDED");
    }

    #[test]
    fn ellipsis_keeps_short_text_and_cuts_long_text_to_the_limit_on_a_character_boundary() {
        assert_eq!(
            ellipsis("no allowed region is ready", 40),
            "no allowed region is ready"
        );
        assert_eq!(ellipsis("0/3 nodes: 3 are cordoned", 12), "0/3 nodes:…");
        assert_eq!(ellipsis("ééééé", 3), "éé…");
        assert_eq!(ellipsis("abc", 3), "abc");
    }
}
