//! One vhost's exchanges, queues and bindings: the declare/bind/delete operations and `route`.
//!
//! Locking (see also docs/architecture.md, "crates/router"):
//! - `exchanges` (name -> exchange) and `queues` (name -> handle) are each behind an `RwLock`
//!   that writers hold only to insert or remove one entry.
//! - Each exchange keeps its routing index behind its own `RwLock`; a bind or unbind holds it
//!   for one O(1) (topic: O(words)) change. A reader routing through that exchange waits at
//!   most for that one change, never for a whole multi-binding operation.
//! - `catalog` (the authoritative list of bindings, by source and by destination) is behind a
//!   `Mutex` that only writers and listings take, so writers run one at a time and readers
//!   never touch it.
//!
//! Lock order: the catalog, then `exchanges` or `queues`, then one exchange's routes. A writer
//! never holds an exchange's routes while it takes `exchanges`, so `route` (which holds
//! `exchanges` for reading while it takes routes locks one at a time) cannot deadlock with it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use warren_codec::{FieldTable, FieldValue, ShortString};

use crate::dest::{DestKey, QueueId, Target};
use crate::direct::DirectRoutes;
use crate::error::RouterError;
use crate::exchange::{ALTERNATE_EXCHANGE, ExchangeDef, ExchangeKind};
use crate::fanout::FanoutRoutes;
use crate::headers::{HeadersRoutes, XMatch, sorted_arguments};
use crate::route::{RouteBuf, RouteOutcome};
use crate::topic::TopicRoutes;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// Where a binding delivers: a queue (`queue.bind`) or an exchange (`exchange.bind`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A queue, by name.
    Queue(ShortString),
    /// An exchange, by name (exchange-to-exchange binding).
    Exchange(ShortString),
}

impl Destination {
    /// The destination's name.
    pub fn name(&self) -> &ShortString {
        match self {
            Destination::Queue(name) | Destination::Exchange(name) => name,
        }
    }
}

/// A binding, identified by all four fields: binding twice is a no-op, and bindings that
/// differ only in arguments are distinct. Arguments compare after sorting by name (RabbitMQ
/// sorts them too), and listings return them sorted.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// The exchange messages come from.
    pub source: ShortString,
    /// The queue or exchange they go to.
    pub destination: Destination,
    /// The binding key (a pattern for topic exchanges; ignored by fanout and headers).
    pub routing_key: ShortString,
    /// The binding arguments (the match conditions for headers exchanges).
    pub arguments: FieldTable,
}

impl Binding {
    /// A `queue.bind` binding.
    pub fn queue(source: ShortString, queue: ShortString, routing_key: ShortString) -> Binding {
        Binding {
            source,
            destination: Destination::Queue(queue),
            routing_key,
            arguments: FieldTable::new(),
        }
    }

    /// An `exchange.bind` binding.
    pub fn exchange(
        source: ShortString,
        destination: ShortString,
        routing_key: ShortString,
    ) -> Binding {
        Binding {
            source,
            destination: Destination::Exchange(destination),
            routing_key,
            arguments: FieldTable::new(),
        }
    }

    /// The same binding with these arguments.
    pub fn with_arguments(mut self, arguments: FieldTable) -> Binding {
        self.arguments = arguments;
        self
    }
}

/// Whether `declare_exchange` created the exchange or found an equivalent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// It did not exist and now does.
    Created,
    /// It existed with an equivalent definition; nothing changed.
    Existed,
}

/// What a removal took with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Removed {
    /// Bindings that were removed (for the store to forget durable ones).
    pub bindings: Vec<Binding>,
    /// Exchanges deleted: the one asked for (first) when deleting an exchange, then every
    /// auto-delete exchange whose last binding as a source went, transitively.
    pub exchanges: Vec<ExchangeDef>,
}

/// A queue known to the topology: the router's id (for dedup) and the server's handle.
#[derive(Debug)]
struct QueueEntry<Q> {
    /// The queue's name (the map key holds the same bytes).
    name: ShortString,
    id: QueueId,
    handle: Q,
}

