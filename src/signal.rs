//! Futures resolved by wgpu callbacks (buffer maps, finished submissions), so that every wait on
//! the GPU has a form that never blocks the calling thread.
//!
//! wgpu only runs those callbacks while someone polls the device. In a browser the event loop
//! does; on native targets [`drive`] hands a blocking poll to a short-lived helper thread, which
//! wakes the future when the GPU is done.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::Error;

struct State<T> {
    value: Option<T>,
    /// A value was delivered (and maybe taken already).
    done: bool,
    waker: Option<Waker>,
}

/// The receiving side: a future of the value the callback sends.
pub(crate) struct Signal<T> {
    state: Arc<Mutex<State<T>>>,
}

/// The sending side, moved into a wgpu callback. Cloning gives another sender for the same
/// signal; the first value sent wins.
pub(crate) struct Sender<T> {
    state: Arc<Mutex<State<T>>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            state: self.state.clone(),
        }
    }
}

/// A connected sender and signal.
pub(crate) fn signal<T>() -> (Sender<T>, Signal<T>) {
    let state = Arc::new(Mutex::new(State {
        value: None,
        done: false,
        waker: None,
    }));
    (
        Sender {
            state: state.clone(),
        },
        Signal { state },
    )
}

impl<T> Sender<T> {
    /// Whether a value has been delivered.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn is_answered(&self) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).done
    }

    /// Delivers the value, unless one was delivered already, and wakes whoever awaits it.
    pub(crate) fn send(self, value: T) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.value.is_some() || s.done {
                return;
            }
            s.value = Some(value);
            s.done = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for Signal<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// How long a request may stay unanswered after the GPU reports all work done before it is
/// treated as lost. Callbacks run on whichever thread's poll collects them, so a short delay is
/// normal when several threads wait at once; this bound only ends a wait that would never end.
#[cfg(not(target_arch = "wasm32"))]
const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Makes sure the device's callbacks run without blocking the caller: on native targets a
/// helper thread polls the device until the request is answered; in a browser the event loop
/// runs the callbacks by itself. When polling fails (the device was lost), or the request stays
/// unanswered long after the GPU is idle, `on_stall` answers with an error, so that no future
/// waits forever.
pub(crate) fn drive<T: Send + 'static>(device: &wgpu::Device, on_stall: Sender<Result<T, Error>>) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let device = device.clone();
        std::thread::spawn(move || {
            let mut idle_since: Option<std::time::Instant> = None;
            loop {
                if let Err(e) = device.poll(wgpu::PollType::wait_indefinitely()) {
                    on_stall.send(Err(Error::Gpu {
                        op: "waiting for the GPU",
                        message: format!("{e}; the device may have been lost"),
                    }));
                    return;
                }
                if on_stall.is_answered() {
                    return;
                }
                let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > STALL_LIMIT {
                    on_stall.send(Err(Error::Gpu {
                        op: "waiting for the GPU",
                        message: "the GPU finished its work without answering the request; the device may have been lost"
                            .into(),
                    }));
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
    }
    #[cfg(target_arch = "wasm32")]
    let _ = (device, on_stall);
}

/// The output of a future that is already complete, without waiting: wgpu's native backends
/// resolve error-scope pops at once, the browser's do not (`None` there).
pub(crate) fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
