//! Routing throughput, bind/unbind cost and memory per binding for issue 3's scenarios.
//!
//! `cargo bench -p warren-router --bench routing` runs the full sizes; under `cargo test
//! --all-targets` criterion runs each benchmark once, and the sizes shrink so it stays quick.
//!
//! Time is the benchmark thread's CPU time, not wall time: the machine is shared by several
//! builds at once (load averages of 10 on 2 cores), and wall time then mostly measures how
//! often the thread was descheduled. CPU time still includes cache misses caused by the
//! neighbours, so figures remain somewhat pessimistic.
// The counting allocator below is the only unsafe code: a GlobalAlloc impl has to be unsafe.
// It delegates to the system allocator and only adds two atomic counters.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // A benchmark set-up failure is a bug.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;
use std::time::Duration;

use cpu_time::ThreadTime;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use warren_codec::{FieldTable, FieldValue, ShortString};
use warren_router::{Binding, ExchangeDef, ExchangeKind, RouteBuf, RouteOutcome, Topology};

/// Counts live heap bytes, for the memory-per-binding figure.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Criterion measurement: CPU time of the benchmark thread.
struct ThreadCpu;

/// Wall time's formatter prints durations, which is what ThreadCpu measures too.
static WALL_TIME: WallTime = WallTime;

impl Measurement for ThreadCpu {
    type Intermediate = ThreadTime;
    type Value = Duration;

    fn start(&self) -> ThreadTime {
        ThreadTime::now()
    }

    fn end(&self, start: ThreadTime) -> Duration {
        start.elapsed()
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        WALL_TIME.formatter()
    }
}

type Bench = Criterion<ThreadCpu>;

type Handle = Arc<String>;

/// Full sizes under `cargo bench`, small ones under `cargo test` (criterion's test mode).
fn scale(full: usize) -> usize {
    if std::env::args().any(|arg| arg == "--bench") {
        full
    } else {
        (full / 50).max(10)
    }
}

fn name(s: &str) -> ShortString {
    ShortString::try_from(s).unwrap()
}

fn topology_with(kind: ExchangeKind) -> Topology<Handle> {
    let topology = Topology::new("/");
    topology
        .declare_exchange(ExchangeDef::new(name("x"), kind))
        .unwrap();
    topology
}

fn add_queue(topology: &Topology<Handle>, queue: &str) {
    topology.add_queue(name(queue), Arc::new(queue.to_string()));
}

fn bind(topology: &Topology<Handle>, queue: &str, key: &str) {
    topology
        .bind(&Binding::queue(name("x"), name(queue), name(key)))
        .unwrap();
}

/// Routes `keys` round-robin, one message per iteration, checking each is routed.
fn bench_route(
    c: &mut Bench,
    id: &str,
    topology: &Topology<Handle>,
    keys: &[String],
    headers: &[FieldTable],
) {
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    let mut out = RouteBuf::new();
    let mut i = 0usize;
    group.bench_function(id, |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let headers = headers.get(i % headers.len().max(1));
            let outcome = topology.route(b"x", &[black_box(keys[i].as_bytes())], headers, &mut out);
            debug_assert!(matches!(outcome, RouteOutcome::Routed(_)));
            outcome
        })
    });
    group.finish();
}

