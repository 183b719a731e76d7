//! Message bodies that carry who sent them, their sequence number and when, and the
//! bookkeeping that turns received bodies into counts of lost, duplicated and reordered messages.
//!
//! Body layout (big-endian): producer id `u32`, sequence `u32`, send time `u64` (nanoseconds since
//! the generator started). 16 bytes, so the smallest body the checks need is 16 bytes; larger
//! bodies are padded with zeros.

/// Bytes of a body taken by the stamp; smaller bodies cannot be checked.
pub const STAMP_LEN: usize = 16;

/// What a producer writes at the front of each body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub producer: u32,
    pub seq: u32,
    pub sent_nanos: u64,
}

impl Stamp {
    /// Writes the stamp over the first 16 bytes of `body` (which must be at least that long).
    pub fn write(&self, body: &mut [u8]) {
        if let Some(front) = body.get_mut(..STAMP_LEN) {
            front[0..4].copy_from_slice(&self.producer.to_be_bytes());
            front[4..8].copy_from_slice(&self.seq.to_be_bytes());
            front[8..16].copy_from_slice(&self.sent_nanos.to_be_bytes());
        }
    }

    /// Reads a stamp, or `None` when the body is too short to hold one.
    pub fn read(body: &[u8]) -> Option<Stamp> {
        let front: &[u8; STAMP_LEN] = body.get(..STAMP_LEN)?.try_into().ok()?;
        let [
            p0,
            p1,
            p2,
            p3,
            s0,
            s1,
            s2,
            s3,
            t0,
            t1,
            t2,
            t3,
            t4,
            t5,
            t6,
            t7,
        ] = *front;
        Some(Stamp {
            producer: u32::from_be_bytes([p0, p1, p2, p3]),
            seq: u32::from_be_bytes([s0, s1, s2, s3]),
            sent_nanos: u64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
        })
    }
}

/// A growable set of sequence numbers.
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    words: Vec<u64>,
}

impl SeqSet {
    /// Inserts `seq`; returns false when it was already there.
    pub fn insert(&mut self, seq: u32) -> bool {
        let word = (seq / 64) as usize;
        if word >= self.words.len() {
            self.words.resize((word + 1).next_power_of_two(), 0);
        }
        let bit = 1u64 << (seq % 64);
        let Some(slot) = self.words.get_mut(word) else {
            return false;
        };
        let fresh = *slot & bit == 0;
        *slot |= bit;
        fresh
    }

    /// Whether `seq` is a member.
    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1u64 << (seq % 64)) != 0)
    }

    /// How many members.
    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// How many members are below `limit`.
    pub fn len_below(&self, limit: u64) -> u64 {
        let full = (limit / 64) as usize;
        let mut n: u64 = self
            .words
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = limit % 64;
        if let Some(w) = self.words.get(full).filter(|_| rest > 0) {
            n += u64::from((w & ((1u64 << rest) - 1)).count_ones());
        }
        n
    }

    /// Adds every member of `other`; returns how many of them were already here.
    pub fn union_with(&mut self, other: &SeqSet) -> u64 {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        let mut overlap = 0;
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            overlap += u64::from((*mine & theirs).count_ones());
            *mine |= theirs;
        }
        overlap
    }
}

/// What one consumer saw from one producer.
#[derive(Debug, Clone, Default)]
pub struct Track {
    /// The highest sequence seen so far, if any.
    pub last: Option<u32>,
    /// Every sequence seen.
    pub seen: SeqSet,
    /// Messages received (duplicates included).
    pub received: u64,
    /// Messages that arrived already seen.
    pub duplicated: u64,
    /// Messages that arrived after a later one from the same producer.
    pub reordered: u64,
}

/// Per-consumer checker: one `Track` per producer.
#[derive(Debug, Clone, Default)]
pub struct Checker {
    pub tracks: Vec<Track>,
    /// Bodies that carried no readable stamp or an unknown producer.
    pub malformed: u64,
}

