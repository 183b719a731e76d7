//! A queue's messages: ready ones in order, delivered-but-unacked ones by offset, counts and bytes.
//!
//! Every message pushed gets the next *offset* of its queue (0, 1, 2, ...). Ready messages are
//! delivered in offset order. A requeued message goes back to its original position, that is
//! before every ready message with a larger offset, as RabbitMQ does.
//!
//! Layout, chosen for the hot path (push, pop, ack):
//! - `fresh`: messages never delivered, in a `VecDeque`. Pushes append, pops take the front:
//!   O(1), no allocation in steady state. On a durable queue an entry's body may be *paged out*:
//!   only its position in the log is kept, and it is read back when it reaches the front.
//! - `requeued`: messages delivered once and put back, in a `BTreeMap` by offset. A popped message
//!   always has a smaller offset than every message still in `fresh` (offsets grow and `fresh` is
//!   popped from the front), so every requeued message sorts before all of `fresh`: pop takes
//!   from `requeued` first. This map is empty unless consumers reject or channels close, so the
//!   common path never touches it.
//! - `unacked`: delivered messages waiting for an ack, in a hash map by offset.
//! - `expiry`: an index of `(deadline, offset)` for every ready message with a deadline (its
//!   `expiration` property or the queue's TTL), soonest first: one FIFO run per TTL in use, plus
//!   a heap for the rest (`expiry.rs`). [`Queue::expire`] takes the due ones out wherever they
//!   sit: a requeued one leaves its map, a fresh one becomes a *tombstone* in place, skipped when
//!   it reaches the front. It is found in O(1): offsets in `fresh` are consecutive until
//!   tombstones are swept out (then a binary search). No operation scans the queue: an entry
//!   whose message was delivered first is dropped from the index when it comes first (usually
//!   as the message is popped), or when the index is rebuilt from its live entries once it holds
//!   more than twice as many entries as ready messages; tombstones are swept out of `fresh` once
//!   they are half of it. Both are amortized O(1) per message.
//!
//! Priority queues are several `Queue`s, one per level ([`Queue::into_levels`]); each level's
//! offsets carry the level in their top byte ([`LEVEL_SHIFT`]), so on a durable queue the levels
//! share one log id and recovery hands each message back to its level.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::expiry::ExpiryIndex;
use crate::journal::{Journal, Log, Recovered};
use crate::message::Message;

/// A position in the durable log. A push or ack that returned an `Lsn` is on stable storage once
/// [`crate::Store::sync`] has returned an `Lsn` at least as large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// What [`Queue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pushed {
    /// The message's offset in its queue.
    pub offset: u64,
    /// `Some` when the message was written to the durable log: a publisher confirm may be sent
    /// once a sync reached this position. `None` (transient queue or transient message): confirm
    /// at once.
    pub lsn: Option<Lsn>,
}

/// A message handed out by [`Queue::pop`].
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message's offset in its queue: pass it to [`Queue::ack`] or [`Queue::requeue`].
    pub offset: u64,
    /// The message, shared with the other queues it was routed to.
    pub message: Arc<Message>,
    /// The message may have been delivered before (requeued, or recovered after a restart).
    pub redelivered: bool,
}

/// One message in a queue.
#[derive(Debug, Clone)]
struct Entry {
    /// Position in the queue; never reused while the queue lives.
    offset: u64,
    /// The shared message.
    message: Arc<Message>,
    /// Delivered before (requeued), or recovered from disk with that flag.
    redelivered: bool,
    /// End of the message's own record (publish or enqueue) in the durable log; 0 when it was
    /// not logged.
    lsn: u64,
    /// End of another queue's publish record holding the body (fanout); 0 otherwise.
    body_lsn: u64,
}

/// A ready message never delivered; its content may be paged out to the durable log.
#[derive(Debug, Clone)]
struct Ready {
    /// Position in the queue.
    offset: u64,
    /// The message, or `None` when only the log holds it (paged out, or left on disk at
    /// recovery).
    message: Option<Arc<Message>>,
    /// Its body length, kept for the byte counts while it is paged out.
    body_len: u64,
    /// Recovered from disk flagged redelivered.
    redelivered: bool,
    /// End of its publish record in the durable log; 0 when it was not logged.
    lsn: u64,
    /// Length of the record holding the body, to read it back.
    record_len: u32,
    /// End of the record holding the body when it is not `lsn`'s: another queue's publish
    /// record (fanout), or, when `spilled`, the spill log's record. 0 otherwise.
    body_lsn: u64,
    /// The body was written to the spill log (then `lsn` is 0, and `body_lsn` and `record_len`
    /// locate it there). Sharing the fields keeps an entry at 48 bytes: 10 M queued messages
    /// cost 480 MB of index.
    spilled: bool,
    /// A tombstone: the message expired and was taken out ([`Queue::expire`]); the entry only
    /// keeps `fresh` sorted until it reaches the front.
    expired: bool,
}

/// A hasher for offsets: they are already well spread (consecutive integers), so one multiply is
/// enough and much cheaper than SipHash on the ack path.
#[derive(Default, Clone, Copy)]
pub(crate) struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; this fallback keeps the trait total.
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing; hashbrown uses the top 7 bits as a tag, which a multiply fills.
        self.0 = value.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type OffsetMap<V> = HashMap<u64, V, BuildHasherDefault<OffsetHasher>>;

/// `page_out` writes the spill log's buffer out after about this many bytes of bodies, so the
/// buffer (which keeps its capacity) stays small.
const SPILL_CHUNK: usize = 4 << 20;

/// A pop that finds its message paged out reads this many paged-out bodies back at once.
const READ_AHEAD: usize = 64;

/// The index of ready messages is shrunk when it is this many entries long and a quarter full.
const SHRINK_ABOVE: usize = 4096;

