//! How PostgreSQL stores vectors: the column type chosen for the configured dimensions
//! (pgvector's `vector(N)` / `halfvec(N)`, or `real[]`), and the binary encoding of a batch.

use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo};
use sqlx::Postgres;

/// What `VECTOR_TYPE` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum VectorStorage {
    /// pgvector when it can be used (vector up to 2,000 dimensions, halfvec up to 4,000), else `real[]`.
    #[serde(rename = "auto")]
    Auto,
    /// pgvector's `vector(N)`; migration fails if the extension cannot be used.
    #[serde(rename = "vector")]
    Vector,
    /// pgvector's `halfvec(N)` (2 bytes a value).
    #[serde(rename = "halfvec")]
    Halfvec,
    /// A plain `real[]`, no extension needed (no index, client-side search).
    #[serde(rename = "real[]")]
    RealArray,
}

impl VectorStorage {
    /// Parses `VECTOR_TYPE`.
    pub fn parse(v: &str) -> Result<Self, String> {
        match v.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "vector" => Ok(Self::Vector),
            "halfvec" => Ok(Self::Halfvec),
            "real[]" | "array" => Ok(Self::RealArray),
            _ => Err("must be auto, vector, halfvec or real[]".into()),
        }
    }
}

/// What `VECTOR_INDEX` asks `embq migrate` to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorIndex {
    /// No index (`embq index create` builds one later).
    None,
    /// An HNSW index for cosine distance.
    Hnsw,
}

impl VectorIndex {
    /// Parses `VECTOR_INDEX`.
    pub fn parse(v: &str) -> Result<Self, String> {
        match v.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "hnsw" => Ok(Self::Hnsw),
            _ => Err("must be none or hnsw".into()),
        }
    }
}

/// pgvector's HNSW index covers `vector` up to this many dimensions...
pub const HNSW_MAX_VECTOR_DIMS: usize = 2_000;
/// ...and `halfvec` up to this many.
pub const HNSW_MAX_HALFVEC_DIMS: usize = 4_000;

/// The type of a vector column, as read from the catalog or chosen for a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// `real[]`.
    RealArray,
    /// pgvector `vector`, with its dimensions when typed.
    Vector(Option<usize>),
    /// pgvector `halfvec`, with its dimensions when typed.
    Halfvec(Option<usize>),
}

impl ColumnType {
    /// The declared dimensions, if the type carries them.
    pub fn dims(self) -> Option<usize> {
        match self {
            Self::RealArray => None,
            Self::Vector(d) | Self::Halfvec(d) => d,
        }
    }

    /// Whether this is one of pgvector's types.
    pub fn is_pgvector(self) -> bool {
        !matches!(self, Self::RealArray)
    }

    /// pgvector's name of the element type (`vector`, `halfvec`), if any.
    pub fn pg_name(self) -> Option<&'static str> {
        match self {
            Self::RealArray => None,
            Self::Vector(_) => Some("vector"),
            Self::Halfvec(_) => Some("halfvec"),
        }
    }

    /// The type in SQL, qualified with pgvector's schema (already quoted) where needed.
    pub fn sql(self, schema: &str) -> String {
        match self {
            Self::RealArray => "real[]".into(),
            Self::Vector(Some(n)) => format!("{schema}.vector({n})"),
            Self::Vector(None) => format!("{schema}.vector"),
            Self::Halfvec(Some(n)) => format!("{schema}.halfvec({n})"),
            Self::Halfvec(None) => format!("{schema}.halfvec"),
        }
    }

    /// The operator class of an HNSW cosine index, when pgvector can index this column.
    pub fn hnsw_ops(self) -> Result<&'static str, String> {
        match self {
            Self::Vector(Some(n)) if n <= HNSW_MAX_VECTOR_DIMS => Ok("vector_cosine_ops"),
            Self::Halfvec(Some(n)) if n <= HNSW_MAX_HALFVEC_DIMS => Ok("halfvec_cosine_ops"),
            Self::Vector(Some(n)) => Err(format!(
                "vector({n}) has more than {HNSW_MAX_VECTOR_DIMS} dimensions, pgvector's HNSW limit for vector: \
                 use VECTOR_TYPE=halfvec (up to {HNSW_MAX_HALFVEC_DIMS}) and run `embq migrate`"
            )),
            Self::Halfvec(Some(n)) => {
                Err(format!("halfvec({n}) has more than {HNSW_MAX_HALFVEC_DIMS} dimensions, pgvector's HNSW limit"))
            }
            Self::Vector(None) | Self::Halfvec(None) => {
                Err("the column has no dimensions (pgvector cannot index it): run `embq migrate`".into())
            }
            Self::RealArray => Err("the column is real[]: install pgvector and run `embq migrate`".into()),
        }
    }

    /// Human-readable, for messages.
    pub fn describe(self) -> String {
        self.sql("").trim_start_matches('.').to_string()
    }
}

