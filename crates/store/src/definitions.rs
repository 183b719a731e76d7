//! Durable exchanges, queues and bindings: an append-only file of checksummed put/delete records,
//! each synced before the call returns, rewritten compactly when it grows stale.
//!
//! Group commit. Declaring thousands of durable queues from many connections at once would cost
//! one `fdatasync` each if every call wrote and synced its own record. Instead a call appends its
//! record to a shared buffer and waits; whichever caller finds no sync running writes the whole
//! buffer with one write and one `fdatasync` for everyone, then applies the records to the maps
//! in order and wakes the others. A call still returns only once its record is on stable storage
//! (so a declare-ok is never sent for a definition a crash could lose), and a failed write fails
//! every call of that batch and is cut off the file, so the next batch follows a good record.
//!
//! The store is the only reader and writer. Arguments are kept as the encoded AMQP field table
//! (`bytes`), so the store does not need to understand them; the broker encodes and decodes them
//! with the codec.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use warren_codec::ShortString;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::backend::{Backend, FileHandle};
use crate::error::StoreError;
use crate::record::{self, Fields, Next};

pub(crate) const DEFINITIONS_FILE: &str = "definitions.log";
const DEFINITIONS_TMP: &str = "definitions.log.tmp";
const DEFINITIONS_MAGIC: &[u8; 8] = b"WRNDEF\r\n";
const DEFINITIONS_VERSION: u32 = 1;
const HEADER_LEN: u64 = 16;

const PUT_EXCHANGE: u8 = 1;
const DELETE_EXCHANGE: u8 = 2;
const PUT_QUEUE: u8 = 3;
const DELETE_QUEUE: u8 = 4;
const PUT_BINDING: u8 = 5;
const DELETE_BINDING: u8 = 6;
const NEXT_QUEUE_ID: u8 = 7;

/// A durable exchange, as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeDef {
    /// The virtual host.
    pub vhost: ShortString,
    /// The exchange name.
    pub name: ShortString,
    /// `direct`, `fanout`, `topic`, `headers`, ...
    pub kind: ShortString,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Clients may not publish to it directly.
    pub internal: bool,
    /// The declare's arguments, as an encoded AMQP field table (empty for none).
    pub arguments: Bytes,
}

/// A durable queue, as declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDef {
    /// The virtual host.
    pub vhost: ShortString,
    /// The queue name.
    pub name: ShortString,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// The declare's arguments, as an encoded AMQP field table (empty for none).
    pub arguments: Bytes,
}

/// What a binding binds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DestinationKind {
    /// `queue.bind`.
    Queue,
    /// `exchange.bind` (RabbitMQ's exchange-to-exchange bindings).
    Exchange,
}

/// A durable binding. Two bindings are the same when every field is equal, as in RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingDef {
    /// The virtual host.
    pub vhost: ShortString,
    /// The source exchange.
    pub source: ShortString,
    /// The destination queue or exchange.
    pub destination: ShortString,
    /// Whether `destination` names a queue or an exchange.
    pub destination_kind: DestinationKind,
    /// The binding key.
    pub routing_key: ShortString,
    /// The bind's arguments, as an encoded AMQP field table (empty for none).
    pub arguments: Bytes,
}

type Key = (ShortString, ShortString);

/// The definitions file and what it says.
#[derive(Debug)]
pub(crate) struct Definitions {
    backend: Arc<dyn Backend>,
    file: Arc<dyn FileHandle>,
    /// Bytes in the file.
    len: u64,
    /// The file's length right after the last rewrite; a rewrite is due when it doubles.
    compacted_len: u64,
    pub(crate) exchanges: BTreeMap<Key, ExchangeDef>,
    /// Queues with the id their messages carry in the log.
    pub(crate) queues: BTreeMap<Key, (u64, QueueDef)>,
    /// Bindings by their encoded form (which includes every field).
    pub(crate) bindings: BTreeMap<Vec<u8>, BindingDef>,
    /// The id the next declared queue gets; ids are never reused.
    next_queue_id: u64,
}

