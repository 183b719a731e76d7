//! Publishes one message to Warren (or any AMQP 0-9-1 broker) with lapin and consumes it back.
//!
//!     cargo run -p warren-interop-lapin -- [AMQP_URL]
//!
//! AMQP_URL defaults to amqp://guest:guest@127.0.0.1:5672/%2f (Warren's and RabbitMQ's default).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string());
    match warren_interop_lapin::publish_consume(&url, b"hello from lapin").await {
        Ok((queue, body)) => {
            println!("received {:?} from {queue}", String::from_utf8_lossy(&body));
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("publish-consume: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
