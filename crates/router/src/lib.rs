//! Exchanges and bindings: for a published message, the set of queues it goes to. No I/O.
