/* Random initialisation of a teacher-shaped model from its config alone,
 * for pretraining small models from scratch (ra-graft --random-init, then
 * ra-mohawk3 --loss ce).  Implemented in lib/model_init.c. */
#ifndef RA_MODEL_INIT_H
#define RA_MODEL_INIT_H

#include <stdint.h>

#include "error.h"
#include "model.h"

/* Hugging Face's default initializer_range for Llama and Qwen2. */
#define RA_INIT_STD 0.02

/* Fill every weight of m (ra_model_tensor_list): RMSNorm weights 1, biases
 * 0, every matrix (embedding, projections, LM head) normal(0, std).  Tensor
 * i draws from rng_split(seed generator, i), so the result depends only on
 * (config, seed, std).  A hybrid student is refused (EX_DATAERR): its SSM
 * initialisations are ra-graft's --init. */
int ra_model_init_random(ra_model *m, uint64_t seed, double std, ra_error *err);

/* A teacher-shaped model of config file `config_path` (config.json of a
 * Llama or Qwen2 model), allocated and initialised as above.  content_id
 * and source are set to "" and the path.  Errors: hf_config_load's. */
int ra_model_random_from_config(const char *config_path, uint64_t seed, double std, ra_model **out, ra_error *err);

#endif
