//! The SageMaker training contract: where things live under `/opt/ml`, and the JSON files the
//! platform writes into `input/config/` before the container starts.
//!
//! Every path derives from one base (`/opt/ml`, or `SAGEMAKER_BASE_DIR` / `--base-dir`), as in
//! the SageMaker training toolkit, so tests can point the whole contract at a temporary folder.
//! Parsing is lenient where SageMaker's files vary (unknown keys are ignored) and strict where a
//! wrong value would change what we do.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::user;
use crate::files;

/// The default base of the contract.
pub const DEFAULT_BASE_DIR: &str = "/opt/ml";

/// Every path of the contract, derived from one base folder.
#[derive(Debug, Clone)]
pub struct Paths {
    base: PathBuf,
}

impl Paths {
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self { base: base.into() }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }
    pub fn config_dir(&self) -> PathBuf {
        self.base.join("input/config")
    }
    pub fn hyperparameters(&self) -> PathBuf {
        self.config_dir().join("hyperparameters.json")
    }
    pub fn input_data_config(&self) -> PathBuf {
        self.config_dir().join("inputdataconfig.json")
    }
    pub fn resource_config(&self) -> PathBuf {
        self.config_dir().join("resourceconfig.json")
    }
    pub fn checkpoint_config(&self) -> PathBuf {
        self.config_dir().join("checkpointconfig.json")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.base.join("input/data")
    }
    pub fn channel_dir(&self, channel: &str) -> PathBuf {
        self.data_dir().join(channel)
    }
    pub fn model_dir(&self) -> PathBuf {
        self.base.join("model")
    }
    pub fn output_dir(&self) -> PathBuf {
        self.base.join("output")
    }
    pub fn output_data_dir(&self) -> PathBuf {
        self.output_dir().join("data")
    }
    pub fn failure_file(&self) -> PathBuf {
        self.output_dir().join("failure")
    }
    pub fn success_file(&self) -> PathBuf {
        self.output_dir().join("success")
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.base.join("checkpoints")
    }
}

/// How SageMaker delivers a channel (`TrainingInputMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum InputMode {
    File,
    FastFile,
    Pipe,
}

/// One entry of `inputdataconfig.json`. Only the mode matters to us; the rest is logged.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChannelSpec {
    #[serde(rename = "TrainingInputMode")]
    pub mode: Option<InputMode>,
    #[serde(rename = "S3DistributionType")]
    pub distribution: Option<String>,
    #[serde(rename = "ContentType")]
    pub content_type: Option<String>,
    /// `None` or `RecordIO`; RecordIO framing is not read by this trainer.
    #[serde(rename = "RecordWrapperType")]
    pub record_wrapper: Option<String>,
}

impl ChannelSpec {
    /// File mode is SageMaker's default when a channel names none.
    pub fn mode(&self) -> InputMode {
        self.mode.unwrap_or(InputMode::File)
    }
}

/// `inputdataconfig.json`: channel name → how it is delivered.
pub type InputDataConfig = BTreeMap<String, ChannelSpec>;

/// `resourceconfig.json`. Only `current_host` and `hosts` are required.
#[derive(Debug, Clone, Deserialize)]
pub struct ResourceConfig {
    pub current_host: String,
    pub hosts: Vec<String>,
    #[serde(default)]
    pub current_instance_type: Option<String>,
    #[serde(default)]
    pub network_interface_name: Option<String>,
}

impl ResourceConfig {
    /// A single-host job, as when no `resourceconfig.json` exists (local runs).
    pub fn single_host() -> Self {
        Self {
            current_host: "algo-1".into(),
            hosts: vec!["algo-1".into()],
            current_instance_type: None,
            network_interface_name: None,
        }
    }

    /// This host's rank in a multi-host job: its position in `hosts` (validated to be there).
    pub fn rank(&self) -> usize {
        self.hosts.iter().position(|h| *h == self.current_host).unwrap_or(0)
    }

