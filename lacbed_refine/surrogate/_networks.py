"""Networks: coarse-to-fine generator, multi-scale PatchGAN discriminators, convolutional VAE.

The generator follows pix2pixHD (Wang et al. 2018, doi:10.1109/CVPR.2018.00917) at a CPU size, with
two changes the problem asks for:

- **Input and output live in different spaces.** A projected potential is a real-space, periodic
  image; its LACBED pattern is a tilt-space image in which every pixel depends on the whole cell.
  A stack of circular convolutions is exactly equivariant to circular shifts by its total stride,
  so it would have to move the pattern when the crystal's origin moves, which is wrong. The
  encoder is convolutional in the input's space (circular padding for a potential), the bottleneck
  mixes all positions with learned token-mixing MLPs (MLP-Mixer, Tolstikhin et al. 2021,
  arXiv:2105.01601) — which is where the map between spaces happens — and the decoder is
  convolutional in the output's space: circular padding for a potential; zero padding, a learned
  position embedding and learned full-resolution basis images for a pattern, whose geometry is
  fixed (the Bragg lines of reflection g sit at the same pixels for every crystal, because the
  tilt range is 7.266/a). A pattern input (inverse map) gets a learned position embedding too.
  With ``canonicalise="max"`` the forward input is rolled to put its largest pixel at the centre,
  so whole-pixel origin shifts change nothing; sub-pixel shifts and the square's operations are
  learned from augmentation (or imposed at inference by averaging, ``symmetrise=True``).
- **Coarse to fine.** The global generator G1 produces the half-resolution output from its
  1/4-resolution features; the local enhancer G2 refines those features and emits the
  full-resolution detail (pixel shuffle), added to the upsampled G1 output. In pix2pixHD G2's front
  end also convolves the full-resolution input and adds it to G1's features; here that would add
  real-space features to tilt-space ones, so the full-resolution input reaches G1 through a
  lossless 4×4 space-to-depth stem instead. Nothing runs at 1/2 or full resolution but the
  pixel shuffles and the coarse image's upsampling: small-channel convolutions on large images are
  what is slow on a CPU (the default forward generator: 1.1 M parameters, 92 M multiply–adds, about
  3 ms of one core per 128×128 pattern when batched).

Conditioning scalars enter through FiLM (a scale and shift per channel after each normalisation,
Perez et al. 2018, arXiv:1709.07871) computed by one MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lacbed_refine import metrics
from lacbed_refine.surrogate._config import DiscriminatorConfig, GeneratorConfig, VAEConfig
from lacbed_refine.surrogate._prior import two_beam_prior
from lacbed_refine.surrogate._transforms import COND_REFERENCE

__all__ = ["CoarseToFineGenerator", "MultiscaleDiscriminator", "PatchDiscriminator", "ConvVAE"]


def _pad_mode(periodic: bool) -> str:
    return "circular" if periodic else "zeros"


def _conv3(cin: int, cout: int, *, stride: int = 1, periodic: bool, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=1, padding_mode=_pad_mode(periodic), bias=bias)


class _CondEmbed(nn.Module):
    """Conditioning scalars (B, n_cond) → embedding (B, hidden)."""

    def __init__(self, n_cond: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_cond, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.net(c)


class _NormFiLM(nn.Module):
    """Instance norm (group norm over all features for token layouts), FiLM from the embedding,
    optional ReLU — fused into one statistics pass and one multiply–add. FiLM starts as the identity
    (zero-initialised)."""

    def __init__(self, channels: int, hidden: int, *, act: bool = True, tokens: bool = False, eps: float = 1e-5):
        super().__init__()
        self.film = nn.Linear(hidden, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.act = act
        self.tokens = tokens
        self.eps = eps

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        g, b = self.film(e).chunk(2, dim=-1)
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        dims = tuple(range(1, x.dim())) if self.tokens else tuple(range(2, x.dim()))
        # E[x²] − E[x]²: one fast pass each (torch.var_mean is several times slower on a CPU)
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x * x).mean(dim=dims, keepdim=True) - mean * mean).clamp_min(0)
        scale = (1 + g.view(shape)) * torch.rsqrt(var + self.eps)
        y = torch.addcmul(b.view(shape) - mean * scale, x, scale)
        return torch.relu_(y) if self.act else y


class _MixerBlock(nn.Module):
    """MLP-Mixer block on (B, C, P): token mixing over the P positions, then a channel MLP."""

    def __init__(self, positions: int, channels: int, token_hidden: int, hidden: int):
        super().__init__()
        self.norm1 = _NormFiLM(channels, hidden, act=False, tokens=True)
        self.tokens = nn.Sequential(nn.Linear(positions, token_hidden), nn.GELU(), nn.Linear(token_hidden, positions))
        self.norm2 = _NormFiLM(channels, hidden, act=False, tokens=True)
        self.channels = nn.Sequential(nn.Conv1d(channels, 2 * channels, 1), nn.GELU(), nn.Conv1d(2 * channels, channels, 1))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        x = x + self.tokens(self.norm1(x, e))
        return x + self.channels(self.norm2(x, e))


class _ResBlock(nn.Module):
    def __init__(self, channels: int, hidden: int, *, periodic: bool):
        super().__init__()
        self.conv1 = _conv3(channels, channels, periodic=periodic)
        self.norm1 = _NormFiLM(channels, hidden)
        self.conv2 = _conv3(channels, channels, periodic=periodic)
        self.norm2 = _NormFiLM(channels, hidden, act=False)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return x + self.norm2(self.conv2(self.norm1(self.conv1(x), e)), e)


class _Upsample2(nn.Module):
    """A 2×2 stride-2 transposed convolution written as a 1×1 convolution to 4·cout channels and a
    pixel shuffle (the same map; oneDNN runs it several times faster)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, 4 * cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class _GlobalGenerator(nn.Module):
    """G1: encoder in the input's space (a lossless 4×4 space-to-depth stem, then stride-2 convs) →
    mixer bottleneck at 1/16 → decoder in the output's space back to 1/4. Returns the 1/4 features,
    the coarse image at 1/2 (pixel shuffle) and the pooled bottleneck."""

    def __init__(self, cfg: GeneratorConfig, *, image_size: int, hidden: int, in_periodic: bool, out_periodic: bool):
        super().__init__()
        c = list(cfg.channels)
        # a pattern has a fixed tilt geometry: give the input side a learned position embedding
        self.position = None if in_periodic else nn.Parameter(torch.zeros(1, c[0], image_size // 4, image_size // 4))
        self.down = nn.ModuleList()
        self.down_norm = nn.ModuleList()
        prev = 16
        for i, ch in enumerate(c):
            self.down.append(_conv3(prev, ch, stride=1 if i == 0 else 2, periodic=in_periodic))
            self.down_norm.append(_NormFiLM(ch, hidden))
            prev = ch
        side = image_size // 16
        self.mixers = nn.ModuleList(_MixerBlock(side * side, c[-1], cfg.token_hidden, hidden) for _ in range(cfg.mixer_blocks))
        self.res = nn.ModuleList(_ResBlock(c[-1], hidden, periodic=out_periodic) for _ in range(cfg.res_blocks))
        self.up = nn.ModuleList()
        self.up_norm = nn.ModuleList()
        self.refine = nn.ModuleList()
        self.refine_norm = nn.ModuleList()
        for cin, cout in zip(c[:0:-1], c[-2::-1]):  # 1/16 → 1/8 → 1/4
            self.up.append(_Upsample2(cin, cout))
            self.up_norm.append(_NormFiLM(cout, hidden))
            self.refine.append(_conv3(cout, cout, periodic=out_periodic))
            self.refine_norm.append(_NormFiLM(cout, hidden))
        self.coarse = nn.Conv2d(c[0], 4, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor):
        x = F.pixel_unshuffle(x, 4)
        for i, (conv, norm) in enumerate(zip(self.down, self.down_norm)):
            x = conv(x)
            if i == 0 and self.position is not None:
                x = x + self.position
            x = norm(x, e)
        b, ch, h, w = x.shape
        t = x.reshape(b, ch, h * w)
        for block in self.mixers:
            t = block(t, e)
        x = t.reshape(b, ch, h, w)
        for block in self.res:
            x = block(x, e)
        pooled = x.mean(dim=(-2, -1))
        for up, un, ref, rn in zip(self.up, self.up_norm, self.refine, self.refine_norm):
            x = un(up(x), e)
            x = rn(ref(x), e)
        return x, F.pixel_shuffle(self.coarse(x), 2), pooled


class _LocalEnhancer(nn.Module):
    """G2: refines G1's 1/4-resolution features and emits 4×4 blocks of full-resolution detail
    (pixel shuffle), added to the upsampled coarse image. For a pattern (fixed tilt geometry) a
    learned position embedding is added to the features first."""

    def __init__(self, in_channels: int, channels: int, hidden: int, *, side: int, convs: int, periodic: bool,
                 positional: bool, basis: int = 0, prior: bool = False):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, in_channels, side, side)) if positional else None
        # learned full-resolution images, mixed per pixel by smooth coefficient maps: a pattern's
        # Bragg lines sit at the same pixels for every crystal (the tilt range scales as 1/a)
        self.n_basis = basis if positional else 0
        self.basis = nn.Parameter(0.01 * torch.randn(1, basis, 4 * side, 4 * side)) if self.n_basis else None
        # a full-resolution prior image enters as its 4×4 blocks (16 channels), both into the
        # features and, through a zero-initialised 1×1 map, straight into the output blocks
        self.prior_skip = nn.Conv2d(16, 16, 1) if prior else None
        if prior:
            nn.init.zeros_(self.prior_skip.weight)
            nn.init.zeros_(self.prior_skip.bias)
        self.conv1 = _conv3(in_channels + (16 if prior else 0), channels, periodic=periodic)
        self.norm1 = _NormFiLM(channels, hidden)
        self.convs = nn.ModuleList(_conv3(channels, channels, periodic=periodic) for _ in range(convs - 1))
        self.norms = nn.ModuleList(_NormFiLM(channels, hidden) for _ in range(convs - 1))
        # 16 channels: the 4×4 pixels of each block; then one coefficient per basis image
        self.to_image = _conv3(channels, 16 + self.n_basis, periodic=periodic, bias=True)
        nn.init.zeros_(self.to_image.weight[:16])
        nn.init.zeros_(self.to_image.bias)
        self.upsample = "nearest"

    def forward(self, feats: torch.Tensor, coarse: torch.Tensor, e: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        if self.position is not None:
            feats = feats + self.position
        if self.prior_skip is not None:
            prior_blocks = F.pixel_unshuffle(2 * prior - 1, 4)
            feats = torch.cat([feats, prior_blocks], dim=1)
        x = self.norm1(self.conv1(feats), e)
        for conv, norm in zip(self.convs, self.norms):
            x = x + norm(conv(x), e)
        out = self.to_image(x)
        blocks = out[:, :16]  # (B, 16, n/4, n/4)
        if self.prior_skip is not None:
            blocks = blocks + self.prior_skip(prior_blocks)
        if self.basis is not None:
            # Σ_c coef_c · basis_c with one coefficient per 4×4 block, in space-to-depth form so that
            # nothing but the final shuffle touches full resolution
            # (a copy, never .contiguous(): at batch 1 the slice is already contiguous and would alias
            # ``out``, whose coefficients the backward pass still needs)
            blocks = blocks.clone(memory_format=torch.contiguous_format)
            basis = F.pixel_unshuffle(self.basis, 4)[0].view(self.n_basis, 16, *blocks.shape[-2:])
            for c in range(self.n_basis):
                blocks.addcmul_(out[:, 16 + c:17 + c], basis[c])
        detail = F.pixel_shuffle(blocks, 4)
        return F.interpolate(coarse, scale_factor=2, mode=self.upsample) + detail


class CoarseToFineGenerator(nn.Module):
    """pix2pixHD-style generator G = G2 ∘ G1 with FiLM conditioning and a scalar head.

    Parameters
    ----------
    cfg : GeneratorConfig
    image_size : int
        Image edge n [pixels], a multiple of 16.
    n_cond : int
        Number of conditioning scalars.
    input_is_pattern : bool
        True for the inverse map (pattern in, potential out), False for the forward map.
    n_scale : int
        Outputs of the scalar head (2 for a pattern's intensity range, 1 for a potential's scale).
    cond_names : sequence of str, optional
        Names of the conditioning scalars (keys of ``COND_REFERENCE``), needed by the physics
        prior, which decodes thickness, cell edge and potential scale from them.

    Notes
    -----
    ``forward(x, cond)`` takes the normalised input image, shape (B, 1, n, n) in [0, 1], and the
    conditioning vector (B, n_cond), and returns a dict: ``image`` (B, 1, n, n) — the normalised
    prediction, not clamped —, ``coarse`` (B, 1, n/2, n/2) and ``scale`` (B, n_scale).
    """

    def __init__(self, cfg: GeneratorConfig, *, image_size: int, n_cond: int, input_is_pattern: bool, n_scale: int,
                 cond_names=None):
        super().__init__()
        self.input_is_pattern = input_is_pattern
        self.prior_reflections = 0 if input_is_pattern else cfg.physics_prior
        if self.prior_reflections:
            need = {"thickness_nm", "a_angstrom", "potential_scale"}
            if cond_names is None or not need <= set(cond_names):
                raise ValueError(f"the physics prior needs the conditioning scalars {sorted(need)}, got {cond_names!r}")
        self.cond_names = tuple(cond_names or ())
        hidden = cfg.cond_hidden
        self.embed = _CondEmbed(n_cond, hidden)
        out_periodic = input_is_pattern  # the output is a potential exactly when the input is a pattern
        self.global_generator = _GlobalGenerator(cfg, image_size=image_size, hidden=hidden,
                                                 in_periodic=not input_is_pattern, out_periodic=out_periodic)
        self.local_enhancer = _LocalEnhancer(cfg.channels[0], cfg.enhancer_channels, hidden, side=image_size // 4,
                                             convs=cfg.enhancer_convs, periodic=out_periodic, positional=not out_periodic,
                                             basis=cfg.output_basis, prior=bool(self.prior_reflections))
        self.local_enhancer.upsample = cfg.upsample
        self.scale_head = nn.Sequential(nn.Linear(cfg.channels[-1] + hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_scale))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.embed(cond)
        feats, coarse, pooled = self.global_generator(2 * x - 1, e)
        coarse = (coarse + 1) / 2
        prior = self.physics_prior(x, cond) if self.prior_reflections else None
        image = self.local_enhancer(feats, coarse, e, prior)
        scale = self.scale_head(torch.cat([pooled, e], dim=1))
        return {"image": image, "coarse": coarse, "scale": scale}


    def physics_prior(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The min–max normalised two-beam prior (B, 1, n, n) of input potentials ``x`` under the
        conditioning ``cond`` (log-scaled, see :func:`~._transforms.condition_vector`)."""
        v = {name: COND_REFERENCE[name] * torch.exp(cond[:, i]) for i, name in enumerate(self.cond_names)}
        prior = two_beam_prior(x, v["potential_scale"], v["a_angstrom"], v["thickness_nm"], n_reflections=self.prior_reflections)
        return metrics.minmax(prior)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (pix2pix / pix2pixHD): returns every layer's output, the last being
    the patch score map."""

    def __init__(self, in_channels: int, cfg: DiscriminatorConfig):
        super().__init__()
        nf = cfg.ndf
        layers = [nn.Sequential(nn.Conv2d(in_channels, nf, 4, 2, 2), nn.LeakyReLU(0.2))]
        for _ in range(1, cfg.n_layers):
            prev, nf = nf, min(nf * 2, cfg.max_channels)
            layers.append(nn.Sequential(nn.Conv2d(prev, nf, 4, 2, 2), nn.InstanceNorm2d(nf), nn.LeakyReLU(0.2)))
        prev, nf = nf, min(nf * 2, cfg.max_channels)
        layers.append(nn.Sequential(nn.Conv2d(prev, nf, 4, 1, 2), nn.InstanceNorm2d(nf), nn.LeakyReLU(0.2)))
        layers.append(nn.Conv2d(nf, 1, 4, 1, 2))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for layer in self.layers:
            x = layer(x)
            out.append(x)
        return out


class MultiscaleDiscriminator(nn.Module):
    """``num_d`` PatchGAN discriminators on the input at full, 1/2, 1/4 … resolution.

    The input is the conditioning image, the real or generated image and the conditioning scalars
    as constant channels."""

    def __init__(self, cfg: DiscriminatorConfig, *, n_cond: int):
        super().__init__()
        self.discriminators = nn.ModuleList(PatchDiscriminator(2 + n_cond, cfg) for _ in range(cfg.num_d))

    def forward(self, condition: torch.Tensor, image: torch.Tensor, cond: torch.Tensor) -> list[list[torch.Tensor]]:
        b, _, h, w = image.shape
        x = torch.cat([2 * condition - 1, 2 * image - 1, cond[:, :, None, None].expand(b, -1, h, w)], dim=1)
        out = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))
        return out


