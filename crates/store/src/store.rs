//! The durable store: a data folder with a version marker, the definitions file and the message
//! log, opened together; recovery hands back the durable queues with their messages.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use warren_codec::ShortString;

use crate::backend::{Backend, FileBackend, Prefixed};
use crate::definitions::{
    BindingDef, DEFINITIONS_FILE, Definitions, DefinitionsLog, ExchangeDef, QueueDef,
};
use crate::error::StoreError;
use crate::journal::{
    FORMAT_VERSION, Journal, Log, OLDEST_FORMAT_VERSION, StoreOptions, SyncFailed,
};
use crate::queue::{Lsn, Queue};

/// The version marker's file name, and its contents for this build's format.
const VERSION_FILE: &str = "VERSION";
const VERSION_PREFIX: &str = "warren-store ";
/// Present while no process has the store open: the previous run closed it cleanly.
const CLEAN_FILE: &str = "clean-shutdown";
/// The highest log segment written before the last unclean stop: its messages, and those of
/// older segments, may have been delivered, so they are recovered flagged redelivered.
const SUSPECT_FILE: &str = "redelivered-upto";
/// Names of the spill log's segments start with this.
const SPILL_PREFIX: &str = "spill-";

/// What [`Store::open`] restored.
#[derive(Debug)]
#[non_exhaustive]
pub struct Recovery {
    /// Durable exchanges, to declare again.
    pub exchanges: Vec<ExchangeDef>,
    /// Durable queues, each with its recovered messages (ready, in order).
    pub queues: Vec<(QueueDef, Queue)>,
    /// Durable bindings, to add once exchanges and queues exist.
    pub bindings: Vec<BindingDef>,
    /// What recovery saw.
    pub report: RecoveryReport,
}

/// Facts about a recovery, for the broker's start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// The previous run closed the store with [`Store::close`].
    pub clean_shutdown: bool,
    /// Messages recovered, over all queues.
    pub messages: u64,
    /// Torn or corrupt records skipped or cut off.
    pub bad_records: u64,
    /// Bytes cut off the end of the log.
    pub truncated_bytes: u64,
}

/// The durable store of one data folder. Share it as `Arc<Store>`: queues append to it from any
/// thread, and one thread (the broker's sync thread) calls [`Store::wait_and_sync`] in a loop.
#[derive(Debug)]
pub struct Store {
    backend: Arc<dyn Backend>,
    log: Arc<Log>,
    /// Bodies without a durable record, paged out under memory pressure (`spill-*` files).
    spill: Arc<Log>,
    /// Durable exchanges, queues and bindings, with group commit.
    definitions: DefinitionsLog,
}

