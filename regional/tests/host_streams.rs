//! A host's batched calls over real gRPC: many nodes registered in one
//! `RegisterNodes` call, each answered as its own `Register` would be, and
//! their command streams on one `HostAssignments` call, each admitted, fed
//! and ended as its own `Assignments` stream would be.

use crate::support;

use std::collections::BTreeMap;

use meridian_proto::v1;
use meridian_proto::v1::host_stream_item::Event;
use meridian_regional::agent::AgentApiConfig;
use meridian_regional::jobs::simple_spec;
use meridian_regional::placement::TaskRef;
use support::{GIB, Region, agent_client, registration};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

fn open(pairs: &[(u64, &str, u64)]) -> v1::HostAssignmentsRequest {
    v1::HostAssignmentsRequest {
        open: pairs
            .iter()
            .map(|(id, node, epoch)| v1::HostStreamOpen {
                stream_id: *id,
                request: Some(v1::NodeAssignmentsRequest {
                    node_id: node.to_string(),
                    node_epoch: *epoch,
                    cursor: Vec::new(),
                }),
            })
            .collect(),
        ..Default::default()
    }
}

/// Reads items off the call until `done` says every stream has what the
/// test waits for; returns the events per stream id.
async fn read_until(
    call: &mut tonic::Streaming<v1::HostAssignmentsResponse>,
    seen: &mut BTreeMap<u64, Vec<Event>>,
    done: impl Fn(&BTreeMap<u64, Vec<Event>>) -> bool,
) {
    while !done(seen) {
        let message = call
            .next()
            .await
            .expect("the call goes on")
            .expect("no call error");
        for item in message.items {
            seen.entry(item.stream_id)
                .or_default()
                .push(item.event.expect("an event"));
        }
    }
}

fn is_bookmark(e: &Event) -> bool {
    matches!(e, Event::Command(c) if c.kind == v1::CommandKind::Bookmark as i32)
}

