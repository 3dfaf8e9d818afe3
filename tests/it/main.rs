//! Integration tests: the real `train` binary against a temporary `/opt/ml` tree, real IDX
//! files and real libtorch. One crate, so libtorch is linked once.

mod contract;
mod docker;
mod failures;
mod training;
mod util;