/// The column type `storage` asks for at `dims` dimensions, and why; `pgvector` says whether the
/// extension can be used (or why not).
pub fn choose(storage: VectorStorage, dims: usize, pgvector: Result<(), &str>) -> Result<(ColumnType, String), String> {
    let need = |t: ColumnType| match pgvector {
        Ok(()) => Ok(t),
        Err(why) => Err(format!(
            "VECTOR_TYPE={} needs pgvector, but {why}",
            if t.pg_name() == Some("halfvec") { "halfvec" } else { "vector" }
        )),
    };
    match storage {
        VectorStorage::RealArray => Ok((ColumnType::RealArray, "VECTOR_TYPE=real[]".into())),
        VectorStorage::Vector => Ok((need(ColumnType::Vector(Some(dims)))?, "VECTOR_TYPE=vector".into())),
        VectorStorage::Halfvec => Ok((need(ColumnType::Halfvec(Some(dims)))?, "VECTOR_TYPE=halfvec".into())),
        VectorStorage::Auto => match pgvector {
            Err(why) => Ok((ColumnType::RealArray, format!("{why}; search scans every vector in the client"))),
            Ok(()) if dims <= HNSW_MAX_VECTOR_DIMS => {
                Ok((ColumnType::Vector(Some(dims)), "pgvector is available".into()))
            }
            Ok(()) if dims <= HNSW_MAX_HALFVEC_DIMS => Ok((
                ColumnType::Halfvec(Some(dims)),
                format!("pgvector indexes vector only up to {HNSW_MAX_VECTOR_DIMS} dimensions; halfvec up to {HNSW_MAX_HALFVEC_DIMS}"),
            )),
            Ok(()) => Ok((
                ColumnType::Vector(Some(dims)),
                format!("above {HNSW_MAX_HALFVEC_DIMS} dimensions pgvector can store but not index"),
            )),
        },
    }
}

/// How a batch's vectors travel to the server: one parameter holding all of them.
#[derive(Clone, Copy, Debug)]
pub enum Encoding {
    /// One flat `real[]` (8 bytes a value on the wire), sliced per job.
    Flat,
    /// A `vector[]` / `halfvec[]` in pgvector's binary format (4 / 2 bytes a value), one element per job.
    Pgvector {
        /// `halfvec` rather than `vector`.
        half: bool,
        /// OID of the element type (the array header names it).
        elem_oid: u32,
        /// OID of the array type.
        array_oid: u32,
    },
}

impl Encoding {
    /// The SQL expression for the `ord`-th (1-based) vector of parameter `param` of `dims` values.
    pub fn element_sql(self, param: &str, cast: &str, ord: &str, dims: &str) -> String {
        match self {
            Self::Flat => format!("({param}::real[])[({ord} - 1) * {dims} + 1 : {ord} * {dims}]"),
            Self::Pgvector { .. } => format!("({param}::{cast}[])[{ord}]"),
        }
    }
}

