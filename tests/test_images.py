"""load_images / load_image: your own pictures, on small folders written here with Pillow."""
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from autoencoders import datasets
from autoencoders.datasets import ImageDecodeError, SkippedFilesWarning, load_image, load_images

Image = pytest.importorskip("PIL.Image")
from PIL import features  # noqa: E402  (after the importorskip)

ORIENTATION = 0x0112


def save(path, array, **options):
    """``array`` (uint8 or uint16; (H, W), (H, W, 3) or (H, W, 4)) as an image file;
    returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array)).save(path, **options)
    return path


def noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def exact(pixels, scale=255):
    """What the loader must give for ``pixels`` read at their own size."""
    return np.asarray(pixels).astype(np.float32) / np.float32(scale)


def load_quietly(*args, **kwargs):
    """load_images, asserting that nothing was skipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedFilesWarning)
        return load_images(*args, **kwargs)


def load_warning(*args, **kwargs):
    """load_images and the one SkippedFilesWarning it must give."""
    with pytest.warns(SkippedFilesWarning) as record:
        result = load_images(*args, **kwargs)
    skipped = [w for w in record if issubclass(w.category, SkippedFilesWarning)]
    assert len(skipped) == 1, [str(w.message) for w in skipped]
    return result, skipped[0].message


# ----------------------------------------------------------------------------
# a realistic folder: formats, nesting, sizes, and files that are not images
# ----------------------------------------------------------------------------

def test_a_mixed_nested_folder(tmp_path):
    square = np.zeros((8, 8), np.uint8)
    square[2:5, 3:7] = 255
    save(tmp_path / "square.png", square)
    save(tmp_path / "trips" / "2021" / "beach.jpg", noise((30, 40, 3)), quality=90)
    save(tmp_path / "trips" / "wide.png", noise((5, 20), seed=1))   # another size
    good = save(tmp_path / "trips" / "tall.png", noise((32, 32), seed=2))
    raw = good.read_bytes()
    (tmp_path / "trips" / "broken.png").write_bytes(raw[: len(raw) // 2])   # truncated
    (tmp_path / "notes.txt").write_text("my holiday pictures\n")
    (tmp_path / "fake.png").write_text("not a PNG at all\n")

    (images, paths), warning = load_warning(tmp_path, size=(8, 8))
    assert paths == ["square.png", "trips/2021/beach.jpg", "trips/tall.png", "trips/wide.png"]
    assert images.shape == (4, 8, 8) and images.dtype == np.float32
    assert images.flags.c_contiguous and images.flags.owndata  # shrunk in place, no view
    assert 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_array_equal(images[0], exact(square))   # same size: exact values

    message = str(warning)
    assert str(tmp_path) in message and "3 file(s)" in message and "4 image(s) read" in message
    reasons = dict(warning.skipped)
    assert sorted(reasons) == ["fake.png", "notes.txt", "trips/broken.png"]
    assert "not an image" in reasons["notes.txt"] and "not an image" in reasons["fake.png"]
    assert "truncated" in reasons["trips/broken.png"]
    for path, reason in warning.skipped:
        assert f"{path}: {reason}" in message


def test_order_is_by_relative_posix_path_and_repeatable(tmp_path):
    # written in a scrambled order; code-point order puts '-' < '.' < '/' < 'A' < 'a'
    for name in ["b.png", "a/z.png", "a.png", "B.png", "a-b.png", "A/c.png", "a/b/c.png"]:
        save(tmp_path / name, noise((4, 4)))
    expected = ["A/c.png", "B.png", "a-b.png", "a.png", "a/b/c.png", "a/z.png", "b.png"]
    first = load_quietly(tmp_path, (4, 4))
    second = load_quietly(str(tmp_path), [4, 4])
    assert first[1] == second[1] == expected
    np.testing.assert_array_equal(first[0], second[0])


def test_hidden_files_and_folders_are_ignored_silently(tmp_path):
    save(tmp_path / "seen.png", noise((4, 4)))
    save(tmp_path / ".hidden.png", noise((4, 4)))
    save(tmp_path / ".git" / "x.png", noise((4, 4)))
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01junk")
    assert load_quietly(tmp_path, (4, 4))[1] == ["seen.png"]


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt",
                    reason="symbolic links need a POSIX file system")
def test_links_to_folders_and_broken_links_are_reported(tmp_path):
    save(tmp_path / "real" / "a.png", noise((4, 4)))
    os.symlink(tmp_path / "real", tmp_path / "linked")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "dangling.png")
    os.symlink(tmp_path / "real" / "a.png", tmp_path / "file-link.png")  # followed
    (_, paths), warning = load_warning(tmp_path, (4, 4))
    assert paths == ["file-link.png", "real/a.png"]
    reasons = dict(warning.skipped)
    assert "broken symbolic link" in reasons["dangling.png"]
    assert "not followed" in reasons["linked"]


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0,
                    reason="needs POSIX permissions that bind (not root)")
