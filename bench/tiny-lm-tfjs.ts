// examples/tiny_lm.lrk's TinyLM with std.adapters' LoRA and std.optim's AdamW, written by hand in
// tfjs: the baseline that `npm run bench:train` times lrk's training step against, and that
// tests/bench-train.test.ts checks against lrk's interpreter on the same weights and batches.
//
// The weights come from an lrk store (`param:<path>` tensors, as runtime/trainer.ts `initialize`
// returns them), so both start from exactly the same model. Every `param:…lora.A/B` becomes a
// tf.variable (trainable) with AdamW moments; every other parameter is a frozen tensor. The step
// mirrors lrk's, op for op where it matters for the numbers:
//   - std.nn: Embedding (gather), LayerNorm (biased variance, eps 1e-5), Linear (x Wᵀ + b),
//     Attention (causal, scores / sqrt(head width), masked to -1e9 before softmax), Mlp with the
//     exact erf gelu, the output head tied to the token embedding;
//   - lora: base(x) + scale · ((x Aᵀ) Bᵀ), dropout 0;
//   - cross_entropy: −Σ log p[target] over targets ≠ −1, divided by max(count, 1);
//   - global-norm clipping g · min(1, clip / (‖g‖ + 1e-6)) (torch's clip_grad_norm_);
//   - std.optim.adamw: bias-corrected, decoupled weight decay, lr times the schedule factor.
// Written the plain tfjs way (tf.tidy, tf.variableGrads, primitive ops): tfjs's fused matMul is not
// used, because its custom gradient computes the gradients of the frozen weights and biases too.
import type { Tf } from "./tfjs-webgpu.js";

type TfTensor = import("@tensorflow/tfjs").Tensor;
type TfVariable = import("@tensorflow/tfjs").Variable;
type TfScalar = import("@tensorflow/tfjs").Scalar;

/** A tensor of an lrk store (runtime/interpreter.ts's Tensor). */
export interface StoreTensor {
  shape: number[];
  data: Float32Array | Float64Array | Int32Array;
}

export interface TinyLmLoraOptions {
  heads: number;
  /** LoRA's alpha / rank. */
  scale: number;
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  /** Global gradient-norm clipping; none when undefined. */
  clip?: number;
  /** LayerNorm's eps. */
  lnEps?: number;
}

export interface TinyLmLoraStep {
  /**
   * One training step on a batch (i32 [batch, T] inputs and targets, −1 = ignored target) at the
   * 1-based optimizer step `step` with the schedule factor `lrScale`. Returns the loss before the
   * update, still on the device: the caller reads and disposes it.
   */
  step(
    input: Int32Array,
    target: Int32Array,
    shape: [number, number],
    step: number,
    lrScale: number,
  ): TfScalar;
  /** The current value of every trainable tensor (`param:…`) and moment (`state:…:m`, `:v`). */
  read(): Promise<Map<string, Float32Array>>;
  dispose(): void;
}

