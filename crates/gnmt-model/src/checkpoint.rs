//! The model folder: the one format train, infer and the CLI read and write.
//!
//! ```text
//! DIR/config.json         ModelConfig + "format_version"
//! DIR/model.safetensors   parameters; __metadata__: format_version, config_sha256,
//!                         tokenizer_sha256, step
//! DIR/tokenizer.json      the shared vocabulary (standard `tokenizers` format)
//! DIR/generation.json     decoding defaults (beam size, alpha, beta, length limits)
//! ```
//!
//! Every file is written to a temporary name, fsynced and renamed. Loading treats the folder
//! as untrusted: sizes are capped, the safetensors header is read and every tensor's name,
//! dtype, shape and byte range is checked against what `config.json` implies *before* any
//! tensor data is read, and the hashes tie the files together. Each refusal names the file
//! and the problem; nothing panics. Files are read into memory (no mmap: a file truncated
//! while mapped is undefined behaviour).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use candle::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::quantized::{self, RawTensor, ROW_SCALES};
use crate::ModelConfig;
use crate::{parameter_specs, ParamSpec};

pub const FORMAT_VERSION: u64 = 1;
pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const GENERATION_FILE: &str = "generation.json";

const MAX_JSON_BYTES: u64 = 1 << 20;
const MAX_TOKENIZER_BYTES: u64 = 256 << 20;
const MAX_HEADER_BYTES: u64 = 16 << 20;

/// A refusal: which file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct CheckpointError {
    pub path: PathBuf,
    pub problem: String,
}

pub type Result<T> = std::result::Result<T, CheckpointError>;

fn fail<T>(path: &Path, problem: impl Into<String>) -> Result<T> {
    Err(CheckpointError {
        path: path.to_path_buf(),
        problem: problem.into(),
    })
}

/// Decoding defaults stored with a model (flags of `translate` override them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    pub beam_size: usize,
    /// Length normalisation exponent: scores are divided by `((5 + |Y|) / 6)^alpha`.
    pub alpha: f64,
    /// Coverage penalty weight.
    pub beta: f64,
    /// Output length limit: `max_len_a * source_length + max_len_b` tokens.
    pub max_len_a: f64,
    pub max_len_b: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        // GNMT v2's published settings; tuned on validation data when a model ships.
        Self {
            beam_size: 5,
            alpha: 0.6,
            beta: 0.1,
            max_len_a: 2.0,
            max_len_b: 10,
        }
    }
}

impl GenerationConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(1..=256).contains(&self.beam_size) {
            return Err(format!("beam_size = {} is outside 1..=256", self.beam_size));
        }
        for (name, v) in [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("max_len_a", self.max_len_a),
        ] {
            if !v.is_finite() || !(0.0..=100.0).contains(&v) {
                return Err(format!("{name} = {v} is outside 0..=100"));
            }
        }
        Ok(())
    }
}

/// Everything a model folder holds, loaded and checked.
#[derive(Debug)]
pub struct ModelFolder {
    pub config: ModelConfig,
    pub generation: GenerationConfig,
    /// The raw `tokenizer.json` (the model crate does not interpret text).
    pub tokenizer_json: Vec<u8>,
    pub tensors: HashMap<String, Tensor>,
    /// Training updates behind these parameters.
    pub step: u64,
    /// How `model.safetensors` stored them (they are loaded in the dtype asked for whatever
    /// it was): what decoding multiplies in when the user does not say.
    pub storage: Storage,
}

/// How `model.safetensors` stores the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Every parameter in this float dtype: F32, or F16/BF16 to halve the size.
    Float(DType),
    /// Matrices as int8 rows with a scale each (see [`crate::quantized`]), vectors as F32.
    Int8,
}

impl From<DType> for Storage {
    fn from(dtype: DType) -> Self {
        Storage::Float(dtype)
    }
}

