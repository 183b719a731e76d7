//! Reading a process's resident memory and CPU time from Linux's /proc, for the broker (by PID)
//! and for the generator itself, so figures can be given per message and per connection.

use std::time::Duration;

/// Clock ticks per second in /proc/PID/stat. Linux reports USER_HZ, which is 100 on every
/// architecture we run on; hard-coding it avoids a libc dependency for one sysconf call.
const TICKS_PER_SECOND: u64 = 100;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Sample {
    /// Resident set size in KiB (VmRSS).
    pub rss_kib: u64,
    /// User plus system CPU time, in microseconds (10 ms resolution).
    pub cpu_us: u64,
}

/// Which process to read: `/proc/self` or a PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    This,
    Pid(u32),
}

impl Target {
    fn dir(self) -> String {
        match self {
            Target::This => "/proc/self".to_string(),
            Target::Pid(pid) => format!("/proc/{pid}"),
        }
    }

    /// Reads RSS and CPU time; `None` when the process is gone or /proc is unreadable.
    pub fn sample(self) -> Option<Sample> {
        let dir = self.dir();
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        Some(Sample {
            rss_kib: parse_vm_rss(&status)?,
            cpu_us: parse_cpu_us(&stat)?,
        })
    }
}

/// The `VmRSS:` line of /proc/PID/status, in KiB.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime (fields 14 and 15) of /proc/PID/stat, in microseconds. The command name in
/// field 2 is in parentheses and may hold spaces, so fields are counted after the last ')'.
pub fn parse_cpu_us(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After ')', the first field is field 3 (state); utime is field 14, i.e. index 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / TICKS_PER_SECOND)
}

/// Samples a process in the background and keeps the largest RSS seen, so a peak between the
/// explicit readings (a backlog being filled, garbage not yet collected) is not missed.
pub struct PeakSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl PeakSampler {
    pub fn start(target: Target, every: Duration) -> PeakSampler {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let peak_in_task = peak.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Some(s) = target.sample() {
                            peak_in_task.fetch_max(s.rss_kib, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        PeakSampler { peak, stop }
    }

    /// The largest RSS seen so far, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tbeam.smp\nVmPeak:\t 999 kB\nVmRSS:\t  123456 kB\nThreads:\t40\n";
        assert_eq!(parse_vm_rss(status), Some(123_456));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn parses_cpu_time_even_with_spaces_and_parens_in_the_name() {
        let stat =
            "3214 (beam (x) smp) S 1 3214 3214 0 -1 4194560 1 2 3 4 1500 250 0 0 20 0 40 0 1 2 3";
        // utime 1500 + stime 250 ticks = 17.5 s.
        assert_eq!(parse_cpu_us(stat), Some(17_500_000));
        assert_eq!(parse_cpu_us("1 (x) S 1 2"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = Target::This.sample().unwrap();
        assert!(s.rss_kib > 0);
    }
}
