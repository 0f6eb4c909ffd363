// Staging a matvec's inputs into shared memory and the matvec over a tile's pages from the ring.
// Tiles are packed [K/8][rows][8] (tiles.py); partial sums are added in a fixed order, so a row's
// result never depends on timing or on which SM ran it.

// x[m][k] = weight[k] * bf16(h[m][k] / rms(h[m])), as the reference's RMSNorm rounds. h is read once
// (kept in registers between the sum of squares and the scaling); as flagged words (LL_H) until
// every flag is `ll`'s.
constexpr int NORM_VECS = (HIDDEN_SIZE / 4 + CONSUMERS - 1) / CONSUMERS;  // float4 of h per thread
__device__ void stage_norm(const Params& p, uint8_t* smem, const bf16* weight, int t, LLWait ll) {
    float* stat = reinterpret_cast<float*>(smem + OFF_STAT);
    bf16* x = reinterpret_cast<bf16*>(smem + OFF_X);
    float4 hv[ROWS][NORM_VECS];
    float ss[ROWS];
    for (bool current = false; !current;) {
        current = true;
#pragma unroll
        for (int m = 0; m < ROWS; ++m)
#pragma unroll
            for (int i = 0; i < NORM_VECS; ++i) {
                const int k = (t + i * CONSUMERS) * 4;
                if (k >= HIDDEN_SIZE) {
                    hv[m][i] = make_float4(0.f, 0.f, 0.f, 0.f);
                } else if (LL_H) {
                    const unsigned long long* w = ll_words(p.h) + m * HIDDEN_SIZE + k;
                    const ulonglong2 lo = mono_ptx::ld_relaxed_u64x2(w), hi = mono_ptx::ld_relaxed_u64x2(w + 2);
                    hv[m][i] = make_float4(ll_value(lo.x), ll_value(lo.y), ll_value(hi.x), ll_value(hi.y));
                    current &= ll_current(lo.x, ll.flag) && ll_current(lo.y, ll.flag) &&
                               ll_current(hi.x, ll.flag) && ll_current(hi.y, ll.flag);
                } else {
                    hv[m][i] = __ldcg(reinterpret_cast<const float4*>(p.h + m * HIDDEN_SIZE + k));
                }
            }
        if (!current && !ll.settle(p, smem, ll_words(p.h) + 4 * t)) break;  // row 0's first word of this thread
    }
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
        ss[m] = 0.f;
#pragma unroll
        for (int i = 0; i < NORM_VECS; ++i)
            ss[m] += hv[m][i].x * hv[m][i].x + hv[m][i].y * hv[m][i].y + hv[m][i].z * hv[m][i].z +
                     hv[m][i].w * hv[m][i].w;
    }
    block_sum(ss, stat, t);
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
        const float r = rsqrtf(ss[m] / HIDDEN_SIZE + RMS_NORM_EPS);
#pragma unroll
        for (int i = 0; i < NORM_VECS; ++i) {
            const int k = (t + i * CONSUMERS) * 4;
            if (k >= HIDDEN_SIZE) break;
            const float h4[4] = {hv[m][i].x, hv[m][i].y, hv[m][i].z, hv[m][i].w};
#pragma unroll
            for (int j = 0; j < 4; ++j)
                x[m * X_COLS + k + j] =
                    __float2bfloat16(__bfloat162float(__ldg(weight + k + j)) * bf16_round(h4[j] * r));
        }
    }
    consumers_sync();
}

// x[m][0:n] = src[m][k0:k0 + n] (bf16 rows of length ld), 16 bytes at a time.
__device__ void stage_rows(uint8_t* smem, const bf16* src, int ld, int k0, int n, int t) {
    bf16* x = reinterpret_cast<bf16*>(smem + OFF_X);
    for (int i = t; i < ROWS * (n / 8); i += CONSUMERS) {
        const int m = i / (n / 8), c = (i % (n / 8)) * 8;
        *reinterpret_cast<uint4*>(x + m * X_COLS + c) = __ldcg(reinterpret_cast<const uint4*>(src + m * ld + k0 + c));
    }
    consumers_sync();
}

