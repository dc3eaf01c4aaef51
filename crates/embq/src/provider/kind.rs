//! Which embedding provider the worker calls, by the name settings and metrics use.

use serde::Serialize;

/// Which embedding provider the worker calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI's public API.
    Openai,
    /// Google Gemini.
    Gemini,
    /// Any server speaking the OpenAI wire format (TEI, Ollama, vLLM, Infinity).
    OpenaiCompatible,
    /// all-MiniLM-L6-v2 in-process.
    Local,
    /// Deterministic vectors derived from a hash of the text, for development and tests.
    Hash,
}

impl ProviderKind {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" => Ok(Self::Openai),
            "gemini" => Ok(Self::Gemini),
            "openai-compatible" | "openai_compatible" => Ok(Self::OpenaiCompatible),
            "local" => Ok(Self::Local),
            "hash" => Ok(Self::Hash),
            _ => Err("must be one of openai, gemini, openai-compatible, local, hash".into()),
        }
    }
    /// The name used in config, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Gemini => "gemini",
            Self::OpenaiCompatible => "openai-compatible",
            Self::Local => "local",
            Self::Hash => "hash",
        }
    }
}
