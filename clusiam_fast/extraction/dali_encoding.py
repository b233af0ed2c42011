"""``extract --loader dali``: a slide's patches through a one-view DALI pipeline into the encoder.

The pipeline is the two-view training pipeline's front without its augmentation: patches of
``output_size`` (decoded on the CPU, or on the GPU by cuCIM with ``--decode-device cuda``)
enter through ``external_source``, are resized (shorter side, antialiased, ``--resize``),
centre-cropped (``--crop``) and normalised to CHW float, as
:func:`~clusiam_fast.extraction.normalisation.build_transform` does with torchvision. With a
CUDA ``--device`` it runs on the GPU (GPU-decoded patches never visit the host); on the CPU
it runs on DALI's CPU threads (``device_id=None``).

A :class:`~clusiam_fast.data.read_ahead.ReadAhead` thread reads ``READ_AHEAD`` batches ahead
of the pipeline. A batch that cannot be read is read patch by patch; a patch that fails is
left out of its bag and named, as in the torch path.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.read_ahead import DEFAULT_DEPTH, ReadAhead
from ..data.tolerant import describe_error

READ_AHEAD = DEFAULT_DEPTH  # batches; memory: (READ_AHEAD + 1) x batch x output_size^2 x 3 bytes
_INTERP = {"bilinear": "INTERP_LINEAR", "bicubic": "INTERP_CUBIC", "nearest": "INTERP_NN"}


def check_dali_extract(source_kind: str, engine: str, decode_device: str, device: str, interpolation: str) -> None:
    """ValueError unless ``--loader dali`` can run this extraction (one line naming the flag to change)."""
    if source_kind not in ("manifest", "coords"):
        raise ValueError(
            "--loader dali reads patches from slides (a tiler manifest or coordinate files); "
            "DATA is a folder of images: use --loader torch"
        )
    if engine != "local":
        raise ValueError("--loader dali runs with --engine local; use --loader torch with --engine ray")
    if decode_device == "cuda" and not device.startswith("cuda"):
        raise ValueError("--decode-device cuda with --loader dali feeds a GPU pipeline: use --device cuda")
    if interpolation not in _INTERP:
        raise ValueError(f"--loader dali resizes with {', '.join(_INTERP)}, not {interpolation!r}; use --loader torch")


def _one_view_graph(gpu: bool, patches_on_gpu: bool, resize, crop, mean, std, interpolation: str):
    from nvidia.dali import fn, types

    patches = fn.external_source(
        name="patches", device="gpu" if patches_on_gpu else "cpu", dtype=types.UINT8, ndim=3, layout="HWC"
    )
    if gpu and not patches_on_gpu:
        patches = patches.gpu()
    if resize:
        patches = fn.resize(
            patches, resize_shorter=resize, interp_type=getattr(types, _INTERP[interpolation]), antialias=True
        )
    return fn.crop_mirror_normalize(
        patches,
        crop=(crop, crop) if crop else None,
        mean=[255.0 * m for m in mean],
        std=[255.0 * s for s in std],
        dtype=types.FLOAT,
        output_layout="CHW",
    )


class DaliPatchPipeline:
    """Raw patches (HWC uint8, one size) -> normalised NCHW float tensors, by one DALI pipeline.

    ``device``: the encoder's device (cuda[:N] runs the pipeline on that GPU, else DALI's CPU
    threads); ``decode_device``: where the patches it is fed live (cuda: torch CUDA tensors).
    """

    def __init__(self, spec, decode_device: str = "cpu", num_threads: int = 2) -> None:
        from nvidia.dali import pipeline_def

        self.gpu = spec.device.startswith("cuda")
        self.device_id = (torch.device(spec.device).index or 0) if self.gpu else None
        build = pipeline_def(_one_view_graph)
        self.pipe = build(
            self.gpu,
            decode_device == "cuda",
            spec.resize,
            spec.crop,
            list(spec.mean),
            list(spec.std),
            spec.interpolation,
            batch_size=spec.batch_size,
            num_threads=max(1, num_threads),
            device_id=self.device_id,
            prefetch_queue_depth=1,
        )
        self.pipe.build()

    def __call__(self, patches: list) -> torch.Tensor:
        from ..data.dali import dali_to_torch

        if isinstance(patches[0], torch.Tensor):  # decoded on the GPU: DALI orders its copy after this stream
            batch = torch.stack(patches)
            self.pipe.feed_input("patches", batch, layout="HWC", cuda_stream=torch.cuda.current_stream().cuda_stream)
        else:
            self.pipe.feed_input("patches", np.stack(patches), layout="HWC")
        (out,) = self.pipe.run()
        zero_copy = bool(getattr(self.pipe, "exec_dynamic", False))
        return dali_to_torch(out, gpu=self.gpu, device_id=self.device_id, dtype=torch.float32, zero_copy=zero_copy)


def read_patches(dataset, indices: list[int]) -> tuple[list, list[int], list[tuple[int, str]]]:
    """Patches ``indices`` of a ``SlidePatchDataset`` -> (patches, their indices, [(index, error)] of failures)."""
    try:
        return dataset.read_batch(indices), list(indices), []
    except Exception:
        pass
    patches, good, failed = [], [], []
    for i in indices:
        try:
            patches.append(dataset.read_batch([i])[0])
            good.append(i)
        except Exception as error:  # one bad patch never stops the slide: named, left out
            failed.append((i, describe_error(error)))
    return patches, good, failed


def encode_slide_with_dali(local, pipeline: DaliPatchPipeline, start: int, stop: int, dataset) -> None:
    """Encode patches ``start:stop`` (one slide) of ``dataset``: read ahead, DALI, encoder, bag writer."""
    step = local.spec.batch_size
    starts = list(range(start, stop, step))
    ahead = ReadAhead(
        lambda k: read_patches(dataset, list(range(starts[k], min(starts[k] + step, stop)))),
        READ_AHEAD,
        stop=len(starts),
    )
    try:
        for k in range(len(starts)):
            patches, good, failed = ahead(k)
            images = pipeline(patches) if patches else None
            local.bar.update(local.add(images, np.asarray(good, dtype=np.int64), failed))
    finally:
        ahead.close()
