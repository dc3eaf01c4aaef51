//! Which engine runs the local model (`LOCAL_BACKEND`): candle (pure Rust, always built) or
//! ONNX Runtime (cargo feature `onnx`, a `libonnxruntime.so` the user already has and the
//! graph `embq model export-onnx` writes next to the model files).

use std::path::{Path, PathBuf};

/// The graph's file name inside the model's folder (not one of the fetched, hashed files:
/// it is derived from them, and the parity test checks it against the NumPy reference).
pub const ONNX_GRAPH: &str = "model.onnx";

/// What `LOCAL_BACKEND` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum LocalBackend {
    /// ONNX Runtime when the library and the graph are there, candle otherwise.
    #[serde(rename = "auto")]
    Auto,
    /// Always candle.
    #[serde(rename = "candle")]
    Candle,
    /// Always ONNX Runtime; the worker refuses to start without it.
    #[serde(rename = "onnx")]
    Onnx,
}

impl LocalBackend {
    /// Parses `LOCAL_BACKEND`.
    pub fn parse(v: &str) -> Result<Self, String> {
        match v.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "candle" => Ok(Self::Candle),
            "onnx" => Ok(Self::Onnx),
            other => Err(format!("must be auto, candle or onnx, not {other:?}")),
        }
    }
}

/// Where ONNX Runtime and the graph are looked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnnxPlaces {
    /// `libonnxruntime.so*`: `ORT_DYLIB_PATH` (ort's own variable), else the loader's search path.
    pub dylib: PathBuf,
    /// The exported graph.
    pub graph: PathBuf,
}

impl OnnxPlaces {
    /// The places for a model folder and an optional `ORT_DYLIB_PATH`.
    pub fn new(model_dir: &Path, ort_dylib: Option<&Path>) -> Self {
        Self {
            dylib: ort_dylib.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(default_dylib_name())),
            graph: model_dir.join(ONNX_GRAPH),
        }
    }
}

fn default_dylib_name() -> &'static str {
    if cfg!(target_os = "macos") {
        "libonnxruntime.dylib"
    } else if cfg!(windows) {
        "onnxruntime.dll"
    } else {
        "libonnxruntime.so"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_choices_and_names_a_bad_one() {
        assert_eq!(LocalBackend::parse("ONNX").unwrap(), LocalBackend::Onnx);
        assert_eq!(LocalBackend::parse("candle").unwrap(), LocalBackend::Candle);
        assert_eq!(LocalBackend::parse("auto").unwrap(), LocalBackend::Auto);
        assert!(LocalBackend::parse("cuda").unwrap_err().contains("auto, candle or onnx"));
    }

    #[test]
    fn the_library_comes_from_ort_dylib_path_when_set() {
        let dir = Path::new("/m/all-MiniLM-L6-v2");
        let p = OnnxPlaces::new(dir, Some(Path::new("/x/libonnxruntime.so.1.32.0")));
        assert_eq!(p.dylib, Path::new("/x/libonnxruntime.so.1.32.0"));
        assert_eq!(p.graph, dir.join("model.onnx"));
        assert_eq!(OnnxPlaces::new(dir, None).dylib, Path::new(default_dylib_name()));
    }
}
