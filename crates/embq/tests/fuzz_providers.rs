//! Property-based fuzzing of everything a remote provider parses: the OpenAI and Gemini
//! response bodies, the base64 vector decoder, the rate-limit headers (`retry-after` in
//! seconds, milliseconds and HTTP dates, `x-ratelimit-*` with `6m0s`-style durations) and
//! the error triage. Zero panics on arbitrary bytes and on JSON of the real shape with
//! wrong types, missing fields, wrong lengths and huge numbers; well-formed answers
//! round-trip exactly, in `index` order; a wrong dimension count is an error, never a
//! truncation. proptest keeps any failing input in
//! `tests/fuzz_providers.proptest-regressions` and replays it first on every run; the
//! bugs it found are also pinned by the named tests at the end of this file.

use std::time::Duration;

use base64::Engine;
use embq::provider::message::Secrets;
use embq::provider::remote::triage;
use embq::provider::signals::{parse_go_duration, parse_retry_after, parse_signals, RateSignals};
use embq::provider::{gemini, openai, Embedded, ProviderError};
use proptest::prelude::*;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

/// The longest wait any parsed header or body may ask for.
const DAY: Duration = Duration::from_secs(86_400);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

// ---- strategies ----

/// A JSON number as text, including ones JSON or f32 cannot hold.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f32>().prop_map(|f| format!("{f:?}")), // NaN and inf print as invalid JSON tokens
        (-1e3f32..1e3).prop_map(|f| format!("{f}")),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|u| u.to_string()),
        prop::sample::select(vec![
            "0",
            "-0",
            "-1",
            "1.5",
            "1e39",
            "-1e39",
            "1e400",
            "-1e400",
            "3.4028235e38",
            "3.4028236e38",
            "1e-46",
            "18446744073709551616",
            "NaN",
            "Infinity",
            "-Infinity",
            "1e",
            "--1",
            "0x10",
        ])
        .prop_map(str::to_string),
    ]
}

/// A JSON string literal as text: base64 of any length, invalid base64, or anything.
fn string_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| b64(&b)),
        prop::sample::select(vec!["", "@@@", "AAA", "AAAA=", "AA==AA==", "====", "AAAAAAA", "\u{e9}t\u{e9}"])
            .prop_map(str::to_string),
        ".{0,20}",
    ]
    .prop_map(|s| serde_json::to_string(&s).unwrap_or_default())
}

/// Any JSON scalar as text (and a few tokens that are not JSON).
fn scalar_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => number_text(),
        3 => string_text(),
        1 => prop::sample::select(vec!["null", "true", "false", "nul", "\"unterminated", "{", "]"])
            .prop_map(str::to_string),
    ]
}

/// Keys of both providers' bodies, and some others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "data", "index", "embedding", "usage", "prompt_tokens", "total_tokens", "object", "model",
            "embeddings", "values", "error",
        ])
        .prop_map(str::to_string),
        1 => "[a-z_]{1,8}",
    ]
}

