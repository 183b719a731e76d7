//! Copy-forward compaction: a sealed segment whose live records take little of its bytes has
//! them copied to the head of the log, then goes, so a few long-lived messages do not pin whole
//! segments (and the disk) forever.
//!
//! A copy is a *moved* record: the original payload (flags updated) behind the original's end
//! `Lsn`, its *identity*. Queues, acks and delivery records keep using the identity, so nothing
//! outside the log changes when a record moves: [`Writer::moved`] maps identities to where
//! their copies are, for reading paged-out bodies and counting references, and recovery does
//! the same from the moved records it reads. The segment goes only once a sync covered every
//! copy (`holds`), so a crash at any point leaves the original, the copy, or both; recovery
//! treats a copy of a record it already has as the same message, never a second one.
//!
//! The work is bounded: each sync of the broker's sync thread reads at most
//! [`StoreOptions::compact_step_bytes`](super::StoreOptions) of the segment being compacted and
//! copies its live records, taking the writer lock once per record, so publishers keep
//! appending meanwhile and the next fsync is delayed by one step at most.

use std::collections::BTreeSet;

use super::{
    FLAG_BODY_ONLY, FLAG_DELIVERED, FLAGS_AT, KIND_ENQUEUE, KIND_MOVED, KIND_PUBLISH, Log,
    MOVED_OVERHEAD, SEGMENT_HEADER_LEN, decode_moved, make_lsn, segment_name, segment_of,
};
use crate::error::StoreError;
use crate::record::{self, Next};

impl Log {
    /// Whether a compaction step has something to do (the sync thread then syncs even when no
    /// record arrived, so disk use falls back while the broker is idle too).
    pub(super) fn compaction_due(&self) -> bool {
        if self.volatile || self.options.compact_below_percent == 0 {
            return false;
        }
        let writer = self.writer.lock();
        writer.compacting.is_some() || self.pick_candidate(&writer).is_some()
    }

    /// The sealed, synced segment with the smallest share of live bytes below the threshold.
    fn pick_candidate(&self, writer: &super::Writer) -> Option<u64> {
        let percent = u64::from(self.options.compact_below_percent);
        let current = writer.current.number;
        writer
            .segments
            .iter()
            .filter(|(number, state)| {
                **number != current
                    && state.live > 0
                    && state.len > SEGMENT_HEADER_LEN
                    && !writer.sealed.iter().any(|tail| tail.number == **number)
                    && !self.compact_failed.lock().contains(number)
                    && state.live_bytes * 100 < (state.len - SEGMENT_HEADER_LEN) * percent
            })
            .min_by_key(|(_, state)| (state.live_bytes * 1000) / state.len.max(1))
            .map(|(number, _)| *number)
    }

    /// One bounded step of compaction. Runs on the sync thread with `sync_lock` held, after a
    /// sync and reclamation; the copies it appends are synced by the next sync, which then
    /// deletes the segment once all of it was copied.
    pub(super) fn compact_step(&self) {
        if self.volatile || self.options.compact_below_percent == 0 {
            return;
        }
        let (segment, from, len) = {
            let mut writer = self.writer.lock();
            let (segment, from) = match writer.compacting {
                Some(at) => at,
                None => match self.pick_candidate(&writer) {
                    Some(segment) => (segment, SEGMENT_HEADER_LEN),
                    None => return,
                },
            };
            let Some(len) = writer.segments.get(&segment).map(|state| state.len) else {
                writer.compacting = None;
                return;
            };
            writer.compacting = Some((segment, from));
            (segment, from, len)
        };
        match self.copy_chunk(segment, from, len) {
            Ok(Some(next)) => {
                self.writer.lock().compacting = Some((segment, next));
            }
            Ok(None) => {
                let mut writer = self.writer.lock();
                writer.compacting = None;
                let mut stuck = false;
                if let Some(state) = writer.segments.get_mut(&segment) {
                    // Its acks that still matter were carried forward with the copies.
                    state.targets.clear();
                    // Live records the pass did not find (past a corrupt one): never again.
                    stuck = state.live > 0;
                    tracing::debug!(
                        file = %segment_name(segment),
                        left = state.live,
                        "log segment compacted"
                    );
                }
                drop(writer);
                if stuck {
                    self.compact_failed.lock().insert(segment);
                }
            }
            Err(error) => {
                tracing::warn!(%error, file = %segment_name(segment), "cannot compact a log segment; it stays");
                self.compact_failed.lock().insert(segment);
                self.writer.lock().compacting = None;
            }
        }
    }