def test_unreadable_files_and_folders_are_reported(tmp_path):
    save(tmp_path / "ok.png", noise((4, 4)))
    locked = save(tmp_path / "locked.png", noise((4, 4)))
    closed = tmp_path / "closed"
    save(closed / "inside.png", noise((4, 4)))
    locked.chmod(0)
    closed.chmod(0)
    try:
        (_, paths), warning = load_warning(tmp_path, (4, 4))
    finally:
        closed.chmod(0o755)
        locked.chmod(0o644)
    assert paths == ["ok.png"]
    reasons = dict(warning.skipped)
    assert "cannot list the folder (Permission denied)" in reasons["closed/"]
    assert "cannot read the file (PermissionError: Permission denied)" in reasons["locked.png"]


# ----------------------------------------------------------------------------
# values
# ----------------------------------------------------------------------------

FORMATS = [("png", {}), ("bmp", {}), ("tiff", {}), ("gif", {}),
           ("webp", {"lossless": True})]


@pytest.mark.parametrize("suffix, options", FORMATS)
def test_lossless_formats_give_exact_values(tmp_path, suffix, options):
    if suffix == "webp" and not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    grey = noise((6, 9))
    colour = noise((6, 9, 3), seed=1)
    if suffix == "gif":  # a palette format: 256 colours at most, so greys only
        colour = np.repeat(grey[..., None], 3, axis=2)
    save(tmp_path / "g" / f"a.{suffix}", grey, **options)
    save(tmp_path / "c" / f"a.{suffix}", colour, **options)
    images, _ = load_quietly(tmp_path / "g", (6, 9), mode="L")
    np.testing.assert_array_equal(images[0], exact(grey))
    images, _ = load_quietly(tmp_path / "c", (6, 9), mode="RGB")
    assert images.shape == (1, 6, 9, 3)
    np.testing.assert_array_equal(images[0], exact(colour))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pixels=hnp.arrays(np.uint8, st.one_of(hnp.array_shapes(min_dims=2, max_dims=2,
                                                               min_side=1, max_side=12),
                                             st.tuples(st.integers(1, 12), st.integers(1, 12),
                                                       st.just(3)))),
       size=st.tuples(st.integers(1, 10), st.integers(1, 10)))
def test_any_png_reads_exactly_at_its_size_and_into_range_at_any_other(pixels, size):
    with tempfile.TemporaryDirectory() as folder:
        save(Path(folder) / "x.png", pixels)
        mode = "RGB" if pixels.ndim == 3 else "L"
        images, _ = load_quietly(folder, pixels.shape[:2], mode=mode)
        np.testing.assert_array_equal(images[0], exact(pixels))
        image, resized = load_image(Path(folder) / "x.png", size, mode=mode)
        assert image.shape == size + pixels.shape[2:] and image.dtype == np.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert resized == (size != pixels.shape[:2])
        if pixels.min() == pixels.max():  # a flat picture stays flat when resized
            np.testing.assert_allclose(image, pixels.flat[0] / 255, atol=1 / 255)


