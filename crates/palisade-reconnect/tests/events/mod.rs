//! A `tracing` subscriber that records the crate's state events (target `palisade_reconnect`),
//! one per published state: unlike a `watch` receiver, it misses none.
//!
//! It is the process's global subscriber, installed once, and records into the recorder of the
//! thread the event is on. A thread-local subscriber (`set_default`) missed events now and then
//! when tests ran in parallel: `tracing` caches each callsite's interest, and a callsite first
//! hit on another test's thread, while this one was installing its subscriber, was cached as
//! interesting to no one (a `connected` event went unrecorded in about 1 run in 7).

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Mutex, Once};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

type Messages = Arc<Mutex<Vec<String>>>;

thread_local! {
    /// Where this thread's events go, while an [`Events`] of this thread lives.
    static CURRENT: RefCell<Option<Messages>> = const { RefCell::new(None) };
}

/// The events recorded while this value lives, on this thread (a current-thread runtime runs
/// every task on it).
pub(crate) struct Events {
    messages: Messages,
}

/// Records this thread's `palisade_reconnect` events until the returned value is dropped.
pub(crate) fn record() -> Events {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(Recorder).expect("no other global subscriber");
    });
    // A callsite registered while the global subscriber was being installed may have cached
    // the interest of the dispatchers before it: recompute every callsite's.
    tracing::callsite::rebuild_interest_cache();
    let messages = Messages::default();
    CURRENT.with(|current| *current.borrow_mut() = Some(Arc::clone(&messages)));
    Events { messages }
}

impl Drop for Events {
    fn drop(&mut self) {
        CURRENT.with(|current| current.borrow_mut().take());
    }
}

impl Events {
    /// The messages so far: `connecting`, `connected`, `disconnected`, `closed`.
    pub(crate) fn names(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }
}

struct Recorder;

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
            CURRENT.with(|current| {
                if let Some(messages) = &*current.borrow() {
                    messages.lock().unwrap().push(message);
                }
            });
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
