//! The final report: one line of JSON on stdout, with the figures compare.sh tabulates.

use crate::check::Verdict;
use crate::cli::{Args, Mode};
use crate::client::Endpoint;
use crate::procfs::Sample;
use crate::stats::Latency;
use crate::topology::ExchangeType;

/// Messages per second, 0 when no time passed.
pub fn rate(messages: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        (messages as f64 / seconds).round()
    } else {
        0.0
    }
}

fn per_message(cpu_us: u64, messages: u64) -> Option<f64> {
    (messages > 0).then(|| (cpu_us as f64 / messages as f64 * 100.0).round() / 100.0)
}

/// The broker's memory and CPU around the run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerFigures {
    pub pid: u32,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_peak_kib: u64,
    pub cpu_us: u64,
    /// Broker CPU per published message: the machine-independent cost figure.
    pub cpu_us_per_msg: Option<f64>,
    /// Broker CPU per delivered message (differs from the above with fanout).
    pub cpu_us_per_delivery: Option<f64>,
}

impl BrokerFigures {
    pub fn new(
        pid: u32,
        before: Sample,
        after: Sample,
        peak_kib: u64,
        published: u64,
        consumed: u64,
    ) -> Self {
        let cpu_us = after.cpu_us.saturating_sub(before.cpu_us);
        BrokerFigures {
            pid,
            rss_before_kib: before.rss_kib,
            rss_after_kib: after.rss_kib,
            rss_peak_kib: peak_kib.max(after.rss_kib),
            cpu_us,
            cpu_us_per_msg: per_message(cpu_us, published),
            cpu_us_per_delivery: per_message(cpu_us, consumed),
        }
    }
}

/// The generator's own cost, to show it is not the bottleneck.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadgenFigures {
    pub rss_kib: u64,
    pub cpu_us: u64,
    pub cpu_us_per_msg: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
}

