// The first declared level locked after a later one: the `LockAfter` message naming both
// levels. (With a single `LockAfter` impl, after `Unlocked`, rustc would infer the context's
// level from it and report a type mismatch instead; `lock_levels!` adds a second one.)
use palisade_lock::ordered::{Ctx, Mutex};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static CONFIG: Mutex<Config, u32> = Mutex::new(3);
static AUDIT: Mutex<Audit, Vec<String>> = Mutex::new(Vec::new());

fn main() {
    let mut root = Ctx::root();
    let (mut log, mut ctx) = AUDIT.lock(&mut root);
    let (limit, _ctx) = CONFIG.lock(&mut ctx);
    log.push(format!("limit is {}", *limit));
}
