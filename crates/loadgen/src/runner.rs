//! The four modes (run, backlog, idle, declare): setting up, starting producers and consumers, waiting
//! for them, reading the broker's memory and CPU around it, and building the report.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::check::{Checker, Verdict, judge_expiring_queue};
use crate::cli::{Args, Mode};
use crate::client::{CHANNEL, ClientError, Conn, Endpoint};
use crate::consumer::{self, ConsumerConfig, ConsumerResult};
use crate::procfs::{PeakSampler, Sample, Target};
use crate::producer::{self, ProducerConfig, ProducerResult};
use crate::report::{
    self, BacklogFigures, BrokerFigures, DeclareFigures, IdleFigures, LoadgenFigures, Report,
};
use crate::stats::{Latency, Shared, new_histogram};
use crate::topology::{Topology, TopologySpec};
use crate::wire::Table;
use crate::wire::{In, Out};

/// How often the background sampler reads the broker's RSS.
const PEAK_SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Idle connections opened at once.
const IDLE_OPEN_CONCURRENCY: usize = 32;
/// How far in the future "no deadline" is.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Runs the mode the arguments ask for and returns the report.
pub async fn run(args: Args, queue_args: Table) -> anyhow::Result<Report> {
    let endpoint = Endpoint::parse(&args.uri)?;
    let shared = Arc::new(Shared::new());
    let mut report = Report::new(&args, &endpoint);
    match args.mode {
        Mode::Run | Mode::Backlog => {
            traffic(&args, &endpoint, queue_args, shared, &mut report).await?
        }
        Mode::Idle => idle(&args, &endpoint, &mut report).await?,
        Mode::Declare => declare(&args, &endpoint, queue_args, &mut report).await?,
    }
    report.finish(args.no_check);
    Ok(report)
}

fn topology_of(args: &Args, queue_args: Table) -> Topology {
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("loadgen.{}", std::process::id()));
    Topology::new(&TopologySpec {
        prefix,
        exchange: args.exchange.clone(),
        exchange_type: args.exchange_type,
        queues: args.queues,
        producers: args.producers,
        routing_key: args.routing_key.clone(),
        binding_key: args.binding_key.clone(),
        durable: args.durable,
        queue_args,
    })
}

struct Consumers {
    handles: Vec<JoinHandle<Result<ConsumerResult, ClientError>>>,
    stop: watch::Sender<bool>,
}

async fn start_consumers(
    args: &Args,
    endpoint: &Endpoint,
    topology: &Topology,
    shared: &Arc<Shared>,
) -> anyhow::Result<Consumers> {
    let (stop, stopped) = watch::channel(false);
    let mut handles = Vec::new();
    let mut readies = Vec::new();
    for id in 0..args.consumers {
        let queue_index = id % topology.queues.len();
        let config = ConsumerConfig {
            id,
            queue_index,
            queue: topology.queues[queue_index].clone(),
            producers: args.producers,
            prefetch: args.prefetch,
            autoack: args.autoack,
            multi_ack: args.multi_ack,
        };
        let (ready, is_ready) = oneshot::channel();
        readies.push(is_ready);
        handles.push(tokio::spawn(consumer::run(
            endpoint.clone(),
            config,
            shared.clone(),
            ready,
            stopped.clone(),
        )));
    }
    for (i, ready) in readies.into_iter().enumerate() {
        if ready.await.is_err() {
            // The consumer task ended before consuming: surface its error.
            let handle = handles.remove(i);
            let error = match handle.await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => "ended early".to_string(),
                Err(e) => e.to_string(),
            };
            anyhow::bail!("consumer {i} failed to start: {error}");
        }
    }
    Ok(Consumers { handles, stop })
}

fn start_producers(
    args: &Args,
    endpoint: &Endpoint,
    topology: &Topology,
    shared: &Arc<Shared>,
    counts: &[u64],
    deadline: Instant,
) -> Vec<JoinHandle<Result<ProducerResult, ClientError>>> {
    (0..args.producers)
        .map(|p| {
            let config = ProducerConfig {
                id: p as u32,
                exchange: topology.exchange.clone(),
                routing_key: topology.routing_keys[p].clone(),
                headers: topology.message_headers(p),
                size: args.size,
                persistent: args.persistent,
                expirations: args.expirations(),
                confirm_window: args.confirm,
                rate: args.rate,
                count: counts.get(p).copied().unwrap_or(0),
                deadline,
                confirm_timeout: Duration::from_secs_f64(args.drain_timeout),
            };
            tokio::spawn(producer::run(endpoint.clone(), config, shared.clone()))
        })
        .collect()
}

