// `spawn_watchdog(..).unwrap();` as a statement drops the watchdog, which stops it: it must not
// pass silently.
#![deny(unused_must_use)]

use std::time::Duration;

fn main() {
    palisade_lock::deadlock::spawn_watchdog(Duration::from_secs(1), |_| {}).unwrap();
}