#[tokio::test]
async fn a_hosts_nodes_register_in_one_call_and_stream_on_one_call_each_judged_alone() {
    let region = Region::new().await;
    let (addr, _) = region.serve(AgentApiConfig::default()).await;
    let mut agent = agent_client(addr).await;

    let mut bad = registration("", "boot-1");
    bad.node_id.clear();
    let answers = agent
        .register_nodes(v1::RegisterNodesRequest {
            nodes: vec![
                registration("node-a", "boot-1"),
                bad,
                registration("node-b", "boot-1"),
            ],
        })
        .await
        .expect("register")
        .into_inner()
        .results;
    assert_eq!(answers.len(), 3, "one answer per node, in order");
    let epoch_a = answers[0]
        .response
        .as_ref()
        .expect("a registered")
        .node_epoch;
    let refused = answers[1].error.as_ref().expect("the bad one refused");
    assert_eq!(refused.code, tonic::Code::InvalidArgument as i32);
    assert!(refused.message.contains("node_id"), "{}", refused.message);
    let epoch_b = answers[2]
        .response
        .as_ref()
        .expect("b registered")
        .node_epoch;
    // A retry of the same boot keeps its epoch, as a single Register does.
    let again = agent
        .register_nodes(v1::RegisterNodesRequest {
            nodes: vec![registration("node-a", "boot-1")],
        })
        .await
        .expect("register again")
        .into_inner()
        .results;
    assert_eq!(
        again[0].response.as_ref().map(|r| r.node_epoch),
        Some(epoch_a)
    );

    let (requests, outbound) = mpsc::unbounded_channel();
    let mut call = agent
        .host_assignments(UnboundedReceiverStream::new(outbound))
        .await
        .expect("the call opens")
        .into_inner();
    requests
        .send(open(&[
            (1, "node-a", epoch_a),
            (2, "node-b", epoch_b),
            (3, "node-c", 1),
        ]))
        .expect("call open");
    let mut seen = BTreeMap::new();
    read_until(&mut call, &mut seen, |s| {
        [1, 2]
            .iter()
            .all(|id| s.get(id).is_some_and(|e| e.iter().any(is_bookmark)))
            && s.contains_key(&3)
    })
    .await;
    for id in [1, 2] {
        assert_eq!(
            seen[&id][0],
            Event::Opened(true),
            "stream {id} opened first"
        );
    }
    let Event::Ended(e) = &seen[&3][0] else {
        panic!("an unregistered node is refused: {:?}", seen[&3]);
    };
    assert_eq!(e.code, tonic::Code::FailedPrecondition as i32);

    // Two tasks of 3 cores on two 4-core nodes: one on each, and each
    // RUN reaches the stream of the node memory binds it to.
    let mut placer = region.shard_loop(0).await;
    region
        .insert("job-1", simple_spec("t", 2, 3_000, GIB))
        .await;
    let bound = placer.round().await.expect("round").outcome.bound;
    assert_eq!(bound.len(), 2);
    let mut seen = BTreeMap::new();
    let is_run =
        |e: &Event| matches!(e, Event::Command(c) if c.kind == v1::CommandKind::Run as i32);
    read_until(&mut call, &mut seen, |s| {
        s.values().flatten().filter(|e| is_run(e)).count() == 2
    })
    .await;
    let nodes = BTreeMap::from([(1u64, "node-a"), (2u64, "node-b")]);
    for (id, events) in &seen {
        let runs: Vec<&v1::AssignmentCommand> = events
            .iter()
            .filter_map(|e| match e {
                Event::Command(c) if is_run(e) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(runs.len(), 1, "stream {id}: {events:?}");
        let task = runs[0]
            .task
            .as_ref()
            .and_then(|a| a.task.as_ref())
            .expect("task");
        let state = region.fx.path.state.read();
        let node = state.nodes.get(nodes[id]).expect("node in memory");
        assert!(
            node.bound
                .contains_key(&TaskRef::new(task.job_id.clone(), task.index)),
            "the RUN on stream {id} is for a task bound to {}",
            nodes[id]
        );
    }

    // Node-b comes back with a new boot: its stream ends alone.
    agent
        .register(registration("node-b", "boot-2"))
        .await
        .expect("re-register");
    let streams = region.fx.path.streams.clone();
    let leading: meridian_regional::shard::Leading = Default::default();
    leading.lock().insert(0, region.term().epoch);
    streams.prune(&region.fx.path.state.read(), &leading.lock());
    let mut seen = BTreeMap::new();
    read_until(&mut call, &mut seen, |s| {
        s.get(&2)
            .is_some_and(|e| e.iter().any(|e| matches!(e, Event::Ended(_))))
    })
    .await;
    let Some(Event::Ended(e)) = seen[&2].last() else {
        panic!("ended: {seen:?}");
    };
    assert_eq!(e.code, tonic::Code::FailedPrecondition as i32);
    assert!(!seen.contains_key(&1), "node-a's stream goes on untouched");
}

#[tokio::test]
async fn a_replica_that_leads_no_shard_refuses_each_node_of_a_batch_with_unavailable() {
    let region = Region::new().await;
    let (addr, leading) = region.serve(AgentApiConfig::default()).await;
    leading.lock().clear();
    let mut agent = agent_client(addr).await;

    let nodes: Vec<_> = (0..50)
        .map(|i| registration(&format!("node-{i}"), "boot-1"))
        .collect();
    let answers = agent
        .register_nodes(v1::RegisterNodesRequest { nodes })
        .await
        .expect("the call itself is answered")
        .into_inner()
        .results;
    assert_eq!(answers.len(), 50, "one answer per node");
    for answer in &answers {
        let error = answer.error.as_ref().expect("refused");
        assert_eq!(error.code, tonic::Code::Unavailable as i32, "{error:?}");
        assert!(error.message.contains("does not lead shard 0"), "{error:?}");
    }
    assert!(
        region.fx.path.state.read().nodes.is_empty(),
        "nothing registered"
    );
}
