//! The message log: append-only segments of checksummed publish, deliver and ack records, group
//! commit, recovery and reclamation of segments whose messages are all acked.
//!
//! One log serves every durable queue of the store, so one `fdatasync` covers the records of all
//! queues written since the previous one (group commit). Positions in the log are [`Lsn`]s:
//! `segment number << 40 | byte position in the segment`, growing with every append, so "this
//! record is durable" is "the synced `Lsn` is at least the record's end".
//!
//! Reclamation. Each segment counts its *live* publish records (not yet acked). A segment with
//! none left can go, but its ack records may still matter: an ack for a message published in an
//! older segment that is still on disk (pinned by some other live message) must survive, or that
//! message would come back at the next recovery. So before deleting such a segment, its acks and
//! delivery records that point at surviving segments are appended again at the log's end (they are
//! few: only stragglers pin a segment) and synced. Deletions go oldest first, each followed by a
//! directory sync, so a crash cannot undo an older deletion while keeping a newer one.
//!
//! Failures. Bytes appended stay in memory until an fsync covers them. A failed write or fsync
//! (disk full, I/O error; after which the kernel may have dropped the dirty pages) fails that
//! sync, so its confirms are nacked, and the next sync writes the same bytes again at the same
//! place before its fsync: no record is dropped or moved, every `Lsn` stays valid, and the log
//! carries on once the disk accepts writes. Recovery stops reading a segment at its first bad
//! record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use warren_codec::ShortString;

use crate::backend::{Backend, FileHandle};
use crate::error::StoreError;
use crate::message::Message;
use crate::queue::{Lsn, OffsetMap};
use crate::record::{self, Fields, Next};

mod compact;

/// Marks a file as a Warren log segment.
const SEGMENT_MAGIC: &[u8; 8] = b"WRNSEG\r\n";
/// The segment format this build writes. Format 2 added moved records (compaction); this build
/// reads format 1 segments too, which never hold one.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The oldest segment format this build reads.
pub(crate) const OLDEST_FORMAT_VERSION: u32 = 1;
/// Magic, format version, reserved word, segment number.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 24;
/// An `Lsn` keeps the byte position in its low 40 bits (segments are far below 1 TiB).
const SEGMENT_SHIFT: u32 = 40;

/// Record kinds (the payload's first byte).
const KIND_PUBLISH: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_DELIVER: u8 = 3;
/// A message whose body another queue's publish record already holds: a fanout to several
/// durable queues writes the body once.
const KIND_ENQUEUE: u8 = 4;
/// A live publish or enqueue record copied forward by compaction: its original position (its
/// *identity*, which acks, deliveries and the queues keep using) and its payload.
const KIND_MOVED: u8 = 5;
/// Bytes a moved record adds to the payload it wraps: the kind and the original position.
const MOVED_OVERHEAD: u32 = 9;
/// Where the flags byte sits in a publish or enqueue payload (after kind, queue id, offset).
const FLAGS_AT: usize = 17;

/// Gives every log of the process an id, so a message remembers which log holds its body.
static NEXT_LOG_ID: AtomicU64 = AtomicU64::new(1);

/// Publish record flags.
const FLAG_PRIORITY: u8 = 1;
const FLAG_EXPIRES: u8 = 2;
/// The message was delivered before this record was written (a restored no-ack delivery).
const FLAG_DELIVERED: u8 = 4;
/// The message is not persistent (only in the spill log, which holds transient messages too).
const FLAG_TRANSIENT: u8 = 8;
/// Only in a moved copy of a publish record: its own queue's message is gone (acked) and the
/// copy only holds the body for other queues' enqueue records.
const FLAG_BODY_ONLY: u8 = 16;

/// Tunables of the durable store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// A new segment is started when the current one would grow past this many bytes.
    /// Smaller segments are reclaimed sooner; larger ones mean fewer files. Default 64 MiB.
    pub segment_size: u64,
    /// Appended records are written to the file once this many bytes are buffered (and at every
    /// sync). Default 256 KiB.
    pub flush_at: usize,
    /// At most this many messages per queue are loaded into memory at recovery; the bodies of
    /// the rest stay on disk and are read back when delivered (or by [`crate::Queue::page_in`]).
    /// Default 100 000.
    pub recovery_resident_per_queue: usize,
    /// A sealed segment whose live records take less than this percentage of its bytes is
    /// compacted: its live records are copied to the head of the log and it is deleted, so a
    /// few long-lived messages do not pin whole segments. 0 turns compaction off. Default 50.
    pub compact_below_percent: u8,
    /// At most this many bytes of a segment are read and copied per sync, so compaction never
    /// holds the sync thread (and the confirms waiting on it) for long. Default 1 MiB.
    pub compact_step_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            segment_size: 64 << 20,
            flush_at: 256 << 10,
            recovery_resident_per_queue: 100_000,
            compact_below_percent: 50,
            compact_step_bytes: 1 << 20,
        }
    }
}

impl StoreOptions {
    /// The same options with another recovery residency limit per queue.
    pub fn with_recovery_resident_per_queue(mut self, messages: usize) -> StoreOptions {
        self.recovery_resident_per_queue = messages;
        self
    }

    /// The same options with another segment size (at least 4 KiB, at most 1 GiB).
    pub fn with_segment_size(mut self, segment_size: u64) -> StoreOptions {
        self.segment_size = segment_size.clamp(4096, 1 << 30);
        self
    }

    /// The same options with another compaction threshold (percent of live bytes; 0 = off).
    pub fn with_compaction(mut self, below_percent: u8) -> StoreOptions {
        self.compact_below_percent = below_percent.min(100);
        self
    }

    /// The same options with another compaction step (bytes per sync, at least 4 KiB).
    pub fn with_compaction_step(mut self, bytes: usize) -> StoreOptions {
        self.compact_step_bytes = bytes.max(4096);
        self
    }
}

pub(crate) fn segment_name(number: u64) -> String {
    format!("{number:016x}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn make_lsn(segment: u64, position: u64) -> u64 {
    (segment << SEGMENT_SHIFT) | position
}

fn segment_of(lsn: u64) -> u64 {
    lsn >> SEGMENT_SHIFT
}

/// The byte position part of an `Lsn`.
const POSITION_MASK: u64 = (1 << SEGMENT_SHIFT) - 1;

/// Why a sync did not make everything durable. Every record appended before the failed sync,
/// up to `upto`, may be lost: the broker nacks the confirms waiting on them.
#[derive(Debug, thiserror::Error)]
#[error("sync failed (records up to {upto:?} may be lost): {error}")]
pub struct SyncFailed {
    /// Confirms waiting for an `Lsn` up to this one cannot be sent: nack them.
    pub upto: Lsn,
    /// What went wrong.
    #[source]
    pub error: StoreError,
}

/// One publish, enqueue or moved record of a segment, and how many queue entries need it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Where the record ends in its segment (what its `Lsn` holds).
    end: u32,
    /// The record's length, header included.
    len: u32,
    /// Queue entries that need it (its own queue's, and one per enqueue record pointing at its
    /// body), in the low 30 bits; [`Slot::DELIVERED`] says a delivery of it was recorded, and
    /// [`Slot::OWN_GONE`] that its own queue's entry is gone (only the body is still needed).
    refs: u32,
}

impl Slot {
    const DELIVERED: u32 = 1 << 31;
    const OWN_GONE: u32 = 1 << 30;
    const COUNT: u32 = Slot::OWN_GONE - 1;

    fn refs(&self) -> u32 {
        self.refs & Slot::COUNT
    }

    fn own_gone(&self) -> bool {
        self.refs & Slot::OWN_GONE != 0
    }

    fn delivered(&self) -> bool {
        self.refs & Slot::DELIVERED != 0
    }
}

/// What the log knows about one segment file.
#[derive(Debug, Default)]
struct SegmentState {
    /// Queue entries that need one of its records (the sum of its slots' references).
    live: u64,
    /// Bytes of its records that some queue entry needs.
    live_bytes: u64,
    /// Its publish, enqueue and moved records, by position (appended in order, so sorted). At
    /// recovery only the live ones are kept.
    slots: Vec<Slot>,
    /// Segments (identities: see [`KIND_MOVED`]) holding publishes that this segment's acks and
    /// delivery records refer to.
    targets: BTreeSet<u64>,
    /// Bytes in the file.
    len: u64,
}

