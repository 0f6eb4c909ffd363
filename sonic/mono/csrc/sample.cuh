// The LM head's epilogue and the token choice: greedy argmax, or Gumbel-max sampling (temperature,
// top-k, top-p) with the request's Philox stream, the same bits as the graph runner's Triton
// sampler (engine/gumbel.py is the reference: the token is argmax(logits / T + g) over the tokens
// top-k and top-p keep, g = -log(-log(u)), u from Philox at (seed, (step * ROWS + row) * V + col)).
//
// Top-k: each LM-head tile leaves its best min(k, rows) scaled logits (cand_*) and its best one
// (part_val). SAMPLE takes beta, the k-th best of the tiles' best; only the tiles at or above it can
// hold one of the k best, and only their candidates at or above it; the k-th best of those is the
// k-th best logit. The tokens at or above it (ties kept, up to MAX_SURVIVORS) are sorted, top-p
// drops those whose better tokens already cover p, and the noise picks among the rest.

constexpr int MAX_TOP_K = 64;        // kernel.MAX_TOP_K: a larger top-k runs on the graph runner
constexpr int MAX_SURVIVORS = 256;   // tokens at or above the k-th logit (its ties) that are kept
constexpr float U_MIN = 9.094947017729282e-13f;  // 2^-40: tl.rand can return 0.0
constexpr float U_MAX = 0.99999994039535522f;    // 1 - 2^-24: and round up to exactly 1.0
// Scratch: the radix histogram and ranks in the attention area, survivors after the reductions'.
constexpr int HIST_WORDS = 256 + 2 + CONSUMER_WARPS;
constexpr int SURVIVOR_BASE = 64;  // words into OFF_RED: past block_argmax's
static_assert(ATTN_FLOATS >= HIST_WORDS, "the attention scratch holds the radix histogram");
static_assert(RED_FLOATS >= SURVIVOR_BASE + 4 * MAX_SURVIVORS, "the reduction scratch holds the survivors");
static_assert(MAX_SURVIVORS == CONSUMERS, "one survivor per consumer thread");

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

// ---- the random stream ----

// The first word of Philox-4x32-10, key = seed, counter = (offset low, offset high, 0, 0).
__device__ __forceinline__ uint32_t philox_word(unsigned long long seed, unsigned long long offset) {
    uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        const uint32_t a = c0, b = c2;
        c0 = __umulhi(0xCD9E8D57u, b) ^ c1 ^ k0;
        c2 = __umulhi(0xD2511F53u, a) ^ c3 ^ k1;
        c1 = 0xCD9E8D57u * b;
        c3 = 0xD2511F53u * a;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c0;
}

// Gumbel noise of token `col` of row m in `epoch`: the sampling step is one per epoch.
__device__ __forceinline__ float gumbel(const Params& p, unsigned long long epoch, int m, int col) {
    const unsigned long long step = p.sample_step + (epoch - p.first_epoch);
    int32_t x = static_cast<int32_t>(philox_word(p.seed, (step * ROWS + m) * VOCAB_SIZE + col));
    if (x < 0) x = ~x;  // tl.rand's -x - 1
    const float u = fminf(fmaxf(__int2float_rn(x) * 4.6566127342e-10f, U_MIN), U_MAX);
    return -logf(-logf(u));
}

// ---- selection ----