/// A queue's messages. Synchronous and single-owner: the broker keeps each queue behind its own
/// lock. A transient queue ([`Queue::new`]) keeps everything in memory; a durable one (from the
/// durable [`crate::Store`]) also logs persistent messages, acks and deliveries to disk. Both
/// have this one interface, so the broker's code does not care which it holds.
#[derive(Debug, Default)]
pub struct Queue {
    /// Ready messages never delivered, in offset order.
    fresh: VecDeque<Ready>,
    /// Ready messages that were delivered and put back, by offset; all sort before `fresh`.
    requeued: BTreeMap<u64, Entry>,
    /// Delivered messages waiting for an ack, by offset.
    unacked: OffsetMap<Entry>,
    /// The offset the next push gets.
    next_offset: u64,
    /// Sum of the body lengths of ready messages.
    ready_bytes: u64,
    /// Sum of the body lengths of unacked messages.
    unacked_bytes: u64,
    /// Where persistent messages are logged; `None` for a transient queue.
    journal: Option<Journal>,
    /// How many entries of `fresh` are paged out.
    paged: usize,
    /// The sum of their body lengths.
    paged_bytes: u64,
    /// `page_out` has looked at every entry of `fresh` below this offset (past the window it was
    /// given): the next call starts here, so paging a long queue repeatedly does not rescan it.
    page_scan_from: u64,
    /// The window (`keep_resident`) of that scan.
    page_scan_keep: usize,
    /// Where bodies without a durable record go under memory pressure; `None` without a store.
    spill: Option<Arc<Log>>,
    /// `(deadline in ms since the epoch, offset)` of ready messages that expire, soonest first;
    /// may also hold entries of messages delivered since (dropped lazily, see the module doc).
    expiry: ExpiryIndex,
    /// Entries of `fresh` that are tombstones (expired in place).
    tombstones: usize,
}

/// Offsets of a priority level carry the level above this bit ([`Queue::into_levels`]); a
/// queue's own counter never gets near 2^56.
pub const LEVEL_SHIFT: u32 = 56;

/// The priority level an offset belongs to (0 for a queue without levels).
pub fn level_of_offset(offset: u64) -> usize {
    usize::try_from(offset >> LEVEL_SHIFT).unwrap_or(0)
}

/// Heap entries kept beyond twice the ready messages before the heap is rebuilt.
const EXPIRY_SLACK: usize = 1024;

/// Tombstones kept in `fresh` before they are swept out (when they are also half of it).
const TOMBSTONE_SLACK: usize = 1024;

/// A ready message taken out by [`Queue::expire`].
#[derive(Debug, Clone)]
pub struct Expired {
    /// The message; `None` when its body was on disk and was not asked for (or could not be
    /// read back).
    pub message: Option<Arc<Message>>,
    /// Its body length (what it counted in [`Queue::ready_bytes`]).
    pub body_len: u64,
}

impl Queue {
    /// An empty transient queue: memory only, nothing written anywhere.
    pub fn new() -> Queue {
        Queue::default()
    }

    /// A durable queue logging to `journal`, holding the messages recovered for it (in offset
    /// order); its offsets continue after `next_offset`.
    pub(crate) fn with_journal(
        journal: Journal,
        recovered: Vec<Recovered>,
        next_offset: u64,
    ) -> Queue {
        let mut queue = Queue::default();
        queue.journal = Some(journal);
        queue.next_offset = next_offset;
        for recovered in recovered {
            queue.ready_bytes += recovered.body_len;
            queue.next_offset = queue.next_offset.max(recovered.offset + 1);
            if recovered.message.is_none() {
                queue.paged += 1;
                queue.paged_bytes += recovered.body_len;
            }
            queue.fresh.push_back(Ready {
                offset: recovered.offset,
                message: recovered.message,
                body_len: recovered.body_len,
                redelivered: recovered.redelivered,
                lsn: recovered.lsn,
                record_len: recovered.record_len,
                body_lsn: recovered.body_lsn,
                spilled: false,
                expired: false,
            });
            if let Some(deadline) = recovered.expires_at_ms {
                queue.expiry.push(deadline, recovered.offset);
            }
        }
        queue
    }

    /// Takes the journal out (queue deletion): every logged message stops counting in the log.
    pub(crate) fn detach(&mut self) -> Option<Journal> {
        self.release_spilled();
        let journal = self.journal.take()?;
        let lsns = self
            .requeued
            .values()
            .chain(self.unacked.values())
            .map(|entry| (entry.lsn, entry.body_lsn))
            .chain(self.fresh.iter().map(|ready| (ready.lsn, ready.body_lsn)));
        for (lsn, body_lsn) in lsns {
            if lsn != 0 {
                journal.forget(lsn, body_lsn);
            }
        }
        Some(journal)
    }

    /// Whether this queue logs persistent messages to disk.
    pub fn is_durable(&self) -> bool {
        self.journal.is_some()
    }

    /// Appends a message at the tail. On a durable queue a persistent message is also written to
    /// the log (buffered; see [`Pushed::lsn`] for when it is on disk).
    pub fn push(&mut self, message: Arc<Message>) -> Pushed {
        let offset = self.next_offset;
        self.next_offset += 1;
        let (lsn, record_len, body_lsn) = match &self.journal {
            Some(journal) if message.persistent => {
                let published = journal.publish(offset, &message, false);
                (
                    Some(Lsn(published.lsn)),
                    published.body_len,
                    published.body_lsn,
                )
            }
            _ => (None, 0, 0),
        };
        let body_len = message.body_len();
        let expires_at_ms = message.expires_at_ms;
        self.ready_bytes += body_len;
        self.fresh.push_back(Ready {
            offset,
            message: Some(message),
            body_len,
            redelivered: false,
            lsn: lsn.map_or(0, |lsn| lsn.0),
            record_len,
            body_lsn,
            spilled: false,
            expired: false,
        });
        if let Some(deadline) = expires_at_ms {
            self.expiry.push(deadline, offset);
            if self.expiry.len() > 2 * self.ready_count() + EXPIRY_SLACK {
                self.rebuild_expiry();
            }
        }
        Pushed { offset, lsn }
    }

