// The monokernel's shared ground: launch shape, shared-memory layout, the parameter block, the
// ring of weight pages and small arithmetic helpers. Compiled after the generated model header
// (namespace sonic_mono) and ptx.cuh; the other csrc files follow it (kernel.py: SOURCES).
using namespace sonic_mono;
using bf16 = __nv_bfloat16;

#ifndef MONO_CONSUMER_WARPS
#define MONO_CONSUMER_WARPS 8
#endif
constexpr int CONSUMER_WARPS = MONO_CONSUMER_WARPS;
constexpr int CONSUMERS = CONSUMER_WARPS * 32;
constexpr int THREADS = CONSUMERS + 32;
#ifndef MONO_PAGE_KIB
#define MONO_PAGE_KIB 16  // 8 KiB pages measured slower
#endif
constexpr int PAGE_BYTES = MONO_PAGE_KIB * 1024;
// Arrivals that free a page: every lane of the warps that read it, each worth 8 / (its warps) (matvec.cuh:
// release_page), so one warp or a page split among 2, 4 or 8 warps frees it alike.
constexpr int MAX_PAGE_SPLIT = 8;
constexpr int PAGE_ARRIVALS = 32 * MAX_PAGE_SPLIT;

// The SM's memory requests queue behind its bulk copies in flight: a signal's release fence waits
// for them (measured: 2.5-3.4 us after a 256 KiB tile with twelve 16 KiB pages in flight, 0.6-0.8
// us with two and the pause). So the producer keeps MONO_IN_FLIGHT copies in flight at most, and
// with MONO_PAUSE issues none while a release is pending (MONO_PAUSE=2: from the end of the
// instruction's matvec, so the copies in flight land during its epilogue and the release's fence
// waits for fewer). Two in flight were too few for the SM's
// share of HBM once the matvecs ran on the tensor cores: four gave llama-3.2-1b 1230 -> 1270 tok/s,
// qwen3-1.7b 705 -> 713 (three to six measured alike; H200).
#ifndef MONO_PAUSE
#define MONO_PAUSE 2  // llama-3.2-1b 1070.6 -> 1090.7 tok/s against 1 (H100, 6348926)
#endif
// Attention's loads queue behind the copies in flight as well: with MONO_PAUSE_ATTN none is issued
// from attention's wait to its release (its ring is full by then on most SMs anyway): llama-3.2-1b
// 1101.6 -> 1111.2 tok/s (H100, 5d2a7fa).
#ifndef MONO_PAUSE_ATTN
#define MONO_PAUSE_ATTN 1
#endif
#ifndef MONO_IN_FLIGHT
#define MONO_IN_FLIGHT 4
#endif
constexpr uint32_t IN_FLIGHT = MONO_IN_FLIGHT;
// A QKV tile's pages are issued late (behind the down tile before it, which fills the ring, and the
// pause for its release) and its matvec, on the layer's chain of waits, waits for them: its copies
// may have MONO_IN_FLIGHT_QKV in flight. Its own release comes after they have landed.
#ifndef MONO_IN_FLIGHT_QKV
#define MONO_IN_FLIGHT_QKV 8  // llama-3.2-1b 1099.8 -> 1109.1 tok/s against MONO_IN_FLIGHT (4; H100, 5a49c91)
#endif
constexpr uint32_t IN_FLIGHT_QKV = MONO_IN_FLIGHT_QKV;
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
constexpr int MAX_PAGES = 32;
constexpr int OFF_EMPTY = OFF_FULL + 8 * MAX_PAGES;                    // uint64 per page: drained
constexpr int OFF_FLAGS = OFF_EMPTY + 8 * MAX_PAGES;                   // go, exit, consumed, ...
constexpr int OFF_STAT = OFF_FLAGS + 64;                               // float [CONSUMER_WARPS][ROWS] + ROWS
constexpr int MAX_TILE_ROWS = 256;                                     // kernel.py checks every tile
static_assert(TILE_ROWS <= MAX_TILE_ROWS, "the program's widest tile is wider than the kernel handles");
// Sized for the program's widest tile (TILE_ROWS), and at least the token choice's survivors
// (sample.cuh), so that verification rows leave pages for the ring (kernel.ring_pages mirrors this).
constexpr int RED_FLOATS = cmax(cmax(CONSUMERS, CONSUMER_WARPS * TILE_ROWS) * ROWS, 64 + 4 * CONSUMERS);
constexpr int OFF_RED = align_up(OFF_STAT + 4 * (CONSUMER_WARPS + 1) * ROWS + 64, 16);  // matvec partial sums
constexpr int OFF_Y = OFF_RED + 4 * RED_FLOATS;                        // float [TILE_ROWS][ROWS]: tile outputs
constexpr int ATTN_FLOATS = cmax(GQA_GROUP * ATTN_CHUNK, KEY_LANES * GQA_GROUP * HEAD_DIM);
constexpr int OFF_ATTN_Q = OFF_Y + 4 * TILE_ROWS * ROWS;               // float [GQA][HEAD_DIM]
constexpr int OFF_ATTN_RUN = OFF_ATTN_Q + 4 * GQA_GROUP * HEAD_DIM;    // float [3][GQA]: max, sum, rescale
constexpr int OFF_ATTN = align_up(OFF_ATTN_RUN + 4 * 3 * GQA_GROUP, 16);  // scores, then value partials
constexpr int OFF_X = align_up(OFF_ATTN + 4 * ATTN_FLOATS, 16);        // bf16 [ROWS][X_COLS]: matvec inputs
constexpr int OFF_PAGES = align_up(OFF_X + 2 * ROWS * X_COLS, 1024);
constexpr int NUM_PAGES = (SMEM_BYTES - OFF_PAGES) / PAGE_BYTES < MAX_PAGES ? (SMEM_BYTES - OFF_PAGES) / PAGE_BYTES
                                                                           : MAX_PAGES;
