//! Recording a network's parameter list, and seeded initialisation.
//!
//! The list is not written down twice: it is recorded by building the network against a
//! backend that notes every `(name, shape)` requested and hands back a zero-stride view (no
//! allocation, so even the 8x1024 preset is listed instantly). [`crate::parameter_specs`] does
//! it for [`crate::Gnmt`]; checkpoint validation, seeded initialisation and the pinned name
//! snapshot all use that one list.

use std::sync::{Arc, Mutex};

use candle::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{var_builder::SimpleBackend, Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// One parameter tensor: its name in `model.safetensors` and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Notes every requested parameter in a list it shares with its creator.
#[derive(Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<ParamSpec>>>,
}

impl SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.seen.lock().expect("not poisoned").push(ParamSpec {
            name: name.to_string(),
            shape: s.dims().to_vec(),
        });
        Tensor::zeros(1, dtype, dev)?.reshape(())?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle::bail!("parameter {name} requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Every parameter `build` requests of the `VarBuilder` it is given, sorted by name: the
/// network's constructor run against a recorder.
pub(crate) fn record(build: impl FnOnce(VarBuilder) -> Result<()>) -> Result<Vec<ParamSpec>> {
    let recorder = Recorder::default();
    let seen = recorder.seen.clone();
    build(VarBuilder::from_backend(
        Box::new(recorder),
        DType::F32,
        Device::Cpu,
    ))?;
    let mut specs = seen.lock().expect("not poisoned").clone();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = specs.windows(2).find(|w| w[0].name == w[1].name) {
        candle::bail!("parameter {} is requested twice", w[0].name)
    }
    Ok(specs)
}

/// A `VarMap` holding the parameters `specs` (sorted by name), drawn uniformly from
/// `[-scale, scale]` by a ChaCha generator seeded with `seed`, parameter by parameter in that
/// order. The same seed gives bit-identical parameters on every machine and thread count.
pub(crate) fn seeded_varmap(
    specs: &[ParamSpec],
    seed: u64,
    scale: f64,
    dtype: DType,
    device: &Device,
) -> Result<VarMap> {
    let varmap = VarMap::new();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    {
        let mut data = varmap.data().lock().expect("not poisoned");
        for spec in specs {
            let values: Vec<f64> = (0..spec.elem_count())
                .map(|_| rng.random_range(-scale..=scale))
                .collect();
            let t = Tensor::from_vec(values, spec.shape.as_slice(), device)?.to_dtype(dtype)?;
            data.insert(spec.name.clone(), Var::from_tensor(&t)?);
        }
    }
    Ok(varmap)
}