// x[m][0:n] = act[m][k0:k0 + n] from the flagged words of the activations (LL_ACT): 16 bytes of
// words (four values) at a time, all of a row's loads in flight at once, until every flag is `ll`'s.
constexpr int ACT_LOADS = (INTERMEDIATE_SIZE / 4 + CONSUMERS - 1) / CONSUMERS;  // per thread and row
__device__ void stage_act(const Params& p, uint8_t* smem, int k0, int n, int t, LLWait ll) {
    bf16* x = reinterpret_cast<bf16*>(smem + OFF_X);
    const unsigned long long* words = reinterpret_cast<const unsigned long long*>(p.act);
    for (int m = 0; m < ROWS; ++m)
        for (bool current = false; !current;) {
            current = true;
#pragma unroll
            for (int j = 0; j < ACT_LOADS; ++j) {
                const int i = t + j * CONSUMERS;  // quad i of the row's n / 4
                if (i >= n / 4) break;
                const ulonglong2 w = mono_ptx::ld_relaxed_u64x2(words + (m * INTERMEDIATE_SIZE + k0) / 2 + 2 * i);
                *reinterpret_cast<uint2*>(x + m * X_COLS + 4 * i) =
                    make_uint2(static_cast<uint32_t>(w.x), static_cast<uint32_t>(w.y));
                current &= ll_current(w.x, ll.flag) && ll_current(w.y, ll.flag);
            }
            if (!current && !ll.settle(p, smem, words + (m * INTERMEDIATE_SIZE + k0) / 2 + 2 * t)) break;
        }
    consumers_sync();
}

// One page of whole k chunks ([chunks][rows][8]) for one warp; rows is a power of two. With rows <= 32
// lane l owns row l % rows; with rows = 32 G it owns rows l + 32 g, g < G.
template <int G>
__device__ __forceinline__ void page_dot(const uint4* page, const bf16* x, uint32_t vectors, int rows, int kc0,
                                         int lane, float (&acc)[8][ROWS]) {
    // P independent partial sums per row (added in a fixed order at the end) keep P dot products in
    // flight per lane instead of one long dependent chain.
    constexpr int P = G >= 4 ? 1 : 4 / G;
    float part[P][G][ROWS];
#pragma unroll
    for (int q = 0; q < P; ++q)
#pragma unroll
        for (int g = 0; g < G; ++g)
#pragma unroll
            for (int m = 0; m < ROWS; ++m) part[q][g][m] = 0.f;
    if (G == 1) {
        const int step = 32 / rows;  // chunks per 32 vectors
        uint32_t s = lane;
        int kc = kc0 + lane / rows;
        for (; s + 32 * (P - 1) < vectors; s += 32 * P, kc += step * P) {
            uint4 w[P];
#pragma unroll
            for (int q = 0; q < P; ++q) w[q] = page[s + 32 * q];
#pragma unroll
            for (int q = 0; q < P; ++q)
#pragma unroll
                for (int m = 0; m < ROWS; ++m)
                    part[q][0][m] = dot8(w[q], *reinterpret_cast<const uint4*>(x + m * X_COLS + (kc + step * q) * 8),
                                         part[q][0][m]);
        }
        for (; s < vectors; s += 32, kc += step)
#pragma unroll
            for (int m = 0; m < ROWS; ++m)
                part[0][0][m] = dot8(page[s], *reinterpret_cast<const uint4*>(x + m * X_COLS + kc * 8), part[0][0][m]);
    } else {
        const uint32_t chunks = vectors / rows;
        for (uint32_t c = 0; c < chunks; c += P) {
#pragma unroll
            for (int q = 0; q < P; ++q) {
                if (c + q >= chunks) break;
                uint4 xv[ROWS];
#pragma unroll
                for (int m = 0; m < ROWS; ++m)
                    xv[m] = *reinterpret_cast<const uint4*>(x + m * X_COLS + (kc0 + c + q) * 8);
#pragma unroll
                for (int g = 0; g < G; ++g) {
                    const uint4 w = page[(c + q) * rows + g * 32 + lane];
#pragma unroll
                    for (int m = 0; m < ROWS; ++m) part[q][g][m] = dot8(w, xv[m], part[q][g][m]);
                }
            }
        }
    }
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int m = 0; m < ROWS; ++m) {
            float sum = part[0][g][m];
#pragma unroll
            for (int q = 1; q < P; ++q) sum += part[q][g][m];
            acc[g][m] += sum;
        }
}

