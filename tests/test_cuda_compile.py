"""Every CUDA kernel of the CuPy backend compiles -- with NVRTC, which needs no GPU.

For each kernel's CuPy version (``kernels.Kernels("cupy")``), the CUDA specs it
records (``fn.cuda_specs``, see ``minigrad/kernels/_cuda.py``)
are compiled to machine code for the oldest architecture CUDA 13 supports (sm_75)
and for Hopper (sm_90):

* a ``Raw`` spec (``cupy.RawModule``): its source exactly as CuPy compiles it, and
  the cubin must contain both entry points ``<name>_f32`` and ``<name>_f64``;
* an ``Elementwise`` spec (``cupy.ElementwiseKernel``), for float32 and float64:
  - the full source CuPy itself generates for the wrapper's call (CuPy's headers,
    ``CArray``/``CIndexer`` parameters, CuPy's compile options), obtained from
    CuPy's private code generator without a device -- skipped, saying why, if this
    CuPy version does not offer it in the expected form;
  - always, a hand-written equivalent harness (tests/support/cuda_sources.py
    ``elementwise_harness``): the same preamble and the same operation in the same
    grid-stride loop over flat arrays, so the kernel's own code is compiled even
    when CuPy's generator is out of reach.

The parametrisation comes from ``kernels.names()``, so a new kernel is compiled without
touching this file, and a CuPy kernel that records no CUDA source fails
``test_every_cupy_kernel_records_its_cuda_source``.  A compile error fails the test
with NVRTC's log.  The whole module skips, printing why, only when NVRTC cannot
be loaded (``pip install '.[nvrtc]'`` provides it: cupy-cuda13x and
nvidia-cuda-nvrtc).
"""
import pytest

from support import cuda_sources as cs
from minigrad.kernels import _cuda, dense, losses, optim

try:
    from cupy_backends.cuda.libs import nvrtc
    NVRTC_VERSION = nvrtc.getVersion()
except Exception as error:  # ImportError, or the library cannot be loaded
    pytest.skip(f"NVRTC is not available ({type(error).__name__}: {error}); "
                f"pip install '.[nvrtc]' to compile the CUDA kernels without a GPU",
                allow_module_level=True)

ARCHS = ("sm_75", "sm_90")
SPECS = cs.all_specs()
RAW = [s for s in SPECS if s.kind == "raw"]
ELEMENTWISE = [s for s in SPECS if s.kind == "elementwise"]
DTYPES = ("float32", "float64")


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
    # CuPy compiles raw and elementwise code as C++17 (RawModule's default since v14)
    return list(spec.options) + ["--std=c++17", f"--gpu-architecture={arch}"]


def test_every_cupy_kernel_records_its_cuda_source():
    specs = cs.registered_specs()  # also: every kernel has a CuPy version
    missing = sorted(name for name, s in specs.items() if not s)
    assert not missing, (f"CuPy kernels without recorded CUDA source (decorate them with "
                         f"@_cuda.uses(SPEC, ...)): {missing}")
    for name, s in specs.items():
        for spec in s:
            assert isinstance(spec, (_cuda.Raw, _cuda.Elementwise)), (name, spec)


def test_every_cuda_spec_of_the_kernel_modules_is_launched_by_a_kernel():
    """No orphan CUDA code: each module-level spec belongs to a registered kernel
    (and is therefore compiled below)."""
    used = {id(s) for s in SPECS}
    orphans = [f"{module.__name__}.{name}" for module in (dense, losses, optim)
               for name, value in vars(module).items()
               if isinstance(value, (_cuda.Raw, _cuda.Elementwise)) and id(value) not in used]
    assert not orphans


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", RAW, ids=lambda s: s.name)
def test_raw_kernel_compiles(spec, arch):
    cubin = nvrtc_compile(spec.source, spec.name, options(spec, arch))
    defined = cs.raw_kernels(spec.source)
    for name in spec.kernel_names():
        assert name in defined, f"{spec.name}: the source defines no {name}"
        assert name.encode() in cubin, f"{name} is not in the compiled module"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ELEMENTWISE, ids=lambda s: s.name)
def test_elementwise_kernel_compiles(spec, dtype, arch):
    """The kernel's preamble and operation, in the hand-written harness."""
    source, name, _ = cs.elementwise_harness(spec, dtype)
    cubin = nvrtc_compile(source, name, options(spec, arch))
    assert name.encode() in cubin


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ELEMENTWISE, ids=lambda s: s.name)
def test_cupy_generated_elementwise_source_compiles(spec, dtype):
    """The full source CuPy generates for the call (its headers included)."""
    try:
        source, cupy_options = cs.cupy_generated_source(spec, dtype)
    except RuntimeError as error:
        pytest.skip(str(error))
    cubin = nvrtc_compile(source, spec.name, list(cupy_options) + ["--gpu-architecture=sm_90"])
    assert spec.name.encode() in cubin


def test_a_kernel_that_does_not_compile_fails_with_the_log(monkeypatch):
    spec = _cuda.Elementwise("mg_broken", "T x", "T y", "y = mg_no_such_function(x)")
    source, name, _ = cs.elementwise_harness(spec, "float32")
    with pytest.raises(pytest.fail.Exception, match="mg_no_such_function"):
        nvrtc_compile(source, name, options(spec, "sm_90"))
