#!/usr/bin/python3
"""Tiny random Hugging Face checkpoints, with reference logits, for tests/hf-models.test.ts.

Writes tests/fixtures/hf/<name>/ for GPT-2 and Llama, each in four variants: a single F32
`model.safetensors`, the same weights sharded in two files with `model.safetensors.index.json`,
and single-file F16 and BF16 copies. Every folder holds HF's `config.json` and a `reference.json`:
logits of fixed token sequences and greedy generations, computed by the plain-PyTorch
implementations below (written here from modeling_gpt2.py / modeling_llama.py's semantics, not
imported: `transformers` is not installed, and an independent implementation is the point).

The F16 and BF16 references are computed in float64 from the rounded weights, so a loader that
converts them exactly matches them as tightly as the F32 one.

Run with Debian's torch (python3-torch): /usr/bin/python3 scripts/hf-fixtures.py
Needs no network; the output is deterministic (seeded) and small (a few hundred KiB).

Also writes tests/fixtures/hf/gpt2-lora-peft/ and llama-randlora-peft/: PEFT LoRA and RandLoRA
adapter folders for the GPT-2 and Llama fixtures and the logits of their merges, computed here
(tests/export.test.ts).
"""
import json
import math
import os
import re
import struct
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hf")

# Token sequences the references are computed for: two of length 8 (one batch, B = 2, T = 8).
SEQUENCES = [[1, 7, 12, 3, 50, 9, 33, 2], [60, 5, 5, 18, 27, 40, 11, 0]]
# Greedy generation: this prompt, then NEW_TOKENS tokens, each the argmax of the last logits.
PROMPT = [3, 14, 15, 9]
NEW_TOKENS = 8

GPT2_CONFIG = {
    "architectures": ["GPT2LMHeadModel"],
    "model_type": "gpt2",
    "activation_function": "gelu_new",
    "vocab_size": 64,
    "n_positions": 32,
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
    "n_inner": 64,
    "layer_norm_epsilon": 1e-5,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "scale_attn_weights": True,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "torch_dtype": "float32",
}

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-6,
    "rope_theta": 500.0,
    "rope_scaling": None,
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}

# Qwen2ForCausalLM (Qwen2.5-0.5B's shape of config: tied head, rope_theta 1e6, biases on q, k, v
# but not o) and MistralForCausalLM with a sliding window shorter than the sequences.
QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_act": "silu",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "max_window_layers": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "sliding_window": 64,
    "use_sliding_window": False,
    "tie_word_embeddings": True,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}

MISTRAL_CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_act": "silu",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": 3,
    "tie_word_embeddings": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}

# A head_dim other than hidden_size / num_attention_heads (12, not 8), as Qwen3 and Gemma have:
# q_proj is [heads · head_dim, hidden], o_proj [hidden, heads · head_dim].
LLAMA_HEAD_DIM_CONFIG = {**LLAMA_CONFIG, "head_dim": 12}

# A hand-written Llama config.json with only the fields LlamaConfig has no default for: what the
# reference computes with is LlamaConfig's defaults (configuration_llama.py): no
# num_key_value_heads is multi-head attention, rms_norm_eps 1e-6, rope_theta 10000, no rope
# scaling, an untied head, silu.
LLAMA_MINIMAL_FILE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 64,
}
LLAMA_MINIMAL_CONFIG = {
    **LLAMA_MINIMAL_FILE,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}

# Llama 3's rope scaling, with wavelengths on all three sides of its two thresholds (head_dim 8,
# theta 500: wavelengths 6.3, 29.8, 140 and 664 against 32 / 4 = 8 and 32 / 1 = 32).
LLAMA3_CONFIG = {
    **LLAMA_CONFIG,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
}


# ----------------------------------------------------------------------------------------------
# Weights, named and laid out as Hugging Face saves them.


