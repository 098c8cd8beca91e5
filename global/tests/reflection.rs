//! gRPC server reflection on a global replica, over a real socket: a
//! reflection client (both protocol versions) lists exactly the services the
//! server answers, and gets the descriptor of each with its methods, which
//! is what `grpcurl` needs to call them without the `.proto` files.

use crate::common;

use std::collections::BTreeSet;

use common::*;
use prost::Message;
use prost_types::FileDescriptorProto;
use tonic::transport::Channel;
use tonic_reflection::pb::{v1, v1alpha};

const SERVED: [&str; 3] = [
    "grpc.health.v1.Health",
    "meridian.v1.Federation",
    "meridian.v1.RegionLink",
];

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Sends one reflection request on the v1 protocol and returns its answer.
async fn ask_v1(
    endpoint: &str,
    request: v1::server_reflection_request::MessageRequest,
) -> v1::server_reflection_response::MessageResponse {
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(channel(endpoint).await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    guarded("the reflection answer", answers.message())
        .await
        .unwrap()
        .expect("an answer")
        .message_response
        .expect("a message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflection_client_lists_the_global_replicas_services_and_reads_their_methods() {
    let h = Harness::start(|_| {}).await;
    let endpoint = format!("http://{}", h.grpc());

    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let MessageResponse::ListServicesResponse(list) =
        ask_v1(&endpoint, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a service list");
    };
    let listed: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    let expected: BTreeSet<String> = SERVED.iter().map(|s| s.to_string()).collect();
    assert_eq!(listed, expected);

    let MessageResponse::FileDescriptorResponse(files) = ask_v1(
        &endpoint,
        MessageRequest::FileContainingSymbol("meridian.v1.Federation".into()),
    )
    .await
    else {
        panic!("not a file descriptor");
    };
    let methods: BTreeSet<String> = files
        .file_descriptor_proto
        .iter()
        .map(|raw| FileDescriptorProto::decode(raw.as_slice()).unwrap())
        .flat_map(|file| file.service)
        .filter(|service| service.name() == "Federation")
        .flat_map(|service| service.method)
        .map(|method| method.name().to_string())
        .collect();
    for method in [
        "SubmitJob",
        "GetJob",
        "ListJobs",
        "WatchJobs",
        "GetTaskLogs",
        "ListNodes",
    ] {
        assert!(methods.contains(method), "{method} in {methods:?}");
    }

    // The older protocol, which some clients still speak only.
    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel(&endpoint).await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let answer = guarded(
        "the v1alpha answer",
        alpha.server_reflection_info(tokio_stream::iter([request])),
    )
    .await
    .unwrap()
    .into_inner()
    .message()
    .await
    .unwrap()
    .expect("an answer");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list");
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(names, expected);
}
