//! A ComfyUI client of our own: HTTP ([`client`]), the WebSocket ([`socket`]) and
//! its typed messages ([`messages`]). The reference is `docs/comfyui-protocol.md`
//! (a summary of what the real server does, with the transcripts in
//! `tests/fixtures/comfyui/`).

pub mod client;
pub mod messages;
pub mod socket;

pub use client::{ComfyClient, ComfyError, FileRef, HistoryEntry, QueueState, RunStatus};
pub use messages::{ExecutionError, WsMessage};
pub use socket::{ComfySocket, SocketEvent};
