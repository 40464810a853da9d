//! The GNMT encoder: embeddings, a bidirectional bottom layer, then unidirectional layers with
//! residual connections from layer 3 up (Marian's "bi-unidirectional" layout).

use candle::{Result, Tensor};
use candle_nn::VarBuilder;

use gnmt_ops::concat::cat_last;
use gnmt_ops::dropout::{self, Dropout, Side};
use gnmt_ops::embedding::TokenEmbedding;
use gnmt_ops::Kernels;

use crate::config::ModelConfig;
use crate::lstm::Lstm;

#[derive(Debug, Clone)]
pub struct Encoder {
    embedding: TokenEmbedding,
    forward_dir: Lstm,
    backward_dir: Lstm,
    /// Layers 2..=N; `layers[k]` is layer `k + 2`.
    layers: Vec<Lstm>,
    residual: Vec<bool>,
    /// Of the embedding, the dropout and the concatenation (each layer has its own).
    kernels: Kernels,
}

impl Encoder {
    /// The encoder of `cfg`, looking tokens up in `shared_embedding` when it is given (all
    /// embeddings tied), else in a table of its own.
    pub fn new(
        cfg: &ModelConfig,
        vb: VarBuilder,
        shared_embedding: Option<&Tensor>,
    ) -> Result<Self> {
        let (e, h) = (cfg.embedding_dim, cfg.hidden_size);
        let table = match shared_embedding {
            Some(table) => table.clone(),
            None => candle_nn::embedding(cfg.vocab_size, e, vb.pp("embedding"))?
                .embeddings()
                .clone(),
        };
        let embedding = TokenEmbedding::new(table)?;
        let lstm = vb.pp("lstm");
        let forward_dir = Lstm::new(e, h, "l0", &lstm)?;
        let backward_dir = Lstm::new(e, h, "l0_reverse", &lstm)?;
        let layers = (1..cfg.encoder_layers)
            .map(|k| Lstm::new(if k == 1 { 2 * h } else { h }, h, &format!("l{k}"), &lstm))
            .collect::<Result<Vec<_>>>()?;
        let residual = (2..=cfg.encoder_layers)
            .map(|l| cfg.encoder_residual(l))
            .collect();
        Ok(Self {
            embedding,
            forward_dir,
            backward_dir,
            layers,
            residual,
            kernels: Kernels::default(),
        })
    }

    pub fn set_kernels(&mut self, kernels: Kernels) {
        for layer in [&mut self.forward_dir, &mut self.backward_dir]
            .into_iter()
            .chain(&mut self.layers)
        {
            layer.set_kernels(kernels);
        }
        self.kernels = kernels;
    }

    /// `src [B, S]` (u32 ids), `mask [B, S]` (1 real, 0 pad, float) -> top outputs `[B, S, H]`.
    pub fn forward(
        &self,
        src: &Tensor,
        mask: &Tensor,
        mut dropout: Option<&mut Dropout>,
    ) -> Result<Tensor> {
        let k = self.kernels;
        let x = self.embedding.forward(src, k)?;
        let x = dropout::maybe_words(&mut dropout, &x, Side::Source, k)?;
        let x = dropout::maybe(&mut dropout, &x, k)?;
        let fwd = self.forward_dir.forward(&x, Some(mask), false)?;
        let bwd = self.backward_dir.forward(&x, Some(mask), true)?;
        let mut layers = self.layers.iter().zip(&self.residual).peekable();
        // Both directions side by side feed layer 2: with no identity path around it (never,
        // in GNMT's layout), they are concatenated and dropped out in one operation.
        let mut x = match layers.next_if(|(_, &residual)| !residual) {
            Some((layer, _)) => {
                let input = dropout::maybe_cat(&mut dropout, &fwd, &bwd, k)?;
                layer.forward(&input, Some(mask), false)?
            }
            None => cat_last(&fwd, &bwd, k)?,
        };
        for (layer, &residual) in layers {
            let input = dropout::maybe(&mut dropout, &x, k)?;
            let out = layer.forward(&input, Some(mask), false)?;
            // The identity path adds the layer's input as it was before dropout (tf/nmt's
            // ResidualWrapper around a DropoutWrapper).
            x = if residual { (out + &x)? } else { out };
        }
        Ok(x)
    }
}
