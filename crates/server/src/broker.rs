//! The registry shared by all connections: the vhosts, each with its topology (exchanges,
//! bindings and queue handles, from `warren-router`), and the memory account.
//!
//! Nothing here is one big lock: the vhost map is fixed at start-up (read without locking),
//! routing takes only the router's read locks, and each queue has its own lock
//! (see `queue.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use warren_store::{DestinationKind, Lsn, Recovery, Store, StoreError};

use warren_codec::generated as m;
use warren_codec::{FieldTable, FieldValue, ReplyCode, ShortString};
use warren_router::{
    Binding, Destination, ExchangeDef, ExchangeKind, RouteBuf, RouteOutcome, RouterError, Topology,
};

use crate::config::Config;
use crate::disk::DiskMonitor;
use crate::error::{AmqpError, ChannelError, ConnectionError};
use crate::memory::MemoryMonitor;
use crate::pager::Pager;
use crate::queue::QueueEntity;

/// The broker: configuration, vhosts, the memory account and the durable store.
pub struct Broker {
    /// The configuration it was started with.
    pub config: Arc<Config>,
    /// Vhosts by name; fixed at start-up.
    vhosts: HashMap<String, Arc<VHost>>,
    /// Bytes held by queues, and the memory alarm.
    pub memory: Arc<MemoryMonitor>,
    /// The thread that pages bodies out above the paging threshold and reads them back ahead
    /// of consumers.
    pager: Pager,
    /// Free disk space and store write failures, and the disk alarm.
    pub disk: Arc<DiskMonitor>,
    /// Source of connection ids (exclusive queue owners, log lines).
    next_connection_id: AtomicU64,
    /// The durable store and its sync thread; `None` with `--ephemeral`.
    durable: Option<Durable>,
    /// Connections still in the handshake, per peer address and in all (slowloris guard).
    handshaking: parking_lot::Mutex<Handshaking>,
}

/// Counts of connections between accept and `connection.open`.
#[derive(Default)]
struct Handshaking {
    /// Per peer address; an address with none has no entry.
    per_ip: HashMap<std::net::IpAddr, usize>,
    /// The sum over every address.
    total: usize,
}

/// A connection counted as unauthenticated until this is dropped (when it opens or closes).
pub struct HandshakeSlot {
    broker: std::sync::Weak<Broker>,
    peer: std::net::IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.upgrade() {
            let mut counts = broker.handshaking.lock();
            counts.total = counts.total.saturating_sub(1);
            if let Some(n) = counts.per_ip.get_mut(&self.peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.per_ip.remove(&self.peer);
                }
            }
        }
    }
}

/// What the sync thread reports: everything up to `synced` is on disk; confirms waiting on
/// positions up to `failed` (and above `synced`) must be nacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncState {
    /// Durable up to here.
    pub synced: Lsn,
    /// A failed sync may have lost records up to here.
    pub failed: Lsn,
}

/// The store, the thread that group-commits it, and what that thread reports.
struct Durable {
    store: Arc<Store>,
    state: watch::Receiver<SyncState>,
    stop: Arc<AtomicBool>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Why the broker could not open its data folder.
pub type OpenError = StoreError;

impl Broker {
    /// A broker with the configured vhosts, each holding the predeclared exchanges; unless
    /// `ephemeral`, the data folder is opened and its durable exchanges, queues (with their
    /// messages) and bindings are declared again.
    pub fn new(config: Arc<Config>) -> Result<Self, OpenError> {
        let memory = Arc::new(memory_monitor(&config));
        let disk = Arc::new(DiskMonitor::new(
            config.data_dir.clone(),
            config.limits.disk_free_limit,
        ));
        let mut recovery = None;
        let durable = if config.ephemeral {
            None
        } else {
            let (store, recovered) = match &config.store_backend {
                Some(backend) => {
                    Store::open_with(Arc::clone(backend), warren_store::StoreOptions::default())?
                }
                None => Store::open(&config.data_dir)?,
            };
            let report = recovered.report;
            tracing::info!(
                data_dir = %config.data_dir.display(),
                clean_shutdown = report.clean_shutdown,
                messages = report.messages,
                bad_records = report.bad_records,
                "store opened"
            );
            recovery = Some(recovered);
            Some(Durable::start(Arc::new(store), Arc::clone(&disk)))
        };
        let store = durable.as_ref().map(|d| Arc::clone(&d.store));
        let vhosts: HashMap<String, Arc<VHost>> = config
            .vhosts
            .iter()
            .map(|name| {
                (
                    name.clone(),
                    Arc::new_cyclic(|me| {
                        VHost::new(name, Arc::clone(&memory), store.clone(), me.clone())
                    }),
                )
            })
            .collect();
        if let Some(recovery) = recovery {
            recover(&vhosts, recovery);
        }
        let pager = Pager::start(Arc::clone(&memory), durable.is_some());
        Ok(Broker {
            config,
            vhosts,
            memory,
            pager,
            disk,
            next_connection_id: AtomicU64::new(1),
            durable,
            handshaking: parking_lot::Mutex::new(Handshaking::default()),
        })
    }

