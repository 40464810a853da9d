//! The architecture of a GNMT model, and its named presets.

use serde::{Deserialize, Serialize};

/// Where the decoder's attention query comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionQuery {
    /// GNMT v2 (NVIDIA): the bottom decoder layer's output at the current step. The bottom
    /// layer does not depend on the attention, so in training it runs over the whole target at
    /// once and attention is one batched operation. The default, for speed.
    Current,
    /// The paper: the bottom layer's output at the previous step; the context is also an input
    /// of the bottom layer, so training must step the bottom layer and attention in time.
    Previous,
}

/// Which of the model's three `[vocab, dim]` matrices are one shared matrix. The vocabulary
/// is shared by source and target, so all three can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TieEmbeddings {
    /// Three matrices: the encoder's and the decoder's embeddings and the output layer.
    #[default]
    None,
    /// The decoder's embedding is its output layer's weight (Press & Wolf 2017; fairseq's
    /// `--share-decoder-input-output-embed`, Marian's `--tied-embeddings`).
    Decoder,
    /// One matrix for all three (fairseq's `--share-all-embeddings`, Marian's
    /// `--tied-embeddings-all`).
    All,
}

impl TieEmbeddings {
    fn is_none(&self) -> bool {
        *self == Self::None
    }

    /// The name `config.json` uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Decoder => "decoder",
            Self::All => "all",
        }
    }

    /// Whether the decoder's output layer reads its weight from the decoder's embedding.
    pub fn output(self) -> bool {
        self != Self::None
    }

    /// Whether the encoder's embedding is the decoder's.
    pub fn encoder(self) -> bool {
        self == Self::All
    }
}

/// GNMT architecture: everything that determines the parameters and the computation, nothing
/// about training. Serialised flat into a model folder's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Rows of the embeddings and of the output softmax (the shared vocabulary's size).
    pub vocab_size: usize,
    pub embedding_dim: usize,
    /// LSTM units per layer (per direction in the bidirectional bottom encoder layer).
    pub hidden_size: usize,
    /// Encoder layers, the bidirectional bottom layer included (at least 2).
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    /// Hidden units of the additive attention's feed-forward scorer.
    pub attention_size: usize,
    #[serde(default = "default_query")]
    pub attention_query: AttentionQuery,
    /// `false` turns every residual connection off (the ablation).
    #[serde(default = "default_true")]
    pub residual: bool,
    /// 1-based layer from which residual connections start (GNMT: 3). The encoder's layer 2
    /// never has one: its input is the 2H-wide bidirectional output.
    #[serde(default = "default_residual_from")]
    pub residual_from_layer: usize,
    /// Shared embedding matrices (they need `embedding_dim == hidden_size`: the output layer
    /// reads the top decoder layer's output). Left out of `config.json` when untied, so
    /// untied models read as before.
    #[serde(default, skip_serializing_if = "TieEmbeddings::is_none")]
    pub tie_embeddings: TieEmbeddings,
}

fn default_query() -> AttentionQuery {
    AttentionQuery::Current
}
fn default_true() -> bool {
    true
}
fn default_residual_from() -> usize {
    3
}

/// Presets, compiled in from `models/presets/*.json` (one table: the JSON files).
const PRESETS: [(&str, &str); 4] = [
    (
        "gnmt-8x1024",
        include_str!("../../../models/presets/gnmt-8x1024.json"),
    ),
    (
        "gnmt-v2-4x1024",
        include_str!("../../../models/presets/gnmt-v2-4x1024.json"),
    ),
    ("small", include_str!("../../../models/presets/small.json")),
    ("tiny", include_str!("../../../models/presets/tiny.json")),
];

/// Upper bounds that keep an untrusted config from asking for absurd allocations.
const MAX_DIM: usize = 16_384;
const MAX_VOCAB: usize = 1 << 20;
const MAX_LAYERS: usize = 64;