impl LoadgenFigures {
    pub fn new(before: Sample, after: Sample, published: u64, consumed: u64) -> Self {
        let cpu_us = after.cpu_us.saturating_sub(before.cpu_us);
        LoadgenFigures {
            rss_kib: after.rss_kib,
            cpu_us,
            cpu_us_per_msg: per_message(cpu_us, published),
            cpu_us_per_delivery: per_message(cpu_us, consumed),
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BacklogFigures {
    pub messages: u64,
    pub fill_s: f64,
    pub fill_rate: f64,
    pub rss_full_kib: Option<u64>,
    /// Ready messages the broker reported after the fill and the settle time (fewer than
    /// `messages` when some expired meanwhile and the broker took them out).
    pub ready_after_settle: u64,
    pub drain_s: f64,
    pub drain_rate: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IdleFigures {
    pub requested: usize,
    pub channels_per_connection: u16,
    pub opened: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub open_s: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_open_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_per_connection_kib: Option<f64>,
}

/// What a declare run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DeclareFigures {
    /// Connections declaring at once.
    pub connections: usize,
    pub durable: bool,
    /// Queues declared (each answered by declare-ok).
    pub declared: usize,
    pub declare_s: f64,
    pub declares_per_s: f64,
    /// The broker's CPU time per declare, when its PID was given.
    pub broker_cpu_us_per_declare: Option<f64>,
    /// Queues deleted afterwards (0 with --keep).
    pub deleted: usize,
    pub delete_s: f64,
    pub deletes_per_s: f64,
}

/// Everything printed as the final JSON line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub label: String,
    pub mode: Mode,
    pub broker_addr: String,
    pub producers: usize,
    pub consumers: usize,
    pub queues: usize,
    pub size: usize,
    pub rate_limit: f64,
    pub persistent: bool,
    pub confirm: u64,
    pub prefetch: u16,
    pub autoack: bool,
    pub multi_ack: u64,
    pub exchange_type: Option<ExchangeType>,
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub returned: u64,
    pub unconfirmed: u64,
    pub bogus_confirms: u64,
    pub consumed: u64,
    pub redelivered: u64,
    /// Deliveries the consumers should have received.
    pub expected: u64,
    pub publish_s: f64,
    pub elapsed_s: f64,
    pub publish_rate: f64,
    pub confirm_rate: f64,
    pub consume_rate: f64,
    pub latency: Latency,
    pub check: Verdict,
    pub broker: Option<BrokerFigures>,
    pub loadgen: Option<LoadgenFigures>,
    pub backlog: Option<BacklogFigures>,
    pub idle: Option<IdleFigures>,
    pub declare: Option<DeclareFigures>,
    pub errors: Vec<String>,
    /// No error, nothing lost, duplicated, reordered, nacked or left unconfirmed.
    pub ok: bool,
}

impl Report {
    pub fn new(args: &Args, endpoint: &Endpoint) -> Report {
        Report {
            label: args.label.clone(),
            mode: args.mode,
            broker_addr: endpoint.addr.clone(),
            producers: args.producers,
            consumers: args.consumers,
            queues: args.queues,
            size: args.size,
            rate_limit: args.rate,
            persistent: args.persistent,
            confirm: args.confirm,
            prefetch: args.prefetch,
            autoack: args.autoack,
            multi_ack: args.multi_ack,
            exchange_type: args.exchange_type,
            published: 0,
            confirmed: 0,
            nacked: 0,
            returned: 0,
            unconfirmed: 0,
            bogus_confirms: 0,
            consumed: 0,
            redelivered: 0,
            expected: 0,
            publish_s: 0.0,
            elapsed_s: 0.0,
            publish_rate: 0.0,
            confirm_rate: 0.0,
            consume_rate: 0.0,
            latency: Latency::default(),
            check: Verdict::default(),
            broker: None,
            loadgen: None,
            backlog: None,
            idle: None,
            declare: None,
            errors: Vec::new(),
            ok: false,
        }
    }

    /// Decides `ok`. With `no_check`, losses and reordering are reported but do not fail.
    pub fn finish(&mut self, no_check: bool) {
        let delivery_ok =
            no_check || (self.check.is_clean() && self.nacked == 0 && self.unconfirmed == 0);
        self.ok = self.errors.is_empty() && self.bogus_confirms == 0 && delivery_ok;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_lost_message_fails_the_run_unless_told_otherwise() {
        let args = Args::parse_from(["warren-loadgen"]);
        let endpoint = Endpoint::parse(&args.uri).unwrap();
        let mut report = Report::new(&args, &endpoint);
        report.finish(false);
        assert!(report.ok);
        report.check.lost = 1;
        report.finish(false);
        assert!(!report.ok);
        report.finish(true);
        assert!(report.ok);
        report.errors.push("producer 0: reset".into());
        report.finish(true);
        assert!(!report.ok);
    }

    #[test]
    fn json_has_the_figures_scripts_read() {
        let args = Args::parse_from(["warren-loadgen", "--label", "S1"]);
        let report = Report::new(&args, &Endpoint::parse(&args.uri).unwrap());
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        for key in [
            "label",
            "publish_rate",
            "consume_rate",
            "confirm_rate",
            "latency",
            "check",
            "broker",
            "ok",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["label"], "S1");
        assert_eq!(json["mode"], "run");
    }

    #[test]
    fn per_message_cost() {
        let before = Sample {
            rss_kib: 1000,
            cpu_us: 1_000_000,
        };
        let after = Sample {
            rss_kib: 3000,
            cpu_us: 3_000_000,
        };
        let b = BrokerFigures::new(1, before, after, 2500, 100_000, 200_000);
        assert_eq!(b.cpu_us, 2_000_000);
        assert_eq!(b.cpu_us_per_msg, Some(20.0));
        assert_eq!(b.cpu_us_per_delivery, Some(10.0));
        assert_eq!(b.rss_peak_kib, 3000);
    }
}
