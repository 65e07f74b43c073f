// `ordered::RwLock::write` of an earlier level while a later level is read.
use palisade_lock::ordered::{Ctx, RwLock};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static ACCOUNTS: RwLock<Accounts, Vec<u64>> = RwLock::new(Vec::new());
static AUDIT: RwLock<Audit, Vec<String>> = RwLock::new(Vec::new());

fn main() {
    let mut root = Ctx::root();
    let (log, mut ctx) = AUDIT.read(&mut root);
    let (mut accounts, _ctx) = ACCOUNTS.write(&mut ctx);
    accounts.push(log.len() as u64);
}
