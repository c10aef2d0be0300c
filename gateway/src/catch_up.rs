//! The node's catch-up task: fills the gaps the hub found (or that a broken link to the bus
//! left) from the channels' history, so subscribers receive every publication in order.
//!
//! The hub never waits on the bus (it runs on the bus's reader); it records which channels
//! need a catch-up and from which position, and this task does the reads — several channels
//! at once, each bounded by the bus timeout — and hands each result back to the hub. A read
//! that fails (Redis down) is retried after a pause; meanwhile the channel keeps a bounded
//! backlog and its clients stay connected.

use std::sync::Arc;
use std::time::Duration;

use chorus_bus::Bus;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// History reads in flight at once.
const PARALLEL_READS: usize = 16;
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
                .map(|(channel, since)| {
                    let bus = &bus;
                    async move {
                        let read =
                            tokio::time::timeout(timeout, bus.recover(&channel, &since)).await;
                        (channel, since, read)
                    }
                })
                .buffer_unordered(PARALLEL_READS)
                .collect::<Vec<_>>()
                .await;
            let mut failed = 0;
            for (channel, since, read) in reads {
                match read {
                    Ok(Ok(recovery)) => hub.finish_catch_up(&channel, &since, Some(recovery)),
                    Ok(Err(e)) => {
                        failed += 1;
                        tracing::debug!(%channel, error = %e, "catch-up read failed");
                        hub.finish_catch_up(&channel, &since, None);
                    }
                    Err(_) => {
                        failed += 1;
                        hub.finish_catch_up(&channel, &since, None);
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
