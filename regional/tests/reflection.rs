//! gRPC server reflection on a region replica started as `meridian regional`
//! starts it (`server::run_with`), over a real socket: a reflection client
//! (both protocol versions) lists exactly the services the server answers,
//! and gets the descriptor of each with its methods. One test per binary:
//! it installs the process's network, to learn the port the replica bound.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use meridian_control::SystemClock;
use meridian_control::net::{self, Listener, Net, TcpNet};
use meridian_regional::server::{Config, Stores, run_with};
use prost::Message;
use prost_types::FileDescriptorProto;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use tonic_reflection::pb::{v1, v1alpha};

const SERVED: [&str; 2] = ["meridian.v1.AgentLink", "meridian.v1.RegionAdmin"];

/// A guard against hangs; the test never waits on it for a condition.
const GUARD: Duration = Duration::from_secs(30);

/// Plain TCP that tells the test each address a server binds.
struct Reporting(mpsc::UnboundedSender<SocketAddr>);

impl Net for Reporting {
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Listener>> {
        let bound = TcpNet.listen(addr);
        let report = self.0.clone();
        Box::pin(async move {
            let listener = bound.await?;
            let _ = report.send(listener.local_addr);
            Ok(listener)
        })
    }

    fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        TcpNet.connect_lazy(endpoint)
    }

    fn connect(
        &self,
        endpoint: Endpoint,
    ) -> BoxFuture<'static, Result<Channel, tonic::transport::Error>> {
        TcpNet.connect(endpoint)
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflection_client_lists_the_region_replicas_services_and_reads_their_methods() {
    let (bound_tx, mut bound) = mpsc::unbounded_channel();
    net::install(Arc::new(Reporting(bound_tx))).expect("the first network of this binary");
    let db = meridian_store::open("sqlite::memory:").await.unwrap();
    let config = Config::new(
        "us-east",
        "sqlite::memory:",
        "127.0.0.1:0".parse().unwrap(),
        1,
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let replica = tokio::spawn(run_with(
        config,
        Stores::single(db),
        SystemClock::shared(),
        async move {
            let _ = stopped.await;
        },
    ));
    let addr = tokio::time::timeout(GUARD, bound.recv())
        .await
        .expect("the replica binds its gRPC address in time")
        .expect("an address");

    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let ask = |request: MessageRequest| async move {
        let mut client =
            v1::server_reflection_client::ServerReflectionClient::new(channel(addr).await);
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        tokio::time::timeout(GUARD, answers.message())
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("an answer")
            .message_response
            .expect("a message")
    };

    let MessageResponse::ListServicesResponse(list) =
        ask(MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list");
    };
    let listed: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    let expected: BTreeSet<String> = SERVED.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed, expected);

    let MessageResponse::FileDescriptorResponse(files) = ask(MessageRequest::FileContainingSymbol(
        "meridian.v1.RegionAdmin".into(),
    ))
    .await
    else {
        panic!("not a file descriptor");
    };
    let methods: BTreeSet<String> = files
        .file_descriptor_proto
        .iter()
        .map(|raw| FileDescriptorProto::decode(raw.as_slice()).unwrap())
        .flat_map(|file| file.service)
        .filter(|service| service.name() == "RegionAdmin")
        .flat_map(|service| service.method)
        .map(|method| method.name().to_string())
        .collect();
    let admin: BTreeSet<String> = [
        "ListNodes",
        "CordonNode",
        "UncordonNode",
        "DrainNode",
        "GetTaskLogs",
        "FollowTaskLogs",
        "ListJobTasks",
    ]
    .iter()
    .map(|m| m.to_string())
    .collect();
    assert_eq!(methods, admin);

    // The older protocol, which some clients still speak only.
    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel(addr).await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let answer = tokio::time::timeout(GUARD, async {
        alpha
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
    })
    .await
    .expect("an answer in time")
    .unwrap()
    .expect("an answer");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list");
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(names, expected);

    let _ = stop.send(());
    tokio::time::timeout(GUARD, replica)
        .await
        .expect("the replica stops in time")
        .unwrap()
        .unwrap();
}
