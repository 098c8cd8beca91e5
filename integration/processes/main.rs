//! The tests of the `meridian` binary (docs/testing.md), built as one test
//! binary: one link instead of one per file. Each file of this folder is a
//! module here, the shared harness is declared once above them, and
//! nextest still runs every test in its own process. `test_waits.rs` stays
//! a binary of its own: CI runs it before the suite is built.

mod console_support;
mod federation;
mod support;

// Parts of the chaos test's history checker, kept beside the federation
// harness they read.
#[path = "federation/chaos_history.rs"]
mod chaos_history;
#[path = "federation/task_exits.rs"]
mod task_exits;
#[path = "federation/task_lines.rs"]
mod task_lines;

mod access_cli;
mod agent_real_region;
mod chaos;
mod cli_commands;
mod console_browser;
mod console_schedules;
mod console_usage;
mod console_waiting;
mod console_workloads;
mod dev_supervisor;
mod e2e_faults;
mod e2e_federation;
mod e2e_pipeline;
mod e2e_scale;
mod e2e_usage;
mod global_failover;
mod global_pause;
mod global_regional_link;
mod live_logs;
mod load_quick;
mod observability;
mod regional_failover;
mod schedule_failover;