    /// Takes the first ready message and keeps it as unacked until [`Queue::ack`] or
    /// [`Queue::requeue`]. `None` when no message is ready.
    pub fn pop(&mut self) -> Option<Delivery> {
        let entry = self.take_first_ready()?;
        if let Some(journal) = &self.journal
            && entry.lsn != 0
            && !entry.redelivered
        {
            // Only a first delivery needs a record: a redelivered message is already flagged.
            journal.deliver(entry.offset, entry.lsn);
        }
        let delivery = Delivery {
            offset: entry.offset,
            message: Arc::clone(&entry.message),
            redelivered: entry.redelivered,
        };
        self.unacked_bytes += entry.message.body_len();
        self.unacked.insert(entry.offset, entry);
        Some(delivery)
    }

    /// Takes the first ready message for good (`no_ack` consumers and `basic.get` with no-ack):
    /// it is not tracked as unacked, and a durable queue logs it as acked.
    pub fn pop_no_ack(&mut self) -> Option<Delivery> {
        let entry = self.take_first_ready()?;
        if let Some(journal) = &self.journal
            && entry.lsn != 0
        {
            journal.ack(entry.offset, entry.lsn, entry.body_lsn);
        }
        Some(Delivery {
            offset: entry.offset,
            message: entry.message,
            redelivered: entry.redelivered,
        })
    }

    /// Forgets a delivered message for good (`basic.ack`, or `basic.reject`/`nack` without
    /// requeue). Returns the message, or `None` if `offset` is not unacked in this queue.
    pub fn ack(&mut self, offset: u64) -> Option<Arc<Message>> {
        let entry = self.unacked.remove(&offset)?;
        self.unacked_bytes -= entry.message.body_len();
        if let Some(journal) = &self.journal
            && entry.lsn != 0
        {
            journal.ack(offset, entry.lsn, entry.body_lsn);
        }
        Some(entry.message)
    }

    /// Puts a delivered message back at its original position, flagged redelivered. Returns
    /// `false` if `offset` is not unacked in this queue.
    pub fn requeue(&mut self, offset: u64) -> bool {
        let Some(mut entry) = self.unacked.remove(&offset) else {
            return false;
        };
        let bytes = entry.message.body_len();
        self.unacked_bytes -= bytes;
        self.ready_bytes += bytes;
        entry.redelivered = true;
        if let Some(deadline) = entry.message.expires_at_ms {
            self.expiry.push(deadline, offset);
        }
        self.requeued.insert(offset, entry);
        true
    }

    /// Puts back a message taken with [`Queue::pop_no_ack`] that never reached the client (its
    /// consumer went away before the delivery was sent): it returns to its original position with
    /// its `redelivered` flag unchanged. A durable queue logs it again, since `pop_no_ack` logged
    /// it as acked.
    pub fn restore(&mut self, delivery: Delivery) {
        let (lsn, body_lsn) = match &self.journal {
            Some(journal) if delivery.message.persistent => {
                // The record carries the flag itself: a separate delivery record could be lost
                // while the publish survives.
                let published =
                    journal.publish(delivery.offset, &delivery.message, delivery.redelivered);
                (published.lsn, published.body_lsn)
            }
            _ => (0, 0),
        };
        self.ready_bytes += delivery.message.body_len();
        if let Some(deadline) = delivery.message.expires_at_ms {
            self.expiry.push(deadline, delivery.offset);
        }
        // A popped offset is below every message still in `fresh`, so it belongs in `requeued`.
        self.requeued.insert(
            delivery.offset,
            Entry {
                offset: delivery.offset,
                message: delivery.message,
                redelivered: delivery.redelivered,
                lsn,
                body_lsn,
            },
        );
    }

    /// Drops every ready message (`queue.purge`); unacked ones stay. Returns how many were dropped.
    pub fn purge(&mut self) -> u64 {
        let count = self.ready_count();
        self.release_spilled();
        let requeued = std::mem::take(&mut self.requeued);
        let fresh = std::mem::take(&mut self.fresh);
        self.paged = 0;
        self.paged_bytes = 0;
        if let Some(journal) = &self.journal {
            let logged = requeued
                .values()
                .map(|entry| (entry.offset, entry.lsn, entry.body_lsn))
                .chain(
                    fresh
                        .iter()
                        .map(|ready| (ready.offset, ready.lsn, ready.body_lsn)),
                );
            for (offset, lsn, body_lsn) in logged {
                if lsn != 0 {
                    journal.ack(offset, lsn, body_lsn);
                }
            }
        }
        self.ready_bytes = 0;
        self.tombstones = 0;
        self.expiry.clear();
        count as u64
    }

    /// Number of ready messages (what `queue.declare-ok` reports as `message_count`).
    pub fn ready_count(&self) -> usize {
        self.fresh.len() - self.tombstones + self.requeued.len()
    }