/// The read side of one exchange: its definition and its routing index.
#[derive(Debug)]
struct Exchange<Q> {
    def: ExchangeDef,
    /// The alternate exchange's name, read once from the arguments.
    alternate: Option<Bytes>,
    routes: RwLock<Routes<Q>>,
}

/// The routing index, by exchange type (one file each).
#[derive(Debug)]
enum Routes<Q> {
    Direct(DirectRoutes<Q>),
    Fanout(FanoutRoutes<Q>),
    Topic(TopicRoutes<Q>),
    Headers(HeadersRoutes<Q>),
}

impl<Q: Clone> Routes<Q> {
    fn new(kind: ExchangeKind) -> Routes<Q> {
        match kind {
            ExchangeKind::Direct => Routes::Direct(DirectRoutes::default()),
            ExchangeKind::Fanout => Routes::Fanout(FanoutRoutes::default()),
            ExchangeKind::Topic => Routes::Topic(TopicRoutes::default()),
            ExchangeKind::Headers => Routes::Headers(HeadersRoutes::default()),
        }
    }

    fn add(&mut self, key: &Bytes, arguments: &FieldTable, target: Target<Q>) {
        match self {
            Routes::Direct(routes) => routes.add(key, target),
            Routes::Fanout(routes) => routes.add(key, target),
            Routes::Topic(routes) => routes.add(key, target),
            Routes::Headers(routes) => routes.add(arguments, target),
        }
    }

    fn remove(&mut self, key: &Bytes, arguments: &FieldTable, dest: &DestKey) {
        match self {
            Routes::Direct(routes) => routes.remove(key, dest),
            Routes::Fanout(routes) => routes.remove(dest),
            Routes::Topic(routes) => routes.remove(key, dest),
            Routes::Headers(routes) => routes.remove(arguments, dest),
        }
    }

    fn collect(
        &self,
        routing_keys: &[&[u8]],
        headers: Option<&FieldTable>,
        out: &mut RouteBuf<Q>,
    ) -> bool {
        match self {
            Routes::Direct(routes) => routes.collect(routing_keys, out),
            Routes::Fanout(routes) => routes.collect(out),
            Routes::Topic(routes) => routes.collect(routing_keys, out),
            Routes::Headers(routes) => routes.collect(headers, out),
        }
    }
}

/// A set of (source, routing key) pairs: a vector while small (most queues have a binding or
/// two, and a hash set's smallest table is four times bigger), a hash set once large (so a
/// queue bound 100k times still unbinds in O(1)).
#[derive(Debug)]
enum PairSet {
    Small(Vec<(ShortString, ShortString)>),
    Large(FastSet<(ShortString, ShortString)>),
}

const PAIR_SET_SMALL_MAX: usize = 8;

impl Default for PairSet {
    fn default() -> Self {
        PairSet::Small(Vec::new())
    }
}

impl PairSet {
    fn insert(&mut self, pair: (ShortString, ShortString)) {
        match self {
            PairSet::Small(pairs) => {
                if pairs.contains(&pair) {
                    return;
                }
                if pairs.len() < PAIR_SET_SMALL_MAX {
                    if pairs.is_empty() {
                        pairs.reserve_exact(1);
                    }
                    pairs.push(pair);
                } else {
                    let mut set: FastSet<_> = pairs.drain(..).collect();
                    set.insert(pair);
                    *self = PairSet::Large(set);
                }
            }
            PairSet::Large(set) => {
                set.insert(pair);
            }
        }
    }

