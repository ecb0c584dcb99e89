//! The process log's writer: request threads append formatted lines to a shared batch, and one
//! writer thread writes the batch out every few milliseconds (nginx's `access_log buffer=
//! flush=`, for the same reason).
//!
//! Why not `tracing-appender`'s non-blocking writer: it hands every line to its thread through
//! a channel, so at tens of thousands of lines a second that thread wakes (and spins in
//! `sched_yield`) per line and wrote a few lines per `write`; the load benchmark measured it at
//! ~4 µs of CPU per proxied request, more than any layer of the stack. Here a line costs one
//! uncontended lock and a copy, and the thread wakes once per batch.
//!
//! Lossless and bounded: when `max_pending_bytes` are waiting (the sink is stuck), writers wait
//! for room instead of dropping lines or growing without bound. Dropping the [`LogGuard`]
//! writes out what is pending; lines logged after that go straight to the sink.

use std::{
    io::{self, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

/// How the writer batches.
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    /// The longest a line waits before it is written.
    pub flush_interval: Duration,
    /// A batch this large is written without waiting for the interval.
    pub batch_bytes: usize,
    /// Bytes waiting at which writers block until the writer thread caught up.
    pub max_pending_bytes: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            flush_interval: Duration::from_millis(5),
            batch_bytes: 64 * 1024,
            max_pending_bytes: 2 * 1024 * 1024,
        }
    }
}

type Sink = Box<dyn Write + Send>;

struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here: for a first line, for the interval, or for a full batch.
    wake: Condvar,
    /// Writers wait here while `max_pending_bytes` are pending.
    room: Condvar,
    /// Held by the writer thread while it writes; by writers directly once closed.
    sink: Mutex<Sink>,
    settings: BatchSettings,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    closed: bool,
    blocked_writers: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves only bytes behind; keep logging.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Makes the per-event writers (a `tracing_subscriber` `MakeWriter`). Cheap to clone.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Writes out what is pending and stops the writer thread when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread for `sink`.
pub fn batched(
    sink: impl Write + Send + 'static,
    settings: BatchSettings,
) -> (BatchWriter, LogGuard) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        room: Condvar::new(),
        sink: Mutex::new(Box::new(sink)),
        settings,
    });
    let worker = shared.clone();
    // Woken per batch, so it must never preempt a request (see `crate::sched`); best effort,
    // and not logged, as logging is what is being set up.
    let thread = crate::sched::spawn_background("ratepay-gateway-log", move || worker.run())
        .map(|(thread, _policy)| thread)
        .map_err(|e| eprintln!("log writer thread did not start ({e}); logging directly"))
        .ok();
    if thread.is_none() {
        lock(&shared.state).closed = true;
    }
    (
        BatchWriter {
            shared: shared.clone(),
        },
        LogGuard { shared, thread },
    )
}

