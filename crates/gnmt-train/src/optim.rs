//! Adam (Kingma & Ba 2015) and plain SGD over the model's variables, with state we can save:
//! candle's AdamW keeps its moments private, so exact resume needs our own.

use std::collections::HashMap;
use std::path::Path;

use candle::backprop::GradStore;
use candle::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use gnmt_ops::adam::{self, AdamConstants};

use crate::config::OptimConfig;
use crate::schedule::Rule;
use crate::{Error, Result};

pub struct Optimizer {
    /// Sorted by name: the order of every loop below, hence deterministic.
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Adam updates taken (for bias correction).
    adam_steps: u64,
    /// Whether a GPU's variables take the one-pass CUDA update (the fused kernels) rather
    /// than the tensor-by-tensor one (the reference). CPU variables always take the one-pass
    /// update.
    gpu_kernels: bool,
}

impl Optimizer {
    pub fn new(varmap: &VarMap) -> Result<Self> {
        let mut vars: Vec<(String, Var)> = varmap
            .data()
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle::Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|(_, v)| zeros(v))
            .collect::<candle::Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            m,
            v,
            adam_steps: 0,
            gpu_kernels: false,
        })
    }

    /// Lets variables on a GPU take the one-pass CUDA update (with the fused kernels).
    pub fn use_gpu_kernels(&mut self, yes: bool) {
        self.gpu_kernels = yes;
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Applies one update: gradients are multiplied by `grad_scale` (clipping) first.
    pub fn step(
        &mut self,
        grads: &GradStore,
        lr: f64,
        rule: Rule,
        grad_scale: f64,
        o: &OptimConfig,
    ) -> Result<()> {
        if rule == Rule::Adam {
            self.adam_steps += 1;
        }
        let t = self.adam_steps as i32;
        let (c1, c2) = (1.0 - o.beta1.powi(t), 1.0 - o.beta2.powi(t));
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let g = grads
                .get(var)
                .ok_or_else(|| Error::Config(format!("parameter {name} received no gradient")))?;
            // The one-pass update where it runs (and on a GPU only with the fused kernels);
            // elsewhere the tensor-by-tensor path.
            let device = var.device();
            let one_pass = adam::runs_on(device) && (device.is_cpu() || self.gpu_kernels);
            if rule == Rule::Adam && var.dtype() == DType::F32 && one_pass {
                let step = AdamStep {
                    lr,
                    grad_scale,
                    beta1: o.beta1,
                    beta2: o.beta2,
                    eps: o.eps,
                    c1,
                    c2,
                };
                step.apply(var, g, &self.m[i], &self.v[i])?;
                continue;
            }
            let g = (g * grad_scale)?;
            let update = match rule {
                Rule::Sgd => (g * lr)?,
                Rule::Adam => {
                    self.m[i] = ((&self.m[i] * o.beta1)? + (&g * (1.0 - o.beta1))?)?;
                    self.v[i] = ((&self.v[i] * o.beta2)? + (g.sqr()? * (1.0 - o.beta2))?)?;
                    let m_hat = (&self.m[i] / c1)?;
                    let v_hat = (&self.v[i] / c2)?;
                    ((m_hat / (v_hat.sqrt()? + o.eps)?)? * lr)?
                }
            };
            var.set(&(var.as_tensor() - update)?)?;
        }
        Ok(())
    }

    /// Saves the moments and step count (safetensors, atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            tensors.push((format!("m.{name}"), self.m[i].to_device(&Device::Cpu)?));
            tensors.push((format!("v.{name}"), self.v[i].to_device(&Device::Cpu)?));
        }
        let meta = HashMap::from([("adam_steps".to_string(), self.adam_steps.to_string())]);
        let bytes =
            safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
                .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
        crate::state::write_atomic(path, &bytes)
    }

    /// Restores state saved by [`Optimizer::save`] for the same set of variables.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let bad = |m: String| Error::Checkpoint(format!("{}: {m}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let steps = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("adam_steps"))
            .and_then(|s| s.parse().ok());
        let device = self
            .vars
            .first()
            .map(|(_, v)| v.device().clone())
            .unwrap_or(Device::Cpu);
        let mut loaded =
            candle::safetensors::load_buffer(&bytes, &device).map_err(|e| bad(e.to_string()))?;
        if loaded.len() != 2 * self.vars.len() {
            return Err(bad(format!(
                "holds {} tensors, expected {}",
                loaded.len(),
                2 * self.vars.len()
            )));
        }
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let t = loaded
                    .remove(&format!("{prefix}.{name}"))
                    .ok_or_else(|| bad(format!("no {prefix}.{name}")))?;
                if t.dims() != var.dims() || t.dtype() != DType::F32 && t.dtype() != var.dtype() {
                    return Err(bad(format!(
                        "{prefix}.{name} has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                *slot = t.to_dtype(var.dtype())?;
            }
        }
        self.adam_steps = steps.ok_or_else(|| bad("no adam_steps in metadata".into()))?;
        Ok(())
    }
}