/// A batch's vectors, encoded in one pass straight from the outcomes.
///
/// sqlx encodes a `Vec<f32>` element by element through its generic array encoder, which was a
/// quarter of a worker's CPU at 1,536 dimensions; this writes the binary array format directly.
pub struct VectorBatch<'a> {
    /// (job id, vector) in the order the statement numbers them.
    pub vectors: &'a [(i64, &'a [f32])],
    /// Values per vector (all share it).
    pub dims: usize,
    /// Wire format.
    pub encoding: Encoding,
}

const FLOAT4_OID: u32 = 700;
const FLOAT4_ARRAY_OID: u32 = 1021;

impl sqlx::Type<Postgres> for VectorBatch<'_> {
    fn type_info() -> PgTypeInfo {
        <Vec<f32> as sqlx::Type<Postgres>>::type_info()
    }
}

impl sqlx::Encode<'_, Postgres> for VectorBatch<'_> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        let bytes = encode(self)?;
        buf.extend_from_slice(&bytes);
        Ok(sqlx::encode::IsNull::No)
    }

    fn produces(&self) -> Option<PgTypeInfo> {
        Some(PgTypeInfo::with_oid(sqlx::postgres::types::Oid(match self.encoding {
            Encoding::Flat => FLOAT4_ARRAY_OID,
            Encoding::Pgvector { array_oid, .. } => array_oid,
        })))
    }

    fn size_hint(&self) -> usize {
        encoded_len(self)
    }
}

fn encoded_len(b: &VectorBatch<'_>) -> usize {
    let n = b.vectors.len();
    match b.encoding {
        Encoding::Flat => 20 + 8 * n * b.dims,
        Encoding::Pgvector { half, .. } => 20 + n * (8 + b.dims * if half { 2 } else { 4 }),
    }
}