static_assert(NUM_PAGES >= 2, "the model's activations leave no room for the weight ring: use fewer rows");

enum Flag { FLAG_GO = 0, FLAG_EXIT = 1, FLAG_CONSUMED = 2, FLAG_PAUSE = 3, FLAG_STAMPS = 4,  // stamps: 3 x uint64
            FLAG_SEEN = 10 };  // consumer thread 0's last poll: counter (uint32), then its value (uint64 at 12)
// wait began, inputs ready, inputs staged, matvec done, done; the producer's issue of the last page,
// (thread 0) the ns the matvec spent waiting for its pages to land, and thread 0's end of the op
// (before the barrier and the release); the producer's ns waiting for a free page, for copies in
// flight to land and for a release while it issued the instruction's pages
constexpr int PROFILE_STAMPS = 11;
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
    bf16* q;                      // [ROWS][Q_SIZE] (raw under NORM_IN_ATTENTION)
    bf16* k_new;                  // [ROWS][KV_SIZE]: raw k under NORM_IN_ATTENTION
    float* attn_o;                // [ROWS][NUM_HEADS][KV_SPLITS][HEAD_DIM]
    float* attn_max;              // [ROWS][NUM_HEADS][KV_SPLITS]
    float* attn_sum;
    bf16* attn;                   // [ROWS][Q_SIZE]
    float* kpart;                 // [K_SPLITS][ROWS][HIDDEN_SIZE]
    bf16* act;                    // [ROWS][INTERMEDIATE_SIZE]
    float* logits;                // [ROWS][VOCAB_SIZE]
    float* part_val;              // [ROWS][NUM_LM_TILES]: each LM-head tile's best logit
    int32_t* part_idx;
    float* cand_val;              // [ROWS][NUM_LM_TILES][MAX_TOP_K]: each tile's best scaled logits (top-k)
    int32_t* cand_idx;
    int32_t* token;               // [ROWS] current tokens (the host writes the first)
    const int32_t* pos;           // [ROWS] their positions in the launch's first epoch (the host's)
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
    uint32_t top_k;               // sampling (sample.cuh): 0 = off
    unsigned long long seed;      // the request's random stream
    unsigned long long sample_step;  // its step in the launch's first epoch
    float inv_temperature;        // 1 / T in float32; 0 = greedy
    float top_p;                  // 1 = off
};

// The launch ends: the first timeout names the instruction, epoch and counter it waited on.
__device__ void report_timeout(const Params& p, uint32_t index, unsigned long long epoch, uint32_t counter) {
    if (atomicCAS(p.error, ERROR_NONE, ERROR_TIMEOUT) == ERROR_NONE) {
        p.error[1] = static_cast<int32_t>(index);
        p.error[2] = static_cast<int32_t>(epoch);
        p.error[3] = static_cast<int32_t>(counter);
    }
    __threadfence();
    atomicExch(p.abort_flag, 1);
}

