"""Frozen configuration dataclasses, one per component, and their dict round trip.

A checkpoint stores ``asdict`` of each; :func:`config_from_dict` rebuilds them (lists from JSON or
``torch.load`` become tuples again, unknown keys are an error naming the key).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = [
    "TaskConfig",
    "GeneratorConfig",
    "DiscriminatorConfig",
    "GANLossConfig",
    "VAEConfig",
    "TrainConfig",
    "DIRECTIONS",
    "ARCHITECTURES",
    "config_from_dict",
]

#: The two surrogate directions: potential → pattern and pattern → potential.
DIRECTIONS = ("forward", "inverse")
#: Network families.
ARCHITECTURES = ("cgan", "vae")


@dataclass(frozen=True)
class TaskConfig:
    """What the network maps, and the exact invariances used as augmentation.

    Attributes
    ----------
    direction : {"forward", "inverse"}
        forward: normalised projected potential → normalised bright-field pattern (plus its
        intensity range); inverse: pattern → normalised potential (plus its scale [V]).
    image_size : int
        Edge of the square images [pixels] (128 for the paper's data).
    augment_dihedral : bool
        Apply one of the 8 operations of the square to potential and pattern together.
    augment_shift : bool
        Random circular shift of the potential by whole pixels (the pattern is unchanged).
    augment_subpixel : bool
        Random sub-pixel shift of the potential by Fourier interpolation (exact for the band-limited
        Fourier series of Eq. 1), then renormalised to [0, 1].
    canonicalise : {"max", "none"}
        forward only: roll the input potential so that its largest pixel sits at the image centre
        before the network sees it, which makes the model exactly invariant to whole-pixel origin
        shifts whenever that maximum is unique.
    """

    direction: str = "forward"
    image_size: int = 128
    augment_dihedral: bool = True
    augment_shift: bool = True
    augment_subpixel: bool = True
    canonicalise: str = "max"

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        if self.canonicalise not in ("max", "none"):
            raise ValueError(f"canonicalise must be 'max' or 'none', got {self.canonicalise!r}")
        if not isinstance(self.image_size, int) or self.image_size < 16 or self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16 pixels (>= 16), got {self.image_size!r}")

    @property
    def condition_names(self) -> tuple[str, ...]:
        """The conditioning scalars: what the normalised images throw away and the answer needs."""
        if self.direction == "forward":
            return ("thickness_nm", "a_angstrom", "potential_scale")
        return ("thickness_nm", "a_angstrom")


@dataclass(frozen=True)
class GeneratorConfig:
    """Coarse-to-fine generator (global generator + local enhancer), see :class:`CoarseToFineGenerator`.

    Attributes
    ----------
    channels : tuple of int
        Encoder widths at 1/4, 1/8 and 1/16 of the image edge (the input enters by a lossless 4×4
        space-to-depth step); the decoder mirrors them back to 1/4.
    mixer_blocks : int
        Global mixing blocks at the 1/16 bottleneck (token mixing over all positions + channel MLP):
        they carry the map from the input's space (real space for a potential) to the output's
        (tilt space for a pattern), which a convolution cannot.
    res_blocks : int
        Convolutional residual blocks after the mixing blocks, at the bottleneck.
    token_hidden : int
        Hidden width of the token-mixing MLP.
    enhancer_channels : int
        Width of the local enhancer (working at 1/4 of the edge, emitting 4×4 blocks of the
        full-resolution output).
    enhancer_convs : int
        3×3 convolutions in the local enhancer (>= 1; the later ones residual).
    output_basis : int
        Pattern outputs only: learned full-resolution basis images mixed per pixel by smooth
        coefficient maps from the enhancer (the Bragg lines of a pattern sit at the same pixels for
        every crystal, because the tilt range scales as 1/a); 0 disables. On 8 structures (300
        steps) 8 images lowered the training 1 − r from 0.31 to 0.28.
    upsample : {"bilinear", "nearest"}
        How the coarse image is brought to full resolution before the enhancer's detail is added.
    cond_hidden : int
        Width of the conditioning MLP that produces the FiLM scales and shifts.
    physics_prior : int
        Forward models only: reflections in the two-beam bright-field prior computed from the input
        potential (:func:`~._prior.two_beam_prior`) and fed to the local enhancer; 0 disables.
    """

    channels: tuple[int, ...] = (32, 64, 128)
    mixer_blocks: int = 3
    res_blocks: int = 1
    token_hidden: int = 128
    enhancer_channels: int = 32
    enhancer_convs: int = 1
    output_basis: int = 8
    upsample: str = "bilinear"
    cond_hidden: int = 64
    physics_prior: int = 0

    def __post_init__(self):
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"channels must be 3 positive widths (1/4, 1/8, 1/16 of the edge), got {self.channels!r}")
        if self.upsample not in ("bilinear", "nearest"):
            raise ValueError(f"upsample must be 'bilinear' or 'nearest', got {self.upsample!r}")
        if self.physics_prior < 0:
            raise ValueError(f"physics_prior must be >= 0 reflections, got {self.physics_prior!r}")
        if self.output_basis < 0:
            raise ValueError(f"output_basis must be >= 0, got {self.output_basis!r}")
        if self.enhancer_convs < 1:
            raise ValueError(f"enhancer_convs must be >= 1, got {self.enhancer_convs!r}")
        for name in ("mixer_blocks", "res_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Multi-scale PatchGAN discriminators (pix2pixHD).

    Attributes
    ----------
    num_d : int
        Number of discriminators, each at half the resolution of the previous one.
    ndf : int
        Width of the first layer (pix2pixHD: 64; 16 with the cap below costs a training step about
        what the generator does, 0.47 s vs 1.16 s at 32/512 for a batch of 16 on one core).
    n_layers : int
        Stride-2 layers per discriminator.
    max_channels : int
        Cap on the width (pix2pixHD: 512; the last layers dominate the cost of a training step).
    """

    num_d: int = 2
    ndf: int = 16
    n_layers: int = 3
    max_channels: int = 128


@dataclass(frozen=True)
class GANLossConfig:
    """Weights of the cGAN's generator losses (the discriminators use plain LSGAN).

    Attributes
    ----------
    gan : float
        LSGAN adversarial term.
    feature_matching : float
        Discriminator feature matching (L1 between real and fake features, pix2pixHD).
    l1 : float
        Pixel L1 against the normalised target.
    correlation : float
        1 − r (Pearson) against the target, the figure of merit itself.
    coarse : float
        L1 of the global generator's half-resolution output against the 2×2-averaged target.
    scale : float
        L1 of the predicted intensity range (forward) or log potential scale (inverse).
    align_dihedral : bool
        inverse only: align the target to the prediction over the 8 operations of the square as
        well as circular shifts before the losses (shifts only when False).
    """

    gan: float = 1.0
    feature_matching: float = 10.0
    l1: float = 10.0
    correlation: float = 10.0
    coarse: float = 5.0
    scale: float = 1.0
    align_dihedral: bool = False


@dataclass(frozen=True)
class VAEConfig:
    """Convolutional VAE baseline (seed 003): 2-layer encoder and decoder, 12-dimensional latent,
    zero-mean normalised cross-correlation loss.

    Attributes
    ----------
    channels : tuple of int
        Widths of the two stride-2 encoder layers (the decoder mirrors them).
    latent : int
        Latent dimension.
    beta : float
        Weight of the KL divergence (summed over latent dimensions, averaged over the batch).
    scale : float
        Weight of the scale-head loss.
    align_dihedral : bool
        As :attr:`GANLossConfig.align_dihedral`.
    """

    channels: tuple[int, ...] = (32, 64)
    latent: int = 12
    beta: float = 1e-3
    scale: float = 1.0
    align_dihedral: bool = False

    def __post_init__(self):
        if len(self.channels) != 2:
            raise ValueError(f"channels must be 2 widths (the VAE is 2 layers deep), got {self.channels!r}")
        if self.latent < 1:
            raise ValueError(f"latent must be >= 1, got {self.latent!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, schedule, EMA and checkpointing (owned by :class:`Trainer`).

    Attributes
    ----------
    lr : float
        Adam learning rate (both generator and discriminators).
    betas : tuple of float
        Adam betas (pix2pixHD: 0.5, 0.999).
    batch_size : int
        Structures per step (recorded; the loader is built with it by :func:`make_loader`).
    epochs : int or None
        Stop after this many epochs in total.
    minutes : float or None
        Stop after this many minutes of this run (a resumed run gets the budget again).
    max_steps : int or None
        Stop after this many steps in total.
    decay_from : float
        With ``epochs`` set, the learning rate decays linearly to zero from this fraction of the
        total steps on (pix2pixHD's second half).
    ema_decay : float
        Exponential moving average of the generator weights (0 disables it).
    grad_clip : float
        Gradient-norm clip per parameter group (0 disables it).
    checkpoint_minutes : float
        Write the checkpoint at least this often [minutes], and at the end.
    seed : int
        Seeds the data order and every step's random draws, so a run and its resumption are
        deterministic.
    log_every : int
        Steps between entries of the loss history.
    """

    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = 16
    epochs: int | None = None
    minutes: float | None = None
    max_steps: int | None = None
    decay_from: float = 0.5
    ema_decay: float = 0.999
    grad_clip: float = 10.0
    checkpoint_minutes: float = 5.0
    seed: int = 0
    log_every: int = 20

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.epochs is None and self.minutes is None and self.max_steps is None:
            raise ValueError("give at least one of epochs, minutes or max_steps, or training never stops")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be positive, got {self.minutes!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")


_CLASSES = {
    "task": TaskConfig,
    "generator": GeneratorConfig,
    "discriminator": DiscriminatorConfig,
    "loss": GANLossConfig,
    "vae": VAEConfig,
    "train": TrainConfig,
}


def config_from_dict(section: str, values: dict):
    """Rebuild the config of ``section`` ({"task", "generator", "discriminator", "loss", "vae",
    "train"}) from a dict; lists become tuples; unknown keys raise ``ValueError`` naming them."""
    if section not in _CLASSES:
        raise ValueError(f"unknown config section {section!r}; known: {sorted(_CLASSES)}")
    cls = _CLASSES[section]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {section} setting(s) {unknown}; known: {sorted(names)}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**fixed)

