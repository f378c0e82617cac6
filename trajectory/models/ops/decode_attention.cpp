// Fused decode attention over a shared-prefix K/V state (GPT's planning step, see
// trajectory/models/ops/decode_attention.py): for every row and head, the scores against each shared
// level and the row's own suffix, their softmax and the weighted values, in one pass that keeps
// the running maximum, sum and output in registers. One work item is a (row, head) pair; items are
// ordered so the rows sharing a level's keys run back to back and read them from cache.
//
// AVX2 + FMA (compiled with -mavx2 -mfma; the loader checks the CPU first). Head widths 8, 16, 32,
// 64 (the accumulators are whole 8-float registers).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

// One shared level: keys [groups, H, length, hd] at any strides, values with channel stride 1.
struct Level {
  const float* k; const float* v;
  int64_t groups, length;
  int64_t k_g, k_h, k_j, k_d;  // key strides: group, head, position, channel
  int64_t v_g, v_h, v_j;       // value strides: group, head, position
};

// exp(x) for x <= 0, 8 at a time: 2^n e^r with |r| <= ln2 / 2 and a degree-6 polynomial for e^r
// (about 2e-7 relative error, as float32's own); x is clamped at -87, so exp(-inf) gives ~1e-38,
// a weight that vanishes next to the maximum's weight of 1.
inline __m256 exp_nonpositive8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.3981999507e-3f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

inline float hmax(__m256 x) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline float hsum(__m256 x) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// All bits set in the lanes below m (m >= 8: every lane).
inline __m256 lanes_below(int64_t m) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i count = _mm256_set1_epi32(static_cast<int>(std::min<int64_t>(m, 8)));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(count, lane));
}

constexpr int64_t PREFETCH_AHEAD = 2;  // items: a row's own keys are a fresh DRAM read each time

// Asks the cache for n rows of `width` floats, `stride` floats apart (contiguous rows: one span).
inline void prefetch_rows(const float* p, int64_t n, int64_t stride, int64_t width) {
  if (stride == width) {
    width *= n;
    n = 1;
  }
  for (int64_t r = 0; r < n; ++r)
    for (int64_t off = 0; off < width; off += 16)  // a 64-byte line per 16 floats
      _mm_prefetch(reinterpret_cast<const char*>(p + r * stride + off), _MM_HINT_T0);
}

// scores[j] = <q, k_j> for j < n, padded with -inf up to a multiple of 8; returns their maximum.
// Keys in rows (channel stride 1): eight dot products reduced together by horizontal adds; keys
// transposed (position stride 1): 32 positions per pass over the channels, four independent
// accumulators; the last partial block of eight in vector form too (masked), since a scalar tail
// of a few keys costs as much as dozens in vectors; any other layout: a scalar loop.
template <int C>
inline float dot_keys(const __m256* q, const float* qf, const float* k, int64_t n, int64_t kj,
                      int64_t kd, float* scores) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 top = ninf;
  auto finish_block = [&](int64_t j, __m256 s) {  // lanes past n become -inf
    if (n - j < 8) s = _mm256_blendv_ps(ninf, s, lanes_below(n - j));
    _mm256_storeu_ps(scores + j, s);
    top = _mm256_max_ps(top, s);
  };
  if (kd == 1) {  // keys in rows
    for (int64_t j = 0; j < n; j += 8) {
      const int64_t m = std::min<int64_t>(8, n - j);
      __m256 a[8];
      for (int jj = 0; jj < 8; ++jj) {
        if (jj >= m) {
          a[jj] = _mm256_setzero_ps();
          continue;
        }
        const float* kr = k + (j + jj) * kj;
        __m256 s = _mm256_mul_ps(q[0], _mm256_loadu_ps(kr));
        for (int c = 1; c < C; ++c) s = _mm256_fmadd_ps(q[c], _mm256_loadu_ps(kr + 8 * c), s);
        a[jj] = s;
      }
      const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
      const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
      const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
      finish_block(j, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                                    _mm256_permute2f128_ps(u0, u1, 0x31)));
    }
  } else if (kj == 1) {  // keys transposed: 32 positions per pass over the channels
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
      __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
      for (int d = 0; d < 8 * C; ++d) {
        const __m256 qd = _mm256_set1_ps(qf[d]);
        const float* kr = k + d * kd + j;
        s0 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kr), s0);
        s1 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kr + 8), s1);
        s2 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kr + 16), s2);
        s3 = _mm256_fmadd_ps(qd, _mm256_loadu_ps(kr + 24), s3);
      }
      _mm256_storeu_ps(scores + j, s0); _mm256_storeu_ps(scores + j + 8, s1);
      _mm256_storeu_ps(scores + j + 16, s2); _mm256_storeu_ps(scores + j + 24, s3);
      top = _mm256_max_ps(top, _mm256_max_ps(_mm256_max_ps(s0, s1), _mm256_max_ps(s2, s3)));
    }
    for (; j < n; j += 8) {
      const __m256i mask = _mm256_castps_si256(lanes_below(n - j));  // all lanes but in the last
      __m256 s = _mm256_setzero_ps();
      for (int d = 0; d < 8 * C; ++d)
        s = _mm256_fmadd_ps(_mm256_set1_ps(qf[d]), _mm256_maskload_ps(k + d * kd + j, mask), s);
      finish_block(j, s);
    }
  } else {
    for (int64_t j = 0; j < n; j += 8) {
      alignas(32) float block[8];
      for (int jj = 0; jj < 8; ++jj) {
        block[jj] = 0.f;
        for (int d = 0; jj < n - j && d < 8 * C; ++d) block[jj] += qf[d] * k[(j + jj) * kj + d * kd];
      }
      finish_block(j, _mm256_load_ps(block));
    }
  }
  return hmax(top);
}

