//! Direct exchanges: a message goes to the destinations bound with exactly its routing key.

use std::collections::HashMap;

use bytes::Bytes;

use crate::dest::{DestKey, DestSet, Target};
use crate::route::RouteBuf;

/// Binding key -> destinations. One hash lookup per routing key.
#[derive(Debug)]
pub(crate) struct DirectRoutes<Q> {
    by_key: HashMap<Bytes, DestSet<Q>, foldhash::fast::RandomState>,
}

impl<Q> Default for DirectRoutes<Q> {
    fn default() -> Self {
        DirectRoutes {
            by_key: HashMap::default(),
        }
    }
}

impl<Q: Clone> DirectRoutes<Q> {
    pub(crate) fn add(&mut self, key: &Bytes, target: Target<Q>) {
        self.by_key.entry(key.clone()).or_default().add(target);
    }

    pub(crate) fn remove(&mut self, key: &[u8], dest: &DestKey) {
        if let Some(set) = self.by_key.get_mut(key) {
            set.remove(dest);
            if set.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    pub(crate) fn collect(&self, routing_keys: &[&[u8]], out: &mut RouteBuf<Q>) -> bool {
        let mut any = false;
        for key in routing_keys {
            if let Some(set) = self.by_key.get(*key) {
                any |= set.collect(out);
            }
        }
        any
    }
}
