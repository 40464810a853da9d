use std::collections::HashMap;
use std::path::Path;

use candle::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use gnmt_model::checkpoint::{
    self, tensors_of, GenerationConfig, CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE,
};
use gnmt_model::{Gnmt, ModelConfig};

use crate::common::{inputs, max_abs_diff, model};

/// A minimal tokenizer.json with `n` pieces (the checkpoint only counts and hashes it).
fn tokenizer_json(n: usize) -> Vec<u8> {
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..n).map(|i| (format!("p{i}"), i.into())).collect();
    serde_json::json!({ "model": { "type": "BPE", "vocab": vocab, "merges": [] }, "added_tokens": [] })
        .to_string()
        .into_bytes()
}

fn saved() -> (tempfile::TempDir, ModelConfig, HashMap<String, Tensor>) {
    let cfg = crate::common::tiny8();
    let (_, varmap) = model(&cfg, DType::F32);
    let dir = tempfile::tempdir().unwrap();
    let tensors = tensors_of(&varmap);
    checkpoint::save(
        dir.path(),
        &cfg,
        &tensors,
        &tokenizer_json(64),
        &GenerationConfig::default(),
        1234,
        DType::F32,
    )
    .unwrap();
    (dir, cfg, tensors)
}

fn load_err(dir: &Path) -> String {
    checkpoint::load(dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

fn assert_refused(dir: &Path, file: &str, needle: &str) {
    let err = load_err(dir);
    let path = dir.join(file).display().to_string();
    assert!(
        err.starts_with(&path) || file.is_empty(),
        "error should name {path}: {err}"
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn save_then_load_is_bit_identical() {
    let (dir, cfg, tensors) = saved();
    let loaded = checkpoint::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.config, cfg);
    assert_eq!(loaded.step, 1234);
    assert_eq!(loaded.generation, GenerationConfig::default());
    assert_eq!(loaded.tensors.len(), tensors.len());
    for (name, t) in &tensors {
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = loaded.tensors[name]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name}"
        );
    }
    let original = Gnmt::new(
        &cfg,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let reloaded = Gnmt::new(
        &cfg,
        VarBuilder::from_tensors(loaded.tensors, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let x = inputs(DType::F32);
    let (a, _) = original
        .forward(&x.src, &x.src_mask, &x.tgt_in, None)
        .unwrap();
    let (b, _) = reloaded
        .forward(&x.src, &x.src_mask, &x.tgt_in, None)
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    // No temporary files are left behind.
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "config.json",
            "generation.json",
            "model.safetensors",
            "tokenizer.json"
        ]
    );
}

/// `tensors` saved in a new folder as `storage`.
fn saved_as(
    cfg: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
    storage: checkpoint::Storage,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save(
        dir.path(),
        cfg,
        tensors,
        &tokenizer_json(64),
        &GenerationConfig::default(),
        7,
        storage,
    )
    .unwrap();
    dir
}

/// f16 and bf16 storage load back as f32 within the format's rounding, and the folder says how
/// it was stored (what decoding multiplies in by default).
#[test]
fn half_precision_storage_loads_back_as_f32() {
    let (_, cfg, tensors) = saved();
    for (dtype, tolerance) in [(DType::F16, 1e-3), (DType::BF16, 1e-2), (DType::F32, 0.0)] {
        let dir = saved_as(&cfg, &tensors, dtype.into());
        let loaded = checkpoint::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(loaded.storage, checkpoint::Storage::Float(dtype));
        for (name, t) in &tensors {
            assert!(
                max_abs_diff(t, &loaded.tensors[name]) <= tolerance,
                "{dtype:?} {name}"
            );
        }
    }
}

/// Rewrites model.safetensors with the given tensors and metadata (to forge bad files).
fn write_model(dir: &Path, tensors: &HashMap<String, Tensor>, meta: HashMap<String, String>) {
    let bytes =
        safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta)).unwrap();
    std::fs::write(dir.join(MODEL_FILE), bytes).unwrap();
}

fn metadata_of(dir: &Path) -> HashMap<String, String> {
    let bytes = std::fs::read(dir.join(MODEL_FILE)).unwrap();
    let (_, m) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    m.metadata().clone().unwrap()
}

