// map f32[128, 4] %165 %173 %212 %225 %233 %272
// computes:
//   %150 = permute [1,0] %149 : f32[128, 4]  // stdlib/adapters.lrk:39
//   %152 = permute [1,0] %151 : f32[4, 128]  // stdlib/adapters.lrk:39
//   %153 = const 0.01 : f32[]
//   %154 = mul %153, %1 : f32[]
//   %160 = const 0.9 : f32[4, 128]  // stdlib/optim.lrk:51
//   %161 = mul %160, %156 : f32[4, 128]  // stdlib/optim.lrk:51
//   %163 = const 0.09999999999999998 : f32[4, 128]  // stdlib/optim.lrk:51
//   %164 = mul %163, %152 : f32[4, 128]  // stdlib/optim.lrk:51
//   %165 = add %161, %164 : f32[4, 128]  // stdlib/optim.lrk:51
//   %167 = const 0.999 : f32[4, 128]  // stdlib/optim.lrk:52
//   %168 = mul %167, %158 : f32[4, 128]  // stdlib/optim.lrk:52
//   %170 = const 0.0010000000000000009 : f32[4, 128]  // stdlib/optim.lrk:52
//   %171 = mul %170, %152 : f32[4, 128]  // stdlib/optim.lrk:52
//   %172 = mul %171, %152 : f32[4, 128]  // stdlib/optim.lrk:52
//   %173 = add %168, %172 : f32[4, 128]  // stdlib/optim.lrk:52
//   %174 = const 0.9 : f32[]  // stdlib/optim.lrk:53
//   %175 = pow %174, %0 : f32[]  // stdlib/optim.lrk:53
//   %176 = const 1 : f32[]  // stdlib/optim.lrk:53
//   %177 = sub %176, %175 : f32[]  // stdlib/optim.lrk:53
//   %178 = reshape %177 : f32[1, 1]  // stdlib/optim.lrk:53
//   %179 = expand %178 : f32[4, 128]  // stdlib/optim.lrk:53
//   %180 = div %165, %179 : f32[4, 128]  // stdlib/optim.lrk:53
//   %181 = const 0.999 : f32[]  // stdlib/optim.lrk:54
//   %182 = pow %181, %0 : f32[]  // stdlib/optim.lrk:54
//   %183 = const 1 : f32[]  // stdlib/optim.lrk:54
//   %184 = sub %183, %182 : f32[]  // stdlib/optim.lrk:54
//   %185 = reshape %184 : f32[1, 1]  // stdlib/optim.lrk:54
//   %186 = expand %185 : f32[4, 128]  // stdlib/optim.lrk:54
//   %187 = div %173, %186 : f32[4, 128]  // stdlib/optim.lrk:54
//   %200 = sqrt %187 : f32[4, 128]  // stdlib/optim.lrk:55
//   %202 = const 1e-8 : f32[4, 128]  // stdlib/optim.lrk:55
//   %203 = add %200, %202 : f32[4, 128]  // stdlib/optim.lrk:55
//   %204 = div %180, %203 : f32[4, 128]  // stdlib/optim.lrk:55
//   %206 = const 0.01 : f32[4, 128]  // stdlib/optim.lrk:55
//   %207 = mul %206, %19 : f32[4, 128]  // stdlib/optim.lrk:55
//   %208 = add %204, %207 : f32[4, 128]  // stdlib/optim.lrk:55
//   %209 = reshape %154 : f32[1, 1]  // stdlib/optim.lrk:55
//   %210 = expand %209 : f32[4, 128]  // stdlib/optim.lrk:55
//   %211 = mul %210, %208 : f32[4, 128]  // stdlib/optim.lrk:55
//   %212 = sub %19, %211 : f32[4, 128]
//   %213 = const 0.01 : f32[]
//   %214 = mul %213, %1 : f32[]
//   %220 = const 0.9 : f32[128, 4]  // stdlib/optim.lrk:51
//   %221 = mul %220, %216 : f32[128, 4]  // stdlib/optim.lrk:51
//   %223 = const 0.09999999999999998 : f32[128, 4]  // stdlib/optim.lrk:51
//   %224 = mul %223, %150 : f32[128, 4]  // stdlib/optim.lrk:51
//   %225 = add %221, %224 : f32[128, 4]  // stdlib/optim.lrk:51
//   %227 = const 0.999 : f32[128, 4]  // stdlib/optim.lrk:52
//   %228 = mul %227, %218 : f32[128, 4]  // stdlib/optim.lrk:52
//   %230 = const 0.0010000000000000009 : f32[128, 4]  // stdlib/optim.lrk:52
//   %231 = mul %230, %150 : f32[128, 4]  // stdlib/optim.lrk:52
//   %232 = mul %231, %150 : f32[128, 4]  // stdlib/optim.lrk:52
//   %233 = add %228, %232 : f32[128, 4]  // stdlib/optim.lrk:52
//   %234 = const 0.9 : f32[]  // stdlib/optim.lrk:53
//   %235 = pow %234, %0 : f32[]  // stdlib/optim.lrk:53
//   %236 = const 1 : f32[]  // stdlib/optim.lrk:53
//   %237 = sub %236, %235 : f32[]  // stdlib/optim.lrk:53
//   %238 = reshape %237 : f32[1, 1]  // stdlib/optim.lrk:53
//   %239 = expand %238 : f32[128, 4]  // stdlib/optim.lrk:53
//   %240 = div %225, %239 : f32[128, 4]  // stdlib/optim.lrk:53
//   %241 = const 0.999 : f32[]  // stdlib/optim.lrk:54
//   %242 = pow %241, %0 : f32[]  // stdlib/optim.lrk:54
//   %243 = const 1 : f32[]  // stdlib/optim.lrk:54
//   %244 = sub %243, %242 : f32[]  // stdlib/optim.lrk:54
//   %245 = reshape %244 : f32[1, 1]  // stdlib/optim.lrk:54
//   %246 = expand %245 : f32[128, 4]  // stdlib/optim.lrk:54
//   %247 = div %233, %246 : f32[128, 4]  // stdlib/optim.lrk:54
//   %260 = sqrt %247 : f32[128, 4]  // stdlib/optim.lrk:55
//   %262 = const 1e-8 : f32[128, 4]  // stdlib/optim.lrk:55
//   %263 = add %260, %262 : f32[128, 4]  // stdlib/optim.lrk:55
//   %264 = div %240, %263 : f32[128, 4]  // stdlib/optim.lrk:55
//   %266 = const 0.01 : f32[128, 4]  // stdlib/optim.lrk:55
//   %267 = mul %266, %22 : f32[128, 4]  // stdlib/optim.lrk:55
//   %268 = add %264, %267 : f32[128, 4]  // stdlib/optim.lrk:55
//   %269 = reshape %214 : f32[1, 1]  // stdlib/optim.lrk:55
//   %270 = expand %269 : f32[128, 4]  // stdlib/optim.lrk:55
//   %271 = mul %270, %268 : f32[128, 4]  // stdlib/optim.lrk:55
//   %272 = sub %22, %271 : f32[128, 4]
// from: stdlib/adapters.lrk:39, stdlib/optim.lrk:51, stdlib/optim.lrk:52, stdlib/optim.lrk:53, stdlib/optim.lrk:54, stdlib/optim.lrk:55
@group(0) @binding(0) var<storage, read_write> out0: array<f32>;  // %165
@group(0) @binding(1) var<storage, read_write> out1: array<f32>;  // %173
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;  // %212
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;  // %225
@group(0) @binding(4) var<storage, read_write> out4: array<f32>;  // %233
@group(0) @binding(5) var<storage, read_write> out5: array<f32>;  // %272
@group(0) @binding(6) var<storage, read> in0: array<f32>;  // %156 state:mix.lora.A:m
@group(0) @binding(7) var<storage, read> in1: array<f32>;  // %151
@group(0) @binding(8) var<storage, read> in2: array<f32>;  // %158 state:mix.lora.A:v
@group(0) @binding(9) var<storage, read> in3: array<f32>;  // %19 param:mix.lora.A
@group(0) @binding(10) var<storage, read> in4: array<f32>;  // %1 lr_scale
@group(0) @binding(11) var<storage, read> in5: array<f32>;  // %0 step
@group(0) @binding(12) var<storage, read> in6: array<f32>;  // %216 state:mix.lora.B:m
@group(0) @binding(13) var<storage, read> in7: array<f32>;  // %149
@group(0) @binding(14) var<storage, read> in8: array<f32>;  // %218 state:mix.lora.B:v
@group(0) @binding(15) var<storage, read> in9: array<f32>;  // %22 param:mix.lora.B
fn lrk_nan() -> f32 {
  var bits = 0x7fc00000u;
  return bitcast<f32>(bits);
}

