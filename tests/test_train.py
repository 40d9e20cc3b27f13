"""VAE encoder + multi-scale quantizer, teacher forcing vs the cached sampler, and a tiny staged training
run (loss goes down on fixed evaluation batches, resume is exact, the artefact reloads and generates)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from model import load
from model.build import build
from model.checkpoint import CheckpointError, save
from model.config import default_config, hart_0p7b_config
from model.diffusion import VAE_SCALE, respaced_schedule
from model.vae import VAE, fhat_from_ids, multiscale_quantize
from train.__main__ import main as train_main
from train.common import encode_captions, images, load_model_tensors, new_model
from train.plan import tiny_plan
from train.stages import ar_step_fn, load_pool, run_stage
from train.teacher import teacher_forced

SEED = 5


def test_encoder_has_the_official_layout():
    with torch.device("meta"):
        vae = VAE(hart_0p7b_config().vae, with_encoder=True)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(vae.encoder) == 44_107_872 and count(vae.quant_conv) == 9_248  # spec §11.1
    keys = set(VAE(default_config().vae, with_encoder=True).state_dict())
    for k in ("encoder.conv_in.weight", "encoder.down.0.block.1.conv2.weight", "encoder.down.0.downsample.conv.weight",
              "encoder.down.4.attn.1.qkv.weight", "encoder.mid.attn_1.proj_out.weight", "encoder.conv_out.bias",
              "quant_conv.weight"):
        assert k in keys, k
    assert not any(k.startswith("encoder.down.4.downsample") for k in keys)
    assert not any(k.startswith(("encoder.", "quant_conv.")) for k in VAE(default_config().vae).state_dict())


@torch.no_grad()
def test_quantizer_round_trip_matches_the_sampler():
    """f = f_hat + residual exactly; f_hat rebuilt from the ids by Hart's own latent_update (the
    inference path) equals the quantizer's; encoder output has the latent grid of the schedule."""
    hart = build(default_config(), seed=1)
    hart.vae.add_encoder()
    x, _ = images(hart.cfg, 0, "train", 0, 2, 0.25)
    f = hart.vae.img_to_f(x)
    assert f.shape == (2, 16, 16, 16)
    f = f / f.std() * 0.8
    tok = multiscale_quantize(hart.vae, f, hart.cfg.ar.patch_nums)
    assert [tuple(i.shape) for i in tok.idx] == [(2, pn * pn) for pn in hart.cfg.ar.patch_nums]
    recon = tok.f_hat + tok.residual_BLC.transpose(1, 2).reshape(f.shape)
    torch.testing.assert_close(recon, f, atol=1e-5, rtol=1e-5)
    code, f_hat = hart.codebook(), torch.zeros_like(f)
    for st in hart.steps[:-1]:
        f_hat, _ = hart.latent_update(st, f_hat, F.embedding(tok.idx[st.si], code))
    torch.testing.assert_close(fhat_from_ids(hart.vae, tok.idx, hart.cfg.ar.patch_nums)[-1], f_hat)
    last = F.embedding(tok.idx[-1], code).transpose(1, 2).reshape(f.shape)
    torch.testing.assert_close(f_hat + last, tok.f_hat, atol=1e-5, rtol=1e-5)
    # the last scale's ids are the nearest codes to what the coarse scales left over
    r_last = tok.residual_BLC + F.embedding(tok.idx[-1], code)
    best = torch.cdist(r_last, code[None].expand(2, -1, -1)).amin(-1)
    torch.testing.assert_close(tok.residual_BLC.norm(dim=-1), best, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_teacher_forcing_equals_cached_steps_for_cond_and_dropped_rows():
    """Row 0 (caption) must equal the sampler's conditional row, row 1 (context dropped) its unconditional row."""
    hart = new_model(tiny_plan().model, SEED)
    gen = torch.Generator().manual_seed(0)
    idx = [torch.randint(0, hart.cfg.ar.vocab_size, (1, pn * pn), generator=gen) for pn in hart.cfg.ar.patch_nums]
    ctx, mask = encode_captions(hart, ["a small red circle at the top left on a blue background"])
    logits_tf, _ = teacher_forced(hart, ctx.expand(2, -1, -1), mask.expand(2, -1),
                                  [i.expand(2, -1) for i in idx], torch.tensor([False, True]))
    hart.reset_cache()
    x, pos, cond, pos_off = hart.prefill(ctx, mask)
    outs = [hart.ar.logits(hart.hidden(hart.steps[0], x, cond, pos)[:, -1:], cond)]
    f_hats = fhat_from_ids(hart.vae, idx, hart.cfg.ar.patch_nums)
    for st in hart.steps[1:]:
        x = hart.next_tokens(hart.steps[st.si - 1], f_hats[st.si - 1])
        outs.append(hart.ar.logits(hart.hidden(st, x, cond, pos_off), cond))
    torch.testing.assert_close(logits_tf, torch.cat(outs, 1), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    assert train_main(["--stage", "all", "--tiny", "--out", str(out), "--seed", str(SEED), "--quiet",
                       "--threads", "1"]) == 0
    return out


def _stage_model(out, stage):
    hart = new_model(tiny_plan().model, SEED)
    if stage is not None:
        load_model_tensors(hart, load_file(str(out / "state" / f"{stage}.safetensors")))
    return hart


@torch.no_grad()
def test_each_stage_lowers_its_loss_on_a_fixed_batch(trained):
    plan, pool = tiny_plan(), load_pool(trained)
    x, _ = images(plan.model, SEED, "train", 0, plan.vae_scenes, plan.two_prob)  # the VAE's training scenes

    def recon(h):
        return F.l1_loss(h.vae.decoder(h.vae.post_quant_conv(h.vae.img_to_f(x))), x).item()

    def ce(h):
        ctx, mask = encode_captions(h, pool["captions"])
        logits, _ = teacher_forced(h, ctx, mask, pool["idx"], torch.zeros(len(ctx), dtype=torch.bool))
        return F.cross_entropy(logits.flatten(0, 1), torch.cat(pool["idx"], 1).flatten()).item()

    def eps(h):
        gen = torch.Generator().manual_seed(1)
        ctx, mask = encode_captions(h, pool["captions"])
        _, h_last = teacher_forced(h, ctx, mask, pool["idx"], torch.zeros(len(ctx), dtype=torch.bool))
        z = h.ar.decoder_norm(h_last + h.ar.word_embed(F.embedding(pool["idx"][-1], h.codebook()))).flatten(0, 1)
        x0 = (pool["residual"].flatten(0, 1) / VAE_SCALE).clamp(-1, 1)
        t = torch.randint(0, 1000, (len(x0),), generator=gen)
        a = torch.tensor(respaced_schedule(1000, 1000)["alphas_cumprod"], dtype=torch.float32)[t][:, None]
        noise = torch.randn(x0.shape, generator=gen)
        out = h.ar.diffloss.net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, z)
        return F.mse_loss(out[:, :x0.shape[1]], noise).item()

    before, after = {}, {}
    for name, fn, prev in (("vae", recon, None), ("ar", ce, "vae"), ("diffusion", eps, "ar")):
        before[name], after[name] = fn(_stage_model(trained, prev)), fn(_stage_model(trained, name))
    assert all(after[k] < 0.9 * before[k] for k in before), (before, after)
    vae_sha = hashlib.sha256((trained / "state" / "vae.safetensors").read_bytes()).hexdigest()
    assert json.loads((trained / "state" / "pool.json").read_text())["vae_sha256"] == vae_sha  # pool of this VAE
    for stage in ("vae", "ar", "diffusion"):
        assert (trained / f"loss_{stage}.png").stat().st_size > 1000
        assert json.loads((trained / "state" / f"{stage}.json").read_text())["step"] == getattr(plan, stage).steps


def test_ar_stage_trains_the_text_encoder_and_later_stages_keep_it(trained):
    """Plan.train_text: the AR stage moves the text encoder off its seeded init; the diffusion stage starts
    from (and keeps) that encoder, and the checkpoint ships it."""
    assert tiny_plan().train_text
    seeded = new_model(tiny_plan().model, SEED).text.state_dict()
    ar = load_file(str(trained / "state" / "ar.safetensors"))
    diff = load_file(str(trained / "state" / "diffusion.safetensors"))
    moved = [k for k, v in seeded.items() if not torch.equal(ar[f"model.text.{k}"], v)]
    assert moved, "the AR stage left the text encoder at its seeded init"
    assert all(torch.equal(ar[f"model.text.{k}"], diff[f"model.text.{k}"]) for k in seeded)
    shipped = load(trained / "model").text.state_dict()
    for k in moved:
        torch.testing.assert_close(shipped[k].float(), diff[f"model.text.{k}"].half().float(), atol=0, rtol=0)


def test_resume_after_a_crash_is_exact(trained, tmp_path):
    """Crash at step 5 with checkpoints every 2 steps, resume: same weights as an uninterrupted run."""
    plan, pool = tiny_plan(), load_pool(trained)
    finals = []
    for crash in (None, 5):
        out = tmp_path / f"run_{crash}"
        hart = _stage_model(trained, "vae")
        fn = ar_step_fn(hart, plan, SEED, pool)

        def step_fn(step, gen, fn=fn, crash=crash):
            if step == crash:
                raise RuntimeError("simulated crash")
            return fn(step, gen)

        try:
            run_stage(hart, "ar", plan.ar, out, False, step_fn, SEED, progress=False, ckpt_every=2)
        except RuntimeError:
            hart = _stage_model(trained, "vae")
            run_stage(hart, "ar", plan.ar, out, True, ar_step_fn(hart, plan, SEED, pool), SEED, progress=False,
                      ckpt_every=2)
        finals.append(hart.ar.state_dict())
    for k, v in finals[0].items():
        assert torch.equal(v, finals[1][k]), k


def test_artefact_reloads_round_trips_and_generates(trained, tmp_path):
    from runtime_py.generate import main as generate_main

    model_dir = trained / "model"
    plain = load(model_dir)
    assert not plain.vae.has_encoder
    full = load(model_dir, with_encoder=True)
    state = load_file(str(trained / "state" / "diffusion.safetensors"))
    for k, v in full.vae.state_dict().items():  # fp16 artefact of the trained fp32 state
        torch.testing.assert_close(v, state[f"model.vae.{k}"].half().float(), atol=0, rtol=0)
    again = load(save(full, tmp_path / "again"), with_encoder=True)
    for k, v in full.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    with pytest.raises(CheckpointError):
        load(save(plain, tmp_path / "no_encoder"), with_encoder=True)
    png = tmp_path / "x.png"
    assert generate_main(["--checkpoint", str(model_dir), "--prompt", "a large blue square in the centre on a "
                          "white background", "--out", str(png), "--quiet"]) == 0
    from PIL import Image

    assert Image.open(png).size == (plain.cfg.image_size, plain.cfg.image_size)


@pytest.mark.parametrize("argv", [["--stage", "bogus", "--out", "x"], ["--stage", "ar", "--out", "x", "--steps", "0"],
                                  ["--stage", "all"]])
def test_train_cli_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(argv)
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_shape_weighted_reconstruction_loss():
    """Off-background pixels weigh 1 + w (normalised): the same error costs more on a shape than on the
    background; w = 0 is the plain L1 + L2 loss."""
    import torch.nn.functional as F

    from train.stages import recon_loss

    x = torch.full((1, 3, 16, 16), -1.0)
    x[:, 0, 4:8, 4:8] = 1.0  # a red 4x4 shape on black
    on_shape, on_bg = x.clone(), x.clone()
    on_shape[:, 1, 4:8, 4:8] += 0.5
    on_bg[:, 1, 10:14, 10:14] += 0.5
    assert recon_loss(on_shape, x) == recon_loss(on_bg, x) == F.l1_loss(on_bg, x) + F.mse_loss(on_bg, x)
    assert recon_loss(on_shape, x, 10.0) > 5 * recon_loss(on_bg, x, 10.0)
    assert torch.isclose(recon_loss(on_bg, torch.full_like(x, -1.0), 10.0), recon_loss(on_bg, torch.full_like(x, -1.0)))