#[test]
fn missing_extra_misshaped_and_mistyped_tensors_are_refused() {
    let (dir, _, tensors) = saved();
    let meta = metadata_of(dir.path());

    let mut missing = tensors.clone();
    missing.remove("decoder.output.bias");
    write_model(dir.path(), &missing, meta.clone());
    assert_refused(
        dir.path(),
        MODEL_FILE,
        "missing tensor decoder.output.bias [64]",
    );

    let mut extra = tensors.clone();
    extra.insert(
        "decoder.lstm.weight_ih_l9".into(),
        Tensor::zeros((32, 16), DType::F32, &Device::Cpu).unwrap(),
    );
    write_model(dir.path(), &extra, meta.clone());
    assert_refused(
        dir.path(),
        MODEL_FILE,
        "unexpected tensor decoder.lstm.weight_ih_l9",
    );

    let mut misshaped = tensors.clone();
    misshaped.insert(
        "encoder.embedding.weight".into(),
        Tensor::zeros((65, 8), DType::F32, &Device::Cpu).unwrap(),
    );
    write_model(dir.path(), &misshaped, meta.clone());
    assert_refused(
        dir.path(),
        MODEL_FILE,
        "tensor encoder.embedding.weight has shape [65, 8] but config.json implies [64, 8]",
    );

    let mut mistyped = tensors.clone();
    mistyped.insert(
        "decoder.output.bias".into(),
        Tensor::zeros(64, DType::I64, &Device::Cpu).unwrap(),
    );
    write_model(dir.path(), &mistyped, meta.clone());
    assert_refused(
        dir.path(),
        MODEL_FILE,
        "tensor decoder.output.bias has dtype I64",
    );

    let mut no_meta = meta.clone();
    no_meta.insert("format_version".into(), "7".into());
    write_model(dir.path(), &tensors, no_meta);
    assert_refused(dir.path(), MODEL_FILE, "format_version 7 in __metadata__");
}

#[test]
fn truncated_huge_header_pickle_and_zip_files_are_refused() {
    let (dir, _, _) = saved();
    let path = dir.path().join(MODEL_FILE);
    let good = std::fs::read(&path).unwrap();

    std::fs::write(&path, &good[..good.len() - 100]).unwrap();
    assert_refused(dir.path(), MODEL_FILE, "truncated");

    std::fs::write(&path, &good[..5]).unwrap();
    assert_refused(dir.path(), MODEL_FILE, "truncated: 5 bytes");

    let mut appended = good.clone();
    appended.extend_from_slice(b"junk");
    std::fs::write(&path, &appended).unwrap();
    assert_refused(dir.path(), MODEL_FILE, "has trailing bytes");

    let mut huge = (1u64 << 40).to_le_bytes().to_vec();
    huge.extend_from_slice(&good[8..]);
    std::fs::write(&path, &huge).unwrap();
    assert_refused(
        dir.path(),
        MODEL_FILE,
        "header of 1099511627776 bytes exceeds",
    );

    let mut garbage_header = 20u64.to_le_bytes().to_vec();
    garbage_header.extend_from_slice(b"{not json at all!!!}");
    std::fs::write(&path, &garbage_header).unwrap();
    assert_refused(dir.path(), MODEL_FILE, "header is not valid JSON");

    std::fs::write(&path, b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}").unwrap();
    assert_refused(dir.path(), MODEL_FILE, "is a Python pickle");

    std::fs::write(&path, b"PK\x03\x04archive/data.pkl....").unwrap();
    assert_refused(dir.path(), MODEL_FILE, "is a zip archive");

    std::fs::remove_file(&path).unwrap();
    assert_refused(dir.path(), MODEL_FILE, "cannot open");
}

#[test]
fn mismatched_tokenizer_and_config_are_refused() {
    let (dir, _, _) = saved();
    let tok = dir.path().join(TOKENIZER_FILE);
    std::fs::write(&tok, tokenizer_json(80)).unwrap();
    assert_refused(
        dir.path(),
        TOKENIZER_FILE,
        "has 80 pieces but config.json says vocab_size = 64",
    );

    let mut other = tokenizer_json(64);
    other.push(b' '); // same pieces, different file: not the tokenizer the model was trained with
    std::fs::write(&tok, &other).unwrap();
    assert_refused(dir.path(), MODEL_FILE, "different tokenizer.json");
    std::fs::write(&tok, tokenizer_json(64)).unwrap();

    let cfg_path = dir.path().join(CONFIG_FILE);
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        good.replace("\"format_version\": 1", "\"format_version\": 2"),
    )
    .unwrap();
    assert_refused(
        dir.path(),
        CONFIG_FILE,
        "format_version 2 is not supported; this gnmt reads version 1",
    );
    std::fs::write(&cfg_path, good.replace("\"format_version\": 1,", "")).unwrap();
    assert_refused(dir.path(), CONFIG_FILE, "has no format_version");
    std::fs::write(&cfg_path, good.replace("\"residual\"", "\"residuals\"")).unwrap();
    assert_refused(dir.path(), CONFIG_FILE, "unknown field `residuals`");
    std::fs::write(
        &cfg_path,
        good.replace("\"hidden_size\": 8", "\"hidden_size\": 16"),
    )
    .unwrap();
    assert_refused(dir.path(), MODEL_FILE, "shape");
    std::fs::write(
        &cfg_path,
        good.replace("\"residual\": true", "\"residual\": false"),
    )
    .unwrap();
    assert_refused(dir.path(), MODEL_FILE, "different config.json");
    std::fs::write(&cfg_path, "[1, 2]").unwrap();
    assert_refused(dir.path(), CONFIG_FILE, "must be a JSON object");
    // Reformatting config.json by hand is harmless.
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    checkpoint::load(dir.path(), DType::F32, &Device::Cpu).unwrap();

    let gen = dir.path().join("generation.json");
    std::fs::write(&gen, r#"{"beam_size": 0}"#).unwrap();
    assert_refused(
        dir.path(),
        "generation.json",
        "beam_size = 0 is outside 1..=256",
    );

    assert!(load_err(&dir.path().join("nope")).contains("not a model folder"));
}

