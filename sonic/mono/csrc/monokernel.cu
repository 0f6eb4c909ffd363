// The monokernel: every layer of many decode steps in one persistent launch, one CTA per SM.
//
// Each CTA walks its queue of the instruction list once per epoch (token). Warp 8 is the producer:
// it streams the weight tiles of the queue, epoch after epoch, into the ring of shared-memory pages
// with bulk async copies, never waiting on anything but a free page, so HBM keeps streaming while the
// consumer warps (0..7) wait on their inputs. Consumers wait on monotonic counters (acquire),
// compute, store, and add 1 to the instruction's counter (release). The producer's copies in
// flight and its pause: common.cuh.

// ---- waits, signals, the two roles ----

// Flags that consumer thread 0 and the producer share without ever meeting at a barrier: atomics, so
// each access is whole and ordered (and the race checker sees why).
__device__ __forceinline__ uint32_t flag_get(uint32_t* flags, int i) { return atomicAdd(flags + i, 0u); }
__device__ __forceinline__ void flag_set(uint32_t* flags, int i, uint32_t v) { atomicExch(flags + i, v); }

// The counter thread 0 last saw and the value it read (acquire): a wait that it already satisfies
// needs no poll. A poll is a round trip to L2 behind the SM's weight copies in flight: 1.5-2 us for
// an SM's second gate/up tile, whose wait the first one's poll had already met (H100).
#ifndef MONO_WAIT_CACHE
#define MONO_WAIT_CACHE 1
#endif
// Kept in shared memory (FLAG_SEEN), not registers: the consumers' loop is at the register cap.
__device__ __forceinline__ uint32_t& seen_counter(uint8_t* smem) {
    return reinterpret_cast<uint32_t*>(smem + OFF_FLAGS)[FLAG_SEEN];
}
__device__ __forceinline__ unsigned long long& seen_value(uint8_t* smem) {
    return *reinterpret_cast<unsigned long long*>(smem + OFF_FLAGS + 4 * FLAG_SEEN + 8);
}

// Thread 0 polls the instruction's counters; false when the launch must end instead (a stop before
// this epoch, an abort by another CTA, or this wait timing out). Only a wait on the epoch before
// (EMBED's on the last SAMPLE, which lowers the launch's last epoch before it signals) reads the stop
// afterwards: every other wait comes after EMBED's signal in its epoch, which never comes past a
// stop, and the spin notices the stop. Reading the stop and abort flags after every wait cost two
// round trips to L2 on every instruction (MONO_STOP_CHECK=1 keeps that).
#ifndef MONO_STOP_CHECK
#define MONO_STOP_CHECK 0
#endif
__device__ bool wait_for(const Params& p, const Instruction& ins, uint32_t index, unsigned long long epoch,
                         uint8_t* smem) {
    const unsigned long long start = mono_ptx::globaltimer();
    bool lagged = MONO_STOP_CHECK;
    for (uint32_t j = 0; j < ins.num_waits; ++j) {
        lagged |= ins.wait_lag[j] > 0;
        const unsigned long long target = (epoch - ins.wait_lag[j]) * ins.wait_count[j];
        if (MONO_WAIT_CACHE && ins.wait_counter[j] == seen_counter(smem) && seen_value(smem) >= target) continue;
        const unsigned long long* counter = p.counters + ins.wait_counter[j];
        unsigned long long value;
        for (uint32_t spin = 0; (value = mono_ptx::ld_acquire(counter)) < target; ++spin) {
            if (spin % 256 != 255) continue;
            // A stop before this epoch: what this waits for will never come.
            if (*reinterpret_cast<volatile unsigned long long*>(p.stop_epoch) < epoch) return false;
            if (*reinterpret_cast<volatile int32_t*>(p.abort_flag)) return false;
            if (mono_ptx::globaltimer() - start > p.timeout_ns) {
                report_timeout(p, index, epoch, ins.wait_counter[j]);
                return false;
            }
        }
        seen_counter(smem) = ins.wait_counter[j];
        seen_value(smem) = value;
    }
    return !lagged || (*reinterpret_cast<volatile unsigned long long*>(p.stop_epoch) >= epoch &&
                       !*reinterpret_cast<volatile int32_t*>(p.abort_flag));
}

