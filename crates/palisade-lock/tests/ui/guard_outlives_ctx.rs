// The context that came with a guard is dropped, but the guard is kept: the guard still borrows
// the parent context, so the parent cannot lock again (here the very same mutex, a self-deadlock
// at run time) until the guard is gone.
use palisade_lock::ordered::{Ctx, Mutex};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static CONFIG: Mutex<Config, u32> = Mutex::new(3);

fn finish(ctx: Ctx<'_, Config>) {
    drop(ctx);
}

fn main() {
    let mut root = Ctx::root();
    let (mut limit, config_ctx) = CONFIG.lock(&mut root);
    finish(config_ctx);
    let (again, _ctx) = CONFIG.lock(&mut root);
    *limit += *again;
}
