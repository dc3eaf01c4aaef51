//! Vector encoding and the checks every vector passes before it is stored.

/// Encodes a vector as little-endian f32 bytes (SQLite blobs, OpenAI base64).
pub fn to_le_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Decodes little-endian f32 bytes; the length must be a multiple of four.
pub fn from_le_bytes(b: &[u8]) -> Result<Vec<f32>, String> {
    if b.len() % 4 != 0 {
        return Err(format!("{} bytes is not a whole number of f32 values", b.len()));
    }
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Checks a provider's answer: one vector per input, each of `dims` finite values.
pub fn validate(vectors: &[Vec<f32>], expected: usize, dims: usize) -> Result<(), String> {
    if vectors.len() != expected {
        return Err(format!("expected {expected} vectors, got {}", vectors.len()));
    }
    for (i, v) in vectors.iter().enumerate() {
        if v.len() != dims {
            return Err(format!("vector {i} has {} dimensions, expected {dims}", v.len()));
        }
        // Branch-free first pass (it vectorises); look for the position only on failure.
        if !v.iter().fold(true, |ok, x| ok & x.is_finite()) {
            let j = v.iter().position(|x| !x.is_finite()).unwrap_or_default();
            return Err(format!("vector {i} has a non-finite value at position {j}"));
        }
    }
    Ok(())
}

/// Scales a vector to unit length (left as is when it is all zeros or not finite).
pub fn l2_normalize(v: &mut [f32]) {
    // Eight running sums instead of one, so the loop vectorises.
    let mut lanes = [0.0f32; 8];
    let mut chunks = v.chunks_exact(8);
    for c in chunks.by_ref() {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += x * x;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|x| x * x).sum();
    let squares = lanes.iter().sum::<f32>() + tail;
    if squares.is_normal() {
        let norm = squares.sqrt();
        for x in v {
            *x /= norm;
        }
        return;
    }
    // The squares overflowed or underflowed f32 (values beyond ~1e19 or below ~1e-19):
    // normalise in f64, which holds the square of any f32.
    let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
    if norm.is_finite() && norm > 0.0 {
        for x in v {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

/// Cosine similarity of two vectors of equal length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_bytes_round_trip() {
        let v = vec![0.0, -1.5, f32::MIN_POSITIVE, 3.25e10];
        assert_eq!(from_le_bytes(&to_le_bytes(&v)).unwrap(), v);
        assert_eq!(to_le_bytes(&[1.0])[..], [0, 0, 0x80, 0x3f]);
        assert!(from_le_bytes(&[1, 2, 3]).is_err());
    }

    #[test]
    fn validation_rejects_wrong_count_dimension_and_non_finite() {
        let ok = vec![vec![0.1, 0.2], vec![0.3, 0.4]];
        assert!(validate(&ok, 2, 2).is_ok());
        assert!(validate(&ok, 3, 2).unwrap_err().contains("expected 3 vectors"));
        assert!(validate(&ok, 2, 3).unwrap_err().contains("2 dimensions, expected 3"));
        assert!(validate(&[vec![0.1, f32::NAN]], 1, 2).unwrap_err().contains("non-finite"));
        assert!(validate(&[vec![f32::INFINITY, 0.0]], 1, 2).is_err());
    }

    #[test]
    fn normalised_vectors_have_unit_length_and_cosine_one_with_themselves() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!((cosine(&v, &v) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &v), 0.0);
    }
}