fn put_bool_flags(buf: &mut Vec<u8>, flags: &[bool]) {
    let mut byte = 0u8;
    for (bit, flag) in flags.iter().enumerate() {
        if *flag {
            byte |= 1 << bit;
        }
    }
    buf.push(byte);
}

fn short(bytes: &[u8]) -> Option<ShortString> {
    ShortString::from_bytes(Bytes::copy_from_slice(bytes)).ok()
}

fn encode_exchange(buf: &mut Vec<u8>, def: &ExchangeDef) {
    buf.push(PUT_EXCHANGE);
    record::put_short(buf, def.vhost.as_bytes());
    record::put_short(buf, def.name.as_bytes());
    record::put_short(buf, def.kind.as_bytes());
    put_bool_flags(buf, &[def.auto_delete, def.internal]);
    record::put_long(buf, &def.arguments);
}

fn encode_queue(buf: &mut Vec<u8>, id: u64, def: &QueueDef) {
    buf.push(PUT_QUEUE);
    record::put_u64(buf, id);
    record::put_short(buf, def.vhost.as_bytes());
    record::put_short(buf, def.name.as_bytes());
    put_bool_flags(buf, &[def.auto_delete]);
    record::put_long(buf, &def.arguments);
}

/// The binding's fields, without a kind byte: also its identity.
fn encode_binding_body(buf: &mut Vec<u8>, def: &BindingDef) {
    record::put_short(buf, def.vhost.as_bytes());
    record::put_short(buf, def.source.as_bytes());
    record::put_short(buf, def.destination.as_bytes());
    buf.push(match def.destination_kind {
        DestinationKind::Queue => 0,
        DestinationKind::Exchange => 1,
    });
    record::put_short(buf, def.routing_key.as_bytes());
    record::put_long(buf, &def.arguments);
}

fn binding_key(def: &BindingDef) -> Vec<u8> {
    let mut key = Vec::new();
    encode_binding_body(&mut key, def);
    key
}

fn encode_delete(buf: &mut Vec<u8>, kind: u8, vhost: &ShortString, name: &ShortString) {
    buf.push(kind);
    record::put_short(buf, vhost.as_bytes());
    record::put_short(buf, name.as_bytes());
}

fn decode_binding(fields: &mut Fields<'_>) -> Option<BindingDef> {
    Some(BindingDef {
        vhost: short(fields.short()?)?,
        source: short(fields.short()?)?,
        destination: short(fields.short()?)?,
        destination_kind: match fields.u8()? {
            0 => DestinationKind::Queue,
            1 => DestinationKind::Exchange,
            _ => return None,
        },
        routing_key: short(fields.short()?)?,
        arguments: Bytes::copy_from_slice(fields.long()?),
    })
}

fn header() -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN as usize);
    buf.extend_from_slice(DEFINITIONS_MAGIC);
    buf.extend_from_slice(&DEFINITIONS_VERSION.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf
}

