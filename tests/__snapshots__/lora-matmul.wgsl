// matmul 32x128x128 NT (subgroup 4x16 wg 1x8 v4)
// computes:
//   %13 = permute [1,0] %12 : f32[128, 128]  // stdlib/nn.lrk:31
//   %14 = matmul %11, %13 : f32[32, 128]  // stdlib/nn.lrk:31
//   %16 = reshape %15 : f32[1, 128]  // stdlib/nn.lrk:31
//   %17 = expand %16 : f32[32, 128]  // stdlib/nn.lrk:31
//   %18 = add %14, %17 : f32[32, 128]  // stdlib/nn.lrk:31
//   %23 = permute [1,0] %22 : f32[4, 128]  // stdlib/adapters.lrk:39
//   %24 = matmul %21, %23 : f32[32, 128]  // stdlib/adapters.lrk:39
//   %26 = const 2 : f32[32, 128]  // stdlib/adapters.lrk:39
//   %27 = mul %26, %24 : f32[32, 128]  // stdlib/adapters.lrk:39
//   %28 = add %18, %27 : f32[32, 128]  // stdlib/adapters.lrk:39
// from: stdlib/nn.lrk:31, stdlib/adapters.lrk:39
// matmul 1x32x128x128 NT, subgroup 4x16 wg 1x8 v4: A [b,m,k] vec4, B [b,n,k] vec4
enable subgroups;
diagnostic(off, subgroup_uniformity);
@group(0) @binding(0) var<storage, read> mm_a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> mm_b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> mm_out: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> mm_ld0: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> mm_lu0: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> ep0: array<f32>;  // %15 param:mix.bias
// 0 at run time, unknown to the shader compiler: loops bounded with it are not unrolled
fn lrk_opaque_zero() -> u32 {
  return u32(arrayLength(&mm_a) == 0u);
}
// epilogue: %18, %28
fn lrk_epilogue(acc: f32, batch: u32, row: u32, col: u32, lr0: f32) -> f32 {
  let f = i32((batch * 32u + row) * 128u + col);
  let c0 = (f / 128);
  let c1 = (f % 128);
  let v2 = ep0[c1];
  let v3 = v2;
  let v4 = v3;
  let v5 = acc + v4;
  let v6 = 2.0f * lr0;
  let v7 = v5 + v6;
  return v7;
}
fn mm_a_at(i: u32) -> f32 { return mm_a[i >> 2u][i & 3u]; }
fn mm_b_at(i: u32) -> f32 { return mm_b[i >> 2u][i & 3u]; }
fn mm_ld0_at(i: u32) -> f32 { return mm_ld0[i >> 2u][i & 3u]; }
fn mm_lu0_at(i: u32) -> f32 { return mm_lu0[i >> 2u][i & 3u]; }
/** Low-rank branch 0 at one element: Σ_l down[row, l]·up(l, col), rank 4. */
fn mm_branch0(row: u32, col: u32) -> f32 {
  let r = min(row, 31u);
  let c = min(col, 127u);
  var s = 0.0;
  for (var l = lrk_opaque_zero(); l < 4u; l++) {
    s += mm_ld0_at(r * 4u + l) * mm_lu0_at(c * 4u + l);
  }
  return s;
}
/** mm_branch0 at columns col..col+3 (n a multiple of 4), in one loop. */
fn mm_branch4_0(row: u32, col: u32) -> vec4<f32> {
  let r = min(row, 31u);
  let c = min(col, 124u);
  var s = vec4<f32>();
  for (var l = lrk_opaque_zero(); l < 4u; l++) {
    let d = mm_ld0_at(r * 4u + l);
    s += d * vec4<f32>(mm_lu0_at((c + 0u) * 4u + l), mm_lu0_at((c + 1u) * 4u + l), mm_lu0_at((c + 2u) * 4u + l), mm_lu0_at((c + 3u) * 4u + l));
  }
  return s;
}
fn mm_epilogue(acc: f32, row: u32, col: u32, batch: u32, lr0: f32) -> f32 {
  return lrk_epilogue(acc, batch, row, col, lr0);
}
/** Columns col..col+3 (col a multiple of 4, n of 4: all inside or all outside). */
fn mm_store4(batch: u32, row: u32, col: u32, acc: vec4<f32>, lr0: vec4<f32>) {
  if (row < 32u && col < 128u) {
    mm_out[(batch * 4096u + row * 128u + col) >> 2u] = vec4<f32>(
      mm_epilogue(acc.x, row, col, batch, lr0.x),
      mm_epilogue(acc.y, row, col + 1u, batch, lr0.y),
      mm_epilogue(acc.z, row, col + 2u, batch, lr0.z),
      mm_epilogue(acc.w, row, col + 3u, batch, lr0.w)
    );
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
  let row0 = (wg.y * 8u + lid.y) * 4u;
  let col0 = (wg.x * 1u + lid.x) * 16u;
  if (sg_size < 8u) {
    for (var i = lrk_zero; i < 16u; i++) {
      let row = row0 + i / 4u;
      let col = col0 + (i % 4u) * 4u;
      if (row < 32u && col < 128u) {
        mm_store4(batch, row, col, vec4<f32>(mm_dot(batch, row, col + 0u), mm_dot(batch, row, col + 1u), mm_dot(batch, row, col + 2u), mm_dot(batch, row, col + 3u)), mm_branch4_0(row, col));
      }
    }
    return;
  }
  let aOff = batch * 4096u;
  let bOff = batch * 16384u;
  let rr0 = min(row0 + 0u, 31u);
  let rr1 = min(row0 + 1u, 31u);
  let rr2 = min(row0 + 2u, 31u);
  let rr3 = min(row0 + 3u, 31u);
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
  var acc0_0: vec4<f32> = vec4<f32>();
  var acc0_1: vec4<f32> = vec4<f32>();
  var acc0_2: vec4<f32> = vec4<f32>();
  var acc0_3: vec4<f32> = vec4<f32>();
  var acc1_0: vec4<f32> = vec4<f32>();
  var acc1_1: vec4<f32> = vec4<f32>();
  var acc1_2: vec4<f32> = vec4<f32>();
  var acc1_3: vec4<f32> = vec4<f32>();
  var acc2_0: vec4<f32> = vec4<f32>();
  var acc2_1: vec4<f32> = vec4<f32>();
  var acc2_2: vec4<f32> = vec4<f32>();
  var acc2_3: vec4<f32> = vec4<f32>();
  var acc3_0: vec4<f32> = vec4<f32>();
  var acc3_1: vec4<f32> = vec4<f32>();
  var acc3_2: vec4<f32> = vec4<f32>();
  var acc3_3: vec4<f32> = vec4<f32>();
  for (var k0 = lrk_zero; k0 < 128u; k0 += 4u) {
    let va0 = mm_a[(aOff + rr0 * 128u + k0) >> 2u];
    let va1 = mm_a[(aOff + rr1 * 128u + k0) >> 2u];
    let va2 = mm_a[(aOff + rr2 * 128u + k0) >> 2u];
    let va3 = mm_a[(aOff + rr3 * 128u + k0) >> 2u];
    let vbl0 = mm_b[(bOff + min(col0 + 0u + lane % 8u, 127u) * 128u + k0) >> 2u];
    let vbl1 = mm_b[(bOff + min(col0 + 8u + lane % 8u, 127u) * 128u + k0) >> 2u];
    let bc0 = subgroupBroadcast(vbl0, 0u);
    let bc1 = subgroupBroadcast(vbl0, 1u);
    let bc2 = subgroupBroadcast(vbl0, 2u);
    let bc3 = subgroupBroadcast(vbl0, 3u);
    let bc4 = subgroupBroadcast(vbl0, 4u);
    let bc5 = subgroupBroadcast(vbl0, 5u);
    let bc6 = subgroupBroadcast(vbl0, 6u);
    let bc7 = subgroupBroadcast(vbl0, 7u);
    let bc8 = subgroupBroadcast(vbl1, 0u);
    let bc9 = subgroupBroadcast(vbl1, 1u);
    let bc10 = subgroupBroadcast(vbl1, 2u);
    let bc11 = subgroupBroadcast(vbl1, 3u);
    let bc12 = subgroupBroadcast(vbl1, 4u);
    let bc13 = subgroupBroadcast(vbl1, 5u);
    let bc14 = subgroupBroadcast(vbl1, 6u);
    let bc15 = subgroupBroadcast(vbl1, 7u);
    let b0_0 = vec4<f32>(bc0.x, bc1.x, bc2.x, bc3.x);
    let b0_1 = vec4<f32>(bc4.x, bc5.x, bc6.x, bc7.x);
    let b0_2 = vec4<f32>(bc8.x, bc9.x, bc10.x, bc11.x);
    let b0_3 = vec4<f32>(bc12.x, bc13.x, bc14.x, bc15.x);
    let b1_0 = vec4<f32>(bc0.y, bc1.y, bc2.y, bc3.y);
    let b1_1 = vec4<f32>(bc4.y, bc5.y, bc6.y, bc7.y);
    let b1_2 = vec4<f32>(bc8.y, bc9.y, bc10.y, bc11.y);
    let b1_3 = vec4<f32>(bc12.y, bc13.y, bc14.y, bc15.y);
    let b2_0 = vec4<f32>(bc0.z, bc1.z, bc2.z, bc3.z);
    let b2_1 = vec4<f32>(bc4.z, bc5.z, bc6.z, bc7.z);
    let b2_2 = vec4<f32>(bc8.z, bc9.z, bc10.z, bc11.z);
    let b2_3 = vec4<f32>(bc12.z, bc13.z, bc14.z, bc15.z);
    let b3_0 = vec4<f32>(bc0.w, bc1.w, bc2.w, bc3.w);
    let b3_1 = vec4<f32>(bc4.w, bc5.w, bc6.w, bc7.w);
    let b3_2 = vec4<f32>(bc8.w, bc9.w, bc10.w, bc11.w);
    let b3_3 = vec4<f32>(bc12.w, bc13.w, bc14.w, bc15.w);
    acc0_0 += b0_0 * va0.x;
    acc0_1 += b0_1 * va0.x;
    acc0_2 += b0_2 * va0.x;
    acc0_3 += b0_3 * va0.x;
    acc1_0 += b0_0 * va1.x;
    acc1_1 += b0_1 * va1.x;
    acc1_2 += b0_2 * va1.x;
    acc1_3 += b0_3 * va1.x;
    acc2_0 += b0_0 * va2.x;
    acc2_1 += b0_1 * va2.x;
    acc2_2 += b0_2 * va2.x;
    acc2_3 += b0_3 * va2.x;
    acc3_0 += b0_0 * va3.x;
    acc3_1 += b0_1 * va3.x;
    acc3_2 += b0_2 * va3.x;
    acc3_3 += b0_3 * va3.x;
    acc0_0 += b1_0 * va0.y;
    acc0_1 += b1_1 * va0.y;
    acc0_2 += b1_2 * va0.y;
    acc0_3 += b1_3 * va0.y;
    acc1_0 += b1_0 * va1.y;
    acc1_1 += b1_1 * va1.y;
    acc1_2 += b1_2 * va1.y;
    acc1_3 += b1_3 * va1.y;
    acc2_0 += b1_0 * va2.y;
    acc2_1 += b1_1 * va2.y;
    acc2_2 += b1_2 * va2.y;
    acc2_3 += b1_3 * va2.y;
    acc3_0 += b1_0 * va3.y;
    acc3_1 += b1_1 * va3.y;
    acc3_2 += b1_2 * va3.y;
    acc3_3 += b1_3 * va3.y;
    acc0_0 += b2_0 * va0.z;
    acc0_1 += b2_1 * va0.z;
    acc0_2 += b2_2 * va0.z;
    acc0_3 += b2_3 * va0.z;
    acc1_0 += b2_0 * va1.z;
    acc1_1 += b2_1 * va1.z;
    acc1_2 += b2_2 * va1.z;
    acc1_3 += b2_3 * va1.z;
    acc2_0 += b2_0 * va2.z;
    acc2_1 += b2_1 * va2.z;
    acc2_2 += b2_2 * va2.z;
    acc2_3 += b2_3 * va2.z;
    acc3_0 += b2_0 * va3.z;
    acc3_1 += b2_1 * va3.z;
    acc3_2 += b2_2 * va3.z;
    acc3_3 += b2_3 * va3.z;
    acc0_0 += b3_0 * va0.w;
    acc0_1 += b3_1 * va0.w;
    acc0_2 += b3_2 * va0.w;
    acc0_3 += b3_3 * va0.w;
    acc1_0 += b3_0 * va1.w;
    acc1_1 += b3_1 * va1.w;
    acc1_2 += b3_2 * va1.w;
    acc1_3 += b3_3 * va1.w;
    acc2_0 += b3_0 * va2.w;
    acc2_1 += b3_1 * va2.w;
    acc2_2 += b3_2 * va2.w;
    acc2_3 += b3_3 * va2.w;
    acc3_0 += b3_0 * va3.w;
    acc3_1 += b3_1 * va3.w;
    acc3_2 += b3_2 * va3.w;
    acc3_3 += b3_3 * va3.w;
  }
  // branch 0 (rank 4) in the tile: added into the product's accumulators, times 2
  for (var l0 = lrk_zero; l0 < 4u; l0 += 4u) {
    let ld0 = 2.0f * mm_ld0[(rr0 * 4u + l0) >> 2u];
    let ld1 = 2.0f * mm_ld0[(rr1 * 4u + l0) >> 2u];
    let ld2 = 2.0f * mm_ld0[(rr2 * 4u + l0) >> 2u];
    let ld3 = 2.0f * mm_ld0[(rr3 * 4u + l0) >> 2u];
    let lv0 = mm_lu0[(min(col0 + 0u + lane % 8u, 127u) * 4u + l0) >> 2u];
    let lv1 = mm_lu0[(min(col0 + 8u + lane % 8u, 127u) * 4u + l0) >> 2u];
    let lc0 = subgroupBroadcast(lv0, 0u);
    let lc1 = subgroupBroadcast(lv0, 1u);
    let lc2 = subgroupBroadcast(lv0, 2u);
    let lc3 = subgroupBroadcast(lv0, 3u);
    let lc4 = subgroupBroadcast(lv0, 4u);
    let lc5 = subgroupBroadcast(lv0, 5u);
    let lc6 = subgroupBroadcast(lv0, 6u);
    let lc7 = subgroupBroadcast(lv0, 7u);
    let lc8 = subgroupBroadcast(lv1, 0u);
    let lc9 = subgroupBroadcast(lv1, 1u);
    let lc10 = subgroupBroadcast(lv1, 2u);
    let lc11 = subgroupBroadcast(lv1, 3u);
    let lc12 = subgroupBroadcast(lv1, 4u);
    let lc13 = subgroupBroadcast(lv1, 5u);
    let lc14 = subgroupBroadcast(lv1, 6u);
    let lc15 = subgroupBroadcast(lv1, 7u);
    {
      let kk = 0u;
      acc0_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld0[kk];
      acc0_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld0[kk];
      acc0_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld0[kk];
      acc0_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld0[kk];
      acc1_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld1[kk];
      acc1_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld1[kk];
      acc1_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld1[kk];
      acc1_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld1[kk];
      acc2_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld2[kk];
      acc2_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld2[kk];
      acc2_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld2[kk];
      acc2_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld2[kk];
      acc3_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld3[kk];
      acc3_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld3[kk];
      acc3_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld3[kk];
      acc3_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld3[kk];
    }
    {
      let kk = 1u;
      acc0_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld0[kk];
      acc0_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld0[kk];
      acc0_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld0[kk];
      acc0_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld0[kk];
      acc1_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld1[kk];
      acc1_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld1[kk];
      acc1_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld1[kk];
      acc1_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld1[kk];
      acc2_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld2[kk];
      acc2_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld2[kk];
      acc2_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld2[kk];
      acc2_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld2[kk];
      acc3_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld3[kk];
      acc3_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld3[kk];
      acc3_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld3[kk];
      acc3_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld3[kk];
    }
    {
      let kk = 2u;
      acc0_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld0[kk];
      acc0_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld0[kk];
      acc0_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld0[kk];
      acc0_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld0[kk];
      acc1_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld1[kk];
      acc1_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld1[kk];
      acc1_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld1[kk];
      acc1_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld1[kk];
      acc2_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld2[kk];
      acc2_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld2[kk];
      acc2_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld2[kk];
      acc2_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld2[kk];
      acc3_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld3[kk];
      acc3_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld3[kk];
      acc3_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld3[kk];
      acc3_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld3[kk];
    }
    {
      let kk = 3u;
      acc0_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld0[kk];
      acc0_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld0[kk];
      acc0_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld0[kk];
      acc0_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld0[kk];
      acc1_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld1[kk];
      acc1_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld1[kk];
      acc1_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld1[kk];
      acc1_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld1[kk];
      acc2_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld2[kk];
      acc2_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld2[kk];
      acc2_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld2[kk];
      acc2_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld2[kk];
      acc3_0 += vec4<f32>(lc0[kk], lc1[kk], lc2[kk], lc3[kk]) * ld3[kk];
      acc3_1 += vec4<f32>(lc4[kk], lc5[kk], lc6[kk], lc7[kk]) * ld3[kk];
      acc3_2 += vec4<f32>(lc8[kk], lc9[kk], lc10[kk], lc11[kk]) * ld3[kk];
      acc3_3 += vec4<f32>(lc12[kk], lc13[kk], lc14[kk], lc15[kk]) * ld3[kk];
    }
  }
  for (var i = lrk_zero; i < 16u; i++) {
    let row = row0 + i / 4u;
    let col = col0 + (i % 4u) * 4u;
    var v = acc0_0;
    v = select(v, acc0_1, i == 1u);
    v = select(v, acc0_2, i == 2u);
    v = select(v, acc0_3, i == 3u);
    v = select(v, acc1_0, i == 4u);
    v = select(v, acc1_1, i == 5u);
    v = select(v, acc1_2, i == 6u);
    v = select(v, acc1_3, i == 7u);
    v = select(v, acc2_0, i == 8u);
    v = select(v, acc2_1, i == 9u);
    v = select(v, acc2_2, i == 10u);
    v = select(v, acc2_3, i == 11u);
    v = select(v, acc3_0, i == 12u);
    v = select(v, acc3_1, i == 13u);
    v = select(v, acc3_2, i == 14u);
    v = select(v, acc3_3, i == 15u);
    mm_store4(batch, row, col, v, vec4<f32>());
  }
}