impl Store {
    /// Opens the data folder `dir` (created if missing) with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<(Store, Recovery), StoreError> {
        let dir = dir.as_ref();
        let backend = FileBackend::new(dir).map_err(|source| {
            if source.kind() == std::io::ErrorKind::WouldBlock {
                StoreError::InUse {
                    dir: dir.display().to_string(),
                    source,
                }
            } else {
                StoreError::io("data folder")(source)
            }
        })?;
        Store::open_with(Arc::new(backend), StoreOptions::default())
    }

    /// Opens a store on any backend (tests use [`crate::MemBackend`]).
    pub fn open_with(
        backend: Arc<dyn Backend>,
        options: StoreOptions,
    ) -> Result<(Store, Recovery), StoreError> {
        check_version(&*backend)?;
        let names = backend.list().map_err(StoreError::io("data folder"))?;
        let clean = names.iter().any(|name| name == CLEAN_FILE);
        if clean {
            // From now on a crash is possible: the marker goes before any new record is written.
            backend
                .remove(CLEAN_FILE)
                .and_then(|()| backend.sync_dir())
                .map_err(StoreError::io(CLEAN_FILE))?;
        }
        let definitions = Definitions::open(Arc::clone(&backend))?;
        let live_queues: BTreeSet<u64> = definitions.queues.values().map(|(id, _)| *id).collect();
        let suspect_upto = read_suspect(&*backend)?;
        let (log, mut recovered) = Log::open(
            Arc::clone(&backend),
            options,
            &live_queues,
            clean,
            suspect_upto,
        )?;
        if recovered.suspect_upto != suspect_upto {
            write_suspect(&*backend, recovered.suspect_upto)?;
        }
        let log = Arc::new(log);
        let spill = Arc::new(Log::open_spill(
            Arc::new(Prefixed {
                inner: Arc::clone(&backend),
                prefix: SPILL_PREFIX,
            }),
            options,
        )?);

        let mut report = RecoveryReport {
            clean_shutdown: clean,
            messages: 0,
            bad_records: recovered.bad_records,
            truncated_bytes: recovered.truncated_bytes,
        };
        let mut queues = Vec::new();
        for (id, def) in definitions.queues.values() {
            let messages = recovered.queues.remove(id).unwrap_or_default();
            report.messages += messages.len() as u64;
            let next_offset = recovered.next_offsets.get(id).copied().unwrap_or(0);
            let journal = Journal::new(Arc::clone(&log), *id);
            queues.push((
                def.clone(),
                Queue::with_journal(journal, messages, next_offset).with_spill(Arc::clone(&spill)),
            ));
        }
        let recovery = Recovery {
            exchanges: definitions.exchanges.values().cloned().collect(),
            queues,
            bindings: definitions.bindings.values().cloned().collect(),
            report,
        };
        tracing::info!(
            clean = report.clean_shutdown,
            messages = report.messages,
            bad_records = report.bad_records,
            "message store opened"
        );
        let store = Store {
            backend,
            log,
            spill,
            definitions: DefinitionsLog::new(definitions),
        };
        Ok((store, recovery))
    }

    /// Records a new durable queue (synced before returning) and returns its empty queue. Call it
    /// once when a durable queue is created, not on a redeclare of an existing one: a second call
    /// for the same name replaces the first (whose logged messages are then dead).
    pub fn declare_queue(&self, def: &QueueDef) -> Result<Queue, StoreError> {
        let id = self.definitions.put_queue(def)?;
        Ok(
            Queue::with_journal(Journal::new(Arc::clone(&self.log), id), Vec::new(), 0)
                .with_spill(Arc::clone(&self.spill)),
        )
    }

    /// A transient queue that can page bodies out to this store's spill log under memory
    /// pressure ([`Queue::page_out`]); otherwise the same as [`Queue::new`]. Nothing of it
    /// survives a restart.
    pub fn transient_queue(&self) -> Queue {
        Queue::new().with_spill(Arc::clone(&self.spill))
    }

    /// Deletes a durable queue: its definition (and bindings to it) are removed, synced, and its
    /// logged messages no longer count, so their segments can be reclaimed.
    pub fn delete_queue(
        &self,
        vhost: &ShortString,
        name: &ShortString,
        mut queue: Queue,
    ) -> Result<(), StoreError> {
        self.definitions.delete_queue(vhost, name)?;
        let _journal = queue.detach();
        Ok(())
    }

    /// Records a durable exchange (synced before returning); replaces one of the same name.
    pub fn put_exchange(&self, def: &ExchangeDef) -> Result<(), StoreError> {
        self.definitions.put_exchange(def)
    }

    /// Removes a durable exchange and the bindings from or to it (synced before returning).
    pub fn delete_exchange(
        &self,
        vhost: &ShortString,
        name: &ShortString,
    ) -> Result<(), StoreError> {
        self.definitions.delete_exchange(vhost, name)
    }

    /// Records a durable binding (synced before returning); adding it twice keeps one.
    pub fn put_binding(&self, def: &BindingDef) -> Result<(), StoreError> {
        self.definitions.put_binding(def)
    }

    /// Removes a durable binding (synced before returning).
    pub fn delete_binding(&self, def: &BindingDef) -> Result<(), StoreError> {
        self.definitions.delete_binding(def)
    }

    /// Writes and fdatasyncs every record appended so far, by any queue (group commit), then
    /// reclaims segments whose messages are all gone. Returns the `Lsn` now durable: every
    /// [`crate::Pushed::lsn`] up to it may be confirmed. On `Err`, confirms waiting on an `Lsn` up
    /// to [`SyncFailed::upto`] must be nacked.
    pub fn sync(&self) -> Result<Lsn, SyncFailed> {
        self.reclaim_spill();
        self.log.sync()
    }

    /// Deletes spill segments whose bodies were all read back or dropped.
    fn reclaim_spill(&self) {
        if let Err(failed) = self.spill.sync() {
            tracing::warn!(error = %failed.error, "cannot write the spill log");
        }
    }

    /// Waits up to `timeout` for records to be appended, then syncs them all; `Ok(None)` if none
    /// came. A dedicated thread loops on this and wakes the channels waiting for confirms.
    pub fn wait_and_sync(&self, timeout: Duration) -> Result<Option<Lsn>, SyncFailed> {
        let synced = self.log.wait_and_sync(timeout)?;
        if synced.is_none() {
            // Idle: a good moment to drop spill segments nobody needs.
            self.reclaim_spill();
        }
        Ok(synced)
    }

    /// Everything up to this `Lsn` is on stable storage.
    pub fn synced(&self) -> Lsn {
        self.log.synced()
    }

    /// The end of the last record appended; a sync is due while it is past [`Store::synced`].
    pub fn appended(&self) -> Lsn {
        self.log.appended()
    }

    /// Bytes the store holds on disk (log segments and definitions).
    pub fn disk_usage(&self) -> u64 {
        self.log.disk_usage() + self.definitions.len()
    }

    /// Bytes of log records appended but not yet on stable storage; they stay in memory until a
    /// sync succeeds. This grows while the disk refuses writes (full, failing): the broker should
    /// stop reading from publishers of persistent messages (and send `connection.blocked`) when
    /// it passes a limit, as RabbitMQ does below its free-disk limit.
    pub fn unsynced_bytes(&self) -> u64 {
        self.log.unsynced_bytes()
    }

    /// Number of log segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }

    /// Syncs everything and marks the data folder as cleanly closed, so the next open knows which
    /// recovered messages were never delivered. Call it last, once no queue is used any more.
    pub fn close(&self) -> Result<(), StoreError> {
        self.log.sync_for_close().map_err(|failed| failed.error)?;
        let marker = self
            .backend
            .open(CLEAN_FILE, true)
            .map_err(StoreError::io(CLEAN_FILE))?;
        marker.sync_data().map_err(StoreError::io(CLEAN_FILE))?;
        self.backend
            .sync_dir()
            .map_err(StoreError::io("data folder"))?;
        Ok(())
    }
}