// Unsigned keys in the order of the floats.
__device__ __forceinline__ uint32_t order_key(float v) {
    const uint32_t b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

// The k-th largest key (k >= 1) of those the consumer threads hand to `each(f)` (every call must
// see the same keys; at least k of them): four passes of an 8-bit radix histogram.
template <class Each>
__device__ uint32_t block_kth_largest(Each each, uint32_t k, uint8_t* smem, int t) {
    uint32_t* hist = reinterpret_cast<uint32_t*>(smem + OFF_ATTN);
    uint32_t prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = t; i < 256; i += CONSUMERS) hist[i] = 0;
        consumers_sync();
        each([&](uint32_t key) {
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        });
        consumers_sync();
        if (t < 32) {  // from the top digit down: lane l holds digits 255 - 8l .. 248 - 8l
            uint32_t c[8], local = 0;
#pragma unroll
            for (int j = 0; j < 8; ++j) local += c[j] = hist[255 - (t * 8 + j)];
            uint32_t incl = local;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const uint32_t n = __shfl_up_sync(0xffffffffu, incl, o);
                if (t >= o) incl += n;
            }
            const unsigned ballot = __ballot_sync(0xffffffffu, incl >= k);
            const int lane = ballot ? __ffs(ballot) - 1 : 31;  // fewer keys than k: the smallest digit
            if (t == lane) {
                uint32_t acc = incl - local;
                int j = 0;
                while (j < 7 && acc + c[j] < k) acc += c[j++];
                hist[256] = 255 - (t * 8 + j);
                hist[257] = k - acc;
            }
        }
        consumers_sync();
        prefix |= hist[256] << shift;
        mask |= 255u << shift;
        k = hist[257];
        consumers_sync();
    }
    return prefix;
}

// Rank of this thread among the consumer threads where `pred` holds, in thread order; `total` of them.
__device__ int block_rank(bool pred, int& total, uint8_t* smem, int t) {
    int* counts = reinterpret_cast<int*>(smem + OFF_ATTN) + 258;
    const unsigned ballot = __ballot_sync(0xffffffffu, pred);
    if (t % 32 == 0) counts[t / 32] = __popc(ballot);
    consumers_sync();
    int before = 0;
    total = 0;
    for (int w = 0; w < CONSUMER_WARPS; ++w) {
        before += w < t / 32 ? counts[w] : 0;
        total += counts[w];
    }
    consumers_sync();
    return before + __popc(ballot & ((1u << (t % 32)) - 1u));
}

// ---- the LM head ----

__device__ __forceinline__ int lm_tile_rows(int tile) {
    return cmin(LM_HEAD_ROWS_PER_TILE, VOCAB_SIZE - tile * LM_HEAD_ROWS_PER_TILE);
}

// Top-k sampling: the tile's best min(k, rows) scaled logits s (one per thread t < rows) into
// cand_*, ties of the last one by lower index, and its best s into part_val.
__device__ void lm_tile_candidates(const Params& p, int m, int tile, float s, int idx, int rows, uint8_t* smem,
                                   int t) {
    const int c = cmin(static_cast<int>(p.top_k), rows);
    const uint32_t key = t < rows ? order_key(s) : 0u;
    const uint32_t cut = block_kth_largest([&](auto f) { if (t < rows) f(key); }, c, smem, t);
    int above, ties;
    const int a = block_rank(t < rows && key > cut, above, smem, t);
    const int e = block_rank(t < rows && key == cut, ties, smem, t);
    const int slot = t < rows && key > cut ? a : (t < rows && key == cut && above + e < c ? above + e : -1);
    const size_t at = (static_cast<size_t>(m) * NUM_LM_TILES + tile) * MAX_TOP_K;
    if (slot >= 0) {
        __stcg(p.cand_val + at + slot, s);
        __stcg(p.cand_idx + at + slot, idx);
    }
    float best = s;
    int best_idx = idx;
    block_argmax(best, best_idx, smem, t);
    if (t == 0) __stcg(p.part_val + m * NUM_LM_TILES + tile, best);
}