impl SegmentState {
    fn slot_index(&self, end: u64) -> Option<usize> {
        let end = u32::try_from(end).ok()?;
        self.slots.binary_search_by_key(&end, |slot| slot.end).ok()
    }
}

/// The bytes of one segment that are not known to be durable yet. They stay in memory until an
/// fsync covers them, so that after a failed write or fsync (when the kernel may have dropped
/// dirty pages) the next sync writes them again at the same place: no record is ever dropped or
/// moved, and every `Lsn` handed out stays valid.
struct Tail {
    /// The segment's number.
    number: u64,
    /// Its file.
    file: Arc<dyn FileHandle>,
    /// File offset of `bytes[0]`; everything before it is synced.
    start: u64,
    /// Appended bytes from `start` on.
    bytes: Vec<u8>,
    /// How many of `bytes` were written to the file (0 again after a failed fsync).
    written: usize,
}

impl Tail {
    fn new(number: u64, file: Arc<dyn FileHandle>) -> Tail {
        let mut bytes = Vec::new();
        write_segment_header(&mut bytes, number);
        Tail {
            number,
            file,
            start: 0,
            bytes,
            written: 0,
        }
    }

    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }

    /// Writes what the file does not have yet.
    fn write(&mut self) -> std::io::Result<()> {
        if let Some(unwritten) = self.bytes.get(self.written..)
            && !unwritten.is_empty()
        {
            self.file
                .write_all_at(unwritten, self.start + self.written as u64)?;
            self.written = self.bytes.len();
        }
        Ok(())
    }

    /// The first `len` bytes are durable: forget them.
    fn synced(&mut self, len: usize) {
        let len = len.min(self.bytes.len());
        self.bytes.drain(..len);
        self.start += len as u64;
        self.written = self.written.saturating_sub(len);
    }
}

/// The appending side, behind one lock held only to copy a record into the buffer.
struct Writer {
    /// The segment being appended to.
    current: Tail,
    /// Older segments with bytes not synced yet.
    sealed: Vec<Tail>,
    /// Every segment on disk, the current one included.
    segments: BTreeMap<u64, SegmentState>,
    /// A segment file was created since the last directory sync.
    dir_dirty: bool,
    /// A write, fsync or segment creation failed; the next sync reports it.
    failed: Option<StoreError>,
    /// The largest `Lsn` handed out; a failed sync covers everything up to it.
    handed_out: u64,
    /// A thread waits in `wait_and_sync` for records to arrive.
    sync_waiting: bool,
    /// Length of the last record appended, header included.
    last_record_len: u32,
    /// Records copied forward by compaction: identity (original `Lsn`) to where the copy ends.
    /// Only entries some queue still needs are kept.
    moved: OffsetMap<u64>,
    /// For an identity segment, the segments holding copies of its records (live or not): acks
    /// referring to it matter while one of them is on disk.
    moved_to: BTreeMap<u64, BTreeSet<u64>>,
    /// A compacted segment may be deleted only once a sync reached this `Lsn` (its copies and
    /// the acks carried from it are durable).
    holds: BTreeMap<u64, u64>,
    /// The segment being compacted and the position in it to continue from.
    compacting: Option<(u64, u64)>,
}

impl Writer {
    /// Where the record with this identity is now.
    fn resolve(&self, identity: u64) -> u64 {
        self.moved.get(&identity).copied().unwrap_or(identity)
    }

    /// The slot of the record with this identity: (its segment, its index).
    fn slot_of(&self, identity: u64) -> Option<(u64, usize)> {
        let physical = self.resolve(identity);
        let segment = segment_of(physical);
        let index = self
            .segments
            .get(&segment)?
            .slot_index(physical & POSITION_MASK)?;
        Some((segment, index))
    }

    /// Records a new publish, enqueue or moved record ending at `end` and needed `refs` times.
    fn add_slot(&mut self, end: u64, len: u32, refs: u32) {
        let Some(state) = self.segments.get_mut(&segment_of(end)) else {
            return;
        };
        let Ok(position) = u32::try_from(end & POSITION_MASK) else {
            return;
        };
        state.slots.push(Slot {
            end: position,
            len,
            refs,
        });
        let count = refs & Slot::COUNT;
        state.live += u64::from(count);
        if count > 0 {
            state.live_bytes += u64::from(len);
        }
    }

    /// One more queue entry needs the record with this identity (a fanout's enqueue record
    /// pointing at its body). `false` if no entry needs it any more (it may be gone soon).
    fn add_ref(&mut self, identity: u64) -> bool {
        let Some((segment, index)) = self.slot_of(identity) else {
            return false;
        };
        let Some(state) = self.segments.get_mut(&segment) else {
            return false;
        };
        let Some(slot) = state.slots.get_mut(index) else {
            return false;
        };
        if slot.refs() == 0 || slot.refs() == Slot::COUNT {
            return false;
        }
        slot.refs += 1;
        state.live += 1;
        true
    }

    /// A queue entry no longer needs the record with this identity (acked, purged, deleted):
    /// its own queue's entry (`own`), or another queue's entry whose body it holds.
    fn release(&mut self, identity: u64, own: bool) {
        let Some((segment, index)) = self.slot_of(identity) else {
            return;
        };
        let Some(state) = self.segments.get_mut(&segment) else {
            return;
        };
        let Some(slot) = state.slots.get_mut(index) else {
            return;
        };
        if slot.refs() == 0 {
            return;
        }
        slot.refs -= 1;
        if own {
            slot.refs |= Slot::OWN_GONE;
        }
        state.live = state.live.saturating_sub(1);
        if slot.refs() == 0 {
            state.live_bytes = state.live_bytes.saturating_sub(u64::from(slot.len));
            self.moved.remove(&identity);
        }
    }

    /// A delivery of the record with this identity was recorded (a copy carries the flag).
    fn mark_delivered(&mut self, identity: u64) {
        if let Some((segment, index)) = self.slot_of(identity)
            && let Some(slot) = self
                .segments
                .get_mut(&segment)
                .and_then(|state| state.slots.get_mut(index))
        {
            slot.refs |= Slot::DELIVERED;
        }
    }

    /// Whether acks and delivery records referring to identity segment `target` still matter:
    /// some record of it is on disk outside the segments in `doomed`.
    fn stays(&self, target: u64, doomed: &BTreeSet<u64>) -> bool {
        let present =
            |segment: &u64| self.segments.contains_key(segment) && !doomed.contains(segment);
        present(&target)
            || self
                .moved_to
                .get(&target)
                .is_some_and(|copies| copies.iter().any(present))
    }

    fn end_lsn(&self) -> u64 {
        make_lsn(self.current.number, self.current.end())
    }

    /// Writes the current segment's unwritten bytes to its file.
    fn flush(&mut self) {
        if let Err(error) = self.current.write() {
            tracing::error!(%error, segment = self.current.number, "write to the message log failed");
            // A partial write is overwritten by the retry, from the same bytes.
            self.failed = Some(StoreError::Io {
                file: segment_name(self.current.number),
                source: error,
            });
        }
    }

    /// Seals the current segment and starts the next one.
    fn roll(&mut self, backend: &dyn Backend) {
        let next = self.current.number + 1;
        let name = segment_name(next);
        match backend.open(&name, true) {
            Ok(file) => {
                let sealed = std::mem::replace(&mut self.current, Tail::new(next, file));
                if let Some(state) = self.segments.get_mut(&sealed.number) {
                    state.len = sealed.end();
                }
                if !sealed.bytes.is_empty() {
                    self.sealed.push(sealed);
                }
                self.dir_dirty = true;
                self.segments.insert(next, SegmentState::default());
            }
            Err(error) => {
                // Keep appending to the current segment; the next append past the size retries.
                tracing::error!(%error, file = %name, "cannot create a log segment");
                self.failed = Some(StoreError::Io {
                    file: name,
                    source: error,
                });
            }
        }
    }

