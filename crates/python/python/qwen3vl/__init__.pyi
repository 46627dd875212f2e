import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from . import ops as ops

__version__: str

# A path, encoded bytes, a PIL.Image.Image, or a uint8 array (H, W, 3), (H, W, 4) or (H, W).
ImageLike = Union[str, os.PathLike, bytes, bytearray, Any, npt.NDArray[np.uint8]]

class EngineError(RuntimeError): ...

class TextStream(Iterator[str]):
    def __iter__(self) -> "TextStream": ...
    def __next__(self) -> str: ...
    @property
    def result(self) -> Optional[Dict[str, Any]]: ...
    def close(self) -> None: ...

def cpu() -> Dict[str, Any]: ...
def set_simd(level: str) -> None: ...
def set_threads(n: int) -> None: ...

class Model:
    def __init__(
        self,
        path: Union[str, os.PathLike],
        threads: Optional[int] = None,
        precision: str = "fast",
        quant: Optional[str] = None,
    ) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def context_len(self) -> int: ...
    def generate(
        self,
        prompt: str,
        images: Union[None, ImageLike, Sequence[ImageLike]] = None,
        system: Optional[str] = None,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        stop: Optional[Sequence[str]] = None,
        stream: bool = False,
    ) -> Union[str, TextStream]: ...
    def chat(
        self,
        messages: Sequence[Dict[str, Any]],
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        stop: Optional[Sequence[str]] = None,
        stream: bool = False,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]: ...
    def generate_batch(
        self,
        prompts: Sequence[str],
        images: Optional[Sequence[Union[None, ImageLike, Sequence[ImageLike]]]] = None,
        system: Optional[str] = None,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        seed: Optional[int] = None,
        stop: Optional[Sequence[str]] = None,
    ) -> List[str]: ...
    def image_features(self, image: ImageLike) -> npt.NDArray[np.float32]: ...
