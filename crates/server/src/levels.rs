//! A queue's messages by priority level (`x-max-priority`): one `warren_store::Queue` per
//! level, made by `Queue::into_levels`, the highest non-empty level served first, FIFO within a
//! level. A queue without priorities has one level, so the common case costs one
//! bounds-checked index.
//!
//! The store numbers each level's offsets with the level in the top byte, so an offset alone
//! says which level acks and requeues go to, the channel's `(queue, offset)` unacked entries need
//! no change, and a durable priority queue comes back from the log with every message in its
//! level.

use std::sync::Arc;

use warren_store::{Delivery, Expired, Message, Pushed, Queue, level_of_offset};

use crate::memory::QueueMemory;

/// Messages by priority level.
#[derive(Default)]
pub struct Levels {
    /// Index = priority; never empty.
    levels: Vec<Queue>,
    /// The soonest expiry deadline over all levels (`u64::MAX`: none), kept here so that a queue
    /// with 256 levels does not look at each of them on every dispatch. Never later than the
    /// true soonest; it may be earlier (a message delivered meanwhile).
    next_expiry: u64,
}

impl Levels {
    /// `queue` as is (`max_priority` is `None`), or split into `max_priority + 1` levels (a new
    /// queue, or a durable one recovered from the store with its messages in their levels).
    pub fn new(queue: Queue, max_priority: Option<u8>) -> Self {
        let levels = match max_priority {
            Some(max) => queue.into_levels(usize::from(max) + 1),
            None => vec![queue],
        };
        let mut levels = Levels {
            levels,
            next_expiry: u64::MAX,
        };
        levels.recompute_next_expiry();
        levels
    }

    fn level_of(&self, message: &Message) -> usize {
        usize::from(message.priority.unwrap_or(0)).min(self.levels.len().saturating_sub(1))
    }

    fn recompute_next_expiry(&mut self) {
        self.next_expiry = self
            .levels
            .iter()
            .filter_map(Queue::next_expiry)
            .min()
            .unwrap_or(u64::MAX);
    }

    /// Appends a message at the tail of its priority level.
    pub fn push(&mut self, message: Arc<Message>) -> Pushed {
        if let Some(deadline) = message.expires_at_ms {
            self.next_expiry = self.next_expiry.min(deadline);
        }
        let level = self.level_of(&message);
        match self.levels.get_mut(level) {
            Some(queue) => queue.push(message),
            None => Queue::new().push(message),
        }
    }

    /// The highest level with a ready message.
    fn first_ready(&mut self) -> Option<&mut Queue> {
        self.levels.iter_mut().rev().find(|q| q.ready_count() > 0)
    }

    /// The next ready message, kept as unacked.
    pub fn pop(&mut self) -> Option<Delivery> {
        self.first_ready()?.pop()
    }

    /// The next ready message, forgotten at once.
    pub fn pop_no_ack(&mut self) -> Option<Delivery> {
        self.first_ready()?.pop_no_ack()
    }

    /// The soonest deadline of a ready message (see the field's doc), if any.
    pub fn next_expiry(&self) -> Option<u64> {
        (self.next_expiry != u64::MAX).then_some(self.next_expiry)
    }

    /// Takes out every ready message due at `now_ms`, in any level and wherever it sits
    /// (`Queue::expire`), soonest deadline first within a level, higher levels first.
    pub fn expire(&mut self, now_ms: u64, read_back: bool) -> Vec<Expired> {
        if self.next_expiry > now_ms {
            return Vec::new();
        }
        let mut expired = Vec::new();
        for queue in self.levels.iter_mut().rev() {
            if queue.next_expiry().is_some_and(|at| at <= now_ms) {
                expired.extend(queue.expire(now_ms, read_back));
            }
        }
        self.recompute_next_expiry();
        expired
    }

    /// Forgets an unacked message.
    pub fn ack(&mut self, offset: u64) -> Option<Arc<Message>> {
        self.levels.get_mut(level_of_offset(offset))?.ack(offset)
    }

    /// Puts an unacked message back at its place in its level.
    pub fn requeue(&mut self, offset: u64) -> bool {
        let requeued = self
            .levels
            .get_mut(level_of_offset(offset))
            .is_some_and(|q| q.requeue(offset));
        if requeued {
            // It may carry a deadline again (unacked messages are not in the expiry index).
            self.recompute_next_expiry();
        }
        requeued
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&mut self) -> u64 {
        let purged = self.levels.iter_mut().map(Queue::purge).sum();
        self.recompute_next_expiry();
        purged
    }

    /// Ready messages.
    pub fn ready_count(&self) -> usize {
        self.levels.iter().map(Queue::ready_count).sum()
    }