    fn remove(&mut self, pair: &(ShortString, ShortString)) {
        match self {
            PairSet::Small(pairs) => {
                if let Some(pos) = pairs.iter().position(|p| p == pair) {
                    pairs.swap_remove(pos);
                }
            }
            PairSet::Large(set) => {
                set.remove(pair);
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            PairSet::Small(pairs) => pairs.is_empty(),
            PairSet::Large(set) => set.is_empty(),
        }
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &(ShortString, ShortString)> + '_> {
        match self {
            PairSet::Small(pairs) => Box::new(pairs.iter()),
            PairSet::Large(set) => Box::new(set.iter()),
        }
    }

    fn into_vec(self) -> Vec<(ShortString, ShortString)> {
        match self {
            PairSet::Small(pairs) => pairs,
            PairSet::Large(set) => set.into_iter().collect(),
        }
    }
}

/// The argument tables bound under one (source, destination, key).
type ArgumentTables = SmallVec<[FieldTable; 1]>;

/// The authoritative bindings, kept for writers and listings only.
#[derive(Debug, Default)]
struct Catalog {
    /// source -> (destination, key) -> the distinct sorted argument tables bound (almost
    /// always one, kept inline).
    by_source: FastMap<ShortString, FastMap<(Destination, ShortString), ArgumentTables>>,
    /// destination -> (source, key) pairs with at least one binding.
    by_destination: FastMap<Destination, PairSet>,
    /// The next never-used queue id.
    next_queue_id: QueueId,
    /// Ids of removed queues, reused first so ids stay dense.
    free_queue_ids: Vec<QueueId>,
    /// How many bindings there are (each distinct argument table counts).
    binding_count: usize,
}

/// One vhost's exchanges, bindings and queue handles, shared by every connection of the vhost
/// (put it in an `Arc`). `Q` is the server's queue handle; `route` hands clones of it back.
#[derive(Debug)]
pub struct Topology<Q> {
    /// The vhost name, for error texts.
    vhost: String,
    /// Every exchange except the default one, by name.
    exchanges: RwLock<FastMap<Bytes, Arc<Exchange<Q>>>>,
    /// Every queue, by name: the default exchange routes here, and bindings copy handles.
    queues: RwLock<FastMap<Bytes, QueueEntry<Q>>>,
    /// Bindings by source and by destination; taken by writers, one at a time.
    catalog: Mutex<Catalog>,
}

/// Copies bytes that may be a slice of a network read buffer, so that a long-lived name does
/// not keep a whole frame buffer alive.
fn own(name: &ShortString) -> ShortString {
    ShortString::from_bytes(Bytes::copy_from_slice(name.as_bytes())).unwrap_or_default()
}

/// Deep-copies a table for the same reason as [`own`]: decoded values are buffer slices.
fn own_table(table: &FieldTable) -> FieldTable {
    FieldTable(
        table
            .iter()
            .map(|(name, value)| (own(name), own_value(value)))
            .collect(),
    )
}

fn own_value(value: &FieldValue) -> FieldValue {
    match value {
        FieldValue::LongString(bytes) => FieldValue::LongString(Bytes::copy_from_slice(bytes)),
        FieldValue::ByteArray(bytes) => FieldValue::ByteArray(Bytes::copy_from_slice(bytes)),
        FieldValue::Array(items) => FieldValue::Array(items.iter().map(own_value).collect()),
        FieldValue::Table(table) => FieldValue::Table(own_table(table)),
        other => other.clone(),
    }
}

fn default_exchange_def() -> ExchangeDef {
    ExchangeDef::new(ShortString::new(), ExchangeKind::Direct).durable(true)
}

impl<Q: Clone> Topology<Q> {
    /// A vhost with the exchanges every RabbitMQ vhost has: the default exchange `""`, and
    /// durable `amq.direct`, `amq.fanout`, `amq.topic`, `amq.headers` and `amq.match`.
    pub fn new(vhost: &str) -> Topology<Q> {
        let topology = Topology {
            vhost: vhost.to_string(),
            exchanges: RwLock::new(FastMap::default()),
            queues: RwLock::new(FastMap::default()),
            catalog: Mutex::new(Catalog::default()),
        };
        let predeclared = [
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ];
        {
            let mut exchanges = topology.exchanges.write();
            for (name, kind) in predeclared {
                let def = ExchangeDef::new(ShortString::from_static(name), kind).durable(true);
                exchanges.insert(
                    Bytes::from_static(name.as_bytes()),
                    Arc::new(new_exchange(def)),
                );
            }
        }
        topology
    }

    /// The vhost this topology belongs to.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    fn exchange_not_found(&self, name: &[u8]) -> RouterError {
        RouterError::exchange_not_found(&self.vhost, name)
    }

