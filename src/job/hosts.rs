//! What a multi-host job does around training: which channel is sharded, every rank starting
//! from the first host's state, and every rank ending with its weights.

use anyhow::Result;
use tracing::info;

use super::Summary;
use crate::checkpoint::{self, Checkpointer};
use crate::config::TrainConfig;
use crate::contract::{JobFiles, Paths};
use crate::data::Dataset;
use crate::distributed::{Group, Layout, Topology};
use crate::error::user;
use crate::metrics::EpochMetrics;
use crate::model::Mlp;
use crate::state::TrainState;

/// Whether a multi-host job's train channel is sharded (ShardedByS3Key: each host its own
/// part). Validation and test data must be the same on every host: every host scores the
/// validation data to take the same early-stopping decisions, and the first host scores the test
/// data for everyone.
pub(super) fn train_is_sharded(paths: &Paths, files: &JobFiles, cfg: &TrainConfig) -> Result<bool> {
    let config = paths.input_data_config();
    let mut sharded = false;
    for (name, spec) in files.input_data.iter().flatten() {
        if spec.distribution.as_deref() != Some("ShardedByS3Key") {
            continue;
        }
        if name != "train" {
            return Err(user(format!(
                "{}: channel \"{name}\" uses S3DistributionType ShardedByS3Key; in a multi-host \
                 job only \"train\" may be sharded (every host scores the same {name} data); use \
                 FullyReplicated",
                config.display()
            )));
        }
        sharded = true;
    }
    if sharded && cfg.validation_split > 0.0 {
        return Err(user(format!(
            "{}: hyperparameter validation_split={} would hold out a different part of each \
             host's train shard; with a sharded train channel, give a FullyReplicated \
             validation channel instead",
            config.display(),
            cfg.validation_split
        )));
    }
    Ok(sharded)
}

/// With a sharded train channel: every host's shard size, and one fingerprint of all shards in
/// rank order (what checkpoints check), set on `train`.
pub(super) fn shard_layout(g: &Group, train: &mut Dataset) -> Result<Layout> {
    let mine = format!("{} {}", train.len(), train.fingerprint);
    let all = g.all_gather_bytes(mine.as_bytes())?;
    let mut sizes = Vec::new();
    let mut hash = blake3::Hasher::new();
    for (rank, bytes) in all.iter().enumerate() {
        let text = String::from_utf8_lossy(bytes);
        let size = text.split(' ').next().and_then(|n| n.parse().ok());
        let size = size.ok_or_else(|| {
            anyhow::anyhow!("{} sent an unreadable shard description", g.topology.describe(rank))
        })?;
        sizes.push(size);
        hash.update(bytes);
        hash.update(b"\n");
    }
    train.fingerprint = format!("shards:blake3:{}", hash.finalize().to_hex());
    info!(shards = ?sizes, fingerprint = %train.fingerprint, "train channel sharded over the hosts");
    Ok(Layout::Sharded(sizes))
}

/// With a sharded train channel: the largest label and the table features' statistics over
/// every host's data, so that every host settles the same classes and standardizes alike.
pub(super) fn combine_stats(
    g: &Group,
    data: &super::Data,
) -> Result<(Option<u8>, Option<crate::data::scale::Moments>)> {
    type Stats = (Option<u8>, Option<crate::data::scale::Moments>, Option<Vec<String>>, String);
    // Class folders name the classes on each host from the folders it holds: a shard without
    // one of them would number the others differently, so every host must hold the same ones.
    let mine: Stats =
        (data.max_label(), data.moments(), data.train.classes.clone(), data.train.input.describe());
    let mut label = None;
    let mut moments: Option<crate::data::scale::Moments> = None;
    for (rank, bytes) in g.all_gather_bytes(&serde_json::to_vec(&mine)?)?.iter().enumerate() {
        let (l, m, classes, input): Stats = serde_json::from_slice(bytes).map_err(|e| {
            anyhow::anyhow!("{} sent unreadable data statistics: {e}", g.topology.describe(rank))
        })?;
        check_same_shard_shape(g, rank, (&classes, &input), (&mine.2, &mine.3))?;
        label = label.max(l);
        moments = match (moments, m) {
            (Some(a), Some(b)) => Some(a.merge(&b)),
            (a, b) => a.or(b),
        };
    }
    Ok((label, moments))
}

