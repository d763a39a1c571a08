/* far_runtime.h: the C API of the far-export C++ runtime.
 *
 * Loads a far-export bundle (the folder `far-export build` writes: manifest.json plus ONNX
 * graphs), checks it (sha256 of every file, every path inside the folder), and runs the
 * same sampling loop as the Python runtime `far_runtime` (FAR and MAR: K iterations over a
 * random order; FAR-Causal: one token per step over a KV cache, so K is its L): the same
 * seed gives the same randomness bit for bit and the same images.
 *
 * Every function returns FAR_OK (0) or an error code; the one-sentence message of the
 * last error on the calling thread is far_last_error(). No C++ exception crosses this
 * API. One far_runtime may be used from several threads at once.
 */
#ifndef FAR_RUNTIME_H
#define FAR_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FAR_RUNTIME_API_VERSION 1

enum far_status {
    FAR_OK = 0,
    FAR_ERROR_INPUT = 1,     /* an option or request the bundle cannot serve */
    FAR_ERROR_BUNDLE = 2,    /* missing, malformed or tampered bundle */
    FAR_ERROR_PROVIDER = 3,  /* execution provider missing, or it would fall back to the CPU */
    FAR_ERROR_RUNTIME = 4,   /* ONNX Runtime failed, or the run produced NaN/Inf */
    FAR_ERROR_IO = 5,        /* a file could not be written */
    FAR_ERROR_INTERNAL = 6   /* out of memory or a bug */
};

typedef struct far_runtime far_runtime;

/* far_sample_options.K: the model's own default (FAR/MAR 16; FAR-Causal L, one token per step). */
#define FAR_K_DEFAULT 0

typedef struct far_load_options {
    const char* provider;    /* "cpu" (default when NULL), "cuda" or "tensorrt" */
    int device_id;           /* GPU ordinal for cuda / tensorrt */
    int threads;             /* ONNX Runtime intra-op threads; 0 = its default */
    int check_hashes;        /* nonzero: verify the sha256 of every file (default) */
    const char* trt_cache_dir; /* TensorRT engine cache folder, or NULL */
} far_load_options;

typedef struct far_sample_options {
    int K;                   /* autoregressive iterations, 1..256, or FAR_K_DEFAULT (the default):
                                16 for FAR/MAR, L (seq_len, the only valid K) for FAR-Causal */
    int O;                   /* shortcut head steps, a power of two (default 8) */
    double cfg;              /* classifier-free guidance scale; 1.0 = off (default 1.0) */
    const char* cfg_schedule; /* "linear" (default) or "constant" */
    double temperature;      /* default 1.0 */
    uint64_t seed;           /* numpy PCG64 seed (default 0) */
    const char* head;        /* "auto" (default), "fused" or "step" */
} far_sample_options;

typedef struct far_model_info {
    int seq_len, token_dim, num_classes, max_batch;
    int image_size, image_channels;   /* images are image_size x image_size x 3 uint8 */
    int diffusion;                    /* 1 for a MAR (diffusion) head, 0 for FAR (shortcut) */
    int diffusion_steps;              /* S of the step noise (0 for FAR) */
} far_model_info;

/* Added to by every call that takes one (zero it first), so several runs sum up. */
typedef struct far_run_stats {
    double total_seconds;    /* the whole call (for far_generate: decode, checks, uint8 included) */
    double ort_seconds;      /* inside ONNX Runtime */
    int graph_calls;
} far_run_stats;

void far_load_options_default(far_load_options* options);
void far_sample_options_default(far_sample_options* options);

/* Load and check a bundle; *out is NULL on failure. options may be NULL. */
int far_load(const char* bundle_dir, const far_load_options* options, far_runtime** out);
void far_free(far_runtime* runtime);   /* NULL does nothing */
int far_model(const far_runtime* runtime, far_model_info* out);

/* uint8 images [batch, image_size, image_size, 3] into out (out_bytes must hold them).
 * labels: batch class indices. options may be NULL (defaults). stats may be NULL. */
int far_generate(far_runtime* runtime, const int64_t* labels, int batch, const far_sample_options* options,
                 uint8_t* out, size_t out_bytes, far_run_stats* stats);

/* Token latents [batch, seq_len, token_dim] after K iterations (before the VAE decoder). */
int far_generate_tokens(far_runtime* runtime, const int64_t* labels, int batch, const far_sample_options* options,
                        float* out, size_t out_floats, far_run_stats* stats);

/* The run's randomness for a seed, as the Python runtime's draw_randomness draws it:
 * orders [batch, seq_len], noise [batch, seq_len, token_dim], step_noise
 * [steps, batch, seq_len, token_dim] (may be NULL when steps is 0). */
int far_draw_randomness(uint64_t seed, int batch, int seq_len, int token_dim, int steps, int64_t* orders,
                        float* noise, float* step_noise);

/* A grid of uint8 images [batch, height, width, 3] as one PNG, written atomically. */
int far_write_png_grid(const char* path, const uint8_t* images, int batch, int height, int width);

/* The message of the last failed call on this thread ("" after a success). */
const char* far_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* FAR_RUNTIME_H */