    fn queue_not_found(&self, name: &[u8]) -> RouterError {
        RouterError::queue_not_found(&self.vhost, name)
    }

    fn default_exchange_refused() -> RouterError {
        RouterError::default_exchange_refused()
    }

    fn lookup(&self, name: &[u8]) -> Option<Arc<Exchange<Q>>> {
        self.exchanges.read().get(name).cloned()
    }

    // ----- exchanges -----

    /// `exchange.declare` (not passive): creates the exchange, or checks that the existing one
    /// is equivalent (406 otherwise, with RabbitMQ's text). Refuses `""` and new `amq.` names
    /// (403) and an `alternate-exchange` argument that is not a long string (406). Checking
    /// the type name (503) is [`ExchangeKind::parse`]'s job, before this call.
    pub fn declare_exchange(&self, def: ExchangeDef) -> Result<Declared, RouterError> {
        if def.name.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        let _catalog = self.catalog.lock();
        if let Some(existing) = self.lookup(def.name.as_bytes()) {
            existing.def.check_equivalent(&def, &self.vhost)?;
            return Ok(Declared::Existed);
        }
        if def.name.as_bytes().starts_with(b"amq.") {
            return Err(RouterError::AccessRefused {
                text: format!(
                    "exchange name '{}' contains reserved prefix 'amq.*'",
                    def.name
                ),
            });
        }
        match def.arguments.get(ALTERNATE_EXCHANGE) {
            None | Some(FieldValue::LongString(_)) => {}
            Some(other) => {
                return Err(RouterError::PreconditionFailed {
                    text: format!(
                        "invalid type '{}' for arg 'alternate-exchange' in exchange '{}' in vhost '{}'",
                        other.type_name(),
                        def.name,
                        self.vhost
                    ),
                });
            }
        }
        let mut def = def;
        def.name = own(&def.name);
        def.arguments = own_table(&def.arguments);
        let key = def.name.as_shared().clone();
        self.exchanges
            .write()
            .insert(key, Arc::new(new_exchange(def)));
        Ok(Declared::Created)
    }

    /// `exchange.declare` with `passive`: the definition, 403 for `""` (as RabbitMQ 3.10) and
    /// 404 when it does not exist.
    pub fn declare_exchange_passive(&self, name: &[u8]) -> Result<ExchangeDef, RouterError> {
        if name.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        self.lookup(name)
            .map(|exchange| exchange.def.clone())
            .ok_or_else(|| self.exchange_not_found(name))
    }

    /// The definition of an exchange (`""` included), for passive declares and equivalence.
    pub fn exchange(&self, name: &[u8]) -> Option<ExchangeDef> {
        if name.is_empty() {
            return Some(default_exchange_def());
        }
        self.lookup(name).map(|exchange| exchange.def.clone())
    }

    /// Whether the exchange is the source of at least one binding (what `if_unused` checks).
    pub fn exchange_in_use(&self, name: &[u8]) -> bool {
        let catalog = self.catalog.lock();
        match ShortString::from_bytes(Bytes::copy_from_slice(name)) {
            Ok(name) => catalog.by_source.get(&name).is_some_and(|b| !b.is_empty()),
            Err(_) => false,
        }
    }

    /// Every exchange except the default one, predeclared `amq.*` ones included
    /// ([`ExchangeDef::is_predeclared`] tells them apart), in no particular order.
    pub fn list_exchanges(&self) -> Vec<ExchangeDef> {
        self.exchanges
            .read()
            .values()
            .map(|exchange| exchange.def.clone())
            .collect()
    }

