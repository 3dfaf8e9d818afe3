//! Bad input: each case fails with exit code 1, a one-line reason in `output/failure` that
//! names what was wrong, the same on stderr, and no model files.

use crate::util::{fails_with, Job};

#[test]
fn unknown_hyperparameter_names_the_likely_key() {
    let job = Job::small(&[("learning-rate", "0.01")]);
    fails_with(
        &job,
        &[
            "hyperparameters.json",
            "unknown hyperparameter \"learning-rate\"",
            "did you mean \"learning_rate\"?",
        ],
    );
}

#[test]
fn malformed_and_out_of_range_values_name_key_value_and_range() {
    let job = Job::small(&[("batch_size", "big")]);
    fails_with(&job, &["\"batch_size\"", "\"big\"", "1 to 65536"]);
    let job = Job::small(&[("dropout", "1.5")]);
    fails_with(&job, &["\"dropout\"", "\"1.5\"", "[0, 1)"]);
}

#[test]
fn malformed_config_json_names_the_file() {
    let job = Job::small(&[]);
    job.write("input/config/hyperparameters.json", "{\"epochs\": ");
    fails_with(&job, &["hyperparameters.json", "EOF"]);
    let job = Job::small(&[]);
    job.write(
        "input/config/resourceconfig.json",
        r#"{"current_host":"algo-9","hosts":["algo-1"]}"#,
    );
    fails_with(&job, &["resourceconfig.json", "\"algo-9\" is not in \"hosts\""]);
}

