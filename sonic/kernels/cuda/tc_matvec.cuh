// Tensor-core matrix-vector product for 1..16 query rows (see matvec.py for the contract).
//
// Every query row is computed by the same instructions whatever M is: the rows are the 8-wide N side
// of mma.m16n8k16 (two of them for 16 rows), so a row's output depends only on its own inputs, bit
// for bit, and a verification of M tokens gives exactly what M one-token steps give. Weights are the
// 16-row A side, read straight from HBM into registers with 16-byte loads: a lane holds 8 consecutive
// k of two weight rows, and the k order inside each 32-wide chunk is permuted the same way for weights
// and inputs, which leaves the dot products unchanged. Warps split K round-robin by 32-wide chunks and
// their partial sums are added in warp order, so the result never depends on timing. Where a tile's K
// is long and the tiles too few to fill the SMs (llama-3.2-1b's down projection), a cluster of KS
// blocks on as many SMs shares each tile: block r takes every KS-th run of WARPS chunks, and the
// partial sums are added over (block, warp) in order through distributed shared memory. KS depends
// only on the matrix's shape, never on M, so rows stay bit-identical across M.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <stdint.h>

struct TcParams {
  const void* x;             // [M, K] (or a table gathered by index), bf16 or fp32
  const uint16_t* w;         // [N, K] bf16, or [2N, K] = [gate; up]
  void* out;                 // [M, N] bf16 or fp32
  const uint16_t* nw;        // [K] RMSNorm weight
  const uint16_t* bias;      // [N] or [2N]
  const void* res;           // residual rows, bf16 or fp32
  const int64_t* index;      // [M] rows of x or of res
  float* pval;               // [M, tiles] argmax partials
  int32_t* pidx;
  long long stride_x, stride_r, stride_o;
  int M, N, K, tiles, tiles_per_block;
  float eps;
};

