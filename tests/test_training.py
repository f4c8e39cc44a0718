"""Training mode against the reference package (descript-audio-codec's `DAC`), at the 16 kHz and 44.1 kHz
geometries: the same outputs, quantizer dropout, losses and gradients for the same weights, input and seed.

Tolerances: outputs and losses within 1e-5 of their scale, codes identical; each parameter's gradient within 1e-4
of that gradient's largest value. Both run the same float32 operations in the same order, so the differences are
float rounding (in practice zero or a few ulps); the tolerances leave room for kernels that sum in another order.
"""

import copy

import pytest
import torch

from dac_codec.tools.loading import model_from_original, original_key
from dac_codec.tools.random_weights import perturb
from dac_codec.training import losses

from conftest import GEOMETRIES, TINY, DacModel, tiny_config

dac = pytest.importorskip("dac", reason="the reference package is a test dependency: scripts/setup_env.sh --test")

GAIN = 1.2  # the reference's weight-normed tiny model: audio ~0.2 RMS, unsaturated, so every gradient flows
WEIGHT_NORM = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}


def our_name(reference_name: str, config) -> str:
    """Our parameter under weight norm for a parameter of the reference."""
    name = original_key(reference_name, len(config.encoder_rates), len(config.decoder_rates))
    for theirs, ours in WEIGHT_NORM.items():
        if name.endswith(theirs):
            return name[: -len(theirs)] + ours
    return name


def pair(geometry: str, dropout: float, tmp_path):
    """The reference with perturbed weights, and ours with the same weights under weight norm, both training."""
    config = tiny_config(geometry, quantizer_dropout=dropout)
    torch.manual_seed(0)
    reference = dac.model.DAC(
        encoder_dim=TINY["encoder_dim"], encoder_rates=config.encoder_rates, decoder_dim=TINY["decoder_dim"],
        decoder_rates=config.decoder_rates, n_codebooks=TINY["n_codebooks"], codebook_size=TINY["codebook_size"],
        codebook_dim=TINY["codebook_dim"], quantizer_dropout=dropout, sample_rate=config.sampling_rate,
    )
    perturb(reference, gain=GAIN)
    reference.save(str(tmp_path / "weights.pth"), package=False)
    ours = DacModel(config)
    ours.load_state_dict(model_from_original(str(tmp_path / "weights.pth")).state_dict())
    ours.apply_weight_norm()
    with torch.no_grad():  # the reference's own (g, v), not the re-derived ones: gradients depend on |v|
        for name, parameter in reference.named_parameters():
            ours.get_parameter(our_name(name, config)).copy_(parameter)
    return reference.train(), ours.train()


def close(ours, theirs, what):
    assert ours.shape == theirs.shape, what
    assert (ours - theirs).abs().max() <= 1e-5 * max(theirs.abs().max(), 1e-30), what


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_train_mode_outputs_losses_and_gradients_equal_the_reference(geometry, dropout, tmp_path, generator):
    reference, ours = pair(geometry, dropout, tmp_path)
    x = 0.2 * torch.randn(4, 1, 7 * ours.hop_length + 13, generator=generator)

    torch.manual_seed(1)  # the dropout draw
    expected = reference(x.clone())
    torch.manual_seed(1)
    out = ours(x.clone())
    assert torch.equal(out.codes, expected["codes"])
    for ours_value, key in ((out.audio, "audio"), (out.z_q, "z"), (out.latents, "latents"),
                            (out.commitment_loss, "vq/commitment_loss"), (out.codebook_loss, "vq/codebook_loss")):
        close(ours_value, expected[key], key)
    close(out.loss, 0.25 * expected["vq/commitment_loss"] + expected["vq/codebook_loss"], "loss")

    def objective(audio, commitment, codebook):
        return audio.pow(2).mean() + 0.25 * commitment + codebook

    objective(out.audio, out.commitment_loss, out.codebook_loss).backward()
    objective(expected["audio"], expected["vq/commitment_loss"], expected["vq/codebook_loss"]).backward()
    for name, parameter in reference.named_parameters():
        ours_grad = ours.get_parameter(our_name(name, ours.config)).grad
        assert (ours_grad - parameter.grad).abs().max() <= 1e-4 * parameter.grad.abs().max(), name
        assert (ours_grad.abs().sum() > 0) == (parameter.grad.abs().sum() > 0), name
    # The parts that the straight-through estimator and the losses reach all learn.
    for name in ("encoder.conv1.parametrizations.weight.original1", "quantizer.quantizers.0.in_proj.bias",
                 "quantizer.quantizers.3.codebook.weight", "decoder.conv2.parametrizations.weight.original1"):
        assert ours.get_parameter(name).grad.abs().sum() > 0, name


def test_quantizer_dropout_uses_fewer_codebooks_for_part_of_the_batch(generator):
    model = copy.deepcopy(DacModel(tiny_config(quantizer_dropout=1.0))).train()
    z = torch.randn(8, model.config.latent_dim, 5, generator=generator)
    torch.manual_seed(3)
    drawn = torch.randint(1, model.config.n_codebooks + 1, (8,))  # what the quantizer will draw
    torch.manual_seed(3)
    q = model.quantizer(z)
    for item, n in enumerate(drawn.tolist()):  # item's z_q: the sum of its first n codebooks' contributions
        expected, residual = 0, z[item : item + 1]
        for quantizer in model.quantizer.quantizers[:n]:
            z_q_i = quantizer(residual)[0]
            expected, residual = expected + z_q_i, residual - z_q_i
        torch.testing.assert_close(q.z_q[item : item + 1], expected, rtol=1e-5, atol=1e-6)
    assert q.codes.shape == (8, model.config.n_codebooks, 5)  # codes of every codebook, as the reference gives


