// matmul 32x128x128 NT (subgroup 2x32 wg 1x8 v4)
// computes:
//   %13 = permute [1,0] %12 : f32[128, 128]  // stdlib/nn.lrk:29
//   %14 = matmul %11, %13 : f32[32, 128]  // stdlib/nn.lrk:29
//   %16 = reshape %15 : f32[1, 128]  // stdlib/nn.lrk:29
//   %17 = expand %16 : f32[32, 128]  // stdlib/nn.lrk:29
//   %18 = add %14, %17 : f32[32, 128]  // stdlib/nn.lrk:29
//   %23 = permute [1,0] %22 : f32[4, 128]  // stdlib/adapters.lrk:39
//   %24 = matmul %21, %23 : f32[32, 128]  // stdlib/adapters.lrk:39
//   %26 = const 2 : f32[32, 128]  // stdlib/adapters.lrk:39
//   %27 = mul %26, %24 : f32[32, 128]  // stdlib/adapters.lrk:39
//   %28 = add %18, %27 : f32[32, 128]  // stdlib/adapters.lrk:39
// from: stdlib/nn.lrk:29, stdlib/adapters.lrk:39
// matmul 1x32x128x128 NT, subgroup 2x32 wg 1x8 v4: A [b,m,k] vec4, B [b,n,k] vec4
enable subgroups;
diagnostic(off, subgroup_uniformity);
@group(0) @binding(0) var<storage, read> mm_a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> mm_b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> mm_out: array<f32>;
@group(0) @binding(3) var<storage, read> ep0: array<f32>;  // %15 param:mix.bias
@group(0) @binding(4) var<storage, read> ep1: array<f32>;  // %21
@group(0) @binding(5) var<storage, read> ep2: array<f32>;  // %22 param:mix.lora.B
// 0 at run time, unknown to the shader compiler: loops bounded with it are not unrolled
fn lrk_opaque_zero() -> u32 {
  return u32(arrayLength(&mm_a) == 0u);
}
// epilogue: %18, %28
fn lrk_epilogue(acc: f32, batch: u32, row: u32, col: u32) -> f32 {
  let f = i32((batch * 32u + row) * 128u + col);
  let c0 = (f / 128);
  let c1 = (f % 128);
  let v2 = ep0[c1];
  let v3 = v2;
  let v4 = v3;
  let v5 = acc + v4;
  var lr6 = 0.0; // low-rank %24 = matmul %21, %23 : f32[32, 128]
  for (var l7 = i32(lrk_opaque_zero()); l7 < 4i; l7++) {
    let f8 = ((c0 * 4) + l7);
    let v9 = ep1[f8];
    let f10 = ((c1 * 4) + l7);
    let v11 = ep2[f10];
    let v12 = v11;
    lr6 += v9 * v12;
  }
  let v13 = lr6;
  let v14 = 2.0f * v13;
  let v15 = v5 + v14;
  return v15;
}
fn mm_a_at(i: u32) -> f32 { return mm_a[i >> 2u][i & 3u]; }
fn mm_b_at(i: u32) -> f32 { return mm_b[i >> 2u][i & 3u]; }
fn mm_epilogue(acc: f32, row: u32, col: u32, batch: u32) -> f32 {
  return lrk_epilogue(acc, batch, row, col);
}
fn mm_store(batch: u32, row: u32, col: u32, acc: f32) {
  if (row < 32u && col < 128u) {
    mm_out[batch * 4096u + row * 128u + col] = mm_epilogue(acc, row, col, batch);
  }
}
/** One output the plain way: the naive variant, and the subgroup variant's fallback. */
fn mm_dot(batch: u32, row: u32, col: u32) -> f32 {
  let aOff = batch * 4096u;
  let bOff = batch * 16384u;
  var acc = 0.0;
  for (var l = lrk_opaque_zero(); l < 128u; l++) {
    acc += mm_a_at(aOff + row * 128u + l) * mm_b_at(bOff + col * 128u + l);
  }
  return acc;
}
@compute @workgroup_size(1, 8, 1)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32, @builtin(subgroup_size) sg_size: u32) {
  let lrk_zero = lrk_opaque_zero(); // 0, unknown to the shader compiler
  let batch = wg.z;
  let row0 = (wg.y * 8u + lid.y) * 2u;
  let col0 = (wg.x * 1u + lid.x) * 32u;
  if (sg_size < 8u) {
    for (var i = lrk_zero; i < 64u; i++) {
      let row = row0 + i / 32u;
      let col = col0 + i % 32u;
      if (row < 32u && col < 128u) {
        mm_store(batch, row, col, mm_dot(batch, row, col));
      }
    }
    return;
  }
  let aOff = batch * 4096u;
  let bOff = batch * 16384u;
  let rr0 = min(row0 + 0u, 31u);
  let rr1 = min(row0 + 1u, 31u);
  let cc0 = min(col0 + 0u, 127u);
  let cc1 = min(col0 + 1u, 127u);
  let cc2 = min(col0 + 2u, 127u);
  let cc3 = min(col0 + 3u, 127u);
  let cc4 = min(col0 + 4u, 127u);
  let cc5 = min(col0 + 5u, 127u);
  let cc6 = min(col0 + 6u, 127u);
  let cc7 = min(col0 + 7u, 127u);
  let cc8 = min(col0 + 8u, 127u);
  let cc9 = min(col0 + 9u, 127u);
  let cc10 = min(col0 + 10u, 127u);
  let cc11 = min(col0 + 11u, 127u);
  let cc12 = min(col0 + 12u, 127u);
  let cc13 = min(col0 + 13u, 127u);
  let cc14 = min(col0 + 14u, 127u);
  let cc15 = min(col0 + 15u, 127u);
  let cc16 = min(col0 + 16u, 127u);
  let cc17 = min(col0 + 17u, 127u);
  let cc18 = min(col0 + 18u, 127u);
  let cc19 = min(col0 + 19u, 127u);
  let cc20 = min(col0 + 20u, 127u);
  let cc21 = min(col0 + 21u, 127u);
  let cc22 = min(col0 + 22u, 127u);
  let cc23 = min(col0 + 23u, 127u);
  let cc24 = min(col0 + 24u, 127u);
  let cc25 = min(col0 + 25u, 127u);
  let cc26 = min(col0 + 26u, 127u);
  let cc27 = min(col0 + 27u, 127u);
  let cc28 = min(col0 + 28u, 127u);
  let cc29 = min(col0 + 29u, 127u);
  let cc30 = min(col0 + 30u, 127u);
  let cc31 = min(col0 + 31u, 127u);
  var acc0_0: vec4<f32> = vec4<f32>();
  var acc0_1: vec4<f32> = vec4<f32>();
  var acc0_2: vec4<f32> = vec4<f32>();
  var acc0_3: vec4<f32> = vec4<f32>();
  var acc0_4: vec4<f32> = vec4<f32>();
  var acc0_5: vec4<f32> = vec4<f32>();
  var acc0_6: vec4<f32> = vec4<f32>();
  var acc0_7: vec4<f32> = vec4<f32>();
  var acc1_0: vec4<f32> = vec4<f32>();
  var acc1_1: vec4<f32> = vec4<f32>();
  var acc1_2: vec4<f32> = vec4<f32>();
  var acc1_3: vec4<f32> = vec4<f32>();
  var acc1_4: vec4<f32> = vec4<f32>();
  var acc1_5: vec4<f32> = vec4<f32>();
  var acc1_6: vec4<f32> = vec4<f32>();
  var acc1_7: vec4<f32> = vec4<f32>();
  for (var k0 = lrk_zero; k0 < 128u; k0 += 4u) {
    let va0 = mm_a[(aOff + rr0 * 128u + k0) >> 2u];
    let va1 = mm_a[(aOff + rr1 * 128u + k0) >> 2u];
    let vbl_0 = mm_b[(bOff + min(col0 + 4u * (lane % 8u) + 0u, 127u) * 128u + k0) >> 2u];
    let vbl_1 = mm_b[(bOff + min(col0 + 4u * (lane % 8u) + 1u, 127u) * 128u + k0) >> 2u];
    let vbl_2 = mm_b[(bOff + min(col0 + 4u * (lane % 8u) + 2u, 127u) * 128u + k0) >> 2u];
    let vbl_3 = mm_b[(bOff + min(col0 + 4u * (lane % 8u) + 3u, 127u) * 128u + k0) >> 2u];
    let bl_0 = vec4<f32>(vbl_0.x, vbl_1.x, vbl_2.x, vbl_3.x);
    let bl_1 = vec4<f32>(vbl_0.y, vbl_1.y, vbl_2.y, vbl_3.y);
    let bl_2 = vec4<f32>(vbl_0.z, vbl_1.z, vbl_2.z, vbl_3.z);
    let bl_3 = vec4<f32>(vbl_0.w, vbl_1.w, vbl_2.w, vbl_3.w);
    let b0_0 = subgroupBroadcast(bl_0, 0u);
    let b0_1 = subgroupBroadcast(bl_0, 1u);
    let b0_2 = subgroupBroadcast(bl_0, 2u);
    let b0_3 = subgroupBroadcast(bl_0, 3u);
    let b0_4 = subgroupBroadcast(bl_0, 4u);
    let b0_5 = subgroupBroadcast(bl_0, 5u);
    let b0_6 = subgroupBroadcast(bl_0, 6u);
    let b0_7 = subgroupBroadcast(bl_0, 7u);
    let b1_0 = subgroupBroadcast(bl_1, 0u);
    let b1_1 = subgroupBroadcast(bl_1, 1u);
    let b1_2 = subgroupBroadcast(bl_1, 2u);
    let b1_3 = subgroupBroadcast(bl_1, 3u);
    let b1_4 = subgroupBroadcast(bl_1, 4u);
    let b1_5 = subgroupBroadcast(bl_1, 5u);
    let b1_6 = subgroupBroadcast(bl_1, 6u);
    let b1_7 = subgroupBroadcast(bl_1, 7u);
    let b2_0 = subgroupBroadcast(bl_2, 0u);
    let b2_1 = subgroupBroadcast(bl_2, 1u);
    let b2_2 = subgroupBroadcast(bl_2, 2u);
    let b2_3 = subgroupBroadcast(bl_2, 3u);
    let b2_4 = subgroupBroadcast(bl_2, 4u);
    let b2_5 = subgroupBroadcast(bl_2, 5u);
    let b2_6 = subgroupBroadcast(bl_2, 6u);
    let b2_7 = subgroupBroadcast(bl_2, 7u);
    let b3_0 = subgroupBroadcast(bl_3, 0u);
    let b3_1 = subgroupBroadcast(bl_3, 1u);
    let b3_2 = subgroupBroadcast(bl_3, 2u);
    let b3_3 = subgroupBroadcast(bl_3, 3u);
    let b3_4 = subgroupBroadcast(bl_3, 4u);
    let b3_5 = subgroupBroadcast(bl_3, 5u);
    let b3_6 = subgroupBroadcast(bl_3, 6u);
    let b3_7 = subgroupBroadcast(bl_3, 7u);
    acc0_0 += b0_0 * va0.x;
    acc0_1 += b0_1 * va0.x;
    acc0_2 += b0_2 * va0.x;
    acc0_3 += b0_3 * va0.x;
    acc0_4 += b0_4 * va0.x;
    acc0_5 += b0_5 * va0.x;
    acc0_6 += b0_6 * va0.x;
    acc0_7 += b0_7 * va0.x;
    acc1_0 += b0_0 * va1.x;
    acc1_1 += b0_1 * va1.x;
    acc1_2 += b0_2 * va1.x;
    acc1_3 += b0_3 * va1.x;
    acc1_4 += b0_4 * va1.x;
    acc1_5 += b0_5 * va1.x;
    acc1_6 += b0_6 * va1.x;
    acc1_7 += b0_7 * va1.x;
    acc0_0 += b1_0 * va0.y;
    acc0_1 += b1_1 * va0.y;
    acc0_2 += b1_2 * va0.y;
    acc0_3 += b1_3 * va0.y;
    acc0_4 += b1_4 * va0.y;
    acc0_5 += b1_5 * va0.y;
    acc0_6 += b1_6 * va0.y;
    acc0_7 += b1_7 * va0.y;
    acc1_0 += b1_0 * va1.y;
    acc1_1 += b1_1 * va1.y;
    acc1_2 += b1_2 * va1.y;
    acc1_3 += b1_3 * va1.y;
    acc1_4 += b1_4 * va1.y;
    acc1_5 += b1_5 * va1.y;
    acc1_6 += b1_6 * va1.y;
    acc1_7 += b1_7 * va1.y;
    acc0_0 += b2_0 * va0.z;
    acc0_1 += b2_1 * va0.z;
    acc0_2 += b2_2 * va0.z;
    acc0_3 += b2_3 * va0.z;
    acc0_4 += b2_4 * va0.z;
    acc0_5 += b2_5 * va0.z;
    acc0_6 += b2_6 * va0.z;
    acc0_7 += b2_7 * va0.z;
    acc1_0 += b2_0 * va1.z;
    acc1_1 += b2_1 * va1.z;
    acc1_2 += b2_2 * va1.z;
    acc1_3 += b2_3 * va1.z;
    acc1_4 += b2_4 * va1.z;
    acc1_5 += b2_5 * va1.z;
    acc1_6 += b2_6 * va1.z;
    acc1_7 += b2_7 * va1.z;
    acc0_0 += b3_0 * va0.w;
    acc0_1 += b3_1 * va0.w;
    acc0_2 += b3_2 * va0.w;
    acc0_3 += b3_3 * va0.w;
    acc0_4 += b3_4 * va0.w;
    acc0_5 += b3_5 * va0.w;
    acc0_6 += b3_6 * va0.w;
    acc0_7 += b3_7 * va0.w;
    acc1_0 += b3_0 * va1.w;
    acc1_1 += b3_1 * va1.w;
    acc1_2 += b3_2 * va1.w;
    acc1_3 += b3_3 * va1.w;
    acc1_4 += b3_4 * va1.w;
    acc1_5 += b3_5 * va1.w;
    acc1_6 += b3_6 * va1.w;
    acc1_7 += b3_7 * va1.w;
  }
  for (var i = lrk_zero; i < 16u; i++) {
    let row = row0 + i / 8u;
    let col = col0 + (i % 8u) * 4u;
    var v = acc0_0;
    v = select(v, acc0_1, i == 1u);
    v = select(v, acc0_2, i == 2u);
    v = select(v, acc0_3, i == 3u);
    v = select(v, acc0_4, i == 4u);
    v = select(v, acc0_5, i == 5u);
    v = select(v, acc0_6, i == 6u);
    v = select(v, acc0_7, i == 7u);
    v = select(v, acc1_0, i == 8u);
    v = select(v, acc1_1, i == 9u);
    v = select(v, acc1_2, i == 10u);
    v = select(v, acc1_3, i == 11u);
    v = select(v, acc1_4, i == 12u);
    v = select(v, acc1_5, i == 13u);
    v = select(v, acc1_6, i == 14u);
    v = select(v, acc1_7, i == 15u);
    mm_store(batch, row, col + 0u, v.x);
    mm_store(batch, row, col + 1u, v.y);
    mm_store(batch, row, col + 2u, v.z);
    mm_store(batch, row, col + 3u, v.w);
  }
}
