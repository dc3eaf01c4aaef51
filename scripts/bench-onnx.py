#!/usr/bin/env python3
"""all-MiniLM-L6-v2 on ONNX Runtime, measured the way `embq model bench` measures candle.

Why this exists: issue 7 sets the bar for the local provider at "ONNX Runtime on the same CPU",
but the model embq fetches carries safetensors weights only, and the usual export to ONNX needs
PyTorch. This script writes the ONNX graph itself, from the BERT maths, with the `onnx` package's
helper API: word + position + token-type-0 embeddings, LayerNorm, six encoder layers (12-head
self-attention with an additive padding mask, erf GELU feed-forward, post-LayerNorm residuals),
attention-masked mean pooling and L2 normalisation. Inputs are input_ids and attention_mask
(int64, [batch, seq]); the output is `embedding` [batch, 384]. The node patterns are those of a
PyTorch export (GELU as x * (1 + erf(x / sqrt 2)) * 0.5, scores divided by sqrt(head_dim)), so
ONNX Runtime's own graph optimiser fuses them (BiasGelu, FusedMatMul). It fuses no Attention and,
the sequence length being dynamic, no SkipLayerNormalization; no offline transformer optimiser runs.

Before timing anything it checks the graph against the independent NumPy forward pass in
crates/embq/tests/fixtures/minilm/reference.json (token ids identical, cosine >= 0.9999 per
sentence, once one sentence at a time and once as one padded batch) and exits non-zero if it
does not match.

Then it times the texts `embq model bench --texts N` times (N short receipt lines of 18 tokens,
N/4 long texts of 219 tokens) at batch sizes 1, 8 and 32, tokenising inside the timed loop with
the model's tokenizer.json (padding to the longest in the batch, truncation at 256 tokens, as
embq does), on the CPU provider with ORT_ENABLE_ALL and 2 intra-op threads, and prints the same
table: texts per second and the process's peak RSS per measurement (VmHWM after clear_refs).

Usage: scripts/bench-onnx.py [MODEL_DIR] [--texts N] [--rounds R] [--threads T] [--onnx PATH] [--int8 tensor|channel]
       scripts/bench-onnx.py [MODEL_DIR] --write-only [--onnx PATH]
--write-only writes the graph (checked against the reference when the repository's fixture is
there) and stops: `embq model export-onnx` runs this script that way for embq's ONNX Runtime
backend, which reads MODEL_DIR/model.onnx.
MODEL_DIR defaults to ~/.cache/embq/models/all-MiniLM-L6-v2 (`embq model fetch`). The graph is
written to ~/.cache/embq/onnx/all-MiniLM-L6-v2.onnx unless --onnx says otherwise; nothing is
written inside the repository. Needs numpy, onnx, onnxruntime, safetensors and tokenizers (pip).
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "crates/embq/tests/fixtures/minilm/reference.json"
DEFAULT_MODEL_DIR = Path.home() / ".cache/embq/models/all-MiniLM-L6-v2"
DEFAULT_ONNX = Path.home() / ".cache/embq/onnx/all-MiniLM-L6-v2.onnx"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length, special tokens included
MIN_COSINE = 0.9999
OPSET = 17  # LayerNormalization is a standard op from 17 on


def read_weights(path):
    """float32 tensors of a .safetensors file by name (other dtypes are buffers, skipped)."""
    return {name: t for name, t in load_file(str(path)).items() if t.dtype == np.float32}


class Graph:
    """Collects nodes and initializers; every op returns the name of its (single) output."""

    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint, array):
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def linear(self, x, weight, bias, hint):
        """x @ weight.T + bias, with weight stored [out, in] as in PyTorch."""
        w = self.const(hint + "_w", weight.T.astype(np.float32))
        b = self.const(hint + "_b", bias.astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, w]), b], hint)

    def layer_norm(self, x, weight, bias, eps):
        w, b = self.const("ln_w", weight), self.const("ln_b", bias)
        return self.op("LayerNormalization", [x, w, b], "ln", axis=-1, epsilon=eps)


def build_graph(weights, config):
    """The ONNX model of the sentence-transformers pipeline (encoder, mean pooling, L2 norm)."""
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""

    def w(name):
        return weights[prefix + name]

    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(config["layer_norm_eps"])
    if config.get("hidden_act", "gelu") != "gelu":
        raise SystemExit(f"unsupported hidden_act {config['hidden_act']!r}")

    g = Graph()
    ids, mask = "input_ids", "attention_mask"
    one = g.const("one", np.array(1.0, np.float32))

    # Embeddings. token_type_ids are all 0: row 0 of the token-type table is folded into the
    # position table, which is sliced to the sequence length.
    positions = (w("embeddings.position_embeddings.weight")
                 + w("embeddings.token_type_embeddings.weight")[0]).astype(np.float32)
    seq_len = g.op("Slice", [g.op("Shape", [ids]), g.const("i1", np.array([1])), g.const("i2", np.array([2]))])
    pos = g.op("Slice", [g.const("positions", positions), g.const("i0", np.array([0])), seq_len,
                         g.const("axis0", np.array([0]))])
    words = g.op("Gather", [g.const("word_embeddings", w("embeddings.word_embeddings.weight")), ids], axis=0)
    x = g.layer_norm(g.op("Add", [words, pos]), w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"),
                     eps)

    # Additive attention mask [batch, 1, 1, seq]: 0 for real tokens, -10000 for padding.
    mask_f = g.op("Cast", [mask], "mask_f", to=TensorProto.FLOAT)
    not_real = g.op("Sub", [one, mask_f])
    bias = g.op("Mul", [not_real, g.const("neg", np.array(-10000.0, np.float32))])
    bias = g.op("Unsqueeze", [bias, g.const("axes12", np.array([1, 2]))], "mask_bias")

    split_heads = g.const("split_heads", np.array([0, 0, heads, head_dim]))
    merge_heads = g.const("merge_heads", np.array([0, 0, hidden]))
    sqrt_d = g.const("sqrt_d", np.array(math.sqrt(head_dim), np.float32))
    sqrt2 = g.const("sqrt2", np.array(math.sqrt(2.0), np.float32))
    half = g.const("half", np.array(0.5, np.float32))
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{i}."

        def lin(v, name, hint):
            return g.linear(v, w(layer + name + ".weight"), w(layer + name + ".bias"), hint)

        def heads_of(v, perm):
            return g.op("Transpose", [g.op("Reshape", [v, split_heads])], perm=perm)

        q = heads_of(lin(x, "attention.self.query", f"l{i}_q"), [0, 2, 1, 3])  # [b, h, s, d]
        k = heads_of(lin(x, "attention.self.key", f"l{i}_k"), [0, 2, 3, 1])  # [b, h, d, s]
        v = heads_of(lin(x, "attention.self.value", f"l{i}_v"), [0, 2, 1, 3])  # [b, h, s, d]
        scores = g.op("Add", [g.op("Div", [g.op("MatMul", [q, k]), sqrt_d]), bias])
        probs = g.op("Softmax", [scores], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, merge_heads])
        attn = g.op("Add", [lin(ctx, "attention.output.dense", f"l{i}_o"), x])
        x = g.layer_norm(attn, w(layer + "attention.output.LayerNorm.weight"),
                         w(layer + "attention.output.LayerNorm.bias"), eps)
        h = lin(x, "intermediate.dense", f"l{i}_ff1")
        erf = g.op("Erf", [g.op("Div", [h, sqrt2])])
        h = g.op("Mul", [g.op("Mul", [h, g.op("Add", [erf, one])]), half], "gelu")
        out = g.op("Add", [lin(h, "output.dense", f"l{i}_ff2"), x])
        x = g.layer_norm(out, w(layer + "output.LayerNorm.weight"), w(layer + "output.LayerNorm.bias"), eps)

    # Mean over real tokens, then L2 normalisation (eps as torch's F.normalize).
    axis1 = g.const("axis1", np.array([1]))
    weights3 = g.op("Unsqueeze", [mask_f, g.const("axis2", np.array([2]))])
    summed = g.op("ReduceSum", [g.op("Mul", [x, weights3]), axis1], keepdims=0)
    counts = g.op("ReduceSum", [mask_f, axis1], keepdims=1)
    counts = g.op("Max", [counts, g.const("tiny", np.array(1e-9, np.float32))])
    mean = g.op("Div", [summed, counts])
    norm = g.op("Max", [g.op("ReduceL2", [mean], axes=[1], keepdims=1), g.const("eps", np.array(1e-12, np.float32))])
    g.nodes.append(helper.make_node("Div", [mean, norm], ["embedding"]))

    graph = helper.make_graph(
        g.nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="embq scripts/bench-onnx.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class Tokens:
    """The model's tokenizer.json, padding and truncation off, as embq's LocalTokens."""

    def __init__(self, path):
        self.tok = Tokenizer.from_file(str(path))
        self.tok.no_padding()
        self.tok.no_truncation()

    def model_ids(self, text):
        ids = self.tok.encode(text).ids
        if len(ids) <= MAX_TOKENS:
            return ids
        return ids[:MAX_TOKENS - 1] + ids[-1:]  # [CLS] + 254 word pieces + [SEP]

    def batch(self, texts):
        """input_ids and attention_mask padded with 0 to the longest in the batch."""
        seqs = [self.model_ids(t) for t in texts]
        width = max(1, max(len(s) for s in seqs))
        ids = np.zeros((len(seqs), width), np.int64)
        mask = np.zeros((len(seqs), width), np.int64)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = s
            mask[i, :len(s)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def session(path, threads):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_reference(sess, tokens, strict=True):
    """Fails loudly unless ids and vectors match the NumPy reference. Returns the min cosine.
    strict=False only reports it (for the int8 experiment, which is expected to miss the bar)."""
    ref = json.loads(REFERENCE.read_text(encoding="utf-8"))["sentences"]
    texts = [s["text"] for s in ref]
    for s in ref:
        got = tokens.model_ids(s["text"])
        if got != s["ids"]:
            raise SystemExit(f"FAIL: token ids differ for {s['text']!r}: {got} vs {s['ids']}")
    one_by_one = np.concatenate([sess.run(None, tokens.batch([t]))[0] for t in texts])
    padded = sess.run(None, tokens.batch(texts))[0]
    want = np.array([s["vector"] for s in ref], np.float64)
    worst = 1.0
    for label, got in (("one at a time", one_by_one), ("one padded batch", padded)):
        got = got.astype(np.float64)
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        for text, c in zip(texts, cos):
            if strict and not c >= MIN_COSINE:
                raise SystemExit(f"FAIL ({label}): cosine {c:.6f} < {MIN_COSINE} for {text!r}")
        worst = min(worst, float(cos.min()))
    return worst


def reset_peak_rss():
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def bench_texts(n):
    """The texts `embq model bench --texts N` uses (crates/embq/src/cli/model.rs)."""
    short = [f"Coffee and a bagel at Blue Bottle, receipt {i}, $4.50" for i in range(n)]
    line = "Hotel invoice for three nights with breakfast, city tax charged separately at checkout, "
    long = [f"{i} {line * 12}" for i in range(max(n // 4, 1))]
    return [("short", short), ("long", long)]


def bench(sess, tokens, n):
    """One table: rows of (label, tokens per text, batch, texts/s, peak RSS MiB or None)."""
    rows = []
    for label, texts in bench_texts(n):
        per_text = len(tokens.model_ids(texts[0]))
        for batch in (1, 8, 32):
            reset_peak_rss()
            started = time.perf_counter()
            for i in range(0, len(texts), batch):
                sess.run(None, tokens.batch(texts[i:i + batch]))
            rate = len(texts) / (time.perf_counter() - started)
            rows.append((label, per_text, batch, rate, peak_rss_mib()))
    return rows


def print_table(rows, title=None):
    if title:
        print(title)
    print("| texts | tokens/text | batch | texts/s | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for label, per_text, batch, rate, peak in rows:
        peak = "?" if peak is None else f"{peak:.0f}"
        print(f"| {label} | {per_text} | {batch} | {rate:.1f} | {peak} |")
    sys.stdout.flush()


def write_graph(model_dir, path):
    """Builds the graph from MODEL_DIR and saves it (weights are freed on return, not measured)."""
    config = json.loads((model_dir / "config.json").read_text())
    model = build_graph(read_weights(model_dir / "model.safetensors"), config)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def quantized(path, per_channel):
    """The graph with int8 weights (dynamic quantisation of every MatMul), beside the original."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    out = path.with_suffix(".int8-channel.onnx" if per_channel else ".int8.onnx")
    quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, per_channel=per_channel)
    return out


