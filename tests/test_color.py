import kornia.color
import pytest
import torch
from skimage.color import rgb2lab

from colorizer import color

# sRGB primaries in CIE Lab (D65), from the CIE formulas as published (e.g. Bruce Lindbloom).
REFERENCE_LAB = {
    (1.0, 1.0, 1.0): (100.0, 0.0, 0.0),
    (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
    (1.0, 0.0, 0.0): (53.24, 80.09, 67.20),
    (0.0, 1.0, 0.0): (87.73, -86.18, 83.18),
    (0.0, 0.0, 1.0): (32.30, 79.19, -107.86),
    (0.5, 0.5, 0.5): (53.39, 0.0, 0.0),
}


def _pixels(values) -> torch.Tensor:
    """[N, 3] values -> an [N, 3, 1, 1] batch of one-pixel images."""
    return torch.tensor(values, dtype=torch.float32)[:, :, None, None]


def test_reference_lab_values():
    lab = color.rgb_to_lab(_pixels(list(REFERENCE_LAB))).flatten(1)
    expected = torch.tensor(list(REFERENCE_LAB.values()))
    torch.testing.assert_close(lab, expected, atol=0.05, rtol=0)


def test_matches_skimage_on_random_images():
    rgb = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = color.rgb_to_lab(rgb)
    theirs = torch.from_numpy(rgb2lab(rgb.permute(0, 2, 3, 1).numpy(), channel_axis=-1))
    torch.testing.assert_close(ours, theirs.permute(0, 3, 1, 2).float(), atol=0.02, rtol=0)


def test_uint8_input_equals_float_input():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    # The uint8 route is exact in float64 where kornia rounds in float32: ~3e-5 apart.
    torch.testing.assert_close(
        color.rgb_to_lab(images), color.rgb_to_lab(images / 255.0), atol=1e-4, rtol=0
    )


def test_uint8_route_matches_kornia_on_both_pieces_of_cie_f():
    # Every dark triple (XYZ below CIE's epsilon, where f is a line) and a grid of the rest.
    dark = torch.cartesian_prod(*[torch.arange(40, dtype=torch.uint8)] * 3)
    grid = torch.cartesian_prod(*[torch.arange(0, 256, 5, dtype=torch.uint8)] * 3)
    pixels = torch.cat([dark, grid]).T[None, :, :, None].contiguous()  # [1, 3, N, 1]
    expected = kornia.color.rgb_to_lab(pixels.double() / 255.0)
    torch.testing.assert_close(color.rgb_to_lab(pixels).double(), expected, atol=1e-4, rtol=0)


def test_xyz_routes_agree():
    # The GPU's elementwise route (immune to TF32) and the CPU's matmul, both run here.
    linear = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    matrix = torch.rand(3, 3, dtype=torch.float64)
    matmul = color.linear_rgb_to_xyz(linear, matrix, elementwise=False)
    elementwise = color.linear_rgb_to_xyz(linear, matrix, elementwise=True)
    expected = torch.stack([(matrix[i, :, None, None] * linear).sum(1) for i in range(3)], 1)
    torch.testing.assert_close(matmul, expected)
    torch.testing.assert_close(elementwise, expected)


def test_round_trip_rgb_lab_rgb():
    rgb = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    l_norm, ab_norm = color.split_lab(rgb)
    torch.testing.assert_close(color.merge_lab(l_norm, ab_norm), rgb, atol=2e-4, rtol=0)


def test_normalisation_round_trip_and_ranges():
    # Every sRGB colour (a 33^3 grid of the cube) maps into [-1, 1] for L and ab.
    axis = torch.linspace(0, 1, 33)
    grid = torch.cartesian_prod(axis, axis, axis)[:, :, None, None]
    l_norm, ab_norm = color.split_lab(grid)
    assert l_norm.min() >= -1 - 1e-5 and l_norm.max() <= 1 + 1e-5
    assert ab_norm.abs().max() <= 1.0
    assert ab_norm.abs().max() > 0.9  # the scale is not wastefully loose either
    lab = color.rgb_to_lab(grid)
    torch.testing.assert_close(color.denormalize_l(color.normalize_l(lab[:, :1])), lab[:, :1])
    torch.testing.assert_close(color.denormalize_ab(color.normalize_ab(lab[:, 1:])), lab[:, 1:])


def test_gradcheck_rgb_to_lab_and_merge():
    rgb = (0.1 + 0.8 * torch.rand(1, 3, 4, 4, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(color.rgb_to_lab, (rgb,))
    lab = color.rgb_to_lab(rgb.detach())
    l_norm = color.normalize_l(lab[:, :1]).requires_grad_()
    ab_norm = (0.5 * color.normalize_ab(lab[:, 1:])).requires_grad_()  # inside the gamut
    assert torch.autograd.gradcheck(
        lambda lum, ab: color.lab_to_rgb(torch.cat([color.denormalize_l(lum), ab * 110], 1)),
        (l_norm, ab_norm),
    )


def test_conversion_ignores_bf16_autocast():
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    l_ref, ab_ref = color.split_lab(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l_norm, ab_norm = color.split_lab(images)
        rgb = color.merge_lab(l_norm, ab_norm)
        rgb_from_bf16 = color.merge_lab(l_norm, ab_norm.bfloat16())  # a bf16 network output
    assert l_norm.dtype == ab_norm.dtype == rgb.dtype == rgb_from_bf16.dtype == torch.float32
    torch.testing.assert_close(l_norm, l_ref)
    torch.testing.assert_close(ab_norm, ab_ref)
    torch.testing.assert_close(rgb, color.merge_lab(l_ref, ab_ref))


def test_gray_baseline_has_no_chroma_and_keeps_lightness():
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    l_norm, _ = color.split_lab(images)
    gray = color.gray_baseline(l_norm)
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-4)
    assert torch.allclose(gray[:, 1], gray[:, 2], atol=1e-4)
    torch.testing.assert_close(color.split_lab(gray)[0], l_norm, atol=1e-3, rtol=0)


def test_luminance_of_gray_and_rgb_inputs():
    gray = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(
        color.luminance_of(gray), color.split_lab(gray.expand(-1, 3, -1, -1))[0]
    )
    rgb = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(color.luminance_of(rgb), color.split_lab(rgb)[0])
    with pytest.raises(ValueError, match="expected images"):
        color.luminance_of(torch.rand(2, 4, 8, 8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_conversion_on_cuda_matches_cpu_under_autocast():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    l_cpu, ab_cpu = color.split_lab(images)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 allowed, as Lightning suggests on GPUs
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            l_gpu, ab_gpu = color.split_lab(images.cuda())
    finally:
        torch.set_float32_matmul_precision(precision)
    assert l_gpu.device.type == "cuda" and l_gpu.dtype == torch.float32
    torch.testing.assert_close(l_gpu.cpu(), l_cpu, atol=1e-4, rtol=0)
    torch.testing.assert_close(ab_gpu.cpu(), ab_cpu, atol=1e-4, rtol=0)


def test_keep_lightness_desaturates_out_of_gamut_colours_instead_of_clipping():
    torch.manual_seed(0)
    lab = torch.cat([torch.rand(2, 1, 40, 50) * 100, (torch.rand(2, 2, 40, 50) * 2 - 1) * 110], 1)
    unclipped = kornia.color.lab_to_rgb(lab, clip=False)
    inside = ((unclipped >= 0) & (unclipped <= 1)).all(dim=1, keepdim=True).expand_as(lab)
    assert 0.05 < inside.float().mean() < 0.5  # both kinds of pixel are tested

    kept = color.lab_to_rgb_keep_lightness(lab)
    assert kept.min() >= 0 and kept.max() <= 1
    back = color.rgb_to_lab(kept)
    torch.testing.assert_close(back[:, :1], lab[:, :1], atol=0.02, rtol=0)  # every pixel's L
    assert (color.rgb_to_lab(color.lab_to_rgb(lab))[:, :1] - lab[:, :1]).abs().max() > 10
    torch.testing.assert_close(kept[inside], unclipped[inside])  # in-gamut colours untouched
    # Out of gamut: the same hue, less chroma (ab shrinks towards 0 by one common factor).
    ratio = back[:, 1:] / lab[:, 1:]
    outside = ~inside[:, :1] & (lab[:, 1:].abs() > 20).all(dim=1, keepdim=True)  # stable ratios
    assert (ratio[:, :1][outside] < 1.0 + 1e-3).all()
    torch.testing.assert_close(ratio[:, :1][outside], ratio[:, 1:][outside], atol=0.02, rtol=0)
    # And no less chroma than the gamut demands: 1 % more would leave it.
    factor = back[:, 1:].norm(dim=1, keepdim=True) / lab[:, 1:].norm(dim=1, keepdim=True)
    more = torch.cat([lab[:, :1], lab[:, 1:] * (factor + 0.01)], dim=1)
    beyond = kornia.color.lab_to_rgb(more, clip=False)
    left = ((beyond < -1e-4) | (beyond > 1 + 1e-4)).any(dim=1, keepdim=True)
    assert left[~inside[:, :1]].all()


def test_desaturation_moves_with_the_chroma_not_in_steps():
    """A float-rounding change of the chroma (as a photo merged whole or in strips gets) moves
    a desaturated colour by float rounding too, and the colour lies on the gamut's surface: a
    bisection's last inside factor alone would jump by 2^-10 of the chroma, up to 3 levels."""
    torch.manual_seed(1)
    lab = torch.cat(
        [torch.rand(1, 1, 100, 100) * 100, (torch.rand(1, 2, 100, 100) * 2 - 1) * 110], 1
    )
    nudged = lab.clone()
    nudged[:, 1:] *= 1 + 3e-7  # a few float32 ulps
    kept, kept_nudged = (color.lab_to_rgb_keep_lightness(x) for x in (lab, nudged))
    # At most the gamut test's slack (1e-4, 0.03 levels), where the nudge crosses it.
    assert (kept - kept_nudged).abs().max() * 255 < 0.05
    # On the surface: some channel at 0 or 1 for every desaturated pixel.
    outside = ((kornia.color.lab_to_rgb(lab, clip=False) - 0.5).abs() > 0.5 + 1e-4).any(dim=1)
    surface = torch.maximum(kept, 1 - kept).amax(dim=1)[outside]
    assert outside.float().mean() > 0.3 and (surface > 1 - 1e-5).all()


def test_merge_lab_clips_for_the_metrics_and_keeps_lightness_for_photos():
    """The metrics' reconstruction clips R, G and B (README, Metrics); photos colorized for
    people keep their L (``keep_lightness``)."""
    lab = torch.tensor([90.0, 100.0, -60.0]).view(1, 3, 1, 1)  # L 90 cannot hold that chroma
    l_norm, ab_norm = color.normalize_l(lab[:, :1]), color.normalize_ab(lab[:, 1:])
    clipped = color.merge_lab(l_norm, ab_norm)
    torch.testing.assert_close(clipped, color.lab_to_rgb(lab))
    kept = color.merge_lab(l_norm, ab_norm, keep_lightness=True)
    torch.testing.assert_close(kept, color.lab_to_rgb_keep_lightness(lab))
    assert (kept - clipped).abs().max() > 0.1


def test_luminance_of_clips_values_outside_the_unit_range_first():
    images = torch.rand(2, 3, 8, 8) * 1.6 - 0.3
    torch.testing.assert_close(color.luminance_of(images), color.luminance_of(images.clamp(0, 1)))


def test_uint8_route_equals_kornia_for_every_channel_level():
    levels = torch.arange(256, dtype=torch.uint8)
    # Every level in every channel, next to random colours.
    grid = torch.stack(torch.meshgrid(levels, levels[::15], levels[::15], indexing="ij"))
    images = torch.cat([grid.reshape(1, 3, 256, -1), torch.randint(0, 256, (1, 3, 256, 324),
                        dtype=torch.uint8)])  # fmt: skip
    fast = color.rgb_to_lab(images)
    reference = kornia.color.rgb_to_lab(images.float() / 255.0)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, reference, atol=2e-4, rtol=0)
