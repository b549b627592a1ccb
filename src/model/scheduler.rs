//! The scheduler of one model version: its queue, its instances and, with `dynamic_batching`,
//! Triton's batch forming (spec section (e)).
//!
//! There are no background threads. A caller puts its request in the queue and then serves the
//! queue itself while an instance is free: it forms the next batch (which may hold other
//! callers' requests, and not its own), runs it, hands every request its rows, and goes on
//! until its own result is there. At most `count` callers run batches at once; the others wait.
//! An uncontended call therefore runs on the caller's thread with no hand-off, and a version
//! that is unloaded while requests are queued keeps serving them: each queued request's caller
//! holds the version.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::Outputs;
use crate::config::{ModelConfig, ModelQueuePolicy};
use crate::error::{Error, ErrorKind, Result};
use crate::tensor::Tensor;

/// Cancels requests from another thread: a request whose token is cancelled while it is still
/// queued is removed and answered with [`ErrorKind::Cancelled`]; once it runs, it completes.
/// Cheap to clone; one token may cancel many requests.
#[derive(Clone, Default)]
pub struct CancelToken {
    inner: Arc<TokenInner>,
}

#[derive(Default)]
struct TokenInner {
    cancelled: AtomicBool,
    listeners: Mutex<Vec<Weak<Scheduler>>>,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Cancels every request that carries this token and has not started running.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        let listeners = std::mem::take(&mut *self.inner.listeners.lock());
        for s in listeners.iter().filter_map(Weak::upgrade) {
            let _state = s.state.lock();
            s.wake.notify_all();
        }
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    fn listen(&self, scheduler: &Arc<Scheduler>) {
        let mut l = self.inner.listeners.lock();
        l.retain(|w| w.strong_count() > 0);
        l.push(Arc::downgrade(scheduler));
    }
}

/// A request waiting for an instance.
pub(crate) struct Queued {
    pub seq: u64,
    pub inputs: Vec<(String, Tensor)>,
    pub outputs: Vec<String>,
    /// Rows it contributes to a batch (1 for a model without batching).
    pub batch: usize,
    /// Time in the queue, set when it is taken into a batch.
    pub queue: Duration,
    enqueued: Instant,
    deadline: Option<Instant>,
    delay_on_timeout: bool,
    /// Expired under DELAY: it stays behind every request that has not expired, those that
    /// arrive later included (Triton keeps such requests in a separate delayed queue).
    delayed: bool,
    cancel: Option<CancelToken>,
}

/// A request as a caller submits it.
pub(crate) struct Submit {
    pub inputs: Vec<(String, Tensor)>,
    pub outputs: Vec<String>,
    pub batch: usize,
    pub priority: u32,
    pub timeout: Option<Duration>,
    pub cancel: Option<CancelToken>,
}