__device__ void op_lm_head(const Params& p, const Instruction& ins, uint8_t* smem, Ring& ring,
                           unsigned long long epoch, Staged& staged) {
    const int t = threadIdx.x, rows = ins.tile_end - ins.tile_begin;
    const float* y = reinterpret_cast<const float*>(smem + OFF_Y);
    if (staged.fresh(epoch, ins))
        stage_norm(p, smem, p.final_norm, t, ll_wait(p, ins, epoch, h_flag(epoch, 2 * NUM_LAYERS)));
    if (LL_H && !staged_ok(smem)) return;
    matvec_tile(p, smem, ring, ins.weight_bytes, rows, t);
    const int tile = ins.tile_begin / LM_HEAD_ROWS_PER_TILE;
    const bool sampled = p.inv_temperature > 0.f;
    for (int m = 0; m < ROWS; ++m) {
        float v = -INFINITY;
        int idx = 0x7fffffff;
        if (t < rows) {
            v = y[t * ROWS + m];
            idx = ins.tile_begin + t;
            __stcg(p.logits + static_cast<size_t>(m) * VOCAB_SIZE + idx, v);
            if (sampled) v *= p.inv_temperature;  // as torch divides by a host scalar
        }
        if (sampled && p.top_k > 0) {
            lm_tile_candidates(p, m, tile, v, idx, rows, smem, t);
            continue;
        }
        if (sampled && t < rows) v += gumbel(p, epoch, m, idx);
        block_argmax(v, idx, smem, t);
        if (t == 0) {
            __stcg(p.part_val + m * NUM_LM_TILES + tile, v);
            __stcg(p.part_idx + m * NUM_LM_TILES + tile, idx);
        }
    }
}

// ---- the token choice ----

// Top-k (and top-p) sampling of row m from the tiles' candidates; the token is valid on thread 0.
__device__ void sample_top_k(const Params& p, int m, unsigned long long epoch, uint8_t* smem, int t, float& best,
                             int& token) {
    const float* tile_best = p.part_val + m * NUM_LM_TILES;
    const float* cand_val = p.cand_val + static_cast<size_t>(m) * NUM_LM_TILES * MAX_TOP_K;
    const int* cand_idx = p.cand_idx + static_cast<size_t>(m) * NUM_LM_TILES * MAX_TOP_K;
    const int k = cmin(static_cast<int>(p.top_k), VOCAB_SIZE);
    const uint32_t beta = NUM_LM_TILES < k ? 0u : block_kth_largest([&](auto f) {
        for (int j = t; j < NUM_LM_TILES; j += CONSUMERS) f(order_key(__ldcg(tile_best + j)));
    }, k, smem, t);
    // Every candidate at or above beta, tile by tile.
    auto each = [&](auto f) {
        for (int j = t; j < NUM_LM_TILES; j += CONSUMERS) {
            if (order_key(__ldcg(tile_best + j)) < beta) continue;
            const int c = cmin(k, lm_tile_rows(j));
            for (int i = 0; i < c; ++i) {
                const uint32_t key = order_key(__ldcg(cand_val + j * MAX_TOP_K + i));
                if (key >= beta) f(key, j * MAX_TOP_K + i);
            }
        }
    };
    const uint32_t cut = block_kth_largest([&](auto f) { each([&](uint32_t key, int) { f(key); }); }, k, smem, t);
    // The survivors, in any order, then sorted (larger logit, then lower index) by rank.
    float* val = reinterpret_cast<float*>(smem + OFF_RED) + SURVIVOR_BASE;
    int* ids = reinterpret_cast<int*>(val + MAX_SURVIVORS);
    float* sorted_val = val + 2 * MAX_SURVIVORS;
    int* sorted_ids = ids + 2 * MAX_SURVIVORS;
    uint32_t* count = reinterpret_cast<uint32_t*>(smem + OFF_ATTN) + 256;
    if (t == 0) *count = 0;
    consumers_sync();
    each([&](uint32_t key, int at) {
        if (key < cut) return;
        const uint32_t slot = atomicAdd(count, 1u);
        if (slot < MAX_SURVIVORS) {
            val[slot] = __ldcg(cand_val + at);
            ids[slot] = __ldcg(cand_idx + at);
        }
    });
    consumers_sync();
    const int n = cmin(static_cast<int>(*count), MAX_SURVIVORS);
    float s = -INFINITY;
    int id = 0x7fffffff, rank = t;
    if (t < n) {
        s = val[t];
        id = ids[t];
        rank = 0;
        for (int j = 0; j < n; ++j) rank += better(val[j], ids[j], s, id);
        sorted_val[rank] = s;
        sorted_ids[rank] = id;
    }
    consumers_sync();
    bool keep = t < n;
    if (p.top_p < 1.f) {  // softmax over the survivors; drop where the better ones cover top_p
        float* stat = reinterpret_cast<float*>(smem + OFF_STAT);
        const float top = sorted_val[0];
        float e[ROWS] = {};
        if (t < n) e[0] = expf(sorted_val[t] - top);
        block_sum(e, stat, t);
        const float prob = t < n ? expf(sorted_val[t] - top) / e[0] : 0.f;
        // Exclusive prefix sum of prob in sorted order: lanes, then warps in order.
        float incl = prob;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float x = __shfl_up_sync(0xffffffffu, incl, o);
            if (t % 32 >= o) incl += x;
        }
        float* warp_total = reinterpret_cast<float*>(smem + OFF_ATTN);
        consumers_sync();  // the histogram area is free again
        if (t % 32 == 31) warp_total[t / 32] = incl;
        consumers_sync();
        float before = incl - prob;
        for (int w = 0; w < t / 32; ++w) before += warp_total[w];
        keep = t < n && (t == 0 || before < p.top_p);
        s = sorted_val[t < n ? t : 0];
        id = sorted_ids[t < n ? t : 0];
        consumers_sync();
    }
    best = keep ? s + gumbel(p, epoch, m, id) : -INFINITY;
    token = keep ? id : 0x7fffffff;
    block_argmax(best, token, smem, t);
}