fn direct(c: &mut Bench) {
    let n = scale(10_000);
    let topology = topology_with(ExchangeKind::Direct);
    let keys: Vec<String> = (0..n).map(|i| format!("orders.key.{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let queue = format!("q{i}");
        add_queue(&topology, &queue);
        bind(&topology, &queue, key);
    }
    bench_route(c, &format!("direct/{n}_bindings"), &topology, &keys, &[]);
}

fn fanout(c: &mut Bench) {
    for n in [10, scale(1000)] {
        let topology = topology_with(ExchangeKind::Fanout);
        for i in 0..n {
            let queue = format!("q{i}");
            add_queue(&topology, &queue);
            bind(&topology, &queue, "");
        }
        bench_route(
            c,
            &format!("fanout/{n}_queues"),
            &topology,
            &["k".to_string()],
            &[],
        );
    }
}

/// Topic bindings as applications write them: a third each of `region.N.*`, `*.N.orders`
/// and `region.N.#`, over N distinct second words.
fn topic_topology(n: usize) -> (Topology<Handle>, Vec<String>) {
    let topology = topology_with(ExchangeKind::Topic);
    for i in 0..n {
        let queue = format!("q{i}");
        add_queue(&topology, &queue);
        let pattern = match i % 3 {
            0 => format!("region.{}.*", i / 3),
            1 => format!("*.{}.orders", i / 3),
            _ => format!("region.{}.#", i / 3),
        };
        bind(&topology, &queue, &pattern);
    }
    let keys = (0..n / 3).map(|i| format!("region.{i}.orders")).collect();
    (topology, keys)
}

fn topic(c: &mut Bench) {
    for n in [scale(10_000), scale(100_000)] {
        let (topology, keys) = topic_topology(n);
        bench_route(c, &format!("topic/{n}_bindings"), &topology, &keys, &[]);
    }
    // Adversarial: patterns of alternating `#` and words against a key of 128 words.
    let topology = topology_with(ExchangeKind::Topic);
    add_queue(&topology, "q");
    bind(&topology, "q", "a.#.a.#.a.#.a.#.a.#.a.#.a.#.a.#.b");
    bind(&topology, "q", "#.#.#.#.#.#.#.#.#.#.#.#.*.*.*.*.b");
    bind(&topology, "q", "#");
    let key = vec!["a"; 128].join(".");
    bench_route(c, "topic/adversarial_128_words", &topology, &[key], &[]);
    // Worse: many distinct patterns with several `#` each, so the trie has many nodes below
    // two `#`, against the longest key (255 bytes) whose words match them. The cost is bounded
    // by nodes x (words + 1), which is what this measures.
    let n = scale(1000);
    let topology = topology_with(ExchangeKind::Topic);
    add_queue(&topology, "q");
    bind(&topology, "q", "#");
    for i in 0..n {
        let pattern = format!(
            "#.w{}.#.*.#.w{}.#.w{}",
            i % 10,
            (i / 10) % 10,
            (i / 100) % 10
        );
        bind(&topology, "q", &pattern);
    }
    let key = (0..84)
        .map(|i| format!("w{}", i % 10))
        .collect::<Vec<_>>()
        .join(".");
    assert!(key.len() <= 255);
    bench_route(
        c,
        &format!("topic/adversarial_{n}_patterns_84_words"),
        &topology,
        &[key],
        &[],
    );
}

fn headers(c: &mut Bench) {
    let n = scale(1000);
    let topology = topology_with(ExchangeKind::Headers);
    let long = |s: &str| FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()));
    for i in 0..n {
        let queue = format!("q{i}");
        add_queue(&topology, &queue);
        let mut arguments = FieldTable::new();
        arguments.insert(name("customer"), FieldValue::I32(i as i32));
        if i % 2 == 0 {
            arguments.insert(name("x-match"), long("all"));
            arguments.insert(name("format"), long("pdf"));
        } else {
            arguments.insert(name("x-match"), long("any"));
            arguments.insert(name("region"), long(&format!("nowhere-{i}")));
        }
        let binding = Binding::queue(name("x"), name(&queue), name("")).with_arguments(arguments);
        topology.bind(&binding).unwrap();
    }
    let messages: Vec<FieldTable> = (0..n)
        .map(|i| {
            let mut headers = FieldTable::new();
            headers.insert(name("format"), long("pdf"));
            headers.insert(name("customer"), FieldValue::I64(i as i64));
            headers.insert(name("region"), long("eu"));
            headers
        })
        .collect();
    let keys: Vec<String> = (0..n).map(|_| String::new()).collect();
    bench_route(
        c,
        &format!("headers/{n}_bindings"),
        &topology,
        &keys,
        &messages,
    );
}

