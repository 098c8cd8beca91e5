//! An agent's calls repeated under load cost the region nothing twice: a
//! registration or report whose caller stopped waiting is dropped from the
//! write pipeline before it commits (the agent still holds it and sends it
//! again), and a node registering again with the boot it is registered
//! under is answered from memory, with its epoch, without a transaction.
//!
//! These are what kept a region of 10,000 simulated nodes from settling:
//! registrations that timed out on a saturated region still committed, in
//! front of their own retries.

mod support;

use std::pin::pin;
use std::time::Duration;

use meridian_regional::agent::AgentApiConfig;
use support::{Region, agent_client, registration};

/// Node ids in the region's view.
async fn known(region: &Region) -> Vec<String> {
    region.view().await.nodes.keys().cloned().collect()
}

#[tokio::test]
async fn a_registration_whose_caller_stopped_waiting_is_not_committed() {
    let region = Region::new().await;
    {
        // Queued, then abandoned before the committer ran: this test's
        // runtime has one thread, which the committer gets only when the
        // test awaits.
        let mut abandoned = pin!(region.fx.register(registration("node-a", "boot-1")));
        assert!(
            futures::poll!(abandoned.as_mut()).is_pending(),
            "the registration waits for the committer"
        );
    }
    region.register("node-b", "boot-1").await;
    assert_eq!(known(&region).await, ["node-b"]);

    // Nothing of the abandoned call is left behind: the node's next
    // registration is its first.
    let a = region.register("node-a", "boot-1").await;
    assert_eq!(a.epoch, 1);
    assert_eq!(known(&region).await, ["node-a", "node-b"]);
}

#[tokio::test]
async fn a_node_registering_again_with_its_boot_is_answered_with_its_epoch_and_nothing_is_written()
{
    let (region, log) = Region::recorded().await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;
    let first = agent
        .register(registration("node-a", "boot-1"))
        .await
        .expect("register")
        .into_inner();
    let commits = log.lock().len();

    region.clock.advance(Duration::from_secs(1));
    let again = agent
        .register(registration("node-a", "boot-1"))
        .await
        .expect("register again")
        .into_inner();
    assert_eq!(again.node_epoch, first.node_epoch);
    assert_eq!(again.shard_id, first.shard_id);
    assert_eq!(log.lock().len(), commits, "a retry commits nothing");

    // A new boot is a new registration: written, with a new epoch.
    let rebooted = agent
        .register(registration("node-a", "boot-2"))
        .await
        .expect("register after a reboot")
        .into_inner();
    assert_eq!(rebooted.node_epoch, first.node_epoch + 1);
    assert!(log.lock().len() > commits);
}