def test_rgb_and_grey_shapes_and_luma(tmp_path):
    red = np.zeros((3, 5, 3), np.uint8)
    red[..., 0] = 255
    save(tmp_path / "red.png", red)
    rgb, _ = load_quietly(tmp_path, (3, 5), mode="RGB")
    grey, _ = load_quietly(tmp_path, (3, 5), mode="L")
    assert rgb.shape == (1, 3, 5, 3) and grey.shape == (1, 3, 5)
    np.testing.assert_array_equal(rgb[0], exact(red))
    np.testing.assert_array_equal(grey[0], np.float32(76) / np.float32(255))  # 0.299 * 255
    save(tmp_path / "grey" / "g.png", noise((3, 5)))
    rgb, _ = load_quietly(tmp_path / "grey", (3, 5), mode="RGB")  # grey to RGB: copies
    np.testing.assert_array_equal(rgb[0, ..., 0], rgb[0, ..., 2])


def test_two_sizes_are_both_stretched_to_the_size(tmp_path):
    wide = np.zeros((10, 40), np.uint8)
    wide[:, :20] = 255        # left half white
    tall = np.full((60, 12), 200, np.uint8)
    save(tmp_path / "a-wide.png", wide)
    save(tmp_path / "b-tall.png", tall)
    images, _ = load_quietly(tmp_path, (6, 8))
    assert images.shape == (2, 6, 8)
    np.testing.assert_array_equal(images[0][:, :3], 1.0)  # far from the edge: untouched
    np.testing.assert_array_equal(images[0][:, 5:], 0.0)
    assert np.all(np.diff(images[0], axis=1) <= 0)         # no ringing at the edge
    np.testing.assert_allclose(images[1], 200 / 255, atol=1 / 255)


def test_jpeg_values_are_close(tmp_path):
    save(tmp_path / "grey.jpg", np.full((16, 16), 128, np.uint8), quality=95)
    images, _ = load_quietly(tmp_path, (16, 16))
    np.testing.assert_allclose(images[0], 128 / 255, atol=3 / 255)


def test_exif_orientation_is_applied(tmp_path):
    pixels = noise((3, 5))
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored sideways: shown rotated 90 degrees clockwise
    save(tmp_path / "sideways.png", pixels, exif=exif)
    image, resized = load_image(tmp_path / "sideways.png", (5, 3))  # the size as shown
    assert not resized
    np.testing.assert_array_equal(image, exact(np.rot90(pixels, k=-1)))
    assert load_image(tmp_path / "sideways.png", (3, 5))[1]  # the stored size is "another"


def test_exif_orientation_with_a_large_jpeg_decoded_at_reduced_scale(tmp_path):
    pixels = np.full((200, 400), 255, np.uint8)
    pixels[:, :200] = 0       # left half black: on top once rotated clockwise
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    save(tmp_path / "photo.jpg", pixels, exif=exif, quality=90)
    image, resized = load_image(tmp_path / "photo.jpg", (40, 20))
    assert resized and image.shape == (40, 20)
    assert image[:18].max() < 0.05 and image[22:].min() > 0.95


@pytest.mark.parametrize("kind", ["RGBA", "LA", "P", "RGB+tRNS"])
def test_transparency_is_composited_on_white(tmp_path, kind):
    if kind == "RGBA":
        pixels = np.zeros((2, 3, 4), np.uint8)      # black, alpha per column
        pixels[..., 3] = [0, 128, 255]
        Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    elif kind == "LA":
        Image.fromarray(np.zeros((2, 3, 4), np.uint8), "RGBA").convert("LA").save(
            tmp_path / "a.png")                      # fully transparent black
    elif kind == "P":                                # a GIF whose index 0 is transparent
        image = Image.fromarray(np.array([[0, 1, 1]] * 2, np.uint8), "P")
        image.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)
        image.save(tmp_path / "a.gif", transparency=0)
    else:
        pixels = np.zeros((2, 3, 3), np.uint8)
        pixels[:, 1:] = 10                           # (0, 0, 0) is the transparent colour
        Image.fromarray(pixels).save(tmp_path / "a.png", transparency=(0, 0, 0))
    images, _ = load_quietly(tmp_path, (2, 3), mode="RGB")
    first = images[0, :, 0]
    np.testing.assert_array_equal(first, 1.0)         # transparent: white
    grey, _ = load_quietly(tmp_path, (2, 3), mode="L")
    np.testing.assert_array_equal(grey[0, :, 0], 1.0)
    if kind == "RGBA":
        np.testing.assert_allclose(images[0, :, 1], 127 / 255, atol=1 / 255)  # half: grey
        np.testing.assert_array_equal(images[0, :, 2], 0.0)                   # opaque black
    if kind in ("P", "RGB+tRNS"):
        assert images[0, :, 1:].max() < 0.1           # the opaque pixels stay dark