// One part's exp(score - max) weights times its values, folded into the running (top, total, acc),
// as flash attention merges key blocks; several accumulator sets so consecutive keys' FMAs do
// not wait on each other.
template <int C>
inline void merge_part(float* scores, float part_top, const float* v, int64_t n, int64_t vj,
                       float& top, __m256& total, __m256* acc) {
  if (n <= 0) return;
  if (part_top > top) {
    const __m256 rescale = exp_nonpositive8(_mm256_set1_ps(top - part_top));
    total = _mm256_mul_ps(total, rescale);
    for (int c = 0; c < C; ++c) acc[c] = _mm256_mul_ps(acc[c], rescale);
    top = part_top;
  }
  const __m256 top8 = _mm256_set1_ps(top);
  constexpr int SETS = C <= 2 ? 4 : 2;  // independent accumulators: FMA latency, not a chain
  __m256 a[SETS][C];
  for (int s = 0; s < SETS; ++s)
    for (int c = 0; c < C; ++c) a[s][c] = _mm256_setzero_ps();
  alignas(32) float w[8];
  for (int64_t j = 0; j < n; j += 8) {
    const __m256 w8 = exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(scores + j), top8));
    total = _mm256_add_ps(total, w8);  // padded lanes are exp(-inf) = 0 after the clamp: ~1e-38
    _mm256_store_ps(w, w8);
    const int64_t m = std::min<int64_t>(8, n - j);
    for (int jj = 0; jj < m; ++jj) {
      const __m256 wj = _mm256_set1_ps(w[jj]);
      const float* vr = v + (j + jj) * vj;
      for (int c = 0; c < C; ++c)
        a[jj % SETS][c] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(vr + 8 * c), a[jj % SETS][c]);
    }
  }
  for (int s = 0; s < SETS; ++s)
    for (int c = 0; c < C; ++c) acc[c] = _mm256_add_ps(acc[c], a[s][c]);
}

}  // namespace

