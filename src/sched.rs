//! How the gateway's own background threads are scheduled.
//!
//! The audit writer and the log writer are woken by request-serving threads (a record to write,
//! a batch of lines). Under Linux's default policy a woken thread preempts the one that woke
//! it when both share a core, so each append paid two context switches on the spot, and the
//! audit writer woke for every record or two. [`background`] puts the calling thread under
//! `SCHED_BATCH`: it gets the same share of the CPU (same nice value), but a wake-up no longer
//! preempts a running thread; it runs when a core is idle (at once on an idle machine) or when
//! the running thread's slice ends. Work that arrives meanwhile joins its batch.
//!
//! Measured (load benchmark, pinned to one core, POST cancellations audited at saturation,
//! paired one-second slices against the same build without it): CPU per request
//! 64.4 → 51.5 µs (the paired median 0.87 ×), records per `fdatasync` 10 → 13, and no change in
//! the p50 at 2000 req/s (docs/performance.md, session 15).

/// Spawns a thread named `name` that runs `work` under `SCHED_BATCH` ([`background`]), and
/// returns once the thread has set its policy, with whether that worked.
pub fn spawn_background<F>(
    name: &str,
    work: F,
) -> std::io::Result<(std::thread::JoinHandle<()>, Result<(), String>)>
where
    F: FnOnce() + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(background());
            drop(tx);
            work();
        })?;
    let policy = rx
        .recv()
        .unwrap_or_else(|_| Err("the thread ended before setting its policy".to_owned()));
    Ok((thread, policy))
}

/// Puts the calling thread under `SCHED_BATCH` (nice 0). Best effort: where the policy cannot
/// be set (another OS, a seccomp filter) the thread keeps its current one; in a process started
/// with a higher nice value and no right to lower it, the policy is set but the nice value
/// stays. Either way the error says what failed (the caller decides whether to log it: the log
/// writer must not log from its own thread).
pub fn background() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadPriorityOsValue, ThreadSchedulePolicy,
        };
        set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Os(ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
        )
        // The crate sets the policy, then the nice value: an error may come after the first.
        .map_err(|e| format!("SCHED_BATCH with nice 0 not set (in full): {e:?}"))
    }
    #[cfg(not(target_os = "linux"))]
    Err("SCHED_BATCH exists only on Linux".to_owned())
}
