"""lookalike_embedder.model: preprocessing, cuts, FeatureExtractor and its backends (real weights from the pip
package, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike_embedder import model as lk


@pytest.fixture(scope="module")
def extractor():
    torch.set_num_threads(1)  # 2 shared cores: spinning OpenMP threads only slow the suite down
    return lk.FeatureExtractor("cpu")


def synthetic(seed: int, size=(300, 200), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(base, "RGB").resize(size, Image.BILINEAR)  # smooth, photo-like
    return img.convert(mode)


def reference_preprocess(img: Image.Image) -> torch.Tensor:
    """The preprocessing spelled out independently: short side 256 BICUBIC, centre crop 224, (x/255-.5)/.5."""
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    img = img.resize(size, Image.BICUBIC)
    left, top = int(round((size[0] - 224) / 2.0)), int(round((size[1] - 224) / 2.0))
    arr = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    return torch.from_numpy((arr - 0.5) / 0.5).permute(2, 0, 1)


def test_model_ids_dims_and_cut_names():
    assert lk.MODEL_NAME == "lookalike-lite0"
    assert lk.MODEL_VERSION == "efficientnet-lite0-imagenet-final"
    assert lk.model_version("block12") == "efficientnet-lite0-imagenet-block12"
    assert lk.embedding_dim("final") == 1280
    assert lk.embedding_dim("block10") == 112 and lk.embedding_dim("block14") == 192
    assert lk.normalize_cut(" Block3 ") == "block3"
    with pytest.raises(ValueError):
        lk.normalize_cut("block16")


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (224, 224), (1000, 257), (50, 40)])
def test_preprocess_matches_spec(size):
    img = synthetic(1, size)
    x = lk.preprocess(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x, reference_preprocess(img))
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0


def test_preprocess_any_mode():
    for mode in ("L", "P", "RGBA", "CMYK"):
        assert lk.preprocess(synthetic(2, mode=mode)).shape == (3, 224, 224)


def test_final_cut_equals_extract_features_mean(extractor):
    backbone = lk.load_backbone()
    x = lk.preprocess_batch([synthetic(3), synthetic(4)])
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(backbone.extract_features(x).mean((2, 3)), dim=1).numpy()
    got = extractor.embed_batch(x)
    assert got.shape == (2, 1280) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_earlier_cut_is_pooled_block_output():
    backbone = lk.load_backbone()
    x = lk.preprocess_batch([synthetic(5)])
    captured = {}
    hook = backbone._blocks[10].register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    with torch.inference_mode():
        backbone.extract_features(x)
        hook.remove()
        expected = torch.nn.functional.normalize(captured["out"].mean((2, 3)), dim=1)
        got = lk.load_model("cpu", "block10")(x)
    assert got.shape == (1, 112)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_embed_images_batching_and_norm(extractor):
    images = [synthetic(s) for s in range(5)]
    together = extractor.embed_images(images, batch_size=2)  # chunks of 2, 2, 1
    assert together.shape == (5, 1280) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    single = np.stack([extractor.embed_image(img) for img in images])
    np.testing.assert_allclose(together, single, atol=1e-5)
    assert extractor.embed_images([]).shape == (0, 1280)
    # different images, different vectors; same image, same vector
    assert float(together[0] @ together[1]) < 0.999
    np.testing.assert_array_equal(extractor.embed_image(images[0]), extractor.embed_image(images[0]))


def test_extractor_metadata(extractor):
    assert extractor.dim == 1280 and extractor.cut == "final"
    assert extractor.model_version == lk.MODEL_VERSION
    assert extractor.device == torch.device("cpu")
    assert not any(p.requires_grad for p in extractor.model.parameters())
    assert not extractor.model.training


# ---- backend onnxruntime (a core dependency: no skip when it is missing, the test fails) ----

def test_onnxruntime_backend_matches_eager():
    torch.set_num_threads(1)
    eager = lk.FeatureExtractor("cpu")
    fast = lk.FeatureExtractor("cpu", backend="onnxruntime", num_threads=1)
    batch = torch.rand((3, 3, 224, 224), generator=torch.Generator().manual_seed(0)) * 2 - 1
    a, b = eager.embed_batch(batch), fast.embed_batch(batch)
    assert b.shape == (3, lk.FINAL_DIM) and b.dtype == np.float32
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.9999
    assert fast.embed_batch(batch[:1]).shape == (1, lk.FINAL_DIM)  # dynamic batch size
    assert fast.embed_batch(torch.zeros((0, 3, 224, 224))).shape == (0, lk.FINAL_DIM)


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="backend"):
        lk.FeatureExtractor("cpu", backend="tensorrt")
