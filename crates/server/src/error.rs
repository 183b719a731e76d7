//! The two scopes of AMQP errors, as h2 splits Reset from GoAway: a `ChannelError` closes one
//! channel, a `ConnectionError` closes the connection. Handlers return `AmqpError`; only
//! `connection.rs` turns one into `channel.close` or `connection.close`.

use warren_codec::ReplyCode;

/// An error that closes one channel (`channel.close`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {text}")]
pub struct ChannelError {
    /// The reply code sent in `channel.close`.
    pub code: ReplyCode,
    /// The reply text, shaped like RabbitMQ's: `NOT_FOUND - no queue 'x' in vhost '/'`.
    pub text: String,
    /// The class of the method that failed (0 when none).
    pub class_id: u16,
    /// The method that failed (0 when none).
    pub method_id: u16,
}

/// An error that closes the whole connection (`connection.close`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {text}")]
pub struct ConnectionError {
    /// The reply code sent in `connection.close`.
    pub code: ReplyCode,
    /// The reply text, shaped like RabbitMQ's.
    pub text: String,
    /// The class of the method that failed (0 when none).
    pub class_id: u16,
    /// The method that failed (0 when none).
    pub method_id: u16,
}

/// What a handler returns when it fails. The constructor picks the scope; it is not inferred
/// from the code (RabbitMQ closes the connection with 403 on a failed login, though the spec
/// calls 403 soft).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmqpError {
    /// Close the channel.
    #[error("channel error {0}")]
    Channel(#[from] ChannelError),
    /// Close the connection.
    #[error("connection error {0}")]
    Connection(#[from] ConnectionError),
}

/// RabbitMQ's name for a reply code, used as the prefix of reply texts.
pub fn code_name(code: ReplyCode) -> &'static str {
    code.name()
}

fn prefixed(code: ReplyCode, text: &str) -> String {
    format!("{} - {}", code_name(code), text)
}

impl ChannelError {
    /// A channel error with RabbitMQ's `CODE_NAME - text` reply text.
    pub fn new(code: ReplyCode, text: impl AsRef<str>) -> Self {
        ChannelError {
            code,
            text: prefixed(code, text.as_ref()),
            class_id: 0,
            method_id: 0,
        }
    }

    /// 404 NOT_FOUND.
    pub fn not_found(text: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::NotFound, text)
    }

    /// 406 PRECONDITION_FAILED.
    pub fn precondition_failed(text: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::PreconditionFailed, text)
    }

    /// 403 ACCESS_REFUSED.
    pub fn access_refused(text: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::AccessRefused, text)
    }

    /// 405 RESOURCE_LOCKED.
    pub fn resource_locked(text: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::ResourceLocked, text)
    }

    /// Records the method that failed, sent back in `channel.close`.
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }
}

impl ConnectionError {
    /// A connection error with RabbitMQ's `CODE_NAME - text` reply text.
    pub fn new(code: ReplyCode, text: impl AsRef<str>) -> Self {
        ConnectionError {
            code,
            text: prefixed(code, text.as_ref()),
            class_id: 0,
            method_id: 0,
        }
    }

    /// 504 CHANNEL_ERROR.
    pub fn channel_error(text: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::ChannelError, text)
    }

    /// 505 UNEXPECTED_FRAME.
    pub fn unexpected_frame(text: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::UnexpectedFrame, text)
    }

    /// 503 COMMAND_INVALID.
    pub fn command_invalid(text: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::CommandInvalid, text)
    }

    /// 530 NOT_ALLOWED.
    pub fn not_allowed(text: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::NotAllowed, text)
    }

    /// 540 NOT_IMPLEMENTED.
    pub fn not_implemented(text: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::NotImplemented, text)
    }

    /// 501 FRAME_ERROR.
    pub fn frame_error(text: impl AsRef<str>) -> Self {
        Self::new(ReplyCode::FrameError, text)
    }

    /// Records the method that failed, sent back in `connection.close`.
    pub fn on(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }
}

impl AmqpError {
    /// Records the method that failed, whatever the scope.
    pub fn on(self, class_id: u16, method_id: u16) -> Self {
        match self {
            AmqpError::Channel(e) if e.class_id == 0 => {
                AmqpError::Channel(e.on(class_id, method_id))
            }
            AmqpError::Connection(e) if e.class_id == 0 => {
                AmqpError::Connection(e.on(class_id, method_id))
            }
            other => other,
        }
    }

    /// The reply code, for logs.
    pub fn code(&self) -> ReplyCode {
        match self {
            AmqpError::Channel(e) => e.code,
            AmqpError::Connection(e) => e.code,
        }
    }
}
