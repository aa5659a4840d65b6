//! The event thread: delivers the engine's events to the app's handler and to event streams.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use tokio::sync::{broadcast, mpsc};
use tracing::{error, warn};

use crate::event::{Event, EventHandler};

/// The app's handler, replaced by `set_event_handler`. The event thread clones the `Arc` out and
/// calls it with the lock released.
pub(crate) type HandlerSlot = Arc<Mutex<Option<Arc<dyn EventHandler>>>>;

/// How many events an [`EventStream`] may fall behind before it loses the oldest.
pub(crate) const STREAM_CAPACITY: usize = 4096;

/// The event thread's loop: until the engine task drops its sender and the queue is drained.
pub(crate) fn run(
    mut events: mpsc::Receiver<Event>,
    handler: HandlerSlot,
    streams: broadcast::Sender<Event>,
) {
    while let Some(event) = events.blocking_recv() {
        if streams.receiver_count() > 0 {
            let _ = streams.send(event.clone());
        }
        let current = handler.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = current
            && catch_unwind(AssertUnwindSafe(|| h.on_event(&event))).is_err()
        {
            error!(
                ?event,
                "the event handler panicked; continuing with the next event"
            );
        }
    }
}

/// The engine's events for async code, from [`Engine::events`](crate::Engine::events).
///
/// Every stream sees every event after its creation, in order. A stream that falls more than
/// 4096 events behind loses the oldest ones (logged as a warning); it never slows the engine.
/// It ends when the engine is destroyed.
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<Event>,
}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        EventStream { rx }
    }

    /// The next event; `None` once the engine is destroyed.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(e) => return Some(e),
                Err(broadcast::error::RecvError::Lagged(n)) => warn!(lost = n, "event stream fell behind"),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The events as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = Event> + Send + Unpin + 'static {
        Box::pin(futures_util::stream::unfold(self, |mut s| async move {
            s.recv().await.map(|e| (e, s))
        }))
    }
}
