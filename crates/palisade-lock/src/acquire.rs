//! The one acquisition protocol every lock follows: check the order (before blocking), take the
//! raw lock, record the holder's site. A failed timed wait drops the token, which pops the lock
//! from the held stack again.

use std::panic::Location;
#[cfg(not(palisade_loom))]
use std::time::Duration;

use crate::class::Meta;
use crate::detect::{self, Acq, Held};
#[cfg(not(palisade_loom))]
use crate::error::LockTimeout;

impl Meta {
    /// A blocking acquisition of the lock at `lock`.
    #[inline]
    pub(crate) fn take<R>(
        &self,
        lock: usize,
        read: bool,
        site: &'static Location<'static>,
        raw: impl FnOnce() -> R,
    ) -> (R, Held) {
        let held = detect::acquire(
            self,
            Acq {
                lock,
                read,
                blocking: true,
                site,
            },
        );
        let raw = raw();
        detect::set_holder(self, site);
        (raw, held)
    }

    /// A `try_*` that succeeded (`raw` is `Some`): no order check, since it could not block.
    #[inline]
    pub(crate) fn try_take<R>(
        &self,
        lock: usize,
        read: bool,
        site: &'static Location<'static>,
        raw: Option<R>,
    ) -> Option<(R, Held)> {
        let raw = raw?;
        let held = detect::acquire(
            self,
            Acq {
                lock,
                read,
                blocking: false,
                site,
            },
        );
        detect::set_holder(self, site);
        Some((raw, held))
    }

    /// A blocking acquisition that gives up after `timeout`.
    #[cfg(not(palisade_loom))]
    pub(crate) fn take_for<R>(
        &self,
        lock: usize,
        read: bool,
        site: &'static Location<'static>,
        timeout: Duration,
        raw: impl FnOnce(Duration) -> Option<R>,
    ) -> Result<(R, Held), LockTimeout> {
        let held = detect::acquire(
            self,
            Acq {
                lock,
                read,
                blocking: true,
                site,
            },
        );
        let raw = raw(timeout).ok_or_else(|| self.timed_out(timeout))?;
        detect::set_holder(self, site);
        Ok((raw, held))
    }

    #[cfg(not(palisade_loom))]
    pub(crate) fn timed_out(&self, waited: Duration) -> LockTimeout {
        LockTimeout::new(self.class(), waited, self.holder())
    }
}

/// The same protocol for tokio's locks, whose holder is a task.
#[cfg(feature = "tokio")]
mod asynchronous {
    use std::future::Future;
    use std::panic::Location;
    use std::time::Duration;

    use crate::class::Meta;
    use crate::detect::{Acq, set_holder, tasks};
    use crate::error::LockTimeout;

    impl Meta {
        /// An async acquisition: checked at the first poll, before `raw` is polled. Dropping
        /// the future drops the token, which pops the lock from the task's stack.
        pub(crate) async fn take_async<R>(
            &self,
            lock: usize,
            read: bool,
            site: &'static Location<'static>,
            raw: impl Future<Output = R>,
        ) -> (R, tasks::TaskHeld) {
            let held = tasks::acquire(
                self,
                Acq {
                    lock,
                    read,
                    blocking: true,
                    site,
                },
            );
            let raw = raw.await;
            set_holder(self, site);
            (raw, held)
        }

        /// [`take_async`](Self::take_async), giving up after `timeout` of tokio time.
        pub(crate) async fn take_async_for<R>(
            &self,
            lock: usize,
            read: bool,
            site: &'static Location<'static>,
            timeout: Duration,
            raw: impl Future<Output = R>,
        ) -> Result<(R, tasks::TaskHeld), LockTimeout> {
            let held = tasks::acquire(
                self,
                Acq {
                    lock,
                    read,
                    blocking: true,
                    site,
                },
            );
            let raw = tokio::time::timeout(timeout, raw)
                .await
                .map_err(|_| self.timed_out(timeout))?;
            set_holder(self, site);
            Ok((raw, held))
        }

        /// A `try_*` of an async lock that succeeded.
        pub(crate) fn try_take_async<R>(
            &self,
            lock: usize,
            read: bool,
            site: &'static Location<'static>,
            raw: Option<R>,
        ) -> Option<(R, tasks::TaskHeld)> {
            let raw = raw?;
            let held = tasks::acquire(
                self,
                Acq {
                    lock,
                    read,
                    blocking: false,
                    site,
                },
            );
            set_holder(self, site);
            Some((raw, held))
        }
    }
}