def test_sixteen_bit_grey_keeps_its_range_and_precision(tmp_path):
    pixels = np.array([[0, 1000, 32768, 65535]] * 3, np.uint16)
    save(tmp_path / "deep.png", pixels)
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # really 16-bit on disk
    images, _ = load_quietly(tmp_path, (3, 4))
    np.testing.assert_array_equal(images[0], exact(pixels, 65535))  # 65535 -> 1.0
    assert images[0, 0, 1] < 0.02       # Pillow's own convert("L") clips 1000 to 255
    rgb, _ = load_quietly(tmp_path, (3, 4), mode="RGB")
    np.testing.assert_array_equal(rgb[0], np.repeat(exact(pixels, 65535)[..., None], 3, 2))
    small, resized = load_image(tmp_path / "deep.png", (2, 2))
    assert resized and 0.0 <= small.min() and small.max() <= 1.0
    assert small[:, 0].max() < small[:, 1].min()


@pytest.mark.parametrize("mode", ["P", "CMYK", "1"])
def test_palette_cmyk_and_bilevel_go_through_rgb(tmp_path, mode):
    picture = Image.fromarray(noise((4, 6, 3))).convert(mode)
    picture.save(tmp_path / ("a.tiff" if mode == "CMYK" else "a.png"))
    expected = np.asarray(picture.convert("RGB"))
    images, _ = load_quietly(tmp_path, (4, 6), mode="RGB")
    np.testing.assert_array_equal(images[0], exact(expected))
    if mode == "1":
        assert set(np.unique(images)) <= {0.0, 1.0}


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    images, _ = load_quietly(tmp_path, (4, 4))
    np.testing.assert_array_equal(images[0], 0.0)


