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

/// Where the engine task's events go: to the [`EventStream`]s directly (so that a slow handler
/// does not hold them back) and to the queue of the event thread, which calls the handler.
///
/// It never waits: an engine that waited for a slow handler would stop sending heartbeats,
/// answering the server and feeding media. An event that does not fit in the handler's queue is
/// dropped and counted; the count goes out as [`Event::EventsDropped`] as soon as the queue has
/// room again, before any later event (so it stands exactly where the dropped events were).
#[derive(Debug)]
pub(crate) struct EventSink {
    tx: mpsc::Sender<Event>,
    streams: broadcast::Sender<Event>,
    /// Dropped since the last report.
    dropped: u64,
}

impl EventSink {
    pub(crate) fn new(tx: mpsc::Sender<Event>, streams: broadcast::Sender<Event>) -> Self {
        EventSink {
            tx,
            streams,
            dropped: 0,
        }
    }

    /// Queues `event` for the handler (or drops it when the handler is too far behind) and
    /// sends it to the streams.
    pub(crate) fn deliver(&mut self, event: Event) {
        if self.streams.receiver_count() > 0 {
            let _ = self.streams.send(event.clone());
        }
        if !self.flush() {
            self.dropped += 1;
            return;
        }
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.dropped == 0 {
                    warn!("the event handler is too slow: dropping events until it catches up");
                }
                self.dropped += 1;
            }
            // The event thread is gone (the engine is being destroyed).
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Sends the pending drop report if there is room; whether nothing is pending any more.
    pub(crate) fn flush(&mut self) -> bool {
        if self.dropped == 0 {
            return true;
        }
        match self.tx.try_send(Event::EventsDropped { count: self.dropped }) {
            Ok(()) => {
                warn!(dropped = self.dropped, "the event handler caught up");
                self.dropped = 0;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.dropped = 0;
                true
            }
        }
    }
}

/// The event thread's loop: until the engine task drops its sender and the queue is drained.
pub(crate) fn run(mut events: mpsc::Receiver<Event>, handler: HandlerSlot) {
    while let Some(event) = events.blocking_recv() {
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
/// 4096 events behind loses the oldest ones; it never slows the engine (nor the handler, nor
/// other streams). The loss is reported in place: the stream yields [`Event::EventsDropped`]
/// with the number of events lost, right where they were (the events before it were delivered,
/// the next one follows them). It ends when the engine is destroyed.
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<Event>,
}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        EventStream { rx }
    }

    /// The next event; `None` once the engine is destroyed. After a loss,
    /// [`Event::EventsDropped`] with the number of events lost.
    pub async fn recv(&mut self) -> Option<Event> {
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                warn!(lost = n, "event stream fell behind");
                Some(Event::EventsDropped { count: n })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The events as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = Event> + Send + Unpin + 'static {
        Box::pin(futures_util::stream::unfold(self, |mut s| async move {
            s.recv().await.map(|e| (e, s))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use huddle_proto::StreamId;

    fn frame(n: u32) -> Event {
        Event::PlayerRecvAudioFirstFrame {
            stream_id: StreamId::new(format!("s{n}")).unwrap(),
        }
    }

    fn drain(rx: &mut mpsc::Receiver<Event>) -> Vec<Event> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    /// The sink never waits; what does not fit is counted and reported in its place, before
    /// anything later.
    #[test]
    fn a_full_queue_drops_and_reports_exactly_what_it_dropped() {
        let (tx, mut rx) = mpsc::channel(2);
        let (streams, mut stream) = broadcast::channel(STREAM_CAPACITY);
        let mut sink = EventSink::new(tx, streams);
        for n in 0..5 {
            sink.deliver(frame(n));
        }
        // 0 and 1 fit; 2, 3 and 4 did not.
        assert_eq!(drain(&mut rx), vec![frame(0), frame(1)]);
        // Room for the report and one more: 5 follows the report of 2–4.
        sink.deliver(frame(5));
        assert_eq!(drain(&mut rx), vec![Event::EventsDropped { count: 3 }, frame(5)]);
        // 6 and 7 fit, 8 does not.
        for n in 6..9 {
            sink.deliver(frame(n));
        }
        assert_eq!(drain(&mut rx), vec![frame(6), frame(7)]);
        // With no later event, `flush` (called on the engine task's every turn) reports.
        assert!(sink.flush());
        assert_eq!(drain(&mut rx), vec![Event::EventsDropped { count: 1 }]);
        assert!(sink.flush(), "nothing pending");
        assert!(drain(&mut rx).is_empty());
        // Full report while the queue stays full: every later event is dropped too, so the
        // report is never overtaken.
        for n in 9..12 {
            sink.deliver(frame(n));
        }
        sink.deliver(frame(12));
        assert_eq!(drain(&mut rx), vec![frame(9), frame(10)]);
        sink.deliver(frame(13));
        assert_eq!(drain(&mut rx), vec![Event::EventsDropped { count: 2 }, frame(13)]);
        // The streams got every event, none of the handler's reports.
        let got: Vec<Event> = std::iter::from_fn(|| stream.try_recv().ok()).collect();
        assert_eq!(got, (0..14).map(frame).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_lagging_stream_reports_its_loss_in_place() {
        let (tx, rx) = broadcast::channel(STREAM_CAPACITY);
        let mut stream = EventStream::new(rx);
        let total = STREAM_CAPACITY as u32 + 10;
        for n in 0..total {
            tx.send(frame(n)).unwrap();
        }
        drop(tx);
        assert_eq!(stream.recv().await, Some(Event::EventsDropped { count: 10 }));
        assert_eq!(stream.recv().await, Some(frame(10)));
        let mut rest = 0;
        while let Some(e) = stream.recv().await {
            assert_ne!(e.name(), "events_dropped");
            rest += 1;
        }
        assert_eq!(rest, STREAM_CAPACITY - 1);
    }
}
