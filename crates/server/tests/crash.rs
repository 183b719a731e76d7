//! Crash test: a real `warren` process takes persistent messages with confirms from several
//! publishers while a consumer acks some, is killed with SIGKILL at a random moment, and is
//! restarted on the same data folder; every confirmed message must come back exactly once
//! (flagged redelivered if it was delivered before) and certainly-acked messages never do.
//! A confirm that does not arrive within 10 s while the broker runs fails the test too.
//!
//! `WARREN_CRASH_ROUNDS` (default 20) sets the number of kills, `WARREN_CRASH_SEED` replays a
//! run (the seed is printed at start; the kill delays and ack choices follow it, the exact
//! interleaving of publishers and consumer does not).

// Setup failures (spawning the binary, a broker that does not start) are failed tests too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const QUEUE: &str = "crash.work";
const PUBLISHERS: usize = 3;
/// Publishes in flight per publisher before it waits for their confirms.
const BATCH: usize = 10;
/// Bounds one round's backlog (and so the time the next recovery and inspection take).
const MAX_PER_PUBLISHER: u64 = 600;
/// Generous bound for anything the broker must answer; hitting it fails the test.
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a confirm may take before it counts as stalled: a failure of the test.
const STALL: Duration = Duration::from_secs(10);

/// A running `warren` process; dropping it (also when a test panics) kills it.
struct Broker {
    child: Child,
    addr: String,
    // Kept so the broker never writes to a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SIGKILL; tokio reaps the process (kill_on_drop is set as well).
        let _ = self.child.start_kill();
    }
}

fn command(data: &Path, log: &Path) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data)
        .arg("--log-level")
        .arg("info")
        .env_remove("WARREN_EPHEMERAL")
        .env_remove("WARREN_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    cmd
}

async fn start(data: &Path, log: &Path) -> Broker {
    let mut child = command(data, log).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut broker = Broker {
        child,
        addr: String::new(),
        _stdout: BufReader::new(stdout).lines(),
    };
    let line = tokio::time::timeout(PATIENCE, broker._stdout.next_line())
        .await
        .unwrap_or_else(|_| panic!("the broker did not start within {PATIENCE:?}; see {log:?}"))
        .unwrap()
        .unwrap_or_else(|| panic!("the broker exited at start; its log:\n{}", tail(log)));
    broker.addr = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    broker
}

/// Kills a broker that is still starting (maybe in the middle of recovery).
async fn start_and_kill_early(data: &Path, log: &Path, delay: Duration) {
    let mut child = command(data, log).spawn().unwrap();
    tokio::time::sleep(delay).await;
    child.kill().await.unwrap();
}