    /// Appends one record built by `encode`; returns the `Lsn` of its end.
    fn append(
        &mut self,
        backend: &dyn Backend,
        options: &StoreOptions,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> u64 {
        let mark = record::begin(&mut self.current.bytes);
        encode(&mut self.current.bytes);
        record::finish(&mut self.current.bytes, mark);
        let record_len = (self.current.bytes.len() - mark) as u64;
        self.last_record_len = u32::try_from(record_len).unwrap_or(u32::MAX);
        let start = self.current.start + mark as u64;
        if start + record_len > options.segment_size && start > SEGMENT_HEADER_LEN {
            let record = self.current.bytes.split_off(mark);
            self.roll(backend);
            self.current.bytes.extend_from_slice(&record);
        }
        let end = self.end_lsn();
        if self.current.bytes.len() - self.current.written >= options.flush_at {
            self.flush();
        }
        self.handed_out = self.handed_out.max(end);
        end
    }
}

fn write_segment_header(buffer: &mut Vec<u8>, number: u64) {
    buffer.extend_from_slice(SEGMENT_MAGIC);
    buffer.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    buffer.extend_from_slice(&0u32.to_le_bytes());
    buffer.extend_from_slice(&number.to_le_bytes());
}

/// The shared message log. Queues append through [`Journal`]; the broker's sync thread calls
/// [`Log::sync`].
pub(crate) struct Log {
    backend: Arc<dyn Backend>,
    options: StoreOptions,
    writer: Mutex<Writer>,
    /// Wakes a thread in `wait_and_sync` when records arrive.
    appended: Condvar,
    /// One sync at a time; appends continue while it runs.
    sync_lock: Mutex<()>,
    /// Everything up to this `Lsn` is on stable storage.
    synced: AtomicU64,
    /// Open segment files for reading paged-out bodies, by segment number.
    readers: Mutex<HashMap<u64, Arc<dyn FileHandle>>>,
    /// A spill log: bodies paged out of memory that need no durability. Its syncs write but
    /// never fsync, and it is wiped at every start.
    volatile: bool,
    /// This log's id in the process (see `Message::logged`).
    id: u64,
    /// Segments compaction could not read: left alone (until they are reclaimed).
    compact_failed: Mutex<BTreeSet<u64>>,
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("synced", &self.synced.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One message found by recovery.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) offset: u64,
    /// `None` when only its position was kept (past the residency limit).
    pub(crate) message: Option<Arc<Message>>,
    pub(crate) body_len: u64,
    pub(crate) redelivered: bool,
    /// The `Lsn` of the end of its publish record.
    pub(crate) lsn: u64,
    /// The length of the record holding the body, header included.
    pub(crate) record_len: u32,
    /// End of another queue's publish record holding the body; 0 when its own record does.
    pub(crate) body_lsn: u64,
    /// Its deadline, when it has one and its own record holds it (not for an enqueue record:
    /// such a message expires when it reaches the head).
    pub(crate) expires_at_ms: Option<u64>,
}

/// Where [`Log::publish`] put a message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published {
    /// End of the queue's own record (publish or enqueue): what a confirm waits for and what
    /// acks refer to.
    pub(crate) lsn: u64,
    /// End of the publish record holding the body when it is another queue's; 0 when the own
    /// record holds it.
    pub(crate) body_lsn: u64,
    /// Length of the record holding the body.
    pub(crate) body_len: u32,
}

/// A message during the scan: its publish record's end and whether a delivery was recorded.
struct Pending {
    /// Decoded only while the queue is under the residency limit (never for an enqueue record).
    message: Option<Message>,
    body_len: u64,
    lsn: u64,
    record_len: u32,
    /// End of the publish record holding the body, for an enqueue record; else 0.
    body_lsn: u64,
    delivered: bool,
    /// The deadline in a publish record (even when the message is not decoded).
    expires_at_ms: Option<u64>,
}

/// What recovery found, per queue id.
#[derive(Debug, Default)]
pub(crate) struct RecoveredLog {
    /// Live messages per queue id, in offset order.
    pub(crate) queues: HashMap<u64, Vec<Recovered>>,
    /// The smallest offset each queue may use next (past every offset seen in the log).
    pub(crate) next_offsets: HashMap<u64, u64>,
    /// Records cut off or skipped because they were torn or corrupt.
    pub(crate) bad_records: u64,
    /// Bytes cut from the end of the last segment.
    pub(crate) truncated_bytes: u64,
    /// Messages published in segments up to this number may have been delivered before an
    /// unclean stop.
    pub(crate) suspect_upto: u64,
    /// Publish records replaced by a later publish of the same message, by (queue id, offset,
    /// segment), and whether an ack for them was found.
    pub(crate) superseded: HashMap<(u64, u64, u64), bool>,
}

/// A publish record's fields, as [`decode_publish`] returns them.
struct DecodedPublish {
    queue_id: u64,
    offset: u64,
    /// Only if asked for.
    message: Option<Message>,
    body_len: u64,
    delivered: bool,
    expires_at_ms: Option<u64>,
}

/// Decodes a publish record; the message itself only if `load`.
fn decode_publish(payload: &[u8], load: bool) -> Option<DecodedPublish> {
    let mut fields = Fields::new(payload);
    let _kind = fields.u8()?;
    let queue_id = fields.u64()?;
    let offset = fields.u64()?;
    let flags = fields.u8()?;
    let priority = fields.u8()?;
    let expires = fields.u64()?;
    let base = fields.pos();
    let exchange_len = fields.short()?.len();
    let exchange_end = fields.pos();
    let routing_key_len = fields.short()?.len();
    let routing_key_end = fields.pos();
    let properties_len = fields.long()?.len();
    let properties_end = fields.pos();
    let body_len = fields.long()?.len();
    let body_end = fields.pos();
    if !fields.is_done() {
        return None;
    }
    let delivered = flags & FLAG_DELIVERED != 0;
    let expires_at_ms = (flags & FLAG_EXPIRES != 0).then_some(expires);
    let mut decoded = DecodedPublish {
        queue_id,
        offset,
        message: None,
        body_len: body_len as u64,
        delivered,
        expires_at_ms,
    };
    if !load {
        return Some(decoded);
    }
    // One allocation per message: the strings and buffers are slices of it.
    let shared = Bytes::copy_from_slice(payload.get(base..)?);
    let slice = |end: usize, len: usize| shared.slice(end - len - base..end - base);
    let message = Message {
        exchange: ShortString::from_bytes(slice(exchange_end, exchange_len)).ok()?,
        routing_key: ShortString::from_bytes(slice(routing_key_end, routing_key_len)).ok()?,
        properties: slice(properties_end, properties_len),
        body: slice(body_end, body_len),
        persistent: flags & FLAG_TRANSIENT == 0,
        priority: (flags & FLAG_PRIORITY != 0).then_some(priority),
        expires_at_ms,
        logged: std::sync::OnceLock::new(),
    };
    decoded.message = Some(message);
    Some(decoded)
}

/// An ack or delivery record: queue, offset, and the segment holding the publish it refers to.
fn decode_ref(payload: &[u8]) -> Option<(u64, u64, u64)> {
    let mut fields = Fields::new(payload);
    let _kind = fields.u8()?;
    let queue_id = fields.u64()?;
    let offset = fields.u64()?;
    let target = fields.u64()?;
    fields.is_done().then_some((queue_id, offset, target))
}

/// A moved record: the identity (end of the original record) and the original payload.
fn decode_moved(payload: &[u8]) -> Option<(u64, &[u8])> {
    let mut fields = Fields::new(payload);
    let _kind = fields.u8()?;
    let identity = fields.u64()?;
    let inner = payload.get(MOVED_OVERHEAD as usize..)?;
    matches!(inner.first(), Some(&(KIND_PUBLISH | KIND_ENQUEUE))).then_some((identity, inner))
}

/// The message of a publish record read back (`data` is the whole record), or of the moved
/// copy of one.
fn decode_read(data: &[u8], moved: bool) -> Result<Message, &'static str> {
    match record::next(data, 0) {
        Next::Record(payload, _) => {
            let payload = if moved {
                decode_moved(payload).map_or(&[][..], |(_, inner)| inner)
            } else {
                payload
            };
            match decode_publish(payload, true) {
                Some(DecodedPublish {
                    message: Some(message),
                    ..
                }) => Ok(message),
                _ => Err("not a publish record"),
            }
        }
        Next::Bad(reason) => Err(reason),
        Next::End => Err("empty record"),
    }
}

