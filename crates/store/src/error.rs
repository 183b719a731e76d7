//! The store's errors, each mapping to the AMQP reply code the broker answers with.

use std::io;

/// AMQP 541 INTERNAL_ERROR: what a client sees when the store fails under it.
pub const INTERNAL_ERROR: u16 = 541;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The operating system refused a file operation (disk full, permissions, I/O error).
    #[error("i/o error on {file}: {source}")]
    Io {
        /// The file (relative to the data folder) or operation concerned.
        file: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file holds bytes the store did not write (bad checksum, bad magic, impossible length).
    #[error("corrupt data in {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The file, relative to the data folder.
        file: String,
        /// Byte offset of the bad record or header.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// Another process (or another store in this one) has the data folder open.
    #[error("data folder {dir} is in use")]
    InUse {
        /// The data folder.
        dir: String,
        /// The lock error, naming the lock file.
        #[source]
        source: io::Error,
    },
    /// The data folder was written by a newer (or unknown) version of Warren.
    #[error(
        "data folder format {found:?} is not supported: this build reads format {supported}; \
         use the Warren version that wrote it"
    )]
    UnsupportedFormat {
        /// The version marker found.
        found: String,
        /// The format this build reads and writes.
        supported: u32,
    },
}

impl StoreError {
    /// The AMQP reply code for a client whose operation hit this error.
    pub fn reply_code(&self) -> u16 {
        INTERNAL_ERROR
    }

    pub(crate) fn io(file: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
        let file = file.into();
        move |source| StoreError::Io { file, source }
    }
}
