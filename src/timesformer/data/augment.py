"""Training augmentation on Kornia: every frame of a clip gets the same random draw.

- ``TrainTransform``: the official scale jitter (short side to a random size in ``scale``) and a random
  ``crop_size`` crop, as one ``crop_and_resize`` of the decoded frames; then, in the loader, ``ClipAugment``; then
  normalisation. ``__call__(uint8 t c H W, generator) -> float t c S S``.
- ``ClipAugment``: RandAugment (``n`` ops of magnitude ``m`` on timm's and PySlowFast's scale of 10, as their
  recipes), horizontal flip and RandomErasing on ``b t c S S`` clips in ``[0, 1]``, one draw per clip for all of
  its frames: the parameters are drawn for one image and repeated over the clip's ``t`` frames. In the loader or on
  the training device, per batch (``data.augment_on``), where ``normalized`` takes the normalised clips the loader
  gives.
- ``BatchMix``: MixUp or CutMix of a batch (Kornia's ``RandomMixUpV2`` / ``RandomCutMixV2``), one mix for the
  whole clip (its frames stacked as channels, so a CutMix box cuts every frame alike), and the targets mixed alike:
  soft class probabilities, or mixed multi-hot vectors for multi-label data.

Every random draw comes from a seed the caller gives (the item's generator, or the run's seed with the epoch and
batch), inside ``torch.random.fork_rng``: a resumed run draws the same, and the global RNG that dropout uses is
left as it was.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..errors import UserError
from .transforms import OFFICIAL_MEAN, OFFICIAL_STD, normalize


@contextlib.contextmanager
def _seeded(seed: int):
    """The global CPU RNG (where Kornia draws its parameters) starts at ``seed``, and is restored after; the CUDA
    generators (dropout's on a GPU) are not touched (``torch.manual_seed`` would reseed them)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


class TrainTransform:
    """Scale jitter and crop (``scale``: the short side's range; ``crop_size``), ``augment`` (a ``ClipAugment``, or
    None where it runs on the device), then normalisation. ``__call__(uint8 t c H W, generator) -> float t c S S``."""

    def __init__(
        self,
        *,
        crop_size: int,
        scale: tuple[int, int] = (256, 320),
        augment: ClipAugment | None = None,
        mean=OFFICIAL_MEAN,
        std=OFFICIAL_STD,
    ):
        if scale[0] < crop_size or scale[1] < scale[0]:
            raise UserError(f"scale must be (min, max) with crop_size {crop_size} <= min <= max; got {scale}")
        self.crop_size, self.scale, self.augment = crop_size, tuple(scale), augment
        self.mean, self.std = mean, std

    def box(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[float, float, float]:
        """``(top, left, side)`` in the frames' pixels of the crop that resizing the short side to a random size in
        ``scale`` and cropping ``crop_size`` at a random place would take."""
        short = int(torch.randint(self.scale[0], self.scale[1] + 1, (1,), generator=generator))
        factor = min(height, width) / short  # frame pixels per pixel of the resized frame
        h, w = round(height / factor), round(width / factor)
        top = int(torch.randint(0, h - self.crop_size + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - self.crop_size + 1, (1,), generator=generator))
        return top * factor, left * factor, self.crop_size * factor

    def __call__(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        from kornia.geometry.transform import crop_and_resize

        t, _, height, width = video.shape
        top, left, side = self.box(height, width, generator)
        last = side - 1  # corners at pixel centres: x from left to left + side - 1
        corners = torch.tensor([[left, top], [left + last, top], [left + last, top + last], [left, top + last]])
        size = (self.crop_size, self.crop_size)
        video = crop_and_resize(video.float() / 255.0, corners.expand(t, 4, 2).float(), size, align_corners=True)
        if self.augment is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            video = self.augment(video[None], seed)[0]
        return normalize(video * 255.0, self.mean, self.std)


class ClipAugment:
    """RandAugment (``randaugment_n`` ops at magnitude ``randaugment_m`` of 10; 0 ops: none), horizontal flip
    (``flip``) and RandomErasing (probability ``erase_prob``) on ``b t c S S`` clips in ``[0, 1]``: a draw per clip,
    the same for every frame of it. ``__call__(clips, seed) -> clips``."""

    def __init__(self, *, flip: bool = True, randaugment_n: int = 0, randaugment_m: int = 9, erase_prob: float = 0.0):
        if not 0 <= erase_prob <= 1 or not 0 <= randaugment_n <= 15 or not 0 < randaugment_m < 10:
            raise UserError(
                f"augmentation: randaugment_n in [0, 15], randaugment_m in (0, 10) and erase_prob in [0, 1]; got "
                f"{randaugment_n}, {randaugment_m}, {erase_prob}"
            )
        self.sequence, self._stats = None, {}
        if not (randaugment_n or flip or erase_prob):
            return
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment

        ops = []
        if randaugment_n:  # m on timm's and PySlowFast's scale of 10; Kornia's is 30
            ops.append(RandAugment(n=randaugment_n, m=3 * randaugment_m))
        if flip:
            ops.append(K.RandomHorizontalFlip())
        if erase_prob:
            ops.append(K.RandomErasing(p=erase_prob))
        self.sequence = K.ImageSequential(*ops)

    def __bool__(self) -> bool:
        return self.sequence is not None

    def normalized(self, clips: torch.Tensor, seed: int, mean, std) -> torch.Tensor:
        """``__call__`` on clips normalised with ``mean``/``std`` (what loaders give), normalised again after."""
        key = (tuple(mean), tuple(std), clips.device, clips.dtype)
        if key not in self._stats:  # once per device: a copy each batch would wait for the GPU
            self._stats[key] = [torch.tensor(v, dtype=clips.dtype).view(-1, 1, 1).to(clips.device) for v in key[:2]]
        mean, std = self._stats[key]
        return (self(clips * std + mean, seed) - mean) / std

    def __call__(self, clips: torch.Tensor, seed: int) -> torch.Tensor:
        if self.sequence is None:
            return clips
        b, t, c, h, w = clips.shape
        out = []
        for i, clip in enumerate(clips):  # a draw per clip (RandAugment picks its ops once per call)
            with _seeded(hash((seed, i)) & (2**62 - 1)):  # drawn for one image; applied to the clip's t frames
                params = self.sequence.forward_parameters(torch.Size([1, c, h, w]))
                out.append(self.sequence(clip, params=_per_frame(params, 1, t, clips.device)))
        return torch.stack(out)


def _per_frame(params: list, b: int, t: int, device: torch.device) -> list:
    """Kornia's parameters drawn for ``b`` images, each repeated for the ``t`` frames of its clip."""
    from kornia.augmentation.container.params import ParamItem

    out = []
    for item in params:
        data = item.data
        if isinstance(data, list):
            data = _per_frame(data, b, t, device)
        elif isinstance(data, dict):
            data = {key: _repeat(key, value, b, t, device) for key, value in data.items()}
        out.append(ParamItem(item.name, data))
    return out


def _repeat(key: str, value, b: int, t: int, device: torch.device):
    if not torch.is_tensor(value):
        return value
    if key == "forward_input_shape":
        return torch.tensor([b * t, *value[1:].tolist()])
    if value.ndim and value.shape[0] == b:
        value = value.repeat_interleave(t, 0)
    return value.to(device, non_blocking=True)


class BatchMix:
    """MixUp or CutMix a batch with probability ``prob``; of the mixed batches, a share ``cutmix_share`` is cut
    rather than mixed. ``__call__(video b t c S S, targets b k, seed) -> (video, targets)``: ``targets`` soft
    class probabilities or multi-hot vectors (``soft_targets``), mixed as the clips are."""

    def __init__(self, prob: float = 0.0, cutmix_share: float = 0.5):
        if not 0 <= prob <= 1 or not 0 <= cutmix_share <= 1:
            raise UserError(f"mixup and cutmix_share must be in [0, 1]; got {prob}, {cutmix_share}")
        self.prob, self.cutmix_share = prob, cutmix_share
        self.mixup = self.cutmix = None

    def __bool__(self) -> bool:
        return self.prob > 0

    def __call__(self, video: torch.Tensor, targets: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.prob:
            return video, targets
        import kornia.augmentation as K

        b, t, c, h, w = video.shape
        with _seeded(seed):
            mix, cut = torch.rand(2).tolist()
            if mix >= self.prob:
                return video, targets
            if cut < self.cutmix_share:
                if self.cutmix is None:
                    self.cutmix = K.RandomCutMixV2(p=1.0, data_keys=["input", "class"], use_correct_lambda=True)
                op = self.cutmix
            else:
                if self.mixup is None:
                    self.mixup = K.RandomMixUpV2(p=1.0, data_keys=["input", "class"])
                op = self.mixup
            # the batch's own indices as the "labels": Kornia hands back each clip's partner and its weight
            mixed, pairs = op(video.reshape(b, t * c, h, w), torch.arange(b, dtype=video.dtype, device=video.device))
        pairs = pairs.reshape(b, 3)
        partner, weight = pairs[:, 1].long(), pairs[:, 2].to(targets.dtype).unsqueeze(1)
        if op is self.cutmix:  # the weight is the clip's own share of the pixels
            targets = weight * targets + (1 - weight) * targets[partner]
        else:  # MixUp: the weight is the partner's share
            targets = (1 - weight) * targets + weight * targets[partner]
        return mixed.reshape(b, t, c, h, w), targets


def soft_targets(label: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """``b k`` float targets: class indices ``b`` as one-hot probabilities, smoothed as ``cross_entropy``'s
    ``label_smoothing`` smooths; multi-hot ``b k`` (multi-label) as they are."""
    if label.ndim == 1:
        return F.one_hot(label, num_classes).float() * (1 - smoothing) + smoothing / num_classes
    return label.float()
