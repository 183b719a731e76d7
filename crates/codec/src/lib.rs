//! The AMQP 0-9-1 wire protocol as RabbitMQ speaks it: frames, methods, field tables and
//! content headers. Pure data and bytes: no tokio, no I/O.
//!
//! - [`frame`]: protocol header check, [`frame::decode_frame`], and the frame encoders.
//! - [`generated`]: one struct per method, the [`Method`] enum, [`ReplyCode`], constants and
//!   [`BasicProperties`], generated from the spec JSON by `crates/codegen`.
//! - [`table`]: field tables and values with RabbitMQ's type letters.
//! - [`assembly`]: per-channel assembly of method + header + body into a [`assembly::Message`].

pub mod assembly;
pub mod error;
pub mod frame;
pub mod generated;
pub mod table;
mod wire;

/// The content-header properties of the `basic` class.
pub mod properties {
    pub use crate::generated::BasicProperties;
}

pub use assembly::{Assembled, AssemblyError, ContentAssembly, Message};
pub use error::{DecodeError, FieldError};
pub use frame::{ContentHeader, Frame, decode_frame};
pub use generated::*;
pub use table::{FieldTable, FieldValue, ShortString};
