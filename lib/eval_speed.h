/* Throughput of recurrent decoding (DESIGN §2.6): for batch sizes 1, 2, 4,
 * ... up to max_batch, a prefill of B random prompts of prompt_len tokens,
 * then gen_len decode steps, timed separately:
 *   prefill_tok_s = B·prompt_len / prefill seconds
 *   decode_tok_s  = B·gen_len / decode seconds
 * through the device's decoder (lib/decode_backend.h); a hybrid decodes with
 * its SSM state plus its kept heads' KV cache, a teacher with its full KV
 * cache.  The sweep stops early when the next batch would not fit: on the
 * CPU when the estimated working set exceeds mem_limit bytes (0: half the
 * available physical memory), on a GPU when the decoder cannot allocate it.
 * Table "speed": batch, prefill_tok_s, decode_tok_s, state_bytes (the
 * decoder's state for the batch), peak_rss_bytes (the process's peak
 * resident memory so far), peak_gpu_bytes (CUDA: the device's memory in use
 * at its highest sample of the batch, after the decoder's create, after the
 * prefill and after the last step, less what was in use when the sweep
 * began: weights, KV cache and states, activations, logits and library
 * workspaces of that batch; cudaMemGetInfo measures the whole device, so
 * other processes on it count too.  CPU: NAN, "–" in the Markdown table,
 * null in JSON; peak_rss_bytes is the CPU's figure).  Metrics
 * speed_b<B>_prefill_tok_s, speed_b<B>_decode_tok_s,
 * speed_b<B>_peak_gpu_bytes (CUDA only), speed_max_batch.  Timings are
 * wall-clock and vary from run to run. */
#ifndef RA_EVAL_SPEED_H
#define RA_EVAL_SPEED_H

#include "eval.h"
#include "decode_backend.h"
#include "eval_results.h"

typedef struct eval_speed_opts {
    int prompt_len, gen_len, max_batch;
    uint64_t seed;
    double mem_limit;
} eval_speed_opts;

/* Estimated bytes the CPU decoder needs for B rows of T_max tokens. */
double eval_speed_cpu_bytes(const ra_model *m, int B, int T_max);

int eval_speed(const eval_model *em, const ra_decode_backend *dec, const eval_speed_opts *o, eval_results *r,
               ra_error *err);

#endif