#[test]
fn saving_the_wrong_tensor_set_is_refused() {
    let (dir, cfg, mut tensors) = saved();
    tensors.remove("encoder.lstm.bias_ih_l1");
    let err = checkpoint::save(
        dir.path(),
        &cfg,
        &tensors,
        &tokenizer_json(64),
        &GenerationConfig::default(),
        0,
        DType::F32,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("missing tensor encoder.lstm.bias_ih_l1"),
        "{err}"
    );
}

/// int8 storage: matrices come back within half a quantization step of each row (its largest
/// magnitude / 254), vectors exactly; the file is smaller than an f16 one. A forged file with an
/// int8 vector or an int8 matrix without its scales is refused.
#[test]
fn int8_storage_loads_back_within_half_a_step_and_is_checked() {
    use gnmt_model::quantized::{RawTensor, ROW_SCALES};
    let (_, cfg, tensors) = saved();
    let save = |storage| saved_as(&cfg, &tensors, storage);
    let (int8, f16) = (save(checkpoint::Storage::Int8), save(DType::F16.into()));
    let size = |d: &tempfile::TempDir| std::fs::metadata(d.path().join(MODEL_FILE)).unwrap().len();
    // (Half of f16 for real models; here the 8-wide rows make the scales a third of it.)
    assert!(
        size(&int8) < size(&f16),
        "{} vs {}",
        size(&int8),
        size(&f16)
    );
    let loaded = checkpoint::load(int8.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(loaded.storage, checkpoint::Storage::Int8);
    for (name, t) in &tensors {
        let back = &loaded.tensors[name];
        if t.dims().len() != 2 {
            assert_eq!(max_abs_diff(t, back), 0.0, "{name}");
            continue;
        }
        let (rows, original) = (t.to_vec2::<f32>().unwrap(), back.to_vec2::<f32>().unwrap());
        for (row, got) in rows.iter().zip(&original) {
            let step = row.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            for (x, y) in row.iter().zip(got) {
                assert!(
                    (x - y).abs() <= step * 0.5001,
                    "{name}: {x} vs {y} (step {step})"
                );
            }
        }
    }

    let forge = |drop: &str, int8_vector: Option<&str>| {
        let mut raw: Vec<(String, RawTensor)> = Vec::new();
        for (name, t) in &tensors {
            if Some(name.as_str()) == int8_vector {
                let t = t.unsqueeze(0).unwrap();
                let (mut q, _) = RawTensor::int8_rows(&t).unwrap();
                q.shape.remove(0);
                raw.push((name.clone(), q));
            } else if t.dims().len() == 2 {
                let (q, scales) = RawTensor::int8_rows(t).unwrap();
                raw.push((name.clone(), q));
                raw.push((format!("{name}{ROW_SCALES}"), scales));
            } else {
                raw.push((name.clone(), RawTensor::float(t, DType::F32).unwrap()));
            }
        }
        raw.retain(|(name, _)| name != drop);
        let bytes = checkpoint::serialize_safetensors(&raw, metadata_of(int8.path())).unwrap();
        std::fs::write(int8.path().join(MODEL_FILE), bytes).unwrap();
    };
    forge("decoder.output.weight.row_scales", None);
    assert_refused(
        int8.path(),
        MODEL_FILE,
        "int8 tensor decoder.output.weight has no decoder.output.weight.row_scales",
    );
    forge("", Some("decoder.output.bias"));
    assert_refused(
        int8.path(),
        MODEL_FILE,
        "tensor decoder.output.bias has dtype I8; expected F32, F16 or BF16 (or I8 for a matrix)",
    );
    forge("", None);
    assert!(checkpoint::load(int8.path(), DType::F32, &Device::Cpu).is_ok());
}