def gpt2_weights(c, g):
    """GPT2LMHeadModel's state dict: Conv1D weights are [in, out]; lm_head is tied (not saved)."""
    d, inner, P = c["n_embd"], c["n_inner"] or 4 * c["n_embd"], c["n_positions"]
    w = {}
    rnd = lambda *shape, std=0.3: torch.randn(*shape, generator=g) * std
    # Rows of one norm, so that no token wins every greedy step through the tied head.
    wte = rnd(c["vocab_size"], d)
    w["transformer.wte.weight"] = wte / wte.norm(dim=1, keepdim=True) * 2
    w["transformer.wpe.weight"] = rnd(P, d, std=0.5)
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        w[p + "ln_1.weight"] = 1 + rnd(d, std=0.1)
        w[p + "ln_1.bias"] = rnd(d, std=0.1)
        # The causal mask buffers older checkpoints carry; the model does not use them.
        w[p + "attn.bias"] = torch.tril(torch.ones(P, P)).view(1, 1, P, P)
        w[p + "attn.masked_bias"] = torch.tensor(-1e4)
        w[p + "attn.c_attn.weight"] = rnd(d, 3 * d, std=1 / math.sqrt(d))
        w[p + "attn.c_attn.bias"] = rnd(3 * d, std=0.1)
        w[p + "attn.c_proj.weight"] = rnd(d, d, std=1 / math.sqrt(d))
        w[p + "attn.c_proj.bias"] = rnd(d, std=0.1)
        w[p + "ln_2.weight"] = 1 + rnd(d, std=0.1)
        w[p + "ln_2.bias"] = rnd(d, std=0.1)
        # Pre-activations of a few units, where gelu_new and the exact GELU differ by ~1e-3.
        w[p + "mlp.c_fc.weight"] = rnd(d, inner, std=2.5 / math.sqrt(d))
        w[p + "mlp.c_fc.bias"] = rnd(inner, std=0.5)
        w[p + "mlp.c_proj.weight"] = rnd(inner, d, std=1 / math.sqrt(inner))
        w[p + "mlp.c_proj.bias"] = rnd(d, std=0.1)
    w["transformer.ln_f.weight"] = 1 + rnd(d, std=0.1)
    w["transformer.ln_f.bias"] = rnd(d, std=0.1)
    return w


def llama_weights(c, g):
    """LlamaForCausalLM's state dict: nn.Linear weights are [out, in]; lm_head is its own."""
    H, I = c["hidden_size"], c["intermediate_size"]
    heads, kv = c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or H // heads
    w = {}
    rnd = lambda *shape, std=0.3: torch.randn(*shape, generator=g) * std
    w["model.embed_tokens.weight"] = rnd(c["vocab_size"], H, std=0.5)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rnd(heads * hd, H, std=1 / math.sqrt(H))
        w[p + "self_attn.k_proj.weight"] = rnd(kv * hd, H, std=1 / math.sqrt(H))
        w[p + "self_attn.v_proj.weight"] = rnd(kv * hd, H, std=1 / math.sqrt(H))
        w[p + "self_attn.o_proj.weight"] = rnd(H, heads * hd, std=1 / math.sqrt(H))
        w[p + "mlp.gate_proj.weight"] = rnd(I, H, std=1 / math.sqrt(H))
        w[p + "mlp.up_proj.weight"] = rnd(I, H, std=1 / math.sqrt(H))
        w[p + "mlp.down_proj.weight"] = rnd(H, I, std=1 / math.sqrt(I))
        w[p + "input_layernorm.weight"] = 1 + rnd(H, std=0.1)
        w[p + "post_attention_layernorm.weight"] = 1 + rnd(H, std=0.1)
    w["model.norm.weight"] = 1 + rnd(H, std=0.1)
    if not c["tie_word_embeddings"]:
        w["lm_head.weight"] = rnd(c["vocab_size"], H, std=1 / math.sqrt(H))
    if c["model_type"] == "qwen2":  # Qwen2Attention: bias on q, k and v, none on o
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}.self_attn."
            w[p + "q_proj.bias"] = rnd(heads * hd, std=0.3)
            w[p + "k_proj.bias"] = rnd(kv * hd, std=0.3)
            w[p + "v_proj.bias"] = rnd(kv * hd, std=0.3)
    return w


