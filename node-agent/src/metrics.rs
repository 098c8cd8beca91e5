//! The node agent's metrics (Prometheus names, kinds and labels) and its
//! `/metrics` endpoint (`meridian agent --metrics-listen ADDR`).
//!
//! Owns the names below; every recording goes through these functions so
//! the table in docs/agent.md stays true. Labels take only fixed values:
//! never a node id, job id or task id (an agent hosting thousands of
//! simulated nodes records them all under the same series). Must never
//! block or fail a node's loop.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `meridian_agent_task_starts_total` | counter | `outcome` | RUN commands carried out; `outcome` is `started` or `failed` (could not start) |
//! | `meridian_agent_task_finishes_total` | counter | `state` | attempts that ended; `state` is `succeeded`, `failed` or `killed` |
//! | `meridian_agent_fencing_rejections_total` | counter | `epoch` | commands refused as stale; `epoch` is `shard` (older shard leader) or `node` (other registration) |

use std::net::SocketAddr;

use meridian_proto::v1::TaskState;
use tokio::net::TcpListener;

use crate::fence::Refusal;

/// A RUN was carried out (`started`) or could not start.
pub(crate) fn task_started(started: bool) {
    let outcome = if started { "started" } else { "failed" };
    metrics::counter!("meridian_agent_task_starts_total", "outcome" => outcome).increment(1);
}

/// A live attempt ended in `state`.
pub(crate) fn task_finished(state: TaskState) {
    let state = match state {
        TaskState::Succeeded => "succeeded",
        TaskState::Killed => "killed",
        _ => "failed",
    };
    metrics::counter!("meridian_agent_task_finishes_total", "state" => state).increment(1);
}

/// A command was refused by the fence.
pub(crate) fn refused(refusal: &Refusal) {
    let epoch = match refusal {
        Refusal::StaleShardEpoch { .. } => "shard",
        Refusal::WrongNodeEpoch { .. } => "node",
    };
    metrics::counter!("meridian_agent_fencing_rejections_total", "epoch" => epoch).increment(1);
}

/// Installs the process's Prometheus recorder and serves `/metrics` on
/// `addr` until `stop` resolves; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(std::io::Error::other)?;
    for epoch in ["shard", "node"] {
        let _ = metrics::counter!("meridian_agent_fencing_rejections_total", "epoch" => epoch);
    }
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "metrics server ended with an error");
        }
    });
    Ok(bound)
}
