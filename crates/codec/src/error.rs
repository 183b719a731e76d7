//! Decoding errors, each mapped to the AMQP reply code a broker closes the connection with.
//!
//! The codes follow what RabbitMQ 3.10 answers (checked with raw frames against a live node):
//! every frame-level fault and every method whose fields cannot be decoded is 501 FRAME_ERROR
//! ("cannot decode"), a content header with a non-zero weight is 505 UNEXPECTED_FRAME. Where
//! RabbitMQ just drops the TCP connection (unknown class or method id, unknown field type) or
//! crashes its reader (541 on a malformed property list), Warren sends a proper close instead:
//! 540 NOT_IMPLEMENTED for an unknown method and 501 for the rest.

use crate::generated::ReplyCode;

/// Why a field, table or property list could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// A fixed-width field or a declared length runs past the end of the payload.
    #[error("needs {needed} bytes but only {remaining} remain")]
    Truncated {
        /// Bytes the field or the declared length needs.
        needed: u64,
        /// Bytes left in the payload (or enclosing table).
        remaining: usize,
    },
    /// Bytes were left after the last field.
    #[error("{0} bytes left over after the last field")]
    TrailingBytes(usize),
    /// A field value type letter RabbitMQ does not know.
    #[error("unknown field value type {:?}", char::from(*.0))]
    UnknownFieldType(u8),
    /// Field tables and arrays nested deeper than `MAX_TABLE_DEPTH`.
    #[error("field tables nested deeper than {}", crate::table::MAX_TABLE_DEPTH)]
    TooDeep,
    /// The property-flags word has its continuation bit set; `basic` has no 15th property.
    #[error("property flags continue into a second word")]
    PropertyFlagsContinued,
}

/// Why a frame could not be decoded. "Need more bytes" is `Ok(None)`, never an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame type octet is not method (1), header (2), body (3) or heartbeat (8).
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// The declared payload size exceeds the negotiated `frame_max` (or the hard cap).
    #[error("frame payload of {size} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// Declared payload size.
        size: u32,
        /// The limit in force.
        limit: u32,
    },
    /// The octet after the payload is not 0xCE.
    #[error("frame end octet is {0:#04x}, expected 0xce")]
    BadFrameEnd(u8),
    /// A frame shorter than its fixed fields (method < 4 bytes, header < 14), or a heartbeat
    /// with a payload.
    #[error("frame of type {frame_type} has an impossible payload size of {size} bytes")]
    FrameTooShort {
        /// The frame type octet.
        frame_type: u8,
        /// The payload size.
        size: usize,
    },
    /// A class and method id pair the spec does not define.
    #[error("unknown method: class {class_id}, method {method_id}")]
    UnknownMethod {
        /// The class id received.
        class_id: u16,
        /// The method id received.
        method_id: u16,
    },
    /// A known method whose fields cannot be decoded (truncated, trailing bytes, bad table).
    #[error("cannot decode method {class_id}.{method_id}: {source}")]
    MalformedMethod {
        /// The class id received.
        class_id: u16,
        /// The method id received.
        method_id: u16,
        /// What was wrong.
        source: FieldError,
    },
    /// A content header whose property flags or list cannot be decoded.
    #[error("cannot decode content header properties of class {class_id}: {source}")]
    MalformedProperties {
        /// The header's class id.
        class_id: u16,
        /// What was wrong.
        source: FieldError,
    },
    /// A content header with a non-zero weight field, which RabbitMQ treats as not a header.
    #[error("content header with weight {0}, expected 0")]
    NonZeroWeight(u16),
}

impl DecodeError {
    /// The reply code of the `connection.close` a broker sends for this error.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            DecodeError::UnknownFrameType(_)
            | DecodeError::FrameTooLarge { .. }
            | DecodeError::BadFrameEnd(_)
            | DecodeError::FrameTooShort { .. }
            | DecodeError::MalformedMethod { .. }
            | DecodeError::MalformedProperties { .. } => ReplyCode::FrameError,
            DecodeError::UnknownMethod { .. } => ReplyCode::NotImplemented,
            DecodeError::NonZeroWeight(_) => ReplyCode::UnexpectedFrame,
        }
    }

    /// The class and method ids to put in the `connection.close`, as RabbitMQ does for a method
    /// it cannot decode; `(0, 0)` for frame-level errors.
    pub fn class_method(&self) -> (u16, u16) {
        match self {
            DecodeError::UnknownMethod {
                class_id,
                method_id,
            }
            | DecodeError::MalformedMethod {
                class_id,
                method_id,
                ..
            } => (*class_id, *method_id),
            _ => (0, 0),
        }
    }
}