/// What one request got from its execution.
pub(crate) struct Done {
    pub outputs: Outputs,
    pub queue: Duration,
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

#[derive(Clone, Copy)]
struct Policy {
    timeout: Option<Duration>,
    allow_override: bool,
    delay_on_timeout: bool,
    max_queue_size: usize,
}

impl Policy {
    fn from(p: Option<&ModelQueuePolicy>) -> Policy {
        let p = p.cloned().unwrap_or_default();
        Policy {
            timeout: (p.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(p.default_timeout_microseconds)),
            allow_override: p.allow_timeout_override,
            delay_on_timeout: p.timeout_action == 1,
            max_queue_size: p.max_queue_size as usize,
        }
    }
}

struct Batching {
    max_batch: usize,
    preferred: Vec<usize>,
    max_preferred: usize,
    delay: Duration,
    preserve_ordering: bool,
    /// Inputs whose contents (not only shapes) must match within a batch.
    shape_tensors: Vec<String>,
}

struct State {
    /// One FIFO per priority level, highest priority first.
    queues: Vec<VecDeque<Queued>>,
    free: usize,
    next_seq: u64,
    finished: HashMap<u64, Result<Done>>,
    /// With `preserve_ordering`: finished sequence numbers not yet released, and the first
    /// sequence number not released.
    completed: BTreeSet<u64>,
    released: u64,
}

pub(crate) struct Scheduler {
    state: Mutex<State>,
    wake: Condvar,
    batching: Option<Batching>,
    levels: Vec<Policy>,
    default_level: usize,
}

/// Executes one batch (taking the requests' tensors); returns one result per request, in
/// order.
pub(crate) type RunBatch<'a> = dyn Fn(Vec<Queued>) -> Vec<Result<Done>> + 'a;

enum Form {
    Batch(Vec<Queued>),
    WaitUntil(Instant),
    Empty,
}

impl Scheduler {
    pub(crate) fn new(config: &ModelConfig, instances: usize) -> Scheduler {
        let db = config.dynamic_batching();
        let batching = db.filter(|_| config.max_batch_size > 0).map(|db| {
            let max_batch = config.max_batch_size as usize;
            let mut preferred: Vec<usize> = db
                .preferred_batch_size
                .iter()
                .filter(|&&p| p > 0)
                .map(|&p| p as usize)
                .collect();
            if preferred.is_empty() {
                preferred.push(max_batch);
            }
            Batching {
                max_batch,
                max_preferred: preferred.iter().copied().max().unwrap_or(max_batch),
                preferred,
                delay: Duration::from_micros(db.max_queue_delay_microseconds),
                preserve_ordering: db.preserve_ordering,
                shape_tensors: config
                    .input
                    .iter()
                    .filter(|i| i.is_shape_tensor)
                    .map(|i| i.name.clone())
                    .collect(),
            }
        });
        let (levels, default_level) = match db {
            Some(db) if db.priority_levels > 0 => {
                let n = db.priority_levels as usize;
                let levels = (1..=n as u64)
                    .map(|l| {
                        Policy::from(
                            db.priority_queue_policy
                                .get(&l)
                                .or(db.default_queue_policy.as_ref()),
                        )
                    })
                    .collect();
                let default = (db.default_priority_level as usize).clamp(1, n) - 1;
                (levels, default)
            }
            Some(db) => (vec![Policy::from(db.default_queue_policy.as_ref())], 0),
            None => (vec![Policy::from(None)], 0),
        };
        Scheduler {
            state: Mutex::new(State {
                queues: levels.iter().map(|_| VecDeque::new()).collect(),
                free: instances.max(1),
                next_seq: 0,
                finished: HashMap::new(),
                completed: BTreeSet::new(),
                released: 0,
            }),
            wake: Condvar::new(),
            batching,
            levels,
            default_level,
        }
    }

    /// Queues `req`, serves the queue until its result is there, and returns it.
    pub(crate) fn submit(self: &Arc<Self>, req: Submit, run: &RunBatch<'_>) -> Result<Done> {
        if let Some(token) = &req.cancel {
            token.listen(self);
        }
        let mut st = self.state.lock();
        let seq = self.enqueue(&mut st, req, Instant::now())?;
        self.wake.notify_all();
        loop {
            if let Some(r) = self.take(&mut st, seq) {
                return r;
            }
            let now = Instant::now();
            self.purge(&mut st, now);
            if let Some(r) = self.take(&mut st, seq) {
                return r;
            }
            let mut wake_at = st.queues.iter().flatten().filter_map(|q| q.deadline).min();
            if st.free > 0 {
                match self.form(&mut st, now) {
                    Form::Batch(batch) => {
                        st.free -= 1;
                        let seqs: Vec<u64> = batch.iter().map(|q| q.seq).collect();
                        let results = MutexGuard::unlocked(&mut st, || {
                            catch_unwind(AssertUnwindSafe(|| run(batch)))
                        });
                        st.free += 1;
                        let results = match results {
                            Ok(r) if r.len() == seqs.len() => r,
                            _ => seqs
                                .iter()
                                .map(|_| {
                                    Err(Error::new(
                                        ErrorKind::Execution,
                                        "the execution of the batch panicked",
                                    ))
                                })
                                .collect(),
                        };
                        for (s, r) in seqs.into_iter().zip(results) {
                            self.finish(&mut st, s, r);
                        }
                        self.wake.notify_all();
                        continue;
                    }
                    Form::WaitUntil(t) => wake_at = Some(wake_at.map_or(t, |w| w.min(t))),
                    Form::Empty => {}
                }
            }
            match wake_at {
                Some(t) => {
                    self.wake.wait_until(&mut st, t);
                }
                None => self.wake.wait(&mut st),
            }
        }
    }

