//! The snapshot worker: a thread that runs the snapshot collectors when asked, so that a slow
//! source (a firewall tool near its timeout) never delays sending.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

use super::inbox::RunInput;
use crate::collect::{snapshot_collector, SnapshotCollector};
use twinguard_core::event::EventName;

/// Asks the worker for snapshots; at most one request waits (a request while one is queued
/// is merged away: the next run takes a fresh snapshot anyway).
#[derive(Debug)]
pub(crate) struct SnapshotWorker {
    tx: SyncSender<Vec<EventName>>,
}

impl SnapshotWorker {
    /// Starts the worker thread; results arrive on `out` as [`RunInput::Snapshot`].
    pub fn spawn(out: SyncSender<RunInput>) -> std::io::Result<SnapshotWorker> {
        let (tx, rx) = sync_channel::<Vec<EventName>>(1);
        std::thread::Builder::new()
            .name("snapshots".into())
            .spawn(move || work(rx, out))?;
        Ok(SnapshotWorker { tx })
    }

    /// Requests snapshots of `names`; returns false when a request is already waiting.
    pub(crate) fn request(&self, names: Vec<EventName>) -> bool {
        match self.tx.try_send(names) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

fn work(rx: Receiver<Vec<EventName>>, out: SyncSender<RunInput>) {
    let mut collectors: BTreeMap<EventName, Box<dyn SnapshotCollector>> = BTreeMap::new();
    while let Ok(names) = rx.recv() {
        for name in names {
            let collector = collectors
                .entry(name)
                .or_insert_with(|| snapshot_collector(name).unwrap_or_else(|| Box::new(Missing(name))));
            let result = collector.collect();
            let status = collector.status();
            if out
                .send(RunInput::Snapshot {
                    name,
                    result,
                    status,
                    wall: SystemTime::now(),
                })
                .is_err()
            {
                return;
            }
        }
    }
}

/// Stands in for a collector that does not exist in this build.
struct Missing(EventName);

impl SnapshotCollector for Missing {
    fn name(&self) -> EventName {
        self.0
    }

    fn collect(&mut self) -> Result<Vec<twinguard_core::event::PayloadItem>, crate::collect::CollectError> {
        Err(crate::collect::CollectError::Unavailable {
            source_name: self.0.to_string(),
            why: "no collector in this build".into(),
        })
    }

    fn status(&self) -> twinguard_core::config::CollectorStatus {
        twinguard_core::config::CollectorStatus {
            note: Some("no collector in this build".into()),
            ..Default::default()
        }
    }
}
