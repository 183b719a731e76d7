//! A priority queue's messages (`x-max-priority`): one `warren_store::Queue` per priority
//! level, the highest non-empty level served first, FIFO within a level. A queue without
//! priorities has one level, so the common case costs one bounds-checked index.
//!
//! Offsets handed out are the store queue's offset with the level in the top byte, so the
//! channel's `(queue, offset)` unacked entries need no change.

use std::sync::Arc;

use warren_store::{Delivery, Message, Pushed, Queue};

use crate::memory::QueueMemory;

/// The level is kept above this bit of an offset; store offsets never get near 2^56.
const LEVEL_SHIFT: u32 = 56;
const OFFSET_MASK: u64 = (1 << LEVEL_SHIFT) - 1;

/// Messages by priority level.
#[derive(Default)]
pub struct Levels {
    /// Index = priority; never empty.
    levels: Vec<Queue>,
}

impl Levels {
    /// One level holding `queue` (a queue without priorities, or a durable one).
    pub fn single(queue: Queue) -> Self {
        Levels {
            levels: vec![queue],
        }
    }

    /// `max_priority + 1` empty transient levels, spilling where `first` spills (`first`, an
    /// empty queue from the broker, becomes level 0).
    pub fn with_max_priority(max_priority: u8, first: Queue) -> Self {
        let mut levels = Vec::with_capacity(usize::from(max_priority) + 1);
        for _ in 0..max_priority {
            levels.push(first.empty_sibling());
        }
        levels.insert(0, first);
        Levels { levels }
    }

    fn level_of(&self, message: &Message) -> usize {
        usize::from(message.priority.unwrap_or(0)).min(self.levels.len().saturating_sub(1))
    }

    fn tag(level: usize, mut delivery: Delivery) -> Delivery {
        delivery.offset |= (level as u64) << LEVEL_SHIFT;
        delivery
    }

    fn split(offset: u64) -> (usize, u64) {
        (
            usize::try_from(offset >> LEVEL_SHIFT).unwrap_or(0),
            offset & OFFSET_MASK,
        )
    }

    /// Appends a message at the tail of its priority level.
    pub fn push(&mut self, message: Arc<Message>) -> Pushed {
        let level = self.level_of(&message);
        match self.levels.get_mut(level) {
            Some(queue) => queue.push(message),
            None => Queue::new().push(message),
        }
    }

    /// The next ready message, kept as unacked.
    pub fn pop(&mut self) -> Option<Delivery> {
        let (level, queue) = self
            .levels
            .iter_mut()
            .enumerate()
            .rev()
            .find(|(_, q)| q.ready_count() > 0)?;
        queue.pop().map(|d| Self::tag(level, d))
    }

    /// The next ready message, forgotten at once.
    pub fn pop_no_ack(&mut self) -> Option<Delivery> {
        let (level, queue) = self
            .levels
            .iter_mut()
            .enumerate()
            .rev()
            .find(|(_, q)| q.ready_count() > 0)?;
        queue.pop_no_ack().map(|d| Self::tag(level, d))
    }

    /// The next ready message without taking it.
    pub fn peek(&mut self) -> Option<(Arc<Message>, bool)> {
        self.levels
            .iter_mut()
            .rev()
            .find(|q| q.ready_count() > 0)?
            .peek()
    }

    /// Forgets an unacked message.
    pub fn ack(&mut self, offset: u64) -> Option<Arc<Message>> {
        let (level, offset) = Self::split(offset);
        self.levels.get_mut(level)?.ack(offset)
    }

    /// Puts an unacked message back at its place in its level.
    pub fn requeue(&mut self, offset: u64) -> bool {
        let (level, offset) = Self::split(offset);
        self.levels
            .get_mut(level)
            .is_some_and(|q| q.requeue(offset))
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&mut self) -> u64 {
        self.levels.iter_mut().map(Queue::purge).sum()
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
    pub fn restore(&mut self, mut delivery: Delivery) {
        let (level, offset) = Self::split(delivery.offset);
        delivery.offset = offset;
        if let Some(queue) = self.levels.get_mut(level) {
            queue.restore(delivery);
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

    /// Pages out bodies past the first `keep` ready messages of each level, stopping after
    /// about `max_bytes`. Returns the body bytes paged out.
    pub fn page_out(&mut self, keep: usize, max_bytes: usize) -> u64 {
        let mut paged = 0;
        for queue in &mut self.levels {
            let before = queue.resident_ready_bytes();
            let budget = usize::try_from(paged).map_or(0, |done| max_bytes.saturating_sub(done));
            if budget == 0 {
                break;
            }
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

    /// The first level's queue, taken out (durable queues have only that one).
    pub fn take_first(&mut self) -> Queue {
        self.levels
            .first_mut()
            .map(std::mem::take)
            .unwrap_or_default()
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
        let mut levels = Levels::with_max_priority(5, Queue::new());
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
        let mut levels = Levels::with_max_priority(3, Queue::new());
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