fn encode_ref(buf: &mut Vec<u8>, kind: u8, queue_id: u64, offset: u64, target: u64) {
    buf.push(kind);
    record::put_u64(buf, queue_id);
    record::put_u64(buf, offset);
    record::put_u64(buf, target);
}

impl Log {
    /// Opens the log in `backend`: replays every segment, cuts off a torn tail, and starts a
    /// fresh segment for new records. `live_queues` are the queue ids that still exist; records
    /// of other queues are dead. Messages published in segments up to `suspect_upto` may have
    /// been delivered before an unclean stop; `clean` says the previous run closed the store
    /// cleanly, otherwise every existing segment becomes suspect too. Other messages count as
    /// delivered only with a delivery record.
    pub(crate) fn open(
        backend: Arc<dyn Backend>,
        options: StoreOptions,
        live_queues: &BTreeSet<u64>,
        clean: bool,
        suspect_upto: u64,
    ) -> Result<(Log, RecoveredLog), StoreError> {
        let names = backend.list().map_err(StoreError::io("data folder"))?;
        let mut numbers: Vec<u64> = names
            .iter()
            .filter_map(|name| parse_segment_name(name))
            .collect();
        numbers.sort_unstable();

        let mut scan = Scan::default();
        let mut segments: BTreeMap<u64, SegmentState> = BTreeMap::new();
        let mut report = RecoveredLog::default();
        let last = numbers.last().copied();
        let suspect_upto = if clean {
            suspect_upto
        } else {
            suspect_upto.max(last.unwrap_or(0))
        };
        report.suspect_upto = suspect_upto;

        for &number in &numbers {
            let name = segment_name(number);
            let file = backend.open(&name, false).map_err(StoreError::io(&name))?;
            let len = file.size().map_err(StoreError::io(&name))?;
            let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
            file.read_exact_at(&mut data, 0)
                .map_err(StoreError::io(&name))?;
            // What recovery hands out must survive a power loss from now on, even if the previous
            // run died before syncing it (the page cache still held it). A clean close synced it.
            if !clean {
                file.sync_data().map_err(StoreError::io(&name))?;
            }
            let mut state = SegmentState {
                len,
                ..SegmentState::default()
            };
            let is_last = Some(number) == last;
            let format = data
                .get(8..12)
                .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
                .map(u32::from_le_bytes);
            let header_ok = data.get(0..8) == Some(&SEGMENT_MAGIC[..])
                && format.is_some_and(|format| {
                    (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&format)
                })
                && data.get(16..24) == Some(&number.to_le_bytes()[..]);
            if !header_ok {
                if data.len() < SEGMENT_HEADER_LEN as usize
                    && data.iter().zip(SEGMENT_MAGIC).all(|(a, b)| a == b)
                {
                    // Created, then the crash came before its header was written whole.
                    tracing::warn!(file = %name, "log segment with a torn header ignored");
                } else if data.get(0..8) == Some(&SEGMENT_MAGIC[..]) {
                    return Err(StoreError::UnsupportedFormat {
                        found: format!(
                            "segment {name} format {:?}",
                            data.get(8..12).unwrap_or(&[])
                        ),
                        supported: FORMAT_VERSION,
                    });
                } else {
                    tracing::error!(file = %name, "log segment with a bad header skipped");
                    report.bad_records += 1;
                }
                segments.insert(number, state);
                continue;
            }
            let mut pos = SEGMENT_HEADER_LEN as usize;
            loop {
                match record::next(&data, pos) {
                    Next::End => break,
                    Next::Record(payload, after) => {
                        let lsn = make_lsn(number, after as u64);
                        apply_record(
                            payload,
                            lsn,
                            live_queues,
                            &mut scan,
                            &mut state,
                            &mut report,
                            &name,
                            pos,
                            options.recovery_resident_per_queue,
                        );
                        pos = after;
                    }
                    Next::Bad(reason) => {
                        report.bad_records += 1;
                        if is_last {
                            let cut = data.len() - pos;
                            tracing::warn!(file = %name, offset = pos, cut, reason,
                                "torn or corrupt tail of the message log cut off");
                            file.set_len(pos as u64).map_err(StoreError::io(&name))?;
                            file.sync_data().map_err(StoreError::io(&name))?;
                            report.truncated_bytes += cut as u64;
                            state.len = pos as u64;
                        } else {
                            tracing::error!(file = %name, offset = pos, reason,
                                "corrupt record in the message log: the rest of this segment is skipped");
                        }
                        break;
                    }
                }
            }
            segments.insert(number, state);
        }

        // Count what survived, per record, and hand it out per queue in offset order. A record
        // is where its latest copy is, if compaction moved it.
        let Scan {
            pending,
            next_offsets,
            locations,
            moved_to,
        } = scan;
        let mut moved = OffsetMap::default();
        // Takes one reference on the record with this identity; `false` if it is not on disk.
        let mut take = |identity: u64,
                        own: bool,
                        delivered: bool,
                        segments: &mut BTreeMap<u64, SegmentState>| {
            let physical = locations.get(&identity).copied().unwrap_or(identity);
            let Some(state) = segments.get_mut(&segment_of(physical)) else {
                return false;
            };
            let Some(slot) = state
                .slot_index(physical & POSITION_MASK)
                .and_then(|index| state.slots.get_mut(index))
            else {
                return false;
            };
            if slot.refs() == 0 {
                state.live_bytes += u64::from(slot.len);
            }
            slot.refs += 1;
            if own {
                slot.refs &= !Slot::OWN_GONE;
            }
            if delivered {
                slot.refs |= Slot::DELIVERED;
            }
            state.live += 1;
            if physical != identity {
                moved.insert(identity, physical);
            }
            true
        };
        for (queue_id, messages) in pending {
            let mut recovered: Vec<Recovered> = Vec::with_capacity(messages.len());
            for (offset, pending) in messages {
                // An enqueue record whose body is gone cannot be delivered: that message was
                // never confirmed (its body record came first in the log).
                if pending.body_lsn != 0 && !take(pending.body_lsn, false, false, &mut segments) {
                    continue;
                }
                take(pending.lsn, true, pending.delivered, &mut segments);
                recovered.push(Recovered {
                    offset,
                    message: pending.message.map(Arc::new),
                    body_len: pending.body_len,
                    redelivered: pending.delivered || segment_of(pending.lsn) <= suspect_upto,
                    lsn: pending.lsn,
                    record_len: pending.record_len,
                    body_lsn: pending.body_lsn,
                    expires_at_ms: pending.expires_at_ms,
                });
            }
            recovered.sort_unstable_by_key(|recovered| recovered.offset);
            report.queues.insert(queue_id, recovered);
        }
        // Only live records need a slot from now on.
        for state in segments.values_mut() {
            state.slots.retain(|slot| slot.refs() > 0);
            state.slots.shrink_to_fit();
        }
        report.next_offsets = next_offsets;

        // Numbers never go back, even when every segment was reclaimed.
        let current = last.unwrap_or(0).max(suspect_upto) + 1;
        let name = segment_name(current);
        let current_file = backend.open(&name, true).map_err(StoreError::io(&name))?;
        segments.insert(current, SegmentState::default());
        let writer = Writer {
            current: Tail::new(current, current_file),
            sealed: Vec::new(),
            segments,
            dir_dirty: true,
            failed: None,
            handed_out: make_lsn(current, SEGMENT_HEADER_LEN),
            sync_waiting: false,
            last_record_len: 0,
            moved,
            moved_to,
            holds: BTreeMap::new(),
            compacting: None,
        };
        let log = Log {
            backend,
            options,
            writer: Mutex::new(writer),
            appended: Condvar::new(),
            sync_lock: Mutex::new(()),
            synced: AtomicU64::new(0),
            readers: Mutex::new(HashMap::new()),
            volatile: false,
            id: NEXT_LOG_ID.fetch_add(1, Ordering::Relaxed),
            compact_failed: Mutex::new(BTreeSet::new()),
        };
        {
            let mut writer = log.writer.lock();
            let mut repairs: Vec<_> = report
                .superseded
                .drain()
                .filter(|(_, acked)| !acked)
                .map(|(key, _)| key)
                .collect();
            repairs.sort_unstable();
            for (queue_id, offset, target) in repairs {
                let lsn = writer.append(&*log.backend, &log.options, |buf| {
                    encode_ref(buf, KIND_ACK, queue_id, offset, target)
                });
                Log::add_target(&mut writer, lsn, target);
            }
        }
        // Make the new segment (and any repairs) durable and drop what recovery found dead.
        log.sync().map_err(|failed| failed.error)?;
        Ok((log, report))
    }