    /// A vhost by name.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }

    /// Every vhost.
    pub fn vhosts(&self) -> impl Iterator<Item = &Arc<VHost>> {
        self.vhosts.values()
    }

    /// Counts a new connection from `peer` as unauthenticated; `None` when that peer already
    /// has `max_unauthenticated_per_ip` connections in the handshake, or all peers together
    /// have `max_unauthenticated` (REFERENCE row 2).
    pub fn begin_handshake(self: &Arc<Self>, peer: std::net::IpAddr) -> Option<HandshakeSlot> {
        let limits = &self.config.limits;
        let mut counts = self.handshaking.lock();
        if limits.max_unauthenticated != 0 && counts.total >= limits.max_unauthenticated {
            return None;
        }
        let n = counts.per_ip.entry(peer).or_insert(0);
        if limits.max_unauthenticated_per_ip != 0 && *n >= limits.max_unauthenticated_per_ip {
            return None;
        }
        *n += 1;
        counts.total += 1;
        Some(HandshakeSlot {
            broker: Arc::downgrade(self),
            peer,
        })
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Why publishers are blocked now, as `connection.blocked` says it (RabbitMQ's texts);
    /// `None` when no resource alarm is on.
    pub fn alarm_reason(&self) -> Option<&'static str> {
        match (self.memory.alarm(), self.disk.alarm()) {
            (false, false) => None,
            (true, false) => Some("low on memory"),
            (false, true) => Some("low on disk"),
            (true, true) => Some("low on memory & disk"),
        }
    }

    /// What the sync thread reported last; `None` with `--ephemeral`.
    pub fn sync_state(&self) -> Option<watch::Receiver<SyncState>> {
        self.durable.as_ref().map(|d| d.state.clone())
    }

    /// Stops the sync thread and marks the data folder cleanly closed. Call once no
    /// connection uses a queue any more.
    pub fn close_store(&self) {
        self.pager.stop();
        if let Some(durable) = &self.durable {
            durable.stop.store(true, Ordering::Release);
            if let Some(thread) = durable.thread.lock().take() {
                let _ = thread.join();
            }
            if let Err(e) = durable.store.close() {
                tracing::error!(error = %e, "closing the store");
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(durable) = &self.durable {
            durable.stop.store(true, Ordering::Release);
        }
    }
}

impl Durable {
    /// Starts the sync thread: it waits for appended records, fdatasyncs them all at once
    /// (group commit) and publishes the durable position for the channels' confirms. A failed
    /// sync nacks the confirms it may have lost and holds the disk alarm until a sync works.
    fn start(store: Arc<Store>, disk: Arc<DiskMonitor>) -> Durable {
        let (tx, state) = watch::channel(SyncState::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let store = Arc::clone(&store);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("warren-sync".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        match store.wait_and_sync(Duration::from_millis(50)) {
                            Ok(Some(synced)) => {
                                disk.set_store_failing(false);
                                tx.send_modify(|state| state.synced = state.synced.max(synced));
                            }
                            Ok(None) => {
                                // Idle means the store holds nothing unsynced: make sure the
                                // channels know, so no confirm waits for a sync that never comes.
                                let synced = store.synced();
                                tx.send_if_modified(|state| {
                                    let behind = state.synced < synced;
                                    state.synced = state.synced.max(synced);
                                    behind
                                });
                            }
                            Err(failed) => {
                                tracing::error!(error = %failed, "sync failed: nacking confirms");
                                disk.set_store_failing(true);
                                tx.send_modify(|state| state.failed = failed.upto);
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                    }
                })
                .ok()
        };
        Durable {
            store,
            state,
            stop,
            thread: parking_lot::Mutex::new(thread),
        }
    }
}

/// The memory account with the configured budget: `memory_high_watermark` resolved against
/// the RAM (RabbitMQ assumes 1 GiB when it cannot tell; Warren too).
fn memory_monitor(config: &Config) -> MemoryMonitor {
    let limits = &config.limits;
    let total = crate::memory::total_memory().unwrap_or_else(|| {
        tracing::warn!("cannot read the amount of RAM; assuming 1 GiB");
        1 << 30
    });
    let limit = limits.memory_high_watermark.resolve(total);
    let monitor = MemoryMonitor::new(limit, limits.memory_paging_ratio);
    tracing::info!(
        budget = limit,
        setting = %limits.memory_high_watermark,
        ram = total,
        paging_above = monitor.paging_threshold(),
        "memory budget"
    );
    monitor
}

/// Declares again what the store recovered: exchanges, then queues with their messages, then
/// bindings. Definitions for vhosts no longer configured are skipped (and logged).
fn recover(vhosts: &HashMap<String, Arc<VHost>>, recovery: Recovery) {
    let lookup = |name: &ShortString| -> Option<&Arc<VHost>> {
        let vhost = vhosts.get(&name.to_string());
        if vhost.is_none() {
            tracing::warn!(vhost = %name, "recovered definition for an unknown vhost: skipped");
        }
        vhost
    };
    for def in recovery.exchanges {
        let Some(vhost) = lookup(&def.vhost) else {
            continue;
        };
        let Ok(kind) = ExchangeKind::parse(def.kind.as_bytes()) else {
            tracing::warn!(exchange = %def.name, kind = %def.kind, "recovered exchange of unknown type: skipped");
            continue;
        };
        let router_def = ExchangeDef::new(def.name.clone(), kind)
            .durable(true)
            .auto_delete(def.auto_delete)
            .internal(def.internal)
            .arguments(decode_table(&def.arguments));
        if let Err(e) = vhost.topology.declare_exchange(router_def) {
            tracing::warn!(exchange = %def.name, error = %e, "recovered exchange not declared");
        }
    }
    for (def, messages) in recovery.queues {
        let Some(vhost) = lookup(&def.vhost) else {
            continue;
        };
        let queue = Arc::new(QueueEntity::new(
            def.name.clone(),
            Arc::clone(&vhost.name),
            true,
            def.auto_delete,
            None,
            decode_table(&def.arguments),
            Arc::clone(&vhost.memory),
            messages,
        ));
        vhost.memory.register(&queue);
        queue.set_dead_letter_sink(vhost.me.clone());
        if queue.expires.is_some() || queue.expiring.load(Ordering::Relaxed) {
            vhost.register_expiring(Arc::downgrade(&queue));
        }
        vhost.topology.add_queue(def.name.clone(), queue);
    }
    for def in recovery.bindings {
        let Some(vhost) = lookup(&def.vhost) else {
            continue;
        };
        let destination = match def.destination_kind {
            DestinationKind::Queue => Destination::Queue(def.destination.clone()),
            DestinationKind::Exchange => Destination::Exchange(def.destination.clone()),
        };
        let binding = Binding {
            source: def.source.clone(),
            destination,
            routing_key: def.routing_key.clone(),
            arguments: decode_table(&def.arguments),
        };
        if let Err(e) = vhost.topology.bind(&binding) {
            tracing::warn!(source = %def.source, destination = %def.destination, error = %e, "recovered binding not restored");
        }
    }
}

/// Runs a store call that fsyncs. On the multi-threaded runtime the worker hands its other
/// tasks to another thread first (`block_in_place`), so one connection's durable declare
/// does not stall the others; elsewhere (single-threaded tests) it just runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn long(bytes: &[u8]) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(bytes))
}

/// Decodes raw property bytes (flags and list, as received) into properties.
pub(crate) fn decode_properties(raw: &Bytes, body_size: usize) -> warren_codec::BasicProperties {
    let mut payload = bytes::BytesMut::with_capacity(12 + raw.len());
    payload.extend_from_slice(&60u16.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload.extend_from_slice(&(body_size as u64).to_be_bytes());
    payload.extend_from_slice(raw);
    warren_codec::ContentHeader::decode(&payload.freeze())
        .map(|h| h.properties)
        .unwrap_or_default()
}

/// RabbitMQ sorts a message's headers by name whenever it changes them (dead-lettering, the
/// quorum queues' `x-delivery-count`), so clients see them in that order.
pub(crate) fn sort_headers(headers: &mut FieldTable) {
    headers.0.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
}

fn decode_table(bytes: &bytes::Bytes) -> FieldTable {
    if bytes.is_empty() {
        return FieldTable::new();
    }
    FieldTable::decode(bytes).unwrap_or_default()
}

fn encode_table(table: &FieldTable) -> bytes::Bytes {
    if table.is_empty() {
        return bytes::Bytes::new();
    }
    let mut buf = bytes::BytesMut::new();
    table.encode(&mut buf);
    buf.freeze()
}

/// A store failure as the connection error RabbitMQ would send (541 INTERNAL_ERROR).
fn store_error(e: StoreError) -> AmqpError {
    tracing::error!(error = %e, "store operation failed");
    let code = ReplyCode::from_u16(e.reply_code()).unwrap_or(ReplyCode::InternalError);
    ConnectionError::new(code, format!("store failure: {e}")).into()
}

/// What `queue.declare` asks for, with the server-generated name already filled in.
pub struct QueueDeclare {
    /// The queue name (never empty unless passive).
    pub name: ShortString,
    /// Only check that the queue exists.
    pub passive: bool,
    /// `durable`.
    pub durable: bool,
    /// `exclusive`.
    pub exclusive: bool,
    /// `auto-delete`.
    pub auto_delete: bool,
    /// `arguments`.
    pub arguments: FieldTable,
    /// The declaring connection.
    pub conn_id: u64,
}

/// One virtual host.
pub struct VHost {
    /// The vhost name.
    name: Arc<str>,
    /// Exchanges, bindings and queue handles.
    topology: Topology<Arc<QueueEntity>>,
    /// The broker's memory account, handed to new queues.
    memory: Arc<MemoryMonitor>,
    /// The vhost name as stored in durable definitions.
    store_name: ShortString,
    /// The durable store; `None` with `--ephemeral`.
    store: Option<Arc<Store>>,
    /// This vhost, for its queues to route dead letters through.
    me: std::sync::Weak<VHost>,
    /// Queues holding messages that expire, swept by `sweep_expired`.
    expiring: parking_lot::Mutex<Vec<std::sync::Weak<QueueEntity>>>,
    /// Direct reply-to queues by name (`amq.rabbitmq.reply-to.` + random): reachable through
    /// the default exchange only, never bound or listed.
    reply_queues: parking_lot::RwLock<HashMap<ShortString, Arc<QueueEntity>>>,
}

/// Maps a router error to the scope RabbitMQ closes (503 closes the connection).
fn router_error(e: RouterError) -> AmqpError {
    let code = ReplyCode::from_u16(e.reply_code()).unwrap_or(ReplyCode::InternalError);
    if e.is_connection_error() {
        ConnectionError::new(code, e.text()).into()
    } else {
        ChannelError::new(code, e.text()).into()
    }
}

impl VHost {
    fn new(
        name: &str,
        memory: Arc<MemoryMonitor>,
        store: Option<Arc<Store>>,
        me: std::sync::Weak<VHost>,
    ) -> Self {
        VHost {
            me,
            expiring: parking_lot::Mutex::new(Vec::new()),
            name: Arc::from(name),
            topology: Topology::new(name),
            memory,
            store_name: ShortString::try_from(name).unwrap_or_default(),
            store,
            reply_queues: parking_lot::RwLock::new(HashMap::new()),
        }
    }

    /// An empty queue for messages that are not kept across restarts: with a data folder it
    /// can spill bodies there under memory pressure, without one it lives in memory only.
    fn transient_messages(&self) -> warren_store::Queue {
        self.store
            .as_ref()
            .map_or_else(warren_store::Queue::new, |store| store.transient_queue())
    }

    /// The store, when this definition must be durable.
    fn durable_store(&self, durable: bool) -> Option<&Arc<Store>> {
        self.store.as_ref().filter(|_| durable)
    }

    /// Forgets what a removal took with it: durable auto-deleted exchanges and bindings.
    fn forget_removed(&self, removed: &warren_router::Removed) {
        let Some(store) = &self.store else { return };
        for exchange in &removed.exchanges {
            if exchange.durable
                && let Err(e) = blocking(|| store.delete_exchange(&self.store_name, &exchange.name))
            {
                tracing::error!(error = %e, "forgetting a durable exchange");
            }
        }
        for binding in &removed.bindings {
            if let Err(e) = blocking(|| store.delete_binding(&self.binding_def(binding))) {
                tracing::error!(error = %e, "forgetting a durable binding");
            }
        }
    }

    fn binding_def(&self, binding: &Binding) -> warren_store::BindingDef {
        let (destination, destination_kind) = match &binding.destination {
            Destination::Queue(name) => (name.clone(), DestinationKind::Queue),
            Destination::Exchange(name) => (name.clone(), DestinationKind::Exchange),
        };
        warren_store::BindingDef {
            vhost: self.store_name.clone(),
            source: binding.source.clone(),
            destination,
            destination_kind,
            routing_key: binding.routing_key.clone(),
            arguments: encode_table(&binding.arguments),
        }
    }

    /// A binding is durable when both ends are, as in RabbitMQ.
    fn binding_is_durable(&self, binding: &Binding) -> bool {
        let source = self
            .topology
            .exchange(binding.source.as_bytes())
            .is_some_and(|e| e.durable);
        let destination = match &binding.destination {
            Destination::Queue(name) => self
                .topology
                .queue(name.as_bytes())
                .is_some_and(|q| q.durable),
            Destination::Exchange(name) => self
                .topology
                .exchange(name.as_bytes())
                .is_some_and(|e| e.durable),
        };
        source && destination
    }

    fn bind(&self, binding: &Binding) -> Result<(), AmqpError> {
        let added = self.topology.bind(binding).map_err(router_error)?;
        if added && let Some(store) = self.durable_store(self.binding_is_durable(binding)) {
            let def = self.binding_def(binding);
            blocking(|| store.put_binding(&def)).map_err(store_error)?;
        }
        Ok(())
    }

    fn unbind(&self, binding: &Binding) -> Result<(), AmqpError> {
        let durable = self.store.is_some() && self.binding_is_durable(binding);
        let removed = self.topology.unbind(binding).map_err(router_error)?;
        if durable {
            self.forget_removed(&removed);
        } else if let Some(store) = &self.store {
            // The binding was not durable, but an auto-delete exchange it emptied may be.
            for exchange in removed.exchanges.iter().filter(|e| e.durable) {
                if let Err(e) = blocking(|| store.delete_exchange(&self.store_name, &exchange.name))
                {
                    tracing::error!(error = %e, "forgetting a durable exchange");
                }
            }
        }
        Ok(())
    }

    /// The vhost name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A queue by name.
    pub fn queue(&self, name: &ShortString) -> Option<Arc<QueueEntity>> {
        self.topology.queue(name.as_bytes())
    }

    /// The direct reply-to queue a routing key names, if it is one (default exchange only).
    pub fn reply_queue(&self, routing_key: &ShortString) -> Option<Arc<QueueEntity>> {
        if !routing_key
            .as_bytes()
            .starts_with(b"amq.rabbitmq.reply-to.")
        {
            return None;
        }
        self.reply_queues.read().get(routing_key).cloned()
    }

    /// A private queue for a direct reply-to consumer, deleted with its consumer.
    pub fn create_reply_queue(&self, conn_id: u64) -> Arc<QueueEntity> {
        let name = crate::queue::generated_name("amq.rabbitmq.reply-to.");
        let queue = Arc::new(QueueEntity::new(
            name.clone(),
            Arc::clone(&self.name),
            false,
            true,
            Some(conn_id),
            FieldTable::new(),
            Arc::clone(&self.memory),
            self.transient_messages(),
        ));
        self.memory.register(&queue);
        self.reply_queues.write().insert(name, Arc::clone(&queue));
        queue
    }

    // ===== Exchanges =====

    /// `exchange.declare`.
    pub fn declare_exchange(&self, declare: &m::ExchangeDeclare) -> Result<(), AmqpError> {
        if declare.passive {
            if declare.exchange.is_empty() {
                return Ok(());
            }
            return match self.topology.exchange(declare.exchange.as_bytes()) {
                Some(_) => Ok(()),
                None => Err(ChannelError::not_found(format!(
                    "no exchange '{}' in vhost '{}'",
                    declare.exchange, self.name
                ))
                .into()),
            };
        }
        let kind = ExchangeKind::parse(declare.kind.as_bytes()).map_err(router_error)?;
        let def = ExchangeDef::new(declare.exchange.clone(), kind)
            .durable(declare.durable)
            .auto_delete(declare.auto_delete)
            .internal(declare.internal)
            .arguments(declare.arguments.clone());
        let declared = self.topology.declare_exchange(def).map_err(router_error)?;
        if declared == warren_router::Declared::Created
            && let Some(store) = self.durable_store(declare.durable)
        {
            // Synced before declare-ok, as RabbitMQ does.
            let def = warren_store::ExchangeDef {
                vhost: self.store_name.clone(),
                name: declare.exchange.clone(),
                kind: declare.kind.clone(),
                auto_delete: declare.auto_delete,
                internal: declare.internal,
                arguments: encode_table(&declare.arguments),
            };
            blocking(|| store.put_exchange(&def)).map_err(store_error)?;
        }
        Ok(())
    }

    /// `exchange.delete`.
    pub fn delete_exchange(&self, name: &ShortString, if_unused: bool) -> Result<(), AmqpError> {
        match self.topology.delete_exchange(name.as_bytes(), if_unused) {
            Ok(removed) => {
                self.forget_removed(&removed);
                Ok(())
            }
            // Deleting a missing exchange is fine in RabbitMQ 3.x.
            Err(RouterError::ExchangeNotFound { .. }) => Ok(()),
            Err(e) => Err(router_error(e)),
        }
    }

    /// `exchange.bind`.
    pub fn bind_exchange(
        &self,
        destination: &ShortString,
        source: &ShortString,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        let binding = Binding::exchange(source.clone(), destination.clone(), routing_key.clone())
            .with_arguments(arguments.clone());
        self.bind(&binding)
    }

    /// `exchange.unbind`.
    pub fn unbind_exchange(
        &self,
        destination: &ShortString,
        source: &ShortString,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        let binding = Binding::exchange(source.clone(), destination.clone(), routing_key.clone())
            .with_arguments(arguments.clone());
        self.unbind(&binding)
    }

    // ===== Queues =====

    /// `queue.declare`: returns the queue and whether it was created.
    pub fn declare_queue(
        &self,
        declare: QueueDeclare,
    ) -> Result<(Arc<QueueEntity>, bool), AmqpError> {
        let locked = |name: &ShortString| {
            ChannelError::resource_locked(format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                self.name
            ))
        };
        if let Some(queue) = self.topology.queue(declare.name.as_bytes()) {
            if let Some(owner) = queue.exclusive_owner
                && owner != declare.conn_id
            {
                return Err(locked(&queue.name).into());
            }
            queue.touch();
            if declare.passive {
                return Ok((queue, false));
            }
            if declare.exclusive != queue.exclusive_owner.is_some() {
                return Err(locked(&queue.name).into());
            }
            self.check_equivalent(&queue, &declare)?;
            return Ok((queue, false));
        }
        if declare.passive {
            return Err(ChannelError::not_found(format!(
                "no queue '{}' in vhost '{}'",
                declare.name, self.name
            ))
            .into());
        }
        if declare.name.as_bytes().starts_with(b"amq.")
            && !declare.name.as_bytes().starts_with(b"amq.gen-")
        {
            return Err(ChannelError::access_refused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                declare.name
            ))
            .into());
        }
        crate::arguments::check_declare(&self.declared(&declare))?;
        // Own the name: it may be a slice of a large read buffer.
        let name = ShortString::from_bytes(bytes::Bytes::copy_from_slice(declare.name.as_bytes()))
            .unwrap_or_default();
        // Exclusive queues die with their connection, so they are never written to disk.
        let messages = match self.durable_store(declare.durable && !declare.exclusive) {
            Some(store) => {
                let def = warren_store::QueueDef {
                    vhost: self.store_name.clone(),
                    name: name.clone(),
                    auto_delete: declare.auto_delete,
                    arguments: encode_table(&declare.arguments),
                };
                blocking(|| store.declare_queue(&def)).map_err(store_error)?
            }
            None => self.transient_messages(),
        };
        let queue = Arc::new(QueueEntity::new(
            name.clone(),
            Arc::clone(&self.name),
            declare.durable,
            declare.auto_delete,
            declare.exclusive.then_some(declare.conn_id),
            declare.arguments,
            Arc::clone(&self.memory),
            messages,
        ));
        self.memory.register(&queue);
        queue.set_dead_letter_sink(self.me.clone());
        if queue.expires.is_some() {
            self.register_expiring(Arc::downgrade(&queue));
        }
        if self.topology.add_queue(name.clone(), Arc::clone(&queue)) {
            Ok((queue, true))
        } else {
            // Another connection created it a moment ago: declare again against that one.
            match self.topology.queue(name.as_bytes()) {
                Some(existing) => Ok((existing, false)),
                None => Err(ChannelError::new(
                    ReplyCode::InternalError,
                    format!("queue '{name}' vanished while being declared"),
                )
                .into()),
            }
        }
    }