async fn kill(mut broker: Broker) {
    broker.child.kill().await.unwrap();
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

async fn connect(addr: &str) -> lapin::Result<(Connection, Channel)> {
    let uri = format!("amqp://guest:guest@{addr}/%2f");
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((conn, channel))
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn parse_id(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body).ok()?.parse().ok()
}

/// What the test knows about every message id it ever published.
#[derive(Default)]
struct Model {
    /// Confirmed and not certainly acked: must be in the queue after a crash, unless an ack for
    /// it is in `ack_uncertain`.
    alive: HashSet<u64>,
    /// Published, confirm not (yet) seen: may or may not be kept.
    pending: HashSet<u64>,
    /// An ack was sent but no sync is known to cover it: may or may not come back.
    ack_uncertain: HashSet<u64>,
    /// Certainly acked, or absent at a recovery: must never be seen again.
    gone: HashSet<u64>,
    /// Delivered to this test at least once: must come back flagged redelivered.
    delivered: HashSet<u64>,
    /// Broken guarantees seen while the broker ran.
    violations: Vec<String>,
    confirmed_total: u64,
    certain_acks_total: u64,
    nacks_total: u64,
    /// Confirms that did not come within `STALL` (see `sync_acks`); each is also a violation.
    stalled_confirms: u64,
}

impl Model {
    fn published(&mut self, id: u64) {
        self.pending.insert(id);
    }

    fn confirmed(&mut self, id: u64) {
        self.confirmed_total += 1;
        self.pending.remove(&id);
        // The consumer may have got, acked and synced it before this confirm arrived.
        if !self.gone.contains(&id) {
            self.alive.insert(id);
        }
    }

    /// A delivery while the broker runs.
    fn deliver(&mut self, id: Option<u64>, redelivered: bool) {
        let Some(id) = id else {
            self.violations
                .push("a delivery with a body that is no id".into());
            return;
        };
        if self.gone.contains(&id) {
            self.violations
                .push(format!("message {id} delivered after it was acked or lost"));
        } else if !self.alive.contains(&id)
            && !self.pending.contains(&id)
            && !self.ack_uncertain.contains(&id)
        {
            self.violations
                .push(format!("message {id} delivered but never published"));
        }
        if self.delivered.contains(&id) && !redelivered {
            self.violations.push(format!(
                "message {id} delivered a second time without the redelivered flag"
            ));
        }
        self.delivered.insert(id);
    }

    fn ack_sent(&mut self, id: u64) {
        self.ack_uncertain.insert(id);
    }

    /// A sync after these acks returned (a later publish on the same channel was confirmed).
    fn acks_synced(&mut self, ids: &[u64]) {
        for id in ids {
            self.certain_acks_total += 1;
            self.ack_uncertain.remove(id);
            self.alive.remove(id);
            self.pending.remove(id);
            self.gone.insert(*id);
        }
    }

    /// Checks the whole queue content read right after a restart and makes it the new state.
    fn recovered(&mut self, seen: &[(u64, bool)]) -> Vec<String> {
        let mut problems = Vec::new();
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for (id, _) in seen {
            *counts.entry(*id).or_default() += 1;
        }
        let mut dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        dups.sort();
        for (id, n) in dups.iter().take(10) {
            problems.push(format!("message {id} is in the queue {n} times"));
        }
        let allowed: HashSet<u64> = self
            .alive
            .iter()
            .chain(&self.pending)
            .chain(&self.ack_uncertain)
            .copied()
            .collect();
        let mut missing: Vec<_> = self
            .alive
            .iter()
            .filter(|id| !self.ack_uncertain.contains(id) && !counts.contains_key(id))
            .copied()
            .collect();
        missing.sort_unstable();
        if !missing.is_empty() {
            problems.push(format!(
                "{} confirmed messages lost, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
        for (id, redelivered) in seen {
            if self.gone.contains(id) {
                problems.push(format!("message {id} came back after a synced ack"));
            } else if !allowed.contains(id) {
                problems.push(format!("message {id} was never published"));
            }
            if self.delivered.contains(id) && !redelivered {
                problems.push(format!(
                    "message {id} was delivered before the crash but is not flagged redelivered"
                ));
            }
        }
        problems.truncate(30);
        // What is absent now was acked or never stored: it must not come back later either.
        for id in &allowed {
            if !counts.contains_key(id) {
                self.gone.insert(*id);
            }
        }
        self.alive = counts.keys().copied().collect();
        self.pending.clear();
        self.ack_uncertain.clear();
        for (id, _) in seen {
            self.delivered.insert(*id);
        }
        problems
    }
}

type Shared = Arc<Mutex<Model>>;

/// Reads the whole queue of a freshly restarted broker, checks it against the model, then acks a
/// random part of it (synced) and leaves the rest to be redelivered.
async fn inspect(
    addr: &str,
    model: &Shared,
    ids: &AtomicU64,
    rng: &mut StdRng,
    first: bool,
) -> Result<usize, String> {
    let (conn, channel) = connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let declared = channel
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                passive: !first,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("the durable queue is not there after the restart: {e}"))?;
    let expected = declared.message_count() as usize;
    let mut consumer = channel
        .basic_consume(
            QUEUE.into(),
            "inspect".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("consume: {e}"))?;
    let mut seen = Vec::new();
    let mut tags = Vec::new();
    // Everything the broker counted, then a short wait for anything it did not count.
    loop {
        let wait = if seen.len() < expected {
            PATIENCE
        } else {
            Duration::from_millis(100)
        };
        match tokio::time::timeout(wait, consumer.next()).await {
            Err(_) if seen.len() >= expected => break,
            Err(_) => {
                return Err(format!(
                    "only {} of {expected} counted messages delivered",
                    seen.len()
                ));
            }
            Ok(None) => return Err("the consumer was cancelled".into()),
            Ok(Some(Err(e))) => return Err(format!("consume: {e}")),
            Ok(Some(Ok(delivery))) => {
                let Some(id) = parse_id(&delivery.data) else {
                    return Err(format!("a body that is no id: {:?}", delivery.data));
                };
                seen.push((id, delivery.redelivered));
                tags.push(delivery.delivery_tag);
            }
        }
    }
    let mut problems = model.lock().unwrap().recovered(&seen);
    if seen.len() != expected {
        problems.push(format!(
            "queue.declare counted {expected} messages, {} were delivered",
            seen.len()
        ));
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let mut acked = Vec::new();
    for (&(id, _), &tag) in seen.iter().zip(&tags) {
        if rng.random_bool(0.7) {
            channel
                .basic_ack(tag, BasicAckOptions::default())
                .await
                .map_err(|e| format!("ack: {e}"))?;
            model.lock().unwrap().ack_sent(id);
            acked.push(id);
        }
    }
    sync_acks(&channel, model, ids, &acked)
        .await
        .map_err(|e| format!("sync after acks: {e}"))?;
    // The rest goes back to the queue, flagged redelivered.
    let _ = conn.close(200, "inspected".into()).await;
    Ok(seen.len())
}

/// Publishes one more tracked message on the channel that sent the acks and waits for its
/// confirm: the broker handles a channel's frames in order and the confirm means a sync past
/// that publish's log record returned, so the acks' records are on disk too. (A round trip
/// alone is not enough: an ack not yet synced may be lost in a crash, by design.)
async fn sync_acks(
    channel: &Channel,
    model: &Shared,
    ids: &AtomicU64,
    acked: &[u64],
) -> lapin::Result<()> {
    let marker = ids.fetch_add(1, Ordering::Relaxed);
    model.lock().unwrap().published(marker);
    let confirm = channel
        .basic_publish(
            "".into(),
            QUEUE.into(),
            BasicPublishOptions::default(),
            marker.to_string().as_bytes(),
            persistent(),
        )
        .await?;
    let mut confirm = Box::pin(std::future::IntoFuture::into_future(confirm));
    let confirmation = match tokio::time::timeout(STALL, &mut confirm).await {
        Ok(confirmation) => confirmation?,
        Err(_) => {
            // A confirm that does not come is not a durability failure (the message counts as
            // unconfirmed and the acks as uncertain), but it is a bug (the one fixed in c92bf45
            // looked like this): fail the round, saying whether another frame on the channel,
            // or a later sync, releases it, which tells where the broker lost track of it.
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            channel
                .queue_declare(QUEUE.into(), passive, FieldTable::default())
                .await?;
            let woken = match tokio::time::timeout(Duration::from_secs(1), &mut confirm).await {
                Ok(_) => "it came after a later frame on the channel (a passive declare)",
                Err(_) => {
                    let extra = ids.fetch_add(1, Ordering::Relaxed);
                    model.lock().unwrap().published(extra);
                    let _later = channel
                        .basic_publish(
                            "".into(),
                            QUEUE.into(),
                            BasicPublishOptions::default(),
                            extra.to_string().as_bytes(),
                            persistent(),
                        )
                        .await?;
                    match tokio::time::timeout(STALL, &mut confirm).await {
                        Ok(_) => "it came after a later persistent publish (a later sync)",
                        Err(_) => "it never came, not even after a later frame and a later sync",
                    }
                }
            };
            let mut model = model.lock().unwrap();
            model.stalled_confirms += 1;
            model.violations.push(format!(
                "stalled confirm: no basic.ack or basic.nack for persistent message {marker} \
                 within {STALL:?} while the broker was running; {woken}"
            ));
            return Ok(());
        }
    };
    if let Confirmation::Ack(_) = confirmation {
        let mut model = model.lock().unwrap();
        model.confirmed(marker);
        model.acks_synced(acked);
    } else {
        model.lock().unwrap().nacks_total += 1;
    }
    Ok(())
}

async fn publisher(addr: String, model: Shared, ids: Arc<AtomicU64>) -> lapin::Result<()> {
    let (_conn, channel) = connect(&addr).await?;
    let mut sent = 0;
    while sent < MAX_PER_PUBLISHER {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let id = ids.fetch_add(1, Ordering::Relaxed);
            model.lock().unwrap().published(id);
            let confirm = channel
                .basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    id.to_string().as_bytes(),
                    persistent().with_message_id(id.to_string().into()),
                )
                .await?;
            batch.push((id, confirm));
        }
        sent += BATCH as u64;
        for (id, confirm) in batch {
            match confirm.await? {
                Confirmation::Ack(_) => model.lock().unwrap().confirmed(id),
                _ => model.lock().unwrap().nacks_total += 1,
            }
        }
    }
    Ok(())
}

async fn consumer(
    addr: String,
    model: Shared,
    ids: Arc<AtomicU64>,
    mut rng: StdRng,
) -> lapin::Result<()> {
    let (_conn, channel) = connect(&addr).await?;
    channel.basic_qos(50, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            QUEUE.into(),
            "crash".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut acked = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(50), deliveries.next()).await {
            Ok(None) => return Ok(()),
            Ok(Some(delivery)) => {
                let delivery = delivery?;
                let id = parse_id(&delivery.data);
                model.lock().unwrap().deliver(id, delivery.redelivered);
                if let Some(id) = id
                    && rng.random_bool(0.7)
                {
                    channel
                        .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                        .await?;
                    model.lock().unwrap().ack_sent(id);
                    acked.push(id);
                }
            }
            Err(_) => {}
        }
        if acked.len() >= 20 || (!acked.is_empty() && rng.random_bool(0.1)) {
            sync_acks(&channel, &model, &ids, &acked).await?;
            acked.clear();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_sigkill_and_synced_acks_stay_acked() {
    let rounds: usize = std::env::var("WARREN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("WARREN_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let start_kills = std::env::var("WARREN_CRASH_START_KILLS").is_ok_and(|v| v == "1");
    println!(
        "crash test: {rounds} rounds, WARREN_CRASH_SEED={seed}, WARREN_CRASH_START_KILLS={}",
        u8::from(start_kills)
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let model: Shared = Arc::default();
    let ids = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    for round in 0..=rounds {
        let log = logs.path().join(format!("broker-{round}.log"));
        // With WARREN_CRASH_START_KILLS=1, now and then a kill while the broker is still
        // starting (recovering). Off by default: see "Crash tests" in docs/storage-format.md.
        if start_kills && round > 0 && rng.random_bool(0.2) {
            let delay = Duration::from_millis(rng.random_range(0..30));
            println!("round {round}: kill during start after {delay:?}");
            start_and_kill_early(data.path(), &log, delay).await;
        }
        let broker = start(data.path(), &log).await;
        let inspected = tokio::time::timeout(
            PATIENCE * 2,
            inspect(&broker.addr, &model, &ids, &mut rng, round == 0),
        )
        .await
        .unwrap_or_else(|_| Err("the inspection hangs".into()));
        let inspected = inspected.unwrap_or_else(|e| {
            panic!(
                "seed {seed}, round {round}: after the restart:\n{e}\nbroker log:\n{}",
                tail(&log)
            )
        });
        if round == rounds {
            break;
        }
        let delay = Duration::from_millis(rng.random_range(10..800));
        let before = model.lock().unwrap().confirmed_total;
        let killed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for n in 0..=PUBLISHERS {
            let (addr, model, ids, killed) = (
                broker.addr.clone(),
                model.clone(),
                ids.clone(),
                killed.clone(),
            );
            let consumer_rng = StdRng::seed_from_u64(rng.random());
            tasks.push(tokio::spawn(async move {
                let result = if n < PUBLISHERS {
                    publisher(addr, model.clone(), ids).await
                } else {
                    consumer(addr, model.clone(), ids, consumer_rng).await
                };
                // Errors before the kill are the broker's fault; after it they are expected.
                if let Err(e) = result
                    && !killed.load(Ordering::SeqCst)
                {
                    let who = if n < PUBLISHERS {
                        "publisher"
                    } else {
                        "consumer"
                    };
                    model
                        .lock()
                        .unwrap()
                        .violations
                        .push(format!("{who} failed before the kill: {e}"));
                }
            }));
        }
        tokio::time::sleep(delay).await;
        killed.store(true, Ordering::SeqCst);
        kill(broker).await;
        for task in tasks {
            match tokio::time::timeout(PATIENCE, task).await {
                Ok(Ok(())) => {}
                Ok(Err(join)) => {
                    panic!("seed {seed}, round {round}: a client task panicked: {join}")
                }
                Err(_) => panic!("seed {seed}, round {round}: a client hangs after the kill"),
            }
        }
        let model_now = model.lock().unwrap();
        println!(
            "round {round}: checked {inspected} messages, killed after {delay:?}, {} confirmed \
             meanwhile, {} alive",
            model_now.confirmed_total - before,
            model_now.alive.len()
        );
        assert!(
            model_now.violations.is_empty(),
            "seed {seed}, round {round}: while running:\n{}",
            model_now.violations.join("\n")
        );
        drop(model_now);
    }
    let model = model.lock().unwrap();
    println!(
        "crash test done in {:?}: {} confirms, {} synced acks, {} nacks, {} stalled confirms",
        began.elapsed(),
        model.confirmed_total,
        model.certain_acks_total,
        model.nacks_total,
        model.stalled_confirms,
    );
    // The last inspection ran after the last per-round check.
    assert!(
        model.violations.is_empty(),
        "seed {seed}, last inspection:\n{}",
        model.violations.join("\n")
    );
    assert_eq!(model.stalled_confirms, 0, "seed {seed}: stalled confirms");
    // The checks above must have had something to check.
    assert!(
        model.confirmed_total >= rounds as u64 * 10,
        "too few confirms"
    );
    assert!(model.certain_acks_total > 0, "no ack was ever synced");
}

/// A durable priority queue after SIGKILL: every confirmed message comes back in priority
/// order, FIFO within a priority, all flagged redelivered (after an unclean stop any of them may
/// have been delivered); an acked one whose ack a later confirm covered stays gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_priority_queue_keeps_its_order_after_sigkill() {
    use lapin::options::{BasicGetOptions, BasicRejectOptions};
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("broker.log");
    let queue = "crash.prio";
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), lapin::types::AMQPValue::LongInt(9));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let publish = |channel: Channel, body: String, priority: u8| async move {
        let props = persistent().with_priority(priority);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .unwrap();
        assert_eq!(confirm.await.unwrap(), Confirmation::Ack(None));
    };
    let broker = start(data.path(), &log).await;
    let (_conn, channel) = connect(&broker.addr).await.unwrap();
    channel
        .queue_declare(queue.into(), durable, args.clone())
        .await
        .unwrap();
    // Priorities 0..=9 (and 12, capped at 9), five messages each, interleaved.
    for n in 0..5 {
        for priority in [3u8, 0, 9, 12, 5, 1] {
            publish(channel.clone(), format!("p{priority}-{n}"), priority).await;
        }
    }
    // One message acked (a later confirm covers the ack), one rejected back (requeued).
    let first = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.delivery.data, b"p9-0");
    channel
        .basic_ack(first.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    let second = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.delivery.data, b"p12-0");
    channel
        .basic_reject(
            second.delivery.delivery_tag,
            BasicRejectOptions { requeue: true },
        )
        .await
        .unwrap();
    publish(channel.clone(), "p0-late".to_string(), 0).await;
    kill(broker).await;

    let broker = start(data.path(), &log).await;
    let (_conn, channel) = connect(&broker.addr).await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        assert!(
            m.delivery.redelivered,
            "after kill -9 every message may have been delivered"
        );
        got.push(String::from_utf8(m.delivery.data).unwrap());
    }
    let mut want = Vec::new();
    // Level 9 holds 9 and 12 in publish order; "p9-0" was acked.
    for n in 0..5 {
        for priority in [9, 12] {
            if (priority, n) != (9, 0) {
                want.push(format!("p{priority}-{n}"));
            }
        }
    }
    for priority in [5, 3, 1, 0] {
        for n in 0..5 {
            want.push(format!("p{priority}-{n}"));
        }
    }
    want.push("p0-late".to_string());
    assert_eq!(got, want, "broker log:\n{}", tail(&log));
}