    /// Opens an empty spill log in `backend` (a namespace of the data folder), deleting what a
    /// previous run left there.
    pub(crate) fn open_spill(
        backend: Arc<dyn Backend>,
        options: StoreOptions,
    ) -> Result<Log, StoreError> {
        for name in backend.list().map_err(StoreError::io("spill files"))? {
            backend.remove(&name).map_err(StoreError::io(&name))?;
        }
        let (mut log, _) = Log::open(backend, options, &BTreeSet::new(), true, 0)?;
        log.volatile = true;
        Ok(log)
    }

    fn add_target(writer: &mut Writer, record_lsn: u64, target: u64) {
        let here = segment_of(record_lsn);
        let known = writer.segments.contains_key(&target) || writer.moved_to.contains_key(&target);
        if here != target
            && known
            && let Some(state) = writer.segments.get_mut(&here)
        {
            state.targets.insert(target);
        }
    }

    /// Logs a message for a queue. If this log already holds its body (the same `Arc<Message>`
    /// pushed to another durable queue), only a small enqueue record pointing at it is written.
    pub(crate) fn publish(
        &self,
        queue_id: u64,
        offset: u64,
        message: &Message,
        delivered: bool,
    ) -> Published {
        let mut writer = self.writer.lock();
        // The body's record counts one more reference (if some queue still needs it: a record
        // nobody needs may be deleted or left behind by compaction at any moment).
        let shared = message
            .logged
            .get()
            .filter(|(log, body_lsn, _)| *log == self.id && writer.add_ref(*body_lsn))
            .map(|(_, body_lsn, body_len)| (*body_lsn, *body_len));
        let published = match shared {
            Some((body_lsn, body_len)) => {
                let lsn = writer.append(&*self.backend, &self.options, |buf| {
                    encode_enqueue(
                        buf,
                        queue_id,
                        offset,
                        delivered,
                        (body_lsn, body_len),
                        message.body_len(),
                    )
                });
                Published {
                    lsn,
                    body_lsn,
                    body_len,
                }
            }
            None => {
                let lsn = writer.append(&*self.backend, &self.options, |buf| {
                    encode_publish(buf, queue_id, offset, message, delivered)
                });
                let body_len = writer.last_record_len;
                if !self.volatile {
                    let _first = message.logged.set((self.id, lsn, body_len));
                }
                Published {
                    lsn,
                    body_lsn: 0,
                    body_len,
                }
            }
        };
        let own_len = writer.last_record_len;
        writer.add_slot(published.lsn, own_len, 1);
        if writer.sync_waiting {
            writer.sync_waiting = false;
            self.appended.notify_one();
        }
        published
    }

    /// Reads back the message of the publish record that ends at `lsn` and is `record_len`
    /// bytes long (a paged-out body). The record must have been written (it was synced).
    pub(crate) fn read_publish(&self, lsn: u64, record_len: u32) -> Result<Message, StoreError> {
        // Compaction may move the record (and delete its segment) while we read: a failed read
        // looks the record up again, and tries again if it moved meanwhile.
        let mut physical = self.writer.lock().resolve(lsn);
        loop {
            let result = self.read_record_at(physical, lsn != physical, record_len);
            if result.is_ok() {
                return result;
            }
            let now = self.writer.lock().resolve(lsn);
            if now == physical {
                return result;
            }
            physical = now;
        }
    }

    /// Reads back the messages of several publish records, each given as (identity `Lsn`,
    /// length), with one `pread` per run of records that lie close together in one segment (a
    /// paged-out backlog is mostly consecutive records), instead of one per message. Records
    /// compaction moved are read where they are now; one whose copy is still only in memory, or
    /// whose run cannot be read (its segment was deleted meanwhile), is read alone through
    /// [`Log::read_publish`]. Returns the messages of a prefix of `records`, and the error that
    /// stopped it early, if any.
    pub(crate) fn read_publishes(
        &self,
        records: &[(u64, u32)],
    ) -> (Vec<Message>, Option<StoreError>) {
        /// Bytes between two records read (and thrown away) rather than starting a new read.
        const MAX_GAP: u64 = 64 << 10;
        /// The most bytes one read covers.
        const MAX_SPAN: u64 = 4 << 20;
        /// Where a record is: its end, its length there, and whether it is a moved copy; `None`
        /// when its bytes are still in the log's memory buffer.
        type Located = Option<(u64, u32, bool)>;
        let located: Vec<Located> = {
            let writer = self.writer.lock();
            records
                .iter()
                .map(|&(identity, len)| {
                    let physical = writer.resolve(identity);
                    let moved = physical != identity;
                    let len = if moved {
                        len.saturating_add(MOVED_OVERHEAD)
                    } else {
                        len
                    };
                    let start = (physical & POSITION_MASK).saturating_sub(u64::from(len));
                    let buffered = std::iter::once(&writer.current)
                        .chain(writer.sealed.iter())
                        .any(|tail| tail.number == segment_of(physical) && start >= tail.start);
                    (!buffered).then_some((physical, len, moved))
                })
                .collect()
        };
        let mut messages = Vec::with_capacity(records.len());
        let read_alone = |messages: &mut Vec<Message>, index: usize| {
            let (identity, len) = records.get(index).copied().unwrap_or_default();
            self.read_publish(identity, len)
                .map(|message| messages.push(message))
        };
        let mut first = 0;
        while first < records.len() {
            let Some(Some((lsn, len, _))) = located.get(first).copied() else {
                if let Err(error) = read_alone(&mut messages, first) {
                    return (messages, Some(error));
                }
                first += 1;
                continue;
            };
            let segment = segment_of(lsn);
            let span_start = (lsn & POSITION_MASK).saturating_sub(u64::from(len));
            let mut span_end = lsn & POSITION_MASK;
            let mut last = first + 1;
            while let Some(Some((next_lsn, next_len, _))) = located.get(last).copied() {
                let end = next_lsn & POSITION_MASK;
                let fits = segment_of(next_lsn) == segment
                    && end
                        .checked_sub(u64::from(next_len))
                        .is_some_and(|start| start >= span_end && start - span_end <= MAX_GAP)
                    && end - span_start <= MAX_SPAN;
                if !fits {
                    break;
                }
                span_end = end;
                last += 1;
            }
            let Ok(data) = self.read_span(segment, span_start, span_end - span_start) else {
                // Perhaps compacted and deleted meanwhile: one by one, each looked up again.
                for index in first..last {
                    if let Err(error) = read_alone(&mut messages, index) {
                        return (messages, Some(error));
                    }
                }
                first = last;
                continue;
            };
            for index in first..last {
                let Some(Some((lsn, len, moved))) = located.get(index).copied() else {
                    break;
                };
                let at = usize::try_from(
                    (lsn & POSITION_MASK).saturating_sub(u64::from(len)) - span_start,
                )
                .unwrap_or(usize::MAX);
                let record = data
                    .get(at..at.saturating_add(len as usize))
                    .unwrap_or_default();
                match decode_read(record, moved) {
                    Ok(message) => messages.push(message),
                    Err(reason) => {
                        let error = StoreError::Corrupt {
                            file: segment_name(segment),
                            offset: (lsn & POSITION_MASK).saturating_sub(u64::from(len)),
                            reason: reason.to_owned(),
                        };
                        return (messages, Some(error));
                    }
                }
            }
            first = last;
        }
        (messages, None)
    }