impl Definitions {
    /// Opens (or creates) the definitions file and replays it. A torn or corrupt tail is cut off.
    pub(crate) fn open(backend: Arc<dyn Backend>) -> Result<Definitions, StoreError> {
        let names = backend.list().map_err(StoreError::io("data folder"))?;
        if names.iter().any(|name| name == DEFINITIONS_TMP) {
            // A rewrite was cut short by a crash; the old file is still whole.
            backend
                .remove(DEFINITIONS_TMP)
                .map_err(StoreError::io(DEFINITIONS_TMP))?;
        }
        let exists = names.iter().any(|name| name == DEFINITIONS_FILE);
        let file = backend
            .open(DEFINITIONS_FILE, true)
            .map_err(StoreError::io(DEFINITIONS_FILE))?;
        let io = StoreError::io;
        let len = file.size().map_err(io(DEFINITIONS_FILE))?;
        let mut definitions = Definitions {
            backend: Arc::clone(&backend),
            file: Arc::clone(&file),
            len,
            compacted_len: len,
            exchanges: BTreeMap::new(),
            queues: BTreeMap::new(),
            bindings: BTreeMap::new(),
            next_queue_id: 1,
        };
        if !exists || len < HEADER_LEN {
            // New (or created but never written whole): start it.
            let header = header();
            file.set_len(0).map_err(io(DEFINITIONS_FILE))?;
            file.write_all_at(&header, 0)
                .map_err(io(DEFINITIONS_FILE))?;
            file.sync_data().map_err(io(DEFINITIONS_FILE))?;
            backend.sync_dir().map_err(io("data folder"))?;
            definitions.len = HEADER_LEN;
            definitions.compacted_len = HEADER_LEN;
            return Ok(definitions);
        }
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        file.read_exact_at(&mut data, 0)
            .map_err(io(DEFINITIONS_FILE))?;
        file.sync_data().map_err(io(DEFINITIONS_FILE))?;
        if data.get(0..8) != Some(&DEFINITIONS_MAGIC[..]) {
            return Err(StoreError::Corrupt {
                file: DEFINITIONS_FILE.to_owned(),
                offset: 0,
                reason: "not a definitions file".to_owned(),
            });
        }
        if data.get(8..12) != Some(&DEFINITIONS_VERSION.to_le_bytes()[..]) {
            return Err(StoreError::UnsupportedFormat {
                found: format!("definitions format {:?}", data.get(8..12).unwrap_or(&[])),
                supported: DEFINITIONS_VERSION,
            });
        }
        let mut pos = HEADER_LEN as usize;
        loop {
            match record::next(&data, pos) {
                Next::End => break,
                Next::Record(payload, after) => {
                    if definitions.apply(payload).is_none() {
                        tracing::error!(
                            file = DEFINITIONS_FILE,
                            offset = pos,
                            "unreadable definitions record skipped"
                        );
                    }
                    pos = after;
                }
                Next::Bad(reason) => {
                    tracing::warn!(
                        file = DEFINITIONS_FILE,
                        offset = pos,
                        reason,
                        "torn or corrupt tail of the definitions file cut off"
                    );
                    file.set_len(pos as u64).map_err(io(DEFINITIONS_FILE))?;
                    file.sync_data().map_err(io(DEFINITIONS_FILE))?;
                    break;
                }
            }
        }
        definitions.len = pos as u64;
        definitions.compacted_len = definitions.len;
        Ok(definitions)
    }

    /// Applies one record to the maps; `None` if it cannot be read.
    fn apply(&mut self, payload: &[u8]) -> Option<()> {
        let mut fields = Fields::new(payload);
        match fields.u8()? {
            PUT_EXCHANGE => {
                let vhost = short(fields.short()?)?;
                let name = short(fields.short()?)?;
                let kind = short(fields.short()?)?;
                let flags = fields.u8()?;
                let arguments = Bytes::copy_from_slice(fields.long()?);
                let def = ExchangeDef {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    kind,
                    auto_delete: flags & 1 != 0,
                    internal: flags & 2 != 0,
                    arguments,
                };
                self.exchanges.insert((vhost, name), def);
            }
            DELETE_EXCHANGE => {
                let vhost = short(fields.short()?)?;
                let name = short(fields.short()?)?;
                self.exchanges.remove(&(vhost.clone(), name.clone()));
                self.bindings.retain(|_, binding| {
                    !(binding.vhost == vhost
                        && (binding.source == name
                            || (binding.destination_kind == DestinationKind::Exchange
                                && binding.destination == name)))
                });
            }
            PUT_QUEUE => {
                let id = fields.u64()?;
                let vhost = short(fields.short()?)?;
                let name = short(fields.short()?)?;
                let flags = fields.u8()?;
                let arguments = Bytes::copy_from_slice(fields.long()?);
                self.next_queue_id = self.next_queue_id.max(id + 1);
                let def = QueueDef {
                    vhost: vhost.clone(),
                    name: name.clone(),
                    auto_delete: flags & 1 != 0,
                    arguments,
                };
                self.queues.insert((vhost, name), (id, def));
            }
            DELETE_QUEUE => {
                let vhost = short(fields.short()?)?;
                let name = short(fields.short()?)?;
                self.queues.remove(&(vhost.clone(), name.clone()));
                self.bindings.retain(|_, binding| {
                    !(binding.vhost == vhost
                        && binding.destination_kind == DestinationKind::Queue
                        && binding.destination == name)
                });
            }
            kind @ (PUT_BINDING | DELETE_BINDING) => {
                let def = decode_binding(&mut fields)?;
                let key = binding_key(&def);
                if kind == PUT_BINDING {
                    self.bindings.insert(key, def);
                } else {
                    self.bindings.remove(&key);
                }
            }
            NEXT_QUEUE_ID => {
                let id = fields.u64()?;
                self.next_queue_id = self.next_queue_id.max(id);
            }
            _ => return None,
        }
        fields.is_done().then_some(())
    }

