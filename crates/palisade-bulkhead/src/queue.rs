//! The wait queue: a doubly linked list threaded through a slab, so a waiter joins at either end,
//! leaves from anywhere and is found again by its ticket, each in O(1) and without `unsafe`.

use std::task::Waker;

/// Where a queued waiter stands.
#[derive(Debug)]
pub(crate) enum Status {
    /// Waiting; woken through the waker when its status changes.
    Waiting(Option<Waker>),
    /// A permit was handed to it: it is in flight from this moment, whether or not it has
    /// noticed yet.
    Granted,
}

#[derive(Debug)]
struct Node {
    prev: Option<u32>,
    next: Option<u32>,
    status: Status,
}

#[derive(Debug)]
struct Slot {
    /// Bumped each time the slot is freed, so a stale ticket never finds a newer waiter.
    generation: u32,
    node: Option<Node>,
}

/// A waiter's claim on its place in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    index: u32,
    generation: u32,
}

/// The waiters of one bulkhead, oldest at the head.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    slots: Vec<Slot>,
    free: Vec<u32>,
    head: Option<u32>,
    tail: Option<u32>,
    /// Waiters linked in the list (status `Waiting`).
    len: usize,
}

impl Queue {
    /// Waiters still waiting for a permit.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a waiting waiter at the tail (the newest end).
    pub(crate) fn push(&mut self, waker: Option<Waker>) -> Ticket {
        let node = Node {
            prev: self.tail,
            next: None,
            status: Status::Waiting(waker),
        };
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize].node = Some(node);
                index
            }
            None => {
                let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 waiters");
                self.slots.push(Slot {
                    generation: 0,
                    node: Some(node),
                });
                index
            }
        };
        match self.tail {
            Some(tail) => self.node_mut(tail).next = Some(index),
            None => self.head = Some(index),
        }
        self.tail = Some(index);
        self.len += 1;
        Ticket {
            index,
            generation: self.slots[index as usize].generation,
        }
    }

    fn node_mut(&mut self, index: u32) -> &mut Node {
        self.slots[index as usize]
            .node
            .as_mut()
            .expect("a linked index holds a node")
    }

    fn get_mut(&mut self, ticket: Ticket) -> Option<&mut Node> {
        let slot = self.slots.get_mut(ticket.index as usize)?;
        if slot.generation == ticket.generation {
            slot.node.as_mut()
        } else {
            None
        }
    }

    /// The status of `ticket`'s waiter (`None` once it left).
    pub(crate) fn status_mut(&mut self, ticket: Ticket) -> Option<&mut Status> {
        self.get_mut(ticket).map(|node| &mut node.status)
    }

    /// Unlinks the node at `index` from the list (its slot stays until [`Queue::remove`]).
    fn unlink(&mut self, index: u32) {
        let (prev, next) = {
            let node = self.node_mut(index);
            (node.prev.take(), node.next.take())
        };
        match prev {
            Some(prev) => self.node_mut(prev).next = next,
            None => self.head = next,
        }
        match next {
            Some(next) => self.node_mut(next).prev = prev,
            None => self.tail = prev,
        }
        self.len -= 1;
    }

    /// Removes `ticket`'s waiter, returning its last status (`None` if it already left).
    pub(crate) fn remove(&mut self, ticket: Ticket) -> Option<Status> {
        let waiting = matches!(self.get_mut(ticket)?.status, Status::Waiting(_));
        if waiting {
            self.unlink(ticket.index);
        }
        let slot = &mut self.slots[ticket.index as usize];
        let node = slot.node.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(ticket.index);
        Some(node.status)
    }

    /// Grants the waiter at the chosen end (the newest if `newest`, else the oldest): marks it
    /// granted and hands back its waker (`Some(None)` if it had none yet), for the caller to
    /// wake once it has released its lock. `None` if nobody waits.
    pub(crate) fn grant_end_deferred(&mut self, newest: bool) -> Option<Option<Waker>> {
        let index = if newest { self.tail } else { self.head }?;
        self.unlink(index);
        match std::mem::replace(&mut self.node_mut(index).status, Status::Granted) {
            Status::Waiting(waker) => Some(waker),
            Status::Granted => unreachable!("a linked waiter is waiting"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(q: &mut Queue, t: Ticket) -> &'static str {
        match q.status_mut(t) {
            None => "gone",
            Some(Status::Waiting(_)) => "waiting",
            Some(Status::Granted) => "granted",
        }
    }

    #[test]
    fn fifo_lifo_and_removal_from_the_middle() {
        let mut q = Queue::default();
        let a = q.push(None);
        let b = q.push(None);
        let c = q.push(None);
        let d = q.push(None);
        assert_eq!(q.len(), 4);
        // Leaving from the middle keeps the ends linked.
        assert!(matches!(q.remove(b), Some(Status::Waiting(_))));
        assert_eq!(q.len(), 3);
        assert!(q.grant_end_deferred(true).is_some());
        assert_eq!(status(&mut q, d), "granted");
        assert!(q.grant_end_deferred(false).is_some());
        assert_eq!(status(&mut q, a), "granted");
        assert_eq!(status(&mut q, c), "waiting");
        assert!(q.grant_end_deferred(false).is_some());
        assert_eq!(status(&mut q, c), "granted");
        assert!(q.is_empty());
        assert!(q.grant_end_deferred(false).is_none());
        assert!(q.grant_end_deferred(true).is_none());
        // Granted waiters keep their slot until they take their permit.
        assert!(matches!(q.remove(c), Some(Status::Granted)));
        assert!(q.remove(c).is_none(), "a ticket is good once");
        // A reused slot does not answer to the old ticket.
        let e = q.push(None);
        assert_eq!(status(&mut q, c), "gone");
        assert_eq!(status(&mut q, e), "waiting");
        assert!(matches!(q.remove(a), Some(Status::Granted)));
        assert!(matches!(q.remove(e), Some(Status::Waiting(_))));
        assert!(matches!(q.remove(d), Some(Status::Granted)));
        assert!(q.is_empty());
        assert_eq!((q.head, q.tail), (None, None));
        assert_eq!(q.free.len(), q.slots.len());
    }

    #[test]
    fn granting_hands_back_the_waiters_waker() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::Wake;

        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let mut q = Queue::default();
        let t = q.push(Some(Waker::from(Arc::clone(&count))));
        let waker = q
            .grant_end_deferred(false)
            .expect("a waiter")
            .expect("its waker");
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "not woken under the caller's lock"
        );
        waker.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(matches!(q.remove(t), Some(Status::Granted)));
    }
}