    /// Reads the publish record (or the moved copy of one, which is [`MOVED_OVERHEAD`] bytes
    /// longer) ending at `physical`; `record_len` is the original record's length.
    fn read_record_at(
        &self,
        physical: u64,
        moved: bool,
        record_len: u32,
    ) -> Result<Message, StoreError> {
        let segment = segment_of(physical);
        let name = segment_name(segment);
        let end = physical & POSITION_MASK;
        let len = if moved {
            record_len.saturating_add(MOVED_OVERHEAD)
        } else {
            record_len
        };
        let start = end
            .checked_sub(u64::from(len))
            .ok_or_else(|| StoreError::Corrupt {
                file: name.clone(),
                offset: end,
                reason: "record length past the segment start".to_owned(),
            })?;
        let corrupt = |reason: &str| StoreError::Corrupt {
            file: name.clone(),
            offset: start,
            reason: reason.to_owned(),
        };
        // A copy made by compaction may not be written to the file yet: read it from memory.
        let buffered = {
            let writer = self.writer.lock();
            std::iter::once(&writer.current)
                .chain(writer.sealed.iter())
                .find(|tail| tail.number == segment && start >= tail.start)
                .map(|tail| {
                    let from = usize::try_from(start - tail.start).unwrap_or(usize::MAX);
                    tail.bytes
                        .get(from..from.saturating_add(len as usize))
                        .map(<[u8]>::to_vec)
                })
        };
        let data = match buffered {
            Some(Some(data)) => data,
            Some(None) => return Err(corrupt("record past the end of the log")),
            None => self.read_span(segment, start, u64::from(len))?,
        };
        decode_read(&data, moved).map_err(corrupt)
    }

    /// Reads `len` bytes at `start` of segment `segment` (kept open for further reads).
    fn read_span(&self, segment: u64, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let name = segment_name(segment);
        let file = {
            let mut files = self.readers.lock();
            match files.get(&segment) {
                Some(file) => Arc::clone(file),
                None => {
                    let file = self
                        .backend
                        .open(&name, false)
                        .map_err(StoreError::io(&name))?;
                    files.insert(segment, Arc::clone(&file));
                    file
                }
            }
        };
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        file.read_exact_at(&mut data, start)
            .map_err(StoreError::io(&name))?;
        Ok(data)
    }

    fn reference(&self, kind: u8, queue_id: u64, offset: u64, publish_lsn: u64, release: bool) {
        let mut writer = self.writer.lock();
        let target = segment_of(publish_lsn);
        let lsn = writer.append(&*self.backend, &self.options, |buf| {
            encode_ref(buf, kind, queue_id, offset, target)
        });
        Log::add_target(&mut writer, lsn, target);
        if release {
            writer.release(publish_lsn, true);
        } else {
            writer.mark_delivered(publish_lsn);
        }
        if writer.sync_waiting {
            writer.sync_waiting = false;
            self.appended.notify_one();
        }
    }

    pub(crate) fn ack(&self, queue_id: u64, offset: u64, publish_lsn: u64, body_lsn: u64) {
        self.reference(KIND_ACK, queue_id, offset, publish_lsn, true);
        if body_lsn != 0 {
            self.forget_body(body_lsn);
        }
    }

    pub(crate) fn deliver(&self, queue_id: u64, offset: u64, publish_lsn: u64) {
        self.reference(KIND_DELIVER, queue_id, offset, publish_lsn, false);
    }

    /// A message's queue was deleted: its publish no longer counts, and needs no record (the
    /// definitions file says the queue is gone).
    pub(crate) fn forget(&self, publish_lsn: u64) {
        self.writer.lock().release(publish_lsn, true);
    }

    /// An entry that read its body from another queue's publish record no longer needs it.
    pub(crate) fn forget_body(&self, body_lsn: u64) {
        self.writer.lock().release(body_lsn, false);
    }

    /// Everything up to this `Lsn` is on stable storage.
    pub(crate) fn synced(&self) -> Lsn {
        Lsn(self.synced.load(Ordering::Acquire))
    }

    /// The end of the last record appended.
    pub(crate) fn appended(&self) -> Lsn {
        Lsn(self.writer.lock().handed_out)
    }

    /// Writes and fdatasyncs everything appended so far (group commit), then deletes segments
    /// whose messages are all gone. Appends from other threads continue meanwhile. Returns the
    /// `Lsn` now durable.
    pub(crate) fn sync(&self) -> Result<Lsn, SyncFailed> {
        self.sync_and(true)
    }

    /// [`Log::sync`] without a compaction step (at close: nothing may be appended after it).
    pub(crate) fn sync_for_close(&self) -> Result<Lsn, SyncFailed> {
        self.sync_and(false)
    }

    fn sync_and(&self, compact: bool) -> Result<Lsn, SyncFailed> {
        let _one_sync = self.sync_lock.lock();
        let synced = self.sync_locked()?;
        self.reclaim_locked();
        if compact {
            // Its copies are synced (and the segment deleted) by the next sync.
            self.compact_step();
        }
        // Reclaiming may sync again (for the acks it carries forward), and that sync covers
        // every record appended meanwhile, publishes included. Report the furthest position:
        // the sync thread then idles (nothing handed out is unsynced), so confirms waiting on a
        // position it did not report would never be sent.
        Ok(synced.max(self.synced()))
    }

    /// The body of [`Log::sync`], with `sync_lock` held.
    fn sync_locked(&self) -> Result<Lsn, SyncFailed> {
        let (mut sealed, file, number, len, target, dir_dirty) = {
            let mut writer = self.writer.lock();
            writer.flush();
            if let Some(error) = writer.failed.take() {
                return Err(SyncFailed {
                    upto: Lsn(writer.handed_out),
                    error,
                });
            }
            let sealed = std::mem::take(&mut writer.sealed);
            let dir_dirty = std::mem::take(&mut writer.dir_dirty);
            (
                sealed,
                Arc::clone(&writer.current.file),
                writer.current.number,
                writer.current.bytes.len(),
                writer.end_lsn(),
                dir_dirty,
            )
        };
        // The fsyncs run without the writer lock: appends continue meanwhile (group commit).
        let mut result = Ok(());
        if self.volatile {
            // Spilled bodies need no durability: writing them is enough to drop them from memory.
            for tail in &mut sealed {
                if let Err(error) = tail.write() {
                    result = Err(StoreError::io(segment_name(tail.number))(error));
                }
            }
            let mut writer = self.writer.lock();
            let failed = result.is_err();
            if writer.current.number == number {
                writer.current.synced(len);
            }
            if failed {
                writer.sealed.append(&mut sealed);
            }
            writer.sealed.retain(|tail| tail.written < tail.bytes.len());
            drop(writer);
            return result.map(|()| Lsn(target)).map_err(|error| SyncFailed {
                upto: Lsn(target),
                error,
            });
        }
        if dir_dirty {
            result = self
                .backend
                .sync_dir()
                .map_err(StoreError::io("data folder"));
        }
        let mut failed_sealed = Vec::new();
        for mut tail in sealed.drain(..) {
            let synced = result.is_ok()
                && tail
                    .write()
                    .and_then(|()| tail.file.sync_data())
                    .map_err(StoreError::io(segment_name(tail.number)))
                    .map_err(|error| result = Err(error))
                    .is_ok();
            if !synced {
                // Written again in full at the next sync: the kernel may have dropped the pages.
                tail.written = 0;
                failed_sealed.push(tail);
            }
        }
        if result.is_ok() {
            result = file
                .sync_data()
                .map_err(StoreError::io(segment_name(number)));
        }
        let mut writer = self.writer.lock();
        let current_ok = result.is_ok();
        // The tail synced (or not) may have been sealed by a roll in the meantime.
        let tail = if writer.current.number == number {
            Some(&mut writer.current)
        } else {
            writer.sealed.iter_mut().find(|tail| tail.number == number)
        };
        if let Some(tail) = tail {
            if current_ok {
                tail.synced(len);
            } else {
                tail.written = 0;
            }
        }
        writer.sealed.retain(|tail| !tail.bytes.is_empty());
        failed_sealed.append(&mut writer.sealed);
        writer.sealed = failed_sealed;
        writer.sealed.sort_by_key(|tail| tail.number);
        if let Err(error) = result {
            tracing::error!(%error, "sync of the message log failed; it is retried from memory");
            writer.dir_dirty |= dir_dirty;
            return Err(SyncFailed {
                upto: Lsn(writer.handed_out),
                error,
            });
        }
        drop(writer);
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(Lsn(target))
    }

