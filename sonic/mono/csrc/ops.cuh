// The opcodes other than attention: embedding, QKV with RoPE and the KV append, projections into
// the residual, gate/up with SiLU, the LM head with its argmax partials, and sampling.

__device__ void op_embed(const Params& p, const Instruction& ins) {
    const int t = threadIdx.x;
    for (int m = 0; m < ROWS; ++m) {
        const bf16* row = p.embed + static_cast<size_t>(__ldcg(p.token + m)) * HIDDEN_SIZE;
        for (int k = ins.tile_begin + t; k < ins.tile_end; k += CONSUMERS)
            __stcg(p.h + m * HIDDEN_SIZE + k, __bfloat162float(__ldg(row + k)));
    }
}

// First row of the fused QKV matrix of one head slot (q heads, then k, then v of the group).
__device__ __forceinline__ int qkv_slot_row(int group, int slot) {
    if (slot < GQA_GROUP) return (group * GQA_GROUP + slot) * HEAD_DIM;
    return Q_SIZE + (slot == GQA_GROUP ? 0 : KV_SIZE) + group * HEAD_DIM;
}

// A tile holds `slots` head slots of the group, each cut to part `split` of `k_end` parts: rows
// 0..w-1 of a slot are dims d0..d0+w-1, rows w..2w-1 the same + HEAD_DIM / 2 (tiles.qkv_part_dims),
// so every RoPE pair is in the tile. q/k norm needs whole heads (one part).
__device__ void op_qkv_rope(const Params& p, const Instruction& ins, uint8_t* smem, Ring& ring,
                            unsigned long long epoch, Staged& staged) {
    const int t = threadIdx.x, slots = ins.tile_end - ins.tile_begin;
    const int parts = ins.k_end > 1 ? ins.k_end : 1, per_slot = HEAD_DIM / parts, w = per_slot / 2;
    const int d0 = ins.split * w;
    const bf16* small = p.smalls + static_cast<size_t>(ins.layer) * SMALL_PER_LAYER;
    float* y = reinterpret_cast<float*>(smem + OFF_Y);
    float* stat = reinterpret_cast<float*>(smem + OFF_STAT);
    if (staged.fresh(epoch, ins)) stage_norm(p, smem, small + SMALL_ATTN_NORM, t);
    matvec_tile(p, smem, ring, ins.weight_bytes, slots * per_slot, t);
    // Round as the reference's bf16 matmul does, then add the bias in bf16.
    for (int i = t; i < slots * per_slot * ROWS; i += CONSUMERS) {
        const int r = i / ROWS, slot = ins.tile_begin + r / per_slot, j = r % per_slot;
        const int dim = j < w ? d0 + j : HALF_DIM + d0 + j - w;
        float v = bf16_round(y[i]);
        if (ATTENTION_BIAS)
            v = bf16_round(v + __bfloat162float(small[SMALL_BIAS + qkv_slot_row(ins.group, slot) + dim]));
        y[i] = v;
    }
    consumers_sync();
    if (QK_NORM) {  // per-head RMSNorm of q and k, one thread per (head, row)
        for (int i = t; i < slots * ROWS; i += CONSUMERS) {
            const int s = i / ROWS, m = i % ROWS;
            float ss = 0.f;
            for (int d = 0; d < HEAD_DIM; ++d) {
                const float v = y[(s * HEAD_DIM + d) * ROWS + m];
                ss += v * v;
            }
            stat[i] = rsqrtf(ss / HEAD_DIM + RMS_NORM_EPS);
        }
        consumers_sync();
    }
    for (int i = t; i < slots * w * ROWS; i += CONSUMERS) {
        const int m = i % ROWS, pair = i / ROWS, s = pair / w, j = pair % w, d = d0 + j;
        const int slot = ins.tile_begin + s;
        float a = y[(s * per_slot + j) * ROWS + m], b = y[(s * per_slot + w + j) * ROWS + m];
        const int pos = position(p, m, epoch);
        const size_t cache_row = ((static_cast<size_t>(ins.layer) * NUM_KV_HEADS + ins.group) * p.max_len + pos) * HEAD_DIM;
        if (slot == GQA_GROUP + 1) {  // v: straight into the cache
            __stcg(reinterpret_cast<unsigned short*>(p.v_cache + cache_row + d), __bfloat16_as_ushort(__float2bfloat16(a)));
            __stcg(reinterpret_cast<unsigned short*>(p.v_cache + cache_row + d + HALF_DIM),
                   __bfloat16_as_ushort(__float2bfloat16(b)));
            continue;
        }
        const bool is_q = slot < GQA_GROUP;
        if (QK_NORM) {
            const float r = stat[s * ROWS + m];
            const bf16* wn = small + (is_q ? SMALL_Q_NORM : SMALL_K_NORM);
            a = bf16_round(__bfloat162float(wn[d]) * bf16_round(a * r));
            b = bf16_round(__bfloat162float(wn[d + HALF_DIM]) * bf16_round(b * r));
        }
        const float* cs = p.cos + static_cast<size_t>(pos) * HEAD_DIM;
        const float* sn = p.sin + static_cast<size_t>(pos) * HEAD_DIM;
        const float ra = a * __ldg(cs + d) - b * __ldg(sn + d);
        const float rb = b * __ldg(cs + d + HALF_DIM) + a * __ldg(sn + d + HALF_DIM);
        unsigned short* dst;
        if (is_q) {
            dst = reinterpret_cast<unsigned short*>(p.q + m * Q_SIZE + (ins.group * GQA_GROUP + slot) * HEAD_DIM);
        } else {
            dst = reinterpret_cast<unsigned short*>(p.k_cache + cache_row);
        }
        __stcg(dst + d, __bfloat16_as_ushort(__float2bfloat16(ra)));
        __stcg(dst + d + HALF_DIM, __bfloat16_as_ushort(__float2bfloat16(rb)));
    }
}