export function tinyLmLoraTfjs(
  tf: Tf,
  store: ReadonlyMap<string, StoreTensor>,
  options: TinyLmLoraOptions,
): TinyLmLoraStep {
  const { heads, scale, lr } = options;
  const beta1 = options.beta1 ?? 0.9;
  const beta2 = options.beta2 ?? 0.999;
  const eps = options.eps ?? 1e-8;
  const weightDecay = options.weightDecay ?? 0.01;
  const lnEps = options.lnEps ?? 1e-5;

  const frozen = new Map<string, TfTensor>();
  const trainable = new Map<string, TfVariable>();
  const moments = new Map<string, [TfVariable, TfVariable]>();
  for (const [name, t] of store) {
    if (!name.startsWith("param:")) continue;
    const path = name.slice("param:".length);
    const data = Float32Array.from(t.data);
    if (/\.lora\.[AB]$/.test(path)) {
      trainable.set(path, tf.variable(tf.tensor(data, t.shape), true));
      moments.set(path, [
        tf.variable(tf.zeros(t.shape), false),
        tf.variable(tf.zeros(t.shape), false),
      ]);
    } else frozen.set(path, tf.tensor(data, t.shape));
  }
  const weight = (path: string): TfTensor => {
    const w = frozen.get(path) ?? trainable.get(path);
    if (!w) throw new Error(`tiny LM (tfjs): no tensor \`${path}\``);
    return w;
  };
  const layers = [...frozen.keys()].filter((p) => /^blocks\.\d+\.ln1\.weight$/.test(p)).length;
  const d = weight("tok.weight").shape[1]!;
  if (d % heads !== 0) throw new Error(`tiny LM (tfjs): ${heads} heads do not divide d ${d}`);
  const width = d / heads;
  const vars = [...trainable.values()];
  const masks = new Map<number, TfTensor>();
  /** 0 where position i may attend to j ≤ i, −1e9 elsewhere (added to the scores: the same
   * softmax as lrk's where(tril > 0, s, −1e9), since exp(−1e9 + s − max) is exactly 0). */
  const causal = (T: number): TfTensor => {
    let m = masks.get(T);
    if (!m) {
      const data = new Float32Array(T * T);
      for (let i = 0; i < T; i++) for (let j = i + 1; j < T; j++) data[i * T + j] = -1e9;
      masks.set(T, (m = tf.keep(tf.tensor2d(data, [T, T])))); // made inside the step's tidy
    }
    return m;
  };

  // x [n, in] → [n, out]
  const linear = (x: TfTensor, path: string): TfTensor => {
    let y = tf.add(tf.matMul(x, weight(`${path}.weight`), false, true), weight(`${path}.bias`));
    const A = trainable.get(`${path}.lora.A`);
    const B = trainable.get(`${path}.lora.B`);
    if (A && B)
      y = tf.add(y, tf.mul(tf.matMul(tf.matMul(x, A, false, true), B, false, true), scale));
    return y;
  };
  const layerNorm = (x: TfTensor, path: string): TfTensor => {
    const c = tf.sub(x, tf.mean(x, -1, true));
    const variance = tf.mean(tf.mul(c, c), -1, true);
    return tf.add(
      tf.mul(tf.mul(c, tf.rsqrt(tf.add(variance, lnEps))), weight(`${path}.weight`)),
      weight(`${path}.bias`),
    );
  };
  const gelu = (x: TfTensor): TfTensor =>
    tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));

  const loss = (ids: TfTensor, targets: TfTensor, B: number, T: number): TfScalar => {
    const n = B * T;
    // h: [n, d], row b·T + t
    let h = tf.reshape(
      tf.add(
        tf.reshape(tf.gather(weight("tok.weight"), tf.reshape(ids, [n])), [B, T, d]),
        tf.slice(weight("pos.weight"), [0, 0], [T, d]),
      ),
      [n, d],
    );
    const split = (y: TfTensor) => tf.transpose(tf.reshape(y, [B, T, heads, width]), [0, 2, 1, 3]);
    for (let l = 0; l < layers; l++) {
      const p = `blocks.${l}`;
      const x = layerNorm(h, `${p}.ln1`);
      const q = split(linear(x, `${p}.attn.q`));
      const k = split(linear(x, `${p}.attn.k`));
      const v = split(linear(x, `${p}.attn.v`));
      const s = tf.add(tf.div(tf.matMul(q, k, false, true), Math.sqrt(width)), causal(T));
      const a = tf.matMul(tf.softmax(s, -1), v); // [B, heads, T, width]
      const joined = tf.reshape(tf.transpose(a, [0, 2, 1, 3]), [n, d]);
      h = tf.add(h, linear(joined, `${p}.attn.o`));
      const up = linear(layerNorm(h, `${p}.ln2`), `${p}.mlp.up`);
      h = tf.add(h, linear(gelu(up), `${p}.mlp.down`));
    }
    const logits = tf.matMul(layerNorm(h, "lnf"), weight("tok.weight"), false, true); // [n, vocab]
    const logp = tf.logSoftmax(logits, -1);
    const flat = tf.reshape(targets, [n]);
    const hot = tf.oneHot(flat, logits.shape[1]!); // a −1 target is a row of zeros
    const picked = tf.sum(tf.mul(hot, logp));
    const counted = tf.sum(tf.cast(tf.notEqual(flat, -1), "float32"));
    return tf.neg(tf.div(picked, tf.maximum(counted, 1))) as TfScalar;
  };

  return {
    step(input, target, [B, T], step, lrScale) {
      return tf.tidy(() => {
        const ids = tf.tensor2d(input, [B, T], "int32");
        const targets = tf.tensor2d(target, [B, T], "int32");
        const { value, grads } = tf.variableGrads(() => loss(ids, targets, B, T), vars);
        let factor: TfTensor | undefined;
        if (options.clip !== undefined) {
          // (not tf.addN: tfjs-webgpu binds all its inputs at once, over the adapter's 8 buffers)
          const squares = Object.values(grads)
            .map((g) => tf.sum(tf.mul(g, g)))
            .reduce((a, b) => tf.add(a, b));
          factor = tf.minimum(1, tf.div(options.clip, tf.add(tf.sqrt(squares), 1e-6)));
        }
        const size = lr * lrScale;
        const c1 = 1 - beta1 ** step;
        const c2 = 1 - beta2 ** step;
        for (const [path, w] of trainable) {
          const g = factor ? tf.mul(grads[w.name]!, factor) : grads[w.name]!;
          const [m, v] = moments.get(path)!;
          const m2 = tf.add(tf.mul(m, beta1), tf.mul(g, 1 - beta1));
          const v2 = tf.add(tf.mul(v, beta2), tf.mul(tf.mul(g, g), 1 - beta2));
          const update = tf.div(tf.div(m2, c1), tf.add(tf.sqrt(tf.div(v2, c2)), eps));
          const decayed = weightDecay ? tf.add(update, tf.mul(w, weightDecay)) : update;
          m.assign(m2);
          v.assign(v2);
          w.assign(tf.sub(w, tf.mul(decayed, size)));
        }
        return value;
      });
    },
    async read() {
      const out = new Map<string, Float32Array>();
      for (const [path, w] of trainable) {
        const [m, v] = moments.get(path)!;
        out.set(`param:${path}`, (await w.data()) as Float32Array);
        out.set(`state:${path}:m`, (await m.data()) as Float32Array);
        out.set(`state:${path}:v`, (await v.data()) as Float32Array);
      }
      return out;
    },
    dispose() {
      for (const t of [...frozen.values(), ...masks.values()]) t.dispose();
      for (const w of trainable.values()) w.dispose();
      for (const [m, v] of moments.values()) {
        m.dispose();
        v.dispose();
      }
    },
  };
}