/// Arbitrary JSON-ish text, nested a few levels, built from the real keys.
fn any_json_text() -> impl Strategy<Value = String> {
    scalar_text().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((key(), inner), 0..6).prop_map(|kv| {
                let fields: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// Deep nesting, far past serde_json's recursion limit.
fn deep_text() -> impl Strategy<Value = String> {
    (1usize..3000, prop::sample::select(vec!["[", "{\"data\":", "{\"embeddings\":[{\"values\":"]))
        .prop_map(|(n, open)| open.repeat(n))
}

/// An object with some of `fields` (each `(key, value text)`), in any order, maybe with extras.
fn object_of(fields: Vec<BoxedStrategy<(String, String)>>) -> impl Strategy<Value = String> {
    let optional: Vec<BoxedStrategy<Option<(String, String)>>> =
        fields.into_iter().map(|f| prop::option::weighted(0.85, f).boxed()).collect();
    (optional, prop::collection::vec((key(), any_json_text()), 0..2))
        .prop_flat_map(|(fields, extra)| {
            let all: Vec<(String, String)> = fields.into_iter().flatten().chain(extra).collect();
            Just(all).prop_shuffle()
        })
        .prop_map(|fields| {
            let body: Vec<String> = fields.into_iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            format!("{{{}}}", body.join(","))
        })
}

fn field(name: &'static str, value: impl Strategy<Value = String> + 'static) -> BoxedStrategy<(String, String)> {
    value.prop_map(move |v| (name.to_string(), v)).boxed()
}

/// An array of `len` values of `item`.
fn array_of(item: impl Strategy<Value = String>, len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(item, len).prop_map(|v| format!("[{}]", v.join(",")))
}

/// A vector as OpenAI may send it, of about `dims` values: floats, base64, or junk.
fn openai_embedding_text(dims: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => array_of(number_text(), dims.saturating_sub(1)..dims + 2),
        3 => prop::collection::vec(any::<u8>(), (4 * dims).saturating_sub(5)..4 * dims + 6)
            .prop_map(|b| format!("{:?}", b64(&b))),
        1 => array_of(number_text(), 0..3 * dims + 1),
        1 => string_text(),
        1 => any_json_text(),
    ]
}

/// An OpenAI embeddings body of the real shape, with any field wrong or missing.
fn openai_body_text(inputs: usize, dims: usize) -> impl Strategy<Value = String> {
    let index = prop_oneof![
        4 => (0..inputs + 2).prop_map(|i| i.to_string()),
        1 => number_text(),
        1 => any_json_text(),
    ];
    let item = object_of(vec![
        field("index", index),
        field("embedding", openai_embedding_text(dims)),
        field("object", Just("\"embedding\"".to_string())),
    ]);
    let data = prop_oneof![
        5 => array_of(item, inputs.saturating_sub(1)..inputs + 2),
        1 => any_json_text(),
    ];
    let tokens = || prop_oneof![3 => (0u64..1_000_000).prop_map(|t| t.to_string()), 1 => scalar_text()];
    let usage = prop_oneof![
        4 => object_of(vec![field("prompt_tokens", tokens()), field("total_tokens", tokens())]),
        1 => any_json_text(),
    ];
    object_of(vec![
        field("data", data),
        field("usage", usage),
        field("object", Just("\"list\"".to_string())),
        field("model", string_text()),
    ])
}

/// A Gemini `batchEmbedContents` body of the real shape, with any field wrong or missing.
fn gemini_body_text(inputs: usize, dims: usize) -> impl Strategy<Value = String> {
    let values = prop_oneof![
        4 => array_of(number_text(), dims.saturating_sub(1)..dims + 2),
        1 => any_json_text(),
    ];
    let item = object_of(vec![field("values", values)]);
    let embeddings = prop_oneof![
        5 => array_of(item, inputs.saturating_sub(1)..inputs + 2),
        1 => any_json_text(),
    ];
    object_of(vec![field("embeddings", embeddings)])
}

/// Finite f32 values of every magnitude: subnormal, huge, signed zero.
fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -10.0f32..10.0,
        2 => any::<f32>().prop_filter("finite", |f| f.is_finite()),
        1 => prop::sample::select(vec![0.0, -0.0, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-45, -1e-45, 1e30, 1e-30]),
    ]
}

/// `inputs` vectors of `dims` finite values.
fn vectors(max_inputs: usize, max_dims: usize) -> impl Strategy<Value = Vec<Vec<f32>>> {
    (1..=max_inputs, 1..=max_dims)
        .prop_flat_map(|(n, d)| prop::collection::vec(prop::collection::vec(finite_f32(), d), n))
}

// ---- checks ----

// The shapes of accepted bodies, to count what each item held (other fields may hold
// anything, even numbers out of range, and are skipped as the parsers skip them).
#[derive(serde::Deserialize)]
struct OpenAiShape {
    data: Vec<OpenAiItem>,
}