// O and down projections: into the residual, or a split-K partial that RESIDUAL adds later.
__device__ void op_projection(const Params& p, const Instruction& ins, uint8_t* smem, Ring& ring, const bf16* src,
                              int ld, unsigned long long epoch, Staged& staged) {
    const int t = threadIdx.x, rows = ins.tile_end - ins.tile_begin;
    const float* y = reinterpret_cast<const float*>(smem + OFF_Y);
    if (staged.fresh(epoch, ins)) {
        if (COMBINE_IN_O && ins.opcode == OP_O_PROJ) {
            stage_attention(p, smem, ins.k_begin, ins.k_end, t);
        } else {
            stage_rows(smem, src, ld, ins.k_begin, ins.k_end - ins.k_begin, t);
        }
    }
    matvec_tile(p, smem, ring, ins.weight_bytes, rows, t);
    for (int i = t; i < rows * ROWS; i += CONSUMERS) {
        const int r = ins.tile_begin + i / ROWS, m = i % ROWS;
        const float v = bf16_round(y[i]);  // the reference's bf16 matmul output
        if (K_SPLITS == 1) {
            float* dst = p.h + m * HIDDEN_SIZE + r;
            __stcg(dst, __ldcg(dst) + v);
        } else {
            __stcg(p.kpart + (static_cast<size_t>(ins.split) * ROWS + m) * HIDDEN_SIZE + r, v);
        }
    }
}

__device__ void op_residual(const Params& p, const Instruction& ins) {
    for (int i = threadIdx.x; i < ROWS * (ins.tile_end - ins.tile_begin); i += CONSUMERS) {
        const int m = i / (ins.tile_end - ins.tile_begin), r = ins.tile_begin + i % (ins.tile_end - ins.tile_begin);
        float acc = __ldcg(p.kpart + static_cast<size_t>(m) * HIDDEN_SIZE + r);
        for (int s = 1; s < static_cast<int>(ins.k_end); ++s)
            acc += __ldcg(p.kpart + (static_cast<size_t>(s) * ROWS + m) * HIDDEN_SIZE + r);
        float* dst = p.h + m * HIDDEN_SIZE + r;
        __stcg(dst, __ldcg(dst) + acc);
    }
}

__device__ void op_gate_up(const Params& p, const Instruction& ins, uint8_t* smem, Ring& ring,
                           unsigned long long epoch, Staged& staged) {
    const int t = threadIdx.x, n = ins.tile_end - ins.tile_begin;
    const float* y = reinterpret_cast<const float*>(smem + OFF_Y);
    if (staged.fresh(epoch, ins))
        stage_norm(p, smem, p.smalls + static_cast<size_t>(ins.layer) * SMALL_PER_LAYER + SMALL_MLP_NORM, t);
    matvec_tile(p, smem, ring, ins.weight_bytes, 2 * n, t);
    for (int i = t; i < n * ROWS; i += CONSUMERS) {
        const int r = i / ROWS, m = i % ROWS;
        const float g = bf16_round(y[i]), u = bf16_round(y[(r + n) * ROWS + m]);
        const float silu = bf16_round(g / (1.f + __expf(-g)));
        __stcg(reinterpret_cast<unsigned short*>(p.act + m * INTERMEDIATE_SIZE + ins.tile_begin + r),
               __bfloat16_as_ushort(__float2bfloat16(silu * u)));
    }
}