/// Reads the suspect-segment bound; 0 when the file is missing, everything when unreadable.
fn read_suspect(backend: &dyn Backend) -> Result<u64, StoreError> {
    let file = match backend.open(SUSPECT_FILE, false) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(StoreError::io(SUSPECT_FILE)(error)),
    };
    let len = file.size().map_err(StoreError::io(SUSPECT_FILE))?.min(64);
    let mut contents = vec![0u8; len as usize];
    file.read_exact_at(&mut contents, 0)
        .map_err(StoreError::io(SUSPECT_FILE))?;
    match String::from_utf8_lossy(&contents).trim().parse::<u64>() {
        Ok(upto) => Ok(upto),
        Err(_) => {
            tracing::warn!(
                file = SUSPECT_FILE,
                "unreadable; all recovered messages flagged redelivered"
            );
            Ok(u64::MAX >> 24)
        }
    }
}

/// Replaces the suspect-segment bound durably (write a new file, rename it over the old one).
fn write_suspect(backend: &dyn Backend, upto: u64) -> Result<(), StoreError> {
    let tmp = format!("{SUSPECT_FILE}.tmp");
    let file = backend.open(&tmp, true).map_err(StoreError::io(&tmp))?;
    let contents = format!("{upto}\n");
    file.set_len(0)
        .and_then(|()| file.write_all_at(contents.as_bytes(), 0))
        .and_then(|()| file.sync_data())
        .and_then(|()| backend.rename(&tmp, SUSPECT_FILE))
        .and_then(|()| backend.sync_dir())
        .map_err(StoreError::io(SUSPECT_FILE))
}

/// Checks the data folder's version marker, writing it into a new (empty) folder.
fn check_version(backend: &dyn Backend) -> Result<(), StoreError> {
    let names = backend.list().map_err(StoreError::io("data folder"))?;
    if !names.iter().any(|name| name == VERSION_FILE) {
        let ours = names
            .iter()
            .any(|name| name == DEFINITIONS_FILE || name.ends_with(".seg"));
        if ours {
            return Err(StoreError::UnsupportedFormat {
                found: "no VERSION file next to store files".to_owned(),
                supported: FORMAT_VERSION,
            });
        }
        let contents = format!("{VERSION_PREFIX}{FORMAT_VERSION}\n");
        let file = backend
            .open(VERSION_FILE, true)
            .map_err(StoreError::io(VERSION_FILE))?;
        file.write_all_at(contents.as_bytes(), 0)
            .and_then(|()| file.sync_data())
            .and_then(|()| backend.sync_dir())
            .map_err(StoreError::io(VERSION_FILE))?;
        return Ok(());
    }
    let file = backend
        .open(VERSION_FILE, false)
        .map_err(StoreError::io(VERSION_FILE))?;
    let len = file.size().map_err(StoreError::io(VERSION_FILE))?.min(256);
    let mut contents = vec![0u8; len as usize];
    file.read_exact_at(&mut contents, 0)
        .map_err(StoreError::io(VERSION_FILE))?;
    let text = String::from_utf8_lossy(&contents);
    let version = text
        .trim()
        .strip_prefix(VERSION_PREFIX)
        .and_then(|number| number.parse::<u32>().ok());
    match version {
        Some(FORMAT_VERSION) => Ok(()),
        Some(old) if (OLDEST_FORMAT_VERSION..FORMAT_VERSION).contains(&old) => {
            // Everything of the older format reads as it is; new segments are of this format,
            // so the marker moves first: an older build then refuses the folder clearly.
            write_version(backend)?;
            tracing::info!(
                from = old,
                to = FORMAT_VERSION,
                "data folder format upgraded"
            );
            Ok(())
        }
        _ => Err(StoreError::UnsupportedFormat {
            found: text.trim().to_owned(),
            supported: FORMAT_VERSION,
        }),
    }
}

/// Replaces the version marker with this build's, durably (new file renamed over the old).
fn write_version(backend: &dyn Backend) -> Result<(), StoreError> {
    let tmp = format!("{VERSION_FILE}.tmp");
    let contents = format!("{VERSION_PREFIX}{FORMAT_VERSION}\n");
    let file = backend.open(&tmp, true).map_err(StoreError::io(&tmp))?;
    file.set_len(0)
        .and_then(|()| file.write_all_at(contents.as_bytes(), 0))
        .and_then(|()| file.sync_data())
        .and_then(|()| backend.rename(&tmp, VERSION_FILE))
        .and_then(|()| backend.sync_dir())
        .map_err(StoreError::io(VERSION_FILE))
}