/// Prints one line per second on stderr until stopped.
fn start_progress(shared: Arc<Shared>, broker: Option<Target>, quiet: bool) -> watch::Sender<bool> {
    let (stop, mut stopped) = watch::channel(false);
    if quiet {
        return stop;
    }
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
        let mut last = shared.snapshot();
        let mut last_broker = broker.and_then(|b| b.sample());
        let mut last_at = start;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => break,
            }
            let now = Instant::now();
            let secs = (now - last_at).as_secs_f64().max(1e-9);
            let counts = shared.snapshot();
            let latency = Latency::of(&shared.take_interval());
            let broker_now = broker.and_then(|b| b.sample());
            let broker_text = match (last_broker, broker_now) {
                (Some(a), Some(b)) => format!(
                    ", broker rss {} MiB cpu {:.0}%",
                    b.rss_kib / 1024,
                    (b.cpu_us.saturating_sub(a.cpu_us)) as f64 / 1e6 / secs * 100.0
                ),
                _ => String::new(),
            };
            eprintln!(
                "time {:.0}s, sent {:.0} msg/s, confirmed {:.0} msg/s, received {:.0} msg/s, latency p50/p99 {}/{} us{}",
                (now - start).as_secs_f64(),
                (counts.published - last.published) as f64 / secs,
                (counts.confirmed - last.confirmed) as f64 / secs,
                (counts.consumed - last.consumed) as f64 / secs,
                latency.p50_us,
                latency.p99_us,
                broker_text
            );
            last = counts;
            last_broker = broker_now;
            last_at = now;
        }
    });
    stop
}