impl Checker {
    pub fn new(producers: usize) -> Self {
        Checker {
            tracks: vec![Track::default(); producers],
            malformed: 0,
        }
    }

    /// Records one received stamp. A redelivered message may legitimately be a duplicate or out
    /// of order; the generator never requeues, so it counts every such message.
    pub fn record(&mut self, stamp: Stamp) {
        let Some(track) = self.tracks.get_mut(stamp.producer as usize) else {
            self.malformed += 1;
            return;
        };
        track.received += 1;
        let fresh = track.seen.insert(stamp.seq);
        if !fresh {
            track.duplicated += 1;
        } else if track.last.is_some_and(|last| stamp.seq < last) {
            track.reordered += 1;
        }
        if track.last.is_none_or(|last| stamp.seq > last) {
            track.last = Some(stamp.seq);
        }
    }
}

/// The verdict for one queue and one producer whose messages should (or should not) reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Messages that reached a queue they should not have (or carried sequences never sent).
    pub unexpected: u64,
    pub malformed: u64,
    /// Messages delivered although their TTL ran out before the consumers started (backlog
    /// mode with `--expiration`): an expired message must never reach a consumer.
    pub expired_delivered: u64,
}

impl Verdict {
    pub fn add(&mut self, other: &Verdict) {
        self.expected += other.expected;
        self.received += other.received;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.unexpected += other.unexpected;
        self.malformed += other.malformed;
        self.expired_delivered += other.expired_delivered;
    }

    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.unexpected == 0
            && self.malformed == 0
            && self.expired_delivered == 0
    }
}

/// Judges one queue: `checkers` are the consumers that read from it, `published[p]` is how many
/// messages producer `p` sent (sequences `0..published[p]`), and `routed[p]` says whether
/// producer `p`'s messages should reach this queue.
#[cfg(test)]
pub fn judge_queue(checkers: &[&Checker], published: &[u64], routed: &[bool]) -> Verdict {
    judge_expiring_queue(checkers, published, routed, |_| false)
}