// q [B, H, t, hd]; level_keys[i] [G_i, H, L_i, hd] and level_values[i] [G_i, H, L_i, hd], read by
// B / G_i consecutive rows each; suffix_k/v [B, H, S, hd], each row's own, whose last t entries
// are the queries' own tokens (causal among them). Returns softmax(q k^T / sqrt(hd)) v [B, H, t, hd].
torch::Tensor decode_attention(torch::Tensor q, std::vector<torch::Tensor> level_keys,
                               std::vector<torch::Tensor> level_values,
                               torch::Tensor suffix_k, torch::Tensor suffix_v) {
  TORCH_CHECK(q.dim() == 4 && suffix_k.dim() == 4 && suffix_v.dim() == 4, "4-d tensors expected");
  TORCH_CHECK(level_keys.size() == level_values.size(), "a values tensor per keys tensor");
  const int64_t B = q.size(0), H = q.size(1), t = q.size(2), hd = q.size(3);
  const int64_t S = suffix_k.size(2);
  TORCH_CHECK(S >= t && suffix_v.size(2) == S, "the suffix must hold the queries' own tokens");
  for (const auto& x : {q, suffix_k, suffix_v}) {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.device().is_cpu(), "float32 CPU tensors");
    TORCH_CHECK(x.size(1) == H && x.size(3) == hd, "heads and head width must match q");
  }
  TORCH_CHECK(suffix_k.size(0) == B && suffix_v.size(0) == B, "a suffix per row");
  TORCH_CHECK(suffix_k.stride(3) == 1 && suffix_v.stride(3) == 1, "suffix channels must be contiguous");
  std::vector<Level> levels;
  int64_t longest = S, outer = 1;
  for (size_t i = 0; i < level_keys.size(); ++i) {
    auto& k = level_keys[i];
    auto& v = level_values[i];
    TORCH_CHECK(k.dim() == 4 && v.sizes() == k.sizes(), "level keys and values [G, H, L, hd]");
    TORCH_CHECK(k.scalar_type() == torch::kFloat32 && v.scalar_type() == torch::kFloat32,
                "float32 levels");
    TORCH_CHECK(k.size(0) > 0 && B % k.size(0) == 0 && k.size(1) == H && k.size(3) == hd,
                "a level's groups must divide the rows, heads and head width match q");
    TORCH_CHECK(v.stride(3) == 1, "level values' channels must be contiguous");
    levels.push_back({k.data_ptr<float>(), v.data_ptr<float>(), k.size(0), k.size(2),
                      k.stride(0), k.stride(1), k.stride(2), k.stride(3),
                      v.stride(0), v.stride(1), v.stride(2)});
    longest = std::max(longest, k.size(2));
    if (i == 0) outer = k.size(0);
  }
  auto out = torch::empty({B, H, t, hd}, q.options());
  const float* qp = q.data_ptr<float>();
  const int64_t q_b = q.stride(0), q_h = q.stride(1), q_t = q.stride(2), q_d = q.stride(3);
  float* op = out.data_ptr<float>();
  const float* skp = suffix_k.data_ptr<float>();
  const float* svp = suffix_v.data_ptr<float>();
  const int64_t sk_b = suffix_k.stride(0), sk_h = suffix_k.stride(1), sk_j = suffix_k.stride(2);
  const int64_t sv_b = suffix_v.stride(0), sv_h = suffix_v.stride(1), sv_j = suffix_v.stride(2);
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  const int64_t rows = B / outer;  // item = (group of the first level, head, row in the group)
  auto run = [&](auto chunks) {
    constexpr int C = decltype(chunks)::value;
    at::parallel_for(0, B * H, 64, [&](int64_t begin, int64_t end) {
      std::vector<float> scores((longest + 7) / 8 * 8);  // one part's scores, then weights
      alignas(32) float qf[8 * C];
      auto row_of = [&](int64_t item) { return item / (H * rows) * rows + item % rows; };
      auto head_of = [&](int64_t item) { return (item / rows) % H; };
      for (int64_t item = begin; item < end; ++item) {
        const int64_t b = row_of(item), h = head_of(item);
        if (item + PREFETCH_AHEAD < end) {  // what a later item reads, unless the same as now
          const int64_t nb = row_of(item + PREFETCH_AHEAD), nh = head_of(item + PREFETCH_AHEAD);
          for (const Level& p : levels) {
            const int64_t per_group = B / p.groups, g = nb / per_group;
            if (g == b / per_group && nh == h) continue;  // the same keys as now: in cache
            const bool in_rows = p.k_d == 1;  // else transposed: hd rows of `length` positions
            prefetch_rows(p.k + g * p.k_g + nh * p.k_h, in_rows ? p.length : hd, in_rows ? p.k_j : p.k_d,
                          in_rows ? hd : p.length);
            prefetch_rows(p.v + g * p.v_g + nh * p.v_h, p.length, p.v_j, hd);
          }
          prefetch_rows(skp + nb * sk_b + nh * sk_h, S, sk_j, hd);
          prefetch_rows(svp + nb * sv_b + nh * sv_h, S, sv_j, hd);
        }
        for (int64_t i = 0; i < t; ++i) {
          const float* qr = qp + b * q_b + h * q_h + i * q_t;
          for (int d = 0; d < 8 * C; ++d) qf[d] = qr[d * q_d] * scale;
          __m256 qv[C];
          for (int c = 0; c < C; ++c) qv[c] = _mm256_load_ps(qf + 8 * c);
          float top = -std::numeric_limits<float>::infinity();
          __m256 total = _mm256_setzero_ps(), acc[C];
          for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
          for (const Level& p : levels) {
            const int64_t g = b / (B / p.groups);
            const float part_top = dot_keys<C>(qv, qf, p.k + g * p.k_g + h * p.k_h, p.length, p.k_j,
                                               p.k_d, scores.data());
            merge_part<C>(scores.data(), part_top, p.v + g * p.v_g + h * p.v_h, p.length, p.v_j, top,
                          total, acc);
          }
          const int64_t seen = S - t + i + 1;  // query i sees its own suffix up to its token
          const float part_top = dot_keys<C>(qv, qf, skp + b * sk_b + h * sk_h, seen, sk_j, 1,
                                             scores.data());
          merge_part<C>(scores.data(), part_top, svp + b * sv_b + h * sv_h, seen, sv_j, top, total,
                        acc);
          const __m256 inv = _mm256_set1_ps(1.f / hsum(total));
          float* orow = op + ((b * H + h) * t + i) * hd;
          for (int c = 0; c < C; ++c) _mm256_storeu_ps(orow + 8 * c, _mm256_mul_ps(acc[c], inv));
        }
      }
    });
  };
  switch (hd) {
    case 8: run(std::integral_constant<int, 1>{}); break;
    case 16: run(std::integral_constant<int, 2>{}); break;
    case 32: run(std::integral_constant<int, 4>{}); break;
    case 64: run(std::integral_constant<int, 8>{}); break;
    default: TORCH_CHECK(false, "head width must be 8, 16, 32 or 64, got ", hd);
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("decode_attention", &decode_attention); }