__device__ __forceinline__ bool warp_pages_fit(int rows) {
    return rows <= MAX_TILE_ROWS && (rows & (rows - 1)) == 0;  // a power of two: pages hold whole chunks
}

// Page i of the stream, once it has landed (thread 0 adds the wait to page_wait in profiling builds).
__device__ __forceinline__ const uint4* wait_page(const Params& p, uint8_t* smem, uint32_t i, int t,
                                                  unsigned long long& page_wait) {
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + OFF_FULL);
    const unsigned long long before = p.profile && t == 0 ? mono_ptx::globaltimer() : 0;
    mono_ptx::mbar_wait(&full[Ring::slot(i)], Ring::phase(i));
    if (p.profile && t == 0) page_wait += mono_ptx::globaltimer() - before;
    return reinterpret_cast<const uint4*>(smem + OFF_PAGES + Ring::slot(i) * PAGE_BYTES);
}

// Hands page i's slot back to the producer: every lane of the `split` warps that read the page (or of
// warp 0 after the CTA's barrier) arrives, worth PAGE_ARRIVALS / (32 split), so each reader's reads
// are ordered before the refill by its own release (one lane's arrival after __syncwarp measured no
// faster, and the race checker cannot follow it).
__device__ __forceinline__ void release_page(uint8_t* smem, uint32_t i, uint32_t split = 1) {
    mono_ptx::mbar_arrive(reinterpret_cast<uint64_t*>(smem + OFF_EMPTY) + Ring::slot(i), MAX_PAGE_SPLIT / split);
}

// Warps per page on the tensor cores: a tile of fewer pages than warps has each page's chunks split
// among 2, 4 or 8 warps (the most that leaves no warp two shares), so its matvec is not one warp's
// walk over a whole page (~1.3 us for 16 KiB: llama-3.2-1b's O tiles of 4 pages, most of
// smollm2-135m's tiles of 2 to 5). Tiles of 16 rows only: head_dim 128 builds spill with it on
// wider ones.
#ifndef MONO_PAGE_SPLIT
#define MONO_PAGE_SPLIT 1
#endif
__device__ __forceinline__ uint32_t page_split(uint32_t pages) {
    uint32_t split = 1;
    while (MONO_PAGE_SPLIT && split < MAX_PAGE_SPLIT && pages * split * 2 <= CONSUMER_WARPS) split *= 2;
    return split;
}

// A warp's pages on the tensor cores, for tiles of BLOCKS 16-row blocks: weights are the MMA's A
// operand (rows x k), the query rows its B columns (column m = query row m, the rest zero). In the
// [chunks][rows][8] layout an 8 x 8 matrix (8 rows, one chunk) is 128 contiguous bytes, so ldmatrix
// reads the page without bank conflicts. P independent accumulators keep P MMAs in flight. Against
// the FMA path (MONO_MMA=0): llama-3.2-1b 1133 -> 1222 tok/s, the O and QKV matvecs 1.9 -> 1.4 and
// 2.4 -> 1.6 us (H200).
#ifndef MONO_MMA
#define MONO_MMA 1
#endif
#ifndef MONO_MMA_BLOCKS
#define MONO_MMA_BLOCKS 4  // 8 (the LM head's 128-row tiles) spills; that stream is bound by HBM anyway
#endif
constexpr int MMA_MAX_BLOCKS = MONO_MMA_BLOCKS;

