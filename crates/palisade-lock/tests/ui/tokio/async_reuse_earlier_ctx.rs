// Across `.await`: Config, then Audit from Config's context, then Accounts from Config's context
// again while the Audit guard is held. A borrow error, as in the sync `reuse_earlier_ctx.rs`.
use palisade_lock::ordered::{AsyncMutex, Ctx};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static CONFIG: AsyncMutex<Config, u32> = AsyncMutex::new(3);
static ACCOUNTS: AsyncMutex<Accounts, Vec<u64>> = AsyncMutex::new(Vec::new());
static AUDIT: AsyncMutex<Audit, Vec<String>> = AsyncMutex::new(Vec::new());

async fn report() {
    let mut root = Ctx::root();
    let (limit, mut config_ctx) = CONFIG.lock(&mut root).await;
    let (mut log, _audit_ctx) = AUDIT.lock(&mut config_ctx).await;
    let (accounts, _accounts_ctx) = ACCOUNTS.lock(&mut config_ctx).await;
    log.push(format!("{} accounts, limit {}", accounts.len(), *limit));
}

fn main() {
    drop(report());
}