/// Writes a model folder. `tensors` must be exactly the parameters `config` implies; they are
/// stored as `storage` (loading converts back to f32).
pub fn save(
    dir: &Path,
    config: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
    tokenizer_json: &[u8],
    generation: &GenerationConfig,
    step: u64,
    storage: impl Into<Storage>,
) -> Result<()> {
    let storage = storage.into();
    let model_path = dir.join(MODEL_FILE);
    if let Storage::Float(dtype) = storage {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return fail(&model_path, format!("cannot store parameters as {dtype:?}"));
        }
    }
    let specs = parameter_specs(config).or_else(|e| fail(&dir.join(CONFIG_FILE), e.to_string()))?;
    check_tensor_set(&model_path, &specs, tensors)?;
    std::fs::create_dir_all(dir).or_else(|e| fail(dir, format!("cannot create folder: {e}")))?;

    let config_json = config_to_json(config);
    let metadata = HashMap::from([
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        (
            "config_sha256".to_string(),
            sha256_hex(canonical_config(config).as_bytes()),
        ),
        ("tokenizer_sha256".to_string(), sha256_hex(tokenizer_json)),
        ("step".to_string(), step.to_string()),
    ]);
    let mut stored = Vec::with_capacity(specs.len());
    for spec in &specs {
        let t = &tensors[&spec.name];
        let raw = match storage {
            Storage::Int8 if spec.shape.len() == 2 => RawTensor::int8_rows(t).map(|(q, scales)| {
                stored.push((format!("{}{ROW_SCALES}", spec.name), scales));
                q
            }),
            Storage::Int8 => RawTensor::float(t, DType::F32),
            Storage::Float(dtype) => RawTensor::float(t, dtype),
        };
        let raw = raw.or_else(|e| fail(&model_path, e.to_string()))?;
        stored.push((spec.name.clone(), raw));
    }
    let bytes = serialize_safetensors(&stored, metadata).or_else(|e| fail(&model_path, e))?;
    let generation_json = serde_json::to_string_pretty(generation).expect("plain struct");

    write_atomic(&dir.join(TOKENIZER_FILE), tokenizer_json)?;
    write_atomic(&dir.join(CONFIG_FILE), config_json.as_bytes())?;
    write_atomic(&dir.join(GENERATION_FILE), generation_json.as_bytes())?;
    // Last: its metadata vouches for the files above.
    write_atomic(&model_path, &bytes)
}

/// safetensors bytes with a deterministic header: the `safetensors` crate writes
/// `__metadata__` in `HashMap` order, so the same checkpoint would differ byte for byte from
/// run to run. The header is re-serialised with sorted keys (data offsets are relative to the
/// end of the header, so the data block is unchanged).
pub fn serialize_safetensors(
    tensors: &[(String, RawTensor)],
    metadata: HashMap<String, String>,
) -> std::result::Result<Vec<u8>, String> {
    let bytes =
        safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(metadata))
            .map_err(|e| e.to_string())?;
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| e.to_string())?;
    let mut sorted = serde_json::to_string(&sort_keys(header))
        .map_err(|e| e.to_string())?
        .into_bytes();
    sorted.resize(sorted.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + sorted.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    out.extend_from_slice(&sorted);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// Rebuilds objects with keys inserted in sorted order (whether or not serde_json keeps
/// insertion order, the output is then sorted).
fn sort_keys(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        other => other,
    }
}

/// Loads and checks a model folder; tensors are converted to `dtype` on `device`.
pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<ModelFolder> {
    if !dir.is_dir() {
        return fail(dir, "not a model folder (no such directory)");
    }
    load_from(&Files::Dir(dir), dtype, device)
}

/// A model folder's architecture and decoding defaults, read and checked without its weights
/// (what fine-tuning compares before it loads them).
pub fn read_settings(dir: &Path) -> Result<(ModelConfig, GenerationConfig)> {
    if !dir.is_dir() {
        return fail(dir, "not a model folder (no such directory)");
    }
    let files = Files::Dir(dir);
    Ok((read_config(&files)?, read_generation(&files)?))
}

/// A model folder's files held in memory, such as a model compiled into a program with
/// `include_bytes!`. It is checked exactly as a folder on disk is; errors name
/// `label/FILE`.
#[derive(Debug, Clone, Copy)]
pub struct InMemoryFolder<'a> {
    pub label: &'a str,
    pub config: &'a [u8],
    /// `None` when the folder has no generation.json (the defaults apply).
    pub generation: Option<&'a [u8]>,
    pub tokenizer: &'a [u8],
    pub model: &'a [u8],
}

/// Loads and checks a model folder held in memory (see [`InMemoryFolder`]).
pub fn load_in_memory(
    folder: &InMemoryFolder<'_>,
    dtype: DType,
    device: &Device,
) -> Result<ModelFolder> {
    load_from(&Files::Memory(folder), dtype, device)
}

