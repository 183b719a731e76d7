//! Generates `crates/codec/src/generated.rs` from the AMQP spec JSON.

fn main() {}
