//! Classification: what an outcome means to the breaker.

/// What one call's outcome counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The dependency worked (it may still count as slow).
    Success,
    /// The dependency failed: counts towards the failure rate and consecutive failures.
    Failure,
    /// Says nothing about the dependency's health (a client error such as a 404, a call the
    /// caller cancelled): recorded as neither, and a half-open probe's slot is freed for another.
    Ignored,
}

/// Maps a call's result, an error *or* a response value, to an [`Outcome`].
///
/// Any `Fn(&Result<T, E>) -> Outcome` is a classifier:
///
/// ```
/// use palisade_breaker::Outcome;
///
/// struct Response { status: u16 }
///
/// let classify = |r: &Result<Response, std::io::Error>| match r {
///     Ok(resp) if resp.status >= 500 => Outcome::Failure, // a response can be a failure
///     Ok(resp) if resp.status >= 400 => Outcome::Ignored, // the caller's fault, not the server's
///     Ok(_) => Outcome::Success,
///     Err(_) => Outcome::Failure,
/// };
/// # use palisade_breaker::Classify;
/// assert_eq!(classify.classify(&Ok(Response { status: 503 })), Outcome::Failure);
/// ```
pub trait Classify<T, E> {
    /// The outcome `result` counts as.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// The default classifier: `Ok` is a success, `Err` a failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorsAreFailures;

impl<T, E> Classify<T, E> for ErrorsAreFailures {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}
