"""Accelerator kernels: CPU results against numpy, the registry, and CUDA under numba's simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from workers import _kernels as K

REPO = Path(__file__).resolve().parents[2]
REFERENCE_REDUCTIONS = {
    "sum": lambda x: x.sum(axis=1),
    "mean": lambda x: x.mean(axis=1),
    "min": lambda x: x.min(axis=1),
    "max": lambda x: x.max(axis=1),
    "rms": lambda x: np.sqrt(np.mean(x * x, axis=1)),
}


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


class TestFir:
    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    def test_matches_numpy_convolve_truncated_to_the_input_length(self, rng, dtype):
        x = rng.normal(size=(4, 300)).astype(dtype)
        h = rng.normal(size=17).astype(dtype)
        out = K.fir(x, h)
        assert out.dtype == dtype and out.shape == x.shape
        ref = np.stack([np.convolve(r.astype(np.float64), h.astype(np.float64))[:300] for r in x])
        np.testing.assert_allclose(out, ref, **_tol(dtype))

    def test_more_taps_than_samples_and_a_1d_input(self, rng):
        x = rng.normal(size=5)
        h = rng.normal(size=9)
        np.testing.assert_allclose(K.fir(x, h)[0], np.convolve(x, h)[:5])

    def test_writes_into_the_callers_out(self, rng):
        x = rng.normal(size=(2, 8))
        out = np.empty((2, 8))
        assert K.fir(x, [1.0], out) is out
        np.testing.assert_array_equal(out, x)

    @pytest.mark.parametrize(
        "x, h, out, error",
        [
            (np.zeros((2, 4), dtype=np.int64), [1.0], None, TypeError),
            (np.zeros((2, 2, 2)), [1.0], None, ValueError),
            (np.zeros((2, 4)), [], None, ValueError),
            (np.zeros((2, 4)), [1.0], np.zeros((2, 4), dtype=np.float32), TypeError),
            (np.zeros((2, 4)), [1.0], np.zeros((2, 5)), TypeError),
            (np.zeros((2, 4)), [1.0], np.zeros((4, 2)).T, ValueError),
        ],
    )
    def test_bad_arguments_raise(self, x, h, out, error):
        with pytest.raises(error):
            K.fir(x, h, out)


class TestMatvec:
    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    def test_matches_numpy(self, rng, dtype):
        a = rng.normal(size=(7, 33)).astype(dtype)
        x = rng.normal(size=(5, 33)).astype(dtype)
        out = K.matvec(a, x)
        assert out.dtype == dtype and out.shape == (5, 7)
        np.testing.assert_allclose(out, x.astype(np.float64) @ a.T.astype(np.float64), **_tol(dtype))

    def test_shape_mismatch_raises_value_error(self):
        with pytest.raises(ValueError):
            K.matvec(np.zeros((3, 4)), np.zeros((2, 5)))


class TestFft:
    @pytest.mark.parametrize("n", [2, 4, 8, 64, 1024])
    def test_complex_fft_matches_numpy(self, rng, n):
        x = rng.normal(size=(3, n)) + 1j * rng.normal(size=(3, n))
        np.testing.assert_allclose(K.fft(x), np.fft.fft(x, axis=1), rtol=1e-10, atol=1e-10 * n)

    @pytest.mark.parametrize("n", [2, 4, 16, 512])
    def test_real_fft_and_power_spectrum_match_numpy(self, rng, n):
        x = rng.normal(size=(3, n))
        ref = np.fft.rfft(x, axis=1)
        np.testing.assert_allclose(K.rfft(x), ref, rtol=1e-10, atol=1e-10 * n)
        np.testing.assert_allclose(K.power_spectrum(x), np.abs(ref) ** 2, rtol=1e-9, atol=1e-9 * n)

    def test_a_sine_on_a_bin_puts_all_power_in_that_bin(self):
        n = 256
        x = np.cos(2 * np.pi * 10 * np.arange(n) / n)
        p = K.power_spectrum(x)[0]
        assert int(np.argmax(p)) == 10
        assert p[10] == pytest.approx((n / 2) ** 2)
        assert p.sum() - p[10] < 1e-12 * p[10]

    def test_reused_twiddles_give_the_same_result(self, rng):
        x = rng.normal(size=(2, 128))
        tw = K.fft_twiddles(128)
        np.testing.assert_array_equal(K.rfft(x, twiddles=tw), K.rfft(x))
        with pytest.raises(ValueError):
            K.rfft(x, twiddles=K.fft_twiddles(64))

    @pytest.mark.parametrize("n", [1, 3, 12, 100])
    def test_lengths_that_are_not_powers_of_two_raise_value_error(self, n):
        with pytest.raises(ValueError):
            K.power_spectrum(np.zeros((1, n)))


class TestReductions:
    @pytest.mark.parametrize("op", K.REDUCTIONS)
    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    def test_match_numpy_per_row(self, rng, op, dtype):
        x = rng.normal(size=(6, 101)).astype(dtype)
        out = K.reduce_rows(x, op)
        assert out.dtype == np.float64 and out.shape == (6,)
        np.testing.assert_allclose(out, REFERENCE_REDUCTIONS[op](x.astype(np.float64)), rtol=1e-12, atol=1e-12)

    def test_unknown_op_and_empty_rows_raise_value_error(self):
        with pytest.raises(ValueError):
            K.reduce_rows(np.zeros((2, 3)), "median")
        with pytest.raises(ValueError):
            K.reduce_rows(np.zeros((2, 0)), "sum")


class TestRegistry:
    def test_every_kernel_runs_on_the_cpu_through_the_registry(self, rng):
        x = rng.normal(size=(3, 64))
        inputs = {
            "fir": (x, rng.normal(size=5)),
            "matvec": (rng.normal(size=(4, 64)), x),
            "fft": (x.astype(np.complex128),),
            "rfft": (x,),
            "power_spectrum": (x,),
        } | {op: (x,) for op in K.REDUCTIONS}
        assert set(inputs) == set(K.KERNELS)
        for name, args in inputs.items():
            spec = K.KERNELS[name]
            out = K.run_kernel(name, *args, device="cpu")
            assert out.shape == spec.out_shape(*args) and out.dtype == spec.out_dtype(*args), name
            np.testing.assert_array_equal(out, spec.cpu(*args))

    def test_cuda_paths_exist_for_fir_matvec_and_the_reductions(self):
        with_cuda = {name for name, spec in K.KERNELS.items() if spec.cuda is not None}
        assert with_cuda == {"fir", "matvec", *K.REDUCTIONS}

    def test_the_registry_cannot_be_modified(self):
        with pytest.raises(TypeError):
            K.KERNELS["x"] = K.KERNELS["fir"]  # type: ignore[index]

    def test_unknown_names_and_devices_raise(self):
        with pytest.raises(KeyError):
            K.run_kernel("conv3d", np.zeros((1, 4)))
        with pytest.raises(ValueError):
            K.run_kernel("sum", np.zeros((1, 4)), device="tpu")
        with pytest.raises(ValueError):
            K.run_kernel("fft", np.zeros((1, 4)), device="cuda")  # no CUDA path


# Runs in a fresh interpreter: NUMBA_ENABLE_CUDASIM must be set before numba.cuda is first
# imported. The simulator runs each GPU thread as a Python thread, so the blocks are small and
# the GIL switch interval short (the default 5 ms makes every syncthreads() cost ~10 ms).
_CUDA_SIM_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.setswitchinterval(1e-5)
    import numpy as np
    from workers import _kernels as K

    rng = np.random.default_rng(7)
    report = {"available": K.cuda_available(), "max_diff": {}}
    for dtype in (np.float64, np.float32):
        x = rng.normal(size=(3, 21)).astype(dtype)
        h = rng.normal(size=5).astype(dtype)
        a = rng.normal(size=(5, 21)).astype(dtype)
        pairs = {
            "fir": (K.fir_cuda(x, h, threads_per_block=(2, 8)), K.fir(x, h)),
            "matvec": (K.matvec_cuda(a, x, threads_per_block=(2, 4)), K.matvec(a, x)),
        }
        for op in K.REDUCTIONS:
            pairs[op] = (K.reduce_rows_cuda(x, op, threads_per_block=8), K.reduce_rows(x, op))
        for name, (gpu, cpu) in pairs.items():
            assert gpu.dtype == cpu.dtype and gpu.shape == cpu.shape, name
            key = f"{name}/{np.dtype(dtype).name}"
            report["max_diff"][key] = float(np.max(np.abs(gpu.astype(np.float64) - cpu.astype(np.float64))))
    out = K.run_kernel("max", np.arange(12.0).reshape(3, 4))  # "auto" picks CUDA here
    report["auto_max"] = out.tolist()
    print(json.dumps(report))
    """
)


class TestCudaSimulator:
    def test_cuda_kernels_match_the_cpu_path_under_the_simulator(self):
        env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-c", _CUDA_SIM_SCRIPT],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["available"] is True
        assert report["auto_max"] == [3.0, 7.0, 11.0]
        for key, diff in report["max_diff"].items():
            assert diff <= (1e-5 if key.endswith("float32") else 1e-12), (key, diff)
        assert len(report["max_diff"]) == 2 * (2 + len(K.REDUCTIONS))

    def test_without_cuda_the_registry_falls_back_to_the_cpu(self):
        if K.cuda_available():  # pragma: no cover - only on a machine with a GPU
            pytest.skip("a CUDA device is present")
        x = np.arange(8.0).reshape(2, 4)
        np.testing.assert_array_equal(K.run_kernel("sum", x), [6.0, 22.0])
        with pytest.raises(ValueError):
            K.run_kernel("sum", x, device="cuda")
