// map f32[128, 4] %167 %175 %205 %218 %226 %256
// computes:
//   %152 = permute [1,0] %151 : f32[128, 4]  // stdlib/adapters.lrk:39
//   %154 = permute [1,0] %153 : f32[4, 128]  // stdlib/adapters.lrk:39
//   %162 = const 0.9 : f32[4, 128]  // stdlib/optim.lrk:51
//   %163 = mul %162, %158 : f32[4, 128]  // stdlib/optim.lrk:51
//   %165 = const 0.09999999999999998 : f32[4, 128]  // stdlib/optim.lrk:51
//   %166 = mul %165, %154 : f32[4, 128]  // stdlib/optim.lrk:51
//   %167 = add %163, %166 : f32[4, 128]  // stdlib/optim.lrk:51
//   %169 = const 0.999 : f32[4, 128]  // stdlib/optim.lrk:52
//   %170 = mul %169, %160 : f32[4, 128]  // stdlib/optim.lrk:52
//   %172 = const 0.0010000000000000009 : f32[4, 128]  // stdlib/optim.lrk:52
//   %173 = mul %172, %154 : f32[4, 128]  // stdlib/optim.lrk:52
//   %174 = mul %173, %154 : f32[4, 128]  // stdlib/optim.lrk:52
//   %175 = add %170, %174 : f32[4, 128]  // stdlib/optim.lrk:52
//   %180 = slice starts=[1] steps=[1] %127 : f32[1]  // stdlib/optim.lrk:53
//   %181 = reshape %180 : f32[1, 1]  // stdlib/optim.lrk:53
//   %182 = expand %181 : f32[4, 128]  // stdlib/optim.lrk:53
//   %183 = div %167, %182 : f32[4, 128]  // stdlib/optim.lrk:53
//   %188 = slice starts=[2] steps=[1] %127 : f32[1]  // stdlib/optim.lrk:54
//   %189 = reshape %188 : f32[1, 1]  // stdlib/optim.lrk:54
//   %190 = expand %189 : f32[4, 128]  // stdlib/optim.lrk:54
//   %191 = div %175, %190 : f32[4, 128]  // stdlib/optim.lrk:54
//   %192 = sqrt %191 : f32[4, 128]  // stdlib/optim.lrk:55
//   %194 = const 1e-8 : f32[4, 128]  // stdlib/optim.lrk:55
//   %195 = add %192, %194 : f32[4, 128]  // stdlib/optim.lrk:55
//   %196 = div %183, %195 : f32[4, 128]  // stdlib/optim.lrk:55
//   %198 = const 0.01 : f32[4, 128]  // stdlib/optim.lrk:55
//   %199 = mul %198, %19 : f32[4, 128]  // stdlib/optim.lrk:55
//   %200 = add %196, %199 : f32[4, 128]  // stdlib/optim.lrk:55
//   %201 = slice starts=[3] steps=[1] %127 : f32[1]  // stdlib/optim.lrk:55
//   %202 = reshape %201 : f32[1, 1]  // stdlib/optim.lrk:55
//   %203 = expand %202 : f32[4, 128]  // stdlib/optim.lrk:55
//   %204 = mul %203, %200 : f32[4, 128]  // stdlib/optim.lrk:55
//   %205 = sub %19, %204 : f32[4, 128]
//   %213 = const 0.9 : f32[128, 4]  // stdlib/optim.lrk:51
//   %214 = mul %213, %209 : f32[128, 4]  // stdlib/optim.lrk:51
//   %216 = const 0.09999999999999998 : f32[128, 4]  // stdlib/optim.lrk:51
//   %217 = mul %216, %152 : f32[128, 4]  // stdlib/optim.lrk:51
//   %218 = add %214, %217 : f32[128, 4]  // stdlib/optim.lrk:51
//   %220 = const 0.999 : f32[128, 4]  // stdlib/optim.lrk:52
//   %221 = mul %220, %211 : f32[128, 4]  // stdlib/optim.lrk:52
//   %223 = const 0.0010000000000000009 : f32[128, 4]  // stdlib/optim.lrk:52
//   %224 = mul %223, %152 : f32[128, 4]  // stdlib/optim.lrk:52
//   %225 = mul %224, %152 : f32[128, 4]  // stdlib/optim.lrk:52
//   %226 = add %221, %225 : f32[128, 4]  // stdlib/optim.lrk:52
//   %231 = slice starts=[1] steps=[1] %127 : f32[1]  // stdlib/optim.lrk:53
//   %232 = reshape %231 : f32[1, 1]  // stdlib/optim.lrk:53
//   %233 = expand %232 : f32[128, 4]  // stdlib/optim.lrk:53
//   %234 = div %218, %233 : f32[128, 4]  // stdlib/optim.lrk:53
//   %239 = slice starts=[2] steps=[1] %127 : f32[1]  // stdlib/optim.lrk:54
//   %240 = reshape %239 : f32[1, 1]  // stdlib/optim.lrk:54
//   %241 = expand %240 : f32[128, 4]  // stdlib/optim.lrk:54
//   %242 = div %226, %241 : f32[128, 4]  // stdlib/optim.lrk:54
//   %243 = sqrt %242 : f32[128, 4]  // stdlib/optim.lrk:55
//   %245 = const 1e-8 : f32[128, 4]  // stdlib/optim.lrk:55
//   %246 = add %243, %245 : f32[128, 4]  // stdlib/optim.lrk:55
//   %247 = div %234, %246 : f32[128, 4]  // stdlib/optim.lrk:55
//   %249 = const 0.01 : f32[128, 4]  // stdlib/optim.lrk:55
//   %250 = mul %249, %22 : f32[128, 4]  // stdlib/optim.lrk:55
//   %251 = add %247, %250 : f32[128, 4]  // stdlib/optim.lrk:55
//   %252 = slice starts=[3] steps=[1] %127 : f32[1]  // stdlib/optim.lrk:55
//   %253 = reshape %252 : f32[1, 1]  // stdlib/optim.lrk:55
//   %254 = expand %253 : f32[128, 4]  // stdlib/optim.lrk:55
//   %255 = mul %254, %251 : f32[128, 4]  // stdlib/optim.lrk:55
//   %256 = sub %22, %255 : f32[128, 4]
// from: stdlib/adapters.lrk:39, stdlib/optim.lrk:51, stdlib/optim.lrk:52, stdlib/optim.lrk:53, stdlib/optim.lrk:54, stdlib/optim.lrk:55
@group(0) @binding(0) var<storage, read_write> out0: array<f32>;  // %167
@group(0) @binding(1) var<storage, read_write> out1: array<f32>;  // %175
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;  // %205
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;  // %218
@group(0) @binding(4) var<storage, read_write> out4: array<f32>;  // %226
@group(0) @binding(5) var<storage, read_write> out5: array<f32>;  // %256
@group(0) @binding(6) var<storage, read> in0: array<f32>;  // %153
@group(0) @binding(7) var<storage, read> in1: array<f32>;  // %127 host_scalars
@group(0) @binding(8) var<storage, read> in2: array<f32>;  // %151
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x + gid.y * 512u;
  let i = t;
  if (i < 512u) {
    let gi = i32(i);
    let v0 = out0[gi];
    let v1 = 0.9f * v0;
    let c2 = (gi / 128);
    let c3 = (gi % 128);
    let f4 = ((c3 * 4) + c2);
    let v5 = in0[f4];
    let v6 = v5;
    let v7 = 0.1f * v6;
    let v8 = v1 + v7;
    let v9 = out1[gi];
    let v10 = 0.999f * v9;
    let v11 = 0.001f * v6;
    let v12 = v11 * v6;
    let v13 = v10 + v12;
    let v14 = out2[gi];
    let c15 = (gi / 128);
    let c16 = (gi % 128);
    let v17 = in1[3];
    let v18 = v17;
    let v19 = v18;
    let v20 = v19;
    let v21 = in1[1];
    let v22 = v21;
    let v23 = v22;
    let v24 = v23;
    let v25 = v8 / v24;
    let v26 = in1[2];
    let v27 = v26;
    let v28 = v27;
    let v29 = v28;
    let v30 = v13 / v29;
    let v31 = sqrt(v30);
    let v32 = v31 + 1e-8f;
    let v33 = v25 / v32;
    let v34 = 0.01f * v14;
    let v35 = v33 + v34;
    let v36 = v20 * v35;
    let v37 = v14 - v36;
    let v38 = out3[gi];
    let v39 = 0.9f * v38;
    let c40 = (gi / 4);
    let c41 = (gi % 4);
    let f42 = ((c41 * 128) + c40);
    let v43 = in2[f42];
    let v44 = v43;
    let v45 = 0.1f * v44;
    let v46 = v39 + v45;
    let v47 = out4[gi];
    let v48 = 0.999f * v47;
    let v49 = 0.001f * v44;
    let v50 = v49 * v44;
    let v51 = v48 + v50;
    let v52 = out5[gi];
    let c53 = (gi / 4);
    let c54 = (gi % 4);
    let v55 = v17;
    let v56 = v55;
    let v57 = v56;
    let v58 = v21;
    let v59 = v58;
    let v60 = v59;
    let v61 = v46 / v60;
    let v62 = v26;
    let v63 = v62;
    let v64 = v63;
    let v65 = v51 / v64;
    let v66 = sqrt(v65);
    let v67 = v66 + 1e-8f;
    let v68 = v61 / v67;
    let v69 = 0.01f * v52;
    let v70 = v68 + v69;
    let v71 = v57 * v70;
    let v72 = v52 - v71;
    out0[i] = v8;
    out1[i] = v13;
    out2[i] = v37;
    out3[i] = v46;
    out4[i] = v51;
    out5[i] = v72;
  }
}
