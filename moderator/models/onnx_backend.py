"""ONNX Runtime inference of open_clip's image and text towers: the CPU backend.

Each tower is exported from the loaded open_clip model (any name, pretrained tag or
checkpoint) with `torch.onnx.export` on first use and cached on disk. A cached graph is
named by, and carries in its metadata, the key it was built for: the model id, a digest
of the weights (every state_dict tensor's bytes), the tower, the precision and the export
settings (opset, torch and onnxruntime versions, this module's EXPORT_VERSION). A graph
whose key does not match, or that does not load, is rebuilt, never used. Files are written
to a temporary name and renamed into place, under a lock file, so concurrent processes
never read a half-written graph and do not export the same one twice.

Before a new graph is cached it is checked against the PyTorch model on a probe batch:
fp32 must agree to cosine FP32_MIN_COSINE (which is what lets ONNX fp32 embeddings keep
PyTorch's model id), int8 (onnxruntime's dynamic QInt8 quantisation of the fp32 graph) to
INT8_MIN_COSINE. A graph that fails is an ExportFailed, like an architecture that does not
export; the caller then falls back to PyTorch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from platformdirs import user_cache_dir

EXPORT_VERSION = 1  # bump when the export code changes what a graph computes
OPSET = 17
FP32_MIN_COSINE = 0.99999
INT8_MIN_COSINE = 0.95  # on the probe (random pixels); real photos measure ~0.9998: a broken graph is near 0
METADATA_KEY = "moderator_export_key"
_PROBE_TEXTS = ["a photo of a cat", "moderator checks that the exported text tower agrees"]

log = logging.getLogger(__name__)


class ExportFailed(Exception):
    """A tower could not be exported, quantised or loaded, or disagrees with PyTorch: use PyTorch."""


def default_cache_dir() -> Path:
    return Path(user_cache_dir("moderator", appauthor=False)) / "onnx"


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every state_dict tensor (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportKey:
    model_id: str
    weights: str  # weights_digest of the fp32 model
    tower: str  # "image" or "text"
    precision: str  # "fp32" or "int8"
    opset: int = OPSET
    torch_version: str = torch.__version__
    onnxruntime_version: str = ""
    export_version: int = EXPORT_VERSION

    def text(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def file_name(self) -> str:
        return f"{hashlib.sha256(self.text().encode()).hexdigest()[:32]}-{self.tower}-{self.precision}.onnx"


class OrtTower:
    """One tower's onnxruntime session: an array in, float32 features out."""

    def __init__(self, session: Any, path: Path) -> None:
        self.session = session
        self.path = path  # the graph file (cached)
        self.input_name = session.get_inputs()[0].name

    def __call__(self, array: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: array})[0]
        return np.asarray(out, dtype=np.float32)


@dataclass
class OnnxTowers:
    image: OrtTower
    text: OrtTower
    precision: str  # of the image tower; the text tower is always fp32


def load_towers(
    model: torch.nn.Module,
    model_id: str,
    *,
    image_size: int,
    tokenizer: Any,
    int8: bool,
    cache_dir: Path | None = None,
    threads: int = 0,
) -> OnnxTowers:
    """Sessions for the image tower (fp32 or int8) and the fp32 text tower, exported if not cached."""
    import onnxruntime as ort

    directory = cache_dir or default_cache_dir()
    weights = weights_digest(model)
    pixels = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    tokens = tokenizer(_PROBE_TEXTS)

    def key(tower: str, precision: str) -> ExportKey:
        return ExportKey(model_id, weights, tower, precision, onnxruntime_version=ort.__version__)

    def agrees(tower: str, probe: torch.Tensor, bar: float) -> Any:
        def check(session: OrtTower) -> None:
            with torch.no_grad():
                expected = _Tower(model, tower)(probe)
            _check_agrees(session(probe.numpy()), expected.float().numpy(), tower, bar)

        return check

    export_image = _exporter(model, "image", pixels)
    if int8:
        build, bar = _quantiser(export_image, "image"), INT8_MIN_COSINE
    else:
        build, bar = export_image, FP32_MIN_COSINE
    image = _cached_or_built(
        directory, key("image", "int8" if int8 else "fp32"), threads, build, agrees("image", pixels, bar)
    )
    text = _cached_or_built(
        directory,
        key("text", "fp32"),
        threads,
        _exporter(model, "text", tokens),
        agrees("text", tokens, FP32_MIN_COSINE),
    )
    return OnnxTowers(image=image, text=text, precision="int8" if int8 else "fp32")


