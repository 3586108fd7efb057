"""Surrogates of the Bloch engine: forward cGAN (projected potential → bright-field LACBED), inverse
generator (pattern → potential) and the VAE baseline — training, evaluation, inference, shipped
weights.

Quick use::

    from lacbed_refine.surrogate import load_surrogate
    fwd = load_surrogate("forward.pt")                 # or load_pretrained("forward")
    out = fwd.from_theta(params, theta, [50, 100])     # differentiable: θ → atoms → ρ → G
    out["intensity"]                                   # (T, n, n), fractions of the incident beam

Normalisation: the networks see and predict min–max normalised images; the forward models also
predict the pattern's intensity range (lo, hi) so that ``intensity = lo + (hi − lo) · normalised``,
and the inverse models predict the potential's max − min [V]. Conditioning: thickness, lattice
parameter and (forward) the potential's scale, log-scaled. See the modules for details:
``_networks`` (architecture), ``_models`` (losses), ``_trainer`` (training, checkpoints),
``_predict`` (inference, weights, cards), ``_evaluate`` (metrics, report, figures).
"""

from lacbed_refine.surrogate._commands import evaluate_files, invert_file, predict_file, read_stack, train, train_file
from lacbed_refine.surrogate._config import DiscriminatorConfig, GANLossConfig, GeneratorConfig, TaskConfig, TrainConfig, VAEConfig, config_from_dict
from lacbed_refine.surrogate._data import PairsDataset, open_dataset, pairs_from_crystals
from lacbed_refine.surrogate._evaluate import compare_reports, evaluate, summarise
from lacbed_refine.surrogate._models import CGAN, VAE
from lacbed_refine.surrogate._networks import CoarseToFineGenerator, ConvVAE, MultiscaleDiscriminator
from lacbed_refine.surrogate._export import export_weights, score_sample
from lacbed_refine.surrogate._identify import identify, identify_file, read_candidates
from lacbed_refine.surrogate._predict import WEIGHTS_DIR, ForwardSurrogate, InverseSurrogate, load_pretrained, load_surrogate, read_card
from lacbed_refine.surrogate._transforms import align_to
from lacbed_refine.surrogate._trainer import CheckpointError, Trainer, build_model, load_checkpoint, make_loader

__all__ = [
    "align_to",
    "identify",
    "identify_file",
    "read_candidates",
    "CGAN",
    "VAE",
    "CheckpointError",
    "CoarseToFineGenerator",
    "ConvVAE",
    "DiscriminatorConfig",
    "ForwardSurrogate",
    "GANLossConfig",
    "GeneratorConfig",
    "InverseSurrogate",
    "MultiscaleDiscriminator",
    "PairsDataset",
    "TaskConfig",
    "TrainConfig",
    "Trainer",
    "VAEConfig",
    "WEIGHTS_DIR",
    "build_model",
    "compare_reports",
    "config_from_dict",
    "evaluate",
    "evaluate_files",
    "export_weights",
    "invert_file",
    "load_checkpoint",
    "load_pretrained",
    "load_surrogate",
    "make_loader",
    "open_dataset",
    "pairs_from_crystals",
    "score_sample",
    "predict_file",
    "read_card",
    "read_stack",
    "summarise",
    "train",
    "train_file",
]
