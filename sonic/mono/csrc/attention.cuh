// Attention of one KV head group: a split's partial output (online softmax over its keys) and the
// merge of the splits in split order.

// q/k norm and RoPE at `pos` of n whole heads held raw (bf16 values as floats), in place, as QKV does
// for whole heads: head(h) is head h's HEAD_DIM values, weight(h) its norm, stat n floats of scratch.
// Explicit roundings, so attention and the k writer get the same bits for the same head.
template <class Head, class Weight>
__device__ void norm_rope_heads(const Params& p, Head head, Weight weight, int n, float* stat, int pos, int t) {
    for (int h = t; h < n; h += CONSUMERS) {
        const float* v = head(h);
        float ss = 0.f;
        for (int d = 0; d < HEAD_DIM; ++d) ss = __fmaf_rn(v[d], v[d], ss);
        stat[h] = rsqrtf(ss / HEAD_DIM + RMS_NORM_EPS);
    }
    consumers_sync();
    const float* cs = p.cos + static_cast<size_t>(pos) * HEAD_DIM;
    const float* sn = p.sin + static_cast<size_t>(pos) * HEAD_DIM;
    for (int i = t; i < n * HALF_DIM; i += CONSUMERS) {
        const int h = i / HALF_DIM, d = i % HALF_DIM;
        float* v = head(h);
        const bf16* w = weight(h);
        const float r = stat[h];
        const int e = d + HALF_DIM;
        const float a = bf16_round(__fmul_rn(__bfloat162float(w[d]), bf16_round(__fmul_rn(v[d], r))));
        const float b = bf16_round(__fmul_rn(__bfloat162float(w[e]), bf16_round(__fmul_rn(v[e], r))));
        v[d] = bf16_round(__fsub_rn(__fmul_rn(a, __ldg(cs + d)), __fmul_rn(b, __ldg(sn + d))));
        v[e] = bf16_round(__fadd_rn(__fmul_rn(b, __ldg(cs + e)), __fmul_rn(a, __ldg(sn + e))));
    }
    consumers_sync();
}

// Under NORM_IN_ATTENTION, by the layer's first O tile: every group's new k row, normed and rotated
// from k_new, into the cache (one row: the builder's rule), a few groups at a time in the reduction
// scratch.
static_assert(!NORM_IN_ATTENTION || ROWS == 1, "q/k norm in attention runs one row");
constexpr int NEW_K_GROUPS = cmin(NUM_KV_HEADS, RED_FLOATS / (HEAD_DIM + 1));
__device__ void write_new_k(const Params& p, const Instruction& ins, uint8_t* smem, unsigned long long epoch, int t) {
    float* vals = reinterpret_cast<float*>(smem + OFF_RED);
    float* stat = vals + NEW_K_GROUPS * HEAD_DIM;
    const bf16* k_norm = p.smalls + static_cast<size_t>(ins.layer) * SMALL_PER_LAYER + SMALL_K_NORM;
    const int pos = position(p, 0, epoch);
    for (int g0 = 0; g0 < NUM_KV_HEADS; g0 += NEW_K_GROUPS) {
        const int n = cmin(NEW_K_GROUPS, NUM_KV_HEADS - g0);
        for (int i = t; i < n * HEAD_DIM; i += CONSUMERS)
            vals[i] = __bfloat162float(__ldcg(p.k_new + g0 * HEAD_DIM + i));
        consumers_sync();
        norm_rope_heads(p, [&](int h) { return vals + h * HEAD_DIM; }, [&](int) { return k_norm; }, n, stat, pos, t);
        for (int i = t; i < n * HEAD_DIM; i += CONSUMERS) {
            const int g = g0 + i / HEAD_DIM, d = i % HEAD_DIM;
            const size_t row = ((static_cast<size_t>(ins.layer) * NUM_KV_HEADS + g) * p.max_len + pos) * HEAD_DIM;
            store_bf16(p.k_cache + row + d, vals[i]);
        }
        consumers_sync();
    }
}

