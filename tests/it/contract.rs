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
    for k in smtrain::config::KEYS {
        assert!(text.contains(k.name), "--help lacks hyperparameter {}", k.name);
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

/// `--channel` and `--output` belong to training: given before `train`, or with no subcommand at
/// all, they work as after it; `predict` neither lists nor takes them.
#[test]
fn training_options_go_before_or_after_train_and_never_to_predict() {
    let (train, test) = (crate::util::fixture("train"), crate::util::fixture("test"));
    for subcommand in [&[][..], &["train"][..]] {
        let job = Job::new();
        job.hyperparameters(&[("epochs", "1")]);
        let out = std::process::Command::new(BIN)
            .args(["--base-dir", job.base().to_str().unwrap()])
            .arg(format!("--channel=train={}", train.display()))
            .arg(format!("--channel=test={}", test.display()))
            .args(subcommand)
            .env("OMP_NUM_THREADS", "1")
            .env_remove("SAGEMAKER_BASE_DIR")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{subcommand:?}: {stderr}");
        assert!(!stderr.contains("installed Fashion-MNIST"), "{subcommand:?}: channels ignored");
        assert!(String::from_utf8_lossy(&out.stdout).contains("metrics: test_loss="));
    }

    let help = std::process::Command::new(BIN).args(["predict", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("--model") && !help.contains("--channel") && !help.contains("--output"));
    let out = std::process::Command::new(BIN)
        .args(["--output", "s3://bucket/prefix", "predict", "image.png"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--channel and --output are training options"), "{stderr}");
}

/// docs/contract.md's hyperparameter table is the one `--help` and the parser use (rendered from
/// `config::KEYS`); `SMTRAIN_BLESS=1` rewrites it after a change to the keys.
#[test]
fn the_documented_hyperparameters_are_the_accepted_ones() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/contract.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (start, end) = ("<!-- generated from KEYS", "<!-- end of generated table -->");
    let a = doc.find(start).expect("start marker");
    let a = a + doc[a..].find('\n').unwrap() + 1;
    let b = doc.find(end).expect("end marker");
    let want = smtrain::config::markdown_table();
    if std::env::var("SMTRAIN_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, format!("{}{want}{}", &doc[..a], &doc[b..])).unwrap();
        return;
    }
    assert_eq!(&doc[a..b], want, "docs/contract.md's table is stale: rerun with SMTRAIN_BLESS=1");
}

/// A UTF-8 byte order mark (what Windows editors write) before `hyperparameters.json` is
/// accepted and means nothing.
#[test]
fn a_byte_order_mark_before_the_hyperparameters_is_accepted() {
    let job = Job::small(&[]);
    job.write("input/config/hyperparameters.json", "\u{feff}{\"epochs\": \"1\"}");
    let run = job.run().ok();
    assert_eq!(run.stdout().matches("metrics: epoch=").count(), 1, "{}", run.stdout());
}
