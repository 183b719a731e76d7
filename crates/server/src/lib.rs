//! The Warren broker as a library, so tests can start it in-process.
