// The monokernel: every layer of many decode steps in one persistent launch, one CTA per SM.
//
// Compiled after the generated model header (namespace sonic_mono: opcodes, Instruction, the model's
// dimensions) and ptx.cuh, as one source. Each CTA walks its queue of the instruction list once per
// epoch (token). Warp 8 is the producer: it streams the weight tiles of the queue, epoch after epoch,
// into a ring of shared-memory pages with bulk async copies, never waiting on anything but a free
// page, so HBM keeps streaming while the consumer warps (0..7) wait on their inputs. Consumers wait on
// monotonic counters (acquire), compute, store, and add 1 to the instruction's counter (release).
// Tiles are packed [K/8][rows][8] (tiles.py): thread t always owns row t % rows, so a page needs no
// index arithmetic beyond one modulo, and partial sums are reduced in a fixed order (deterministic).
using namespace sonic_mono;
using bf16 = __nv_bfloat16;

#ifndef MONO_CONSUMER_WARPS
#define MONO_CONSUMER_WARPS 8
#endif
constexpr int CONSUMER_WARPS = MONO_CONSUMER_WARPS;
constexpr int CONSUMERS = CONSUMER_WARPS * 32;
constexpr int THREADS = CONSUMERS + 32;
constexpr int PAGE_BYTES = 16384;
constexpr int SMEM_BYTES = 227 * 1024;  // dynamic shared memory of the launch: Hopper's maximum

constexpr int cmax(int a, int b) { return a > b ? a : b; }
constexpr int cmin(int a, int b) { return a < b ? a : b; }
constexpr int align_up(int n, int a) { return (n + a - 1) / a * a; }

constexpr int X_COLS = cmax(HIDDEN_SIZE, cmax(Q_SIZE, INTERMEDIATE_SIZE));
constexpr int QKV_ROWS = Q_SIZE + 2 * KV_SIZE;
constexpr int NUM_LM_TILES = (VOCAB_SIZE + LM_HEAD_ROWS_PER_TILE - 1) / LM_HEAD_ROWS_PER_TILE;
// Keys per pass of attention (one per thread); fewer for wide heads, whose K rows fill more registers.
constexpr int ATTN_CHUNK = cmin(HEAD_DIM > 64 ? 64 : 128, CONSUMERS);
constexpr int HALF_DIM = HEAD_DIM / 2;
constexpr int KEY_LANES = CONSUMERS / HALF_DIM;    // threads that share one column pair of V
constexpr int VALUE_THREADS = KEY_LANES * HALF_DIM;
constexpr int VALUE_REGS = (ATTN_CHUNK + KEY_LANES - 1) / KEY_LANES;  // V column pairs a thread holds per pass
// Small per-layer weights, one bf16 block per layer (runner.py): norms, [qkv bias], [q norm, k norm].
constexpr int SMALL_ATTN_NORM = 0;
constexpr int SMALL_MLP_NORM = HIDDEN_SIZE;
constexpr int SMALL_BIAS = 2 * HIDDEN_SIZE;
constexpr int SMALL_Q_NORM = SMALL_BIAS + (ATTENTION_BIAS ? QKV_ROWS : 0);
constexpr int SMALL_K_NORM = SMALL_Q_NORM + HEAD_DIM;
constexpr int SMALL_PER_LAYER = SMALL_Q_NORM + (QK_NORM ? 2 * HEAD_DIM : 0);

static_assert(HEAD_DIM % 8 == 0 && HALF_DIM <= CONSUMERS, "head_dim must be a multiple of 8 up to 512");
static_assert(HIDDEN_SIZE % 8 == 0 && INTERMEDIATE_SIZE % 8 == 0 && Q_SIZE % 8 == 0, "sizes must be multiples of 8");
static_assert(SMALL_PER_LAYER % 8 == 0, "per-layer blocks stay 16-byte aligned");

