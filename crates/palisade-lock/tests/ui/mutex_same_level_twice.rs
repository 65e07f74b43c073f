// Two locks of one level held at once: their order is undefined, so `Accounts: LockAfter<Accounts>`
// is deliberately not implemented.
use palisade_lock::ordered::{Ctx, Mutex};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static CHECKING: Mutex<Accounts, u64> = Mutex::new(10);
static SAVINGS: Mutex<Accounts, u64> = Mutex::new(20);

fn main() {
    let mut root = Ctx::root();
    let (mut from, mut ctx) = CHECKING.lock(&mut root);
    let (mut to, _ctx) = SAVINGS.lock(&mut ctx);
    *from -= 5;
    *to += 5;
}