#[derive(serde::Deserialize)]
struct OpenAiItem {
    embedding: LenOrBase64,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum LenOrBase64 {
    Len(Vec<serde::de::IgnoredAny>),
    Base64(String),
}

#[derive(serde::Deserialize)]
struct GeminiShape {
    embeddings: Vec<GeminiItem>,
}

#[derive(serde::Deserialize)]
struct GeminiItem {
    values: Vec<serde::de::IgnoredAny>,
}

/// What every parser promises when it accepts a body.
fn check_accepted(r: &Result<Embedded, ProviderError>, inputs: usize, dims: usize) -> Result<(), TestCaseError> {
    match r {
        Ok(e) => {
            prop_assert_eq!(e.vectors.len(), inputs);
            for v in &e.vectors {
                prop_assert_eq!(v.len(), dims, "a vector of the wrong length was accepted");
                prop_assert!(v.iter().all(|x| x.is_finite()), "a non-finite value was accepted: {:?}", v);
            }
        }
        Err(e) => {
            prop_assert!(matches!(e, ProviderError::InvalidResponse(_)), "parsers only say invalid_response: {e:?}")
        }
    }
    Ok(())
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter().map(|v| v.iter().map(|x| x.to_bits()).collect()).collect()
}

/// An OpenAI body for `vectors`, listed in `order`, each as base64 (`true`) or floats.
fn openai_body(
    vectors: &[Vec<f32>],
    order: &[usize],
    base64: &[bool],
    usage: Option<(Option<u64>, Option<u64>)>,
) -> String {
    let data: Vec<Value> = order
        .iter()
        .map(|&i| {
            let e = if base64[i] { json!(b64(&embq::vector::to_le_bytes(&vectors[i]))) } else { json!(vectors[i]) };
            json!({"object": "embedding", "index": i, "embedding": e})
        })
        .collect();
    let mut body = json!({"object": "list", "data": data, "model": "text-embedding-3-small"});
    if let Some((p, t)) = usage {
        body["usage"] = json!({"prompt_tokens": p, "total_tokens": t});
    }
    body.to_string()
}

fn gemini_body(vectors: &[Vec<f32>]) -> String {
    let e: Vec<Value> = vectors.iter().map(|v| json!({"values": v})).collect();
    json!({ "embeddings": e }).to_string()
}

/// Euclidean length in f64 (no overflow for any f32).
fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
}

/// Cuts a string at a char boundary at or before `at`.
fn prefix(s: &str, at: usize) -> &str {
    let mut end = at.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---- header strategies ----

fn header_value_text() -> impl Strategy<Value = String> {
    let date = (0i64..4_000_000_000, -86_400i64 * 400..86_400 * 400).prop_map(|(abs, rel)| {
        let pick = if abs % 2 == 0 { abs } else { chrono::Utc::now().timestamp() + rel };
        chrono::DateTime::from_timestamp(pick, 0).map(|d| d.to_rfc2822()).unwrap_or_default()
    });
    prop_oneof![
        number_text(),
        date,
        go_duration().prop_map(|(s, _)| s),
        "[0-9.hmsuµn]{0,12}",
        prop::sample::select(vec![
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Mon, 01 Jan 0001 00:00:00 GMT",
            "Sun, 06 Nov 1994 08:49:37 +2359",
            "6m0s",
            "1h2m3.5s",
            "0.5s",
            "120ms",
            "9999999999999999999h",
            "1e308s",
            ".s",
            "1..2s",
            "µs",
            "1µs",
            " 1 ",
        ])
        .prop_map(str::to_string),
        ".{0,24}",
    ]
}

/// A `6m0s`-style duration and its value in seconds.
fn go_duration() -> impl Strategy<Value = (String, f64)> {
    let part = (
        0u32..100_000,
        prop::option::of(0u32..1000),
        prop::sample::select(vec!["h", "m", "s", "ms", "us", "µs", "ns"]),
    );
    prop::collection::vec(part, 1..4).prop_map(|parts| {
        let mut text = String::new();
        let mut secs = 0.0;
        for (whole, frac, unit) in parts {
            let n = match frac {
                Some(f) => format!("{whole}.{f:03}"),
                None => whole.to_string(),
            };
            let scale = match unit {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 1e-3,
                "us" | "µs" => 1e-6,
                _ => 1e-9,
            };
            secs += n.parse::<f64>().unwrap_or(0.0) * scale;
            text.push_str(&n);
            text.push_str(unit);
        }
        (text, secs)
    })
}

const SIGNAL_HEADERS: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
];

