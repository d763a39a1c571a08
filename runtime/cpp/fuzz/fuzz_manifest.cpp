// libFuzzer target: manifest.json's bytes through everything a bundle load and a request's
// checks derive from them, without a file or a session: JSON (bounded), structure, the bounded
// model entry, specs, the variant (MAR's respaced DDPM schedule), plans, buffer sizes.
#include <cstdint>
#include <string>

#include "fuzz_target.h"
#include "manifest.h"
#include "sizes.h"
#include "variant.h"

namespace {

// A few requests against every accepted manifest: batches at and past the bundle's max,
// K and O at their edges, each head, CFG on and off.
void requests(const far::Bundle& b, const far::Variant& v) {
    const int batches[] = {1, b.max_batch, b.max_batch + 1};
    const int ks[] = {0, 1, 256, b.model.seq_len};
    for (int batch : batches)
        for (int K : ks)
            for (const char* head : {"auto", "fused", "step"}) {
                far::SampleOptions o;
                o.K = K;
                o.O = K == 1 ? 1 : 8;
                o.cfg = K == 256 ? 1.0 : 3.0;
                o.head = head;
                if (o.K == 0) o.K = v.default_k();
                try {
                    v.check(batch, o);
                    far::check_run_buffers(b.model, batch, o.cfg != 1.0, v.diffusion_steps(), false);
                    for (const std::string& g : v.graphs(batch, o)) b.graph(g);   // every planned graph exists
                } catch (const far::Error& e) {
                    far_fuzz::check_sentence(e, {far::Code::Input, far::Code::Bundle});
                }
            }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        far::Manifest m = far::parse_manifest(text, "/bundle", "/bundle/manifest.json");
        far::attach_specs(m, "/bundle/manifest.json");
        const std::unique_ptr<far::Variant> v = far::make_variant(m.bundle);
        far::check_run_buffers(m.bundle.model, 1, true, v->diffusion_steps(), true);
        requests(m.bundle, *v);
    } catch (const far::Error& e) {
        // Input: MAR's timestep_respacing is refused as the option it is in Python.
        far_fuzz::check_sentence(e, {far::Code::Bundle, far::Code::Input});
    }
    return 0;
}
