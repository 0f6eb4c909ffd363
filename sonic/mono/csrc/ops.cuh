// The opcodes other than attention and the token choice: embedding, QKV with RoPE and the KV
// append, projections into the residual, gate/up with SiLU.

// What an epilogue reads that does not depend on the matvec (QKV's RoPE factors at the position, the
// residual rows a projection adds to) is copied into the attention scratch, free outside attention,
// before the matvec (cp.async: no registers held, the consumers are at the cap), so the epilogue does
// not wait a round trip to L2 behind the SM's weight copies in flight for it.
#ifndef MONO_ROPE_EARLY
#define MONO_ROPE_EARLY 1
#endif
#ifndef MONO_H_EARLY
#define MONO_H_EARLY 1
#endif
constexpr bool ROPE_EARLY = MONO_ROPE_EARLY && !NORM_IN_ATTENTION && 2 * ROWS * HEAD_DIM <= ATTN_FLOATS;
constexpr int H_WORD = LL_H ? 2 : 1;  // floats per value of h
constexpr bool H_EARLY = MONO_H_EARLY && K_SPLITS == 1 && TILE_ROWS * ROWS * H_WORD <= ATTN_FLOATS;

// h[m][k] = v at `stage` of the epoch: a flagged word (LL_H) or a float.
__device__ __forceinline__ void store_h(const Params& p, int m, int k, float v, unsigned long long epoch, int stage) {
    if (LL_H) ll_store(ll_words(p.h) + m * HIDDEN_SIZE + k, v, h_flag(epoch, stage));
    else __stcg(p.h + m * HIDDEN_SIZE + k, v);
}

__device__ void op_embed(const Params& p, const Instruction& ins, unsigned long long epoch) {
    const int t = threadIdx.x;
    for (int m = 0; m < ROWS; ++m) {
        const bf16* row = p.embed + static_cast<size_t>(__ldcg(p.token + m)) * HIDDEN_SIZE;
        for (int k = ins.tile_begin + t; k < ins.tile_end; k += CONSUMERS)
            store_h(p, m, k, __bfloat162float(__ldg(row + k)), epoch, 0);
    }
}

// A RoPE pair of one head: dims d and d + HEAD_DIM / 2.
__device__ __forceinline__ void store_pair(bf16* head, int d, float a, float b) {
    store_bf16(head + d, a);
    store_bf16(head + d + HALF_DIM, b);
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
    if (staged.fresh(epoch, ins))
        stage_norm(p, smem, small + SMALL_ATTN_NORM, t, ll_wait(p, ins, epoch, h_flag(epoch, 2 * ins.layer)));
    if (LL_H && !staged_ok(smem)) return;
    float* rope = reinterpret_cast<float*>(smem + OFF_ATTN);  // [ROWS][cos, sin][HEAD_DIM] at the position
    if (ROPE_EARLY)
        for (int i = t; i < ROWS * HEAD_DIM / 2; i += CONSUMERS) {
            const int m = i / (HEAD_DIM / 2), j = i % (HEAD_DIM / 2), half = HEAD_DIM / 4;
            const size_t row = static_cast<size_t>(position(p, m, epoch)) * HEAD_DIM;
            mono_ptx::cp_async_16<true>(rope + m * 2 * HEAD_DIM + 4 * j,
                                        j < half ? p.cos + row + 4 * j : p.sin + row + 4 * (j - half));
        }
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
    if (QK_NORM && !NORM_IN_ATTENTION) {  // per-head RMSNorm of q and k, one thread per (head, row)
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
            store_pair(p.v_cache + cache_row, d, a, b);
            continue;
        }
        const bool is_q = slot < GQA_GROUP;
        bf16* head = is_q ? p.q + m * Q_SIZE + (ins.group * GQA_GROUP + slot) * HEAD_DIM
                          : (NORM_IN_ATTENTION ? p.k_new + m * KV_SIZE + ins.group * HEAD_DIM : p.k_cache + cache_row);
        if (NORM_IN_ATTENTION) {  // raw: attention norms and rotates whole heads
            store_pair(head, d, a, b);
            continue;
        }
        if (QK_NORM) {
            const float r = stat[s * ROWS + m];
            const bf16* wn = small + (is_q ? SMALL_Q_NORM : SMALL_K_NORM);
            a = bf16_round(__bfloat162float(wn[d]) * bf16_round(a * r));
            b = bf16_round(__bfloat162float(wn[d + HALF_DIM]) * bf16_round(b * r));
        }
        // The copies in shared memory, or the table itself (plain loads serve both).
        const float* cs = ROPE_EARLY ? rope + m * 2 * HEAD_DIM : p.cos + static_cast<size_t>(pos) * HEAD_DIM;
        const float* sn = ROPE_EARLY ? cs + HEAD_DIM : p.sin + static_cast<size_t>(pos) * HEAD_DIM;
        const float ra = a * cs[d] - b * sn[d];
        const float rb = b * cs[d + HALF_DIM] + a * sn[d + HALF_DIM];
        store_pair(head, d, ra, rb);
    }
}

