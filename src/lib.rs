//! A SageMaker bring-your-own training container, in Rust with libtorch: Fashion-MNIST by
//! default, or the user's own tables and pictures.
//!
//! The modules follow the data, in the order a job runs:
//!
//! | module        | what it does                                                         |
//! |---------------|----------------------------------------------------------------------|
//! | [`early`]     | SIGTERM, SIGINT and SIGHUP noted from before libtorch initialises     |
//! | [`contract`]  | `/opt/ml` paths from one base; the JSON files SageMaker writes        |
//! | [`files`]     | reading input files: regular files only, never more than they can hold |
//! | [`config`]    | hyperparameter strings → validated [`config::TrainConfig`], from one table of keys |
//! | [`data`]      | a channel and its ContentType (IDX, CSV, Parquet, NumPy, pictures) → [`data::Dataset`] |
//! | [`inflate`]   | gzip in one go with libdeflate: `data`'s fast path                   |
//! | [`budget`]    | the memory a configuration needs, checked against what the host has   |
//! | [`device`]    | CPU or GPU, thread count, loading libtorch's CUDA backend             |
//! | [`distributed`]| multi-host jobs: rank from `resourceconfig.json`, c10d rendezvous, all-reduce |
//! | [`heartbeat`] | multi-host jobs: a host that vanishes fails the others within seconds  |
//! | [`model`]     | the dense network: flat parameters, forward and backward by hand     |
//! | [`augment`]   | training images shifted and mirrored per (seed, epoch, step)          |
//! | [`optim`]     | Adam, AdamW, SGD, RMSprop over the flat buffers                       |
//! | [`native`]    | the C++ shim: what tch does not bind (fused Adam, libtorch's thread pool); c10d in `native/dist.cpp` |
//! | [`state`]     | what training carries: device-resident data, the checkpointed state  |
//! | [`step`]      | one optimizer step: libtorch ops on any device, or the CPU fast path |
//! | [`host`]      | borrow-checked slices over CPU tensors, for the fast path            |
//! | [`kernels`]   | the fast path's Rust loops (small layers, softmax-CE, ReLU, Adam) |
//! | [`train`]     | the epoch loop and evaluation: pure functions of tensors and config  |
//! | [`checkpoint`]| resumable training state on disk, checked before it is trusted       |
//! | [`metrics`]   | metric lines for SageMaker's regexes; `metrics.json`                  |
//! | [`artifacts`] | the model folder, written atomically; loading it back                |
//! | [`evaluation`]| predictions as `evaluate` makes them; confusion matrix, precision, recall, F1 |
//! | [`plots`]     | the pictures of `output/data`, drawn with an embedded font            |
//! | [`quality`]   | `model_quality.json`: Model Monitor's multiclass metrics, with bootstrap spreads |
//! | [`report`]    | `output/data`: `evaluation.json` and the plots, after training        |
//! | [`s3`]        | channels from `s3://` prefixes, artifacts back to S3 (runs outside SageMaker) |
//! | [`job`]       | one job end to end, as named stages: files, clock and logs meet the core |
//! | [`cli`]       | command line, logging set-up, failure file and exit codes             |
//! | [`crash`]     | a failure file even after a panic or an abort                         |
//! | [`algorithm`] | the image as a SageMaker Algorithm: hyperparameter specifications from the key table |
//! | [`serve`]     | `train serve`: SageMaker's hosting contract over the same forward pass |
//! | [`predict`]   | `train predict`: a saved model classifies PNG, JPEG or IDX images    |
//!
//! Errors caused by the job's input are [`error::UserError`]s; everything else is ours.

// Every `unsafe` block says why it is sound, where a reviewer reads it.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod algorithm;
pub mod artifacts;
pub mod augment;
pub mod budget;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod contract;
pub mod crash;
pub mod data;
pub mod device;
pub mod distributed;
pub mod early;
pub mod error;
pub mod evaluation;
pub mod files;
pub mod heartbeat;
pub mod host;
pub mod inflate;
pub mod job;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod native;
pub mod optim;
pub mod plots;
pub mod predict;
pub mod quality;
pub mod report;
pub mod s3;
pub mod serve;
pub mod state;
pub mod step;
pub mod train;