// Shared memory, carved from one dynamic allocation (offsets in bytes).
constexpr int OFF_FULL = 0;                                            // uint64 per page: filled
constexpr int MAX_PAGES = 16;
constexpr int OFF_EMPTY = OFF_FULL + 8 * MAX_PAGES;                    // uint64 per page: drained
constexpr int OFF_FLAGS = OFF_EMPTY + 8 * MAX_PAGES;                   // go, exit, consumed, ...
constexpr int OFF_STAT = OFF_FLAGS + 64;                               // float [CONSUMER_WARPS][ROWS] + ROWS
constexpr int MAX_TILE_ROWS = 256;                                     // kernel.py checks every tile
constexpr int RED_FLOATS = cmax(CONSUMERS, CONSUMER_WARPS * MAX_TILE_ROWS) * ROWS;
constexpr int OFF_RED = align_up(OFF_STAT + 4 * (CONSUMER_WARPS + 1) * ROWS + 64, 16);  // matvec partial sums
constexpr int OFF_Y = OFF_RED + 4 * RED_FLOATS;                        // float [MAX_TILE_ROWS][ROWS]: tile outputs
constexpr int ATTN_FLOATS = cmax(GQA_GROUP * ATTN_CHUNK, KEY_LANES * GQA_GROUP * HEAD_DIM);
constexpr int OFF_ATTN_Q = OFF_Y + 4 * MAX_TILE_ROWS * ROWS;           // float [GQA][HEAD_DIM]
constexpr int OFF_ATTN_RUN = OFF_ATTN_Q + 4 * GQA_GROUP * HEAD_DIM;    // float [3][GQA]: max, sum, rescale
constexpr int OFF_ATTN = align_up(OFF_ATTN_RUN + 4 * 3 * GQA_GROUP, 16);  // scores, then value partials
constexpr int OFF_X = align_up(OFF_ATTN + 4 * ATTN_FLOATS, 16);        // bf16 [ROWS][X_COLS]: matvec inputs
constexpr int OFF_PAGES = align_up(OFF_X + 2 * ROWS * X_COLS, 1024);
constexpr int NUM_PAGES = (SMEM_BYTES - OFF_PAGES) / PAGE_BYTES < MAX_PAGES ? (SMEM_BYTES - OFF_PAGES) / PAGE_BYTES
                                                                           : MAX_PAGES;
static_assert(NUM_PAGES >= 2, "the model's activations leave no room for the weight ring: use fewer rows");

enum Flag { FLAG_GO = 0, FLAG_EXIT = 1, FLAG_CONSUMED = 2, FLAG_STAMPS = 4 };  // stamps: 3 x uint64
// wait began, inputs ready, inputs staged, matvec done, done; the producer's issue of the last page
// and (thread 0) the ns the matvec spent waiting for its pages to land
constexpr int PROFILE_STAMPS = 7;
enum Error { ERROR_NONE = 0, ERROR_TIMEOUT = 1 };

struct Params {
    const Instruction* instructions;
    const uint32_t* queue_start;  // [num_sms + 1]
    const uint32_t* queue;
    const bf16* blob;             // weight tiles in instruction order
    const bf16* smalls;           // [layers][SMALL_PER_LAYER]
    const bf16* embed;            // [VOCAB_SIZE][HIDDEN_SIZE]
    const bf16* final_norm;
    const float* cos;             // [max_len][HEAD_DIM]
    const float* sin;
    bf16* k_cache;                // [layers][NUM_KV_HEADS][max_len][HEAD_DIM]
    bf16* v_cache;
    float* h;                     // [ROWS][HIDDEN_SIZE] residual stream
    bf16* q;                      // [ROWS][Q_SIZE]
    float* attn_o;                // [ROWS][NUM_HEADS][KV_SPLITS][HEAD_DIM]
    float* attn_max;              // [ROWS][NUM_HEADS][KV_SPLITS]
    float* attn_sum;
    bf16* attn;                   // [ROWS][Q_SIZE]
    float* kpart;                 // [K_SPLITS][ROWS][HIDDEN_SIZE]
    bf16* act;                    // [ROWS][INTERMEDIATE_SIZE]
    float* logits;                // [ROWS][VOCAB_SIZE]
    float* part_val;              // [ROWS][NUM_LM_TILES]: each LM-head tile's best logit
    int32_t* part_idx;
    int32_t* token;               // [ROWS] current tokens (the host writes the first)
    int32_t* pos;                 // [ROWS] their positions
    unsigned long long* counters; // never reset
    unsigned long long* stop_epoch;  // the last epoch to run; SAMPLE lowers it on EOS or a host stop
    int32_t* error;               // [4] code, instruction, epoch, counter
    int32_t* abort_flag;
    int32_t* out_tokens;          // host-mapped [num_epochs][ROWS]
    int32_t* out_count;           // host-mapped: epochs whose tokens are in out_tokens
    const int32_t* host_stop;     // host-mapped: set by the host to end the launch
    unsigned long long* profile;  // [NUM_INSTRUCTIONS][PROFILE_STAMPS] of the last epoch, or null
    unsigned long long first_epoch;
    unsigned long long timeout_ns;
    uint32_t num_epochs;
    uint32_t max_len;
    uint32_t stop_at_eos;         // end the launch after an EOS token (decode, one row)
    uint32_t pad;
};

