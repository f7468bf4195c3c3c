"""JPEG decoding and CLIP preprocessing on the model's device (nvJPEG on CUDA), batched.

On a GPU machine Pillow decoding on the CPU is what bounds a scan; here JPEGs are decoded
by torchvision's `decode_jpeg` on the CUDA device, a batch per call, then turned upright,
cropped and resized there, so only the model-sized result leaves the device's memory.

Nothing reaches the decoder without passing the same safety limits as the CPU path, read
from the header before any pixel is decoded: the byte limit, the pixel limit, one frame, and
decode.jpeg's check that the first scan holds the bits its header needs. Only plain JPEGs go
this way (8-bit baseline or progressive Huffman, RGB or grayscale, data that ends with the
end-of-image marker); everything else, and every file the device decoder refuses, is left to
the CPU path (None in the results), which records its reason as for any other file.

The crop is decode.crop_frame's geometry (a CropSpec: open_clip's resize + centre crop),
mapped back onto the source so only the kept region is resampled: work bounded by the output
size, whatever the aspect ratio. Pixels agree with the CPU path to a few grey levels (JPEG
draft scaling and Pillow's filters against a full decode and torch's antialiased ones).

Not caught here (the CPU path catches it): a sequential scan cut short and given back its
end-of-image marker, when it still holds more than the header's lower bound. libjpeg pads
it with flat blocks and only warns, and decode.jpeg's remedy (ending the data without the
marker) makes torchvision's decoder refuse complete files too; such a file is scored on
what it holds.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import ExifTags, Image

from moderator.decode import CropSpec, DecodeError
from moderator.decode.jpeg import checked

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
# Start-of-frame markers the device decoder handles: baseline, extended (8-bit) and progressive Huffman.
DEVICE_SOF = {0xC0, 0xC1, 0xC2}
_MODES = {int(Image.Resampling.BICUBIC): "bicubic", int(Image.Resampling.BILINEAR): "bilinear"}
_OTHER_SOF = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic


@dataclass(frozen=True)
class JpegHeader:
    width: int  # as stored (before EXIF orientation)
    height: int
    orientation: int  # EXIF orientation, 1..8


@dataclass
class DeviceDecoded:
    pixels: torch.Tensor  # uint8 [1, height, width, 3], the preprocess_batch layout, on `out_device`
    width: int  # full size, upright
    height: int
    frame: Image.Image | None = None  # RGB, shortest side at most frame_size (for image scorers), when asked


def device_mode(spec: CropSpec) -> str | None:
    """The torch interpolation that reproduces the spec's resampling filter, or None (not done on the device)."""
    return _MODES.get(int(spec.resample))


def device_header(data: bytes, *, max_pixels: int, max_bytes: int) -> JpegHeader | None:
    """The header of a JPEG the device decoder may take, within the limits; None: the CPU path decides."""
    if not data.startswith(JPEG_SOI) or len(data) > max_bytes or not data.rstrip(b"\0").endswith(JPEG_EOI):
        return None
    if _start_of_frame(data) not in DEVICE_SOF:
        return None
    try:
        checked(data)  # a scan shorter than its header needs (a 9000x9000 header on 64x64 data)
    except DecodeError:
        return None  # the CPU path refuses it as truncated
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:  # parses the header only
            if img.format != "JPEG" or img.mode not in ("RGB", "L") or getattr(img, "n_frames", 1) != 1:
                return None
            width, height = img.size
            limit = max_pixels if Image.MAX_IMAGE_PIXELS is None else min(max_pixels, Image.MAX_IMAGE_PIXELS)
            if width < 1 or height < 1 or width * height > limit:
                return None  # refused on the CPU path, from the header, with its reason
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # anything odd about the header: the CPU path records why
        return None
    return JpegHeader(width, height, orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1)


def _start_of_frame(data: bytes) -> int | None:
    """The SOF marker of a JPEG (walking the marker segments from SOI), or None."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in DEVICE_SOF or marker in _OTHER_SOF:
            return marker
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] turned as the EXIF orientation says (the same transpositions as decode.py's Pillow path)."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def crop_box(width: int, height: int, spec: CropSpec) -> tuple[int, int, int, int, int, int]:
    """What the centre crop keeps, in source pixels (left, top, right, bottom), and its padding (x, y).

    The geometry of decode.crop_frame: open_clip's resize then centre crop, mapped back onto
    the source so only the kept region is resampled (rounded to whole source pixels).
    """
    rw, rh = spec.resized_size(width, height)
    left, out_w, pad_x = _axis(rw, spec.width)
    top, out_h, pad_y = _axis(rh, spec.height)
    x0, y0 = round(width * left / rw), round(height * top / rh)
    x1 = max(x0 + 1, min(width, round(width * (left + out_w) / rw)))
    y1 = max(y0 + 1, min(height, round(height * (top + out_h) / rh)))
    return x0, y0, x1, y1, pad_x, pad_y


def _axis(resized: int, out: int) -> tuple[int, int, int]:
    """torchvision's centre crop on one axis: (offset, kept length, padding before)."""
    if resized >= out:
        return int(round((resized - out) / 2.0)), out, 0
    return 0, resized, (out - resized) // 2


