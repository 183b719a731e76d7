//! Topic exchanges: a trie of binding-key words with `*` and `#`, matched in bounded time.
//!
//! Words are split on `.` exactly as RabbitMQ's `split_topic_key`: the empty key has no words,
//! and every other key has one more word than it has dots (so `a..b`, `.a` and `a.` contain
//! empty words). `*` matches exactly one word and `#` zero or more, only as whole words.
//!
//! Matching explores states (trie node, index of the next word). With at most one `#` on the
//! path to a node, a state is reached at most once: each other edge eats exactly one word,
//! trie paths are unique, so the word index fixes how many words that one `#` ate. Below two
//! or more `#`, the same state can be reached in many ways (the words can be shared out
//! between the `#`s differently), so only those states are memoized. The work per
//! routing key is therefore at most (nodes reachable) x (words + 1), however many `#` and `*`
//! a pattern holds: RabbitMQ's own trie walk was exponential on such patterns. Consecutive `#`
//! are also collapsed at bind time (`a.#.#.b` matches exactly what `a.#.b` matches).

use std::collections::HashMap;

use bytes::Bytes;

use crate::dest::{DestKey, DestSet, Target};
use crate::route::RouteBuf;

const ROOT: u32 = 0;

/// One edge out of a trie node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Edge {
    Word(Bytes),
    Star,
    Hash,
}

#[derive(Debug)]
struct Node<Q> {
    /// Children by literal word.
    words: HashMap<Bytes, u32, foldhash::fast::RandomState>,
    /// The `*` child.
    star: Option<u32>,
    /// The `#` child.
    hash: Option<u32>,
    /// Whether the edge into this node is `#`: the node may then eat any number of words.
    is_hash: bool,
    /// Destinations of the bindings whose pattern ends here.
    dests: DestSet<Q>,
}

impl<Q> Node<Q> {
    fn new(is_hash: bool) -> Node<Q> {
        Node {
            words: HashMap::default(),
            star: None,
            hash: None,
            is_hash,
            dests: DestSet::default(),
        }
    }
}

/// The trie, with nodes in a slab so that they refer to each other by index.
#[derive(Debug)]
pub(crate) struct TopicRoutes<Q> {
    nodes: Vec<Node<Q>>,
    /// Slots of removed nodes, reused before the slab grows.
    free: Vec<u32>,
}

impl<Q> Default for TopicRoutes<Q> {
    fn default() -> Self {
        TopicRoutes {
            nodes: vec![Node::new(false)],
            free: Vec::new(),
        }
    }
}

/// Splits a topic key into words, as RabbitMQ does: `""` has no words.
pub(crate) fn split_words(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut words = key.split(|&byte| byte == b'.');
    let empty = key.is_empty();
    std::iter::from_fn(move || if empty { None } else { words.next() })
}

/// The edges of a binding pattern, with runs of `#` collapsed to one.
fn pattern_edges(pattern: &Bytes) -> Vec<Edge> {
    let mut edges: Vec<Edge> = Vec::new();
    for word in split_words(pattern) {
        let edge = match word {
            b"*" => Edge::Star,
            b"#" => {
                if edges.last() == Some(&Edge::Hash) {
                    continue;
                }
                Edge::Hash
            }
            _ => Edge::Word(pattern.slice_ref(word)),
        };
        edges.push(edge);
    }
    edges
}

impl<Q: Clone> TopicRoutes<Q> {
    fn node(&self, id: u32) -> Option<&Node<Q>> {
        self.nodes.get(id as usize)
    }

    fn node_mut(&mut self, id: u32) -> Option<&mut Node<Q>> {
        self.nodes.get_mut(id as usize)
    }

    fn child(&self, id: u32, edge: &Edge) -> Option<u32> {
        let node = self.node(id)?;
        match edge {
            Edge::Word(word) => node.words.get(word).copied(),
            Edge::Star => node.star,
            Edge::Hash => node.hash,
        }
    }

