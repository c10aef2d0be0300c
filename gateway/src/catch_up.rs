//! The node's catch-up task: fills the gaps the hub found (or that a broken link to the bus
//! left) from the channels' history, so subscribers receive every publication in order.
//!
//! The hub never waits on the bus (it runs on the bus's reader); it records which channels
//! need a catch-up and from which position, and this task does the reads — several channels
//! at once, each bounded by the bus timeout — and hands each result back to the hub. A read
//! that fails (Redis down) is retried after a pause; meanwhile the channel keeps a bounded
//! backlog and its clients stay connected.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chorus_bus::Bus;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// The channels that asked for a catch-up, by name: a set, so a channel asking twice before
/// the task looks is read once (the hub reads its position and generation when the task takes
/// it, so the read is always for the channel's latest request).
#[derive(Default)]
pub(crate) struct CatchUpQueue {
    channels: Mutex<HashSet<String>>,
    wanted: Notify,
}

impl CatchUpQueue {
    pub(crate) fn request(&self, channel: &str) {
        self.channels.lock().insert(channel.to_owned());
        self.wanted.notify_one();
    }

    /// Waits until some channel asked.
    pub(crate) async fn needed(&self) {
        self.wanted.notified().await;
    }

    /// Takes every channel that asked.
    pub(crate) fn take(&self) -> Vec<String> {
        self.channels.lock().drain().collect()
    }
}

/// History reads in flight at once.
const PARALLEL_READS: usize = 16;
/// Most bytes of publications one catch-up read takes from history: a channel that missed
/// more is caught up page by page (each page delivered before the next is read), so the
/// reads in flight hold at most `PARALLEL_READS` pages.
const PAGE_BYTES: usize = 1 << 20;
/// Pause before retrying after a failed read.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

pub(crate) async fn run(hub: Arc<Hub>, bus: Bus, timeout: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hub.catch_up_needed() => {}
        }
        loop {
            let targets = hub.catch_up_targets();
            if targets.is_empty() {
                break;
            }
            let reads = futures::stream::iter(targets)
                .map(|target| {
                    let bus = &bus;
                    async move {
                        let read = tokio::time::timeout(
                            timeout,
                            bus.recover(&target.channel, &target.since, PAGE_BYTES),
                        )
                        .await;
                        (target, read)
                    }
                })
                .buffer_unordered(PARALLEL_READS)
                .collect::<Vec<_>>()
                .await;
            let mut failed = 0;
            for (target, read) in reads {
                match read {
                    Ok(Ok(recovery)) => hub.finish_catch_up(&target, Some(recovery)),
                    Ok(Err(e)) => {
                        failed += 1;
                        tracing::debug!(channel = %target.channel, error = %e, "catch-up read failed");
                        hub.finish_catch_up(&target, None);
                    }
                    Err(_) => {
                        failed += 1;
                        hub.finish_catch_up(&target, None);
                    }
                }
            }
            if failed > 0 {
                tracing::warn!(channels = failed, retry_in = ?RETRY_PAUSE,
                    "history reads for catch-up failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                }
            }
        }
    }
}