def preprocess_on_device(image: torch.Tensor, orientation: int, spec: CropSpec) -> torch.Tensor:
    """Decoded uint8 [3, H, W] -> uint8 [height, width, 3] as decode.crop_frame makes it, on the same device."""
    mode = device_mode(spec)
    if mode is None:
        raise ValueError(f"resampling filter {spec.resample} is not reproduced on the device")
    image = upright(image, orientation)
    _, h, w = image.shape
    x0, y0, x1, y1, pad_x, pad_y = crop_box(w, h, spec)
    rw, rh = spec.resized_size(w, h)
    out_w, out_h = min(rw, spec.width), min(rh, spec.height)
    region = image[:, y0:y1, x0:x1].unsqueeze(0).float()
    if region.shape[-2:] != (out_h, out_w):
        region = F.interpolate(region, size=(out_h, out_w), mode=mode, antialias=True, align_corners=False)
    region = region.round_().clamp_(0, 255).to(torch.uint8)[0]
    if (out_w, out_h) != (spec.width, spec.height):
        canvas = torch.tensor(spec.fill, dtype=torch.uint8, device=image.device).view(3, 1, 1)
        canvas = canvas.expand(3, spec.height, spec.width).clone()
        canvas[:, pad_y : pad_y + out_h, pad_x : pad_x + out_w] = region
        region = canvas
    return region.permute(1, 2, 0)


def _frame(image: torch.Tensor, orientation: int, frame_size: int) -> Image.Image:
    """An upright RGB frame whose shortest side is at most frame_size, for scorers that take images."""
    image = upright(image, orientation)
    _, h, w = image.shape
    scale = frame_size / min(h, w)
    if scale < 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        image = F.interpolate(image.unsqueeze(0).float(), size=size, mode="bilinear", antialias=True)[0]
        image = image.round_().clamp_(0, 255).to(torch.uint8)
    return Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy(), "RGB")


class DeviceJpegDecoder:
    """Decodes the eligible JPEGs of a batch on `device`; the rest are left to the CPU path."""

    def __init__(
        self,
        spec: CropSpec,
        device: str,
        *,
        max_pixels: int,
        max_bytes: int,
        out_device: str = "cpu",
        frame_size: int | None = None,
    ) -> None:
        if device_mode(spec) is None:
            raise ValueError(f"resampling filter {spec.resample} is not reproduced on the device")
        self.spec = spec
        self.device = device
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.out_device = out_device
        self.frame_size = frame_size

    def decode(self, blobs: list[bytes]) -> list[DeviceDecoded | None]:
        """One result per blob, in order; None where the CPU path must decode (and judge) the file."""
        results: list[DeviceDecoded | None] = [None] * len(blobs)
        headers = [device_header(b, max_pixels=self.max_pixels, max_bytes=self.max_bytes) for b in blobs]
        todo = [i for i, h in enumerate(headers) if h is not None]
        for i, image in zip(todo, self._decode_all([blobs[i] for i in todo]), strict=True):
            header = headers[i]
            if image is None or header is None:
                continue
            _, h, w = image.shape
            if (w, h) != (header.width, header.height):
                continue  # not what the header promised: the CPU path looks at it
            pixels = preprocess_on_device(image, header.orientation, self.spec).unsqueeze(0).to(self.out_device)
            swapped = header.orientation in (5, 6, 7, 8)
            results[i] = DeviceDecoded(
                pixels=pixels,
                width=h if swapped else w,
                height=w if swapped else h,
                frame=_frame(image, header.orientation, self.frame_size) if self.frame_size else None,
            )
        return results

    def _decode_all(self, blobs: list[bytes]) -> list[torch.Tensor | None]:
        """Decoded [3, H, W] uint8 tensors on the device; a batch the decoder refuses is retried file by file."""
        if not blobs:
            return []
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notice for its decoders
            try:
                return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                pass  # one bad file fails the whole call (no partial results): find it
            out: list[torch.Tensor | None] = []
            for t in tensors:
                try:
                    out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out