impl ModelConfig {
    /// A named preset (see [`ModelConfig::preset_names`]).
    pub fn preset(name: &str) -> Result<Self, String> {
        let (_, json) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            format!(
                "unknown preset {name:?}; available: {}",
                Self::preset_names().join(", ")
            )
        })?;
        let cfg: Self = serde_json::from_str(json).map_err(|e| format!("preset {name}: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|(n, _)| *n).collect()
    }

    pub fn tiny() -> Self {
        Self::preset("tiny").expect("the tiny preset is valid")
    }

    pub fn small() -> Self {
        Self::preset("small").expect("the small preset is valid")
    }

    /// Checks every field; the message names the field and the rule.
    pub fn validate(&self) -> Result<(), String> {
        let dims = [
            ("vocab_size", self.vocab_size, 5, MAX_VOCAB),
            ("embedding_dim", self.embedding_dim, 1, MAX_DIM),
            ("hidden_size", self.hidden_size, 1, MAX_DIM),
            ("attention_size", self.attention_size, 1, MAX_DIM),
            ("encoder_layers", self.encoder_layers, 2, MAX_LAYERS),
            ("decoder_layers", self.decoder_layers, 1, MAX_LAYERS),
            (
                "residual_from_layer",
                self.residual_from_layer,
                2,
                MAX_LAYERS + 1,
            ),
        ];
        for (name, value, lo, hi) in dims {
            if !(lo..=hi).contains(&value) {
                return Err(format!("{name} = {value} is outside {lo}..={hi}"));
            }
        }
        if self.tie_embeddings.output() && self.embedding_dim != self.hidden_size {
            return Err(format!(
                "tie_embeddings = {} needs embedding_dim = hidden_size (the output layer's \
                 weight is [vocab, hidden_size]), got {} and {}",
                self.tie_embeddings.name(),
                self.embedding_dim,
                self.hidden_size
            ));
        }
        Ok(())
    }

    /// Whether 1-based encoder layer `layer` adds its input to its output.
    pub fn encoder_residual(&self, layer: usize) -> bool {
        self.residual && layer >= self.residual_from_layer.max(3)
    }

    /// Whether 1-based decoder layer `layer` adds its (non-context) input to its output.
    pub fn decoder_residual(&self, layer: usize) -> bool {
        self.residual && layer >= self.residual_from_layer
    }

    /// Multiply-adds x 2 for one source token through the encoder and one target token through
    /// the decoder, forward only, with `src_per_tgt` source tokens per target token. Training
    /// (forward + backward) costs about three times this.
    pub fn forward_flops_per_target_token(&self, src_len: f64, src_per_tgt: f64) -> f64 {
        self.encoder_flops_per_source_token() * src_per_tgt + self.decoder_flops_per_step(src_len)
    }

    /// Forward FLOPs of the encoder per source position (attention keys included).
    pub fn encoder_flops_per_source_token(&self) -> f64 {
        let (e, h, a) = (
            self.embedding_dim as f64,
            self.hidden_size as f64,
            self.attention_size as f64,
        );
        let lstm = |input: f64| 2.0 * 4.0 * h * (input + h);
        let mut enc = 2.0 * lstm(e) + lstm(2.0 * h);
        enc += (self.encoder_layers as f64 - 2.0) * lstm(h);
        enc + 2.0 * h * a // attention key projection, once per source token
    }

    /// Forward FLOPs of one decoder step of one row attending over `src_len` positions.
    pub fn decoder_flops_per_step(&self, src_len: f64) -> f64 {
        let (e, h, a, v) = (
            self.embedding_dim as f64,
            self.hidden_size as f64,
            self.attention_size as f64,
            self.vocab_size as f64,
        );
        let lstm = |input: f64| 2.0 * 4.0 * h * (input + h);
        let bottom_in = match self.attention_query {
            AttentionQuery::Current => e,
            AttentionQuery::Previous => e + h,
        };
        let mut dec = lstm(bottom_in) + (self.decoder_layers as f64 - 1.0) * lstm(2.0 * h);
        // query projection; per source position: add + tanh'd dot with v; context weighted sum
        dec += 2.0 * h * a + src_len * (3.0 * a + 2.0 * h);
        dec + 2.0 * h * v // output projection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_validate() {
        for name in ModelConfig::preset_names() {
            ModelConfig::preset(name).unwrap();
        }
        assert_eq!(
            ModelConfig::preset("gnmt-8x1024").unwrap().encoder_layers,
            8
        );
        let err = ModelConfig::preset("huge").unwrap_err();
        assert!(
            err.contains("unknown preset \"huge\"") && err.contains("small"),
            "{err}"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let cfg = ModelConfig {
            encoder_layers: 1,
            ..ModelConfig::tiny()
        };
        assert_eq!(
            cfg.validate().unwrap_err(),
            "encoder_layers = 1 is outside 2..=64"
        );
        let cfg = ModelConfig {
            hidden_size: 1 << 30,
            ..ModelConfig::tiny()
        };
        assert!(cfg.validate().unwrap_err().starts_with("hidden_size"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<ModelConfig>(
            r#"{"vocab_size":8,"embedding_dim":2,"hidden_size":2,"encoder_layers":2,"decoder_layers":1,
                "attention_size":2,"hiden_size":3}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `hiden_size`"), "{err}");
    }

    #[test]
    fn residual_layers_follow_the_paper() {
        let cfg = ModelConfig {
            encoder_layers: 8,
            decoder_layers: 8,
            ..ModelConfig::tiny()
        };
        assert_eq!(
            (1..=8)
                .filter(|&l| cfg.encoder_residual(l))
                .collect::<Vec<_>>(),
            vec![3, 4, 5, 6, 7, 8]
        );
        assert_eq!(
            (1..=8)
                .filter(|&l| cfg.decoder_residual(l))
                .collect::<Vec<_>>(),
            vec![3, 4, 5, 6, 7, 8]
        );
        let from2 = ModelConfig {
            residual_from_layer: 2,
            ..cfg.clone()
        };
        assert!(!from2.encoder_residual(2) && from2.decoder_residual(2));
        let off = ModelConfig {
            residual: false,
            ..cfg
        };
        assert!((1..=8).all(|l| !off.encoder_residual(l) && !off.decoder_residual(l)));
    }
}
