//! The result of routing one message, and the scratch space reused from one message to the next.

use std::collections::HashSet;

use bytes::Bytes;

use crate::dest::QueueId;

type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// Up to this many queues, duplicates are found by scanning; above it, with a hash set.
const LINEAR_DEDUP_MAX: usize = 32;
/// Up to this many exchanges visited, cycles are found by scanning; above it, with a hash set.
const LINEAR_VISITED_MAX: usize = 32;
/// A memo table that grew past this many slots for an adversarial message is dropped, so that
/// clearing it does not cost every later message.
const MEMO_KEEP_MAX: usize = 4096;

/// What happened to a published message. The queues themselves are in the [`RouteBuf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Routed to this many distinct queues (at least one); see [`RouteBuf::queues`].
    Routed(usize),
    /// The exchange exists, but no queue matched, even through alternate exchanges.
    /// For a `mandatory` publish the server sends `basic.return` 312 NO_ROUTE.
    Unroutable,
    /// No exchange by that name: the server closes the channel with 404 NOT_FOUND.
    ExchangeNotFound,
    /// The exchange is internal: the server closes the channel with 403 ACCESS_REFUSED,
    /// `cannot publish to internal exchange 'x' in vhost '/'`. Nothing was routed.
    InternalExchange,
}

/// Output and scratch space for [`crate::Topology::route`]. Keep one per channel (or per
/// connection task) and pass it to every route call: after the first few messages routing
/// allocates nothing, because every vector and table here is cleared, not dropped.
///
/// The handles of the last message stay in the buffer until the next route call; take them
/// with [`RouteBuf::drain`] (or call [`RouteBuf::clear`]) once delivered, so that a deleted
/// queue is not kept alive by an idle channel's buffer.
#[derive(Debug)]
pub struct RouteBuf<Q> {
    /// The matched queues' handles, each queue once, in the order first reached.
    queues: Vec<Q>,
    /// The router's id of each entry of `queues`, same order; used to find duplicates.
    ids: Vec<QueueId>,
    /// How many destination sets have added queues so far. The first set is duplicate-free
    /// by construction, so checking only starts with the second: the common direct and
    /// fanout cases never pay for it.
    contributions: u32,
    /// Whether duplicates are being found with `seen` instead of scanning `ids`.
    seen_active: bool,
    seen: FastSet<QueueId>,
    /// Exchanges reached through exchange-to-exchange bindings, still to visit.
    pub(crate) pending: Vec<Bytes>,
    /// Addresses of the exchanges already visited for this message, to end cycles.
    visited: Vec<usize>,
    visited_set: FastSet<usize>,
    /// Word boundaries of the routing key being matched against a topic trie.
    pub(crate) words: Vec<(u32, u32)>,
    /// Pending topic-trie states (node, word index, `#` nodes on the path up to 2).
    pub(crate) stack: Vec<(u32, u32, u8)>,
    /// Topic-trie states already explored below a `#`; bounds the work on adversarial patterns.
    pub(crate) memo: FastSet<u64>,
    /// Indices of the message's headers sorted by name (stable), built once per message.
    pub(crate) header_order: Vec<u32>,
    /// Whether `header_order` is built for the current message.
    pub(crate) headers_sorted: bool,
}

impl<Q> Default for RouteBuf<Q> {
    fn default() -> Self {
        RouteBuf::new()
    }
}

impl<Q> RouteBuf<Q> {
    /// An empty buffer; it grows to fit the largest message routed through it.
    pub fn new() -> RouteBuf<Q> {
        RouteBuf {
            queues: Vec::new(),
            ids: Vec::new(),
            contributions: 0,
            seen_active: false,
            seen: FastSet::default(),
            pending: Vec::new(),
            visited: Vec::new(),
            visited_set: FastSet::default(),
            words: Vec::new(),
            stack: Vec::new(),
            memo: FastSet::default(),
            header_order: Vec::new(),
            headers_sorted: false,
        }
    }

    /// The queues the last routed message goes to, each once.
    pub fn queues(&self) -> &[Q] {
        &self.queues
    }

    /// Number of queues the last routed message goes to.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Whether the last routed message matched no queue.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Takes the queues out, leaving the buffer's capacity for the next message.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Q> {
        self.ids.clear();
        self.queues.drain(..)
    }

    /// Forgets the previous message. `route` calls this itself.
    pub fn clear(&mut self) {
        self.queues.clear();
        self.ids.clear();
        self.contributions = 0;
        if self.seen_active {
            self.seen.clear();
            self.seen_active = false;
        }
        self.pending.clear();
        self.visited.clear();
        if !self.visited_set.is_empty() {
            self.visited_set.clear();
        }
        self.headers_sorted = false;
    }

    /// Empties the topic memo, dropping it if an adversarial message made it large.
    pub(crate) fn clear_memo(&mut self) {
        if self.memo.capacity() > MEMO_KEEP_MAX {
            self.memo = FastSet::default();
        } else if !self.memo.is_empty() {
            self.memo.clear();
        }
    }

    /// Marks the start of another destination set's queues; from the second on, duplicates
    /// are possible and are checked.
    pub(crate) fn begin_contribution(&mut self) {
        self.contributions += 1;
        if self.contributions == 2 && self.ids.len() > LINEAR_DEDUP_MAX {
            self.activate_seen();
        }
    }

    fn activate_seen(&mut self) {
        self.seen.clear();
        self.seen.extend(self.ids.iter().copied());
        self.seen_active = true;
    }

    pub(crate) fn push_queue(&mut self, id: QueueId, handle: &Q)
    where
        Q: Clone,
    {
        if self.contributions > 1 {
            if self.seen_active {
                if !self.seen.insert(id) {
                    return;
                }
            } else if self.ids.contains(&id) {
                return;
            }
        }
        self.ids.push(id);
        self.queues.push(handle.clone());
        if self.contributions > 1 && !self.seen_active && self.ids.len() > LINEAR_DEDUP_MAX {
            self.activate_seen();
        }
    }

    pub(crate) fn push_exchange(&mut self, name: &Bytes) {
        self.pending.push(name.clone());
    }

    /// Records a visit to the exchange at `address`; false if it was already visited.
    pub(crate) fn first_visit(&mut self, address: usize) -> bool {
        if !self.visited_set.is_empty() {
            return self.visited_set.insert(address);
        }
        if self.visited.contains(&address) {
            return false;
        }
        self.visited.push(address);
        if self.visited.len() > LINEAR_VISITED_MAX {
            self.visited_set.extend(self.visited.iter().copied());
        }
        true
    }
}