    /// `exchange.delete`. `Ok` with nothing removed when the exchange does not exist (RabbitMQ
    /// 3.10 answers `delete-ok`); 403 for `""` and `amq.*`; 406 when `if_unused` and it is the
    /// source of a binding. Removes its bindings as source and as destination; auto-delete
    /// exchanges left without bindings go too.
    pub fn delete_exchange(&self, name: &[u8], if_unused: bool) -> Result<Removed, RouterError> {
        if name.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        if name.starts_with(b"amq.") {
            return Err(RouterError::AccessRefused {
                text: format!(
                    "deletion of system exchange '{}' in vhost '{}' not allowed",
                    String::from_utf8_lossy(name),
                    self.vhost
                ),
            });
        }
        let mut catalog = self.catalog.lock();
        let Some(exchange) = self.lookup(name) else {
            return Ok(Removed::default());
        };
        if if_unused
            && catalog
                .by_source
                .get(&exchange.def.name)
                .is_some_and(|bindings| !bindings.is_empty())
        {
            return Err(RouterError::PreconditionFailed {
                text: format!(
                    "exchange '{}' in vhost '{}' in use",
                    exchange.def.name, self.vhost
                ),
            });
        }
        let mut removed = Removed::default();
        self.delete_exchange_locked(&mut catalog, exchange.def.name.clone(), &mut removed);
        Ok(removed)
    }

    /// Deletes an exchange and its bindings, then every auto-delete exchange that lost its
    /// last binding as a source, with a work list rather than recursion (chains can be long).
    fn delete_exchange_locked(
        &self,
        catalog: &mut Catalog,
        name: ShortString,
        removed: &mut Removed,
    ) {
        let mut to_delete = vec![name];
        while let Some(name) = to_delete.pop() {
            let Some(exchange) = self.exchanges.write().remove(name.as_bytes()) else {
                continue;
            };
            removed.exchanges.push(exchange.def.clone());
            // Bindings from it: they go with its routing index; only the reverse index and
            // the listing need updating.
            if let Some(bindings) = catalog.by_source.remove(&name) {
                for ((destination, key), argument_tables) in bindings {
                    if let Some(pairs) = catalog.by_destination.get_mut(&destination) {
                        pairs.remove(&(name.clone(), key.clone()));
                        if pairs.is_empty() {
                            catalog.by_destination.remove(&destination);
                        }
                    }
                    catalog.binding_count -= argument_tables.len();
                    for arguments in argument_tables {
                        removed.bindings.push(Binding {
                            source: name.clone(),
                            destination: destination.clone(),
                            routing_key: key.clone(),
                            arguments,
                        });
                    }
                }
            }
            // Bindings to it: their sources may become unused auto-delete exchanges.
            let destination = Destination::Exchange(name);
            let sources = self.remove_bindings_to(catalog, &destination, removed);
            to_delete.extend(self.unused_auto_delete(catalog, sources));
        }
    }

    /// Removes every binding whose destination is `destination`; returns their sources.
    fn remove_bindings_to(
        &self,
        catalog: &mut Catalog,
        destination: &Destination,
        removed: &mut Removed,
    ) -> Vec<ShortString> {
        let Some(pairs) = catalog.by_destination.remove(destination) else {
            return Vec::new();
        };
        let dest_key = self.dest_key(destination);
        let mut sources = Vec::new();
        let mut seen_sources = FastSet::default();
        for (source, key) in pairs.into_vec() {
            let Some(bindings) = catalog.by_source.get_mut(&source) else {
                continue;
            };
            let Some(argument_tables) = bindings.remove(&(destination.clone(), key.clone())) else {
                continue;
            };
            if bindings.is_empty() {
                catalog.by_source.remove(&source);
            }
            // One short write lock per (source, key): a publisher waits for one of these at
            // most, not for the whole removal.
            if let (Some(exchange), Some(dest_key)) = (self.lookup(source.as_bytes()), &dest_key) {
                let mut routes = exchange.routes.write();
                for arguments in &argument_tables {
                    routes.remove(key.as_shared(), arguments, dest_key);
                }
            }
            catalog.binding_count -= argument_tables.len();
            for arguments in argument_tables {
                removed.bindings.push(Binding {
                    source: source.clone(),
                    destination: destination.clone(),
                    routing_key: key.clone(),
                    arguments,
                });
            }
            if seen_sources.insert(source.clone()) {
                sources.push(source);
            }
        }
        sources
    }