    /// The host that writes the model: `hosts[0]`, as SageMaker's toolkit picks the master.
    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    fn validate(self, path: &Path) -> Result<Self> {
        if self.hosts.is_empty() {
            return Err(user(format!("{}: \"hosts\" is empty", path.display())));
        }
        if let Some((i, h)) =
            self.hosts.iter().enumerate().find(|(i, h)| self.hosts[..*i].contains(h))
        {
            return Err(user(format!(
                "{}: \"hosts\" names {h:?} twice (entry {i}); each host must appear once",
                path.display()
            )));
        }
        if !self.hosts.contains(&self.current_host) {
            return Err(user(format!(
                "{}: \"current_host\" {:?} is not in \"hosts\" {:?}",
                path.display(),
                self.current_host,
                self.hosts
            )));
        }
        Ok(self)
    }
}

/// `checkpointconfig.json`, present only when the job sets `CheckpointConfig`.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckpointConfig {
    #[serde(rename = "LocalPath")]
    pub local_path: Option<PathBuf>,
    #[serde(rename = "S3Uri")]
    pub s3_uri: Option<String>,
}

/// Everything SageMaker wrote into `input/config/`, parsed but not yet interpreted.
#[derive(Debug, Clone)]
pub struct JobFiles {
    /// Raw hyperparameters: every value as the string SageMaker wrote.
    pub hyperparameters: BTreeMap<String, String>,
    /// `None` when the file does not exist (local runs with no channels configured).
    pub input_data: Option<InputDataConfig>,
    pub resources: ResourceConfig,
    pub checkpoint: Option<CheckpointConfig>,
}

impl JobFiles {
    pub fn read(paths: &Paths) -> Result<Self> {
        let hyperparameters = read_hyperparameters(&paths.hyperparameters())?.unwrap_or_default();
        let input_data = read_json(&paths.input_data_config())?;
        let resources = match read_json::<ResourceConfig>(&paths.resource_config())? {
            Some(rc) => rc.validate(&paths.resource_config())?,
            None => ResourceConfig::single_host(),
        };
        let checkpoint: Option<CheckpointConfig> = read_json(&paths.checkpoint_config())?;
        if let Some(local) = checkpoint.as_ref().and_then(|c| c.local_path.as_deref()) {
            check_local_path(&paths.checkpoint_config(), local)?;
        }
        Ok(Self { hyperparameters, input_data, resources, checkpoint })
    }
}

/// `LocalPath` must be a path the system can make: an absolute one, within Linux's limits of
/// 4095 bytes in all and 255 per name. Anything else is the job's mistake, named as such.
fn check_local_path(file: &Path, local: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = local.as_os_str().len();
    let longest = local.components().map(|c| c.as_os_str().len()).max().unwrap_or(0);
    let why = if !local.is_absolute() {
        "is not an absolute path"
    } else if bytes > 4095 {
        "is longer than the 4095 bytes a path may have"
    } else if longest > 255 {
        "has a folder name longer than the 255 bytes a name may have"
    } else if local.as_os_str().as_bytes().contains(&0) {
        "holds a NUL byte"
    } else {
        return Ok(());
    };
    let shown = crate::error::clip(&local.display().to_string(), 120);
    Err(user(format!("{}: LocalPath {shown:?} {why}", file.display())))
}

/// Reads a JSON file; a missing file is `None`, a malformed one (or one that is not a regular
/// file, or too large) a user error naming it.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let Some(bytes) = files::read_optional(path, files::MAX_CONFIG)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| user(format!("{}: is not UTF-8 text ({e})", path.display())))?;
    parse_json(text).map(Some).map_err(|e| user(format!("{}: {e}", path.display())))
}

/// Parses JSON, refusing objects that name a key twice: serde_json would silently keep the
/// last, so `{"epochs": "5", "epochs": "500"}` would train with a value nobody may have meant.
fn parse_json<T: DeserializeOwned>(text: &str) -> std::result::Result<T, serde_json::Error> {
    // Windows editors start UTF-8 files with a byte order mark; it means nothing here.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str::<NoDuplicateKeys>(text)?;
    serde_json::from_str(text)
}

/// Any JSON value in which no object names a key twice.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("key {key:?} appears twice")));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
}

