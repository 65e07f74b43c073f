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

/// `Deref` (and with `mut`, `DerefMut`) to the raw guard's value, and `Debug` as the value.
/// `[?Sized +]` for guards of unsized values, `[]` otherwise.
macro_rules! guard_access {
    ($guard:ident, [$($sized:tt)*]) => {
        impl<T: $($sized)*> std::ops::Deref for $guard<'_, T> {
            type Target = T;
            fn deref(&self) -> &T {
                &self.raw
            }
        }

        impl<T: $($sized)* std::fmt::Debug> std::fmt::Debug for $guard<'_, T> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&**self, f)
            }
        }
    };
    ($guard:ident, [$($sized:tt)*], mut) => {
        guard_access!($guard, [$($sized)*]);

        impl<T: $($sized)*> std::ops::DerefMut for $guard<'_, T> {
            fn deref_mut(&mut self) -> &mut T {
                &mut self.raw
            }
        }
    };
}
