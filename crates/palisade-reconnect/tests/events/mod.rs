//! A `tracing` subscriber that records the crate's state events (target `palisade_reconnect`),
//! one per published state: unlike a `watch` receiver, it misses none.

use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::DefaultGuard;
use tracing::{Event, Metadata, Subscriber};

/// The events recorded while its guard lives, on this thread (a current-thread runtime runs
/// every task on it).
pub(crate) struct Events {
    messages: Arc<Mutex<Vec<String>>>,
    _guard: DefaultGuard,
}

/// Records this thread's `palisade_reconnect` events until the returned value is dropped.
pub(crate) fn record() -> Events {
    let messages = Arc::new(Mutex::new(Vec::new()));
    let guard = tracing::subscriber::set_default(Recorder(Arc::clone(&messages)));
    Events {
        messages,
        _guard: guard,
    }
}

impl Events {
    /// The messages so far: `connecting`, `connected`, `disconnected`, `closed`.
    pub(crate) fn names(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }
}

struct Recorder(Arc<Mutex<Vec<String>>>);

struct Message(Option<String>);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "palisade_reconnect"
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if event.metadata().target() != "palisade_reconnect" {
            return;
        }
        let mut message = Message(None);
        event.record(&mut message);
        if let Some(message) = message.0 {
            self.0.lock().unwrap().push(message);
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
