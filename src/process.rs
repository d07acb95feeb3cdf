//! This process and the others on this host, seen through /proc: a leaf module that the
//! store (claims held by dead processes) and the key file (stale temporary files, owners)
//! both use, so that neither depends on the other.

use std::os::unix::fs::MetadataExt;

/// Whether a process runs on this host. A zombie (killed, not yet reaped) counts as dead.
pub fn pid_alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold ')'.
        Ok(stat) => {
            !matches!(stat.rsplit(')').next().map(str::trim_start), Some(s) if s.starts_with('Z') || s.starts_with('X'))
        }
        Err(_) => !std::path::Path::new("/proc/self").exists(),
    }
}

/// Our effective uid, without libc: /proc/self is owned by it. (The key file's checks and
/// the readers' sidecars use this one; `store::filesafety::euid` asks the kernel.)
pub fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}