// 32×32 → 64-bit product, as (high word, low word).
fn lrk_mul64(a: u32, b: u32) -> vec2<u32> {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let b0 = b & 0xffffu;
  let b1 = b >> 16u;
  let p01 = a0 * b1;
  let p10 = a1 * b0;
  let p00 = a0 * b0;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return vec2<u32>(a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u), (mid << 16u) | (p00 & 0xffffu));
}
// Product of two numbers m·2^(e−63) with 64-bit mantissas m = (hi, lo), hi ≥ 2^31: the top 64
// bits of the 128-bit product (truncated: relative error < 2^-62).
fn lrk_xmul(x: vec3<u32>, y: vec3<u32>) -> vec3<u32> {
  let hh = lrk_mul64(x.x, y.x);
  let hl = lrk_mul64(x.x, y.y);
  let lh = lrk_mul64(x.y, y.x);
  let ll = lrk_mul64(x.y, y.y);
  var w1 = ll.x + hl.y;
  var c2 = select(0u, 1u, w1 < ll.x);
  let w1b = w1 + lh.y;
  c2 += select(0u, 1u, w1b < w1);
  w1 = w1b;
  var w2 = hh.y + hl.x;
  var c3 = select(0u, 1u, w2 < hh.y);
  var w2b = w2 + lh.x;
  c3 += select(0u, 1u, w2b < w2);
  w2 = w2b + c2;
  c3 += select(0u, 1u, w2 < w2b);
  let w3 = hh.x + c3;
  let e = bitcast<i32>(x.z) + bitcast<i32>(y.z);
  if ((w3 & 0x80000000u) != 0u) {
    return vec3<u32>(w3, w2, bitcast<u32>(e + 1));
  }
  return vec3<u32>((w3 << 1u) | (w2 >> 31u), (w2 << 1u) | (w1 >> 31u), bitcast<u32>(e));
}
// Math.pow. An integer exponent (|b| ≤ 2^24) is done by squaring with 64-bit mantissas in
// integer arithmetic, then rounded once to f32: the same f32 as the interpreter's f64 pow gives
// (so Adam's 1 − β^t matches it), where exp2(b·log2 a) is off by an ulp or more. A negative base
// needs an integer exponent.
fn lrk_pow(a: f32, b: f32) -> f32 {
  if (b == 0.0) {
    return 1.0;
  }
  let integer = floor(b) == b;
  if (a < 0.0 && !integer) {
    return lrk_nan();
  }
  var r = pow(abs(a), b);
  let bits = bitcast<u32>(abs(a));
  let biased = (bits >> 23u) & 0xffu;
  if (integer && abs(b) <= 16777216.0 && biased != 0u && biased != 0xffu) {
    var acc = vec3<u32>(0x80000000u, 0u, 0u);
    var base = vec3<u32>(((bits & 0x7fffffu) | 0x800000u) << 8u, 0u, bitcast<u32>(i32(biased) - 127));
    var k = u32(abs(b));
    loop {
      if ((k & 1u) == 1u) {
        acc = lrk_xmul(acc, base);
      }
      k = k >> 1u;
      if (k == 0u) {
        break;
      }
      base = lrk_xmul(base, base);
    }
    // round the 64-bit mantissa to 24 bits, to nearest, ties to even
    var m = acc.x >> 8u;
    let rest = acc.x & 0xffu;
    if (rest > 0x80u || (rest == 0x80u && (acc.y != 0u || (m & 1u) == 1u))) {
      m += 1u;
    }
    r = ldexp(f32(m), bitcast<i32>(acc.z) - 23);
    if (b < 0.0) {
      r = 1.0 / r;
    }
  }
  if (a < 0.0 && abs(b - 2.0 * floor(0.5 * b)) == 1.0) {
    return -r;
  }
  return r;
}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x + gid.y * 512u;
  let i = t;
  if (i < 512u) {
    let gi = i32(i);
    let v0 = in0[gi];
    let v1 = 0.9f * v0;
    let c2 = (gi / 128);
    let c3 = (gi % 128);
    let f4 = ((c3 * 4) + c2);
    let v5 = in1[f4];
    let v6 = v5;
    let v7 = 0.1f * v6;
    let v8 = v1 + v7;
    out0[i] = v8;
    let v9 = in2[gi];
    let v10 = 0.999f * v9;
    let v11 = 0.001f * v6;
    let v12 = v11 * v6;
    let v13 = v10 + v12;
    out1[i] = v13;
    let v14 = in3[gi];
    let c15 = (gi / 128);
    let c16 = (gi % 128);
    let v17 = in4[0];
    let v18 = 0.01f * v17;
    let v19 = v18;
    let v20 = v19;
    let v21 = in5[0];
    let v22 = lrk_pow(0.9f, v21);
    let v23 = 1.0f - v22;
    let v24 = v23;
    let v25 = v24;
    let v26 = v8 / v25;
    let v27 = lrk_pow(0.999f, v21);
    let v28 = 1.0f - v27;
    let v29 = v28;
    let v30 = v29;
    let v31 = v13 / v30;
    let v32 = sqrt(v31);
    let v33 = v32 + 1e-8f;
    let v34 = v26 / v33;
    let v35 = 0.01f * v14;
    let v36 = v34 + v35;
    let v37 = v20 * v36;
    let v38 = v14 - v37;
    out2[i] = v38;
    let v39 = in6[gi];
    let v40 = 0.9f * v39;
    let c41 = (gi / 4);
    let c42 = (gi % 4);
    let f43 = ((c42 * 128) + c41);
    let v44 = in7[f43];
    let v45 = v44;
    let v46 = 0.1f * v45;
    let v47 = v40 + v46;
    out3[i] = v47;
    let v48 = in8[gi];
    let v49 = 0.999f * v48;
    let v50 = 0.001f * v45;
    let v51 = v50 * v45;
    let v52 = v49 + v51;
    out4[i] = v52;
    let v53 = in9[gi];
    let c54 = (gi / 4);
    let c55 = (gi % 4);
    let v56 = 0.01f * v17;
    let v57 = v56;
    let v58 = v57;
    let v59 = lrk_pow(0.9f, v21);
    let v60 = 1.0f - v59;
    let v61 = v60;
    let v62 = v61;
    let v63 = v47 / v62;
    let v64 = lrk_pow(0.999f, v21);
    let v65 = 1.0f - v64;
    let v66 = v65;
    let v67 = v66;
    let v68 = v52 / v67;
    let v69 = sqrt(v68);
    let v70 = v69 + 1e-8f;
    let v71 = v63 / v70;
    let v72 = 0.01f * v53;
    let v73 = v71 + v72;
    let v74 = v58 * v73;
    let v75 = v53 - v74;
    out5[i] = v75;
  }
}