/// Where a model folder's files are read from.
enum Files<'a> {
    Dir(&'a Path),
    Memory(&'a InMemoryFolder<'a>),
}

impl Files<'_> {
    /// The path errors name for file `name`.
    fn path(&self, name: &str) -> PathBuf {
        match self {
            Files::Dir(dir) => dir.join(name),
            Files::Memory(m) => Path::new(m.label).join(name),
        }
    }

    fn bytes<'b>(m: &'b InMemoryFolder<'b>, name: &str) -> Option<&'b [u8]> {
        match name {
            CONFIG_FILE => Some(m.config),
            GENERATION_FILE => m.generation,
            TOKENIZER_FILE => Some(m.tokenizer),
            MODEL_FILE => Some(m.model),
            _ => None,
        }
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Files::Dir(dir) => dir.join(name).exists(),
            Files::Memory(m) => Self::bytes(m, name).is_some(),
        }
    }

    /// A reader over file `name` and its length in bytes.
    fn open(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64)> {
        let path = self.path(name);
        match self {
            Files::Dir(_) => {
                let f = std::fs::File::open(&path)
                    .or_else(|e| fail(&path, format!("cannot open: {e}")))?;
                let len = f.metadata().or_else(|e| fail(&path, e.to_string()))?.len();
                Ok((Box::new(f), len))
            }
            Files::Memory(m) => match Self::bytes(m, name) {
                Some(b) => Ok((Box::new(b), b.len() as u64)),
                None => fail(&path, "cannot open: not in the built-in model"),
            },
        }
    }

    /// File `name` whole, refused if it is larger than `cap` bytes.
    fn read_capped(&self, name: &str, cap: u64) -> Result<Vec<u8>> {
        let path = self.path(name);
        let (f, len) = self.open(name)?;
        if len > cap {
            return fail(
                &path,
                format!("{len} bytes is more than the {cap}-byte limit for this file"),
            );
        }
        let mut buf = Vec::with_capacity(len as usize);
        f.take(cap + 1)
            .read_to_end(&mut buf)
            .or_else(|e| fail(&path, e.to_string()))?;
        Ok(buf)
    }
}

fn load_from(files: &Files<'_>, dtype: DType, device: &Device) -> Result<ModelFolder> {
    let config = read_config(files)?;
    let generation = read_generation(files)?;
    let tokenizer_path = files.path(TOKENIZER_FILE);
    let tokenizer_json = files.read_capped(TOKENIZER_FILE, MAX_TOKENIZER_BYTES)?;
    let vocab = tokenizer_vocab_size(&tokenizer_path, &tokenizer_json)?;
    if vocab != config.vocab_size {
        return fail(
            &tokenizer_path,
            format!(
                "has {vocab} pieces but config.json says vocab_size = {}",
                config.vocab_size
            ),
        );
    }
    let model_path = files.path(MODEL_FILE);
    let specs =
        parameter_specs(&config).or_else(|e| fail(&files.path(CONFIG_FILE), e.to_string()))?;
    let header = read_safetensors_header(files, &specs)?;
    let meta = |key: &str| {
        header
            .metadata
            .get(key)
            .map(String::as_str)
            .unwrap_or("<missing>")
    };
    if meta("format_version") != FORMAT_VERSION.to_string() {
        return fail(
            &model_path,
            format!(
                "format_version {} in __metadata__; this gnmt reads version {FORMAT_VERSION}",
                meta("format_version")
            ),
        );
    }
    if meta("config_sha256") != sha256_hex(canonical_config(&config).as_bytes()) {
        return fail(
            &model_path,
            "was saved with a different config.json (config_sha256 differs)",
        );
    }
    if meta("tokenizer_sha256") != sha256_hex(&tokenizer_json) {
        return fail(
            &model_path,
            "was saved with a different tokenizer.json (tokenizer_sha256 differs)",
        );
    }
    let step = meta("step")
        .parse::<u64>()
        .or_else(|_| fail(&model_path, format!("bad step {:?}", meta("step"))))?;

    let bytes = files.read_capped(MODEL_FILE, header.file_len)?;
    let tensors = read_tensors(&bytes, &specs, dtype, device)
        .or_else(|e| fail(&model_path, e.to_string()))?;
    Ok(ModelFolder {
        config,
        generation,
        tokenizer_json,
        tensors,
        step,
        storage: header.storage,
    })
}

