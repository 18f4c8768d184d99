//! Shutdown is an argument: one `watch` flag, set once when the service must stop,
//! that every long-running loop and stream selects on.

use tokio::sync::watch;

/// A new flag: the sender sets it, receivers wait for it.
pub fn flag() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Completes once the flag is set (or its sender is gone).
pub async fn signalled(flag: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, inside.
    let _ = flag.wait_for(|set| *set).await;
}
