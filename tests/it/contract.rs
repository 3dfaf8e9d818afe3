//! How the binary is invoked: `train`, no argument, `--help`, the base-dir override.

use crate::util::{Job, BIN};

#[test]
fn help_explains_the_contract_and_every_hyperparameter() {
    let out = std::process::Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "hyperparameters.json",
        "inputdataconfig.json",
        "output/failure",
        "SAGEMAKER_BASE_DIR",
        "metrics:",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
    for (key, _) in smtrain::config::KEYS {
        assert!(text.contains(key), "--help lacks hyperparameter {key}");
    }
}

#[test]
fn no_argument_trains_and_sagemaker_base_dir_is_honoured() {
    let job = Job::small(&[("epochs", "1")]);
    let out = std::process::Command::new(BIN)
        .env("SAGEMAKER_BASE_DIR", job.base())
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(job.model_files().len(), 3);
}

#[test]
fn a_rerun_clears_the_previous_verdict() {
    let job = Job::small(&[("epochs", "0")]);
    assert_eq!(job.run().code(), Some(1));
    assert!(job.failure().is_some());
    job.hyperparameters(&[("epochs", "1")]);
    job.run().ok();
    assert!(job.failure().is_none());
    assert!(job.succeeded());
}
