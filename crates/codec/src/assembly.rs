//! Per-channel content assembly: a method that carries content (`basic.publish`, or `deliver`,
//! `get-ok` and `return` on the client side), then one content header, then body frames until
//! `body_size` bytes have arrived. Like h2's `Partial` for HEADERS plus CONTINUATION.
//!
//! ```text
//!            method without content -> Assembled::Method
//!   Idle --- method with content ---> AwaitingHeader --- header ---> AwaitingBody
//!    ^                                   | body_size = 0               | body frames
//!    +------ Assembled::Message <--------+-----------------------------+ until body_size
//! ```
//!
//! A body that arrives in one frame stays a zero-copy slice of the read buffer; only a body split
//! over several frames is copied, once, into a buffer that grows with what has actually arrived.

use bytes::{Bytes, BytesMut};

use crate::frame::ContentHeader;
use crate::generated::{Method, ReplyCode};

/// A whole message: the method, its header and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The content-carrying method (e.g. `Method::BasicPublish`).
    pub method: Method,
    /// The content header.
    pub header: ContentHeader,
    /// The body, `header.body_size` bytes long.
    pub body: Bytes,
}

/// What one frame added.
// A content header is large (14 properties) but moving it is a memcpy; boxing it would
// cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Assembled {
    /// A method without content, to handle at once.
    Method(Method),
    /// A message is complete.
    Message(Message),
    /// The frame was absorbed; more frames are needed.
    Pending,
}

/// A frame out of place, or a body of the wrong size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssemblyError {
    /// A header or body frame with no content-carrying method before it.
    #[error("expected method frame, got non method frame instead")]
    ExpectedMethod,
    /// A method or body frame where the content header should be.
    #[error("expected content header for class {expected}, got non content header frame instead")]
    ExpectedHeader {
        /// The class of the pending method.
        expected: u16,
    },
    /// A header of another class than the pending method's.
    #[error("expected content header for class {expected}, got one for class {got} instead")]
    WrongHeaderClass {
        /// The class of the pending method.
        expected: u16,
        /// The header's class.
        got: u16,
    },
    /// A method or header frame while body frames were still due.
    #[error("expected content body, got non content body frame instead")]
    ExpectedBody,
    /// Body frames carried more bytes than the header declared.
    #[error("content body of {received} bytes exceeds the declared size of {declared}")]
    BodyTooLong {
        /// `body_size` from the header.
        declared: u64,
        /// Bytes received so far, including the frame that went over.
        received: u64,
    },
    /// The header declares a body larger than the configured maximum message size.
    #[error("message size {size} is larger than configured max size {max}")]
    BodyTooLarge {
        /// `body_size` from the header.
        size: u64,
        /// The configured maximum.
        max: u64,
    },
}

impl AssemblyError {
    /// The reply code RabbitMQ closes with: 505 for a frame out of place, 501 for a body longer
    /// than declared, 406 (a channel error) for a message above the maximum size.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            AssemblyError::ExpectedMethod
            | AssemblyError::ExpectedHeader { .. }
            | AssemblyError::WrongHeaderClass { .. }
            | AssemblyError::ExpectedBody => ReplyCode::UnexpectedFrame,
            AssemblyError::BodyTooLong { .. } => ReplyCode::FrameError,
            AssemblyError::BodyTooLarge { .. } => ReplyCode::PreconditionFailed,
        }
    }
}

/// Where a channel is in receiving content.
// A content header is large (14 properties) but moving it is a memcpy; boxing it would
// cost an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    AwaitingHeader {
        method: Method,
    },
    AwaitingBody {
        method: Method,
        header: ContentHeader,
        body: Body,
    },
}

