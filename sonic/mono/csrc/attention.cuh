// Attention of one KV head group: a split's partial output (online softmax over its keys) and the
// merge of the splits in split order.

// One KV split of one group for every row: unnormalised output, max and sum per q head. Keys are
// taken ATTN_CHUNK at a time with an online softmax across chunks. Each pass issues all of its K and
// V loads at once (into registers: a key row per thread, column pairs of V per thread), so a pass
// costs one round trip to memory, the next pass's loads overlapping this pass's last barrier.
__device__ void op_attn_partial(const Params& p, const Instruction& ins, uint8_t* smem, unsigned long long epoch) {
    const int t = threadIdx.x, warp = t / 32, lane = t % 32;
    float* qs = reinterpret_cast<float*>(smem + OFF_ATTN_Q);
    float* run = reinterpret_cast<float*>(smem + OFF_ATTN_RUN);  // [0]: max, [GQA]: sum, [2 GQA]: rescale
    float* scratch = reinterpret_cast<float*>(smem + OFF_ATTN);
    const size_t base = (static_cast<size_t>(ins.layer) * NUM_KV_HEADS + ins.group) * p.max_len * HEAD_DIM;
    const bf16* keys = p.k_cache + base;
    const bf16* values = p.v_cache + base;
    const int d2 = t % HALF_DIM, lane_k = t / HALF_DIM;
    const bool value_thread = t < VALUE_THREADS;
    uint4 kreg[HEAD_DIM / 8];
    unsigned vreg[VALUE_REGS];
    auto load = [&](int c0, int n) {
        if (t < n) {
            const uint4* key = reinterpret_cast<const uint4*>(keys + static_cast<size_t>(c0 + t) * HEAD_DIM);
#pragma unroll
            for (int c = 0; c < HEAD_DIM / 8; ++c) kreg[c] = __ldcg(key + c);
        }
#pragma unroll
        for (int i = 0; i < VALUE_REGS; ++i) {
            const int j = lane_k + KEY_LANES * i;
            if (value_thread && j < n)
                vreg[i] = __ldcg(reinterpret_cast<const unsigned*>(values + static_cast<size_t>(c0 + j) * HEAD_DIM) + d2);
        }
    };
    for (int m = 0; m < ROWS; ++m) {
        const int pos = position(p, m, epoch);
        const int lo = SLIDING_WINDOW ? max(0, pos - SLIDING_WINDOW + 1) : 0, hi = pos + 1;
        const int chunk = (hi - lo + KV_SPLITS - 1) / KV_SPLITS;
        const int a = min(lo + ins.split * chunk, hi), b = min(a + chunk, hi);
        const int out0 = (m * NUM_HEADS + ins.group * GQA_GROUP) * KV_SPLITS + ins.split;  // head h: + h * KV_SPLITS
        int c0 = a, n = min(ATTN_CHUNK, b - a);
        load(c0, n);
        for (int i = t; i < GQA_GROUP * HEAD_DIM; i += CONSUMERS)
            qs[i] = __bfloat162float(__ldcg(p.q + m * Q_SIZE + ins.group * GQA_GROUP * HEAD_DIM + i));
        if (t < GQA_GROUP) { run[t] = -INFINITY; run[GQA_GROUP + t] = 0.f; }
        consumers_sync();
        float acc[GQA_GROUP][2];
#pragma unroll
        for (int h = 0; h < GQA_GROUP; ++h) acc[h][0] = acc[h][1] = 0.f;
        while (c0 < b) {
            if (t < n) {
                float dot[GQA_GROUP];
#pragma unroll
                for (int h = 0; h < GQA_GROUP; ++h) dot[h] = 0.f;
#pragma unroll
                for (int c = 0; c < HEAD_DIM / 8; ++c) {
                    const __nv_bfloat162* k2 = reinterpret_cast<const __nv_bfloat162*>(&kreg[c]);
#pragma unroll
                    for (int j = 0; j < 4; ++j) {
                        const float2 kf = __bfloat1622float2(k2[j]);
#pragma unroll
                        for (int h = 0; h < GQA_GROUP; ++h)
                            dot[h] = fmaf(qs[h * HEAD_DIM + c * 8 + 2 * j], kf.x,
                                          fmaf(qs[h * HEAD_DIM + c * 8 + 2 * j + 1], kf.y, dot[h]));
                    }
                }
#pragma unroll
                for (int h = 0; h < GQA_GROUP; ++h) scratch[h * ATTN_CHUNK + t] = dot[h] * SM_SCALE;
            }
            consumers_sync();
            for (int h = warp; h < GQA_GROUP; h += CONSUMER_WARPS) {  // one warp per head
                float best = -INFINITY;
                for (int j = lane; j < n; j += 32) best = fmaxf(best, scratch[h * ATTN_CHUNK + j]);
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, o));
                const float old = run[h], now = fmaxf(old, best);
                float sum = 0.f;
                for (int j = lane; j < n; j += 32) {
                    const float e = __expf(scratch[h * ATTN_CHUNK + j] - now);
                    scratch[h * ATTN_CHUNK + j] = e;
                    sum += e;
                }
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
                __syncwarp();
                if (lane == 0) {
                    const float rescale = __expf(old - now);  // 0 on the first chunk
                    run[h] = now;
                    run[GQA_GROUP + h] = run[GQA_GROUP + h] * rescale + sum;
                    run[2 * GQA_GROUP + h] = rescale;
                }
            }
            consumers_sync();
#pragma unroll
            for (int h = 0; h < GQA_GROUP; ++h) {
                const float rescale = run[2 * GQA_GROUP + h];
                acc[h][0] *= rescale;
                acc[h][1] *= rescale;
            }
#pragma unroll
            for (int i = 0; i < VALUE_REGS; ++i) {
                const int j = lane_k + KEY_LANES * i;
                if (!value_thread || j >= n) break;
                const float2 vf = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&vreg[i]));