    /// Waits up to `timeout` for records to sync, then syncs them. `Ok(None)` if none came.
    /// The broker's sync thread loops on this.
    pub(crate) fn wait_and_sync(&self, timeout: Duration) -> Result<Option<Lsn>, SyncFailed> {
        if !self.compaction_due() {
            let mut writer = self.writer.lock();
            if writer.handed_out <= self.synced.load(Ordering::Acquire) && writer.failed.is_none() {
                writer.sync_waiting = true;
                let _timed_out = self.appended.wait_for(&mut writer, timeout);
                writer.sync_waiting = false;
                if writer.handed_out <= self.synced.load(Ordering::Acquire)
                    && writer.failed.is_none()
                {
                    return Ok(None);
                }
            }
        }
        self.sync().map(Some)
    }

    /// Deletes segments without live messages, oldest first, carrying forward the acks and
    /// delivery records they hold for segments that stay. Runs with `sync_lock` held.
    fn reclaim_locked(&self) {
        let synced = self.synced.load(Ordering::Acquire);
        let (doomed, carry) = {
            let writer = self.writer.lock();
            let current = writer.current.number;
            // A segment sealed after this sync began may hold records not yet written to its
            // file: carrying forward reads the file, so it waits for the next sync.
            let unsynced: BTreeSet<u64> = writer.sealed.iter().map(|tail| tail.number).collect();
            let doomed: BTreeSet<u64> = writer
                .segments
                .iter()
                .filter(|(number, state)| {
                    **number != current
                        && state.live == 0
                        && !unsynced.contains(number)
                        // A compacted segment goes once its copies are durable.
                        && writer.holds.get(number).is_none_or(|hold| *hold <= synced)
                })
                .map(|(number, _)| *number)
                .collect();
            let carry: Vec<u64> = doomed
                .iter()
                .filter(|number| {
                    writer.segments.get(number).is_some_and(|state| {
                        state
                            .targets
                            .iter()
                            .any(|target| writer.stays(*target, &doomed))
                    })
                })
                .copied()
                .collect();
            (doomed, carry)
        };
        if doomed.is_empty() {
            return;
        }
        if !carry.is_empty() {
            for number in &carry {
                if let Err(error) = self.carry_forward(*number, &doomed) {
                    tracing::warn!(%error, segment = number, "cannot carry acks forward; segment kept");
                    return;
                }
            }
            // The carried records must be durable before the originals go.
            if let Err(failed) = self.sync_locked() {
                tracing::warn!(error = %failed.error, "segments kept: the carried acks did not sync");
                return;
            }
        }
        for number in doomed {
            {
                let mut writer = self.writer.lock();
                // Nothing can point at a record nobody needs, but stay on the safe side.
                if writer
                    .segments
                    .get(&number)
                    .is_some_and(|state| state.live != 0)
                {
                    continue;
                }
                writer.segments.remove(&number);
                writer.holds.remove(&number);
                if writer
                    .compacting
                    .is_some_and(|(segment, _)| segment == number)
                {
                    writer.compacting = None;
                }
                writer.moved_to.retain(|_, copies| {
                    copies.remove(&number);
                    !copies.is_empty()
                });
            }
            self.readers.lock().remove(&number);
            let name = segment_name(number);
            let removed = self.backend.remove(&name).and_then(|()| {
                if self.volatile {
                    Ok(())
                } else {
                    self.backend.sync_dir()
                }
            });
            match removed {
                Ok(()) => tracing::debug!(file = %name, "log segment reclaimed"),
                Err(error) => tracing::warn!(%error, file = %name, "cannot remove a log segment"),
            }
        }
    }

    /// Appends again the acks and delivery records of segment `number` that refer to segments
    /// that stay (see [`Writer::stays`]).
    fn carry_forward(&self, number: u64, doomed: &BTreeSet<u64>) -> Result<(), StoreError> {
        let name = segment_name(number);
        let file = self
            .backend
            .open(&name, false)
            .map_err(StoreError::io(&name))?;
        let len = file.size().map_err(StoreError::io(&name))?;
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        file.read_exact_at(&mut data, 0)
            .map_err(StoreError::io(&name))?;
        let mut pos = SEGMENT_HEADER_LEN as usize;
        let mut carried = 0u64;
        while let Next::Record(payload, after) = record::next(&data, pos) {
            pos = after;
            if self.carry_one(number, payload, doomed).is_some() {
                carried += 1;
            }
        }
        tracing::debug!(file = %name, carried, "acks carried forward from a reclaimed segment");
        Ok(())
    }

    /// Appends a copy of `payload`, read from segment `number`, if it is an ack or delivery
    /// record that refers to a segment that stays; returns where the copy ends.
    fn carry_one(&self, number: u64, payload: &[u8], doomed: &BTreeSet<u64>) -> Option<u64> {
        let kind @ (KIND_ACK | KIND_DELIVER) = payload.first().copied()? else {
            return None;
        };
        let (queue_id, offset, target) = decode_ref(payload)?;
        // Records of a segment about its own publishes apply to records that go with it (a
        // moved copy carries the delivered flag itself).
        if target == number {
            return None;
        }
        let mut writer = self.writer.lock();
        if !writer.stays(target, doomed) {
            return None;
        }
        let lsn = writer.append(&*self.backend, &self.options, |buf| {
            encode_ref(buf, kind, queue_id, offset, target)
        });
        Log::add_target(&mut writer, lsn, target);
        Some(lsn)
    }

    /// Bytes in log segments on disk (and buffered for them).
    pub(crate) fn disk_usage(&self) -> u64 {
        let writer = self.writer.lock();
        let sealed: u64 = writer
            .segments
            .iter()
            .filter(|(number, _)| **number != writer.current.number)
            .map(|(_, state)| state.len)
            .sum();
        sealed + writer.current.end()
    }

    /// Bytes appended but not yet covered by a successful fsync (held in memory until then).
    pub(crate) fn unsynced_bytes(&self) -> u64 {
        let writer = self.writer.lock();
        let sealed: usize = writer.sealed.iter().map(|tail| tail.bytes.len()).sum();
        (sealed + writer.current.bytes.len()) as u64
    }

    /// Number of segment files.
    pub(crate) fn segment_count(&self) -> usize {
        self.writer.lock().segments.len()
    }
}

/// What recovery accumulates while it reads the segments.
#[derive(Default)]
struct Scan {
    /// Messages that are live so far, per queue id, by offset.
    pending: HashMap<u64, OffsetMap<Pending>>,
    next_offsets: HashMap<u64, u64>,
    /// Identity to where its latest copy ends, for every moved record read.
    locations: HashMap<u64, u64>,
    /// Identity segment to the segments holding copies of its records.
    moved_to: BTreeMap<u64, BTreeSet<u64>>,
}

/// Applies the publish or enqueue `payload` whose identity is `identity` (its own end, or for a
/// moved record the original's). `record_len` is the length of the record holding it.
#[allow(clippy::too_many_arguments)]
fn apply_message(
    payload: &[u8],
    identity: u64,
    moved: bool,
    live_queues: &BTreeSet<u64>,
    scan: &mut Scan,
    report: &mut RecoveredLog,
    resident_limit: usize,
) -> Option<()> {
    let (queue_id, offset, pending) = match payload.first().copied() {
        Some(KIND_PUBLISH) => {
            let resident = Fields::new(payload.get(1..).unwrap_or(&[]))
                .u64()
                .and_then(|queue_id| scan.pending.get(&queue_id))
                .map_or(0, |messages| messages.len());
            let load = resident < resident_limit;
            let DecodedPublish {
                queue_id,
                offset,
                message,
                body_len,
                delivered,
                expires_at_ms,
            } = decode_publish(payload, load)?;
            let pending = Pending {
                message,
                body_len,
                lsn: identity,
                expires_at_ms,
                // The length of the original record, which reading it back expects.
                record_len: u32::try_from(record::FRAME_HEADER + payload.len()).unwrap_or(u32::MAX),
                body_lsn: 0,
                delivered,
            };
            (queue_id, offset, pending)
        }
        Some(KIND_ENQUEUE) => {
            let enqueue = decode_enqueue(payload)?;
            let pending = Pending {
                message: None,
                body_len: enqueue.body_size,
                lsn: identity,
                record_len: enqueue.body_len,
                body_lsn: enqueue.body_lsn,
                delivered: enqueue.delivered,
                expires_at_ms: None,
            };
            (enqueue.queue_id, enqueue.offset, pending)
        }
        _ => return None,
    };
    let next = scan.next_offsets.entry(queue_id).or_default();
    *next = (*next).max(offset + 1);
    let body_only = moved
        && payload
            .get(FLAGS_AT)
            .is_some_and(|flags| flags & FLAG_BODY_ONLY != 0);
    if !live_queues.contains(&queue_id) || body_only {
        // A body-only copy is found through `Scan::locations` by the enqueue records using it.
        return Some(());
    }
    let messages = scan.pending.entry(queue_id).or_default();
    if moved
        && let Some(existing) = messages.get_mut(&offset)
        && existing.lsn == identity
    {
        // A copy of a record still on disk (its segment was not deleted yet): one message.
        existing.delivered |= pending.delivered;
        return Some(());
    }
    if let Some(replaced) = messages.insert(offset, pending) {
        // A restored message published again while the ack of its previous publish record was
        // lost (that ack sat in an older segment's unsynced tail while this record reached the
        // disk). Unless an ack turns up later, recovery writes one, or the old record would come
        // back once this one is acked.
        report
            .superseded
            .entry((queue_id, offset, segment_of(replaced.lsn)))
            .or_insert(false);
    }
    Some(())
}

