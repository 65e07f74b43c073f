//! [`Pooled`]: a checked-out connection, returned to the pool on drop.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::{AssertUnwindSafe, Location};
use std::time::Duration;

use palisade_core::sync::Arc;
use palisade_core::{Clock, FastClock};

use crate::manager::Manager;
use crate::metrics::Discard;
use crate::pool::Shared;
use crate::state::Live;

const NOT_TRACKED: u32 = u32::MAX;

/// A connection checked out of a [`Pool`](crate::Pool). Derefs to the connection; goes back
/// to the pool when dropped.
///
/// Dropping it does no I/O and never blocks: the connection goes straight to the longest
/// waiter or the idle set (its `recycle` runs at its next checkout). It is discarded instead,
/// and its slot freed for a new connection, when it is [tainted](Pooled::taint), when the
/// thread is panicking, when [`Manager::is_broken`] says so (or panics), or when it outlived
/// `max_lifetime`.
///
/// The methods are associated functions (`Pooled::taint(&mut conn)`), so they never shadow the
/// connection's own.
pub struct Pooled<M: Manager, C: Clock = FastClock> {
    shared: Arc<Shared<M, C>>,
    live: Option<Live<M::Connection>>,
    tainted: bool,
    /// Leak-detection record, or `NOT_TRACKED`.
    out: u32,
    site: &'static Location<'static>,
}

impl<M: Manager, C: Clock> Pooled<M, C> {
    #[inline]
    pub(crate) fn new(
        shared: Arc<Shared<M, C>>,
        live: Live<M::Connection>,
        site: &'static Location<'static>,
    ) -> Pooled<M, C> {
        let out = if shared.config.leak_detection.is_some() {
            let now = shared.clock.now();
            shared.state.lock().checked_out(now, site)
        } else {
            NOT_TRACKED
        };
        Pooled {
            shared,
            live: Some(live),
            tainted: false,
            out,
            site,
        }
    }

    fn live(this: &Self) -> &Live<M::Connection> {
        this.live
            .as_ref()
            .expect("a guard holds its connection until dropped")
    }

    /// Marks the connection as in an unknown state: if the guard is dropped before
    /// [`untaint`](Pooled::untaint), the connection is discarded instead of reused. Taint before
    /// writing a request and untaint after reading its whole response, and a future cancelled
    /// in between never hands a half-read connection to the next caller.
    pub fn taint(this: &mut Self) {
        this.tainted = true;
    }

    /// Clears [`taint`](Pooled::taint): the connection is fit for reuse again.
    pub fn untaint(this: &mut Self) {
        this.tainted = false;
    }

    /// Whether the connection is tainted.
    pub fn is_tainted(this: &Self) -> bool {
        this.tainted
    }

    /// Closes the connection instead of returning it; its slot is freed for a new one.
    pub fn discard(mut this: Self) {
        this.tainted = true;
        drop(this);
    }

    /// Takes the connection out of the pool for good: its slot is freed and the pool forgets it.
    pub fn detach(mut this: Self) -> M::Connection {
        let live = this
            .live
            .take()
            .expect("a guard holds its connection until dropped");
        this.release();
        Shared::discard_out(&this.shared, None, Discard::Detached, false, None);
        live.conn
    }

    /// How long ago the connection was opened.
    pub fn age(this: &Self) -> Duration {
        this.shared.clock.elapsed(Pooled::live(this).created)
    }

    /// Where this connection was checked out (the `get()` call site).
    pub fn checked_out_at(this: &Self) -> &'static Location<'static> {
        this.site
    }

    /// Ends the leak-detection record, reporting a late return of a connection reported
    /// as leaked.
    #[inline]
    fn release(&mut self) {
        if self.out != NOT_TRACKED {
            self.release_tracked();
        }
    }

    #[inline(never)]
    fn release_tracked(&mut self) {
        let out = self.shared.state.lock().returned(self.out);
        self.out = NOT_TRACKED;
        if let Some(out) = out
            && out.reported
        {
            tracing::warn!(
                target: "palisade_pool",
                checked_out_at = %out.site,
                held = ?self.shared.clock.elapsed(out.since),
                "connection reported as a possible leak was returned"
            );
        }
    }

    /// `is_broken` panicked in [`drop`](Drop::drop): discards the connection (freeing its slot)
    /// and resumes the panic.
    #[cold]
    #[inline(never)]
    fn is_broken_panicked(
        shared: &Arc<Shared<M, C>>,
        conn: M::Connection,
        panic: Box<dyn std::any::Any + Send>,
    ) -> ! {
        Shared::discard_out(shared, Some(conn), Discard::Cancelled, false, None);
        std::panic::resume_unwind(panic)
    }
}

impl<M: Manager, C: Clock> Drop for Pooled<M, C> {
    fn drop(&mut self) {
        let Some(mut live) = self.live.take() else {
            return;
        };
        self.release();
        let shared = &*self.shared;
        let reason = if self.tainted || std::thread::panicking() {
            Some(Discard::Tainted)
        } else {
            // A panicking `is_broken` must not take the slot with it: the connection is closed,
            // its slot freed, and the panic goes on. (No cost unless it unwinds.)
            let conn = &mut live.conn;
            match std::panic::catch_unwind(AssertUnwindSafe(|| shared.manager.is_broken(conn))) {
                Ok(false) => None,
                Ok(true) => Some(Discard::Broken),
                Err(panic) => Pooled::is_broken_panicked(&self.shared, live.conn, panic),
            }
        };
        match reason {
            None => {
                let now = shared.clock.now();
                let placed = shared.state.lock().checkin(live, now);
                match placed {
                    Ok(None) => {}
                    Ok(Some(waker)) => waker.wake(),
                    // Expired, or the pool closed: closed here, outside the lock.
                    Err(conn) => Shared::dropped(&self.shared, vec![conn], "checkin"),
                }
            }
            Some(reason) => {
                Shared::discard_out(&self.shared, Some(live.conn), reason, false, None);
            }
        }
    }
}

impl<M: Manager, C: Clock> Deref for Pooled<M, C> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &Pooled::live(self).conn
    }
}

impl<M: Manager, C: Clock> DerefMut for Pooled<M, C> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self
            .live
            .as_mut()
            .expect("a guard holds its connection until dropped")
            .conn
    }
}

impl<M: Manager, C: Clock> fmt::Debug for Pooled<M, C>
where
    M::Connection: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("connection", &Pooled::live(self).conn)
            .field("tainted", &self.tainted)
            .field("checked_out_at", &self.site)
            .finish()
    }
}