    /// The auto-delete exchanges among `sources` that are left with no binding as a source.
    fn unused_auto_delete(&self, catalog: &Catalog, sources: Vec<ShortString>) -> Vec<ShortString> {
        sources
            .into_iter()
            .filter(|source| {
                let unused = catalog
                    .by_source
                    .get(source)
                    .is_none_or(|bindings| bindings.is_empty());
                unused
                    && self
                        .lookup(source.as_bytes())
                        .is_some_and(|exchange| exchange.def.auto_delete)
            })
            .collect()
    }

    /// The routing-index identity of a destination: a queue's id, or an exchange's name.
    fn dest_key(&self, destination: &Destination) -> Option<DestKey> {
        match destination {
            Destination::Queue(name) => self
                .queues
                .read()
                .get(name.as_bytes())
                .map(|entry| DestKey::Queue(entry.id)),
            Destination::Exchange(name) => Some(DestKey::Exchange(name.as_shared().clone())),
        }
    }

    // ----- queues -----

    /// Makes a queue reachable: through the default exchange by its name, and bindable.
    /// Returns false (and changes nothing) if a queue of that name is already there.
    pub fn add_queue(&self, name: ShortString, handle: Q) -> bool {
        let mut catalog = self.catalog.lock();
        if self.queues.read().contains_key(name.as_bytes()) {
            return false;
        }
        let id = match catalog.free_queue_ids.pop() {
            Some(id) => id,
            None => {
                let id = catalog.next_queue_id;
                catalog.next_queue_id += 1;
                id
            }
        };
        let name = own(&name);
        self.queues
            .write()
            .insert(name.as_shared().clone(), QueueEntry { name, id, handle });
        true
    }

    /// The handle of a queue, if it is there.
    pub fn queue(&self, name: &[u8]) -> Option<Q> {
        self.queues
            .read()
            .get(name)
            .map(|entry| entry.handle.clone())
    }

    /// Removes a queue (on `queue.delete`, exclusive owner gone, expiry) and its bindings;
    /// auto-delete exchanges that lost their last binding go too. `None` if it was not there.
    pub fn remove_queue(&self, name: &[u8]) -> Option<Removed> {
        let mut catalog = self.catalog.lock();
        let queue_name = ShortString::from_bytes(Bytes::copy_from_slice(name)).ok()?;
        if !self.queues.read().contains_key(name) {
            return None;
        }
        let mut removed = Removed::default();
        let destination = Destination::Queue(queue_name);
        // Bindings first, while the queue's id still resolves.
        let sources = self.remove_bindings_to(&mut catalog, &destination, &mut removed);
        let entry = self.queues.write().remove(name);
        if let Some(entry) = entry {
            catalog.free_queue_ids.push(entry.id);
        }
        for source in self.unused_auto_delete(&catalog, sources) {
            self.delete_exchange_locked(&mut catalog, source, &mut removed);
        }
        Some(removed)
    }

    /// The bindings whose destination is this queue (the implicit default-exchange binding
    /// RabbitMQ lists is not included; the server adds it if it lists bindings).
    pub fn queue_bindings(&self, name: &[u8]) -> Vec<Binding> {
        let catalog = self.catalog.lock();
        match ShortString::from_bytes(Bytes::copy_from_slice(name)) {
            Ok(name) => bindings_to(&catalog, &Destination::Queue(name)),
            Err(_) => Vec::new(),
        }
    }

    /// Every binding, for the store to persist the durable ones.
    pub fn list_bindings(&self) -> Vec<Binding> {
        let catalog = self.catalog.lock();
        let mut list = Vec::new();
        for (source, bindings) in &catalog.by_source {
            for ((destination, key), argument_tables) in bindings {
                for arguments in argument_tables {
                    list.push(Binding {
                        source: source.clone(),
                        destination: destination.clone(),
                        routing_key: key.clone(),
                        arguments: arguments.clone(),
                    });
                }
            }
        }
        list
    }

    /// How many exchanges there are, the default one excluded (for per-vhost limits).
    pub fn exchange_count(&self) -> usize {
        self.exchanges.read().len()
    }

    /// How many queues were added and not removed.
    pub fn queue_count(&self) -> usize {
        self.queues.read().len()
    }

    /// How many bindings there are (for limits and metrics).
    pub fn binding_count(&self) -> usize {
        self.catalog.lock().binding_count
    }

