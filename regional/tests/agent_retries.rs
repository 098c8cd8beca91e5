//! An agent's call that timed out costs the region nothing: a registration
//! or report whose caller stopped waiting is dropped from the write pipeline
//! before it commits (the agent still holds it and sends it again).
//! Registrations that timed out on a saturated region and still committed,
//! in front of their own retries, kept a region of 10,000 simulated nodes
//! from settling. (A retry of the same boot is answered from memory: see
//! `agent_link.rs`.)

use crate::support;

use std::pin::pin;

use support::{Region, registration};

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
