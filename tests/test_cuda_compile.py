"""Every CUDA kernel of the CuPy backend compiles -- with NVRTC, which needs no GPU.

For each kernel's CuPy version (``kernels.Kernels("cupy")``), the CUDA specs it
records (``fn.cuda_specs``, see ``minigrad/kernels/_cuda.py``)
are compiled to machine code for the oldest architecture CUDA 13 supports (sm_75)
and for Hopper (sm_90): each ``Raw`` spec's source (``cupy.RawModule``: the
``.cu`` file after :func:`minigrad.kernels._cuda.common_source`) exactly as CuPy
compiles it, and the cubin must contain both entry points ``<name>_f32`` and
``<name>_f64``.

The parametrisation comes from ``kernels.names()``, so a new kernel is compiled without
touching this file, and a CuPy kernel that records no CUDA source fails
``test_every_cupy_kernel_records_its_cuda_source``.  A compile error fails the test
with NVRTC's log.  The whole module skips, printing why, only when NVRTC cannot
be loaded (``pip install '.[nvrtc]'`` provides it: cupy-cuda13x and
nvidia-cuda-nvrtc).
"""
import pytest

from support import cuda_sources as cs
from minigrad import kernels
from minigrad.kernels import _cuda, conv, dense, losses, optim

try:
    from cupy_backends.cuda.libs import nvrtc
    NVRTC_VERSION = nvrtc.getVersion()
except Exception as error:  # ImportError, or the library cannot be loaded
    pytest.skip(f"NVRTC is not available ({type(error).__name__}: {error}); "
                f"pip install '.[nvrtc]' to compile the CUDA kernels without a GPU",
                allow_module_level=True)

ARCHS = ("sm_75", "sm_90")
SPECS = cs.all_specs()
RAW = SPECS  # every spec is a cupy.RawModule on a .cu file


def nvrtc_compile(source, name, options):
    """The cubin of ``source``, or a test failure carrying NVRTC's log."""
    prog = nvrtc.createProgram(source, f"{name}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, list(options))
        except Exception as error:
            pytest.fail(f"{name} does not compile with NVRTC {NVRTC_VERSION} "
                        f"({error}); options {list(options)}; log:\n"
                        f"{nvrtc.getProgramLog(prog)}", pytrace=False)
        return nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)


def options(spec, arch):
    # CuPy compiles raw code as C++17 (RawModule's default since v14)
    return list(spec.options) + ["--std=c++17", f"--gpu-architecture={arch}"]


def test_every_cupy_kernel_records_its_cuda_source():
    specs = cs.registered_specs()  # also: every kernel has a CuPy version
    cupy_kernels = kernels.Kernels("cupy")
    # a kernel with no CUDA code of ours must say so (value_range: CuPy's min and max)
    missing = sorted(name for name, s in specs.items()
                     if not s and not getattr(getattr(cupy_kernels, name), "cupy_only", False))
    assert not missing, (f"CuPy kernels without recorded CUDA source (decorate them with "
                         f"@_cuda.uses(SPEC, ...)): {missing}")
    for name, s in specs.items():
        for spec in s:
            assert isinstance(spec, _cuda.Raw), (name, spec)


def test_every_cuda_spec_of_the_kernel_modules_is_launched_by_a_kernel():
    """No orphan CUDA code: each module-level spec belongs to a registered kernel
    (and is therefore compiled below)."""
    used = {id(s) for s in SPECS}
    orphans = [f"{module.__name__}.{name}" for module in (dense, losses, optim, conv)
               for name, value in vars(module).items()
               if isinstance(value, _cuda.Raw) and id(value) not in used]
    assert not orphans


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", RAW, ids=lambda s: s.name)
def test_raw_kernel_compiles(spec, arch):
    cubin = nvrtc_compile(spec.source, spec.name, options(spec, arch))
    defined = cs.raw_kernels(spec.source)
    for name in spec.kernel_names():
        assert name in defined, f"{spec.name}: the source defines no {name}"
        assert name.encode() in cubin, f"{name} is not in the compiled module"


def test_a_kernel_that_does_not_compile_fails_with_the_log():
    source = _cuda.common_source() + (
        'extern "C" __global__ void mg_broken_f32(float* x) { x[0] = mg_no_such_function(x[0]); }')
    with pytest.raises(pytest.fail.Exception, match="mg_no_such_function"):
        nvrtc_compile(source, "mg_broken", list(_cuda.OPTIONS) + ["--std=c++17",
                                                                  "--gpu-architecture=sm_90"])