#[allow(clippy::too_many_arguments)]
fn apply_record(
    payload: &[u8],
    lsn: u64,
    live_queues: &BTreeSet<u64>,
    scan: &mut Scan,
    state: &mut SegmentState,
    report: &mut RecoveredLog,
    name: &str,
    pos: usize,
    resident_limit: usize,
) {
    let bad = |report: &mut RecoveredLog| {
        report.bad_records += 1;
        tracing::error!(file = %name, offset = pos, "unreadable record in the message log skipped");
    };
    let record_len = u32::try_from(record::FRAME_HEADER + payload.len()).unwrap_or(u32::MAX);
    let slot = Slot {
        end: u32::try_from(lsn & POSITION_MASK).unwrap_or(u32::MAX),
        len: record_len,
        // Until a recovered message of its own queue claims it.
        refs: Slot::OWN_GONE,
    };
    match payload.first().copied() {
        Some(KIND_PUBLISH | KIND_ENQUEUE) => {
            match apply_message(
                payload,
                lsn,
                false,
                live_queues,
                scan,
                report,
                resident_limit,
            ) {
                Some(()) => state.slots.push(slot),
                None => bad(report),
            }
        }
        Some(KIND_MOVED) => {
            let Some((identity, inner)) = decode_moved(payload) else {
                return bad(report);
            };
            match apply_message(
                inner,
                identity,
                true,
                live_queues,
                scan,
                report,
                resident_limit,
            ) {
                Some(()) => {
                    state.slots.push(slot);
                    scan.locations.insert(identity, lsn);
                    scan.moved_to
                        .entry(segment_of(identity))
                        .or_default()
                        .insert(segment_of(lsn));
                }
                None => bad(report),
            }
        }
        Some(kind @ (KIND_ACK | KIND_DELIVER)) => {
            let Some((queue_id, offset, target)) = decode_ref(payload) else {
                return bad(report);
            };
            if target != segment_of(lsn) {
                state.targets.insert(target);
            }
            let next = scan.next_offsets.entry(queue_id).or_default();
            *next = (*next).max(offset + 1);
            let Some(messages) = scan.pending.get_mut(&queue_id) else {
                return;
            };
            // A record refers to one publish record: a message restored after a no-ack pop is
            // published again under the same offset, and an older ack (perhaps carried forward
            // past the new publish) must not remove it.
            let Some(message) = messages
                .get_mut(&offset)
                .filter(|message| segment_of(message.lsn) == target)
            else {
                if kind == KIND_ACK
                    && let Some(acked) = report.superseded.get_mut(&(queue_id, offset, target))
                {
                    *acked = true;
                }
                return;
            };
            if kind == KIND_ACK {
                messages.remove(&offset);
            } else {
                message.delivered = true;
            }
        }
        _ => bad(report),
    }
}

/// Writes an enqueue record; `body` is the end and length of the publish record holding the
/// body, `body_size` the message body's length (for the queue's byte count).
fn encode_enqueue(
    buf: &mut Vec<u8>,
    queue_id: u64,
    offset: u64,
    delivered: bool,
    body: (u64, u32),
    body_size: u64,
) {
    buf.push(KIND_ENQUEUE);
    record::put_u64(buf, queue_id);
    record::put_u64(buf, offset);
    buf.push(if delivered { FLAG_DELIVERED } else { 0 });
    record::put_u64(buf, body.0);
    buf.extend_from_slice(&body.1.to_le_bytes());
    record::put_u64(buf, body_size);
}

/// An enqueue record's fields.
struct Enqueue {
    queue_id: u64,
    offset: u64,
    delivered: bool,
    body_lsn: u64,
    body_len: u32,
    body_size: u64,
}

fn decode_enqueue(payload: &[u8]) -> Option<Enqueue> {
    let mut fields = Fields::new(payload);
    let _kind = fields.u8()?;
    let enqueue = Enqueue {
        queue_id: fields.u64()?,
        offset: fields.u64()?,
        delivered: fields.u8()? & FLAG_DELIVERED != 0,
        body_lsn: fields.u64()?,
        body_len: fields.u32()?,
        body_size: fields.u64()?,
    };
    fields.is_done().then_some(enqueue)
}

fn encode_publish(
    buf: &mut Vec<u8>,
    queue_id: u64,
    offset: u64,
    message: &Message,
    delivered: bool,
) {
    buf.push(KIND_PUBLISH);
    record::put_u64(buf, queue_id);
    record::put_u64(buf, offset);
    let mut flags = 0;
    if message.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if message.expires_at_ms.is_some() {
        flags |= FLAG_EXPIRES;
    }
    if delivered {
        flags |= FLAG_DELIVERED;
    }
    if !message.persistent {
        flags |= FLAG_TRANSIENT;
    }
    buf.push(flags);
    buf.push(message.priority.unwrap_or(0));
    record::put_u64(buf, message.expires_at_ms.unwrap_or(0));
    record::put_short(buf, message.exchange.as_bytes());
    record::put_short(buf, message.routing_key.as_bytes());
    record::put_long(buf, &message.properties);
    record::put_long(buf, &message.body);
}

/// A durable queue's handle on the log.
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    log: Arc<Log>,
    queue_id: u64,
}

impl Journal {
    pub(crate) fn new(log: Arc<Log>, queue_id: u64) -> Journal {
        Journal { log, queue_id }
    }

    /// Logs a message for this queue (a full publish record, or an enqueue record pointing at a
    /// body another queue's record holds).
    pub(crate) fn publish(&self, offset: u64, message: &Message, delivered: bool) -> Published {
        self.log.publish(self.queue_id, offset, message, delivered)
    }

    /// Reads a logged message back (a paged-out body).
    pub(crate) fn read(&self, lsn: u64, record_len: u32) -> Result<Message, StoreError> {
        self.log.read_publish(lsn, record_len)
    }

    /// The log this queue writes to (paging reads several bodies back at once from it).
    pub(crate) fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// Everything up to this `Lsn` is on stable storage (and so in the file).
    pub(crate) fn synced(&self) -> u64 {
        self.log.synced().0
    }

    pub(crate) fn deliver(&self, offset: u64, publish_lsn: u64) {
        self.log.deliver(self.queue_id, offset, publish_lsn);
    }

    /// Logs an ack of the message whose own record ends at `publish_lsn` (and whose body is in
    /// the record ending at `body_lsn`, when that is another queue's; else 0).
    pub(crate) fn ack(&self, offset: u64, publish_lsn: u64, body_lsn: u64) {
        self.log.ack(self.queue_id, offset, publish_lsn, body_lsn);
    }

    /// The queue is deleted: the message's records no longer count.
    pub(crate) fn forget(&self, publish_lsn: u64, body_lsn: u64) {
        self.log.forget(publish_lsn);
        if body_lsn != 0 {
            self.log.forget_body(body_lsn);
        }
    }
}
