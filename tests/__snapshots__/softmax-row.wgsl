// row f32[32, 128] ×2 %32 %33 %35 (1 lanes)
// computes:
//   %29 = reduce.max axes=[1] %28 : f32[32, 1]  // snapshot.lrk:12
//   %30 = expand %29 : f32[32, 128]  // snapshot.lrk:12
//   %31 = sub %28, %30 : f32[32, 128]  // snapshot.lrk:12
//   %32 = exp %31 : f32[32, 128]  // snapshot.lrk:12
//   %33 = reduce.sum axes=[1] %32 : f32[32, 1]  // snapshot.lrk:12
//   %34 = expand %33 : f32[32, 128]  // snapshot.lrk:12
//   %35 = div %32, %34 : f32[32, 128]  // snapshot.lrk:12
// from: snapshot.lrk:12
@group(0) @binding(0) var<storage, read_write> out0: array<f32>;  // %32
@group(0) @binding(1) var<storage, read_write> out1: array<f32>;  // %33
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;  // %35
@group(0) @binding(3) var<storage, read> in0: array<f32>;  // %28
// 0 at run time, unknown to the shader compiler: loops bounded with it are not unrolled
fn lrk_opaque_zero() -> u32 {
  return u32(arrayLength(&out0) == 0u);
}
fn lrk_inf() -> f32 {
  var bits = 0x7f800000u;
  return bitcast<f32>(bits);
}
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let lrk_zero = lrk_opaque_zero(); // 0, unknown to the shader compiler
  let lane = i32(lid % 1u);
  let seg = lid / 1u;
  let raw = i32((wid.x + wid.y * 1u) * 64u + seg);
  let valid = raw < 32;
  let row = min(raw, 31);
  var lrk_a0: f32 = -lrk_inf();
  for (var e = lane; e < 128 + i32(lrk_zero); e += 1) {
    let f0 = row * 128 + e;
    let v1 = in0[f0];
    lrk_a0 = select(lrk_a0, v1, v1 > lrk_a0 || (bitcast<u32>(v1) & 0x7fffffffu) > 0x7f800000u);
  }
  let lrk_s0 = lrk_a0;
  var lrk_a1: f32 = 0.0;
  for (var e = lane; e < 128 + i32(lrk_zero); e += 1) {
    let f2 = row * 128 + e;
    let v3 = in0[f2];
    let c4 = (f2 / 128);
    let c5 = (f2 % 128);
    let v6 = lrk_s0;
    let v7 = v3 - v6;
    let v8 = exp(v7);
    lrk_a1 = lrk_a1 + v8;
  }
  let lrk_s1 = lrk_a1;
  if (valid && lane == 0) {
    out1[row] = lrk_s1;
  }
  if (valid) {
    for (var e = lane; e < 128 + i32(lrk_zero); e += 1) {
      let f9 = row * 128 + e;
      let v10 = in0[f9];
      let c11 = (f9 / 128);
      let c12 = (f9 % 128);
      let v13 = lrk_s0;
      let v14 = v10 - v13;
      let v15 = exp(v14);
      out0[f9] = v15;
      let c16 = (f9 / 128);
      let c17 = (f9 % 128);
      let v18 = lrk_s1;
      let v19 = v15 / v18;
      out2[f9] = v19;
    }
  }
}