// Walks the pages of one SM's weight stream: its queue's tiles in order, epoch after epoch.
struct Cursor {
    uint32_t epoch = 0, qi, off = 0;
    __device__ explicit Cursor(uint32_t q0) : qi(q0) {}
    uint32_t index = 0;  // instruction of the page last returned
    bool last = false;   // it is that instruction's last page
    uint32_t op = 0;     // that instruction's opcode
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
                op = ins.opcode;
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
    uint32_t* flags = reinterpret_cast<uint32_t*>(smem + OFF_FLAGS);
    const uint64_t policy = mono_ptx::evict_first_policy();
    Ring ring;
    Cursor copy(q0);
    const uint8_t* src;
    uint32_t n;
    // Profiling builds: per instruction, the ns its pages waited for a free slot (the consumers are
    // behind), for copies in flight to land (HBM is behind) and for a release (the pause).
    unsigned long long full_ns = 0, landing_ns = 0, pause_ns = 0, mark = 0;
    while (copy.next(p, q0, q1, src, n)) {
        const uint32_t slot = Ring::slot(ring.count);
        if (p.profile) mark = mono_ptx::globaltimer();
        while (!mono_ptx::mbar_try_wait(&empty[slot], Ring::phase(ring.count) ^ 1))
            if (flag_get(flags, FLAG_EXIT)) goto drain;
        if (p.profile) full_ns += mono_ptx::globaltimer() - mark, mark = mono_ptx::globaltimer();
        const uint32_t in_flight = copy.op == OP_QKV_ROPE ? IN_FLIGHT_QKV : IN_FLIGHT;
        if (in_flight < NUM_PAGES && ring.count >= in_flight) {  // page count - in_flight has landed
            const uint32_t old = ring.count - in_flight;
            while (!mono_ptx::mbar_try_wait(&full[Ring::slot(old)], Ring::phase(old)))
                if (flag_get(flags, FLAG_EXIT)) goto drain;
        }
        if (p.profile) landing_ns += mono_ptx::globaltimer() - mark, mark = mono_ptx::globaltimer();
        if (MONO_PAUSE)
            while (flag_get(flags, FLAG_PAUSE))
                if (flag_get(flags, FLAG_EXIT)) goto drain;
        if (p.profile) pause_ns += mono_ptx::globaltimer() - mark;
        mono_ptx::mbar_expect_tx(&full[slot], n);
        mono_ptx::bulk_copy(smem + OFF_PAGES + slot * PAGE_BYTES, src, n, &full[slot], policy);
        if (p.profile && copy.last) {
            unsigned long long* out = p.profile + PROFILE_STAMPS * copy.index;
            out[5] = mono_ptx::globaltimer();
            out[8] = full_ns;
            out[9] = landing_ns;
            out[10] = pause_ns;
            full_ns = landing_ns = pause_ns = 0;
        }
        ++ring.count;
    }
    while (!flag_get(flags, FLAG_EXIT)) {
    }
drain:  // the CTA may not end while copies into its shared memory are in flight
    for (uint32_t i = flag_get(flags, FLAG_CONSUMED); i < ring.count; ++i)
        mono_ptx::mbar_wait(&full[Ring::slot(i)], Ring::phase(i));
}

