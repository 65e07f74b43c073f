// The declared order compiles: each level from the context of an earlier one, mutexes and
// reader-writer locks mixed, a level skipped, a context reborrowed into a helper, an extra edge
// declared by hand, and an earlier context reused once the later guards are gone.
use palisade_lock::ordered::{Ctx, LockAfter, Mutex, RwLock};

palisade_lock::lock_levels! { pub Config, pub Accounts, pub Audit }
palisade_lock::lock_levels! { pub Metrics }

// `Metrics` is its own chain; allow it after `Audit` explicitly.
impl LockAfter<Audit> for Metrics {}

static CONFIG: RwLock<Config, u32> = RwLock::new(3);
static ACCOUNTS: Mutex<Accounts, Vec<u64>> = Mutex::new(Vec::new());
static AUDIT: Mutex<Audit, Vec<String>> = Mutex::new(Vec::new());
static METRICS: Mutex<Metrics, u64> = Mutex::new(0);

fn audit(ctx: &mut Ctx<'_, Accounts>, line: String) {
    let (mut log, mut ctx) = AUDIT.lock(ctx);
    log.push(line);
    let (mut metrics, _ctx) = METRICS.lock(&mut ctx);
    *metrics += 1;
}

fn main() {
    let mut root = Ctx::root();
    {
        let (limit, mut ctx) = CONFIG.read(&mut root);
        let (mut accounts, mut ctx) = ACCOUNTS.lock(&mut ctx);
        accounts.push(u64::from(*limit));
        audit(&mut ctx.reborrow(), format!("{} accounts", accounts.len()));
        audit(&mut ctx, "again".to_owned());
    }
    {
        // Config straight to Audit, skipping Accounts.
        let (mut limit, mut ctx) = CONFIG.write(&mut root);
        *limit += 1;
        let (log, _ctx) = AUDIT.lock(&mut ctx);
        assert_eq!(*log, ["1 accounts", "again"]);
    }
    let (metrics, _ctx) = METRICS.lock(&mut root);
    assert_eq!(*metrics, 2);
}