    /// Copies the live records (and the acks that still matter) of `segment` found from
    /// position `from` on, reading about one step's worth; returns where to continue, or `None`
    /// at the end of the segment.
    fn copy_chunk(&self, segment: u64, from: u64, len: u64) -> Result<Option<u64>, StoreError> {
        let name = segment_name(segment);
        let file = self
            .backend
            .open(&name, false)
            .map_err(StoreError::io(&name))?;
        let mut header = [0u8; record::FRAME_HEADER];
        if from + header.len() as u64 > len {
            return Ok(None);
        }
        file.read_exact_at(&mut header, from)
            .map_err(StoreError::io(&name))?;
        let first = record::FRAME_HEADER as u64
            + u64::from(u32::from_le_bytes([
                header[0], header[1], header[2], header[3],
            ]));
        let want = (self.options.compact_step_bytes as u64)
            .max(first)
            .min(len - from);
        let mut data = vec![0u8; usize::try_from(want).unwrap_or(0)];
        file.read_exact_at(&mut data, from)
            .map_err(StoreError::io(&name))?;
        let doomed = BTreeSet::from([segment]);
        let mut pos = 0;
        loop {
            match record::next(&data, pos) {
                Next::Record(payload, after) => {
                    let end = from + after as u64;
                    let copied = match payload.first().copied() {
                        Some(KIND_PUBLISH | KIND_ENQUEUE | KIND_MOVED) => {
                            self.copy_record(segment, end, payload)
                        }
                        _ => self.carry_one(segment, payload, &doomed),
                    };
                    if let Some(copy_end) = copied {
                        let mut writer = self.writer.lock();
                        let hold = writer.holds.entry(segment).or_default();
                        *hold = (*hold).max(copy_end);
                    }
                    pos = after;
                }
                Next::End => break,
                // The chunk ends inside a record: the next step starts with it.
                Next::Bad(_) if from + (data.len() as u64) < len && pos > 0 => break,
                // A corrupt record: recovery stopped reading this segment there too.
                Next::Bad(_) => return Ok(None),
            }
        }
        let next = from + pos as u64;
        Ok((next < len).then_some(next))
    }

    /// Copies the publish, enqueue or moved record ending at `end` in `segment` to the head of
    /// the log if a queue still needs it, moving its references to the copy; returns where the
    /// copy ends.
    fn copy_record(&self, segment: u64, end: u64, payload: &[u8]) -> Option<u64> {
        let (identity, inner) = match payload.first().copied() {
            Some(KIND_MOVED) => decode_moved(payload)?,
            _ => (make_lsn(segment, end), payload),
        };
        let mut writer = self.writer.lock();
        let state = writer.segments.get(&segment)?;
        let index = state.slot_index(end)?;
        let slot = *state.slots.get(index)?;
        if slot.refs() == 0 {
            return None;
        }
        let copy_end = writer.append(&*self.backend, &self.options, |buf| {
            buf.push(KIND_MOVED);
            record::put_u64(buf, identity);
            let flags_at = buf.len() + FLAGS_AT;
            buf.extend_from_slice(inner);
            if let Some(flags) = buf.get_mut(flags_at) {
                if slot.delivered() {
                    *flags |= FLAG_DELIVERED;
                }
                if slot.own_gone() {
                    // Its own queue acked it: recovery must not bring that message back.
                    *flags |= FLAG_BODY_ONLY;
                }
            }
        });
        let copy_len = writer.last_record_len;
        let overhead = if inner.len() == payload.len() {
            MOVED_OVERHEAD
        } else {
            0
        };
        debug_assert_eq!(copy_len, slot.len.saturating_add(overhead));
        if let Some(state) = writer.segments.get_mut(&segment)
            && let Some(original) = state.slots.get_mut(index)
        {
            original.refs = 0;
            state.live = state.live.saturating_sub(u64::from(slot.refs()));
            state.live_bytes = state.live_bytes.saturating_sub(u64::from(slot.len));
        }
        writer.add_slot(copy_end, copy_len, slot.refs);
        writer.moved.insert(identity, copy_end);
        writer
            .moved_to
            .entry(segment_of(identity))
            .or_default()
            .insert(segment_of(copy_end));
        Some(copy_end)
    }
}
