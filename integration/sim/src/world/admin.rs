//! The operator of a run: drains and undrains through the Federation API.
//!
//! Owns the admin host's loop: it takes the operator's requests the fault
//! plan makes ([`Command`]), in order, and sends each to the global
//! replicas over the simulated network, trying them in turn until one
//! acknowledges it or [`GIVE_UP_AFTER`] passes (the node drains are
//! forwarded by the global tier to the node's region). It records each
//! acknowledgement. Must never record a request that was not acknowledged,
//! nor change the world any other way than the API does.

use std::time::Duration;

use meridian_proto::v1;
use meridian_proto::v1::federation_client::FederationClient;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::history::{Event, Recorder};

/// One request of the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Drain the node (region, node id): cordon it and move its tasks.
    DrainNode(String, String),
    UncordonNode(String, String),
    /// Drain the region with evacuation: its jobs go to other regions.
    DrainRegion(String),
    UndrainRegion(String),
}

/// How long the operator keeps trying one request (simulated time); past
/// it, the next request goes ahead (a drain whose region is down may fail).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(6);
/// The operator's pause after a failed call before trying the next replica
/// (simulated time: behaviour of the simulated operator, not a wait of the
/// test).
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long one call may take before the operator tries again.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the operator until the harness drops its sender.
pub async fn run(mut commands: UnboundedReceiver<Command>, globals: Vec<String>, rec: Recorder) {
    while let Some(command) = commands.recv().await {
        send(&command, &globals, &rec).await;
    }
}

async fn send(command: &Command, globals: &[String], rec: &Recorder) {
    let deadline = tokio::time::Instant::now() + GIVE_UP_AFTER;
    let mut i = 0usize;
    while tokio::time::Instant::now() < deadline {
        let url = &globals[i % globals.len()];
        i += 1;
        let Some(client) = super::workload::federation_client(url) else {
            return;
        };
        match tokio::time::timeout(CALL_TIMEOUT, call(client, command)).await {
            Ok(Ok(())) => {
                rec.record(
                    "admin",
                    Event::AdminAcked {
                        action: format!("{command:?}"),
                    },
                );
                return;
            }
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::NotFound
                ) =>
            {
                tracing::warn!(%status, ?command, "the operator's request was refused");
                return;
            }
            _ => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

async fn call(
    mut client: FederationClient<tonic::transport::Channel>,
    command: &Command,
) -> Result<(), tonic::Status> {
    let reason = "simulated operator".to_string();
    match command.clone() {
        Command::DrainNode(region, node_id) => client
            .drain_node(v1::DrainNodeRequest {
                region,
                node_id,
                reason,
                ..Default::default()
            })
            .await
            .map(drop),
        Command::UncordonNode(region, node_id) => client
            .uncordon_node(v1::UncordonNodeRequest { region, node_id })
            .await
            .map(drop),
        Command::DrainRegion(region) => client
            .drain_region(v1::DrainRegionRequest {
                region,
                reason,
                evacuate: true,
            })
            .await
            .map(drop),
        Command::UndrainRegion(region) => client
            .undrain_region(v1::UndrainRegionRequest { region })
            .await
            .map(drop),
    }
}