/// Reads `hyperparameters.json` into a map of strings.
///
/// SageMaker always writes strings; people writing the file by hand often write numbers and
/// booleans. Those are kept as their JSON text, which the typed parsers then read like any
/// JSON-encoded string.
pub fn read_hyperparameters(path: &Path) -> Result<Option<BTreeMap<String, String>>> {
    let Some(raw) = read_json::<BTreeMap<String, serde_json::Value>>(path)? else {
        return Ok(None);
    };
    let map = raw
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, s)
        })
        .collect();
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_derive_from_one_base() {
        let p = Paths::new("/tmp/x");
        assert_eq!(p.hyperparameters(), Path::new("/tmp/x/input/config/hyperparameters.json"));
        assert_eq!(p.channel_dir("train"), Path::new("/tmp/x/input/data/train"));
        assert_eq!(p.failure_file(), Path::new("/tmp/x/output/failure"));
        assert_eq!(p.model_dir(), Path::new("/tmp/x/model"));
    }

    #[test]
    fn input_data_config_reads_sagemaker_example() {
        let cfg: InputDataConfig = parse_json(
            r#"{"train": {"ContentType": "x", "TrainingInputMode": "File",
                "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"},
                "test": {"TrainingInputMode": "FastFile"}, "v": {}}"#,
        )
        .unwrap();
        assert_eq!(cfg["train"].mode(), InputMode::File);
        assert_eq!(cfg["test"].mode(), InputMode::FastFile);
        assert_eq!(cfg["v"].mode(), InputMode::File);
        assert!(parse_json::<InputDataConfig>(r#"{"t": {"TrainingInputMode": "Bogus"}}"#).is_err());
    }

    #[test]
    fn resource_config_needs_current_host_in_hosts() {
        let rc: ResourceConfig = parse_json(
            r#"{"current_host":"algo-2","current_instance_type":"ml.m5.xlarge",
                "current_group_name":"homogeneousCluster","hosts":["algo-1","algo-2"],
                "network_interface_name":"eth0"}"#,
        )
        .unwrap();
        assert!(!rc.is_leader());
        let rc = rc.validate(Path::new("rc.json")).unwrap();
        assert_eq!(rc.hosts.len(), 2);
        let bad: ResourceConfig =
            parse_json(r#"{"current_host":"algo-3","hosts":["algo-1"]}"#).unwrap();
        let err = bad.validate(Path::new("rc.json")).unwrap_err().to_string();
        assert!(err.contains("\"algo-3\" is not in \"hosts\""), "{err}");
    }

    #[test]
    fn hyperparameters_keep_non_strings_as_json_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hp.json");
        std::fs::write(&path, r#"{"epochs": 3, "optimizer": "\"adam\"", "flag": true}"#).unwrap();
        let hp = read_hyperparameters(&path).unwrap().unwrap();
        assert_eq!(hp["epochs"], "3");
        assert_eq!(hp["optimizer"], "\"adam\"");
        assert_eq!(hp["flag"], "true");
        assert!(read_hyperparameters(&dir.path().join("missing.json")).unwrap().is_none());
        std::fs::write(&path, "{not json").unwrap();
        let err = read_hyperparameters(&path).unwrap_err();
        assert!(crate::error::is_user_error(&err));
        assert!(err.to_string().contains("hp.json"), "{err}");
    }

    #[test]
    fn a_key_named_twice_is_refused_at_any_depth() {
        let e = parse_json::<serde_json::Value>(r#"{"epochs": "5", "epochs": "500"}"#);
        assert!(e.unwrap_err().to_string().contains("key \"epochs\" appears twice"));
        let nested = r#"{"train": {"TrainingInputMode": "File", "TrainingInputMode": "Pipe"}}"#;
        let e = parse_json::<InputDataConfig>(nested).unwrap_err().to_string();
        assert!(e.contains("\"TrainingInputMode\" appears twice"), "{e}");
        let ok = r#"{"a": [{"x": 1}, {"x": 2}], "b": {"x": null}}"#;
        assert!(parse_json::<serde_json::Value>(ok).is_ok());
    }
}
