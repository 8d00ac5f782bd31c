//! Where the devnet's time goes: each act's wall time and the CPU time the
//! whole network spent on it (this process, its live member nodes, and the
//! children it has reaped), so that a slow act shows at once.

use std::time::{Duration, Instant};

/// Laps of the acts, in order.
pub struct Clock {
    last: (Instant, f64),
    laps: Vec<(&'static str, Duration, f64)>,
}

impl Clock {
    pub fn start(pids: &[u32]) -> Clock {
        Clock {
            last: (Instant::now(), cpu_seconds(pids)),
            laps: Vec::new(),
        }
    }

    /// Ends the act that ran since the last lap. `pids` are the member
    /// processes alive now.
    pub fn lap(&mut self, act: &'static str, pids: &[u32]) {
        let now = (Instant::now(), cpu_seconds(pids));
        self.laps
            .push((act, now.0 - self.last.0, (now.1 - self.last.1).max(0.0)));
        self.last = now;
    }

    /// One line an act, then the total; CPU over wall is how many cores
    /// the act kept busy.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let (mut wall, mut cpu) = (0.0, 0.0);
        for (act, w, c) in &self.laps {
            let w = w.as_secs_f64();
            out += &line(act, w, *c);
            wall += w;
            cpu += c;
        }
        out + &line("all acts", wall, cpu)
    }
}

fn line(act: &str, wall: f64, cpu: f64) -> String {
    format!(
        "time: {act:<12} {wall:>7.1} s wall {cpu:>7.1} s CPU ({:.2} cores)\n",
        cpu / wall.max(1e-9)
    )
}

/// Linux reports process times in clock ticks of `USER_HZ`, which the
/// kernel fixes at 100 for userspace on every architecture it supports.
const TICKS_PER_SECOND: f64 = 100.0;

/// The CPU seconds this process, its reaped children and `pids` have used.
/// A process gone from /proc counts nothing: once this process reaps it,
/// its time is in this process's children's time.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let own = stat_fields("self").map_or(0, |f| f[0] + f[1] + f[2] + f[3]);
    let others: u64 = pids
        .iter()
        .filter_map(|p| stat_fields(&p.to_string()))
        .map(|f| f[0] + f[1])
        .sum();
    (own + others) as f64 / TICKS_PER_SECOND
}

/// utime, stime, cutime and cstime from `/proc/<pid>/stat` (proc(5),
/// fields 14 to 17).
fn stat_fields(pid: &str) -> Option<[u64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<[u64; 4]> {
    // The command name (field 2) is in parentheses and may hold spaces
    // and parentheses itself: the fields that follow start after the last
    // ')', with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let mut out = [0u64; 4];
    for (i, v) in out.iter_mut().enumerate() {
        *v = fields.get(11 + i)?.parse().ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_times_after_a_command_name_with_spaces() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 75 30 12 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(stat), Some([250, 75, 30, 12]));
        assert_eq!(parse_stat("4242 (short) S 1"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        assert!(stat_fields("self").is_some());
        let c = Clock::start(&[]);
        assert!(c.report().contains("all acts"));
    }
}
