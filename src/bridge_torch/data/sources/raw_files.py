"""Writing the raw BridgeData format's files for the data this project generates.

Synthetic trees and simulated demonstrations both write camera frames and pickles; fixed
encoder settings and pickle protocol keep the bytes independent of the Python version, so the
same seed gives a byte-identical tree.
"""

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

PICKLE_PROTOCOL = 4


def encode_image(image: np.ndarray, fmt: str, *, quality: int = 90) -> bytes:
    """``image`` as JPEG (at ``quality``) or PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG"
                                                       else {}))
    return buffer.getvalue()


def write_pickle(path: Path, payload: object) -> None:
    """``obs_dict.pkl``, ``policy_out.pkl`` and friends, with the fixed protocol."""
    path.write_bytes(pickle.dumps(payload, protocol=PICKLE_PROTOCOL))