    fn alloc(&mut self, is_hash: bool) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                if let Some(node) = self.node_mut(slot) {
                    *node = Node::new(is_hash);
                }
                slot
            }
            None => {
                self.nodes.push(Node::new(is_hash));
                (self.nodes.len() - 1) as u32
            }
        }
    }

    pub(crate) fn add(&mut self, pattern: &Bytes, target: Target<Q>) {
        let mut current = ROOT;
        for edge in pattern_edges(pattern) {
            current = match self.child(current, &edge) {
                Some(child) => child,
                None => {
                    let child = self.alloc(edge == Edge::Hash);
                    if let Some(node) = self.node_mut(current) {
                        match edge {
                            Edge::Word(word) => {
                                node.words.insert(word, child);
                            }
                            Edge::Star => node.star = Some(child),
                            Edge::Hash => node.hash = Some(child),
                        }
                    }
                    child
                }
            };
        }
        if let Some(node) = self.node_mut(current) {
            node.dests.add(target);
        }
    }

    pub(crate) fn remove(&mut self, pattern: &Bytes, dest: &DestKey) {
        let edges = pattern_edges(pattern);
        let mut path = Vec::with_capacity(edges.len() + 1);
        let mut current = ROOT;
        path.push(current);
        for edge in &edges {
            match self.child(current, edge) {
                Some(child) => current = child,
                None => return,
            }
            path.push(current);
        }
        match self.node_mut(current) {
            Some(node) => {
                if !node.dests.remove(dest) {
                    return;
                }
            }
            None => return,
        }
        // Prune nodes left with no destinations and no children, bottom up, so that a trie
        // under churn does not keep every pattern ever bound.
        for depth in (1..path.len()).rev() {
            let (Some(&id), Some(&parent)) = (path.get(depth), path.get(depth - 1)) else {
                break;
            };
            let empty = self.node(id).is_some_and(|node| {
                node.dests.is_empty()
                    && node.words.is_empty()
                    && node.star.is_none()
                    && node.hash.is_none()
            });
            if !empty {
                break;
            }
            if let (Some(parent_node), Some(edge)) = (self.node_mut(parent), edges.get(depth - 1)) {
                match edge {
                    Edge::Word(word) => {
                        parent_node.words.remove(word);
                    }
                    Edge::Star => parent_node.star = None,
                    Edge::Hash => parent_node.hash = None,
                }
            }
            if let Some(node) = self.node_mut(id) {
                *node = Node::new(false);
            }
            self.free.push(id);
        }
    }

    /// Adds the destinations of every pattern matching any of `routing_keys`.
    pub(crate) fn collect(&self, routing_keys: &[&[u8]], out: &mut RouteBuf<Q>) -> bool {
        let mut any = false;
        for key in routing_keys {
            any |= self.collect_key(key, out);
        }
        any
    }

    fn collect_key(&self, key: &[u8], out: &mut RouteBuf<Q>) -> bool {
        let mut words = std::mem::take(&mut out.words);
        let mut stack = std::mem::take(&mut out.stack);
        words.clear();
        stack.clear();
        let mut start = 0u32;
        if !key.is_empty() {
            for (pos, &byte) in key.iter().enumerate() {
                if byte == b'.' {
                    words.push((start, pos as u32));
                    start = pos as u32 + 1;
                }
            }
            words.push((start, key.len() as u32));
        }
        out.clear_memo();
        let n_words = words.len() as u32;
        let mut any = false;
        // Each state carries how many `#` nodes are on its path (counting its own node),
        // saturating at 2: from 2 on, the state is memoized.
        stack.push((ROOT, 0, 0));
        while let Some((id, index, hashes)) = stack.pop() {
            if hashes >= 2 && !out.memo.insert((u64::from(id) << 32) | u64::from(index)) {
                continue;
            }
            let Some(node) = self.node(id) else {
                continue;
            };
            if index == n_words {
                any |= node.dests.collect(out);
            } else {
                let word = words
                    .get(index as usize)
                    .and_then(|&(from, to)| key.get(from as usize..to as usize));
                if let Some(child) = word.and_then(|word| node.words.get(word)) {
                    stack.push((*child, index + 1, hashes));
                }
                if let Some(child) = node.star {
                    stack.push((child, index + 1, hashes));
                }
                if node.is_hash {
                    // The `#` that led here eats one more word.
                    stack.push((id, index + 1, hashes));
                }
            }
            if let Some(child) = node.hash {
                // A `#` child matches zero words here; it eats more through its own loop.
                stack.push((child, index, (hashes + 1).min(2)));
            }
        }
        out.words = words;
        out.stack = stack;
        any
    }
}
