//! A node registered by the test itself through the region's real
//! `AgentLink` proto, where a test needs nodes whose every report it
//! decides (a fake agent) rather than a `meridian agent` process.

use meridian_proto::v1;
use meridian_proto::v1::agent_link_client::AgentLinkClient;
use tonic::transport::Channel;

const GIB: u64 = 1 << 30;

/// Registers `node` in `zone`, offering `cores` cores and 2 GiB of memory
/// per core, with the region replica at `region_grpc` (`ADDR`). Returns the
/// client and the node's epoch.
pub async fn register_node(
    region_grpc: &str,
    node: &str,
    zone: &str,
    cores: u64,
) -> (AgentLinkClient<Channel>, u64) {
    let client = AgentLinkClient::connect(format!("http://{region_grpc}"))
        .await
        .expect("connect to the region");
    let request = v1::RegisterNodeRequest {
        node_id: node.into(),
        boot_id: format!("boot-{node}"),
        allocatable: Some(v1::Resources {
            cpu_millis: cores * 1000,
            memory_bytes: cores * 2 * GIB,
            gpu_count: 0,
            gpu_type: String::new(),
        }),
        zone: zone.into(),
        agent_version: "fake".into(),
        ..Default::default()
    };
    // A region replica answers registrations only once it leads the node's
    // shard, which it takes just after it starts listening; an agent sends
    // the registration again until then, by control's retry rule, and so
    // does this one.
    let epoch = super::retry::until_served(&format!("register {node}"), || {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.register(request).await }
    })
    .await
    .into_inner()
    .node_epoch;
    (client, epoch)
}