/// Binds then unbinds `n` bindings on a fresh topology with `n` queues already declared.
fn bind_unbind(c: &mut Bench) {
    let n = scale(100_000);
    let mut group = c.benchmark_group("bind_unbind");
    group.sample_size(10);
    group.throughput(Throughput::Elements(2 * n as u64));
    for kind in [
        ExchangeKind::Direct,
        ExchangeKind::Topic,
        ExchangeKind::Fanout,
    ] {
        let bindings: Vec<Binding> = (0..n)
            .map(|i| {
                let key = match kind {
                    ExchangeKind::Topic => format!("a.{}.*.#", i % 1000),
                    _ => format!("key.{i}"),
                };
                Binding::queue(name("x"), name(&format!("q{i}")), name(&key))
            })
            .collect();
        group.bench_function(format!("{}/{n}", kind.as_str()), |b| {
            b.iter_batched(
                || {
                    let topology = topology_with(kind);
                    for i in 0..n {
                        add_queue(&topology, &format!("q{i}"));
                    }
                    topology
                },
                |topology| {
                    for binding in &bindings {
                        topology.bind(binding).unwrap();
                    }
                    for binding in &bindings {
                        topology.unbind(binding).unwrap();
                    }
                    topology
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// Heap bytes per binding (queues declared first, so only bindings are counted).
fn memory(_c: &mut Bench) {
    let n = scale(100_000);
    for kind in [
        ExchangeKind::Direct,
        ExchangeKind::Topic,
        ExchangeKind::Fanout,
    ] {
        let topology = topology_with(kind);
        for i in 0..n {
            add_queue(&topology, &format!("q{i}"));
        }
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        for i in 0..n {
            let key = match kind {
                ExchangeKind::Topic => format!("region.{}.*", i),
                _ => format!("orders.key.{i}"),
            };
            bind(&topology, &format!("q{i}"), &key);
        }
        let after = LIVE_BYTES.load(Ordering::Relaxed);
        println!(
            "memory/{}: {} bytes per binding ({n} bindings, keys ~16 bytes)",
            kind.as_str(),
            (after - before) / n as isize
        );
        black_box(&topology);
    }
}

fn config() -> Bench {
    // Short runs: the machine is shared, and these figures are stable within a few percent.
    Criterion::default()
        .with_measurement(ThreadCpu)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// Routing allocates nothing once its `RouteBuf` has warmed up (direct, fanout, topic with
/// one `#`, default exchange). Asserted, so `cargo test --all-targets` checks it.
fn no_allocation(_c: &mut Bench) {
    let direct = topology_with(ExchangeKind::Direct);
    let fanout = topology_with(ExchangeKind::Fanout);
    let topic = topology_with(ExchangeKind::Topic);
    for i in 0..100 {
        let queue = format!("q{i}");
        for topology in [&direct, &fanout, &topic] {
            add_queue(topology, &queue);
        }
        bind(&direct, &queue, &format!("k{i}"));
        bind(&fanout, &queue, "");
        bind(&topic, &queue, &format!("a.{i}.#"));
    }
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    let topic_keys: Vec<String> = (0..100).map(|i| format!("a.{i}.b.c")).collect();
    let mut out = RouteBuf::new();
    let run = |out: &mut RouteBuf<Handle>| {
        for i in 0..100 {
            let routed = [
                direct.route(b"x", &[keys[i].as_bytes()], None, out),
                fanout.route(b"x", &[b"k"], None, out),
                topic.route(b"x", &[topic_keys[i].as_bytes()], None, out),
                direct.route(b"", &[keys[i].as_bytes(), b"q1"], None, out),
            ];
            assert!(routed.iter().all(|r| matches!(r, RouteOutcome::Routed(_))));
        }
    };
    run(&mut out);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    run(&mut out);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!("allocations/route after warm-up: {allocations} in 400 routes");
    assert_eq!(allocations, 0, "routing allocated after warm-up");
}

criterion_group! {
    name = benches;
    config = config();
    targets = direct, fanout, topic, headers, bind_unbind, memory, no_allocation
}
criterion_main!(benches);
