//! The lapin example: publish one message to a server-named queue with a publisher confirm,
//! then consume it back and ack it. `src/main.rs` runs it against a URL; the test runs it
//! against an in-process Warren so the example keeps working.

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// What went wrong, in words a person running the example can act on.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Publishes `body` and consumes it back through the broker at `url`; returns the queue's name
/// and the body received.
pub async fn publish_consume(url: &str, body: &[u8]) -> Result<(String, Vec<u8>), Error> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // A server-named, exclusive queue: it disappears when this program disconnects.
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .name()
        .to_string();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await?
        .await?;
    if !confirm.is_ack() {
        return Err("the broker did not confirm the publish".into());
    }
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .map_err(|_| "no message within 5 s")?
        .ok_or("the consumer was cancelled")??;
    delivery.ack(BasicAckOptions::default()).await?;
    let received = delivery.data.clone();
    connection.close(200, "bye".into()).await?;
    Ok((queue, received))
}
