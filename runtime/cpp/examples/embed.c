/* Embedding the far-export runtime in C: load a bundle, generate 4 images, write a PNG grid. */
#include <stdio.h>
#include <stdlib.h>
#include "far_runtime.h"
int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s BUNDLE OUT.png\n", argv[0]); return 2; }
    far_runtime* rt = NULL; far_model_info m; far_sample_options o; int64_t labels[4] = {1, 2, 3, 4};
    int rc = far_load(argv[1], NULL, &rt);
    if (rc == FAR_OK) rc = far_model(rt, &m);
    far_sample_options_default(&o); o.K = 16; o.O = 8; o.cfg = 3.0; o.seed = 42;
    size_t bytes = rc == FAR_OK ? (size_t)4 * m.image_size * m.image_size * 3 : 0;
    uint8_t* images = bytes ? malloc(bytes) : NULL;
    if (rc == FAR_OK && !images) { fprintf(stderr, "error: out of memory\n"); far_free(rt); return 2; }
    if (rc == FAR_OK) rc = far_generate(rt, labels, 4, &o, images, bytes, NULL);
    if (rc == FAR_OK) rc = far_write_png_grid(argv[2], images, 4, m.image_size, m.image_size);
    if (rc != FAR_OK) fprintf(stderr, "error: %s\n", far_last_error());
    free(images);
    far_free(rt);   /* NULL-safe: also when far_load failed */
    return rc == FAR_OK ? 0 : 2;
}