/// One Adam update of one f32 parameter in a single pass over its elements, instead of a
/// dozen tensor operations that each allocate a parameter-sized tensor. The arithmetic is the
/// composite path's, in the same order.
struct AdamStep {
    lr: f64,
    grad_scale: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Bias corrections `1 - beta^t`.
    c1: f64,
    c2: f64,
}

impl AdamStep {
    /// Updates `var`, `m` and `v` in place (each an f32 tensor of one shape): one pass that
    /// reads the gradient once and each of the three once, no copies
    /// ([`gnmt_ops::adam::update`]). The per-element arithmetic is fixed
    /// ([`AdamConstants::element`]), so results do not depend on the thread count.
    fn apply(&self, var: &Var, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<()> {
        Ok(adam::update(var.as_tensor(), m, v, g, &self.constants())?)
    }

    fn constants(&self) -> AdamConstants {
        let f = |x: f64| x as f32;
        AdamConstants {
            scale: f(self.grad_scale),
            beta1: f(self.beta1),
            beta2: f(self.beta2),
            one_minus_beta1: f(1.0 - self.beta1),
            one_minus_beta2: f(1.0 - self.beta2),
            c1: f(self.c1),
            c2: f(self.c2),
            eps: f(self.eps),
            lr: f(self.lr),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::Init;

    /// The fused f32 Adam step against the composite path (taken by f64 parameters): three
    /// updates with clipping, the same to f32 precision; and Adam's first step moves every
    /// weight by about the learning rate.
    #[test]
    fn fused_adam_matches_the_composite_update() {
        let run = |dtype: DType| -> Vec<f64> {
            let varmap = VarMap::new();
            let w = varmap
                .get((3, 4), "w", Init::Const(0.5), dtype, &Device::Cpu)
                .unwrap();
            let mut opt = Optimizer::new(&varmap).unwrap();
            let o = OptimConfig::default();
            for k in 0..3 {
                let target = Tensor::arange(0f32, 12.0, &Device::Cpu)
                    .unwrap()
                    .reshape((3, 4))
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let loss = ((&w - (target * (k + 1) as f64).unwrap())
                    .unwrap()
                    .sqr()
                    .unwrap())
                .sum_all()
                .unwrap();
                let grads = loss.backward().unwrap();
                opt.step(&grads, 0.01, Rule::Adam, 0.5, &o).unwrap();
            }
            let vars: Vec<_> = opt.vars().map(|(_, v)| v.clone()).collect();
            vars[0]
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (fused, composite) = (run(DType::F32), run(DType::F64));
        for (a, b) in fused.iter().zip(&composite) {
            assert!((a - b).abs() < 1e-6, "{fused:?} vs {composite:?}");
        }
        // Every weight started at 0.5 and moved by about 3 x lr toward its target (or stayed
        // where its gradient was zero: target 0.5 never occurs).
        assert!(fused
            .iter()
            .all(|&x| (x - 0.5).abs() > 0.02 && (x - 0.5).abs() < 0.031));
    }
}
