//! Process signals that trigger and escalate shutdown.

use std::fmt;

use palisade_core::sync::Arc;

use crate::config::Escalation;
use crate::phase::Phase;
use crate::report::Trigger;
use crate::state::State;

/// A process signal the coordinator listens for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// Ctrl-C: `SIGINT` on Unix, `CTRL_C_EVENT` on Windows.
    Interrupt,
    /// `SIGTERM`, what Kubernetes, systemd and Docker send first. Unix only (ignored elsewhere,
    /// with a warning).
    Terminate,
    /// `SIGHUP`. Unix only.
    Hangup,
    /// `SIGQUIT`. Unix only.
    Quit,
}

impl Signal {
    /// The conventional name (`SIGINT`, `SIGTERM`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
            Signal::Hangup => "SIGHUP",
            Signal::Quit => "SIGQUIT",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Signal {
    /// The conventional exit status of a process ended by this signal: 128 + its number (130
    /// for `SIGINT`, 143 for `SIGTERM`), what a shell reports for it and what the coordinator
    /// exits with on a third signal. [`ShutdownReport::exit_code`](crate::ShutdownReport::exit_code)
    /// uses it for an escalated shutdown.
    pub const fn exit_code(self) -> u8 {
        128 + match self {
            Signal::Hangup => 1,
            Signal::Interrupt => 2,
            Signal::Quit => 3,
            Signal::Terminate => 15,
        }
    }
}

/// Installs the handlers and spawns the task that turns signals into shutdown steps: the
/// first triggers, the second escalates (or exits, with [`Escalation::Exit`]), and a third, or
/// any signal once the sequence is done, exits the process with `128 + signal`. Must run
/// inside a tokio runtime.
pub(crate) fn listen(state: Arc<State>, signals: &[Signal], escalation: Escalation) {
    if signals.is_empty() {
        return;
    }
    let mut streams = Signals::install(signals);
    tokio::spawn(async move {
        let mut received = 0_u32;
        loop {
            let signal = streams.recv().await;
            received += 1;
            if state.phase() == Phase::Done || received >= 3 {
                tracing::error!(target: "palisade_shutdown", %signal, "signal after the shutdown gave up waiting: exiting now");
                std::process::exit(i32::from(signal.exit_code()));
            }
            if state.is_abandoned() {
                // No coordinator will run the shutdown this signal asks for: don't swallow it.
                tracing::error!(target: "palisade_shutdown", %signal, "signal with no coordinator left to run the shutdown: exiting now");
                std::process::exit(i32::from(signal.exit_code()));
            }
            if received == 1 {
                // A no-op if something already triggered: then this signal is the first one,
                // not an escalation (Kubernetes sends SIGTERM whatever started the shutdown).
                state.trigger(Trigger::Signal(signal));
                continue;
            }
            if let Escalation::Exit(code) = escalation {
                tracing::error!(target: "palisade_shutdown", %signal, code, "shutdown escalated: exiting now");
                std::process::exit(code);
            }
            state.escalate(Some(signal));
        }
    });
}

/// The installed handlers: one stream per signal, polled together.
#[derive(Debug)]
pub(crate) struct Signals {
    #[cfg(unix)]
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
    #[cfg(not(unix))]
    ctrl_c: bool,
}

impl Signals {
    /// Installs a handler for each signal. Must run inside a tokio runtime. A signal that
    /// cannot be installed (or a runtime without an I/O driver) is logged at `error` and
    /// skipped; the rest still work.
    pub(crate) fn install(signals: &[Signal]) -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = signals
                .iter()
                .filter_map(|&which| {
                    let kind = match which {
                        Signal::Interrupt => SignalKind::interrupt(),
                        Signal::Terminate => SignalKind::terminate(),
                        Signal::Hangup => SignalKind::hangup(),
                        Signal::Quit => SignalKind::quit(),
                    };
                    // tokio panics (rather than erring) when the runtime has no I/O driver;
                    // that is a set-up mistake to report, not a reason to take the service down.
                    match std::panic::catch_unwind(|| signal(kind)) {
                        Ok(Ok(stream)) => Some((which, stream)),
                        Ok(Err(error)) => {
                            tracing::error!(target: "palisade_shutdown", signal = %which, %error, "cannot listen for the signal; it will not trigger shutdown");
                            None
                        }
                        Err(_) => {
                            tracing::error!(target: "palisade_shutdown", signal = %which, "cannot listen for signals: the tokio runtime has no I/O driver (build it with `enable_all` or `enable_io`); the signal will not trigger shutdown");
                            None
                        }
                    }
                })
                .collect();
            Signals { streams }
        }
        #[cfg(not(unix))]
        {
            for which in signals.iter().filter(|s| **s != Signal::Interrupt) {
                tracing::warn!(target: "palisade_shutdown", signal = %which, "only Ctrl-C exists on this platform; the signal is ignored");
            }
            Signals {
                ctrl_c: signals.contains(&Signal::Interrupt),
            }
        }
    }

    /// The next signal to arrive; pending forever when none is installed. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        {
            std::future::poll_fn(|cx| {
                for (which, stream) in &mut self.streams {
                    if stream.poll_recv(cx).is_ready() {
                        return std::task::Poll::Ready(*which);
                    }
                }
                std::task::Poll::Pending
            })
            .await
        }
        #[cfg(not(unix))]
        {
            if self.ctrl_c && tokio::signal::ctrl_c().await.is_ok() {
                return Signal::Interrupt;
            }
            std::future::pending().await
        }
    }
}