    /// Puts `req` in its priority level's queue, as if it arrived at `now`.
    fn enqueue(&self, st: &mut State, req: Submit, now: Instant) -> Result<u64> {
        let level = match req.priority as usize {
            p if p == 0 || p > self.levels.len() => self.default_level,
            p => p - 1,
        };
        let policy = self.levels[level];
        if policy.max_queue_size > 0 && st.queues[level].len() >= policy.max_queue_size {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                "Exceeds maximum queue size",
            ));
        }
        // The request's own timeout: always for a model without dynamic batching (nothing
        // else bounds its wait); with it, as the queue policy allows (the smaller one wins).
        let timeout = match (req.timeout, policy.timeout) {
            (Some(r), None) if policy.allow_override || self.batching.is_none() => Some(r),
            (Some(r), Some(d)) if policy.allow_override => Some(r.min(d)),
            (_, d) => d,
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        let queue = &mut st.queues[level];
        let at = queue.iter().position(|q| q.delayed).unwrap_or(queue.len());
        queue.insert(
            at,
            Queued {
                seq,
                inputs: req.inputs,
                outputs: req.outputs,
                batch: req.batch.max(1),
                queue: Duration::ZERO,
                enqueued: now,
                deadline: timeout.map(|t| now + t),
                delay_on_timeout: policy.delay_on_timeout,
                delayed: false,
                cancel: req.cancel,
            },
        );
        Ok(seq)
    }

    /// Removes cancelled requests and applies the timeout action to expired ones.
    fn purge(&self, st: &mut State, now: Instant) {
        let stale = |q: &Queued| {
            q.cancel.as_ref().is_some_and(CancelToken::is_cancelled)
                || q.deadline.is_some_and(|d| d <= now)
        };
        // The common case, checked without rebuilding the queues.
        if !st.queues.iter().flatten().any(stale) {
            return;
        }
        let mut answered = Vec::new();
        for queue in &mut st.queues {
            let mut delayed = Vec::new();
            let mut kept = VecDeque::with_capacity(queue.len());
            for mut q in queue.drain(..) {
                if q.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
                    answered.push((
                        q.seq,
                        Error::new(
                            ErrorKind::Cancelled,
                            "the request was cancelled before it ran",
                        ),
                    ));
                } else if q.deadline.is_some_and(|d| d <= now) {
                    if q.delay_on_timeout {
                        // DELAY: behind every request that has not expired, and no longer timed.
                        q.deadline = None;
                        q.delayed = true;
                        delayed.push(q);
                    } else {
                        answered.push((
                            q.seq,
                            Error::new(ErrorKind::TimedOut, "Request timeout expired"),
                        ));
                    }
                } else {
                    kept.push_back(q);
                }
            }
            kept.extend(delayed);
            *queue = kept;
        }
        for (seq, e) in answered {
            self.finish(st, seq, Err(e));
        }
    }

    /// The next batch, following spec section (e).
    fn form(&self, st: &mut State, now: Instant) -> Form {
        let Some(b) = &self.batching else {
            return match st.queues.iter_mut().find_map(VecDeque::pop_front) {
                Some(mut q) => {
                    q.queue = now.saturating_duration_since(q.enqueued);
                    Form::Batch(vec![q])
                }
                None => Form::Empty,
            };
        };
        let mut pending = st.queues.iter().flatten();
        let Some(first) = pending.next() else {
            return Form::Empty;
        };
        let (mut total, mut count) = (first.batch, 1);
        // The queue delay runs from the oldest request of the pending batch (Triton's
        // `OldestEnqueueTime`), which may be a lower-priority one behind newer urgent ones.
        let mut oldest = first.enqueued;
        let mut best = b.preferred.contains(&total).then_some(1);
        let mut send_now = false;
        for q in pending {
            if total + q.batch > b.max_preferred && best.is_none() {
                // The pending batch can never grow into a preferred size.
                send_now = true;
                break;
            }
            if total + q.batch > b.max_batch || !compatible(first, q, &b.shape_tensors) {
                send_now = true;
                break;
            }
            total += q.batch;
            count += 1;
            oldest = oldest.min(q.enqueued);
            if b.preferred.contains(&total) {
                best = Some(count);
            }
        }
        let waited = now.saturating_duration_since(oldest);
        let exceeded = !b.delay.is_zero() && waited >= b.delay;
        let take = match best {
            Some(n) if !exceeded => n,
            _ if send_now || total >= b.max_preferred || exceeded || b.delay.is_zero() => count,
            _ => return Form::WaitUntil(oldest + b.delay),
        };
        let mut batch = Vec::with_capacity(take);
        for queue in &mut st.queues {
            while batch.len() < take {
                match queue.pop_front() {
                    Some(mut q) => {
                        q.queue = now.saturating_duration_since(q.enqueued);
                        batch.push(q);
                    }
                    None => break,
                }
            }
        }
        Form::Batch(batch)
    }

    fn finish(&self, st: &mut State, seq: u64, result: Result<Done>) {
        st.finished.insert(seq, result);
        if self.preserve_ordering() {
            st.completed.insert(seq);
            while st.completed.remove(&st.released) {
                st.released += 1;
            }
        }
    }

    fn preserve_ordering(&self) -> bool {
        self.batching.as_ref().is_some_and(|b| b.preserve_ordering)
    }

    /// The result of `seq` if it is there (and, with `preserve_ordering`, every earlier
    /// request's too).
    fn take(&self, st: &mut State, seq: u64) -> Option<Result<Done>> {
        if self.preserve_ordering() && seq >= st.released {
            return None;
        }
        st.finished.remove(&seq)
    }
}

