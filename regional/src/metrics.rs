//! The regional tier's metrics (Prometheus names, kinds and labels).
//!
//! Owns the names below; every recording goes through these functions so
//! the table in docs/regional.md stays true. Must never block or fail.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `meridian_regional_bindings_total` | counter | `shard` |
//! | `meridian_regional_stale_bindings_total` | counter | `shard` |
//! | `meridian_regional_solve_seconds` | histogram | |
//! | `meridian_regional_queue_depth` | gauge | `shard` |
//! | `meridian_regional_nodes_declared_dead_total` | counter | |
//! | `meridian_regional_nodes_suspected_total` | counter | |
//! | `meridian_regional_tasks_lost_total` | counter | |
//! | `meridian_regional_stops_total` | counter | |
//! | `meridian_regional_agent_calls_total` | counter | `call`, `outcome` |
//! | `meridian_regional_shards_led` | gauge | |

use std::time::Duration;

use crate::placer::sweep::SweepOutcome;

pub(crate) fn bound(shard: u32, bound: usize, stale: usize) {
    metrics::counter!("meridian_regional_bindings_total", "shard" => shard.to_string())
        .increment(bound as u64);
    metrics::counter!("meridian_regional_stale_bindings_total", "shard" => shard.to_string())
        .increment(stale as u64);
}

pub(crate) fn solve_seconds(d: Duration) {
    metrics::histogram!("meridian_regional_solve_seconds").record(d.as_secs_f64());
}

pub(crate) fn queue_depth(shard: u32, depth: usize) {
    metrics::gauge!("meridian_regional_queue_depth", "shard" => shard.to_string())
        .set(depth as f64);
}

pub(crate) fn sweep(out: &SweepOutcome) {
    metrics::counter!("meridian_regional_nodes_declared_dead_total")
        .increment(out.declared_dead.len() as u64);
    metrics::counter!("meridian_regional_nodes_suspected_total")
        .increment(out.suspected.len() as u64);
    metrics::counter!("meridian_regional_tasks_lost_total").increment(out.lost_tasks as u64);
    metrics::counter!("meridian_regional_stops_total").increment(out.stops as u64);
}

pub(crate) fn agent_call(call: &'static str, outcome: &'static str) {
    metrics::counter!("meridian_regional_agent_calls_total", "call" => call, "outcome" => outcome)
        .increment(1);
}

pub(crate) fn shards_led(n: usize) {
    metrics::gauge!("meridian_regional_shards_led").set(n as f64);
}