    /// Writes the current definitions to a new file and renames it over the old one.
    fn rewrite(&mut self) -> Result<(), StoreError> {
        let mut buf = header();
        let add = |buf: &mut Vec<u8>, encode: &dyn Fn(&mut Vec<u8>)| {
            let mark = record::begin(buf);
            encode(buf);
            record::finish(buf, mark);
        };
        let next_queue_id = self.next_queue_id;
        add(&mut buf, &|buf| {
            buf.push(NEXT_QUEUE_ID);
            record::put_u64(buf, next_queue_id);
        });
        for def in self.exchanges.values() {
            add(&mut buf, &|buf| encode_exchange(buf, def));
        }
        for (id, def) in self.queues.values() {
            add(&mut buf, &|buf| encode_queue(buf, *id, def));
        }
        for def in self.bindings.values() {
            add(&mut buf, &|buf| {
                buf.push(PUT_BINDING);
                encode_binding_body(buf, def);
            });
        }
        let io = StoreError::io;
        let tmp = self
            .backend
            .open(DEFINITIONS_TMP, true)
            .map_err(io(DEFINITIONS_TMP))?;
        tmp.set_len(0).map_err(io(DEFINITIONS_TMP))?;
        tmp.write_all_at(&buf, 0).map_err(io(DEFINITIONS_TMP))?;
        tmp.sync_data().map_err(io(DEFINITIONS_TMP))?;
        self.backend
            .rename(DEFINITIONS_TMP, DEFINITIONS_FILE)
            .map_err(io(DEFINITIONS_FILE))?;
        self.backend.sync_dir().map_err(io("data folder"))?;
        self.file = tmp;
        self.len = buf.len() as u64;
        self.compacted_len = self.len;
        Ok(())
    }
}

/// Failed batches remembered for the callers that have not woken up yet.
const FAILED_BATCHES_KEPT: usize = 1024;

/// The definitions behind one lock, with the records waiting for their group sync.
#[derive(Debug)]
struct Group {
    defs: Definitions,
    /// Encoded records appended and not yet handed to a sync.
    pending: Vec<u8>,
    /// Sequence number of the last record appended (the first is 1).
    appended: u64,
    /// Every record up to this sequence number has been synced or has failed.
    completed: u64,
    /// A caller is writing and syncing a batch right now.
    syncing: bool,
    /// Batches that failed: (first, last) sequence numbers, and what went wrong.
    failed: Vec<(u64, u64, std::io::ErrorKind, String)>,
}

/// The definitions file with group commit: every call returns once its record is on stable
/// storage, and concurrent calls share one write and one `fdatasync`.
#[derive(Debug)]
pub(crate) struct DefinitionsLog {
    group: Mutex<Group>,
    /// Wakes the callers waiting for a batch to complete.
    completed: Condvar,
}

impl DefinitionsLog {
    pub(crate) fn new(defs: Definitions) -> DefinitionsLog {
        DefinitionsLog {
            group: Mutex::new(Group {
                defs,
                pending: Vec::new(),
                appended: 0,
                completed: 0,
                syncing: false,
                failed: Vec::new(),
            }),
            completed: Condvar::new(),
        }
    }

