//! A ComfyUI client of our own: HTTP ([`client`]), the WebSocket ([`socket`]) and
//! its typed messages ([`messages`]). It follows ComfyUI 0.3.64's public API as
//! recorded from a real server in `tests/fixtures/comfyui/` (see that folder's
//! README and `docs/architecture.md`).

pub mod client;
pub mod messages;
pub mod socket;

pub use client::{ComfyClient, ComfyError, FileRef, HistoryEntry, QueueState, RunStatus};
pub use messages::{ExecutionError, WsMessage};
pub use socket::{ComfySocket, SocketEvent};
