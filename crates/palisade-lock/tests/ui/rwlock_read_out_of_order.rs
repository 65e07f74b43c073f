// `ordered::RwLock::read` of an earlier level while a later level is written.
use palisade_lock::ordered::{Ctx, RwLock};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static ACCOUNTS: RwLock<Accounts, Vec<u64>> = RwLock::new(Vec::new());
static AUDIT: RwLock<Audit, Vec<String>> = RwLock::new(Vec::new());

fn main() {
    let mut root = Ctx::root();
    let (mut log, mut ctx) = AUDIT.write(&mut root);
    let (accounts, _ctx) = ACCOUNTS.read(&mut ctx);
    log.push(format!("{} accounts", accounts.len()));
}
