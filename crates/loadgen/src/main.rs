//! `warren-loadgen`: a PerfTest-style load generator for AMQP 0-9-1 brokers, with its own lean
//! client so that the broker, not the generator, is what a run measures.

mod check;
mod cli;
mod client;
mod consumer;
mod procfs;
mod producer;
mod report;
mod runner;
mod stats;
mod topology;
mod wire;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let queue_args = match args.validate() {
        Ok(table) => table,
        Err(e) => {
            eprintln!("warren-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("warren-loadgen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(runner::run(args, queue_args)) {
        Ok(report) => {
            match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("warren-loadgen: cannot encode the report: {e}"),
            }
            for error in &report.errors {
                eprintln!("warren-loadgen: {error}");
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("warren-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}
