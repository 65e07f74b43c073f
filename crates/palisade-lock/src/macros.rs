//! `const fn` in normal builds, plain `fn` under loom (whose locks have no `const` constructor).

macro_rules! loom_const_fn {
    ($(#[$m:meta])* $vis:vis fn $($rest:tt)*) => {
        #[cfg(not(palisade_loom))]
        $(#[$m])* $vis const fn $($rest)*
        #[cfg(palisade_loom)]
        $(#[$m])* $vis fn $($rest)*
    };
}

/// The address of a lock, its identity on the held stacks.
macro_rules! addr {
    ($lock:expr) => {
        std::ptr::from_ref($lock).cast::<()>() as usize
    };
}