def session_options(threads: int) -> Any:
    """Intra-op threads as configured (0: onnxruntime's choice, one per core), nothing else in parallel.

    Spinning is off: idle intra-op threads would otherwise busy-wait on the cores the decode
    threads need between model batches.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings are about graph details, not ours
    return options


_sessions: dict[tuple[str, int], OrtTower] = {}  # one session per graph file and thread count, per process
Build = Callable[[Path], None]
Check = Callable[[OrtTower], None]


def _cached_or_built(directory: Path, key: ExportKey, threads: int, build: Build, check: Check) -> OrtTower:
    """The tower for `key`: from the cache when its file is there and carries `key`, else built and cached."""
    path = directory / key.file_name()
    memo = (str(path), threads)
    if memo not in _sessions:
        tower = _open_matching(path, key, threads)
        if tower is None:
            try:
                with _file_lock(path.with_suffix(".lock")):
                    tower = _open_matching(path, key, threads)  # another process may have built it meanwhile
                    if tower is None:
                        tower = _build(path, key, threads, build, check)
            except OSError as exc:
                raise ExportFailed(f"cannot write the ONNX cache in {directory}: {exc}") from exc
        _sessions[memo] = tower
    return _sessions[memo]


def _build(path: Path, key: ExportKey, threads: int, build: Build, check: Check) -> OrtTower:
    """Export (or quantise) to a temporary file, stamp and check it, then rename it into place."""
    log.info("exporting the %s tower of %s to ONNX (%s) into %s", key.tower, key.model_id, key.precision, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        build(tmp)
        _stamp(tmp, key)
        tower = _open_matching(tmp, key, threads)
        if tower is None:
            raise ExportFailed(f"onnxruntime cannot load the exported {key.tower} graph")
        check(tower)
        os.replace(tmp, path)  # atomic: a reader sees the old file, no file, or the whole new one
        tower.path = path
    finally:
        tmp.unlink(missing_ok=True)
    return tower


def _open_matching(path: Path, key: ExportKey, threads: int) -> OrtTower | None:
    import onnxruntime as ort

    if not path.is_file():
        return None
    try:
        session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception:  # unreadable or not a graph: rebuilt
        return None
    if session.get_modelmeta().custom_metadata_map.get(METADATA_KEY) != key.text():
        return None  # built for other weights or settings: rebuilt, never used
    return OrtTower(session, path)


def _exporter(model: torch.nn.Module, tower: str, probe: torch.Tensor) -> Build:
    def build(tmp: Path) -> None:
        wrapper = _Tower(model, tower)
        input_name = "pixels" if tower == "image" else "tokens"
        try:
            # Traced with grad enabled: under no_grad, nn.MultiheadAttention takes a fused fast path
            # (aten::_native_multi_head_attention) that has no ONNX form.
            with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
                warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
                torch.onnx.export(
                    wrapper,
                    (probe,),
                    str(tmp),
                    input_names=[input_name],
                    output_names=["features"],
                    dynamic_axes={input_name: {0: "batch"}, "features": {0: "batch"}},
                    opset_version=OPSET,
                    dynamo=False,  # the TorchScript exporter: no onnxscript needed, and it handles open_clip
                    do_constant_folding=True,
                )
        except Exception as exc:
            raise ExportFailed(f"torch.onnx.export of the {tower} tower failed: {_first_line(exc)}") from exc

    return build


def _quantiser(export_fp32: Build, tower: str) -> Build:
    """int8: onnxruntime's dynamic QInt8 quantisation of a freshly exported fp32 graph."""

    def build(tmp: Path) -> None:
        fp32 = tmp.with_name(tmp.name + ".fp32")
        try:
            export_fp32(fp32)
            from onnxruntime.quantization import QuantType, quantize_dynamic

            logging.disable(logging.WARNING)  # "consider pre-processing": advice for static quantisation
            try:
                quantize_dynamic(fp32, tmp, weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
        except ExportFailed:
            raise
        except Exception as exc:
            raise ExportFailed(f"int8 quantisation of the {tower} tower failed: {_first_line(exc)}") from exc
        finally:
            fp32.unlink(missing_ok=True)

    return build


class _Tower(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, tower: str) -> None:
        super().__init__()
        self.model = model
        self.tower = tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encode = self.model.encode_image if self.tower == "image" else self.model.encode_text
        return encode(x)  # type: ignore[operator, no-any-return]


def _stamp(path: Path, key: ExportKey) -> None:
    """Write the key into the graph's metadata, so a file is only ever used for what it was built for."""
    try:
        import onnx
    except ImportError as exc:
        raise ExportFailed("the onnx package is missing (pip install onnx)") from exc
    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, key.text()
    onnx.save(graph, str(path))


def _check_agrees(got: np.ndarray, want: np.ndarray, tower: str, bar: float) -> None:
    if got.shape != want.shape or not np.isfinite(got).all():
        raise ExportFailed(f"the ONNX {tower} tower gives shape {got.shape} where PyTorch gives {want.shape}")
    cosine = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
    if float(cosine.min()) < bar:
        raise ExportFailed(
            f"the ONNX {tower} tower disagrees with PyTorch (minimum cosine {float(cosine.min()):.6f} < {bar})"
        )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (POSIX flock); without fcntl, none (renames keep files whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
