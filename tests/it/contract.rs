//! How the binary is invoked: `train`, no argument, `--help`, the base-dir override.

use crate::util::{fails_with, Job, BIN};

/// `train --help` and `train train --help` (what SageMaker's `IMAGE train --help` runs) both
/// explain the contract, with the same text.
#[test]
fn help_explains_the_contract_and_every_hyperparameter() {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let (top, sub) = (help(&["--help"]), help(&["train", "--help"]));
    for (args, text) in [("--help", &top), ("train --help", &sub)] {
        for needle in [
            "hyperparameters.json",
            "inputdataconfig.json",
            "output/failure",
            "SAGEMAKER_BASE_DIR",
            "metrics:",
            "every host trains",
        ] {
            assert!(text.contains(needle), "{args} lacks {needle}");
        }
        for k in smtrain::config::KEYS {
            assert!(text.contains(k.name), "{args} lacks hyperparameter {}", k.name);
        }
        assert!(!text.contains("only hosts[0] trains"), "{args}");
    }
    let contract = |t: &str| t[t.find("CONTRACT").expect("a CONTRACT section")..].to_string();
    assert_eq!(contract(&top), contract(&sub));

    // The paths it explains are the ones docs/contract.md's table does.
    let section = contract(&top);
    let section = &section[..section.find("\n\n").unwrap()];
    let in_help: std::collections::BTreeSet<&str> = section
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/contract.md"),
    )
    .unwrap();
    let paths = &doc[doc.find("## Paths").unwrap()..doc.find("## Input data").unwrap()];
    let in_doc: std::collections::BTreeSet<&str> = paths
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .map(|l| &l[..l.find('`').unwrap()])
        .collect();
    assert_eq!(in_help, in_doc, "--help's CONTRACT and docs/contract.md's Paths differ");
}

/// With no channels configured, the folders train, validation and test in input/data are the
/// channels, as `docker run -v DIR:/opt/ml` with data laid out there means; anything else there
/// is refused, without naming a configuration file that does not exist.
#[test]
fn with_no_channels_configured_the_folders_in_input_data_are_the_channels() {
    let job = Job::new();
    job.hyperparameters(&[("epochs", "1")])
        .data("train", "train")
        .data("validation", "test")
        .data("test", "test");
    let run = job.run().ok();
    assert!(run.stderr().contains("training on the channel folders in input/data"));
    assert!(!run.stderr().contains("installed Fashion-MNIST"), "{}", run.stderr());
    assert!(run.stdout().contains("validation_loss="), "{}", run.stdout());
    let card = job.json("model/model.json");
    assert_eq!(card["data"]["train"]["samples"], 1000);
    assert_eq!(card["data"]["test"]["samples"], 200);

    // A file that declares no channels is no different.
    let job = Job::small(&[("epochs", "1")]);
    job.write("input/config/inputdataconfig.json", "{}");
    assert!(job.run().ok().stderr().contains("training on the channel folders in input/data"));

    let job = Job::new();
    job.hyperparameters(&[]).data("train", "train").data("training", "test");
    job.write("input/data/notes.txt", "x");
    let failure = fails_with(
        &job,
        &[
            "input/data: holds \"notes.txt\", \"training\", which this trainer does not read",
            "the folders train (required), validation and test",
        ],
    );
    assert!(!failure.contains("inputdataconfig"), "{failure}");
    let job = Job::new();
    job.hyperparameters(&[]).data("validation", "test");
    job.write("input/data/test", "a file");
    fails_with(&job, &["holds test (not a folder), which this trainer does not read"]);
    let job = Job::new();
    job.hyperparameters(&[]).data("validation", "test");
    fails_with(&job, &["input/data: holds validation but no train folder"]);
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

/// `make train`, the first command a newcomer runs twice, trains afresh each time: a second run,
/// even with other hyperparameters, trains every epoch rather than resuming (or refusing) the
/// first run's checkpoints.
#[test]
fn make_train_trains_afresh_each_time() {
    let job = Job::new();
    let make_train = |epochs: &str| {
        job.hyperparameters(&[("epochs", epochs)]);
        // `-o build`: the binary under test, not a build from inside the test.
        let out = std::process::Command::new("make")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["--no-print-directory", "-o", "build", "train"])
            .arg(format!("RUN_DIR={}", job.base().display()))
            .arg(format!("BIN={BIN}"))
            .env("OMP_NUM_THREADS", "1")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .env_remove("SAGEMAKER_BASE_DIR")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(job.path("checkpoints").read_dir().unwrap().next().is_some());
        stdout
    };
    assert!(make_train("1").contains("metrics: epoch=1 "));
    let again = make_train("2");
    assert!(again.contains("metrics: epoch=1 ") && again.contains("metrics: epoch=2 "), "{again}");
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
