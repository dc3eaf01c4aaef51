//! all-MiniLM-L6-v2 on ONNX Runtime through the `ort` crate, loading `libonnxruntime.so` at
//! run time (`load-dynamic`). The graph (`model.onnx`, written from the same safetensors
//! weights by `embq model export-onnx`) takes `input_ids` and `attention_mask` and returns
//! the mean-pooled, L2-normalised `embedding`; tokenisation stays in Rust.

use std::ffi::CStr;
use std::path::Path;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

use super::local_backend::OnnxPlaces;

/// The oldest ONNX Runtime whose C API ort 2.0.0-rc.10 was written against (1.22).
const MIN_MINOR: u32 = 22;

/// A loaded ONNX Runtime session for the local model.
pub struct OnnxModel {
    session: Session,
    version: String,
}

impl OnnxModel {
    /// Opens the library and the graph; every failure is an error naming the file, never a panic.
    pub fn load(places: &OnnxPlaces) -> Result<Self, String> {
        let version = library_version(&places.dylib)?;
        if !places.graph.is_file() {
            return Err(format!(
                "no ONNX graph at {} (write it with `embq model export-onnx`)",
                places.graph.display()
            ));
        }
        // ort keeps the first path it is given for the life of the process.
        let _ = ort::init_from(places.dylib.display().to_string()).with_name("embq").commit();
        let threads = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        let e = |what: &str| {
            let what = what.to_string();
            move |err: ort::Error| format!("ONNX Runtime {what}: {err}")
        };
        let session = Session::builder()
            .map_err(e("session"))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(e("options"))?
            .with_intra_threads(threads)
            .map_err(e("options"))?
            .with_inter_threads(1)
            .map_err(e("options"))?
            .commit_from_file(&places.graph)
            .map_err(e(&format!("cannot load {}", places.graph.display())))?;
        Ok(Self { session, version })
    }

    /// The library's version string, e.g. `1.32.0`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Embeds token id sequences padded to the longest of them (one forward pass).
    pub fn forward(&mut self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, String> {
        let n = ids.len();
        let len = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = vec![0i64; n * len];
        let mut mask = vec![0i64; n * len];
        for (i, seq) in ids.iter().enumerate() {
            for (j, &id) in seq.iter().enumerate() {
                flat[i * len + j] = i64::from(id);
                mask[i * len + j] = 1;
            }
        }
        let e = |err: ort::Error| format!("ONNX Runtime: {err}");
        let shape = [n as i64, len as i64];
        let input_ids = Tensor::from_array((shape, flat)).map_err(e)?;
        let attention_mask = Tensor::from_array((shape, mask)).map_err(e)?;
        let outputs =
            self.session.run(ort::inputs!["input_ids" => input_ids, "attention_mask" => attention_mask]).map_err(e)?;
        let (out_shape, data) = outputs["embedding"].try_extract_tensor::<f32>().map_err(e)?;
        let dims = out_shape.last().copied().unwrap_or(0) as usize;
        if dims == 0 || data.len() != n * dims {
            return Err(format!("ONNX Runtime returned {} values for {n} texts", data.len()));
        }
        Ok(data.chunks(dims).map(<[f32]>::to_vec).collect())
    }
}

/// Opens the library once to read its version, so a missing file or an ONNX Runtime older
/// than ort supports is reported here rather than as a panic inside ort.
fn library_version(path: &Path) -> Result<String, String> {
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    let shown = path.display();
    // SAFETY: loading ONNX Runtime runs only its own initialisers.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("cannot load ONNX Runtime from {shown} (set ORT_DYLIB_PATH): {e}"))?;
    // SAFETY: the symbol's type is the one onnxruntime_c_api.h declares.
    let get: libloading::Symbol<GetApiBase> = unsafe { lib.get(b"OrtGetApiBase\0") }
        .map_err(|e| format!("{shown} is not ONNX Runtime (no OrtGetApiBase): {e}"))?;
    // SAFETY: OrtGetApiBase returns a pointer to a static table, and GetVersionString a static
    // NUL-terminated string.
    let version = unsafe {
        let base = get();
        if base.is_null() {
            return Err(format!("{shown}: OrtGetApiBase returned nothing"));
        }
        CStr::from_ptr(((*base).GetVersionString)()).to_string_lossy().into_owned()
    };
    let minor = version.split('.').nth(1).and_then(|m| m.parse::<u32>().ok()).unwrap_or(0);
    if !version.starts_with("1.") || minor < MIN_MINOR {
        return Err(format!("{shown} is ONNX Runtime {version}; embq needs 1.{MIN_MINOR} or newer"));
    }
    Ok(version)
}