// Before attention's wait (MONO_ATTN_EARLY): thread 0 asks L2 for the keys and values of the first
// row's first pass, all cached in earlier epochs but the one at the position, so the pass's loads
// after the wait need not go to HBM. L2 is where every SM's stores land, so nothing stale is kept.
#ifndef MONO_ATTN_EARLY
#define MONO_ATTN_EARLY 1
#endif
__device__ __forceinline__ void attn_prefetch(const Params& p, const Instruction& ins, unsigned long long epoch) {
    const int pos = position(p, 0, epoch);
    const int lo = SLIDING_WINDOW ? max(0, pos - SLIDING_WINDOW + 1) : 0, hi = pos + 1;
    const int chunk = (hi - lo + KV_SPLITS - 1) / KV_SPLITS;
    const int a = min(lo + ins.split * chunk, hi), n = min(min(ATTN_CHUNK, chunk), hi - a);
    if (n <= 0) return;
    const size_t row = ((static_cast<size_t>(ins.layer) * NUM_KV_HEADS + ins.group) * p.max_len + a) * HEAD_DIM;
    mono_ptx::prefetch_l2(p.k_cache + row, n * HEAD_DIM * 2);
    mono_ptx::prefetch_l2(p.v_cache + row, n * HEAD_DIM * 2);
}

// With the splits merged in O (LL_MERGE), attention stores each output, max and sum as one 64-bit word
// whose high half is a flag naming the epoch and layer, and O reads the words until every flag is
// current: no poll before its loads, and attention's release is off the chain. Each word is written
// and read whole (relaxed 64-bit accesses), so a current flag carries its value; the buffers hold two
// floats per value (launcher.py) and start at zero, which no flag equals. Not for head_dim 128 or
// more than four splits: those builds spill with it (the flags double the merge's loads in flight).
#ifndef MONO_LL
#define MONO_LL 2  // common.cuh: ll_wanted
#endif
constexpr bool LL_MERGE = ll_wanted(MONO_LL) && COMBINE_IN_O && HEAD_DIM <= 64 && KV_SPLITS <= 4;
// Value i of a merge input: a flagged word, or a float.
__device__ __forceinline__ void merge_store(float* buffer, size_t i, float v, uint32_t flag) {
    if (LL_MERGE) ll_store(ll_words(buffer) + i, v, flag);
    else __stcg(buffer + i, v);
}

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
    // Under NORM_IN_ATTENTION the key at the position comes from knew (the first O tile caches it).
    float* knew = reinterpret_cast<float*>(smem + OFF_RED);  // [HEAD_DIM], then GQA + 1 norms
    auto patch = [&](int c0, int n, int pos) {
        if (!NORM_IN_ATTENTION || t >= n || c0 + t != pos) return;
#pragma unroll
        for (int c = 0; c < HEAD_DIM / 8; ++c) {
            __nv_bfloat162 v[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = __floats2bfloat162_rn(knew[c * 8 + 2 * j], knew[c * 8 + 2 * j + 1]);
            kreg[c] = *reinterpret_cast<const uint4*>(v);
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
        if (NORM_IN_ATTENTION) {  // q and k raw: norm and rotate them; the key at pos is not cached yet
            for (int i = t; i < HEAD_DIM; i += CONSUMERS)
                knew[i] = __bfloat162float(__ldcg(p.k_new + ins.group * HEAD_DIM + i));
            consumers_sync();
            const bf16* small = p.smalls + static_cast<size_t>(ins.layer) * SMALL_PER_LAYER;
            norm_rope_heads(p, [&](int h) { return h < GQA_GROUP ? qs + h * HEAD_DIM : knew; },
                            [&](int h) { return small + (h < GQA_GROUP ? SMALL_Q_NORM : SMALL_K_NORM); },
                            GQA_GROUP + 1, knew + HEAD_DIM, pos, t);
            patch(c0, n, pos);
        }
        if (t < GQA_GROUP) { run[t] = -INFINITY; run[GQA_GROUP + t] = 0.f; }
        consumers_sync();
        if (m == 0) stamp(p, smem, 0);  // profiling builds: q staged (its round trip)
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
            if (c0 < b) {
                load(c0, n);  // in flight across the barrier
                patch(c0, n, pos);
            }
            consumers_sync();
        }
        if (m == 0) stamp(p, smem, 1);  // the keys' scores and values taken
        // Sum the key lanes' partial outputs in lane order.
#pragma unroll
        for (int h = 0; h < GQA_GROUP && value_thread; ++h) {
            scratch[(lane_k * GQA_GROUP + h) * HEAD_DIM + 2 * d2] = acc[h][0];
            scratch[(lane_k * GQA_GROUP + h) * HEAD_DIM + 2 * d2 + 1] = acc[h][1];
        }
        consumers_sync();
        const uint32_t flag = layer_flag(epoch, ins.layer);
        for (int i = t; i < GQA_GROUP * HEAD_DIM; i += CONSUMERS) {
            const int h = i / HEAD_DIM, d = i % HEAD_DIM;
            float s = 0.f;
            for (int l = 0; l < KEY_LANES; ++l) s += scratch[(l * GQA_GROUP + h) * HEAD_DIM + d];
            merge_store(p.attn_o, static_cast<size_t>(out0 + h * KV_SPLITS) * HEAD_DIM + d, s, flag);
        }
        if (t < GQA_GROUP) {
            merge_store(p.attn_max, out0 + t * KV_SPLITS, a == b ? -INFINITY : run[t], flag);
            merge_store(p.attn_sum, out0 + t * KV_SPLITS, run[GQA_GROUP + t], flag);
        }
        consumers_sync();
    }
}

