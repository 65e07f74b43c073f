// `ordered::AsyncRwLock::read` of an earlier level while a later one is written, in an async fn.
use palisade_lock::ordered::{AsyncRwLock, Ctx};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static ACCOUNTS: AsyncRwLock<Accounts, Vec<u64>> = AsyncRwLock::new(Vec::new());
static AUDIT: AsyncRwLock<Audit, Vec<String>> = AsyncRwLock::new(Vec::new());

async fn count_accounts_under_audit() {
    let mut root = Ctx::root();
    let (mut log, mut ctx) = AUDIT.write(&mut root).await;
    let (accounts, _ctx) = ACCOUNTS.read(&mut ctx).await;
    log.push(format!("{} accounts", accounts.len()));
}

fn main() {
    drop(count_accounts_under_audit());
}
