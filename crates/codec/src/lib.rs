//! The AMQP 0-9-1 wire protocol as RabbitMQ speaks it: frames, methods, field tables and
//! content headers. Pure data and bytes: no tokio, no I/O.

pub mod table;

pub use table::{FieldTable, FieldValue, ShortString};