    /// Bytes of ready bodies.
    pub fn ready_bytes(&self) -> u64 {
        self.levels.iter().map(Queue::ready_bytes).sum()
    }

    /// Bytes of unacked bodies.
    pub fn unacked_bytes(&self) -> u64 {
        self.levels.iter().map(Queue::unacked_bytes).sum()
    }

    /// Puts back a message taken with `pop_no_ack` that never reached its consumer, at its
    /// original place in its level.
    pub fn restore(&mut self, delivery: Delivery) {
        let deadline = delivery.message.expires_at_ms;
        if let Some(queue) = self.levels.get_mut(level_of_offset(delivery.offset)) {
            queue.restore(delivery);
            if let Some(deadline) = deadline {
                self.next_expiry = self.next_expiry.min(deadline);
            }
        }
    }

    /// Counts and bytes for the memory account.
    pub fn memory(&self) -> QueueMemory {
        let mut memory = QueueMemory::default();
        for queue in &self.levels {
            memory.ready += queue.ready_count();
            memory.paged += queue.paged_count();
            memory.ready_bytes += queue.ready_bytes();
            memory.resident_ready_bytes += queue.resident_ready_bytes();
            memory.unacked += queue.unacked_count();
            memory.index_bytes += queue.index_bytes();
        }
        memory
    }

    /// Pages out bodies past the next `keep` ready messages to be delivered (the window goes to
    /// the highest levels first), lowest level first, stopping after about `max_bytes`. Returns
    /// the body bytes paged out.
    pub fn page_out(&mut self, keep: usize, max_bytes: usize) -> u64 {
        let mut left = keep;
        let mut keeps: Vec<usize> = self
            .levels
            .iter()
            .rev()
            .map(|queue| {
                let kept = left.min(queue.ready_count());
                left -= kept;
                kept
            })
            .collect();
        keeps.reverse();
        let mut paged = 0;
        for (queue, keep) in self.levels.iter_mut().zip(keeps) {
            let budget = usize::try_from(paged).map_or(0, |done| max_bytes.saturating_sub(done));
            if budget == 0 {
                break;
            }
            let before = queue.resident_ready_bytes();
            queue.page_out_upto(keep, budget);
            paged += before.saturating_sub(queue.resident_ready_bytes());
        }
        paged
    }

    /// Reads back the paged-out bodies among the next `window` messages to be delivered
    /// (highest level first), at most `max_loads` of them. Returns how many were loaded.
    pub fn page_in(&mut self, window: usize, max_loads: usize) -> usize {
        let mut left = window;
        let mut loaded = 0;
        for queue in self.levels.iter_mut().rev() {
            if left == 0 || loaded >= max_loads {
                break;
            }
            if queue.ready_count() == 0 {
                continue;
            }
            loaded += queue.page_in_upto(left, max_loads - loaded);
            left = left.saturating_sub(queue.ready_count());
        }
        loaded
    }

    /// Every level joined back into one queue (the queue is being deleted), for
    /// `Store::delete_queue`.
    pub fn take_all(&mut self) -> Queue {
        self.next_expiry = u64::MAX;
        Queue::from_levels(std::mem::take(&mut self.levels))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use warren_codec::ShortString;

    use super::*;

    fn message(body: &'static [u8], priority: Option<u8>) -> Arc<Message> {
        let mut m = Message::new(
            ShortString::new(),
            ShortString::new(),
            Bytes::new(),
            Bytes::from_static(body),
        );
        m.priority = priority;
        Arc::new(m)
    }

    #[test]
    fn highest_priority_first_fifo_within_and_capped_at_max() {
        let mut levels = Levels::new(Queue::new(), Some(5));
        levels.push(message(b"low", None));
        levels.push(message(b"high1", Some(5)));
        levels.push(message(b"capped", Some(200)));
        levels.push(message(b"mid", Some(2)));
        let order: Vec<_> = std::iter::from_fn(|| levels.pop_no_ack())
            .map(|d| d.message.body.clone())
            .collect();
        assert_eq!(order, [&b"high1"[..], b"capped", b"mid", b"low"]);
    }

    #[test]
    fn acks_and_requeues_find_their_level() {
        let mut levels = Levels::new(Queue::new(), Some(3));
        levels.push(message(b"a", Some(3)));
        levels.push(message(b"b", Some(1)));
        let a = levels.pop().unwrap();
        let b = levels.pop().unwrap();
        assert_eq!(levels.ready_count(), 0);
        assert!(levels.requeue(b.offset));
        assert!(levels.ack(a.offset).is_some());
        let again = levels.pop().unwrap();
        assert_eq!(&again.message.body[..], b"b");
        assert!(again.redelivered);
        assert!(levels.ack(a.offset).is_none(), "acked once only");
    }
}