// The operands of chunks k and k + 1 of the page (pair = false: chunk k alone, k + 1 as zeros): every
// block's A fragments and x's B fragment.
template <int BLOCKS>
__device__ __forceinline__ void mma_operands(uint32_t a_base, const bf16* xr, uint32_t k, bool pair, bool has_x,
                                             uint32_t (&a)[BLOCKS][4], uint32_t (&b)[2]) {
    b[0] = has_x ? *reinterpret_cast<const uint32_t*>(xr + k * 8) : 0u;
    b[1] = has_x && pair ? *reinterpret_cast<const uint32_t*>(xr + k * 8 + 8) : 0u;
#pragma unroll
    for (int bl = 0; bl < BLOCKS; ++bl) {
        const uint32_t addr = a_base + (k * 16 * BLOCKS + bl * 16) * 16;
        if (pair) mono_ptx::ldmatrix_x4(addr, a[bl]);
        else mono_ptx::ldmatrix_x2(addr, a[bl]);
    }
}

template <int BLOCKS>
__device__ void matvec_warp_mma(const Params& p, uint8_t* smem, Ring& ring, uint32_t bytes, int warp, int lane,
                                int t, unsigned long long& page_wait) {
    constexpr int rows = 16 * BLOCKS;
    constexpr int P = BLOCKS >= 4 ? 1 : 4 / BLOCKS;
    const bf16* x = reinterpret_cast<const bf16*>(smem + OFF_X);
    float c[P][BLOCKS][4];
#pragma unroll
    for (int q = 0; q < P; ++q)
#pragma unroll
        for (int b = 0; b < BLOCKS; ++b)
#pragma unroll
            for (int e = 0; e < 4; ++e) c[q][b][e] = 0.f;
    const int g = lane / 4, tq = lane % 4, j = lane / 8;
    const bool has_x = g < ROWS;
    const uint32_t lane_off = ((j / 2) * rows + (j % 2) * 8 + lane % 8) * 16;
    const uint32_t pages = (bytes + PAGE_BYTES - 1) / PAGE_BYTES, split = BLOCKS == 1 ? page_split(pages) : 1;
    // Share s of page pg goes to warp (pg split + s) % CONSUMER_WARPS: chunk pairs [s n / split, (s + 1) n / split).
    for (uint32_t share = warp; share < pages * split; share += CONSUMER_WARPS) {
        const uint32_t pg = share / split, s = share % split;
        const uint32_t i = ring.count + pg;
        const uint4* page = wait_page(p, smem, i, t, page_wait);
        const uint32_t chunks = min(static_cast<uint32_t>(PAGE_BYTES), bytes - pg * PAGE_BYTES) / 16 / rows;
        const uint32_t pairs = (chunks + 1) / 2;
        const uint32_t end = min(chunks, 2 * (pairs * (s + 1) / split));
        const uint32_t a_base = mono_ptx::smem_addr(page) + lane_off;
        const bf16* xr = x + (has_x ? g : 0) * X_COLS + pg * (PAGE_BYTES / 16 / rows) * 8 + 2 * tq;
        uint32_t k = 2 * (pairs * s / split);
        // A step's operands are all loaded before its MMAs (as fast as one MMA after another, and
        // the head_dim 128 builds fit their registers this way).
#pragma unroll 2
        for (; k + 2 * P <= end; k += 2 * P) {
            uint32_t a[P][BLOCKS][4], b[P][2];
#pragma unroll
            for (int q = 0; q < P; ++q) mma_operands<BLOCKS>(a_base, xr, k + 2 * q, true, has_x, a[q], b[q]);
#pragma unroll
            for (int q = 0; q < P; ++q)
#pragma unroll
                for (int bl = 0; bl < BLOCKS; ++bl) mono_ptx::mma_16816(c[q][bl], a[q][bl], b[q][0], b[q][1]);
        }
        for (; k < end; k += 2) {  // the share's last chunks (the page's odd last one pairs with zeros)
            uint32_t a[BLOCKS][4], b[2];
            mma_operands<BLOCKS>(a_base, xr, k, k + 1 < end, has_x, a, b);
#pragma unroll
            for (int bl = 0; bl < BLOCKS; ++bl) mono_ptx::mma_16816(c[0][bl], a[bl], b[0], b[1]);
        }
        __syncwarp();
        release_page(smem, i, split);
    }
    ring.count += pages;
    // Lane l holds rows 16 b + l / 4 (and + 8) of query rows 2 (l % 4) and 2 (l % 4) + 1: the warp's
    // partial sums go to red in the warp path's [warp][rows] layout.
    float* red = reinterpret_cast<float*>(smem + OFF_RED);
#pragma unroll
    for (int b = 0; b < BLOCKS; ++b)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = 2 * tq + h;
            if (m >= ROWS) continue;
            float lo = c[0][b][h], hi = c[0][b][2 + h];
#pragma unroll
            for (int q = 1; q < P; ++q) {
                lo += c[q][b][h];
                hi += c[q][b][2 + h];
            }
            red[(warp * rows + b * 16 + g) * ROWS + m] = lo;
            red[(warp * rows + b * 16 + g + 8) * ROWS + m] = hi;
        }
}