    /// What the argument checks need from a declare.
    fn declared<'a>(&'a self, declare: &'a QueueDeclare) -> crate::arguments::Declared<'a> {
        crate::arguments::Declared {
            queue: &declare.name,
            vhost: &self.name,
            durable: declare.durable,
            exclusive: declare.exclusive,
            auto_delete: declare.auto_delete,
            arguments: &declare.arguments,
        }
    }

    fn check_equivalent(
        &self,
        queue: &QueueEntity,
        declare: &QueueDeclare,
    ) -> Result<(), AmqpError> {
        // RabbitMQ makes an exclusive queue non-durable, so an exclusive redeclare matches
        // whatever `durable` either declare said.
        let mut received = self.declared(declare);
        received.durable = declare.durable && !declare.exclusive;
        crate::arguments::check_equivalent(
            &received,
            queue.queue_type,
            queue.durable && queue.exclusive_owner.is_none(),
            queue.auto_delete,
            &queue.arguments,
        )
    }

    /// Deletes a queue: it leaves the topology (with its bindings), its consumers are
    /// cancelled, its messages dropped. Returns the number of ready messages it held.
    pub fn delete_queue(&self, queue: &Arc<QueueEntity>) -> u32 {
        let current = self.topology.queue(queue.name.as_bytes());
        if current.is_some_and(|q| Arc::ptr_eq(&q, queue)) {
            if let Some(removed) = self.topology.remove_queue(queue.name.as_bytes()) {
                // The store drops the queue's own bindings with it; auto-deleted exchanges
                // are forgotten here.
                let removed = warren_router::Removed {
                    bindings: Vec::new(),
                    exchanges: removed.exchanges,
                };
                self.forget_removed(&removed);
            }
            if queue.durable
                && queue.exclusive_owner.is_none()
                && let Some(store) = &self.store
            {
                let n_ready = queue.counts().0;
                let messages = queue.take_messages();
                if let Err(e) =
                    blocking(|| store.delete_queue(&self.store_name, &queue.name, messages))
                {
                    tracing::error!(error = %e, "forgetting a durable queue");
                }
                queue.delete();
                return n_ready;
            }
        } else if queue.name.as_bytes().starts_with(b"amq.rabbitmq.reply-to.") {
            self.reply_queues.write().remove(&queue.name);
        }
        queue.delete()
    }

