//! Runs the lapin example against an in-process Warren, so the example keeps working.

use warren_server::Config;

#[tokio::test]
async fn lapin_example_publishes_and_consumes_through_warren() {
    let broker = warren_server::start(Config::for_tests()).await.unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", broker.local_addr());
    let (queue, body) = warren_interop_lapin::publish_consume(&url, b"hello from lapin")
        .await
        .unwrap();
    assert!(queue.starts_with("amq.gen-"), "server-named queue: {queue}");
    assert_eq!(body, b"hello from lapin");
    broker.shutdown().await;
}
