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

struct State<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

/// The receiving side: a future of the value the callback sends.
pub(crate) struct Signal<T> {
    state: Arc<Mutex<State<T>>>,
}

/// The sending side, moved into a wgpu callback.
pub(crate) struct Sender<T> {
    state: Arc<Mutex<State<T>>>,
}

/// A connected sender and signal.
pub(crate) fn signal<T>() -> (Sender<T>, Signal<T>) {
    let state = Arc::new(Mutex::new(State {
        value: None,
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
    /// Delivers the value and wakes whoever awaits it.
    pub(crate) fn send(self, value: T) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.value = Some(value);
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

/// Makes sure the device's callbacks run without blocking the caller: on native targets a
/// helper thread waits on the device; in a browser the event loop runs them by itself.
pub(crate) fn drive(device: &wgpu::Device) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let device = device.clone();
        std::thread::spawn(move || {
            if let Err(e) = device.poll(wgpu::PollType::wait_indefinitely()) {
                // The waiting future gets its own error through the callback; this is context.
                log::warn!("polling the device failed: {e}");
            }
        });
    }
    #[cfg(target_arch = "wasm32")]
    let _ = device;
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
