//! Fanout exchanges: a message goes to every destination, whatever its routing key.

use bytes::Bytes;

use crate::dest::{DestKey, DestSet, Target};
use crate::route::RouteBuf;

/// All destinations in one set; a destination bound under several keys is held once, with a
/// reference count, so routing never has to remove duplicates.
#[derive(Debug)]
pub(crate) struct FanoutRoutes<Q> {
    all: DestSet<Q>,
}

impl<Q> Default for FanoutRoutes<Q> {
    fn default() -> Self {
        FanoutRoutes {
            all: DestSet::default(),
        }
    }
}

impl<Q: Clone> FanoutRoutes<Q> {
    pub(crate) fn add(&mut self, _key: &Bytes, target: Target<Q>) {
        self.all.add(target);
    }

    pub(crate) fn remove(&mut self, dest: &DestKey) {
        self.all.remove(dest);
    }

    pub(crate) fn collect(&self, out: &mut RouteBuf<Q>) -> bool {
        self.all.collect(out)
    }
}