class ConvVAE(nn.Module):
    """The VAE baseline of seed 003: 2 stride-2 conv layers → 12-d latent → 2 transposed convs.

    The conditioning scalars are appended to the flattened encoder features and to the latent.
    ``forward(x, cond)`` returns ``image`` (B, 1, n, n) in (0, 1), ``scale`` (B, n_scale), ``mu``
    and ``logvar`` (B, latent); at evaluation time (``model.eval()``) the latent is the mean.
    """

    def __init__(self, cfg: VAEConfig, *, image_size: int, n_cond: int, input_is_pattern: bool, n_scale: int):
        super().__init__()
        c0, c1 = cfg.channels
        pad = "zeros" if input_is_pattern else "circular"
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c0, 4, 2, 1, padding_mode=pad), nn.ReLU(), nn.Conv2d(c0, c1, 4, 2, 1, padding_mode=pad), nn.ReLU()
        )
        self.side = image_size // 4
        flat = c1 * self.side * self.side
        self.to_stats = nn.Linear(flat + n_cond, 2 * cfg.latent)
        self.from_latent = nn.Sequential(nn.Linear(cfg.latent + n_cond, flat), nn.ReLU())
        self.decoder = nn.Sequential(nn.ConvTranspose2d(c1, c0, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(c0, 1, 4, 2, 1))
        self.scale_head = nn.Sequential(nn.Linear(cfg.latent + n_cond, 32), nn.ReLU(), nn.Linear(32, n_scale))
        self.c1 = c1

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.encoder(2 * x - 1).flatten(1)
        mu, logvar = self.to_stats(torch.cat([h, cond], dim=1)).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        zc = torch.cat([z, cond], dim=1)
        d = self.from_latent(zc).view(-1, self.c1, self.side, self.side)
        image = torch.sigmoid(self.decoder(d))
        return {"image": image, "scale": self.scale_head(zc), "mu": mu, "logvar": logvar}
