"""Colorize one photo with an exported model, using only onnxruntime, NumPy, Pillow and skimage.

    python examples/deploy_onnx.py model.onnx old_photo.jpg coloured.png

What ``python -m colorizer.colorize`` does, without PyTorch or this package: the network sees
the photo's CIE L at its working size; its ab is upsampled to the photo's size and merged with
the photo's own L. The constants and geometry come from the file's ``colorizer.*`` metadata.
"""

import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps
from skimage.color import lab2rgb, rgb2lab


def colorize(model_path: str, photo_path: str, output_path: str, size: int | None = None) -> None:
    session = ort.InferenceSession(model_path, providers=ort.get_available_providers())
    meta = session.get_modelmeta().custom_metadata_map
    # The working size: by default the size the model was trained at (older exports: 256).
    size = size or int(meta.get("colorizer.image_size") or 256)
    l_scale, ab_scale = float(meta["colorizer.l_scale"]), float(meta["colorizer.ab_scale"])
    multiple = int(meta["colorizer.size_multiple"])

    photo = ImageOps.exif_transpose(Image.open(photo_path)).convert("RGB")
    width, height = photo.size
    if meta["colorizer.input_size"]:  # a fixed-size network: its own square
        work_w = work_h = int(meta["colorizer.input_size"])
    else:  # fully convolutional: shorter side at `size`, sides rounded to the multiple
        scale = size / min(width, height)
        work_w, work_h = (max(multiple, round(s * scale / multiple) * multiple) for s in photo.size)

    lightness = rgb2lab(np.asarray(photo) / 255.0)[..., 0]  # full resolution, [0, 100]
    small = photo.resize((work_w, work_h), Image.Resampling.BILINEAR)
    l_norm = rgb2lab(np.asarray(small) / 255.0)[..., 0] / l_scale - 1.0
    (ab_norm,) = session.run(["ab_norm"], {"l_norm": l_norm[None, None].astype(np.float32)})

    # Upsample each chroma plane to the photo's size; keep the photo's own L.
    ab = [
        np.asarray(Image.fromarray(plane * ab_scale).resize((width, height), Image.BILINEAR))
        for plane in ab_norm[0]
    ]
    rgb = lab2rgb(np.dstack([lightness, *ab]))
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(output_path)


if __name__ == "__main__":
    colorize(*sys.argv[1:4])
