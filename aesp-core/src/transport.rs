//! The transport seam between the Host and a runtime: send a [`ToolCall`], get a
//! [`ToolResult`] or a stream of [`StreamChunk`]s.
//!
//! A runtime connects to the Host (over mTLS in production, or in process); the Host holds
//! one [`RuntimeTransport`] per connected runtime and routes calls to it. The contract the
//! call is validated against is always the Host's: nothing a transport returns can change it.

use std::{fmt, pin::Pin, time::Duration};

use async_trait::async_trait;
use futures_core::Stream;

use crate::{
    error::Result,
    proto::v1::{StreamChunk, ToolCall, ToolResult},
};

/// A stream of chunks of one streaming invocation.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<StreamChunk>> + Send + 'static>>;

/// The Host's handle on one connected runtime.
///
/// # Contract
/// - `invoke` resolves within `deadline` (plus scheduling slack): with the runtime's result,
///   or with `DEADLINE_EXCEEDED`; a runtime that disconnects mid-call yields
///   `RESOURCE_UNAVAILABLE`. It never hangs the caller.
/// - A result whose `invocation_id` differs from the call's is a protocol error
///   (`INTERNAL_ERROR`), never delivered as the call's result. The Host's pipeline checks
///   this for every transport, so a transport need not repeat it.
/// - `invoke_stream` yields chunks in `chunk_id` order starting at 0, without gaps, ending
///   with one chunk whose `is_final` is set or with an error; the same deadline applies to
///   the whole stream.
/// - Dropping a returned future or stream cancels the call at the runtime where the
///   transport can (best effort); the Host's audit records the cancellation.
/// - `runtime_id` is the identity the runtime authenticated with (its certificate for mTLS),
///   not merely what it announced.
#[async_trait]
pub trait RuntimeTransport: Send + Sync + fmt::Debug + 'static {
    /// The runtime's authenticated id.
    fn runtime_id(&self) -> &str;

    /// Sends `call`, waits for its result.
    async fn invoke(&self, call: ToolCall, deadline: Duration) -> Result<ToolResult>;

    /// Sends `call` for a streaming tool, returns its chunks.
    async fn invoke_stream(&self, call: ToolCall, deadline: Duration) -> Result<ChunkStream>;

    /// Whether the connection is still up (a cheap local check; health also needs heartbeats).
    fn is_connected(&self) -> bool;
}
