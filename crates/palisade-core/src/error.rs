//! [`ConfigError`]: the one error every palisade builder returns for a bad knob.

use std::fmt;

/// A builder was given a value outside its allowed range.
///
/// Every palisade crate's builders return this type (each crate re-exports it). The message
/// names the field, the allowed range and the value given, e.g.
/// `max_concurrent must be in 1..=1073741823, got 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `field` must lie in `allowed`; it was `got`.
    OutOfRange {
        /// The builder method (and so the field) at fault.
        field: &'static str,
        /// The allowed values, in words.
        allowed: String,
        /// The value that was given, as `{:?}` printed it.
        got: String,
    },
}

impl ConfigError {
    /// `field` must be `allowed` (in words, e.g. `"in 1..=100"`), and `got` was given.
    pub fn out_of_range(
        field: &'static str,
        allowed: impl Into<String>,
        got: impl fmt::Debug,
    ) -> ConfigError {
        ConfigError::OutOfRange {
            field,
            allowed: allowed.into(),
            got: format!("{got:?}"),
        }
    }

    /// The builder method (and so the field) at fault.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::OutOfRange { field, .. } => field,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::OutOfRange {
                field,
                allowed,
                got,
            } => write!(f, "{field} must be {allowed}, got {got}"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::ConfigError;

    #[test]
    fn the_message_names_the_field_the_range_and_the_value() {
        let error = ConfigError::out_of_range("burst", "at least 1", 0u32);
        assert_eq!(error.to_string(), "burst must be at least 1, got 0");
        assert_eq!(error.field(), "burst");
        let error = ConfigError::out_of_range("name", "not empty", "");
        assert_eq!(error.to_string(), "name must be not empty, got \"\"");
    }
}
