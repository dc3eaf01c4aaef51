//! The local model on ONNX Runtime (`LOCAL_BACKEND=onnx`) against the same independent NumPy
//! reference as candle (cosine ≥ 0.9999), and the backend choice: `onnx` fails fast without
//! the library, `auto` falls back to candle.
//!
//! The library is ORT_DYLIB_PATH, else the `onnxruntime` wheel's (asked of python3); the
//! graph is written by `embq model export-onnx` when missing. EMBQ_TEST_ONNX says what to do
//! when either cannot be had: `require` (what .ci/run sets once pip installed onnxruntime)
//! fails, anything else prints why the parity tests did not run.
#![cfg(feature = "onnx")]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use embq::provider::local::LocalProvider;
use embq::provider::local_backend::{LocalBackend, ONNX_GRAPH};
use embq::provider::local_files;
use embq::vector::cosine;
use support::minilm::{cache_dir, reference};

/// ORT_DYLIB_PATH, else the library inside python3's onnxruntime package.
fn library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(p));
    }
    let script = "import onnxruntime, pathlib\n\
        capi = pathlib.Path(onnxruntime.__file__).parent / 'capi'\n\
        print(sorted(capi.glob('libonnxruntime.so*'))[0])";
    let out = Command::new("python3").args(["-c", script]).output().map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err("ORT_DYLIB_PATH is unset and python3 has no onnxruntime package".into());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The model on ONNX Runtime, or why it cannot be had here.
fn onnx_model() -> Result<&'static LocalProvider, String> {
    static MODEL: OnceLock<Result<LocalProvider, String>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let cache = cache_dir();
            let lib = library()?;
            let dir = local_files::model_dir(&cache);
            if !dir.join(ONNX_GRAPH).is_file() {
                embq::cli::model_onnx::export(&dir)?;
            }
            LocalProvider::load_with(&cache, 384, LocalBackend::Onnx, Some(&lib))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The model on ONNX Runtime; `None` (said on stderr) when it is unavailable and not required.
fn onnx_or_report(test: &str) -> Option<&'static LocalProvider> {
    match onnx_model() {
        Ok(m) => Some(m),
        Err(why) if std::env::var("EMBQ_TEST_ONNX").as_deref() == Ok("require") => {
            panic!("EMBQ_TEST_ONNX=require but ONNX Runtime is unavailable: {why}")
        }
        Err(why) => {
            eprintln!("NOT RUN {test}: ONNX Runtime unavailable ({why}); EMBQ_TEST_ONNX=require makes this fail");
            None
        }
    }
}

#[test]
fn onnx_vectors_match_the_independent_reference() {
    let Some(model) = onnx_or_report("onnx_vectors_match_the_independent_reference") else { return };
    assert_eq!(model.backend(), "onnx");
    let r = reference();
    let texts: Vec<&str> = r.sentences.iter().map(|s| s.text.as_str()).collect();
    let batch = model.embed_blocking(&texts).unwrap();
    for (i, s) in r.sentences.iter().enumerate() {
        let alone = model.embed_blocking(&[s.text.as_str()]).unwrap().remove(0);
        for (how, v) in [("in a batch", &batch[i]), ("alone", &alone)] {
            assert_eq!(v.len(), 384);
            let c = cosine(v, &s.vector);
            assert!(c >= 0.9999, "{:?} {how}: cosine {c}", s.text);
        }
    }
}

#[test]
fn onnx_and_candle_agree_on_a_batch_of_mixed_lengths() {
    let Some(onnx) = onnx_or_report("onnx_and_candle_agree_on_a_batch_of_mixed_lengths") else { return };
    let candle = LocalProvider::load_with(&cache_dir(), 384, LocalBackend::Candle, None).unwrap();
    assert_eq!(candle.backend(), "candle");
    let long = "Hotel invoice for three nights with breakfast, city tax charged separately. ".repeat(12);
    let mut texts: Vec<String> = (0..20).map(|i| format!("Coffee at Blue Bottle, receipt {i}")).collect();
    texts.insert(7, long);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (a, b) = (onnx.embed_blocking(&refs).unwrap(), candle.embed_blocking(&refs).unwrap());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(cosine(x, y) >= 0.9999, "text {i}: cosine {}", cosine(x, y));
    }
}

#[test]
fn onnx_without_its_library_fails_fast_and_auto_falls_back_to_candle() {
    let cache = cache_dir();
    let missing = Path::new("/nonexistent/libonnxruntime.so.1.32.0");
    let cfg = support::config(&[
        ("EMBEDDING_PROVIDER", "local"),
        ("LOCAL_BACKEND", "onnx"),
        ("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.32.0"),
    ]);
    let Err(err) = cfg.provider().map(|p| p.model().to_string()) else { panic!("LOCAL_BACKEND=onnx started") };
    let err = err.to_string();
    assert!(err.contains("LOCAL_BACKEND=onnx") && err.contains("/nonexistent/libonnxruntime.so"), "{err}");
    let auto = LocalProvider::load_with(&cache, 384, LocalBackend::Auto, Some(missing)).unwrap();
    assert_eq!(auto.backend(), "candle");
    assert_eq!(auto.embed_blocking(&["a cup of coffee"]).unwrap()[0].len(), 384);
}

#[test]
fn a_bad_local_backend_is_refused_naming_the_variable() {
    let raw = embq::config::RawConfig { local_backend: Some("gpu".into()), ..Default::default() };
    let err = raw.validate().unwrap_err().to_string();
    assert!(err.contains("LOCAL_BACKEND"), "{err}");
}
