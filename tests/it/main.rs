//! Integration tests: the real `train` binary against a temporary `/opt/ml` tree, real IDX
//! files and real libtorch. One crate, so libtorch is linked once.

mod checkpoints;
mod contract;
mod distributed;
mod docker;
mod docs;
mod failures;
mod infra;
mod outputs;
mod pictures;
mod predict;
mod reliability;
mod s3;
mod serve;
mod stops;
mod tables;
mod training;
mod trials;
mod util;