/// Whether `q` may join a batch started by `first`: the same input names, the same shapes
/// past the batch dim, and for shape tensors the same contents past the batch dim (Triton's
/// `enforce_equal_shape_tensors`): every row of `q`'s holds the values of `first`'s first
/// row, whatever the two batch sizes.
fn compatible(first: &Queued, q: &Queued, shape_tensors: &[String]) -> bool {
    first.inputs.len() == q.inputs.len()
        && first.inputs.iter().all(|(name, a)| {
            q.inputs.iter().any(|(n, b)| {
                n == name
                    && a.shape().get(1..) == b.shape().get(1..)
                    && a.data_type() == b.data_type()
                    && (!shape_tensors.contains(name) || rows_repeat(a, b))
            })
        })
}

/// Whether every row of `b` equals the first row of `a` (same shape past the batch dim).
fn rows_repeat(a: &Tensor, b: &Tensor) -> bool {
    let Ok(want) = a.rows(0, 1) else {
        return false;
    };
    let rows = b.shape().first().copied().unwrap_or(0);
    (0..rows).all(|i| {
        b.rows(i, i + 1)
            .is_ok_and(|row| row.as_tract() == want.as_tract())
    })
}

impl Queued {
    /// A request that runs at once, without a queue (ensembles).
    pub(crate) fn now(req: Submit) -> Queued {
        Queued {
            seq: 0,
            inputs: req.inputs,
            outputs: req.outputs,
            batch: req.batch.max(1),
            queue: Duration::ZERO,
            enqueued: Instant::now(),
            deadline: None,
            delay_on_timeout: false,
            delayed: false,
            cancel: req.cancel,
        }
    }
}

