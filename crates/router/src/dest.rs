//! The destinations behind one binding key: queues (with their handles) and exchanges.

use std::collections::HashMap;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::route::RouteBuf;

/// The router's id for a queue, unique among live queues of a topology. Dedup of a message that
/// reaches a queue along several paths compares these, so `Q` needs no `Eq`/`Hash`.
pub(crate) type QueueId = u32;

/// What a destination is, without the handle: the identity used to add and remove.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum DestKey {
    Queue(QueueId),
    Exchange(Bytes),
}

/// A resolved destination: a queue's handle, ready to hand back, or an exchange to visit next.
#[derive(Debug, Clone)]
pub(crate) enum Target<Q> {
    Queue { id: QueueId, handle: Q },
    Exchange(Bytes),
}

impl<Q> Target<Q> {
    fn key_matches(&self, key: &DestKey) -> bool {
        match (self, key) {
            (Target::Queue { id, .. }, DestKey::Queue(other)) => id == other,
            (Target::Exchange(name), DestKey::Exchange(other)) => name == other,
            _ => false,
        }
    }

    fn key(&self) -> DestKey {
        match self {
            Target::Queue { id, .. } => DestKey::Queue(*id),
            Target::Exchange(name) => DestKey::Exchange(name.clone()),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry<Q> {
    target: Target<Q>,
    /// How many bindings lead here (same destination under one key with different arguments,
    /// or topic patterns that normalise to the same path). Removed when it reaches zero.
    refs: u32,
}

/// Above this many entries a position index is kept, so removal from a fanout exchange with
/// many queues stays O(1); below it a linear scan is faster and uses no memory.
const INDEX_FROM: usize = 16;

/// A set of destinations, unique by [`DestKey`], stored as a vector so that routing iterates
/// contiguous memory and clones handles without hashing. The first entry is stored inline:
/// most binding keys have one destination, and routing then skips a pointer chase.
#[derive(Debug)]
pub(crate) struct DestSet<Q> {
    entries: SmallVec<[Entry<Q>; 1]>,
    /// Positions by key, only when there are `INDEX_FROM` entries or more; boxed so the
    /// common small set pays one pointer for it.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<DestKey, u32, foldhash::fast::RandomState>>>,
}

impl<Q> Default for DestSet<Q> {
    fn default() -> Self {
        DestSet {
            entries: SmallVec::new(),
            index: None,
        }
    }
}

impl<Q: Clone> DestSet<Q> {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, key: &DestKey) -> Option<usize> {
        if let Some(index) = &self.index {
            index.get(key).map(|&pos| pos as usize)
        } else {
            self.entries
                .iter()
                .position(|entry| entry.target.key_matches(key))
        }
    }

    /// Adds one binding's reference to `target`.
    pub(crate) fn add(&mut self, target: Target<Q>) {
        let key = target.key();
        if let Some(pos) = self.position(&key) {
            if let Some(entry) = self.entries.get_mut(pos) {
                entry.refs += 1;
            }
            return;
        }
        self.entries.push(Entry { target, refs: 1 });
        let position = (self.entries.len() - 1) as u32;
        if let Some(index) = &mut self.index {
            index.insert(key, position);
        } else if self.entries.len() >= INDEX_FROM {
            self.index = Some(Box::new(
                self.entries
                    .iter()
                    .enumerate()
                    .map(|(pos, entry)| (entry.target.key(), pos as u32))
                    .collect(),
            ));
        }
    }

    /// Drops one binding's reference to `key`; returns whether it was there.
    pub(crate) fn remove(&mut self, key: &DestKey) -> bool {
        let Some(pos) = self.position(key) else {
            return false;
        };
        let Some(entry) = self.entries.get_mut(pos) else {
            return false;
        };
        entry.refs -= 1;
        if entry.refs > 0 {
            return true;
        }
        self.entries.swap_remove(pos);
        if let Some(index) = &mut self.index {
            index.remove(key);
            if self.entries.len() < INDEX_FROM / 2 {
                // Hysteresis: a set hovering around the threshold does not rebuild each time.
                self.index = None;
            } else if let Some(moved) = self.entries.get(pos) {
                index.insert(moved.target.key(), pos as u32);
            }
        }
        if self.entries.is_empty() && self.entries.spilled() {
            self.entries = SmallVec::new();
        }
        true
    }

    /// Copies every destination into `out`: queues into the result, exchanges into the
    /// to-visit list. Returns whether there was any destination at all.
    pub(crate) fn collect(&self, out: &mut RouteBuf<Q>) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        out.begin_contribution();
        for entry in &self.entries {
            match &entry.target {
                Target::Queue { id, handle } => out.push_queue(*id, handle),
                Target::Exchange(name) => out.push_exchange(name),
            }
        }
        true
    }
}