// The tokens go to the host after SAMPLE's release (MONO_LATE_HOST): the system-scope fence that
// orders them before the count waits for writes over PCIe, and nothing on the GPU waits for it.
#ifndef MONO_LATE_HOST
#define MONO_LATE_HOST 1
#endif
// Thread 0: the epoch's tokens (kept in the tile-output area, free after SAMPLE) to host-mapped
// memory, then the count of epochs done.
__device__ void tokens_to_host(const Params& p, unsigned long long epoch, const uint8_t* smem) {
    const int32_t* tokens = reinterpret_cast<const int32_t*>(smem + OFF_Y);
    for (int m = 0; m < ROWS; ++m) p.out_tokens[(epoch - p.first_epoch) * ROWS + m] = tokens[m];
    __threadfence_system();
    *reinterpret_cast<volatile int32_t*>(p.out_count) = static_cast<int32_t>(epoch - p.first_epoch + 1);
}

// The token of each row from the LM-head tiles' partials (greedy; sampled with the noise already in
// the partials) or their candidates (top-k); the stop decision; the tokens to the host (here, or
// after the release). (The next epoch's position is derived: position().)
__device__ void op_sample(const Params& p, unsigned long long epoch, uint8_t* smem) {
    const int t = threadIdx.x;
    bool eos = false;
    for (int m = 0; m < ROWS; ++m) {
        float v = -INFINITY;
        int idx = 0x7fffffff;
        if (p.inv_temperature > 0.f && p.top_k > 0) {
            sample_top_k(p, m, epoch, smem, t, v, idx);
        } else {
            for (int j = t; j < NUM_LM_TILES; j += CONSUMERS) {
                const float jv = __ldcg(p.part_val + m * NUM_LM_TILES + j);
                const int ji = __ldcg(p.part_idx + m * NUM_LM_TILES + j);
                if (better(jv, ji, v, idx)) { v = jv; idx = ji; }
            }
            block_argmax(v, idx, smem, t);
        }
        if (idx < 0 || idx >= VOCAB_SIZE) idx = 0;  // NaN logits: a valid token, never a wild embedding row
        if (t == 0) {
            __stcg(p.token + m, idx);
            reinterpret_cast<int32_t*>(smem + OFF_Y)[m] = idx;
            for (int e = 0; e < NUM_EOS; ++e) eos |= idx == EOS_TOKENS[e];
        }
    }
    if (t == 0) {
        const bool host_stop = *reinterpret_cast<const volatile int32_t*>(p.host_stop) != 0;
        if ((eos && ROWS == 1 && p.stop_at_eos) || host_stop) *reinterpret_cast<volatile unsigned long long*>(p.stop_epoch) = epoch;
        if (!MONO_LATE_HOST) tokens_to_host(p, epoch, smem);
    }
}