/// The body received so far.
#[derive(Debug)]
enum Body {
    /// Nothing yet.
    Empty,
    /// One frame's payload, kept as the zero-copy slice it arrived as.
    One(Bytes),
    /// Several frames' payloads, copied together.
    Many(BytesMut),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::One(bytes) => bytes.len(),
            Body::Many(bytes) => bytes.len(),
        }
    }

    fn push(&mut self, payload: Bytes) {
        *self = match std::mem::replace(self, Body::Empty) {
            Body::Empty => Body::One(payload),
            Body::One(first) => {
                let mut joined = BytesMut::with_capacity((first.len() + payload.len()) * 2);
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&payload);
                Body::Many(joined)
            }
            Body::Many(mut joined) => {
                joined.extend_from_slice(&payload);
                Body::Many(joined)
            }
        };
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::One(bytes) => bytes,
            Body::Many(bytes) => bytes.freeze(),
        }
    }
}

/// Content assembly for one channel.
#[derive(Debug)]
pub struct ContentAssembly {
    state: State,
    max_body_size: u64,
}

impl ContentAssembly {
    /// An idle assembly that refuses bodies declared larger than `max_body_size` bytes.
    pub fn new(max_body_size: u64) -> Self {
        ContentAssembly {
            state: State::Idle,
            max_body_size,
        }
    }

    /// Whether a message is partly received.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Drops any partly received message (e.g. when the channel closes).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// A method frame arrived on this channel.
    pub fn recv_method(&mut self, method: Method) -> Result<Assembled, AssemblyError> {
        match &self.state {
            State::Idle => {}
            State::AwaitingHeader { method: pending } => {
                return Err(AssemblyError::ExpectedHeader {
                    expected: pending.class_id(),
                });
            }
            State::AwaitingBody { .. } => return Err(AssemblyError::ExpectedBody),
        }
        if method.has_content() {
            self.state = State::AwaitingHeader { method };
            Ok(Assembled::Pending)
        } else {
            Ok(Assembled::Method(method))
        }
    }

    /// A content header frame arrived on this channel.
    pub fn recv_header(&mut self, header: ContentHeader) -> Result<Assembled, AssemblyError> {
        let method = match std::mem::take(&mut self.state) {
            State::AwaitingHeader { method } => method,
            State::Idle => return Err(AssemblyError::ExpectedMethod),
            state @ State::AwaitingBody { .. } => {
                self.state = state;
                return Err(AssemblyError::ExpectedBody);
            }
        };
        if header.class_id != method.class_id() {
            let expected = method.class_id();
            self.state = State::AwaitingHeader { method };
            return Err(AssemblyError::WrongHeaderClass {
                expected,
                got: header.class_id,
            });
        }
        if header.body_size > self.max_body_size {
            return Err(AssemblyError::BodyTooLarge {
                size: header.body_size,
                max: self.max_body_size,
            });
        }
        if header.body_size == 0 {
            return Ok(Assembled::Message(Message {
                method,
                header,
                body: Bytes::new(),
            }));
        }
        self.state = State::AwaitingBody {
            method,
            header,
            body: Body::Empty,
        };
        Ok(Assembled::Pending)
    }

    /// A content body frame arrived on this channel.
    pub fn recv_body(&mut self, payload: Bytes) -> Result<Assembled, AssemblyError> {
        let State::AwaitingBody { header, body, .. } = &mut self.state else {
            return Err(match &self.state {
                State::AwaitingHeader { method } => AssemblyError::ExpectedHeader {
                    expected: method.class_id(),
                },
                _ => AssemblyError::ExpectedMethod,
            });
        };
        let received = body.len() as u64 + payload.len() as u64;
        if received > header.body_size {
            return Err(AssemblyError::BodyTooLong {
                declared: header.body_size,
                received,
            });
        }
        body.push(payload);
        if received < header.body_size {
            return Ok(Assembled::Pending);
        }
        match std::mem::take(&mut self.state) {
            State::AwaitingBody {
                method,
                header,
                body,
            } => Ok(Assembled::Message(Message {
                method,
                header,
                body: body.into_bytes(),
            })),
            // Unreachable: the state was matched as AwaitingBody above.
            _ => Ok(Assembled::Pending),
        }
    }
}