def test_a_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    save(tmp_path / "big.png", noise((20, 20)))      # 400 pixels: over twice the limit
    save(tmp_path / "small.png", noise((5, 5)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    (images, paths), warning = load_warning(tmp_path, (5, 5))
    assert paths == ["small.png"] and images.shape == (1, 5, 5)
    assert "decompression-bomb" in dict(warning.skipped)["big.png"]


# ----------------------------------------------------------------------------
# load_image
# ----------------------------------------------------------------------------

def test_load_image_matches_load_images(tmp_path):
    save(tmp_path / "a.png", noise((12, 7, 3)))
    save(tmp_path / "b.jpg", noise((9, 9, 3), seed=4))
    for mode in ("L", "RGB"):
        images, paths = load_quietly(tmp_path, (5, 6), mode=mode)
        for row, path in zip(images, paths):
            image, resized = load_image(tmp_path / path, (5, 6), mode=mode)
            assert resized
            np.testing.assert_array_equal(image, row)
    assert load_image(tmp_path / "a.png", (12, 7), "RGB")[1] is False


def test_load_image_errors_name_the_file(tmp_path):
    (tmp_path / "fake.png").write_text("text")
    with pytest.raises(ImageDecodeError, match="fake.png: not an image") as info:
        load_image(tmp_path / "fake.png", (4, 4))
    assert isinstance(info.value, ValueError) and str(tmp_path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="load_image: .*missing.png does not exist"):
        load_image(tmp_path / "missing.png", (4, 4))
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_image(tmp_path, (4, 4))


# ----------------------------------------------------------------------------
# errors and options
# ----------------------------------------------------------------------------

def test_an_empty_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no files in") as info:
        load_images(tmp_path, (4, 4))
    assert str(tmp_path) in str(info.value) and "'.'" in str(info.value)


def test_a_folder_of_bad_files_is_an_error_naming_it_and_the_count(tmp_path):
    (tmp_path / "notes.txt").write_text("a")
    (tmp_path / "fake.png").write_text("b")
    with pytest.warns(SkippedFilesWarning, match="notes.txt"):
        with pytest.raises(ValueError, match="no image could be read") as info:
            load_images(tmp_path, (4, 4))
    message = str(info.value)
    assert str(tmp_path) in message and "2 file(s) skipped" in message
    assert "fake.png: not an image" in message


def test_a_missing_root_or_a_file_as_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="load_images: .*nowhere does not exist"):
        load_images(tmp_path / "nowhere", (4, 4))
    path = save(tmp_path / "a.png", noise((4, 4)))
    with pytest.raises(NotADirectoryError, match="load_images: .*a.png is not a directory"):
        load_images(path, (4, 4))


@pytest.mark.parametrize("size", [(0, 4), (4, -1), (4,), (4, 4, 4), 4, (2.0, 4), (True, 4),
                                  "44", None, (4, "4")])
def test_bad_size(tmp_path, size):
    for function, where in ((load_images, tmp_path), (load_image, tmp_path / "a.png")):
        with pytest.raises(ValueError, match=r"size=.*expected two positive integers "
                                             r"\(height, width\)") as info:
            function(where, size)
        assert f"{function.__name__}: size={size!r}" in str(info.value)


@pytest.mark.parametrize("mode", ["RGBA", "l", "grey", None, 1])
def test_bad_mode(tmp_path, mode):
    for function, where in ((load_images, tmp_path), (load_image, tmp_path / "a.png")):
        with pytest.raises(ValueError, match=r"mode=.*expected 'L' \(grey\) or 'RGB'") as info:
            function(where, (4, 4), mode=mode)
        assert f"{function.__name__}: mode={mode!r}" in str(info.value)


def test_numpy_integers_are_a_good_size(tmp_path):
    save(tmp_path / "a.png", noise((4, 4)))
    assert load_quietly(tmp_path, (np.int64(2), np.int32(3)))[0].shape == (1, 2, 3)


def test_progress_bar_only_when_asked_and_tqdm_is_there(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tqdm")
    save(tmp_path / "a.png", noise((4, 4)))
    load_quietly(tmp_path, (4, 4), progress=True)
    assert "loading images" in capsys.readouterr().err
    load_quietly(tmp_path, (4, 4))
    assert capsys.readouterr() == ("", "")
    monkeypatch.setitem(sys.modules, "tqdm", None)     # as if not installed
    assert load_quietly(tmp_path, (4, 4), progress=True)[1] == ["a.png"]
    assert capsys.readouterr() == ("", "")


def test_without_pillow_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    save(tmp_path / "a.png", noise((4, 4)))
    monkeypatch.setitem(sys.modules, "PIL", None)      # as if not installed
    with pytest.raises(ImportError) as info:
        load_images(tmp_path, (4, 4))
    assert str(info.value) == ("load_images needs Pillow: pip install "
                               "'minigrad-autoencoders[images]' (or pip install Pillow)")
    with pytest.raises(ImportError, match=r"load_image needs Pillow: .*\[images\]"):
        load_image(tmp_path / "a.png", (4, 4))


def test_importing_the_package_does_not_import_pillow():
    code = ("import sys, autoencoders, autoencoders.datasets; "
            "print(sorted(m for m in sys.modules if m == 'PIL' or m.startswith('PIL.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_new_names_are_exported():
    for name in ("load_images", "load_image", "SkippedFilesWarning", "ImageDecodeError"):
        assert name in datasets.__all__
    assert issubclass(SkippedFilesWarning, UserWarning)
    assert issubclass(ImageDecodeError, ValueError)