def print_library():
    """The ONNX Runtime library inside the wheel, as the line embq's ORT_DYLIB_PATH wants."""
    capi = Path(ort.__file__).parent / "capi"
    libs = sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime*.dylib"))
    libs += sorted(capi.glob("onnxruntime.dll"))
    if libs:
        print(f"ORT_DYLIB_PATH={libs[0]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("model_dir", nargs="?", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--texts", type=int, default=128, help="short texts (long: a quarter), as embq")
    ap.add_argument("--rounds", type=int, default=1, help="tables to measure; >1 also prints medians")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--onnx", type=Path, default=DEFAULT_ONNX, help="where to write the graph")
    ap.add_argument("--write-only", action="store_true", help="write (and check) the graph, time nothing")
    ap.add_argument("--int8", choices=["tensor", "channel"],
                    help="time an int8 copy of the graph instead (per-tensor or per-channel scales) "
                         "and report its min cosine against the reference, which it may miss")
    args = ap.parse_args()
    if args.texts < 1 or args.rounds < 1:
        ap.error("--texts and --rounds must be at least 1")

    write_graph(args.model_dir, args.onnx)
    tokens = Tokens(args.model_dir / "tokenizer.json")
    sess = session(args.onnx, args.threads)
    if args.write_only and not REFERENCE.is_file():
        print(f"wrote {args.onnx} (onnxruntime {ort.__version__} loads it)")
        print_library()
        return
    worst = check_reference(sess, tokens)
    print(f"ONNX graph {args.onnx} matches {REFERENCE.name}: min cosine {worst:.9f} "
          f"(onnxruntime {ort.__version__}, {args.threads} intra-op threads, ORT_ENABLE_ALL)")
    if args.write_only:
        print_library()
        return
    if args.int8:
        path = quantized(args.onnx, args.int8 == "channel")
        sess = session(path, args.threads)
        worst = check_reference(sess, tokens, strict=False)
        verdict = "meets" if worst >= MIN_COSINE else "MISSES"
        print(f"int8 ({args.int8} scales) {path}: min cosine {worst:.6f}, {verdict} the {MIN_COSINE} bar")
    sys.stdout.flush()

    tables = []
    for r in range(args.rounds):
        tables.append(bench(sess, tokens, args.texts))
        print_table(tables[-1], f"\nround {r + 1}" if args.rounds > 1 else None)
    if args.rounds > 1:
        medians = [row[:3] + (statistics.median(t[i][3] for t in tables), None)
                   for i, row in enumerate(tables[0])]
        print_table(medians, "\nmedian texts/s")


if __name__ == "__main__":
    main()
