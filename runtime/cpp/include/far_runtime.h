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
 *
 * Misuse, the rules (each one tested in tests/test_cpp_api.py):
 * - A far_runtime* is an opaque handle, never dereferenced by the caller or the library: the
 *   library looks it up in its table of loaded runtimes before every use. A NULL handle, one
 *   already freed, or any value far_load did not return: FAR_ERROR_INPUT with a sentence
 *   (far_model, far_generate, far_generate_tokens); far_free ignores it, so a second
 *   far_free of the same handle does nothing. Handles are never reused.
 * - far_free while other threads are inside calls on the same handle: those calls finish on
 *   the runtime they started with, which is destroyed when the last of them returns; calls
 *   that start after far_free get FAR_ERROR_INPUT.
 * - NULL where a function needs a buffer, a path or a struct to fill (out, labels,
 *   bundle_dir, orders, noise, images, far_model's out): FAR_ERROR_INPUT. NULL is allowed
 *   for the options of far_load / far_generate* (defaults), for stats, for step_noise when
 *   steps is 0, and for the strings inside the options structs (their defaults).
 * - An output buffer smaller than the call writes (out_bytes, out_floats counted in bytes
 *   and floats): FAR_ERROR_INPUT, nothing written. Sizes below 1, and sizes whose buffers
 *   would hold more than 2^31 elements: FAR_ERROR_INPUT.
 * - Option structs carry their own size: fill them with far_*_options_default, which sets
 *   .size; a struct whose .size is not the size of this header's struct (zeroed, garbage, or
 *   from another version of this header) is FAR_ERROR_INPUT, never read past its end. One
 *   exception: a far_sample_options of API version 2 (its .size ends before head_schedule)
 *   is read as far as it goes, the fields it lacks off.
 * - far_*_options_default and far_free with NULL do nothing.
 */
#ifndef FAR_RUNTIME_H
#define FAR_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FAR_RUNTIME_API_VERSION 3   /* 2: .size in the option structs, handles checked;
                                       3: the sampling accelerations in far_sample_options */

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

/* Option structs only grow at their end; .size tells the library which fields the caller
 * has (a later version adds here, e.g., the expected digest of the bundle). */
typedef struct far_load_options {
    size_t size;             /* sizeof(far_load_options); set by far_load_options_default */
    const char* provider;    /* "cpu" (default when NULL), "cuda" or "tensorrt" */
    int device_id;           /* GPU ordinal for cuda / tensorrt */
    int threads;             /* ONNX Runtime intra-op threads; 0 = its default */
    int check_hashes;        /* nonzero: verify the sha256 of every file (default) */
    const char* trt_cache_dir; /* ONNX Runtime's TensorRT engine cache folder, or NULL. TensorRT
                                  deserializes what it finds there: a folder of the caller's own,
                                  never one from a bundle. The runtime itself reads no engine
                                  files (nor a bundle's engines.json). */
    const char* digest;      /* the expected bundle digest (64 hex digits, as far-runtime info and
                                far-export build print it), or NULL: a bundle with another digest
                                is refused (FAR_ERROR_BUNDLE); an app that ships a bundle pins it */
} far_load_options;

typedef struct far_sample_options {
    size_t size;             /* sizeof(far_sample_options); set by far_sample_options_default */
    int K;                   /* autoregressive iterations, 1..256, or FAR_K_DEFAULT (the default):
                                16 for FAR/MAR, L (seq_len, the only valid K) for FAR-Causal */
    int O;                   /* shortcut head steps, a power of two (default 8) */
    double cfg;              /* classifier-free guidance scale; 1.0 = off (default 1.0) */
    const char* cfg_schedule; /* "linear" (default) or "constant" */
    double temperature;      /* default 1.0 */
    uint64_t seed;           /* numpy PCG64 seed (default 0) */
    const char* head;        /* "auto" (default), "fused" or "step" */
    /* The sampling accelerations (API version 3; far_runtime/ACCEL.md has the exact rules), each
     * NULL (off, the default) or a string spelled as far-runtime generate's flags take it; a
     * value the run cannot take is FAR_ERROR_INPUT with the Python runtime's sentence. With all
     * three NULL a run is the run without them, bit for bit. */
    const char* head_schedule; /* head steps per iteration: "A:B" anneals from A (nothing known) to
                                  B, rounded down (FAR, FAR-Causal: O, a power of two; MAR: DDPM
                                  steps, at most diffusion_steps), e.g. "8:1"; or one value per
                                  iteration "8,8,4,2". Replaces O. */
    const char* cfg_interval;  /* "LO:HI", 0 <= LO < HI <= 1: guidance only on iterations s with
                                  LO*K <= s < HI*K, the others run no unconditional rows */
    const char* cfg_cache;     /* "W:N" (FAR and MAR; refused for FAR-Causal): LazyMAR's condition
                                  cache, the unconditional rows run on iterations s < W and where
                                  (s - W) % N == 0, their z difference reused in between */
} far_sample_options;

typedef struct far_model_info {
    int seq_len, token_dim, num_classes, max_batch;
    int image_size, image_channels;   /* images are image_size x image_size x 3 uint8 */
    int diffusion;                    /* 1 for a MAR (diffusion) head, 0 for FAR (shortcut) */
    int diffusion_steps;              /* S of the step noise (0 for FAR) */
} far_model_info;

/* far_model_info and far_run_stats never change; a later version adds calls instead. */

/* Added to by every call that takes one (zero it first), so several runs sum up. */
typedef struct far_run_stats {
    double total_seconds;    /* the whole call (for far_generate: decode, checks, uint8 included) */
    double ort_seconds;      /* inside ONNX Runtime */
    int graph_calls;
} far_run_stats;

int far_api_version(void);   /* FAR_RUNTIME_API_VERSION of the library (check it against the header's) */

void far_load_options_default(far_load_options* options);
void far_sample_options_default(far_sample_options* options);

/* Load and check a bundle; *out is NULL on failure. options may be NULL. */
int far_load(const char* bundle_dir, const far_load_options* options, far_runtime** out);
void far_free(far_runtime* runtime);   /* NULL, freed or unknown handles: nothing */
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