// O and down projections: into the residual, or a split-K partial that RESIDUAL adds later.
__device__ void op_projection(const Params& p, const Instruction& ins, uint8_t* smem, Ring& ring, const bf16* src,
                              int ld, unsigned long long epoch, Staged& staged) {
    const int t = threadIdx.x, rows = ins.tile_end - ins.tile_begin;
    const float* y = reinterpret_cast<const float*>(smem + OFF_Y);
    if (staged.fresh(epoch, ins)) {
        if (COMBINE_IN_O && ins.opcode == OP_O_PROJ) {
            stage_attention(p, ins, smem, epoch, t);
        } else if (LL_ACT && ins.opcode == OP_DOWN_PROJ) {
            stage_act(p, smem, ins.k_begin, ins.k_end - ins.k_begin, t,
                      ll_wait(p, ins, epoch, layer_flag(epoch, ins.layer)));
        } else {
            stage_rows(smem, src, ld, ins.k_begin, ins.k_end - ins.k_begin, t);
        }
    }
    if ((LL_MERGE || LL_ACT) && !staged_ok(smem)) return;
    // The residual rows this tile adds to ([ROWS][rows], words under LL_H): only this tile writes them
    // in this phase, and the stage before wrote them (QKV or gate/up read them all, and this waits
    // on those).
    float* h_old = reinterpret_cast<float*>(smem + OFF_ATTN);
    const bool h_early = H_EARLY && rows % 4 == 0 && ins.tile_begin % 4 == 0;
    if (h_early)
        for (int i = t; i < ROWS * rows * H_WORD / 4; i += CONSUMERS) {
            const int m = i / (rows * H_WORD / 4), c = 4 * (i % (rows * H_WORD / 4));
            mono_ptx::cp_async_16<false>(h_old + m * rows * H_WORD + c,
                                         p.h + (m * HIDDEN_SIZE + ins.tile_begin) * H_WORD + c);
        }
    const int stage = 2 * ins.layer + (ins.opcode == OP_O_PROJ ? 1 : 2);
    matvec_tile(p, smem, ring, ins.weight_bytes, rows, t);
    if (NORM_IN_ATTENTION && ins.opcode == OP_O_PROJ && ins.tile_begin == 0 && ins.split == 0)
        write_new_k(p, ins, smem, epoch, t);  // every split has read the cache (O waits on them all)
    for (int i = t; i < rows * ROWS; i += CONSUMERS) {
        const int r = ins.tile_begin + i / ROWS, m = i % ROWS;
        const float v = bf16_round(y[i]);  // the reference's bf16 matmul output
        if (K_SPLITS == 1) {
            const int at = m * rows + r - ins.tile_begin;
            const float* old = h_early ? h_old + at * H_WORD : p.h + (m * HIDDEN_SIZE + r) * H_WORD;
            store_h(p, m, r, (h_early ? *old : __ldcg(old)) + v, epoch, stage);  // a word's value is its low half
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
        stage_norm(p, smem, p.smalls + static_cast<size_t>(ins.layer) * SMALL_PER_LAYER + SMALL_MLP_NORM, t,
                   ll_wait(p, ins, epoch, h_flag(epoch, 2 * ins.layer + 1)));
    if (LL_H && !staged_ok(smem)) return;
    matvec_tile(p, smem, ring, ins.weight_bytes, 2 * n, t);
    if (LL_ACT) {  // a pair of rows per word, with the flag
        unsigned long long* words = reinterpret_cast<unsigned long long*>(p.act);
        const unsigned long long flag = static_cast<unsigned long long>(layer_flag(epoch, ins.layer)) << 32;
        for (int i = t; i < n / 2 * ROWS; i += CONSUMERS) {
            const int r = 2 * (i / ROWS), m = i % ROWS;
            float v[2];
#pragma unroll
            for (int j = 0; j < 2; ++j) {  // as below
                const float g = bf16_round(y[(r + j) * ROWS + m]), u = bf16_round(y[(r + j + n) * ROWS + m]);
                v[j] = bf16_round(g / (1.f + __expf(-g))) * u;
            }
            const __nv_bfloat162 pair = __floats2bfloat162_rn(v[0], v[1]);
            mono_ptx::st_relaxed_u64(words + (m * INTERMEDIATE_SIZE + ins.tile_begin + r) / 2,
                                     flag | *reinterpret_cast<const uint32_t*>(&pair));
        }
        return;
    }
    for (int i = t; i < n * ROWS; i += CONSUMERS) {
        const int r = i / ROWS, m = i % ROWS;
        const float g = bf16_round(y[i]), u = bf16_round(y[(r + n) * ROWS + m]);
        const float silu = bf16_round(g / (1.f + __expf(-g)));
        store_bf16(p.act + m * INTERMEDIATE_SIZE + ins.tile_begin + r, silu * u);
    }
}
