//! The set of channels a node wants, each with a "live" flag that subscribers can wait on.
//!
//! The hub changes the set synchronously; a bus implementation reconciles its real
//! subscriptions with it in the background and marks channels live once the bus confirmed
//! them. Keeping the desired state (rather than a queue of subscribe/unsubscribe commands)
//! makes reconnects trivial — resubscribe the whole set — and bounds memory by the number of
//! channels, whatever the churn.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::BusError;

#[derive(Default)]
pub(crate) struct Wanted {
    channels: Mutex<HashMap<String, watch::Sender<bool>>>,
    changed: Notify,
    /// The same news for the occupancy task (each Notify wakes one waiter).
    occupancy_changed: Notify,
}

impl Wanted {
    /// Adds `channel` (if absent) and returns its readiness.
    pub(crate) fn want(&self, channel: &str, live_now: bool) -> ChannelReady {
        let mut channels = self.channels.lock();
        let rx = match channels.get(channel) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(live_now);
                channels.insert(channel.to_owned(), tx);
                self.occupancy_changed.notify_one();
                if !live_now {
                    self.changed.notify_one();
                }
                rx
            }
        };
        ChannelReady { rx }
    }

    pub(crate) fn unwant(&self, channel: &str) {
        if self.channels.lock().remove(channel).is_some() {
            self.changed.notify_one();
            self.occupancy_changed.notify_one();
        }
    }

    pub(crate) fn contains(&self, channel: &str) -> bool {
        self.channels.lock().contains_key(channel)
    }

    /// Every wanted channel with its live flag.
    pub(crate) fn snapshot(&self) -> Vec<(String, bool)> {
        self.channels
            .lock()
            .iter()
            .map(|(c, tx)| (c.clone(), *tx.borrow()))
            .collect()
    }

    pub(crate) fn mark_live(&self, channel: &str) {
        if let Some(tx) = self.channels.lock().get(channel) {
            tx.send_replace(true);
        }
    }

    /// After the bus dropped one channel's subscription: not live until resubscribed.
    pub(crate) fn mark_pending(&self, channel: &str) {
        if let Some(tx) = self.channels.lock().get(channel) {
            tx.send_replace(false);
        }
    }

    /// After the bus connection dropped: nothing is live until resubscribed.
    pub(crate) fn mark_all_pending(&self) {
        for tx in self.channels.lock().values() {
            tx.send_replace(false);
        }
    }

    /// Resolves when the set changed since the last call.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Resolves when the set changed since the last call (the occupancy task's waiter).
    pub(crate) async fn occupancy_changed(&self) {
        self.occupancy_changed.notified().await;
    }
}

/// Resolves when the bus confirmed a wanted channel.
pub struct ChannelReady {
    rx: watch::Receiver<bool>,
}

impl ChannelReady {
    /// Waits up to `timeout` for the channel to be live on the bus.
    pub async fn wait(mut self, timeout: Duration) -> Result<(), BusError> {
        match tokio::time::timeout(timeout, self.rx.wait_for(|live| *live)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(BusError::Unavailable(
                "the channel was unsubscribed before the bus confirmed it".into(),
            )),
            Err(_) => Err(BusError::Unavailable(format!(
                "the bus did not confirm the subscription within {timeout:?}"
            ))),
        }
    }
}