// (value, index) order of argmax: larger value, then the lower index (as torch.argmax).
__device__ __forceinline__ bool better(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

__device__ void warp_argmax(float& v, int& i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (better(ov, oi, v, i)) { v = ov; i = oi; }
    }
}

// Block argmax of (v, i) over the consumer threads; the result is valid on thread 0.
__device__ void block_argmax(float& v, int& i, uint8_t* smem, int t) {
    float* sv = reinterpret_cast<float*>(smem + OFF_RED);
    int* si = reinterpret_cast<int*>(smem + OFF_RED) + CONSUMER_WARPS;
    warp_argmax(v, i);
    if (t % 32 == 0) { sv[t / 32] = v; si[t / 32] = i; }
    consumers_sync();
    if (t == 0)
        for (int w = 1; w < CONSUMER_WARPS; ++w)
            if (better(sv[w], si[w], v, i)) { v = sv[w]; i = si[w]; }
    consumers_sync();
}

__device__ void op_lm_head(const Params& p, const Instruction& ins, uint8_t* smem, Ring& ring,
                           unsigned long long epoch, Staged& staged) {
    const int t = threadIdx.x, rows = ins.tile_end - ins.tile_begin;
    const float* y = reinterpret_cast<const float*>(smem + OFF_Y);
    if (staged.fresh(epoch, ins)) stage_norm(p, smem, p.final_norm, t);
    matvec_tile(p, smem, ring, ins.weight_bytes, rows, t);
    const int tile = ins.tile_begin / LM_HEAD_ROWS_PER_TILE;
    for (int m = 0; m < ROWS; ++m) {
        float v = -INFINITY;
        int idx = 0x7fffffff;
        if (t < rows) {
            v = y[t * ROWS + m];
            idx = ins.tile_begin + t;
            __stcg(p.logits + static_cast<size_t>(m) * VOCAB_SIZE + idx, v);
        }
        block_argmax(v, idx, smem, t);
        if (t == 0) {
            __stcg(p.part_val + m * NUM_LM_TILES + tile, v);
            __stcg(p.part_idx + m * NUM_LM_TILES + tile, idx);
        }
    }
}

// Greedy choice from the LM-head tiles' partials; token to the host; the stop decision. (The next
// epoch's position is derived: position().)
__device__ void op_sample(const Params& p, unsigned long long epoch, uint8_t* smem) {
    const int t = threadIdx.x;
    bool eos = false;
    for (int m = 0; m < ROWS; ++m) {
        float v = -INFINITY;
        int idx = 0x7fffffff;
        for (int j = t; j < NUM_LM_TILES; j += CONSUMERS) {
            const float jv = __ldcg(p.part_val + m * NUM_LM_TILES + j);
            const int ji = __ldcg(p.part_idx + m * NUM_LM_TILES + j);
            if (better(jv, ji, v, idx)) { v = jv; idx = ji; }
        }
        block_argmax(v, idx, smem, t);
        if (idx < 0 || idx >= VOCAB_SIZE) idx = 0;  // NaN logits: a valid token, never a wild embedding row
        if (t == 0) {
            __stcg(p.token + m, idx);
            p.out_tokens[(epoch - p.first_epoch) * ROWS + m] = idx;
            for (int e = 0; e < NUM_EOS; ++e) eos |= idx == EOS_TOKENS[e];
        }
    }
    if (t == 0) {
        const bool host_stop = *reinterpret_cast<const volatile int32_t*>(p.host_stop) != 0;
        if ((eos && ROWS == 1 && p.stop_at_eos) || host_stop) *reinterpret_cast<volatile unsigned long long*>(p.stop_epoch) = epoch;
        __threadfence_system();
        *reinterpret_cast<volatile int32_t*>(p.out_count) = static_cast<int32_t>(epoch - p.first_epoch + 1);
    }
}