fn header_map(pairs: &[(usize, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        let name = HeaderName::from_static(SIGNAL_HEADERS[name % SIGNAL_HEADERS.len()]);
        // Only values the HTTP client could hand over: anything HeaderValue accepts.
        if let Ok(v) = HeaderValue::from_bytes(value) {
            h.append(name, v);
        }
    }
    h
}

/// Up to eight rate-limit headers with any value the HTTP client could hand over.
fn header_pairs() -> impl Strategy<Value = Vec<(usize, Vec<u8>)>> {
    let value =
        prop_oneof![header_value_text().prop_map(String::into_bytes), prop::collection::vec(any::<u8>(), 0..20)];
    prop::collection::vec((any::<usize>(), value), 0..8)
}

fn check_signals(s: &RateSignals) -> Result<(), TestCaseError> {
    for d in [s.retry_after, s.reset_requests, s.reset_tokens].into_iter().flatten() {
        prop_assert!(d <= DAY, "a header asked for a wait of {d:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    // ---- the base64 vector decoder ----

    #[test]
    fn base64_vectors_decode_or_refuse(s in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| b64(&b)),
        "[A-Za-z0-9+/=]{0,40}",
        ".{0,40}",
    ]) {
        match openai::decode_base64_vector(&s) {
            Ok(v) => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).unwrap();
                prop_assert_eq!(bytes.len() % 4, 0);
                prop_assert_eq!(embq::vector::to_le_bytes(&v), bytes);
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn base64_vectors_round_trip_bit_for_bit(v in prop::collection::vec(any::<f32>(), 0..64)) {
        let got = openai::decode_base64_vector(&b64(&embq::vector::to_le_bytes(&v))).unwrap();
        prop_assert_eq!(bits(&[got]), bits(&[v]));
    }

    #[test]
    fn base64_of_a_partial_f32_is_refused(v in prop::collection::vec(any::<u8>(), 0..64).prop_filter("not whole f32s", |b| b.len() % 4 != 0)) {
        let e = openai::decode_base64_vector(&b64(&v)).unwrap_err();
        prop_assert!(e.contains("not a whole number of f32"), "{}", e);
    }

    // ---- OpenAI ----

    #[test]
    fn openai_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400), inputs in 0usize..4, dims in 0usize..6) {
        let text = String::from_utf8_lossy(&bytes);
        check_accepted(&openai::parse_response(&text, inputs, dims), inputs, dims)?;
    }

    #[test]
    fn openai_survives_json_of_the_real_shape((inputs, dims, body) in (1usize..4, 1usize..5)
        .prop_flat_map(|(n, d)| (Just(n), Just(d), openai_body_text(n, d)))) {
        let r = openai::parse_response(&body, inputs, dims);
        check_accepted(&r, inputs, dims)?;
        // Accepted means every item held exactly `dims` values: nothing was cut or padded.
        if r.is_ok() {
            let shape: OpenAiShape = serde_json::from_str(&body).unwrap();
            for item in shape.data {
                let n = match item.embedding {
                    LenOrBase64::Len(a) => a.len(),
                    LenOrBase64::Base64(s) => base64::engine::general_purpose::STANDARD.decode(s).unwrap().len() / 4,
                };
                prop_assert_eq!(n, dims);
            }
        }
    }

    #[test]
    fn openai_survives_any_json_and_deep_nesting(body in prop_oneof![any_json_text(), deep_text()], inputs in 0usize..3, dims in 0usize..4) {
        check_accepted(&openai::parse_response(&body, inputs, dims), inputs, dims)?;
    }

    #[test]
    fn openai_round_trips_in_index_order(
        (vs, order, base64) in vectors(6, 12).prop_flat_map(|vs| {
            let n = vs.len();
            (Just(vs), Just((0..n).collect::<Vec<_>>()).prop_shuffle(), prop::collection::vec(any::<bool>(), n))
        }),
        usage in prop::option::of((prop::option::of(0u64..1 << 40), prop::option::of(0u64..1 << 40))),
    ) {
        let (inputs, dims) = (vs.len(), vs[0].len());
        let body = openai_body(&vs, &order, &base64, usage);
        let e = openai::parse_response(&body, inputs, dims).unwrap();
        prop_assert_eq!(bits(&e.vectors), bits(&vs));
        prop_assert_eq!(e.tokens, usage.and_then(|(p, t)| p.or(t)));
    }

    #[test]
    fn openai_refuses_wrong_dimensions_and_counts(
        (vs, base64, victim, delta) in vectors(5, 8).prop_flat_map(|vs| {
            let n = vs.len();
            (Just(vs), prop::collection::vec(any::<bool>(), n), 0..n, prop_oneof![-8isize..0, 1isize..8])
        }),
        drop_one in any::<bool>(),
    ) {
        let (inputs, dims) = (vs.len(), vs[0].len());
        let order: Vec<usize> = (0..inputs).collect();
        let mut bad = vs.clone();
        let wrong = (dims as isize + delta).max(0) as usize;
        bad[victim].resize(wrong, 0.5);
        let (body, want) = if drop_one && inputs > 1 {
            (openai_body(&vs[..inputs - 1], &order[..inputs - 1], &base64, None), "vectors")
        } else {
            (openai_body(&bad, &order, &base64, None), "dimensions")
        };
        match openai::parse_response(&body, inputs, dims) {
            Err(ProviderError::InvalidResponse(m)) => prop_assert!(m.contains(want), "{}", m),
            other => prop_assert!(false, "accepted a wrong answer: {:?}", other),
        }
    }

    #[test]
    fn openai_refuses_every_truncated_body(vs in vectors(3, 6), cut in any::<prop::sample::Index>(), base64 in any::<bool>()) {
        let (inputs, dims) = (vs.len(), vs[0].len());
        let order: Vec<usize> = (0..inputs).collect();
        let body = openai_body(&vs, &order, &vec![base64; inputs], Some((Some(3), None)));
        let cut = prefix(&body, cut.index(body.len()));
        let r = openai::parse_response(cut, inputs, dims);
        prop_assert!(matches!(r, Err(ProviderError::InvalidResponse(_))), "a cut body was accepted: {cut}");
    }

    // ---- Gemini ----

    #[test]
    fn gemini_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400), inputs in 0usize..4, dims in 0usize..6) {
        let text = String::from_utf8_lossy(&bytes);
        check_accepted(&gemini::parse_response(&text, inputs, dims), inputs, dims)?;
    }

    #[test]
    fn gemini_survives_json_of_the_real_shape((inputs, dims, body) in (1usize..4, 1usize..5)
        .prop_flat_map(|(n, d)| (Just(n), Just(d), gemini_body_text(n, d)))) {
        let r = gemini::parse_response(&body, inputs, dims);
        check_accepted(&r, inputs, dims)?;
        if r.is_ok() {
            let shape: GeminiShape = serde_json::from_str(&body).unwrap();
            for item in shape.embeddings {
                prop_assert_eq!(item.values.len(), dims);
            }
        }
    }

    #[test]
    fn gemini_survives_any_json_and_deep_nesting(body in prop_oneof![any_json_text(), deep_text()], inputs in 0usize..3, dims in 0usize..4) {
        check_accepted(&gemini::parse_response(&body, inputs, dims), inputs, dims)?;
    }

    #[test]
    fn gemini_round_trips_as_unit_vectors_in_order(vs in vectors(6, 12)) {
        let (inputs, dims) = (vs.len(), vs[0].len());
        let e = gemini::parse_response(&gemini_body(&vs), inputs, dims).unwrap();
        prop_assert_eq!(e.tokens, None);
        for (got, sent) in e.vectors.iter().zip(&vs) {
            let n = norm(sent);
            if n == 0.0 {
                prop_assert_eq!(got, sent);
                continue;
            }
            // The same direction, at unit length.
            prop_assert!((norm(got) - 1.0).abs() < 1e-4, "|{:?}| = {} (sent {:?})", got, norm(got), sent);
            for (g, s) in got.iter().zip(sent) {
                prop_assert!((f64::from(*g) - f64::from(*s) / n).abs() < 1e-5, "{:?} is not {:?} normalised", got, sent);
            }
        }
    }

    #[test]
    fn gemini_refuses_wrong_dimensions_and_counts(
        (vs, victim, delta) in vectors(5, 8).prop_flat_map(|vs| {
            let n = vs.len();
            (Just(vs), 0..n, prop_oneof![-8isize..0, 1isize..8])
        }),
        drop_one in any::<bool>(),
    ) {
        let (inputs, dims) = (vs.len(), vs[0].len());
        let mut bad = vs.clone();
        bad[victim].resize((dims as isize + delta).max(0) as usize, 0.5);
        let (body, want) =
            if drop_one { (gemini_body(&vs[..inputs - 1]), "vectors") } else { (gemini_body(&bad), "dimensions") };
        match gemini::parse_response(&body, inputs, dims) {
            Err(ProviderError::InvalidResponse(m)) => prop_assert!(m.contains(want), "{}", m),
            other => prop_assert!(false, "accepted a wrong answer: {:?}", other),
        }
    }

    // ---- headers ----

    #[test]
    fn rate_limit_headers_never_panic(pairs in header_pairs()) {
        let _ = parse_signals(&header_map(&pairs));
    }

    #[test]
    fn rate_limit_headers_never_ask_for_more_than_a_day(pairs in header_pairs()) {
        check_signals(&parse_signals(&header_map(&pairs)))?;
    }

    #[test]
    fn retry_after_never_panics_and_never_asks_for_more_than_a_day(v in header_value_text()) {
        if let Some(d) = parse_retry_after(&v) {
            prop_assert!(d <= DAY, "{v:?} -> {d:?}");
        }
        if let Some(d) = parse_go_duration(&v) {
            prop_assert!(d <= DAY, "{v:?} -> {d:?}");
        }
    }

    #[test]
    fn retry_after_seconds_are_read_exactly(secs in 0u32..86_400, ms in 0u32..1000) {
        prop_assert_eq!(parse_retry_after(&secs.to_string()), Some(Duration::from_secs(secs.into())));
        let h = header_map(&[(1, format!("{secs}{ms:03}").into_bytes())]);
        let want = Duration::from_millis(u64::from(secs) * 1000 + u64::from(ms));
        prop_assert!(parse_signals(&h).retry_after.is_some_and(|d| d.abs_diff(want) < Duration::from_micros(1)));
    }

    #[test]
    fn retry_after_dates_are_read_relative_to_now(ahead in 2i64..80_000) {
        let at = chrono::Utc::now() + chrono::Duration::seconds(ahead);
        let d = parse_retry_after(&at.to_rfc2822()).unwrap();
        prop_assert!(d.as_secs() as i64 <= ahead && d.as_secs() as i64 >= ahead - 2, "{ahead} -> {d:?}");
        let past = chrono::Utc::now() - chrono::Duration::seconds(ahead);
        prop_assert_eq!(parse_retry_after(&past.to_rfc2822()), Some(Duration::ZERO));
    }

    #[test]
    fn go_durations_are_summed((text, secs) in go_duration()) {
        let got = parse_go_duration(&text).expect("a well-formed duration parses");
        prop_assert!((got.as_secs_f64() - secs.min(86_400.0)).abs() < 1e-6 * secs.max(1.0), "{text}: {got:?} != {secs}");
    }

    // ---- error triage ----

    #[test]
    fn triage_never_panics(
        status in prop_oneof![any::<u16>(), prop::sample::select(vec![400u16, 401, 403, 404, 408, 413, 422, 424, 429, 500, 503])],
        body in prop_oneof![
            any_json_text(),
            ".{0,400}",
            (key(), any_json_text(), any_json_text()).prop_map(|(k, a, b)| format!("{{\"error\":{{{k:?}:{a},\"details\":[{b}]}}}}")),
        ],
        inputs in 0usize..5,
        secret in prop::option::of(".{0,12}"),
    ) {
        let e = triage(status, &body, &RateSignals::default(), inputs, &Secrets::new(secret.as_deref()));
        if let ProviderError::RateLimited { retry_after: Some(d) } = e {
            prop_assert!(d <= DAY);
        }
    }

    #[test]
    fn triage_never_shows_the_key(
        before in "[a-z ]{0,400}",
        after in "[a-z ]{0,40}",
        key in "sk-[A-Za-z0-9]{20,40}",
        status in prop::sample::select(vec![400u16, 401, 403, 404, 500]),
        flat in any::<bool>(),
    ) {
        let message = format!("{before}{key}{after}");
        let body = if flat { json!({"error": message}) } else { json!({"error": {"message": message, "type": "x"}}) };
        let e = triage(status, &body.to_string(), &RateSignals::default(), 1, &Secrets::new(Some(&key))).to_string();
        // Not the key, and not enough of it to matter: clipping must not cut it in two first.
        prop_assert!(!e.contains(&key[..12]), "{e}");
    }
}

