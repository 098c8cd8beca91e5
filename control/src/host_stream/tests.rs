use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_proto::v1::{CommandKind, HostStreamOpen};
use parking_lot::Mutex;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};

use super::*;
use meridian_proto::limits::HOST_STREAM_WINDOW;

type NodeTx = mpsc::Sender<Result<AssignmentCommand, Status>>;

/// A server whose node streams the test feeds: every accepted open leaves
/// its sender in `opened`, by node id; nodes named `refuse-*` are refused
/// with UNAVAILABLE naming a leader.
struct Harness {
    requests: mpsc::UnboundedSender<Result<HostAssignmentsRequest, Status>>,
    responses: ResponseStream,
    opened: Arc<Mutex<BTreeMap<String, NodeTx>>>,
    /// Items read but not yet taken by `next_item`.
    pending: std::collections::VecDeque<HostStreamItem>,
}

impl Harness {
    fn start() -> Harness {
        let (requests, inbound) = mpsc::unbounded_channel();
        let opened: Arc<Mutex<BTreeMap<String, NodeTx>>> = Arc::default();
        let registry = opened.clone();
        let responses = serve(UnboundedReceiverStream::new(inbound), move |req| {
            let registry = registry.clone();
            async move {
                if req.node_id.starts_with("refuse") {
                    let mut status = Status::unavailable("not the leader");
                    status.metadata_mut().insert(
                        LEADER_METADATA_KEY,
                        "http://10.0.0.2:7000".parse().expect("ascii"),
                    );
                    return Err(status);
                }
                let (tx, rx) = mpsc::channel(16);
                registry.lock().insert(req.node_id, tx);
                Ok(ReceiverStream::new(rx))
            }
        });
        Harness {
            requests,
            responses,
            opened,
            pending: Default::default(),
        }
    }

    fn open(&self, pairs: &[(u64, &str)]) {
        let open = pairs
            .iter()
            .map(|(id, node)| HostStreamOpen {
                stream_id: *id,
                request: Some(NodeAssignmentsRequest {
                    node_id: node.to_string(),
                    node_epoch: 1,
                    cursor: Vec::new(),
                }),
            })
            .collect();
        self.requests
            .send(Ok(HostAssignmentsRequest {
                open,
                ..Default::default()
            }))
            .expect("call open");
    }

    fn close(&self, ids: &[u64]) {
        self.requests
            .send(Ok(HostAssignmentsRequest {
                close: ids.to_vec(),
                ..Default::default()
            }))
            .expect("call open");
    }

    fn grant(&self, id: u64, commands: u32) {
        self.requests
            .send(Ok(HostAssignmentsRequest {
                credit: vec![meridian_proto::v1::StreamCredit {
                    stream_id: id,
                    commands,
                }],
                ..Default::default()
            }))
            .expect("call open");
    }

    async fn next_item(&mut self) -> HostStreamItem {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return item;
            }
            let batch = self
                .responses
                .next()
                .await
                .expect("the call goes on")
                .expect("no call error");
            assert!(!batch.items.is_empty(), "a response message is never empty");
            self.pending.extend(batch.items);
        }
    }

    /// The only sender of `node`'s stream, once the server opened it.
    async fn node(&mut self, node: &str) -> NodeTx {
        let item = self.next_item().await;
        assert_eq!(
            item.event,
            Some(Event::Opened(true)),
            "{node}: opened first"
        );
        self.opened.lock().remove(node).expect("opened")
    }
}