/// A shard of another input shape, or with other class folders, than this host's is refused.
fn check_same_shard_shape(
    g: &Group,
    rank: usize,
    theirs: (&Option<Vec<String>>, &String),
    mine: (&Option<Vec<String>>, &String),
) -> Result<()> {
    let (who, me) = (g.topology.describe(rank), g.topology.describe(g.topology.rank));
    if theirs.1 != mine.1 {
        return Err(user(format!(
            "channel \"train\" holds {} on {who} but {} on {me}: every host's shard must have \
             one input shape (set image_size and image_channels for pictures)",
            theirs.1, mine.1
        )));
    }
    if theirs.0 != mine.0 {
        let list = |c: &Option<Vec<String>>| {
            crate::error::clip(&c.as_deref().unwrap_or_default().join(", "), 300)
        };
        return Err(user(format!(
            "channel \"train\" has class folders [{}] on {who} but [{}] on {me}: with \
             ShardedByS3Key every host needs pictures of every class; use FullyReplicated, or \
             shard so that each host gets some of each class",
            list(theirs.0),
            list(mine.0)
        )));
    }
    Ok(())
}

/// Rank 0's starting state (fresh, or resumed from its checkpoints) on every rank: initial
/// weights, optimizer state and position all come from the first host, as in PyTorch DDP. A
/// rank whose configuration or data differ refuses it, and every rank fails saying so.
pub(super) fn share_start(
    g: &Group,
    checkpointer: &Checkpointer,
    mine: Option<(TrainState, Vec<EpochMetrics>)>,
    cfg: &TrainConfig,
    train_set: &Dataset,
    epoch_samples: usize,
    dev: tch::Device,
) -> Result<(TrainState, Vec<EpochMetrics>)> {
    let bytes = match &mine {
        Some((state, metrics)) => checkpointer.encode(state, metrics)?,
        None => Vec::new(),
    };
    let bytes = g.broadcast_bytes(&bytes)?;
    let origin = g.topology.describe(0);
    let received = match mine {
        Some(start) => Ok(start),
        None => checkpoint::from_bytes(
            &bytes,
            &format!("the starting state sent by {origin}"),
            cfg,
            &train_set.fingerprint,
            epoch_samples,
            train_set.features(),
            dev,
        )
        .map(|r| (r.state, r.metrics)),
    };
    let refused = g.all_ok(received.is_ok())?;
    let start = received?;
    if !refused.is_empty() {
        let who: Vec<String> = refused.iter().map(|&r| g.topology.describe(r)).collect();
        return Err(user(format!(
            "{} refused the starting state sent by {origin}: other hyperparameters or other \
             training data there (that host's log names the difference)",
            who.join(", ")
        )));
    }
    info!(from = %origin, bytes = bytes.len(), "starting state shared");
    Ok(start)
}

/// Fails unless every rank ended with rank 0's exact weights: they must, and a silent
/// divergence would ship one host's model as everyone's.
pub(super) fn check_weights_agree(g: &Group, params: &tch::Tensor) -> Result<()> {
    let mut bytes = vec![0u8; params.numel() * 4];
    params.to_device(tch::Device::Cpu).copy_data_u8(&mut bytes, params.numel());
    let mine = blake3::hash(&bytes);
    let first = g.broadcast_bytes(mine.as_bytes())?;
    let disagree = g.all_ok(first == mine.as_bytes())?;
    if !disagree.is_empty() {
        let who: Vec<String> = disagree.iter().map(|&r| g.topology.describe(r)).collect();
        anyhow::bail!(
            "the weights of {} differ from {}'s after training (blake3 here {mine})",
            who.join(", "),
            g.topology.describe(0)
        );
    }
    info!(weights_blake3 = %mine, "weights identical on every host");
    Ok(())
}

/// After training on a multi-host job: checks every rank agrees, and on any host but the first
/// returns its summary (the first host goes on to write the model).
pub(super) fn finish(g: &Group, topology: &Topology, model: &Mlp) -> Result<Option<Summary>> {
    let (count, mean) = g.all_reduce_stats();
    info!(
        all_reduces = count,
        mean_ms = format!("{:.3}", mean.as_secs_f64() * 1e3),
        "exchanges with the other hosts"
    );
    check_weights_agree(g, &model.flat)?;
    if topology.rank == 0 {
        return Ok(None);
    }
    info!(leader = %topology.master(), "this host's share is done; the first host writes the model");
    Ok(Some(Summary::Worker {
        host: topology.host().to_string(),
        rank: topology.rank,
        leader: topology.master().to_string(),
    }))
}