    // ----- bindings -----

    /// `queue.bind` / `exchange.bind`. `Ok(true)` if added, `Ok(false)` if that exact binding
    /// already existed. 403 when either end is `""`; 404 when the source exchange (checked
    /// first) or the destination does not exist; 406 for an invalid `x-match` on a headers
    /// exchange.
    pub fn bind(&self, binding: &Binding) -> Result<bool, RouterError> {
        if binding.source.is_empty() || binding.destination.name().is_empty() {
            return Err(Self::default_exchange_refused());
        }
        let mut catalog = self.catalog.lock();
        let source = self
            .lookup(binding.source.as_bytes())
            .ok_or_else(|| self.exchange_not_found(binding.source.as_bytes()))?;
        // The destination's name is taken from the stored queue or exchange, so that every
        // binding shares one copy of it.
        let (target, destination) = match &binding.destination {
            Destination::Queue(name) => {
                let queues = self.queues.read();
                let entry = queues
                    .get(name.as_bytes())
                    .ok_or_else(|| self.queue_not_found(name.as_bytes()))?;
                let target = Target::Queue {
                    id: entry.id,
                    handle: entry.handle.clone(),
                };
                (target, Destination::Queue(entry.name.clone()))
            }
            Destination::Exchange(name) => {
                let exchange = self
                    .lookup(name.as_bytes())
                    .ok_or_else(|| self.exchange_not_found(name.as_bytes()))?;
                let target = Target::Exchange(exchange.def.name.as_shared().clone());
                (target, Destination::Exchange(exchange.def.name.clone()))
            }
        };
        if source.def.kind == ExchangeKind::Headers {
            XMatch::from_arguments(&binding.arguments)?;
        }
        let arguments = own_table(&sorted_arguments(&binding.arguments));
        let source_name = source.def.name.clone();
        let key = own(&binding.routing_key);
        let tables = catalog
            .by_source
            .entry(source_name.clone())
            .or_default()
            .entry((destination.clone(), key.clone()))
            .or_default();
        if tables.contains(&arguments) {
            return Ok(false);
        }
        tables.push(arguments.clone());
        catalog.binding_count += 1;
        catalog
            .by_destination
            .entry(destination)
            .or_default()
            .insert((source_name, key.clone()));
        source
            .routes
            .write()
            .add(key.as_shared(), &arguments, target);
        Ok(true)
    }

    /// `queue.unbind` / `exchange.unbind`. Unbinding what is not bound is not an error, even
    /// when the source or destination does not exist (RabbitMQ 3.10 answers `unbind-ok`):
    /// `removed.bindings` is then empty. 403 when either end is `""`. An auto-delete source
    /// left without bindings is deleted and reported in `removed.exchanges`.
    pub fn unbind(&self, binding: &Binding) -> Result<Removed, RouterError> {
        if binding.source.is_empty() || binding.destination.name().is_empty() {
            return Err(Self::default_exchange_refused());
        }
        let mut guard = self.catalog.lock();
        let catalog = &mut *guard;
        let (Some(source), Some(dest_key)) = (
            self.lookup(binding.source.as_bytes()),
            self.dest_key(&binding.destination),
        ) else {
            return Ok(Removed::default());
        };
        let arguments = sorted_arguments(&binding.arguments);
        let pair = (binding.destination.clone(), binding.routing_key.clone());
        let mut removed = Removed::default();
        let Some(bindings) = catalog.by_source.get_mut(&source.def.name) else {
            return Ok(removed);
        };
        let Some(tables) = bindings.get_mut(&pair) else {
            return Ok(removed);
        };
        let Some(pos) = tables.iter().position(|table| *table == arguments) else {
            return Ok(removed);
        };
        tables.swap_remove(pos);
        catalog.binding_count -= 1;
        if tables.is_empty() {
            bindings.remove(&pair);
            if let Some(pairs) = catalog.by_destination.get_mut(&binding.destination) {
                pairs.remove(&(source.def.name.clone(), binding.routing_key.clone()));
                if pairs.is_empty() {
                    catalog.by_destination.remove(&binding.destination);
                }
            }
        }
        if catalog
            .by_source
            .get(&source.def.name)
            .is_some_and(|bindings| bindings.is_empty())
        {
            catalog.by_source.remove(&source.def.name);
        }
        source
            .routes
            .write()
            .remove(binding.routing_key.as_shared(), &arguments, &dest_key);
        removed.bindings.push(Binding {
            source: source.def.name.clone(),
            destination: binding.destination.clone(),
            routing_key: binding.routing_key.clone(),
            arguments,
        });
        if source.def.auto_delete && !catalog.by_source.contains_key(&source.def.name) {
            self.delete_exchange_locked(catalog, source.def.name.clone(), &mut removed);
        }
        Ok(removed)
    }