/// Waits until `shared.consumed` reaches `expected`, or nothing arrived for `timeout`.
async fn wait_consumed(shared: &Shared, expected: u64, timeout: Duration) {
    let mut last = shared.snapshot().consumed;
    let mut last_change = Instant::now();
    loop {
        let consumed = shared.snapshot().consumed;
        if consumed >= expected {
            return;
        }
        if consumed != last {
            last = consumed;
            last_change = Instant::now();
        } else if last_change.elapsed() >= timeout {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Messages the consumers should receive: for each queue that has a consumer, the messages of
/// every producer routed to it.
fn expected_deliveries(topology: &Topology, published: &[u64], consumers: usize) -> u64 {
    (0..topology.queues.len().min(consumers))
        .map(|q| {
            topology
                .routed_to(q)
                .iter()
                .zip(published)
                .filter(|(routed, _)| **routed)
                .map(|(_, n)| *n)
                .sum::<u64>()
        })
        .sum()
}

fn sample(target: Option<Target>) -> Option<Sample> {
    target.and_then(|t| t.sample())
}

async fn traffic(
    args: &Args,
    endpoint: &Endpoint,
    queue_args: Table,
    shared: Arc<Shared>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let broker = args.broker_pid.map(Target::Pid);
    let topology = topology_of(args, queue_args);
    let mut setup = Conn::open(endpoint).await?;
    topology.declare(&mut setup).await?;
    let backlog = args.mode == Mode::Backlog;

    let broker_before = sample(broker);
    let self_before = Target::This.sample();
    let peak = broker.map(|b| PeakSampler::start(b, PEAK_SAMPLE_EVERY));
    let progress = start_progress(shared.clone(), broker, args.quiet);

    // In a run, consumers are there from the start; in a backlog they come after the fill.
    let mut consumers = if backlog {
        None
    } else {
        Some(start_consumers(args, endpoint, &topology, &shared).await?)
    };
    let counts: Vec<u64> = if backlog {
        let producers = args.producers.max(1) as u64;
        (0..producers)
            .map(|p| args.backlog / producers + u64::from(p < args.backlog % producers))
            .collect()
    } else {
        vec![args.count; args.producers]
    };
    let deadline = if backlog || (args.count > 0 && args.time == 0.0) {
        Instant::now() + FOREVER
    } else {
        Instant::now() + Duration::from_secs_f64(args.time)
    };
    let start = Instant::now();
    let start_nanos = shared.now_nanos();
    let mut results = Vec::new();
    for (p, handle) in start_producers(args, endpoint, &topology, &shared, &counts, deadline)
        .into_iter()
        .enumerate()
    {
        match handle.await {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(e)) => {
                report.errors.push(format!("producer {p}: {e}"));
                // What it published before failing is unknown past the shared counter.
                results.push(ProducerResult::default());
            }
            Err(e) => {
                report.errors.push(format!("producer {p}: {e}"));
                results.push(ProducerResult::default());
            }
        }
    }
    // Publishing ends when the last producer wrote (and had confirmed) its last message; closing
    // its connection afterwards waits for the broker to catch up, which is not publishing.
    let finished_nanos = results.iter().map(|r| r.finished_nanos).max().unwrap_or(0);
    let publish_s = if finished_nanos > start_nanos {
        (finished_nanos - start_nanos) as f64 / 1e9
    } else {
        start.elapsed().as_secs_f64()
    };
    let published: Vec<u64> = results.iter().map(|r| r.published).collect();
    // Messages that expire before the drain (backlog with --expiration) are not expected.
    let expiring = args.expiring_cycle();
    let expires =
        |seq: u64| !expiring.is_empty() && expiring[(seq % expiring.len() as u64) as usize];
    let arriving: Vec<u64> = published
        .iter()
        .map(|&n| n - (0..n).filter(|seq| expires(*seq)).count() as u64)
        .collect();
    let expected = expected_deliveries(&topology, &arriving, args.consumers);
    let drain_timeout = Duration::from_secs_f64(args.drain_timeout);

    let mut drain_start = start;
    if backlog {
        // The fill is complete once the broker counts every routed message as ready.
        let routed_total = expected_deliveries(&topology, &published, topology.queues.len());
        let mut last = 0;
        let mut last_change = Instant::now();
        // With --expiration (which needs confirms) the confirms say the fill is complete: the
        // count of ready messages may never reach the total, as some expire meanwhile.
        while args.expiration.is_none() {
            let ready = topology.ready_messages(&mut setup).await?;
            if ready >= routed_total {
                break;
            }
            if ready != last {
                last = ready;
                last_change = Instant::now();
            } else if last_change.elapsed() >= drain_timeout {
                report.errors.push(format!(
                    "backlog: only {ready} of {routed_total} messages became ready"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let fill_s = start.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
        let full = sample(broker);
        let ready_after_settle = topology.ready_messages(&mut setup).await?;
        report.backlog = Some(BacklogFigures {
            messages: routed_total,
            fill_s,
            fill_rate: report::rate(routed_total, fill_s),
            rss_full_kib: full.map(|s| s.rss_kib),
            ready_after_settle,
            drain_s: 0.0,
            drain_rate: 0.0,
        });
        drain_start = Instant::now();
        consumers = Some(start_consumers(args, endpoint, &topology, &shared).await?);
    }

    wait_consumed(&shared, expected, drain_timeout).await;
    let end_s = start.elapsed().as_secs_f64();
    let broker_after = sample(broker);
    let self_after = Target::This.sample();
    let _ = progress.send(true);

    let mut consumer_results = Vec::new();
    if let Some(consumers) = consumers {
        let _ = consumers.stop.send(true);
        for (c, handle) in consumers.handles.into_iter().enumerate() {
            match handle.await {
                Ok(Ok(result)) => consumer_results.push(result),
                Ok(Err(e)) => report.errors.push(format!("consumer {c}: {e}")),
                Err(e) => report.errors.push(format!("consumer {c}: {e}")),
            }
        }
    }
    if !args.keep
        && let Err(e) = topology.delete(&mut setup).await
    {
        report.errors.push(format!("cleanup: {e}"));
    }
    let _ = setup.close().await;

    // Figures.
    let consumed: u64 = consumer_results.iter().map(|r| r.consumed).sum();
    let last_nanos = consumer_results
        .iter()
        .map(|r| r.last_nanos)
        .max()
        .unwrap_or(0);
    let consume_s = if last_nanos > start_nanos {
        let from = if backlog {
            (drain_start - start).as_secs_f64()
        } else {
            0.0
        };
        (last_nanos - start_nanos) as f64 / 1e9 - from
    } else {
        end_s
    };
    let mut latency = new_histogram();
    for r in &consumer_results {
        let _ = latency.add(&r.latency);
    }
    report.published = published.iter().sum();
    report.confirmed = results.iter().map(|r| r.confirmed).sum();
    report.nacked = results.iter().map(|r| r.nacked).sum();
    report.returned = results.iter().map(|r| r.returned).sum();
    report.unconfirmed = results.iter().map(|r| r.unconfirmed).sum();
    report.bogus_confirms = results.iter().map(|r| r.bogus_confirms).sum();
    report.consumed = consumed;
    report.redelivered = consumer_results.iter().map(|r| r.redelivered).sum();
    report.expected = expected;
    report.publish_s = publish_s;
    report.elapsed_s = end_s;
    report.publish_rate = report::rate(report.published, publish_s);
    report.confirm_rate = report::rate(report.confirmed, publish_s);
    report.consume_rate = report::rate(consumed, consume_s);
    report.latency = Latency::of(&latency);
    if let Some(b) = report.backlog.as_mut() {
        b.drain_s = consume_s;
        b.drain_rate = report::rate(consumed, consume_s);
    }

    // The verdict, queue by queue, over the queues that had consumers.
    let mut verdict = Verdict::default();
    for q in 0..topology.queues.len().min(args.consumers) {
        let checkers: Vec<&Checker> = consumer_results
            .iter()
            .filter(|r| r.queue_index == q)
            .map(|r| &r.checker)
            .collect();
        verdict.add(&judge_expiring_queue(
            &checkers,
            &published,
            &topology.routed_to(q),
            expires,
        ));
    }
    report.check = verdict;

    if let (Some(before), Some(after)) = (broker_before, broker_after) {
        report.broker = Some(BrokerFigures::new(
            args.broker_pid.unwrap_or(0),
            before,
            after,
            peak.as_ref().map(|p| p.peak_kib()).unwrap_or(0),
            report.published,
            consumed,
        ));
    }
    if let (Some(before), Some(after)) = (self_before, self_after) {
        report.loadgen = Some(LoadgenFigures::new(
            before,
            after,
            report.published,
            consumed,
        ));
    }
    Ok(())
}

async fn idle(args: &Args, endpoint: &Endpoint, report: &mut Report) -> anyhow::Result<()> {
    let broker = args.broker_pid.map(Target::Pid);
    let before = sample(broker);
    let (stop, stopped) = watch::channel(false);
    let permits = Arc::new(tokio::sync::Semaphore::new(IDLE_OPEN_CONCURRENCY));
    let mut opened_rx = Vec::new();
    let mut handles = Vec::new();
    let start = Instant::now();
    for _ in 0..args.connections {
        let endpoint = endpoint.clone();
        let permits = permits.clone();
        let mut stopped = stopped.clone();
        let channels = args.channels;
        let (opened, is_opened) = oneshot::channel::<Result<(), String>>();
        opened_rx.push(is_opened);
        handles.push(tokio::spawn(async move {
            let conn = {
                let _permit = permits.acquire().await;
                let attempt = async {
                    let mut conn = Conn::open(&endpoint).await?;
                    for channel in 2..=channels {
                        conn.open_channel(channel).await?;
                    }
                    Ok::<Conn, ClientError>(conn)
                };
                match attempt.await {
                    Ok(conn) => {
                        let _ = opened.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e.to_string()));
                        return;
                    }
                }
            };
            let _ = stopped.wait_for(|s| *s).await;
            let _ = conn.close().await;
        }));
    }
    let mut figures = IdleFigures {
        requested: args.connections,
        channels_per_connection: args.channels,
        ..Default::default()
    };
    for is_opened in opened_rx {
        match is_opened.await {
            Ok(Ok(())) => figures.opened += 1,
            Ok(Err(e)) => {
                figures.failed += 1;
                figures.first_error.get_or_insert(e);
            }
            Err(_) => figures.failed += 1,
        }
    }
    figures.open_s = start.elapsed().as_secs_f64();
    if !args.quiet {
        eprintln!(
            "opened {} connections ({} failed) in {:.1}s",
            figures.opened, figures.failed, figures.open_s
        );
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let open = sample(broker);
    let _ = stop.send(true);
    for handle in handles {
        let _ = handle.await;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle.min(2.0))).await;
    let after = sample(broker);
    figures.rss_before_kib = before.map(|s| s.rss_kib);
    figures.rss_open_kib = open.map(|s| s.rss_kib);
    figures.rss_after_kib = after.map(|s| s.rss_kib);
    if let (Some(b), Some(o)) = (before, open)
        && figures.opened > 0
    {
        figures.rss_per_connection_kib =
            Some(o.rss_kib.saturating_sub(b.rss_kib) as f64 / figures.opened as f64);
    }
    if figures.failed > 0 {
        report.errors.push(format!(
            "{} of {} connections failed: {}",
            figures.failed,
            figures.requested,
            figures.first_error.clone().unwrap_or_default()
        ));
    }
    report.idle = Some(figures);
    Ok(())
}

/// What a declare run does to each queue.
#[derive(Clone)]
enum QueueOp {
    Declare {
        durable: bool,
        arguments: Arc<Table>,
    },
    Delete,
}

/// Runs `op` on queues `PREFIX.d0..` from `connections` connections at once (queue `n` on
/// connection `n % connections`), each waiting for every reply; returns how many succeeded, the
/// seconds it took, and the first error.
async fn on_queues_concurrently(
    endpoint: &Endpoint,
    prefix: &str,
    queues: usize,
    connections: usize,
    op: QueueOp,
) -> (usize, f64, Option<String>) {
    let start = Instant::now();
    let mut handles = Vec::new();
    for index in 0..connections {
        let endpoint = endpoint.clone();
        let prefix = prefix.to_owned();
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = Conn::open(&endpoint).await?;
            let mut done = 0usize;
            for n in (index..queues).step_by(connections) {
                let queue = format!("{prefix}.d{n}");
                match &op {
                    QueueOp::Declare { durable, arguments } => {
                        let method = Out::QueueDeclare {
                            queue: &queue,
                            passive: false,
                            durable: *durable,
                            exclusive: false,
                            auto_delete: false,
                            arguments,
                        };
                        conn.call(CHANNEL, &method, "queue.declare-ok", |m| {
                            matches!(m, In::QueueDeclareOk { .. })
                        })
                        .await?;
                    }
                    QueueOp::Delete => {
                        let method = Out::QueueDelete { queue: &queue };
                        conn.call(CHANNEL, &method, "queue.delete-ok", |m| {
                            matches!(m, In::QueueDeleteOk { .. })
                        })
                        .await?;
                    }
                }
                done += 1;
            }
            let _ = conn.close().await;
            Ok::<usize, ClientError>(done)
        }));
    }
    let mut done = 0;
    let mut first_error = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(count)) => done += count,
            Ok(Err(e)) => {
                first_error.get_or_insert(e.to_string());
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    (done, start.elapsed().as_secs_f64(), first_error)
}

async fn declare(
    args: &Args,
    endpoint: &Endpoint,
    queue_args: Table,
    report: &mut Report,
) -> anyhow::Result<()> {
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("loadgen.{}", std::process::id()));
    let connections = args.producers.max(1);
    let broker = args.broker_pid.map(Target::Pid);
    let durable = args.durable;
    let before = sample(broker);
    let op = QueueOp::Declare {
        durable,
        arguments: Arc::new(queue_args),
    };
    let (declared, declare_s, error) =
        on_queues_concurrently(endpoint, &prefix, args.queues, connections, op).await;
    let after = sample(broker);
    if let Some(error) = error {
        report.errors.push(format!("declare: {error}"));
    }
    let mut figures = DeclareFigures {
        connections,
        durable,
        declared,
        declare_s,
        declares_per_s: declared as f64 / declare_s.max(1e-9),
        ..Default::default()
    };
    if let (Some(b), Some(a)) = (before, after)
        && declared > 0
    {
        figures.broker_cpu_us_per_declare =
            Some(a.cpu_us.saturating_sub(b.cpu_us) as f64 / declared as f64);
    }
    if !args.quiet {
        eprintln!(
            "declared {declared} queues from {connections} connections in {declare_s:.2}s: {:.0}/s",
            figures.declares_per_s
        );
    }
    if !args.keep {
        let (deleted, delete_s, error) =
            on_queues_concurrently(endpoint, &prefix, args.queues, connections, QueueOp::Delete)
                .await;
        if let Some(error) = error {
            report.errors.push(format!("delete: {error}"));
        }
        figures.deleted = deleted;
        figures.delete_s = delete_s;
        figures.deletes_per_s = deleted as f64 / delete_s.max(1e-9);
    }
    report.declare = Some(figures);
    Ok(())
}
