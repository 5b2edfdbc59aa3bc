"""CompressAI image architectures as icm codecs, one codec per architecture with one model per quality.

Weights come, in order, from ``checkpoint`` (a file for one quality, or a folder holding zoo-named
files), from torch.hub's cache, or from the CompressAI zoo URL, which fails offline with a clear
message. Random weights only with ``weights="random"`` (seeded, so the weights hash is reproducible).
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icm.codecs import Codec, RateControl, entropy_guard
from icm.codecs.architectures import ARCHITECTURES
from icm.codecs.trainable import TrainableCodec, seeded
from icm.distributed import default_device
from icm.errors import BitstreamError, UserError

PAD_TO = 64  # every architecture in ARCHITECTURES needs sizes divisible by 64 (two stride-4 stages)


def tensor_hash(state: dict) -> bytes:
    """First 8 bytes of SHA-256 over the state dict in key order: names, shapes, dtypes and values."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.digest()[:8]


def load_checkpoint(path: str | Path) -> dict:
    """weights_only loading (torch >= 2.6 default); a user's file never gets arbitrary unpickling."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path}: cannot load ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if isinstance(ckpt, dict) and "state_dict" in ckpt and isinstance(ckpt["state_dict"], dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise UserError(f"checkpoint {path}: not a state dict of tensors")
    return ckpt


def to_tensor(image: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(image.copy()).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=torch.float32) / 255.0


def to_tensors(images: list[np.ndarray], device) -> torch.Tensor:
    """Equal-sized HxWx3 uint8 images -> (B,3,H,W) float in [0, 1]."""
    return torch.cat([to_tensor(image, device) for image in images])


def to_image(x: torch.Tensor) -> np.ndarray:
    return to_images(x[:1])[0]


def to_images(x: torch.Tensor) -> list[np.ndarray]:
    pixels = x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [p.copy() for p in pixels]


def pad(x: torch.Tensor, multiple: int = PAD_TO) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


# Peak memory growth per megapixel of one encode + decode of the zoo's largest model per architecture
# (its highest quality; lower qualities have fewer channels and take less), measured on CPU with
# `benchmarks/image_size_limits.py --weights random` at 0.1-1.6 MP, plus a quarter (icm.limits.check_memory).
# cheng2020 is not measured (with random weights its serial entropy coder takes 80 s per 0.1 MP), so
# it has no figure and no check.
ZOO_MEMORY_MB_PER_MP = {"bmshj2018-factorized": 730.0, "bmshj2018-hyperprior": 780.0, "mbt2018-mean": 720.0,
                        "mbt2018": 670.0}


class CompressAICodec(Codec, TrainableCodec):
    kind = "learned"

    def __init__(self, arch: str, checkpoint: str | None = None, weights: str = "pretrained",
                 device: str | None = None, metric: str = "mse"):
        with warnings.catch_warnings():  # compressai's import trips torch's jit.script deprecation warning
            warnings.simplefilter("ignore", FutureWarning)
            import compressai
            import compressai.zoo  # noqa: F401

        if arch not in ARCHITECTURES:
            raise UserError(f"unknown CompressAI architecture {arch!r}")
        if weights not in ("pretrained", "random"):
            raise UserError(f"weights must be 'pretrained' or 'random', not {weights!r}")
        if weights == "random" and checkpoint:
            raise UserError("--weights random and --checkpoint contradict each other; give one")
        self.name = arch
        self.arch, self.metric, self.weights = arch, metric, weights
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.device = default_device(device)
        qualities, self.latent_stride = ARCHITECTURES[arch]
        self.memory_mb_per_mp = ZOO_MEMORY_MB_PER_MP.get(arch)
        self.version = "cai" + ".".join(compressai.__version__.split(".")[:2])
        self.description = f"CompressAI {arch} ({metric}), one model per quality"
        self.rate_control = RateControl("quality", (1, qualities), True, tuple(range(1, qualities + 1)))
        self._models: dict[int, torch.nn.Module] = {}
        self._hashes: dict[int, bytes] = {}

    # -- weights -------------------------------------------------------------------------------------
    def model(self, quality: int) -> torch.nn.Module:
        if quality not in self._models:
            net = self._build(quality).to(self.device).eval()
            entropy_guard.guard(net, {"entropy_bottleneck": "main" if self.latent_stride == 16 else "hyper",
                                      "gaussian_conditional": "main"})
            self._models[quality] = net
            self._hashes[quality] = tensor_hash(net.state_dict())
        return self._models[quality]

    def _build(self, quality: int) -> torch.nn.Module:
        from compressai.zoo import image as zoo
        from compressai.zoo.pretrained import load_pretrained

        arch_cls = zoo.model_architectures[self.arch]
        if self.weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(quality)
                net = arch_cls(*zoo.cfgs[self.arch][quality])
            net.update(force=True)
            return net
        state = load_checkpoint(self._checkpoint_file(quality, zoo))
        try:
            net = arch_cls.from_state_dict(load_pretrained(state))
            net.update(force=True)
            widths = (net.N, net.M) if hasattr(net, "M") else (net.N,) if hasattr(net, "N") else None
        except Exception as exc:
            raise UserError(f"checkpoint does not fit {self.arch} quality {quality} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]})") from None
        # CompressAI sizes its models by quality; a checkpoint of another size is another quality
        if widths is not None and tuple(widths) != tuple(zoo.cfgs[self.arch][quality]):
            raise UserError(f"checkpoint has channel widths {widths}, but {self.arch} quality {quality} "
                            f"has {zoo.cfgs[self.arch][quality]}: wrong quality for this checkpoint?")
        return net

    def _checkpoint_file(self, quality: int, zoo) -> Path:
        url = zoo.model_urls[self.arch][self.metric][quality]
        filename = url.rsplit("/", 1)[1]
        if self.checkpoint is not None:
            if self.checkpoint.is_dir():
                found = self.checkpoint / filename
                if not found.is_file():
                    raise UserError(f"checkpoint folder {self.checkpoint} has no {filename}")
                return found
            return self.checkpoint
        cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
        if cached.is_file():
            return cached
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(cached), progress=False)
        except Exception as exc:
            raise UserError(
                f"cannot download {self.arch} quality {quality} weights from {url} ({type(exc).__name__}); "
                f"offline? put {filename} in {cached.parent}, or pass --checkpoint FILE_OR_FOLDER, "
                f"or --weights random for untrained weights") from None
        return cached

    def weights_hash(self, rate: dict) -> bytes:
        self.model(rate["quality"])
        return self._hashes[rate["quality"]]

    # -- training (TrainableCodec) ----------------------------------------------------------------
    def trainable_module(self, quality: int | None = None) -> torch.nn.Module:
        if quality is None:
            raise UserError(f"codec {self.name!r} is quality-indexed: name the quality to train")
        return self.model(quality)

    def forward(self, x: torch.Tensor, quality: int, beta: float = 1.0) -> dict:
        """x in [0,1], Nx3xHxW with H, W divisible by 64: returns x_hat and the likelihoods (no beta)."""
        return self.model(quality)(x)

    def fresh_module(self, module: torch.nn.Module, seed: int) -> torch.nn.Module:
        """The architecture at ``module``'s channel widths (a shipped model's may be the zoo's or smaller)."""
        widths = (module.N, module.M) if hasattr(module, "M") else (module.N,)
        return seeded(seed, lambda: type(module)(*map(int, widths)))

    def estimate_bits(self, image: np.ndarray, rate: dict) -> float:
        """Bits the entropy model expects for this image (Le §5.4: compare with the real file size)."""
        return self.estimate_bits_batch([image], rate)[0]

    def estimate_bits_batch(self, images: list[np.ndarray], rate: dict) -> list[float]:
        """``estimate_bits`` for equal-sized images, in one forward pass."""
        net = self.model(rate["quality"])
        with torch.no_grad():
            out = net(pad(to_tensors(images, self.device)))
        return [float(b) for b in sum(-torch.log2(v).flatten(1).sum(1) for v in out["likelihoods"].values())]

    # -- coding ----------------------------------------------------------------------------------
    def _stream_names(self) -> list[str]:
        return ["main", "hyper"][: 1 if self.latent_stride == 16 else 2]

    def encode_streams(self, image, rate):
        return self.encode_streams_batch([image], rate)[0]

    def encode_streams_batch(self, images, rate):
        net = self.model(rate["quality"])
        files = []
        for im in images:  # one pass per image: a batched pass rounds differently (see decode_streams_batch)
            with torch.no_grad():
                out = net.compress(pad(to_tensors([im], self.device)))
            # CompressAI returns one list per stream, each with one string per image
            files.append({name: strings[0] for name, strings in zip(["main", "hyper"], out["strings"])})
        return files

    def decode_streams(self, streams, rate, width, height):
        return self.decode_streams_batch([streams], rate, width, height)[0]

    def decode_streams_batch(self, streams, rate, width, height):
        net = self.model(rate["quality"])
        expected = self._stream_names()
        s = self.latent_stride
        shape = ((height + PAD_TO - 1) // PAD_TO * PAD_TO // s, (width + PAD_TO - 1) // PAD_TO * PAD_TO // s)
        checked = []  # per file, its strings in `expected` order ("main" first)
        for one in streams:
            if sorted(one) != sorted(expected):
                raise BitstreamError(f"{self.name} needs streams {expected}, got {sorted(one)}")
            # the stream the header's size alone determines is checked before the model allocates its latent
            entropy_guard.check_bottleneck(net.entropy_bottleneck, one[expected[-1]], shape, f"stream {expected[-1]!r}")
            strings = [one[n] for n in expected]
            if hasattr(net, "context_prediction"):
                # mbt2018 and cheng2020 decode "main" position by position with their own rANS decoder,
                # which no guard sits in front of: padding keeps its reads inside the buffer
                y_symbols = net.M * shape[0] * 4 * shape[1] * 4
                strings[0] = entropy_guard.padded(entropy_guard.check_words(one["main"], "stream 'main'"), y_symbols)
            checked.append(strings)
        # every file is checked first; then one synthesis pass per file: oneDNN's convolutions round
        # differently at other batch sizes (±1 at a pixel or two of a batched decode), and a file's pixels
        # must not depend on which files were decoded with it (or on --workers)
        decoded = []
        for strings in checked:
            with torch.no_grad():
                x_hat = net.decompress([[one] for one in strings], shape)["x_hat"]
            decoded.append(to_images(x_hat[..., :height, :width])[0])
        return decoded


class ShippedCompressAICodec(CompressAICodec):
    """A CompressAI architecture trained by icm and shipped in configs/codecs/<name>/quality<q>.pth,
    with its own channel widths (small models for the built-in benchmark). Reproduce with `icm train`
    and configs/train/icm_hyperprior_mse_q*.toml; other weights via ``checkpoint`` (a folder with the
    same file names)."""

    def __init__(self, name: str, arch: str, qualities: int, checkpoint: str | None = None,
                 device: str | None = None, description: str = "", memory_mb_per_mp: float | None = None):
        super().__init__(arch, checkpoint=checkpoint, device=device)
        from icm.paths import configs_dir

        self.name = name
        self.folder = Path(checkpoint) if checkpoint else configs_dir() / "codecs" / name
        if memory_mb_per_mp:  # narrower than the zoo's models: measured for these widths
            self.memory_mb_per_mp = memory_mb_per_mp
        self.rate_control = RateControl("quality", (1, qualities), True, tuple(range(1, qualities + 1)))
        self.description = description

    def unavailable_reason(self):
        missing = [q for q in range(1, self.rate_control.values[1] + 1) if not (self.folder / f"quality{q}.pth").is_file()]
        return f"no weights in {self.folder} for qualities {missing} (reinstall icm, or pass --checkpoint FOLDER)" if missing else None

    def checkpoint_options(self, weights_file, quality, folder, write):
        """A folder of quality<q>.pth for every quality: the candidate, and the shipped others."""
        for q in range(1, self.rate_control.values[1] + 1) if write else ():
            src = weights_file if q == quality else self.folder / f"quality{q}.pth"
            if src.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, folder / f"quality{q}.pth")
        return {"checkpoint": str(folder)}

    def _build(self, quality: int) -> torch.nn.Module:
        from compressai.zoo import image as zoo

        path = self.folder / f"quality{quality}.pth"
        state = load_checkpoint(path)
        try:
            net = zoo.model_architectures[self.arch].from_state_dict(state)
            net.update(force=True)
        except Exception as exc:
            raise UserError(f"{path} does not fit {self.arch} ({type(exc).__name__})") from None
        return net