__device__ __forceinline__ bool mma_fits(int rows) {
    return MONO_MMA && ROWS <= 8 && rows % 16 == 0 && rows <= 16 * MMA_MAX_BLOCKS;
}

// y[r][m] = sum_k W[r][k] x[m][k] for a tile whose rows are a power of two: page k of the tile goes to
// warp k % CONSUMER_WARPS, so the warps work on different pages at once; the partial sums are added
// lane by lane (shuffles in a fixed pattern), then warp by warp in order.
__device__ void matvec_warp_pages(const Params& p, uint8_t* smem, Ring& ring, uint32_t bytes, int rows, int t,
                                  unsigned long long& page_wait) {
    const bf16* x = reinterpret_cast<const bf16*>(smem + OFF_X);
    float* red = reinterpret_cast<float*>(smem + OFF_RED);
    const int warp = t / 32, lane = t % 32;
    const uint32_t pages = (bytes + PAGE_BYTES - 1) / PAGE_BYTES;
    if (mma_fits(rows)) {
        switch (rows / 16) {
            case 1: matvec_warp_mma<1>(p, smem, ring, bytes, warp, lane, t, page_wait); break;
            case 2:
                if constexpr (MMA_MAX_BLOCKS >= 2) matvec_warp_mma<2>(p, smem, ring, bytes, warp, lane, t, page_wait);
                break;
            case 4:
                if constexpr (MMA_MAX_BLOCKS >= 4) matvec_warp_mma<4>(p, smem, ring, bytes, warp, lane, t, page_wait);
                break;
            default:
                if constexpr (MMA_MAX_BLOCKS >= 8) matvec_warp_mma<8>(p, smem, ring, bytes, warp, lane, t, page_wait);
                break;
        }
        return;
    }
    float acc[8][ROWS];
#pragma unroll
    for (int g = 0; g < 8; ++g)
#pragma unroll
        for (int m = 0; m < ROWS; ++m) acc[g][m] = 0.f;
    for (uint32_t k = warp; k < pages; k += CONSUMER_WARPS) {
        const uint32_t i = ring.count + k;
        const uint4* page = wait_page(p, smem, i, t, page_wait);
        const uint32_t vectors = min(static_cast<uint32_t>(PAGE_BYTES), bytes - k * PAGE_BYTES) / 16;
        const int kc0 = static_cast<int>(k * (PAGE_BYTES / 16) / rows);
        switch (rows) {
            case 64:  // on the tensor cores (mma_fits) unless they are off
                if constexpr (!(MONO_MMA && MMA_MAX_BLOCKS >= 4)) page_dot<2>(page, x, vectors, rows, kc0, lane, acc);
                break;
            case 128: page_dot<4>(page, x, vectors, rows, kc0, lane, acc); break;
            case 256: page_dot<8>(page, x, vectors, rows, kc0, lane, acc); break;
            default: page_dot<1>(page, x, vectors, rows, kc0, lane, acc); break;
        }
        __syncwarp();
        release_page(smem, i);
    }
    ring.count += pages;
    if (rows <= 32) {
#pragma unroll
        for (int m = 0; m < ROWS; ++m)
            for (int o = 16; o >= rows; o >>= 1) acc[0][m] += __shfl_xor_sync(0xffffffffu, acc[0][m], o);
        if (lane < rows)
#pragma unroll
            for (int m = 0; m < ROWS; ++m) red[(warp * rows + lane) * ROWS + m] = acc[0][m];
    } else {
#pragma unroll
        for (int g = 0; g < 8; ++g)
            if (g < rows / 32)
#pragma unroll
                for (int m = 0; m < ROWS; ++m) red[(warp * rows + lane + 32 * g) * ROWS + m] = acc[g][m];
    }
}

