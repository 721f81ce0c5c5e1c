//! Any gRPC client can find and call Strata: the standard health service and server
//! reflection are served beside Storage and Admin.

use futures::StreamExt;
use strata_tests::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection() {
    let node = Node::start();
    let channel = strata_admin::client::connect(&node.endpoint)
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "strata.v1.Storage", "strata.v1.Admin"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service {service:?}");
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = replies.next().await.expect("a reply").expect("ok");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reply")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "strata.v1.Storage",
        "strata.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_bytes() {
    let node = Node::start();
    let mut s = node.storage().await;
    put(&mut s, node.root.path(), "m-bucket", "k", &data(123_456, 1)).await;
    let (_, body) = http_get(&node.metrics).await;
    for needle in [
        "strata_upload_bytes_total 123456",
        "strata_grpc_requests_total{method=\"CompleteUpload\",code=\"Ok\"} 1",
        "# HELP strata_chunk_corrupt_total",
    ] {
        assert!(body.contains(needle), "metrics lack {needle:?}:\n{body}");
    }
}