// ---- flagged words ----
// A value another SM waits for can carry its own flag: one 64-bit word, the float in the low half and
// in the high half a flag that names what wrote it (epoch, layer, ...), written and read whole
// (relaxed 64-bit accesses), so a reader that sees a current flag has the value, with no counter to
// poll first and no release fence on the writer's side. The buffers hold two floats per value
// (launcher.py) and start at zero, which no flag equals (epochs start at 1).
__device__ __forceinline__ unsigned long long* ll_words(float* buffer) {
    return reinterpret_cast<unsigned long long*>(buffer);
}
__device__ __forceinline__ float ll_value(unsigned long long w) { return __uint_as_float(static_cast<uint32_t>(w)); }
__device__ __forceinline__ bool ll_current(unsigned long long w, uint32_t flag) {
    return static_cast<uint32_t>(w >> 32) == flag;
}
__device__ __forceinline__ void ll_store(unsigned long long* word, float v, uint32_t flag) {
    mono_ptx::st_relaxed_u64(word, static_cast<unsigned long long>(flag) << 32 | __float_as_uint(v));
}

// A reader of flagged words that are not all current yet: `again` says whether to read them once
// more. False, with FLAG_GO cleared (the instruction then writes nothing and the CTA ends: a flag of
// this epoch must not be written by a launch that stops in it, since the next launch runs the same
// epoch again), on a stop before this epoch (what it waits for never comes), on another CTA's abort,
// or past the time bound, which aborts the launch naming the reader and the counter it stands for.
// A reader that found stale words polls one of them (`settle`), one 8-byte load at a time with a
// pause between polls, then reads them all again: every thread re-reading all its words at once
// flooded L2 (llama-3.2-1b: 1105 -> 1041 tok/s with flagged words, H100).
#ifndef MONO_LL_PAUSE
#define MONO_LL_PAUSE 128  // ns between polls
#endif
struct LLWait {
    uint32_t flag, index, counter;
    unsigned long long epoch, start = 0;
    uint32_t spins = 0;
    // Word w is current, or false as `again`.
    __device__ bool settle(const Params& p, uint8_t* smem, const unsigned long long* w) {
        do {
            if (!again(p, smem)) return false;
        } while (!ll_current(mono_ptx::ld_relaxed_u64(w), flag));
        return true;
    }
    __device__ bool again(const Params& p, uint8_t* smem) {
        if (MONO_LL_PAUSE) __nanosleep(MONO_LL_PAUSE);
        if (++spins % 64) return true;
        const unsigned long long now = mono_ptx::globaltimer();
        if (!start) start = now;
        bool fail = *reinterpret_cast<volatile unsigned long long*>(p.stop_epoch) < epoch ||
                    *reinterpret_cast<volatile int32_t*>(p.abort_flag) != 0;
        if (!fail && now - start > p.timeout_ns) {
            report_timeout(p, index, epoch, counter);
            fail = true;
        }
        if (fail) reinterpret_cast<volatile uint32_t*>(smem + OFF_FLAGS)[FLAG_GO] = 0;
        return !fail;
    }
};

// An instruction's wait for words flagged `flag` in `epoch` (its one counter wait, named to the watchdog).
__device__ __forceinline__ LLWait ll_wait(const Params& p, const Instruction& ins, unsigned long long epoch,
                                          uint32_t flag) {
    return LLWait{flag, static_cast<uint32_t>(&ins - p.instructions), ins.wait_counter[0], epoch};
}

// Whether a link uses flagged words: MONO_LL, MONO_LL_H and MONO_LL_ACT are 0 (no), 1 (where the build
// allows) or 2 (the default of the first and last): where the model is small (hidden size up to
// 1024). Readers of attention's outputs and of the activations wait microseconds on the larger
// models, and there those links measured slower: llama-3.2-1b 1105 -> 1041 tok/s with all three,
// smollm2-135m 1663 -> 1790 (H100, 7c114e3).
__host__ __device__ constexpr bool ll_wanted(int setting) { return setting == 2 ? HIDDEN_SIZE <= 1024 : setting != 0; }

// The flag of what one layer writes once per epoch (attention's outputs, the activations).
__device__ __forceinline__ uint32_t layer_flag(unsigned long long epoch, int layer) {
    return static_cast<uint32_t>(epoch * NUM_LAYERS + layer);  // never 0: epochs start at 1
}