    /// `queue.bind`.
    pub fn bind_queue(
        &self,
        queue: &QueueEntity,
        exchange: &ShortString,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        let binding = Binding::queue(exchange.clone(), queue.name.clone(), routing_key.clone())
            .with_arguments(arguments.clone());
        self.bind(&binding)
    }

    /// `queue.unbind`.
    pub fn unbind_queue(
        &self,
        queue: &QueueEntity,
        exchange: &ShortString,
        routing_key: &ShortString,
        arguments: &FieldTable,
    ) -> Result<(), AmqpError> {
        let binding = Binding {
            source: exchange.clone(),
            destination: Destination::Queue(queue.name.clone()),
            routing_key: routing_key.clone(),
            arguments: arguments.clone(),
        };
        self.unbind(&binding)
    }

    // ===== Expiry and dead letters =====

    /// Remembers a queue that holds expiring messages, for `sweep_expired`.
    pub fn register_expiring(&self, queue: std::sync::Weak<QueueEntity>) {
        self.expiring.lock().push(queue);
    }

    /// Expires due messages at the head of every queue that has expiring ones (called about
    /// ten times a second), so they die (and are dead-lettered) without waiting for a consumer.
    pub fn sweep_expired(&self) {
        let queues: Vec<Arc<QueueEntity>> = {
            let mut list = self.expiring.lock();
            list.retain(|q| q.upgrade().is_some_and(|q| !q.is_deleted()));
            list.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        for queue in queues {
            if queue.unused_for_too_long() {
                tracing::debug!(queue = %queue.name, "x-expires: deleting an unused queue");
                self.delete_queue(&queue);
            } else {
                queue.expire();
            }
        }
    }

    /// Routes a message that died in `queue` (`reason`: expired, rejected, maxlen) to its
    /// dead-letter exchange, with RabbitMQ's `x-death` history in its headers.
    pub fn dead_letter(
        &self,
        queue: &Arc<QueueEntity>,
        target: &crate::queue::DeadLetterTarget,
        message: &warren_store::Message,
        reason: &'static str,
    ) {
        let mut properties = decode_properties(&message.properties, message.body.len());
        let mut headers = properties.headers.take().unwrap_or_default();
        let mut deaths = match headers.remove(b"x-death") {
            Some(FieldValue::Array(deaths)) => deaths,
            _ => Vec::new(),
        };
        let same = |death: &FieldValue| {
            matches!(death, FieldValue::Table(t)
                if t.get(b"queue") == Some(&long(queue.name.as_bytes()))
                && t.get(b"reason") == Some(&long(reason.as_bytes())))
        };
        let mut entry = match deaths.iter().position(same) {
            Some(i) => match deaths.remove(i) {
                FieldValue::Table(t) => t,
                _ => FieldTable::new(),
            },
            None => FieldTable::new(),
        };
        let count = match entry.get(b"count") {
            Some(FieldValue::I64(n)) => n + 1,
            _ => 1,
        };
        entry.insert(ShortString::from_static("count"), FieldValue::I64(count));
        entry.insert(ShortString::from_static("reason"), long(reason.as_bytes()));
        entry.insert(
            ShortString::from_static("queue"),
            long(queue.name.as_bytes()),
        );
        entry.insert(
            ShortString::from_static("time"),
            FieldValue::Timestamp(crate::queue::now_ms() / 1000),
        );
        entry.insert(
            ShortString::from_static("exchange"),
            long(message.exchange.as_bytes()),
        );
        entry.insert(
            ShortString::from_static("routing-keys"),
            FieldValue::Array(vec![long(message.routing_key.as_bytes())]),
        );
        if reason == "expired"
            && let Some(expiration) = properties.expiration.take()
        {
            entry.insert(
                ShortString::from_static("original-expiration"),
                long(expiration.as_bytes()),
            );
        }
        deaths.insert(0, FieldValue::Table(entry));
        let automatic = !deaths.iter().any(
            |d| matches!(d, FieldValue::Table(t) if t.get(b"reason") == Some(&long(b"rejected"))),
        );
        let died_in: Vec<Bytes> = deaths
            .iter()
            .filter_map(|d| match d {
                FieldValue::Table(t) => match t.get(b"queue") {
                    Some(FieldValue::LongString(q)) => Some(q.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        headers.insert(
            ShortString::from_static("x-death"),
            FieldValue::Array(deaths),
        );
        for (name, value) in [
            ("x-first-death-exchange", message.exchange.as_bytes()),
            ("x-first-death-queue", queue.name.as_bytes()),
            ("x-first-death-reason", reason.as_bytes()),
        ] {
            if headers.get(name.as_bytes()).is_none() {
                headers.insert(ShortString::from_static(name), long(value));
            }
        }
        let routing_key = target
            .routing_key
            .clone()
            .unwrap_or_else(|| message.routing_key.clone());
        let mut out = RouteBuf::new();
        let outcome = self.topology.route(
            target.exchange.as_bytes(),
            &[routing_key.as_bytes()],
            Some(&headers),
            &mut out,
        );
        if !matches!(outcome, RouteOutcome::Routed(_)) {
            return;
        }
        sort_headers(&mut headers);
        properties.headers = Some(headers);
        let mut raw = bytes::BytesMut::new();
        properties.encode(&mut raw);
        let dead = Arc::new(
            warren_store::Message::new(
                target.exchange.clone(),
                routing_key,
                raw.freeze(),
                message.body.clone(),
            )
            .with_persistent(message.persistent),
        );
        for next in out.drain() {
            // A cycle with no rejection in it would go round forever: RabbitMQ drops it.
            if automatic && died_in.iter().any(|q| q.as_ref() == next.name.as_bytes()) {
                continue;
            }
            let _ = next.publish(Arc::clone(&dead));
        }
    }

    // ===== Publishing =====

    /// Checks that a publish to `exchange` would be accepted (used by transactions, which
    /// route at commit).
    pub fn check_publish(&self, exchange: &ShortString) -> Result<(), AmqpError> {
        if exchange.is_empty() {
            return Ok(());
        }
        match self.topology.exchange(exchange.as_bytes()) {
            None => Err(self.no_exchange(exchange)),
            Some(def) if def.internal => Err(self.internal_exchange(exchange)),
            Some(_) => Ok(()),
        }
    }

    fn no_exchange(&self, exchange: &ShortString) -> AmqpError {
        ChannelError::not_found(format!("no exchange '{exchange}' in vhost '{}'", self.name))
            .on(60, 40)
            .into()
    }

    fn internal_exchange(&self, exchange: &ShortString) -> AmqpError {
        ChannelError::access_refused(format!(
            "cannot publish to internal exchange '{exchange}' in vhost '{}'",
            self.name
        ))
        .on(60, 40)
        .into()
    }

    /// Routes a message; the matched queues are left in `out`.
    pub fn route(
        &self,
        exchange: &ShortString,
        routing_key: &ShortString,
        headers: Option<&FieldTable>,
        out: &mut RouteBuf<Arc<QueueEntity>>,
    ) -> Result<(), AmqpError> {
        // Sender-selected distribution: CC and BCC headers add routing keys.
        let mut extra: Vec<&[u8]> = Vec::new();
        if let Some(headers) = headers {
            for name in [&b"CC"[..], &b"BCC"[..]] {
                if let Some(FieldValue::Array(keys)) = headers.get(name) {
                    for key in keys {
                        if let FieldValue::LongString(key) = key {
                            extra.push(key);
                        }
                    }
                }
            }
        }
        let outcome = if extra.is_empty() {
            self.topology
                .route(exchange.as_bytes(), &[routing_key.as_bytes()], headers, out)
        } else {
            let mut keys: Vec<&[u8]> = Vec::with_capacity(extra.len() + 1);
            keys.push(routing_key.as_bytes());
            keys.extend(extra);
            self.topology
                .route(exchange.as_bytes(), &keys, headers, out)
        };
        match outcome {
            RouteOutcome::ExchangeNotFound => Err(self.no_exchange(exchange)),
            RouteOutcome::InternalExchange => Err(self.internal_exchange(exchange)),
            _ => Ok(()),
        }
    }
}