// The merge of a head's KV splits, in split order (deterministic), shared by ATTN_COMBINE and O's
// staging (Tiling.combine_in_o). First merge_scales: for each (row, head) of heads h0..h0+nh-1 the
// split scales and the total into `merge` (the reduction scratch, free outside a matvec); then, after
// a barrier, merge_features gives features k0..k0+n-1 of those heads (n a multiple of 4), four at a
// time and the loads of several quads in flight, so the merge costs a round trip or two to L2.
constexpr int MERGE_FLOATS = ROWS * NUM_HEADS * (KV_SPLITS + 1);
static_assert(MERGE_FLOATS <= RED_FLOATS, "too many heads x splits to merge in the reduction scratch");
constexpr int MERGE_QUADS = cmax(1, 4 / KV_SPLITS);  // quads a thread loads at once: 4 float4 or fewer
// LL: the inputs are flagged words (LL_MERGE), read until current (or `ll` gives up).
template <bool LL>
__device__ void merge_scales(const Params& p, float* merge, int h0, int nh, int t, uint8_t* smem, LLWait* ll) {
    for (int i = t; i < ROWS * nh; i += CONSUMERS) {
        const int m = i / nh, base = (m * NUM_HEADS + h0 + i % nh) * KV_SPLITS;
        float top[KV_SPLITS], sum[KV_SPLITS];
        for (bool current = false; !current;) {
            current = true;
#pragma unroll
            for (int s = 0; s < KV_SPLITS; ++s) {
                if (LL) {
                    const unsigned long long a = mono_ptx::ld_relaxed_u64(ll_words(p.attn_max) + base + s);
                    const unsigned long long b = mono_ptx::ld_relaxed_u64(ll_words(p.attn_sum) + base + s);
                    top[s] = ll_value(a);
                    sum[s] = ll_value(b);
                    current &= ll_current(a, ll->flag) && ll_current(b, ll->flag);
                } else {
                    top[s] = __ldcg(p.attn_max + base + s);
                    sum[s] = __ldcg(p.attn_sum + base + s);
                }
            }
            if (!current && !ll->settle(p, smem, ll_words(p.attn_max) + base)) break;
        }
        float best = -INFINITY;
#pragma unroll
        for (int s = 0; s < KV_SPLITS; ++s) best = fmaxf(best, top[s]);
        float total = 0.f;
#pragma unroll
        for (int s = 0; s < KV_SPLITS; ++s) {
            const float scale = __expf(top[s] - best);
            merge[i * KV_SPLITS + s] = scale;
            total += scale * sum[s];
        }
        merge[ROWS * nh * KV_SPLITS + i] = total;
    }
}

