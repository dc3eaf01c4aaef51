//! `embq model export-onnx`: writes the local model as an ONNX graph (`model.onnx` beside the
//! fetched weights) for `LOCAL_BACKEND=onnx`. The graph is built from the safetensors weights
//! by `scripts/bench-onnx.py` (compiled into the binary, so an installed embq needs no
//! checkout), which also checks it under ONNX Runtime before embq ever loads it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::provider::local_backend::ONNX_GRAPH;
use crate::provider::local_files;

const SCRIPT: &str = include_str!("../../../../scripts/bench-onnx.py");

/// Writes `dir/model.onnx`; returns its path and the library the script's onnxruntime uses.
pub fn export(dir: &Path) -> Result<(PathBuf, Option<String>), String> {
    local_files::check_present(dir)?;
    let scratch = tempfile::tempdir().map_err(|e| format!("cannot create a scratch folder: {e}"))?;
    let script = scratch.path().join("bench-onnx.py");
    std::fs::write(&script, SCRIPT).map_err(|e| format!("cannot write {}: {e}", script.display()))?;
    // Written aside and renamed, so an interrupted export never leaves half a graph in place.
    let partial = dir.join(format!(".{ONNX_GRAPH}.{}", std::process::id()));
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir)
        .arg("--write-only")
        .arg("--onnx")
        .arg(&partial)
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&partial);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("ModuleNotFoundError") {
            "\n(pip install numpy onnx onnxruntime safetensors tokenizers)"
        } else {
            ""
        };
        let tail: Vec<&str> = stderr.lines().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(format!("writing the ONNX graph failed:\n{}{hint}", tail.join("\n")));
    }
    let graph = dir.join(ONNX_GRAPH);
    std::fs::rename(&partial, &graph).map_err(|e| format!("cannot move the graph to {}: {e}", graph.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dylib = stdout.lines().find_map(|l| l.strip_prefix("ORT_DYLIB_PATH=")).map(str::to_string);
    Ok((graph, dylib))
}
