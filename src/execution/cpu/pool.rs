//! The CPU device's threads: one process-wide pool of spinning workers shared by every
//! model, the caller's thread always one of the participants.
//!
//! A kernel splits its output into `parts` contiguous pieces and calls [`parallel`]; the
//! caller runs piece 0 and workers 1.. the rest. Waking a parked vCPU costs 20-75 µs on this
//! kind of VM (rayon's per-operator dispatch, see `shared/spec/cpu-kernels.md` §4), so the
//! workers spin between launches and only park after [`SPIN`] without work; a launch then
//! costs about a microsecond. The pool has `cores − 1` workers. A launch that finds it in use
//! by another model's launch runs on its caller alone, so instances × threads never puts more
//! threads on the cores than there are: each instance's caller plus at most `cores − 1`
//! workers, whatever `intra_op_thread_count` says.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// The job of one launch: a borrowed closure whose lifetime [`parallel`] erases and
/// guarantees (it returns only after every worker has finished with it).
type Job = *const (dyn Fn(usize) + Sync);

struct Pool {
    /// Held by the launch using the workers.
    busy: AtomicBool,
    /// `generation << 16 | parts`, one word so a worker reads both at once: the generation
    /// moves once per launch (workers wait for it), and worker `w` runs piece `w` of the
    /// launch if `w < parts`.
    state: AtomicU64,
    /// Workers done with the current launch.
    finished: AtomicUsize,
    /// The panic of a worker's piece of the current launch (the launch re-raises it).
    panicked: parking_lot::Mutex<Option<Box<dyn std::any::Any + Send>>>,
    job: UnsafeCell<Option<Job>>,
    threads: OnceLock<Vec<std::thread::Thread>>,
}

// SAFETY: `job` is written only by the launch holding `busy`, before it moves `state`
// (release), and read by that launch's participants after they see the new state (acquire)
// and before they report `finished`; the launch waits for every report before it returns,
// and the next launch cannot start before.
unsafe impl Sync for Pool {}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            busy: AtomicBool::new(false),
            state: AtomicU64::new(0),
            finished: AtomicUsize::new(0),
            panicked: parking_lot::Mutex::new(None),
            job: UnsafeCell::new(None),
            threads: OnceLock::new(),
        }));
        let workers = cores().saturating_sub(1).min(0xffff);
        let threads = (1..=workers)
            .filter_map(|w| {
                std::thread::Builder::new()
                    .name(format!("modelyard-cpu-{w}"))
                    .spawn(move || work(pool, w))
                    .ok()
                    .map(|h| h.thread().clone())
            })
            .collect();
        let _ = pool.threads.set(threads);
        pool
    })
}

/// The machine's cores (what `intra_op_thread_count: 0` means).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn work(pool: &'static Pool, w: usize) {
    let mut seen = 0u64;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        let mut state = pool.state.load(Ordering::Acquire);
        while state == seen {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && started.elapsed() > SPIN {
                // Parked until a launch unparks us (or a spurious wake-up re-checks).
                std::thread::park_timeout(Duration::from_millis(50));
            } else {
                std::hint::spin_loop();
            }
            state = pool.state.load(Ordering::Acquire);
        }
        seen = state;
        if w < (state & 0xffff) as usize {
            // SAFETY: see `Pool`'s Sync: the job is live until `finished` counts us.
            if let Some(job) = unsafe { *pool.job.get() } {
                let job: &(dyn Fn(usize) + Sync) = unsafe { &*job };
                // A panicking kernel must not take the worker down with the pool waiting;
                // the launch re-raises it on its caller's thread.
                if let Err(panic) =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(w)))
                {
                    *pool.panicked.lock() = Some(panic);
                }
            }
            pool.finished.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Runs `f(0) .. f(parts − 1)`, on up to `parts` threads (this one included), and returns
/// when all have run. `parts` is capped by the caller at its thread count.
pub(super) fn parallel(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 {
        if parts == 1 {
            f(0);
        }
        return;
    }
    let pool = pool();
    let workers = pool.threads.get().map_or(0, |t| t.len());
    if workers == 0
        || pool
            .busy
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        // No workers, or another launch has them: this thread does every piece.
        (0..parts).for_each(f);
        return;
    }
    let used = parts.min(workers + 1);
    // SAFETY: `busy` is ours; no worker reads `job` until the state moves (below), and we
    // wait for every participant before returning, so erasing `f`'s lifetime is sound.
    unsafe {
        let job: Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f);
        *pool.job.get() = Some(job);
    }
    pool.finished.store(0, Ordering::Relaxed);
    let generation = (pool.state.load(Ordering::Relaxed) >> 16) + 1;
    pool.state
        .store(generation << 16 | used as u64, Ordering::Release);
    if let Some(threads) = pool.threads.get() {
        for t in threads.iter().take(used - 1) {
            t.unpark();
        }
    }
    // This thread runs piece 0 and the pieces beyond the workers. A panic here must still
    // wait for the workers (they hold `f`) and free the pool before it unwinds further.
    let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f(0);
        for piece in (workers + 1)..parts {
            f(piece);
        }
    }));
    while pool.finished.load(Ordering::Acquire) < used - 1 {
        std::hint::spin_loop();
    }
    let theirs = pool.panicked.lock().take();
    unsafe { *pool.job.get() = None };
    pool.busy.store(false, Ordering::Release);
    if let Err(panic) = mine {
        std::panic::resume_unwind(panic);
    }
    if let Some(panic) = theirs {
        std::panic::resume_unwind(panic);
    }
}

/// Splits `0..n` into `parts` contiguous ranges; range `i`.
pub(super) fn range(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    let (q, r) = (n / parts, n % parts);
    let start = i * q + i.min(r);
    start..start + q + usize::from(i < r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_piece_runs_once_from_any_number_of_callers() {
        let callers: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(|| {
                    for parts in [1usize, 2, 3, 7] {
                        let counts: Vec<AtomicUsize> =
                            (0..parts).map(|_| AtomicUsize::new(0)).collect();
                        for _ in 0..200 {
                            parallel(parts, &|i| {
                                counts[i].fetch_add(1, Ordering::Relaxed);
                            });
                        }
                        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 200));
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().unwrap();
        }
    }

    #[test]
    fn a_panicking_piece_reaches_the_caller_and_the_pool_keeps_working() {
        for bad in [0usize, 1] {
            let r = std::panic::catch_unwind(|| {
                parallel(2, &|i| {
                    if i == bad {
                        panic!("piece {i}");
                    }
                })
            });
            let payload = r.expect_err("the piece's panic was lost");
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
            assert_eq!(
                message,
                Some(format!("piece {bad}")),
                "the piece's own panic"
            );
        }
        let n = AtomicUsize::new(0);
        parallel(2, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ranges_cover_without_overlap() {
        for (n, parts) in [(10, 3), (2, 5), (0, 2), (64, 2)] {
            let all: Vec<usize> = (0..parts).flat_map(|i| range(n, parts, i)).collect();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
    }
}
