"""Trainable surrogate models: ``model(batch) -> dict of losses``.

A batch is a dict as collated from the dataset (see :mod:`lacbed_refine.surrogate._data`):

- ``potential`` : (B, 1, n, n) float, min–max normalised to [0, 1];
- ``pattern`` : (B, T, n, n) float, bright-field intensities (fractions of the incident beam);
- ``thickness_nm`` : (B, T); ``a_angstrom`` : (B,); ``potential_scale`` : (B,) [V] (max − min).

In training mode every structure contributes one random thickness and the exact invariances are
applied at random (:class:`~._config.TaskConfig`); in evaluation mode every thickness is used and
nothing is augmented.

Each model has ``generator`` (the network used at inference) and ``parameter_groups()``: the loss
dict holds one total per group (``"g"``, and ``"d"`` for the cGAN's discriminators), which the
:class:`~._trainer.Trainer` back-propagates into that group only; the other entries are logged.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from lacbed_refine import metrics
from lacbed_refine.surrogate._config import DiscriminatorConfig, GANLossConfig, GeneratorConfig, TaskConfig, VAEConfig
from lacbed_refine.surrogate._networks import CoarseToFineGenerator, ConvVAE, MultiscaleDiscriminator
from lacbed_refine.surrogate._transforms import SCALE_REFERENCE_V, align_to, canonical_shift, condition_vector, dihedral_apply, fourier_shift, minmax_with_range, roll_batch

__all__ = ["CGAN", "VAE", "SurrogateModel", "decode_scale", "known_scale", "prepare_input"]


def decode_scale(raw: torch.Tensor, direction: str) -> dict[str, torch.Tensor]:
    """Turn the scalar head's output into physical quantities.

    forward: ``hi = sigmoid(raw[:, 0])``, ``lo = hi · sigmoid(raw[:, 1])`` — the intensity range of
    the pattern (fractions of the incident beam, 0 ≤ lo ≤ hi ≤ 1); inverse: ``potential_scale =
    150 V · exp(raw[:, 0])`` (max − min of the potential [V]).
    """
    if direction == "forward":
        hi = torch.sigmoid(raw[:, 0])
        return {"lo": hi * torch.sigmoid(raw[:, 1]), "hi": hi}
    return {"potential_scale": SCALE_REFERENCE_V * torch.exp(raw[:, 0])}


def known_scale(scale: torch.Tensor) -> torch.Tensor:
    """The potential scale [V] with unknown values (NaN, e.g. datasets imported from PNG) replaced by
    the conditioning reference (150 V), so that they condition neutrally."""
    return torch.where(torch.isfinite(scale), scale, torch.full_like(scale, SCALE_REFERENCE_V))


def prepare_input(task: TaskConfig, image: torch.Tensor) -> torch.Tensor:
    """What the generator sees of a normalised input image (B, 1, n, n): for the forward map with
    ``canonicalise="max"``, the potential rolled so that its largest pixel is at the centre."""
    if task.direction == "forward" and task.canonicalise == "max":
        return roll_batch(image, canonical_shift(image))
    return image


class SurrogateModel(nn.Module):
    """Batch preparation shared by the cGAN and the VAE."""

    arch = ""

    def __init__(self, task: TaskConfig):
        super().__init__()
        self.task = task

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def configs(self) -> dict:
        """The component configs as plain dicts (what a checkpoint stores)."""
        raise NotImplementedError

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        raise NotImplementedError

    def prepare(self, batch: dict, *, augment: bool) -> dict[str, torch.Tensor]:
        """Network input ``x``, normalised target ``y``, conditioning ``cond``, scalar targets
        ``scale_target`` for one batch (one random thickness per structure when ``augment``,
        every thickness otherwise)."""
        dev = self.device
        potential = batch["potential"].to(dev, torch.float32)
        pattern = batch["pattern"].to(dev, torch.float32)
        thick = batch["thickness_nm"].to(dev, torch.float32)
        a = batch["a_angstrom"].to(dev, torch.float32).reshape(-1)
        scale = batch["potential_scale"].to(dev, torch.float32).reshape(-1)  # NaN where unknown
        if potential.dim() == 3:
            potential = potential.unsqueeze(1)
        if pattern.dim() == 3:
            pattern = pattern.unsqueeze(1)
        if thick.dim() == 1:
            thick = thick.unsqueeze(1)
        b, t = pattern.shape[:2]
        if augment:
            pick = torch.randint(t, (b,), device=dev)
            rows = torch.arange(b, device=dev)
            pattern = pattern[rows, pick].unsqueeze(1)
            thick = thick[rows, pick]
        else:
            potential = potential.repeat_interleave(t, dim=0)
            pattern = pattern.reshape(b * t, 1, *pattern.shape[-2:])
            thick = thick.reshape(b * t)
            a = a.repeat_interleave(t)
            scale = scale.repeat_interleave(t)
        n = pattern.shape[0]
        forward = self.task.direction == "forward"
        if augment and forward and self.task.augment_subpixel:
            potential = fourier_shift(potential, torch.rand(n, 2, device=dev))
            potential, lo, hi = minmax_with_range(potential)
            scale = scale * (hi - lo).reshape(-1)
        if augment and forward and self.task.augment_shift:
            size = potential.shape[-1]
            potential = roll_batch(potential, torch.randint(size, (n, 2), device=dev))
        y_pattern, p_lo, p_hi = minmax_with_range(pattern)
        if augment and self.task.augment_dihedral:
            op = torch.randint(8, (n,), device=dev)
            potential = dihedral_apply(potential, op)
            y_pattern = dihedral_apply(y_pattern, op)
        values = {"thickness_nm": thick, "a_angstrom": a, "potential_scale": known_scale(scale)}
        cond = condition_vector(values, self.task.condition_names)
        if forward:
            return {"x": prepare_input(self.task, potential), "y": y_pattern, "cond": cond,
                    "scale_target": torch.stack([p_lo.reshape(-1), p_hi.reshape(-1)], dim=1)}
        return {"x": y_pattern, "y": potential, "cond": cond,
                "scale_target": torch.log(scale / SCALE_REFERENCE_V).reshape(-1, 1)}

    def _scale_loss(self, raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task.direction == "forward":
            s = decode_scale(raw, "forward")
            return F.l1_loss(torch.stack([s["lo"], s["hi"]], dim=1), target)
        known = torch.isfinite(target)  # the potential's scale is unknown for PNG imports
        if not known.any():
            return raw.sum() * 0
        return F.l1_loss(raw[known], target[known])

    def _align(self, target: torch.Tensor, prediction: torch.Tensor, dihedral: bool) -> torch.Tensor:
        if self.task.direction == "inverse":
            return align_to(target, prediction, dihedral=dihedral)
        return target


class CGAN(SurrogateModel):
    """Conditional GAN (pix2pixHD at a CPU size): coarse-to-fine generator, multi-scale PatchGAN
    discriminators, LSGAN + discriminator feature matching + pixel losses.

    Parameters
    ----------
    task : TaskConfig
    generator : GeneratorConfig
    discriminator : DiscriminatorConfig
    loss : GANLossConfig

    Notes
    -----
    For the inverse map the target is first aligned to the prediction over circular shifts (and the
    square's operations with ``loss.align_dihedral``): a potential is only defined up to its origin.
    """

    arch = "cgan"

    def __init__(self, task: TaskConfig = TaskConfig(), *, generator: GeneratorConfig = GeneratorConfig(),
                 discriminator: DiscriminatorConfig = DiscriminatorConfig(), loss: GANLossConfig = GANLossConfig()):
        super().__init__(task)
        self.generator_config = generator
        self.discriminator_config = discriminator
        self.loss_config = loss
        n_cond = len(task.condition_names)
        forward = task.direction == "forward"
        self.generator = CoarseToFineGenerator(generator, image_size=task.image_size, n_cond=n_cond,
                                               input_is_pattern=not forward, n_scale=2 if forward else 1,
                                               cond_names=task.condition_names)
        self.discriminator = MultiscaleDiscriminator(discriminator, n_cond=n_cond)

    def configs(self) -> dict:
        return {"task": dataclasses.asdict(self.task), "generator": dataclasses.asdict(self.generator_config),
                "discriminator": dataclasses.asdict(self.discriminator_config), "loss": dataclasses.asdict(self.loss_config)}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"g": list(self.generator.parameters()), "d": list(self.discriminator.parameters())}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        w = self.loss_config
        p = self.prepare(batch, augment=self.training)
        x, cond = p["x"], p["cond"]
        out = self.generator(x, cond)
        fake = out["image"]
        target = self._align(p["y"], fake, w.align_dihedral)

        real_d = self.discriminator(x, target, cond)
        fake_d = self.discriminator(x, fake.detach(), cond)
        num_d = len(real_d)
        d_real = sum(F.mse_loss(r[-1], torch.ones_like(r[-1])) for r in real_d) / num_d
        d_fake = sum(F.mse_loss(f[-1], torch.zeros_like(f[-1])) for f in fake_d) / num_d

        gen_d = self.discriminator(x, fake, cond)
        gan = sum(F.mse_loss(g[-1], torch.ones_like(g[-1])) for g in gen_d) / num_d
        layer_w = 4.0 / (self.discriminator_config.n_layers + 1)
        fm = sum(layer_w * F.l1_loss(gf, rf.detach()) for g, r in zip(gen_d, real_d) for gf, rf in zip(g[:-1], r[:-1])) / num_d
        l1 = F.l1_loss(fake, target)
        corr = (1 - metrics.pearson_r(fake[:, 0], target[:, 0])).mean()
        coarse = F.l1_loss(out["coarse"], F.avg_pool2d(target, 2))
        scale = self._scale_loss(out["scale"], p["scale_target"])
        g_total = w.gan * gan + w.feature_matching * fm + w.l1 * l1 + w.correlation * corr + w.coarse * coarse + w.scale * scale
        return {"g": g_total, "d": 0.5 * (d_real + d_fake), "gan": gan, "fm": fm, "l1": l1, "1-r": corr,
                "coarse": coarse, "scale": scale, "d_real": d_real, "d_fake": d_fake}


class VAE(SurrogateModel):
    """The VAE baseline of seed 003 (2-layer convolutional encoder and decoder, 12-dimensional
    latent), trained with the zero-mean normalised cross-correlation loss Z = 1 − r plus β·KL.

    Parameters
    ----------
    task : TaskConfig
    vae : VAEConfig
    """

    arch = "vae"

    def __init__(self, task: TaskConfig = TaskConfig(), *, vae: VAEConfig = VAEConfig()):
        super().__init__(task)
        self.vae_config = vae
        forward = task.direction == "forward"
        self.generator = ConvVAE(vae, image_size=task.image_size, n_cond=len(task.condition_names),
                                 input_is_pattern=not forward, n_scale=2 if forward else 1)

    def configs(self) -> dict:
        return {"task": dataclasses.asdict(self.task), "vae": dataclasses.asdict(self.vae_config)}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"g": list(self.generator.parameters())}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        p = self.prepare(batch, augment=self.training)
        out = self.generator(p["x"], p["cond"])
        target = self._align(p["y"], out["image"], self.vae_config.align_dihedral)
        z = (1 - metrics.pearson_r(out["image"][:, 0], target[:, 0])).mean()
        mu, logvar = out["mu"], out["logvar"]
        kl = (-0.5 * (1 + logvar - mu * mu - logvar.exp()).sum(dim=1)).mean()
        scale = self._scale_loss(out["scale"], p["scale_target"])
        g = z + self.vae_config.beta * kl + self.vae_config.scale * scale
        return {"g": g, "Z": z, "kl": kl, "scale": scale}


def generator_predict(generator: nn.Module, arch: str, x: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run a generator on prepared input; ``normalised`` is the min–max normalised output (B, n, n),
    ``scale`` the raw scalar head (B, k)."""
    out = generator(x, cond)
    return {"normalised": metrics.minmax(out["image"][:, 0]), "scale": out["scale"]}
