//! Property tests: the topic trie against a naive recursive matcher, under random binds and
//! unbinds, and routing while another thread rebinds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap: a panic is a failed assertion.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use warren_codec::ShortString;
use warren_router::{Binding, ExchangeDef, ExchangeKind, RouteBuf, RouteOutcome, Topology};

/// RabbitMQ's `split_topic_key`: the empty key has no words.
fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// The definition of topic matching, written as directly as possible (exponential, fine for
/// the short keys generated here).
fn naive(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => naive(rest, key) || (!key.is_empty() && naive(pattern, &key[1..])),
        Some((&"*", rest)) => !key.is_empty() && naive(rest, &key[1..]),
        Some((word, rest)) => key.first() == Some(word) && naive(rest, &key[1..]),
    }
}

fn name(s: &str) -> ShortString {
    ShortString::try_from(s).unwrap()
}

fn pattern_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "", "*", "#", "ab"]),
        0..6,
    )
    .prop_map(|words| words.join("."))
}

fn key_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "", "ab", "*", "#"]),
        0..7,
    )
    .prop_map(|words| words.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn trie_matches_like_the_definition(
        ops in prop::collection::vec((any::<bool>(), 0..4usize, pattern_strategy()), 1..40),
        keys in prop::collection::vec(key_strategy(), 1..10),
    ) {
        let topology: Topology<Arc<String>> = Topology::new("/");
        topology.declare_exchange(ExchangeDef::new(name("t"), ExchangeKind::Topic)).unwrap();
        for queue in 0..4 {
            topology.add_queue(name(&format!("q{queue}")), Arc::new(format!("q{queue}")));
        }
        let mut model: BTreeSet<(usize, String)> = BTreeSet::new();
        for (bind, queue, pattern) in &ops {
            let binding = Binding::queue(name("t"), name(&format!("q{queue}")), name(pattern));
            if *bind {
                let added = topology.bind(&binding).unwrap();
                prop_assert_eq!(added, model.insert((*queue, pattern.clone())));
            } else {
                let removed = topology.unbind(&binding).unwrap();
                prop_assert_eq!(removed.bindings.len() == 1, model.remove(&(*queue, pattern.clone())));
            }
        }
        prop_assert_eq!(topology.binding_count(), model.len());
        let mut out = RouteBuf::new();
        for key in &keys {
            let key_words = words(key);
            let expected: BTreeSet<String> = model
                .iter()
                .filter(|(_, pattern)| naive(&words(pattern), &key_words))
                .map(|(queue, _)| format!("q{queue}"))
                .collect();
            let outcome = topology.route(b"t", &[key.as_bytes()], None, &mut out);
            let got: Vec<String> = out.queues().iter().map(|q| q.to_string()).collect();
            let got_set: BTreeSet<String> = got.iter().cloned().collect();
            prop_assert_eq!(got.len(), got_set.len(), "duplicate delivery for {:?}", key);
            prop_assert_eq!(&got_set, &expected, "key {:?} bindings {:?}", key, model);
            let want = if expected.is_empty() { RouteOutcome::Unroutable } else { RouteOutcome::Routed(expected.len()) };
            prop_assert_eq!(outcome, want);
        }
        // Unbinding everything leaves an empty trie that matches nothing.
        for (queue, pattern) in &model {
            let binding = Binding::queue(name("t"), name(&format!("q{queue}")), name(pattern));
            prop_assert_eq!(topology.unbind(&binding).unwrap().bindings.len(), 1);
        }
        for key in &keys {
            prop_assert_eq!(topology.route(b"t", &[key.as_bytes()], None, &mut out), RouteOutcome::Unroutable);
        }
    }
}

#[test]
fn routing_sees_stable_bindings_while_others_churn() {
    let topology: Arc<Topology<Arc<String>>> = Arc::new(Topology::new("/"));
    topology
        .declare_exchange(ExchangeDef::new(name("t"), ExchangeKind::Topic))
        .unwrap();
    topology.add_queue(name("stable"), Arc::new("stable".into()));
    topology
        .bind(&Binding::queue(name("t"), name("stable"), name("a.#")))
        .unwrap();
    let writer = {
        let topology = Arc::clone(&topology);
        std::thread::spawn(move || {
            for round in 0..200 {
                let queue = format!("churn{}", round % 7);
                topology.add_queue(name(&queue), Arc::new(queue.clone()));
                for i in 0..20 {
                    let key = format!("a.{i}.*");
                    topology
                        .bind(&Binding::queue(name("t"), name(&queue), name(&key)))
                        .unwrap();
                }
                topology.remove_queue(queue.as_bytes()).unwrap();
            }
        })
    };
    let mut out = RouteBuf::new();
    for i in 0..20_000 {
        let key = format!("a.{}.x", i % 20);
        let outcome = topology.route(b"t", &[key.as_bytes()], None, &mut out);
        assert!(matches!(outcome, RouteOutcome::Routed(n) if (1..=2).contains(&n)));
        assert!(out.queues().iter().any(|queue| queue.as_str() == "stable"));
    }
    writer.join().unwrap();
    assert_eq!(topology.list_bindings().len(), 1);
}