__device__ void consumer(const Params& p, uint8_t* smem, uint32_t q0, uint32_t q1) {
    const int t = threadIdx.x;
    uint32_t* flags = reinterpret_cast<uint32_t*>(smem + OFF_FLAGS);
    Ring ring;
    Staged staged;
    if (t == 0) seen_counter(smem) = ~0u;
    for (uint32_t e = 0; e < p.num_epochs; ++e) {
        const unsigned long long epoch = p.first_epoch + e;
        for (uint32_t qi = q0; qi < q1; ++qi) {
            const uint32_t index = p.queue[qi];
            const Instruction& ins = p.instructions[index];
            const unsigned long long started = p.profile && t == 0 ? mono_ptx::globaltimer() : 0;
            if (t == 0) {
                if (MONO_ATTN_EARLY && ins.opcode == OP_ATTN_PARTIAL) attn_prefetch(p, ins, epoch);
                if (MONO_PAUSE && MONO_PAUSE_ATTN && ins.opcode == OP_ATTN_PARTIAL) flag_set(flags, FLAG_PAUSE, 1);
                // Inputs that carry their own flags are read until current instead (LL_MERGE: O's,
                // attention.cuh; LL_H: the residual that QKV, gate/up and the LM head stage; LL_ACT:
                // down's; common.cuh).
                const bool flagged = (LL_MERGE && ins.opcode == OP_O_PROJ) || (LL_ACT && ins.opcode == OP_DOWN_PROJ) ||
                                     (LL_H && (ins.opcode == OP_QKV_ROPE || ins.opcode == OP_GATE_UP ||
                                               ins.opcode == OP_LM_HEAD));
                flags[FLAG_GO] = flagged || wait_for(p, ins, index, epoch, smem);
            }
            const unsigned long long ready = p.profile && t == 0 ? mono_ptx::globaltimer() : 0;
            consumers_sync();
            if (!flags[FLAG_GO]) goto done;
            switch (ins.opcode) {
                case OP_EMBED: op_embed(p, ins, epoch); break;
                case OP_QKV_ROPE: op_qkv_rope(p, ins, smem, ring, epoch, staged); break;
                case OP_ATTN_PARTIAL: op_attn_partial(p, ins, smem, epoch); break;
                case OP_ATTN_COMBINE: op_attn_combine(p, ins, smem); break;
                case OP_O_PROJ: op_projection(p, ins, smem, ring, p.attn, Q_SIZE, epoch, staged); break;
                case OP_GATE_UP: op_gate_up(p, ins, smem, ring, epoch, staged); break;
                case OP_DOWN_PROJ: op_projection(p, ins, smem, ring, p.act, INTERMEDIATE_SIZE, epoch, staged); break;
                case OP_RESIDUAL: op_residual(p, ins); break;
                case OP_LM_HEAD: op_lm_head(p, ins, smem, ring, epoch, staged); break;
                case OP_SAMPLE: op_sample(p, epoch, smem); break;
                default: break;
            }
            const unsigned long long op_done = p.profile && t == 0 ? mono_ptx::globaltimer() : 0;
            consumers_sync();  // every thread's stores are done before the release
            if ((LL_MERGE || LL_H || LL_ACT) && !flags[FLAG_GO]) goto done;  // flagged inputs never came (an abort, the bound)
            if (t == 0) {
                if (MONO_PAUSE) flag_set(flags, FLAG_PAUSE, 1);
                mono_ptx::red_release_add(p.counters + ins.signal, 1ull);
                if (MONO_PAUSE) flag_set(flags, FLAG_PAUSE, 0);
                if (MONO_LATE_HOST && ins.opcode == OP_SAMPLE) tokens_to_host(p, epoch, smem);
            }
            if (p.profile && t == 0) {
                unsigned long long* out = p.profile + PROFILE_STAMPS * index;
                const unsigned long long* marks = reinterpret_cast<unsigned long long*>(smem + OFF_FLAGS + 4 * FLAG_STAMPS);
                const bool matvec = ins.weight_bytes > 0 || ins.opcode == OP_ATTN_PARTIAL;  // attention: 2 stamps
                out[0] = started;
                out[1] = ready;
                out[2] = matvec ? marks[0] : ready;
                out[3] = matvec ? marks[1] : ready;
                out[4] = mono_ptx::globaltimer();
                out[6] = ins.weight_bytes > 0 ? marks[2] : 0;
                out[7] = op_done;
            }
        }
    }
done:
    if (t == 0) {
        flag_set(flags, FLAG_CONSUMED, ring.count);
        __threadfence_block();
        flag_set(flags, FLAG_EXIT, 1);
    }
}

// Nine warps (eight consumers, the producer) put three on one of the SM's four sub-partitions, whose
// 16384 registers hold three warps only at <= 170 registers per thread: past that the launch fails
// ("too many blocks in cooperative launch"). A cap of 168 spills a little on head_dim 128 instead.
extern "C" __global__ void __maxnreg__(168) mono_decode(const __grid_constant__ Params p) {
    extern __shared__ __align__(1024) uint8_t smem[];
    const uint32_t q0 = p.queue_start[blockIdx.x], q1 = p.queue_start[blockIdx.x + 1];
    if (threadIdx.x == 0) {
        uint64_t* full = reinterpret_cast<uint64_t*>(smem + OFF_FULL);
        uint64_t* empty = reinterpret_cast<uint64_t*>(smem + OFF_EMPTY);
        for (int i = 0; i < NUM_PAGES; ++i) {
            mono_ptx::mbar_init(&full[i], 1);
            mono_ptx::mbar_init(&empty[i], PAGE_ARRIVALS);
        }
        volatile uint32_t* flags = reinterpret_cast<volatile uint32_t*>(smem + OFF_FLAGS);
        flags[FLAG_EXIT] = 0;
        flags[FLAG_CONSUMED] = 0;
        flags[FLAG_PAUSE] = 0;
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
    out[4] = MAX_TOP_K;
}
