// Config, then Audit from Config's context; then Accounts (between the two) from Config's context
// again while the Audit guard is alive. Each level is fine against `Config`, but the Audit guard
// still borrows that context mutably.
use palisade_lock::ordered::{Ctx, Mutex};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }

static CONFIG: Mutex<Config, u32> = Mutex::new(3);
static ACCOUNTS: Mutex<Accounts, Vec<u64>> = Mutex::new(Vec::new());
static AUDIT: Mutex<Audit, Vec<String>> = Mutex::new(Vec::new());

fn main() {
    let mut root = Ctx::root();
    let (limit, mut config_ctx) = CONFIG.lock(&mut root);
    let (mut log, _audit_ctx) = AUDIT.lock(&mut config_ctx);
    let (accounts, _accounts_ctx) = ACCOUNTS.lock(&mut config_ctx);
    log.push(format!("{} accounts, limit {}", accounts.len(), *limit));
}
