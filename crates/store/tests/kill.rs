//! A real process writing to real files is killed with SIGKILL at random moments, 20 times over
//! one data folder: every message confirmed by a sync is there exactly once after each restart,
//! and every message whose ack was synced stays gone. The writer uses 16 KiB segments and compacts
//! any segment less than 90% live, so kills also land while segments roll, are reclaimed and are
//! compacted (the requeued and unconsumed messages it leaves behind keep old segments part live).
//!
//! The test binary plays both parts: started with `WARREN_STORE_CHILD=DIR` it is the writer, which
//! publishes, consumes and acks in a loop and prints what each successful sync made durable.

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use warren_codec::ShortString;
use warren_store::{FileBackend, Message, Queue, QueueDef, Store, StoreOptions};

const CHILD_ENV: &str = "WARREN_STORE_CHILD";
/// 20 rounds in CI; `WARREN_STORE_KILL_ROUNDS=500` for a longer run.
fn rounds() -> u64 {
    std::env::var("WARREN_STORE_KILL_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(20)
}

fn queue_def() -> QueueDef {
    QueueDef {
        vhost: ShortString::from_static("/"),
        name: ShortString::from_static("store.kill"),
        auto_delete: false,
        arguments: Bytes::new(),
    }
}

fn open_queue(store: &Store, recovery: &mut warren_store::Recovery) -> Queue {
    match recovery.queues.pop() {
        Some((_, queue)) => queue,
        None => store.declare_queue(&queue_def()).unwrap(),
    }
}

/// The writer: runs until killed. Prints `a id` before acking (from then on the ack may reach the
/// disk), `C id` for each publish and `A id` for each ack that a successful sync made durable.
fn child(dir: &Path, round: u64) {
    let options = StoreOptions::default()
        .with_segment_size(16 << 10)
        .with_compaction(90);
    let backend = Arc::new(FileBackend::new(dir).unwrap());
    let (store, mut recovery) = Store::open_with(backend, options).unwrap();
    let mut queue = open_queue(&store, &mut recovery);
    let mut stdout = std::io::stdout().lock();
    let mut next = 0u64;
    loop {
        let mut published = Vec::new();
        let mut acked = Vec::new();
        for _ in 0..20 {
            let id = format!("{round}-{next}");
            next += 1;
            let body = format!("{id}:{}", "k".repeat(next as usize % 700));
            let message = Message::new(
                ShortString::new(),
                ShortString::from_static("store.kill"),
                Bytes::new(),
                Bytes::from(body),
            )
            .with_persistent(true);
            queue.push(Arc::new(message));
            published.push(id);
        }
        // Consume a bit less than is published, acking two of three and requeueing the rest.
        for n in 0..16 {
            let Some(delivery) = queue.pop() else { break };
            let body = std::str::from_utf8(&delivery.message.body).unwrap();
            let id = body.split(':').next().unwrap().to_owned();
            if n % 3 == 2 {
                queue.requeue(delivery.offset);
            } else {
                writeln!(stdout, "a {id}").unwrap();
                stdout.flush().unwrap();
                queue.ack(delivery.offset).unwrap();
                acked.push(id);
            }
        }
        store.sync().unwrap();
        for id in published {
            writeln!(stdout, "C {id}").unwrap();
        }
        for id in acked {
            writeln!(stdout, "A {id}").unwrap();
        }
        stdout.flush().unwrap();
    }
}

/// How far a message's ack got, as the writer reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acked {
    No,
    /// Acked in memory; the ack record may or may not be on disk.
    Maybe,
    /// A sync after the ack succeeded.
    Durably,
}

/// A small deterministic generator for the kill delays.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn sigkill_at_random_moments_loses_no_confirmed_message() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round = std::env::var("WARREN_STORE_ROUND")
            .unwrap()
            .parse()
            .unwrap();
        child(Path::new(&dir), round);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // id -> how far its ack got.
    let mut confirmed: BTreeMap<String, Acked> = BTreeMap::new();
    let mut random = 0x2545_F491_4F6C_DD1Du64;
    // Every line the writers printed, for failure messages.
    let mut history: Vec<(u64, String)> = Vec::new();
    for round in 0..rounds() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_at_random_moments_loses_no_confirmed_message",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .env("WARREN_STORE_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.push(line);
            }
            lines
        });
        // Let it get going (the first lines show it opened the store), then kill it.
        let delay = Duration::from_millis(30 + next_random(&mut random) % 150);
        let started = Instant::now();
        while started.elapsed() < delay {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            history.push((round, line.clone()));
            // The harness prints "test NAME ... " before the child's first line, unterminated.
            let mut words = line.split_whitespace().rev();
            let (id, kind) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            match (kind, id) {
                ("C", id) => {
                    confirmed.entry(id.to_owned()).or_insert(Acked::No);
                }
                ("a", id) => {
                    confirmed.insert(id.to_owned(), Acked::Maybe);
                }
                ("A", id) => {
                    confirmed.insert(id.to_owned(), Acked::Durably);
                }
                _ => {}
            }
        }

        let (store, mut recovery) = Store::open(dir.path()).unwrap();
        let mut queue = open_queue(&store, &mut recovery);
        let mut present = BTreeSet::new();
        while let Some(delivery) = queue.pop() {
            let body = std::str::from_utf8(&delivery.message.body).unwrap();
            let id = body.split(':').next().unwrap().to_owned();
            assert!(
                delivery.redelivered,
                "round {round}: {id} not flagged after a kill"
            );
            assert!(
                present.insert(id.clone()),
                "round {round}: {id} came back twice"
            );
        }
        for (id, acked) in &confirmed {
            match acked {
                Acked::Durably => {
                    assert!(!present.contains(id), "round {round}: acked {id} came back")
                }
                Acked::No => assert!(
                    present.contains(id),
                    "round {round}: confirmed {id} lost; its history: {:?}",
                    history
                        .iter()
                        .filter(|(_, line)| line.ends_with(&format!(" {id}")))
                        .collect::<Vec<_>>()
                ),
                // Its ack may or may not have reached the disk; if it came back, it is
                // delivered again, and an ack then counts from scratch.
                Acked::Maybe => {}
            }
        }
        // What is present is unacked now: forget half-done acks of it.
        for id in &present {
            if let Some(acked) = confirmed.get_mut(id) {
                *acked = Acked::No;
            }
        }
        drop(queue);
        drop(store);
    }
    assert!(
        confirmed.len() > 100,
        "the writer barely ran: {} confirmed",
        confirmed.len()
    );
}
