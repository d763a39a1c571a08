/* Embedding the far-export runtime in a C program: load a bundle, generate, write a PNG. */
#include <stdio.h>
#include <stdlib.h>
#include "far_runtime.h"

int main(int argc, char** argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s BUNDLE OUT.png\n", argv[0]); return 2; }
    far_runtime* rt = NULL;
    far_model_info m;
    if (far_load(argv[1], NULL, &rt) || far_model(rt, &m)) { fprintf(stderr, "error: %s\n", far_last_error()); return 2; }
    far_sample_options o;
    far_sample_options_default(&o);
    o.K = 16; o.O = 8; o.cfg = 3.0; o.seed = 42;
    int64_t labels[4] = {1, 2, 3, 4};
    size_t bytes = (size_t)4 * m.image_size * m.image_size * 3;
    uint8_t* images = malloc(bytes);
    int rc = far_generate(rt, labels, 4, &o, images, bytes, NULL);
    if (rc == FAR_OK) rc = far_write_png_grid(argv[2], images, 4, m.image_size, m.image_size);
    if (rc != FAR_OK) fprintf(stderr, "error: %s\n", far_last_error());
    free(images);
    far_free(rt);
    return rc == FAR_OK ? 0 : 2;
}