# ----------------------------------------------------------------------------------------------
# The two architectures in plain PyTorch (float64 for the references), as HF computes them.


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased, as torch.nn.LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu_new(x):
    """GPT-2's activation: the tanh approximation of GELU."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def conv1d(x, weight, bias):
    """HF's Conv1D: y = x W + b with W stored [in, out]."""
    return x @ weight + bias


def gpt2_logits(c, w, ids):
    B, T = ids.shape
    d, heads = c["n_embd"], c["n_head"]
    hd = d // heads
    eps = c["layer_norm_epsilon"]
    h = w["transformer.wte.weight"][ids] + w["transformer.wpe.weight"][torch.arange(T)]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        x = layer_norm(h, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        qkv = conv1d(x, w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"])
        q, k, v = qkv.split(d, dim=2)
        split = lambda t: t.view(B, T, heads, hd).transpose(1, 2)
        q, k, v = split(q), split(k), split(v)
        s = q @ k.transpose(-1, -2) / math.sqrt(hd)
        s = torch.where(causal, s, torch.tensor(torch.finfo(s.dtype).min, dtype=s.dtype))
        a = torch.softmax(s, dim=-1) @ v
        a = a.transpose(1, 2).reshape(B, T, d)
        h = h + conv1d(a, w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"])
        x = layer_norm(h, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        x = gelu_new(conv1d(x, w[p + "mlp.c_fc.weight"], w[p + "mlp.c_fc.bias"]))
        h = h + conv1d(x, w[p + "mlp.c_proj.weight"], w[p + "mlp.c_proj.bias"])
    h = layer_norm(h, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], eps)
    return h @ w["transformer.wte.weight"].T  # the tied head


def rms_norm(x, weight, eps):
    """LlamaRMSNorm: in float32 (here float64), x / sqrt(mean(x²) + eps), then the weight."""
    var = (x * x).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(T, hd, theta, dtype, scaling=None):
    """cos and sin [T, hd] of LlamaRotaryEmbedding: the frequencies repeated twice. `scaling` is
    config.json's rope_scaling: None (default), "linear", or "llama3" as
    modeling_rope_utils._compute_llama3_parameters computes it."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).to(dtype) / hd))
    # transformers reads the older key "type" as "rope_type"
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        factor, old = scaling["factor"], scaling["original_max_position_embeddings"]
        low_ff, high_ff = scaling["low_freq_factor"], scaling["high_freq_factor"]
        low_wavelen, high_wavelen = old / low_ff, old / high_ff
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low_ff) / (high_ff - low_ff)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    freqs = torch.arange(T, dtype=dtype)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def llama_logits(c, w, ids):
    """Llama, and Qwen2 and Mistral, which differ from it only in what the weights and the config
    hold: biases on q, k, v (Qwen2), a sliding window (Mistral: query i sees keys j with
    i - window < j <= i, transformers' masking_utils), a tied head."""
    B, T = ids.shape
    H, heads, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or H // heads
    eps = c["rms_norm_eps"]
    cos, sin = rotary(T, hd, c["rope_theta"], w["model.norm.weight"].dtype, c.get("rope_scaling"))
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    if c["model_type"] == "mistral" and c.get("sliding_window"):
        causal = causal & ~torch.tril(torch.ones(T, T, dtype=torch.bool), -c["sliding_window"])
    h = w["model.embed_tokens.weight"][ids]
    proj = lambda x, name: x @ w[name + ".weight"].T + w.get(name + ".bias", 0)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = proj(x, p + "self_attn.q_proj").view(B, T, heads, hd).transpose(1, 2)
        k = proj(x, p + "self_attn.k_proj").view(B, T, kv, hd).transpose(1, 2)
        v = proj(x, p + "self_attn.v_proj").view(B, T, kv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # repeat_kv: key/value head j serves query heads j * groups ... (j + 1) * groups - 1
        groups = heads // kv
        k = k[:, :, None].expand(B, kv, groups, T, hd).reshape(B, heads, T, hd)
        v = v[:, :, None].expand(B, kv, groups, T, hd).reshape(B, heads, T, hd)
        s = q @ k.transpose(-1, -2) / math.sqrt(hd)
        s = torch.where(causal, s, torch.tensor(torch.finfo(s.dtype).min, dtype=s.dtype))
        a = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, T, heads * hd)
        h = h + a @ w[p + "self_attn.o_proj.weight"].T
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        gate = x @ w[p + "mlp.gate_proj.weight"].T
        up = x @ w[p + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    h = rms_norm(h, w["model.norm.weight"], eps)
    return h @ w["lm_head.weight" if "lm_head.weight" in w else "model.embed_tokens.weight"].T


# ----------------------------------------------------------------------------------------------
# safetensors, written by hand: 8-byte little-endian header length, JSON header, raw data.

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def tensor_bytes(t, dtype):
    t = t.to(DTYPES[dtype]).contiguous()
    if dtype == "BF16":  # numpy has no bfloat16: reinterpret the bits
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write_safetensors(path, tensors, dtype):
    """`dtype`: one for all tensors, or a dict by name."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        kind = dtype[name] if isinstance(dtype, dict) else dtype
        data = tensor_bytes(tensors[name], kind)
        header[name] = {
            "dtype": kind,
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    os.replace(path + ".tmp", path)
    return offset


def write_json(path, value, indent=2):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=indent)
        f.write("\n")
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------


def rounded(weights, dtype):
    """The weights as the file holds them, widened to float64 (what a loader should compute with)."""
    return {k: v.to(DTYPES[dtype]).to(torch.float64) for k, v in weights.items()}


def reference(logits_fn, config, weights):
    logits = logits_fn(config, weights, torch.tensor(SEQUENCES))
    tokens, margins = list(PROMPT), []
    for _ in range(NEW_TOKENS):
        last = logits_fn(config, weights, torch.tensor([tokens]))[0, -1]
        top = torch.topk(last, 2).values
        margins.append(float(top[0] - top[1]))
        tokens.append(int(last.argmax()))
    # A greedy step decided by less than this could flip with f32 rounding: pick another seed.
    if min(margins) < 1e-3:
        sys.exit(f"greedy margin {min(margins):.2e} is too small: change the seed")
    return {
        "sequences": SEQUENCES,
        "logits": [[[float(f"{x:.9g}") for x in row] for row in seq] for seq in logits.tolist()],
        "prompt": PROMPT,
        "greedy": tokens[len(PROMPT):],
        "greedy_margin": float(f"{min(margins):.4g}"),
    }


ALL_VARIANTS = [("", "F32", 1), ("-sharded", "F32", 2), ("-f16", "F16", 1), ("-bf16", "BF16", 1)]


def write_variants(name, config, weights, logits_fn, variants=ALL_VARIANTS, file_config=None):
    """`file_config`: the config.json to write when it leaves out fields that `config` (what the
    reference computes with) fills in with Hugging Face's defaults."""
    for variant, dtype, shards in variants:
        folder = os.path.join(ROOT, name + variant)
        os.makedirs(folder, exist_ok=True)
        for old in os.listdir(folder):
            os.remove(os.path.join(folder, old))
        write_json(os.path.join(folder, "config.json"), {**(file_config or config), "torch_dtype": {
            "F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]})
        if shards == 1:
            write_safetensors(os.path.join(folder, "model.safetensors"), weights, dtype)
        else:
            names = sorted(weights)
            half = len(names) // 2
            weight_map, total = {}, 0
            for i, part in enumerate([names[:half], names[half:]]):
                file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
                total += write_safetensors(
                    os.path.join(folder, file), {k: weights[k] for k in part}, dtype)
                weight_map.update({k: file for k in part})
            write_json(os.path.join(folder, "model.safetensors.index.json"), {
                "metadata": {"total_size": total}, "weight_map": weight_map})
        write_json(os.path.join(folder, "reference.json"),
                   reference(logits_fn, config, rounded(weights, dtype)), indent=None)


# ----------------------------------------------------------------------------------------------
# A PEFT LoRA adapter for the GPT-2 fixture (tests/export.test.ts): what PEFT's save_pretrained
# writes for LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
# on GPT2LMHeadModel, with random (nonzero) A and B, and the logits of the base model with PEFT's
# merge W + (alpha / r) · (B A)^T (transposed: Conv1D stores W as [in, out]).

LORA_R, LORA_ALPHA, LORA_TARGETS = 4, 8, ["attn.c_attn", "mlp.c_fc"]


def write_gpt2_lora(config, weights):
    g = torch.Generator().manual_seed(1313)
    base = rounded(weights, "F32")
    merged, adapter = dict(base), {}
    for i in range(config["n_layer"]):
        for target in LORA_TARGETS:
            path = f"transformer.h.{i}.{target}"
            W = base[path + ".weight"]  # [in, out]
            A = (torch.randn(LORA_R, W.shape[0], generator=g) * 0.3).to(torch.float32)
            B = (torch.randn(W.shape[1], LORA_R, generator=g) * 0.3).to(torch.float32)
            adapter[f"base_model.model.{path}.lora_A.weight"] = A
            adapter[f"base_model.model.{path}.lora_B.weight"] = B
            delta = (B.to(torch.float64) @ A.to(torch.float64)).T * (LORA_ALPHA / LORA_R)
            merged[path + ".weight"] = W + delta
    folder = os.path.join(ROOT, "gpt2-lora-peft")
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, "adapter_model.safetensors"), adapter, "F32")
    write_json(os.path.join(folder, "adapter_config.json"), {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "gpt2",
        "revision": None, "inference_mode": True, "r": LORA_R,
        "target_modules": sorted(t.split(".")[-1] for t in LORA_TARGETS),
        "lora_alpha": LORA_ALPHA, "lora_dropout": 0.0, "fan_in_fan_out": True, "bias": "none",
        "use_rslora": False, "modules_to_save": None, "init_lora_weights": True,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
        "alpha_pattern": {}, "use_dora": False})
    logits = gpt2_logits(config, merged, torch.tensor(SEQUENCES))
    write_json(os.path.join(folder, "reference.json"), {
        "sequences": SEQUENCES,
        "logits": [[[float(f"{x:.9g}") for x in row] for row in seq] for seq in logits.tolist()],
    }, indent=None)


# A PEFT RandLoRA adapter for the Llama fixture (tests/export.test.ts), as PEFT's save_pretrained
# writes RandLoraConfig(r=4, randlora_alpha=8, target_modules=["q_proj", "v_proj"],
# save_projection=True) on LlamaForCausalLM (peft/tuners/randlora): per layer `randlora_lambda`
# [r, N] and `randlora_gamma` [N, min]; one pair of bases for all layers, `base_model.randlora_A`
# [r, 1, min] and `base_model.randlora_B` [max, N, r] for the largest (out, in) over the targets,
# drawn Kaiming-uniform (a = sqrt(5)) in float16 (PEFT's `_kaiming_init` on a CPU) and divided by
# their std. lambda and gamma are random here (trained-looking); the reference logits are the base
# model's with PEFT's merge W + get_delta_weight(), computed below from PEFT's formulas
# (get_scaled_bases: A[:, :N, :min], B[:max, :N, :], lambda[:, :, None] * A * gamma[None]).

RANDLORA_R, RANDLORA_ALPHA, RANDLORA_TARGETS = 4, 8, ["self_attn.q_proj", "self_attn.v_proj"]


def kaiming_uniform_sqrt5(shape, g):
    fan_in = shape[1] * (math.prod(shape[2:]) if len(shape) > 2 else 1)
    bound = 1 / math.sqrt(fan_in)  # gain sqrt(2 / (1 + 5)) * sqrt(3 / fan_in)
    return ((torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound).to(torch.float16)


def write_llama_randlora(config, weights):
    g = torch.Generator().manual_seed(2718)
    base = rounded(weights, "F32")
    shapes = {t: tuple(base[f"model.layers.0.{t}.weight"].shape) for t in RANDLORA_TARGETS}
    out_g = max(s[0] for s in shapes.values())
    in_g = max(s[1] for s in shapes.values())
    r = RANDLORA_R
    min_g, max_g = min(out_g, in_g), max(out_g, in_g)
    n_g = math.ceil(min_g / r)
    A = kaiming_uniform_sqrt5((r, 1, min_g), g)
    B = torch.cat([kaiming_uniform_sqrt5((max_g, 1, r), g) for _ in range(n_g)], dim=1)
    A = (A / A.std()).to(torch.float16)
    B = (B / B.std()).to(torch.float16)
    adapter = {"base_model.randlora_A": A, "base_model.randlora_B": B}
    dtypes = {"base_model.randlora_A": "F16", "base_model.randlora_B": "F16"}
    merged = dict(base)
    for i in range(config["num_hidden_layers"]):
        for target in RANDLORA_TARGETS:
            path = f"model.layers.{i}.{target}"
            W = base[path + ".weight"]  # [out, in]
            out, inp = W.shape
            lo, hi = min(out, inp), max(out, inp)
            n = math.ceil(lo / r)
            lam = (torch.randn(r, n, generator=g) * 0.5).to(torch.float32)
            gamma = (torch.rand(n, lo, generator=g) + 0.5).to(torch.float32)
            adapter[f"base_model.model.{path}.randlora_lambda"] = lam
            adapter[f"base_model.model.{path}.randlora_gamma"] = gamma
            dtypes[f"base_model.model.{path}.randlora_lambda"] = "F32"
            dtypes[f"base_model.model.{path}.randlora_gamma"] = "F32"
            a = A.to(torch.float64)[:, :n, :lo]
            b = B.to(torch.float64)[:hi, :n, :]
            scaled = (lam.to(torch.float64)[:, :, None] * a * gamma.to(torch.float64)[None]).flatten(0, 1)
            b = b.flatten(1)  # [hi, n * r]
            # in <= out: x -> scaled (on in) -> b (to out); else x -> b^T (on in) -> scaled^T
            delta = b @ scaled if inp == lo else (b @ scaled).T
            merged[path + ".weight"] = W + delta * (RANDLORA_ALPHA / r)
    folder = os.path.join(ROOT, "llama-randlora-peft")
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, "adapter_model.safetensors"), adapter, dtypes)
    write_json(os.path.join(folder, "adapter_config.json"), {
        "peft_type": "RANDLORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "llama",
        "revision": None, "inference_mode": True, "r": r,
        "target_modules": sorted(t.split(".")[-1] for t in RANDLORA_TARGETS),
        "projection_prng_key": 0, "save_projection": True, "sparse": False,
        "very_sparse": False, "randlora_dropout": 0.0, "fan_in_fan_out": False,
        "randlora_alpha": RANDLORA_ALPHA, "bias": "none", "modules_to_save": None,
        "init_weights": True, "layers_to_transform": None, "layers_pattern": None})
    logits = llama_logits(config, merged, torch.tensor(SEQUENCES))
    write_json(os.path.join(folder, "reference.json"), {
        "sequences": SEQUENCES,
        "logits": [[[float(f"{x:.9g}") for x in row] for row in seq] for seq in logits.tolist()],
    }, indent=None)


# Tokenizers: tiny `tokenizer.json` files in Hugging Face's format, with the ids of a few strings
# as HF's `tokenizers` would encode them. That package is not installed, so the encoders below
# are written by hand from its semantics (GPT-2's bytes_to_unicode and pre-tokenizing regex,
# BPE's lowest-rank-first merge loop; Llama's SentencePiece-BPE with byte fallback) and are
# independent of runtime/tokenizer.ts. The merges are learnt from CORPUS by a plain BPE trainer,
# so that the vocabularies fit the fixture models (64 tokens).

import unicodedata

CORPUS = (
    "the cat sat on the mat. the dog sat on the log, and the cat saw the dog! "
    "she said it's a dog's life; 10 cats and 12 dogs were there.\n"
    "hello world, hello there. the rest is silence? well, we will see."
)


def bytes_to_unicode():
    """GPT-2's table: printable bytes map to themselves, the others to chars from U+0100 up."""

    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
          + list(range(0xAE, 0xFF + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_CHAR = bytes_to_unicode()


def gpt2_pretokenize(text):
    """GPT-2's regex, 's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+,
    by hand (Python's `re` has no \\p{…})."""
    kind = lambda c: ("L" if unicodedata.category(c)[0] == "L" else
                      "N" if unicodedata.category(c)[0] == "N" else
                      "S" if c.isspace() else "P")
    out, i, n = [], 0, len(text)
    while i < n:
        for suffix in ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d"):
            if text.startswith(suffix, i):
                out.append(suffix)
                i += len(suffix)
                break
        else:
            start = i
            j = i + 1 if text[i] == " " and i + 1 < n and kind(text[i + 1]) != "S" else i
            k = kind(text[j])
            if k in "LNP":
                j += 1
                while j < n and kind(text[j]) == k:
                    j += 1
                out.append(text[start:j])
                i = j
                continue
            # Whitespace: a run, less its last char when a non-space follows (\\s+(?!\\S)).
            j = i
            while j < n and kind(text[j]) == "S":
                j += 1
            if j < n and j - i > 1:
                j -= 1
            out.append(text[i:j])
            i = j
    return out


def bpe(symbols, ranks):
    """The merge loop: merge the adjacent pair of lowest rank (every occurrence, left to right)."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        rank, _ = min(pairs)
        if rank == 1 << 30:
            break
        a, b = [p for p in ranks if ranks[p] == rank][0]
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def train_merges(words, count):
    """Plain BPE training: the most frequent adjacent pair first (ties: the smallest pair)."""
    words = [list(w) for w in words]
    merges = []
    for _ in range(count):
        freq = {}
        for w in words:
            for pair in zip(w, w[1:]):
                freq[pair] = freq.get(pair, 0) + 1
        if not freq:
            break
        best = min(freq, key=lambda p: (-freq[p], p))
        merges.append(best)
        words = [bpe(w, {best: 0}) for w in words]
    return merges


def split_specials(text, specials):
    """Text split around special tokens (HF matches added tokens before anything else)."""
    parts, i = [], 0
    while i < len(text):
        hits = [(text.find(s, i), s) for s in specials if text.find(s, i) >= 0]
        if not hits:
            parts.append(text[i:])
            break
        at, s = min(hits)
        if at > i:
            parts.append(text[i:at])
        parts.append((s,))
        i = at + len(s)
    return parts


GPT2_STRINGS = [
    "hello world",
    "the cat sat on the mat.",
    "it's a dog's life",
    "  two  spaces   and trailing  ",
    "lines\n\nof text\n",
    "10 cats, 1234 dogs!",
    "<|endoftext|>the end<|endoftext|>",
    "",
]


def write_gpt2_tokenizer(folder):
    specials = ["<|endoftext|>"]
    base = " \n.,'!?;" + "abcdefghiklmnoprstuwxy" + "0123456789"
    alphabet = sorted({BYTE_CHAR[b] for b in base.encode()})
    words = [w.encode() for w in gpt2_pretokenize(CORPUS)]
    words = ["".join(BYTE_CHAR[b] for b in w) for w in words]
    merges = train_merges(words, GPT2_CONFIG["vocab_size"] - len(specials) - len(alphabet))
    vocab = {s: i for i, s in enumerate(specials)}
    for tok in alphabet + [a + b for a, b in merges]:
        vocab.setdefault(tok, len(vocab))
    assert len(vocab) == GPT2_CONFIG["vocab_size"], len(vocab)
    ranks = {m: i for i, m in enumerate(merges)}

    def encode(text):
        ids = []
        for part in split_specials(text, specials):
            if isinstance(part, tuple):
                ids.append(vocab[part[0]])
                continue
            for word in gpt2_pretokenize(part):
                ids += [vocab[s] for s in bpe("".join(BYTE_CHAR[b] for b in word.encode()), ranks)]
        return ids

    write_json(os.path.join(folder, "tokenizer.json"), {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": True, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                  "merges": [f"{a} {b}" for a, b in merges]},
    })
    write_json(os.path.join(folder, "vocab.json"), vocab, indent=None)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_prefix_space": False,
        "model_max_length": GPT2_CONFIG["n_positions"]})
    write_json(os.path.join(folder, "tokenizer-reference.json"),
               [{"text": t, "ids": encode(t)} for t in GPT2_STRINGS])


LLAMA_STRINGS = [
    "hello world",
    "the cat sat on the mat.",
    " leading space",
    "café!",
    "two\nlines?",
    "",
]


def write_llama_tokenizer(folder):
    specials = ["<unk>", "<s>", "</s>"]
    # Byte-fallback tokens for the bytes of "\n", "!", "?" and "é" (C3 A9); other characters
    # outside the vocabulary become <unk>.
    byte_tokens = [f"<0x{b:02X}>" for b in (0x0A, 0x21, 0x3F, 0xA9, 0xC3)]
    alphabet = sorted(set("▁abcdeghilmnorstwy.,'"))
    normalized = "▁" + CORPUS.replace(" ", "▁")
    # SentencePiece splits before each ▁, so no merge crosses a word boundary.
    pieces = [p for p in re.split("(?=▁)", normalized.replace("\n", "")) if p]
    merges = train_merges(pieces, LLAMA_CONFIG["vocab_size"] - 3 - len(byte_tokens) - len(alphabet))
    vocab = {}
    for tok in specials + byte_tokens + alphabet + [a + b for a, b in merges]:
        vocab.setdefault(tok, len(vocab))
    assert len(vocab) == LLAMA_CONFIG["vocab_size"], len(vocab)
    ranks = {m: i for i, m in enumerate(merges)}

    def encode(text):
        if text == "":
            return [1]
        symbols = []
        for c in "▁" + text.replace(" ", "▁"):
            if c in vocab:
                symbols.append(c)
            elif all(f"<0x{b:02X}>" in vocab for b in c.encode()):
                symbols += [f"<0x{b:02X}>" for b in c.encode()]
            elif not symbols or symbols[-1] != "<unk>":  # fuse_unk
                symbols.append("<unk>")
        # Byte and unk tokens never merge: none of the merges names them.
        return [1] + [vocab[s] for s in bpe(symbols, ranks)]

    write_json(os.path.join(folder, "tokenizer.json"), {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for i, s in enumerate(specials)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    })
    write_json(os.path.join(folder, "tokenizer_config.json"), {
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
        "model_max_length": LLAMA_CONFIG["max_position_embeddings"],
        # Llama 2's template, shortened (no system prompt).
        "chat_template": (
            "{% for message in messages %}{% if message['role'] == 'user' %}"
            "{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
            "{% elif message['role'] == 'assistant' %}"
            "{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")})
    write_json(os.path.join(folder, "tokenizer-reference.json"),
               [{"text": t, "ids": encode(t)} for t in LLAMA_STRINGS])


def main():
    g = torch.Generator().manual_seed(13)
    gpt2 = gpt2_weights(GPT2_CONFIG, g)
    write_variants("gpt2", GPT2_CONFIG, gpt2, gpt2_logits)
    llama = llama_weights(LLAMA_CONFIG, g)
    write_variants("llama", LLAMA_CONFIG, llama, llama_logits)
    write_gpt2_lora(GPT2_CONFIG, gpt2)
    # Generators of their own, so that the fixtures above stay as they were.
    for name, config, seed in [
        ("qwen2", QWEN2_CONFIG, 17),
        ("mistral", MISTRAL_CONFIG, 19),
        ("llama3-rope", LLAMA3_CONFIG, 23),
        ("llama-rope-linear", {**LLAMA_CONFIG, "rope_scaling": {"type": "linear", "factor": 4.0}}, 29),
    ]:
        weights = llama_weights(config, torch.Generator().manual_seed(seed))
        write_variants(name, config, weights, llama_logits, ALL_VARIANTS[:1])
    write_llama_randlora(LLAMA_CONFIG, llama)
    # Config variants, stored as BF16 (as most real checkpoints are) to keep them small.
    for name, config, file_config, seed in [
        ("llama-head-dim", LLAMA_HEAD_DIM_CONFIG, None, 31),
        ("llama-minimal-config", LLAMA_MINIMAL_CONFIG, LLAMA_MINIMAL_FILE, 37),
    ]:
        weights = llama_weights(config, torch.Generator().manual_seed(seed))
        write_variants(name, config, weights, llama_logits, [("", "BF16", 1)], file_config)


    write_gpt2_tokenizer(os.path.join(ROOT, "gpt2"))
    write_llama_tokenizer(os.path.join(ROOT, "llama"))


if __name__ == "__main__":
    main()
