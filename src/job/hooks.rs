//! What the job does around the pure training loop as each epoch ends or a stop comes: metric
//! lines, logs and checkpoints.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Result;
use tracing::info;

use crate::checkpoint::Checkpointer;
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
    pub(super) last: Instant,
    /// Where training stood when a stop was requested, for the failure reason.
    pub(super) stopped_at: Option<String>,
}

impl Hooks for JobHooks<'_> {
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn epoch_done(&mut self, s: &EpochStats, state: &TrainState) -> Result<()> {
        let seconds = self.last.elapsed().as_secs_f64();
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
            self.checkpointer.save(state, &self.metrics)?;
        }
        self.last = Instant::now();
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
