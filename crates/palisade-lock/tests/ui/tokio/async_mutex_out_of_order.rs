// `ordered::AsyncMutex` of a later level locked, then an earlier one, in an async fn.
use palisade_lock::ordered::{AsyncMutex, Ctx, Unlocked};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static ACCOUNTS: AsyncMutex<Accounts, Vec<u64>> = AsyncMutex::new(Vec::new());
static AUDIT: AsyncMutex<Audit, Vec<String>> = AsyncMutex::new(Vec::new());

async fn record(ctx: &mut Ctx<'_, Unlocked>) {
    let (mut log, mut ctx) = AUDIT.lock(ctx).await;
    let (accounts, _ctx) = ACCOUNTS.lock(&mut ctx).await;
    log.push(format!("{} accounts", accounts.len()));
}

fn main() {
    drop(record(&mut Ctx::root()));
}