#pragma unroll
                for (int h = 0; h < GQA_GROUP; ++h) {
                    const float pj = scratch[h * ATTN_CHUNK + j];
                    acc[h][0] = fmaf(pj, vf.x, acc[h][0]);
                    acc[h][1] = fmaf(pj, vf.y, acc[h][1]);
                }
            }
            c0 += ATTN_CHUNK;
            n = min(ATTN_CHUNK, b - c0);
            if (c0 < b) load(c0, n);  // in flight across the barrier
            consumers_sync();
        }
        // Sum the key lanes' partial outputs in lane order.
#pragma unroll
        for (int h = 0; h < GQA_GROUP && value_thread; ++h) {
            scratch[(lane_k * GQA_GROUP + h) * HEAD_DIM + 2 * d2] = acc[h][0];
            scratch[(lane_k * GQA_GROUP + h) * HEAD_DIM + 2 * d2 + 1] = acc[h][1];
        }
        consumers_sync();
        for (int i = t; i < GQA_GROUP * HEAD_DIM; i += CONSUMERS) {
            const int h = i / HEAD_DIM, d = i % HEAD_DIM;
            float s = 0.f;
            for (int l = 0; l < KEY_LANES; ++l) s += scratch[(l * GQA_GROUP + h) * HEAD_DIM + d];
            __stcg(p.attn_o + static_cast<size_t>(out0 + h * KV_SPLITS) * HEAD_DIM + d, s);
        }
        if (t < GQA_GROUP) {
            __stcg(p.attn_max + out0 + t * KV_SPLITS, a == b ? -INFINITY : run[t]);
            __stcg(p.attn_sum + out0 + t * KV_SPLITS, run[GQA_GROUP + t]);
        }
        consumers_sync();
    }
}

// The merge of a head's KV splits, in split order (deterministic), shared by ATTN_COMBINE and O's
// staging (Tiling.combine_in_o). First merge_scales: for each (row, head) of heads h0..h0+nh-1 the
// split scales and the total into `merge` (the reduction scratch, free outside a matvec); then, after
// a barrier, merged() gives any feature of those heads.
constexpr int MERGE_FLOATS = ROWS * NUM_HEADS * (KV_SPLITS + 1);
static_assert(MERGE_FLOATS <= RED_FLOATS, "too many heads x splits to merge in the reduction scratch");
__device__ void merge_scales(const Params& p, float* merge, int h0, int nh, int t) {
    for (int i = t; i < ROWS * nh; i += CONSUMERS) {
        const int m = i / nh, base = (m * NUM_HEADS + h0 + i % nh) * KV_SPLITS;
        float best = -INFINITY;
        for (int s = 0; s < KV_SPLITS; ++s) best = fmaxf(best, __ldcg(p.attn_max + base + s));
        float total = 0.f;
        for (int s = 0; s < KV_SPLITS; ++s) {
            const float scale = __expf(__ldcg(p.attn_max + base + s) - best);
            merge[i * KV_SPLITS + s] = scale;
            total += scale * __ldcg(p.attn_sum + base + s);
        }
        merge[ROWS * nh * KV_SPLITS + i] = total;
    }
}

// Feature d of head h0 + hi of row m, merged (bf16, as the reference's attention output).
__device__ __forceinline__ bf16 merged(const Params& p, const float* merge, int h0, int nh, int m, int hi, int d) {
    const int base = (m * NUM_HEADS + h0 + hi) * KV_SPLITS;
    const float* scale = merge + (m * nh + hi) * KV_SPLITS;
    float out = 0.f;
    for (int s = 0; s < KV_SPLITS; ++s) out += scale[s] * __ldcg(p.attn_o + static_cast<size_t>(base + s) * HEAD_DIM + d);
    return __float2bfloat16(out / merge[ROWS * nh * KV_SPLITS + m * nh + hi]);
}

__device__ void op_attn_combine(const Params& p, const Instruction& ins, uint8_t* smem) {
    const int t = threadIdx.x, h0 = ins.group * GQA_GROUP;
    float* merge = reinterpret_cast<float*>(smem + OFF_RED);
    merge_scales(p, merge, h0, GQA_GROUP, t);
    consumers_sync();
    for (int i = t; i < ROWS * GQA_GROUP * HEAD_DIM; i += CONSUMERS) {
        const int m = i / (GQA_GROUP * HEAD_DIM), hi = (i / HEAD_DIM) % GQA_GROUP, d = i % HEAD_DIM;
        __stcg(reinterpret_cast<unsigned short*>(p.attn + m * Q_SIZE + (h0 + hi) * HEAD_DIM + d),
               __bfloat16_as_ushort(merged(p, merge, h0, GQA_GROUP, m, hi, d)));
    }
}

// O's inputs with the merge folded in: x[m][c] = attention output feature k0 + c.
__device__ void stage_attention(const Params& p, uint8_t* smem, int k0, int k1, int t) {
    float* merge = reinterpret_cast<float*>(smem + OFF_RED);
    bf16* x = reinterpret_cast<bf16*>(smem + OFF_X);
    const int h0 = k0 / HEAD_DIM, nh = (k1 + HEAD_DIM - 1) / HEAD_DIM - h0, n = k1 - k0;
    merge_scales(p, merge, h0, nh, t);
    consumers_sync();
    for (int i = t; i < ROWS * n; i += CONSUMERS) {
        const int m = i / n, c = i % n, k = k0 + c;
        x[m * X_COLS + c] = merged(p, merge, h0, nh, m, k / HEAD_DIM - h0, k % HEAD_DIM);
    }
    consumers_sync();
}
