// row f32[32, 128] ×2 %32 %33 %35 (1 lanes, vec4)
// computes:
//   %29 = reduce.max axes=[1] %28 : f32[32, 1]  // snapshot.lrk:12
//   %30 = expand %29 : f32[32, 128]  // snapshot.lrk:12
//   %31 = sub %28, %30 : f32[32, 128]  // snapshot.lrk:12
//   %32 = exp %31 : f32[32, 128]  // snapshot.lrk:12
//   %33 = reduce.sum axes=[1] %32 : f32[32, 1]  // snapshot.lrk:12
//   %34 = expand %33 : f32[32, 128]  // snapshot.lrk:12
//   %35 = div %32, %34 : f32[32, 128]  // snapshot.lrk:12
// from: snapshot.lrk:12
@group(0) @binding(0) var<storage, read_write> out0: array<vec4<f32>>;  // %32
@group(0) @binding(1) var<storage, read_write> out1: array<f32>;  // %33
@group(0) @binding(2) var<storage, read_write> out2: array<vec4<f32>>;  // %35
@group(0) @binding(3) var<storage, read> in0: array<vec4<f32>>;  // %28
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
  for (var e = lane * 4; e < 128 + i32(lrk_zero); e += 4) {
    let f0 = row * 128 + e + 0;
    let w1 = in0[u32(f0) / 4u];
    let v2 = w1.x;
    lrk_a0 = select(lrk_a0, v2, v2 > lrk_a0 || (bitcast<u32>(v2) & 0x7fffffffu) > 0x7f800000u);
    let f3 = row * 128 + e + 1;
    let v4 = w1.y;
    lrk_a0 = select(lrk_a0, v4, v4 > lrk_a0 || (bitcast<u32>(v4) & 0x7fffffffu) > 0x7f800000u);
    let f5 = row * 128 + e + 2;
    let v6 = w1.z;
    lrk_a0 = select(lrk_a0, v6, v6 > lrk_a0 || (bitcast<u32>(v6) & 0x7fffffffu) > 0x7f800000u);
    let f7 = row * 128 + e + 3;
    let v8 = w1.w;
    lrk_a0 = select(lrk_a0, v8, v8 > lrk_a0 || (bitcast<u32>(v8) & 0x7fffffffu) > 0x7f800000u);
  }
  let lrk_s0 = lrk_a0;
  var lrk_a1: f32 = 0.0;
  for (var e = lane * 4; e < 128 + i32(lrk_zero); e += 4) {
    let f9 = row * 128 + e + 0;
    let w10 = in0[u32(f9) / 4u];
    let v11 = w10.x;
    let c12 = (f9 / 128);
    let c13 = (f9 % 128);
    let v14 = lrk_s0;
    let v15 = v11 - v14;
    let v16 = exp(v15);
    lrk_a1 = lrk_a1 + v16;
    let f17 = row * 128 + e + 1;
    let v18 = w10.y;
    let c19 = (f17 / 128);
    let c20 = (f17 % 128);
    let v21 = lrk_s0;
    let v22 = v18 - v21;
    let v23 = exp(v22);
    lrk_a1 = lrk_a1 + v23;
    let f24 = row * 128 + e + 2;
    let v25 = w10.z;
    let c26 = (f24 / 128);
    let c27 = (f24 % 128);
    let v28 = lrk_s0;
    let v29 = v25 - v28;
    let v30 = exp(v29);
    lrk_a1 = lrk_a1 + v30;
    let f31 = row * 128 + e + 3;
    let v32 = w10.w;
    let c33 = (f31 / 128);
    let c34 = (f31 % 128);
    let v35 = lrk_s0;
    let v36 = v32 - v35;
    let v37 = exp(v36);
    lrk_a1 = lrk_a1 + v37;
  }
  let lrk_s1 = lrk_a1;
  if (valid && lane == 0) {
    out1[row] = lrk_s1;
  }
  if (valid) {
    for (var e = lane * 4; e < 128 + i32(lrk_zero); e += 4) {
      let f38 = row * 128 + e + 0;
      let w39 = in0[u32(f38) / 4u];
      let v40 = w39.x;
      let c41 = (f38 / 128);
      let c42 = (f38 % 128);
      let v43 = lrk_s0;
      let v44 = v40 - v43;
      let v45 = exp(v44);
      let c46 = (f38 / 128);
      let c47 = (f38 % 128);
      let v48 = lrk_s1;
      let v49 = v45 / v48;
      let f50 = row * 128 + e + 1;
      let v51 = w39.y;
      let c52 = (f50 / 128);
      let c53 = (f50 % 128);
      let v54 = lrk_s0;
      let v55 = v51 - v54;
      let v56 = exp(v55);
      let c57 = (f50 / 128);
      let c58 = (f50 % 128);
      let v59 = lrk_s1;
      let v60 = v56 / v59;
      let f61 = row * 128 + e + 2;
      let v62 = w39.z;
      let c63 = (f61 / 128);
      let c64 = (f61 % 128);
      let v65 = lrk_s0;
      let v66 = v62 - v65;
      let v67 = exp(v66);
      let c68 = (f61 / 128);
      let c69 = (f61 % 128);
      let v70 = lrk_s1;
      let v71 = v67 / v70;
      let f72 = row * 128 + e + 3;
      let v73 = w39.w;
      let c74 = (f72 / 128);
      let c75 = (f72 % 128);
      let v76 = lrk_s0;
      let v77 = v73 - v76;
      let v78 = exp(v77);
      let c79 = (f72 / 128);
      let c80 = (f72 % 128);
      let v81 = lrk_s1;
      let v82 = v78 / v81;
      out0[u32(f38) / 4u] = vec4<f32>(v45, v56, v67, v78);
      out2[u32(f38) / 4u] = vec4<f32>(v49, v60, v71, v82);
    }
  }
}