#[test]
fn pipe_mode_is_refused_clearly() {
    let job = Job::small(&[]);
    job.write("input/config/inputdataconfig.json", r#"{"train": {"TrainingInputMode": "Pipe"}}"#);
    fails_with(&job, &["channel \"train\" uses Pipe mode"]);
}

#[test]
fn channels_without_train_name_what_was_found() {
    let job = Job::new();
    job.channels(&["test", "validation"]).data("test", "test");
    fails_with(&job, &["channels [\"test\", \"validation\"] are configured but \"train\" is not"]);
}

#[test]
fn unknown_channel_is_refused() {
    let job = Job::small(&[]);
    job.channels(&["train", "eval"]);
    fails_with(&job, &["channel \"eval\" is not one this trainer reads"]);
}

#[test]
fn missing_channel_folder() {
    let job = Job::new();
    job.channels(&["train"]);
    fails_with(&job, &["channel \"train\": folder", "does not exist"]);
}

#[test]
fn truncated_idx_file_is_named() {
    let job = Job::small(&[]);
    let p = job.path("input/data/train/images-idx3-ubyte.gz");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    fails_with(&job, &["images-idx3-ubyte.gz"]);
}

#[test]
fn header_claiming_4_billion_labels_fails_on_real_length() {
    let job = Job::small(&[]);
    let mut bytes = vec![0u8, 0, 8, 1, 0xff, 0xff, 0xff, 0xff];
    bytes.extend_from_slice(&[1u8; 1000]);
    job.write("input/data/train/labels-idx1-ubyte.gz", bytes);
    fails_with(
        &job,
        &["labels-idx1-ubyte.gz", "truncated: header says 4294967295 labels", "file has 1000"],
    );
}

#[test]
fn stray_file_in_a_channel_is_listed() {
    let job = Job::small(&[]);
    job.write("input/data/train/sub/readme.txt", "not data");
    fails_with(&job, &["channel \"train\"", "other files: sub/readme.txt (is not an IDX file"]);
}

#[test]
fn label_beyond_num_classes() {
    let job = Job::small(&[("num_classes", "5")]);
    fails_with(&job, &["labels-idx1-ubyte.gz", "is not below num_classes 5"]);
}

#[test]
fn test_images_of_another_size() {
    let job = Job::small(&[]);
    let mut bytes = vec![0u8, 0, 8, 3, 0, 0, 0, 200, 0, 0, 0, 14, 0, 0, 0, 14];
    bytes.extend_from_slice(&vec![0u8; 200 * 14 * 14]);
    job.write("input/data/test/images-idx3-ubyte.gz", bytes);
    fails_with(
        &job,
        &["channel \"test\" has 14x14 grey images but \"train\" has 28x28 grey images"],
    );
}

#[test]
fn cuda_without_a_gpu() {
    if std::path::Path::new("/proc/driver/nvidia/version").exists() {
        return; // a GPU host: device=cuda is valid here.
    }
    let job = Job::small(&[("device", "cuda")]);
    fails_with(&job, &["\"device\" is cuda", "no NVIDIA driver"]);
}

/// A learning rate that makes the loss NaN fails the job with a reason, never a NaN model with
/// `output/success`; values that become 0 or 1 in float32 are refused before training.
#[test]
fn a_diverging_run_or_a_value_lost_in_float32_is_a_client_error() {
    // AdamW multiplies the weights by 1 - learning_rate * weight_decay = -9 each step.
    let hp = [("optimizer", "adamw"), ("learning_rate", "10"), ("weight_decay", "1")];
    let job = Job::small(&hp);
    fails_with(&job, &["training diverged", "at epoch 1 step ", "learning_rate"]);
    for (key, value) in
        [("beta1", "0.99999999"), ("epsilon", "1e-46"), ("learning_rate", "4.9e-324")]
    {
        let job = Job::small(&[(key, value)]);
        fails_with(&job, &[key, "in float32"]);
    }
}

/// Control characters in a key (NUL, ESC, VT, FF, NEL, U+2028) reach the failure file escaped:
/// the reason stays one clean line.
#[test]
fn control_characters_in_a_key_are_escaped_in_the_reason() {
    let job = Job::small(&[("lr\u{0}\u{1b}[31m\u{b}\u{c}\u{85}\u{2028}x", "1")]);
    let failure = fails_with(&job, &["unknown hyperparameter", "\\u{1b}[31m", "\\u{2028}"]);
    let raw: Vec<char> =
        failure.trim_end().chars().filter(|c| c.is_control() || *c == '\u{2028}').collect();
    assert!(raw.is_empty(), "{failure:?}");
}

/// A regular file where SageMaker puts a channel's folder is named for what it is.
#[test]
fn a_file_in_place_of_a_channel_folder_is_named_as_such() {
    let job = Job::small(&[]);
    std::fs::remove_dir_all(job.path("input/data/test")).unwrap();
    job.write("input/data/test", b"not a folder");
    fails_with(&job, &["channel \"test\"", "is not a folder"]);
}

/// A `LocalPath` the system cannot make (a name over 255 bytes, a path over 4095) is the job's
/// mistake, named as such, not an InternalError from deep in the checkpoint code.
#[test]
fn an_impossible_checkpoint_local_path_is_a_client_error() {
    for (local, why) in [
        (format!("/tmp/{}", "x".repeat(300)), "255 bytes"),
        (format!("/tmp/{}", "a/".repeat(2100)), "4095 bytes"),
        ("relative/ckpt".to_string(), "not an absolute path"),
    ] {
        let job = Job::small(&[("epochs", "1")]);
        let config = serde_json::json!({ "LocalPath": local, "S3Uri": "s3://b/p" });
        job.write("input/config/checkpointconfig.json", serde_json::to_vec(&config).unwrap());
        fails_with(&job, &["checkpointconfig.json", "LocalPath", why]);
    }
}

/// Makes `cmd`'s process subject to file permissions even as root: without the capabilities
/// that bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), root reads only what its owner or
/// mode allow, as an ordinary user does. (Run as another user, the job could not reach this
/// checkout's libtorch.) Not root, the drop fails and changes nothing that matters.
fn without_permission_override(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is a plain system call, allowed between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            for cap in [1, 2] {
                // CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, out of the bounding set, so that
                // exec does not grant them.
                libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            Ok(())
        });
    }
}

/// A channel folder, or a folder in it, that the job may not read (`chmod 000`) is the user's to
/// fix: exit 1 and a `ClientError` naming the channel, the folder and the job's user.
#[test]
fn an_unreadable_channel_folder_is_a_client_error() {
    use std::os::unix::fs::PermissionsExt;
    for locked in ["input/data/train", "input/data/train/inner"] {
        let job = Job::small(&[("epochs", "1")]);
        let inner = job.path("input/data/train/inner");
        std::fs::create_dir_all(&inner).unwrap();
        for name in ["images-idx3-ubyte.gz", "labels-idx1-ubyte.gz"] {
            std::fs::rename(job.path("input/data/train").join(name), inner.join(name)).unwrap();
        }
        let dir = job.path(locked);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o000)).unwrap();
        let mut cmd = job.command();
        without_permission_override(&mut cmd);
        let run = crate::util::Run(cmd.output().unwrap());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let failure = job.failure().unwrap_or_else(|| panic!("{locked}: {}", run.stderr()));
        assert_eq!(run.code(), Some(1), "{locked}: {failure}");
        assert!(failure.starts_with("ClientError: channel \"train\": "), "{failure}");
        assert!(failure.contains(&dir.display().to_string()), "{failure}");
        assert!(failure.contains("Permission denied") && failure.contains("(uid "), "{failure}");
        assert!(job.model_files().is_empty() && !job.succeeded(), "{locked}");
    }
}