/// [`judge_queue`] for messages of which some expire on purpose: a sequence for which `expired`
/// is true must not arrive (it counts in `expired_delivered` if it does) and is not lost if it
/// does not.
pub fn judge_expiring_queue(
    checkers: &[&Checker],
    published: &[u64],
    routed: &[bool],
    expired: impl Fn(u64) -> bool,
) -> Verdict {
    let mut verdict = Verdict::default();
    for checker in checkers {
        verdict.malformed += checker.malformed;
    }
    for (producer, &sent) in published.iter().enumerate() {
        let mut union = SeqSet::default();
        for checker in checkers {
            let Some(track) = checker.tracks.get(producer) else {
                continue;
            };
            verdict.received += track.received;
            verdict.reordered += track.reordered;
            // Duplicates within one consumer, then those split across consumers.
            verdict.duplicated += track.duplicated + union.union_with(&track.seen);
        }
        let distinct = union.len();
        let distinct_sent = union.len_below(sent);
        if routed.get(producer).copied().unwrap_or(false) {
            let (mut n_expired, mut n_expired_delivered) = (0, 0);
            for seq in (0..sent).filter(|seq| expired(*seq)) {
                n_expired += 1;
                n_expired_delivered += u64::from(union.contains(seq));
            }
            verdict.expected += sent - n_expired;
            verdict.lost += (sent - n_expired) - (distinct_sent - n_expired_delivered);
            verdict.expired_delivered += n_expired_delivered;
            verdict.unexpected += distinct - distinct_sent;
        } else {
            verdict.unexpected += distinct;
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(producer: u32, seq: u32) -> Stamp {
        Stamp {
            producer,
            seq,
            sent_nanos: 7,
        }
    }

    #[test]
    fn stamp_round_trips_and_short_bodies_have_none() {
        let mut body = [0u8; 20];
        let s = Stamp {
            producer: 3,
            seq: 0xDEAD_BEEF,
            sent_nanos: 123_456_789_012,
        };
        s.write(&mut body);
        assert_eq!(Stamp::read(&body), Some(s));
        assert_eq!(Stamp::read(&body[..15]), None);
    }

    #[test]
    fn in_order_complete_stream_is_clean() {
        let mut c = Checker::new(2);
        for seq in 0..1000 {
            c.record(stamp(0, seq));
            c.record(stamp(1, seq));
        }
        let v = judge_queue(&[&c], &[1000, 1000], &[true, true]);
        assert!(v.is_clean(), "{v:?}");
        assert_eq!(v.expected, 2000);
        assert_eq!(v.received, 2000);
    }

    #[test]
    fn loss_duplicate_and_reorder_are_each_counted() {
        let mut c = Checker::new(1);
        for seq in [0, 1, 3, 2, 4, 4, 6] {
            c.record(stamp(0, seq));
        }
        let v = judge_queue(&[&c], &[8], &[true]);
        assert_eq!(v.lost, 2, "5 and 7 never came: {v:?}");
        assert_eq!(v.duplicated, 1);
        assert_eq!(v.reordered, 1, "2 after 3");
        assert!(!v.is_clean());
    }

    #[test]
    fn competing_consumers_split_a_stream_and_a_cross_duplicate_is_caught() {
        let (mut a, mut b) = (Checker::new(1), Checker::new(1));
        for seq in 0..100 {
            if seq % 3 == 0 {
                a.record(stamp(0, seq))
            } else {
                b.record(stamp(0, seq))
            }
        }
        let v = judge_queue(&[&a, &b], &[100], &[true]);
        assert!(v.is_clean(), "{v:?}");
        // The same message delivered to both: a duplicate, even though each saw it once.
        b.record(stamp(0, 99));
        a.record(stamp(0, 99));
        let v = judge_queue(&[&a, &b], &[100], &[true]);
        assert_eq!(v.duplicated, 2, "{v:?}");
        assert_eq!(v.lost, 0);
    }

    #[test]
    fn messages_on_a_queue_they_were_not_routed_to_are_unexpected() {
        let mut c = Checker::new(2);
        c.record(stamp(1, 0));
        c.record(stamp(0, 5)); // beyond what producer 0 claims to have sent
        c.record(stamp(9, 0)); // no such producer
        let v = judge_queue(&[&c], &[5, 1], &[true, false]);
        assert_eq!(v.unexpected, 2);
        assert_eq!(v.malformed, 1);
        assert_eq!(v.lost, 5);
    }

    #[test]
    fn expired_messages_are_not_lost_and_must_not_arrive() {
        let mut c = Checker::new(1);
        // 1 and 4 expire (and do not arrive); of the others 0, 2 and 5 arrive, 3 is lost.
        for seq in [0, 2, 5] {
            c.record(stamp(0, seq));
        }
        let expired = |seq: u64| seq % 3 == 1;
        let v = judge_expiring_queue(&[&c], &[6], &[true], expired);
        assert_eq!(
            (v.expected, v.lost, v.expired_delivered),
            (4, 1, 0),
            "{v:?}"
        );
        c.record(stamp(0, 1));
        let v = judge_expiring_queue(&[&c], &[6], &[true], expired);
        assert_eq!((v.lost, v.expired_delivered), (1, 1), "{v:?}");
        assert!(!v.is_clean());
    }

    #[test]
    fn seqset_counts_below_a_limit() {
        let mut s = SeqSet::default();
        for seq in [0, 63, 64, 65, 200] {
            assert!(s.insert(seq));
        }
        assert!(!s.insert(64));
        assert_eq!(s.len(), 5);
        assert_eq!(s.len_below(64), 2);
        assert_eq!(s.len_below(66), 4);
        assert_eq!(s.len_below(1000), 5);
    }
}
