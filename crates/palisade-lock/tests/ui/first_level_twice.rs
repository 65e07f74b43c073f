// Config then Config: two locks of the first declared level, rejected with the `LockAfter`
// message (see `first_level_out_of_order.rs`).
use palisade_lock::ordered::{Ctx, Mutex};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static PRIMARY: Mutex<Config, u32> = Mutex::new(1);
static FALLBACK: Mutex<Config, u32> = Mutex::new(2);

fn main() {
    let mut root = Ctx::root();
    let (primary, mut ctx) = PRIMARY.lock(&mut root);
    let (fallback, _ctx) = FALLBACK.lock(&mut ctx);
    assert_eq!(*primary + *fallback, 3);
}