// The same for any tile of up to CONSUMERS rows: every warp takes a share of every page. Thread t
// owns row t % rows and every (CONSUMERS / rows)-th k chunk of it.
__device__ void matvec_shared_pages(const Params& p, uint8_t* smem, Ring& ring, uint32_t bytes, int rows, int t,
                                    unsigned long long& page_wait) {
    const bf16* x = reinterpret_cast<const bf16*>(smem + OFF_X);
    float* red = reinterpret_cast<float*>(smem + OFF_RED);
    const int per_row = CONSUMERS / rows, stride = per_row * rows;
    const bool active = t < stride;
    float acc[ROWS];
#pragma unroll
    for (int m = 0; m < ROWS; ++m) acc[m] = 0.f;
    uint32_t first = 0;  // tile-relative index of the page's first 16-byte vector
    for (uint32_t off = 0; off < bytes; off += PAGE_BYTES, ++ring.count) {
        const uint32_t n = min(static_cast<uint32_t>(PAGE_BYTES), bytes - off) / 16;
        const uint4* page = wait_page(p, smem, ring.count, t, page_wait);
        if (active) {
            uint32_t v = first + (t + stride - first % stride) % stride;
            uint32_t kc = v / rows;
#pragma unroll 4
            for (; v < first + n; v += stride, kc += per_row) {
                const uint4 w = page[v - first];
#pragma unroll
                for (int m = 0; m < ROWS; ++m)
                    acc[m] = dot8(w, *reinterpret_cast<const uint4*>(x + m * X_COLS + kc * 8), acc[m]);
            }
        }
        consumers_sync();  // every warp has read the page
        if (t < 32) release_page(smem, ring.count);
        first += n;
    }
    // Laid out as the warp path's [groups][rows]: group j holds threads j * rows .. j * rows + rows - 1.
#pragma unroll
    for (int m = 0; m < ROWS; ++m) red[t * ROWS + m] = active ? acc[m] : 0.f;
}

// y[r][m] = sum_k W[r][k] x[m][k] for the instruction's tile of `rows` rows, its pages taken from the
// ring in order; y as fp32 [rows][ROWS] in shared memory.
__device__ void matvec_tile(const Params& p, uint8_t* smem, Ring& ring, uint32_t bytes, int rows, int t) {
    stamp(p, smem, 0);
    unsigned long long page_wait = 0;
    const bool warp_pages = warp_pages_fit(rows);
    if (warp_pages) {
        matvec_warp_pages(p, smem, ring, bytes, rows, t, page_wait);
    } else {
        matvec_shared_pages(p, smem, ring, bytes, rows, t, page_wait);
    }
    consumers_sync();
    const float* red = reinterpret_cast<const float*>(smem + OFF_RED);
    float* y = reinterpret_cast<float*>(smem + OFF_Y);
    const int groups = warp_pages ? CONSUMER_WARPS : CONSUMERS / rows;
    for (int i = t; i < rows * ROWS; i += CONSUMERS) {
        const int r = i / ROWS, m = i % ROWS;
        float s = 0.f;
        for (int j = 0; j < groups; ++j) s += red[(j * rows + r) * ROWS + m];
        y[i] = s;
    }
    mono_ptx::cp_async_wait_all();  // the epilogue's early loads (ops.cuh), seen by all after the barrier
    consumers_sync();
    if (MONO_PAUSE == 2 && t == 0) atomicExch(reinterpret_cast<uint32_t*>(smem + OFF_FLAGS) + FLAG_PAUSE, 1u);
    stamp(p, smem, 1);
    if (p.profile && t == 0) reinterpret_cast<unsigned long long*>(smem + OFF_FLAGS + 4 * FLAG_STAMPS)[2] = page_wait;
}