impl Shared {
    fn run(&self) {
        let mut batch = Vec::new();
        loop {
            let closed = {
                let mut st = lock(&self.state);
                while st.pending.is_empty() && !st.closed {
                    st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                }
                // Gather lines for the interval unless the batch fills up or we are closing.
                if !st.closed && st.pending.len() < self.settings.batch_bytes {
                    st = self
                        .wake
                        .wait_timeout(st, self.settings.flush_interval)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                std::mem::swap(&mut st.pending, &mut batch);
                if st.blocked_writers > 0 {
                    self.room.notify_all();
                }
                st.closed
            };
            if !batch.is_empty() {
                let mut sink = lock(&self.sink);
                // Nowhere to report a failing log sink; the lines are gone either way.
                let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            }
            batch.clear();
            if batch.capacity() > 4 * self.settings.batch_bytes {
                batch = Vec::with_capacity(self.settings.batch_bytes);
            }
            if closed {
                return;
            }
        }
    }

    fn append(&self, line: &[u8]) {
        let mut st = lock(&self.state);
        while !st.closed && st.pending.len() >= self.settings.max_pending_bytes {
            st.blocked_writers += 1;
            self.wake.notify_one();
            st = self.room.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.blocked_writers -= 1;
        }
        if st.closed {
            // The writer thread is gone or finishing its last batch; a batch it has not taken
            // yet goes out first, so lines keep their order. (State, then sink: the writer
            // thread never waits for the state while it holds the sink.)
            let earlier = std::mem::take(&mut st.pending);
            let mut sink = lock(&self.sink);
            let _ = sink
                .write_all(&earlier)
                .and_then(|()| sink.write_all(line))
                .and_then(|()| sink.flush());
            return;
        }
        let before = st.pending.len();
        st.pending.extend_from_slice(line);
        // Wake the thread for the first line of a batch and when a batch fills; no other line
        // costs a system call.
        if before == 0
            || (before < self.settings.batch_bytes && st.pending.len() >= self.settings.batch_bytes)
        {
            self.wake.notify_one();
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One event's writer: `tracing_subscriber` formats an event and writes it in one call.
pub struct LineWriter<'a>(&'a Shared);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;
    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read back, counting the `write` calls it got.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<(Vec<u8>, usize)>>);
    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut r = lock(&self.0);
            r.0.extend_from_slice(buf);
            r.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(w: &BatchWriter, text: &str) {
        use tracing_subscriber::fmt::MakeWriter;
        w.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn every_line_arrives_in_order_in_few_writes_and_guard_drop_flushes() {
        let sink = Recorder::default();
        let settings = BatchSettings {
            // Long enough that only the guard's drop writes the batch out.
            flush_interval: Duration::from_secs(3600),
            ..BatchSettings::default()
        };
        let (w, guard) = batched(sink.clone(), settings);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        line(&w, &format!("t{t} {i}\n"));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let (bytes, writes) = lock(&sink.0).clone();
        let text = String::from_utf8(bytes).unwrap();
        for t in 0..4 {
            let seen: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("t{t} ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(seen, (0..1000).collect::<Vec<_>>(), "thread {t}");
        }
        // 4000 lines of ~8 bytes are under one batch: the first-line wake-up may write a
        // few lines early, the rest goes out in one write at the drop.
        assert!(writes <= 3, "{writes} writes for 4000 lines");
        // After the guard is gone, lines go straight to the sink.
        line(&w, "late\n");
        assert!(lock(&sink.0).0.ends_with(b"late\n"));
    }

    #[test]
    fn a_stuck_sink_blocks_writers_instead_of_growing_or_dropping() {
        /// A sink that refuses to return until released.
        struct Gate(Arc<(Mutex<bool>, Condvar)>, Recorder);
        impl Write for Gate {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let (open, cv) = &*self.0;
                let mut o = lock(open);
                while !*o {
                    o = cv.wait(o).unwrap();
                }
                self.1.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Recorder::default();
        let settings = BatchSettings {
            flush_interval: Duration::from_millis(1),
            batch_bytes: 16,
            max_pending_bytes: 64,
        };
        let (w, guard) = batched(Gate(gate.clone(), sink.clone()), settings);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let writer = {
            let w = w.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    line(&w, &format!("line {i:04}\n"));
                }
                done_tx.send(()).unwrap();
            })
        };
        // With the sink stuck, one batch is in the sink's hands and at most 64 bytes (plus the
        // line that crossed the bound) wait: the writing thread ends up blocked, not done.
        while lock(&w.shared.state).blocked_writers == 0 {
            std::thread::yield_now();
        }
        assert!(lock(&w.shared.state).pending.len() <= 64 + 10);
        assert!(done_rx.try_recv().is_err());
        *lock(&gate.0) = true;
        gate.1.notify_all();
        done_rx.recv().unwrap();
        writer.join().unwrap();
        drop(guard);
        let text = String::from_utf8(lock(&sink.0).0.clone()).unwrap();
        assert_eq!(text.lines().count(), 100);
        assert!(text.ends_with("line 0099\n"));
    }
}