// The residual h as flagged words (MONO_LL_H): EMBED, O and down write it, a stage of the epoch at a
// time; QKV, gate/up and the LM head read it in their staging, which is their wait (each has that
// one wait: builder.py). Stage 0 is EMBED's, 2 l + 1 layer l's O, 2 l + 2 its down. Not with split-K
// (RESIDUAL writes h), nor for head_dim 128, whose builds spill with it. On wherever the build allows:
// alone (without the other two links) it paid on llama-3.2-1b too, 1099.8 -> 1118.6 tok/s (H100, 5a49c91).
#ifndef MONO_LL_H
#define MONO_LL_H 1
#endif
constexpr bool LL_H = ll_wanted(MONO_LL_H) && K_SPLITS == 1 && HEAD_DIM <= 64;
__device__ __forceinline__ uint32_t h_flag(unsigned long long epoch, int stage) {
    return static_cast<uint32_t>(epoch * (2 * NUM_LAYERS + 1) + stage);
}

// The gate/up activations as flagged words (MONO_LL_ACT): a word holds two bf16 values (the low
// half) and the flag, gate/up writes them a pair of rows at a time, down stages them, which is its
// one wait (builder.py). Tiles of an even number of rows only; not for head_dim 128 (spills).
#ifndef MONO_LL_ACT
#define MONO_LL_ACT 2
#endif
constexpr bool LL_ACT = ll_wanted(MONO_LL_ACT) && HEAD_DIM <= 64 && GATE_UP_ROWS_PER_TILE % 2 == 0 && INTERMEDIATE_SIZE % 2 == 0;

// After a staging that reads flagged words: false when they never came (LLWait; the barrier that
// ends every staging shows FLAG_GO to all).
__device__ __forceinline__ bool staged_ok(const uint8_t* smem) {
    return reinterpret_cast<const volatile uint32_t*>(smem + OFF_FLAGS)[FLAG_GO] != 0;
}

// Position in the ring of pages: page i of the stream sits in slot i % NUM_PAGES, in that slot's
// (i / NUM_PAGES)-th use, whose parity its barriers' waits name.
struct Ring {
    uint32_t count = 0;  // pages of the stream taken so far
    __device__ static uint32_t slot(uint32_t i) { return i % NUM_PAGES; }
    __device__ static uint32_t phase(uint32_t i) { return (i / NUM_PAGES) & 1; }
};

__device__ __forceinline__ void consumers_sync() { mono_ptx::bar_sync<CONSUMERS>(); }

// Row m's position in `epoch`: one more per epoch from the launch's start (as the interpreter's SAMPLE
// advances it). Derived, from a buffer the kernel never writes (cached), so no op waits a round trip
// to L2 for it.
__device__ __forceinline__ int position(const Params& p, int m, unsigned long long epoch) {
    return __ldg(p.pos + m) + static_cast<int>(epoch - p.first_epoch);
}

// What the matvec inputs in shared memory (x) hold: the epoch and the instruction's staging key
// (opcode, layer, k range). An instruction that would stage the same inputs again skips it: the
// second gate/up tile of a layer on an SM, the LM-head tiles after the first.
struct Staged {
    unsigned long long epoch = 0, key = ~0ull;
    // True when x must be staged for this instruction (and from now on holds its inputs).
    __device__ bool fresh(unsigned long long e, const Instruction& ins) {
        const unsigned long long k = static_cast<unsigned long long>(ins.opcode) |
                                     static_cast<unsigned long long>(ins.layer) << 8 |
                                     static_cast<unsigned long long>(ins.k_begin) << 24 |
                                     static_cast<unsigned long long>(ins.k_end) << 44;
        if (e == epoch && k == key) return false;
        epoch = e;
        key = k;
        return true;
    }
};

// Profiling builds: thread 0 notes when a matvec's inputs are staged (k = 0) and its sums done (k = 1);
// attention's: its q staged and its keys taken.
__device__ __forceinline__ void stamp(const Params& p, uint8_t* smem, int k) {
    if (p.profile && threadIdx.x == 0)
        reinterpret_cast<unsigned long long*>(smem + OFF_FLAGS + 4 * FLAG_STAMPS)[k] = mono_ptx::globaltimer();
}

__device__ __forceinline__ float bf16_round(float x) { return __bfloat162float(__float2bfloat16(x)); }

// dst = bf16(v), past L1 (another SM reads it).
__device__ __forceinline__ void store_bf16(bf16* dst, float v) {
    __stcg(reinterpret_cast<unsigned short*>(dst), __bfloat16_as_ushort(__float2bfloat16(v)));
}

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