    // ----- routing -----

    /// Routes one message published to `exchange` with `routing_keys` (the publish's key,
    /// then any `CC`/`BCC` keys) and the message's `headers`. The matched queues' handles are
    /// left in `out`, each queue once however many paths or keys reach it. Exchange-to-
    /// exchange bindings are followed transitively, each exchange visited once (cycles end);
    /// an exchange whose own bindings match nothing hands the message to its alternate
    /// exchange, if that exists. Never blocks on more than one small write.
    pub fn route(
        &self,
        exchange: &[u8],
        routing_keys: &[&[u8]],
        headers: Option<&FieldTable>,
        out: &mut RouteBuf<Q>,
    ) -> RouteOutcome {
        out.clear();
        if exchange.is_empty() {
            let queues = self.queues.read();
            for key in routing_keys {
                if let Some(entry) = queues.get(*key) {
                    out.begin_contribution();
                    out.push_queue(entry.id, &entry.handle);
                }
            }
            return outcome(out);
        }
        let exchanges = self.exchanges.read();
        let Some(first) = exchanges.get(exchange) else {
            return RouteOutcome::ExchangeNotFound;
        };
        if first.def.internal {
            return RouteOutcome::InternalExchange;
        }
        out.first_visit(Arc::as_ptr(first) as usize);
        // Only exchange-to-exchange routing and alternate exchanges ever push here, so the
        // common case never allocates.
        let mut worklist: Vec<&Arc<Exchange<Q>>> = Vec::new();
        let mut current = first;
        loop {
            let matched = current.routes.read().collect(routing_keys, headers, out);
            if !matched
                && let Some(alternate) = current
                    .alternate
                    .as_ref()
                    .and_then(|name| exchanges.get(name.as_ref()))
                && out.first_visit(Arc::as_ptr(alternate) as usize)
            {
                worklist.push(alternate);
            }
            while let Some(name) = out.pending.pop() {
                if let Some(next) = exchanges.get(name.as_ref())
                    && out.first_visit(Arc::as_ptr(next) as usize)
                {
                    worklist.push(next);
                }
            }
            match worklist.pop() {
                Some(next) => current = next,
                None => break,
            }
        }
        outcome(out)
    }
}

fn outcome<Q>(out: &RouteBuf<Q>) -> RouteOutcome {
    if out.is_empty() {
        RouteOutcome::Unroutable
    } else {
        RouteOutcome::Routed(out.len())
    }
}

fn new_exchange<Q: Clone>(def: ExchangeDef) -> Exchange<Q> {
    let alternate = def
        .alternate_exchange()
        .map(|name| Bytes::copy_from_slice(name));
    let routes = RwLock::new(Routes::new(def.kind));
    Exchange {
        def,
        alternate,
        routes,
    }
}

fn bindings_to(catalog: &Catalog, destination: &Destination) -> Vec<Binding> {
    let mut list = Vec::new();
    let Some(pairs) = catalog.by_destination.get(destination) else {
        return list;
    };
    for (source, key) in pairs.iter() {
        let tables = catalog
            .by_source
            .get(source)
            .and_then(|bindings| bindings.get(&(destination.clone(), key.clone())));
        for arguments in tables.into_iter().flatten() {
            list.push(Binding {
                source: source.clone(),
                destination: destination.clone(),
                routing_key: key.clone(),
                arguments: arguments.clone(),
            });
        }
    }
    list
}