// ---- named regressions: the inputs the properties above caught ----

/// `retry-after-ms: 1e39` (found by `rate_limit_headers_never_panic`) overflowed
/// `Duration::from_secs_f64` and panicked the batch task.
#[test]
fn regression_huge_retry_after_ms_does_not_panic() {
    for v in ["1e39", "1e300", "18446744073709551616000", "1.7976931348623157e308"] {
        let s = parse_signals(&header_map(&[(1, v.as_bytes().to_vec())]));
        assert_eq!(s.retry_after, Some(DAY), "{v}");
    }
}

/// An HTTP date years ahead asked the worker to hold its jobs for years; capped like the
/// seconds form.
#[test]
fn regression_far_future_retry_after_date_is_capped() {
    assert_eq!(parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT"), Some(DAY));
}

/// An echoed key that straddled the 300-character clip was shown in part, unredacted.
#[test]
fn regression_key_straddling_the_clip_is_redacted() {
    let key = "sk-ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let body = json!({"error": {"message": format!("{}{key}", "a".repeat(290))}}).to_string();
    let e = triage(401, &body, &RateSignals::default(), 1, &Secrets::new(Some(key))).to_string();
    assert!(!e.contains("sk-ABCDEFG"), "{e}");
}

/// Gemini vectors whose squares overflow (or underflow) f32 came back all zeros (or not
/// normalised) instead of as unit vectors.
#[test]
fn regression_gemini_normalises_huge_and_tiny_vectors() {
    let e = gemini::parse_response(&gemini_body(&[vec![1e30, 1e30], vec![1e-30, 0.0]]), 2, 2).unwrap();
    let h = std::f32::consts::FRAC_1_SQRT_2;
    assert!((e.vectors[0][0] - h).abs() < 1e-6 && (e.vectors[0][1] - h).abs() < 1e-6, "{:?}", e.vectors);
    assert_eq!(e.vectors[1], vec![1.0, 0.0]);
}