// Position in the ring of pages: page i of the stream sits in slot i % NUM_PAGES, in that slot's
// (i / NUM_PAGES)-th use, whose parity its barriers' waits name.
struct Ring {
    uint32_t count = 0;  // pages of the stream taken so far
    __device__ static uint32_t slot(uint32_t i) { return i % NUM_PAGES; }
    __device__ static uint32_t phase(uint32_t i) { return (i / NUM_PAGES) & 1; }
};

__device__ __forceinline__ void consumers_sync() { mono_ptx::bar_sync<CONSUMERS>(); }

// Profiling builds: thread 0 notes when a matvec's inputs are staged (k = 0) and its sums done (k = 1).
__device__ __forceinline__ void stamp(const Params& p, uint8_t* smem, int k) {
    if (p.profile && threadIdx.x == 0)
        reinterpret_cast<unsigned long long*>(smem + OFF_FLAGS + 4 * FLAG_STAMPS)[k] = mono_ptx::globaltimer();
}

__device__ __forceinline__ float bf16_round(float x) { return __bfloat162float(__float2bfloat16(x)); }

// acc + w . x over 8 bf16 pairs: two halves of four products summed apart, then added to acc (a
// shorter dependent chain than eight FMAs into acc).
__device__ __forceinline__ float dot8(uint4 w, uint4 x, float acc) {
    const __nv_bfloat162* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
    const __nv_bfloat162* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
    {
        float2 a = __bfloat1622float2(wp[0]), b = __bfloat1622float2(xp[0]);
        float lo = a.x * b.x;
        lo = fmaf(a.y, b.y, lo);
        a = __bfloat1622float2(wp[1]); b = __bfloat1622float2(xp[1]);
        lo = fmaf(a.x, b.x, lo);
        lo = fmaf(a.y, b.y, lo);
        a = __bfloat1622float2(wp[2]); b = __bfloat1622float2(xp[2]);
        float hi = a.x * b.x;
        hi = fmaf(a.y, b.y, hi);
        a = __bfloat1622float2(wp[3]); b = __bfloat1622float2(xp[3]);
        hi = fmaf(a.x, b.x, hi);
        hi = fmaf(a.y, b.y, hi);
        return acc + (lo + hi);
    }
}

// Sums v[m] over all consumer threads, in warp order: the same result on every thread.
__device__ void block_sum(float (&v)[ROWS], float* stat, int t) {
    const int warp = t / 32, lane = t % 32;
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
        float x = v[m];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
        if (lane == 0) stat[warp * ROWS + m] = x;
    }
    consumers_sync();
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
        float x = 0.f;
        for (int w = 0; w < CONSUMER_WARPS; ++w) x += stat[w * ROWS + m];
        v[m] = x;
    }
    consumers_sync();
}

