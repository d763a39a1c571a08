"""The reference sampler: SPEC's schedule, determinism, explicit randomness, both heads."""
import math

import numpy as np
import pytest
import torch

from far_export.checkpoint import build_model, load_model_checkpoint
from far_export.reference.pipeline import ReferencePipeline
from far_runtime.errors import FarError
from far_runtime.randomness import draw_randomness
from far_runtime.schedule import mask_schedule


@pytest.mark.parametrize("K", [1, 2, 7, 16, 64, 256])
@pytest.mark.parametrize("L", [16, 256])
def test_schedule_matches_spec_formula(K, L):
    plan = mask_schedule(K, L)
    remaining = L
    for s, it in enumerate(plan):
        assert it.before == remaining
        mask_len = max(1, min(remaining - 1, math.floor(L * math.cos(math.pi / 2 * (s + 1) / K))))
        assert it.mask_len == mask_len
        remaining = 0 if s == K - 1 else mask_len
        assert it.after == remaining
    assert sum(it.n_pred for it in plan) == L
    assert all(it.n_pred >= 0 for it in plan)


@pytest.mark.parametrize("K", [0, 257, 2.5])
def test_bad_k(K):
    with pytest.raises(FarError):
        mask_schedule(K, 16)


@pytest.mark.parametrize("kind", ["far", "mar"])
def test_sampler_deterministic_and_explicit_randomness(tiny_files, kind):
    pipe = ReferencePipeline.load(tiny_files[kind], tiny_files["vae"])
    kw = dict(num_iter=4, head_steps=2, cfg=2.0, temperature=0.9)
    a = pipe.tokens([1, 2], seed=3, **kw)
    b = pipe.tokens([1, 2], seed=3, **kw)
    assert torch.equal(a, b)
    c = pipe.tokens([1, 2], seed=4, **kw)
    assert not torch.allclose(a, c)
    steps = pipe.head.cfg.diffusion_steps if kind == "mar" else 0
    r = draw_randomness(3, 2, 16, 4, steps)
    d = pipe.tokens([1, 2], randomness=r, **kw)
    assert torch.equal(a, d)
    img = pipe.decode(a)
    assert img.shape == (2, 3, 8, 8) and np.isfinite(img).all()


def test_cfg_one_row_matches_batch(tiny_files):
    """Rows are independent: sampling a batch equals sampling each row with its randomness."""
    pipe = ReferencePipeline.load(tiny_files["far"])
    r = draw_randomness(0, 3, 16, 4)
    full = pipe.tokens([0, 5, 9], num_iter=5, head_steps=4, cfg=3.0, randomness=r)
    from far_runtime.randomness import Randomness
    one = pipe.tokens([5], num_iter=5, head_steps=4, cfg=3.0,
                      randomness=Randomness(r.orders[1:2], r.noise[1:2]))
    torch.testing.assert_close(full[1:2], one, atol=1e-5, rtol=1e-5)


def test_sampler_errors(tiny_files):
    pipe = ReferencePipeline.load(tiny_files["far"])
    with pytest.raises(FarError, match="Class labels"):
        pipe.tokens([10], num_iter=2)
    with pytest.raises(FarError, match="power of two"):
        pipe.tokens([1], num_iter=2, head_steps=3)
    with pytest.raises(FarError, match="K"):
        pipe.tokens([1], num_iter=0)
    with pytest.raises(FarError, match="Randomness"):
        pipe.tokens([1, 2], num_iter=2, randomness=draw_randomness(0, 1, 16, 4))


def test_known_idx_gather_equals_boolean_mask(tiny_files):
    """The index-tensor encoder equals MAR's boolean-mask formulation."""
    ck = load_model_checkpoint(tiny_files["far"])
    bb, _ = build_model(ck)
    torch.manual_seed(0)
    B, L = 2, 16
    tokens = torch.randn(B, L, 4)
    labels = torch.tensor([3, 10])  # 10 = unconditional sentinel
    orders = torch.stack([torch.randperm(L) for _ in range(B)])
    known = orders[:, 9:].sort(1).values
    z = bb(tokens, labels, known)
    # MAR's formulation with a boolean mask (1 = masked)
    mask = torch.ones(B, L)
    mask[torch.arange(B)[:, None], known] = 0
    with torch.no_grad():
        x = bb.z_proj(tokens)
        x = torch.cat([torch.zeros(B, bb.cfg.buffer_size, x.shape[-1]), x], 1)
        mwb = torch.cat([torch.zeros(B, bb.cfg.buffer_size), mask], 1)
        emb = torch.cat([bb.class_emb.weight, bb.fake_latent])[labels]
        x[:, :bb.cfg.buffer_size] = emb.unsqueeze(1)
        x = bb.z_proj_ln(x + bb.encoder_pos_embed_learned)
        x = x[(1 - mwb).nonzero(as_tuple=True)].reshape(B, -1, x.shape[-1])
        for blk in bb.encoder_blocks:
            x = blk(x)
        x = bb.decoder_embed(bb.encoder_norm(x))
        full = bb.mask_token.repeat(B, L + bb.cfg.buffer_size, 1).clone()
        full[(1 - mwb).nonzero(as_tuple=True)] = x.reshape(-1, x.shape[-1])
        x = full + bb.decoder_pos_embed_learned
        for blk in bb.decoder_blocks:
            x = blk(x)
        ref = bb.decoder_norm(x)[:, bb.cfg.buffer_size:] + bb.diffusion_pos_embed_learned
    torch.testing.assert_close(z, ref, atol=1e-5, rtol=1e-5)
