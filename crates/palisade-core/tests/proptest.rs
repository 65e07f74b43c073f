//! Properties of `Instant` arithmetic and `ManualClock`.

use std::time::Duration;

use palisade_core::{Clock, Instant, ManualClock};
use proptest::prelude::*;

fn instant() -> impl Strategy<Value = Instant> {
    prop_oneof![
        any::<u64>().prop_map(Instant::from_nanos),
        (0_u64..1_000_000).prop_map(Instant::from_nanos),
        (0_u64..1_000).prop_map(|n| Instant::from_nanos(u64::MAX - n)),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        any::<u64>().prop_map(Duration::from_nanos),
        (0_u64..1_000_000).prop_map(Duration::from_nanos),
        (any::<u64>(), 0_u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Advance(Duration),
    AdvanceTo(Instant),
    Read,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        duration().prop_map(Op::Advance),
        instant().prop_map(Op::AdvanceTo),
        Just(Op::Read),
    ]
}

proptest! {
    #[test]
    fn add_then_sub_round_trips_when_it_fits(t in instant(), d in duration()) {
        match t.checked_add(d) {
            Some(later) => {
                prop_assert_eq!(later - d, t);
                prop_assert_eq!(later - t, d);
                prop_assert_eq!(later.checked_duration_since(t), Some(d));
                prop_assert!(later >= t);
            }
            None => {
                prop_assert_eq!(t + d, Instant::MAX);
                prop_assert!(d.as_nanos() > u128::from(u64::MAX - t.as_nanos()));
            }
        }
    }

    #[test]
    fn sub_saturates_at_zero_and_never_panics(t in instant(), d in duration()) {
        let earlier = t - d;
        prop_assert!(earlier <= t);
        match t.checked_sub(d) {
            Some(e) => prop_assert_eq!(e, earlier),
            None => prop_assert_eq!(earlier, Instant::ZERO),
        }
    }

    #[test]
    fn duration_since_agrees_with_the_ordering(a in instant(), b in instant()) {
        prop_assert_eq!(a.checked_duration_since(b).is_some(), a >= b);
        prop_assert_eq!(a.saturating_duration_since(b).is_zero(), a <= b);
        prop_assert_eq!(a - b, a.saturating_duration_since(b));
        prop_assert_eq!(
            u128::from(a.as_nanos().abs_diff(b.as_nanos())),
            (a - b).as_nanos() + (b - a).as_nanos()
        );
    }

    #[test]
    fn manual_clock_matches_a_model_and_never_goes_back(
        start in instant(),
        ops in proptest::collection::vec(op(), 0..64),
    ) {
        let clock = ManualClock::starting_at(start);
        let reader = clock.clone();
        let mut model = u128::from(start.as_nanos());
        let mut last = reader.now();
        for op in ops {
            let returned = match op {
                Op::Advance(d) => {
                    model = (model + d.as_nanos()).min(u128::from(u64::MAX));
                    clock.advance(d)
                }
                Op::AdvanceTo(t) => {
                    model = model.max(u128::from(t.as_nanos()));
                    clock.advance_to(t)
                }
                Op::Read => reader.now(),
            };
            let now = reader.now();
            prop_assert_eq!(u128::from(now.as_nanos()), model);
            prop_assert_eq!(returned, now);
            prop_assert!(now >= last);
            last = now;
        }
    }
}