    /// Number of delivered messages waiting for an ack.
    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
    }

    /// Sum of the body sizes of ready messages.
    pub fn ready_bytes(&self) -> u64 {
        self.ready_bytes
    }

    /// Sum of the body sizes of unacked messages.
    pub fn unacked_bytes(&self) -> u64 {
        self.unacked_bytes
    }

    /// No message ready and none unacked.
    pub fn is_empty(&self) -> bool {
        self.ready_count() == 0 && self.unacked.is_empty()
    }

    /// The unacked messages, in no particular order (for `basic.recover`, metrics and tests).
    pub fn unacked(&self) -> impl Iterator<Item = Delivery> + '_ {
        self.unacked.values().map(|entry| Delivery {
            offset: entry.offset,
            message: Arc::clone(&entry.message),
            redelivered: entry.redelivered,
        })
    }

    /// The soonest deadline (ms since the Unix epoch) of a ready message, if any expires. It may
    /// be the deadline of a message delivered meanwhile: then [`Queue::expire`] finds nothing.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiry.peek().map(|(deadline, _)| deadline)
    }

    /// Takes out every ready message whose deadline is at or before `now_ms`, wherever it is in
    /// the queue, soonest deadline first (then by offset). Unacked messages do not expire (as in
    /// RabbitMQ); one requeued after its deadline expires at the next call. A durable queue logs
    /// each as acked. A body paged out to disk is read back only if `read_back` (the caller
    /// dead-letters it); otherwise [`Expired::message`] is `None` for it. Costs O(log n) per
    /// message taken out, and O(1) when nothing is due.
    pub fn expire(&mut self, now_ms: u64, read_back: bool) -> Vec<Expired> {
        let mut expired = Vec::new();
        while let Some((deadline, offset)) = self.expiry.peek() {
            if deadline > now_ms {
                break;
            }
            self.expiry.pop();
            if let Some(entry) = self.requeued.remove(&offset) {
                self.ready_bytes -= entry.message.body_len();
                if let Some(journal) = &self.journal
                    && entry.lsn != 0
                {
                    journal.ack(offset, entry.lsn, entry.body_lsn);
                }
                expired.push(Expired {
                    body_len: entry.message.body_len(),
                    message: Some(entry.message),
                });
            } else if let Some(index) = self.fresh_index(offset)
                && let Some(taken) = self.tombstone(index, read_back)
            {
                expired.push(taken);
            }
        }
        if !expired.is_empty() {
            self.trim_tombstones();
        }
        expired
    }

    /// Turns `fresh[index]` into a tombstone and returns its message (unless it already was one).
    fn tombstone(&mut self, index: usize, read_back: bool) -> Option<Expired> {
        let ready = self.fresh.get(index)?.clone();
        if ready.expired {
            return None;
        }
        self.ready_bytes -= ready.body_len;
        let message = match &ready.message {
            Some(message) => Some(Arc::clone(message)),
            None => {
                self.paged -= 1;
                self.paged_bytes -= ready.body_len;
                if read_back {
                    // Reading a spilled body releases its spill record.
                    match self.read_ready(&ready) {
                        Ok(message) => Some(message),
                        Err(error) => {
                            tracing::error!(%error, offset = ready.offset,
                                "an expired paged-out message cannot be read back to dead-letter");
                            None
                        }
                    }
                } else {
                    if ready.spilled
                        && let Some(spill) = &self.spill
                    {
                        spill.forget(ready.body_lsn);
                    }
                    None
                }
            }
        };
        if let Some(journal) = &self.journal
            && ready.lsn != 0
        {
            journal.ack(ready.offset, ready.lsn, ready.body_lsn);
        }
        if let Some(slot) = self.fresh.get_mut(index) {
            slot.message = None;
            slot.expired = true;
            slot.lsn = 0;
            slot.body_lsn = 0;
            slot.spilled = false;
        }
        self.tombstones += 1;
        Some(Expired {
            message,
            body_len: ready.body_len,
        })
    }

    /// Drops tombstones from the front of `fresh`, and sweeps them all out once they are half of
    /// it (amortized O(1) per tombstone), so expired messages stop costing memory.
    fn trim_tombstones(&mut self) {
        while self.fresh.front().is_some_and(|ready| ready.expired) {
            self.fresh.pop_front();
            self.tombstones -= 1;
        }
        if self.tombstones > TOMBSTONE_SLACK && self.tombstones * 2 > self.fresh.len() {
            self.fresh.retain(|ready| !ready.expired);
            self.tombstones = 0;
        }
    }

    /// Where `offset` is in `fresh`. Offsets in `fresh` are consecutive until tombstones are
    /// swept out or a recovery left gaps, so the first guess is O(1); else a binary search
    /// (gaps only move an entry towards the front, so the guess bounds it).
    fn fresh_index(&self, offset: u64) -> Option<usize> {
        let front = self.fresh.front()?.offset;
        let guess = usize::try_from(offset.checked_sub(front)?).ok()?;
        if self
            .fresh
            .get(guess)
            .is_some_and(|ready| ready.offset == offset)
        {
            return Some(guess);
        }
        let upto = guess.min(self.fresh.len());
        let (first, second) = self.fresh.as_slices();
        let first = first.get(..upto.min(first.len())).unwrap_or_default();
        let second = second
            .get(..(upto - first.len()).min(second.len()))
            .unwrap_or_default();
        if let Ok(index) = first.binary_search_by_key(&offset, |ready| ready.offset) {
            return Some(index);
        }
        second
            .binary_search_by_key(&offset, |ready| ready.offset)
            .ok()
            .map(|index| first.len() + index)
    }

    /// Whether `offset` is a ready message (not delivered, not expired).
    fn is_ready(&self, offset: u64) -> bool {
        self.requeued.contains_key(&offset)
            || self
                .fresh_index(offset)
                .is_some_and(|index| self.fresh.get(index).is_some_and(|ready| !ready.expired))
    }

    /// Keeps only the expiry entries of messages still ready (amortized: called when the index
    /// holds more than twice as many entries as there are ready messages).
    fn rebuild_expiry(&mut self) {
        let mut expiry = std::mem::take(&mut self.expiry);
        expiry.retain(|(_, offset)| self.is_ready(offset));
        self.expiry = expiry;
    }

    /// Splits the queue into `count` priority levels (at least one): level `L` takes the
    /// messages whose offset has `L` in its top byte (above [`LEVEL_SHIFT`]; past the last level,
    /// the last) and numbers new messages the same way. On a durable queue the levels share its
    /// log id, so a message logged by any level is recovered, in a queue split the same way, into
    /// its own level, in order. A queue written before it had levels has every offset in level 0.
    pub fn into_levels(mut self, count: usize) -> Vec<Queue> {
        let count = count.max(1);
        let mut levels: Vec<Queue> = (0..count)
            .map(|level| {
                let mut queue = Queue::default();
                queue.journal = self.journal.clone();
                queue.spill = self.spill.clone();
                queue.next_offset = (level as u64) << LEVEL_SHIFT;
                queue
            })
            .collect();
        let last = count - 1;
        let level_of = |offset: u64| level_of_offset(offset).min(last);
        // The level of the newest offset seen continues after it (acked messages included).
        if self.next_offset > 0
            && let Some(level) = levels.get_mut(level_of(self.next_offset - 1))
        {
            level.next_offset = level.next_offset.max(self.next_offset);
        }
        for ready in std::mem::take(&mut self.fresh) {
            if ready.expired {
                continue;
            }
            let Some(level) = levels.get_mut(level_of(ready.offset)) else {
                continue;
            };
            level.next_offset = level.next_offset.max(ready.offset + 1);
            level.ready_bytes += ready.body_len;
            if ready.message.is_none() {
                level.paged += 1;
                level.paged_bytes += ready.body_len;
            }
            level.fresh.push_back(ready);
        }
        for (offset, entry) in std::mem::take(&mut self.requeued) {
            if let Some(level) = levels.get_mut(level_of(offset)) {
                level.next_offset = level.next_offset.max(offset + 1);
                level.ready_bytes += entry.message.body_len();
                level.requeued.insert(offset, entry);
            }
        }
        for (offset, entry) in std::mem::take(&mut self.unacked) {
            if let Some(level) = levels.get_mut(level_of(offset)) {
                level.next_offset = level.next_offset.max(offset + 1);
                level.unacked_bytes += entry.message.body_len();
                level.unacked.insert(offset, entry);
            }
        }
        for (deadline, offset) in self.expiry.drain() {
            if let Some(level) = levels.get_mut(level_of(offset)) {
                level.expiry.push(deadline, offset);
            }
        }
        // Everything moved out; nothing is left for `Drop` to release.
        self.spill = None;
        levels
    }

    /// Joins the levels of [`Queue::into_levels`] back into one queue, for
    /// [`crate::Store::delete_queue`]. (Its messages then come in offset order, lowest level
    /// first.)
    pub fn from_levels(levels: Vec<Queue>) -> Queue {
        let mut joined = Queue::default();
        for mut level in levels {
            if joined.journal.is_none() {
                joined.journal = level.journal.take();
            }
            if joined.spill.is_none() {
                joined.spill = level.spill.clone();
            }
            joined.next_offset = joined.next_offset.max(level.next_offset);
            joined.ready_bytes += level.ready_bytes;
            joined.unacked_bytes += level.unacked_bytes;
            joined.paged += level.paged;
            joined.paged_bytes += level.paged_bytes;
            joined.tombstones += level.tombstones;
            // Levels hold ascending offset ranges, so appending keeps `fresh` sorted.
            joined.fresh.extend(std::mem::take(&mut level.fresh));
            joined.requeued.append(&mut level.requeued);
            joined.unacked.extend(std::mem::take(&mut level.unacked));
            for (deadline, offset) in level.expiry.drain() {
                joined.expiry.push(deadline, offset);
            }
            // Its spilled bodies now belong to `joined`.
            level.spill = None;
        }
        joined
    }

    /// The first ready message, without taking it (read back from disk if it was paged out).
    pub fn peek(&mut self) -> Option<(Arc<Message>, bool)> {
        if let Some((_, entry)) = self.requeued.first_key_value() {
            return Some((Arc::clone(&entry.message), entry.redelivered));
        }
        self.page_in(1);
        let ready = self.fresh.front()?;
        Some((Arc::clone(ready.message.as_ref()?), ready.redelivered))
    }

    /// Bytes of memory the queue's own bookkeeping takes (its index of ready, requeued and
    /// unacked entries, by capacity), apart from the messages themselves.
    pub fn index_bytes(&self) -> usize {
        self.fresh.capacity() * std::mem::size_of::<Ready>()
            + self.requeued.len() * (std::mem::size_of::<Entry>() + 16)
            + self.unacked.capacity() * (std::mem::size_of::<Entry>() + 8 + 1)
    }

    /// Number of ready messages whose body is only on disk.
    pub fn paged_count(&self) -> usize {
        self.paged
    }

    /// Body bytes of ready messages held in memory (`ready_bytes` minus what is paged out): what
    /// paging this queue out could release, for the broker's memory budget.
    pub fn resident_ready_bytes(&self) -> u64 {
        self.ready_bytes - self.paged_bytes
    }

    /// Drops from memory the bodies of ready messages past the first `keep_resident`. A body
    /// the durable log already holds (persistent, synced) is simply dropped; any other goes to
    /// the store's spill log (written, never synced, wiped at start), if the queue came from a
    /// [`crate::Store`]. They are read back when they reach the front (or by
    /// [`Queue::page_in`]). A body shared with other queues (fanout) is let go here too; its
    /// memory is released once every queue holding it has let go.
    /// Returns the bytes of memory released. The broker calls it on its longest queues when over
    /// its memory budget. Each call looks only at entries it has not looked at before (and at
    /// logged ones that were not synced yet), unless `keep_resident` shrank.
    pub fn page_out(&mut self, keep_resident: usize) -> usize {
        self.page_out_upto(keep_resident, usize::MAX)
    }

    /// [`Queue::page_out`], stopping once about `max_bytes` of bodies were paged out, so that
    /// the caller can release the queue's lock between rounds; the next call carries on where
    /// this one stopped.
    pub fn page_out_upto(&mut self, keep_resident: usize, max_bytes: usize) -> usize {
        let synced = self.journal.as_ref().map_or(0, Journal::synced);
        let mut released = 0;
        let mut paged_bytes = 0usize;
        let mut spilled = Vec::new();
        let mut spilled_bytes = 0usize;
        if keep_resident < self.page_scan_keep {
            // A smaller window: entries between the two were never looked at.
            self.page_scan_from = 0;
        }
        self.page_scan_keep = keep_resident;
        let scan_from = self.page_scan_from;
        // `fresh` is sorted by offset.
        let start = keep_resident.max(self.fresh.partition_point(|ready| ready.offset < scan_from));
        // The first entry to look at again next time (logged but not synced yet).
        let mut again: Option<u64> = None;
        let mut next_from = scan_from;
        for index in start..self.fresh.len() {
            if paged_bytes >= max_bytes {
                break;
            }
            let Some(ready) = self.fresh.get_mut(index) else {
                break;
            };
            next_from = ready.offset + 1;
            let Some(message) = &ready.message else {
                continue;
            };
            if ready.lsn != 0 && ready.lsn <= synced {
                if Arc::strong_count(message) == 1 {
                    released += message.memory_size();
                }
                paged_bytes += message.body.len();
                ready.message = None;
                self.paged += 1;
                self.paged_bytes += ready.body_len;
            } else if ready.lsn != 0 {
                again.get_or_insert(ready.offset);
            } else if let Some(spill) = &self.spill {
                let published = spill.publish(0, ready.offset, message, ready.redelivered);
                ready.body_lsn = published.lsn;
                ready.record_len = published.body_len;
                ready.spilled = true;
                paged_bytes += message.body.len();
                spilled_bytes += message.body.len();
                spilled.push(index);
                if spilled_bytes >= SPILL_CHUNK {
                    // Write what is buffered, so the spill log's buffer stays small.
                    released += self.finish_spill(&mut spilled);
                    spilled_bytes = 0;
                }
            }
        }
        self.page_scan_from = again.unwrap_or(next_from);
        released += self.finish_spill(&mut spilled);
        released
    }

    /// Writes the spill records just appended for `fresh[spilled]` and drops those bodies from
    /// memory; if the write fails they stay in memory. Returns the bytes released.
    fn finish_spill(&mut self, spilled: &mut Vec<usize>) -> usize {
        let Some(spill) = &self.spill else {
            return 0;
        };
        if spilled.is_empty() {
            return 0;
        }
        let mut released = 0;
        match spill.sync() {
            Ok(_) => {
                for index in spilled.drain(..) {
                    if let Some(ready) = self.fresh.get_mut(index)
                        && let Some(message) = ready.message.take()
                    {
                        if Arc::strong_count(&message) == 1 {
                            released += message.memory_size();
                        }
                        self.paged += 1;
                        self.paged_bytes += ready.body_len;
                    }
                }
            }
            Err(failed) => {
                // Keep them in memory; the spill records are dead.
                tracing::warn!(error = %failed.error, "cannot spill message bodies to disk");
                for index in spilled.drain(..) {
                    if let Some(ready) = self.fresh.get_mut(index) {
                        spill.forget(ready.body_lsn);
                        ready.body_lsn = 0;
                        ready.spilled = false;
                        self.page_scan_from = self.page_scan_from.min(ready.offset);
                    }
                }
            }
        }
        released
    }

    /// Reads back the bodies of the paged-out messages among the first `count` ready ones, so
    /// that delivering them does not wait for the disk (a prefetch; the broker runs it on its
    /// memory thread ahead of the consumers). Records that lie together on disk are read with
    /// one `pread`. Returns how many were loaded. A record that cannot be read stays paged: the
    /// delivery reports it.
    pub fn page_in(&mut self, count: usize) -> usize {
        self.page_in_upto(count, usize::MAX)
    }

    /// [`Queue::page_in`], loading at most `max_loads` bodies, so that the caller can release
    /// the queue's lock between rounds.
    pub fn page_in_upto(&mut self, count: usize, max_loads: usize) -> usize {
        if self.paged == 0 {
            return 0;
        }
        // (index in `fresh`, spilled, end of the record holding the body, its length)
        let wanted: Vec<(usize, bool, u64, u32)> = self
            .fresh
            .iter()
            .take(count)
            .enumerate()
            .filter(|(_, ready)| ready.message.is_none() && !ready.expired)
            .take(max_loads)
            .map(|(index, ready)| {
                let body = if ready.spilled || ready.body_lsn != 0 {
                    ready.body_lsn
                } else {
                    ready.lsn
                };
                (index, ready.spilled, body, ready.record_len)
            })
            .collect();
        let mut loaded = 0;
        for run in wanted.chunk_by(|a, b| a.1 == b.1) {
            let spilled = run.first().is_some_and(|first| first.1);
            let log = if spilled {
                self.spill.clone()
            } else {
                self.journal
                    .as_ref()
                    .map(|journal| Arc::clone(journal.log()))
            };
            let Some(log) = log else {
                break;
            };
            let records: Vec<(u64, u32)> = run.iter().map(|w| (w.2, w.3)).collect();
            let (messages, error) = log.read_publishes(&records);
            for (&(index, _, body_lsn, _), message) in run.iter().zip(messages) {
                if spilled {
                    log.forget(body_lsn);
                }
                if let Some(ready) = self.fresh.get_mut(index) {
                    if spilled {
                        ready.spilled = false;
                        ready.body_lsn = 0;
                    }
                    ready.message = Some(Arc::new(message));
                    self.paged_bytes -= ready.body_len;
                    self.paged -= 1;
                    loaded += 1;
                }
            }
            if let Some(error) = error {
                // The delivery reads it again, and drops it if it really is gone.
                tracing::warn!(%error, "a paged-out message could not be read back ahead");
                break;
            }
        }
        loaded
    }

    /// Reads a paged-out body; a spilled one's spill record is released.
    fn read_ready(&self, ready: &Ready) -> Result<Arc<Message>, crate::StoreError> {
        if ready.spilled {
            let spill = self.spill.as_ref().ok_or(crate::StoreError::Corrupt {
                file: "spill".to_owned(),
                offset: ready.body_lsn,
                reason: "spilled without a spill log".to_owned(),
            })?;
            let read = spill.read_publish(ready.body_lsn, ready.record_len);
            spill.forget(ready.body_lsn);
            return read.map(Arc::new);
        }
        let journal = self.journal.as_ref().ok_or(crate::StoreError::Corrupt {
            file: "log".to_owned(),
            offset: ready.lsn,
            reason: "paged out without a log".to_owned(),
        })?;
        let body = if ready.body_lsn != 0 {
            ready.body_lsn
        } else {
            ready.lsn
        };
        journal.read(body, ready.record_len).map(Arc::new)
    }

    /// Forgets every spilled body (purge, delete): their spill records are dead.
    fn release_spilled(&mut self) {
        if let Some(spill) = &self.spill {
            for ready in &mut self.fresh {
                if ready.spilled {
                    spill.forget(ready.body_lsn);
                    ready.spilled = false;
                    ready.body_lsn = 0;
                }
            }
        }
    }

    /// Gives the queue a spill log for bodies under memory pressure.
    pub(crate) fn with_spill(mut self, spill: Arc<Log>) -> Queue {
        self.spill = Some(spill);
        self
    }

    /// Takes the first ready message out; its expiry entry goes too when it is on top of the
    /// heap (the common case of a FIFO queue with one TTL), so the heap stays small.
    fn take_first_ready(&mut self) -> Option<Entry> {
        if self.requeued.is_empty()
            && self.paged > 0
            && self
                .fresh
                .front()
                .is_some_and(|ready| ready.message.is_none() && !ready.expired)
        {
            // The broker's pager did not read this far ahead: read the next few in one go
            // rather than one `pread` per delivery.
            self.page_in_upto(READ_AHEAD, READ_AHEAD);
        }
        let entry = self.take_first_ready_entry()?;
        if let Some(deadline) = entry.message.expires_at_ms {
            self.expiry.remove_if_first((deadline, entry.offset));
        }
        self.trim_tombstones();
        Some(entry)
    }

    fn take_first_ready_entry(&mut self) -> Option<Entry> {
        if let Some((_, entry)) = self.requeued.pop_first() {
            self.ready_bytes -= entry.message.body_len();
            return Some(entry);
        }
        loop {
            let ready = self.fresh.pop_front()?;
            if self.fresh.capacity() > SHRINK_ABOVE && self.fresh.len() < self.fresh.capacity() / 4
            {
                // A drained backlog gives its index back (10 M entries are 480 MB).
                self.fresh.shrink_to(self.fresh.len() * 2);
            }
            if ready.expired {
                self.tombstones -= 1;
                continue;
            }
            self.ready_bytes -= ready.body_len;
            let message = match ready.message {
                Some(message) => message,
                None => {
                    self.paged -= 1;
                    self.paged_bytes -= ready.body_len;
                    match self.read_ready(&ready) {
                        Ok(message) => message,
                        Err(error) => {
                            // The disk lost it: say so, and drop it for good rather than
                            // failing every delivery after it.
                            tracing::error!(%error, offset = ready.offset,
                                "a paged-out message cannot be read back and is dropped");
                            if let Some(journal) = &self.journal
                                && ready.lsn != 0
                            {
                                journal.ack(ready.offset, ready.lsn, ready.body_lsn);
                            }
                            continue;
                        }
                    }
                }
            };
            return Some(Entry {
                offset: ready.offset,
                message,
                redelivered: ready.redelivered,
                lsn: ready.lsn,
                body_lsn: if ready.spilled { 0 } else { ready.body_lsn },
            });
        }
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Spilled bodies die with their queue. (Logged ones do not: a durable queue dropped at
        // shutdown keeps its messages; deleting it goes through `Store::delete_queue`.)
        self.release_spilled();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use warren_codec::ShortString;

    fn message(body: &'static str) -> Arc<Message> {
        Arc::new(Message::new(
            ShortString::from_static(""),
            ShortString::from_static("q"),
            Bytes::new(),
            Bytes::from_static(body.as_bytes()),
        ))
    }

    fn body(delivery: &Delivery) -> &[u8] {
        &delivery.message.body
    }

    #[test]
    fn a_queued_message_costs_48_bytes_of_index() {
        // The per-message overhead decides how long a queue fits in memory; keep it in view.
        assert!(
            std::mem::size_of::<Ready>() <= 48,
            "{}",
            std::mem::size_of::<Ready>()
        );
        assert!(
            std::mem::size_of::<Entry>() <= 40,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn pops_in_push_order() {
        let mut queue = Queue::new();
        for text in ["a", "b", "c"] {
            queue.push(message(text));
        }
        let popped: Vec<_> = std::iter::from_fn(|| queue.pop())
            .map(|d| (d.offset, body(&d).to_vec(), d.redelivered))
            .collect();
        assert_eq!(
            popped,
            vec![
                (0, b"a".to_vec(), false),
                (1, b"b".to_vec(), false),
                (2, b"c".to_vec(), false)
            ]
        );
        assert_eq!(queue.unacked_count(), 3);
        assert_eq!(queue.ready_count(), 0);
    }

    #[test]
    fn requeue_goes_back_to_original_position_flagged_redelivered() {
        let mut queue = Queue::new();
        for text in ["a", "b", "c", "d"] {
            queue.push(message(text));
        }
        let a = queue.pop().unwrap();
        let b = queue.pop().unwrap();
        // Requeue out of order: b first, then a; both return before c and in offset order.
        assert!(queue.requeue(b.offset));
        assert!(queue.requeue(a.offset));
        let order: Vec<_> = std::iter::from_fn(|| queue.pop())
            .map(|d| (body(&d).to_vec(), d.redelivered))
            .collect();
        assert_eq!(
            order,
            vec![
                (b"a".to_vec(), true),
                (b"b".to_vec(), true),
                (b"c".to_vec(), false),
                (b"d".to_vec(), false)
            ]
        );
    }

    #[test]
    fn requeue_after_later_pushes_still_sorts_first() {
        let mut queue = Queue::new();
        queue.push(message("a"));
        let a = queue.pop().unwrap();
        queue.push(message("b"));
        queue.requeue(a.offset);
        assert_eq!(body(&queue.pop().unwrap()), b"a");
        assert_eq!(body(&queue.pop().unwrap()), b"b");
    }

    #[test]
    fn ack_forgets_and_unknown_offsets_are_refused() {
        let mut queue = Queue::new();
        queue.push(message("abc"));
        let delivery = queue.pop().unwrap();
        assert_eq!(queue.unacked_bytes(), 3);
        assert_eq!(queue.ack(delivery.offset).unwrap().body, "abc");
        assert!(queue.ack(delivery.offset).is_none(), "double ack");
        assert!(!queue.requeue(delivery.offset), "requeue after ack");
        assert!(queue.ack(99).is_none());
        assert!(queue.is_empty());
        assert_eq!(queue.unacked_bytes(), 0);
    }

    #[test]
    fn pop_no_ack_does_not_track() {
        let mut queue = Queue::new();
        queue.push(message("a"));
        let delivery = queue.pop_no_ack().unwrap();
        assert_eq!(queue.unacked_count(), 0);
        assert!(queue.ack(delivery.offset).is_none());
        assert!(queue.is_empty());
    }

    #[test]
    fn restore_puts_an_unsent_no_ack_message_back_in_place() {
        let mut queue = Queue::new();
        for text in ["a", "b", "c"] {
            queue.push(message(text));
        }
        let a = queue.pop_no_ack().unwrap();
        let b = queue.pop_no_ack().unwrap();
        queue.restore(b);
        queue.restore(a);
        assert_eq!(queue.ready_bytes(), 3);
        let order: Vec<_> = std::iter::from_fn(|| queue.pop_no_ack())
            .map(|d| (body(&d).to_vec(), d.redelivered))
            .collect();
        assert_eq!(
            order,
            vec![
                (b"a".to_vec(), false),
                (b"b".to_vec(), false),
                (b"c".to_vec(), false)
            ]
        );
    }

    #[test]
    fn purge_drops_ready_and_keeps_unacked() {
        let mut queue = Queue::new();
        for text in ["a", "bb", "ccc", "dddd"] {
            queue.push(message(text));
        }
        let a = queue.pop().unwrap();
        let b = queue.pop().unwrap();
        queue.requeue(b.offset);
        assert_eq!(queue.ready_bytes(), 2 + 3 + 4);
        assert_eq!(queue.purge(), 3);
        assert_eq!(queue.ready_count(), 0);
        assert_eq!(queue.ready_bytes(), 0);
        assert_eq!(queue.unacked_count(), 1);
        assert!(queue.ack(a.offset).is_some());
        assert!(queue.pop().is_none());
        // Offsets keep growing after a purge.
        assert_eq!(queue.push(message("e")).offset, 4);
    }

    #[test]
    fn counts_and_bytes_follow_each_operation() {
        let mut queue = Queue::new();
        queue.push(message("12345"));
        queue.push(message("12"));
        assert_eq!((queue.ready_count(), queue.ready_bytes()), (2, 7));
        let first = queue.pop().unwrap();
        assert_eq!((queue.ready_count(), queue.ready_bytes()), (1, 2));
        assert_eq!((queue.unacked_count(), queue.unacked_bytes()), (1, 5));
        queue.requeue(first.offset);
        assert_eq!((queue.ready_count(), queue.ready_bytes()), (2, 7));
        assert_eq!(queue.unacked_bytes(), 0);
        let (peeked, redelivered) = queue.peek().unwrap();
        assert_eq!((&peeked.body[..], redelivered), (&b"12345"[..], true));
        assert_eq!(
            queue.page_out(0),
            0,
            "a transient queue keeps everything in memory"
        );
    }

    #[test]
    fn transient_push_needs_no_sync() {
        let mut queue = Queue::new();
        let persistent = Arc::new(
            Message::new(
                ShortString::new(),
                ShortString::new(),
                Bytes::new(),
                Bytes::new(),
            )
            .with_persistent(true),
        );
        assert_eq!(queue.push(persistent).lsn, None);
        assert!(!queue.is_durable());
    }

    #[test]
    fn fanout_shares_one_body() {
        let shared = message("payload");
        let mut queues: Vec<Queue> = (0..10).map(|_| Queue::new()).collect();
        for queue in &mut queues {
            queue.push(Arc::clone(&shared));
        }
        let delivered = queues[3].pop().unwrap();
        assert!(Arc::ptr_eq(&delivered.message, &shared));
        // Ours, one per queue, and the delivery's.
        assert_eq!(Arc::strong_count(&shared), 12);
        assert_eq!(delivered.message.body.as_ptr(), shared.body.as_ptr());
    }

    fn expiring(deadline: u64) -> Arc<Message> {
        let mut message = Message::new(
            ShortString::new(),
            ShortString::new(),
            Bytes::new(),
            Bytes::from_static(b"x"),
        );
        message.expires_at_ms = Some(deadline);
        Arc::new(message)
    }

    #[test]
    fn the_expiry_index_stays_small_when_messages_are_consumed_before_they_expire() {
        let mut queue = Queue::new();
        // A fast consumer: each message is delivered long before its deadline.
        for n in 0..100_000 {
            queue.push(expiring(1_000_000 + n));
            let delivery = queue.pop().unwrap();
            queue.ack(delivery.offset);
        }
        assert!(queue.expiry.len() <= 1, "{}", queue.expiry.len());
        // With deliveries out of deadline order, stale entries are dropped by rebuilds.
        for n in 0..100_000 {
            queue.push(expiring(2_000_000 - n));
            let delivery = queue.pop().unwrap();
            queue.ack(delivery.offset);
        }
        assert!(
            queue.expiry.len() <= EXPIRY_SLACK + 1,
            "{}",
            queue.expiry.len()
        );
    }

    #[test]
    fn tombstones_behind_a_long_lived_head_are_swept_out() {
        let mut queue = Queue::new();
        queue.push(message("head"));
        for _ in 0..10_000 {
            queue.push(expiring(10));
        }
        assert_eq!(queue.expire(10, false).len(), 10_000);
        assert_eq!(queue.ready_count(), 1);
        assert!(
            queue.fresh.len() <= TOMBSTONE_SLACK + 1,
            "{}",
            queue.fresh.len()
        );
        // Offsets now have a gap: later ones are found by binary search.
        for _ in 0..3 {
            queue.push(expiring(20));
        }
        queue.push(message("tail"));
        assert_eq!(queue.expire(20, false).len(), 3);
        assert_eq!(queue.ready_count(), 2);
        assert_eq!(body(&queue.pop().unwrap()), b"head");
        assert_eq!(body(&queue.pop().unwrap()), b"tail");
        assert!(queue.pop().is_none());
        assert_eq!(queue.tombstones, 0);
    }

    #[test]
    fn a_tombstone_is_skipped_by_pop_peek_and_purge() {
        let mut queue = Queue::new();
        queue.push(message("a"));
        queue.push(expiring(5));
        queue.push(message("c"));
        assert_eq!(queue.expire(5, true).len(), 1);
        assert_eq!(queue.ready_count(), 2);
        assert_eq!(body(&queue.pop().unwrap()), b"a");
        assert_eq!(&queue.peek().unwrap().0.body[..], b"c");
        assert_eq!(queue.purge(), 1);
        assert_eq!(queue.ready_count(), 0);
    }
}
