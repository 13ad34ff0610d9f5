//! CPU time of processes, for benchmarks: on two cores a run's latency and
//! throughput follow the CPU each part costs (this process, PostgreSQL,
//! Mosquitto), which varies less from hour to hour on a shared VM than the
//! latency does.

/// CPU seconds (user + system) spent so far by the processes `pick` selects
/// by pid and command name, from `/proc` (0 where it cannot be read).
pub fn cpu_seconds(pick: impl Fn(u32, &str) -> bool) -> f64 {
    /// `USER_HZ`, the unit of `/proc/*/stat` times: 100 on Linux.
    const TICKS: f64 = 100.0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid … utime(14) stime(15): comm may hold spaces.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !pick(pid, &stat[open + 1..close]) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |k: usize| {
            fields
                .get(k)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(11) + field(12);
    }
    ticks as f64 / TICKS
}