/// Binary array format: ndim, has-nulls flag, element type, then length and lower bound of the
/// one dimension, then each element as (byte length, value). A pgvector value is (dims as int16,
/// an unused int16, then each value big-endian: float4 for vector, IEEE half for halfvec).
fn encode(b: &VectorBatch<'_>) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(encoded_len(b));
    let put = |out: &mut Vec<u8>, w: i32| out.extend_from_slice(&w.to_be_bytes());
    let too_many = |what: &str| format!("too many {what} for one statement");
    match b.encoding {
        Encoding::Flat => {
            let len = i32::try_from(b.vectors.len() * b.dims).map_err(|_| too_many("vector values"))?;
            for w in [1, 0, FLOAT4_OID as i32, len, 1] {
                put(&mut out, w);
            }
            for v in b.vectors.iter().flat_map(|(_, v)| v.iter()) {
                // Length 4, then the value: one big-endian u64 per element.
                out.extend_from_slice(&((4u64 << 32) | u64::from(v.to_bits())).to_be_bytes());
            }
        }
        Encoding::Pgvector { half, elem_oid, .. } => {
            let n = i32::try_from(b.vectors.len()).map_err(|_| too_many("vectors"))?;
            let dims = i16::try_from(b.dims).map_err(|_| format!("{} dimensions exceed pgvector's limit", b.dims))?;
            let width = if half { 2 } else { 4 };
            let elem_len = 4 + i32::from(dims) * width;
            for w in [1, 0, elem_oid as i32, n, 1] {
                put(&mut out, w);
            }
            for (_, v) in b.vectors {
                if v.len() != b.dims {
                    return Err(format!("a vector has {} values, its batch {}", v.len(), b.dims));
                }
                put(&mut out, elem_len);
                out.extend_from_slice(&dims.to_be_bytes());
                out.extend_from_slice(&0i16.to_be_bytes());
                if half {
                    for x in v.iter() {
                        out.extend_from_slice(&half::f16::from_f32(*x).to_bits().to_be_bytes());
                    }
                } else {
                    for x in v.iter() {
                        out.extend_from_slice(&x.to_bits().to_be_bytes());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// pgvector's text form of one vector (`[1,2,3]`), for a query parameter cast in SQL.
pub fn text_literal(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 10 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

/// Quotes an SQL identifier (names are checked against the catalog before they get here).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_the_type_pgvector_can_index() {
        let ok: Result<(), &str> = Ok(());
        let t = |dims| choose(VectorStorage::Auto, dims, ok).unwrap().0;
        assert_eq!(t(384), ColumnType::Vector(Some(384)));
        assert_eq!(t(2000), ColumnType::Vector(Some(2000)));
        assert_eq!(t(3072), ColumnType::Halfvec(Some(3072)));
        assert_eq!(t(4001), ColumnType::Vector(Some(4001)));
        let (t, why) = choose(VectorStorage::Auto, 1536, Err("pgvector is not installed on this server")).unwrap();
        assert_eq!(t, ColumnType::RealArray);
        assert!(why.contains("not installed"), "{why}");
    }

    #[test]
    fn an_explicit_pgvector_type_without_pgvector_is_an_error_naming_the_setting() {
        let e = choose(VectorStorage::Vector, 8, Err("role app may not create it")).unwrap_err();
        assert!(e.contains("VECTOR_TYPE=vector") && e.contains("role app"), "{e}");
        assert_eq!(choose(VectorStorage::RealArray, 8, Ok(())).unwrap().0, ColumnType::RealArray);
        assert_eq!(choose(VectorStorage::Halfvec, 8, Ok(())).unwrap().0, ColumnType::Halfvec(Some(8)));
    }

    #[test]
    fn hnsw_needs_typed_dimensions_within_pgvector_limits() {
        assert_eq!(ColumnType::Vector(Some(1536)).hnsw_ops(), Ok("vector_cosine_ops"));
        assert_eq!(ColumnType::Halfvec(Some(3072)).hnsw_ops(), Ok("halfvec_cosine_ops"));
        assert!(ColumnType::Vector(Some(3072)).hnsw_ops().unwrap_err().contains("VECTOR_TYPE=halfvec"));
        assert!(ColumnType::Vector(None).hnsw_ops().is_err());
        assert!(ColumnType::RealArray.hnsw_ops().is_err());
    }

    #[test]
    fn pgvector_binary_is_four_bytes_a_value_and_halfvec_two() {
        let a = [1.0f32, -2.5];
        let b = [0.5f32, 3.0];
        let vs = [(1, &a[..]), (2, &b[..])];
        let enc = |encoding| encode(&VectorBatch { vectors: &vs, dims: 2, encoding }).unwrap();
        let v = enc(Encoding::Pgvector { half: false, elem_oid: 9, array_oid: 10 });
        assert_eq!(v.len(), 20 + 2 * (4 + 4 + 2 * 4));
        assert_eq!(&v[8..12], &9i32.to_be_bytes(), "the element type");
        // First element: length 12, dims 2, unused 0, then 1.0 and -2.5 big-endian.
        assert_eq!(&v[20..24], &12i32.to_be_bytes());
        assert_eq!(&v[24..28], &[0, 2, 0, 0]);
        assert_eq!(&v[28..32], &1.0f32.to_bits().to_be_bytes());
        assert_eq!(&v[32..36], &(-2.5f32).to_bits().to_be_bytes());
        let h = enc(Encoding::Pgvector { half: true, elem_oid: 9, array_oid: 10 });
        assert_eq!(h.len(), 20 + 2 * (4 + 4 + 2 * 2));
        assert_eq!(&h[28..30], &half::f16::from_f32(1.0).to_bits().to_be_bytes());
        let f = enc(Encoding::Flat);
        assert_eq!(f.len(), 20 + 8 * 4);
        let odd = [(1, &a[..1])];
        assert!(encode(&VectorBatch {
            vectors: &odd,
            dims: 2,
            encoding: Encoding::Pgvector { half: false, elem_oid: 1, array_oid: 2 }
        })
        .is_err());
    }

    #[test]
    fn identifiers_are_quoted_and_literals_are_pgvector_text() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(text_literal(&[1.0, -0.5]), "[1,-0.5]");
    }
}