    /// Appends one record built by `encode` (which may reserve things in the definitions, as
    /// a queue id), and returns once it is synced, or with the error of its batch.
    fn commit<T>(
        &self,
        encode: impl FnOnce(&mut Definitions, &mut Vec<u8>) -> T,
    ) -> Result<T, StoreError> {
        let mut group = self.group.lock();
        let group_ref = &mut *group;
        let mark = record::begin(&mut group_ref.pending);
        let value = encode(&mut group_ref.defs, &mut group_ref.pending);
        record::finish(&mut group_ref.pending, mark);
        group.appended += 1;
        let seq = group.appended;
        while group.completed < seq {
            if group.syncing {
                self.completed.wait(&mut group);
            } else {
                self.sync_batch(&mut group);
            }
        }
        match group
            .failed
            .iter()
            .find(|(first, last, _, _)| (*first..=*last).contains(&seq))
        {
            Some((_, _, kind, text)) => Err(StoreError::Io {
                file: DEFINITIONS_FILE.to_owned(),
                source: std::io::Error::new(*kind, text.clone()),
            }),
            None => Ok(value),
        }
    }

    /// Writes and syncs every pending record as one batch, with the lock released meanwhile
    /// (others append to the next batch), then applies them and wakes their callers.
    fn sync_batch(&self, group: &mut MutexGuard<'_, Group>) {
        group.syncing = true;
        let batch = std::mem::take(&mut group.pending);
        let first = group.completed + 1;
        let last = group.appended;
        let file = Arc::clone(&group.defs.file);
        let at = group.defs.len;
        let written = MutexGuard::unlocked(group, || {
            file.write_all_at(&batch, at)
                .and_then(|()| file.sync_data())
        });
        match written {
            Ok(()) => {
                group.defs.len += batch.len() as u64;
                let mut pos = 0;
                while let Next::Record(payload, after) = record::next(&batch, pos) {
                    group.defs.apply(payload);
                    pos = after;
                }
                if group.defs.len > 2 * group.defs.compacted_len + (64 << 10)
                    && let Err(error) = group.defs.rewrite()
                {
                    // The records are durable in the old file, which is still whole.
                    tracing::warn!(%error, "cannot rewrite the definitions file; keeping it as is");
                }
            }
            Err(error) => {
                tracing::error!(%error, records = last + 1 - first, "write to the definitions file failed");
                // Cut back a partial batch so the next one follows a good record.
                let _ = file.set_len(at);
                if group.failed.len() >= FAILED_BATCHES_KEPT {
                    group.failed.remove(0);
                }
                group
                    .failed
                    .push((first, last, error.kind(), error.to_string()));
            }
        }
        group.completed = last;
        group.syncing = false;
        self.completed.notify_all();
    }

    pub(crate) fn put_exchange(&self, def: &ExchangeDef) -> Result<(), StoreError> {
        self.commit(|_, buf| encode_exchange(buf, def))
    }

    pub(crate) fn delete_exchange(
        &self,
        vhost: &ShortString,
        name: &ShortString,
    ) -> Result<(), StoreError> {
        self.commit(|_, buf| encode_delete(buf, DELETE_EXCHANGE, vhost, name))
    }

    /// Records a queue under a new id, which it returns. Ids are never reused, even when the
    /// write fails.
    pub(crate) fn put_queue(&self, def: &QueueDef) -> Result<u64, StoreError> {
        self.commit(|defs, buf| {
            let id = defs.next_queue_id;
            defs.next_queue_id += 1;
            encode_queue(buf, id, def);
            id
        })
    }

    pub(crate) fn delete_queue(
        &self,
        vhost: &ShortString,
        name: &ShortString,
    ) -> Result<(), StoreError> {
        self.commit(|_, buf| encode_delete(buf, DELETE_QUEUE, vhost, name))
    }

    pub(crate) fn put_binding(&self, def: &BindingDef) -> Result<(), StoreError> {
        self.commit(|_, buf| {
            buf.push(PUT_BINDING);
            encode_binding_body(buf, def);
        })
    }

    pub(crate) fn delete_binding(&self, def: &BindingDef) -> Result<(), StoreError> {
        self.commit(|_, buf| {
            buf.push(DELETE_BINDING);
            encode_binding_body(buf, def);
        })
    }

    /// Bytes in the definitions file.
    pub(crate) fn len(&self) -> u64 {
        self.group.lock().defs.len
    }
}
