//! A wake-all event: futures wait until a condition they re-check holds.
//!
//! The condition lives outside the event (an atomic the notifier sets before calling
//! [`Event::notify_all`]); a waiter registers its waker under the lock and re-checks the
//! condition afterwards, so a notification between the waiter's first check and its
//! registration is never lost: either the notifier's lock comes after the registration and wakes
//! it, or the notifier's store happened before the waiter's lock and the re-check sees it.

use std::task::{Context, Poll, Waker};

use palisade_core::sync::Mutex;

/// Waker slots. A waiter owns its slot (by index) from its first pending poll until it is
/// dropped or completes, so notification can take the waker out without freeing the slot.
#[derive(Debug, Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// A set of waiting tasks that one call wakes together.
#[derive(Debug, Default)]
pub(crate) struct Event {
    slots: Mutex<Slots>,
}

impl Event {
    pub(crate) fn new() -> Event {
        Event::default()
    }

    /// Wakes every registered waiter. Call it after making the condition true.
    pub(crate) fn notify_all(&self) {
        let wakers: Vec<Waker> = {
            let mut slots = self.slots.lock();
            slots.wakers.iter_mut().filter_map(Option::take).collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Polls a wait for `ready`: `Ready` once it holds, else registers `cx`'s waker in `slot`.
    pub(crate) fn poll_until(
        &self,
        cx: &mut Context<'_>,
        slot: &mut Option<usize>,
        ready: impl Fn() -> bool,
    ) -> Poll<()> {
        if ready() {
            self.release(slot);
            return Poll::Ready(());
        }
        {
            let mut slots = self.slots.lock();
            let slots = &mut *slots;
            match *slot {
                Some(index) => match &mut slots.wakers[index] {
                    Some(waker) => waker.clone_from(cx.waker()),
                    empty => *empty = Some(cx.waker().clone()),
                },
                None => {
                    let index = match slots.free.pop() {
                        Some(index) => {
                            slots.wakers[index] = Some(cx.waker().clone());
                            index
                        }
                        None => {
                            slots.wakers.push(Some(cx.waker().clone()));
                            slots.wakers.len() - 1
                        }
                    };
                    *slot = Some(index);
                }
            }
        }
        if ready() {
            self.release(slot);
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Gives back a waiter's slot (when it completes or is dropped). Idempotent.
    pub(crate) fn release(&self, slot: &mut Option<usize>) {
        if let Some(index) = slot.take() {
            let waker = {
                let mut slots = self.slots.lock();
                slots.free.push(index);
                slots.wakers[index].take()
            };
            // Dropped after the lock: a waker's drop may run arbitrary code.
            drop(waker);
        }
    }

    /// How many waiters hold a slot (for tests).
    #[cfg(test)]
    pub(crate) fn waiters(&self) -> usize {
        let slots = self.slots.lock();
        slots.wakers.len() - slots.free.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Waker};

    use super::Event;

    #[test]
    fn a_waiter_registers_then_sees_the_condition_and_gives_its_slot_back() {
        let event = Event::new();
        let flag = AtomicBool::new(false);
        let mut cx = Context::from_waker(Waker::noop());
        let mut slot = None;
        assert_eq!(
            event.poll_until(&mut cx, &mut slot, || flag.load(Ordering::Acquire)),
            Poll::Pending
        );
        assert_eq!(event.waiters(), 1);
        flag.store(true, Ordering::Release);
        event.notify_all();
        assert_eq!(
            event.poll_until(&mut cx, &mut slot, || flag.load(Ordering::Acquire)),
            Poll::Ready(())
        );
        assert_eq!(slot, None);
        assert_eq!(event.waiters(), 0);
        // A released slot is reused, not leaked.
        let mut other = None;
        let _ = event.poll_until(&mut cx, &mut other, || false);
        let mut third = None;
        event.release(&mut other);
        let _ = event.poll_until(&mut cx, &mut third, || false);
        assert_eq!(third, Some(0));
    }
}
