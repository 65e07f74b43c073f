// `ordered::AsyncRwLock::write` of an earlier level while a later one is read, in an async fn.
use palisade_lock::ordered::{AsyncRwLock, Ctx};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static ACCOUNTS: AsyncRwLock<Accounts, Vec<u64>> = AsyncRwLock::new(Vec::new());
static AUDIT: AsyncRwLock<Audit, Vec<String>> = AsyncRwLock::new(Vec::new());

async fn write_accounts_under_audit() {
    let mut root = Ctx::root();
    let (log, mut ctx) = AUDIT.read(&mut root).await;
    let (mut accounts, _ctx) = ACCOUNTS.write(&mut ctx).await;
    accounts.push(log.len() as u64);
}

fn main() {
    drop(write_accounts_under_audit());
}