fn command(cursor: u8) -> AssignmentCommand {
    AssignmentCommand {
        cursor: vec![cursor],
        kind: CommandKind::Bookmark as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn each_node_streams_commands_arrive_in_order_under_its_own_stream_id() {
    let mut h = Harness::start();
    h.open(&[(1, "a")]);
    let a = h.node("a").await;
    h.open(&[(2, "b")]);
    let b = h.node("b").await;
    for i in 0..3 {
        a.send(Ok(command(i))).await.expect("open");
        b.send(Ok(command(10 + i))).await.expect("open");
    }
    let mut seen: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for _ in 0..6 {
        let item = h.next_item().await;
        let Some(Event::Command(c)) = item.event else {
            panic!("a command, got {item:?}");
        };
        seen.entry(item.stream_id).or_default().push(c.cursor[0]);
    }
    assert_eq!(seen[&1], vec![0, 1, 2]);
    assert_eq!(seen[&2], vec![10, 11, 12]);
}

#[tokio::test]
async fn a_refused_open_ends_only_its_stream_with_the_status_and_leader_hint() {
    let mut h = Harness::start();
    h.open(&[(1, "a"), (2, "refuse-b")]);
    let mut events = BTreeMap::new();
    for _ in 0..2 {
        let item = h.next_item().await;
        events.insert(item.stream_id, item.event);
    }
    assert_eq!(events[&1], Some(Event::Opened(true)));
    let Some(Some(Event::Ended(e))) = events.get(&2) else {
        panic!("stream 2 refused, got {events:?}");
    };
    let status = node_status(e);
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        crate::rpc::leader_hint(&status).as_deref(),
        Some("http://10.0.0.2:7000")
    );
    // The accepted stream still works after its neighbour's refusal.
    let a = h.opened.lock().get("a").cloned().expect("opened");
    a.send(Ok(command(7))).await.expect("open");
    let item = h.next_item().await;
    assert_eq!(
        (item.stream_id, item.event),
        (1, Some(Event::Command(command(7))))
    );
}

#[tokio::test]
async fn a_node_stream_that_ends_sends_its_status_and_nothing_after() {
    let mut h = Harness::start();
    h.open(&[(1, "a"), (2, "b")]);
    let a = h.node("a").await;
    let b = h.node("b").await;
    a.send(Err(Status::failed_precondition("epoch superseded")))
        .await
        .expect("open");
    let item = h.next_item().await;
    let Some(Event::Ended(e)) = item.event else {
        panic!("ended, got {item:?}");
    };
    assert_eq!(
        (item.stream_id, node_status(&e).code()),
        (1, tonic::Code::FailedPrecondition)
    );
    // The forwarder of stream 1 is gone: its node stream was dropped.
    a.closed().await;
    drop(b);
    let item = h.next_item().await;
    let Some(Event::Ended(e)) = item.event else {
        panic!("ended, got {item:?}");
    };
    assert_eq!(
        (item.stream_id, node_status(&e).code()),
        (2, tonic::Code::Unavailable)
    );
}

#[tokio::test]
async fn closing_a_stream_drops_its_node_stream_and_frees_its_id() {
    let mut h = Harness::start();
    h.open(&[(1, "a")]);
    let a = h.node("a").await;
    h.close(&[1]);
    a.closed().await;
    // The id may be opened again once closed.
    h.open(&[(1, "a")]);
    let again = h.node("a").await;
    assert!(!again.is_closed());
}

#[tokio::test]
async fn an_id_already_open_on_the_call_ends_the_call_with_invalid_argument() {
    let mut h = Harness::start();
    h.open(&[(1, "a")]);
    let a = h.node("a").await;
    h.open(&[(1, "b")]);
    let status = loop {
        match h.responses.next().await.expect("an answer") {
            Ok(_) => continue,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("stream_id"),
        "{}",
        status.message()
    );
    assert!(
        !h.opened.lock().contains_key("b"),
        "the second never opened"
    );
    a.closed().await;
}

#[tokio::test]
async fn a_stream_is_sent_no_more_commands_than_its_credit() {
    let mut h = Harness::start();
    h.open(&[(1, "a"), (2, "b")]);
    let a = h.node("a").await;
    let b = h.node("b").await;
    let window = HOST_STREAM_WINDOW;
    // The node stream holds more than the window; the test's channel
    // takes 16, so feed it beside the reads.
    let feed = tokio::spawn(async move {
        for n in 0..window + 10 {
            a.send(Ok(command((n % 256) as u8))).await.expect("open");
        }
        a
    });
    for _ in 0..window {
        let item = h.next_item().await;
        assert_eq!(item.stream_id, 1);
    }
    // Out of credit: stream 1 waits, stream 2 is not held back.
    b.send(Ok(command(99))).await.expect("open");
    let item = h.next_item().await;
    assert_eq!(
        (item.stream_id, item.event),
        (2, Some(Event::Command(command(99))))
    );
    h.grant(1, 4);
    for _ in 0..4 {
        assert_eq!(h.next_item().await.stream_id, 1);
    }
    // Nothing more of stream 1 until the next grant: stream 2's next item
    // comes first.
    b.send(Ok(command(98))).await.expect("open");
    let item = h.next_item().await;
    assert_eq!(
        (item.stream_id, item.event),
        (2, Some(Event::Command(command(98))))
    );
    h.grant(1, 6);
    for _ in 0..6 {
        assert_eq!(h.next_item().await.stream_id, 1);
    }
    feed.await.expect("fed");
}

#[tokio::test]
async fn the_call_ending_drops_every_node_stream() {
    let mut h = Harness::start();
    h.open(&[(1, "a"), (2, "b")]);
    let a = h.node("a").await;
    let b = h.node("b").await;
    drop(h.requests);
    a.closed().await;
    b.closed().await;
}

#[tokio::test]
async fn too_many_opens_in_one_message_end_the_call_with_invalid_argument() {
    let mut h = Harness::start();
    let pairs: Vec<(u64, String)> = (1..=(MAX_NODES_PER_CALL as u64 + 1))
        .map(|i| (i, format!("n{i}")))
        .collect();
    let borrowed: Vec<(u64, &str)> = pairs.iter().map(|(i, n)| (*i, n.as_str())).collect();
    h.open(&borrowed);
    let end = h.responses.next().await.expect("an answer");
    let status = end.expect_err("the call fails");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(h.responses.next().await.is_none());
}

#[test]
fn a_node_error_reads_back_as_the_status_it_came_from() {
    let mut status = Status::unavailable("elsewhere");
    status
        .metadata_mut()
        .insert(LEADER_METADATA_KEY, "http://a:1".parse().expect("ascii"));
    let back = node_status(&node_error(&status));
    assert_eq!(back.code(), status.code());
    assert_eq!(back.message(), "elsewhere");
    assert_eq!(
        crate::rpc::leader_hint(&back).as_deref(),
        Some("http://a:1")
    );
    let plain = node_error(&Status::not_found("x"));
    assert!(plain.leader.is_empty());
}