/// The parameters `specs` from the bytes of a checked `model.safetensors`, in `dtype` on
/// `device`: float tensors converted, int8 ones multiplied by their row scales.
fn read_tensors(
    bytes: &[u8],
    specs: &[ParamSpec],
    dtype: DType,
    device: &Device,
) -> std::result::Result<HashMap<String, Tensor>, String> {
    use candle::safetensors::Load;
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let mut tensors = HashMap::with_capacity(specs.len());
    for spec in specs {
        let view = file.tensor(&spec.name).map_err(|e| e.to_string())?;
        let t = if view.dtype() == safetensors::Dtype::I8 {
            let scales = file
                .tensor(&format!("{}{ROW_SCALES}", spec.name))
                .map_err(|e| e.to_string())?;
            let shape = (spec.shape[0], spec.shape[1]);
            quantized::dequantize(view.data(), scales.data(), shape, dtype, device)
        } else {
            view.load(device).and_then(|t| t.to_dtype(dtype))
        };
        tensors.insert(spec.name.clone(), t.map_err(|e| e.to_string())?);
    }
    Ok(tensors)
}

/// The parameters of a `VarMap`, by name (what [`save`] takes).
pub fn tensors_of(varmap: &candle_nn::VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("not poisoned");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

fn config_to_json(config: &ModelConfig) -> String {
    let mut v = serde_json::to_value(config).expect("plain struct");
    if let Value::Object(map) = &mut v {
        let mut ordered = serde_json::Map::new();
        ordered.insert("format_version".into(), FORMAT_VERSION.into());
        ordered.extend(std::mem::take(map));
        *map = ordered;
    }
    serde_json::to_string_pretty(&v).expect("plain value")
}

/// What `config_sha256` covers: the parsed configuration, so reformatting config.json by hand
/// does not break the link but changing any value does.
fn canonical_config(config: &ModelConfig) -> String {
    serde_json::to_string(config).expect("plain struct")
}

fn read_config(files: &Files<'_>) -> Result<ModelConfig> {
    let path = &files.path(CONFIG_FILE);
    let bytes = files.read_capped(CONFIG_FILE, MAX_JSON_BYTES)?;
    let mut value: Value =
        serde_json::from_slice(&bytes).or_else(|e| fail(path, format!("not valid JSON: {e}")))?;
    let Value::Object(map) = &mut value else {
        return fail(path, "must be a JSON object");
    };
    match map.remove("format_version") {
        Some(Value::Number(n)) if n.as_u64() == Some(FORMAT_VERSION) => {}
        Some(v) => {
            return fail(
                path,
                format!(
                    "format_version {v} is not supported; this gnmt reads version {FORMAT_VERSION}"
                ),
            )
        }
        None => return fail(path, "has no format_version: not a gnmt model folder"),
    }
    let config: ModelConfig =
        serde_json::from_value(value).or_else(|e| fail(path, e.to_string()))?;
    config.validate().or_else(|e| fail(path, e))?;
    Ok(config)
}

fn read_generation(files: &Files<'_>) -> Result<GenerationConfig> {
    if !files.exists(GENERATION_FILE) {
        return Ok(GenerationConfig::default());
    }
    let path = &files.path(GENERATION_FILE);
    let bytes = files.read_capped(GENERATION_FILE, MAX_JSON_BYTES)?;
    let g: GenerationConfig =
        serde_json::from_slice(&bytes).or_else(|e| fail(path, e.to_string()))?;
    g.validate().or_else(|e| fail(path, e))?;
    Ok(g)
}

/// Number of ids a `tokenizer.json` defines: one past the largest id in the model's
/// vocabulary and the added tokens.
fn tokenizer_vocab_size(path: &Path, bytes: &[u8]) -> Result<usize> {
    let v: Value =
        serde_json::from_slice(bytes).or_else(|e| fail(path, format!("not valid JSON: {e}")))?;
    let mut max_id: Option<u64> = None;
    let mut see = |id: Option<u64>| max_id = max_id.max(id);
    match v.pointer("/model/vocab") {
        Some(Value::Object(m)) => m.values().for_each(|id| see(id.as_u64())),
        Some(Value::Array(a)) if !a.is_empty() => see(Some(a.len() as u64 - 1)),
        _ => {
            return fail(
                path,
                "has no model vocabulary: not a tokenizers tokenizer.json",
            )
        }
    }
    if let Some(Value::Array(added)) = v.get("added_tokens") {
        added
            .iter()
            .for_each(|t| see(t.get("id").and_then(Value::as_u64)));
    }
    Ok(max_id.map_or(0, |m| m as usize + 1))
}

struct Header {
    metadata: BTreeMap<String, String>,
    file_len: u64,
    storage: Storage,
}

/// Reads and checks the safetensors header against `specs` without reading tensor data.
fn read_safetensors_header(files: &Files<'_>, specs: &[ParamSpec]) -> Result<Header> {
    let path = &files.path(MODEL_FILE);
    let (mut f, file_len) = files.open(MODEL_FILE)?;
    let header = read_header_json(&mut f, file_len, path)?;
    let header_len = header.len() as u64;
    let value: Value = serde_json::from_slice(&header)
        .or_else(|e| fail(path, format!("header is not valid JSON: {e}")))?;
    let Value::Object(mut entries) = value else {
        return fail(path, "header is not a JSON object");
    };
    let metadata: BTreeMap<String, String> = match entries.remove("__metadata__") {
        Some(m) => {
            serde_json::from_value(m).or_else(|e| fail(path, format!("bad __metadata__: {e}")))?
        }
        None => return fail(path, "has no __metadata__: not written by gnmt"),
    };
    let expected: HashMap<&str, &ParamSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();
    let is_int8 = |name: &str| {
        entries
            .get(name)
            .and_then(|e| e.get("dtype"))
            .and_then(Value::as_str)
            == Some("I8")
    };
    let mut data_end = 0u64;
    for (name, entry) in &entries {
        let scales_of = name.strip_suffix(ROW_SCALES).filter(|m| is_int8(m));
        let spec = match (expected.get(name.as_str()), scales_of) {
            (Some(spec), _) => (*spec).clone(),
            (None, Some(matrix)) => ParamSpec {
                name: name.clone(),
                shape: vec![expected[matrix].shape[0]],
            },
            (None, None) => {
                return fail(
                    path,
                    format!("unexpected tensor {name}: config.json implies no such parameter"),
                )
            }
        };
        let scales_dtype = entry.get("dtype").and_then(Value::as_str);
        if scales_of.is_some() && scales_dtype != Some("F32") {
            return fail(
                path,
                format!("tensor {name} must be F32, not {scales_dtype:?}"),
            );
        }
        data_end = data_end.max(check_entry(name, entry, &spec, path)?);
        if is_int8(name) && !entries.contains_key(&format!("{name}{ROW_SCALES}")) {
            return fail(
                path,
                format!("int8 tensor {name} has no {name}{ROW_SCALES}"),
            );
        }
    }
    if let Some(missing) = specs.iter().find(|s| !entries.contains_key(&s.name)) {
        return fail(
            path,
            format!("missing tensor {} {:?}", missing.name, missing.shape),
        );
    }
    let want = 8 + header_len + data_end;
    if file_len != want {
        let what = if file_len < want {
            "truncated"
        } else {
            "has trailing bytes"
        };
        return fail(
            path,
            format!("{what}: {file_len} bytes, the header implies {want}"),
        );
    }
    Ok(Header {
        metadata,
        file_len,
        storage: storage_of(&entries, specs),
    })
}

/// How a checked header's parameters `specs` are stored: int8 when any matrix is (the others
/// are F32 then), else the float dtype they share (F32 if they differ).
fn storage_of(entries: &serde_json::Map<String, Value>, specs: &[ParamSpec]) -> Storage {
    let dtype = |s: &ParamSpec| {
        entries
            .get(&s.name)
            .and_then(|e| e.get("dtype"))
            .and_then(Value::as_str)
    };
    if specs.iter().any(|s| dtype(s) == Some("I8")) {
        return Storage::Int8;
    }
    let mut dtypes = specs.iter().filter_map(dtype);
    let shared = match dtypes.next() {
        Some(first) if dtypes.all(|d| d == first) => first,
        _ => "F32",
    };
    Storage::Float(match shared {
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        _ => DType::F32,
    })
}

/// The JSON header of a safetensors file of `file_len` bytes, after its 8-byte length. Refuses,
/// before reading any of it, what is not safetensors (a zip archive, a Python pickle), a
/// header over [`MAX_HEADER_BYTES`] and a header longer than the file.
fn read_header_json(f: &mut impl Read, file_len: u64, path: &Path) -> Result<Vec<u8>> {
    let mut head = [0u8; 8];
    let n = read_up_to(f, &mut head).or_else(|e| fail(path, e.to_string()))?;
    if head.starts_with(b"PK\x03\x04") {
        return fail(
            path,
            "is a zip archive (a PyTorch .pt/.bin checkpoint?); gnmt loads only safetensors",
        );
    }
    if n >= 2 && head[0] == 0x80 && head[1] <= 5 {
        return fail(
            path,
            "is a Python pickle; gnmt never unpickles: convert it to safetensors",
        );
    }
    if n < 8 {
        return fail(
            path,
            format!("truncated: {file_len} bytes is too short for a safetensors file"),
        );
    }
    let header_len = u64::from_le_bytes(head);
    if header_len > MAX_HEADER_BYTES {
        return fail(
            path,
            format!("header of {header_len} bytes exceeds the {MAX_HEADER_BYTES}-byte limit"),
        );
    }
    if 8 + header_len > file_len {
        return fail(
            path,
            format!("truncated: the header claims {header_len} bytes but the file has {file_len}"),
        );
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)
        .or_else(|e| fail(path, e.to_string()))?;
    Ok(header)
}

/// Checks one tensor's header entry against the parameter `spec`: a dtype gnmt stores, the
/// shape, and data offsets that span exactly its bytes. Returns where its data ends.
fn check_entry(name: &str, entry: &Value, spec: &ParamSpec, path: &Path) -> Result<u64> {
    let dtype = entry.get("dtype").and_then(Value::as_str).unwrap_or("?");
    let width = match dtype {
        "F32" => 4,
        "F16" | "BF16" => 2,
        // Quantized rows: only matrices (their scales are per row).
        "I8" if spec.shape.len() == 2 => 1,
        other => {
            return fail(
                path,
                format!(
                "tensor {name} has dtype {other}; expected F32, F16 or BF16 (or I8 for a matrix)"
            ),
            )
        }
    };
    let shape: Vec<usize> = entry
        .get("shape")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .ok_or_else(|| CheckpointError {
            path: path.to_path_buf(),
            problem: format!("tensor {name} has no valid shape"),
        })?;
    if shape != spec.shape {
        return fail(
            path,
            format!(
                "tensor {name} has shape {shape:?} but config.json implies {:?}",
                spec.shape
            ),
        );
    }
    let offsets: Vec<u64> = entry
        .get("data_offsets")
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .filter(|o: &Vec<u64>| o.len() == 2 && o[0] <= o[1])
        .ok_or_else(|| CheckpointError {
            path: path.to_path_buf(),
            problem: format!("tensor {name} has bad data_offsets"),
        })?;
    if offsets[1] - offsets[0] != (spec.elem_count() * width) as u64 {
        return fail(
            path,
            format!("tensor {name}: data_offsets {offsets:?} do not match its shape and dtype"),
        );
    }
    Ok(offsets[1])
}

fn check_tensor_set(
    path: &Path,
    specs: &[ParamSpec],
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    for s in specs {
        match tensors.get(&s.name) {
            None => return fail(path, format!("missing tensor {} {:?}", s.name, s.shape)),
            Some(t) if t.dims() != s.shape.as_slice() => {
                return fail(
                    path,
                    format!(
                        "tensor {} has shape {:?}, expected {:?}",
                        s.name,
                        t.dims(),
                        s.shape
                    ),
                )
            }
            Some(_) => {}
        }
    }
    if tensors.len() != specs.len() {
        let names: std::collections::HashSet<&str> =
            specs.iter().map(|s| s.name.as_str()).collect();
        let extra: Vec<&String> = tensors
            .keys()
            .filter(|k| !names.contains(k.as_str()))
            .collect();
        return fail(path, format!("unexpected tensors {extra:?}"));
    }
    Ok(())
}

fn read_up_to(f: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The one atomic write of the project ([`gnmt_tokenizer::io::write_atomic`]: a temporary
/// file in the same folder, fsync, rename, fsync the folder), with this module's error.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    gnmt_tokenizer::io::write_atomic(path, bytes)
        .or_else(|e| fail(path, format!("cannot write: {e}")))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