// x[m][k] = weight[k] * bf16(h[m][k] / rms(h[m])), as the reference's RMSNorm rounds. h is read once
// (kept in registers between the sum of squares and the scaling).
constexpr int NORM_VECS = (HIDDEN_SIZE / 4 + CONSUMERS - 1) / CONSUMERS;  // float4 of h per thread
__device__ void stage_norm(const Params& p, uint8_t* smem, const bf16* weight, int t) {
    float* stat = reinterpret_cast<float*>(smem + OFF_STAT);
    bf16* x = reinterpret_cast<bf16*>(smem + OFF_X);
    float4 hv[ROWS][NORM_VECS];
    float ss[ROWS];
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
        ss[m] = 0.f;
#pragma unroll
        for (int i = 0; i < NORM_VECS; ++i) {
            const int k = (t + i * CONSUMERS) * 4;
            hv[m][i] = k < HIDDEN_SIZE ? __ldcg(reinterpret_cast<const float4*>(p.h + m * HIDDEN_SIZE + k))
                                       : make_float4(0.f, 0.f, 0.f, 0.f);
            ss[m] += hv[m][i].x * hv[m][i].x + hv[m][i].y * hv[m][i].y + hv[m][i].z * hv[m][i].z +
                     hv[m][i].w * hv[m][i].w;
        }
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

// y[r][m] = sum_k W[r][k] x[m][k] for a tile whose rows are a power of two: page k of the tile goes to
// warp k % CONSUMER_WARPS, so the warps work on different pages at once; the partial sums are added
// lane by lane (shuffles in a fixed pattern), then warp by warp in order.
__device__ void matvec_warp_pages(const Params& p, uint8_t* smem, Ring& ring, uint32_t bytes, int rows, int t,
                                  unsigned long long& page_wait) {
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + OFF_FULL);
    uint64_t* empty = reinterpret_cast<uint64_t*>(smem + OFF_EMPTY);
    const bf16* x = reinterpret_cast<const bf16*>(smem + OFF_X);
    float* red = reinterpret_cast<float*>(smem + OFF_RED);
    const int warp = t / 32, lane = t % 32;
    const uint32_t pages = (bytes + PAGE_BYTES - 1) / PAGE_BYTES;
    float acc[8][ROWS];
#pragma unroll
    for (int g = 0; g < 8; ++g)
#pragma unroll
        for (int m = 0; m < ROWS; ++m) acc[g][m] = 0.f;
    for (uint32_t k = warp; k < pages; k += CONSUMER_WARPS) {
        const uint32_t i = ring.count + k, slot = Ring::slot(i);
        const unsigned long long before = p.profile && t == 0 ? mono_ptx::globaltimer() : 0;
        mono_ptx::mbar_wait(&full[slot], Ring::phase(i));
        if (p.profile && t == 0) page_wait += mono_ptx::globaltimer() - before;
        const uint4* page = reinterpret_cast<const uint4*>(smem + OFF_PAGES + slot * PAGE_BYTES);
        const uint32_t vectors = min(static_cast<uint32_t>(PAGE_BYTES), bytes - k * PAGE_BYTES) / 16;
        const int kc0 = static_cast<int>(k * (PAGE_BYTES / 16) / rows);
        switch (rows) {
            case 64: page_dot<2>(page, x, vectors, rows, kc0, lane, acc); break;
            case 128: page_dot<4>(page, x, vectors, rows, kc0, lane, acc); break;
            case 256: page_dot<8>(page, x, vectors, rows, kc0, lane, acc); break;
            default: page_dot<1>(page, x, vectors, rows, kc0, lane, acc); break;
        }
        __syncwarp();
        if (lane == 0) mono_ptx::mbar_arrive(&empty[slot]);
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
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + OFF_FULL);
    uint64_t* empty = reinterpret_cast<uint64_t*>(smem + OFF_EMPTY);
    const bf16* x = reinterpret_cast<const bf16*>(smem + OFF_X);
    float* red = reinterpret_cast<float*>(smem + OFF_RED);
    const int per_row = CONSUMERS / rows, stride = per_row * rows;
    const bool active = t < stride;
    float acc[ROWS];
#pragma unroll
    for (int m = 0; m < ROWS; ++m) acc[m] = 0.f;
    uint32_t first = 0;  // tile-relative index of the page's first 16-byte vector
    for (uint32_t off = 0; off < bytes; off += PAGE_BYTES, ++ring.count) {
        const uint32_t n = min(static_cast<uint32_t>(PAGE_BYTES), bytes - off) / 16, slot = Ring::slot(ring.count);
        const unsigned long long before = p.profile && t == 0 ? mono_ptx::globaltimer() : 0;
        mono_ptx::mbar_wait(&full[slot], Ring::phase(ring.count));
        if (p.profile && t == 0) page_wait += mono_ptx::globaltimer() - before;
        const uint4* page = reinterpret_cast<const uint4*>(smem + OFF_PAGES + slot * PAGE_BYTES);
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
        if (t == 0) mono_ptx::mbar_arrive(&empty[slot]);
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
    consumers_sync();
    stamp(p, smem, 1);
    if (p.profile && t == 0) reinterpret_cast<unsigned long long*>(smem + OFF_FLAGS + 4 * FLAG_STAMPS)[2] = page_wait;
}

// ---- opcodes ----

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

__device__ void op_qkv_rope(const Params& p, const Instruction& ins, uint8_t* smem, Ring& ring) {
    const int t = threadIdx.x, slots = ins.tile_end - ins.tile_begin;
    const bf16* small = p.smalls + static_cast<size_t>(ins.layer) * SMALL_PER_LAYER;
    float* y = reinterpret_cast<float*>(smem + OFF_Y);
    float* stat = reinterpret_cast<float*>(smem + OFF_STAT);
    stage_norm(p, smem, small + SMALL_ATTN_NORM, t);
    matvec_tile(p, smem, ring, ins.weight_bytes, slots * HEAD_DIM, t);
    // Round as the reference's bf16 matmul does, then add the bias in bf16.
    for (int i = t; i < slots * HEAD_DIM * ROWS; i += CONSUMERS) {
        const int r = i / ROWS, slot = ins.tile_begin + r / HEAD_DIM;
        float v = bf16_round(y[i]);
        if (ATTENTION_BIAS)
            v = bf16_round(v + __bfloat162float(small[SMALL_BIAS + qkv_slot_row(ins.group, slot) + r % HEAD_DIM]));
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
    for (int i = t; i < slots * HALF_DIM * ROWS; i += CONSUMERS) {
        const int m = i % ROWS, pair = i / ROWS, s = pair / HALF_DIM, d = pair % HALF_DIM;
        const int slot = ins.tile_begin + s;
        float a = y[(s * HEAD_DIM + d) * ROWS + m], b = y[(s * HEAD_DIM + d + HALF_DIM) * ROWS + m];
        const int pos = __ldcg(p.pos + m);
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
            const bf16* w = small + (is_q ? SMALL_Q_NORM : SMALL_K_NORM);
            a = bf16_round(__bfloat162float(w[d]) * bf16_round(a * r));
            b = bf16_round(__bfloat162float(w[d + HALF_DIM]) * bf16_round(b * r));
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

// One KV split of one group for every row: unnormalised output, max and sum per q head. Keys are
// taken ATTN_CHUNK at a time with an online softmax across chunks. Each pass issues all of its K and
// V loads at once (into registers: a key row per thread, column pairs of V per thread), so a pass
// costs one round trip to memory, the next pass's loads overlapping this pass's last barrier.
__device__ void op_attn_partial(const Params& p, const Instruction& ins, uint8_t* smem) {
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
        const int pos = __ldcg(p.pos + m);
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

__device__ void op_attn_combine(const Params& p, const Instruction& ins) {
    for (int i = threadIdx.x; i < ROWS * GQA_GROUP * HEAD_DIM; i += CONSUMERS) {
        const int m = i / (GQA_GROUP * HEAD_DIM), head = ins.group * GQA_GROUP + (i / HEAD_DIM) % GQA_GROUP;
        const int d = i % HEAD_DIM, base = (m * NUM_HEADS + head) * KV_SPLITS;
        float best = -INFINITY;
        for (int s = 0; s < KV_SPLITS; ++s) best = fmaxf(best, __ldcg(p.attn_max + base + s));
        float out = 0.f, total = 0.f;
        for (int s = 0; s < KV_SPLITS; ++s) {  // split order: deterministic
            const float scale = __expf(__ldcg(p.attn_max + base + s) - best);
            out += scale * __ldcg(p.attn_o + static_cast<size_t>(base + s) * HEAD_DIM + d);
            total += scale * __ldcg(p.attn_sum + base + s);
        }
        __stcg(reinterpret_cast<unsigned short*>(p.attn + m * Q_SIZE + head * HEAD_DIM + d),
               __bfloat16_as_ushort(__float2bfloat16(out / total)));
    }
}

// O and down projections: into the residual, or a split-K partial that RESIDUAL adds later.
__device__ void op_projection(const Params& p, const Instruction& ins, uint8_t* smem, Ring& ring, const bf16* src,
                              int ld) {
    const int t = threadIdx.x, rows = ins.tile_end - ins.tile_begin;
    const float* y = reinterpret_cast<const float*>(smem + OFF_Y);
    stage_rows(smem, src, ld, ins.k_begin, ins.k_end - ins.k_begin, t);
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

__device__ void op_gate_up(const Params& p, const Instruction& ins, uint8_t* smem, Ring& ring) {
    const int t = threadIdx.x, n = ins.tile_end - ins.tile_begin;
    const float* y = reinterpret_cast<const float*>(smem + OFF_Y);
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

__device__ void op_lm_head(const Params& p, const Instruction& ins, uint8_t* smem, Ring& ring) {
    const int t = threadIdx.x, rows = ins.tile_end - ins.tile_begin;
    const float* y = reinterpret_cast<const float*>(smem + OFF_Y);
    stage_norm(p, smem, p.final_norm, t);
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

// Greedy choice from the LM-head tiles' partials; position on; token to the host; the stop decision.
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
            __stcg(p.pos + m, __ldcg(p.pos + m) + 1);
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

// ---- waits, signals, the two roles ----

// Thread 0 polls the instruction's counters; false when the launch must end instead (a stop before
// this epoch, an abort by another CTA, or this wait timing out).
__device__ bool wait_for(const Params& p, const Instruction& ins, uint32_t index, unsigned long long epoch) {
    const unsigned long long start = mono_ptx::globaltimer();
    for (uint32_t j = 0; j < ins.num_waits; ++j) {
        const unsigned long long target = (epoch - ins.wait_lag[j]) * ins.wait_count[j];
        const unsigned long long* counter = p.counters + ins.wait_counter[j];
        for (uint32_t spin = 0; mono_ptx::ld_acquire(counter) < target; ++spin) {
            if (spin % 256 != 255) continue;
            // A stop before this epoch: what this waits for will never come.
            if (*reinterpret_cast<volatile unsigned long long*>(p.stop_epoch) < epoch) return false;
            if (*reinterpret_cast<volatile int32_t*>(p.abort_flag)) return false;
            if (mono_ptx::globaltimer() - start > p.timeout_ns) {
                if (atomicCAS(p.error, ERROR_NONE, ERROR_TIMEOUT) == ERROR_NONE) {
                    p.error[1] = static_cast<int32_t>(index);
                    p.error[2] = static_cast<int32_t>(epoch);
                    p.error[3] = static_cast<int32_t>(ins.wait_counter[j]);
                }
                __threadfence();
                atomicExch(p.abort_flag, 1);
                return false;
            }
        }
    }
    return *reinterpret_cast<volatile unsigned long long*>(p.stop_epoch) >= epoch &&
           !*reinterpret_cast<volatile int32_t*>(p.abort_flag);
}

// Walks the pages of one SM's weight stream: its queue's tiles in order, epoch after epoch.
struct Cursor {
    uint32_t epoch = 0, qi, off = 0;
    __device__ explicit Cursor(uint32_t q0) : qi(q0) {}
    uint32_t index = 0;  // instruction of the page last returned
    bool last = false;   // it is that instruction's last page
    __device__ bool next(const Params& p, uint32_t q0, uint32_t q1, const uint8_t*& src, uint32_t& n) {
        while (epoch < p.num_epochs) {
            if (qi >= q1) { qi = q0; ++epoch; continue; }
            index = p.queue[qi];
            const Instruction& ins = p.instructions[index];
            if (off < ins.weight_bytes) {
                src = reinterpret_cast<const uint8_t*>(p.blob) + ins.weight_offset + off;
                n = min(static_cast<uint32_t>(PAGE_BYTES), ins.weight_bytes - off);
                off += PAGE_BYTES;
                last = off >= ins.weight_bytes;
                return true;
            }
            off = 0;
            ++qi;
        }
        return false;
    }
};

__device__ void producer(const Params& p, uint8_t* smem, uint32_t q0, uint32_t q1) {
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + OFF_FULL);
    uint64_t* empty = reinterpret_cast<uint64_t*>(smem + OFF_EMPTY);
    volatile uint32_t* flags = reinterpret_cast<volatile uint32_t*>(smem + OFF_FLAGS);
    const uint64_t policy = mono_ptx::evict_first_policy();
    Ring ring;
    Cursor copy(q0);
    const uint8_t* src;
    uint32_t n;
    while (copy.next(p, q0, q1, src, n)) {
        const uint32_t slot = Ring::slot(ring.count);
        while (!mono_ptx::mbar_try_wait(&empty[slot], Ring::phase(ring.count) ^ 1))
            if (flags[FLAG_EXIT]) goto drain;
        mono_ptx::mbar_expect_tx(&full[slot], n);
        mono_ptx::bulk_copy(smem + OFF_PAGES + slot * PAGE_BYTES, src, n, &full[slot], policy);
        if (p.profile && copy.last) p.profile[PROFILE_STAMPS * copy.index + 5] = mono_ptx::globaltimer();
        ++ring.count;
    }
    while (!flags[FLAG_EXIT]) {
    }
drain:  // the CTA may not end while copies into its shared memory are in flight
    for (uint32_t i = flags[FLAG_CONSUMED]; i < ring.count; ++i)
        mono_ptx::mbar_wait(&full[Ring::slot(i)], Ring::phase(i));
}

__device__ void consumer(const Params& p, uint8_t* smem, uint32_t q0, uint32_t q1) {
    const int t = threadIdx.x;
    volatile uint32_t* flags = reinterpret_cast<volatile uint32_t*>(smem + OFF_FLAGS);
    Ring ring;
    for (uint32_t e = 0; e < p.num_epochs; ++e) {
        const unsigned long long epoch = p.first_epoch + e;
        for (uint32_t qi = q0; qi < q1; ++qi) {
            const uint32_t index = p.queue[qi];
            const Instruction& ins = p.instructions[index];
            const unsigned long long started = p.profile && t == 0 ? mono_ptx::globaltimer() : 0;
            if (t == 0) flags[FLAG_GO] = wait_for(p, ins, index, epoch);
            const unsigned long long ready = p.profile && t == 0 ? mono_ptx::globaltimer() : 0;
            consumers_sync();
            if (!flags[FLAG_GO]) goto done;
            switch (ins.opcode) {
                case OP_EMBED: op_embed(p, ins); break;
                case OP_QKV_ROPE: op_qkv_rope(p, ins, smem, ring); break;
                case OP_ATTN_PARTIAL: op_attn_partial(p, ins, smem); break;
                case OP_ATTN_COMBINE: op_attn_combine(p, ins); break;
                case OP_O_PROJ: op_projection(p, ins, smem, ring, p.attn, Q_SIZE); break;
                case OP_GATE_UP: op_gate_up(p, ins, smem, ring); break;
                case OP_DOWN_PROJ: op_projection(p, ins, smem, ring, p.act, INTERMEDIATE_SIZE); break;
                case OP_RESIDUAL: op_residual(p, ins); break;
                case OP_LM_HEAD: op_lm_head(p, ins, smem, ring); break;
                case OP_SAMPLE: op_sample(p, epoch, smem); break;
                default: break;
            }
            consumers_sync();  // every thread's stores are done before the release
            if (t == 0) mono_ptx::red_release_add(p.counters + ins.signal, 1ull);
            if (p.profile && t == 0) {
                unsigned long long* out = p.profile + PROFILE_STAMPS * index;
                const unsigned long long* marks = reinterpret_cast<unsigned long long*>(smem + OFF_FLAGS + 4 * FLAG_STAMPS);
                const bool matvec = ins.weight_bytes > 0;
                out[0] = started;
                out[1] = ready;
                out[2] = matvec ? marks[0] : ready;
                out[3] = matvec ? marks[1] : ready;
                out[4] = mono_ptx::globaltimer();
                out[6] = matvec ? marks[2] : 0;
            }
        }
    }
done:
    if (t == 0) {
        flags[FLAG_CONSUMED] = ring.count;
        __threadfence_block();
        flags[FLAG_EXIT] = 1;
    }
}

extern "C" __global__ void __maxnreg__(224) mono_decode(const __grid_constant__ Params p) {
    extern __shared__ __align__(1024) uint8_t smem[];
    const uint32_t q0 = p.queue_start[blockIdx.x], q1 = p.queue_start[blockIdx.x + 1];
    if (threadIdx.x == 0) {
        uint64_t* full = reinterpret_cast<uint64_t*>(smem + OFF_FULL);
        uint64_t* empty = reinterpret_cast<uint64_t*>(smem + OFF_EMPTY);
        for (int i = 0; i < NUM_PAGES; ++i) {
            mono_ptx::mbar_init(&full[i], 1);
            mono_ptx::mbar_init(&empty[i], 1);  // one arrival: the warp (or the CTA) that read the page
        }
        volatile uint32_t* flags = reinterpret_cast<volatile uint32_t*>(smem + OFF_FLAGS);
        flags[FLAG_EXIT] = 0;
        flags[FLAG_CONSUMED] = 0;
        mono_ptx::fence_barrier_init();
    }
    __syncthreads();
    if (threadIdx.x >= CONSUMERS) {
        if (threadIdx.x == CONSUMERS) producer(p, smem, q0, q1);
        return;
    }
    consumer(p, smem, q0, q1);
}

// Read by the host: the launch's shape.
extern "C" __global__ void mono_layout(int32_t* out) {
    out[0] = THREADS;
    out[1] = SMEM_BYTES;
    out[2] = NUM_PAGES;
    out[3] = NUM_LM_TILES;
}
