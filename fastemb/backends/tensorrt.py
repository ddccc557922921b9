"""TensorRT runtime backend for a bundle's ``model.plan``.

Needs ``tensorrt`` and ``cuda-python`` (``pip install 'fastemb[tensorrt]'``), never torch. Before
the plan is deserialized, its metadata (``model.plan.json``) is checked against this GPU and this
TensorRT: an engine holds kernels chosen for one GPU and one TensorRT release. Tensors are bound
by name; one device buffer per input and output is allocated for the profile's largest shape and
reused; the input shapes are set per batch. A batch larger than the profile is split, a sequence
longer than the profile is refused (see :mod:`fastemb.backends.profiles`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from fastemb.backends.profiles import (
    EngineMeta,
    Profile,
    ProfileError,
    Range,
    check_engine,
    meta_path,
    pad_feed,
)


def require_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as e:
        raise ImportError(f"running a TensorRT plan needs tensorrt: pip install 'fastemb[tensorrt]' ({e})") from None
    return tensorrt


class CudaRuntime:
    """The few CUDA runtime calls the backend makes, through cuda-python (no torch)."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart  # cuda-python < 12.6
            except ImportError as e:
                raise ImportError(f"running a TensorRT plan needs cuda-python: pip install 'fastemb[tensorrt]' ({e})") from None
        self.rt = cudart

    def _check(self, result: tuple) -> Any:
        err, *rest = result
        if err != self.rt.cudaError_t.cudaSuccess:
            name = self.rt.cudaGetErrorName(err)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
            raise RuntimeError(f"CUDA error {name}: {self.rt.cudaGetErrorString(err)[1]!r}")
        return rest[0] if len(rest) == 1 else (tuple(rest) or None)

    def device(self) -> tuple[str, str]:
        """This process's current GPU: (name, compute capability "major.minor")."""
        count = self._check(self.rt.cudaGetDeviceCount())
        if not count:
            raise RuntimeError("a TensorRT plan needs a CUDA GPU, and this machine has none")
        prop = self._check(self.rt.cudaGetDeviceProperties(self._check(self.rt.cudaGetDevice())))
        name = prop.name.split(b"\0", 1)[0].decode() if isinstance(prop.name, bytes) else str(prop.name)
        return name, f"{prop.major}.{prop.minor}"

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(1, nbytes))))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr))

    def stream(self) -> Any:
        return self._check(self.rt.cudaStreamCreate())

    def htod(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))

    def dtoh(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))

    def sync(self, stream: Any) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream))


class TensorRTBackend:
    """One TensorRT engine with one execution context and its reused device buffers."""

    provider = "TensorRT"

    def __init__(self, plan: str | Path, on_large_batch: Literal["split", "raise"] = "split") -> None:
        trt = require_tensorrt()
        cuda = CudaRuntime()
        meta = EngineMeta.load(meta_path(plan))
        gpu, cc = cuda.device()
        check_engine(meta, gpu, cc, trt.__version__, plan)
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)  # must outlive the engine
        engine = self._runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {plan} (see the TensorRT log above)")
        self._setup(trt, engine, cuda, on_large_batch)

    @classmethod
    def from_engine(cls, trt: Any, engine: Any, cuda: Any, on_large_batch: Literal["split", "raise"] = "split") -> TensorRTBackend:
        """A backend over an already deserialized engine (tests pass stand-ins for all three)."""
        self = cls.__new__(cls)
        self._setup(trt, engine, cuda, on_large_batch)
        return self

    def _setup(self, trt: Any, engine: Any, cuda: Any, on_large_batch: Literal["split", "raise"]) -> None:
        self.engine, self.cuda, self.on_large_batch = engine, cuda, on_large_batch
        self._buffers: dict[str, int] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if not self.inputs or not self.outputs:
            raise RuntimeError(f"engine has inputs {self.inputs} and outputs {self.outputs}; expected both")
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        mins, opts, maxs = (tuple(x) for x in engine.get_tensor_profile_shape(self.inputs[0], 0))
        self.profile = Profile(Range(mins[0], opts[0], maxs[0]), Range(mins[1], opts[1], maxs[1]))
        self.dims = {n: int(tuple(engine.get_tensor_shape(n))[-1]) for n in self.outputs}
        self.context = engine.create_execution_context()
        if self.context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = cuda.stream()
        rows, width = self.profile.batch.max, self.profile.seq.max
        for n in self.inputs:
            self._buffers[n] = cuda.malloc(rows * width * self.dtypes[n].itemsize)
        for n in self.outputs:
            self._buffers[n] = cuda.malloc(rows * self.dims[n] * self.dtypes[n].itemsize)
        for n, ptr in self._buffers.items():
            self.context.set_tensor_address(n, ptr)

    def run(self, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
        """Float32 ``[batch, dim]`` of ``output`` for int64 inputs ``[batch, seq]``."""
        if output not in self.outputs:
            raise ValueError(f"engine has no output {output!r} (outputs: {self.outputs})")
        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise ValueError(f"engine input(s) {missing} not in the feed (got {sorted(feed)})")
        rows, seq = feed[self.inputs[0]].shape
        out = np.empty((rows, self.dims[output]), dtype=np.float32)
        for chunk in self.profile.chunks(rows, seq, self.on_large_batch):
            part = pad_feed({n: feed[n] for n in self.inputs}, chunk)
            host = []  # keep the host arrays alive until the stream has copied them
            for n in self.inputs:
                a = np.ascontiguousarray(part[n], dtype=self.dtypes[n])
                if not self.context.set_input_shape(n, a.shape):
                    raise ProfileError(f"TensorRT refused shape {a.shape} for {n!r} (profile batch "
                                       f"{self.profile.batch.min}..{self.profile.batch.max}, sequence "
                                       f"{self.profile.seq.min}..{self.profile.seq.max})")
                self.cuda.htod(self._buffers[n], a, self.stream)
                host.append(a)
            if not self.context.execute_async_v3(self._stream_handle()):
                raise RuntimeError("TensorRT execution failed (see the TensorRT log above)")
            res = np.empty((chunk.rows, self.dims[output]), dtype=self.dtypes[output])
            self.cuda.dtoh(res, self._buffers[output], self.stream)
            self.cuda.sync(self.stream)
            out[chunk.start:chunk.stop] = res[: chunk.stop - chunk.start]
        return out

    def _stream_handle(self) -> int:
        s = self.stream
        return s if isinstance(s, int) else int(s)

    def close(self) -> None:
        for ptr in self._buffers.values():
            try:
                self.cuda.free(ptr)
            except Exception:  # noqa: BLE001 - at interpreter exit the CUDA context may be gone
                pass
        self._buffers = {}

    def __del__(self) -> None:
        if getattr(self, "_buffers", None):
            self.close()
