//! What the background workers are doing, in one shape for every kind (in the spirit of
//! Garage's `worker list`): state, progress, rate, last error, last completed pass and when the
//! next is due. Actors that keep no other status (janitor, tiering) report here; the block
//! layer's workers (placement, scrub, check) are read from their own progress records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerState {
    /// Working as fast as it can.
    Busy,
    /// Working, held to its configured rate.
    Throttled,
    #[default]
    Idle,
    /// Stopped by an operator.
    Paused,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Busy => "busy",
            WorkerState::Throttled => "throttled",
            WorkerState::Idle => "idle",
            WorkerState::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct WorkerReport {
    pub state: WorkerState,
    /// Share of the running pass done, 0..1 (None: not measured).
    pub progress: Option<f64>,
    pub bytes_per_second: f64,
    pub last_error: Option<String>,
    /// When the last complete pass ended (0: never).
    pub last_done_ms: i64,
    /// When the next pass is due (0: on demand or unknown).
    pub next_run_ms: i64,
    pub figures: BTreeMap<String, String>,
    pub tunables: BTreeMap<String, String>,
}

/// Reports of the actors that keep no other status, by worker name.
#[derive(Default)]
pub struct Board(Mutex<HashMap<&'static str, WorkerReport>>);

impl Board {
    pub fn update(&self, name: &'static str, f: impl FnOnce(&mut WorkerReport)) {
        if let Ok(mut b) = self.0.lock() {
            f(b.entry(name).or_default());
        }
    }

    pub fn get(&self, name: &'static str) -> WorkerReport {
        self.0
            .lock()
            .ok()
            .and_then(|b| b.get(name).cloned())
            .unwrap_or_default()
    }
}
