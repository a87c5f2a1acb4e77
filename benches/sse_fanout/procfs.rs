//! What the benchmark reads about the servers from `/proc`: resident memory and CPU time.

use std::process::Command;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Resident memory of a process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// VmRSS: everything resident.
    pub rss_kib: u64,
    /// RssAnon: the heap and thread stacks, where per-connection state lives (the rest is the mapped binary).
    pub anon_kib: u64,
}

/// The resident memory of `pid`.
pub fn memory(pid: u32) -> Result<Memory, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64, BoxError> {
        let line = status.lines().find(|line| line.starts_with(name)).ok_or_else(|| format!("no {name} in status"))?;
        Ok(line.split_whitespace().nth(1).ok_or("malformed status line")?.parse()?)
    };
    Ok(Memory { rss_kib: field("VmRSS:")?, anon_kib: field("RssAnon:")? })
}

/// utime + stime of `pid`, summed over its threads, in clock ticks, from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> Result<u64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Field 2, the command name, is in parentheses and may hold spaces, so split after its closing one.
    let (_, rest) = stat.rsplit_once(')').ok_or("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime (field 14) and stime (field 15) are indexes 11 and 12.
    let field = |index: usize| -> Result<u64, BoxError> { Ok(fields.get(index).ok_or("short /proc stat")?.parse()?) };
    Ok(field(11)? + field(12)?)
}

/// Clock ticks per second for /proc times, from `getconf CLK_TCK`; Linux's usual 100 if that fails.
pub fn ticks_per_second() -> f64 {
    let output = Command::new("getconf").arg("CLK_TCK").output();
    let parsed = output.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok());
    parsed.filter(|ticks| *ticks > 0.0).unwrap_or(100.0)
}
