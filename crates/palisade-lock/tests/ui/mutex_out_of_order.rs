// A later level locked first, then an earlier one from its context: `Accounts` is declared before
// `Audit`, so `Accounts: LockAfter<Audit>` does not hold.
use palisade_lock::ordered::{Ctx, Mutex};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static ACCOUNTS: Mutex<Accounts, Vec<u64>> = Mutex::new(Vec::new());
static AUDIT: Mutex<Audit, Vec<String>> = Mutex::new(Vec::new());

fn main() {
    let mut root = Ctx::root();
    let (mut log, mut ctx) = AUDIT.lock(&mut root);
    let (accounts, _ctx) = ACCOUNTS.lock(&mut ctx);
    log.push(format!("{} accounts", accounts.len()));
}
