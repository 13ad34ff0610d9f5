//! CPU time and peak memory of running processes, from `/proc`, for the
//! demo's summary and the end-to-end benchmark: which process of the
//! pipeline spends what.

use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on
/// every Linux this runs on).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `/proc/<pid>/status` value in kB (`VmHWM`, `VmRSS`).
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every process whose command name is `comm` (e.g. every PostgreSQL backend).
pub fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// One row of the table: a name and the processes it sums.
pub struct Watched {
    pub name: String,
    pub pids: Vec<u32>,
    start_ticks: u64,
}

/// CPU use of several groups of processes from now on.
pub struct Usage {
    began: Instant,
    watched: Vec<Watched>,
}

impl Usage {
    pub fn start(groups: Vec<(String, Vec<u32>)>) -> Usage {
        let watched = groups
            .into_iter()
            .map(|(name, pids)| Watched {
                start_ticks: pids.iter().filter_map(|p| cpu_ticks(*p)).sum(),
                name,
                pids,
            })
            .collect();
        Usage {
            began: Instant::now(),
            watched,
        }
    }

    /// (name, share of one core since `start`, peak RSS of its largest
    /// process in MB) for each group; call while the processes still run.
    pub fn report(&self) -> Vec<(String, f64, f64)> {
        let elapsed = self.began.elapsed().max(Duration::from_millis(1));
        let tps = ticks_per_second();
        self.watched
            .iter()
            .map(|w| {
                let now: u64 = w.pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
                let cpu = now.saturating_sub(w.start_ticks) as f64 / tps / elapsed.as_secs_f64();
                let rss = w
                    .pids
                    .iter()
                    .filter_map(|p| status_kb(*p, "VmHWM:"))
                    .max()
                    .unwrap_or(0) as f64
                    / 1024.0;
                (w.name.clone(), cpu * 100.0, rss)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_and_memory() {
        let me = std::process::id();
        let u = Usage::start(vec![("me".into(), vec![me])]);
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let r = u.report();
        assert_eq!(r.len(), 1);
        assert!(r[0].1 > 20.0, "cpu {}", r[0].1);
        assert!(r[0].2 > 1.0, "rss {}", r[0].2);
        let comm = std::fs::read_to_string("/proc/self/comm").expect("comm");
        assert!(pids_named(comm.trim()).contains(&me));
    }
}
