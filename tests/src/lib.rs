//! Harness for the integration tests: starts Warren in-process on a free port.