// store(m, c, value) for features c = 0..n-1 (k0 + c of heads h0..) of every row, merged (bf16, as the
// reference's attention output).
template <bool LL, class Store>
__device__ void merge_features(const Params& p, const float* merge, int h0, int nh, int k0, int n, int t,
                               uint8_t* smem, LLWait* ll, Store store) {
    const int quads = ROWS * n / 4;
    for (int q0 = t; q0 < quads; q0 += CONSUMERS * MERGE_QUADS) {
        float4 v[MERGE_QUADS][KV_SPLITS];
        for (bool current = false; !current;) {
            current = true;
#pragma unroll
            for (int g = 0; g < MERGE_QUADS; ++g) {
                const int qi = q0 + g * CONSUMERS, m = qi * 4 / n, k = k0 + qi * 4 % n;
                const size_t base = static_cast<size_t>(m * NUM_HEADS + k / HEAD_DIM) * KV_SPLITS * HEAD_DIM + k % HEAD_DIM;
#pragma unroll
                for (int s = 0; s < KV_SPLITS; ++s) {
                    if (qi >= quads) continue;
                    if (LL) {
                        const unsigned long long* w = ll_words(p.attn_o) + base + s * HEAD_DIM;
                        const ulonglong2 lo = mono_ptx::ld_relaxed_u64x2(w), hi = mono_ptx::ld_relaxed_u64x2(w + 2);
                        v[g][s] = make_float4(ll_value(lo.x), ll_value(lo.y), ll_value(hi.x), ll_value(hi.y));
                        current &= ll_current(lo.x, ll->flag) && ll_current(lo.y, ll->flag) &&
                                   ll_current(hi.x, ll->flag) && ll_current(hi.y, ll->flag);
                    } else {
                        v[g][s] = __ldcg(reinterpret_cast<const float4*>(p.attn_o + base + s * HEAD_DIM));
                    }
                }
            }
            if (current) break;
            const int m = q0 * 4 / n, k = k0 + q0 * 4 % n;  // this thread's first word
            const size_t first = static_cast<size_t>(m * NUM_HEADS + k / HEAD_DIM) * KV_SPLITS * HEAD_DIM + k % HEAD_DIM;
            if (!ll->settle(p, smem, ll_words(p.attn_o) + first)) break;
        }
#pragma unroll
        for (int g = 0; g < MERGE_QUADS; ++g) {
            const int qi = q0 + g * CONSUMERS, m = qi * 4 / n, c = qi * 4 % n, hi = (k0 + c) / HEAD_DIM - h0;
            if (qi >= quads) break;
            const float* scale = merge + (m * nh + hi) * KV_SPLITS;
            float4 out = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int s = 0; s < KV_SPLITS; ++s) {
                out.x += scale[s] * v[g][s].x;
                out.y += scale[s] * v[g][s].y;
                out.z += scale[s] * v[g][s].z;
                out.w += scale[s] * v[g][s].w;
            }
            const float total = merge[ROWS * nh * KV_SPLITS + m * nh + hi];
            store(m, c, __float2bfloat16(out.x / total));
            store(m, c + 1, __float2bfloat16(out.y / total));
            store(m, c + 2, __float2bfloat16(out.z / total));
            store(m, c + 3, __float2bfloat16(out.w / total));
        }
    }
}

__device__ void op_attn_combine(const Params& p, const Instruction& ins, uint8_t* smem) {
    const int t = threadIdx.x, h0 = ins.group * GQA_GROUP;
    float* merge = reinterpret_cast<float*>(smem + OFF_RED);
    merge_scales<false>(p, merge, h0, GQA_GROUP, t, smem, nullptr);
    consumers_sync();
    merge_features<false>(p, merge, h0, GQA_GROUP, h0 * HEAD_DIM, GQA_GROUP * HEAD_DIM, t, smem, nullptr,
                          [&](int m, int c, bf16 v) {
        __stcg(reinterpret_cast<unsigned short*>(p.attn + m * Q_SIZE + h0 * HEAD_DIM + c), __bfloat16_as_ushort(v));
    });
}

// O's inputs with the merge folded in: x[m][c] = attention output feature k0 + c. Under LL_MERGE this
// is O's wait as well (its one wait, on every attention split of the layer: builder.py).
__device__ void stage_attention(const Params& p, const Instruction& ins, uint8_t* smem, unsigned long long epoch,
                                int t) {
    float* merge = reinterpret_cast<float*>(smem + OFF_RED);
    bf16* x = reinterpret_cast<bf16*>(smem + OFF_X);
    const int k0 = ins.k_begin, k1 = ins.k_end;
    const int h0 = k0 / HEAD_DIM, nh = (k1 + HEAD_DIM - 1) / HEAD_DIM - h0;
    LLWait ll = ll_wait(p, ins, epoch, layer_flag(epoch, ins.layer));
    merge_scales<LL_MERGE>(p, merge, h0, nh, t, smem, &ll);
    consumers_sync();
    merge_features<LL_MERGE>(p, merge, h0, nh, k0, k1 - k0, t, smem, &ll,
                             [&](int m, int c, bf16 v) { x[m * X_COLS + c] = v; });
    consumers_sync();
}