/// Batch forming without a clock: requests are queued at chosen instants and batches formed
/// at others, so each case states exactly which requests join which batch, in which order.
#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(config: &str) -> Scheduler {
        Scheduler::new(&ModelConfig::from_pbtxt(config).unwrap(), 1)
    }

    fn request(rows: usize, width: usize, priority: u32, timeout: Option<Duration>) -> Submit {
        Submit {
            inputs: vec![(
                "INPUT0".into(),
                Tensor::from(ndarray::Array2::<f32>::zeros((rows, width))),
            )],
            outputs: vec!["OUTPUT0".into()],
            batch: rows,
            priority,
            timeout,
            cancel: None,
        }
    }

    /// `n` one-row requests of the same shape, default priority, no timeout.
    fn rows(n: usize) -> Vec<Submit> {
        (0..n).map(|_| request(1, 16, 0, None)).collect()
    }

    /// Queues `reqs` at `t0`, in order; returns their sequence numbers.
    fn queue(s: &Scheduler, t0: Instant, reqs: Vec<Submit>) -> Vec<u64> {
        let mut st = s.state.lock();
        reqs.into_iter()
            .map(|r| s.enqueue(&mut st, r, t0).unwrap())
            .collect()
    }

    /// The batch formed at `now`, as sequence numbers; `Err(wait)` when the scheduler waits
    /// until `now + wait`, `Err(MAX)` when the queue is empty.
    fn form(s: &Scheduler, now: Instant) -> std::result::Result<Vec<u64>, Duration> {
        let mut st = s.state.lock();
        s.purge(&mut st, now);
        match s.form(&mut st, now) {
            Form::Batch(b) => Ok(b.iter().map(|q| q.seq).collect()),
            Form::WaitUntil(t) => Err(t.saturating_duration_since(now)),
            Form::Empty => Err(Duration::MAX),
        }
    }

    const BATCHING: &str = "name: \"m\" max_batch_size: 8 ";

    #[test]
    fn the_largest_preferred_size_is_taken_and_the_rest_follows() {
        let s = scheduler(&format!(
            "{BATCHING} dynamic_batching {{ preferred_batch_size: [ 4, 6 ] }}"
        ));
        let t0 = Instant::now();
        let seqs = queue(&s, t0, rows(7));
        assert_eq!(form(&s, t0), Ok(seqs[..6].to_vec()));
        // One left, no delay configured: it goes at once, alone.
        assert_eq!(form(&s, t0), Ok(vec![seqs[6]]));
        assert_eq!(form(&s, t0), Err(Duration::MAX));
    }

    #[test]
    fn rows_count_and_a_batch_never_passes_max_batch_size() {
        let s = scheduler(&format!("{BATCHING} dynamic_batching {{ }}"));
        let t0 = Instant::now();
        let seqs = queue(&s, t0, (0..3).map(|_| request(3, 16, 0, None)).collect());
        // 3 + 3 = 6 rows; a third request would make 9 > 8.
        assert_eq!(form(&s, t0), Ok(seqs[..2].to_vec()));
        assert_eq!(form(&s, t0), Ok(vec![seqs[2]]));
    }

    #[test]
    fn the_queue_delay_waits_for_a_preferred_size_then_sends_what_there_is() {
        let s = scheduler(&format!(
            "{BATCHING} dynamic_batching {{ preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 1000 }}"
        ));
        let t0 = Instant::now();
        let seqs = queue(&s, t0, rows(2));
        assert_eq!(form(&s, t0), Err(Duration::from_micros(1000)));
        assert_eq!(
            form(&s, t0 + Duration::from_micros(400)),
            Err(Duration::from_micros(600))
        );
        // Two more arrive before the delay is over: a preferred batch of 4 goes at once.
        let more = queue(&s, t0, rows(2));
        let all: Vec<u64> = seqs.iter().chain(&more).copied().collect();
        assert_eq!(form(&s, t0 + Duration::from_micros(500)), Ok(all));
        // Alone past the delay, a request goes without reaching a preferred size.
        let late = queue(&s, t0, rows(1));
        assert_eq!(form(&s, t0 + Duration::from_micros(1000)), Ok(late));
    }

    #[test]
    fn requests_with_other_shapes_wait_for_the_next_batch() {
        let s = scheduler(&format!("{BATCHING} dynamic_batching {{ }}"));
        let t0 = Instant::now();
        let seqs = queue(
            &s,
            t0,
            vec![
                request(1, 16, 0, None),
                request(1, 8, 0, None),
                request(1, 16, 0, None),
            ],
        );
        // The batch stops at the first request that cannot join (queue order is kept).
        assert_eq!(form(&s, t0), Ok(vec![seqs[0]]));
        assert_eq!(form(&s, t0), Ok(vec![seqs[1]]));
        assert_eq!(form(&s, t0), Ok(vec![seqs[2]]));
    }

    #[test]
    fn higher_priority_levels_go_first_and_default_priority_applies() {
        let s = scheduler(&format!(
            "{BATCHING} dynamic_batching {{ preferred_batch_size: [ 2 ] priority_levels: 2 default_priority_level: 2 }}"
        ));
        let t0 = Instant::now();
        let low = queue(
            &s,
            t0,
            vec![request(1, 16, 2, None), request(1, 16, 0, None)],
        );
        let high = queue(&s, t0, vec![request(1, 16, 1, None)]);
        // Level 1 first, then the oldest of level 2 (priority 0 means the default, level 2).
        assert_eq!(form(&s, t0), Ok(vec![high[0], low[0]]));
        assert_eq!(form(&s, t0), Ok(vec![low[1]]));
    }

    #[test]
    fn the_queue_delay_runs_from_the_oldest_request_of_the_pending_batch() {
        let us = Duration::from_micros;
        let s = scheduler(&format!(
            "{BATCHING} dynamic_batching {{ preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 1000 priority_levels: 2 default_priority_level: 2 }}"
        ));
        let t0 = Instant::now();
        let low = queue(&s, t0, vec![request(1, 16, 2, None)]);
        // A newer, more urgent request heads the batch; the low one joins it, and the delay
        // still counts from when the low one arrived.
        let high = queue(&s, t0 + us(600), vec![request(1, 16, 1, None)]);
        assert_eq!(form(&s, t0 + us(600)), Err(us(400)));
        assert_eq!(form(&s, t0 + us(1000)), Ok(vec![high[0], low[0]]));
    }

    #[test]
    fn each_priority_level_has_its_own_queue_policy() {
        let ms = Duration::from_millis;
        let s = scheduler(&format!(
            "{BATCHING} dynamic_batching {{ preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 100000 priority_levels: 2 default_priority_level: 2
             default_queue_policy {{ max_queue_size: 3 }}
             priority_queue_policy {{ key: 1 value: {{ max_queue_size: 1 default_timeout_microseconds: 10000 }} }} }}"
        ));
        let t0 = Instant::now();
        let mut st = s.state.lock();
        // Level 1 holds one request; level 2 (the default policy) three.
        let urgent = s.enqueue(&mut st, request(1, 16, 1, None), t0).unwrap();
        let e = s.enqueue(&mut st, request(1, 16, 1, None), t0).unwrap_err();
        assert_eq!(
            (e.kind(), e.message()),
            (ErrorKind::ResourceExhausted, "Exceeds maximum queue size")
        );
        let low: Vec<u64> = (0..3)
            .map(|_| s.enqueue(&mut st, request(1, 16, 2, None), t0).unwrap())
            .collect();
        let e = s.enqueue(&mut st, request(1, 16, 0, None), t0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        drop(st);
        // Level 1's timeout (10 ms) expires its request; level 2's requests have none.
        assert_eq!(form(&s, t0 + ms(20)), Err(ms(80)));
        let answer = s.state.lock().finished.remove(&urgent).unwrap();
        assert_eq!(answer.err().unwrap().kind(), ErrorKind::TimedOut);
        assert_eq!(form(&s, t0 + ms(100)), Ok(low));
    }

    #[test]
    fn expired_requests_are_rejected_or_delayed_as_the_policy_says() {
        let ms = Duration::from_millis;
        let reject = scheduler(&format!(
            "{BATCHING} dynamic_batching {{ preferred_batch_size: [ 8 ] max_queue_delay_microseconds: 100000 default_queue_policy {{ allow_timeout_override: true }} }}"
        ));
        let t0 = Instant::now();
        let seqs = queue(
            &reject,
            t0,
            vec![request(1, 16, 0, Some(ms(10))), request(1, 16, 0, None)],
        );
        assert_eq!(form(&reject, t0 + ms(20)), Err(ms(80)));
        let answer = reject.state.lock().finished.remove(&seqs[0]).unwrap();
        let e = answer.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert_eq!(e.message(), "Request timeout expired");
        assert!(reject.state.lock().finished.is_empty());

        let delay = scheduler(&format!(
            "{BATCHING} dynamic_batching {{ default_queue_policy {{ allow_timeout_override: true timeout_action: DELAY }} }}"
        ));
        let seqs = queue(
            &delay,
            t0,
            vec![
                request(1, 16, 0, Some(ms(10))),
                request(1, 8, 0, None),
                request(1, 8, 0, None),
            ],
        );
        // The expired request moves behind the others and is no longer timed.
        assert_eq!(form(&delay, t0 + ms(20)), Ok(vec![seqs[1], seqs[2]]));
        assert_eq!(form(&delay, t0 + ms(20)), Ok(vec![seqs[0]]));
        assert!(delay.state.lock().finished.is_empty());
    }

    #[test]
    fn a_full_queue_refuses_with_resource_exhausted() {
        let s = scheduler(&format!(
            "{BATCHING} dynamic_batching {{ default_queue_policy {{ max_queue_size: 2 }} }}"
        ));
        let t0 = Instant::now();
        queue(&s, t0, rows(2));
        let mut st = s.state.lock();
        let e = s.enqueue(&mut st, request(1, 16, 0, None), t0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResourceExhausted);
        assert_eq!(e.message(), "Exceeds maximum queue size");
    }

    #[test]
    fn without_dynamic_batching_each_request_runs_alone_in_arrival_order() {
        let s = scheduler(BATCHING);
        let t0 = Instant::now();
        let seqs = queue(&s, t0, (0..3).map(|_| request(2, 16, 0, None)).collect());
        for seq in seqs {
            assert_eq!(form(&s, t0), Ok(vec![seq]));
        }
    }
}