namespace tcmv {

constexpr int CHUNK = 32;  // k per chunk: one 16-byte load per lane and weight row half

__device__ __forceinline__ float bf(uint16_t v) { return __uint_as_float(((uint32_t)v) << 16); }
__device__ __forceinline__ uint16_t to_bf(float v) {
  __nv_bfloat16 b = __float2bfloat16_rn(v);
  return *reinterpret_cast<uint16_t*>(&b);
}

__device__ __forceinline__ uint4 ld_stream(const uint16_t* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}

__device__ __forceinline__ void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                    uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Both k16 steps of one chunk: lane (g, t) holds k = 8t..8t+7 of rows g and g+8 (ra, rb) and of its
// token's input (xv); step s uses k = 8t+4s..8t+4s+3 as the fragment's columns 2t, 2t+1, 2t+8, 2t+9.
__device__ __forceinline__ void mma_chunk(float (&d)[4], const uint4& ra, const uint4& rb, const uint4& xv) {
  mma(d, ra.x, rb.x, ra.y, rb.y, xv.x, xv.y);
  mma(d, ra.z, rb.z, ra.w, rb.w, xv.z, xv.w);
}

template <int WARPS, int KS, bool X_EARLY, int NORM_GROUP, bool NORM, bool BIAS, bool RES, bool SILU, bool ARGMAX, bool XGATHER, bool RESGATHER,
          bool X_F32, bool RES_F32, bool OUT_F32>
__device__ __forceinline__ void run(const TcParams& p) {
  // Each warp loads a stage of U chunks at once into registers, then uses it: many independent
  // blocks (a tile of 16 rows each) keep HBM busy; the first stage is in flight before the wait.
  constexpr int U = SILU ? 4 : 8;
  constexpr int NMAT = SILU ? 2 : 1;
  extern __shared__ uint4 dyn_smem[];
  uint16_t* xs = reinterpret_cast<uint16_t*>(dyn_smem);  // NORM: normalised rows [M][K + 8]
  __shared__ float red[WARPS][NMAT][16][16];             // per-warp sums [row][token]
  __shared__ float ys[16][16];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int M = p.M, N = p.N, K = p.K;
  const int nch = K / CHUNK;
  constexpr int ks = KS;  // blocks per cluster (the launch's cluster size)
  const int rank = ks > 1 ? (int)cooperative_groups::this_cluster().block_rank() : 0;
  const int streams = WARPS * ks;                     // chunk streams over the cluster
  const int gw = rank * WARPS + warp;                 // this warp's stream
  const int cnt = (nch - gw + streams - 1) / streams;  // its chunks: gw, gw + streams, ... (gw < streams)
  const int XS = K + 8;                               // padded row: no bank conflicts
  const int tile0 = (blockIdx.x / ks) * p.tiles_per_block;
  const int tile_end = min(tile0 + p.tiles_per_block, p.tiles);
  const bool two = M > 8;  // a second 8-token tile (the same per-row arithmetic either way)
  const uint4 zero = make_uint4(0, 0, 0, 0);

  uint4 wa[U], wb[U], ua[U], ub[U], xa[NORM || !X_EARLY ? 1 : U], xb[NORM || !X_EARLY ? 1 : U];
  auto load_w = [&](int tile, int j0) {
    const uint16_t* pa = p.w + (long long)min(tile * 16 + g, N - 1) * K + 8 * t;
    const uint16_t* pb = p.w + (long long)min(tile * 16 + g + 8, N - 1) * K + 8 * t;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (j0 + u < cnt) {
        const int k = (gw + streams * (j0 + u)) * CHUNK;
        wa[u] = ld_stream(pa + k);
        wb[u] = ld_stream(pb + k);
        if (SILU) {  // up rows sit N rows below the gate rows
          ua[u] = ld_stream(pa + (long long)N * K + k);
          ub[u] = ld_stream(pb + (long long)N * K + k);
        }
      }
    }
  };
  auto load_x = [&](int j0) {  // without the norm: bf16 inputs of rows g and g + 8, with the weights
    if (!NORM && X_EARLY) {
      const uint16_t* xg = static_cast<const uint16_t*>(p.x) + 8 * t;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (j0 + u < cnt) {
          const int k = (gw + streams * (j0 + u)) * CHUNK;
          xa[NORM ? 0 : u] = g < M ? *reinterpret_cast<const uint4*>(xg + (long long)g * p.stride_x + k) : zero;
          xb[NORM ? 0 : u] =
              two && g + 8 < M ? *reinterpret_cast<const uint4*>(xg + (long long)(g + 8) * p.stride_x + k) : zero;
        }
      }
    }
  };

  // Weights never depend on the previous kernel: the first stage is in flight before the wait.
  load_w(tile0, 0);
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;");
  load_x(0);

  if (NORM) {
    // RMSNorm rounded like the reference: normalise in fp32, round, scale, round. Every warp takes a
    // slice of K for all rows; the slices' sums are added in warp order (three barriers whatever M is).
    __shared__ float part[WARPS][16];
    __shared__ float rstd_s[16];
    auto load4 = [&](long long row, int k, float (&v)[4]) {
      if (X_F32) {
        const float4 f = *reinterpret_cast<const float4*>(static_cast<const float*>(p.x) + row * p.stride_x + k);
        v[0] = f.x; v[1] = f.y; v[2] = f.z; v[3] = f.w;
      } else {
        const uint2 h = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p.x) + row * p.stride_x + k);
        v[0] = bf(h.x & 0xffff); v[1] = bf(h.x >> 16); v[2] = bf(h.y & 0xffff); v[3] = bf(h.y >> 16);
      }
    };
    // Rows in groups of NORM_GROUP, so that a group's loads are in flight together (one round trip
    // per group and pass; the second pass mostly hits L1).
    for (int m0 = 0; m0 < M; m0 += NORM_GROUP) {
      long long row[NORM_GROUP];
      float ss[NORM_GROUP] = {};
#pragma unroll
      for (int i = 0; i < NORM_GROUP; ++i) row[i] = m0 + i < M ? (XGATHER ? p.index[m0 + i] : m0 + i) : 0;
#pragma unroll 2
      for (int k = tid * 4; k < K; k += WARPS * 128) {
#pragma unroll
        for (int i = 0; i < NORM_GROUP; ++i) {
          if (m0 + i < M) {
            float v[4];
            load4(row[i], k, v);
#pragma unroll
            for (int j = 0; j < 4; ++j) ss[i] += v[j] * v[j];
          }
        }
      }
#pragma unroll
      for (int i = 0; i < NORM_GROUP; ++i) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) ss[i] += __shfl_xor_sync(0xffffffffu, ss[i], o);
        if (lane == 0 && m0 + i < M) part[warp][m0 + i] = ss[i];
      }
    }
    __syncthreads();
    if (tid < M) {
      float tot = 0.f;
#pragma unroll
      for (int w = 0; w < WARPS; ++w) tot += part[w][tid];
      rstd_s[tid] = rsqrtf(tot / K + p.eps);
    }
    __syncthreads();
    for (int m0 = 0; m0 < M; m0 += NORM_GROUP) {
      long long row[NORM_GROUP];
#pragma unroll
      for (int i = 0; i < NORM_GROUP; ++i) row[i] = m0 + i < M ? (XGATHER ? p.index[m0 + i] : m0 + i) : 0;
#pragma unroll 2
      for (int k = tid * 4; k < K; k += WARPS * 128) {
        const uint2 nwv = *reinterpret_cast<const uint2*>(p.nw + k);
        const float nwf[4] = {bf(nwv.x & 0xffff), bf(nwv.x >> 16), bf(nwv.y & 0xffff), bf(nwv.y >> 16)};
#pragma unroll
        for (int i = 0; i < NORM_GROUP; ++i) {
          if (m0 + i < M) {
            float v[4];
            load4(row[i], k, v);
            const float rs = rstd_s[m0 + i];
            uint32_t o[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) o[j] = to_bf(nwf[j] * bf(to_bf(v[j] * rs)));
            *reinterpret_cast<uint2*>(xs + (m0 + i) * XS + k) =
                make_uint2(o[0] | (o[1] << 16), o[2] | (o[3] << 16));
          }
        }
      }
    }
    __syncthreads();
  }

  for (int tile = tile0; tile < tile_end; ++tile) {
    float acc[2][4] = {}, accu[2][4] = {};
    for (int j0 = 0; j0 < cnt; j0 += U) {
      if (tile != tile0 || j0 != 0) {
        load_w(tile, j0);
        load_x(j0);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (j0 + u < cnt) {
          uint4 x0, x1;
          if (NORM) {
            const int k = (gw + streams * (j0 + u)) * CHUNK + 8 * t;
            x0 = g < M ? *reinterpret_cast<const uint4*>(xs + g * XS + k) : zero;
            x1 = g + 8 < M ? *reinterpret_cast<const uint4*>(xs + (g + 8) * XS + k) : zero;
          } else if (X_EARLY) {
            x0 = xa[NORM ? 0 : u];
            x1 = xb[NORM ? 0 : u];
          } else {
            const uint16_t* xg = static_cast<const uint16_t*>(p.x) + (gw + streams * (j0 + u)) * CHUNK + 8 * t;
            x0 = g < M ? *reinterpret_cast<const uint4*>(xg + (long long)g * p.stride_x) : zero;
            x1 = two && g + 8 < M ? *reinterpret_cast<const uint4*>(xg + (long long)(g + 8) * p.stride_x) : zero;
          }
          mma_chunk(acc[0], wa[u], wb[u], x0);
          if (two) mma_chunk(acc[1], wa[u], wb[u], x1);
          if (SILU) {
            mma_chunk(accu[0], ua[u], ub[u], x0);
            if (two) mma_chunk(accu[1], ua[u], ub[u], x1);
          }
        }
      }
    }
    // C fragment: rows g and g + 8, tokens 2t and 2t + 1 of each 8-token tile.
#pragma unroll
    for (int tt = 0; tt < 2; ++tt) {
      red[warp][0][g][tt * 8 + 2 * t] = acc[tt][0];
      red[warp][0][g][tt * 8 + 2 * t + 1] = acc[tt][1];
      red[warp][0][g + 8][tt * 8 + 2 * t] = acc[tt][2];
      red[warp][0][g + 8][tt * 8 + 2 * t + 1] = acc[tt][3];
      if (SILU) {
        red[warp][NMAT - 1][g][tt * 8 + 2 * t] = accu[tt][0];
        red[warp][NMAT - 1][g][tt * 8 + 2 * t + 1] = accu[tt][1];
        red[warp][NMAT - 1][g + 8][tt * 8 + 2 * t] = accu[tt][2];
        red[warp][NMAT - 1][g + 8][tt * 8 + 2 * t + 1] = accu[tt][3];
      }
    }
    // Every block's sums are in place; a block takes the outputs (r, m) with m % ks == rank, so each
    // token's outputs (and its argmax) stay in one block.
    if (ks > 1) cooperative_groups::this_cluster().sync(); else __syncthreads();
    for (int idx = tid * ks + rank; idx < 256; idx += WARPS * 32 * ks) {
      const int r = idx >> 4, m = idx & 15;
      const int n = tile * 16 + r;
      if (m < M && n < N) {
        float y = 0.f, up = 0.f;
        for (int q = 0; q < ks; ++q) {  // blocks, then warps, in order: a fixed sum
          const float* rq = ks > 1 ? cooperative_groups::this_cluster().map_shared_rank(&red[0][0][0][0], q)
                                   : &red[0][0][0][0];
#pragma unroll
          for (int w = 0; w < WARPS; ++w) {
            y += rq[((w * NMAT) * 16 + r) * 16 + m];
            if (SILU) up += rq[((w * NMAT + NMAT - 1) * 16 + r) * 16 + m];
          }
        }
        if (BIAS) {
          y += bf(p.bias[n]);
          if (SILU) up += bf(p.bias[N + n]);
        }
        if (SILU) y = y / (1.0f + expf(-y)) * up;
        if (RES) {
          const long long rr = RESGATHER ? p.index[m] : m;
          y += RES_F32 ? static_cast<const float*>(p.res)[rr * p.stride_r + n]
                       : bf(static_cast<const uint16_t*>(p.res)[rr * p.stride_r + n]);
        }
        if (OUT_F32) {
          static_cast<float*>(p.out)[(long long)m * p.stride_o + n] = y;
        } else {
          const uint16_t o = to_bf(y);
          static_cast<uint16_t*>(p.out)[(long long)m * p.stride_o + n] = o;
          y = bf(o);
        }
        if (ARGMAX) ys[r][m] = y;
      }
    }
    if (ARGMAX) {
      __syncthreads();
      if (tid < M && tid % ks == rank) {  // this tile's (max, lowest index of the max) per token
        float best = -INFINITY;
        int besti = 2147483647;
        for (int r = 0; r < 16 && tile * 16 + r < N; ++r) {
          if (ys[r][tid] > best || besti == 2147483647) { best = ys[r][tid]; besti = tile * 16 + r; }
        }
        p.pval[(long long)tid * p.tiles + tile] = best;
        p.pidx[(long long)tid * p.tiles + tile] = besti;
      }
    }
    // The cluster's readers of this block's sums are done before they are overwritten or freed.
    if (ks > 1) cooperative_groups::this_cluster().sync(); else __syncthreads();
  }
}

}  // namespace tcmv
