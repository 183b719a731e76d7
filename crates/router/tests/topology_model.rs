//! Property test: random declares, deletes, binds, unbinds and queue churn against a plain
//! model of exchanges, queues and bindings (with auto-delete cascades and exchange-to-exchange
//! routing written the obvious way). Catches the catalog and the routing indexes drifting
//! apart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap: a panic is a failed assertion.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;
use warren_codec::ShortString;
use warren_router::{Binding, Destination, ExchangeDef, ExchangeKind, RouteBuf, Topology};

const EXCHANGES: [&str; 4] = ["e0", "e1", "e2", "e3"];
const QUEUES: [&str; 3] = ["q0", "q1", "q2"];
const KEYS: [&str; 5] = ["a", "b", "a.b", "*", "#"];

fn name(s: &str) -> ShortString {
    ShortString::try_from(s).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Declare(usize, ExchangeKind, bool),
    Delete(usize, bool),
    AddQueue(usize),
    RemoveQueue(usize),
    /// source, destination (queue if < 3, else exchange - 3), key; bind or unbind.
    Bind(bool, usize, usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop::sample::select(vec![
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
        ExchangeKind::Topic,
    ]);
    prop_oneof![
        (0..4usize, kind, any::<bool>()).prop_map(|(x, k, ad)| Op::Declare(x, k, ad)),
        (0..4usize, any::<bool>()).prop_map(|(x, if_unused)| Op::Delete(x, if_unused)),
        (0..3usize).prop_map(Op::AddQueue),
        (0..3usize).prop_map(Op::RemoveQueue),
        (any::<bool>(), 0..4usize, 0..7usize, 0..5usize)
            .prop_map(|(b, s, d, k)| Op::Bind(b, s, d, k)),
        (Just(true), 0..4usize, 0..7usize, 0..5usize).prop_map(|(b, s, d, k)| Op::Bind(b, s, d, k)),
    ]
}

/// (source, is_queue, destination, key)
type ModelBinding = (String, bool, String, String);

#[derive(Default, Debug)]
struct Model {
    exchanges: BTreeMap<String, (ExchangeKind, bool)>,
    queues: BTreeSet<String>,
    bindings: BTreeSet<ModelBinding>,
}

impl Model {
    /// Deletes `start` (if it exists) and cascades auto-deletes.
    fn delete_exchange(&mut self, start: &str) {
        let mut work = vec![start.to_string()];
        while let Some(x) = work.pop() {
            if self.exchanges.remove(&x).is_none() {
                continue;
            }
            self.bindings.retain(|b| b.0 != x);
            let sources = self.remove_bindings_to(false, &x);
            work.extend(self.unused_auto_delete(sources));
        }
    }

    fn remove_bindings_to(&mut self, is_queue: bool, destination: &str) -> Vec<String> {
        let gone: Vec<ModelBinding> = self
            .bindings
            .iter()
            .filter(|b| b.1 == is_queue && b.2 == destination)
            .cloned()
            .collect();
        for b in &gone {
            self.bindings.remove(b);
        }
        gone.into_iter().map(|b| b.0).collect()
    }

    fn unused_auto_delete(&self, sources: Vec<String>) -> Vec<String> {
        sources
            .into_iter()
            .filter(|s| {
                self.exchanges.get(s).is_some_and(|(_, ad)| *ad)
                    && !self.bindings.iter().any(|b| &b.0 == s)
            })
            .collect()
    }

    fn matches(kind: ExchangeKind, pattern: &str, key: &str) -> bool {
        fn words(s: &str) -> Vec<&str> {
            if s.is_empty() {
                Vec::new()
            } else {
                s.split('.').collect()
            }
        }
        fn topic(p: &[&str], k: &[&str]) -> bool {
            match p.split_first() {
                None => k.is_empty(),
                Some((&"#", rest)) => topic(rest, k) || (!k.is_empty() && topic(p, &k[1..])),
                Some((&"*", rest)) => !k.is_empty() && topic(rest, &k[1..]),
                Some((w, rest)) => k.first() == Some(w) && topic(rest, &k[1..]),
            }
        }
        match kind {
            ExchangeKind::Direct => pattern == key,
            ExchangeKind::Fanout => true,
            ExchangeKind::Topic => topic(&words(pattern), &words(key)),
            ExchangeKind::Headers => unreachable!("not generated"),
        }
    }

    fn route(&self, exchange: &str, key: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut visited = BTreeSet::from([exchange.to_string()]);
        let mut work = vec![exchange.to_string()];
        while let Some(x) = work.pop() {
            let Some((kind, _)) = self.exchanges.get(&x) else {
                continue;
            };
            for b in self.bindings.iter().filter(|b| b.0 == x) {
                if !Self::matches(*kind, &b.3, key) {
                    continue;
                }
                if b.1 {
                    out.insert(b.2.clone());
                } else if visited.insert(b.2.clone()) {
                    work.push(b.2.clone());
                }
            }
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn topology_follows_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let topology: Topology<Arc<String>> = Topology::new("/");
        let mut model = Model::default();
        for op in &ops {
            match op {
                Op::Declare(x, kind, auto_delete) => {
                    let def = ExchangeDef::new(name(EXCHANGES[*x]), *kind).auto_delete(*auto_delete);
                    let result = topology.declare_exchange(def);
                    match model.exchanges.get(EXCHANGES[*x]) {
                        Some(existing) => prop_assert_eq!(result.is_ok(), *existing == (*kind, *auto_delete)),
                        None => {
                            prop_assert!(result.is_ok());
                            model.exchanges.insert(EXCHANGES[*x].to_string(), (*kind, *auto_delete));
                        }
                    }
                }
                Op::Delete(x, if_unused) => {
                    let x = EXCHANGES[*x];
                    let in_use = model.bindings.iter().any(|b| b.0 == x);
                    let result = topology.delete_exchange(x.as_bytes(), *if_unused);
                    if *if_unused && in_use {
                        prop_assert_eq!(result.unwrap_err().reply_code(), 406);
                    } else {
                        let removed = result.unwrap();
                        prop_assert_eq!(removed.exchanges.is_empty(), !model.exchanges.contains_key(x));
                        model.delete_exchange(x);
                    }
                }
                Op::AddQueue(q) => {
                    let added = topology.add_queue(name(QUEUES[*q]), Arc::new(QUEUES[*q].to_string()));
                    prop_assert_eq!(added, model.queues.insert(QUEUES[*q].to_string()));
                }
                Op::RemoveQueue(q) => {
                    let removed = topology.remove_queue(QUEUES[*q].as_bytes());
                    prop_assert_eq!(removed.is_some(), model.queues.remove(QUEUES[*q]));
                    let sources = model.remove_bindings_to(true, QUEUES[*q]);
                    for x in model.unused_auto_delete(sources) {
                        model.delete_exchange(&x);
                    }
                }
                Op::Bind(bind, s, d, k) => {
                    let source = EXCHANGES[*s];
                    let (is_queue, destination) = if *d < 3 { (true, QUEUES[*d]) } else { (false, EXCHANGES[*d - 3]) };
                    let binding = Binding {
                        source: name(source),
                        destination: if is_queue { Destination::Queue(name(destination)) } else { Destination::Exchange(name(destination)) },
                        routing_key: name(KEYS[*k]),
                        arguments: Default::default(),
                    };
                    let entry = (source.to_string(), is_queue, destination.to_string(), KEYS[*k].to_string());
                    let destination_exists = if is_queue { model.queues.contains(destination) } else { model.exchanges.contains_key(destination) };
                    if *bind {
                        let result = topology.bind(&binding);
                        if model.exchanges.contains_key(source) && destination_exists {
                            prop_assert_eq!(result.unwrap(), model.bindings.insert(entry));
                        } else {
                            prop_assert_eq!(result.unwrap_err().reply_code(), 404);
                        }
                    } else {
                        let removed = topology.unbind(&binding).unwrap();
                        let was_bound = model.bindings.remove(&entry);
                        // The binding asked for comes first; an auto-delete cascade may add more.
                        prop_assert_eq!(removed.bindings.first().map(|b| b.routing_key.to_string()).is_some(), was_bound);
                        // Only removing a binding can auto-delete (not unbinding nothing).
                        if was_bound {
                            for x in model.unused_auto_delete(vec![source.to_string()]) {
                                model.delete_exchange(&x);
                            }
                        }
                        let deleted: BTreeSet<String> = removed.exchanges.iter().map(|x| x.name.to_string()).collect();
                        for x in &deleted {
                            prop_assert!(!model.exchanges.contains_key(x));
                        }
                    }
                }
            }
            // After every step: same exchanges, same bindings, same count.
            let exchanges: BTreeSet<String> = topology
                .list_exchanges()
                .into_iter()
                .filter(|x| !x.is_predeclared())
                .map(|x| x.name.to_string())
                .collect();
            prop_assert_eq!(&exchanges, &model.exchanges.keys().cloned().collect::<BTreeSet<_>>(), "after {:?}", op);
            let bindings: BTreeSet<ModelBinding> = topology
                .list_bindings()
                .into_iter()
                .map(|b| {
                    let is_queue = matches!(b.destination, Destination::Queue(_));
                    (b.source.to_string(), is_queue, b.destination.name().to_string(), b.routing_key.to_string())
                })
                .collect();
            prop_assert_eq!(&bindings, &model.bindings, "after {:?}", op);
            prop_assert_eq!(topology.binding_count(), model.bindings.len());
        }
        let mut out = RouteBuf::new();
        for exchange in EXCHANGES {
            for key in ["a", "b", "a.b", "c.d.e", ""] {
                topology.route(exchange.as_bytes(), &[key.as_bytes()], None, &mut out);
                let got: BTreeSet<String> = out.queues().iter().map(|q| q.to_string()).collect();
                prop_assert_eq!(got.len(), out.len(), "duplicate delivery");
                prop_assert_eq!(got, model.route(exchange, key), "{} {:?} model {:?}", exchange, key, model);
            }
        }
        for queue in QUEUES {
            let expected = model.bindings.iter().filter(|b| b.1 && b.2 == queue).count();
            prop_assert_eq!(topology.queue_bindings(queue.as_bytes()).len(), expected);
        }
    }
}
