//! What the job does around the pure training loop as each epoch ends or a stop comes: metric
//! lines, logs and checkpoints.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Result;
use tracing::info;

use crate::checkpoint::{Checkpointer, Encoded};
use crate::config::TrainConfig;
use crate::metrics::{self, EpochMetrics};
use crate::state::{EpochStats, TrainState};
use crate::train::Hooks;

/// What the job does around the pure training loop: metric lines, logs and checkpoints.
pub(super) struct JobHooks<'a> {
    pub(super) cfg: &'a TrainConfig,
    /// The first host: the only one that prints metric lines and writes checkpoints.
    pub(super) leader: bool,
    pub(super) stop: &'a AtomicBool,
    pub(super) checkpointer: Checkpointer,
    pub(super) metrics: Vec<EpochMetrics>,
    pub(super) epoch_started: Instant,
    /// Where training stood when a stop was requested, for the failure reason.
    pub(super) stopped_at: Option<String>,
    /// The finished run's checkpoint (the first host's), for a stop after training.
    pub(super) last: Option<Final>,
}

/// The finished state's checkpoint: written, or (with `checkpoint_interval=0`) made and kept
/// for a stop that comes before the job ends.
pub(super) enum Final {
    Written(std::path::PathBuf),
    Pending(Encoded),
}

impl Final {
    /// The checkpoint's file, written now if it was pending.
    pub(super) fn write(self, checkpointer: &mut Checkpointer) -> Result<std::path::PathBuf> {
        match self {
            Final::Written(path) => Ok(path),
            Final::Pending(encoded) => checkpointer.write(&encoded),
        }
    }
}

impl Hooks for JobHooks<'_> {
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn epoch_done(&mut self, s: &EpochStats, state: &TrainState) -> Result<()> {
        let seconds = self.epoch_started.elapsed().as_secs_f64();
        let m = EpochMetrics {
            epoch: s.epoch,
            learning_rate: s.learning_rate,
            train_loss: s.train.loss,
            train_accuracy: s.train.accuracy,
            validation_loss: s.validation.map(|v| v.loss),
            validation_accuracy: s.validation.map(|v| v.accuracy),
            seconds,
            samples_per_second: s.samples as f64 / seconds.max(1e-9),
        };
        info!(
            epoch = %format!("{}/{}", s.epoch, self.cfg.epochs),
            train_loss = format!("{:.4}", m.train_loss),
            train_accuracy = format!("{:.4}", m.train_accuracy),
            seconds = format!("{seconds:.3}"),
            "epoch done"
        );
        if self.leader {
            println!("{}", metrics::epoch_line(&m));
        }
        self.metrics.push(m);
        let interval = self.cfg.checkpoint_interval;
        let due = interval > 0 && (s.epoch.is_multiple_of(interval) || state.finished(self.cfg));
        if self.leader && due {
            let path = self.checkpointer.save(state, &self.metrics)?;
            if state.finished(self.cfg) {
                self.last = Some(Final::Written(path));
            }
        } else if self.leader && state.finished(self.cfg) {
            self.last = Some(Final::Pending(self.checkpointer.prepare(state, &self.metrics)?));
        }
        self.epoch_started = Instant::now();
        Ok(())
    }

    fn stopping(&mut self, state: &TrainState) -> Result<()> {
        if !self.leader {
            self.stopped_at = Some(format!(
                " at epoch {} step {}; the first host wrote the checkpoint",
                state.epoch + 1,
                state.step
            ));
            return Ok(());
        }
        let path = self.checkpointer.save(state, &self.metrics)?;
        self.stopped_at = Some(format!(
            " at epoch {} step {}; checkpoint {} written; running the job again resumes from it",
            state.epoch + 1,
            state.step,
            path.display()
        ));
        Ok(())
    }
}