def test_n_quantizers_holds_in_training(generator):
    model = DacModel(tiny_config()).train()
    out = model(0.5 * torch.randn(2, 1, 1000, generator=generator), n_quantizers=2)
    assert out.codes.shape[1] == 2 and out.latents.shape[1] == 2 * model.config.codebook_dim


def test_inference_outputs_carry_no_losses(model16, generator):
    with torch.inference_mode():
        out = model16(0.5 * torch.randn(1, 1, 1000, generator=generator))
    assert out.loss is None and out.codes is not None


# ----------------------------------------------------------------------------------------------------------------
# The training objective: discriminator and losses
def reference_discriminator_and_ours(generator):
    """The reference's discriminator (base.yml's parts, plus an MSD at rate 1) and ours with its weights."""
    from dac.model.discriminator import Discriminator as ReferenceDiscriminator

    torch.manual_seed(5)
    reference = ReferenceDiscriminator(rates=[1], sample_rate=16000)
    with torch.no_grad():  # non-trivial gains and biases
        for name, parameter in reference.named_parameters():
            if name.endswith("weight_g"):
                parameter.mul_(torch.empty_like(parameter).uniform_(0.5, 1.5, generator=generator))
            elif name.endswith("bias"):
                parameter.normal_(0, 0.05, generator=generator)
    ours = losses.Discriminator(rates=[1], sample_rate=16000)
    names = {name: our_name_weight_norm(name) for name, _ in reference.named_parameters()}
    assert sorted(names.values()) == sorted(name for name, _ in ours.named_parameters())
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            ours.get_parameter(names[name]).copy_(parameter)
    return reference, ours


def our_name_weight_norm(name):
    for theirs, ours in WEIGHT_NORM.items():
        if name.endswith(theirs):
            return name[: -len(theirs)] + ours
    return name


def test_discriminator_and_adversarial_losses_equal_the_reference(generator):
    from audiotools import AudioSignal
    from dac.nn.loss import GANLoss

    reference, ours = reference_discriminator_and_ours(generator)
    real = 0.3 * torch.randn(2, 1, 4000, generator=generator)
    fake = (0.3 * torch.randn(2, 1, 4000, generator=generator)).requires_grad_()
    expected, got = reference(fake), ours(fake)
    assert len(expected) == len(got) == 5 + 1 + 3  # periods, MSD, MRD
    for maps_expected, maps_got in zip(expected, got):
        assert len(maps_expected) == len(maps_got)
        for e, g in zip(maps_expected, maps_got):
            close(g, e, "feature map")

    gan = GANLoss(reference)
    fake_signal, real_signal = AudioSignal(fake, 16000), AudioSignal(real, 16000)
    close(losses.discriminator_loss(ours(fake.detach()), ours(real)),
          gan.discriminator_loss(fake_signal, real_signal), "discriminator loss")
    gen, feat = losses.generator_losses(ours(fake), ours(real))
    gen_expected, feat_expected = gan.generator_loss(fake_signal, real_signal)
    close(gen, gen_expected, "generator loss")
    close(feat, feat_expected, "feature loss")
    grad, = torch.autograd.grad(gen + feat, fake)
    grad_expected, = torch.autograd.grad(gen_expected + feat_expected, fake)
    assert grad.abs().sum() > 0
    close(grad, grad_expected, "gradient to the generator's audio")


@pytest.mark.parametrize("length", [4000, 4096])  # 4096: a multiple of every hop, where padding differs
def test_reconstruction_losses_equal_the_reference(generator, length):
    from audiotools import AudioSignal
    from dac.nn.loss import L1Loss, MelSpectrogramLoss, MultiScaleSTFTLoss

    real = 0.3 * torch.randn(2, 1, length, generator=generator)
    fake = real + 0.05 * torch.randn(2, 1, length, generator=generator)
    signals = AudioSignal(fake.clone(), 44100), AudioSignal(real.clone(), 44100)
    base_yml = dict(n_mels=[5, 10, 20, 40, 80, 160, 320], window_lengths=[32, 64, 128, 256, 512, 1024, 2048],
                    mel_fmin=[0.0] * 7, mel_fmax=[None] * 7, pow=1.0, clamp_eps=1e-5, mag_weight=0.0)
    close(losses.MelSpectrogramLoss(44100)(fake, real), MelSpectrogramLoss(**base_yml)(*signals), "mel")
    close(losses.MultiScaleSTFTLoss()(fake, real), MultiScaleSTFTLoss()(*signals), "stft")
    close(torch.nn.functional.l1_loss(fake, real), L1Loss()(*signals), "waveform")


def test_objective_weighs_the_losses_as_base_yml():
    one = torch.tensor(1.0)
    assert losses.objective(mel=one, gen=one, feat=one, commitment=one, codebook=one) == 15 + 1 + 2 + 0.25 + 1
    with pytest.raises(ValueError, match="No weight for"):
        losses.objective(stft=one)
