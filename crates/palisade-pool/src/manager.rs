//! [`Manager`]: how the pool makes, checks and resets connections.

use std::future::Future;

/// Makes and looks after the pool's connections.
///
/// Only [`connect`](Manager::connect) is required. The pool runs every async step under a
/// deadline: `connect` under `connect_timeout`, `validate` and `recycle` under
/// `validation_timeout` (and all of them inside the caller's `acquire_timeout`), so a backend
/// that hangs costs a bounded wait, never a stuck pool. A step that errs or overruns discards
/// the connection; none of them is ever handed out broken. A `validate`, `recycle` or
/// `is_broken` that panics closes its connection and frees its slot, and the panic goes on to
/// whoever ran it (the `get()`, the [`Pooled`](crate::Pooled) guard's drop, or
/// [`maintain`](crate::Pool::maintain)); a `connect` that panics counts as a failed attempt.
///
/// ```
/// use palisade_pool::Manager;
/// use tokio::io::AsyncWriteExt;
/// use tokio::net::TcpStream;
///
/// /// Plain TCP connections to one address.
/// struct Tcp(std::net::SocketAddr);
///
/// impl Manager for Tcp {
///     type Connection = TcpStream;
///     type Error = std::io::Error;
///
///     async fn connect(&self) -> std::io::Result<TcpStream> {
///         TcpStream::connect(self.0).await
///     }
///
///     // A zero-length write fails once the peer has reset the connection.
///     async fn validate(&self, conn: &mut TcpStream) -> std::io::Result<()> {
///         conn.write_all(b"").await
///     }
/// }
/// ```
pub trait Manager: Send + Sync + 'static {
    /// The pooled connection.
    type Connection: Send + 'static;
    /// What connecting, validating and recycling fail with. Timeout errors carry the last one.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a new connection. Runs on a task of its own (see the pool's `spawn_with`), so a
    /// `get()` that is dropped meanwhile never cancels it: the connection goes to the next
    /// waiter or the idle set.
    fn connect(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// Checks that an idle connection still works (e.g. `SELECT 1`, `PING`), when the
    /// test-on-checkout policy asks for it and on keepalive. The default accepts every
    /// connection.
    fn validate(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = conn;
        std::future::ready(Ok(()))
    }

    /// Resets a used connection before its next checkout (e.g. roll back an open transaction,
    /// `DISCARD ALL`). It runs inside the next `get()`, never in a guard's `Drop`, so returning
    /// a connection does no I/O. The default does nothing.
    fn recycle(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = conn;
        std::future::ready(Ok(()))
    }

    /// A cheap, synchronous check that the connection is beyond use (e.g. its reader saw EOF),
    /// made when it comes back and before it goes out. The default says no.
    fn is_broken(&self, conn: &mut Self::Connection) -> bool {
        let _ = conn;
        false
    }
}
