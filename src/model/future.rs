//! `infer_async`: a request that runs on its own thread and completes a future, usable from
//! any executor (tokio, async-std, `futures::executor::block_on`) without depending on one.
//! Dropping the future before the request starts executing cancels it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::{CancelToken, Outputs};
use crate::error::Result;

#[derive(Default)]
struct Slot {
    result: Option<Result<Outputs>>,
    waker: Option<Waker>,
}

/// Shared between the future and the thread running the request.
pub(crate) struct Completion {
    slot: Mutex<Slot>,
    pub(crate) token: CancelToken,
}

impl Completion {
    pub(crate) fn new(token: CancelToken) -> Completion {
        Completion {
            slot: Mutex::default(),
            token,
        }
    }

    pub(crate) fn complete(&self, result: Result<Outputs>) {
        let waker = {
            let mut slot = self.slot.lock();
            slot.result = Some(result);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The pending result of [`Model::infer_async`](super::Model::infer_async).
pub struct InferFuture {
    pub(crate) completion: Arc<Completion>,
}

impl InferFuture {
    /// The token that cancels this request (the one given in its options, if any).
    pub fn cancel_token(&self) -> &CancelToken {
        &self.completion.token
    }
}

impl Future for InferFuture {
    type Output = Result<Outputs>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.completion.slot.lock();
        match slot.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for InferFuture {
    fn drop(&mut self) {
        let finished = self.completion.slot.lock().result.is_some();
        if !finished {
            self.completion.token.cancel();
        }
    }
}
